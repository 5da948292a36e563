"""infra.sweep and scripts/sweep.py on Ray Tune: the search space as Tune reads it, and a grid
of two offline trials whose run directories `compare_offline` tables, killed after its first
trial and resumed without running that trial again."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wmrl.infra.logger import read_metrics
from wmrl.infra.sweep import SweepConfig, parse_space, trial_name
from wmrl.offline.compare import CompareConfig, compare_offline

ROOT = Path(__file__).resolve().parents[2]


def test_the_search_space_as_tune_reads_it():
    pytest.importorskip("ray")
    space = parse_space("algo=td3bc,iql seed=0,1,2", "pessimism=uniform(0.5,4) k=randint(1,5)")
    assert space["algo"] == {"grid_search": ["td3bc", "iql"]}
    assert space["seed"] == {"grid_search": ["0", "1", "2"]}
    assert (space["pessimism"].lower, space["pessimism"].upper) == (0.5, 4.0)
    assert (space["k"].lower, space["k"].upper) == (1, 5)
    with pytest.raises(ValueError, match="uniform"):
        parse_space("", "pessimism=normal(0,1)")
    with pytest.raises(ValueError, match="KEY=VALUES"):
        parse_space("algo", "")
    assert trial_name("148c2_00003", {"seed": "1", "algo": "iql"}) == "00003-algo=iql,seed=1"
    with pytest.raises(ValueError, match="no script 'train_nothing'"):
        SweepConfig(job="train_nothing")


def test_a_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path, dataset_id):
    """Two trials, one at a time; SIGKILL the sweep once the first has finished and the second
    has started, then --resume: the first trial's metrics are untouched, the second finishes,
    and compare_offline tables both run directories."""
    pytest.importorskip("ray")
    logdir = tmp_path / "sweep"
    args = [
        sys.executable, str(ROOT / "scripts" / "sweep.py"), "--job", "train_offline",
        "--grid", "algo=bc,td3bc", "--max-concurrent", "1", "--num-cpus", "2",
        "--args", f"--dataset {dataset_id} --preset smoke --device cpu --steps 300",
        "--logdir", str(logdir),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    dirs = [logdir / "00000-algo=bc", logdir / "00001-algo=td3bc"]
    finished = lambda: [d for d in dirs if (d / "sweep_result.json").exists()]  # noqa: E731
    started = lambda: [d for d in dirs if (d / "config.json").exists()]  # noqa: E731
    sweep = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (len(finished()) == 1 and len(started()) == 2) and sweep.poll() is None:
        assert time.time() < deadline, "the sweep's second trial never started"
        time.sleep(0.1)
    assert sweep.poll() is None, sweep.stderr.read().decode()[-2000:]
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    (first,) = finished()
    (second,) = [d for d in dirs if d != first]
    assert not (second / "sweep_result.json").exists()
    rows_before = (first / "metrics.jsonl").read_text()
    time.sleep(1.0)  # the second trial's process dies with its worker (PR_SET_PDEATHSIG)

    done = subprocess.run(args[:2] + ["--logdir", str(logdir), "--resume"], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (first / "metrics.jsonl").read_text() == rows_before  # not run again
    assert json.loads((second / "sweep_result.json").read_text())["step"] == 300
    assert max(r["step"] for r in read_metrics(second)) == 300
    table_md = (logdir / "sweep.md").read_text()
    assert "| bc | done |" in table_md and "| td3bc | done |" in table_md
    assert (logdir / "sweep.png").stat().st_size > 0

    table = compare_offline(CompareConfig(logdir=str(logdir), run=False))
    assert sorted((r["algo"], r["seeds"], r["steps"]) for r in table) == [
        ("bc", 1, 300),
        ("td3bc", 1, 300),
    ]


def test_a_sweep_with_no_ray_installed_names_the_extra(tmp_path):
    """`import ray` fails in the script's process (None in sys.modules): one line, exit 2."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['ray'] = None; "
         "sys.argv = sys.argv[1:]; import runpy; runpy.run_path(sys.argv[0], run_name='__main__')",
         str(ROOT / "scripts" / "sweep.py"), "--grid", "seed=0,1", "--logdir", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "sweep.py: error: scripts/sweep.py needs Ray, which is not installed (import of ray "
        'halted; None in sys.modules): pip install -e ".[ray]"'
    )


def test_the_one_machine_path_never_imports_ray():
    code = (
        "import sys\n"
        "import wmrl.infra.sweep, wmrl.planners.methods.world_models, wmrl.offline.trainer\n"
        "from wmrl.planners.controller import ControllerConfig\n"
        "ControllerConfig(backend='ray')\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
