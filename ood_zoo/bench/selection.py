"""Zero-grad configurations: the paper's, two chosen from ID data alone, and a peeking oracle.

``ood-zoo bench --suite zero-grad --config auto`` compares, per setting,

``paper``
    Liu et al.'s protocol: ``cosine`` on the last layer's last-token feature (the main table's
    ``cosine`` row).
``auto`` (:func:`auto_configuration`)
    Needs no choice at all: the ``layers`` detector with ``cosine`` on *every block output*
    (hidden states ``1 .. L-1``; the embedding output is left out, since with last-token pooling
    it is the embedding of the template's last token, the same for every text), the per-layer
    scores combined by Fisher's method with Brown's correction. The pooling is the model's
    default (last token for decoders). Nothing here is fitted to the task beyond the bank
    itself.
``auto_cv`` (:func:`select_by_class_holdout`)
    A selector in the usual sense: class-held-out cross-validation on the bank picks one of the
    candidates (:func:`candidate_configurations`: cosine on each block layer, and the two
    aggregations) by the mean AUROC of "one ID class plays OOD" (:func:`class_holdout_auroc`).
``oracle_layer`` (:func:`oracle_rows`)
    The single best layer of the cosine layer sweep *per setting*, chosen on the OOD test
    data: it peeks, and is labelled so. It bounds what any single-layer choice can reach.

``auto`` and ``auto_cv`` never see an OOD sample, nor the ID test split: only the bank and its
labels. What each measured, and where the goal holds, is in the README (zero-grad section).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .. import metrics
from ..registry import Registry
from .pools import MakeInputs, Task
from .runner import DetectorChoice, DetectorInputs, run_detectors

__all__ = [
    "AUTO",
    "AUTO_CV",
    "ORACLE",
    "Configuration",
    "auto_configuration",
    "candidate_configurations",
    "class_holdout_auroc",
    "configurations_table",
    "oracle_rows",
    "run_configurations",
    "select_by_class_holdout",
]

#: Row names of the configurations in the results.
AUTO, AUTO_CV, ORACLE = "auto", "auto_cv", "oracle_layer (peeks at OOD)"


@dataclass(frozen=True)
class Configuration:
    """A registered detector, its hyperparameters and the hidden states it reads.

    Attributes
    ----------
    label : str
        How the configuration is named in tables (``"cosine@L22"``, ``"layers:fisher"``).
    detector : str
        A registered detector name.
    layers : tuple of int
        The hidden-state indices it reads: one for a plain feature detector (``[n, d]``), several
        for a layered one (``[n, k, d]``).
    params : mapping
        The detector's hyperparameters.
    """

    label: str
    detector: str
    layers: tuple[int, ...]
    params: Mapping[str, Any] = field(default_factory=dict)

    def features(self, extraction_features: torch.Tensor) -> torch.Tensor:
        """This configuration's input from all-layer features ``[n, L, d]``."""
        if len(self.layers) == 1:
            return extraction_features[:, self.layers[0]]
        return extraction_features[:, list(self.layers)]

    def choice(self, label: str) -> DetectorChoice:
        """The runner's choice of this configuration, its rows named ``label``."""
        return DetectorChoice(label, self.detector, self.params)

    def inputs(self, inputs: DetectorInputs) -> DetectorInputs:
        """``inputs`` of all-layer features cut to this configuration's layers."""
        return replace(inputs, features=self.features(inputs.features))


def _block_layers(n_states: int) -> tuple[int, ...]:
    """Every block output: hidden states ``1 .. n_states - 1`` (all of them if there is one)."""
    return tuple(range(1, n_states)) if n_states > 1 else (0,)


def auto_configuration(n_states: int, combine: str = "fisher") -> Configuration:
    """``layers`` with ``cosine`` on every block output, combined by ``combine``."""
    return Configuration(f"layers:{combine}", "layers", _block_layers(n_states),
                         {"detector": "cosine", "combine": combine})


def candidate_configurations(n_states: int) -> list[Configuration]:
    """What :func:`select_by_class_holdout` chooses from: the two aggregations (Fisher, mean)
    over every block output, then ``cosine`` on each single block output."""
    return [auto_configuration(n_states, "fisher"), auto_configuration(n_states, "mean"),
            *(Configuration(f"cosine@L{layer}", "cosine", (layer,))
              for layer in _block_layers(n_states))]


def class_holdout_auroc(
    configuration: Configuration, features: torch.Tensor, labels: np.ndarray,
    registry: Registry, *, seed: int = 0,
) -> float | None:
    """Mean AUROC of "one ID class plays OOD", on the bank alone.

    For each class ``c`` of ``labels``, the other classes' rows are split in two halves (seeded);
    the detector is fit on one half and scores the other half (pseudo-ID) against the rows of
    ``c`` (pseudo-OOD), then the halves swap. The result is the mean of those AUROCs over classes
    and halves, or ``None`` with fewer than two classes or too few rows (a half needs two).

    Parameters
    ----------
    configuration : Configuration
    features : torch.Tensor
        All-layer bank features ``[n, L, d]``.
    labels : numpy.ndarray
        ``[n]`` bank class labels.
    registry : Registry
        Where the detector comes from.
    seed : int
        Seeds the halves.
    """
    x = configuration.features(features)
    classes = np.unique(labels)
    if classes.size < 2:
        return None
    rng = np.random.default_rng(seed)
    found = []
    for held_out in classes:
        rest = np.flatnonzero(labels != held_out)
        if rest.size < 4:
            continue
        rest = rng.permutation(rest)
        halves = (rest[: rest.size // 2], rest[rest.size // 2 :])
        for fit_rows, id_rows in (halves, halves[::-1]):
            detector = registry.create(configuration.detector, **configuration.params)
            detector.fit(x[torch.as_tensor(fit_rows)], labels=labels[fit_rows])
            found.append(metrics.auroc(detector.score(x[torch.as_tensor(id_rows)]),
                                       detector.score(x[torch.as_tensor(labels == held_out)])))
    return float(np.mean(found)) if found else None


def select_by_class_holdout(
    candidates: Sequence[Configuration], features: torch.Tensor, labels: np.ndarray,
    registry: Registry, *, seed: int = 0,
) -> tuple[Configuration, dict[str, float | None]]:
    """The candidate with the best :func:`class_holdout_auroc` (the first on ties), and every
    candidate's value; the first candidate when none can be cross-validated."""
    values = {c.label: class_holdout_auroc(c, features, labels, registry, seed=seed)
              for c in candidates}
    scored = [c for c in candidates if values[c.label] is not None]
    if not scored:
        return candidates[0], values
    return max(scored, key=lambda c: values[c.label]), values


def oracle_rows(sweep_table: Sequence[Mapping[str, Any]], detector: str = "cosine",
                ) -> list[dict[str, Any]]:
    """Per setting, the layer-sweep row of ``detector`` with the best mean AUROC, renamed
    :data:`ORACLE` (it chose its layer on the OOD test data)."""
    best: dict[str, Mapping[str, Any]] = {}
    for row in sweep_table:
        if row["detector"] != detector or row.get("auroc") is None:
            continue
        current = best.get(row["setting"])
        if current is None or row["auroc"] > current["auroc"]:
            best[row["setting"]] = row
    return [{**row, "detector": ORACLE, "chosen": f"{detector}@L{row['layer']}"}
            for row in best.values()]


def run_configurations(
    task: Task, make: MakeInputs, registry: Registry, n_states: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Fit and evaluate :data:`AUTO` and :data:`AUTO_CV` on one task.

    Parameters
    ----------
    task : Task
        One seed's ID task.
    make : callable
        ``make(pool_key, rows)``: the :class:`~.runner.DetectorInputs` of those rows with
        *all-layer* features ``[n, n_states, d]``.
    registry : Registry
    n_states : int
        Hidden states per text.

    Returns
    -------
    (rows, choice)
        The runner's rows (:func:`~.runner.run_detectors`) of both configurations, and what was
        chosen: ``{"seed", "id", "holdout", "auto", "auto_cv", "class_holdout_auroc"}``.
    """
    bank, id_test, oods = task.inputs(make)
    auto = auto_configuration(n_states)
    chosen, values = select_by_class_holdout(candidate_configurations(n_states), bank.features,
                                             bank.labels, registry, seed=task.seed)
    rows = []
    for label, configuration in ((AUTO, auto), (AUTO_CV, chosen)):
        rows += run_detectors(configuration.inputs(bank), configuration.inputs(id_test),
                              {k: configuration.inputs(v) for k, v in oods.items()},
                              registry=registry, detectors=[configuration.choice(label)])
    choice = {"seed": task.seed, "id": task.id_corpus, "holdout": task.holdout,
              "auto": auto.label, "auto_cv": chosen.label, "class_holdout_auroc": values}
    return rows, choice


def configurations_table(
    table: Sequence[Mapping[str, Any]], oracle: Sequence[Mapping[str, Any]],
    paper: str = "cosine",
) -> list[dict[str, Any]]:
    """One row per setting: the AUROC of the paper's ``paper`` row, :data:`AUTO` and
    :data:`AUTO_CV` from an aggregated table, and of the ``oracle`` rows (:func:`oracle_rows`,
    kept apart from the table: they peek) with their layer."""
    columns = {paper: "paper", AUTO: "auto", AUTO_CV: "auto_cv", ORACLE: "oracle"}
    out: dict[str, dict[str, Any]] = {}
    for row in [*table, *oracle]:
        if row["detector"] not in columns:
            continue
        entry = out.setdefault(row["setting"], {"setting": row["setting"], "kind": row["kind"]})
        entry[columns[row["detector"]]] = row.get("auroc_pm") or row.get("auroc")
        if row["detector"] == ORACLE:
            entry["oracle_layer"] = row.get("chosen")
    return list(out.values())
