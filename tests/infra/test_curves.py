"""infra.curves and scripts/plot_curves.py: seeds aligned on common steps by interpolation,
means and spreads against numpy, the final-value table, the PNG, and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wmrl.infra.curves import Panel, align, final_table, group_curve, plot_panels

ROOT = Path(__file__).resolve().parents[2]


def write_run(d: Path, steps, values, metric="eval/return"):
    d.mkdir(parents=True)
    rows = [{"step": s, metric: v} for s, v in zip(steps, values, strict=True)]
    rows.insert(1, {"step": 1, "train/return": 5.0})  # rows without the metric are skipped
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_align_cuts_to_the_shortest_and_interpolates(tmp_path):
    write_run(tmp_path / "s0", [0, 10, 20, 30], [0.0, 10.0, 20.0, 60.0])
    write_run(tmp_path / "s1", [0, 5, 15, 20], [2.0, 4.0, 8.0, 12.0])  # ends first
    curve = group_curve(sorted(tmp_path.iterdir()), "eval/return")
    assert curve.steps.tolist() == [0, 5, 15, 20]
    # s0 interpolated at 5 and 15: 5 and 15
    assert np.allclose(curve.values, [[0, 5, 15, 20], [2, 4, 8, 12]])
    assert np.allclose(curve.mean, [1, 4.5, 11.5, 16]) and np.allclose(curve.std, [1, 0.5, 3.5, 4])
    table = final_table({"A": curve})
    assert "| A | 2 | 20 | 16.0 ± 4.0 | 16.0 ± 4.0 |" in table  # best: 20 and 12
    path = plot_panels([Panel("t", {"A": curve}, {"paper": 30.0})], tmp_path / "f" / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no curve"):
        align([])
    with pytest.raises(ValueError, match="logs 'eval/x'"):
        group_curve([tmp_path / "s0"], "eval/x")


def test_plot_curves_script(tmp_path):
    for seed, shift in enumerate((0.0, 10.0)):
        write_run(tmp_path / f"run-s{seed}", [0, 10], [shift, 100.0 + shift])
    script = [sys.executable, str(ROOT / "scripts" / "plot_curves.py")]
    out = tmp_path / "c.png"
    result = subprocess.run(
        [*script, "--runs", f"mine={tmp_path}/run-s*", "--refs", "paper=90", "--out", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| mine | 2 | 10 | 105.0 ± 5.0 |" in result.stdout and out.exists()
    for args, message in [
        (["--runs", "nolabel"], "'nolabel' is not label=value"),
        (["--runs", f"x={tmp_path}/none*"], "no run directory matches"),
        (["--runs", f"x={tmp_path}/run-s0", "--refs", "p=high"], "'high' is not a number"),
    ]:
        result = subprocess.run([*script, *args], capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr
        assert "Traceback" not in result.stderr
