"""Setup of the pytest-benchmark entries in benchmarks/ (not collected by the plain ``pytest``:
pyproject's ``testpaths`` are tests/ and plugins/). Threads: ``OOD_ZOO_BENCH_THREADS`` (2)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

THREADS = int(os.environ.get("OOD_ZOO_BENCH_THREADS", "2"))


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    torch.set_num_threads(THREADS)
    try:
        import faiss

        faiss.omp_set_num_threads(THREADS)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def knn_data() -> tuple[np.ndarray, np.ndarray]:
    """A small cosine-kNN problem: L2-normalised Gaussian bank N=20k x d=1024, Q=256 queries."""
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((20_000, 1024), dtype=np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    queries = rng.standard_normal((256, 1024), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries, bank
