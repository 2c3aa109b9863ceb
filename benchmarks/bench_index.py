"""Side-by-side exact-kNN benchmark on one bank (issue 9): pruned ``ood_zoo.ops.KNNIndex`` vs dense.

Contenders, all exact, all on the same fp32 bank and queries, in one process:

- ``ood_zoo KNNIndex``: the pruned index (build time reported separately, like faiss's ``add``);
  skipped with a message where ``ood_zoo.ops`` has no ``KNNIndex`` yet;
- ``ood_zoo ops.knn``: the dense streamed search (``OOD_ZOO_BACKEND=ext``);
- ``faiss IndexFlatIP`` (cosine, rows L2-normalised) / ``IndexFlatL2`` (l2);
- ``torch matmul+topk``: chunked GEMM + top-k over bank blocks;
- ``sklearn brute``: ``NearestNeighbors(algorithm="brute")`` on a query subset.

Regimes: batch (``Q = --n-queries``, each k of ``--ks``) and online (``Q`` of ``--online``,
per-query latency, repeated calls on the online query set). GFLOP/s-equivalent counts
``2 Q N d`` per search whatever the contender really computes (a pruned index does less).
Exactness: every contender's batch results on the first ``--ref-queries`` queries (and its online
results) against a float64 reference: top-k values within 1e-5 relative, and neighbour sets
that agree with ties allowed (every returned row scores at least the reference's k-th value,
within the same tolerance).

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=/work/main .venv/bin/python benchmarks/bench_index.py \\
        --bank ~/.cache/ood_zoo/banks/smollm2-135m_L30 --threads 2 --out results/bench_index
    ... --smoke       # tiny random banks, a few seconds (tests/test_bench_index.py)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

try:
    import ood_zoo  # noqa: F401
except ImportError:  # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ood_zoo import ops

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_knn import timed  # best wall time of `repeat` calls, and the last result

CHUNK = 25_000
TOL = 1e-5
Result = tuple[np.ndarray, np.ndarray]


# ------------------------------------------------------------------------------ machine


def machine() -> dict[str, Any]:
    """CPU model, ISA flags, core count and library versions."""
    model = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                      if ln.startswith("Model name")), "?")
    flags = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        flags = next((ln for ln in f if ln.startswith("flags")), "")
    names = set(flags.split(":", 1)[-1].split())
    info: dict[str, Any] = {
        "cpu": model, "cpus": os.cpu_count(),
        "flags": {x: x in names for x in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")},
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "ood_zoo": str(Path(ops.__file__).resolve().parent),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    for mod in ("faiss", "sklearn"):
        with contextlib.suppress(ImportError):
            info[mod] = __import__(mod).__version__
    return info


def load() -> str:
    """The 1/5/15-minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------ reference


def scores64(q: np.ndarray, bank: np.ndarray, metric: str) -> np.ndarray:
    """Float64 similarities (cosine) or distances (l2) of ``q`` against every bank row."""
    q64 = q.astype(np.float64)
    out = np.empty((len(q), len(bank)))
    if metric == "cosine":
        qn = np.linalg.norm(q64, axis=1, keepdims=True)
        q64 = q64 / np.where(qn > 0, qn, 1)
    q2 = (q64 * q64).sum(1)[:, None]
    for s in range(0, len(bank), 50_000):
        b = np.asarray(bank[s : s + 50_000], dtype=np.float64)
        if metric == "cosine":
            bn = np.linalg.norm(b, axis=1)
            out[:, s : s + len(b)] = (q64 @ b.T) / np.where(bn > 0, bn, 1)
        else:
            d2 = q2 + (b * b).sum(1)[None] - 2 * (q64 @ b.T)
            out[:, s : s + len(b)] = np.sqrt(np.maximum(d2, 0))
    return out


@dataclass
class Reference:
    """Float64 scores ``[R, N]``, their best ``K`` values and rows (best first), and the squared
    norms of the queries ``[R]`` and bank rows ``[N]`` (the fp32 error scale of l2)."""

    scores: np.ndarray
    top: np.ndarray
    top_idx: np.ndarray
    q_sq: np.ndarray
    bank_sq: np.ndarray

    @classmethod
    def of(cls, q: np.ndarray, bank: np.ndarray, k: int, metric: str) -> Reference:
        """Score ``q`` in float64 and sort only the best ``k`` of each row, ties in row order."""
        scores = scores64(q, bank, metric)
        sign = -1.0 if metric == "cosine" else 1.0
        k = min(k, scores.shape[1])
        part = np.argpartition(sign * scores, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(sign * scores, part, 1)
        order = np.lexsort((part, vals), axis=1)
        idx = np.take_along_axis(part, order, 1)
        bank_sq = np.empty(len(bank))
        for s in range(0, len(bank), 100_000):
            b = np.asarray(bank[s : s + 100_000], dtype=np.float64)
            bank_sq[s : s + len(b)] = (b * b).sum(1)
        q_sq = (q.astype(np.float64) ** 2).sum(1)
        return cls(scores, np.take_along_axis(scores, idx, 1), idx, q_sq, bank_sq)

    def head(self, m: int) -> Reference:
        """The first ``m`` queries."""
        return Reference(self.scores[:m], self.top[:m], self.top_idx[:m], self.q_sq[:m],
                         self.bank_sq)


def check(values: np.ndarray, indices: np.ndarray, reference: Reference, k: int, metric: str
          ) -> dict[str, Any]:
    """Exactness of one result ``[R, k]`` against the float64 reference.

    ``values_rel_err``: the worst relative gap between the returned values and the reference
    top-k values (rank by rank); ``value_index_rel_err``: between each returned value and the
    reference score of the returned row. ``ties_ok``: the share of returned rows that score at
    least the reference k-th value (within tolerance), so ties may be broken either way.

    For l2 a distance near 0 (a duplicate row: causal LMs give every text starting with the same
    token the same position-0 state) has no relative accuracy in fp32, so an entry also passes
    if its squared distance is within ``1e-5 (|q|^2 + |b|^2)``, the rounding scale of fp32
    distances (``l2_sq_scaled_err``); ``err`` is the criterion the ``exact`` flag uses.
    """
    ref = reference.scores
    top = reference.top[:, :k]
    scale = max(float(np.abs(top).max()), 1e-30)
    denom = np.maximum(np.abs(top), 1e-3 * scale)
    v = np.asarray(values, dtype=np.float64)[:, :k]
    i = np.asarray(indices, dtype=np.int64)[:, :k]
    valid_index = (i >= 0) & (i < ref.shape[1])
    i_safe = np.clip(i, 0, ref.shape[1] - 1)
    got = np.take_along_axis(ref, i_safe, 1)
    kth = top[:, -1:]
    tol = TOL * np.maximum(np.abs(kth), 1e-3 * scale)
    rel_top = np.abs(v - top) / denom
    rel_got = np.abs(v - got) / denom
    out: dict[str, Any] = {}
    if metric == "cosine":
        good = got >= kth - tol
        err = np.maximum(rel_top, rel_got)
    else:
        q_sq = reference.q_sq[:, None]
        sc_top = q_sq + reference.bank_sq[reference.top_idx[:, :k]]
        sc_got = q_sq + reference.bank_sq[i_safe]
        sq_top = np.abs(v * v - top * top) / sc_top
        sq_got = np.abs(v * v - got * got) / sc_got
        good = (got <= kth + tol) | (got * got <= kth * kth + TOL * sc_got)
        err = np.maximum(np.minimum(rel_top, sq_top), np.minimum(rel_got, sq_got))
        out["l2_sq_scaled_err"] = float(np.maximum(sq_top, sq_got).max())
    good &= valid_index
    dupes = sum(len(set(row)) != len(row) for row in i.tolist())
    ref_idx = reference.top_idx[:, :k]
    overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in
                             zip(i.tolist(), ref_idx.tolist(), strict=True)]))
    out.update({
        "values_rel_err": float(rel_top.max()),
        "value_index_rel_err": float(rel_got.max()),
        "err": float(err.max()),
        "ties_ok": float(good.mean()),
        "set_overlap": overlap,
        "duplicates": int(dupes),
    })
    out["exact"] = bool(out["err"] <= TOL and out["ties_ok"] == 1.0 and dupes == 0)
    return out


# ------------------------------------------------------------------------------ contenders


@dataclass
class Contender:
    """A named search: ``build()`` once, then ``search(q, k) -> (values, indices)``."""

    name: str
    build: Callable[[], Any]
    search: Callable[[np.ndarray, int], Result]
    max_queries: int | None = None  # a query subset only (sklearn)
    note: str = ""
    free: Callable[[], None] = lambda: None
    stats: Callable[[], dict] | None = None
    info: dict = field(default_factory=dict)


def _np(x: Any) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def make_contenders(bank: np.ndarray, metric: str, args: argparse.Namespace
                    ) -> tuple[list[Contender], dict[str, str]]:
    """The contenders available here, and a reason for each one skipped."""
    bank_t = torch.from_numpy(bank)
    out: list[Contender] = []
    skipped: dict[str, str] = {}
    wanted = set(args.contenders)

    if "knnindex" in wanted:
        cls = getattr(ops, "KNNIndex", None)
        if cls is None:
            skipped["ood_zoo KNNIndex"] = (f"ood_zoo.ops has no KNNIndex (ood_zoo from "
                                           f"{Path(ops.__file__).parent}); not benchmarked")
            print(f"skip: {skipped['ood_zoo KNNIndex']}", flush=True)
        else:
            state: dict[str, Any] = {}

            def build_index() -> None:
                state["index"] = cls(bank_t, metric=metric, rank=args.rank, mode=args.mode)

            def search_index(q: np.ndarray, k: int) -> Result:
                v, i = state["index"].search(torch.from_numpy(q), k)
                return _np(v), _np(i)

            out.append(Contender(
                "ood_zoo KNNIndex", build_index, search_index,
                note=f"rank={args.rank}, mode={args.mode}",
                free=lambda: state.clear(),
                stats=lambda: dict(state["index"].stats()) if "index" in state else {}))

    if "dense" in wanted:
        def dense(q: np.ndarray, k: int) -> Result:
            v, i = ops.knn(torch.from_numpy(q), bank_t, k, metric)
            return _np(v), _np(i)

        out.append(Contender("ood_zoo ops.knn (dense)", lambda: None, dense,
                             note=f"backend={ops.backend()}"))

    if "faiss" in wanted:
        try:
            import faiss
        except ImportError as err:
            skipped["faiss"] = f"faiss not importable: {err}"
        else:
            holder: dict[str, Any] = {}

            def build_faiss() -> None:
                d = bank.shape[1]
                index = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
                for s in range(0, len(bank), 100_000):  # normalise a block at a time
                    block = np.ascontiguousarray(bank[s : s + 100_000])
                    if metric == "cosine":
                        block = block.copy()
                        faiss.normalize_L2(block)
                    index.add(block)
                holder["index"] = index

            def search_faiss(q: np.ndarray, k: int) -> Result:
                q = np.ascontiguousarray(q, dtype=np.float32)
                if metric == "cosine":
                    q = q.copy()
                    faiss.normalize_L2(q)
                v, i = holder["index"].search(q, k)
                return (v, i) if metric == "cosine" else (np.sqrt(np.maximum(v, 0)), i)

            def free_faiss() -> None:
                if "index" in holder:
                    holder.pop("index").reset()

            name = "faiss IndexFlatIP" if metric == "cosine" else "faiss IndexFlatL2"
            out.append(Contender(name, build_faiss, search_faiss, free=free_faiss,
                                 note="cosine: rows L2-normalised" if metric == "cosine" else ""))

    if "torch" in wanted:
        aux: dict[str, torch.Tensor] = {}

        def build_torch() -> None:
            sq = torch.empty(len(bank))
            for s in range(0, len(bank), CHUNK):
                b = bank_t[s : s + CHUNK]
                sq[s : s + len(b)] = (b * b).sum(1)
            aux["sq"] = sq
            aux["inv"] = torch.where(sq > 0, sq.rsqrt(), torch.zeros(()))

        def search_torch(q: np.ndarray, k: int) -> Result:
            qt = torch.from_numpy(q)
            if metric == "cosine":
                qn = qt.norm(dim=1, keepdim=True)
                qt = qt / torch.where(qn > 0, qn, torch.ones(()))
            q2 = (qt * qt).sum(1, keepdim=True)
            best_v = best_i = None
            for s in range(0, len(bank), CHUNK):
                dots = qt @ bank_t[s : s + CHUNK].T
                if metric == "cosine":
                    score = dots * aux["inv"][s : s + CHUNK]
                else:  # negated squared distance, so top-k of the largest
                    score = 2 * dots - q2 - aux["sq"][s : s + CHUNK]
                top = score.topk(min(k, score.shape[1]), dim=1)
                v, i = top.values, top.indices + s
                if best_v is not None and best_i is not None:
                    v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
                    pick = v.topk(k, dim=1)
                    v, i = pick.values, i.gather(1, pick.indices)
                best_v, best_i = v, i
            if best_v is None or best_i is None:
                raise ValueError("empty bank")
            if metric == "l2":
                best_v = (-best_v).clamp_min(0).sqrt()
            return best_v.numpy(), best_i.numpy()

        out.append(Contender("torch matmul+topk (chunked)", build_torch, search_torch,
                             free=aux.clear, note=f"{CHUNK}-row chunks, expanded form"))

    if "sklearn" in wanted and args.sklearn_queries > 0:
        try:
            from sklearn.neighbors import NearestNeighbors
        except ImportError as err:
            skipped["sklearn"] = f"scikit-learn not importable: {err}"
        else:
            nn_state: dict[str, Any] = {}

            def build_sklearn() -> None:
                nn_state["nn"] = NearestNeighbors(
                    metric="cosine" if metric == "cosine" else "euclidean", algorithm="brute"
                ).fit(bank)

            def search_sklearn(q: np.ndarray, k: int) -> Result:
                dist, idx = nn_state["nn"].kneighbors(q, n_neighbors=k)
                return (1 - dist if metric == "cosine" else dist), idx

            out.append(Contender("sklearn NearestNeighbors(brute)", build_sklearn,
                                 search_sklearn, max_queries=args.sklearn_queries,
                                 free=nn_state.clear, note="query subset"))
    return out, skipped


# ------------------------------------------------------------------------------ running


def run_metric(bank: np.ndarray, queries: np.ndarray, online_q: np.ndarray, metric: str,
               args: argparse.Namespace) -> dict[str, Any]:
    """All contenders on one bank for one metric: rows of timings and exactness."""
    n_ref = min(args.ref_queries, len(queries))
    t = time.perf_counter()
    k_max = max([*args.ks, *args.online_ks])
    ref_batch = Reference.of(queries[:n_ref], bank, k_max, metric)
    ref_online = Reference.of(online_q, bank, k_max, metric)
    print(f"[{metric}] float64 reference on {n_ref} + {len(online_q)} queries: "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    contenders, skipped = make_contenders(bank, metric, args)
    rows: list[dict[str, Any]] = []
    builds: dict[str, float] = {}
    stats: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for c in contenders:
        try:
            run_contender(c, bank, queries, online_q, ref_batch, ref_online, metric, args,
                          rows, builds, stats)
        except Exception as err:  # one broken contender must not sink the others
            failed[c.name] = f"{type(err).__name__}: {err}"
            print(f"[{metric}] {c.name} FAILED: {failed[c.name]}", flush=True)
        finally:
            c.free()

    def key(r: dict[str, Any]) -> tuple:  # batch: by k (sklearn times a subset); online: k, Q
        return (r["regime"], r["k"]) if r["regime"] == "batch" else (r["regime"], r["k"], r["Q"])

    faiss_qps = {key(r): r["qps"] for r in rows if r["contender"].startswith("faiss")}
    for r in rows:
        base = faiss_qps.get(key(r))
        r["x_faiss"] = r["qps"] / base if base else None
    return {"metric": metric, "rows": rows, "build_seconds": builds, "skipped": skipped,
            "failed": failed, "knnindex_stats": stats}


def run_contender(c: Contender, bank: np.ndarray, queries: np.ndarray, online_q: np.ndarray,
                  ref_batch: Reference, ref_online: Reference, metric: str,
                  args: argparse.Namespace, rows: list[dict[str, Any]],
                  builds: dict[str, float], stats: dict[str, Any]) -> None:
    """Build one contender, then time it in every regime; rows and stats are appended."""
    n, d = bank.shape
    n_ref = len(ref_batch.scores)
    with threads(args.threads):
        t_build, _ = timed(c.build, 1)
    builds[c.name] = t_build
    print(f"[{metric}] {c.name}: build {t_build:.2f} s (load {load()})", flush=True)
    if c.stats is not None:
        stats[f"{c.name} build"] = c.stats()
    for k in args.ks:
        n_q = len(queries) if c.max_queries is None else min(c.max_queries, len(queries))
        q = np.ascontiguousarray(queries[:n_q])
        with threads(args.threads):
            c.search(q[: min(8, n_q)], k)  # warm-up
            secs, (v, i) = timed(lambda c=c, q=q, k=k: c.search(q, k), args.repeat)
        exact = check(v[:n_ref], i[:n_ref], ref_batch.head(min(n_ref, n_q)), k, metric)
        rows.append(row(c, "batch", k, n_q, secs, n, d, exact, metric))
        if c.stats is not None:
            stats[f"{c.name} batch k={k}"] = index_note(rows[-1], c.stats())
    for k in args.online_ks:
        for n_q in args.online:
            lat, res_v, res_i = online(c, online_q, n_q, k, args)
            exact = check(res_v, res_i, ref_online.head(len(res_v)), k, metric)
            rows.append(row(c, "online", k, n_q, lat, n, d, exact, metric))
            if c.stats is not None:
                stats[f"{c.name} online Q={n_q} k={k}"] = index_note(rows[-1], c.stats())


def index_note(r: dict[str, Any], st: dict[str, Any]) -> dict[str, Any]:
    """Put the index's path, survivor rate and rank of its last search into row ``r``."""
    last = st.get("last_search") or {}
    r["index_path"] = last.get("path", st.get("path"))
    r["survivor_rate"] = last.get("survivor_rate", st.get("survivor_rate"))
    r["index_rank"] = st.get("rank")
    rate = r["survivor_rate"]
    r["note"] = (f"path={r['index_path']}, survivors="
                 f"{'-' if rate is None else f'{100 * rate:.2f}%'}, rank={r['index_rank']}")
    if st.get("dense_reason"):
        r["note"] += f" (dense: {st['dense_reason']})"
    return st


def online(c: Contender, online_q: np.ndarray, n_q: int, k: int, args: argparse.Namespace
           ) -> tuple[float, np.ndarray, np.ndarray]:
    """Median seconds per call of ``n_q`` queries, over consecutive slices of the online set."""
    times: list[float] = []
    vs, idx = [], []
    start, spent = 0, 0.0
    with threads(args.threads):
        c.search(online_q[:n_q], k)  # warm-up
        while len(times) < args.online_calls and (len(times) < 3 or spent < args.online_budget):
            if start + n_q > len(online_q):
                start = 0
            q = np.ascontiguousarray(online_q[start : start + n_q])
            t = time.perf_counter()
            v, i = c.search(q, k)
            dt = time.perf_counter() - t
            times.append(dt)
            spent += dt
            if start + n_q <= len(online_q) and len(vs) * n_q < len(online_q):
                vs.append(v)
                idx.append(i)
            start += n_q
    m = min(len(vs) * n_q, len(online_q))
    return statistics.median(times), np.concatenate(vs)[:m], np.concatenate(idx)[:m]


def row(c: Contender, regime: str, k: int, n_q: int, secs: float, n: int, d: int,
        exact: dict[str, Any], metric: str) -> dict[str, Any]:
    """One result row, printed as it is made."""
    r = {
        "metric": metric, "regime": regime, "contender": c.name, "k": k, "Q": n_q,
        "seconds": secs, "qps": n_q / secs, "ms_per_query": 1e3 * secs / n_q,
        "gflops_equiv": 2.0 * n_q * n * d / secs / 1e9, "note": c.note, "load": load(), **exact,
    }
    print(f"  {regime:6s} {c.name:32s} k={k:<3d} Q={n_q:<5d} {secs:9.4f} s {r['qps']:10.1f} q/s "
          f"{r['gflops_equiv']:7.1f} GF/s-eq  exact={exact['exact']} "
          f"(err {exact['err']:.1e}, ties-ok {exact['ties_ok']:.3f}) "
          f"load {r['load']}", flush=True)
    return r


@contextlib.contextmanager
def threads(n: int):
    """Pin torch, faiss and the BLAS pools (numpy, sklearn) to ``n`` threads."""
    torch.set_num_threads(n)
    with contextlib.suppress(ImportError):
        import faiss

        faiss.omp_set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(n):
        yield


def markdown(report: dict[str, Any]) -> str:
    """The results as Markdown: header, build times and one table per metric."""
    m = report["machine"]
    lines = [
        f"# bench_index: {report['bank']['name']} ({report['bank']['rows']} x "
        f"{report['bank']['dims']}, {report['bank']['queries']})",
        "",
        f"- machine: {m['cpu']}, {m['cpus']} CPUs, flags "
        + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in m["flags"].items()),
        f"- threads: {report['threads']}; OMP_WAIT_POLICY={m['omp_wait_policy']}",
        f"- load average: start {report['load_start']}, end {report['load_end']}",
        f"- torch {m['torch']}, faiss {m.get('faiss', '-')}, sklearn {m.get('sklearn', '-')}, "
        f"ood_zoo from {m['ood_zoo']}",
        "- columns: GFLOP/s-eq = 2·Q·N·d / time (whatever is really computed); × faiss = q/s "
        "over faiss's in the same regime and k; err = worst relative error of the top-k values "
        "against float64 (l2: or the squared distance within 1e-5·(|q|²+|b|²)); ties ok = "
        "share of returned rows scoring at least the reference k-th value; exact = err ≤ 1e-5, "
        "ties ok = 1, no duplicate rows",
        "",
    ]
    for res in report["results"]:
        lines += [f"## metric = {res['metric']}", ""]
        for name, why in res["skipped"].items():
            lines.append(f"- skipped {name}: {why}")
        for name, why in res["failed"].items():
            lines.append(f"- FAILED {name}: {why}")
        lines.append("- build: " + ", ".join(f"{k} {v:.2f} s"
                                             for k, v in res["build_seconds"].items()))
        lines += ["", "| regime | contender | k | Q | time (s) | q/s | ms/query | GFLOP/s-eq "
                  "| × faiss | exact | err | ties ok | note |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            ratio = f"{r['x_faiss']:.2f}×" if r["x_faiss"] is not None else "-"
            lines.append(
                f"| {r['regime']} | {r['contender']} | {r['k']} | {r['Q']} | {r['seconds']:.4g} "
                f"| {r['qps']:.1f} | {r['ms_per_query']:.3f} | {r['gflops_equiv']:.1f} | {ratio} "
                f"| {'yes' if r['exact'] else 'NO'} | {r['err']:.1e} "
                f"| {r['ties_ok']:.3f} | {r['note']} |")
        build = {k: v for k, v in res["knnindex_stats"].items() if k.endswith(" build")}
        for key, st in build.items():
            brief = {k: v for k, v in st.items() if k != "last_search"}
            lines.append(f"\n- {key} stats: `{json.dumps(brief, default=str)}`")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ data


def smoke_bank(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """A tiny anisotropic bank (power-law spectrum, offset mean) with queries, in memory."""
    rng = np.random.default_rng(seed)
    n, d = 6000, 256  # KNNIndex prunes only from N >= 2048, d >= 256
    scale = (np.arange(1, d + 1) ** -1.0).astype(np.float32) * 4
    mean = 0.5 * rng.standard_normal(d).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)

    def draw(m: int) -> np.ndarray:
        return np.ascontiguousarray(
            (rng.standard_normal((m, d), dtype=np.float32) * scale + mean) @ basis)

    info = {"name": "smoke (random anisotropic)", "rows": n, "dims": d, "queries": "random"}
    return draw(n), draw(64), draw(32), info


def load_bank(path: Path, rows: int | None, query_set: str | None, n_queries: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """A bank directory from make_banks.py: the bank (first ``rows``) and its queries, in RAM."""
    manifest = json.loads((path / "manifest.json").read_text())
    files = manifest.get("files", {})
    mm = np.load(path / files.get("bank", "bank.npy"), mmap_mode="r")
    n = len(mm) if rows is None else min(rows, len(mm))
    bank = np.empty((n, mm.shape[1]), np.float32)
    for s in range(0, n, 100_000):
        bank[s : min(n, s + 100_000)] = mm[s : min(n, s + 100_000)]
    name = query_set or ("queries_ood" if "queries_ood" in files else "queries")
    if name not in files:
        raise SystemExit(f"{path} has no query set {name!r}; it has {sorted(files)}")
    queries = np.ascontiguousarray(np.load(path / files[name])[:n_queries], dtype=np.float32)
    online_q = np.ascontiguousarray(np.load(path / files["queries_online"]), dtype=np.float32)
    info = {"name": path.name, "path": str(path), "rows": n, "dims": int(bank.shape[1]),
            "queries": f"{name} ({len(queries)} rows)", "manifest": manifest}
    return bank, queries, online_q, info


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bank", type=Path, help="a bank directory written by make_banks.py")
    p.add_argument("--smoke", action="store_true", help="tiny random bank, runs in seconds")
    p.add_argument("--rows", type=int, help="use the first ROWS bank rows")
    p.add_argument("--query-set", help="queries_ood (default), queries_heldout or queries")
    p.add_argument("--n-queries", type=int, default=2000)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 10])
    p.add_argument("--online", type=int, nargs="+", default=[1, 16], help="online Q values")
    p.add_argument("--online-ks", type=int, nargs="+", default=[10])
    p.add_argument("--online-calls", type=int, default=64, help="calls per online regime, at most")
    p.add_argument("--online-budget", type=float, default=10.0, help="seconds per online regime")
    p.add_argument("--metrics", nargs="+", default=["cosine"], choices=["cosine", "l2"])
    p.add_argument("--contenders", nargs="+",
                   default=["knnindex", "dense", "faiss", "torch", "sklearn"],
                   choices=["knnindex", "dense", "faiss", "torch", "sklearn"])
    p.add_argument("--rank", type=int, default=None, help="KNNIndex rank (default: its own)")
    p.add_argument("--mode", default="auto", help="KNNIndex mode")
    p.add_argument("--sklearn-queries", type=int, default=200)
    p.add_argument("--ref-queries", type=int, default=32, help="queries checked against float64")
    p.add_argument("--repeat", type=int, default=1, help="batch timings: best of REPEAT")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("results/bench_index"),
                   help="directory for the JSON and Markdown outputs")
    args = p.parse_args(argv)
    if args.smoke == (args.bank is not None):
        p.error("give exactly one of --bank DIR and --smoke")
    os.environ["OOD_ZOO_BACKEND"] = os.environ.get("OOD_ZOO_BENCH_BACKEND", "ext")
    if args.smoke:
        args.metrics = ["cosine", "l2"] if args.metrics == ["cosine"] else args.metrics
        args.sklearn_queries = min(args.sklearn_queries, 32)
        args.ref_queries = min(args.ref_queries, 16)
        args.online_calls, args.online_budget = 4, 1.0
        bank, queries, online_q, info = smoke_bank()
    else:
        bank, queries, online_q, info = load_bank(args.bank.expanduser(), args.rows,
                                                  args.query_set, args.n_queries)
    args.sklearn_queries = max(args.sklearn_queries, 0)
    if 0 < args.sklearn_queries < args.ref_queries:
        args.sklearn_queries = args.ref_queries
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"machine": machine(), "bank": info, "load_start": load()}
    with threads(args.threads):
        tinfo = {"torch": torch.get_num_threads(), "requested": args.threads}
        with contextlib.suppress(ImportError):
            import faiss

            tinfo["faiss"] = faiss.omp_get_max_threads()
        with contextlib.suppress(ImportError):
            from threadpoolctl import threadpool_info

            tinfo["blas"] = {x["internal_api"]: x["num_threads"] for x in threadpool_info()}
    report["threads"] = tinfo
    print(json.dumps({"machine": report["machine"], "threads": tinfo, "load": load(),
                      "bank": {k: v for k, v in info.items() if k != "manifest"}}, indent=1),
          flush=True)
    report["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report["results"] = [run_metric(bank, queries, online_q, m, args) for m in args.metrics]
    report["load_end"] = load()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "smoke" if args.smoke else f"{info['name']}-{info['rows']}"
    (args.out / f"bench_index_{stem}.json").write_text(json.dumps(report, indent=1, default=str))
    md = markdown(report)
    (args.out / f"bench_index_{stem}.md").write_text(md + "\n")
    print("\n" + md)
    print(f"wrote {args.out / f'bench_index_{stem}.json'} and .md", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
