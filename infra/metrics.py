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


def nonfinite_fix(data: str, settings: str, then: str) -> str:
    """The advice a non-finite update's error gives: the likely causes in order, the data first
    (no learning rate fixes bad data), then the settings, and `then`, how to go on."""
    return f"likely causes, in order: {data}; then {settings}. {then}"


class MeanMetrics:
    """The means of many updates' metrics, summed where they are (device tensors stay on the
    device, one stacked add per update) and brought to the host once, by `mean`, which is also
    where a non-finite update is caught: call it before each checkpoint.

        metrics = MeanMetrics()
        for batch in batches:
            metrics.add(update(batch))          # {name: float or 0-d tensor}
        row = metrics.mean("updates 1-100 of run X", "lower the learning rate")

    Each name is averaged over the updates that reported it: a term reported every other update
    (TD3's delayed actor loss) is the mean of its own values, not half of it.
    """

    def __init__(self):
        self._keys: tuple[str, ...] = ()
        self._total = None  # the running sums of the names `_keys`, stacked
        self._runs = 0  # updates summed into `_total`
        self._folded: dict[str, list] = {}  # name -> [sum, count] from earlier sets of names
        self.count = 0

    def add(self, metrics: dict) -> None:
        """One update's metrics."""
        if not metrics:
            return
        keys, values = tuple(metrics), list(metrics.values())
        if keys != self._keys:
            self._fold()
            self._keys = keys
        if any(isinstance(v, torch.Tensor) for v in values):
            device = next(v.device for v in values if isinstance(v, torch.Tensor))
            row = torch.stack([torch.as_tensor(v, device=device).detach().float() for v in values])
            self._total = row if self._total is None else self._total + row
        else:  # host floats (the offline algorithms'): plain sums, no tensor per update
            row = [float(v) for v in values]
            total = self._total if self._total is not None else [0.0] * len(row)
            self._total = [a + b for a, b in zip(total, row, strict=True)]
        self._runs += 1
        self.count += 1

    def _fold(self) -> None:
        """Move the stacked sums into the per-name ones (tensor slices: no host sync)."""
        for i, name in enumerate(self._keys):
            entry = self._folded.setdefault(name, [0.0, 0])
            entry[0] = entry[0] + self._total[i]
            entry[1] += self._runs
        self._keys, self._total, self._runs = (), None, 0

    def mean(self, what: str = "an update", fix: str = "lower the learning rates") -> dict:
        """{name: mean float} since the last call (empty if nothing was added), then starts
        over; raises FloatingPointError naming `what` and `fix` if any mean is not finite."""
        if self._total is not None:
            self._fold()
        names = list(self._folded)
        out = {}
        if names:
            sums = [self._folded[n][0] for n in names]
            if any(isinstance(v, torch.Tensor) for v in sums):  # one device-to-host copy
                sums = torch.stack([torch.as_tensor(v) for v in sums]).tolist()
            out = {n: s / self._folded[n][1] for n, s in zip(names, sums, strict=True)}
        self._folded, self.count = {}, 0
        check_finite(out, what, fix)
        return out
