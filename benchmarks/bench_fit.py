"""Fit cost of the kNN detectors on a large memmapped bank, against one 1,000-query search.

Issue 9's target: ``create("cosine").fit(bank)`` on a 1M-row fp16 memmap costs no more than
scoring 1,000 queries. ``fit`` builds the :class:`ood_zoo.ops.KNNIndex` and places the default
threshold on a leave-one-out search of :func:`ood_zoo.api.threshold_sample_rows` bank rows.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_fit.py \\
        --bank ~/.cache/ood_zoo/banks/synthetic-aniso_1000000x1024 --json /tmp/fit.json

The fp16 copy of the bank (``bank_fp16.npy`` beside it) is written once, in chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ood_zoo  # noqa: E402
from ood_zoo.api import threshold_sample_rows  # noqa: E402


def fp16_copy(bank_dir: Path) -> np.ndarray:
    """``bank_fp16.npy`` beside ``bank.npy`` (written once, 65,536 rows at a time)."""
    target = bank_dir / "bank_fp16.npy"
    if not target.exists():
        source = np.load(bank_dir / "bank.npy", mmap_mode="r")
        partial = target.with_suffix(".partial.npy")
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=source.shape)
        for start in range(0, source.shape[0], 65_536):
            out[start : start + 65_536] = source[start : start + 65_536]
        out.flush()
        del out
        os.replace(partial, target)
    return np.load(target, mmap_mode="r")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bank", type=Path, required=True, help="a make_banks.py directory")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bank = fp16_copy(args.bank)
    queries = np.load(args.bank / "queries.npy")[: args.queries].astype(np.float16)
    rows = []
    for name, params in (("cosine", {}), ("knn", {"k": 10})):
        start = time.perf_counter()
        detector = ood_zoo.create(name, **params).fit(bank)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        detector.score(queries)
        score_s = time.perf_counter() - start
        stats = detector.index().stats()
        rows.append({
            "detector": name, "params": params, "bank": list(bank.shape), "dtype": "float16",
            "fit_s": fit_s, "index_build_s": stats["build_seconds"],
            "threshold_rows": threshold_sample_rows(bank.shape[0], detector.target_tpr),
            "score_s": score_s, "score_queries": len(queries), "fit_over_score": fit_s / score_s,
            "index": {key: stats[key] for key in ("pruned", "rank", "residual_energy")},
            "score_path": stats["last_search"],
        })
        print(json.dumps(rows[-1]))
    report = {"machine": os.uname().nodename, "threads": args.threads,
              "load": os.getloadavg(), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
