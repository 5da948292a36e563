"""SAC-RND (Nikulin, Kurenkov, Tarasov, Kolesnikov 2023, "Anti-Exploration by Random Network
Distillation", ICML), as CORL's SAC-RND (JAX, tinkoff-ai/CORL commit 3a599ea,
algorithms/sac_rnd_jax.py, from the authors' github.com/tinkoff-ai/sac-rnd): SAC with two
LayerNorm critics whose only pessimism is an RND bonus, subtracted in the critic's target and in
the actor's objective.

RND, trained alone for the first `rnd_steps` updates on the dataset's (s, a), then frozen:
    s^ = (s - mu_s) / (sigma_s + 1e-8),  a^ = (a - mu_a) / (sigma_a + 1e-8)
    prior     fbar(s, a) = W4 relu(scale(s) * (W3 h + b3) + shift(s)) + b4,
              h = relu(W2 relu(W1 a^ + b1) + b2),  [scale, shift] = F s^ + c   (FiLM, last layer)
    predictor f(s, a) = MLP(relu(a^T U_k s^ + u_k, k = 1..hidden))         (bilinear first layer)
    e(s, a) = ||f(s, a) - fbar(s, a)||^2 over the `rnd_embedding` outputs
    L_rnd = mean e(s, a);  sigma_e = std of every e(s, a) the RND was trained on (running)
    b(s, a) = e(s, a) / sigma_e, fbar(s, a) a constant (no gradient, to a either)
The prior is random and never trained. CORL z-scores the RND's inputs with the dataset's moments;
an algorithm of this suite sees batches only, so the RND gathers mu and sigma from its training
batches (uniform draws of the dataset) and freezes them with the rest.

SAC afterwards, in CORL's order actor -> alpha -> critic, alpha = exp(log_alpha) from 1:
actor:  a~ ~ pi(.|s);  L = mean [alpha log pi(a~|s) + actor_beta b(s, a~) - min_i Q_i(s, a~)]
alpha:  L = alpha (H - target_entropy),  H = -mean log pi(a~|s) of the actor's step, target -A
critic: a' ~ pi(.|s') from the updated actor, alpha from before its step
        y = r + gamma (1 - d) [min_i Q'_i(s', a') - alpha log pi(a'|s') - critic_beta b(s', a')]
        L = sum_i mean (Q_i(s, a) - y)^2;  then Q' <- (1 - tau) Q' + tau Q

Shapes: s, s' (B, S), a, a~, a' (B, A), r, d, y, e, b (B,). Networks as CORL's: actor and critics
3 x 256 (critic layers Linear -> ReLU -> LayerNorm), hidden biases 0.1, output layers uniform
in +-1e-3 (actor) and +-3e-3 (critics); RND 4 layers of 256 to a 32-dim embedding.

The defaults are CORL's dataclass defaults (actor_beta = critic_beta = 1). CORL's configs
(configs/sac_rnd/<env>/<dataset>.yaml) tune the betas per dataset, e.g.
    halfcheetah-medium-v2  0.3    hopper-medium-v2  25    walker2d-medium-v2  8
(actor and critic alike on locomotion), which a run applies by itself for a dataset CORL tunes
(`offline.corl_presets`). CORL trains 1000 RND updates, then 3M SAC updates: --steps 3001000.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wmrl.infra.config import at_least
from wmrl.offline.common import (
    EnsembleCritic,
    OfflineAlgorithm,
    TanhGaussianActor,
    adam,
    edac_init,
    floats,
    layernorm_after_relu,
    mlp,
    soft_update,
)


@dataclass
class SACRNDConfig:
    actor_beta: float = 1.0  # weight of b(s, a~) in the actor loss; per dataset (CORL's preset)
    critic_beta: float = 1.0  # weight of b(s', a') in the critic's target
    discount: float = 0.99
    tau: float = 5e-3
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    alpha_lr: float = 1e-3
    num_critics: int = 2
    critic_ln: bool = True
    log_std_min: float = -5.0  # the EDAC paper's clip of log sigma, as CORL's SAC-RND
    log_std_max: float = 2.0
    hidden: int = 256
    layers: int = 3
    rnd_lr: float = 3e-4
    rnd_hidden: int = 256
    rnd_embedding: int = 32
    rnd_steps: int = 1000  # RND-only updates first (CORL: 1 epoch of 1000)
    batch_size: int = 1024
    normalize_states: bool = False
    normalize_reward: bool = False

    def __post_init__(self):
        at_least(self, 1, "rnd_steps")  # b = e / sigma_e needs a trained sigma_e


class RunningMoments(nn.Module):
    """Mean and population variance of every row seen, per feature of `shape`, merged batch by
    batch (Chan et al.'s parallel update) from mean 0, variance 0 and a count of `eps`."""

    def __init__(self, shape: tuple[int, ...] = (), eps: float = 1e-4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.zeros(shape))
        self.register_buffer("count", torch.tensor(eps))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge a batch x (n, *shape)."""
        n = x.shape[0]
        batch_mean, batch_var = x.mean(0), x.var(0, unbiased=False)
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean.add_(delta * n / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt()


class FiLMPrior(nn.Module):
    """The random prior fbar(s, a) (B, E): the action through three ReLU layers, the last one's
    pre-activation scaled and shifted per unit by FiLM from the state."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int, embedding: int):
        super().__init__()
        self.film = nn.Linear(obs_dim, 2 * hidden)
        self.l1 = nn.Linear(action_dim, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, embedding)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(obs).chunk(2, -1)
        h = F.relu(self.l2(F.relu(self.l1(action))))
        return self.out(F.relu(scale * self.l3(h) + shift))


class BilinearPredictor(nn.Module):
    """The trained predictor f(s, a) (B, E): hidden unit k = relu(a^T U_k s + u_k) (a bilinear
    first layer), then two ReLU layers and a linear output."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int, embedding: int):
        super().__init__()
        self.bilinear = nn.Bilinear(action_dim, obs_dim, hidden)  # init +-1/sqrt(A), as CORL's
        self.net = mlp(hidden, embedding, hidden, 2)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(F.relu(self.bilinear(action, obs)))


class RND(nn.Module):
    """Predictor, prior, the moments of their inputs and of the training errors. `error` and
    `bonus` take raw (s (B, S), a (B, A)) and return (B,)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int, embedding: int):
        super().__init__()
        self.predictor = BilinearPredictor(obs_dim, action_dim, hidden, embedding)
        self.prior = FiLMPrior(obs_dim, action_dim, hidden, embedding).requires_grad_(False)
        self.state_moments = RunningMoments((obs_dim,))
        self.action_moments = RunningMoments((action_dim,))
        self.error_moments = RunningMoments()

    def error(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """e(s, a) = ||f(s, a) - fbar(s, a)||^2, with fbar's output detached."""
        s = (obs - self.state_moments.mean) / (self.state_moments.std + 1e-8)
        a = (action - self.action_moments.mean) / (self.action_moments.std + 1e-8)
        return ((self.predictor(s, a) - self.prior(s, a).detach()) ** 2).sum(-1)

    def bonus(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """b(s, a) = e(s, a) / sigma_e."""
        return self.error(obs, action) / self.error_moments.std


class SACRND(OfflineAlgorithm):
    name = "sacrnd"

    def __init__(self, obs_dim, action_dim, cfg: SACRNDConfig, max_action: float = 1.0):
        super().__init__(obs_dim, action_dim, cfg, max_action)
        self.rnd = RND(obs_dim, action_dim, cfg.rnd_hidden, cfg.rnd_embedding)
        self.actor = TanhGaussianActor(
            obs_dim, action_dim, cfg.hidden, cfg.layers, max_action,
            log_std_min=cfg.log_std_min, log_std_max=cfg.log_std_max,
        )  # fmt: skip
        self.critic = EnsembleCritic(
            obs_dim, action_dim, cfg.num_critics, cfg.hidden, cfg.layers, layernorm=cfg.critic_ln
        )
        self.critic.net = layernorm_after_relu(self.critic.net)
        edac_init(self.actor, self.critic)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.target_entropy = -float(action_dim)
        self.log_alpha = nn.Parameter(torch.zeros(()))
        self.optimizers = {
            "rnd": adam(self.rnd.predictor.parameters(), lr=cfg.rnd_lr),
            "actor": adam(self.actor.parameters(), lr=cfg.actor_lr),
            "alpha": adam([self.log_alpha], lr=cfg.alpha_lr),
            "critic": adam(self.critic.parameters(), lr=cfg.critic_lr),
        }

    def random_actions(self, like: torch.Tensor) -> torch.Tensor:
        return (torch.rand_like(like) * 2 - 1) * self.max_action

    def rnd_update(self, batch) -> dict[str, torch.Tensor]:
        obs, actions = batch["observations"], batch["actions"]
        self.rnd.state_moments.update(obs)
        self.rnd.action_moments.update(actions)
        error = self.rnd.error(obs, actions)
        self.rnd.error_moments.update(error.detach())
        loss = error.mean()
        self.step("rnd", loss)
        with torch.no_grad():  # CORL's gauge: the bonus on data against random actions
            std = self.rnd.error_moments.std
            rnd_random = self.rnd.bonus(obs, self.random_actions(actions)).mean()
        return {"rnd_loss": loss, "rnd_std": std, "rnd_data": loss / std, "rnd_random": rnd_random}

    def actor_loss(self, obs: torch.Tensor, alpha: torch.Tensor):
        """-> (loss, log pi(a~|s) (B,), metrics)."""
        pi, log_pi = self.actor(obs)
        bonus = self.rnd.bonus(obs, pi)
        q = self.critic(obs, pi).min(0).values
        loss = (alpha * log_pi + self.cfg.actor_beta * bonus - q).mean()
        return loss, log_pi, {"batch_entropy": -log_pi.mean(), "rnd_policy": bonus.mean()}

    @torch.no_grad()
    def q_target(self, batch, alpha: torch.Tensor) -> torch.Tensor:
        s_next = batch["next_observations"]
        next_a, next_log_pi = self.actor(s_next)
        next_q = self.critic_target(s_next, next_a).min(0).values
        bonus = self.rnd.bonus(s_next, next_a)
        next_v = next_q - alpha * next_log_pi - self.cfg.critic_beta * bonus
        return batch["rewards"] + self.cfg.discount * (1.0 - batch["dones"]) * next_v

    def sac_update(self, batch) -> dict[str, torch.Tensor]:
        obs = batch["observations"]
        alpha = self.log_alpha.exp().detach()

        # the actor's gradient reaches a~ through Q and the predictor, and stops there
        self.critic.requires_grad_(False)
        self.rnd.predictor.requires_grad_(False)
        actor_loss, log_pi, metrics = self.actor_loss(obs, alpha)
        self.step("actor", actor_loss)
        self.critic.requires_grad_(True)
        self.rnd.predictor.requires_grad_(True)

        entropy = -log_pi.detach().mean()
        alpha_loss = self.log_alpha.exp() * (entropy - self.target_entropy)
        self.step("alpha", alpha_loss)

        target = self.q_target(batch, alpha)
        q = self.critic(obs, batch["actions"])  # (N, B)
        critic_loss = ((q - target) ** 2).mean(1).sum()
        self.step("critic", critic_loss)
        soft_update(self.critic_target, self.critic, self.cfg.tau)

        with torch.no_grad():
            rnd_random = self.rnd.bonus(obs, self.random_actions(batch["actions"])).mean()
        metrics.update(
            actor_loss=actor_loss, alpha_loss=alpha_loss, alpha=alpha, critic_loss=critic_loss,
            q_min=q.min(0).values.mean(), rnd_random=rnd_random,
        )  # fmt: skip
        return metrics

    def update(self, batch):
        pretraining = int(self.updates) < self.cfg.rnd_steps
        metrics = self.rnd_update(batch) if pretraining else self.sac_update(batch)
        self.updates += 1
        return floats(metrics)

    @torch.no_grad()
    def act(self, obs):
        return self.actor(obs, deterministic=True)[0]
