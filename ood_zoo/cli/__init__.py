"""The ``ood-zoo`` command line.

::

    ood-zoo detectors [--json]          registered detectors, their plugin, needs and params
    ood-zoo plugins [--json]            loaded, failed and blocked plugins
    ood-zoo doctor [--json]             versions, kernel backend, threads, CUDA
    ood-zoo fit NAME --features F [--labels L] [--logits Z] [--param k=v ...] --out DIR
    ood-zoo score DIR --features F [--logits Z] --out scores.npy
    ood-zoo score NAME --logits Z [--param k=v ...] --out scores.npy
                                        a fit-free detector (msp, energy, ...), no fit
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

The commands live in :mod:`.commands` (listings, doctor, fit/score/evaluate, demo) and
:mod:`.research` (bench, isotropy, report); each module adds its own sub-parsers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import OodZooError
from . import commands, research
from ._common import PROG, CommandError, read_array
from .commands import doctor_report

__all__ = ["PROG", "CommandError", "build_parser", "doctor_report", "main", "read_array"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``ood-zoo`` command; each sets ``func``, the function that runs it."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Out-of-distribution detectors for LLM hidden states.",
    )
    from ..version import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    commands.add_parsers(sub)
    research.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ood-zoo``; returns the exit status (2 on a user error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OodZooError, ValueError, TypeError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
