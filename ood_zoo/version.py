"""The version of ood_zoo, in a module of its own so that no submodule imports the package, and
the distribution (name and version) that provides any other module, for provenance records."""

from __future__ import annotations

import functools
from importlib import metadata

__version__ = "0.1.0"


@functools.cache
def distribution_of(module: str) -> tuple[str, str] | None:
    """``(name, version)`` of the installed distribution providing module ``module``.

    The running ood_zoo for ``ood_zoo.*``; ``None`` for a module no installed distribution
    provides (a script, a test, a source tree on ``sys.path``). Looked up once per top-level
    package.
    """
    top = module.partition(".")[0]
    if top == "ood_zoo":
        return "ood_zoo", __version__
    names = metadata.packages_distributions().get(top)
    if not names:
        return None
    dist = metadata.distribution(names[0])
    return dist.name, dist.version
