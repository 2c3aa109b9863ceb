"""ood_zoo's own detectors, registered as the default plugin (the same way as any other)."""

from __future__ import annotations

from ..api import Detector
from ..hookspecs import hookimpl
from .distance import CosineDetector, KNNDetector
from .gmm import GMMDetector
from .lof import LOFDetector
from .logits import EnergyDetector, MaxLogitDetector, MSPDetector
from .mahalanobis import MahalanobisDetector, RelativeMahalanobisDetector
from .residual import ResidualDetector

BUILTIN_DETECTORS: tuple[type[Detector], ...] = (
    CosineDetector,
    KNNDetector,
    MahalanobisDetector,
    RelativeMahalanobisDetector,
    MSPDetector,
    MaxLogitDetector,
    EnergyDetector,
    LOFDetector,
    GMMDetector,
    ResidualDetector,
)


@hookimpl
def ood_zoo_detectors() -> list[type[Detector]]:
    """The built-in detectors."""
    return list(BUILTIN_DETECTORS)
