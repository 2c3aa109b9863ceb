"""Sharded exact kNN on Ray (issue 14) against single-process ``ops.knn`` and ``ops.KNNIndex``.

One bank in ``--shards`` fp32 ``.npy`` files (memmapped, written once under ``--out``), one query
batch, side by side in one process:

- ``ops.knn``: the dense streamed search over the shard list, ``--threads`` torch threads;
- ``ops.KNNIndex``: the pruned exact index over the same list (build timed apart);
- ``ShardedIndex``: ``ood_zoo_ray``, one ``KNNIndex`` per actor (``--configs``: actors and
  mode), actors memmapping their shards, each with ``2 / actors`` Ray CPUs and one thread.

Each Ray search is split into actor compute (the slowest actor's own ``search`` time), driver
merge, and the rest (query put, task dispatch, result transfer), and the Ray overhead per
batch is the same split of a tiny search (Q = 1). Every result is checked against ``ops.knn``'s
values (the top-k values; ids at exact ties may differ). The bank is anisotropic:
``z * s + m``, ``z ~ N(0, I)``, ``s_i = i^-0.6`` (the top 64 directions hold 79% of the
variance, the first 23%, near SmolLM2's 76% and 17%), ``|m|² = 0.63 tr Σ`` (SmolLM2's ratio),
axis-aligned (KNNIndex finds its principal directions either way).

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.:plugins/ood_zoo_ray .venv/bin/python \\
        benchmarks/bench_ray_knn.py --json /tmp/ray_knn.json      # 1M x 1024, 4 shards, ~4 GB
    ... --rows 40000 --dim 256 --queries 200                          # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "plugins" / "ood_zoo_ray"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_index import load, machine  # noqa: E402
from make_banks import default_out, done, draw, write_manifest  # noqa: E402
from ood_zoo_ray.cluster import ensure_ray  # noqa: E402
from ood_zoo_ray.index import ShardedIndex  # noqa: E402

from ood_zoo import ops  # noqa: E402

#: Per-direction scale exponent and mean energy of the synthetic bank (see the module notes).
SPECTRUM_EXPONENT, MEAN_OVER_TRACE = 0.6, 0.63
TINY_REPEATS = 10


def write_bank(out: Path, rows: int, dim: int, n_shards: int, n_queries: int, seed: int
               ) -> Path:
    """The shards ``shard_<i>.npy`` and ``queries.npy`` under ``out``, written once
    (``manifest.json`` last marks a complete bank)."""
    directory = out / f"ray-aniso_{rows}x{dim}_{n_shards}shards"
    if done(directory, force=False):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    scale = torch.arange(1, dim + 1, dtype=torch.float64).pow(-SPECTRUM_EXPONENT)
    mean = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mean *= (MEAN_OVER_TRACE * scale.square().sum()).sqrt() / mean.norm()
    scale, mean = scale.float(), mean.float()
    cuts = np.linspace(0, rows, n_shards + 1).astype(int)
    for i in range(n_shards):
        draw(directory / f"shard_{i}.npy", int(cuts[i + 1] - cuts[i]), dim, seed + 1 + i,
             scale, mean, None, f"shard {i}")
    draw(directory / "queries.npy", n_queries, dim, seed + 1000, scale, mean, None, "queries")
    write_manifest(directory, {
        "kind": "ray-aniso", "rows": rows, "dims": dim, "shards": n_shards, "dtype": "float32",
        "seed": seed, "generator": f"z * i^-{SPECTRUM_EXPONENT} + m, |m|^2 = "
        f"{MEAN_OVER_TRACE} tr", "queries": n_queries,
        "build_seconds": round(time.perf_counter() - start, 1)})
    return directory


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def exactness(values: Any, want: np.ndarray, ids: Any, want_ids: np.ndarray) -> dict[str, float]:
    values = np.asarray(values)
    return {"max_abs_value_error": float(np.abs(values - want).max()),
            "ids_equal_share": float((np.asarray(ids) == want_ids).mean())}


def run_ray(paths: list[str], queries: np.ndarray, k: int, metric: str, actors: int, mode: str,
            cpus: int, want: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Build, one batch search, tiny searches; the time split of each."""
    build, index = timed(lambda: ShardedIndex(paths, metric, num_actors=actors,
                                              num_cpus_per_actor=cpus / actors, mode=mode))
    with index:
        built = index.stats()["actors"]
        seconds, (values, ids) = timed(lambda: index.search(queries, k))
        split = index.stats()["last_search"]
        searched = index.stats()["actors"]
        tiny = []
        for i in range(TINY_REPEATS):
            index.search(queries[i : i + 1], k)
            tiny.append(index.stats()["last_search"])
    actor = max(split["actor_seconds"])
    tiny_wall = statistics.median(t["seconds"] for t in tiny)
    tiny_actor = statistics.median(max(t["actor_seconds"]) for t in tiny)
    return {
        "contender": f"ShardedIndex {actors} actors, mode={mode}", "actors": actors,
        "mode": mode, "construct_seconds": build,
        "actor_build_seconds": [a["build_seconds"] for a in built],
        "search_seconds": seconds, "actor_seconds": split["actor_seconds"],
        "merge_seconds": split["merge_seconds"],
        "other_seconds": split["seconds"] - actor - split["merge_seconds"],
        "paths": [a["last_search"].get("path") for a in searched],
        "survivor_rates": [a["last_search"].get("survivor_rate") for a in searched],
        "tiny_search_seconds": tiny_wall, "tiny_actor_seconds": tiny_actor,
        "tiny_overhead_seconds": tiny_wall - tiny_actor,
        **exactness(values, want[0], ids, want[1]),
    }


def markdown(report: dict[str, Any]) -> str:
    base = report["runs"][0]["search_seconds"]
    lines = ["| contender | build (s) | search Q = {q} (s) | × ops.knn | actor / merge / other (s) "
             "| path (survivors) | tiny Q = 1: wall / overhead (ms) | max value error |"
             .format(q=report["queries"]), "|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        split = (f"{max(r['actor_seconds']):.2f} / {r['merge_seconds']:.3f} / "
                 f"{r['other_seconds']:.2f}" if "actor_seconds" in r else "")
        rates = r.get("survivor_rates") or [r.get("survivor_rate")]
        paths = r.get("paths") or [r.get("path")]
        path = ", ".join(p if s is None else f"{p} ({s:.1%})" for p, s in zip(paths, rates,
                                                                               strict=True))
        tiny = (f"{1e3 * r['tiny_search_seconds']:.0f} / {1e3 * r['tiny_overhead_seconds']:.0f}"
                if "tiny_search_seconds" in r else "")
        build = r.get("construct_seconds", r.get("build_seconds"))
        lines.append(f"| {r['contender']} | {'' if build is None else f'{build:.1f}'} | "
                     f"{r['search_seconds']:.2f} | {base / r['search_seconds']:.2f}× | {split} | "
                     f"{path} | {tiny} | {r['max_abs_value_error']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--metric", default="cosine", choices=("cosine", "l2"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads / Ray CPUs")
    parser.add_argument("--configs", default="2:dense,2:auto,4:auto",
                        help="ShardedIndex runs, actors:mode, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=default_out())
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args(argv)

    directory = write_bank(args.out, args.rows, args.dim, args.shards, args.queries, args.seed)
    paths = [str(directory / f"shard_{i}.npy") for i in range(args.shards)]
    shards = [np.load(p, mmap_mode="r") for p in paths]
    queries = np.load(directory / "queries.npy")
    report: dict[str, Any] = {"machine": machine(), "load_start": load(), "bank": str(directory),
                              "rows": args.rows, "dim": args.dim, "shards": args.shards,
                              "queries": args.queries, "k": args.k, "metric": args.metric,
                              "threads": args.threads, "runs": []}
    torch.set_num_threads(args.threads)
    report["page_cache_warm_seconds"], _ = timed(
        lambda: [float(s[i : i + 65_536].sum()) for s in shards
                 for i in range(0, s.shape[0], 65_536)])
    print(f"bank {directory} (load {load()})", flush=True)

    seconds, want = timed(lambda: ops.knn(queries, shards, args.k, args.metric))
    report["runs"].append({"contender": f"ops.knn ({args.threads} threads)",
                           "search_seconds": seconds, "path": "dense",
                           **exactness(want[0], want[0], want[1], want[1])})
    print(report["runs"][-1], flush=True)
    start = time.perf_counter()
    index = ops.KNNIndex(shards, args.metric)
    build = time.perf_counter() - start
    seconds, (values, ids) = timed(lambda: index.search(queries, args.k))
    last = index.stats()["last_search"]
    report["runs"].append({"contender": f"ops.KNNIndex ({args.threads} threads)",
                           "build_seconds": build, "search_seconds": seconds,
                           "path": last["path"], "survivor_rate": last.get("survivor_rate"),
                           **exactness(values, want[0], ids, want[1])})
    print(report["runs"][-1], flush=True)
    index = None  # free its projections before the Ray runs

    ray = ensure_ray(num_cpus=args.threads, include_dashboard=False,
                     _node_ip_address="127.0.0.1", object_store_memory=256 * 2**20)
    try:
        for config in args.configs.split(","):
            actors, mode = config.split(":")
            report["runs"].append(run_ray(paths, queries, args.k, args.metric, int(actors), mode,
                                          args.threads, want))
            print(report["runs"][-1], flush=True)
    finally:
        ray.shutdown()
    report["load_end"] = load()
    print(markdown(report))
    print(f"load average: start {report['load_start']}, end {report['load_end']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
