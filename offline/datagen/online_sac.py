"""Soft actor-critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications": twin
critics and an automatically tuned temperature), online; the behaviour policies of the datasets
that `offline.datagen.make_dataset` writes.

critic:  y = r + gamma (1 - d) (min_i Q'_i(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s')
         L_Q = sum_i mean (Q_i(s, a) - y)^2
actor:   L_pi = mean (alpha log pi(a~|s) - min_i Q_i(s, a~)),  a~ ~ pi(.|s) (reparameterised)
alpha:   L_alpha = -mean log_alpha (log pi(a~|s) + H_target),  H_target = -action_dim
         (d L / d log_alpha = entropy - H_target: alpha grows while the entropy is below target)
targets: Q' <- (1 - tau) Q' + tau Q after every update

    sac = SAC(obs_dim, action_dim, SACConfig(), max_action=symmetric_bound(env.action_space))
    sac.sample(obs)        # exploration, (B, S) -> (B, A)
    sac.act(obs)           # evaluation: max_action * tanh(mean)
    sac.update(batch)      # batch as in offline.common, dones = terminations only
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from wmrl.offline.common import (
    EnsembleCritic,
    OfflineAlgorithm,
    TanhGaussianActor,
    floats,
    soft_update,
)


@dataclass
class SACConfig:
    """SAC v2 (paper, table 1); the states and rewards are the env's own (no normalisation)."""

    discount: float = 0.99  # gamma
    tau: float = 5e-3  # target critics' Polyak rate
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    hidden: int = 256  # units per hidden layer, actor and critics
    layers: int = 2  # hidden layers
    batch_size: int = 256
    target_entropy: float | None = None  # H_target; none: -action_dim (the paper's heuristic)
    init_log_alpha: float = 0.0  # log of the initial temperature alpha (alpha = 1)


class SAC(OfflineAlgorithm):
    name = "sac"

    def __init__(self, obs_dim, action_dim, cfg: SACConfig, max_action: float = 1.0):
        super().__init__(obs_dim, action_dim, cfg, max_action)
        self.actor = TanhGaussianActor(obs_dim, action_dim, cfg.hidden, cfg.layers, max_action)
        self.critic = EnsembleCritic(obs_dim, action_dim, 2, cfg.hidden, cfg.layers)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(torch.tensor(float(cfg.init_log_alpha)))
        te = cfg.target_entropy
        self.target_entropy = -float(action_dim) if te is None else float(te)
        self.optimizers = {
            "actor": torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr),
            "critic": torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr),
            "alpha": torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr),
        }

    @property
    def alpha(self) -> torch.Tensor:
        """The temperature exp(log_alpha), a constant for the critic's and the actor's losses."""
        return self.log_alpha.detach().exp()

    @torch.no_grad()
    def critic_target_value(self, batch) -> torch.Tensor:
        """y (B,) = r + gamma (1 - d) (min_i Q'_i(s', a') - alpha log pi(a'|s')), a' ~ pi."""
        next_a, next_log_prob = self.actor(batch["next_observations"])
        next_q = self.critic_target(batch["next_observations"], next_a).min(0).values
        soft_v = next_q - self.alpha * next_log_prob
        return batch["rewards"] + self.cfg.discount * (1.0 - batch["dones"]) * soft_v

    def actor_loss(self, obs: torch.Tensor):
        """L_pi, and log pi(a~|s) (B,) for the temperature's loss."""
        action, log_prob = self.actor(obs)
        # Only the actor learns from this loss: no weight gradients for the critics.
        self.critic.requires_grad_(False)
        q = self.critic(obs, action).min(0).values
        self.critic.requires_grad_(True)
        return (self.alpha * log_prob - q).mean(), log_prob

    def alpha_loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        """L_alpha = -mean log_alpha (log pi + H_target); its gradient is entropy - H_target."""
        return -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()

    def update(self, batch):
        target = self.critic_target_value(batch)
        q = self.critic(batch["observations"], batch["actions"])
        critic_loss = ((q - target) ** 2).mean(1).sum()
        self.step("critic", critic_loss)

        actor_loss, log_prob = self.actor_loss(batch["observations"])
        self.step("actor", actor_loss)
        alpha_loss = self.alpha_loss(log_prob)
        self.step("alpha", alpha_loss)

        soft_update(self.critic_target, self.critic, self.cfg.tau)
        self.updates += 1
        return floats(
            {
                "critic_loss": critic_loss,
                "actor_loss": actor_loss,
                "alpha_loss": alpha_loss,
                "alpha": self.alpha,
                "entropy": -log_prob.detach().mean(),
                "q": q.detach().mean(),
            }
        )

    @torch.no_grad()
    def act(self, obs):
        """Deterministic actions (B, A) = max_action * tanh(mean) for states (B, S)."""
        return self.actor(obs, deterministic=True)[0]

    @torch.no_grad()
    def sample(self, obs):
        """Stochastic actions (B, A) ~ pi(.|s) for states (B, S): exploration and data."""
        return self.actor(obs)[0]
