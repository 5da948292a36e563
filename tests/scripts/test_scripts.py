"""The command-line entry points: --help everywhere, and collect.py end to end with resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from wmrl import envs
from wmrl.envs.replay import EpisodeReplay
from wmrl.infra import CheckpointError, read_metrics

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_help(script):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and len(result.stdout.splitlines()) > 5


def collect(*argv):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import collect as script
    finally:
        sys.path.pop(0)
    return script.main(list(argv))


def test_collect_smoke_resume_and_export(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    logdir = str(tmp_path / "run")
    base = ["--env", "dmc:cartpole-swingup", "--logdir", logdir, "--preset", "smoke"]
    collect(*base, "--episodes", "2")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["episodes"] == 2
    with pytest.raises(FileExistsError, match="--resume"):
        collect(*base)  # a new run may not overwrite the old one

    # Resume with a larger budget: two more episodes, then export as a Minari dataset.
    collect("--logdir", logdir, "--resume", "--episodes", "4",
            "--dataset-id", "test/cartpole-random-v0", "--ref-max-score", "875")  # fmt: skip
    replay = EpisodeReplay.load(tmp_path / "run" / "replay", capacity=10_000)
    episodes = list(replay.episodes())
    assert len(episodes) == 4 and replay.total_steps == 4 * 125  # 1000 env steps / repeat 8
    assert all(e["observations"].shape == (126, 64, 64, 3) for e in episodes)
    assert all(e["truncations"][-1] and not e["terminations"].any() for e in episodes)
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [125, 250, 375, 500]
    returns = [r["collect/return"] for r in rows]
    np.testing.assert_allclose(returns, [e["rewards"].sum() for e in episodes], rtol=1e-5)

    data = envs.load_dataset("test/cartpole-random-v0")
    assert len(data) == 4 and data.total_steps == 500
    np.testing.assert_array_equal(data.episodes[3]["observations"], episodes[3]["observations"])
    assert data.ref_max_score == 875 and data.ref_min_score == pytest.approx(np.mean(returns))

    with pytest.raises(CheckpointError, match="env: checkpoint 'dmc:cartpole-swingup', this run"):
        collect("--logdir", logdir, "--resume", "--env", "dmc:walker-walk")


def test_benchmark_counts_the_operators_that_run_kernels():
    """`dispatched_ops` counts kernels, not calls: views and allocations are free, a composite
    (matmul) counts once through what it calls, and a copy made by a reshape counts."""
    import torch

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from benchmark import dispatched_ops
    finally:
        sys.path.pop(0)
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    assert dispatched_ops(lambda: a.view(16).unsqueeze(0).t()) == 0
    assert dispatched_ops(lambda: a + b) == 1
    assert dispatched_ops(lambda: (a @ b).relu().sum()) == 3
    assert dispatched_ops(lambda: a.t().reshape(16)) == 1  # not contiguous: a copy
    assert dispatched_ops(lambda: [a + b for _ in range(5)]) == 5


def test_benchmark_dreamer_sizes_keep_the_table_order_and_refuse_unknown_rows():
    """--dreamer-sizes picks rows of the dreamer section in `DREAMER_SIZES`' order, whatever
    order they are given in; a name that is not a row is refused with the names to choose from."""
    import argparse

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from benchmark import dreamer_sizes
    finally:
        sys.path.pop(0)
    assert dreamer_sizes("state_cpu, pixels") == ("pixels", "state_cpu")
    assert dreamer_sizes("state") == ("state",)
    for bad in ("state-cpu", "", "pixels,gpu"):
        with pytest.raises(argparse.ArgumentTypeError, match="pixels,state,state_cpu"):
            dreamer_sizes(bad)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_main_job_with_a_checkpoint_and_one_line(tmp_path, signum):
    """Ctrl-C, or a scheduler's SIGTERM, on train_dreamer.py: the loop saves and the process ends
    with the signal's exit code and one line that says how to continue; then it continues."""
    logdir = tmp_path / "run"
    script = str(ROOT / "scripts" / "train_dreamer.py")
    argv = [sys.executable, script, "--preset", "smoke", "--env", "dmc:cartpole-swingup",
            "--obs-type", "state", "--logdir", str(logdir)]  # fmt: skip
    proc = subprocess.Popen([*argv, "--steps", "1000000"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (logdir / "checkpoint.pt").exists():  # the first: after prefill and pretraining
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"stopped on {signal.Signals(signum).name}")
    resumed = subprocess.run([*argv, "--resume", "--steps", "2000"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "env_steps=2000" in resumed.stdout


def test_bad_input_ends_a_script_with_one_line_and_no_traceback(tmp_path):
    script = str(ROOT / "scripts" / "train_dreamer.py")
    argv = [sys.executable, script, "--env", "dmc:nope-nope", "--logdir", str(tmp_path / "a")]
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "train_dreamer.py: error: unknown dm-control task 'dmc:nope-nope': ids look like "
        "dmc:<domain>-<task>, e.g. dmc:cartpole-swingup. All tasks: envs.registry.DMC_TASKS."
    ]
    # the directory of a run that never started does not block the next one
    assert not (tmp_path / "a" / "config.json").exists()
    shown = subprocess.run(argv, capture_output=True, text=True, env={**os.environ,
                           "WMRL_TRACEBACK": "1"})  # fmt: skip
    assert "Traceback" in shown.stderr and "UnknownEnvError" in shown.stderr
    flags = subprocess.run([sys.executable, script, "--steps", "abc"], capture_output=True,
                           text=True)  # fmt: skip
    assert flags.returncode == 2 and len(flags.stderr.splitlines()) == 1
    assert "field 'steps' (int): expected an integer, got 'abc'" in flags.stderr


@pytest.mark.parametrize(
    "script, flags, named",
    [
        ("train_dreamer", ["--steps", "-5"], "steps = -5"),
        ("train_dreamer", ["--batch-size", "0"], "batch_size = 0"),
        ("train_planet", ["--episodes", "0"], "episodes = 0"),
        ("train_offline", ["--iql.batch-size", "0"], "batch_size = 0"),
        ("train_offline", ["--steps", "-5"], "steps = -5"),
        ("collect", ["--num-envs", "0"], "num_envs = 0"),
        ("train_worldmodels", ["--rollouts", "0"], "rollouts = 0"),
    ],
)
def test_budgets_and_sizes_below_one_are_refused_before_the_run_starts(
    script, flags, named, tmp_path, capsys
):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        main = __import__(script).main
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit) as exit_:
        main([*flags, "--logdir", str(tmp_path / "run")])
    assert exit_.value.code == 2
    assert f"{named}: must be at least" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
