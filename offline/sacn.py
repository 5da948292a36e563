"""SAC-N (An et al. 2021, "Uncertainty-Based Offline RL with Diversified Q-Ensemble"), as CORL's
sac_n.py: SAC whose pessimism comes only from the minimum over N critics.

Per update, in the EDAC paper's (and CORL's) order alpha -> actor -> critic:
alpha:  a~ ~ pi(.|s) (no gradient);  L = mean -log_alpha (log pi(a~|s) + target_entropy),
        target_entropy = -A
actor:  a~ ~ pi(.|s);  L = mean alpha log pi(a~|s) - min_i Q_i(s, a~)
critic: a' ~ pi(.|s');  y = r + gamma (1 - d) (min_i Q'_i(s', a') - alpha log pi(a'|s'))
        L = sum_i mean (Q_i(s, a) - y)^2      (i over the N members of one batched ensemble)
then Q' <- (1 - tau) Q' + tau Q. The actor and critic use alpha after this update's alpha step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from wmrl.infra.config import at_least
from wmrl.offline.common import (
    EnsembleCritic,
    OfflineAlgorithm,
    TanhGaussianActor,
    adam,
    edac_init,
    floats,
    soft_update,
)


@dataclass
class SACNConfig:
    num_critics: int = 10
    discount: float = 0.99
    tau: float = 5e-3
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    log_std_min: float = -5.0  # the EDAC paper's clip of log sigma, not SAC's -20
    log_std_max: float = 2.0
    hidden: int = 256
    layers: int = 3
    batch_size: int = 256
    normalize_states: bool = False
    normalize_reward: bool = False
    gauge_every: int = 10  # q_random_std, a diagnostic, on every gauge_every-th update (CORL
    # computes it on every update and logs one in 100)

    def __post_init__(self):
        at_least(self, 1, "num_critics", "gauge_every")


def soft_q_target(
    rewards: torch.Tensor,
    dones: torch.Tensor,
    next_q: torch.Tensor,
    next_log_pi: torch.Tensor,
    alpha: torch.Tensor | float,
    discount: float,
) -> torch.Tensor:
    """y = r + gamma (1 - d) (min_i Q'_i(s', a') - alpha log pi(a'|s')), (B,), from rewards and
    dones (B,), next_q (N, B) and next_log_pi (B,)."""
    soft_v = next_q.min(0).values - alpha * next_log_pi
    return rewards + discount * (1.0 - dones) * soft_v


class SACN(OfflineAlgorithm):
    name = "sacn"

    def __init__(self, obs_dim, action_dim, cfg: SACNConfig, max_action: float = 1.0):
        super().__init__(obs_dim, action_dim, cfg, max_action)
        self.actor = TanhGaussianActor(
            obs_dim, action_dim, cfg.hidden, cfg.layers, max_action,
            log_std_min=cfg.log_std_min, log_std_max=cfg.log_std_max,
        )  # fmt: skip
        self.critic = EnsembleCritic(obs_dim, action_dim, cfg.num_critics, cfg.hidden, cfg.layers)
        edac_init(self.actor, self.critic)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.target_entropy = -float(action_dim)
        self.log_alpha = nn.Parameter(torch.zeros(()))
        self.optimizers = {
            "alpha": adam([self.log_alpha], lr=cfg.alpha_lr),
            "actor": adam(self.actor.parameters(), lr=cfg.actor_lr),
            "critic": adam(self.critic.parameters(), lr=cfg.critic_lr),
        }

    def alpha_loss(self, obs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            _, log_pi = self.actor(obs)
        return (-self.log_alpha * (log_pi + self.target_entropy)).mean()

    def actor_loss(self, obs: torch.Tensor, alpha: torch.Tensor):
        pi, log_pi = self.actor(obs)
        q = self.critic(obs, pi)  # (N, B)
        loss = (alpha * log_pi - q.min(0).values).mean()
        return loss, {"batch_entropy": -log_pi.mean(), "q_policy_std": q.std(0).mean()}

    @torch.no_grad()
    def q_target(self, batch, alpha: torch.Tensor) -> torch.Tensor:
        next_a, next_log_pi = self.actor(batch["next_observations"])
        next_q = self.critic_target(batch["next_observations"], next_a)
        return soft_q_target(
            batch["rewards"], batch["dones"], next_q, next_log_pi, alpha, self.cfg.discount
        )

    def critic_loss(self, batch, alpha: torch.Tensor):
        """-> (loss, metrics); EDAC adds its diversity term here."""
        target = self.q_target(batch, alpha)
        q = self.critic(batch["observations"], batch["actions"])  # (N, B)
        loss = ((q - target) ** 2).mean(1).sum()
        return loss, {"critic_loss": loss, "q": q.mean(), "q_std": q.std(0).mean()}

    def update(self, batch):
        obs = batch["observations"]
        alpha_loss = self.alpha_loss(obs)
        self.step("alpha", alpha_loss)
        alpha = self.log_alpha.exp().detach()

        self.critic.requires_grad_(False)  # the actor's gradient needs none for the critics
        actor_loss, metrics = self.actor_loss(obs, alpha)
        self.step("actor", actor_loss)
        self.critic.requires_grad_(True)

        critic_loss, critic_metrics = self.critic_loss(batch, alpha)
        self.step("critic", critic_loss)
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        self.updates += 1

        metrics.update(critic_metrics)
        metrics.update(actor_loss=actor_loss, alpha_loss=alpha_loss, alpha=alpha)
        if int(self.updates) % self.cfg.gauge_every == 0:
            # CORL's gauge of ensemble disagreement away from the data: a diagnostic that
            # costs a forward of every critic, so only every gauge_every updates
            with torch.no_grad():
                m = self.max_action
                random_a = torch.rand_like(batch["actions"]) * (2 * m) - m
                metrics["q_random_std"] = self.critic(obs, random_a).std(0).mean()
        return floats(metrics)

    @torch.no_grad()
    def act(self, obs):
        return self.actor(obs, deterministic=True)[0]
