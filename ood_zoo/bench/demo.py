"""A small end-to-end evaluation on real text features, offline, in a minute or two on 2 cores.

In-distribution: Rotten Tomatoes critic snippets (fresh / rotten), a stand-in for SST-2. A seeded,
class-stratified split gives the fit set (the "bank") and a disjoint ID test set. OOD sets:

- ``chitchat`` (far-OOD): open-domain chat utterances;
- ``rt_plots`` (near-OOD): plot synopses of the same films, same topic but another genre.

Features come from all-MiniLM-L6-v2 (mean pooling, its native pooling, last layer), extracted
once. Logit detectors (MSP, MaxLogit, Energy) get the logits of a logistic-regression probe fit on
the bank, the head detectors (ViM, fDBD, NCI) its linear head. Every registered detector is fit
on the bank and scored; the table reports AUROC, FPR at 95% ID recall and AUPR-In/Out (ID is the
positive class, higher score = more ID).

This is a smoke-scale check of the whole pipeline, not a benchmark of the paper's LLMs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics
from ..data import chitchat, rotten_tomatoes, split, subsample
from ..features import extract, load_model, model_spec
from ..registry import get_registry
from .runner import (
    DetectorInputs,
    fit_probe,
    probe_head,
    probe_logits,
    run_detectors,
    usable_detectors,
)
from .session import RunSession
from .tables import POSITIVE, convention_record, json_bytes, write_files

__all__ = ["run_demo"]

TABLE_COLUMNS = ("ood_set", "detector", "auroc", "fpr95", "aupr_in", "aupr_out", "fit_s", "score_s")
RESULT_FILE = "demo.json"


def _sort_rows(rows: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """Group by OOD set (in ``order``), best AUROC first, error rows last."""
    return sorted(
        rows,
        key=lambda r: (
            order.index(r["ood_set"]),
            r["auroc"] is None,
            -(r["auroc"] or 0.0),
            r["detector"],
        ),
    )


def run_demo(
    *,
    n_bank: int = 1000,
    n_test: int = 500,
    seed: int = 0,
    model: str = "minilm",
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    pooling: str | None = None,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Evaluate every registered detector on MiniLM features of real text; print a table.

    Parameters
    ----------
    n_bank, n_test : int
        Sizes of the ID fit set and of each test set (ID, far-OOD and near-OOD). The near-OOD set
        holds at most ~1.1k synopses.
    seed : int
        Seed of every split and subsample.
    model : str
        A registered model name (``ood-zoo models``) or a local model directory.
    out_dir : path-like, optional
        If given, ``demo.json`` (rows, settings, versions, timings) is written there atomically.
    progress : bool
        Show progress bars during feature extraction.
    pooling : str, optional
        Default: the model's native pooling (``mean`` for MiniLM).
    batch_size : int
        Texts per forward pass.

    Returns
    -------
    list of dict
        One row per (OOD set, detector): ``ood_set``, ``detector``, ``auroc``, ``fpr95``,
        ``aupr_in``, ``aupr_out``, ``fit_s``, ``score_s`` and ``error`` (``None`` unless the
        detector raised; its metrics are then ``None``).

    Notes
    -----
    Torch runs with ``OMP_NUM_THREADS`` threads (2 if unset) and the previous setting is
    restored afterwards (:class:`~ood_zoo.bench.session.RunSession`). On a busy 2-core machine
    also set ``OMP_WAIT_POLICY=PASSIVE``: OpenMP spin-waiting can make 2-thread runs several
    times slower.
    """
    if n_bank < 2 or n_test < 1:
        raise ValueError(f"need n_bank >= 2 and n_test >= 1, got {n_bank} and {n_test}")
    with RunSession() as session:
        # Data: seeded, disjoint ID bank/test; OOD subsamples.
        with session.stage("data"):
            reviews = rotten_tomatoes()
            bank_set, test_set = split(reviews, [n_bank, n_test], seed=seed, stratify=True,
                                       names=["rt_bank", "rt_test"])
            ood_texts = {
                "chitchat": subsample(chitchat(), n_test, seed=seed),
                "rt_plots": subsample(rotten_tomatoes("plots"), n_test, seed=seed),
            }

        # Features: one model load, one pass per set.
        spec = model_spec(model)
        pooling = pooling or (spec.pooling if spec else "mean")
        max_length = spec.max_length if spec else 512
        with session.stage("load"):
            lm, tokenizer = load_model(model)
        with session.stage("extract"):
            bank_x, test_x, *ood_xs = (
                extract(texts, lm, tokenizer, layers=-1, pooling=pooling, batch_size=batch_size,
                        max_length=max_length, progress=progress).features
                for texts in (bank_set.texts, test_set.texts,
                              *(ts.texts for ts in ood_texts.values()))
            )

        # Probe logits for the logit detectors.
        with session.stage("probe"):
            probe = fit_probe(bank_x, bank_set.labels, seed=seed)
            probe_c = float(probe[-1].C)
            probe_accuracy = float(np.mean(probe.predict(test_x.double().numpy())
                                           == test_set.labels))
            bank = DetectorInputs(bank_x, probe_logits(probe, bank_x), bank_set.labels,
                                  head=probe_head(probe))
            id_test = DetectorInputs(test_x, probe_logits(probe, test_x))
            oods = {name: DetectorInputs(x, probe_logits(probe, x))
                    for name, x in zip(ood_texts, ood_xs, strict=True)}

        # Detectors.
        with session.stage("detectors"):
            registry = get_registry()
            _, skipped = usable_detectors(registry)
            rows = _sort_rows(run_detectors(bank, id_test, oods, registry=registry),
                              list(ood_texts))

    settings = {
        "n_bank": len(bank_set), "n_test": len(test_set),
        "n_ood": {name: len(ts) for name, ts in ood_texts.items()},
        "seed": seed, "model": str(model), "pooling": pooling, "layer": -1,
        "max_length": max_length, "batch_size": batch_size, "threads": session.threads,
        "id": "rotten_tomatoes fresh/rotten (stratified split)",
        "ood": {"chitchat": "far-OOD", "rt_plots": "near-OOD"},
        "probe": f"StandardScaler + LogisticRegression, C={probe_c:g} by 5-fold CV on the bank",
        "probe_c": probe_c,
        "probe_test_accuracy": probe_accuracy,
        "skipped_detectors": skipped,
        "sources": {ts.name: ts.source for ts in [reviews, *ood_texts.values()]},
        "licenses": {ts.name: ts.license for ts in [reviews, *ood_texts.values()]},
    }
    n_texts = len(bank_set) + len(test_set) + sum(len(ts) for ts in ood_texts.values())
    metadata = session.metadata()
    _report(rows, settings, metadata["timing_s"], n_texts)
    if out_dir is not None:
        payload = {
            "format": "ood_zoo.demo", "format_version": 1, "rows": rows,
            "convention": convention_record(), "settings": settings,
            "timing_s": metadata["timing_s"],
            "versions": metadata["versions"],
        }
        (written,) = write_files(Path(out_dir), {RESULT_FILE: json_bytes(payload)})
        print(f"wrote {written}")
    return rows


def _report(
    rows: list[dict[str, Any]], settings: dict[str, Any], timing: dict[str, float], n_texts: int
) -> None:
    out = sys.stdout
    print(
        f"ood_zoo demo: ID = Rotten Tomatoes fresh/rotten (bank {settings['n_bank']}, test "
        f"{settings['n_test']}); OOD = chitchat (far, {settings['n_ood']['chitchat']}), "
        f"rt_plots (near, {settings['n_ood']['rt_plots']})",
        file=out,
    )
    print(
        f"features: {settings['model']}, {settings['pooling']} pooling, last layer; "
        f"{n_texts} texts in {timing['extract_s']:.1f} s (+{timing['load_s']:.1f} s load); "
        f"probe (C={settings['probe_c']:g}) accuracy on ID test "
        f"{settings['probe_test_accuracy']:.3f}",
        file=out,
    )
    columns = list(TABLE_COLUMNS)
    if any(r["error"] for r in rows):
        columns.append("error")
    print(metrics.convention(POSITIVE), file=out)
    print(metrics.format_table(rows, columns), file=out)
    if settings["skipped_detectors"]:
        skipped = ", ".join(f"{k} ({v})" for k, v in settings["skipped_detectors"].items())
        print(f"skipped: {skipped}", file=out)
    print(f"total {timing['total_s']:.1f} s with {settings['threads']} torch threads", file=out)
