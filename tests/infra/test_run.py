"""infra.run and infra.metrics: Every against a brute-force count, MeanMetrics against NumPy and
its non-finite check, and a Run's checkpoint, restore (RNGs, wall clock, meta) and logger."""

import json
import math
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from wmrl.infra import CheckpointError, Every, MeanMetrics, Run, RunStopped, read_metrics, run_main


@pytest.mark.parametrize("period", [1, 3, 5])
def test_every_counts_the_multiples_a_jumping_counter_passes(period):
    rng = np.random.default_rng(period)
    start = int(rng.integers(0, 10))
    every, last = Every(period, start=start), start
    for _ in range(200):
        step = last + int(rng.integers(0, 4))  # jumps of 0 to 3, as several envs stepping
        expected = sum(1 for k in range(last + 1, step + 1) if k % period == 0)
        assert every(step) == expected
        last = step


def test_every_with_no_period_is_never_due():
    every = Every(0)
    assert [every(s) for s in range(10)] == [0] * 10


def test_mean_metrics_match_numpy_on_device_tensors_and_floats():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(7, 3))
    tensors, floats = MeanMetrics(), MeanMetrics()
    for row in values:
        tensors.add({k: torch.tensor(v) for k, v in zip("abc", row, strict=True)})
        floats.add(dict(zip("abc", row.tolist(), strict=True)))
    for means in (tensors.mean(), floats.mean()):
        assert list(means) == ["a", "b", "c"]
        np.testing.assert_allclose(list(means.values()), values.mean(0), rtol=1e-5, atol=1e-6)
    assert tensors.mean() == {} and tensors.count == 0  # started over


def test_a_metric_reported_every_other_update_is_the_mean_of_its_own_values():
    metrics = MeanMetrics()
    for i in range(6):  # a delayed actor loss: on odd updates only
        row = {"critic": torch.tensor(float(i))}
        if i % 2:
            row["actor"] = torch.tensor(10.0 * i)
        metrics.add(row)
    assert metrics.mean() == {"critic": 2.5, "actor": 30.0}


def test_mean_metrics_name_what_was_not_finite_and_the_fix():
    metrics = MeanMetrics()
    metrics.add({"loss": torch.tensor(1.0), "kl": torch.tensor(0.5)})
    metrics.add({"loss": torch.tensor(math.inf), "kl": torch.tensor(0.5)})
    with pytest.raises(FloatingPointError, match=r"updates 1-2 is not finite.*'loss'.*lower lr"):
        metrics.mean("updates 1-2", "lower lr")


@dataclass
class Cfg:
    logdir: str = "runs/test"
    seed: int = 3
    device: str = "cpu"
    steps: int = 10


def test_a_run_restores_rngs_wall_clock_and_refuses_another_runs_checkpoint(tmp_path):
    cfg = Cfg(str(tmp_path / "run"))
    with Run(cfg) as run:
        assert run.restore({"job": "test"}) is None
        assert json.loads((run.dir / "config.json").read_text())["steps"] == 10
        run.begin(0, total=cfg.steps)
        run.log(1, {"x": 1.0})
        run.log(2, {"x": 2.0})
        run.checkpoint({"step": 1})
        after = (torch.rand(3), np.random.rand(), random.random())
        wall = run.wall()
    with Run(Cfg(cfg.logdir, steps=20), resume=True) as run:
        state = run.restore({"job": "test"})
        assert state["step"] == 1 and state["wall_s"] <= wall
        # the draws after the checkpoint repeat: a resumed run continues the same streams
        assert torch.equal(torch.rand(3), after[0])
        assert np.random.rand() == after[1] and random.random() == after[2]
        assert run.wall() >= state["wall_s"]
        run.begin(state["step"], total=20)
        assert [r["step"] for r in read_metrics(run.dir)] == [1]  # rows after it dropped
        assert json.loads((run.dir / "config.json").read_text())["steps"] == 20
    with pytest.raises(CheckpointError, match="different run"):
        Run(cfg, resume=True).restore({"job": "other"})


def test_a_new_run_refuses_a_directory_that_holds_one(tmp_path):
    cfg = Cfg(str(tmp_path / "run"))
    with Run(cfg) as run:
        run.restore({"job": "test"})
    with pytest.raises(FileExistsError, match="--resume"):
        Run(cfg)


def test_sigterm_lets_the_loop_checkpoint_then_stops_with_a_resume_hint(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    cfg = Cfg(str(tmp_path / "run"))
    with pytest.raises(RunStopped, match=r"stopped on SIGTERM: saved a checkpoint .*--resume"):
        with Run(cfg) as run:
            run.restore({"job": "test"})
            for step in range(1, 100):
                if step == 3:
                    os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would
                if run.stopping:
                    run.checkpoint({"step": step})
                run.stop_point()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    with Run(Cfg(cfg.logdir), resume=True) as run:
        assert run.restore({"job": "test"})["step"] == 3


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    with pytest.raises(KeyboardInterrupt), Run(Cfg(str(tmp_path / "run"))) as run:
        os.kill(os.getpid(), signal.SIGINT)
        assert run.stopping
        os.kill(os.getpid(), signal.SIGINT)


def test_a_script_stopped_by_a_signal_prints_one_line_and_exits_with_its_code(capsys):
    def stopped(cfg, resume):
        raise RunStopped(signal.SIGTERM, "stopped on SIGTERM: saved a checkpoint in X")

    with pytest.raises(SystemExit) as exit_:
        run_main(stopped, Cfg, argv=["--logdir", "x"])
    assert exit_.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "stopped on SIGTERM: saved a checkpoint in X\n"


def test_a_command_shows_the_toolkits_warnings_as_one_line(tmp_path):
    """A warning from the toolkit's code: `<script>: warning: <message>`; anyone else's as
    Python shows it (file and line). In a process of its own: pytest records warnings."""
    code = (
        "import sys, warnings\n"
        "from wmrl.envs.replay import ReplayRepairWarning, open_replay\n"
        "from wmrl.infra.run import command\n"
        "sys.argv = ['train_x.py']\n"
        "def main(argv):\n"
        "    warnings.warn_explicit('moved a file aside', ReplayRepairWarning,\n"
        "                           open_replay.__code__.co_filename, 1)\n"
        "    warnings.warn_explicit('theirs', UserWarning, '/elsewhere/lib.py', 7)\n"
        "    return 3\n"
        "print(command(main))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "WMRL_TRACEBACK"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.stdout == "3\n"
    err = done.stderr.splitlines()
    assert err[0] == "train_x.py: warning: moved a file aside"
    assert err[1] == "/elsewhere/lib.py:7: UserWarning: theirs"


def test_a_resume_with_a_budget_below_the_run_is_refused_and_changes_nothing(tmp_path):
    cfg = Cfg(str(tmp_path / "run"), steps=10)
    with Run(cfg) as run:
        run.restore({"job": "test"})
        run.checkpoint({"step": 10})
    with pytest.raises(ValueError, match=r"at step 10, past --steps 5: give a larger --steps"):
        Run(Cfg(cfg.logdir, steps=5), resume=True).restore(
            {"job": "test"}, budget=(5, "--steps", "step")
        )
    assert json.loads((tmp_path / "run" / "config.json").read_text())["steps"] == 10
    state = Run(Cfg(cfg.logdir, steps=10), resume=True).restore(
        {"job": "test"}, budget=(10, "--steps", "step")
    )
    assert state["step"] == 10  # the same budget: a finished run, nothing to refuse


def test_a_run_stopped_before_its_first_checkpoint_resumes_by_starting_again(tmp_path, capsys):
    cfg = Cfg(str(tmp_path / "run"))
    with Run(cfg) as run:
        run.restore({"job": "test"})
        run.begin(0)
        run.log(5, {"x": 1.0})
        (run.dir / "replay").mkdir()
        (run.dir / "replay" / "00000000-10.npz").write_bytes(b"episode")
        # ... and the process dies here, before run.checkpoint
    with pytest.raises(FileExistsError, match="--resume"):
        Run(cfg)
    with Run(Cfg(cfg.logdir, steps=20), resume=True) as run:
        assert run.restore({"job": "test"}) is None and not run.resume
        assert "starting it again" in capsys.readouterr().err
        aside = run.dir / "unfinished-1"
        assert (aside / "replay" / "00000000-10.npz").read_bytes() == b"episode"
        assert (aside / "metrics.jsonl").exists() and not (run.dir / "replay").exists()
        assert json.loads((run.dir / "config.json").read_text())["steps"] == 20


def test_a_cpu_run_says_what_its_budget_costs_and_names_its_phase(tmp_path, capsys):
    with Run(Cfg(str(tmp_path / "run"))) as run:
        run.restore({"job": "test"})
        run.begin(0, total=10)
        run.phase("pretrain")
        assert run.bar.desc == "pretrain" and run.bar.n == 0
        run.speed_notice("pixel X", 8.0, 1800, "use a GPU")  # 4 hours
        run.speed_notice("pixel X", 1.0, 1800, "use a GPU")  # half an hour: nothing to say
    err = capsys.readouterr().err
    assert "pixel X on a CPU: 8.0 s per update here, about 4 h for the 1800 updates" in err
    assert err.count("pixel X") == 1
