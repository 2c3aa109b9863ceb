"""Connecting to Ray: one place that calls ``ray.init`` for the package's entry points."""

from __future__ import annotations

import os
from typing import Any


def ensure_ray(**init_options: Any) -> Any:
    """Import Ray and make sure this process is connected to a cluster; return the module.

    An already-connected process is left as it is (``init_options`` are then ignored); otherwise
    ``ray.init(**init_options)`` connects to ``RAY_ADDRESS`` or starts a local cluster. Usage
    statistics are off (``RAY_USAGE_STATS_ENABLED=0``) unless the environment says otherwise.

    Raises
    ------
    ImportError
        If Ray is not installed, naming the package to install.
    """
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is a dependency of this package
        raise ImportError("ood_zoo_ray needs Ray: pip install 'ray[data]>=2.44'") from exc
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(**{"include_dashboard": False, "log_to_driver": False, **init_options})
    return ray


def torch_threads(num_cpus: float) -> int:
    """The torch threads of an actor or task that reserves ``num_cpus`` Ray CPUs: its whole CPUs,
    at least one. Set explicitly in the worker: Ray reuses worker processes, and torch keeps the
    thread count it was first imported under (another task's reservation)."""
    return max(1, int(num_cpus))
