"""Ray, the optional cluster engine (`pip install -e ".[ray]"`): one place that imports it, says
which extra to install when it is missing, and connects to a cluster or starts a local one.

    ray = connect_ray(address=None)        # a local Ray on this machine, started on demand
    ray = connect_ray(address="auto")      # the cluster `ray start` made on this node
    ray = connect_ray("ray://head:10001")  # a remote cluster through Ray Client

Nothing else in the toolkit imports Ray at module level, so the one-machine path never needs it.
"""

from __future__ import annotations

import os

RAY_EXTRA = 'pip install -e ".[ray]"'


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require_ray(what: str):
    """The `ray` module, or MissingExtra naming `what` needed it and the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise MissingExtra(
            f"{what} needs Ray, which is not installed ({exc}): {RAY_EXTRA}"
        ) from exc
    return ray


def connect_ray(address: str | None = None, num_cpus: int | None = None, what: str = "Ray"):
    """Ray, initialised once per process: joined to the cluster at `address` ("auto": the one
    `ray start` runs on this node; "ray://host:port": Ray Client), or, with no address and no
    RAY_ADDRESS in the environment, a local Ray with `num_cpus` CPUs (none: all of them) started
    here and ending with this process. The dashboard and usage reporting stay off. Returns the
    `ray` module."""
    ray = require_ray(what)
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = {"address": address, "include_dashboard": False, "log_to_driver": False}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)
    return ray
