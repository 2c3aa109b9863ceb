"""ood_zoo on Ray: distributed feature extraction, sharded exact kNN and distributed fitting.

A plugin package, installed beside ``ood_zoo``; the core stays engine-free. Importing this
package does not start Ray: each entry point connects to a running cluster (``ray.init``'s
address resolution: ``RAY_ADDRESS``, a local ``ray start``) or starts a local one.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
