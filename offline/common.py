"""The one shape of every offline algorithm, and the parts they share.

Every algorithm is one file with a config dataclass (the paper's and CORL's values as defaults)
and a subclass of `OfflineAlgorithm`:

    algo = TD3BC(obs_dim, action_dim, TD3BCConfig(), max_action=1.0)
    metrics = algo.update(batch)            # one gradient step -> {name: float}
    action = algo.act(obs)                  # deterministic, (B, S) -> (B, A) tensor
    state = algo.save_state(); algo.load_state(state)   # networks and optimisers

A batch is a dict of tensors on the algorithm's device, states already normalised:

    observations (B, S)   actions (B, A)   rewards (B,)   next_observations (B, S)
    dones (B,) float: 1 where the episode *terminated* (no bootstrap); a time limit is 0
    next_actions (B, A): the dataset's action at the next state (ReBRAC's critic penalty;
        at the last step of an episode the same action repeated, which a done masks out)

Every config has `batch_size`, `hidden`, `normalize_states` (z-score states with the dataset's
statistics, in evaluation too) and `normalize_reward` (IQL's locomotion scaling, rewards times
1000 / (max return - min return)); the training loop (`offline.trainer`) reads them.

Ensembles (the critics of every algorithm, SAC-N's and EDAC's N critics) are one batched module
with the members as a leading dimension, never a Python loop over members.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wmrl.envs.rollout import episode_returns
from wmrl.infra.metrics import metric_floats as floats
from wmrl.worldmodels.nets import EnsembleLayerNorm, EnsembleLinear, mlp

__all__ = [
    "DeterministicActor",
    "EnsembleCritic",
    "EnsembleLinear",
    "GaussianActor",
    "Normalizer",
    "OfflineAlgorithm",
    "TanhGaussianActor",
    "TransitionBuffer",
    "adam",
    "best_score",
    "episode_returns",
    "floats",
    "mlp",
    "score_row",
    "soft_update",
    "symmetric_bound",
    "tanh_log_det",
]


class OfflineAlgorithm(nn.Module):
    """Base of the suite. Subclasses build their networks in `__init__` (after calling this
    one), put their optimisers in `self.optimizers` (a name -> optimizer dict), and implement
    `update` and `act`. `self.updates` counts gradient steps (a buffer, saved with the nets)."""

    name = "offline"

    def __init__(self, obs_dim: int, action_dim: int, cfg, max_action: float = 1.0):
        super().__init__()
        self.obs_dim, self.action_dim, self.cfg = int(obs_dim), int(action_dim), cfg
        self.max_action = float(max_action)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @property
    def device(self) -> torch.device:
        return self.updates.device

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic evaluation actions (B, A) in [-max_action, max_action] for normalised
        states (B, S)."""
        raise NotImplementedError

    def step(self, name: str, loss: torch.Tensor) -> None:
        """One optimiser step of `self.optimizers[name]` on `loss`. The backward pass computes
        the gradients of that optimiser's parameters only: an actor's loss runs through the
        critic, whose weight gradients it would otherwise compute and discard."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=[p for group in opt.param_groups for p in group["params"]])
        opt.step()

    def save_state(self) -> dict:
        return {
            "nets": self.state_dict(),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
        }

    def load_state(self, state: dict) -> None:
        self.load_state_dict(state["nets"])
        missing = set(self.optimizers) ^ set(state["optimizers"])
        if missing:
            raise ValueError(f"{self.name} optimizers differ from the checkpoint's: {missing}")
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])


def adam(params, lr: float, **kwargs) -> torch.optim.Adam:
    """Adam with its fused implementation (one kernel over all parameters, no Python loop over
    them) where the parameters' device has one (CPU and CUDA); the same update rule as CORL's
    torch.optim.Adam, to float rounding."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None, **kwargs)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau source, parameter by parameter (Polyak averaging)."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


# ------------------------------------------------------------------------------- data


def symmetric_bound(space: gym.Space, what: str = "the env") -> float:
    """The bound m of a Box action space [-m, m]^A, which a tanh-squashed actor scaled by
    `max_action` covers; any other space is refused with the fix."""
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"{what}: the actors need a flat Box action space (A,), got {space}")
    low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
    finite = np.isfinite(low).all() and np.isfinite(high).all()
    if not (finite and np.allclose(low, -high) and np.allclose(high, high[0]) and high[0] > 0):
        raise ValueError(
            f"{what}: the actors give max_action * tanh(u), so the action bounds must be "
            f"[-m, m] with one m in every dimension, got low={low} high={high}; rescale them "
            "(envs.make rescales bounded actions to [-1, 1]; or gymnasium.wrappers.RescaleAction)"
        )
    return float(high[0])


class Normalizer(nn.Module):
    """z-scores states with the dataset's mean and std (std + eps, CORL's eps 1e-3)."""

    def __init__(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    @classmethod
    def fit(cls, states: np.ndarray, eps: float = 1e-3) -> Normalizer:
        states = np.asarray(states, np.float64)
        return cls(states.mean(0), states.std(0) + eps)

    @classmethod
    def identity(cls, dim: int) -> Normalizer:
        return cls(np.zeros(dim), np.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TransitionBuffer:
    """Transitions as tensors on one device; uniform minibatches, optionally growing (SAC).

    Keys and shapes as in the module docstring; `size` transitions are held, at most
    `capacity` (the oldest overwritten)."""

    keys = ("observations", "actions", "rewards", "next_observations", "dones", "next_actions")

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, device="cpu"):
        self.capacity, self.size, self._next = int(capacity), 0, 0
        dims = {"actions": action_dim, "next_actions": action_dim, "rewards": None, "dones": None}
        # Every key is a column block of one (capacity, width) tensor, so that a minibatch is
        # one gather rather than one per key.
        widths = [1 if dims.get(k, obs_dim) is None else dims.get(k, obs_dim) for k in self.keys]
        self._rows = torch.zeros(self.capacity, sum(widths), dtype=torch.float32, device=device)
        self._columns, start = {}, 0
        for k, w in zip(self.keys, widths, strict=True):
            one = dims.get(k, obs_dim) is None
            self._columns[k] = start if one else slice(start, start + w)
            start += w
        self.data = self._split(self._rows)

    def _split(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The keys' views (n, d) or (n,) of rows (n, width)."""
        return {k: rows[:, c] for k, c in self._columns.items()}

    @classmethod
    def from_transitions(cls, t: dict[str, np.ndarray], device="cpu") -> TransitionBuffer:
        """From `envs.to_transitions` output (terminals -> dones; next_actions derived from
        the episode boundaries that terminals and timeouts mark)."""
        n, obs_dim = t["observations"].shape
        buf = cls(n, obs_dim, t["actions"].shape[1], device)
        ends = np.asarray(t["terminals"], bool) | np.asarray(t["timeouts"], bool)
        nxt = np.concatenate([t["actions"][1:], t["actions"][-1:]])
        nxt[ends] = t["actions"][ends]  # no next action inside the dataset: repeat the last
        buf.add(
            t["observations"], t["actions"], t["rewards"], t["next_observations"],
            t["terminals"], nxt,
        )  # fmt: skip
        return buf

    def add(self, obs, action, reward, next_obs, done, next_action=None) -> None:
        """Append a batch (leading dim n) or one transition."""
        next_action = action if next_action is None else next_action
        values = [obs, action, reward, next_obs, done, next_action]
        values = [torch.as_tensor(np.asarray(v), dtype=torch.float32) for v in values]
        n = 1 if values[2].ndim == 0 else values[2].shape[0]
        device = self.data["rewards"].device  # every key lives on one device
        idx = ((torch.arange(n) + self._next) % self.capacity).to(device)
        for k, v in zip(self.keys, values, strict=True):
            self.data[k][idx] = v.reshape(n, *self.data[k].shape[1:]).to(device)
        self._next = (self._next + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict:
        if self.size == 0:
            raise ValueError("cannot sample from an empty TransitionBuffer")
        device = self._rows.device
        idx = torch.randint(self.size, (batch_size,), device=device, generator=generator)
        return self._split(self._rows[idx])

    def state_dict(self) -> dict:
        n = self.size
        data = {k: v[:n].cpu().contiguous() for k, v in self.data.items()}  # not all the rows
        return {"data": data, "next": self._next}

    def load_state_dict(self, state: dict) -> None:
        n = len(state["data"]["rewards"])
        for k, v in state["data"].items():
            self.data[k][:n] = v.to(self.data[k].device)
        self.size, self._next = n, int(state["next"])


# ------------------------------------------------------------------------- evaluation


def score_row(returns, dataset) -> dict[str, float]:
    """The evaluation row of episode `returns` (episodes,): eval/return and eval/return_std (their
    mean and population std) and, where `dataset` carries reference scores, eval/normalized_score
    (the mean on the D4RL scale, 100 (R - ref_min) / (ref_max - ref_min))."""
    returns = np.asarray(returns, np.float64)
    row = {"eval/return": float(returns.mean()), "eval/return_std": float(returns.std())}
    if dataset.ref_min_score is not None and dataset.ref_max_score is not None:
        row["eval/normalized_score"] = float(dataset.normalized_score(returns).mean())
    return row


def best_score(best: float | None, row: dict) -> float | None:
    """The best normalised score so far: `best` or the row's eval/normalized_score, the larger
    (None while neither exists)."""
    score = row.get("eval/normalized_score")
    if score is None:
        return best
    return score if best is None else max(best, score)


# ---------------------------------------------------------------------------- critics


class EnsembleCritic(nn.Module):
    """N Q-functions Q_i(s, a) as one batched module (SAC-N, EDAC, and the twin critics of
    TD3+BC, CQL, IQL, AWAC and ReBRAC with N = 2).

    `layers` hidden layers of `hidden` units (LayerNorm after each if `layernorm`, ReBRAC's
    critic), ReLU. forward(obs (B, S) or (N, B, S), action likewise) -> (N, B)."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        members: int = 2,
        hidden: int = 256,
        layers: int = 2,
        layernorm: bool = False,
    ):
        super().__init__()
        self.members = members
        dims = [obs_dim + action_dim] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            mods.append(EnsembleLinear(a, b, members))
            if layernorm:
                mods.append(EnsembleLayerNorm(b, members))
            mods.append(nn.ReLU())
        mods.append(EnsembleLinear(dims[-1], 1, members))
        self.net = nn.Sequential(*mods)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, members: int | None = None):
        """Q of every member (N, B), or with `members` = k of the first k only (k, B): an actor
        loss that reads Q_1 alone (TD3+BC's) then costs one member's forward and backward."""
        x = torch.cat([obs, action], -1)
        if members is None:
            if x.ndim == 2:
                x = x.expand(self.members, *x.shape)
            return self.net(x).squeeze(-1)
        if x.ndim == 2:
            x = x.expand(members, *x.shape)
        for m in self.net:
            if isinstance(m, EnsembleLinear):
                x = torch.baddbmm(m.bias[:members], x, m.weight[:members])
            elif isinstance(m, EnsembleLayerNorm):
                x = F.layer_norm(x, x.shape[-1:]) * m.weight[:members] + m.bias[:members]
            else:
                x = m(x)
        return x.squeeze(-1)

    def member(self, i: int) -> nn.Sequential:
        """Member i as an ordinary nn.Sequential of nn.Linear (a copy), for checking the batched
        module against its members one by one."""
        mods: list[nn.Module] = []
        for m in self.net:
            if isinstance(m, EnsembleLinear):
                lin = nn.Linear(*m.weight.shape[1:])
                lin.weight.data.copy_(m.weight.data[i].T)
                lin.bias.data.copy_(m.bias.data[i, 0])
                mods.append(lin)
            elif isinstance(m, EnsembleLayerNorm):
                ln = nn.LayerNorm(m.weight.shape[-1])
                ln.weight.data.copy_(m.weight.data[i, 0])
                ln.bias.data.copy_(m.bias.data[i, 0])
                mods.append(ln)
            else:
                mods.append(type(m)())
        return nn.Sequential(*mods)


# ----------------------------------------------------------------------------- actors


def tanh_log_det(u: torch.Tensor) -> torch.Tensor:
    """log |d tanh(u) / du| = log(1 - tanh(u)^2), summed over the last dim, in the stable form
    2 (log 2 - u - softplus(-2u)). The correction of a tanh-squashed Gaussian's log-density."""
    return (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)


class TanhGaussianActor(nn.Module):
    """SAC's policy: a ~ max_action * tanh(u), u ~ N(mu(s), sigma(s)) (SAC, CQL, SAC-N, EDAC).

    log sigma = clamp(log_std_multiplier * out + log_std_offset, log_std_min, log_std_max)
    (CORL's CQL uses multiplier 1 and offset -1; the others 1 and 0).
    forward(obs (..., S), deterministic) -> action (..., A), log_prob (...,) with the tanh
    correction; deterministic actions are max_action * tanh(mu)."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: int = 256,
        layers: int = 2,
        max_action: float = 1.0,
        log_std_min: float = -20.0,
        log_std_max: float = 2.0,
        log_std_multiplier: float = 1.0,
        log_std_offset: float = 0.0,
    ):
        super().__init__()
        self.net = mlp(obs_dim, 2 * action_dim, hidden, layers)
        self.max_action = max_action
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.log_std_multiplier, self.log_std_offset = log_std_multiplier, log_std_offset

    def dist(self, obs: torch.Tensor) -> torch.distributions.Normal:
        mu, log_std = self.net(obs).chunk(2, -1)
        log_std = self.log_std_multiplier * log_std + self.log_std_offset
        log_std = log_std.clamp(self.log_std_min, self.log_std_max)
        return torch.distributions.Normal(mu, log_std.exp())

    def forward(self, obs: torch.Tensor, deterministic: bool = False):
        normal = self.dist(obs)
        u = normal.mean if deterministic else normal.rsample()
        log_prob = normal.log_prob(u).sum(-1) - tanh_log_det(u)
        return self.max_action * torch.tanh(u), log_prob


class GaussianActor(nn.Module):
    """N(mu(s), exp(log_std)) with a state-independent log_std (IQL with `tanh_mean`, AWAC
    without), log_std clamped to [log_std_min, log_std_max]. Deterministic actions are the
    mean, clipped to the action bounds."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: int = 256,
        layers: int = 2,
        max_action: float = 1.0,
        tanh_mean: bool = True,
        log_std_min: float = -20.0,
        log_std_max: float = 2.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.net = mlp(obs_dim, action_dim, hidden, layers)
        if dropout:
            # IQL's optional actor dropout, after every hidden activation
            mods = []
            for m in self.net:
                mods.append(m)
                if isinstance(m, nn.ReLU):
                    mods.append(nn.Dropout(dropout))
            self.net = nn.Sequential(*mods)
        self.log_std = nn.Parameter(torch.zeros(action_dim))
        self.max_action, self.tanh_mean = max_action, tanh_mean
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def dist(self, obs: torch.Tensor) -> torch.distributions.Normal:
        mean = self.net(obs)
        if self.tanh_mean:
            mean = torch.tanh(mean) * self.max_action
        std = self.log_std.clamp(self.log_std_min, self.log_std_max).exp()
        return torch.distributions.Normal(mean, std.expand_as(mean))

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.dist(obs).log_prob(action).sum(-1)

    def forward(self, obs: torch.Tensor, deterministic: bool = False):
        """-> action (..., A) clipped to the bounds, and its log-density (...,) under the
        unclipped Gaussian (AWAC's value estimate)."""
        d = self.dist(obs)
        a = d.mean if deterministic else d.rsample()
        a = a.clamp(-self.max_action, self.max_action)
        return a, d.log_prob(a).sum(-1)


class DeterministicActor(nn.Module):
    """a = max_action * tanh(mlp(s)) (BC, TD3+BC, ReBRAC; LayerNorm optional as in ReBRAC)."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: int = 256,
        layers: int = 2,
        max_action: float = 1.0,
        layernorm: bool = False,
    ):
        super().__init__()
        self.net = mlp(obs_dim, action_dim, hidden, layers, layernorm=layernorm)
        self.max_action = max_action

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.max_action * torch.tanh(self.net(obs))


def layernorm_after_relu(net: nn.Sequential) -> nn.Sequential:
    """`net` (the suite's Linear -> LayerNorm -> ReLU) reordered to CORL's ReBRAC layers,
    Linear -> ReLU -> LayerNorm; the parameters are the same modules."""
    mods = list(net)
    for i in range(len(mods) - 1):
        if isinstance(mods[i], nn.LayerNorm | EnsembleLayerNorm) and isinstance(
            mods[i + 1], nn.ReLU
        ):
            mods[i], mods[i + 1] = mods[i + 1], mods[i]
    return nn.Sequential(*mods)


def edac_init(actor: TanhGaussianActor, critic: EnsembleCritic) -> None:
    """The EDAC paper's init (CORL's): hidden biases 0.1; the actor's output layer uniform in
    +-1e-3 and the critics' in +-3e-3, weights and biases."""
    with torch.no_grad():
        for lin in [m for m in actor.net if isinstance(m, nn.Linear)][:-1]:
            lin.bias.fill_(0.1)
        nn.init.uniform_(actor.net[-1].weight, -1e-3, 1e-3)
        nn.init.uniform_(actor.net[-1].bias, -1e-3, 1e-3)
        linears = [m for m in critic.net if isinstance(m, EnsembleLinear)]
        for lin in linears[:-1]:
            lin.bias.fill_(0.1)
        nn.init.uniform_(linears[-1].weight, -3e-3, 3e-3)
        nn.init.uniform_(linears[-1].bias, -3e-3, 3e-3)
