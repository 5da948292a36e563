"""Compare offline algorithms: run algorithms x datasets x seeds, then tabulate normalised scores.

    cfg = CompareConfig(algos="td3bc,iql", datasets="wmrl/hopper-medium-v0", seeds="0,1,2",
                        steps=100_000, logdir="runs/compare")
    table = compare_offline(cfg)     # runs what is missing, resumes what is unfinished

Runs live in logdir/<algo>/<dataset id with / as __>/seed<k>; a finished run is read, not
rerun, an interrupted one resumes from its last checkpoint (written at every evaluation), and
one stopped before its first checkpoint starts over. Every run gets CORL's values for its
dataset (`corl_preset`, as in `offline.trainer`). Any run directory holding config.json
and metrics.jsonl with eval/ rows is tabulated, so runs made by hand and MOReL's (its config's
`algo` is "morel") join the table.

Writes <out>.md and <out>.csv (per algorithm and dataset: seeds, steps, wall time, and the
normalised score mean ± std over seeds (ddof 0), of the last evaluation and of the best one),
and <out>.png: mean normalised score against gradient steps, ± one std shaded.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from wmrl.infra import apply_overrides, atomic_write_text, read_metrics
from wmrl.infra.config import atomic_write_csv
from wmrl.infra.curves import Panel, align, plot_panels
from wmrl.offline.trainer import ALGORITHMS, PRESETS, OfflineConfig, train_offline

METRIC = "eval/normalized_score"


@dataclass
class CompareConfig:
    algos: str = "bc,td3bc,cql,iql,awac,rebrac,sacn,edac,sacrnd,dt"  # comma-separated
    datasets: str = ""  # comma-separated Minari ids or paths; empty: only tabulate logdir
    seeds: str = "0,1,2"
    steps: int = 1_000_000  # gradient steps per run
    eval_every: int = 5000
    eval_episodes: int = 10
    preset: str = "default"  # an offline.trainer preset for every run ("smoke" for a dry run)
    corl_preset: Literal["auto", "none"] = "auto"  # CORL's per-dataset values in every run, or not
    device: str = "auto"
    logdir: str = "runs/compare"
    out: str = ""  # output path without suffix; empty: <logdir>/comparison
    run: bool = True  # false: tabulate what is in logdir without training


def _split(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def run_dir_for(root: Path, algo: str, dataset: str, seed: int) -> Path:
    return root / algo / dataset.strip("/").replace("/", "__") / f"seed{seed}"


def run_grid(cfg: CompareConfig) -> list[Path]:
    """Train every (algo, dataset, seed) not yet finished; returns their run directories."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {cfg.preset!r}")
    unknown = [a for a in _split(cfg.algos) if a not in ALGORITHMS]
    if unknown:
        raise ValueError(f"unknown algorithms {unknown}; choose from {sorted(ALGORITHMS)}")
    dirs = []
    for dataset in _split(cfg.datasets):
        for algo in _split(cfg.algos):
            for seed in (int(s) for s in _split(cfg.seeds)):
                d = run_dir_for(Path(cfg.logdir), algo, dataset, seed)
                run_cfg = apply_overrides(OfflineConfig(), PRESETS[cfg.preset], "preset")
                run_cfg = apply_overrides(
                    run_cfg,
                    {
                        "algo": algo, "dataset": dataset, "seed": seed, "logdir": str(d),
                        "steps": cfg.steps, "eval_every": cfg.eval_every,
                        "eval_episodes": cfg.eval_episodes, "device": cfg.device,
                        "checkpoint_every": cfg.eval_every, "corl_preset": cfg.corl_preset,
                    },
                )  # fmt: skip
                resume = (d / "checkpoint.pt").exists()
                if not resume and d.exists():
                    # Stopped before its first checkpoint: nothing to resume, so start over.
                    print(f"{d}: no checkpoint, restarting the run")
                    shutil.rmtree(d)
                if not (resume and _last_step(d) >= cfg.steps):
                    train_offline(run_cfg, resume=resume)
                dirs.append(d)
    return dirs


def _last_step(run_dir: Path) -> int:
    rows = read_metrics(run_dir)
    return max((r["step"] for r in rows), default=0)


def read_run(run_dir: Path) -> dict | None:
    """(algo, dataset, seed, eval curve, wall time) of a run directory, or None if it has no
    evaluations. The curve is the normalised score where the run has one, else the return."""
    cfg_file = run_dir / "config.json"
    if not cfg_file.exists():
        return None
    conf = json.loads(cfg_file.read_text())
    rows = [r for r in read_metrics(run_dir) if METRIC in r or "eval/return" in r]
    if not rows:
        return None
    key = METRIC if all(METRIC in r for r in rows) else "eval/return"
    wall = max((r.get("time/wall_s", 0.0) for r in rows), default=0.0)
    return {
        "algo": conf.get("algo") or conf.get("job") or "morel",
        "dataset": conf.get("dataset", "?"),
        "seed": conf.get("seed"),
        "metric": key,
        "steps": np.array([r["step"] for r in rows]),
        "scores": np.array([r[key] for r in rows], np.float64),
        "wall_s": wall,
    }


def tabulate(runs: list[dict]) -> list[dict]:
    """One row per (algo, dataset): seeds, steps, wall time, last and best mean ± std."""
    groups = defaultdict(list)
    for r in runs:
        groups[(r["algo"], r["dataset"])].append(r)
    table = []
    for (algo, dataset), rs in sorted(groups.items()):
        last = np.array([r["scores"][-1] for r in rs])
        best = np.array([r["scores"].max() for r in rs])
        table.append({
            "algo": algo, "dataset": dataset, "metric": rs[0]["metric"], "seeds": len(rs),
            "steps": int(min(r["steps"][-1] for r in rs)),
            "wall_min": float(np.mean([r["wall_s"] for r in rs]) / 60),
            "last_mean": float(last.mean()), "last_std": float(last.std()),
            "best_mean": float(best.mean()), "best_std": float(best.std()),
        })  # fmt: skip
    return table


def markdown(table: list[dict]) -> str:
    head = "| algorithm | dataset | seeds | steps | wall min/run | last | best |\n"
    head += "|---|---|---|---|---|---|---|\n"
    lines = [
        f"| {r['algo']} | {r['dataset']} | {r['seeds']} | {r['steps']} | {r['wall_min']:.1f} | "
        f"{r['last_mean']:.1f} ± {r['last_std']:.1f} | {r['best_mean']:.1f} ± {r['best_std']:.1f} |"
        for r in table
    ]
    note = "\nScores: normalised (D4RL scale, 0 random, 100 expert) where the dataset has "
    note += "reference scores, else raw returns; mean ± std over seeds.\n"
    return head + "\n".join(lines) + "\n" + note


def plot(runs: list[dict], path: Path) -> None:
    """Mean score against steps per algorithm, one panel per dataset, ± std shaded."""
    panels = []
    for ds in sorted({r["dataset"] for r in runs}):
        by_algo = defaultdict(list)
        for r in runs:
            if r["dataset"] == ds:
                by_algo[r["algo"]].append(r)
        curves = {
            algo: align([(r["steps"], r["scores"]) for r in rs])
            for algo, rs in sorted(by_algo.items())
        }
        normalised = all(r["metric"] == METRIC for rs in by_algo.values() for r in rs)
        ylabel = "normalised score" if normalised else "return"
        panels.append(Panel(ds, curves, xlabel="gradient steps", ylabel=ylabel))
    plot_panels(panels, path)


def compare_offline(cfg: CompareConfig) -> list[dict]:
    """Run the grid (unless `cfg.run` is false), then write the table and the plot."""
    root = Path(cfg.logdir)
    if cfg.run and cfg.datasets:
        run_grid(cfg)
    runs = [r for d in sorted(root.rglob("config.json")) if (r := read_run(d.parent))]
    if not runs:
        raise ValueError(
            f"no evaluated runs under {root}; give --datasets to train some, or point --logdir "
            "at a folder of run directories"
        )
    table = tabulate(runs)
    out = Path(cfg.out) if cfg.out else root / "comparison"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".md"), markdown(table))
    atomic_write_csv(out.with_suffix(".csv"), table, list(table[0]))
    plot(runs, out.with_suffix(".png"))
    return table
