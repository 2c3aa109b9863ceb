"""Benchmarks: a detector runner over precomputed features, and the offline demo."""

from __future__ import annotations

from .demo import run_demo
from .runner import (
    ROW_COLUMNS,
    FeatureSet,
    fit_probe,
    probe_logits,
    run_detectors,
    usable_detectors,
)

__all__ = [
    "ROW_COLUMNS",
    "FeatureSet",
    "fit_probe",
    "probe_logits",
    "run_demo",
    "run_detectors",
    "usable_detectors",
]
