"""ood_zoo: out-of-distribution detectors for the hidden states of large language models.

Score convention: higher = more in-distribution, everywhere.

>>> import numpy as np, ood_zoo
>>> bank = np.random.default_rng(0).normal(size=(100, 16)).astype(np.float32)
>>> detector = ood_zoo.create("cosine").fit(bank)
>>> detector.score(bank[:3]).shape
(3,)
"""

from __future__ import annotations

from .api import Detector, Param, Requirements
from .errors import (
    BackendUnavailableError,
    DuplicateDetectorError,
    InputError,
    NotFittedError,
    OodZooError,
    PersistenceError,
    PluginError,
    UnknownDetectorError,
    UnknownNameError,
)
from .hookspecs import hookimpl
from .registry import create, get_registry, list_detectors, load
from .version import __version__

__all__ = [
    "BackendUnavailableError",
    "Detector",
    "DuplicateDetectorError",
    "InputError",
    "NotFittedError",
    "OodZooError",
    "Param",
    "PersistenceError",
    "PluginError",
    "Requirements",
    "UnknownDetectorError",
    "UnknownNameError",
    "__version__",
    "create",
    "get_registry",
    "hookimpl",
    "list_detectors",
    "load",
]
