"""SIGINT (Ctrl-C) or SIGTERM (a scheduler's notice) to every training script while it runs: it
saves a checkpoint at its next safe point, ends with the signal's exit code and one line saying
how to continue, and the same command with --resume finishes the run.

(train_dreamer.py, the main job, gets both signals in test_scripts.py; the offline scripts theirs
in tests/offline/test_stopping.py.)
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wmrl.infra import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]

# script -> (arguments of a run far longer than the test waits, the file of its first
# checkpoint, the signal, arguments for the resume that finishes it)
ONLINE = {
    "train_planet.py": (
        ["--preset", "smoke", "--obs-type", "state", "--episodes", "1000"],
        "checkpoint.pt",
        signal.SIGTERM,
        ["--episodes", "2"],
    ),
    "collect.py": (
        ["--preset", "smoke", "--obs-type", "state", "--episodes", "1000"],
        "checkpoint.pt",
        signal.SIGINT,
        ["--episodes", "8"],
    ),
    "train_worldmodels.py": (
        ["--preset", "smoke", "--rollouts", "1000"],
        "collect.pt",
        signal.SIGINT,
        ["--rollouts", "4"],
    ),
    # Online SAC, then the datasets (two kinds, to be quick).
    "make_dataset.py": (
        [
            "--preset",
            "smoke",
            "--sac-steps",
            "1000000",
            "--kinds",
            "random",
            "expert",
            "--checkpoint-every",
            "200",
        ],
        "checkpoint.pt",
        signal.SIGTERM,
        ["--sac-steps", "1000"],
    ),
}


def stop_and_resume(script: str, argv: list[str], first: str, signum, resume: list[str],
                    logdir: Path) -> str:  # fmt: skip
    """Start `script`, send `signum` once its first checkpoint exists, check how it ended, then
    resume it with `resume` appended; returns the resume's stdout."""
    command = [sys.executable, str(ROOT / "scripts" / script), *argv, "--logdir", str(logdir)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (logdir / first).exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    written = (logdir / first).stat().st_mtime_ns
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"stopped on {name}: ") and "--resume" in last, last
    load_checkpoint(logdir / first)  # readable
    assert (logdir / first).stat().st_mtime_ns >= written
    done = subprocess.run([*command, "--resume", *resume], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("script", sorted(ONLINE))
def test_a_signal_stops_an_online_script_with_a_checkpoint_and_the_resume_finishes(
    script, tmp_path, monkeypatch
):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))  # make_dataset's
    argv, first, signum, resume = ONLINE[script]
    out = stop_and_resume(script, argv, first, signum, resume, tmp_path / "run")
    assert "episodes=" in out or "stages_done=" in out or "hopper-expert-v0" in out
