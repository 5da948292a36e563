"""TD3+BC (Fujimoto & Gu 2021, "A Minimalist Approach to Offline RL"), as CORL's td3_bc.py.

critic:  y = r + gamma (1 - d) min_i Q'_i(s', clip(pi'(s') + clip(eps, -c, c), -1, 1)),
         eps ~ N(0, sigma^2);  L = sum_i (Q_i(s, a) - y)^2
actor (every `policy_freq` updates):
         lambda = alpha / mean|Q_1(s, pi(s))| (no gradient through lambda)
         L = -lambda mean Q_1(s, pi(s)) + mean (pi(s) - a)^2
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wmrl.offline.common import (
    DeterministicActor,
    EnsembleCritic,
    OfflineAlgorithm,
    adam,
    floats,
    soft_update,
)


@dataclass
class TD3BCConfig:
    alpha: float = 2.5  # lambda = alpha / mean|Q|
    discount: float = 0.99
    tau: float = 5e-3  # target networks' Polyak rate
    policy_noise: float = 0.2  # target policy smoothing, times max_action
    noise_clip: float = 0.5
    policy_freq: int = 2  # actor and target updates every policy_freq critic updates
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    hidden: int = 256
    layers: int = 2
    batch_size: int = 256
    normalize_states: bool = True
    normalize_reward: bool = False


def bc_weight(q: torch.Tensor, alpha: float) -> torch.Tensor:
    """TD3+BC's lambda = alpha / (mean |Q|), a constant for the actor's gradient."""
    return alpha / q.abs().mean().detach()


class TD3BC(OfflineAlgorithm):
    name = "td3bc"

    def __init__(self, obs_dim, action_dim, cfg: TD3BCConfig, max_action: float = 1.0):
        super().__init__(obs_dim, action_dim, cfg, max_action)
        self.actor = DeterministicActor(obs_dim, action_dim, cfg.hidden, cfg.layers, max_action)
        self.critic = EnsembleCritic(obs_dim, action_dim, 2, cfg.hidden, cfg.layers)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.optimizers = {
            "actor": adam(self.actor.parameters(), lr=cfg.actor_lr),
            "critic": adam(self.critic.parameters(), lr=cfg.critic_lr),
        }

    def critic_target_value(self, batch) -> torch.Tensor:
        cfg, m = self.cfg, self.max_action
        with torch.no_grad():
            next_a = self.actor_target(batch["next_observations"])
            noise = (torch.randn_like(next_a) * cfg.policy_noise * m).clamp(
                -cfg.noise_clip * m, cfg.noise_clip * m
            )
            next_a = (next_a + noise).clamp(-m, m)
            next_q = self.critic_target(batch["next_observations"], next_a).min(0).values
            return batch["rewards"] + cfg.discount * (1.0 - batch["dones"]) * next_q

    def actor_loss(self, batch):
        pi = self.actor(batch["observations"])
        q = self.critic(batch["observations"], pi, members=1)[0]  # Q_1 alone, as CORL
        lmbda = bc_weight(q, self.cfg.alpha)
        bc = F.mse_loss(pi, batch["actions"])
        return -lmbda * q.mean() + bc, {"lambda": lmbda, "bc_loss": bc}

    def update(self, batch):
        target = self.critic_target_value(batch)
        q = self.critic(batch["observations"], batch["actions"])
        critic_loss = ((q - target) ** 2).mean(1).sum()
        self.step("critic", critic_loss)
        metrics = {"critic_loss": critic_loss, "q": q.mean()}
        self.updates += 1
        if int(self.updates) % self.cfg.policy_freq == 0:
            actor_loss, extra = self.actor_loss(batch)
            self.step("actor", actor_loss)
            soft_update(self.actor_target, self.actor, self.cfg.tau)
            soft_update(self.critic_target, self.critic, self.cfg.tau)
            metrics.update(actor_loss=actor_loss, **extra)
        return floats(metrics)

    @torch.no_grad()
    def act(self, obs):
        return self.actor(obs)
