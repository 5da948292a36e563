"""A run killed with SIGKILL at a random point and resumed is the run that was never killed:
the same logged metrics, bit for bit, and the same final weights (on this machine's CPU).

Each script runs three times in a subprocess: uninterrupted; killed at a random moment after its
first checkpoint; resumed with --resume to the end. What may differ are only wall-clock figures
(throughput, seconds).
"""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from wmrl.envs.replay import iter_episodes
from wmrl.infra import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CLOCK = (
    "train/fps",
    "train/updates_per_s",
    "train/update_share",
)  # wall-clock rates: the only figures that differ

# script -> (its arguments, the file of its first checkpoint, the latest kill in seconds after it)
JOBS = {
    # Pixels, as the smoke presets have them. Five training episodes after a prefill episode
    # (cartpole at repeat 8: 125 policy steps each), evaluations and open-loop GIFs.
    "train_dreamer.py": (
        ["--preset", "smoke", "--steps", "6000", "--gif-every", "2"],
        "checkpoint.pt",
        1.5,
    ),  # fmt: skip
    # Two seed episodes, then four planner episodes.
    "train_planet.py": (
        [
            "--preset",
            "smoke",
            "--episodes",
            "4",
            "--train-steps",
            "5",
            "--eval-every",
            "2",
            "--gif-every",
            "2",
        ],
        "checkpoint.pt",
        1.5,
    ),  # fmt: skip
    # Two envs, each episode's end a checkpoint.
    "collect.py": (
        ["--preset", "smoke", "--episodes", "24", "--checkpoint-every", "2"],
        "checkpoint.pt",
        1.5,
    ),  # fmt: skip
    # The whole pipeline on CarRacing, killed in any of its stages.
    "train_worldmodels.py": (["--preset", "smoke", "--env", "gym:CarRacing-v3"], "collect.pt", 12),
}


def command(script: str, logdir: Path) -> list[str]:
    path = str(ROOT / "scripts" / script)
    args = JOBS[script][0]
    env = [] if "--env" in args else ["--env", "dmc:cartpole-swingup"]
    return [sys.executable, path, *env, *args, "--logdir", str(logdir)]


def metrics(logdir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in CLOCK} for row in rows]


def summary(stdout: str) -> dict:
    """The summary a script printed last, less what says where or what ran this time."""
    pairs = dict(item.split("=", 1) for item in stdout.split("\n")[-2].split(" ") if "=" in item)
    return {k: v for k, v in pairs.items() if k not in ("run_dir", "stages_run")}


def kill_at_random(script: str, logdir: Path, seed: int) -> float:
    """Start `script`, wait for its first checkpoint, SIGKILL it a random moment later; returns
    when it was killed (seconds after that checkpoint). Fails if the run ended first."""
    _, first, latest = JOBS[script]
    proc = subprocess.Popen(command(script, logdir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (logdir / first).exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.02)
    delay = random.Random(seed).uniform(0.0, latest)
    time.sleep(delay)
    assert proc.poll() is None, "the run ended before the kill; give it a larger budget"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return delay


@pytest.mark.parametrize("script", sorted(JOBS))
def test_a_run_killed_at_a_random_point_and_resumed_equals_the_uninterrupted_run(tmp_path, script):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(command(script, whole), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    delay = kill_at_random(script, killed, seed=len(script))
    partial = metrics(killed) if (killed / "metrics.jsonl").exists() else []
    assert len(partial) < len(metrics(whole)), f"killed {delay:.2f} s in, yet nothing was left"
    resumed = subprocess.run(command(script, killed) + ["--resume"], capture_output=True,
                             text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert summary(resumed.stdout) == summary(done.stdout)

    assert metrics(killed) == metrics(whole)
    a = load_checkpoint(whole / "checkpoint.pt")
    b = load_checkpoint(killed / "checkpoint.pt")
    for key, value in a.get("model", {}).items():
        assert torch.equal(value, b["model"][key]), key
    for x, y in zip(iter_episodes(whole / "replay"), iter_episodes(killed / "replay"), strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
