"""Saved runs of any method, loaded back for rendering (`scripts/render_gif.py`).

A run directory names its method in the meta of its checkpoints (`meta["job"]`, written by
`infra.save_checkpoint`). `RUN_LOADERS` maps each job to a loader, "module:function", imported
only when a run of that job is opened, that rebuilds the run's model (any
`worldmodels.WorldModel`) and says which env and which saved episodes it belongs to. A new
method plugs in with one line here and one `load_run(run_dir, device) -> LoadedRun` function.

Open-loop video prediction works for every model of the protocol that decodes frames
(`decode_frames`): the model filters `context` real frames, then imagines the rest from the real
actions, and the video shows truth, model and |error| as three rows.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmrl.infra import CheckpointError, read_meta
from wmrl.worldmodels.protocol import map_state

RUN_LOADERS: dict[str, str] = {
    "planet": "wmrl.planners.methods.planet:load_run",
    "worldmodels": "wmrl.planners.methods.world_models:load_run",
    "dreamer": "wmrl.planners.methods.dreamer:load_run",
}


@dataclass
class LoadedRun:
    """A saved run, ready to render."""

    model: Any  # a worldmodels.WorldModel, in eval mode, on the requested device
    config: Any  # the run's config dataclass, as saved in config.json
    env_id: str  # envs.make(env_id, **env_options) rebuilds the run's env
    env_options: dict = field(default_factory=dict)
    replay_dir: Path | None = None  # the run's saved episodes (EpisodeReplay npz files), if any
    # A method whose model does not decode frames may render its own video instead:
    # frames(obs, action, context, horizon) -> uint8 (T, H, W, C).
    frames: Callable[..., np.ndarray] | None = None

    def openloop(self, obs, action, context: int, horizon: int) -> np.ndarray:
        """The run's video for one episode in row layout (see `openloop_frames`)."""
        if self.frames is not None:
            return self.frames(obs, action, context, horizon)
        if np.asarray(obs).ndim != 4 or not hasattr(self.model, "decode_frames"):
            raise ValueError(
                f"this {self.env_id} run's observations are {np.asarray(obs).shape[1:]} vectors, "
                "not frames, and its model decodes no frames: open-loop video needs a run "
                "trained on pixels (--obs-type pixels)"
            )
        return openloop_frames(self.model, obs, action, context, horizon)


def run_job(run_dir: str | Path) -> str:
    """The job that wrote `run_dir`: meta["job"] of checkpoint.pt, else of any other *.pt."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; check --run")
    paths = sorted(run_dir.glob("*.pt"), key=lambda p: (p.name != "checkpoint.pt", p.name))
    for path in paths:
        job = read_meta(path).get("job")
        if job:
            return str(job)
    if not paths and (run_dir / "config.json").exists():
        raise CheckpointError(
            f"{run_dir} stopped before its first checkpoint, so it has no model to render yet; "
            "continue the run with --resume (it starts again), then render it"
        )
    raise CheckpointError(
        f"no checkpoint naming its job in {run_dir} (looked at {[p.name for p in paths]}); "
        "point --run at a run directory written by one of the training scripts"
    )


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the saved run in `run_dir` with the loader its job registered."""
    job = run_job(run_dir)
    if job not in RUN_LOADERS:
        raise ValueError(
            f"{run_dir} was written by job {job!r}, which has no loader; known jobs: "
            f"{sorted(RUN_LOADERS)} and morel (a job without a world model has nothing to "
            "render; a new method adds its loader to planners.methods.runs.RUN_LOADERS)"
        )
    module, _, name = RUN_LOADERS[job].partition(":")
    loader = getattr(importlib.import_module(module), name)
    return loader(Path(run_dir), torch.device(device))


def episode_rows(episode: dict) -> tuple[np.ndarray, np.ndarray]:
    """An episode in Minari's layout -> (obs (T+1, ...), action (T+1, A)) in the replay's row
    layout, where action[t] = a_(t-1) led to obs[t] and action[0] = 0."""
    actions = np.asarray(episode["actions"], np.float32)
    action = np.concatenate([np.zeros_like(actions[:1]), actions])
    return np.asarray(episode["observations"]), action


@torch.no_grad()
def openloop_frames(model, obs, action, context: int, horizon: int) -> np.ndarray:
    """Open-loop video prediction (PlaNet's fig. 7) with any model that decodes frames.

    The model filters the first `context` rows of an episode (obs (T, H, W, C) uint8, action
    (T, A) in row layout, row 0 the episode's first), then imagines the next `horizon` rows from
    the real actions. Returns uint8 frames (context + horizon, 3 * H, W, C): rows truth / model /
    |error|, the model's first `context` frames being reconstructions of its posterior.
    """
    T = min(context + horizon, len(obs))
    if not 1 <= context < T:
        raise ValueError(f"open loop needs 1 <= context ({context}) < frames ({T})")
    device = next(model.parameters()).device if hasattr(model, "parameters") else "cpu"
    obs = torch.as_tensor(np.asarray(obs[:T]), device=device)[None]
    action = torch.as_tensor(np.asarray(action[:T]), device=device, dtype=torch.float32)[None]
    is_first = torch.zeros(1, T, dtype=torch.bool, device=device)
    is_first[:, 0] = True
    post = model.observe(obs[:, :context], action[:, :context], is_first[:, :context])
    last = map_state(lambda x: x[:, -1], post)
    prior = model.imagine(last, action[:, context:])
    pred = torch.cat([model.decode_frames(post), model.decode_frames(prior)], 1)[0]
    truth = obs[0]
    error = (truth.int() - pred.int()).abs().to(torch.uint8)
    return torch.cat([truth, pred, error], dim=1).cpu().numpy()


# -- resuming online runs ---------------------------------------------------------------------
