"""Issue 12's detectors at the mission's scale: fit on a 1M-row memmapped bank, score 1,000 queries.

Each detector is fit on the whole bank (a numpy memmap, never copied by ood_zoo) and scores 1,000
held-out queries; the logits and labels the feature+logit detectors need come from one random
linear head over the bank (``x Wᵀ + b``, ``C`` classes, label = argmax), computed once in chunks.
``layers`` reads the same memmap as ``[n, 4, d/4]`` (a free reshape). Where pytorch-ood 0.4.0 is
unpacked (``make .oracles/.unpacked``) its ViM and NNGuide run on the same tensors, side by side.

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 .venv/bin/python \\
        benchmarks/bench_detectors_scale.py \\
        --bank ~/.cache/ood_zoo/banks/synthetic-aniso_1000000x1024 --json /tmp/scale.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from oracles import ORACLES, peer_modules  # noqa: E402  (tests/ is on the path above)

import ood_zoo  # noqa: E402
from ood_zoo.detectors.head import vim_dim  # noqa: E402

#: (label, registry name, parameters) of the detectors timed.
DETECTORS = (
    ("vim", "vim", {}),
    ("fdbd", "fdbd", {}),
    ("nci", "nci", {}),
    ("neco", "neco", {}),
    ("she", "she", {}),
    ("nnguide", "nnguide", {"k": 10}),
    ("rde", "rde", {}),
    ("layers(cosine, fisher)", "layers", {"detector": "cosine", "combine": "fisher"}),
    ("cosine (reference point)", "cosine", {}),
)


def linear_head(bank: np.ndarray, n_classes: int, seed: int = 0):
    """A random head ``(W, b)`` and the bank's logits ``x Wᵀ + b`` and labels, in chunks."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(n_classes, bank.shape[1])).astype(np.float32) / np.sqrt(bank.shape[1])
    bias = rng.normal(size=n_classes).astype(np.float32)
    logits = np.empty((bank.shape[0], n_classes), dtype=np.float32)
    for start in range(0, bank.shape[0], 65_536):
        logits[start : start + 65_536] = bank[start : start + 65_536] @ weight.T + bias
    return weight, bias, logits, logits.argmax(axis=1)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def pytorch_ood_side_by_side(bank, queries, weight, bias) -> dict[str, float]:
    """Fit + score seconds of pytorch-ood's ViM and NNGuide on the same data, if unpacked."""
    if not (ORACLES / "pytorch-ood" / "pytorch_ood").is_dir():
        return {}
    x = torch.from_numpy(np.asarray(bank))  # pytorch-ood needs the bank in memory
    q = torch.from_numpy(queries)
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias))
    out = {}
    with peer_modules("pytorch-ood", ("pytorch_ood", "pytorch_ood.detector"),
                      ["pytorch_ood.detector.vim", "pytorch_ood.detector.nnguide"]
                      ) as (vim, nnguide), torch.no_grad():
        known = torch.zeros(len(x), dtype=torch.long)  # every bank row is ID
        peer = vim.ViM(None, d=vim_dim(x.shape[1]), w=linear.weight, b=linear.bias)
        _, out["pytorch-ood ViM fit_s"] = timed(lambda: peer.fit_features(x, known))
        _, out["pytorch-ood ViM score_s"] = timed(lambda: peer.predict_features(q))
        guide = nnguide.NNGuide(None, linear, k=10)
        _, out["pytorch-ood NNGuide fit_s"] = timed(lambda: guide.fit_features(x, known))
        _, out["pytorch-ood NNGuide score_s"] = timed(lambda: guide.predict_features(q))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bank", type=Path, required=True, help="a make_banks.py directory")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--queries-file", default="queries.npy",
                        help="the bank directory's query file (default queries.npy)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--only", help="comma-separated labels of DETECTORS to run")
    parser.add_argument("--no-peer", action="store_true", help="skip pytorch-ood")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    bank = np.load(args.bank / "bank.npy", mmap_mode="r")
    queries = np.ascontiguousarray(np.load(args.bank / args.queries_file)[: args.queries])
    (weight, bias, logits, labels), head_s = timed(lambda: linear_head(bank, args.classes))
    query_logits = queries @ weight.T + bias
    n, d = bank.shape
    print(f"bank {n:,} x {d} {bank.dtype} memmap; logits {args.classes} classes ({head_s:.1f} s)")
    wanted = set(args.only.split(",")) if args.only else None
    rows = []
    for label, name, params in DETECTORS:
        if wanted is not None and label not in wanted:
            continue
        det = ood_zoo.create(name, **params)
        features, score_features = bank, queries
        if det.requires.layered:
            features = bank.reshape(n, 4, d // 4)
            score_features = queries.reshape(len(queries), 4, d // 4)
        _, fit_s = timed(lambda det=det, features=features: det.fit(
            features, labels=labels, logits=logits, head=(weight, bias)))
        scores, score_s = timed(lambda det=det, features=score_features: det.score(
            features, logits=query_logits))
        rows.append({"detector": label, "fit_s": round(fit_s, 2), "score_s": round(score_s, 3),
                     "finite": bool(np.isfinite(scores).all())})
        print(f"{label:28s} fit {fit_s:8.2f} s   score {args.queries} queries {score_s:7.3f} s",
              flush=True)
    peer = {} if args.no_peer else pytorch_ood_side_by_side(bank, queries, weight, bias)
    for key, value in peer.items():
        print(f"{key:28s} {value:8.2f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "bank": str(args.bank), "rows": n, "dims": d, "queries": args.queries,
            "classes": args.classes, "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "results": rows, "pytorch_ood": peer,
        }, indent=1))


if __name__ == "__main__":
    main()
