"""Distributed fitting of ``mahalanobis`` from per-shard statistics, against one ``fit``.

A labelled ``[N, d]`` bank is written once as ``--shards`` ``.npy`` shards (fp16 or fp32, with
their label files) under ``--data``; then, side by side in one process:

- ``fit``: ``MahalanobisDetector().fit(bank, labels)`` on the concatenated memmap
  (``bank_<dtype>.npy``, written beside the shards), ``--threads`` torch threads;
- ``sequential``: :func:`ood_zoo.detectors.statistics.fit_shards` (each memmapped shard's
  statistics merged in turn, in this process, ``--threads`` threads);
- ``ray``: :func:`ood_zoo_ray.fitting.fit` on the shard paths, a local Ray cluster of
  ``--workers`` CPUs (one thread per task), its start-up timed apart.

Each fitted detector's scores on 1,000 bank rows (as float64 queries, so that the fit's
difference is not hidden under float32 scoring) are compared with ``fit``'s.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.:plugins/ood_zoo_ray RAY_USAGE_STATS_ENABLED=0 \\
        .venv/bin/python benchmarks/bench_ray_fit.py --dtype float16 --json /tmp/ray_fit16.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "plugins" / "ood_zoo_ray"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ood_zoo.detectors import MahalanobisDetector  # noqa: E402
from ood_zoo.detectors.statistics import fit_shards  # noqa: E402

CHUNK = 65_536


def write_bank(data: Path, rows: int, dim: int, shards: int, classes: int, dtype: str):
    """Shard paths, label paths and the whole-bank path (written once; seeded)."""
    data.mkdir(parents=True, exist_ok=True)
    tag = f"{rows}x{dim}_{dtype}"
    whole = data / f"bank_{tag}.npy"
    bounds = np.linspace(0, rows, shards + 1).astype(int)
    paths = [data / f"shard{i}_{tag}.npy" for i in range(shards)]
    label_paths = [data / f"labels{i}_{rows}.npy" for i in range(shards)]
    if whole.exists() and all(p.exists() for p in paths + label_paths):
        return paths, label_paths, whole
    rng = np.random.default_rng(0)
    scales = np.exp(rng.normal(size=dim)).astype(np.float32)
    centres = (3.0 * rng.normal(size=(classes, dim))).astype(np.float32)
    labels = rng.integers(0, classes, size=rows)
    partial = whole.with_suffix(".partial.npy")
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=(rows, dim))
    for start in range(0, rows, CHUNK):
        stop = min(rows, start + CHUNK)
        block = rng.standard_normal((stop - start, dim), dtype=np.float32) * scales
        out[start:stop] = block + centres[labels[start:stop]]
    out.flush()
    del out
    os.replace(partial, whole)
    bank = np.load(whole, mmap_mode="r")
    for path, label_path, lo, hi in zip(paths, label_paths, bounds[:-1], bounds[1:], strict=True):
        np.save(path, bank[lo:hi])
        np.save(label_path, labels[lo:hi])
    return paths, label_paths, whole


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def task_threads() -> int:
    """The torch threads of a Ray task (Ray sets ``OMP_NUM_THREADS`` to its CPUs)."""
    return torch.get_num_threads()


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path("/tmp/ood_zoo_bench_ray_fit"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths, label_paths, whole = write_bank(args.data, args.rows, args.dim, args.shards,
                                           args.classes, args.dtype)
    bank = np.load(whole, mmap_mode="r")
    labels = np.concatenate([np.load(p) for p in label_paths])
    check = bank[:: max(1, args.rows // 1000)][:1000]
    record = {"rows": args.rows, "dim": args.dim, "shards": args.shards,
              "classes": args.classes, "dtype": args.dtype, "threads": args.threads,
              "workers": args.workers, "cpu": cpu_model(),
              "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}

    MahalanobisDetector().fit(check, labels[:: max(1, args.rows // 1000)][:1000])  # warm-up
    reference, record["fit_s"] = timed(lambda: MahalanobisDetector().fit(bank, labels))
    check64 = np.asarray(check, dtype=np.float64)
    want = reference.score(check64)
    # the scores' own float32 rounding, for scale: fp32 queries against the fp64 ones
    record["fit_fp32_score_rel_error"] = float(
        np.abs(reference.score(check) - want).max() / np.abs(want).max())

    def compare(detector) -> float:
        """Largest score difference on float64 queries, relative to the largest score."""
        return float(np.abs(detector.score(check64) - want).max() / np.abs(want).max())

    shards = [np.load(p, mmap_mode="r") for p in paths]
    shard_labels = [np.load(p) for p in label_paths]
    sequential, record["sequential_s"] = timed(
        lambda: fit_shards(MahalanobisDetector(), shards, shard_labels))
    record["sequential_score_rel_diff"] = compare(sequential)

    from ood_zoo_ray.cluster import ensure_ray
    from ood_zoo_ray.fitting import fit

    ray, record["ray_start_s"] = timed(lambda: ensure_ray(
        num_cpus=args.workers, include_dashboard=False, _node_ip_address="127.0.0.1"))
    try:
        warm_labels = labels[:: max(1, args.rows // 1000)][:1000]
        _, record["ray_warmup_s"] = timed(lambda: fit(  # starts the workers, imports torch
            "mahalanobis", [check] * args.workers, [warm_labels] * args.workers,
            progress=False))
        record["ray_task_threads"] = ray.get(
            ray.remote(num_cpus=1)(task_threads).remote())
        distributed, record["ray_s"] = timed(
            lambda: fit("mahalanobis", [str(p) for p in paths], [str(p) for p in label_paths],
                        progress=False))
        record["ray_score_rel_diff"] = compare(distributed)
        record["ray_threshold_rel_diff"] = abs(distributed.threshold_ - reference.threshold_) / abs(
            reference.threshold_)
    finally:
        ray.shutdown()
    record["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps(record, indent=1))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
