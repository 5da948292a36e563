"""Learning curves from run directories: each run's `metrics.jsonl` read for one metric, the
seeds of a group put on common steps, their mean and spread drawn as PNG panels with published
reference lines, and a markdown table of the final values.

    groups = {"DreamerV2 state": sorted(Path("runs").glob("dreamer-state-s*"))}
    curves = {label: group_curve(dirs, "eval/return") for label, dirs in groups.items()}
    plot_panels([Panel("cartpole-swingup", curves, refs={"paper, pixels": 390.0})], "c.png")

`scripts/plot_curves.py` is the command; `offline.compare` draws its panels here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wmrl.infra.logger import read_metrics


@dataclass
class Curve:
    """A group's curve: `values` (seeds, steps) on the common `steps`, and where each run
    directory came from."""

    steps: np.ndarray
    values: np.ndarray
    runs: list[str] = field(default_factory=list)

    @property
    def mean(self) -> np.ndarray:
        return self.values.mean(0)

    @property
    def std(self) -> np.ndarray:
        return self.values.std(0)  # ddof 0: one seed gives no spread


@dataclass
class Panel:
    """One axes: its title, curves by label, horizontal reference lines by label."""

    title: str
    curves: dict[str, Curve]
    refs: dict[str, float] = field(default_factory=dict)
    xlabel: str = "env steps"
    ylabel: str = "eval return"


def read_curve(run_dir: str | Path, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, values) of the rows of `run_dir` that log `metric`, or None if none does."""
    rows = [r for r in read_metrics(run_dir) if metric in r]
    if not rows:
        return None
    return np.array([r["step"] for r in rows]), np.array([r[metric] for r in rows], np.float64)


def align(curves: list[tuple[np.ndarray, np.ndarray]], runs: list[str] | None = None) -> Curve:
    """Seeds on common steps: those of the curve that ends first (the others cut there), each
    other curve linearly interpolated onto them (runs evaluated at other steps, e.g. after
    whole episodes of another length)."""
    if not curves:
        raise ValueError("no curve to align: no run logs the metric")
    steps = min(curves, key=lambda c: c[0][-1])[0]
    values = np.stack([np.interp(steps, s, v) for s, v in curves])
    return Curve(steps, values, list(runs or []))


def group_curve(run_dirs, metric: str) -> Curve:
    """The aligned curve of the run directories that log `metric` (the others skipped)."""
    found = [(str(d), c) for d in run_dirs if (c := read_curve(d, metric)) is not None]
    if not found:
        raise ValueError(
            f"none of the {len(list(run_dirs))} run directories logs {metric!r}; check the "
            "paths and the metric's name (a key of their metrics.jsonl rows)"
        )
    return align([c for _, c in found], [d for d, _ in found])


def final_table(curves: dict[str, Curve]) -> str:
    """Markdown: per label, seeds, the last common step, the final and the best value (mean ±
    std over seeds)."""
    lines = ["| curve | seeds | step | final | best |", "|---|---|---|---|---|"]
    for label, c in curves.items():
        best = c.values.max(1)
        lines.append(
            f"| {label} | {len(c.values)} | {int(c.steps[-1])} | {c.mean[-1]:.1f} ± "
            f"{c.std[-1]:.1f} | {best.mean():.1f} ± {best.std():.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot_panels(panels: list[Panel], path: str | Path) -> Path:
    """The panels side by side into a PNG: per curve its mean over seeds with ± one std shaded,
    per reference a dashed horizontal line. Returns the path."""
    # matplotlib loads only when a plot is drawn (it is slow to import), and the Agg backend
    # must be chosen before pyplot is imported.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for label, c in panel.curves.items():
            n = len(c.values)
            (line,) = ax.plot(c.steps, c.mean, label=f"{label} ({n} seed{'s' if n > 1 else ''})")
            if n > 1:  # the spread in the line's colour
                ax.fill_between(c.steps, c.mean - c.std, c.mean + c.std, color=line.get_color(),
                                alpha=0.2)  # fmt: skip
        for i, (label, value) in enumerate(panel.refs.items()):
            ax.axhline(value, ls="--", lw=1, color=f"C{(i + len(panel.curves)) % 10}", label=label)
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.legend(fontsize=6, framealpha=0.6)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
