"""Extraction on Ray (issue 14): ``ood_zoo_ray.extract`` with 1 and 2 actors against
single-process ``ood_zoo.features.extract``, side by side in one run.

Real text (``bench_extraction.texts``: review snippets and chat utterances, shuffled), every
model with its registered pooling and template, length-sorted batches. For each model:

- ``extract``, in this process, with 1 and with ``--threads`` torch threads (model load timed
  apart: it is paid once);
- ``ood_zoo_ray.extract`` with ``actors × cpus`` in ``--configs`` (``2x1``: two actors of one
  CPU and one torch thread each), end to end: the actor pool's start, one model load per
  actor, the shards' transfer and the verified writes included. Its fixed cost is measured
  apart as the same call on one batch per actor, so ``steady`` = (texts − those batches) /
  (end to end − fixed): the throughput once the pool is up.

Every Ray result is checked bitwise against the single-process features. The per-actor
throughput (``steady`` of ``1x1``) is what RESULTS.md's cost estimate for N nodes starts from.

    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 PYTHONPATH=.:plugins/ood_zoo_ray \\
        .venv/bin/python benchmarks/bench_ray_extract.py --n 1024 --json /tmp/ray_extract.json
    ... --n 64 --models minilm                                    # a smoke run, a minute
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "plugins" / "ood_zoo_ray"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_extraction import count_tokens, texts  # noqa: E402
from bench_index import load, machine  # noqa: E402
from ood_zoo_ray.cluster import ensure_ray  # noqa: E402
from ood_zoo_ray.extraction import extract as ray_extract  # noqa: E402
from ood_zoo_ray.extraction import load as ray_load  # noqa: E402

from ood_zoo.features import extract, load_model, model_spec  # noqa: E402

MODELS = ("smollm2-135m", "minilm")


def options(name: str, batch_size: int) -> dict[str, Any]:
    """The model's registered extraction settings (as ``ood-zoo extract`` uses them)."""
    spec = model_spec(name)
    assert spec is not None, f"unknown model {name!r}"
    return {"pooling": spec.pooling, "template": spec.template, "max_length": spec.max_length,
            "batch_size": batch_size}


def one_process(name: str, data: list[str], settings: dict[str, Any], threads: int
                ) -> tuple[dict[str, float], torch.Tensor]:
    """Model load and extraction time in this process with ``threads`` torch threads, and the
    real tokens extracted."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tick = time.perf_counter()
        model, tokenizer = load_model(name, device="cpu")
        load_s = time.perf_counter() - tick
        extract(data[: settings["batch_size"]], model, tokenizer, progress=False, **settings)
        tick = time.perf_counter()
        features = extract(data, model, tokenizer, progress=False, **settings).features
        seconds = time.perf_counter() - tick
    finally:
        torch.set_num_threads(saved)
    tokens = count_tokens(tokenizer, data, template=settings["template"],
                          max_length=settings["max_length"])
    return {"load_s": load_s, "seconds": seconds, "texts_per_s": len(data) / seconds,
            "tokens": tokens}, features


def on_ray(name: str, data: list[str], settings: dict[str, Any], actors: int, cpus: float,
           shard_rows: int) -> tuple[dict[str, float], torch.Tensor]:
    """End-to-end and fixed cost of ``ood_zoo_ray.extract`` with ``actors`` actors."""
    kw = {**settings, "num_workers": actors, "num_cpus_per_worker": cpus, "progress": False}
    with tempfile.TemporaryDirectory(prefix="bench-ray-extract-") as scratch:
        small = data[: actors * settings["batch_size"]]
        tick = time.perf_counter()
        ray_extract(small, name, output=Path(scratch) / "fixed",
                    shard_rows=settings["batch_size"], **kw)
        fixed_s = time.perf_counter() - tick
        tick = time.perf_counter()
        output = ray_extract(data, name, output=Path(scratch) / "all", shard_rows=shard_rows,
                             **kw)
        seconds = time.perf_counter() - tick
        features = ray_load(output).features
    steady = seconds - fixed_s
    return {"fixed_s": fixed_s, "seconds": seconds, "texts_per_s": len(data) / seconds,
            "steady_texts_per_s": (len(data) - len(small)) / steady if steady > 0
            else float("nan")}, features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024, help="texts per model")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in one process")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-batches", type=int, default=4, help="batches per shard")
    parser.add_argument("--configs", nargs="+", default=["1x1", "1x2", "2x1"],
                        help="Ray pools as ACTORSxCPUS")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    data = texts(args.n)
    info = {"machine": machine(), "load_before": load(), "n": args.n,
            "batch_size": args.batch_size, "shard_rows": args.shard_batches * args.batch_size}
    ensure_ray(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
               object_store_memory=1 << 30)
    results: list[dict[str, Any]] = []
    for name in args.models:
        settings = options(name, args.batch_size)
        reference: torch.Tensor | None = None
        for threads in sorted({1, args.threads}):
            figures, features = one_process(name, data, settings, threads)
            reference = features if reference is None else reference
            tokens = figures["tokens"]
            results.append({"model": name, "run": f"extract, {threads} thread(s)", **figures})
            print(results[-1], flush=True)
        for config in args.configs:
            actors, cpus = config.split("x")
            figures, features = on_ray(name, data, settings, int(actors), float(cpus),
                                       info["shard_rows"])
            assert reference is not None
            results.append({"model": name, "run": f"ray {actors} actor(s) x {cpus} CPU",
                            "tokens": tokens, "bitwise_equal": torch.equal(features, reference),
                            **figures})
            print(results[-1], flush=True)
    info["load_after"] = load()
    print(json.dumps(info, indent=1))
    print("\n| model | run | load or fixed (s) | extraction (s) | texts/s | steady texts/s | "
          "tokens/s | bitwise |\n|---|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        fixed = r.get("fixed_s", r.get("load_s"))
        steady = r.get("steady_texts_per_s", r["texts_per_s"])
        print(f"| {r['model']} | {r['run']} | {fixed:.1f} | {r['seconds']:.1f} | "
              f"{r['texts_per_s']:.1f} | {steady:.1f} | {r['tokens'] / r['seconds']:.0f} | "
              f"{r.get('bitwise_equal', '')} |")
    if args.json:
        args.json.write_text(json.dumps({**info, "results": results}, indent=1))


if __name__ == "__main__":
    main()
