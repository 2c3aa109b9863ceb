"""Benchmarks: a detector runner over precomputed features, the offline demo and the suites.

- :mod:`.runner`: fit every registered detector on a bank, score ID and OOD sets.
- :mod:`.demo`: ``ood-zoo demo``, a one-minute end-to-end check on MiniLM features.
- :mod:`.suites` and :mod:`.zero_grad`: ``ood-zoo bench --suite zero-grad``, the paper's first
  experiment (every detector on frozen LM features, far- and near-OOD, over seeds, with a layer
  sweep); :mod:`.plots` draws its figures.
"""

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
from .suites import SUITES, Corpus, Setting, Suite, get_suite
from .tables import aggregate
from .zero_grad import BenchConfig, BenchResult, run_bench, write_outputs

__all__ = [
    "ROW_COLUMNS",
    "SUITES",
    "BenchConfig",
    "BenchResult",
    "Corpus",
    "FeatureSet",
    "Setting",
    "Suite",
    "aggregate",
    "fit_probe",
    "get_suite",
    "probe_logits",
    "run_bench",
    "run_demo",
    "run_detectors",
    "usable_detectors",
    "write_outputs",
]
