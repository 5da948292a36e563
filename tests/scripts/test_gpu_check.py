"""The prepared GPU check runs end to end here at toy sizes (`--budget smoke`), so it cannot rot
between the sessions that are lent a GPU; and the kit's trimmed wheel keeps a valid RECORD."""

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def device_kit():
    spec = importlib.util.spec_from_file_location("device_kit", ROOT / "scripts" / "device_kit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_smoke_budget_runs_every_step_and_writes_the_files(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), GPU_CHECK_RUN=str(tmp_path / "run"), PYTHON=sys.executable)
    done = subprocess.run(["bash", str(SCRIPT), "--budget", "smoke"], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = {"summary.md", "log.txt", "frame.png", "benchmark.json", "metrics.jsonl",
             "openloop.gif", "train.log"}  # fmt: skip
    assert {p.name for p in out.iterdir()} == files  # at most 8 come back from the device
    summary = (out / "summary.md").read_text()
    assert "egl: frame (64, 64, 3) uint8" in summary and ": ok" in summary
    bench = json.loads((out / "benchmark.json").read_text())
    assert {"render", "planet", "dreamer"} <= set(bench)
    assert bench["dreamer"]["update_2x8_pixels_updates_per_s"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] >= 2000 and any("eval/return" in r for r in rows)
    assert "updates/s" in summary and "env steps/s" in summary
    # the time limit stopped the training (its budget of 100k env steps is out of reach)
    assert "training stopped at the time limit" in (out / "log.txt").read_text()


def test_bad_arguments_are_one_line_and_exit_2(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    for args, message in ((["--budget", "huge"], "--budget must be full or smoke, got 'huge'"),
                          (["--limit", "ten"], "--limit takes whole seconds, got 'ten'"),
                          (["--fast"], "unknown argument --fast (see --help)")):  # fmt: skip
        done = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == 2 and done.stderr.strip() == f"gpu_check.sh: error: {message}"


def test_a_trimmed_wheel_lists_exactly_what_it_holds_with_their_hashes(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    files = {
        "pkg/__init__.py": b"x = 1\n",
        "pkg/suite/task.xml": b"<mujoco/>" * 100,
        "pkg/locomotion/walker.xml": b"<big/>" * 1000,
        "pkg/locomotion/__init__.py": b"",
        "pkg-1.0.dist-info/METADATA": b"Name: pkg\n",
    }
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("pkg-1.0.dist-info/RECORD", "".join(f"{n},,\n" for n in files))
    before, after = device_kit().trim_wheel(wheel, ("pkg/locomotion/",))
    assert after < before
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert names == {n for n in files if "locomotion" not in n} | {"pkg-1.0.dist-info/RECORD"}
        record = [line.split(",") for line in z.read("pkg-1.0.dist-info/RECORD").decode().split()]
        for name, digest, size in record:
            if name.endswith("RECORD"):
                assert digest == size == ""
                continue
            data = z.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert digest == "sha256=" + expected.decode() and int(size) == len(data)
        assert len(record) == len(names)
