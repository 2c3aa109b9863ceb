"""The research wing's commands: ``bench`` (the zero-grad and fine-tuned suites), ``isotropy``
(the isotropy suite) and ``report`` (one HTML page of results)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ._common import CommandError

if TYPE_CHECKING:
    from ..bench.isotropy import IsotropyConfig

__all__ = ["add_parsers", "cmd_bench", "cmd_bench_fine_tuned", "cmd_isotropy", "cmd_report"]


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

    from ..bench.fine_tuned import (
        CPU_RECIPE,
        FineTunedBenchConfig,
        render_fine_tuned,
        run_fine_tuned,
        write_fine_tuned_outputs,
    )
    from ..finetune import TrainConfig

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
    from ..bench.suites import get_suite
    from ..bench.zero_grad import BenchConfig, render_tables, run_bench, write_outputs
    from ..registry import get_registry

    suite = get_suite(args.suite)  # unknown suite: ValueError, exit 2 before any work
    if not Path(args.model).is_dir() and args.model not in get_registry().models:
        raise CommandError(
            f"unknown model {args.model!r}: not a registered name "
            f"({', '.join(get_registry().models) or 'none'}) and not a local model directory"
        )
    if suite.name == "fine-tuned":
        if args.config != "paper":
            raise CommandError("--config auto is a zero-grad option; the fine-tuned suite runs "
                               "the paper's configuration")
        if args.engine is not None:
            raise CommandError("--engine runs the zero-grad suite's extraction; the fine-tuned "
                               "suite trains and extracts in this process")
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
        progress=not args.quiet, threads=args.threads, selection=args.config,
        engine=args.engine, workers=args.workers,
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


def _per_model(values: Sequence[str], names: Sequence[str], what: str) -> dict[str | None, str]:
    """``[MODEL=]VALUE`` options as ``{model or None (every model): value}``."""
    out: dict[str | None, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        target, text = (key, rest) if sep and key in names else (None, value)
        if target in out:
            raise CommandError(f"{what} given twice for {target or 'every model'}")
        out[target] = text
    return out


def _isotropy_config(args: argparse.Namespace) -> IsotropyConfig:
    """An :class:`~ood_zoo.bench.isotropy.IsotropyConfig` from parsed ``ood-zoo isotropy``
    options.

    Raises
    ------
    CommandError
        On an empty model list, an unknown model or corpus, or an option given twice.
    """
    from ..bench.isotropy import IsotropyConfig, ModelChoice, resolve_model
    from ..bench.suites import get_suite

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not names:
        raise CommandError("--models is empty")
    pooling = _per_model(args.pooling, names, "--pooling")
    template = _per_model(args.template, names, "--template")
    corpora = get_suite("zero-grad").corpora
    for option, key in (("--id", args.id), ("--ood", args.ood)):
        if key not in corpora:
            raise CommandError(f"{option}: unknown corpus {key!r}; choose from "
                               f"{', '.join(corpora)}")
    models = tuple(
        ModelChoice(n, pooling.get(n, pooling.get(None)), template.get(n, template.get(None)))
        for n in names
    )
    config = IsotropyConfig(
        models=models, id_corpus=args.id, ood_corpus=args.ood, n_bank=args.n_bank,
        n_test=args.n_test, n_ood=args.n_ood, seed=args.seed, max_length=args.max_length,
        batch_size=args.batch_size, cache=not args.no_cache, plots=not args.no_plots,
        progress=not args.quiet, threads=args.threads,
    )
    for model in models:
        try:
            resolve_model(model)
        except InputError as exc:
            raise CommandError(str(exc)) from None
    return config


def cmd_isotropy(args: argparse.Namespace) -> int:
    """``ood-zoo isotropy``: the study, its outputs, and the final-layer table on stdout."""
    from ..bench.isotropy import render_tables, run_study, write_outputs

    config = _isotropy_config(args)
    result = run_study(config)
    written = write_outputs(result, args.out)
    print(render_tables(result)[1])
    if "skipped" in written["plots"]:
        print(f"plots skipped: {written['plots']['skipped']}")
    print(f"total {result.meta['timing_s']['total_s']:.1f} s; wrote {len(written['files'])} "
          f"files to {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``ood-zoo report``: build the report and print the paths written."""
    from ..bench.report import build_report

    paths = build_report(args.results_dir, args.out)
    if args.json:
        print(json.dumps({"html": str(paths.html), "md": str(paths.md)}, indent=2))
    else:
        print(f"wrote {paths.html}\nwrote {paths.md}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``bench``, ``isotropy`` and ``report`` to the ``ood-zoo`` sub-command parsers
    ``sub``."""
    from ..bench.isotropy import DEFAULT_MODELS, DEFAULT_N
    from ..bench.zero_grad import DEFAULT_MAX_PER_SPLIT, SWEEP_DETECTORS

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
    bench.add_argument("--config", choices=["paper", "auto"], default="paper",
                       help="auto: also the configurations chosen from ID data alone (every "
                            "block layer aggregated; class-held-out CV) and the oracle layer, "
                            "which peeks (zero-grad; needs every hidden state)")
    bench.add_argument("--sweep-detectors", default=",".join(SWEEP_DETECTORS),
                       help=f"detectors of the layer sweep (default {','.join(SWEEP_DETECTORS)})")
    bench.add_argument("--datasets", help="restrict to settings among these corpora, e.g. rt,bbc")
    bench.add_argument("--no-cache", action="store_true", help="do not use the features cache")
    bench.add_argument("--no-plots", action="store_true", help="do not draw plots")
    bench.add_argument("--threads", type=int, help="torch threads (default OMP_NUM_THREADS or 2)")
    bench.add_argument("--engine", help="run the extraction on a registered engine "
                       "(ood-zoo engines, e.g. ray): the features of --threads 1 in process (one "
                       "thread per worker), no features cache")
    bench.add_argument("--workers", type=int, help="the engine's workers (ray: actors, one "
                       "model each; default the engine's)")
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

    iso = sub.add_parser(
        "isotropy", help="isotropy of models' embedding spaces per layer, against the "
        "cosine-vs-Euclidean/Mahalanobis AUROC gap")
    iso.add_argument("--models", default=",".join(DEFAULT_MODELS),
                     help="comma-separated registered models or local model directories "
                     f"(default {','.join(DEFAULT_MODELS)})")
    iso.add_argument("--pooling", action="append", default=[], metavar="[MODEL=]MODE",
                     help="pooling (last, mean, first) of every model, or of MODEL; "
                     "repeatable (default: each model's own)")
    iso.add_argument("--template", action="append", default=[], metavar="[MODEL=]TEXT",
                     help="prompt with {text} for every model, or for MODEL; '' for raw text; "
                     "repeatable (default: the paper's for SmolLM2/causal LMs, none for "
                     "encoders)")
    iso.add_argument("--id", default="rt", help="ID corpus of the zero-grad suite (default rt)")
    iso.add_argument("--ood", default="chitchat",
                     help="OOD corpus of the zero-grad suite (default chitchat)")
    iso.add_argument("--n-bank", type=int, default=DEFAULT_N,
                     help=f"ID bank texts (default {DEFAULT_N})")
    iso.add_argument("--n-test", type=int, default=DEFAULT_N,
                     help=f"ID test texts (default {DEFAULT_N})")
    iso.add_argument("--n-ood", type=int, default=DEFAULT_N,
                     help=f"OOD texts (default {DEFAULT_N})")
    iso.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    iso.add_argument("--max-length", type=int, default=128,
                     help="tokens per text, template included (default 128)")
    iso.add_argument("--batch-size", type=int, default=32)
    iso.add_argument("--out", default="results/isotropy",
                     help="results directory (default results/isotropy)")
    iso.add_argument("--no-cache", action="store_true", help="do not use the features cache")
    iso.add_argument("--no-plots", action="store_true", help="do not draw plots")
    iso.add_argument("--threads", type=int, help="torch threads (default OMP_NUM_THREADS or 2)")
    iso.add_argument("--quiet", action="store_true", help="no progress bars")
    iso.set_defaults(func=cmd_isotropy)

    report = sub.add_parser(
        "report", help="build one self-contained HTML page (and a Markdown twin) from results")
    report.add_argument("results_dir", metavar="RESULTS_DIR",
                        help="output of ood-zoo bench or of an isotropy study, or a parent "
                        "directory of several")
    report.add_argument("--out", help="directory for report.html and report.md "
                        "(default RESULTS_DIR)")
    report.add_argument("--json", action="store_true",
                        help="print the written paths as JSON")
    report.set_defaults(func=cmd_report)
