"""CQL (Kumar et al. 2020, "Conservative Q-Learning for Offline RL"), as CORL's cql.py: SAC with
a conservative penalty that pushes Q down on actions the policy and a uniform proposal pick and
up on the dataset's actions.

alpha:  alpha = alpha_multiplier exp(log_alpha)
        L = -mean log_alpha (log pi(a~|s) + target_entropy),  a~ ~ pi(.|s),  target_entropy = -A
actor:  L = mean alpha log pi(a~|s) - min_i Q_i(s, a~)
        (the first `bc_steps` updates: L = mean alpha log pi(a~|s) - log pi(a|s), a the dataset's)
critic: y = r + gamma (1 - d) [min_i Q'_i(s', a') (- alpha log pi(a'|s') with backup_entropy)],
        a' ~ pi(.|s');  TD_i = mean (Q_i(s, a) - y)^2
        With K = cql_n_actions samples each of a_rand ~ U[-m, m]^A, a_cur ~ pi(.|s) and
        a_nxt ~ pi(.|s'), all scored at s (importance-sampled, T = cql_temp):
        ood_i(s) = T logsumexp over the 3K values / T of
            Q_i(s, a_rand) - log U,  Q_i(s, a_cur) - log pi(a_cur|s),
            Q_i(s, a_nxt) - log pi(a_nxt|s'),             log U = -A log(2m)
        diff_i = mean clip(ood_i(s) - Q_i(s, a), cql_clip_diff_min, cql_clip_diff_max)
        L = sum_i TD_i + cql_alpha diff_i
        cql_lagrange: alpha' = clamp(exp(log_alpha'), 0, 1e6) multiplies cql_alpha (diff_i - gap)
        in the critic loss, and L' = -alpha' cql_alpha mean_i (diff_i - gap) trains it.
Targets are Polyak-averaged every update.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from wmrl.offline.common import (
    EnsembleCritic,
    EnsembleLinear,
    OfflineAlgorithm,
    TanhGaussianActor,
    adam,
    floats,
    soft_update,
    tanh_log_det,
)


@dataclass
class CQLConfig:
    discount: float = 0.99
    alpha_multiplier: float = 1.0
    use_automatic_entropy_tuning: bool = True  # target entropy -A, log_alpha from 0
    backup_entropy: bool = False  # subtract alpha log pi(a'|s') in the TD target
    policy_lr: float = 3e-5  # also the entropy temperature's
    qf_lr: float = 3e-4  # also alpha prime's
    tau: float = 5e-3  # CORL's soft_target_update_rate, every update
    bc_steps: int = 0  # updates whose actor loss is behaviour cloning
    cql_n_actions: int = 10
    cql_importance_sample: bool = True
    cql_lagrange: bool = False
    cql_target_action_gap: float = -1.0
    cql_temp: float = 1.0
    cql_alpha: float = 10.0
    cql_max_target_backup: bool = False
    cql_clip_diff_min: float = -math.inf
    cql_clip_diff_max: float = math.inf
    orthogonal_init: bool = True  # critics only, as CORL (its actor never receives the flag)
    log_std_multiplier: float = 1.0  # initial values; CORL trains both with the actor
    log_std_offset: float = -1.0
    hidden: int = 256
    layers: int = 3
    batch_size: int = 256
    normalize_states: bool = True
    normalize_reward: bool = False


def cql_penalty(
    q_data: torch.Tensor,
    q_rand: torch.Tensor,
    q_curr: torch.Tensor,
    q_next: torch.Tensor,
    log_p_curr: torch.Tensor,
    log_p_next: torch.Tensor,
    action_dim: int,
    temp: float = 1.0,
    max_action: float = 1.0,
    importance_sample: bool = True,
) -> torch.Tensor:
    """CQL's soft maximum over sampled actions minus the dataset action's value, (N, B).

    q_data (N, B) = Q_i(s, a); q_rand, q_curr, q_next (N, B, K) = Q_i(s, .) at the K uniform,
    pi(.|s) and pi(.|s') actions; log_p_curr, log_p_next (B, K) their log-densities. With
    `importance_sample` each value is divided by its proposal's density (the uniform's is
    (2 max_action)^-A); without it the values and Q_i(s, a) enter the logsumexp as they are."""
    if importance_sample:
        log_uniform = -action_dim * math.log(2.0 * max_action)
        cat = torch.cat([q_rand - log_uniform, q_next - log_p_next, q_curr - log_p_curr], -1)
    else:
        cat = torch.cat([q_rand, q_data.unsqueeze(-1), q_next, q_curr], -1)
    return torch.logsumexp(cat / temp, -1) * temp - q_data


def _orthogonal_init(critic: EnsembleCritic) -> None:
    """CORL's critic init, member by member: orthogonal hidden weights (gain sqrt 2), an
    orthogonal output layer with gain 1e-2, zero biases."""
    linears = [m for m in critic.net if isinstance(m, EnsembleLinear)]
    with torch.no_grad():
        for k, lin in enumerate(linears):
            gain = 1e-2 if k == len(linears) - 1 else math.sqrt(2.0)
            for w in lin.weight:
                nn.init.orthogonal_(w, gain=gain)
            lin.bias.zero_()


def _tanh_log_prob(actor: TanhGaussianActor, obs: torch.Tensor, action: torch.Tensor):
    """log pi(a|s) (B,) of given actions (B, A), in the convention of the actor's forward (the
    density of a / max_action); the inverse tanh is clipped so that dataset actions on the
    bounds stay finite."""
    y = (action / actor.max_action).clamp(-1.0 + 1e-6, 1.0 - 1e-6)
    u = torch.atanh(y)
    return actor.dist(obs).log_prob(u).sum(-1) - tanh_log_det(u)


class CQL(OfflineAlgorithm):
    name = "cql"

    def __init__(self, obs_dim, action_dim, cfg: CQLConfig, max_action: float = 1.0):
        super().__init__(obs_dim, action_dim, cfg, max_action)
        self.actor = TanhGaussianActor(
            obs_dim, action_dim, cfg.hidden, cfg.layers, max_action,
            log_std_multiplier=cfg.log_std_multiplier, log_std_offset=cfg.log_std_offset,
        )  # fmt: skip
        # CORL's policy holds the multiplier and offset as trainable scalars
        self.actor.log_std_multiplier = nn.Parameter(torch.tensor(float(cfg.log_std_multiplier)))
        self.actor.log_std_offset = nn.Parameter(torch.tensor(float(cfg.log_std_offset)))
        with torch.no_grad():
            nn.init.xavier_uniform_(self.actor.net[-1].weight, gain=1e-2)
            self.actor.net[-1].bias.zero_()
        self.critic = EnsembleCritic(obs_dim, action_dim, 2, cfg.hidden, cfg.layers)
        if cfg.orthogonal_init:
            _orthogonal_init(self.critic)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.target_entropy = -float(action_dim)
        self.log_alpha = nn.Parameter(torch.zeros(()))
        self.optimizers = {
            "actor": adam(self.actor.parameters(), lr=cfg.policy_lr),
            "critic": adam(self.critic.parameters(), lr=cfg.qf_lr),
        }
        if cfg.use_automatic_entropy_tuning:
            self.optimizers["alpha"] = adam([self.log_alpha], lr=cfg.policy_lr)
        if cfg.cql_lagrange:
            self.log_alpha_prime = nn.Parameter(torch.ones(()))
            self.optimizers["alpha_prime"] = adam([self.log_alpha_prime], lr=cfg.qf_lr)

    def _q_many(self, critic: EnsembleCritic, obs: torch.Tensor, actions: torch.Tensor):
        """Q_i(s, a_k): obs (B, S), actions (B, K, A) -> (N, B, K)."""
        b, k, _ = actions.shape
        q = critic(obs.repeat_interleave(k, 0), actions.reshape(b * k, -1))
        return q.reshape(-1, b, k)

    def _pi_many(self, obs: torch.Tensor, k: int):
        """K policy samples per state: (B, K, A) actions, (B, K) log-densities."""
        return self.actor(obs.unsqueeze(1).expand(-1, k, -1))

    @torch.no_grad()
    def policy_samples(self, batch) -> dict[str, torch.Tensor]:
        """The critic loss's sampled actions (no gradient), drawn from the current policy:
        next_actions (B, A) or (B, K, A) with cql_max_target_backup, and next_log_pi, for the
        target; random_actions (B, K, A) ~ U[-m, m]; current_actions (B, K, A) ~ pi(.|s) and
        next_state_actions (B, K, A) ~ pi(.|s'), with their log-densities (B, K)."""
        cfg, obs, next_obs = self.cfg, batch["observations"], batch["next_observations"]
        n, m = cfg.cql_n_actions, self.max_action
        if cfg.cql_max_target_backup:
            next_a, next_log_pi = self._pi_many(next_obs, n)
        else:
            next_a, next_log_pi = self.actor(next_obs)
        rand = torch.rand(obs.shape[0], n, self.action_dim, device=obs.device) * (2 * m) - m
        cur, cur_log_pi = self._pi_many(obs, n)
        nxt, nxt_log_pi = self._pi_many(next_obs, n)
        return {
            "next_actions": next_a, "next_log_pi": next_log_pi, "random_actions": rand,
            "current_actions": cur, "current_log_pi": cur_log_pi,
            "next_state_actions": nxt, "next_state_log_pi": nxt_log_pi,
        }  # fmt: skip

    def critic_loss(self, batch, alpha: torch.Tensor, samples: dict[str, torch.Tensor]):
        """-> (sum_i TD_i + conservative terms, metrics, alpha' loss or None); `samples` as
        `policy_samples` returns."""
        cfg, obs, actions = self.cfg, batch["observations"], batch["actions"]
        q = self.critic(obs, actions)  # (N, B)
        with torch.no_grad():
            next_obs, next_log_pi = batch["next_observations"], samples["next_log_pi"]
            if cfg.cql_max_target_backup:
                q_next = self._q_many(self.critic_target, next_obs, samples["next_actions"])
                q_next, idx = q_next.min(0).values.max(-1)
                next_log_pi = next_log_pi.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
            else:
                q_next = self.critic_target(next_obs, samples["next_actions"]).min(0).values
            if cfg.backup_entropy:
                q_next = q_next - alpha * next_log_pi
            target = batch["rewards"] + cfg.discount * (1.0 - batch["dones"]) * q_next
        td_loss = ((q - target) ** 2).mean(1).sum()

        q_rand = self._q_many(self.critic, obs, samples["random_actions"])
        q_curr = self._q_many(self.critic, obs, samples["current_actions"])
        # CORL (and Kumar et al.'s code) score pi(.|s')'s actions at s, not at s'
        q_nxt = self._q_many(self.critic, obs, samples["next_state_actions"])
        penalty = cql_penalty(
            q, q_rand, q_curr, q_nxt, samples["current_log_pi"], samples["next_state_log_pi"],
            self.action_dim, cfg.cql_temp, self.max_action, cfg.cql_importance_sample,
        )  # fmt: skip
        diff = penalty.clamp(cfg.cql_clip_diff_min, cfg.cql_clip_diff_max).mean(1)  # (N,)
        alpha_prime_loss = None
        if cfg.cql_lagrange:
            alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6)
            gap = diff - cfg.cql_target_action_gap
            cql_loss = alpha_prime.detach() * cfg.cql_alpha * gap
            alpha_prime_loss = -(alpha_prime * cfg.cql_alpha * gap.detach()).mean()
        else:
            cql_loss = cfg.cql_alpha * diff
        cat = torch.cat([q_rand, q.unsqueeze(-1), q_nxt, q_curr], -1)
        metrics = {
            "critic_loss": td_loss + cql_loss.sum(), "td_loss": td_loss,
            "cql_loss": cql_loss.sum(), "cql_diff": diff.mean(), "cql_std": cat.std(-1).mean(),
            "q": q.mean(), "target_q": q_next.mean(), "q_rand": q_rand.mean(),
            "q_current_actions": q_curr.mean(), "q_next_actions": q_nxt.mean(),
        }  # fmt: skip
        if alpha_prime_loss is not None:
            metrics.update(alpha_prime=alpha_prime, alpha_prime_loss=alpha_prime_loss)
        return metrics["critic_loss"], metrics, alpha_prime_loss

    def actor_loss(self, batch, pi, log_pi, alpha):
        # bc_steps first: reading the update count costs a host sync on an accelerator
        if self.cfg.bc_steps and int(self.updates) < self.cfg.bc_steps:
            log_prob_data = _tanh_log_prob(self.actor, batch["observations"], batch["actions"])
            return (alpha * log_pi - log_prob_data).mean()
        q = self.critic(batch["observations"], pi).min(0).values
        return (alpha * log_pi - q).mean()

    def update(self, batch):
        cfg = self.cfg
        pi, log_pi = self.actor(batch["observations"])
        if cfg.use_automatic_entropy_tuning:
            alpha_loss = -(self.log_alpha * (log_pi + self.target_entropy).detach()).mean()
        alpha = self.log_alpha.exp().detach() * cfg.alpha_multiplier
        # the critic loss uses the policy before this update's actor step, as in CORL
        samples = self.policy_samples(batch)

        steps = []  # (optimiser, loss), stepped in CORL's order
        if cfg.use_automatic_entropy_tuning:
            steps.append(("alpha", alpha_loss))
        self.critic.requires_grad_(False)  # the actor's gradient needs none for the critic
        actor_loss = self.actor_loss(batch, pi, log_pi, alpha)
        self.critic.requires_grad_(True)
        steps.append(("actor", actor_loss))
        critic_loss, metrics, alpha_prime_loss = self.critic_loss(batch, alpha, samples)
        if alpha_prime_loss is not None:
            steps.append(("alpha_prime", alpha_prime_loss))
        steps.append(("critic", critic_loss))
        for name, loss in steps:
            self.step(name, loss)
        soft_update(self.critic_target, self.critic, cfg.tau)
        self.updates += 1

        metrics.update(actor_loss=actor_loss, alpha=alpha, log_pi=log_pi.mean())
        if cfg.use_automatic_entropy_tuning:
            metrics["alpha_loss"] = alpha_loss
        return floats(metrics)

    @torch.no_grad()
    def act(self, obs):
        return self.actor(obs, deterministic=True)[0]
