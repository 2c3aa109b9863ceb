"""Build and cache the kNN-index benchmark banks (issue 9): real LLM token states, synthetic banks.

Each bank is a directory under ``--out`` (default ``$OOD_ZOO_CACHE/banks``, else
``~/.cache/ood_zoo/banks``) holding fp32 ``.npy`` files and a ``manifest.json``:

- ``bank.npy`` ``[N, d]``: the reference set;
- ``queries_ood.npy``: queries from a corpus the bank never saw (real banks), or fresh draws from
  the bank's distribution (``queries.npy``, synthetic banks);
- ``queries_heldout.npy``: held-out texts of the bank's own corpora (real banks);
- ``queries_online.npy`` (64 rows): for the online regime (Q = 1, 16);
- ``positions.npy`` (real banks): each row's token position (position 0 is the attention sink).

Real banks (``smollm2``, ``minilm``) hold **every token** of every text (padding excluded, not
pooled), texts cut at ``--max-length`` tokens: bank texts from BBC News and Rotten Tomatoes
reviews, OOD queries from chit-chat utterances. SmolLM2-135M gives two banks from one forward
pass: the final layer (hidden state 30, after the final RMSNorm) and a middle layer (15). MiniLM
(all-MiniLM-L6-v2) gives its final layer, the isotropic contrast.

Synthetic banks (``synthetic``) are ``mean + Gaussian`` with the mean and covariance spectrum of
the real SmolLM2 final-layer bank, stretched to the target width by log-log interpolation of the
spectrum, in a random orthonormal basis; ``gaussian`` banks are isotropic N(0, I), same shapes.
Both are written in chunks into ``.npy`` memmaps (one copy, on disk).

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=/work/main .venv/bin/python benchmarks/make_banks.py \\
        --only smollm2,minilm            # ~4 min on 2 cores
    ... --only synthetic,gaussian        # 1M x 1024 and 200k x 4096 each (~15 GB on disk)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from tqdm import tqdm

try:
    import ood_zoo  # noqa: F401
except ImportError:  # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("smollm2", "minilm", "synthetic", "gaussian")
DEFAULT_SHAPES = ("1000000x1024", "200000x4096")
SMOLLM2_LAYERS = {"final": 30, "middle": 15}
CHUNK = 50_000
ONLINE = 64


def default_out() -> Path:
    """``$OOD_ZOO_CACHE/banks``, else ``~/.cache/ood_zoo/banks``."""
    root = os.environ.get("OOD_ZOO_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "ood_zoo") / "banks"


def write_manifest(directory: Path, info: dict) -> None:
    """Write ``manifest.json`` last: its presence marks a complete bank."""
    info = {**info, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": platform.node(), "torch": torch.__version__}
    (directory / "manifest.json").write_text(json.dumps(info, indent=1) + "\n")


def done(directory: Path, force: bool) -> bool:
    """True if ``directory`` already holds a complete bank (and ``--force`` is off)."""
    if (directory / "manifest.json").is_file() and not force:
        print(f"  {directory}: cached (use --force to rebuild)", flush=True)
        return True
    return False


# ------------------------------------------------------------------------ real token states


def _texts(seed: int, n_heldout: int) -> dict[str, list[str]]:
    """Bank pool (BBC News + RT reviews, shuffled), held-out texts of both, and OOD chit-chat."""
    from ood_zoo.data import bbc_news, chitchat, rotten_tomatoes

    rng = np.random.default_rng(seed)
    pool: list[str] = []
    heldout: list[str] = []
    for ts in (bbc_news(), rotten_tomatoes("reviews")):
        texts = [ts.texts[i] for i in rng.permutation(len(ts.texts))]
        heldout += texts[:n_heldout]
        pool += texts[n_heldout:]
    pool = [pool[i] for i in rng.permutation(len(pool))]
    ood = list(chitchat().texts)
    ood = [ood[i] for i in rng.permutation(len(ood))]
    return {"bank": pool, "heldout": heldout, "ood": ood}


def _take(ids: list[list[int]], rows: int) -> int:
    """How many leading texts give at least ``rows`` tokens."""
    total = 0
    for n, row in enumerate(ids, 1):
        total += len(row)
        if total >= rows:
            return n
    return len(ids)


def _encode_until(texts: list[str], tokenizer: object, rows: int, max_length: int,
                  step: int = 500) -> list[list[int]]:
    """Token ids of leading texts, encoded ``step`` at a time until they hold ``rows`` tokens."""
    from ood_zoo.features.encode import encode

    ids: list[list[int]] = []
    for s in range(0, len(texts), step):
        ids += encode(texts[s : s + step], tokenizer, max_length=max_length)[0]["input_ids"]
        if sum(map(len, ids)) >= rows:
            break
    return ids


def token_states(
    model: torch.nn.Module,
    pad_id: int,
    ids: list[list[int]],
    layers: Sequence[int],
    batch_size: int,
    desc: str,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Hidden states of every real token (padding excluded), one ``[T, d]`` array per layer.

    Texts are batched by length (right padding with the attention mask); rows come back in text
    order, tokens in order. Also returns each row's token position.
    """
    net = getattr(model, "base_model", model)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    per_text: list[list[np.ndarray] | None] = [None] * len(ids)
    with torch.inference_mode(), tqdm(total=sum(map(len, ids)), desc=desc, unit="tok") as bar:
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            width = max(len(ids[i]) for i in rows)
            x = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                x[r, : len(ids[i])] = torch.tensor(ids[i])
                mask[r, : len(ids[i])] = 1
            out = net(input_ids=x, attention_mask=mask, output_hidden_states=True)
            states = out.hidden_states
            for r, i in enumerate(rows):
                n = len(ids[i])
                per_text[i] = [states[li][r, :n].float().numpy().copy() for li in layers]
            bar.update(int(mask.sum()))
    done_ = [t for t in per_text if t is not None]
    stacked = [np.concatenate([t[j] for t in done_]) for j in range(len(layers))]
    positions = np.concatenate([np.arange(len(row), dtype=np.int16) for row in ids])
    return stacked, positions


def real_banks(
    kind: str, out: Path, rows: int, n_queries: int, max_length: int, batch_size: int,
    seed: int, force: bool,
) -> None:
    """Token-level banks of ``smollm2`` (final + middle layer) or ``minilm`` (final layer)."""
    from ood_zoo.features.models import load_model

    name = "smollm2-135m" if kind == "smollm2" else "minilm"
    layers = SMOLLM2_LAYERS if kind == "smollm2" else {"final": 6}
    dirs = {role: out / f"{name}_L{li}" for role, li in layers.items()}
    if all(done(d, force) for d in dirs.values()):
        return
    t0 = time.perf_counter()
    model, tok = load_model(name, device="cpu", dtype="float32")
    t_load = time.perf_counter() - t0
    texts = _texts(seed, n_heldout=max(8, n_queries // 40))
    want = {"bank": rows, "heldout": n_queries, "ood": n_queries}
    ids = {part: _encode_until(texts[part], tok, want[part], max_length) for part in texts}
    take = {part: _take(ids[part], want[part]) for part in ids}
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    results: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}
    t1 = time.perf_counter()
    for part in ("bank", "heldout", "ood"):
        results[part] = token_states(model, pad, ids[part][: take[part]], list(layers.values()),
                                     batch_size, f"{name} {part}")
    t_extract = time.perf_counter() - t1
    n_tokens = {part: len(results[part][1]) for part in results}
    for j, (role, li) in enumerate(layers.items()):
        d = dirs[role]
        d.mkdir(parents=True, exist_ok=True)
        bank = results["bank"][0][j]
        np.save(d / "bank.npy", bank)
        np.save(d / "positions.npy", results["bank"][1])
        np.save(d / "queries_heldout.npy", results["heldout"][0][j])
        ood = results["ood"][0][j]
        np.save(d / "queries_ood.npy", ood)
        rng = np.random.default_rng(seed + 1)
        pick = rng.choice(len(ood), min(ONLINE, len(ood)), replace=False)
        np.save(d / "queries_online.npy", ood[np.sort(pick)])
        write_manifest(d, {
            "kind": "real", "model": name, "layer": li, "role": role,
            "n_hidden_states": int(model.config.num_hidden_layers) + 1,
            "rows": int(bank.shape[0]), "dims": int(bank.shape[1]), "dtype": "float32",
            "tokens": "every token of every text (padding excluded, not pooled)",
            "max_length": max_length, "seed": seed,
            "corpus": {"bank": "bbc_news + rotten_tomatoes(reviews), shuffled",
                       "queries_heldout": "held-out texts of bbc_news and rotten_tomatoes(reviews)",
                       "queries_ood": "chitchat (never in the bank)",
                       "queries_online": f"{ONLINE} rows of queries_ood"},
            "texts": take, "token_rows": n_tokens,
            "files": {"bank": "bank.npy", "positions": "positions.npy",
                      "queries_heldout": "queries_heldout.npy", "queries_ood": "queries_ood.npy",
                      "queries_online": "queries_online.npy"},
            "build_seconds": {"load_model": round(t_load, 2), "extract": round(t_extract, 2)},
            "threads": torch.get_num_threads(),
        })
        print(f"  wrote {d}: bank {bank.shape}, heldout {results['heldout'][0][j].shape}, "
              f"ood {ood.shape}", flush=True)
    print(f"  {name}: load {t_load:.1f} s, extraction {t_extract:.1f} s "
          f"({sum(n_tokens.values()) / t_extract:.0f} tokens/s)", flush=True)


# ------------------------------------------------------------------------ synthetic banks


def fit_spectrum(source: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Mean, covariance eigenvalues (descending) and eigenvectors of a real bank (float64)."""
    path = source / "bank.npy" if source.is_dir() else source
    x = np.load(path, mmap_mode="r")
    n, d = x.shape
    mean = np.zeros(d)
    gram = np.zeros((d, d))
    for s in range(0, n, CHUNK):
        block = np.asarray(x[s : s + CHUNK], dtype=np.float64)
        mean += block.sum(0)
        gram += block.T @ block
    mean /= n
    cov = gram / n - np.outer(mean, mean)
    evals, evecs = np.linalg.eigh(cov)
    evals, evecs = np.clip(evals[::-1], 1e-12, None), evecs[:, ::-1]
    info = {"source": str(path), "source_rows": int(n), "source_dims": int(d),
            "mean_norm2_over_trace": float(mean @ mean / evals.sum()),
            "top1_var_share": float(evals[0] / evals.sum()),
            "top64_var_share": float(evals[:64].sum() / evals.sum())}
    return mean, evals, evecs, info


def stretch(mean: np.ndarray, evals: np.ndarray, evecs: np.ndarray, dim: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """The spectrum and the mean (in eigen-coordinates) stretched from ``len(evals)`` to ``dim``.

    The spectrum is interpolated on log(eigenvalue) against log(relative rank), so its shape
    (the share of variance in the top fraction of directions) carries over; the mean's
    eigen-coordinates are spread the same way. Per-dimension variance and
    ``|mean|^2 / trace`` stay those of the source.
    """
    d0 = len(evals)
    src = np.log((np.arange(d0) + 0.5) / d0)
    dst = np.log((np.arange(dim) + 0.5) / dim)
    lam = np.exp(np.interp(dst, src, np.log(evals)))
    lam *= evals.sum() * dim / d0 / lam.sum()
    m0 = evecs.T @ mean
    m = np.interp(dst, src, m0)
    if np.linalg.norm(m) > 0:
        m *= np.sqrt((mean @ mean) / evals.sum() * lam.sum()) / np.linalg.norm(m)
    return lam, m


def random_basis(dim: int, seed: int) -> torch.Tensor:
    """A random orthonormal ``[dim, dim]`` basis (QR of a Gaussian matrix)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def draw(path: Path, n: int, dim: int, seed: int, scale: torch.Tensor | None,
         shift: torch.Tensor | None, basis: torch.Tensor | None, desc: str) -> None:
    """Write ``n`` rows of ``(z * scale + shift) @ basis`` (z ~ N(0, I)) into an .npy memmap."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    g = torch.Generator().manual_seed(seed)
    step = max(1, 2**24 // dim)  # 64 MB blocks
    with tqdm(total=n, desc=desc, unit="row", unit_scale=True) as bar:
        for s in range(0, n, step):
            z = torch.randn(min(step, n - s), dim, generator=g)
            if scale is not None:
                z.mul_(scale)
            if shift is not None:
                z.add_(shift)
            if basis is not None:
                z = z @ basis
            mm[s : s + len(z)] = z.numpy()
            bar.update(len(z))
    mm.flush()
    del mm


def synthetic_banks(kind: str, out: Path, shapes: Sequence[str], n_queries: int, seed: int,
                    spectrum_from: Path, force: bool) -> None:
    """Anisotropic (``synthetic``) or isotropic (``gaussian``) banks of the given shapes."""
    fitted = None
    for shape in shapes:
        n, dim = (int(v) for v in shape.lower().split("x"))
        d = out / f"{'synthetic-aniso' if kind == 'synthetic' else 'gaussian'}_{n}x{dim}"
        if done(d, force):
            continue
        free = os.statvfs(out).f_bavail * os.statvfs(out).f_frsize
        need = 4 * n * dim * 1.05
        if free < need + 2e9:
            raise SystemExit(f"not enough disk under {out}: need {need / 1e9:.1f} GB + 2 GB")
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        info: dict = {"kind": kind, "rows": n, "dims": dim, "dtype": "float32", "seed": seed}
        scale = shift = basis = None
        if kind == "synthetic":
            if fitted is None:
                fitted = fit_spectrum(spectrum_from)
            mean, evals, evecs, fit_info = fitted
            lam, m = stretch(mean, evals, evecs, dim)
            scale = torch.from_numpy(np.sqrt(lam)).float()
            shift = torch.from_numpy(m).float()
            basis = random_basis(dim, seed)
            info.update(fit=fit_info, model="smollm2-135m (fitted)",
                        generator="rows = (z * sqrt(lam) + m) @ V, z ~ N(0, I), "
                        "V random orthonormal",
                        synthetic_top64_var_share=float(lam[:64].sum() / lam.sum()),
                        synthetic_mean_norm2_over_trace=float(m @ m / lam.sum()))
        else:
            info.update(generator="rows ~ N(0, I)")
        draw(d / "bank.npy", n, dim, seed, scale, shift, basis, f"{d.name} bank")
        draw(d / "queries.npy", n_queries, dim, seed + 1, scale, shift, basis, "queries")
        draw(d / "queries_online.npy", ONLINE, dim, seed + 2, scale, shift, basis, "online")
        info.update(files={"bank": "bank.npy", "queries": "queries.npy",
                           "queries_online": "queries_online.npy"},
                    queries=n_queries, build_seconds=round(time.perf_counter() - t0, 2),
                    threads=torch.get_num_threads())
        write_manifest(d, info)
        print(f"  wrote {d} in {info['build_seconds']:.1f} s", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default=",".join(KINDS), help=f"comma list out of {','.join(KINDS)}")
    p.add_argument("--out", type=Path, default=default_out(), help="cache directory")
    p.add_argument("--rows", type=int, default=100_000, help="bank rows (tokens) of real banks")
    p.add_argument("--queries", type=int, default=2000, help="query rows per query set")
    p.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES),
                   help="synthetic / gaussian bank shapes, NxD")
    p.add_argument("--spectrum-from", type=Path, default=None,
                   help="real bank (dir or .npy) to fit; default the SmolLM2 final-layer bank")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild banks that are cached")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    bad = sorted(set(kinds) - set(KINDS))
    if bad:
        p.error(f"unknown bank kinds {bad}; choose from {list(KINDS)}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"banks under {args.out} (threads {args.threads}, load {os.getloadavg()[0]:.2f})",
          flush=True)
    spectrum = args.spectrum_from or args.out / f"smollm2-135m_L{SMOLLM2_LAYERS['final']}"
    for kind in kinds:
        t = time.perf_counter()
        if kind in ("smollm2", "minilm"):
            real_banks(kind, args.out, args.rows, args.queries, args.max_length,
                       args.batch_size, args.seed, args.force)
        else:
            fit_ok = spectrum.is_file() or (spectrum / "bank.npy").is_file()
            if kind == "synthetic" and not fit_ok:
                p.error(f"no bank to fit the spectrum to at {spectrum}: build --only smollm2 "
                        "first or pass --spectrum-from")
            synthetic_banks(kind, args.out, args.shapes, args.queries, args.seed, spectrum,
                            args.force)
        print(f"{kind}: {time.perf_counter() - t:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
