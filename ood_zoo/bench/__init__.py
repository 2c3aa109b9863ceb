"""Benchmarks: a detector runner over precomputed features, the offline demo and the suites.

- :mod:`.runner`: fit every registered detector on a bank, score ID and OOD sets.
- :mod:`.pools`: the texts a suite draws once per corpus and the tasks each seed makes of them.
- :mod:`.session` and :mod:`.tables`: what every run sets up and records, and how its tables
  are written.
- :mod:`.demo`: ``ood-zoo demo``, a one-minute end-to-end check on MiniLM features.
- :mod:`.suites`, :mod:`.zero_grad` and :mod:`.fine_tuned`: ``ood-zoo bench``, the paper's
  experiments (every detector on frozen LM features, far- and near-OOD, over seeds, with a layer
  sweep; then before and after LoRA fine-tuning); :mod:`.plots` draws their figures.
- :mod:`.isotropy`: ``ood-zoo isotropy``, the paper's isotropy analysis per layer against the
  cosine-vs-Euclidean/Mahalanobis AUROC gap (the measures themselves are
  :mod:`ood_zoo.analysis`).
- :mod:`.report`: ``ood-zoo report``, one self-contained HTML page (and Markdown) of results.
"""

from __future__ import annotations

from .demo import run_demo
from .pools import OodSet, Pool, Task, draw_pools, tasks
from .runner import (
    MSP_VOCAB,
    ROW_COLUMNS,
    DetectorInputs,
    fit_probe,
    probe_head,
    probe_logits,
    run_detectors,
    run_msp_vocab,
    usable_detectors,
)
from .session import RunSession
from .suites import SUITES, Corpus, Setting, Suite, get_suite
from .tables import aggregate
from .zero_grad import BenchConfig, BenchResult, run_bench, write_outputs

__all__ = [
    "MSP_VOCAB",
    "ROW_COLUMNS",
    "SUITES",
    "BenchConfig",
    "BenchResult",
    "Corpus",
    "DetectorInputs",
    "OodSet",
    "Pool",
    "RunSession",
    "Setting",
    "Suite",
    "Task",
    "aggregate",
    "draw_pools",
    "fit_probe",
    "get_suite",
    "probe_head",
    "probe_logits",
    "run_bench",
    "run_demo",
    "run_detectors",
    "run_msp_vocab",
    "tasks",
    "usable_detectors",
    "write_outputs",
]
