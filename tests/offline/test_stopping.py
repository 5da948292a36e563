"""SIGINT (Ctrl-C) or SIGTERM (a scheduler's notice) to the offline training scripts while they
run: a checkpoint at the next safe point, the signal's exit code and one line saying how to go
on; then --resume with a budget just past where it stopped finishes the run."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wmrl.infra import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Minari's notes


@pytest.mark.parametrize("script, signum", [("train_offline.py", signal.SIGTERM),
                                            ("train_morel.py", signal.SIGINT)])  # fmt: skip
def test_a_signal_stops_an_offline_script_with_a_checkpoint_and_the_resume_finishes(
    script, signum, dataset_id, tmp_path
):
    if script == "train_offline.py":
        argv = ["--algo", "td3bc", "--dataset", dataset_id, "--preset", "smoke", "--steps",
                "10000000", "--checkpoint-every", "50", "--eval-every", "1000000"]  # fmt: skip
    else:
        argv = ["--dataset", dataset_id, "--preset", "smoke", "--iterations", "100000"]
    logdir = tmp_path / "run"
    command = [sys.executable, str(ROOT / "scripts" / script), *argv, "--logdir", str(logdir)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (logdir / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1].startswith(f"stopped on {signal.Signals(signum).name}")
    position = load_checkpoint(logdir / "checkpoint.pt")
    at = int(position.get("step", position.get("iteration", 0)))
    budget = ["--steps", str(at + 20)] if script == "train_offline.py" else ["--iterations",
                                                                           str(at + 1)]  # fmt: skip
    done = subprocess.run([*command[:2], "--logdir", str(logdir), "--resume", *budget],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
