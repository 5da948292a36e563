"""ReBRAC (Tarasov et al. 2023, "Revisiting the Minimalism in Offline RL"), CORL's rebrac.py
(JAX) ported: TD3+BC with a BC penalty in the critic's target too, LayerNorm in the critic,
deeper nets, larger batches and separate actor and critic BC coefficients.

critic: a' = clip(pi'(s') + clip(eps, -c, c), -m, m),  eps ~ N(0, policy_noise^2),
        c = noise_clip (both times max_action m);  a'_data the dataset's next action
        y = r + gamma (1 - d) [min_i Q'_i(s', a') - critic_bc_coef sum_A (a' - a'_data)^2]
        L_Q = sum_i mean (Q_i(s, a) - y)^2
actor (updates 0, policy_freq, 2 policy_freq, ..., as CORL's loop):
        q = min_i Q_i(s, pi(s));  lambda = 1 / mean|q| (no gradient) if normalize_q, else 1
        L_pi = mean [actor_bc_coef sum_A (pi(s) - a)^2 - lambda q]
        then pi' <- Polyak(pi, tau), Q' <- Polyak(Q, tau)

Shapes: s, s' (B, S), a, a', a'_data (B, A), r, d, y, q (B,). Networks as CORL's: hidden layers
Linear -> ReLU -> LayerNorm (LayerNorm in the critic by default), hidden biases 0.1, last layer
uniform in +-1e-3 (actor) and +-3e-3 (critic).

The defaults are CORL's dataclass defaults (actor_bc_coef = critic_bc_coef = 1.0). The paper
tunes both per dataset; CORL's configs (configs/offline/rebrac/<env>/<dataset>.yaml) give e.g.
    halfcheetah-medium-v2  actor_bc_coef 0.001  critic_bc_coef 0.01
    hopper-medium-v2       actor_bc_coef 0.01   critic_bc_coef 0.01
    walker2d-medium-v2     actor_bc_coef 0.05   critic_bc_coef 0.1
which a run applies by itself for a dataset CORL tunes (`offline.corl_presets`); elsewhere set
them with --rebrac.actor_bc_coef / --rebrac.critic_bc_coef.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from wmrl.offline.common import (
    DeterministicActor,
    EnsembleCritic,
    EnsembleLinear,
    OfflineAlgorithm,
    adam,
    floats,
    layernorm_after_relu,
    soft_update,
)


@dataclass
class ReBRACConfig:
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    discount: float = 0.99  # CORL's gamma
    tau: float = 5e-3  # targets' Polyak rate, on actor updates
    actor_bc_coef: float = 1.0  # per dataset: CORL's preset for the dataset, see the docstring
    critic_bc_coef: float = 1.0
    actor_ln: bool = False
    critic_ln: bool = True
    policy_noise: float = 0.2  # target policy smoothing, times max_action
    noise_clip: float = 0.5
    policy_freq: int = 2
    normalize_q: bool = True  # lambda = 1 / mean|Q| in the actor loss
    hidden: int = 256
    actor_layers: int = 3  # CORL's actor_n_hiddens
    critic_layers: int = 3  # CORL's critic_n_hiddens
    batch_size: int = 1024
    normalize_states: bool = False
    normalize_reward: bool = False


@torch.no_grad()
def _rebrac_init_(net: nn.Sequential, last_bound: float) -> None:
    """CORL's ReBRAC init (from EDAC): hidden weights as PyTorch's default (which both Linear
    kinds already have), hidden biases 0.1, the output layer uniform in +-last_bound."""
    linears = [m for m in net if isinstance(m, nn.Linear | EnsembleLinear)]
    for m in linears[:-1]:
        m.bias.fill_(0.1)
    nn.init.uniform_(linears[-1].weight, -last_bound, last_bound)
    nn.init.uniform_(linears[-1].bias, -last_bound, last_bound)


class ReBRAC(OfflineAlgorithm):
    name = "rebrac"

    def __init__(self, obs_dim, action_dim, cfg: ReBRACConfig, max_action: float = 1.0):
        super().__init__(obs_dim, action_dim, cfg, max_action)
        self.actor = DeterministicActor(
            obs_dim, action_dim, cfg.hidden, cfg.actor_layers, max_action, cfg.actor_ln
        )
        self.actor.net = layernorm_after_relu(self.actor.net)
        _rebrac_init_(self.actor.net, 1e-3)
        self.critic = EnsembleCritic(
            obs_dim, action_dim, 2, cfg.hidden, cfg.critic_layers, layernorm=cfg.critic_ln
        )
        self.critic.net = layernorm_after_relu(self.critic.net)
        _rebrac_init_(self.critic.net, 3e-3)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.optimizers = {
            "actor": adam(self.actor.parameters(), lr=cfg.actor_lr),
            "critic": adam(self.critic.parameters(), lr=cfg.critic_lr),
        }

    @torch.no_grad()
    def critic_target_value(self, batch) -> torch.Tensor:
        cfg, m = self.cfg, self.max_action
        s_next = batch["next_observations"]
        next_a = self.actor_target(s_next)
        noise = (torch.randn_like(next_a) * cfg.policy_noise * m).clamp(
            -cfg.noise_clip * m, cfg.noise_clip * m
        )
        next_a = (next_a + noise).clamp(-m, m)
        bc_penalty = ((next_a - batch["next_actions"]) ** 2).sum(-1)
        next_q = self.critic_target(s_next, next_a).min(0).values
        next_q = next_q - cfg.critic_bc_coef * bc_penalty
        return batch["rewards"] + cfg.discount * (1.0 - batch["dones"]) * next_q

    def actor_loss(self, batch):
        pi = self.actor(batch["observations"])
        bc_penalty = ((pi - batch["actions"]) ** 2).sum(-1)
        q = self.critic(batch["observations"], pi).min(0).values
        lmbda = 1.0 / q.abs().mean().detach() if self.cfg.normalize_q else q.new_ones(())
        loss = (self.cfg.actor_bc_coef * bc_penalty - lmbda * q).mean()
        return loss, {"lambda": lmbda, "bc_mse_policy": bc_penalty.mean()}

    def update(self, batch):
        target = self.critic_target_value(batch)
        q = self.critic(batch["observations"], batch["actions"])  # (2, B)
        critic_loss = ((q - target) ** 2).mean(1).sum(0)
        self.step("critic", critic_loss)
        metrics = {"critic_loss": critic_loss, "q_min": q.min(0).values.mean()}
        if int(self.updates) % self.cfg.policy_freq == 0:
            actor_loss, extra = self.actor_loss(batch)
            self.step("actor", actor_loss)
            soft_update(self.actor_target, self.actor, self.cfg.tau)
            soft_update(self.critic_target, self.critic, self.cfg.tau)
            metrics.update(actor_loss=actor_loss, **extra)
        self.updates += 1
        return floats(metrics)

    @torch.no_grad()
    def act(self, obs):
        return self.actor(obs)
