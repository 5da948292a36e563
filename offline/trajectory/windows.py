"""The Trajectory Transformer's training data: a dataset's episodes as joined transitions
(s_t, a_t, r_t, V_t), discretised once into tokens on the device, and windows of K transitions
drawn from them (the authors' trajectory/datasets/sequence.py `DiscretizedDataset`).

For one episode of T steps (r_t the reward of the step a_t takes):

    r_(T-1) = termination_penalty  where the episode terminated (the authors' -100)
    V_t = sum_(k>=1) g^(k-1) r_(t+k)        (V_(T-1) = 0), with the penalised rewards

A window of K transitions from t0 holds the tokens of transitions t0 .. t0+K-1 (the layout of
`worldmodels.trajectory_transformer`); where it runs past the episode's end, the rest is

    after a termination:   stop tokens (N), which the model learns to predict (mask 1)
    after a truncation:    masked (mask 0): the episode went on, unrecorded

    k          0        1        2        3            K = 4, t0 = T - 2
    tokens     x_T-2    x_T-1    stop     stop         terminated
    mask       1        1        1        1
    tokens     x_T-2    x_T-1    stop     stop         truncated (a time limit)
    mask       1        1        0        0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from wmrl.worldmodels.trajectory_transformer import Discretizer


def joined_transitions(episode: dict, discount: float, penalty: float | None) -> np.ndarray:
    """One episode (Minari layout) -> (T, S + A + 2) float32 rows [s_t, a_t, r_t, V_t], the
    last reward replaced by `penalty` where the episode terminated (None: kept)."""
    rewards = np.asarray(episode["rewards"], np.float64).copy()
    if penalty is not None and bool(episode["terminations"][-1]):
        rewards[-1] = penalty
    values, after = np.zeros_like(rewards), 0.0  # after: sum_(k>=0) g^k r_(t+1+k)
    for t in range(len(rewards) - 1, -1, -1):
        values[t] = after
        after = rewards[t] + discount * after
    obs = np.asarray(episode["observations"][:-1], np.float32)
    parts = [obs, np.asarray(episode["actions"], np.float32), rewards[:, None], values[:, None]]
    return np.concatenate(parts, 1).astype(np.float32)


class TokenWindows:
    """Every transition of the dataset as tokens on `device`; `sample` draws windows of
    `seq_len` transitions starting at a transition drawn uniformly from all of them.

    sample(B, generator) -> {"tokens": (B, K D) long, "mask": (B, K D) float}, drawn and
    gathered on the device without waiting for it; at(start (B,) long) -> the windows from those
    transitions (indices into the episodes laid end to end)."""

    def __init__(self, joined: Sequence[np.ndarray], terminated: Sequence[bool],
                 discretizer: Discretizer, seq_len: int, device="cpu"):  # fmt: skip
        if not joined:
            raise ValueError("TokenWindows needs at least one episode")
        lengths = np.array([len(j) for j in joined])
        flat = torch.as_tensor(np.concatenate(joined))
        tokens = discretizer.discretize(flat)  # on the discretizer's device
        self.stop = discretizer.bins
        self.tokens = tokens.to(device=device, dtype=torch.int32)  # (M, D)
        ends = np.repeat(np.cumsum(lengths), lengths)
        self.ends = torch.as_tensor(ends, dtype=torch.long, device=device)  # (M,) its episode's end
        term = np.repeat(np.asarray(terminated, bool), lengths)
        self.terminated = torch.as_tensor(term, device=device)  # (M,) its episode terminated
        self.seq_len, self.size = int(seq_len), int(lengths.sum())

    def __len__(self) -> int:
        return self.size

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict:
        device = self.tokens.device
        return self.at(torch.randint(self.size, (batch_size,), device=device, generator=generator))

    def at(self, start: torch.Tensor) -> dict:
        device = self.tokens.device
        idx = start[:, None] + torch.arange(self.seq_len, device=device)  # (B, K)
        inside = idx < self.ends[start][:, None]
        tokens = self.tokens[idx.clamp(max=self.size - 1)].long()  # (B, K, D)
        tokens = torch.where(inside[..., None], tokens, self.stop)
        mask = (inside | self.terminated[start][:, None]).float()  # (B, K)
        D = tokens.shape[-1]
        return {"tokens": tokens.flatten(1), "mask": mask.repeat_interleave(D, 1)}
