"""GPU benchmark of ood_zoo's kernels, from ONE run: cosine kNN and Mahalanobis scoring.

Cases (each timed after a warm-up, with a device synchronise around it):

* ``gemm``: ``torch.mm`` in bf16 on ``--gemm-size``³, the rate every other line is quoted against;
* ``knn_ext``: ``torch.ops.ood_zoo.knn`` (the ext kernel: tensor-core bf16 tiles, fused top-k) on a
  bf16 bank ``[--bank-rows, --dim]`` with ``--queries`` bf16 queries, cosine, ``--k``;
* ``knn_torch``: torch bf16 matmul + ``topk`` over ``--torch-chunk``-row chunks, merged;
* ``mahalanobis_ext`` / ``mahalanobis_torch``: ``ops.mahalanobis`` (fp32) on
  ``--maha-queries`` queries, ``d = --dim``, a square whitening and ``--classes`` class means.

GFLOP/s counts ``2 Q N d`` for kNN and ``2 Q d r + 2 Q r C`` for Mahalanobis. Agreement: the ext
and torch kNN values (the torch baseline rounds its scores to bf16), the fraction of identical
neighbour sets, and the ext values against an fp32 recomputation of the first ``--check-queries``
queries over the whole bank (the ext kernel must be exact to fp32 rounding). Writes
``bench_gpu.json`` and ``bench_gpu.md`` into ``--out-dir``; exits 1 if a case failed or an
agreement check did not hold. ``--dry-run`` runs the same code on tiny shapes on the CPU.

    PYTHONPATH=. python benchmarks/bench_gpu.py --out-dir /tmp/gpu --queries 4096
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ood_zoo import ops  # noqa: E402
from ood_zoo.ops import extension  # noqa: E402

#: Largest |ext - fp32 recomputation| allowed on a cosine (fp32 accumulation of exact products).
EXACT_TOL = 1e-4
#: Largest |ext - torch| allowed on a cosine (the torch baseline rounds scores to bf16).
BASELINE_TOL = 2e-2
DRY_RUN_SHAPES = {
    "queries": 48,
    "bank_rows": 3000,
    "dim": 80,
    "gemm_size": 256,
    "maha_queries": 300,
    "classes": 10,
    "torch_chunk": 1000,
    "tile_rows": 700,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (sizes, output folder, ``--dry-run``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--queries", type=int, default=1024)
    p.add_argument("--bank-rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--tile-rows", type=int, default=16384, help="ext kernel's bank tile")
    p.add_argument("--torch-chunk", type=int, default=65536, help="torch baseline's chunk")
    p.add_argument("--gemm-size", type=int, default=4096)
    p.add_argument("--maha-queries", type=int, default=16384)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--check-queries", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per case (best is kept)")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU")
    args = p.parse_args(argv)
    if args.dry_run:
        for name, value in DRY_RUN_SHAPES.items():
            setattr(args, name, value)
    return args


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn: Callable[[], Any],
    device: torch.device,
    repeats: int,
    warmup: Callable[[], Any] | None = None,
) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls of ``fn`` and its result, after one warm-up call.

    ``warmup`` (by default ``fn`` itself) is a cheaper call that loads the same kernels.
    """
    result = (warmup or fn)()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def make_bank(rows: int, dim: int, device: torch.device, seed: int) -> torch.Tensor:
    """A bf16 Gaussian bank with a common offset (cosines spread over a range), in chunks."""
    gen = torch.Generator(device=device).manual_seed(seed)
    bank = torch.empty(rows, dim, dtype=torch.bfloat16, device=device)
    step = 65536
    for start in range(0, rows, step):
        block = torch.randn(min(step, rows - start), dim, generator=gen, device=device)
        bank[start : start + block.shape[0]] = (block + 0.1).to(torch.bfloat16)
    return bank


def knn_ext(q: torch.Tensor, bank: torch.Tensor, k: int, tile: int) -> tuple[torch.Tensor, ...]:
    """The ext op directly (ops.knn would upcast a bf16 bank to fp32 first)."""
    return torch.ops.ood_zoo.knn(q, bank, k, "cosine", tile)


def knn_torch(q: torch.Tensor, bank: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, ...]:
    """Cosine top-k by bf16 matmul per chunk, scaled by fp32 inverse norms, ``topk`` merged."""
    q_inv = 1 / torch.linalg.vector_norm(q, dim=1, dtype=torch.float32).clamp_min(1e-12)
    best_v = best_i = None
    for start in range(0, bank.shape[0], chunk):
        c = bank[start : start + chunk]
        c_inv = 1 / torch.linalg.vector_norm(c, dim=1, dtype=torch.float32).clamp_min(1e-12)
        scores = (q @ c.T).float() * q_inv[:, None] * c_inv
        top = scores.topk(min(k, c.shape[0]), dim=1)
        values, indices = top.values, top.indices + start
        if best_v is not None:
            values = torch.cat([best_v, values], dim=1)
            indices = torch.cat([best_i, indices], dim=1)
            pick = values.topk(k, dim=1)
            values, indices = pick.values, indices.gather(1, pick.indices)
        best_v, best_i = values, indices
    assert best_v is not None
    assert best_i is not None
    order = best_v.argsort(dim=1, descending=True, stable=True)
    return best_v.gather(1, order), best_i.gather(1, order)


def fp32_topk(q: torch.Tensor, bank: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Top-k cosine values of a few queries, recomputed in fp32 from the same bf16 inputs."""
    qf = q.float()
    qf = qf / qf.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = None
    for start in range(0, bank.shape[0], chunk):
        c = bank[start : start + chunk].float()
        s = qf @ (c / c.norm(dim=1, keepdim=True).clamp_min(1e-12)).T
        s = s.topk(min(k, c.shape[0]), dim=1).values
        best = s if best is None else torch.cat([best, s], dim=1).topk(k, dim=1).values
    assert best is not None
    return best


def gflops(flops: float, seconds: float) -> float:
    """GFLOP/s."""
    return flops / seconds / 1e9


class Run:
    """Collects case records and failures; every case runs even if an earlier one failed."""

    def __init__(self, device: torch.device, repeats: int) -> None:
        self.device = device
        self.repeats = repeats
        self.cases: dict[str, dict[str, Any]] = {}
        self.failures: list[str] = []

    def case(
        self,
        name: str,
        flops: float,
        fn: Callable[[], Any],
        warmup: Callable[[], Any] | None = None,
    ) -> Any:
        """Time ``fn`` as case ``name``; record its rate, or the error. Returns fn's result."""
        try:
            seconds, result = timed(fn, self.device, self.repeats, warmup)
        except Exception as exc:  # recorded, and the run goes on
            self.cases[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            self.failures.append(f"{name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            return None
        self.cases[name] = {
            "status": "ok",
            "seconds": seconds,
            "gflops": gflops(flops, seconds),
        }
        return result

    def skip(self, name: str, reason: str) -> None:
        """Record case ``name`` as skipped (not a failure)."""
        self.cases[name] = {"status": "skipped", "reason": reason}

    def check(self, name: str, ok: bool, detail: str) -> None:
        """Record an agreement check; a false one is a failure."""
        self.cases.setdefault("checks", {})[name] = {"ok": ok, "detail": detail}
        if not ok:
            self.failures.append(f"check {name}: {detail}")


def machine(device: torch.device) -> dict[str, Any]:
    """Versions and the device, for the record."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device": str(device),
        "ext": extension.available(),
        "ext_error": extension.load_error(),
        "cuda_ext": extension.cuda_available(),
        "cuda_ext_error": extension.cuda_load_error(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            sms=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
        )
    return info


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run every case; return the JSON-able record (``failures`` empty when all went well)."""
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device (use --dry-run on a CPU-only machine)")
    run = Run(device, args.repeats)
    torch.manual_seed(0)
    q_n, n, d, k = args.queries, args.bank_rows, args.dim, args.k

    g = args.gemm_size
    a = torch.randn(g, g, device=device).to(torch.bfloat16)
    b = torch.randn(g, g, device=device).to(torch.bfloat16)
    run.case("gemm_bf16", 2.0 * g**3, lambda: a @ b)

    bank = make_bank(n, d, device, seed=1)
    q = make_bank(q_n, d, device, seed=2)
    knn_flops = 2.0 * q_n * n * d
    ext_ok = extension.cuda_available() if device.type == "cuda" else extension.available()
    ext = None
    if ext_ok:
        ext = run.case(
            "knn_ext",
            knn_flops,
            lambda: knn_ext(q, bank, k, args.tile_rows),
            warmup=lambda: knn_ext(q, bank[: args.tile_rows], k, args.tile_rows),
        )
    elif args.dry_run:
        run.skip("knn_ext", f"ood_zoo extension not built ({extension.load_error()})")
    else:
        run.cases["knn_ext"] = {"status": "failed", "error": extension.cuda_load_error()}
        run.failures.append(
            f"knn_ext: ood_zoo.ops._C_cuda unavailable ({extension.cuda_load_error()})"
        )
    base = run.case(
        "knn_torch",
        knn_flops,
        lambda: knn_torch(q, bank, k, args.torch_chunk),
        warmup=lambda: knn_torch(q, bank[: args.torch_chunk], k, args.torch_chunk),
    )

    if ext is not None and base is not None:
        diff = (ext[0].float() - base[0]).abs().max().item()
        same = (ext[1].sort(dim=1).values == base[1].sort(dim=1).values).all(dim=1)
        run.check(
            "knn_ext_vs_torch",
            diff <= BASELINE_TOL,
            f"max |value diff| {diff:.3g} (tol {BASELINE_TOL}); identical neighbour sets "
            f"{same.float().mean().item():.1%}",
        )
    if ext is not None:
        nc = min(args.check_queries, q_n)
        ref = fp32_topk(q[:nc], bank, k, args.torch_chunk)
        diff = (ext[0][:nc].float() - ref).abs().max().item()
        run.check(
            "knn_ext_vs_fp32",
            diff <= EXACT_TOL,
            f"first {nc} queries: max |value diff| {diff:.3g} (tol {EXACT_TOL})",
        )

    mq, c = args.maha_queries, args.classes
    x = torch.randn(mq, d, device=device)
    w = torch.randn(d, d, device=device) / d**0.5
    mu = torch.randn(c, d, device=device)
    maha_flops = 2.0 * mq * d * d + 2.0 * mq * d * c
    results = {}
    for name in ("ext", "torch"):
        if name == "ext" and not ext_ok:
            run.skip(f"mahalanobis_{name}", "extension not built")
            continue
        os.environ["OOD_ZOO_BACKEND"] = name
        try:
            results[name] = run.case(
                f"mahalanobis_{name}",
                maha_flops,
                lambda: ops.mahalanobis(x, w, mu),
                warmup=lambda: ops.mahalanobis(x[:256], w, mu),
            )
        finally:
            os.environ.pop("OOD_ZOO_BACKEND", None)
    if results.get("ext") is not None and results.get("torch") is not None:
        (d_e, a_e), (d_t, a_t) = results["ext"], results["torch"]
        rel = ((d_e - d_t).abs() / d_t.abs().clamp_min(1e-6)).max().item()
        agree = (a_e == a_t).float().mean().item()
        run.check(
            "mahalanobis_ext_vs_torch",
            rel <= 1e-3,
            f"max rel |d2 diff| {rel:.3g}; same argmin {agree:.1%}",
        )

    gemm = run.cases["gemm_bf16"].get("gflops")
    for record in run.cases.values():
        if "gflops" in record and gemm:
            record["fraction_of_gemm"] = record["gflops"] / gemm
    shapes = {
        key: getattr(args, key)
        for key in (
            "queries",
            "bank_rows",
            "dim",
            "k",
            "tile_rows",
            "torch_chunk",
            "gemm_size",
            "maha_queries",
            "classes",
            "repeats",
        )
    }
    return {
        "dry_run": args.dry_run,
        "machine": machine(device),
        "shapes": shapes,
        "cases": run.cases,
        "failures": run.failures,
    }


def markdown(record: dict[str, Any]) -> str:
    """The record as a Markdown table (one row per case) plus the checks and failures."""
    s = record["shapes"]
    lines = [
        f"# bench_gpu ({'dry run, CPU' if record['dry_run'] else record['machine'].get('gpu')})",
        "",
        f"kNN: Q={s['queries']}, N={s['bank_rows']}, d={s['dim']}, k={s['k']}, bf16 bank, cosine; "
        f"Mahalanobis: Q={s['maha_queries']}, d=r={s['dim']}, C={s['classes']}, fp32; "
        f"torch {record['machine']['torch']}.",
        "",
        "| case | status | seconds | GFLOP/s | × bf16 GEMM |",
        "|---|---|---|---|---|",
    ]
    for name, rec in record["cases"].items():
        if name == "checks":
            continue
        if rec["status"] != "ok":
            lines.append(
                f"| {name} | {rec['status']}: {rec.get('error') or rec.get('reason')} | | | |"
            )
            continue
        frac = rec.get("fraction_of_gemm")
        lines.append(
            f"| {name} | ok | {rec['seconds']:.4g} | {rec['gflops']:.4g} | "
            f"{'' if frac is None else f'{frac:.3f}'} |"
        )
    lines += ["", "| check | ok | detail |", "|---|---|---|"]
    for name, chk in record["cases"].get("checks", {}).items():
        lines.append(f"| {name} | {'yes' if chk['ok'] else 'NO'} | {chk['detail']} |")
    lines += ["", f"Failures: {len(record['failures'])}"]
    lines += [f"- {f}" for f in record["failures"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run, write ``bench_gpu.json`` and ``bench_gpu.md``; 1 on any failure."""
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        record = run_benchmark(args)
    except Exception as exc:  # still leave well-formed files behind
        traceback.print_exc()
        record = {
            "dry_run": args.dry_run,
            "machine": {"torch": torch.__version__},
            "shapes": {key: getattr(args, key) for key in DRY_RUN_SHAPES} | {"k": args.k},
            "cases": {},
            "failures": [f"run: {type(exc).__name__}: {exc}"],
        }
    (args.out_dir / "bench_gpu.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out_dir / "bench_gpu.md").write_text(markdown(record))
    print(markdown(record))
    return 1 if record["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
