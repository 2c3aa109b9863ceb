"""A local Ray cluster for the plugin's tests: two CPUs, loopback only, stopped at the end."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray started once for the session (``num_cpus=2``, no dashboard)."""
    import ray
    from ood_zoo_ray.cluster import ensure_ray

    if ray.is_initialized():
        ray.shutdown()
    ensure_ray(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
               object_store_memory=512 * 2**20)
    yield ray
    ray.shutdown()
