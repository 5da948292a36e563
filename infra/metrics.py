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


class MeanMetrics:
    """The means of many updates' metrics, summed where they are (device tensors stay on the
    device, one stacked add per update) and brought to the host once, by `mean`, which is also
    where a non-finite update is caught: call it before each checkpoint.

        metrics = MeanMetrics()
        for batch in batches:
            metrics.add(update(batch))          # {name: float or 0-d tensor}
        row = metrics.mean("updates 1-100 of run X", "lower the learning rate")
    """

    def __init__(self):
        self.keys: list[str] = []
        self.total = None
        self.count = 0

    def add(self, metrics: dict) -> None:
        """One update's metrics; every call must name the same metrics."""
        if not metrics:
            return
        values = list(metrics.values())
        if any(isinstance(v, torch.Tensor) for v in values):
            device = next(v.device for v in values if isinstance(v, torch.Tensor))
            row = torch.stack([torch.as_tensor(v, device=device).detach().float() for v in values])
        else:
            row = torch.tensor([float(v) for v in values], dtype=torch.float64)
        self.total = row if self.total is None else self.total + row
        self.keys = list(metrics)
        self.count += 1

    def mean(self, what: str = "an update", fix: str = "lower the learning rates") -> dict:
        """{name: mean float} since the last call (empty if nothing was added), then starts
        over; raises FloatingPointError naming `what` and `fix` if any mean is not finite."""
        if self.total is None:
            out = {}
        else:
            out = dict(zip(self.keys, (v / self.count for v in self.total.tolist()), strict=True))
        self.keys, self.total, self.count = [], None, 0
        check_finite(out, what, fix)
        return out
