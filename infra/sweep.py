"""Sweeps on Ray Tune: a grid or a search space over any training script, one trial per run
directory, resumable after a kill.

    cfg = SweepConfig(job="train_offline", args="--dataset wmrl/hopper-medium-v0 --steps 30000",
                      grid="algo=td3bc,iql seed=0,1,2", logdir="runs/sweep")
    table = sweep(cfg)

Each trial runs the job's script (`scripts/<job>.py`) as a whole process with the sweep's fixed
flags (`args`), the trial's values as flags (`--algo iql --seed 1`) and `--logdir
<logdir>/<trial>`, so a trial is exactly the command a user would type, and its run directory is
an ordinary one: `compare_offline.py --logdir <logdir> --run false` tables offline trials,
`plot_curves.py` draws any. A trial whose run directory holds a checkpoint continues it with
`--resume`; a finished trial leaves `sweep_result.json` in its run directory and is never run
again. Tune's own state (`<logdir>/tune`) lets `--resume` pick up the trials a killed sweep had
not finished (Tune's restore), and each trial declares its resources (`cpus_per_trial`,
`gpus_per_trial`: a fraction shares a GPU).

Search space, space-separated items: `KEY=V1,V2,...` (--grid: every combination), or
`KEY=uniform(a,b)`, `loguniform(a,b)`, `randint(a,b)` (b excluded), `choice(V1,V2,...)` (--search),
each drawn `samples` times by Tune's random search from the sweep's seed.

Writes `<logdir>/sweep.md`, `sweep.csv` (one row per trial: its values, the metric's last and
best value, steps, wall time, run directory) and `sweep.png` (the metric against steps, a curve
per trial).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wmrl.infra.cluster import connect_ray, require_ray
from wmrl.infra.config import atomic_write_csv, atomic_write_text, save_config
from wmrl.infra.curves import Panel, align, plot_panels, read_curve
from wmrl.infra.logger import read_metrics

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"  # the checkout's scripts/
RESULT_FILE = "sweep_result.json"
TUNE_DIR = "tune"
_SAMPLERS = ("uniform", "loguniform", "randint", "choice")


@dataclass
class SweepConfig:
    """A sweep: the job, its fixed flags, the space, the metric, resources, where it lives."""

    job: str = "train_offline"  # a script in scripts/ (train_offline, train_morel, train_dreamer,
    # train_planet, train_worldmodels), without .py
    args: str = ""  # the job's flags shared by every trial, quoted as one string
    grid: str = ""  # "KEY=V1,V2,... KEY2=...": every combination (keys: the job's flags)
    search: str = ""  # "KEY=uniform(a,b) ...": also loguniform(a,b), randint(a,b), choice(..)
    samples: int = 1  # draws of the search space (with a grid: per grid point)
    metric: str = "eval/normalized_score"  # the metrics.jsonl key trials are ranked by
    mode: str = "max"  # max or min
    cpus_per_trial: float = 1.0  # CPUs Ray reserves per trial (the trial's torch threads too)
    gpus_per_trial: float = 0.0  # GPUs per trial; a fraction (0.25) puts 4 trials on a GPU
    max_concurrent: int = 0  # trials at once; 0: as many as the resources allow
    ray_address: str | None = None  # a cluster to join (auto, ray://host:10001); none: local
    num_cpus: int | None = None  # CPUs of a local Ray; none: all of this machine's
    seed: int = 0  # seeds the random search
    logdir: str = "runs/sweep"  # the sweep's folder: a run directory per trial, Tune's state

    def __post_init__(self):
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be max or min, got {self.mode!r}")
        if not (SCRIPTS / f"{self.job}.py").exists():
            jobs = sorted(p.stem for p in SCRIPTS.glob("train_*.py"))
            raise ValueError(f"no script {self.job!r} in {SCRIPTS}; choose from {', '.join(jobs)}")
        if self.samples < 1 or self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ValueError(
                f"need samples >= 1, cpus_per_trial > 0 and gpus_per_trial >= 0, got "
                f"{self.samples}, {self.cpus_per_trial}, {self.gpus_per_trial}"
            )
        for flag in ("--logdir", "--resume"):
            if flag in self.args.split():
                raise ValueError(f"--args must not hold {flag}: the sweep sets it per trial")


def parse_space(grid: str, search: str) -> dict:
    """Tune's param_space from space-separated `KEY=...` items: grid_search for the grid's,
    samplers for the search's. Grid values stay strings (the job's command line parses them)."""
    from ray import tune

    space = {}
    for item in grid.split():
        key, values = _split_item(item)
        space[key] = tune.grid_search([v.strip() for v in values.split(",") if v.strip()])
    for item in search.split():
        key, spec = _split_item(item)
        m = re.fullmatch(r"(\w+)\((.*)\)", spec.strip())
        if m is None or m.group(1) not in _SAMPLERS:
            raise ValueError(f"--search {item!r}: write KEY=uniform(a,b), loguniform(a,b), "
                             "randint(a,b) or choice(V1,V2,...)")  # fmt: skip
        kind, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
        if kind == "choice":
            space[key] = tune.choice(args)
            continue
        if len(args) != 2:
            raise ValueError(f"--search {item!r}: {kind} takes two bounds, got {len(args)}")
        lo, hi = (int(a) for a in args) if kind == "randint" else (float(a) for a in args)
        space[key] = getattr(tune, kind)(lo, hi)
    return space


def _split_item(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ValueError(f"{item!r}: write KEY=VALUES (a flag of the job without its --)")
    return key.strip().lstrip("-"), value


def trial_name(trial_id: str, params: dict) -> str:
    """A run directory's name: the trial's number and values, `0003-algo=iql,seed=1`."""
    values = ",".join(f"{k}={_short(v)}" for k, v in sorted(params.items()))
    number = trial_id.rsplit("_", 1)[-1]
    return re.sub(r"[^\w.,=+-]", "_", f"{number}-{values}")[:200]


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _die_with_parent() -> None:
    """In the trial's child: SIGKILL it when the trial's worker dies (a killed sweep), so that
    no orphan keeps writing a run directory a resumed sweep continues. Linux only."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_trial(params: dict, *, job: str, args: list[str], root: str, cpus: float,
              metric: str) -> None:  # fmt: skip
    """Tune's function trainable: run the job's script for one trial (resuming its run directory
    where one exists, reading it where it finished), then report its metrics."""
    from ray import tune

    name = trial_name(tune.get_context().get_trial_id(), params)
    run_dir = Path(root) / name
    result_file = run_dir / RESULT_FILE
    if not result_file.exists():
        flags = [x for k, v in sorted(params.items()) for x in (f"--{k}", str(v))]
        cmd = [sys.executable, str(SCRIPTS / f"{job}.py"), *args, *flags, "--logdir", str(run_dir)]
        if (run_dir / "config.json").exists():
            cmd.append("--resume")
        env = {**os.environ, "OMP_NUM_THREADS": str(max(int(cpus), 1))}
        log = Path(root) / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as out:
            out.write(" ".join(cmd) + "\n")
            out.flush()
            rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                 preexec_fn=_die_with_parent)  # fmt: skip
        if rc != 0:
            tail = log.read_text().strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"trial {name} exited with {rc}: {tail[0]} (log: {log})")
        atomic_write_text(result_file, json.dumps(summarize(run_dir, metric)))
    tune.report(json.loads(result_file.read_text()))


def summarize(run_dir: Path, metric: str) -> dict:
    """What a finished trial reports: the last value of every eval/ key, `metric`'s best
    (`best/<metric>`), the last step, the wall time and the run directory."""
    rows = read_metrics(run_dir)
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    if not any(metric in r for r in rows):
        raise ValueError(f"{run_dir} logged no {metric!r}; pick --metric from its metrics.jsonl")
    out = {k: v for r in evals for k, v in r.items() if k.startswith("eval/")}
    values = [r[metric] for r in rows if metric in r and r[metric] is not None]
    out[metric] = values[-1]
    out[f"best/{metric}"] = max(values)
    out["step"] = max((r["step"] for r in rows), default=0)
    out["wall_s"] = max((r.get("time/wall_s", 0.0) for r in rows), default=0.0)
    out["run_dir"] = str(run_dir)
    return out


def sweep(cfg: SweepConfig, resume: bool = False) -> list[dict]:
    """Run (or, with `resume`, continue) the sweep, then write its table and curves; returns the
    table's rows, best first."""
    root = Path(cfg.logdir).resolve()
    tune_dir = root / TUNE_DIR
    if not resume and not cfg.grid and not cfg.search:
        raise ValueError("give the space: --grid KEY=V1,V2 and/or --search 'KEY=uniform(a,b)'")
    require_ray("scripts/sweep.py")
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    connect_ray(cfg.ray_address, cfg.num_cpus)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            job=cfg.job,
            args=shlex.split(cfg.args),
            root=str(root),
            cpus=cfg.cpus_per_trial,
            metric=cfg.metric,
        ),  # fmt: skip
        {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial},
    )
    if resume:
        if not tune.Tuner.can_restore(str(tune_dir)):
            raise ValueError(f"{tune_dir} holds no sweep to resume; start it without --resume")
        tuner = tune.Tuner.restore(str(tune_dir), trainable, resume_errored=True)
    else:
        if tune_dir.exists():
            raise ValueError(f"{tune_dir} exists: continue that sweep with --resume, or choose a "
                             "new --logdir")  # fmt: skip
        tuner = tune.Tuner(
            trainable,
            param_space=parse_space(cfg.grid, cfg.search),
            tune_config=tune.TuneConfig(
                metric=cfg.metric,
                mode=cfg.mode,
                num_samples=cfg.samples,
                max_concurrent_trials=cfg.max_concurrent or None,
                search_alg=BasicVariantGenerator(random_state=cfg.seed),
                trial_dirname_creator=lambda t: trial_name(t.trial_id, t.config),
            ),
            run_config=tune.RunConfig(storage_path=str(root), name=TUNE_DIR, verbose=1),
        )
        save_config(cfg, root)  # what `--resume` reads back
    results = tuner.fit()
    return write_table(cfg, results)


def write_table(cfg: SweepConfig, results) -> list[dict]:
    """sweep.md, sweep.csv and sweep.png from Tune's results; the rows, best first."""
    rows = []
    for result in results:
        params = {k: v for k, v in (result.config or {}).items()}
        metrics = result.metrics or {}
        rows.append({
            **{f"param/{k}": v for k, v in sorted(params.items())},
            "status": "error" if result.error else "done",
            "last": metrics.get(cfg.metric),
            "best": metrics.get(f"best/{cfg.metric}"),
            "step": metrics.get("step"),
            # The run's own clock where it logs one (time/wall_s), else Tune's for the trial.
            "wall_min": round((metrics.get("wall_s") or metrics.get("time_total_s", 0.0)) / 60, 1),
            "run_dir": metrics.get("run_dir", ""),
        })  # fmt: skip
    sign = -1 if cfg.mode == "max" else 1
    rows.sort(key=lambda r: (r["best"] is None, sign * (r["best"] or 0.0)))
    root = Path(cfg.logdir)
    atomic_write_text(root / "sweep.md", markdown(rows, cfg.metric))
    keys = sorted({k for r in rows for k in r}, key=lambda k: (not k.startswith("param/"), k))
    atomic_write_csv(root / "sweep.csv", rows, keys)
    curves = {}
    for r in rows:
        curve = read_curve(r["run_dir"], cfg.metric) if r["run_dir"] else None
        if curve is not None:
            curves[Path(r["run_dir"]).name] = align([curve])
    if curves:
        plot_panels([Panel(f"sweep of {cfg.job}", curves, ylabel=cfg.metric, xlabel="step")],
                    root / "sweep.png")  # fmt: skip
    return rows


def markdown(rows: list[dict], metric: str) -> str:
    """The sweep's table, best first: a trial's values, status, the metric's last and best."""
    params = sorted({k for r in rows for k in r if k.startswith("param/")})
    head = [p.removeprefix("param/") for p in params] + [
        "status",
        f"last {metric}",
        f"best {metric}",
        "step",
        "wall min",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [_short(r.get(p, "")) for p in params] + [r["status"], _fmt(r["last"]),
                                                       _fmt(r["best"]), str(r["step"]),
                                                       str(r["wall_min"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(x) -> str:
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.1f}"
