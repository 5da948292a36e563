"""Training metrics: scalar tensors brought to the host in one copy, checked for values that are
not finite, and averaged over many updates without waiting for the device on each."""

from __future__ import annotations

import math

import torch


def metric_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scalar tensors -> floats in one device-to-host copy."""
    values = torch.stack([v.detach().float() for v in metrics.values()]).tolist()
    return dict(zip(metrics, values, strict=True))


def settle_metrics(metrics: dict[str, torch.Tensor], sync: bool, what: str, fix: str) -> dict:
    """An update's metrics before its optimizer step: with `sync`, floats in one host sync,
    raising FloatingPointError (see `check_finite`) so that a non-finite update never reaches
    the weights; without it, detached device tensors, nothing waiting for the device."""
    if not sync:
        return {k: v.detach() for k, v in metrics.items()}
    out = metric_floats(metrics)
    check_finite(out, what, fix)
    return out


def check_finite(metrics: dict[str, float], what: str, fix: str) -> None:
    """Raise FloatingPointError naming `what`, the non-finite metrics and `fix` if any metric
    is NaN or infinite."""
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(f"{what} is not finite ({bad}); {fix}")
