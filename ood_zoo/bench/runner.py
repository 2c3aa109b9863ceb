"""Run every registered detector on precomputed features: fit once, score ID and OOD sets.

This is the benchmark core shared by the demo and the suites: it takes plain tensors (features,
logits, labels, language-model statistics; a :class:`DetectorInputs` per set, cut from an
:class:`~ood_zoo.features.Extraction`) and never loads a model. A detector that raises is
reported as an error row and never stops the others.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import metrics
from ..features import NEXT_TOKEN_STATS
from ..registry import Registry, get_registry

__all__ = [
    "MSP_VOCAB",
    "PROBE_CS",
    "ROW_COLUMNS",
    "DetectorChoice",
    "DetectorInputs",
    "fit_probe",
    "probe_head",
    "probe_logits",
    "run_detectors",
    "run_msp_vocab",
    "usable_detectors",
]

#: The keys of a result row, in table order (``error`` is ``None`` on success).
ROW_COLUMNS = (
    "ood_set", "detector", "auroc", "fpr95", "aupr_in", "aupr_out", "fit_s", "score_s", "error",
)
_METRIC_KEYS = ("auroc", "fpr95", "aupr_in", "aupr_out")
#: The row name of the paper's full-vocabulary MSP (:func:`run_msp_vocab`).
MSP_VOCAB = "msp_vocab"
#: ``on_scores(detector, ood_set, id_scores, ood_scores)``, the scores as numpy arrays.
OnScores = Callable[[str, str, np.ndarray, np.ndarray], None]


@dataclass(frozen=True)
class DetectorInputs:
    """What a detector is fit or scored on for one set of texts.

    Attributes
    ----------
    features : torch.Tensor
        ``[n, d]`` features of one layer (:meth:`ood_zoo.features.Extraction.layer`).
    logits : torch.Tensor or None
        ``[n, C]`` class logits: label-token logits of an LM, their vocabulary log-probabilities,
        a probe's or a classification head's.
    labels : numpy.ndarray or None
        ``[n]`` integer class labels (the fit set only).
    lm_stats : torch.Tensor or None
        ``[n, len(lm_columns)]`` per-text language-model statistics. A detector that needs the
        language model (``requires.language_model``) gets the columns named in its
        ``stats_columns`` as its ``features`` (:meth:`lm_features`).
    lm_columns : tuple of str
        The names of ``lm_stats``' columns: :data:`~ood_zoo.features.NEXT_TOKEN_STATS` (what
        ``extract(lm_stats=True)`` gives), or e.g. ``RATIO_STATS`` for
        :func:`~ood_zoo.features.likelihood_ratio_inputs`.
    head : tuple of torch.Tensor or None
        ``(weight [C, d], bias [C])``, the linear head mapping ``features`` to ``logits``
        (:meth:`ood_zoo.features.Extraction.label_head`, :func:`probe_head`), for the
        detectors with ``requires.head``; the fit set's is the one used.
    """

    features: torch.Tensor
    logits: torch.Tensor | None = None
    labels: np.ndarray | None = None
    lm_stats: torch.Tensor | None = None
    lm_columns: tuple[str, ...] = NEXT_TOKEN_STATS
    head: tuple[torch.Tensor, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.lm_stats is not None and (
                self.lm_stats.dim() != 2 or self.lm_stats.shape[1] != len(self.lm_columns)):
            raise ValueError(f"lm_stats of shape {tuple(self.lm_stats.shape)} do not have the "
                             f"{len(self.lm_columns)} columns {self.lm_columns}")

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def lm_features(self, columns: Sequence[str]) -> torch.Tensor:
        """The ``lm_stats`` columns named ``columns``, in that order (all of them if empty)."""
        if self.lm_stats is None:
            raise ValueError("these inputs have no language-model statistics")
        missing = [c for c in columns if c not in self.lm_columns]
        if missing:
            raise ValueError(f"lm_stats have no column {missing[0]!r}; they have "
                             f"{self.lm_columns}")
        if not columns or tuple(columns) == self.lm_columns:
            return self.lm_stats
        return self.lm_stats[:, [self.lm_columns.index(c) for c in columns]]


@dataclass(frozen=True)
class DetectorChoice:
    """A registered detector with hyperparameters, reported under its own row name.

    Attributes
    ----------
    label : str
        The ``detector`` value of its result rows (``"auto"``, ``"msp_vocab"``).
    name : str
        The registered detector.
    params : mapping
        Its hyperparameters (default: its declared defaults).
    """

    label: str
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, detector: str | DetectorChoice) -> DetectorChoice:
        """``detector`` itself, or a registered name with its defaults under its own name."""
        return detector if isinstance(detector, DetectorChoice) else cls(detector, detector)


#: The inverse L2 strengths :func:`fit_probe` chooses from.
PROBE_CS = (1e-3, 1e-2, 1e-1, 1.0)


def fit_probe(
    features: torch.Tensor, labels: np.ndarray, *, cs: Sequence[float] = PROBE_CS, seed: int = 0
):
    """A standardised logistic-regression probe, its L2 strength chosen on the fit data only.

    ``StandardScaler`` then ``LogisticRegression(C)``, with ``C`` from ``cs`` maximising the
    stratified 5-fold cross-validated log-likelihood (fewer folds for tiny classes; ``cs[-1]``
    when a class has a single sample), then refit on all of the data. No test or OOD data is
    seen.

    Returns
    -------
    sklearn.pipeline.Pipeline
        The fitted probe; its last step's ``C`` is the chosen strength.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def probe(c: float):
        head = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        return make_pipeline(StandardScaler(), head)

    x, y = np.asarray(features, dtype=np.float64), np.asarray(labels)
    counts = np.unique(y, return_counts=True)[1]
    folds = min(5, int(counts.min())) if counts.size else 0
    best = cs[-1]
    if folds >= 2 and len(cs) > 1:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        scores = [cross_val_score(probe(c), x, y, cv=cv, scoring="neg_log_loss").mean()
                  for c in cs]
        best = cs[int(np.argmax(scores))]
    return probe(best).fit(x, y)


def probe_logits(probe: Any, features: torch.Tensor) -> torch.Tensor:
    """Class logits ``[n, C]`` of a fitted sklearn linear classifier, as float32.

    For ``C = 2`` sklearn gives one margin ``m``; the logits are ``[0, m]``, so that their softmax
    equals ``predict_proba``. For ``C > 2`` (multinomial) ``decision_function`` already is the
    logit matrix.
    """
    margin = probe.decision_function(np.asarray(features, dtype=np.float64))
    margin = np.asarray(margin, dtype=np.float64)
    if margin.ndim == 1:
        margin = np.stack([np.zeros_like(margin), margin], axis=1)
    return torch.from_numpy(margin).float()


def probe_head(probe: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear head ``(weight [C, d], bias [C])`` of a :func:`fit_probe` pipeline on the raw
    features, float32: :func:`probe_logits` is ``x Wᵀ + b``.

    The ``StandardScaler`` is folded in exactly: with coefficients ``A`` and intercepts ``c`` on
    the standardised features ``(x - m) / s``, ``W = A / s`` and ``b = c - W m``. For ``C = 2``
    the rows are ``[0, W]`` and ``[0, b]``, matching :func:`probe_logits`'s ``[0, margin]``.
    """
    scaler, head = probe[0], probe[-1]
    weight = np.asarray(head.coef_, dtype=np.float64) / np.asarray(scaler.scale_, np.float64)
    bias = np.asarray(head.intercept_, dtype=np.float64) - weight @ np.asarray(scaler.mean_)
    if weight.shape[0] == 1:
        weight = np.concatenate([np.zeros_like(weight), weight])
        bias = np.concatenate([np.zeros_like(bias), bias])
    return torch.from_numpy(weight).float(), torch.from_numpy(bias).float()


def usable_detectors(
    registry: Registry | None = None, names: Sequence[str] | None = None,
    lm_columns: Sequence[str] | None = None, *, layered: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """The detectors a runner can feed, and those it skips with the reason.

    Detectors on per-layer features (``requires.layered``) are usable only on ``layered``
    (``[n, L, d]``) features, and feature detectors only on ``[n, d]`` ones.

    Detectors that need the language model itself (``requires.language_model``) are usable
    only with ``lm_columns``, the column names of the runner's language-model statistics
    (:attr:`DetectorInputs.lm_columns`), and only if these include every column they declare
    in ``stats_columns`` (a detector that declares none gets all of them).
    """
    registry = registry or get_registry()
    records = registry.detectors
    chosen = list(records) if names is None else list(names)
    usable, skipped = [], {}
    for name in chosen:
        record = records.get(name)
        columns = getattr(record.cls, "stats_columns", None) if record is not None else None
        if record is None:
            skipped[name] = "not registered"
        elif record.cls.requires.layered and not layered:
            skipped[name] = "needs per-layer features [n, L, d]"
        elif layered and record.cls.requires.features and not record.cls.requires.layered:
            skipped[name] = "takes one layer's features [n, d]; these are [n, L, d]"
        elif record.cls.requires.language_model and lm_columns is None:
            skipped[name] = "needs the language model itself"
        elif record.cls.requires.language_model and columns and not set(columns) <= set(
                lm_columns):
            skipped[name] = (
                f"takes [n, {len(columns)}] language-model statistics ({', '.join(columns)}); "
                f"this run has [n, {len(lm_columns)}] ({', '.join(lm_columns)})"
            )
        else:
            usable.append(name)
    return usable, skipped


def _features(inputs: DetectorInputs, cls: type) -> torch.Tensor | None:
    """What a detector gets as ``features``: its LM statistics if it needs the language model."""
    if cls.requires.language_model:
        return inputs.lm_features(getattr(cls, "stats_columns", ()))
    return inputs.features


def _numpy(scores: Any) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        return scores.detach().float().cpu().numpy()
    return np.asarray(scores, dtype=np.float64)


def _error(exc: BaseException, stage: str) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{stage}: {type(exc).__name__}: {exc}{where}"


def run_detectors(
    bank: DetectorInputs,
    id_test: DetectorInputs,
    ood_sets: Mapping[str, DetectorInputs],
    *,
    registry: Registry | None = None,
    detectors: Sequence[str | DetectorChoice] | None = None,
    on_scores: OnScores | None = None,
) -> list[dict[str, Any]]:
    """Fit each detector on ``bank`` and evaluate it on ``id_test`` against each OOD set.

    Every detector gets the same inputs: features, labels, logits and the linear head (it uses
    what its ``requires`` declares) and its default hyperparameters, or those of its
    :class:`DetectorChoice`. Detectors that need the
    language model get the columns of the sets' ``lm_stats`` that they name in
    ``stats_columns`` as features; without statistics (in any set) or those columns they are
    skipped.

    Parameters
    ----------
    bank, id_test : DetectorInputs
        The fit set (with labels) and the ID test set.
    ood_sets : mapping of str to DetectorInputs
        Each is evaluated on its own against ``id_test``; the key names it in the rows.
    registry : Registry, optional
        Default :func:`~ood_zoo.registry.get_registry`.
    detectors : sequence of str or DetectorChoice, optional
        Detector names or choices; default every registered one that these sets can feed
        (:func:`usable_detectors`: per-layer features ``[n, L, d]`` feed the layered detectors
        only).
    on_scores : callable, optional
        ``on_scores(detector, ood_name, id_scores, ood_scores)`` with the scores as numpy arrays,
        after each successful evaluation, e.g. to keep scores for plots.

    Returns
    -------
    list of dict
        One row per (OOD set, detector) with the keys :data:`ROW_COLUMNS`: the metrics of
        :func:`ood_zoo.metrics.evaluate`, ``fit_s`` (seconds to fit), ``score_s`` (seconds to
        score the ID test set and that OOD set) and ``error`` (``None``, or the message of the
        exception that stopped this detector; its metrics are then ``None``).
    """
    registry = registry or get_registry()
    sets = (bank, id_test, *ood_sets.values())
    layouts = {s.lm_columns for s in sets if s.lm_stats is not None}
    if len(layouts) > 1:
        raise ValueError(f"the sets' lm_stats have different columns: {sorted(layouts)}")
    lm_columns = None if any(s.lm_stats is None for s in sets) else bank.lm_columns
    layered = bank.features.dim() == 3
    if detectors is None:
        choices = [DetectorChoice.of(n) for n in usable_detectors(
            registry, None, lm_columns, layered=layered)[0]]
    else:
        choices = [DetectorChoice.of(d) for d in detectors]
        usable = set(usable_detectors(registry, [c.name for c in choices], lm_columns,
                                      layered=layered)[0])
        choices = [c for c in choices if c.name in usable]
    rows: list[dict[str, Any]] = []
    for choice in choices:
        name = choice.label
        fit_s: float | None = None
        id_scores = None
        id_s = 0.0
        failure: str | None = None
        cls = registry.get(choice.name).cls
        try:
            detector = registry.create(choice.name, **choice.params)
            start = time.perf_counter()
            detector.fit(_features(bank, cls), labels=bank.labels, logits=bank.logits,
                         head=bank.head)
            fit_s = time.perf_counter() - start
        except Exception as exc:
            failure = _error(exc, "fit")
        if failure is None:
            try:
                start = time.perf_counter()
                id_scores = detector.score(_features(id_test, cls), logits=id_test.logits)
                id_s = time.perf_counter() - start
            except Exception as exc:
                failure = _error(exc, "score ID")
        for ood_name, ood in ood_sets.items():
            row: dict[str, Any] = dict.fromkeys(ROW_COLUMNS)
            row.update(ood_set=ood_name, detector=name, fit_s=fit_s, error=failure)
            if failure is None:
                try:
                    start = time.perf_counter()
                    ood_scores = detector.score(_features(ood, cls), logits=ood.logits)
                    row["score_s"] = id_s + time.perf_counter() - start
                    result = metrics.evaluate(id_scores, ood_scores)
                    row.update({key: result[key] for key in _METRIC_KEYS})
                    if on_scores is not None:
                        on_scores(name, ood_name, _numpy(id_scores), _numpy(ood_scores))
                except Exception as exc:
                    row["error"] = _error(exc, f"score {ood_name}")
            rows.append(row)
    return rows


def run_msp_vocab(
    bank: DetectorInputs,
    id_test: DetectorInputs,
    ood_sets: Mapping[str, DetectorInputs],
    *,
    registry: Registry | None = None,
    on_scores: OnScores | None = None,
) -> list[dict[str, Any]]:
    """The paper's MSP, as rows named :data:`MSP_VOCAB`; none without ``maxlogit``.

    The paper takes the softmax over the whole vocabulary and the max over the label tokens,
    not renormalised. Given the label tokens' vocabulary log-probabilities as ``logits``
    (:meth:`ood_zoo.features.Extraction.label_log_probs`), the ``maxlogit`` detector scores
    the log of that MSP: the same AUROC, FPR95 and AUPR.
    """
    registry = registry or get_registry()
    if "maxlogit" not in registry.detectors:
        return []
    return run_detectors(bank, id_test, ood_sets, registry=registry,
                         detectors=[DetectorChoice(MSP_VOCAB, "maxlogit")], on_scores=on_scores)
