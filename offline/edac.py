"""EDAC (An et al. 2021, "Uncertainty-Based Offline RL with Diversified Q-Ensemble"), as CORL's
edac.py: SAC-N (`offline.sacn`) whose critic loss adds eta times an ensemble gradient diversity
term, so that fewer critics suffice for the same pessimism.

    g_i(s, a) = grad_a Q_i(s, a) / (|grad_a Q_i(s, a)| + 1e-10)      at the dataset's (s, a)
    ES = mean_batch  1 / (N - 1)  sum_{i != j} <g_i, g_j>
    L_critic = sum_i mean (Q_i(s, a) - y)^2 + eta ES

Everything else (target, actor, alpha, update order) is SAC-N's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wmrl.offline.common import EnsembleCritic
from wmrl.offline.sacn import SACN, SACNConfig


@dataclass
class EDACConfig(SACNConfig):
    eta: float = 1.0  # weight of the gradient diversity term


def q_and_diversity(critic: EnsembleCritic, obs: torch.Tensor, actions: torch.Tensor):
    """Q of every member (N, B) at obs (B, S), actions (B, A), and EDAC's ES term (a scalar,
    differentiable in the critic's parameters): the pairwise cosine similarities of the N
    members' action gradients, summed over ordered pairs of distinct members, divided by N - 1,
    averaged over the batch. One forward serves both (CORL runs a second one for ES)."""
    n = critic.members
    obs = obs.expand(n, *obs.shape)
    # one copy of the actions per member, so one backward gives each member its own gradient
    actions = actions.detach().expand(n, *actions.shape).clone().requires_grad_(True)
    q = critic(obs, actions)  # (N, B)
    (grad,) = torch.autograd.grad(q.sum(), actions, create_graph=True)  # (N, B, A)
    grad = grad / (grad.norm(dim=-1, keepdim=True) + 1e-10)
    grad = grad.transpose(0, 1)  # (B, N, A)
    cos = grad @ grad.transpose(1, 2)  # (B, N, N)
    off_diagonal = cos.sum((1, 2)) - cos.diagonal(dim1=1, dim2=2).sum(-1)
    return q, off_diagonal.mean() / (n - 1)


def diversity_loss(critic: EnsembleCritic, obs: torch.Tensor, actions: torch.Tensor):
    """EDAC's ES term alone (`q_and_diversity`)."""
    return q_and_diversity(critic, obs, actions)[1]


class EDAC(SACN):
    name = "edac"

    def critic_loss(self, batch, alpha):
        target = self.q_target(batch, alpha)
        q, es = q_and_diversity(self.critic, batch["observations"], batch["actions"])
        td_loss = ((q - target) ** 2).mean(1).sum()  # SAC-N's, on the same forward
        loss = td_loss + self.cfg.eta * es
        metrics = {"critic_loss": loss, "q": q.mean(), "q_std": q.std(0).mean()}
        metrics.update(td_loss=td_loss, diversity_loss=es)
        return loss, metrics
