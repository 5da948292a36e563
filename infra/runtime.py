"""Seeding and device choice, the two things every training script does first."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> np.random.Generator:
    """Seed Python's, NumPy's and PyTorch's (CPU and CUDA) generators; returns a fresh NumPy
    Generator seeded with `seed` for code that takes one explicitly.

    Args:
        deterministic: also ask PyTorch for deterministic kernels (slower on GPU; some ops then
            raise instead of running nondeterministically).
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    return np.random.default_rng(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """`--device auto|cpu|cuda|cuda:N` -> a torch.device; "auto" takes CUDA when there is one.

    Asking for CUDA on a machine without it is an error (rather than a silent CPU run that takes
    a hundred times longer).
    """
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: this PyTorch ({torch.__version__}) sees no CUDA device; use "
                "--device cpu, or install a CUDA build of torch on a machine with a GPU"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif device.type != "cpu":
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def rng_state() -> dict:
    """Python's, NumPy's global and PyTorch's (CPU and every CUDA device) generator states, for a
    checkpoint; `set_rng_state` puts them back so that a resumed run draws what it would have."""
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured (CUDA states only where this machine has the devices)."""
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


def _numpy_state() -> tuple:
    """NumPy's global state with its key array as a tensor (checkpoints load weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def _tuples(x):
    """Lists back to tuples (a checkpoint may hand tuples back as lists)."""
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def autocast(device: torch.device):
    """bf16 mixed precision on CUDA (danijar trains in float16), full precision elsewhere."""
    device = torch.device(device)
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


def compile_methods(obj, names, **options) -> None:
    """Replace each method `names` of `obj` by its torch.compile'd version (on the instance)."""
    for name in names:
        setattr(obj, name, torch.compile(getattr(obj, name), **options))
