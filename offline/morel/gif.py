"""GIFs of MOReL's imagined rollouts: predicted states rendered through MuJoCo beside the real
rollout from the same start, frames after HALT marked.

Gymnasium's MuJoCo locomotion envs (Hopper, HalfCheetah, Walker2d, Ant ...) observe
obs = [qpos[k:], qvel] with the first k = 1 (or 2) root positions left out. A predicted state is
drawn by writing it back into the simulator (`set_state_from_obs`, the left-out root positions
taken from the real rollout at the same step, so that both rows share the tracking camera) and
rendering; physics is not stepped for the imagined row.

    frames = imagined_vs_real(env_id, model, policy, start_obs, horizon=100, threshold=thr)
    # frames (T + 1, size, 2 * size, 3) uint8: real on the left, imagined on the right, a red
    # border from the first step whose USAD disagreement exceeded the threshold (HALT) onward
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from wmrl import envs  # importing it also sets MUJOCO_GL=egl (headless) before MuJoCo renders
from wmrl.infra import load_checkpoint, load_config
from wmrl.offline.morel.train import MOReLConfig
from wmrl.planners.npg import NPG
from wmrl.worldmodels.ensemble import DynamicsEnsemble

HALT_COLOR = np.array([220, 30, 30], np.uint8)


def _mujoco(env: gym.Env):
    u = env.unwrapped
    if not hasattr(u, "set_state") or not hasattr(u, "model"):
        raise ValueError(
            f"{u.spec.id if u.spec else type(u).__name__} is not a gymnasium MuJoCo env; MOReL "
            "GIFs draw predicted states by writing them into MuJoCo's qpos and qvel"
        )
    return u


def left_out_positions(env: gym.Env, obs_dim: int) -> int:
    """How many leading qpos entries the observation leaves out: nq + nv - obs_dim."""
    u = _mujoco(env)
    k = u.model.nq + u.model.nv - obs_dim
    if not 0 <= k <= u.model.nq:
        raise ValueError(
            f"observations of size {obs_dim} are not [qpos[k:], qvel] of this env (nq "
            f"{u.model.nq}, nv {u.model.nv}); MOReL GIFs need the locomotion envs' layout"
        )
    return k


def set_state_from_obs(env: gym.Env, obs: np.ndarray, root: np.ndarray) -> None:
    """Write obs = [qpos[k:], qvel] into the simulator, qpos[:k] = `root` (the left-out root
    positions, e.g. Hopper's x)."""
    u = _mujoco(env)
    k = len(root)
    qpos = np.concatenate([root, obs[: u.model.nq - k]])
    qvel = np.asarray(obs[u.model.nq - k :], np.float64)
    u.set_state(qpos, qvel)


def side_by_side(real: gym.Env, drawn: gym.Env, imagined: np.ndarray, k: int, halted: bool):
    """One frame (size, 2 * size, 3): `real` rendered beside the `imagined` state drawn in
    `drawn`, bordered red if `halted`. The k root positions the model does not predict follow
    the real rollout, so both halves share a camera (the locomotion envs' camera tracks the
    root)."""
    set_state_from_obs(drawn, imagined, real.unwrapped.data.qpos[:k].copy())
    right = drawn.render()
    return np.concatenate([real.render(), _bordered(right) if halted else right], 1)


def _bordered(frame: np.ndarray, width: int = 3) -> np.ndarray:
    out = frame.copy()
    out[:width], out[-width:], out[:, :width], out[:, -width:] = (HALT_COLOR,) * 4
    return out


@torch.no_grad()
def imagined_vs_real(
    env_id: str,
    model,
    policy: Callable[[np.ndarray], np.ndarray],
    start_obs: np.ndarray | None = None,
    horizon: int = 100,
    threshold: float | None = None,
    member: int = 0,
    size: int = 96,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Roll `policy` from one start in the real env and in `model` (member `member` of a
    `DynamicsEnsemble`-like model: `predict(obs (B, S), action (B, A))` -> next_obs (N, B, S),
    `disagreement(obs, action)` -> (B,)).

    Args:
        env_id: a gymnasium MuJoCo id ("Hopper-v5").
        policy: obs (S,) -> action (A,), the same for both rows.
        start_obs: the start state; None: the real env's reset state (seeded with `seed`).
        threshold: the USAD threshold; from the first step whose disagreement exceeds it, the
            imagined frames carry a red border (HALT). None: never marked.
    Returns:
        frames (T + 1, size, 2 * size, 3) uint8, real | imagined, T <= horizon (the real
        episode may end first), and halted (T + 1,) bool.
    """
    real = gym.make(env_id, render_mode="rgb_array", width=size, height=size)
    drawn = gym.make(env_id, render_mode="rgb_array", width=size, height=size)
    try:
        obs, _ = real.reset(seed=seed)
        drawn.reset(seed=seed)
        k = left_out_positions(real, len(obs))
        if start_obs is not None:
            root = real.unwrapped.data.qpos[:k].copy()
            set_state_from_obs(real, np.asarray(start_obs, np.float64), root)
            obs = np.asarray(start_obs, np.float64)
        device = next(model.parameters()).device if hasattr(model, "parameters") else "cpu"
        imagined, halted = np.asarray(obs, np.float64), False
        frames, marks = [side_by_side(real, drawn, imagined, k, halted)], [False]
        for _ in range(horizon):
            x = torch.as_tensor(imagined, dtype=torch.float32, device=device)[None]
            u = torch.as_tensor(np.asarray(policy(x[0].cpu().numpy()), np.float32), device=device)
            # An unknown (s, a) sends the P-MDP to HALT: what follows is marked, not trusted.
            if threshold is not None and not halted:
                halted = bool(model.disagreement(x, u[None])[0] > threshold)
            imagined = model.predict(x, u[None])["next_obs"][member, 0].double().cpu().numpy()
            obs, _, terminated, truncated, _ = real.step(policy(np.asarray(obs, np.float32)))
            frames.append(side_by_side(real, drawn, imagined, k, halted))
            marks.append(halted)
            if terminated or truncated:
                break
        return np.stack(frames), np.array(marks)
    finally:
        real.close()
        drawn.close()


def morel_run_frames(
    run_dir, horizon: int = 100, seed: int = 0, size: int = 96, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """`imagined_vs_real` for a saved MOReL run (scripts/train_morel.py): its ensemble, its
    policy's mean action and its USAD threshold, from the dataset's first episode start."""
    cfg = load_config(MOReLConfig, run_dir)
    state = load_checkpoint(Path(run_dir) / "checkpoint.pt", map_location=device)
    dataset = envs.load_dataset(cfg.dataset)
    if dataset.env_spec is None and not cfg.env:
        raise ValueError(f"dataset {cfg.dataset!r} stores no env to render in; rerun with --env")
    env_id = dataset.env_spec.id if dataset.env_spec is not None else cfg.env.removeprefix("gym:")
    S = dataset.observation_space.shape[0]
    A = dataset.action_space.shape[0]
    model = DynamicsEnsemble(S, A, cfg.ensemble).to(device)
    model.load_state_dict(state["ensemble"])
    npg = NPG(S, A, cfg.npg).to(device)
    npg.load_state_dict(state["npg"])
    model.eval()
    policy = partial(npg_action, npg, device)
    start = dataset.episodes[0]["observations"][0]
    return imagined_vs_real(
        env_id, model, policy, start, horizon, state["usad"]["threshold"], size=size, seed=seed
    )


@torch.no_grad()
def npg_action(npg: NPG, device, obs: np.ndarray) -> np.ndarray:
    """`npg.act` (A,) numpy for one state (S,) numpy."""
    x = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]
    return npg.act(x)[0].cpu().numpy()
