"""Side-by-side CPU comparison of exact cosine kNN (and Mahalanobis scoring), from ONE run.

Contenders: ood_zoo ext (exact, and bf16 if the CPU has native bf16 — else it is forced with
``--force-bf16`` on a query subset, to show what emulated bf16 costs), ood_zoo's torch reference
backend, faiss-cpu ``IndexFlatIP``, torch matmul + topk (fp32 and bf16, 25k-row chunks) and
scikit-learn ``NearestNeighbors(metric="cosine", algorithm="brute")`` on a query subset.

Every contender searches the same L2-normalised Gaussian fp32 bank with the same queries.
GFLOP/s counts ``2 Q N d`` per pass; "% peak" divides by the fp32 (or, for bf16 GEMMs, the bf16)
torch matmul rate measured on 4096^3 at the start of the same run. Exactness: agreement of the
neighbour sets with faiss on all queries, and with a float64 reference on the first 16 queries.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. .venv/bin/python benchmarks/compare_knn.py \\
        --shapes 200000x4096 1000000x1024 --queries 2000 --threads 2 --json /tmp/knn.json
    ... --scale        # also: 1M x 4096 fp16 memmap (and bf16 bits) at Q=200, peak RSS
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ood_zoo import ops  # noqa: E402
from ood_zoo.ops import extension  # noqa: E402

CHUNK = 25_000


def machine() -> dict:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = line
                break
    isa = [x for x in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {x}" in flags]
    import faiss
    import sklearn

    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "isa": isa,
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "faiss": faiss.__version__,
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
        "bf16_gemm_native": ops.bf16_gemm_native(),
        "extension": extension.available(),
    }


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def timed(fn: Callable[[], object], repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def gemm_peaks(n: int = 4096) -> dict:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t32, _ = timed(lambda: a @ b, 2)
    a16, b16 = a.bfloat16(), b.bfloat16()
    size = n if ops.bf16_gemm_native() else 1024  # emulated bf16 is ~20x slower: time less
    a16, b16 = a16[:size, :size].contiguous(), b16[:size, :size].contiguous()
    a16 @ b16
    t16, _ = timed(lambda: a16 @ b16, 2)
    return {
        "fp32_gflops": 2 * n**3 / t32 / 1e9,
        "bf16_gflops": 2 * size**3 / t16 / 1e9,
        "bf16_size": size,
    }


def normalised(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 50_000):
        x = rng.standard_normal((min(50_000, n - s), d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s : s + len(x)] = x
    return out


def torch_chunked(q: torch.Tensor, bank: torch.Tensor, k: int, dtype: torch.dtype):
    qq = q.to(dtype)
    best_v = best_i = None
    for s in range(0, bank.shape[0], CHUNK):
        block = (qq @ bank[s : s + CHUNK].to(dtype).T).float()
        top = block.topk(k, dim=1)
        v, i = top.values, top.indices + s
        if best_v is not None:
            v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
            pick = v.topk(k, dim=1)
            v, i = pick.values, i.gather(1, pick.indices)
        best_v, best_i = v, i
    return best_v.numpy(), best_i.numpy()


def ref64(q: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.empty((len(q), len(bank)))
    for st in range(0, len(bank), 100_000):
        s[:, st : st + 100_000] = q.astype(np.float64) @ bank[st : st + 100_000].T.astype(
            np.float64
        )
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b, strict=True)]))


def run_shape(n: int, d: int, n_q: int, ks: list[int], peaks: dict, args) -> list[dict]:
    import faiss
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    print(f"\n# N={n} d={d} Q={n_q}: generating data (load {load()})", flush=True)
    bank = normalised(rng, n, d)
    q = normalised(rng, n_q, d)
    bank_t, q_t = torch.from_numpy(bank), torch.from_numpy(q)
    rows = []
    ref_v, ref_i = ref64(q[:16], bank, max(ks))

    def record(name, k, n_used, seconds, values, indices, bf16_gemm=False, note=""):
        flops = 2.0 * n_used * n * d
        bf16_gemm = bf16_gemm and ops.bf16_gemm_native()  # emulated bf16: compare with fp32
        peak = peaks["bf16_gflops"] if bf16_gemm else peaks["fp32_gflops"]
        gflops = flops / seconds / 1e9
        row = {
            "shape": f"{n}x{d}",
            "contender": name,
            "k": k,
            "Q": n_used,
            "seconds": seconds,
            "qps": n_used / seconds,
            "gflops": gflops,
            "pct_peak": 100 * gflops / peak,
            "peak_kind": "bf16" if bf16_gemm else "fp32",
            "ref_agreement": agreement(np.asarray(indices)[:16, :k], ref_i[:16, :k]),
            "ref_max_abs_err": float(np.abs(np.asarray(values)[:16, :k] - ref_v[:16, :k]).max()),
            "note": note,
            "load": load(),
        }
        if "faiss" in results_by_k.get(k, {}):
            fi = results_by_k[k]["faiss"]
            row["faiss_agreement"] = agreement(np.asarray(indices)[:, :k], fi[: len(indices)])
        results_by_k.setdefault(k, {})[name] = np.asarray(indices)[:, :k]
        rows.append(row)
        print(
            f"  {name:34s} k={k:<3d} Q={n_used:<5d} {seconds:8.2f} s {row['qps']:8.1f} q/s "
            f"{gflops:6.1f} GF/s ({row['pct_peak']:.0f}% {row['peak_kind']}) "
            f"ref-agree {row['ref_agreement']:.3f} err {row['ref_max_abs_err']:.1e} "
            f"(load {row['load']})",
            flush=True,
        )
        return row

    results_by_k: dict[int, dict[str, np.ndarray]] = {}
    index = faiss.IndexFlatIP(d)
    t_add, _ = timed(lambda: index.add(bank))
    print(f"  faiss add: {t_add:.2f} s", flush=True)
    for k in ks:
        secs, (v, i) = timed(lambda k=k: index.search(q, k))
        record("faiss IndexFlatIP (fp32)", k, n_q, secs, v, i, note=f"+{t_add:.1f} s add")
    index.reset()  # free faiss's copy of the bank before the other contenders run
    os.environ["OOD_ZOO_BACKEND"] = "ext"
    for k in ks:
        secs, (v, i) = timed(lambda k=k: ops.knn(q_t, bank_t, k, precision="exact"))
        record("ood_zoo ext exact", k, n_q, secs, v.numpy(), i.numpy())
        if ops.bf16_gemm_native():
            secs, (v, i) = timed(lambda k=k: ops.knn(q_t, bank_t, k, precision="bf16"))
            record("ood_zoo ext bf16 (exact re-rank)", k, n_q, secs, v.numpy(), i.numpy(), True)
    for k in [args.k_all]:
        if not ops.bf16_gemm_native() and args.force_bf16:
            sub = args.subset
            native = ops.dense.bf16_gemm_native  # the name knn() looks up
            ops.dense.bf16_gemm_native = lambda: True
            try:
                secs, (v, i) = timed(
                    lambda k=k, sub=sub: ops.knn(q_t[:sub], bank_t, k, precision="bf16")
                )
            finally:
                ops.dense.bf16_gemm_native = native
            record(
                "ood_zoo ext bf16 FORCED (emulated)",
                k,
                sub,
                secs,
                v.numpy(),
                i.numpy(),
                True,
                "no native bf16 on this CPU; query subset",
            )
        os.environ["OOD_ZOO_BACKEND"] = "torch"
        secs, (v, i) = timed(lambda k=k: ops.knn(q_t, bank_t, k))
        record("ood_zoo torch reference", k, n_q, secs, v.numpy(), i.numpy())
        os.environ["OOD_ZOO_BACKEND"] = "ext"
        secs, (v, i) = timed(lambda k=k: torch_chunked(q_t, bank_t, k, torch.float32))
        record("torch matmul+topk fp32 (chunked)", k, n_q, secs, v, i)
        sub = n_q if ops.bf16_gemm_native() else args.subset
        secs, (v, i) = timed(
            lambda k=k, sub=sub: torch_chunked(q_t[:sub], bank_t, k, torch.bfloat16)
        )
        record(
            "torch matmul+topk bf16 (chunked)",
            k,
            sub,
            secs,
            v,
            i,
            True,
            "approximate" + ("" if sub == n_q else "; query subset"),
        )
        if args.sklearn_queries:
            from threadpoolctl import threadpool_limits

            sub = args.sklearn_queries
            with threadpool_limits(args.threads):
                nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute")
                nn.fit(bank)
                secs, (dist, idx) = timed(lambda sub=sub, nn=nn: nn.kneighbors(q[:sub]))
            record(
                "sklearn NearestNeighbors brute",
                k,
                sub,
                secs,
                1 - dist,
                idx,
                note="query subset",
            )
    return rows


def mahalanobis_bench(peaks: dict, args) -> list[dict]:
    rng = np.random.default_rng(1)
    d, c, n_q = 4096, 150, args.maha_queries
    x = torch.from_numpy(rng.standard_normal((n_q, d), dtype=np.float32))
    a = torch.from_numpy(rng.standard_normal((d, d), dtype=np.float32)) / np.sqrt(d)
    w = torch.linalg.qr(a).Q.contiguous()  # any full-rank whitening
    mu = torch.from_numpy(rng.standard_normal((c, d), dtype=np.float32))
    flops = 2.0 * n_q * d * d + 2.0 * n_q * d * c
    rows = []
    ref = None
    for backend in ("ext", "torch"):
        os.environ["OOD_ZOO_BACKEND"] = backend
        ops.mahalanobis(x[:256], w, mu)
        secs, (d2, arg) = timed(lambda: ops.mahalanobis(x, w, mu), 2)
        ref = (d2, arg) if ref is None else ref
        gf = flops / secs / 1e9
        row = {
            "contender": f"ood_zoo mahalanobis {backend} (fp32)",
            "seconds": secs,
            "qps": n_q / secs,
            "gflops": gf,
            "pct_peak": 100 * gf / peaks["fp32_gflops"],
            "argmin_agreement_vs_ext": float((arg == ref[1]).float().mean()),
            "load": load(),
        }
        rows.append(row)
        print(
            f"  mahalanobis {backend}: {secs:.2f} s {row['qps']:.0f} q/s {gf:.1f} GF/s "
            f"({row['pct_peak']:.0f}% fp32 peak) (load {row['load']})",
            flush=True,
        )
    os.environ["OOD_ZOO_BACKEND"] = "ext"
    return rows


_SCALE_CHILD = r"""
import json, sys, time, warnings
import numpy as np, torch
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
sys.path.insert(0, sys.argv[4])
from ood_zoo import ops
torch.set_num_threads(int(sys.argv[3]))
mm = np.load(sys.argv[1], mmap_mode="r")
bank = torch.from_numpy(mm).view(torch.bfloat16) if mm.dtype == np.uint16 else mm
q = torch.from_numpy(np.random.default_rng(5).standard_normal((200, mm.shape[1]),
                                                              dtype=np.float32))
out = {}
for label in sys.argv[2].split(","):
    t = time.perf_counter()
    v, i = ops.knn(q, bank, 10)  # precision: OOD_ZOO_KNN_PRECISION (default exact)
    out[label] = time.perf_counter() - t
out["precision"] = ops.knn_precision()
out["bf16_gemm_native"] = ops.bf16_gemm_native()
# VmHWM: this process's own peak RSS (ru_maxrss would include the parent's, inherited at fork)
with open("/proc/self/status") as f:
    hwm = next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))
out["maxrss_gb"] = hwm / 2**20
print(json.dumps(out))
"""


def scale_bench(args) -> list[dict]:
    n, d = args.scale_rows, 4096
    rows = []
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        fp16 = Path(tmp) / "bank_fp16.npy"
        t = time.perf_counter()
        mm = np.lib.format.open_memmap(fp16, mode="w+", dtype=np.float16, shape=(n, d))
        rng = np.random.default_rng(3)
        for s in range(0, n, 50_000):
            mm[s : s + 50_000] = rng.standard_normal((min(50_000, n - s), d), dtype=np.float32)
        mm.flush()
        del mm
        print(f"  wrote {n}x{d} fp16 memmap in {time.perf_counter() - t:.1f} s", flush=True)
        paths = [(fp16, "fp16 memmap")]
        if args.scale_bf16:
            bits = Path(tmp) / "bank_bf16bits.npy"
            src = np.load(fp16, mmap_mode="r")
            dst = np.lib.format.open_memmap(bits, mode="w+", dtype=np.uint16, shape=(n, d))
            for s in range(0, n, 50_000):
                block = torch.from_numpy(np.array(src[s : s + 50_000]))
                dst[s : s + 50_000] = block.bfloat16().view(torch.int16).numpy().view(np.uint16)
            dst.flush()
            del dst, src
            paths.append((bits, "bf16 bits (uint16) memmap"))
        for path, label in paths:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _SCALE_CHILD,
                    str(path),
                    "pass1,pass2",
                    str(args.threads),
                    str(ROOT),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            for pass_ in ("pass1", "pass2"):
                row = {
                    "bank": f"{n}x{d} {label}",
                    "pass": pass_,
                    "Q": 200,
                    "k": 10,
                    "seconds": res[pass_],
                    "qps": 200 / res[pass_],
                    "gflops": 2 * 200 * n * d / res[pass_] / 1e9,
                    "peak_rss_gb": res["maxrss_gb"],
                    "load": load(),
                }
                rows.append(row)
                print(
                    f"  {label} {pass_}: {row['seconds']:.1f} s {row['qps']:.1f} q/s "
                    f"{row['gflops']:.0f} GF/s, peak RSS {row['peak_rss_gb']:.2f} GB "
                    f"(load {row['load']})",
                    flush=True,
                )
    return rows


def table(rows: list[dict], faiss_qps: dict) -> str:
    out = [
        "| shape N×d | contender | k | Q timed | time (s) | q/s | GFLOP/s | % peak | vs faiss "
        "| agree (faiss / f64) | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["qps"] / faiss_qps[(r["shape"], r["k"])]
        agree = f"{r.get('faiss_agreement', 1.0):.3f} / {r['ref_agreement']:.3f}"
        out.append(
            f"| {r['shape']} | {r['contender']} | {r['k']} | {r['Q']} | {r['seconds']:.2f} | "
            f"{r['qps']:.1f} | {r['gflops']:.0f} | {r['pct_peak']:.0f}% {r['peak_kind']} | "
            f"{ratio:.2f}× | {agree} | {r['note']} |"
        )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="*", default=["200000x4096", "1000000x1024"])
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument(
        "--ks", type=int, nargs="+", default=[1, 10, 100], help="k values for ood_zoo ext and faiss"
    )
    p.add_argument("--k-all", type=int, default=10, help="the k every contender runs")
    p.add_argument(
        "--subset",
        type=int,
        default=100,
        help="queries for emulated-bf16 contenders (no native bf16 GEMM)",
    )
    p.add_argument("--sklearn-queries", type=int, default=200)
    p.add_argument(
        "--force-bf16",
        action="store_true",
        help="also time ood_zoo's bf16 kernel where bf16 is only emulated",
    )
    p.add_argument("--maha-queries", type=int, default=10_000)
    p.add_argument("--no-maha", action="store_true")
    p.add_argument("--scale", action="store_true", help="1M x 4096 fp16 memmap, Q=200, RSS")
    p.add_argument("--scale-rows", type=int, default=1_000_000)
    p.add_argument("--scale-bf16", action="store_true", help="also the bf16-bits memmap")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    info = machine()
    info["threads"] = {"torch": torch.get_num_threads(), "faiss": faiss.omp_get_max_threads()}
    info["load_start"] = load()
    print(json.dumps(info, indent=1), flush=True)
    peaks = gemm_peaks()
    print(
        f"GEMM peaks measured now: fp32 4096^3 {peaks['fp32_gflops']:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16_size']}^3 {peaks['bf16_gflops']:.0f} GFLOP/s (load {load()})",
        flush=True,
    )
    rows = []
    for shape in args.shapes:
        n, d = (int(x) for x in shape.split("x"))
        rows += run_shape(n, d, args.queries, sorted(set(args.ks) | {args.k_all}), peaks, args)
    faiss_qps = {(r["shape"], r["k"]): r["qps"] for r in rows if r["contender"].startswith("faiss")}
    maha = [] if args.no_maha else mahalanobis_bench(peaks, args)
    scale = scale_bench(args) if args.scale else []
    info["load_end"] = load()
    if rows:
        print("\n" + table(rows, faiss_qps))
    print(
        f"\nthreads: torch {args.threads}, faiss {args.threads}; load start {info['load_start']}"
        f", end {info['load_end']}; peaks fp32 {peaks['fp32_gflops']:.0f} / bf16 "
        f"{peaks['bf16_gflops']:.0f} GFLOP/s"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": info, "peaks": peaks, "knn": rows, "mahalanobis": maha, "scale": scale},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
