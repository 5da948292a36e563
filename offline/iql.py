"""IQL (Kostrikov et al. 2022, "Offline RL with Implicit Q-Learning"), as CORL's iql.py.

Never queries Q off the dataset's actions: V is fitted to an upper expectile of Q over the
behaviour policy's actions, and the policy is advantage-weighted behaviour cloning.

value:  u = min_i Q'_i(s, a) - V(s);  L_V = mean |iql_tau - 1(u < 0)| u^2
critic: y = r + gamma (1 - d) V(s')  (V before this update's value step)
        L_Q = 1/2 sum_i mean (Q_i(s, a) - y)^2;  then Q' <- (1 - tau) Q' + tau Q
actor:  w = min(exp(beta u), exp_adv_max)  (u from the value step; no gradient)
        L_pi = mean w (-log pi(a|s)),  pi = N(max_action tanh(mu(s)), exp(log_std))
        or, iql_deterministic, L_pi = mean w sum_A (pi(s) - a)^2
        The actor's learning rate anneals from actor_lr to 0 over `max_steps` updates (cosine).

Shapes: s (B, S), a (B, A), r, d, u, w (B,). Steps run in CORL's order: value, critic, target,
actor. Defaults are CORL's D4RL locomotion values; its hopper configs use iql_deterministic and
tau 1e-3, its Adroit configs actor_dropout 0.1.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from wmrl.offline.common import (
    DeterministicActor,
    EnsembleCritic,
    GaussianActor,
    OfflineAlgorithm,
    adam,
    floats,
    mlp,
    soft_update,
)


@dataclass
class IQLConfig:
    discount: float = 0.99
    tau: float = 5e-3  # target critic's Polyak rate, every update
    beta: float = 3.0  # inverse temperature: small -> behaviour cloning, large -> max Q
    iql_tau: float = 0.7  # the expectile V fits
    iql_deterministic: bool = False  # deterministic actor with a squared-error BC loss
    exp_adv_max: float = 100.0  # clamp on the advantage weights
    vf_lr: float = 3e-4
    qf_lr: float = 3e-4
    actor_lr: float = 3e-4
    actor_dropout: float = 0.0  # CORL's None; 0.1 on Adroit
    max_steps: int = 1_000_000  # the cosine schedule's length; the training loop sets it
    hidden: int = 256
    layers: int = 2
    batch_size: int = 256
    normalize_states: bool = True
    normalize_reward: bool = True  # IQL's locomotion scaling (applied by the training loop)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean |expectile - 1(diff < 0)| diff^2 over all elements (CORL's asymmetric_l2_loss).
    Minimised over a constant v, with diff = x - v, at the `expectile`-expectile of x."""
    weight = torch.abs(expectile - (diff < 0).to(diff.dtype))
    return (weight * diff**2).mean()


def advantage_weights(adv: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """min(exp(beta adv), max_weight), a constant for the actor's gradient."""
    return torch.exp(beta * adv.detach()).clamp(max=max_weight)


def _with_dropout(net: nn.Sequential, p: float) -> nn.Sequential:
    """`net` with Dropout(p) after every ReLU (CORL's MLP with `dropout`)."""
    mods: list[nn.Module] = []
    for m in net:
        mods.append(m)
        if isinstance(m, nn.ReLU):
            mods.append(nn.Dropout(p))
    return nn.Sequential(*mods)


class IQL(OfflineAlgorithm):
    name = "iql"

    def __init__(self, obs_dim, action_dim, cfg: IQLConfig, max_action: float = 1.0):
        super().__init__(obs_dim, action_dim, cfg, max_action)
        if cfg.iql_deterministic:
            self.actor = DeterministicActor(obs_dim, action_dim, cfg.hidden, cfg.layers, max_action)
            if cfg.actor_dropout:
                self.actor.net = _with_dropout(self.actor.net, cfg.actor_dropout)
        else:
            self.actor = GaussianActor(
                obs_dim, action_dim, cfg.hidden, cfg.layers, max_action,
                tanh_mean=True, dropout=cfg.actor_dropout,
            )  # fmt: skip
        self.critic = EnsembleCritic(obs_dim, action_dim, 2, cfg.hidden, cfg.layers)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = mlp(obs_dim, 1, cfg.hidden, cfg.layers)  # V(s): (B, S) -> (B, 1)
        self.optimizers = {
            "value": adam(self.value.parameters(), lr=cfg.vf_lr),
            "critic": adam(self.critic.parameters(), lr=cfg.qf_lr),
            "actor": adam(self.actor.parameters(), lr=cfg.actor_lr),
        }
        self.actor_scheduler = CosineAnnealingLR(self.optimizers["actor"], cfg.max_steps)

    def value_loss(self, batch):
        """-> L_V and the advantage u = min_i Q'_i(s, a) - V(s) (B,)."""
        with torch.no_grad():
            target_q = self.critic_target(batch["observations"], batch["actions"]).min(0).values
        v = self.value(batch["observations"]).squeeze(-1)
        adv = target_q - v
        return expectile_loss(adv, self.cfg.iql_tau), adv

    def critic_loss(self, batch, next_v: torch.Tensor):
        cfg = self.cfg
        target = batch["rewards"] + cfg.discount * (1.0 - batch["dones"]) * next_v
        q = self.critic(batch["observations"], batch["actions"])  # (2, B)
        return ((q - target) ** 2).mean(1).mean(0), q

    def actor_loss(self, batch, adv: torch.Tensor):
        weights = advantage_weights(adv, self.cfg.beta, self.cfg.exp_adv_max)
        obs, actions = batch["observations"], batch["actions"]
        if self.cfg.iql_deterministic:
            bc_losses = ((self.actor(obs) - actions) ** 2).sum(-1)
        else:
            bc_losses = -self.actor.log_prob(obs, actions)
        return (weights * bc_losses).mean(), weights

    def update(self, batch):
        with torch.no_grad():
            next_v = self.value(batch["next_observations"]).squeeze(-1)
        value_loss, adv = self.value_loss(batch)
        self.step("value", value_loss)
        q_loss, q = self.critic_loss(batch, next_v)
        self.step("critic", q_loss)
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        actor_loss, weights = self.actor_loss(batch, adv)
        self.step("actor", actor_loss)
        self.actor_scheduler.step()
        self.updates += 1
        metrics = floats(
            {
                "value_loss": value_loss,
                "q_loss": q_loss,
                "actor_loss": actor_loss,
                "q": q.mean(),
                "adv": adv.mean(),
                "adv_weight": weights.mean(),
            }
        )
        metrics["actor_lr"] = self.actor_scheduler.get_last_lr()[0]
        return metrics

    @torch.no_grad()
    def act(self, obs):
        if self.cfg.iql_deterministic:
            return self.actor(obs)
        return self.actor(obs, deterministic=True)[0]

    def save_state(self) -> dict:
        state = super().save_state()
        state["schedulers"] = {"actor": self.actor_scheduler.state_dict()}
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.actor_scheduler.load_state_dict(state["schedulers"]["actor"])
