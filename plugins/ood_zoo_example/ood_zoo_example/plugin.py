"""The ood_zoo entry point of this package: ``[project.entry-points.ood_zoo] example = ...``."""

from __future__ import annotations

from ood_zoo import Detector, hookimpl

from .kmeans_cosine import KMeansCosineDetector


@hookimpl
def ood_zoo_detectors() -> list[type[Detector]]:
    """The detectors this plugin adds to ood_zoo."""
    return [KMeansCosineDetector]
