"""The core commands: list detectors, plugins, models, datasets and engines; ``doctor``; ``fit``,
``score`` and ``evaluate`` on feature files; and ``demo``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._common import (
    CommandError,
    optional_array,
    parse_params,
    print_json,
    read_array,
    to_numpy,
    write_scores,
    write_text,
)

if TYPE_CHECKING:
    from ..api import Detector

__all__ = ["add_parsers", "doctor_report", "threshold_guarantee"]


# ---------------------------------------------------------------------- listing commands
def cmd_detectors(args: argparse.Namespace) -> int:
    from ..registry import get_registry

    registry = get_registry()
    records = [r.as_dict() for r in registry.detectors.values()]
    if args.json:
        print_json(records)
        return 0
    from ..metrics import format_table

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
    from ..registry import get_registry

    plugins = [p.as_dict() for p in get_registry().plugins.values()]
    if args.json:
        print_json(plugins)
        return 0
    from ..metrics import format_table

    rows = [
        {
            "plugin": p["name"],
            "distribution": f"{p['distribution'] or '-'} {p['version'] or ''}".strip(),
            "status": p["status"],
            "detectors": ",".join(p["detectors"]) or "-",
            "engines": ",".join(p["engines"]) or "-",
            "error": p["error"] or "",
        }
        for p in plugins
    ]
    print(format_table(rows, columns=["plugin", "distribution", "status", "detectors", "engines",
                                      "error"]))
    return 0


def doctor_report() -> dict[str, Any]:
    """Versions, kernel backend, thread counts and CUDA status, as a dict."""
    import torch

    from .. import ops
    from ..bench.session import package_versions

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
        print_json(report)
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
    from ..registry import create

    detector = create(args.detector, **parse_params(args.param))
    if args.head_bias is not None and args.head_weight is None:
        raise CommandError("--head-bias needs --head-weight")
    head = None if args.head_weight is None else (
        read_array(args.head_weight), optional_array(args.head_bias))
    detector.fit(
        optional_array(args.features, args.key),
        optional_array(args.labels),
        optional_array(args.logits, args.logits_key),
        head=head,
    )
    if args.calibration_features or args.calibration_logits:
        detector.calibrate(
            optional_array(args.calibration_features, args.key),
            optional_array(args.calibration_logits, args.logits_key),
            alpha=args.alpha,
        )
    elif args.alpha is not None:
        raise CommandError("--alpha needs --calibration-features or --calibration-logits")
    detector.save(args.out)
    summary = {
        "detector": detector.name, "params": detector.get_params(),
        "threshold": detector.threshold_, "false_alarm_bound": detector.false_alarm_bound_,
        "n_features_in": detector.n_features_in_, "saved_to": str(args.out),
    }
    if args.json:
        print_json(summary)
    else:
        print(f"fitted {detector!r}; threshold {detector.threshold_}; saved to {args.out}")
        print(threshold_guarantee(detector))
    return 0


def threshold_guarantee(detector: Detector) -> str:
    """One line on the false-alarm rate ``detector``'s threshold guarantees, if any."""
    if detector.threshold_ is None:
        return "no threshold: fit on data or calibrate first"
    if detector.calibration_scores_ is None:
        return (
            "false-alarm rate: no guarantee; the threshold is an in-sample estimate on the fit "
            f"data (rejects about {1 - detector.target_tpr:.3g} of ID samples); fit with "
            "--calibration-features (and --alpha) for a guaranteed one"
        )
    n = detector.calibration_scores_.numel()
    return (
        f"false-alarm rate <= {detector.false_alarm_bound_:.4g}, guaranteed (split-conformal, "
        f"{n} calibration samples): the chance that an ID sample exchangeable with them is "
        "flagged as OOD"
    )


def scoring_detector(target: str, params: Sequence[str]) -> Detector:
    """The detector ``ood-zoo score TARGET`` scores with: the one saved in directory ``target``,
    else a new fit-free detector (``requires.fit`` False) of that registered name and ``params``.

    Raises
    ------
    CommandError
        For ``--param`` with a saved detector, a name that needs fitting, or an unknown name.
    """
    from ..registry import create, get_registry, load

    if Path(target).is_dir():
        if params:
            raise CommandError("--param is for a detector name; a saved detector keeps its own")
        return load(target)
    record = get_registry().detectors.get(target)
    if record is None:
        raise CommandError(
            f"{target!r} is neither a directory written by `ood-zoo fit` nor a registered "
            "detector (see `ood-zoo detectors`)"
        )
    if record.cls.requires.fit:
        raise CommandError(
            f"detector {target!r} needs fitting: run `ood-zoo fit {target} ... --out DIR`, then "
            "`ood-zoo score DIR`; only fit-free detectors are scored by name"
        )
    return create(target, **parse_params(params))


def cmd_score(args: argparse.Namespace) -> int:
    detector = scoring_detector(args.model, args.param)
    scores = to_numpy(detector.score(
        optional_array(args.features, args.key), optional_array(args.logits, args.logits_key)
    ))
    write_scores(Path(args.out), scores)
    summary = {
        "n": int(scores.size), "min": float(scores.min()), "mean": float(scores.mean()),
        "max": float(scores.max()), "threshold": detector.threshold_, "saved_to": args.out,
    }
    if detector.threshold_ is not None:
        summary["accepted_as_id"] = float((scores >= detector.threshold_).mean())
    summary["false_alarm_bound"] = detector.false_alarm_bound_
    if args.json:
        print_json({**summary, "guarantee": threshold_guarantee(detector)})
    else:
        print(" ".join(f"{k}={v}" for k, v in summary.items()))
        print(threshold_guarantee(detector))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..metrics import METRIC_NAMES, convention, evaluate, format_table

    if args.model is not None:
        if args.id_features is None and args.id_logits is None:
            raise CommandError("evaluate DIR needs --id-features/--ood-features (or logits)")
        from ..registry import load

        detector = load(args.model)
        id_scores = to_numpy(detector.score(
            optional_array(args.id_features, args.key),
            optional_array(args.id_logits, args.logits_key),
        ))
        ood_scores = to_numpy(detector.score(
            optional_array(args.ood_features, args.key),
            optional_array(args.ood_logits, args.logits_key),
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
    metrics = evaluate(id_scores, ood_scores, tpr=args.tpr, positive=args.positive)
    note = convention(args.positive, tpr=args.tpr)
    row = {"detector": name, "n_id": int(id_scores.size), "n_ood": int(ood_scores.size),
           **metrics, "convention": {"positive": args.positive, "note": note}}
    table = note + "\n" + format_table([row], columns=["detector", "n_id", "n_ood", *METRIC_NAMES])
    if args.out:
        out = Path(args.out)
        write_text(out / "metrics.json", json.dumps(row, indent=2) + "\n")
        write_text(out / "metrics.txt", table + "\n")
        if args.model is not None:
            write_scores(out / "id_scores.npy", id_scores)
            write_scores(out / "ood_scores.npy", ood_scores)
    if args.json:
        print_json(row)
    else:
        print(table)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..bench.demo import run_demo

    run_demo(n_bank=args.n_bank, n_test=args.n_test, seed=args.seed, out_dir=args.out)
    return 0


def _spec_listing(kind: str, args: argparse.Namespace, columns: Sequence[str]) -> int:
    from ..metrics import format_table
    from ..registry import get_registry

    registry = get_registry()
    records = [r.as_dict() for r in getattr(registry, kind).values()]
    if args.json:
        print_json(records)
        return 0
    print(format_table(records, columns=list(columns)))
    for name, plugins in registry.conflicts_of(kind).items():
        print(f"conflict: {name!r} is registered by {' and '.join(plugins)}", file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    return _spec_listing("models", args, ["name", "pooling", "max_length", "package", "plugin"])


def cmd_datasets(args: argparse.Namespace) -> int:
    return _spec_listing("datasets", args, ["name", "description", "plugin"])


def cmd_engines(args: argparse.Namespace) -> int:
    return _spec_listing("engines", args, ["name", "description", "package", "plugin"])


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the core commands to the ``ood-zoo`` sub-command parsers ``sub``."""

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
    fit.add_argument("--head-weight", help="linear head weight [C, d] mapping features to logits "
                     "(.npy; for vim, fdbd, nci)")
    fit.add_argument("--head-bias", help="linear head bias [C] (.npy; default zeros)")
    fit.add_argument("--calibration-features", help="held-out ID features for the threshold")
    fit.add_argument("--calibration-logits", help="held-out ID logits for the threshold")
    fit.add_argument("--alpha", type=float, help="with --calibration-*: a split-conformal "
                     "threshold, flagging an ID sample as OOD with probability <= ALPHA")
    fit.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="a hyperparameter (JSON value), repeatable")
    fit.add_argument("--out", required=True, help="directory to save the fitted detector in")
    with_keys(fit)
    fit.set_defaults(func=cmd_fit)

    score = with_json(sub.add_parser(
        "score", help="score features with a saved detector, or a fit-free one by name"))
    score.add_argument("model", help="directory written by `ood-zoo fit`, or the name of a "
                       "detector that needs no fit (msp, energy, ...)")
    score.add_argument("--features")
    score.add_argument("--logits")
    score.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="a hyperparameter of a detector given by name (JSON value), "
                       "repeatable")
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
    ev.add_argument("--tpr", type=float, default=0.95,
                    help="recall of the positive class for FPR95 (default 0.95)")
    # metrics.POSITIVE_CLASSES; the parser is built without importing torch
    ev.add_argument("--positive", choices=("id", "ood"), default="id",
                    help="positive class: id (ood_zoo's default; FPR95 = OOD accepted at 95%% ID "
                         "recall) or ood (OpenOOD v1.5 and pytorch-ood: ID flagged at 95%% OOD "
                         "recall)")
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
    with_json(sub.add_parser("engines", help="list registered execution engines (plugins)")
              ).set_defaults(func=cmd_engines)
