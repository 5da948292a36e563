"""Saved runs back for rendering: the job registry, open-loop video and scripts/render_gif.py."""

import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from wmrl.envs.replay import read_episode
from wmrl.infra import CheckpointError, load_checkpoint, save_checkpoint
from wmrl.planners.methods.planet import train_planet
from wmrl.planners.methods.runs import episode_rows, load_run, run_job
from wmrl.worldmodels.rssm import RSSM

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory, tiny):
    run = tmp_path_factory.mktemp("planet") / "run"
    train_planet(tiny(run, obs_type="pixels", episodes=1, openloop_context=5, openloop_horizon=10))
    return run


def render_gif(*argv):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import render_gif as script
    finally:
        sys.path.pop(0)
    return script.main([str(a) for a in argv])


def test_planet_run_loads_with_its_weights(pixel_run):
    run = load_run(pixel_run)
    assert run_job(pixel_run) == "planet" and isinstance(run.model, RSSM)
    assert run.env_id == "dmc:cartpole-swingup" and run.env_options["obs_type"] == "pixels"
    saved = load_checkpoint(pixel_run / "checkpoint.pt")["model"]
    assert all(torch.equal(saved[k], v) for k, v in run.model.state_dict().items())
    assert not run.model.training


def test_openloop_rows_are_truth_model_and_error(pixel_run):
    run = load_run(pixel_run)
    episode = read_episode(run.replay_dir, -1)
    obs, action = episode_rows(episode)
    assert np.array_equal(action[1:], episode["actions"]) and not action[0].any()
    frames = run.openloop(obs, action, context=5, horizon=10)
    assert frames.shape == (15, 3 * 64, 64, 3) and frames.dtype == np.uint8
    truth, model, error = frames[:, :64], frames[:, 64:128], frames[:, 128:]
    assert np.array_equal(truth, obs[:15])
    assert np.array_equal(error, np.abs(truth.astype(int) - model.astype(int)))
    assert error.any()  # a one-episode model does not predict pixels exactly


def test_render_gif_from_replay_and_from_env(pixel_run, tmp_path):
    out = render_gif("--run", pixel_run, "--out", tmp_path / "a.gif", "--horizon", 10)
    frames = imageio.mimread(out)
    assert len(frames) == 15 and frames[0].shape[:2] == (3 * 64, 64)
    out = render_gif("--run", pixel_run, "--out", tmp_path / "b.gif", "--source", "env",
                     "--context", 3, "--horizon", 4)  # fmt: skip
    assert len(imageio.mimread(out)) == 7


def test_bad_runs_are_named(pixel_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    (empty := tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint naming its job"):
        load_run(empty)
    (other := tmp_path / "other").mkdir()
    save_checkpoint(other / "checkpoint.pt", {}, meta={"job": "alphazero"})
    with pytest.raises(ValueError, match="'alphazero', which has no loader; known jobs: .*planet"):
        load_run(other)
    run = load_run(pixel_run)
    vectors = np.zeros((20, 5), np.float32)
    with pytest.raises(ValueError, match="not frames"):
        run.openloop(vectors, np.zeros((20, 1), np.float32), 5, 10)
    with pytest.raises(SystemExit, match="must end in .gif"):
        render_gif("--run", pixel_run, "--out", tmp_path / "x.mp4")


def test_a_run_without_a_checkpoint_yet_says_so(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="stopped before its first checkpoint.*--resume"):
        run_job(tmp_path)
