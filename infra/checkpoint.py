"""Run directories and checkpoints that survive interruption.

A checkpoint is written to a temporary file in the same directory and renamed over the old one,
so at any moment `checkpoint.pt` is either the previous complete checkpoint or the new one, never
half of one. Each carries `meta` (what run wrote it: job, env, model sizes ...) that a resume
compares with its own, so a checkpoint from another run is refused with a clear error instead of
failing later on a tensor shape.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from wmrl.infra.config import CONFIG_FILE

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = "wmrl-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or from a different run; the message says which."""


def prepare_run_dir(logdir: str | Path, resume: bool) -> Path:
    """Create (or, on resume, find) a run directory.

    A new run refuses a directory that already holds a run, so that nothing saved is overwritten;
    a resume refuses a directory without one.
    """
    run_dir = Path(logdir)
    holds_run = (run_dir / CONFIG_FILE).exists() or (run_dir / CHECKPOINT_FILE).exists()
    if resume and not holds_run:
        raise CheckpointError(
            f"--resume: {run_dir} holds no run (no {CONFIG_FILE} or {CHECKPOINT_FILE}); "
            "check --logdir, or start a new run without --resume"
        )
    if not resume and holds_run:
        raise FileExistsError(
            f"{run_dir} already holds a run; continue it with --resume, or choose a new --logdir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def save_checkpoint(
    path: str | Path, state: Mapping[str, Any], meta: Mapping | None = None
) -> None:
    """Atomically write `state` (tensors, state_dicts, numbers, strings, lists, dicts) to `path`.

    Args:
        state: what the run needs to continue.
        meta: small JSON-like facts about the run that a resume must match.
    """
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, "meta": dict(meta or {}), "state": dict(state)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())  # the rename must not reach the disk before the data
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        os.unlink(tmp)
        # torch.save reports a failed write (a full disk) as "[enforce fail at
        # inline_container.cc] ... unexpected pos"; any other RuntimeError is not the disk's.
        if not isinstance(exc, OSError) and "inline_container" not in str(exc):
            raise
        free = shutil.disk_usage(path.parent).free / 2**20
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"could not write the checkpoint {path} ({first}; {free:.0f} MiB free on that "
            "disk); the previous checkpoint is intact: free some space, then --resume"
        ) from exc
    except BaseException:
        os.unlink(tmp)
        raise


def load_checkpoint(
    path: str | Path,
    expect_meta: Mapping | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` and return its `state`.

    Args:
        expect_meta: every key given must equal the checkpoint's meta, else CheckpointError.
        map_location: where tensors land (torch.load's argument).
    """
    return _read(path, expect_meta, map_location)["state"]


def read_meta(path: str | Path) -> dict[str, Any]:
    """The `meta` a checkpoint was written with (job, env, sizes ...); errors as load_checkpoint."""
    return dict(_read(path, None, "cpu")["meta"])


def _read(path, expect_meta, map_location) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: the run stopped before its first checkpoint or "
            "--logdir is wrong; start the run again without --resume (in a new --logdir)"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); restore it from a copy, or start "
            "the run again in a new --logdir"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this toolkit (no {FORMAT!r} header)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')}, this toolkit reads "
            f"version {VERSION}; resume it with the version that wrote it"
        )
    meta = payload["meta"]
    wrong = {k: (meta.get(k), v) for k, v in (expect_meta or {}).items() if meta.get(k) != v}
    if wrong:
        detail = "; ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, (a, b) in wrong.items())
        raise CheckpointError(
            f"checkpoint {path} belongs to a different run ({detail}); resume with the settings "
            "it was written with, or start a new run in a new --logdir"
        )
    return payload
