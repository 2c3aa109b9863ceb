"""ood_zoo on Ray: distributed feature extraction, sharded exact kNN and distributed fitting.

A plugin package, installed beside ``ood_zoo``; the core stays engine-free. Importing this
package does not start Ray: each entry point connects to a running cluster (``ray.init``'s
address resolution: ``RAY_ADDRESS``, a local ``ray start``) or starts a local one.

The public names load lazily, so the registry's import of :mod:`ood_zoo_ray.plugin` stays cheap:

- :func:`extract`, :func:`load`: features of many texts by a pool of actors, as shards;
- :class:`ShardedIndex`: exact kNN over shards held by actors;
- :func:`fit`: a covariance detector fitted from per-shard statistics;
- :func:`ensure_ray`: connect to (or start) a cluster.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_HOMES = {"extract": "extraction", "load": "extraction", "ShardedIndex": "index", "fit": "fitting",
          "ensure_ray": "cluster"}

__all__ = ["ShardedIndex", "__version__", "ensure_ray", "extract", "fit", "load"]

if TYPE_CHECKING:
    from .cluster import ensure_ray
    from .extraction import extract, load
    from .fitting import fit
    from .index import ShardedIndex


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
