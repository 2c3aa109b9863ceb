"""The ``ood-zoo`` command line.

::

    ood-zoo detectors [--json]          registered detectors, their plugin, needs and params
    ood-zoo plugins [--json]            loaded, failed and blocked plugins
    ood-zoo doctor [--json]             versions, kernel backend, threads, CUDA
    ood-zoo fit NAME --features F [--labels L] [--logits Z] [--param k=v ...] --out DIR
    ood-zoo score DIR --features F [--logits Z] --out scores.npy
    ood-zoo evaluate (--id-scores A --ood-scores B | DIR --id-features A --ood-features B)
                     [--out RESULTS_DIR] [--json]
    ood-zoo demo [--out RESULTS_DIR]    a small end-to-end evaluation on real text features
    ood-zoo bench --suite zero-grad [--model smollm2-135m] [--layers all] [--seeds 1,2,3,4,5]
                  [--bank validation|train] [--out DIR] [--max-per-split N | --full] ...
    ood-zoo bench --suite fine-tuned [--objectives generative,discriminative]
                  [--shots full,10,5,1] [--seeds 1] [--epochs N] [--lr X] [--paper-recipe]
    ood-zoo isotropy [--models smollm2-135m,minilm] [--id rt --ood chitchat] [--out DIR]
                                        isotropy measures per model and layer vs detector gaps
    ood-zoo report RESULTS_DIR [--out DIR] [--json]
                                        one self-contained HTML page (+ Markdown) of results
    ood-zoo models [--json]             registered models (name, package, pooling, licence)
    ood-zoo datasets [--json]           registered datasets (name, description, source)

Feature files are ``.npy`` (memory-mapped) or ``.safetensors`` (``--key`` picks a tensor);
labels are ``.npy``. Scores follow the library convention: higher = more in-distribution.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OodZooError

PROG = "ood-zoo"


class CommandError(OodZooError):
    """A usage problem detected by a command (bad file, bad --param)."""


# ---------------------------------------------------------------------- file helpers
def read_array(path: str | Path, *, key: str | None = None) -> Any:
    """Read a ``.npy`` file (memory-mapped) or one tensor of a ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise CommandError(f"no such file: {path}")
    if path.suffix == ".npy":
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise CommandError(f"{path} is not a readable .npy array: {exc}") from exc
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CommandError(f"{path} is not a valid safetensors file: {exc}") from exc
        if key is None:
            if len(tensors) != 1:
                raise CommandError(
                    f"{path} holds tensors {sorted(tensors)}; choose one with --key"
                )
            return next(iter(tensors.values()))
        if key not in tensors:
            raise CommandError(f"{path} has no tensor {key!r}; it holds {sorted(tensors)}")
        return tensors[key]
    raise CommandError(f"{path}: expected a .npy or .safetensors file")


def _optional_array(path: str | None, key: str | None = None) -> Any:
    return None if path is None else read_array(path, key=key)


def _write_text(path: Path, text: str) -> None:
    from .io import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())


def _write_scores(path: Path, scores: np.ndarray) -> None:
    import io as _io

    from .io import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        _write_text(path, json.dumps([float(s) for s in scores]) + "\n")
    elif path.suffix == ".npy":
        buffer = _io.BytesIO()
        np.save(buffer, np.asarray(scores), allow_pickle=False)
        atomic_write_bytes(path, buffer.getvalue())
    else:
        raise CommandError(f"{path}: scores are written as .npy or .json")


def _parse_params(items: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--param expects KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def _to_numpy(scores: Any) -> np.ndarray:
    if hasattr(scores, "detach"):
        return scores.detach().float().cpu().numpy()
    return np.asarray(scores)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


# ---------------------------------------------------------------------- listing commands
def cmd_detectors(args: argparse.Namespace) -> int:
    from .registry import get_registry

    registry = get_registry()
    records = [r.as_dict() for r in registry.detectors.values()]
    if args.json:
        _print_json(records)
        return 0
    from .metrics import format_table

    rows = [
        {
            "detector": r["name"],
            "plugin": f"{r['plugin']} {r['plugin_version'] or ''}".strip(),
            "needs": ",".join(k for k, v in r["requires"].items() if v) or "-",
            "params": " ".join(f"{p['name']}={p['default']}" for p in r["params"]) or "-",
        }
        for r in records
    ]
    print(format_table(rows, columns=["detector", "plugin", "needs", "params"]))
    for name, plugins in registry.conflicts.items():
        print(f"conflict: {name!r} is registered by {' and '.join(plugins)}", file=sys.stderr)
    for plugin in registry.failed:
        print(f"failed plugin {plugin.name}: {plugin.error}", file=sys.stderr)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from .registry import get_registry

    plugins = [p.as_dict() for p in get_registry().plugins.values()]
    if args.json:
        _print_json(plugins)
        return 0
    from .metrics import format_table

    rows = [
        {
            "plugin": p["name"],
            "distribution": f"{p['distribution'] or '-'} {p['version'] or ''}".strip(),
            "status": p["status"],
            "detectors": ",".join(p["detectors"]) or "-",
            "error": p["error"] or "",
        }
        for p in plugins
    ]
    print(format_table(rows, columns=["plugin", "distribution", "status", "detectors", "error"]))
    return 0


def doctor_report() -> dict[str, Any]:
    """Versions, kernel backend, thread counts and CUDA status, as a dict."""
    import torch

    from . import ops
    from .bench.session import package_versions

    versions = package_versions()
    kernel = ops.describe_backend()
    cuda = {
        "available": torch.cuda.is_available(),
        "torch_cuda_version": torch.version.cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    threads = {
        "torch": torch.get_num_threads(),
        "torch_interop": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
    }
    return {
        "versions": versions,
        "platform": platform.platform(),
        "kernels": kernel,
        "threads": threads,
        "cuda": cuda,
    }


def cmd_doctor(args: argparse.Namespace) -> int:
    report = doctor_report()
    if args.json:
        _print_json(report)
        return 0
    for section, values in report.items():
        if isinstance(values, dict):
            print(f"{section}:")
            for key, value in values.items():
                print(f"  {key}: {value}")
        else:
            print(f"{section}: {values}")
    return 0


# ---------------------------------------------------------------------- fit / score / evaluate
def cmd_fit(args: argparse.Namespace) -> int:
    from .registry import create

    detector = create(args.detector, **_parse_params(args.param))
    detector.fit(
        _optional_array(args.features, args.key),
        _optional_array(args.labels),
        _optional_array(args.logits, args.logits_key),
    )
    if args.calibration_features or args.calibration_logits:
        detector.calibrate(
            _optional_array(args.calibration_features, args.key),
            _optional_array(args.calibration_logits, args.logits_key),
        )
    detector.save(args.out)
    summary = {
        "detector": detector.name, "params": detector.get_params(),
        "threshold": detector.threshold_, "n_features_in": detector.n_features_in_,
        "saved_to": str(args.out),
    }
    if args.json:
        _print_json(summary)
    else:
        print(f"fitted {detector!r}; threshold {detector.threshold_}; saved to {args.out}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .registry import load

    detector = load(args.model)
    scores = _to_numpy(detector.score(
        _optional_array(args.features, args.key), _optional_array(args.logits, args.logits_key)
    ))
    _write_scores(Path(args.out), scores)
    summary = {
        "n": int(scores.size), "min": float(scores.min()), "mean": float(scores.mean()),
        "max": float(scores.max()), "threshold": detector.threshold_, "saved_to": args.out,
    }
    if detector.threshold_ is not None:
        summary["accepted_as_id"] = float((scores >= detector.threshold_).mean())
    if args.json:
        _print_json(summary)
    else:
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .metrics import METRIC_NAMES, evaluate, format_table

    if args.model is not None:
        if args.id_features is None and args.id_logits is None:
            raise CommandError("evaluate DIR needs --id-features/--ood-features (or logits)")
        from .registry import load

        detector = load(args.model)
        id_scores = _to_numpy(detector.score(
            _optional_array(args.id_features, args.key),
            _optional_array(args.id_logits, args.logits_key),
        ))
        ood_scores = _to_numpy(detector.score(
            _optional_array(args.ood_features, args.key),
            _optional_array(args.ood_logits, args.logits_key),
        ))
        name = args.name or detector.name
    elif args.id_scores is not None and args.ood_scores is not None:
        id_scores = np.asarray(read_array(args.id_scores))
        ood_scores = np.asarray(read_array(args.ood_scores))
        name = args.name or "scores"
    else:
        raise CommandError(
            "evaluate needs either --id-scores and --ood-scores, or a saved detector DIR "
            "with --id-features and --ood-features"
        )
    metrics = evaluate(id_scores, ood_scores, tpr=args.tpr)
    row = {"detector": name, "n_id": int(id_scores.size), "n_ood": int(ood_scores.size),
           **metrics}
    table = format_table([row], columns=["detector", "n_id", "n_ood", *METRIC_NAMES])
    if args.out:
        out = Path(args.out)
        _write_text(out / "metrics.json", json.dumps(row, indent=2) + "\n")
        _write_text(out / "metrics.txt", table + "\n")
        if args.model is not None:
            _write_scores(out / "id_scores.npy", id_scores)
            _write_scores(out / "ood_scores.npy", ood_scores)
    if args.json:
        _print_json(row)
    else:
        print(table)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .bench.demo import run_demo

    run_demo(n_bank=args.n_bank, n_test=args.n_test, seed=args.seed, out_dir=args.out)
    return 0


def _spec_listing(kind: str, args: argparse.Namespace, columns: Sequence[str]) -> int:
    from .metrics import format_table
    from .registry import get_registry

    registry = get_registry()
    records = [r.as_dict() for r in getattr(registry, kind).values()]
    if args.json:
        _print_json(records)
        return 0
    print(format_table(records, columns=list(columns)))
    for name, plugins in registry.conflicts_of(kind).items():
        print(f"conflict: {name!r} is registered by {' and '.join(plugins)}", file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    return _spec_listing("models", args, ["name", "pooling", "max_length", "package", "plugin"])


def cmd_datasets(args: argparse.Namespace) -> int:
    return _spec_listing("datasets", args, ["name", "description", "plugin"])


def _int_list(text: str, what: str) -> tuple[int, ...]:
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, sep, high = part.partition("-")
        try:
            if sep and low:  # a range "1-5"
                values.extend(range(int(low), int(high) + 1))
            else:
                values.append(int(part))
        except ValueError:
            raise CommandError(f"{what} expects integers or ranges like 1-5, got {text!r}"
                               ) from None
    if not values:
        raise CommandError(f"{what} is empty")
    return tuple(values)


def _names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise CommandError("expected a comma-separated list of names")
    return names


def _shots(text: str) -> tuple[int | str, ...]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        return tuple(item if item == "full" else int(item) for item in items)
    except ValueError:
        raise CommandError(f"--shots takes 'full' and integers, e.g. full,10,5,1; got {text!r}"
                           ) from None


def cmd_bench_fine_tuned(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .bench.fine_tuned import (
        CPU_RECIPE,
        FineTunedBenchConfig,
        render_fine_tuned,
        run_fine_tuned,
        write_fine_tuned_outputs,
    )
    from .finetune import TrainConfig

    recipe = replace(TrainConfig() if args.paper_recipe else CPU_RECIPE,
                     max_length=args.max_length or CPU_RECIPE.max_length,
                     progress=not args.quiet)
    if args.epochs is not None:
        recipe = replace(recipe, max_epochs=args.epochs)
    if args.lr is not None:
        recipe = replace(recipe, learning_rate=args.lr)
    config = FineTunedBenchConfig(
        model=args.model, datasets=_names(args.datasets) or ("bbc",),
        objectives=_names(args.objectives) or ("generative", "discriminative"),
        shots=_shots(args.shots), seeds=_int_list(args.seeds or "1", "--seeds"), train=recipe,
        detectors=_names(args.detectors), save_adapters=not args.no_adapters,
        cache=not args.no_cache, plots=not args.no_plots, progress=not args.quiet,
        threads=args.threads,
    )
    out = Path(args.out or f"results/fine-tuned-{Path(args.model).name}")
    result = run_fine_tuned(config, adapters_dir=out / "adapters")
    written = write_fine_tuned_outputs(result, out)
    print(render_fine_tuned(result)[1])
    timing = result.meta["timing_s"]
    print(f"total {timing['total_s']:.1f} s (training {timing['train_s']:.1f} s, extraction "
          f"{timing['extract_s']:.1f} s, detectors {timing['detectors_s']:.1f} s); wrote "
          f"{len(written['files'])} files to {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.suites import get_suite
    from .bench.zero_grad import BenchConfig, render_tables, run_bench, write_outputs
    from .registry import get_registry

    suite = get_suite(args.suite)  # unknown suite: ValueError, exit 2 before any work
    if not Path(args.model).is_dir() and args.model not in get_registry().models:
        raise CommandError(
            f"unknown model {args.model!r}: not a registered name "
            f"({', '.join(get_registry().models) or 'none'}) and not a local model directory"
        )
    if suite.name == "fine-tuned":
        return cmd_bench_fine_tuned(args)
    if args.layers in ("none", "off"):
        sweep: Any = None
    elif args.layers == "all":
        sweep = "all"
    else:
        sweep = _int_list(args.layers, "--layers")
    config = BenchConfig(
        suite=suite.name, model=args.model, layer=args.layer, sweep_layers=sweep,
        pooling=args.pooling, template=args.template,
        seeds=_int_list(args.seeds or "1-5", "--seeds"),
        bank=args.bank, max_per_split=None if args.full else args.max_per_split,
        full=args.full, max_length=args.max_length or 128, batch_size=args.batch_size,
        detectors=_names(args.detectors),
        sweep_detectors=_names(args.sweep_detectors) or (),
        datasets=_names(args.datasets), cache=not args.no_cache, plots=not args.no_plots,
        progress=not args.quiet, threads=args.threads,
    )
    suite.select(config.datasets)  # unknown dataset: ValueError, exit 2 before any work
    out = Path(args.out or f"results/{suite.name}-{Path(args.model).name}")
    result = run_bench(config)
    written = write_outputs(result, out)
    print(render_tables(result)[1])
    timing = result.meta["timing_s"]
    print(f"total {timing['total_s']:.1f} s (extraction {timing.get('extract_s', 0):.1f} s, "
          f"detectors {timing.get('detectors_s', 0):.1f} s); wrote {len(written['files'])} "
          f"files to {out}")
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Out-of-distribution detectors for LLM hidden states.",
    )
    from .version import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_json(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        return p

    def with_keys(p: argparse.ArgumentParser) -> None:
        p.add_argument("--key", help="tensor name inside a .safetensors feature file")
        p.add_argument("--logits-key", help="tensor name inside a .safetensors logits file")

    with_json(sub.add_parser("detectors", help="list registered detectors")).set_defaults(
        func=cmd_detectors)
    with_json(sub.add_parser("plugins", help="list plugins, failed ones included")).set_defaults(
        func=cmd_plugins)
    with_json(sub.add_parser("doctor", help="versions, kernel backend, threads, CUDA")
              ).set_defaults(func=cmd_doctor)

    fit = with_json(sub.add_parser("fit", help="fit a detector on ID features and save it"))
    fit.add_argument("detector", help="registered detector name (see `ood-zoo detectors`)")
    fit.add_argument("--features", help="ID features [n, d] (.npy or .safetensors)")
    fit.add_argument("--labels", help="ID class labels [n] (.npy)")
    fit.add_argument("--logits", help="ID logits [n, C]")
    fit.add_argument("--calibration-features", help="held-out ID features for the threshold")
    fit.add_argument("--calibration-logits", help="held-out ID logits for the threshold")
    fit.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="a hyperparameter (JSON value), repeatable")
    fit.add_argument("--out", required=True, help="directory to save the fitted detector in")
    with_keys(fit)
    fit.set_defaults(func=cmd_fit)

    score = with_json(sub.add_parser("score", help="score features with a saved detector"))
    score.add_argument("model", help="directory written by `ood-zoo fit`")
    score.add_argument("--features")
    score.add_argument("--logits")
    score.add_argument("--out", required=True, help="scores file (.npy or .json)")
    with_keys(score)
    score.set_defaults(func=cmd_score)

    ev = with_json(sub.add_parser("evaluate", help="AUROC, FPR95, AUPR of ID vs OOD scores"))
    ev.add_argument("model", nargs="?", help="a saved detector directory (optional)")
    ev.add_argument("--id-scores")
    ev.add_argument("--ood-scores")
    ev.add_argument("--id-features")
    ev.add_argument("--ood-features")
    ev.add_argument("--id-logits")
    ev.add_argument("--ood-logits")
    ev.add_argument("--tpr", type=float, default=0.95, help="ID recall for FPR (default 0.95)")
    ev.add_argument("--name", help="row label in the table")
    ev.add_argument("--out", help="directory for metrics.json, metrics.txt (and scores)")
    with_keys(ev)
    ev.set_defaults(func=cmd_evaluate)

    demo = sub.add_parser("demo", help="small end-to-end evaluation on real text features")
    demo.add_argument("--n-bank", type=int, default=1000)
    demo.add_argument("--n-test", type=int, default=500)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="results/demo", help="results directory")
    demo.set_defaults(func=cmd_demo)

    with_json(sub.add_parser("models", help="list registered models")).set_defaults(
        func=cmd_models)
    with_json(sub.add_parser("datasets", help="list registered datasets")).set_defaults(
        func=cmd_datasets)

    from .bench.zero_grad import DEFAULT_MAX_PER_SPLIT, SWEEP_DETECTORS

    bench = sub.add_parser(
        "bench", help="run a benchmark suite (zero-grad: every detector on frozen LM features)",
        description="Run a benchmark suite and write results.json, results.csv, "
        "layer_sweep.csv, table.md, table.txt and plots/ into --out.",
    )
    bench.add_argument("--suite", default="zero-grad", help="suite name (default zero-grad)")
    bench.add_argument("--model", default="smollm2-135m",
                       help="registered model (see `ood-zoo models`) or a local directory")
    bench.add_argument("--layer", type=int, default=-1,
                       help="hidden state of the main table (default -1, the last block)")
    bench.add_argument("--layers", default="all",
                       help="layer sweep: 'all', a list like 0,4,8-12, or 'none' (default all)")
    bench.add_argument("--pooling", choices=["last", "mean", "first"],
                       help="default: last for causal LMs (paper), the model's own otherwise")
    bench.add_argument("--template", help="prompt with {text}; default: the paper's for "
                       "causal LMs, raw text for encoders; '' for raw text")
    bench.add_argument("--seeds", help="seeds, e.g. 1-5 or 1,2,3 (default 1-5; fine-tuned: 1)")
    bench.add_argument("--bank", choices=["validation", "train"], default="validation",
                       help="ID split the detectors are fit on (default validation, as the paper)")
    bench.add_argument("--out", help="results directory (default results/<suite>-<model>)")
    bench.add_argument("--max-per-split", type=int, default=DEFAULT_MAX_PER_SPLIT,
                       help=f"texts per split and corpus (default {DEFAULT_MAX_PER_SPLIT})")
    bench.add_argument("--full", action="store_true", help="whole corpora, no subsampling")
    bench.add_argument("--max-length", type=int,
                       help="tokens per text, template included (default 128; fine-tuned: 64)")
    bench.add_argument("--batch-size", type=int, default=32)
    bench.add_argument("--detectors", help="comma-separated detectors (default: all usable)")
    bench.add_argument("--sweep-detectors", default=",".join(SWEEP_DETECTORS),
                       help=f"detectors of the layer sweep (default {','.join(SWEEP_DETECTORS)})")
    bench.add_argument("--datasets", help="restrict to settings among these corpora, e.g. rt,bbc")
    bench.add_argument("--no-cache", action="store_true", help="do not use the features cache")
    bench.add_argument("--no-plots", action="store_true", help="do not draw plots")
    bench.add_argument("--threads", type=int, help="torch threads (default OMP_NUM_THREADS or 2)")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    tuned = bench.add_argument_group("fine-tuned suite")
    tuned.add_argument("--objectives", help="generative,discriminative (default both)")
    tuned.add_argument("--shots", default="full",
                       help="K per class of train and validation, e.g. full,10,5,1 (default full)")
    tuned.add_argument("--epochs", type=int, help="maximum epochs (default 8; paper 50)")
    tuned.add_argument("--lr", type=float, help="learning rate (default 1e-3; paper 1e-4)")
    tuned.add_argument("--paper-recipe", action="store_true",
                       help="the paper's recipe: lr 1e-4, 50 epochs, patience 6 after epoch 15")
    tuned.add_argument("--no-adapters", action="store_true", help="do not save LoRA adapters")
    bench.set_defaults(func=cmd_bench)

    from .analysis.study import add_arguments as isotropy_arguments
    from .analysis.study import run_cli as isotropy_cli
    from .bench.report import add_arguments as report_arguments
    from .bench.report import run_cli as report_cli

    isotropy = sub.add_parser(
        "isotropy", help="isotropy of models' embedding spaces per layer, against the "
        "cosine-vs-Euclidean/Mahalanobis AUROC gap")
    isotropy_arguments(isotropy)
    isotropy.set_defaults(func=isotropy_cli)

    report = sub.add_parser(
        "report", help="build one self-contained HTML page (and a Markdown twin) from results")
    report_arguments(report)
    report.set_defaults(func=report_cli)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ood-zoo``; returns the exit status (2 on a user error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OodZooError, ValueError, TypeError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
