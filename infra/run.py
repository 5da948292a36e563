"""The run skeleton every training loop uses, written once: run directory, saved config, seed,
device, resume from a meta-checked checkpoint, logger, progress bar, wall clock across resumes.

    with Run(cfg, resume) as run:                     # directory, seed, device, signals
        model = build(...).to(run.device)
        meta = {"job": "planet", "env": cfg.env}
        state = run.restore(meta, budget=(cfg.steps, "--steps", "step"))  # None: a new run
        step = state["step"] if state else 0
        run.begin(step, total=cfg.steps, unit="step")  # logger and progress bar
        every_eval, every_checkpoint = Every(cfg.eval_every, step), Every(cfg.ckpt_every, step)
        while step < cfg.steps:
            ...
            run.log(step, row)
            if every_eval(step):
                ...
            if every_checkpoint(step) or run.stopping:   # SIGINT/SIGTERM: save now
                run.checkpoint({"model": model.state_dict(), "step": step})
            run.advance(step, ret=f"{ret:.1f}")
            run.stop_point()                              # then stop, with a resume hint
    # leaving the block closes the bar, the logger and whatever `run.closing` was given

What the skeleton adds to every checkpoint, and restores from it: every RNG's state (`"rng"`)
and the wall-clock seconds of the run so far (`"wall_s"`). A loop's own state (weights,
counters, replay position) is what it passes to `checkpoint` and reads back from `restore`.

Scripts are `command(main)` around `main = run_main(train, Config, PRESETS, ...)`: errors a user
can act on end with one line, a stop on a signal with the resume hint.

A loop that trains data-parallel (`Run(..., parallel=True)`, started by torchrun; see
`infra.distributed`) runs on every rank, each with seed `cfg.seed + rank` (`run.seed`), its
device (`run.device`) and its own directory `run.dir`: rank 0's is the run directory, rank r's
`<run dir>/ranks/<r>/` (its replay). Rank 0 alone writes the config, logs, GIFs, progress bar
and the checkpoint; the others' calls to those do nothing. A checkpoint is one file, written by
rank 0 at a point all ranks reach together: the loop's state (the same on every rank: weights,
counters), and each rank's own part (`checkpoint(..., own=...)`: its replay position, env and
RNG states) under `"ranks"`; `restore` hands every rank its own part back, and refuses a
checkpoint written by another number of ranks (one process included). A signal reaches
every rank, but a rank acts on it (`stopping`) only once they agreed on it (`agree`), so that
all stop at the same point of their loop.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wmrl.infra import distributed
from wmrl.infra.checkpoint import CHECKPOINT_FILE, load_checkpoint, prepare_run_dir
from wmrl.infra.checkpoint import save_checkpoint as _save
from wmrl.infra.config import CONFIG_FILE, parse_config, save_config
from wmrl.infra.logger import Logger, progress
from wmrl.infra.runtime import rng_state, seed_everything, set_rng_state


class Every:
    """How many multiples of `period` a counter has passed since the last call: danijar's
    `Every` for counters that may jump by more than one (several envs stepping at once).

        train = Every(5, start=step)   # counts from `step`, not from 0
        updates = train(step)          # 0, or the multiples of 5 in (last step, step]

    A period of 0 or less is never due.
    """

    def __init__(self, period: int, start: int = 0):
        self.period, self.last = int(period), int(start)

    def __call__(self, step: int) -> int:
        if self.period <= 0:
            return 0
        due = step // self.period - self.last // self.period
        self.last = step
        return max(due, 0)


class RunStopped(Exception):
    """A run stopped on SIGINT or SIGTERM at a point where its loop had saved what it needs to
    continue (`Run.stop_point`); the message says how to continue it."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class Run:
    """One training run. Construction makes (or, on resume, finds) the run directory, seeds every
    generator with `cfg.seed` and picks the device; `restore`, `begin`, `log`, `checkpoint` and
    `advance` are the rest of the life of a run. Use it as a context manager.

    Inside the context, SIGINT (Ctrl-C) and SIGTERM (what a cluster scheduler sends before it
    kills) do not stop the process at once: they set `stopping`, the loop saves its checkpoint
    at its next consistent point (`if ... or run.stopping: run.checkpoint(...)`) and calls
    `stop_point()`, which raises `RunStopped` with a one-line resume hint. A second Ctrl-C stops
    at once.

    Args:
        cfg: the run's config dataclass: `logdir`, `seed` and, where the job uses one, `device`.
        resume: continue the run in `cfg.logdir` (its checkpoint must exist).
        desc: the progress bar's label.
        tensorboard: write TensorBoard events beside metrics.jsonl.
        parallel: the loop trains data-parallel when torchrun starts it on several ranks (see
            the module's docstring); without it, a launch on several ranks is refused.
    """

    def __init__(self, cfg, resume: bool = False, desc: str = "", tensorboard: bool = True,
                 parallel: bool = False):  # fmt: skip
        self.cfg, self.resume, self.desc, self.tensorboard = cfg, bool(resume), desc, tensorboard
        self.world = distributed.launched(parallel)
        if self.world.main:
            self.root: Path = prepare_run_dir(cfg.logdir, self.resume)
            self.dir: Path = self.root
        else:  # made in `restore`, once rank 0 has checked (and maybe set aside) the run dir
            self.root = Path(cfg.logdir)
            self.dir = self.root / "ranks" / str(self.world.rank)
        self.seed = cfg.seed + self.world.rank
        seed_everything(self.seed)
        self.device = distributed.start(self.world, getattr(cfg, "device", "cpu"))
        self.meta: dict = {}
        self.logger: Logger | None = None
        self.bar = None
        self._closing: list = []
        self._wall0, self._start = 0.0, time.perf_counter()
        self.stop_signal: int | None = None  # the signal the loop acts on (`stopping`)
        self._received: int | None = None  # the signal this process got
        self._saved_since_stop = False
        self._handlers: dict = {}

    @property
    def checkpoint_path(self) -> Path:
        return self.root / CHECKPOINT_FILE

    @property
    def main(self) -> bool:
        """This process writes the logs and checkpoints: one process, or rank 0 of several."""
        return self.world.main

    def restore(
        self, meta: Mapping[str, Any], write_config: bool = True, budget: tuple | None = None
    ) -> dict | None:
        """The checkpoint's state on resume (its meta must match `meta`; tensors on the run's
        device; RNGs and wall clock put back), None for a new run. Then, unless told otherwise,
        writes the config: on resume too, since a larger budget is the run's config from now on
        (it is written only after the checkpoint has been accepted).

        Args:
            budget: (the budget, its flag, the state key of the run's position), e.g.
                (cfg.steps, "--steps", "env_steps"): a resume whose budget is below the
                position the checkpoint reached is refused (ValueError) before anything is
                written, rather than rewriting config.json and training nothing.
        """
        self.meta = dict(meta)
        state = None
        if self.main:
            self._start_again_without_checkpoint()
        distributed.barrier()  # the other ranks read and write only after rank 0's checks
        if not self.main:
            self.resume = self.resume and self.checkpoint_path.exists()
            self.dir.mkdir(parents=True, exist_ok=True)
        if self.resume:
            state = load_checkpoint(self.checkpoint_path, self.meta, map_location=self.device)
            ranks = int(state.get("world_size", 1))
            if ranks != self.world.size:
                raise ValueError(
                    f"{self.root} was trained by {_processes(ranks)} and this run has "
                    f"{_processes(self.world.size)}: resume it on {_processes(ranks)} (nothing "
                    "was changed)"
                )
            if budget is not None and int(state[budget[2]]) > budget[0]:
                value, flag, key = budget
                raise ValueError(
                    f"{self.root} is at {key.replace('_', ' ')} {int(state[key])}, past "
                    f"{flag} {value}: give a larger {flag} to continue it (nothing was changed)"
                )
            own = state.pop("ranks", [])
            if not self.main:  # this rank's own RNGs, replay position and envs
                state.update(own[self.world.rank - 1])
            if "rng" in state:
                set_rng_state(state["rng"])
            self._wall0 = float(state.get("wall_s", 0.0))
            self._start = time.perf_counter()
        if write_config and self.main:
            self.save_config()
        return state

    def _start_again_without_checkpoint(self) -> None:
        """On resume, a run that stopped before its first checkpoint starts again (not resumed)."""
        if self.resume and not self.checkpoint_path.exists() and not any(self.dir.glob("*.pt")):
            # It stopped before its first checkpoint (a crash, or a kill): nothing to continue
            # from, so it starts again here, keeping what it had written aside.
            aside = self._set_aside()
            print(
                f"{self.dir} has no checkpoint yet (the run stopped before its first): "
                f"starting it again; what it had written is in {aside}",
                file=sys.stderr,
            )
            self.resume = False

    def _set_aside(self) -> Path:
        """Move everything in the run directory but its config into a new `unfinished-<k>`."""
        k = 1
        while (self.dir / f"unfinished-{k}").exists():
            k += 1
        aside = self.dir / f"unfinished-{k}"
        aside.mkdir()
        for entry in list(self.dir.iterdir()):
            if entry.name != CONFIG_FILE and not entry.name.startswith("unfinished-"):
                entry.rename(aside / entry.name)
        return aside

    def save_config(self) -> None:
        save_config(self.cfg, self.dir)

    def begin(self, step: int, total: int | None = None, initial: int | None = None,
              unit: str = "step") -> None:  # fmt: skip
        """Open the logger (on resume, rows and events after `step` are dropped: the run writes
        them again) and the progress bar (at `initial`, default `step`, of `total`); on rank 0
        only, as every writing call after it."""
        if not self.main:
            return
        self.logger = Logger(
            self.dir, resume_step=step if self.resume else None, tensorboard=self.tensorboard
        )
        start = step if initial is None else initial
        self.bar = progress(total, initial=start, desc=self.desc, unit=unit)

    def phase(self, name: str, total: int | None = None, initial: int | None = None,
              unit: str | None = None) -> None:  # fmt: skip
        """Name the phase the run is in on its progress bar ("prefill", "pretrain", "train"),
        with a bar started afresh, so that its rate and ETA come from this phase alone (a fast
        random prefill would promise a short training). It keeps the old bar's total, position
        and unit unless given new ones (a pipeline's stages count different things)."""
        if not self.main:
            return
        old = self.bar
        if old is not None:
            old.close()
        total = total if total is not None else (old.total if old is not None else None)
        initial = initial if initial is not None else (old.n if old is not None else 0)
        unit = unit or (old.unit if old is not None else "step")
        self.bar = progress(total, initial=initial, desc=f"{self.desc} {name}".strip(), unit=unit)

    def notice(self, message: str) -> None:
        """One line for the user, above the progress bar (stderr)."""
        if not self.main:
            return
        (self.bar.write if self.bar is not None else print)(message, file=sys.stderr)

    def speed_notice(self, what: str, seconds: float, updates_left: int, advice: str) -> None:
        """On a CPU, say once what the rest of the run costs at the speed just measured
        (`seconds` per update, `updates_left` to go), if it is an hour or more, and `advice`."""
        hours = seconds * updates_left / 3600
        if self.device.type == "cpu" and hours >= 1:
            self.notice(f"{what} on a CPU: {seconds:.1f} s per update here, about {hours:.0f} h "
                        f"for the {updates_left} updates to go; {advice}")  # fmt: skip

    def log(self, step: int, row: Mapping[str, float]) -> None:
        """One row of scalars at `step` (metrics.jsonl and TensorBoard)."""
        if self.main:
            self.logger.log(step, row)

    def video(self, step: int, name: str, frames) -> Path | None:
        """A video (T, H, W, C) as `gifs/<name>_<step>.gif` and in TensorBoard."""
        return self.logger.video(step, name, frames) if self.main else None

    def advance(self, n: int, **postfix) -> None:
        """Move the progress bar to `n` (of its total), showing `postfix` beside it."""
        if self.bar is not None:
            self.bar.update(n - self.bar.n)
            if postfix:
                self.bar.set_postfix(**postfix)

    def wall(self) -> float:
        """Seconds this run has run, over all its resumes."""
        return self._wall0 + time.perf_counter() - self._start

    def checkpoint(
        self, state: Mapping[str, Any], path: Path | str | None = None, own: Mapping | None = None
    ) -> None:
        """Write `state` and `own` atomically with the run's meta, every RNG's state and the wall
        clock; `path` defaults to the run's checkpoint.pt.

        Data-parallel, every rank calls it at the same point: `state` is what all ranks share
        (rank 0's is written), `own` what is this rank's alone (its replay position and envs;
        with its RNGs, each rank's goes under `"ranks"` beside rank 0's own at the top level),
        and rank 0 writes the one file."""
        own = {**(own or {}), "rng": rng_state()}
        if self.world.parallel:
            parts = distributed.gather(own, self.world)
            if not self.main:
                self._saved_since_stop = self.stopping
                return
            state = {**state, "world_size": self.world.size, "ranks": parts[1:]}
        full = {**state, **own, "wall_s": self.wall()}
        _save(self.checkpoint_path if path is None else path, full, meta=self.meta)
        self._saved_since_stop = self.stopping

    def resume_advice(self, change: str) -> str:
        """How to go on after a non-finite update with `change` (e.g. "lower learning rates"):
        from the last checkpoint (written before the update, so intact) if there is one."""
        if self.checkpoint_path.exists():
            return (f"The checkpoint in {self.root} is from before it: resume from it (--resume) "
                    f"with {change}")  # fmt: skip
        return f"No checkpoint was written yet: start again with {change}"

    @property
    def stopping(self) -> bool:
        """A SIGINT or SIGTERM asked the run to stop: save a checkpoint, then `stop_point()`.
        Data-parallel, it turns true on every rank at once, at an `agree`."""
        return self.stop_signal is not None

    def agree(self, position: int) -> None:
        """Data-parallel, the ranks meet here, at the same point of their loops (one process
        returns at once): if a signal reached any of them, `stopping` turns true on all; and
        their `position`s (e.g. policy steps in each replay) must be equal, else ValueError, as
        the ranks' loops have run out of step (episodes of different lengths)."""
        if not self.world.parallel:
            return
        ranks = distributed.all_gather_ints([self._received or 0, int(position)])
        positions = [p for _, p in ranks]
        if len(set(positions)) > 1:
            raise ValueError(
                f"the ranks' loops ran out of step (positions {positions} at one meeting point): "
                "data-parallel training needs episodes of one length on every rank (dm-control's "
                "fixed time limit); train on one process for envs whose episodes end early"
            )
        signals = [signum for signum, _ in ranks if signum]
        if signals and self.stop_signal is None:
            self.stop_signal = signals[0]

    def stop_point(self) -> None:
        """Where a loop may stop: raises `RunStopped` if a signal asked it to (after the loop
        saved its checkpoint), else returns."""
        if self.stop_signal is None:
            return
        name = signal.Signals(self.stop_signal).name
        kept = "saved a checkpoint" if self._saved_since_stop else "kept the last checkpoint"
        raise RunStopped(
            self.stop_signal,
            f"stopped on {name}: {kept} in {self.root}; continue with the same command and "
            f"--resume (--logdir {self.root})",
        )

    def _on_signal(self, signum, frame) -> None:
        if self._received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once
        self._received = signum
        if not self.world.parallel:  # several ranks act on it once they agreed (`agree`)
            self.stop_signal = signum
        if self.main:
            print(f"\n{signal.Signals(signum).name}: stopping after the next checkpoint "
                  "(Ctrl-C again to stop at once)", file=sys.stderr)  # fmt: skip

    def closing(self, *things):
        """Close `things` (envs, vector envs) when the run ends; returns the first."""
        self._closing.extend(things)
        return things[0] if things else None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.logger is not None:
            self.logger.close()
        for thing in reversed(self._closing):
            thing.close()
        self._closing.clear()

    def __enter__(self) -> Run:
        if threading.current_thread() is threading.main_thread():  # signals reach only it
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._handlers[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers.clear()
        self.close()
        # The ranks ended together; after an error the others may still wait in a collective
        # (torchrun ends them).
        if self.world.parallel and (kind is None or kind is RunStopped):
            distributed.finish()


def _processes(n: int) -> str:
    return "one process" if n == 1 else f"{n} ranks (torchrun)"


def run_main(train, cls, presets=None, description=None, argv=None, show=None):
    """A training script's whole `main`: parse the command line into the config dataclass `cls`
    (with its `presets`), call `train(cfg, resume=...)`, print its summary and return it.

    Args:
        show: summary -> the text printed (default: `key=value` pairs on one line).
    """
    cfg, resume = parse_config(cls, presets, argv=argv, description=description)
    main = int(os.environ.get("RANK", "0")) == 0  # several ranks (torchrun): rank 0 says it
    try:
        summary = train(cfg, resume=resume)
    except RunStopped as exc:
        if main:
            print(exc, file=sys.stderr)
        sys.exit(128 + exc.signum)  # the shell's code for a process ended by that signal
    if main:
        print(show(summary) if show else " ".join(f"{k}={v}" for k, v in summary.items()))
    return summary


# Errors a user can act on (bad input, a missing or foreign run, a non-finite loss): a command
# prints their message, which names the fix, as one line.
USER_ERRORS = (ValueError, OSError, FloatingPointError)  # OSError: disk full, permissions, ...


_python_showwarning = warnings.showwarning
_TOOLKIT_ROOT = str(Path(__file__).resolve().parents[1])  # the folder above infra/


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings from the toolkit's own modules as `<script>: warning: <message>`; others as
    Python shows them."""
    if str(Path(filename).resolve()).startswith(_TOOLKIT_ROOT):
        print(f"{Path(sys.argv[0]).name}: warning: {message}", file=file or sys.stderr)
        return
    _python_showwarning(message, category, filename, lineno, file, line)


def command(main, argv=None):
    """Run a script's `main(argv)` as a command: an error a user can act on (the classes of
    `USER_ERRORS`, or any error class the toolkit defines) ends the process with one line,
    `<script>: error: <message>`, and exit code 2 (1 for a non-finite loss), no traceback;
    `WMRL_TRACEBACK=1` shows the traceback instead. The toolkit's warnings print as one line
    too, `<script>: warning: <message>` (with `WMRL_TRACEBACK=1`, Python's usual two, which
    say where). Returns what `main` returns."""
    if not os.environ.get("WMRL_TRACEBACK"):
        warnings.showwarning = _one_line_warning
    try:
        return main(argv)
    except Exception as exc:
        ours = type(exc).__module__.startswith("wmrl.")
        if not (isinstance(exc, USER_ERRORS) or ours) or os.environ.get("WMRL_TRACEBACK"):
            raise
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        sys.exit(1 if isinstance(exc, FloatingPointError) else 2)
