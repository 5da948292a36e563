"""AWAC (Nair et al. 2020, "AWAC: Accelerating Online RL with Offline Datasets"), as CORL's
awac.py: a SAC-style critic without entropy, and an actor that clones the dataset's actions
weighted by exp(advantage / lambda).

critic: a' ~ pi(.|s') clipped to the bounds;  y = r + gamma (1 - d) min_i Q'_i(s', a')
        L_Q = sum_i mean (Q_i(s, a) - y)^2
actor:  a~ ~ pi(.|s) clipped;  V(s) = min_i Q_i(s, a~);  A = min_i Q_i(s, a) - V(s)
        (Q after this update's critic step, no gradient)
        w = min(exp(A / awac_lambda), exp_adv_max);  L_pi = -mean w log pi(a|s)
        pi = N(mu(s), exp(log_std)): linear mean, state-independent log_std in [-20, 2]
targets: Q' <- (1 - tau) Q' + tau Q after both steps, every update

Shapes: s (B, S), a, a', a~ (B, A), r, d, A, w (B,). Defaults are CORL's D4RL gym configs
(awac_lambda 0.3333; its dataclass default is 1.0).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from wmrl.offline.common import (
    EnsembleCritic,
    GaussianActor,
    OfflineAlgorithm,
    adam,
    floats,
    soft_update,
)


@dataclass
class AWACConfig:
    awac_lambda: float = 0.3333  # temperature of the advantage weights
    exp_adv_max: float = 100.0  # clamp on the weights
    discount: float = 0.99  # CORL's gamma
    tau: float = 5e-3  # target critics' Polyak rate, every update
    learning_rate: float = 3e-4  # actor and critics
    hidden: int = 256
    layers: int = 3  # actor and critics
    batch_size: int = 256
    normalize_states: bool = True  # CORL's AWAC always normalises
    normalize_reward: bool = False


def awac_weights(adv: torch.Tensor, lam: float, max_weight: float) -> torch.Tensor:
    """min(exp(adv / lam), max_weight), a constant for the actor's gradient."""
    return torch.exp(adv.detach() / lam).clamp(max=max_weight)


class AWAC(OfflineAlgorithm):
    name = "awac"

    def __init__(self, obs_dim, action_dim, cfg: AWACConfig, max_action: float = 1.0):
        super().__init__(obs_dim, action_dim, cfg, max_action)
        self.actor = GaussianActor(
            obs_dim, action_dim, cfg.hidden, cfg.layers, max_action,
            tanh_mean=False, log_std_min=-20.0, log_std_max=2.0,
        )  # fmt: skip
        self.critic = EnsembleCritic(obs_dim, action_dim, 2, cfg.hidden, cfg.layers)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.optimizers = {
            "actor": adam(self.actor.parameters(), lr=cfg.learning_rate),
            "critic": adam(self.critic.parameters(), lr=cfg.learning_rate),
        }

    def critic_loss(self, batch):
        cfg = self.cfg
        with torch.no_grad():
            next_a, _ = self.actor(batch["next_observations"])
            next_q = self.critic_target(batch["next_observations"], next_a).min(0).values
            target = batch["rewards"] + cfg.discount * (1.0 - batch["dones"]) * next_q
        q = self.critic(batch["observations"], batch["actions"])  # (2, B)
        return ((q - target) ** 2).mean(1).sum(0), q

    def actor_loss(self, batch):
        obs, actions = batch["observations"], batch["actions"]
        with torch.no_grad():
            pi_a, _ = self.actor(obs)
            v = self.critic(obs, pi_a).min(0).values
            adv = self.critic(obs, actions).min(0).values - v
            weights = awac_weights(adv, self.cfg.awac_lambda, self.cfg.exp_adv_max)
        loss = (-self.actor.log_prob(obs, actions) * weights).mean()
        return loss, {"adv": adv.mean(), "adv_weight": weights.mean()}

    def update(self, batch):
        critic_loss, q = self.critic_loss(batch)
        self.step("critic", critic_loss)
        actor_loss, extra = self.actor_loss(batch)
        self.step("actor", actor_loss)
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        self.updates += 1
        return floats(
            {"critic_loss": critic_loss, "actor_loss": actor_loss, "q": q.mean(), **extra}
        )

    @torch.no_grad()
    def act(self, obs):
        return self.actor(obs, deterministic=True)[0]
