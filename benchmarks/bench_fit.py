"""Fit cost of the kNN detectors on a large memmapped bank, against one 1,000-query search.

Issue 9's target: ``create("cosine").fit(bank)`` on a 1M-row fp16 memmap costs no more than
scoring 1,000 queries. ``fit`` builds the :class:`ood_zoo.ops.KNNIndex` and places the default
threshold on a leave-one-out search of :func:`ood_zoo.api.threshold_sample_rows` bank rows.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_fit.py \\
        --bank ~/.cache/ood_zoo/banks/synthetic-aniso_1000000x1024 --json /tmp/fit.json

The fp16 copy of the bank (``bank_fp16.npy`` beside it) is written once, in chunks. Without a
make_banks.py bank (its synthetic banks need the SmolLM2 bank first), ``--synthetic 1000000x1024``
writes a seeded anisotropic fp16 bank directly (:func:`parametric_bank`) under ``--out``.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

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


#: Statistics of the SmolLM2 final-layer bank that make_banks.py's synthetic banks are fitted to:
#: |mean|² / trace, the top direction's share of the variance, the top 64 of 576 directions'.
MEAN_SHARE, TOP1_SHARE, TOP_FRACTION, TOP_FRACTION_SHARE = 0.63, 0.17, 64 / 576, 0.76


def parametric_spectrum(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Covariance eigenvalues (descending, mean 1) and the mean in eigen-coordinates.

    ``λ_1 = 0.17 d``; ``λ_i ∝ i^-α`` beyond, with α set so that the top ``d · 64/576`` directions
    hold 76% of the variance; the mean is ``√(0.63 d) · √λ / |√λ|``, along the strong directions.
    """
    top = max(2, round(dim * TOP_FRACTION))
    ranks = np.arange(2, dim + 1, dtype=np.float64)
    lo, hi = 0.0, 4.0
    for _ in range(60):  # bisect α: the top share grows with it
        alpha = (lo + hi) / 2
        tail = ranks**-alpha
        tail *= (1 - TOP1_SHARE) * dim / tail.sum()
        share = (TOP1_SHARE * dim + tail[: top - 1].sum()) / dim
        lo, hi = (alpha, hi) if share < TOP_FRACTION_SHARE else (lo, alpha)
    lam = np.concatenate([[TOP1_SHARE * dim], tail])
    mean = np.sqrt(lam) * np.sqrt(MEAN_SHARE * dim / lam.sum())
    return lam, mean


def parametric_bank(out: Path, n: int, dim: int, n_queries: int, seed: int) -> Path:
    """``out/parametric-aniso_{n}x{dim}``: ``bank_fp16.npy`` (fp16) and ``queries.npy`` (fp32)
    of rows ``(z √λ + m) V``, z ~ N(0, I), V random orthonormal (make_banks.random_basis),
    λ and m from :func:`parametric_spectrum`. Written once, 65,536 rows at a time."""
    from make_banks import random_basis

    directory = out / f"parametric-aniso_{n}x{dim}"
    if (directory / "queries.npy").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    lam, mean = parametric_spectrum(dim)
    scale, shift = torch.from_numpy(np.sqrt(lam)).float(), torch.from_numpy(mean).float()
    basis = random_basis(dim, seed)
    generator = torch.Generator().manual_seed(seed)
    for name, rows, dtype in (("bank_fp16.npy", n, np.float16), ("queries.npy", n_queries,
                                                                 np.float32)):
        partial = directory / f"{name}.partial.npy"
        mm = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=(rows, dim))
        for start in range(0, rows, 65_536):
            z = torch.randn(min(65_536, rows - start), dim, generator=generator)
            mm[start : start + len(z)] = ((z * scale + shift) @ basis).numpy()
        mm.flush()
        del mm
        os.replace(partial, directory / name)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bank", type=Path, help="a make_banks.py directory")
    source.add_argument("--synthetic", metavar="NxD", help="a parametric bank (parametric_bank)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ood_zoo_banks"),
                        help="where --synthetic writes its bank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.synthetic:
        n, dim = (int(v) for v in args.synthetic.lower().split("x"))
        args.bank = parametric_bank(args.out, n, dim, max(args.queries, 2000), args.seed)
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
