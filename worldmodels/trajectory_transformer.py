"""Trajectory Transformer (Janner, Li, Levine 2021, "Offline Reinforcement Learning as One Big
Sequence Modeling Problem"; jannerm/trajectory-transformer): a causal GPT over discretised
trajectories, usable as a world model of the shared protocol and by beam search.

Every dimension of a transition is its own token: with S state and A action dimensions, one
transition is D = S + A + 2 tokens,

    s_t^0 ... s_t^(S-1)   a_t^0 ... a_t^(A-1)   r_t   V_t       V_t = sum_(k>=1) g^(k-1) r_(t+k)

where V_t is the discounted reward-to-go after r_t (discount g). Each dimension is cut into N
bins of its own (`Discretizer`: quantile or uniform edges), so a token is a bin index 0..N-1;
token N is the stop token that fills a window after its episode terminated.

Teacher forcing (`TrajectoryTransformer.loss`). A training window is K transitions, L = K D
tokens x_0 .. x_(L-1), starting at s^0 of its first transition. The model reads x_0 .. x_(L-2)
and the logits at position i score token i + 1:

    position i    0       1       ...  S-1         S       ...  D-2      D-1       D
    reads x_i     s_t^0   s_t^1   ...  s_t^(S-1)   a_t^0   ...  r_t      V_t       s_(t+1)^0
    scores x_i+1  s_t^1   s_t^2   ...  a_t^0       a_t^1   ...  V_t      s_(t+1)^0 s_(t+1)^1

    loss = sum_i w_(d(i+1)) m_(i+1) CE(logits_i, x_(i+1)) / (B (L - 1))

with d(j) = j mod D the dimension of token j, weights w (1 on states, `action_weight` 5 on
actions, `reward_weight` and `value_weight` 1) and m the window's mask (0 past a time-limit end,
whose continuation is unknown). The denominator counts masked tokens too, as the authors'.

The network (the authors' `GPT`, on the shared `worldmodels.gpt.GPT`): token j of dimension d
embeds as row d N + x_j of one table (the stop token has one row of its own), plus a learned
position embedding (positions counted from the window's first token); the output at position i
goes through the linear head of its own dimension d(i) (one (N + 1) x width map per dimension,
no bias). No token attends to a V token (the authors mask those keys): V is a target, never an
input, so that planning may leave it as a placeholder. The shared GPT lets every token attend to
itself, so a V token's embedding is zero here: its output (which scores s_(t+1)^0) reads earlier
tokens and its position only, as in the authors' model.

As a model of the shared protocol, a state is a token context (`initial`, `observe`, `img_step`)
and, for `planners.beam`, a partial transition (`propose`, `evaluate`, `advance`); see the
methods. A context is the last C - 1 transitions and the current state's S tokens, W = (C - 1) D
+ S tokens (C = `context`, the authors' max_context_transitions), left-padded with -1 (whole
transitions) where the episode is younger.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wmrl.infra.config import at_least
from wmrl.infra.metrics import metric_floats
from wmrl.worldmodels.gpt import GPT, init_weights
from wmrl.worldmodels.protocol import State, open_loop

__all__ = ["Discretizer", "TrajectoryTransformer", "TrajectoryTransformerConfig", "filter_logits"]


class Discretizer(nn.Module):
    """N bins per dimension, each dimension with its own edges (a buffer, saved with the model).

    edges (N + 1, D): bin k of dimension d is [edges[k, d], edges[k + 1, d]); a value maps to
    the largest k with value >= edges[k, d], clipped to 0..N-1, and a token back to its bin's
    midpoint, so a value inside the data's range comes back within half its bin's width.

        disc = Discretizer.fit(data (M, D), bins=100, kind="quantile")
        tokens = disc.discretize(x)            # (..., D) float -> (..., D) long
        x_hat = disc.reconstruct(tokens)       # (..., D) long -> (..., D) bin midpoints
        disc.discretize(a, dims=slice(S, S + A))   # a subset of the dimensions
    """

    def __init__(self, edges: torch.Tensor):
        super().__init__()
        if edges.ndim != 2 or edges.shape[0] < 3:
            raise ValueError(f"edges must be (N + 1, D) with N >= 2 bins, got {tuple(edges.shape)}")
        self.register_buffer("edges", torch.as_tensor(edges, dtype=torch.float32).clone())

    @classmethod
    def fit(cls, data, bins: int, kind: Literal["quantile", "uniform"] = "quantile"):
        """Edges from data (M, D). quantile: edges[k] = the sorted data's element
        floor(k (M - 1) / N), so every bin holds about M / N values (the authors'
        QuantileDiscretizer); uniform: N equal bins from each dimension's min to its max."""
        data = np.asarray(data, np.float32)
        if data.ndim != 2 or len(data) == 0 or not np.isfinite(data).all():
            raise ValueError(f"discretizer data must be finite (M, D), M >= 1, got {data.shape}")
        if kind == "quantile":
            rows = np.linspace(0, len(data) - 1, bins + 1).astype(np.int64)
            edges = np.sort(data, axis=0)[rows]
        elif kind == "uniform":
            edges = np.linspace(data.min(0), data.max(0), bins + 1).astype(np.float32)
        else:
            raise ValueError(f"discretizer kind must be quantile or uniform, got {kind!r}")
        return cls(torch.from_numpy(edges))

    @property
    def bins(self) -> int:
        return self.edges.shape[0] - 1

    @property
    def centers(self) -> torch.Tensor:
        """(N, D) bin midpoints."""
        return (self.edges[:-1] + self.edges[1:]) / 2

    def discretize(self, x: torch.Tensor, dims: slice = slice(None)) -> torch.Tensor:
        """Values (..., d) of dimensions `dims` -> tokens (..., d) long in 0..N-1."""
        inner = self.edges[1:-1, dims].T.contiguous()  # (d, N - 1)
        x = torch.as_tensor(x, dtype=torch.float32, device=inner.device)
        flat = x.reshape(-1, inner.shape[0]).T.contiguous()  # (d, M)
        tokens = torch.searchsorted(inner, flat, right=True)  # edges <= x among edges[1..N-1]
        return tokens.T.reshape(x.shape)

    def reconstruct(self, tokens: torch.Tensor, dims: slice = slice(None)) -> torch.Tensor:
        """Tokens (..., d) -> bin midpoints (..., d); the stop token and padding are clamped
        into 0..N-1 (their values mean nothing)."""
        centers = self.centers[:, dims].T  # (d, N)
        rows = torch.arange(centers.shape[0], device=centers.device)
        return centers[rows, tokens.clamp(0, self.bins - 1)]

    def expectation(self, probs: torch.Tensor, dim: int) -> torch.Tensor:
        """sum_k p_k c_k over the N bins of dimension `dim`: probs (..., N + 1) (the stop token's
        mass counts as 0, not renormalised: the authors' value_expectation) -> (...)."""
        return probs[..., : self.bins] @ self.centers[:, dim]


@dataclass
class TrajectoryTransformerConfig:
    """The authors' config/offline.py 'train' values (and 'plan' for the planning fields)."""

    bins: int = 100  # N tokens per dimension
    discretizer: Literal["quantile", "uniform"] = "quantile"  # QuantileDiscretizer (config)
    seq_len: int = 10  # K: transitions per training window (subsampled_sequence_length, step 1)
    layers: int = 4  # n_layer
    heads: int = 4  # n_head
    width: int = 128  # n_embd * n_head = 32 * 4
    embedding_dropout: float = 0.1  # embd_pdrop
    residual_dropout: float = 0.1  # resid_pdrop
    attention_dropout: float = 0.1  # attn_pdrop
    action_weight: float = 5.0  # loss weight of action tokens
    reward_weight: float = 1.0
    value_weight: float = 1.0
    discount: float = 0.99  # g of the value tokens, and of beam search's returns
    # planning ('plan' in config/offline.py)
    context: int = 5  # C: transitions the model reads while planning (max_context_transitions)
    action_cdf: float | None = 0.6  # cdf_act: drop the least likely action tokens summing < this
    action_top_k: int | None = None  # k_act: sample among the k most likely action tokens
    obs_top_k: int = 1  # k_obs: 1 = the most likely state token

    def __post_init__(self):
        at_least(self, 2, "bins", "seq_len")
        at_least(self, 1, "layers", "heads", "width", "context", "obs_top_k")
        if self.context >= self.seq_len:
            raise ValueError(
                f"context {self.context} must be below seq_len {self.seq_len}: planning reads "
                "C transitions at once, and positions exist for the K D - 1 tokens of training"
            )
        if self.action_top_k is not None and self.action_top_k < 1:
            raise ValueError(f"action_top_k must be at least 1 or None, got {self.action_top_k}")
        if self.action_cdf is not None and not 0.0 <= self.action_cdf < 1.0:
            raise ValueError(f"action_cdf must be in [0, 1) or None, got {self.action_cdf}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, cdf: float | None = None):
    """Logits (B, V) with the excluded tokens at -inf: with `cdf`, the least likely tokens whose
    probabilities sum to less than `cdf` (the authors' filter_cdf: at least the top 1 - cdf of
    the mass stays); with `top_k`, all but the k most likely."""
    out = logits.clone()
    if cdf is not None:
        probs, order = logits.softmax(-1).sort(-1)  # ascending
        drop = torch.zeros_like(out, dtype=torch.bool)
        drop.scatter_(-1, order, probs.cumsum(-1) < cdf)
        out = out.masked_fill(drop, -math.inf)
    if top_k is not None and top_k < out.shape[-1]:
        kth = out.topk(top_k, -1).values[:, -1:]
        out = out.masked_fill(out < kth, -math.inf)
    return out


class TrajectoryTransformer(nn.Module):
    """The Trajectory Transformer over S state and A action dimensions (D = S + A + 2 tokens a
    transition); see the module docstring for the tokens, the loss and the network.

    forward(tokens (B, L) long, padded) -> logits (B, L, N + 1); logits[:, i] scores token i + 1.
    Tokens start at a transition's s^0 after any left padding (-1, whole transitions; pass
    padded=False when there is none). L <= seq_len D - 1.

    `discretizer` holds the bins (`Discretizer.fit` on the dataset's joined transitions); a new
    model's are placeholders until loaded or replaced.
    """

    def __init__(self, obs_dim: int, action_dim: int, cfg: TrajectoryTransformerConfig,
                 discretizer: Discretizer | None = None):  # fmt: skip
        super().__init__()
        S, A, N = obs_dim, action_dim, cfg.bins
        self.obs_dim, self.action_dim, self.cfg = S, A, cfg
        self.transition_dim = D = S + A + 2
        self.discount = cfg.discount  # what `planners.beam` discounts by
        if discretizer is None:
            discretizer = Discretizer(torch.linspace(-1, 1, N + 1)[:, None].repeat(1, D))
        if discretizer.edges.shape != (N + 1, D):
            raise ValueError(f"discretizer edges {tuple(discretizer.edges.shape)} are not "
                             f"(N + 1, D) = ({N + 1}, {D})")  # fmt: skip
        self.discretizer = discretizer
        self.embed = nn.Embedding(D * N + 1, cfg.width)  # row D N: the stop token
        self.position = nn.Parameter(torch.zeros(1, cfg.seq_len * D - 1, cfg.width))
        self.gpt = GPT(cfg.width, cfg.layers, cfg.heads, cfg.attention_dropout,
                       cfg.residual_dropout, cfg.embedding_dropout)  # fmt: skip
        # one head per dimension (the authors' EinLinear: PyTorch's Linear init, no bias)
        bound = 1 / math.sqrt(cfg.width)
        self.readout = nn.Parameter(torch.empty(D, N + 1, cfg.width).uniform_(-bound, bound))
        init_weights(self.embed)
        weights = [1.0] * S + [cfg.action_weight] * A + [cfg.reward_weight, cfg.value_weight]
        self.register_buffer("token_weights", torch.tensor(weights))  # (D,)

    # ---------------------------------------------------------------------------- network
    @property
    def device(self) -> torch.device:
        return self.position.device

    @property
    def context_width(self) -> int:
        """W = (C - 1) D + S: the tokens of a protocol state's context."""
        return (self.cfg.context - 1) * self.transition_dim + self.obs_dim

    def forward(self, tokens: torch.Tensor, padded: bool = True) -> torch.Tensor:
        B, L = tokens.shape
        D, N = self.transition_dim, self.cfg.bins
        if L > self.position.shape[1]:
            raise ValueError(f"{L} tokens exceed the {self.position.shape[1]} positions")
        dims = torch.arange(L, device=tokens.device) % D  # left padding is whole transitions
        ids = torch.where(tokens == N, D * N, tokens.clamp(min=0) + dims * N)
        not_value = dims != D - 1
        x = self.embed(ids) * not_value[:, None]  # V tokens are inputs to no prediction
        position = torch.arange(L, device=tokens.device).expand(B, L)
        pad = None
        if padded:
            pad = tokens < 0
            position = (position - pad.sum(1, keepdim=True)).clamp(min=0)
        x = x + self.position[0, position]
        h = self.gpt(x, padding_mask=pad, attention_mask=not_value.expand(L, L))
        return torch.einsum("blw,lvw->blv", h, self.readout[dims])

    def token_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """The teacher-forcing loss of the module docstring on windows {"tokens": (B, L) long,
        "mask": (B, L) float}: (scalar loss, {loss, state_ce, action_ce, reward_ce, value_ce}),
        the cross-entropies unweighted means over each kind's unmasked targets; device tensors.
        """
        tokens, mask = batch["tokens"], batch["mask"].float()
        D, S, A = self.transition_dim, self.obs_dim, self.action_dim
        logits = self(tokens[:, :-1], padded=False)
        target, m = tokens[:, 1:], mask[:, 1:]
        ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # (B, L - 1)
        dims = torch.arange(1, tokens.shape[1], device=tokens.device) % D
        loss = (ce * self.token_weights[dims] * m).mean()
        metrics = {"loss": loss.detach()}
        kinds = {"state": dims < S, "action": (dims >= S) & (dims < S + A),
                 "reward": dims == D - 2, "value": dims == D - 1}  # fmt: skip
        for name, where in kinds.items():
            w = m * where
            metrics[f"{name}_ce"] = (ce.detach() * w).sum() / w.sum().clamp(min=1)
        return loss, metrics

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float], None]:
        """The protocol's loss on a window batch (`token_loss`; no replay batch: windows need
        whole episodes for their values): (loss, metrics as floats, None: no posterior)."""
        loss, metrics = self.token_loss(batch)
        return loss, metric_floats(metrics), None

    def _next_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, N + 1) of the token after `tokens` (B, L)."""
        return self(tokens)[:, -1]

    def _extend(self, tokens: torch.Tensor, cache: torch.Tensor | None):
        """`forward` through the GPT's key/value cache: tokens (B, L) as `forward` takes them
        (left padding allowed), of which the first T were read into `cache` (B, layers, 2,
        heads, T, width / heads) or none (None) -> (logits (B, L - T, N + 1) of the L - T new
        tokens, the cache of all L). Equal to forward(tokens)[:, T:] up to rounding."""
        B, L = tokens.shape
        D, N = self.transition_dim, self.cfg.bins
        T = 0 if cache is None else cache.shape[4]
        dims = torch.arange(L, device=tokens.device) % D
        pad = tokens < 0
        position = (torch.arange(L, device=tokens.device) - pad.sum(1, keepdim=True)).clamp(min=0)
        new, new_dims = tokens[:, T:], dims[T:]
        ids = torch.where(new == N, D * N, new.clamp(min=0) + new_dims * N)
        not_value = dims != D - 1
        x = self.embed(ids) * not_value[T:, None] + self.position[0, position[:, T:]]
        h, cache = self.gpt.extend(x, ~pad & not_value, cache)
        return torch.einsum("blw,lvw->blv", h, self.readout[new_dims]), cache

    def _draw(self, logits: torch.Tensor, top_k: int | None, cdf: float | None = None):
        """One token (B, 1) among the N bins (never the stop token): the most likely with
        top_k 1, else sampled from the filtered distribution."""
        logits = logits[:, : self.cfg.bins]
        if top_k == 1:
            return logits.argmax(-1, keepdim=True)
        return torch.multinomial(filter_logits(logits, top_k, cdf).softmax(-1), 1)

    # ------------------------------------------------------------------- protocol: context
    def initial(self, batch_size: int) -> State:
        """{"tokens": (B, W) all padding (no state yet), "reward", "value": (B,) zeros,
        "cont": (B,) ones}."""
        zeros = torch.zeros(batch_size, device=self.device)
        tokens = torch.full((batch_size, self.context_width), -1, device=self.device)
        return {"tokens": tokens, "reward": zeros, "value": zeros, "cont": zeros + 1}

    @torch.no_grad()
    def observe(self, obs, action, is_first, state: State | None = None, reward=None) -> State:
        """Filter sequences into contexts: obs (B, T, S), action (B, T, A) with action[:, t] =
        a_(t-1), is_first (B, T), optional reward (B, T) with reward[:, t] = r_(t-1) -> states
        (B, T). Each step appends the transition into obs_t (the previous state's tokens,
        a_(t-1), the reward, a V placeholder: V is never read) and drops the oldest. The
        protocol passes no rewards: without `reward`, the reward token is the model's most likely
        one (its expectation is the state's "reward"). A step with is_first, or from a state
        without tokens, starts a new context."""
        S, A, N = self.obs_dim, self.action_dim, self.cfg.bins
        obs = torch.as_tensor(obs, device=self.device).float()
        if obs.ndim != 3 or obs.shape[-1] != S:
            raise ValueError(f"obs {tuple(obs.shape)} is not (B, T, S={S})")
        action = torch.as_tensor(action, device=self.device).float()
        is_first = torch.as_tensor(is_first, device=self.device).bool()
        B, T = obs.shape[:2]
        state = self.initial(B) if state is None else state
        tokens, states = state["tokens"], []
        pad = torch.full((B, self.context_width - S), -1, device=self.device)
        for t in range(T):
            obs_tok = self.discretizer.discretize(obs[:, t], slice(0, S))
            act_tok = self.discretizer.discretize(action[:, t], slice(S, S + A))
            logits = self._next_logits(torch.cat([tokens, act_tok], 1))
            r = self.discretizer.expectation(logits.softmax(-1), S + A)
            if reward is None:
                r_tok = logits[:, :N].argmax(-1, keepdim=True)
            else:
                r = torch.as_tensor(reward, device=self.device).float()[:, t]
                r_tok = self.discretizer.discretize(r[:, None], slice(S + A, S + A + 1))
            moved = torch.cat([tokens, act_tok, r_tok, torch.zeros_like(r_tok), obs_tok], 1)
            first = is_first[:, t] | (tokens[:, -1] < 0)
            tokens = torch.where(first[:, None], torch.cat([pad, obs_tok], 1),
                                 moved[:, self.transition_dim:])  # fmt: skip
            r = torch.where(first, torch.zeros_like(r), r)
            states.append({"tokens": tokens, "reward": r, "value": torch.zeros_like(r),
                           "cont": torch.ones_like(r)})  # fmt: skip
        return {k: torch.stack([s[k] for s in states], 1) for k in states[0]}

    @torch.no_grad()
    def img_step(self, state: State, action: torch.Tensor) -> State:
        """One imagined transition: state (B,), action (B, A) -> next state (B,) whose tokens
        end with the predicted next state (its most likely tokens, `obs_top_k`), "reward" and
        "value" the expectations of r_t and V_t, "cont" 1 - P(stop token at s_(t+1)^0)."""
        S, A = self.obs_dim, self.action_dim
        pending = self.discretizer.discretize(action, slice(S, S + A))
        step, r, v = self.evaluate({"tokens": state["tokens"], "pending": pending})
        step = self.advance(step)
        return {"tokens": step["tokens"], "reward": r, "value": v, "cont": step["cont"]}

    def imagine(self, state: State, actions: torch.Tensor) -> State:
        """state (B,), actions (B, H, A) -> states (B, H); states[:, h] follows actions[:, h]."""
        return open_loop(self, state, actions)

    def features(self, state: State) -> torch.Tensor:
        """The current state's bin midpoints (..., S)."""
        return self.decode(state)

    def reward(self, state: State) -> torch.Tensor:
        """Expected reward of the step into `state`, (...,)."""
        return state["reward"]

    def continuation(self, state: State) -> torch.Tensor:
        """1 - P(the episode ended on arriving in `state`), (...,)."""
        return state["cont"]

    def decode(self, state: State) -> torch.Tensor:
        """The current state's bin midpoints (..., S)."""
        return self.discretizer.reconstruct(state["tokens"][..., -self.obs_dim :],
                                            slice(0, self.obs_dim))  # fmt: skip

    # ------------------------------------------------------------------ beam-search steps
    # A beam state is {"tokens": (B, W) context ending at the current state, "pending": (B, p)
    # tokens of the transition under way, optionally "cache": the GPT's keys and values of the
    # first T of those W + p tokens}; `planners.beam` calls propose, evaluate, advance. Each
    # sampled token is one token's pass through the cache; only `advance`, whose new context
    # drops the oldest transition and so moves every position, reads its context afresh.

    @torch.no_grad()
    def propose(self, state: State) -> tuple[State, torch.Tensor]:
        """Sample an action token by token (`action_cdf`, `action_top_k`): state (B,) -> (state
        with the action pending, action (B, A) bin midpoints)."""
        S, A = self.obs_dim, self.action_dim
        pending, cache = state["tokens"][:, :0], state.get("cache")
        for _ in range(A):
            logits, cache = self._extend(torch.cat([state["tokens"], pending], 1), cache)
            token = self._draw(logits[:, -1], self.cfg.action_top_k, self.cfg.action_cdf)
            pending = torch.cat([pending, token], 1)
        action = self.discretizer.reconstruct(pending, slice(S, S + A))
        return {**state, "pending": pending, "cache": cache}, action

    @torch.no_grad()
    def evaluate(self, state: State) -> tuple[State, torch.Tensor, torch.Tensor]:
        """Reward and value of the pending action: -> (state with r_t, V_t pending and the logits
        of s_(t+1)^0, r_t (B,), V_t (B,)), both expectations over their bins; the pending tokens
        take their most likely bins. Two passes: r_t's logits, then, with a V placeholder after
        r_t (its value is never read), V_t's and s_(t+1)^0's logits at once."""
        S, A, N = self.obs_dim, self.action_dim, self.cfg.bins
        x = torch.cat([state["tokens"], state["pending"]], 1)
        r_logits, cache = self._extend(x, state.get("cache"))
        r_logits = r_logits[:, -1]
        r_tok = r_logits[:, :N].argmax(-1, keepdim=True)
        logits, _ = self._extend(torch.cat([x, r_tok, torch.zeros_like(r_tok)], 1), cache)
        logits = logits[:, -2:]
        v_tok = logits[:, 0, :N].argmax(-1, keepdim=True)
        r = self.discretizer.expectation(r_logits.softmax(-1), S + A)
        v = self.discretizer.expectation(logits[:, 0].softmax(-1), S + A + 1)
        pending = torch.cat([state["pending"], r_tok, v_tok], 1)
        # no cache: `advance` moves every position (and beams need not copy it meanwhile)
        rest = {key: val for key, val in state.items() if key != "cache"}
        return {**rest, "pending": pending, "next": logits[:, 1]}, r, v

    @torch.no_grad()
    def advance(self, state: State) -> State:
        """Predict the next state token by token (`obs_top_k`) and close the transition: ->
        {"tokens": (B, W) the new context, "cont": 1 - P(stop token at s_(t+1)^0)}."""
        logits, cache = state["next"], None
        cont = 1 - logits.softmax(-1)[:, self.cfg.bins]
        tokens = torch.cat([state["tokens"], state["pending"]], 1)[:, self.transition_dim :]
        for j in range(self.obs_dim):
            if j:
                logits, cache = self._extend(tokens, cache)
                logits = logits[:, -1]
            tokens = torch.cat([tokens, self._draw(logits, self.cfg.obs_top_k)], 1)
        out = {"tokens": tokens, "cont": cont}
        return out if cache is None else {**out, "cache": cache}  # of all tokens but the last
