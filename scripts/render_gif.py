"""Render a saved run's imagined rollout as a GIF: context frames, then the model's open-loop
prediction from the real actions, beside the truth (rows: truth / model / |error|).

    python scripts/render_gif.py --run runs/planet --out planet.gif
    python scripts/render_gif.py --run runs/planet --out fresh.gif --source env --seed 3
    python scripts/render_gif.py --run runs/planet --out long.gif --context 5 --horizon 95

The real episode is one of the run's saved episodes (`--source replay`, the newest by default)
or a new one played in the run's env with uniform random actions (`--source env`). Any run whose
job is registered in `planners.methods.runs.RUN_LOADERS` works. For a MOReL run
(scripts/train_morel.py) the GIF shows the real rollout of its policy beside the ensemble's imagined
one from the same start, drawn through MuJoCo, with a red border after HALT (`--horizon` steps)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from wmrl.envs import make
from wmrl.envs.replay import read_episode
from wmrl.infra import atomic_write_bytes, command, encode_gif, resolve_device
from wmrl.offline.morel.gif import morel_run_frames
from wmrl.planners.methods.runs import episode_rows, load_run, run_job


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="the run directory (its --logdir)")
    parser.add_argument("--out", required=True, help="the GIF to write")
    parser.add_argument(
        "--source", choices=("replay", "env"), default="replay", help="the real episode's source"
    )
    parser.add_argument(
        "--episode", type=int, default=-1, help="saved episode: from 0, negative from the newest"
    )
    parser.add_argument("--seed", type=int, default=0, help="env seed for --source env")
    parser.add_argument("--context", type=int, default=5, help="frames the model observes")
    parser.add_argument("--horizon", type=int, default=45, help="frames predicted open loop")
    parser.add_argument("--fps", type=float, default=10.0, help="GIF frames per second")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    return parser.parse_args(argv)


def random_episode(env_id: str, env_options: dict, seed: int, steps: int) -> dict:
    """Up to `steps` transitions of uniform random actions in a fresh env (Minari layout)."""
    env = make(env_id, seed=seed, **env_options)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    observations, actions = [obs], []
    try:
        for _ in range(steps):
            action = env.action_space.sample()
            obs, _, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            if terminated or truncated:
                break
    finally:
        env.close()
    return {"observations": np.stack(observations), "actions": np.stack(actions)}


def main(argv=None) -> Path:
    args = parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() != ".gif":
        sys.exit(f"--out {out}: the file must end in .gif")
    if run_job(args.run) == "morel":  # states, not frames: rendered through MuJoCo
        frames, halted = morel_run_frames(
            args.run, args.horizon, args.seed, device=str(resolve_device(args.device))
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, encode_gif(frames, args.fps))
        print(f"wrote {out}: {len(frames)} frames (real | imagined), {halted.sum()} after HALT")
        return out
    run = load_run(args.run, resolve_device(args.device))
    frames_needed = args.context + args.horizon
    if args.source == "replay":
        if run.replay_dir is None:
            sys.exit(f"{args.run} keeps no episodes; use --source env")
        episode = read_episode(run.replay_dir, args.episode)
    else:
        episode = random_episode(run.env_id, run.env_options, args.seed, frames_needed - 1)
    obs, action = episode_rows(episode)
    if len(obs) < frames_needed:
        print(f"the episode has {len(obs)} frames; predicting {len(obs) - args.context} of them")
    frames = run.openloop(obs, action, args.context, args.horizon)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, encode_gif(frames, args.fps))
    print(f"wrote {out}: {len(frames)} frames of {frames.shape[1]}x{frames.shape[2]}")
    return out


if __name__ == "__main__":
    command(main)
