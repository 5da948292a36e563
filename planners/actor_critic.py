"""DreamerV2's imagination actor-critic (Hafner et al. 2021, sec. 2.2; danijar/dreamerv2
`agent.py` ActorCritic) for any `worldmodels.WorldModel`: it reads the model only through
`img_step`, `features`, `reward` and `continuation`.

From every posterior state of a training batch, the actor imagines `horizon` steps in the
model's prior; a critic regresses lambda-returns computed with a slow target critic, and the
actor maximises them by backpropagating through the dynamics (continuous actions), with
REINFORCE (discrete), or a mix. Index alignment of one imagined sequence (danijar's diagram;
seq index k = 0..H, z_0 the replay's posterior):

    action[k]:     0     a1    a2   ...  aH         a_k = actor(z_(k-1)), led to z_k
    state z_k:     z0 -> z1 -> z2   ...  zH
    reward[k]:     r0    r1    r2   ...  rH         model.reward(z_k): arriving in z_k
    discount[k]:   d0    d1    d2   ...  dH         gamma * continuation(z_k) (d0 from the
                                                    replay's is_terminal when given)
    value[k]:      v0    v1    v2   ...  vH         slow target critic(z_k)
    weight[k]:     1     d0   d0d1  ...             prod_(j<k) d_j: is z_k still in the episode
    target[k]:     t0    t1   ...  t(H-1)           t_k = r_k + d_k ((1-lambda) v_(k+1)
                                                                    + lambda t_(k+1)),  t_H = v_H

so a value includes the reward of arriving in its state (danijar's convention). The critic fits
t_0..t_(H-1) at z_0..z_(H-1); the actor at z_k (k < H-1) maximises t_(k+1), which holds the
reward of its action a_(k+1).
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from wmrl.infra.metrics import settle_metrics
from wmrl.infra.runtime import autocast, compile_methods
from wmrl.worldmodels.categorical_rssm import straight_through_onehot
from wmrl.worldmodels.nets import (
    TwoHot,
    gaussian_nll,
    init_,
    make_optimizer,
    mlp,
    zero_output_,
)
from wmrl.worldmodels.protocol import map_state, stack_states


@dataclass
class ActorCriticConfig:
    """danijar/dreamerv2 configs.yaml, `defaults` overridden by `dmc_vision`."""

    horizon: int = 15  # imag_horizon
    discount: float = 0.99  # gamma
    discount_lambda: float = 0.95  # lambda of the lambda-returns
    actor_grad: Literal["auto", "dynamics", "reinforce", "both"] = "auto"  # auto: dynamics
    # for continuous actions, reinforce for discrete
    actor_grad_mix: float = 0.1  # weight of the dynamics gradient with "both"
    actor_ent: float = 1e-4  # entropy bonus (dmc_vision; 2e-3 by default, 1e-3 for Atari)
    layers: int = 4  # hidden layers of actor and critic
    units: int = 400
    min_std: float = 0.1  # actor std = 2 sigmoid((x + init_std) / 2) + min_std
    init_std: float = 0.0
    slow_target_update: int = 100  # updates between copies of the critic into the target
    slow_target_fraction: float = 1.0  # 1: copy
    actor_lr: float = 8e-5
    critic_lr: float = 8e-5
    adam_eps: float = 1e-5
    grad_clip: float = 100.0
    weight_decay: float = 1e-6  # decoupled, w <- (1 - wd) w, as danijar's optimizer
    # DreamerV3's changes (Hafner et al. 2023), off as DreamerV2 has them:
    return_norm: bool = False  # the actor's returns divided by max(1, S), S an EMA of their
    # 95th - 5th percentile range (V3: with actor_ent 3e-4, so the bonus means the same at
    # any reward scale)
    return_norm_decay: float = 0.99  # the EMA's decay
    critic_bins: int = 0  # > 0: a two-hot critic over this many symlog bins (V3: 255), else
    # a unit Gaussian
    init: Literal["torch", "keras"] = "torch"  # keras: glorot-uniform weights, zero biases
    layernorm: bool = False  # LayerNorm before every hidden activation of actor and critic (V3)


# ------------------------------------------------------------------------------- distributions
class TruncNormal:
    """N(loc, scale) truncated to [low, high], independent over the last dim (danijar's
    TruncNormalDist): reparameterised samples by the inverse CDF, clipped 1e-6 inside the bounds
    with a straight-through gradient. loc and scale (..., A)."""

    def __init__(self, loc, scale, low: float = -1.0, high: float = 1.0, clip: float = 1e-6):
        self.loc, self.scale, self.low, self.high, self.clip = loc, scale, low, high, clip
        self.alpha, self.beta = (low - loc) / scale, (high - loc) / scale
        self._cdf_alpha = torch.special.ndtr(self.alpha)
        self._z = (torch.special.ndtr(self.beta) - self._cdf_alpha).clamp(min=1e-8)

    def rsample(self) -> torch.Tensor:
        u = torch.rand_like(self.loc)
        p = (self._cdf_alpha + u * self._z).clamp(1e-7, 1 - 1e-7)
        x = self.loc + self.scale * torch.special.ndtri(p)
        clipped = x.clamp(self.low + self.clip, self.high - self.clip)
        return x + (clipped - x).detach()

    sample = rsample

    def mode(self) -> torch.Tensor:
        return self.loc.clamp(self.low, self.high)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc + self.scale * (_phi(self.alpha) - _phi(self.beta)) / self._z

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.loc) / self.scale
        log_p = -0.5 * z**2 - 0.5 * math.log(2 * math.pi) - self.scale.log() - self._z.log()
        return log_p.sum(-1)

    def entropy(self) -> torch.Tensor:
        a, b = self.alpha, self.beta
        ent = 0.5 * math.log(2 * math.pi * math.e) + (self.scale * self._z).log()
        ent = ent + (a * _phi(a) - b * _phi(b)) / (2 * self._z)
        return ent.sum(-1)


class OneHotDist:
    """Categorical over the last dim with one-hot, straight-through samples (discrete actions)."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits.float()
        self.log_probs = F.log_softmax(self.logits, -1)

    def rsample(self) -> torch.Tensor:
        return straight_through_onehot(self.logits)

    sample = rsample

    def mode(self) -> torch.Tensor:
        return F.one_hot(self.logits.argmax(-1), self.logits.shape[-1]).float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.log_probs).sum(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.log_probs.exp() * self.log_probs).sum(-1)


def _phi(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)


# ------------------------------------------------------------------------------------ returns
class ReturnNormalizer(nn.Module):
    """DreamerV3's return scale (Hafner et al. 2023, eq. 7; `Moments` of danijar/dreamerv3):
    EMAs of the batch's 5th and 95th return percentiles, and the scale max(1, high - low) that
    the actor's returns are divided by. Returns spread over less than 1 are left as they are,
    so small rewards are not amplified into noise.

    Called with returns (any shape), it updates the EMAs (starting from 0, as V3's) and gives
    the scale as a 0-dim tensor, without a host sync."""

    def __init__(self, decay: float = 0.99, low: float = 0.05, high: float = 0.95):
        super().__init__()
        self.decay, self.q = decay, (low, high)
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))

    @torch.no_grad()
    def forward(self, returns: torch.Tensor) -> torch.Tensor:
        flat = returns.detach().float().flatten()
        q = torch.quantile(flat, torch.tensor(self.q, device=flat.device))
        self.low.lerp_(q[0], 1 - self.decay)
        self.high.lerp_(q[1], 1 - self.decay)
        return torch.clamp(self.high - self.low, min=1.0)


def lambda_return(reward, value, discount, bootstrap, lambda_: float) -> torch.Tensor:
    """TD(lambda) targets, danijar's `lambda_return`: (B, T) each, bootstrap (B,) -> (B, T),

        t_k = reward_k + discount_k ((1 - lambda) value_(k+1) + lambda t_(k+1)),
        with value_T = t_T = bootstrap.

    lambda = 1 gives discounted Monte-Carlo returns, lambda = 0 one-step TD targets.
    """
    next_value = torch.cat([value[:, 1:], bootstrap[:, None]], 1)
    inputs = reward + discount * next_value * (1 - lambda_)
    ret, out = bootstrap, []
    for k in reversed(range(reward.shape[1])):
        ret = inputs[:, k] + discount[:, k] * lambda_ * ret
        out.append(ret)
    return torch.stack(out[::-1], 1)


@contextlib.contextmanager
def frozen(module):
    """Gradients flow through `module` but do not accumulate in its parameters."""
    params = [p for p in getattr(module, "parameters", list)() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# ---------------------------------------------------------------------------------- the agent
class Actor(nn.Module):
    """MLP (layers x units, ELU; LayerNorm before each activation with `layernorm`) ->
    TruncNormal(tanh(mean), 2 sigmoid((s + init_std) / 2) + min_std) on [-1, 1] for continuous
    actions, or OneHotDist for discrete ones."""

    def __init__(self, feat_dim: int, action_dim: int, cfg: ActorCriticConfig, discrete: bool):
        super().__init__()
        self.cfg, self.discrete = cfg, discrete
        out = action_dim if discrete else 2 * action_dim
        self.net = mlp(feat_dim, out, cfg.units, cfg.layers, nn.ELU, cfg.layernorm)

    def forward(self, feat: torch.Tensor):
        out = self.net(feat).float()
        if self.discrete:
            return OneHotDist(out)
        mean, std = out.chunk(2, -1)
        std = 2 * torch.sigmoid((std + self.cfg.init_std) / 2) + self.cfg.min_std
        return TruncNormal(torch.tanh(mean), std)


class ActorCritic(nn.Module):
    """Actor, critic and slow target critic with their optimisers.

    Args:
        feat_dim: the size of `model.features(state)`.
        action_dim: A; continuous actions lie in [-1, 1], discrete ones are one-hot.
    """

    def __init__(
        self,
        feat_dim: int,
        action_dim: int,
        cfg: ActorCriticConfig | None = None,
        discrete: bool = False,
    ):
        super().__init__()
        self.cfg = cfg = cfg or ActorCriticConfig()
        self.action_dim, self.discrete = action_dim, discrete
        self.actor = Actor(feat_dim, action_dim, cfg, discrete)
        out = cfg.critic_bins or 1
        self.critic = mlp(feat_dim, out, cfg.units, cfg.layers, nn.ELU, cfg.layernorm)
        init_(self, cfg.init)
        if cfg.critic_bins:
            zero_output_(self.critic)
        self.return_norm = ReturnNormalizer(cfg.return_norm_decay) if cfg.return_norm else None
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        grad = cfg.actor_grad
        self.actor_grad = ("reinforce" if discrete else "dynamics") if grad == "auto" else grad
        opt = (cfg.adam_eps, cfg.weight_decay)
        self.actor_opt = make_optimizer(self.actor.parameters(), cfg.actor_lr, *opt)
        self.critic_opt = make_optimizer(self.critic.parameters(), cfg.critic_lr, *opt)

    def optimizers_state_dict(self) -> dict:
        return {"actor": self.actor_opt.state_dict(), "critic": self.critic_opt.state_dict()}

    def load_optimizers_state_dict(self, state: dict) -> None:
        self.actor_opt.load_state_dict(state["actor"])
        self.critic_opt.load_state_dict(state["critic"])

    @torch.no_grad()
    def act(self, feat: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """Actions (..., A) for features (..., F): a sample (training) or the mode (evaluation)."""
        dist = self.actor(feat)
        return dist.sample() if sample else dist.mode()

    def value(self, feat: torch.Tensor, target: bool = False) -> torch.Tensor:
        """The critic's (or slow target's) value (...,) of features (..., F)."""
        out = (self.target_critic if target else self.critic)(feat).float()
        return TwoHot(out).mean() if self.cfg.critic_bins else out.squeeze(-1)

    # --------------------------------------------------------------------------- imagination
    def imagine(
        self, model, start, horizon: int | None = None, is_terminal=None, reward_fn=None
    ) -> dict:
        """Roll the actor out in `model` from `start` (a state with leading dim (N,)).

        Returns a dict of (N, H+1, ...) tensors aligned as the module's diagram: feat, action,
        reward, discount, weight, and "state" (the model's states, stacked). `is_terminal` (N,)
        overrides the continuation of z_0 with the replay's truth (danijar does so where the
        model predicts discounts). `reward_fn` (the dict without "reward" -> (N, H+1)) gives the
        rewards in place of `model.reward` (an explorer's intrinsic reward, danijar's
        `reward_fn`), aligned as the diagram: reward[k] is for arriving in z_k."""
        H = self.cfg.horizon if horizon is None else horizon
        state = start
        feats = [model.features(state)]
        no_action = feats[0].new_zeros(*feats[0].shape[:-1], self.action_dim)
        states, actions = [state], [no_action]
        for _ in range(H):
            action, state, feat = self._imagine_step(model, state, feats[-1])
            states.append(state)
            feats.append(feat)
            actions.append(action)
        states = stack_states(states, 1)
        cont = model.continuation(states).float()
        if is_terminal is not None:
            first = 1.0 - torch.as_tensor(is_terminal, device=cont.device).float().reshape(-1)
            cont = torch.cat([first[:, None], cont[:, 1:]], 1)
        discount = self.cfg.discount * cont
        ones = torch.ones_like(discount[:, :1])
        weight = torch.cumprod(torch.cat([ones, discount[:, :-1]], 1), 1).detach()
        seq = {
            "feat": torch.stack(feats, 1),
            "action": torch.stack(actions, 1),
            "discount": discount,
            "weight": weight,
            "state": states,
        }
        seq["reward"] = (model.reward(states) if reward_fn is None else reward_fn(seq)).float()
        return seq

    def _imagine_step(self, model, state, feat):
        """One imagined step: (action a_(k+1), state z_(k+1), its features) from z_k."""
        # The policy reads sg(feat): its gradient reaches it only through its own actions.
        action = self.actor(feat.detach()).rsample()
        state = model.img_step(state, action)
        return action, state, model.features(state)

    def compile_steps(self, **options) -> None:
        """torch.compile the imagination step (actor, the model's `img_step`, features),
        `options` passed on; see `RecurrentStateSpaceModel.compile_steps`."""
        compile_methods(self, ("_imagine_step",), **options)

    def target(self, seq: dict) -> torch.Tensor:
        """Lambda-returns t_0..t_(H-1) (N, H) from the slow critic's values of seq["feat"]."""
        value = self.value(seq["feat"], target=True)
        return lambda_return(
            seq["reward"][:, :-1],
            value[:, :-1],
            seq["discount"][:, :-1],
            value[:, -1],
            self.cfg.discount_lambda,
        )

    def actor_loss(self, seq: dict, target: torch.Tensor):
        """-mean(weight_k (objective_k + actor_ent * entropy_k)) over k = 0..H-2."""
        cfg = self.cfg
        policy = self.actor(seq["feat"][:, :-2].detach())
        metrics = {}
        scale = 1.0
        if self.return_norm is not None:
            scale = self.return_norm(target.detach())
            metrics["return_scale"] = scale
        if self.actor_grad == "dynamics":
            objective = target[:, 1:] / scale
        else:
            baseline = self.value(seq["feat"][:, :-2], target=True)
            advantage = ((target[:, 1:] - baseline) / scale).detach()
            objective = policy.log_prob(seq["action"][:, 1:-1].detach()) * advantage
            if self.actor_grad == "both":
                objective = (
                    cfg.actor_grad_mix * target[:, 1:] + (1 - cfg.actor_grad_mix) * objective
                )
            elif self.actor_grad != "reinforce":
                raise ValueError(
                    f"actor_grad must be auto, dynamics, reinforce or both, got {self.actor_grad!r}"
                )
        entropy = policy.entropy()
        objective = objective + cfg.actor_ent * entropy
        metrics["actor_ent"] = entropy.mean()
        return -(seq["weight"][:, :-2] * objective).mean(), metrics

    def critic_loss(self, seq: dict, target: torch.Tensor) -> torch.Tensor:
        """Unit-Gaussian NLL (or the two-hot cross-entropy) of the (sg) targets under the
        critic at z_0..z_(H-1), weighted."""
        if self.cfg.critic_bins:
            nll = TwoHot(self.critic(seq["feat"][:, :-1].detach())).loss(target.detach())
        else:
            nll = gaussian_nll(self.value(seq["feat"][:, :-1].detach()), target.detach(), 0)
        return (seq["weight"][:, :-1] * nll).mean()

    def actor_objective(self, model, start, is_terminal=None, reward_fn=None):
        """Imagination from the posterior states `start` (B, T) in `model` (frozen: the actor's
        gradient flows through it, into no weight of it), the lambda-returns and the actor's
        loss: (loss, metrics, seq, target), seq as `imagine`'s and target (B * T, H)."""
        start = map_state(lambda x: x.detach().reshape(-1, *x.shape[2:]), start)
        with frozen(model), autocast(self.updates.device):
            seq = self.imagine(model, start, is_terminal=is_terminal, reward_fn=reward_fn)
            target = self.target(seq)
            actor_loss, metrics = self.actor_loss(seq, target)
        return actor_loss, metrics, seq, target

    def update(
        self,
        model,
        start,
        is_terminal=None,
        sync: bool = True,
        objectives: tuple | None = None,
        reward_fn=None,
    ) -> dict:
        """One actor and one critic step from the posterior states `start` (B, T) of a
        world-model batch (each of the B * T states starts an imagined sequence; `is_terminal`
        (B, T) or None); the model's weights are not changed. `reward_fn`: see `imagine`
        (None: the model's reward).

        `objectives` (actor's, critic's) compute the losses in place of `actor_objective` and
        `critic_loss`: a data-parallel loop passes `ActorLoss(self)` and `CriticLoss(self)`
        wrapped in DDP, whose backwards then average the gradients over the ranks.

        Returns the metrics as floats with `sync` (a non-finite loss or gradient raises
        FloatingPointError before any step), else as device tensors with nothing waiting for
        the device; check them with `worldmodels.rssm.check_finite` when you sync."""
        actor_objective, critic_objective = objectives or (self.actor_objective, self.critic_loss)
        device = self.updates.device
        actor_loss, metrics, seq, target = actor_objective(model, start, is_terminal, reward_fn)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        actor_norm = nn.utils.clip_grad_norm_(self.actor.parameters(), self.cfg.grad_clip)
        with autocast(device):
            critic_loss = critic_objective(seq, target)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        critic_norm = nn.utils.clip_grad_norm_(self.critic.parameters(), self.cfg.grad_clip)
        metrics.update(
            actor_loss=actor_loss,
            critic_loss=critic_loss,
            actor_grad_norm=actor_norm,
            critic_grad_norm=critic_norm,
            imag_reward=seq["reward"].mean(),
            critic_target=target.mean(),
        )
        out = settle_metrics(metrics, sync, "actor-critic loss or gradient", "lower --ac.actor-lr")
        self.actor_opt.step()
        self.critic_opt.step()
        self.update_slow_target()
        return out

    @torch.no_grad()
    def update_slow_target(self) -> None:
        """Every `slow_target_update` updates (the first included) mix the critic into the
        target with `slow_target_fraction` (1 = copy), as danijar's, then count the update.
        The mix is computed on the device (0 between copies): no host synchronisation."""
        n = self.updates
        due = (n % self.cfg.slow_target_update == 0).float()
        first = (n == 0).float()
        mix = due * (first + (1 - first) * self.cfg.slow_target_fraction)
        for s, d in zip(self.critic.parameters(), self.target_critic.parameters(), strict=True):
            d.lerp_(s, mix.to(d.dtype))
        self.updates += 1


class ActorLoss(nn.Module):
    """`ActorCritic.actor_objective` as a module's `forward`, for DistributedDataParallel (which
    averages the gradients only of a backward that follows a forward through it): its
    parameters are exactly the actor's. Neither the critics nor the world model are its
    submodules, so DDP does not wait for gradients of theirs (the model is frozen in the
    imagination, the slow critic has none)."""

    def __init__(self, ac: ActorCritic):
        super().__init__()
        self.actor = ac.actor
        self._objective = ac.actor_objective  # a method, not a submodule

    def forward(self, model, start, is_terminal=None, reward_fn=None):
        return self._objective(model, start, is_terminal, reward_fn)


class CriticLoss(nn.Module):
    """`ActorCritic.critic_loss` as a module's `forward` (seq, target -> loss), for
    DistributedDataParallel: the critic's parameters, and the slow critic's (without gradients,
    but DDP broadcasts rank 0's when it is built, so that every rank starts from one target)."""

    def __init__(self, ac: ActorCritic):
        super().__init__()
        self.critic, self.target_critic = ac.critic, ac.target_critic
        self._objective = ac.critic_loss

    def forward(self, seq: dict, target: torch.Tensor) -> torch.Tensor:
        return self._objective(seq, target)
