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

from wmrl.infra.checkpoint import CHECKPOINT_FILE, load_checkpoint, prepare_run_dir
from wmrl.infra.checkpoint import save_checkpoint as _save
from wmrl.infra.config import CONFIG_FILE, parse_config, save_config
from wmrl.infra.logger import Logger, progress
from wmrl.infra.runtime import resolve_device, rng_state, seed_everything, set_rng_state


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
    """

    def __init__(self, cfg, resume: bool = False, desc: str = "", tensorboard: bool = True):
        self.cfg, self.resume, self.desc, self.tensorboard = cfg, bool(resume), desc, tensorboard
        self.dir: Path = prepare_run_dir(cfg.logdir, self.resume)
        seed_everything(cfg.seed)
        self.device = resolve_device(getattr(cfg, "device", "cpu"))
        self.meta: dict = {}
        self.logger: Logger | None = None
        self.bar = None
        self._closing: list = []
        self._wall0, self._start = 0.0, time.perf_counter()
        self.stop_signal: int | None = None
        self._saved_since_stop = False
        self._handlers: dict = {}

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / CHECKPOINT_FILE

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
        if self.resume:
            state = load_checkpoint(self.checkpoint_path, self.meta, map_location=self.device)
            if budget is not None and int(state[budget[2]]) > budget[0]:
                value, flag, key = budget
                raise ValueError(
                    f"{self.dir} is at {key.replace('_', ' ')} {int(state[key])}, past "
                    f"{flag} {value}: give a larger {flag} to continue it (nothing was changed)"
                )
            if "rng" in state:
                set_rng_state(state["rng"])
            self._wall0 = float(state.get("wall_s", 0.0))
            self._start = time.perf_counter()
        if write_config:
            self.save_config()
        return state

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
        them again) and the progress bar (at `initial`, default `step`, of `total`)."""
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
        old = self.bar
        if old is not None:
            old.close()
        total = total if total is not None else (old.total if old is not None else None)
        initial = initial if initial is not None else (old.n if old is not None else 0)
        unit = unit or (old.unit if old is not None else "step")
        self.bar = progress(total, initial=initial, desc=f"{self.desc} {name}".strip(), unit=unit)

    def notice(self, message: str) -> None:
        """One line for the user, above the progress bar (stderr)."""
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
        self.logger.log(step, row)

    def video(self, step: int, name: str, frames) -> Path:
        """A video (T, H, W, C) as `gifs/<name>_<step>.gif` and in TensorBoard."""
        return self.logger.video(step, name, frames)

    def advance(self, n: int, **postfix) -> None:
        """Move the progress bar to `n` (of its total), showing `postfix` beside it."""
        if self.bar is not None:
            self.bar.update(n - self.bar.n)
            if postfix:
                self.bar.set_postfix(**postfix)

    def wall(self) -> float:
        """Seconds this run has run, over all its resumes."""
        return self._wall0 + time.perf_counter() - self._start

    def checkpoint(self, state: Mapping[str, Any], path: Path | str | None = None) -> None:
        """Write `state` atomically with the run's meta, every RNG's state and the wall clock;
        `path` defaults to the run's checkpoint.pt."""
        full = {**state, "rng": rng_state(), "wall_s": self.wall()}
        _save(self.checkpoint_path if path is None else path, full, meta=self.meta)
        self._saved_since_stop = self.stop_signal is not None

    def resume_advice(self, change: str) -> str:
        """How to go on after a non-finite update with `change` (e.g. "lower learning rates"):
        from the last checkpoint (written before the update, so intact) if there is one."""
        if self.checkpoint_path.exists():
            return (f"The checkpoint in {self.dir} is from before it: resume from it (--resume) "
                    f"with {change}")  # fmt: skip
        return f"No checkpoint was written yet: start again with {change}"

    @property
    def stopping(self) -> bool:
        """A SIGINT or SIGTERM asked the run to stop: save a checkpoint, then `stop_point()`."""
        return self.stop_signal is not None

    def stop_point(self) -> None:
        """Where a loop may stop: raises `RunStopped` if a signal asked it to (after the loop
        saved its checkpoint), else returns."""
        if self.stop_signal is None:
            return
        name = signal.Signals(self.stop_signal).name
        kept = "saved a checkpoint" if self._saved_since_stop else "kept the last checkpoint"
        raise RunStopped(
            self.stop_signal,
            f"stopped on {name}: {kept} in {self.dir}; continue with the same command and "
            f"--resume (--logdir {self.dir})",
        )

    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once
        self.stop_signal = signum
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

    def __exit__(self, *exc) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers.clear()
        self.close()


def run_main(train, cls, presets=None, description=None, argv=None, show=None):
    """A training script's whole `main`: parse the command line into the config dataclass `cls`
    (with its `presets`), call `train(cfg, resume=...)`, print its summary and return it.

    Args:
        show: summary -> the text printed (default: `key=value` pairs on one line).
    """
    cfg, resume = parse_config(cls, presets, argv=argv, description=description)
    try:
        summary = train(cfg, resume=resume)
    except RunStopped as exc:
        print(exc, file=sys.stderr)
        sys.exit(128 + exc.signum)  # the shell's code for a process ended by that signal
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
