"""GFLOP/s of each ``ood_zoo::gemm_nt`` provider on the dense kNN kernel's tile shapes, and the
ratio of ``ops.knn`` (ext backend, exact fp32, cosine) to faiss-cpu ``IndexFlatIP`` — side by side
in ONE process, interleaved and repeated (the machine is shared, so only ratios are meaningful).

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. .venv/bin/python benchmarks/bench_gemm.py \\
        --threads 2 --shapes 100000x1024 50000x4096 --queries 1000 --repeat 3

GEMM shapes: ``[Q, d] x [2048, d]^T``, the column block in which the kernel
(csrc/cpu/knn_cpu.cpp) multiplies each bank tile (``OOD_ZOO_KNN_GEMM_COLS`` changes it there
and here). ``--providers`` picks which ``torch.ops.ood_zoo.gemm_nt_out`` providers to time
(default: every available one), with numpy's ``@`` for reference. ``OOD_ZOO_GEMM`` forces the
provider ``ops.knn`` uses; the ops.knn / faiss ratio is for that provider.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ood_zoo import ops  # noqa: E402
from ood_zoo.ops import extension  # noqa: E402

KNN_GEMM_COLS = 2048  # the kernel's default column block (knn_gemm_cols in knn_cpu.cpp)


def machine() -> dict:
    model, flags = "?", ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    isa = [x for x in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f" {x}" in flags]
    return {"cpu": model, "cpus": os.cpu_count(), "isa": isa, "torch": torch.__version__}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def normalised(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def interleaved(fns: dict, repeat: int, cpu: dict | None = None) -> dict[str, list[float]]:
    """Seconds per call of each contender: one warm-up, then ``repeat`` rounds, interleaved.

    ``cpu``, if given, receives the CPU seconds of the process (all threads) per call: on a
    shared machine they count the work done, not the time spent waiting for a core.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            c, t = time.process_time(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            if cpu is not None:
                cpu.setdefault(name, []).append(time.process_time() - c)
    return times


def bench_tiles(n_q: int, d: int, providers: list[str], repeat: int, calls: int = 4) -> dict:
    """One contender call = ``calls`` GEMMs of the kernel's block shape, on distinct B blocks."""
    cols = int(os.environ.get("OOD_ZOO_KNN_GEMM_COLS", KNN_GEMM_COLS))
    a, b = torch.randn(n_q, d), torch.randn(calls * cols, d)
    c = torch.empty(n_q, cols)
    an, bn = a.numpy(), b.numpy()

    def gemm(p: str) -> None:
        for i in range(calls):
            torch.ops.ood_zoo.gemm_nt_out(a, b[i * cols : (i + 1) * cols], c, p)

    def numpy_gemm() -> None:
        for i in range(calls):
            an @ bn[i * cols : (i + 1) * cols].T

    fns = {p: (lambda p=p: gemm(p)) for p in providers}
    fns["numpy @ (reference)"] = numpy_gemm
    times = interleaved(fns, repeat)
    flop = 2.0 * n_q * cols * d * calls
    return {
        "tile": [n_q, cols, d],
        "gflops_median": {k: flop / statistics.median(v) / 1e9 for k, v in times.items()},
        "gflops_best": {k: flop / min(v) / 1e9 for k, v in times.items()},
        "load": load(),
    }


def bench_knn(n: int, d: int, n_q: int, k: int, repeat: int) -> dict:
    import faiss

    rng = np.random.default_rng(0)
    bank, q = normalised(rng, n, d), normalised(rng, n_q, d)
    bank_t, q_t = torch.from_numpy(bank), torch.from_numpy(q)
    index = faiss.IndexFlatIP(d)
    index.add(bank)
    os.environ["OOD_ZOO_BACKEND"] = "ext"
    out: dict = {}

    def run_faiss() -> None:
        out["faiss"] = index.search(q, k)[1]

    def run_ext() -> None:
        out["ext"] = ops.knn(q_t, bank_t, k, precision="exact")[1].numpy()

    cpu: dict[str, list[float]] = {}
    times = interleaved({"faiss IndexFlatIP": run_faiss, "ops.knn ext exact": run_ext}, repeat,
                        cpu)
    pairs = zip(out["faiss"], out["ext"], strict=True)
    agree = float(np.mean([len(set(x) & set(y)) / k for x, y in pairs]))
    flop = 2.0 * n_q * n * d
    med = {name: statistics.median(v) for name, v in times.items()}
    rounds = zip(times["faiss IndexFlatIP"], times["ops.knn ext exact"], strict=True)
    ratios = [f / e for f, e in rounds]
    return {
        "shape": f"{n}x{d}",
        "Q": n_q,
        "k": k,
        "seconds_median": med,
        "gflops_median": {name: flop / s / 1e9 for name, s in med.items()},
        "speed_vs_faiss_per_round": ratios,  # faiss time / ops.knn time, > 1 = ops.knn faster
        "speed_vs_faiss_median": statistics.median(ratios),
        "cpu_seconds_median": {name: statistics.median(v) for name, v in cpu.items()},
        "cpu_vs_faiss_median": statistics.median(
            f / e for f, e in zip(cpu["faiss IndexFlatIP"], cpu["ops.knn ext exact"],
                                  strict=True)),
        "agreement_with_faiss": agree,
        "load": load(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="*", default=["100000x1024", "50000x4096"])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--providers", nargs="*", default=None)
    p.add_argument("--no-knn", action="store_true", help="only the GEMM tiles")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    if not extension.available():
        sys.exit(f"ood_zoo.ops._C is not available: {extension.load_error()}")
    info = json.loads(torch.ops.ood_zoo.gemm_info())
    report = {"machine": machine(), "threads": args.threads, "load_start": load(), "gemm": info}
    print(json.dumps(report, indent=1), flush=True)
    providers = args.providers or info["available"]
    report["tiles"], report["knn"] = [], []
    for shape in args.shapes:
        n, d = (int(x) for x in shape.split("x"))
        t = bench_tiles(args.queries, d, providers, args.repeat)
        report["tiles"].append(t)
        rates = ", ".join(f"{name} {g:.0f}" for name, g in t["gflops_median"].items())
        print(f"tile {t['tile']}: GFLOP/s (median) {rates} (load {t['load']})", flush=True)
        if not args.no_knn:
            r = bench_knn(n, d, args.queries, args.k, args.repeat)
            report["knn"].append(r)
            g = r["gflops_median"]
            print(
                f"knn {r['shape']} Q={r['Q']} k={r['k']}: faiss {g['faiss IndexFlatIP']:.0f} "
                f"GFLOP/s, ops.knn {g['ops.knn ext exact']:.0f} GFLOP/s, ops.knn / faiss speed "
                f"{r['speed_vs_faiss_median']:.2f}x (per round "
                f"{', '.join(f'{x:.2f}' for x in r['speed_vs_faiss_per_round'])}), "
                f"CPU-seconds ratio {r['cpu_vs_faiss_median']:.2f}x, "
                f"agreement {r['agreement_with_faiss']:.3f} (load {r['load']})",
                flush=True,
            )
    report["load_end"] = load()
    print(f"provider chosen: {info['provider']}; load start {report['load_start']}, "
          f"end {report['load_end']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
