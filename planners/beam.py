"""Beam search as a planner (Trajectory Transformer, Janner et al. 2021, sec. 3.2 and Alg. 1;
the authors' trajectory/search/core.py `beam_plan`): keep the `beam_width` action sequences with
the highest predicted return, growing each by `expansions` sampled continuations a step.

From one start, every beam is copied `expansions` times; each copy samples an action
(`propose`), and the model predicts the reward r_t and the value V_t (reward-to-go after r_t)
of it (`evaluate`). A sequence's score after step t is

    sum_(i <= t) g^i r_i + g^(t + 1) V_t           (g: the model's `discount`)

the beams with the `beam_width` best scores survive, and their next states are predicted
(`advance`, skipped after the last step). After `horizon` steps the best sequence is the plan;
its first action is executed (replanning every step, the authors' plan_freq 1).

A model plans here if it offers (states: structures of tensors with a leading batch, as in
`worldmodels.protocol`):

    discount: float
    propose(state (B,)) -> (state (B,), action (B, A))     sample an action, keep it pending
    evaluate(state) -> (state, reward (B,), value (B,))    r_t and V_t of the pending action
    advance(state) -> state                                predict the state the action leads to

`worldmodels.TrajectoryTransformer` does (token by token); N starts plan at once, each keeping
its own beams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from wmrl.infra.config import at_least
from wmrl.worldmodels.protocol import State, map_state


@dataclass
class BeamConfig:
    """The authors' config/offline.py 'plan' values."""

    horizon: int = 15  # transitions planned ahead (horizon)
    beam_width: int = 128  # sequences kept after each step (beam_width)
    expansions: int = 2  # continuations sampled per kept sequence each step (n_expand)

    def __post_init__(self):
        at_least(self, 1, "horizon", "beam_width", "expansions")


@runtime_checkable
class BeamModel(Protocol):
    """What beam search needs of a model (see the module docstring)."""

    discount: float

    def propose(self, state: State) -> tuple[State, torch.Tensor]: ...

    def evaluate(self, state: State) -> tuple[State, torch.Tensor, torch.Tensor]: ...

    def advance(self, state: State) -> State: ...


@torch.no_grad()
def beam_plan(model: BeamModel, state: State, cfg: BeamConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Plan from `state` (N starts): returns (the best action sequence of each start (N, H, A),
    its score (N,)). Beams are rows n * width + k of every tensor the model passes around."""
    width, E, H = cfg.beam_width, cfg.expansions, cfg.horizon
    leaves = []
    map_state(leaves.append, state)
    N, device = leaves[0].shape[0], leaves[0].device
    beams = map_state(lambda x: x.repeat_interleave(width, 0), state)  # (N * width,)
    rewards = torch.zeros(N * width, H + 1, device=device)  # r_0 .. r_t, then V_t
    discounts = model.discount ** torch.arange(H + 1, device=device, dtype=torch.float32)
    actions = None  # (N * width, t, A)
    offsets = torch.arange(N, device=device)[:, None] * (width * E)
    for t in range(H):
        beams = map_state(lambda x: x.repeat_interleave(E, 0), beams)  # row (n * width + k) E + e
        rewards = rewards.repeat_interleave(E, 0)
        beams, action = model.propose(beams)
        beams, r, v = model.evaluate(beams)
        rewards[:, t], rewards[:, t + 1] = r, v
        score = (rewards * discounts).sum(1).view(N, width * E)
        score, top = score.topk(width, dim=1)  # the best `width` of each start's width E
        rows = (top + offsets).flatten()
        beams = map_state(lambda x, rows=rows: x[rows], beams)
        rewards = rewards[rows]
        step = action[rows, None]
        actions = step if actions is None else torch.cat([actions.repeat_interleave(E, 0)[rows],
                                                          step], 1)  # fmt: skip
        if t < H - 1:
            beams = model.advance(beams)
    best = score.argmax(1)  # (N,)
    plans = actions.view(N, width, H, -1)[torch.arange(N, device=device), best]
    return plans, score[torch.arange(N, device=device), best]
