"""PlaNet's training loop end to end on tiny settings: run directory, open-loop GIF, resume."""

import json
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from wmrl.envs.replay import EpisodeReplay
from wmrl.infra import CheckpointError, load_checkpoint, read_metrics
from wmrl.planners.methods.planet import PRESETS, PlaNetConfig, train_planet

ROOT = Path(__file__).resolve().parents[3]


def weights(logdir):
    return load_checkpoint(Path(logdir) / "checkpoint.pt")["model"]


def test_smoke_run_leaves_a_run_directory(tmp_path, tiny):
    run = tmp_path / "run"
    summary = train_planet(tiny(run))
    assert summary["episodes"] == 2 and summary["replay_episodes"] == 3
    assert summary["env_steps"] == 3 * 1000  # 125 policy steps x action repeat 8 per episode
    assert json.loads((run / "config.json").read_text())["model"]["deter"] == 16
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["episodes"] == 2 and state["replay_episodes"] == 3
    rows = read_metrics(run)
    assert any("eval/return" in r for r in rows)  # at the end, though eval_every > episodes
    assert any(k.startswith("train/") and k != "train/return" for r in rows for k in r)
    assert all(np.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
    assert len(sorted((run / "replay").glob("*.npz"))) == 3
    assert not (run / "gifs").exists()  # state observations: no open-loop video


def test_pixel_smoke_writes_openloop_gif(tmp_path, tiny):
    run = tmp_path / "run"
    cfg = tiny(run, obs_type="pixels", episodes=1, openloop_context=5, openloop_horizon=10)
    train_planet(cfg)
    gifs = sorted((run / "gifs").glob("openloop_*.gif"))
    assert len(gifs) == 1
    frames = imageio.mimread(gifs[0])
    assert len(frames) == 5 + 10
    assert frames[0].shape[:2] == (3 * 64, 64)  # truth / model / |error|


def test_resume_continues_with_the_same_replay(tmp_path, tiny):
    run = tmp_path / "run"
    train_planet(tiny(run, episodes=2))
    first_files = sorted(p.name for p in (run / "replay").glob("*.npz"))
    before = weights(run)
    steps_before = [r["step"] for r in read_metrics(run)]

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_planet as script
    finally:
        sys.path.pop(0)
    summary = script.main(["--logdir", str(run), "--resume", "--episodes", "3"])

    assert summary["episodes"] == 3 and summary["replay_episodes"] == 1 + 3
    files = sorted(p.name for p in (run / "replay").glob("*.npz"))
    assert files[: len(first_files)] == first_files and len(files) == 1 + 3
    replay = EpisodeReplay.load(run / "replay", capacity=10_000)
    assert replay.total_episodes == 1 + 3
    steps = [r["step"] for r in read_metrics(run)]
    assert steps[: len(steps_before)] == steps_before and len(steps) > len(steps_before)
    assert all(a < b for a, b in zip(steps, steps[1:], strict=False))
    after = weights(run)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    saved = json.loads((run / "config.json").read_text())
    assert saved["episodes"] == 3 and saved["cem"]["candidates"] == 20  # the resolved config

    with pytest.raises(CheckpointError, match="env"):
        train_planet(tiny(run, env="dmc:pendulum-swingup", episodes=4), resume=True)


def test_smoke_preset_and_help():
    cfg = PlaNetConfig()
    assert (cfg.seed_episodes, cfg.train_steps, cfg.batch_size, cfg.chunk_length) == (
        5,
        100,
        50,
        50,
    )
    assert set(PRESETS) >= {"default", "smoke"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_planet.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0 and "--cem.candidates" in result.stdout


def test_cem_plans_on_the_categorical_rssm_in_the_loop(tmp_path, tiny):
    """--world-model categorical: DreamerV2's RSSM trained by PlaNet's loop and planned on by
    CEM; the checkpoint holds its weights, and a Gaussian run cannot resume it."""
    from wmrl.worldmodels.categorical_rssm import CategoricalRSSMConfig

    small = CategoricalRSSMConfig(deter=16, hidden=16, stoch=4, classes=4, mlp_layers=1,
                                  mlp_units=16)  # fmt: skip
    run = tmp_path / "run"
    summary = train_planet(tiny(run, world_model="categorical", categorical=small))
    assert summary["episodes"] == 2 and np.isfinite(summary["eval_return"])
    model = weights(run)
    assert model["img_out.0.weight"].shape == (16, 16)  # deter -> hidden
    assert model["img_out.2.weight"].shape == (4 * 4, 16)  # hidden -> stoch x classes logits
    rows = [r for r in read_metrics(run) if "train/kl_loss" in r]
    assert rows and all(np.isfinite(r["train/prior_ent"]) for r in rows)  # the categorical's
    with pytest.raises(CheckpointError, match="world_model"):
        train_planet(tiny(run, episodes=3), resume=True)
