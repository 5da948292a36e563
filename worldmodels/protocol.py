"""The one protocol every dynamics model implements, so that any planner works with any model.

CEM-MPC plans with the PlaNet RSSM, the DreamerV2 RSSM, the MDN-RNN (with a reward head) and
the MOReL ensemble alike, and the imagination actor-critic learns on any of them, because
planners see nothing but these methods.

A latent `State` is a small structure (a dict or dataclass) of tensors whose leading dimensions
are the batch (B) and, for sequences, time (T); each model documents its fields.

Index alignment follows the replay (`envs.replay`, which draws the timing diagram): at step t
the model sees observation o_t together with `action[t] = a_(t-1)`, the action that led to it
(zero where `is_first[t]`), and `reward(state_t)` predicts r_(t-1), the reward received on
arriving at o_t.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import torch

State = Any  # a model-specific structure of tensors with leading (B,) or (B, T) dimensions


@runtime_checkable
class WorldModel(Protocol):
    """What a dynamics model offers to planners, actor-critics and renderers."""

    def initial(self, batch_size: int) -> State:
        """The empty latent state for `batch_size` sequences, leading dimension (B,)."""

    def observe(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        is_first: torch.Tensor,
        state: State | None = None,
    ) -> State:
        """Filter sequences into posterior states.

        Args:
            obs: (B, T, *obs_shape), raw (uint8 pixels are converted on the device).
            action: (B, T, A), `action[:, t]` = the action that led to `obs[:, t]`.
            is_first: (B, T) bool; the state resets to `initial` where True.
            state: the state before the first step, or None for `initial(B)`.
        Returns:
            posterior states with leading dimensions (B, T).
        """

    def img_step(self, state: State, action: torch.Tensor) -> State:
        """One prior step: state (B,), action (B, A) -> next state (B,)."""

    def imagine(self, state: State, actions: torch.Tensor) -> State:
        """Open-loop prior rollout: state (B,), actions (B, H, A) -> states (B, H)."""

    def features(self, state: State) -> torch.Tensor:
        """The vector a policy or critic reads: (..., F) for a state with leading dims (...)."""

    def reward(self, state: State) -> torch.Tensor:
        """Predicted (mean) reward for arriving in `state`: (...,)."""

    def continuation(self, state: State) -> torch.Tensor:
        """Predicted probability that the episode goes on after `state`, (...,); models that
        do not predict episode ends return ones."""

    def decode(self, state: State) -> torch.Tensor:
        """Predicted observation (..., *obs_shape), for videos and GIFs."""

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float], State]:
        """Training loss on a replay batch (keys of `envs.replay.EpisodeReplay.sample`).

        Returns (scalar loss, metrics, posterior states (B, T)).
        """


def open_loop(model, state: State, actions: torch.Tensor) -> State:
    """`imagine` from `img_step`, for models whose states are dicts of tensors:
    state (B,), actions (B, H, A) -> states (B, H), where states[:, h] follows actions[:, h]."""
    states = []
    for h in range(actions.shape[1]):
        state = model.img_step(state, actions[:, h])
        states.append(state)
    return stack_states(states)


def map_state(fn, state):
    """Apply `fn` to every tensor of a model state (a tensor, dict, list, tuple or dataclass)."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {k: map_state(fn, v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(map_state(fn, v) for v in state)
    if dataclasses.is_dataclass(state):
        fields = dataclasses.fields(state)
        return dataclasses.replace(
            state, **{f.name: map_state(fn, getattr(state, f.name)) for f in fields}
        )
    return state


def stack_states(trees: list, dim: int = 1):
    """Stack a list of equally structured states (tensors, dicts, lists, tuples, dataclasses),
    e.g. T states (B,) -> one state (B, T) with dim=1."""
    first = trees[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(trees, dim)
    if isinstance(first, dict):
        return {k: stack_states([t[k] for t in trees], dim) for k in first}
    if isinstance(first, list | tuple):
        return type(first)(stack_states(list(parts), dim) for parts in zip(*trees, strict=True))
    if dataclasses.is_dataclass(first):
        names = [f.name for f in dataclasses.fields(first)]
        parts = {n: stack_states([getattr(t, n) for t in trees], dim) for n in names}
        return dataclasses.replace(first, **parts)
    return first
