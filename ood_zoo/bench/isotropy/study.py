"""The isotropy study (``ood-zoo isotropy``): is an isotropic embedding space why cosine works?

Liu et al., "How Good Are LLMs at Out-of-Distribution Detection?" (LREC-COLING 2024) explain the
strength of the cosine detector on LLM hidden states by their isotropy, against the anisotropy of
BERT-family encoders. This study puts numbers on both halves of that claim, per model and layer:

1. **Isotropy** of the ID bank: every measure of :mod:`ood_zoo.analysis.isotropy`.
2. **Detection**: the AUROC (ID positive) of cosine 1-NN (the paper's detector, ``cosine``),
   Euclidean 1-NN on the raw, unnormalised vectors (``knn`` with ``k=1, normalize=False``) and
   Mahalanobis (``mahalanobis``, class-conditional on the ID labels, one shared covariance), and
   the gaps ``cosine - euclidean`` and ``cosine - mahalanobis``.
3. **Relation**: the Spearman correlation between each measure and each gap, over every
   (model, layer) row and within each model over its layers.

Texts come from the corpora of the ``zero-grad`` suite (:mod:`ood_zoo.bench.suites`): a seeded,
class-stratified ID bank and an ID test part of about the same size from ``--id`` (default ``rt``,
Rotten Tomatoes reviews) and an OOD sample from ``--ood`` (default ``chitchat``). Each model runs
once per corpus (:func:`ood_zoo.features.extract` with ``layers="all"``, cached on disk).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import metrics
from ...analysis import MEASURES, isotropy_measures
from ...errors import InputError
from ..session import RunSession
from ..tables import jsonable

__all__ = [
    "CORRELATED",
    "DEFAULT_MODELS",
    "DEFAULT_N",
    "DETECTORS",
    "GAPS",
    "ROW_COLUMNS",
    "SHORT_NAMES",
    "IsotropyConfig",
    "ModelChoice",
    "ResolvedModel",
    "StudyResult",
    "StudyTexts",
    "correlations",
    "draw_texts",
    "layer_row",
    "resolve_model",
    "run_study",
]

#: The models compared by default: a LLaMA-architecture decoder and a BERT encoder.
DEFAULT_MODELS = ("smollm2-135m", "minilm")
#: Texts per part by default (bank, ID test, OOD), sized for both default models to take under
#: about 3 minutes on 2 CPU cores with a cold features cache.
DEFAULT_N = 150
#: The detectors compared: row label → (registered detector, hyperparameters).
DETECTORS: Mapping[str, tuple[str, Mapping[str, Any]]] = {
    "cosine": ("cosine", {}),
    "euclidean": ("knn", {"k": 1, "metric": "l2", "normalize": False}),
    "mahalanobis": ("mahalanobis", {}),
}
#: The AUROC gaps: column → (minuend, subtrahend) detector labels.
GAPS: Mapping[str, tuple[str, str]] = {
    "gap_cos_euclid": ("cosine", "euclidean"),
    "gap_cos_maha": ("cosine", "mahalanobis"),
}
#: Measures correlated with the gaps (``log_partition_isotropy`` stands for the partition
#: isotropy: same ranks, but no underflow to 0).
CORRELATED = ("average_cosine", "log_partition_isotropy", "isoscore", "top1_variance",
              "top10_variance")
ROW_COLUMNS = (
    "model", "layer", "depth", "n", "dim", "average_cosine", "partition_isotropy",
    "log_partition_isotropy", "isoscore", "top1_variance", "top10_variance", "auroc_cosine",
    "auroc_euclidean", "auroc_mahalanobis", "gap_cos_euclid", "gap_cos_maha", "note",
)
#: Short column names of the tables and plot legends.
SHORT_NAMES = {
    "average_cosine": "avg_cos", "partition_isotropy": "I(V)", "log_partition_isotropy": "log I",
    "isoscore": "IsoScore", "top1_variance": "top1_var", "top10_variance": "top10_var",
    "auroc_cosine": "AUROC cos", "auroc_euclidean": "AUROC L2", "auroc_mahalanobis": "AUROC maha",
    "gap_cos_euclid": "cos-L2", "gap_cos_maha": "cos-maha",
}


# ---------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class ModelChoice:
    """A model of the study and how its texts become vectors.

    Attributes
    ----------
    name : str
        A registered model name (``ood-zoo models``) or a local model directory.
    pooling : str, optional
        Default: the registered model's own (``model_spec(name).pooling``); for a directory,
        ``last`` for a causal LM and ``mean`` otherwise.
    template : str, optional
        A prompt with ``{text}``. Default: the registered model's (the paper's for SmolLM2,
        none for MiniLM); for a directory, the paper's for a causal LM. ``""`` forces raw text.
    """

    name: str
    pooling: str | None = None
    template: str | None = None


@dataclass(frozen=True)
class IsotropyConfig:
    """Everything that defines a study run (stored in ``isotropy.json``).

    Attributes
    ----------
    models : tuple of ModelChoice
    id_corpus, ood_corpus : str
        Corpus keys of the ``zero-grad`` suite.
    n_bank, n_test, n_ood : int
        Texts in the ID bank (isotropy is measured on it, detectors are fit on it), the ID test
        part and the OOD sample; scaled down when a corpus is smaller.
    seed : int
        Seed of the draws.
    max_length, batch_size : int
        Tokens per text (template included) and texts per forward pass.
    cache : bool or str
        The features cache: on, off, or a directory.
    plots, progress : bool
    threads : int, optional
        Torch threads; default ``OMP_NUM_THREADS`` or 2.
    """

    models: tuple[ModelChoice, ...] = tuple(ModelChoice(m) for m in DEFAULT_MODELS)
    id_corpus: str = "rt"
    ood_corpus: str = "chitchat"
    n_bank: int = DEFAULT_N
    n_test: int = DEFAULT_N
    n_ood: int = DEFAULT_N
    seed: int = 0
    max_length: int = 128
    batch_size: int = 32
    cache: bool | str = True
    plots: bool = True
    progress: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise InputError("give at least one model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise InputError(f"models must be distinct, got {names}")
        for n, what in ((self.n_bank, "n_bank"), (self.n_test, "n_test"), (self.n_ood, "n_ood")):
            if n < 2:
                raise InputError(f"{what} must be >= 2, got {n}")
        if self.id_corpus == self.ood_corpus:
            raise InputError(f"the ID and OOD corpora must differ, got {self.id_corpus!r} twice")
        if self.max_length < 8:
            raise InputError(f"max_length must be >= 8, got {self.max_length}")
        for m in self.models:
            if m.template and "{text}" not in m.template:
                raise InputError(f"{m.name}: template must contain the field {{text}}")


@dataclass(frozen=True)
class ResolvedModel:
    """A :class:`ModelChoice` with its defaults filled in."""

    name: str
    kind: str
    pooling: str
    template: str | None


def resolve_model(choice: ModelChoice) -> ResolvedModel:
    """Fill in a model's pooling and template defaults without loading it.

    Raises
    ------
    InputError
        If the name is neither registered nor a local directory, or the pooling is unknown.
    """
    from ...features import (
        POOLING_MODES,
        default_pooling,
        default_template,
        is_causal_lm,
        model_spec,
    )

    spec = model_spec(choice.name)
    if spec is not None:
        kind, pooling, template = spec.kind, spec.pooling, spec.template
    elif Path(choice.name).is_dir():
        directory = Path(choice.name)
        kind = "decoder" if is_causal_lm(directory) else "encoder"
        pooling, template = default_pooling(directory), default_template(directory)
    else:
        from ...registry import get_registry

        raise InputError(
            f"unknown model {choice.name!r}: not a registered name "
            f"({', '.join(get_registry().models) or 'none'}) and not a local model directory"
        )
    pooling = choice.pooling or pooling
    if pooling not in POOLING_MODES:
        raise InputError(f"{choice.name}: unknown pooling {pooling!r}; choose one of "
                         f"{list(POOLING_MODES)}")
    if choice.template is not None:
        template = choice.template or None
    return ResolvedModel(choice.name, kind, pooling, template)


# ---------------------------------------------------------------------------- data
@dataclass(frozen=True)
class StudyTexts:
    """The study's texts: ID bank then ID test (one list, one extraction), and the OOD sample."""

    id_texts: list[str]
    bank_labels: np.ndarray
    n_bank: int
    ood_texts: list[str]
    descriptions: dict[str, str]


def draw_texts(config: IsotropyConfig, corpora: Mapping[str, Any]) -> StudyTexts:
    """The seeded draws of ``config`` from ``corpora``: a class-stratified ID bank and ID test
    part (scaled down together when the ID corpus is smaller) and an OOD sample.

    Raises
    ------
    InputError
        On an unknown corpus, or one too small for two texts per part.
    """
    from ...data import split_indices

    for key in (config.id_corpus, config.ood_corpus):
        if key not in corpora:
            raise InputError(f"unknown corpus {key!r}; choose from {', '.join(corpora)}")
    id_data = corpora[config.id_corpus].load()
    ood_data = corpora[config.ood_corpus].load()
    wanted = {"bank": config.n_bank, "test": config.n_test}
    total = sum(wanted.values())
    if total > len(id_data):  # scale both parts down, keeping their ratio
        wanted = {k: v * len(id_data) // total for k, v in wanted.items()}
    if min(wanted.values()) < 2:
        raise InputError(f"corpus {config.id_corpus!r} has only {len(id_data)} texts")
    bank, test = split_indices(len(id_data), [wanted["bank"], wanted["test"]], seed=config.seed,
                               stratify=id_data.labels)
    (ood,) = split_indices(len(ood_data), [min(config.n_ood, len(ood_data))], seed=config.seed)
    if len(ood) < 2:
        raise InputError(f"corpus {config.ood_corpus!r} has only {len(ood_data)} texts")
    labels = (np.zeros(len(bank), dtype=np.int64) if id_data.labels is None
              else np.asarray(id_data.labels)[bank])
    return StudyTexts(
        id_texts=[id_data.texts[i] for i in (*bank, *test)], bank_labels=labels,
        n_bank=len(bank), ood_texts=[ood_data.texts[i] for i in ood],
        descriptions={k: corpora[k].description for k in (config.id_corpus, config.ood_corpus)},
    )


# ---------------------------------------------------------------------------- one layer
def _auroc(
    detector: str, params: Mapping[str, Any], bank: torch.Tensor, labels: np.ndarray,
    test: torch.Tensor, ood: torch.Tensor,
) -> tuple[float | None, str | None]:
    from ...registry import create

    try:
        fitted = create(detector, **params).fit(bank, labels)
        return metrics.evaluate(fitted.score(test), fitted.score(ood))["auroc"], None
    except Exception as exc:  # one failing detector leaves the other columns intact
        return None, f"{detector}: {type(exc).__name__}: {exc}"


def layer_row(
    bank: torch.Tensor, labels: np.ndarray, test: torch.Tensor, ood: torch.Tensor
) -> dict[str, Any]:
    """Isotropy of ``bank`` and the AUROC of each of :data:`DETECTORS` fit on it, plus the gaps.

    Returns
    -------
    dict
        ``n``, ``dim``, the :data:`~ood_zoo.analysis.isotropy.MEASURES` (``nan`` where
        undefined), ``auroc_<detector>`` and the :data:`GAPS` (``None`` where a detector failed)
        and ``note`` (why a value is missing, or ``None``).
    """
    row: dict[str, Any] = {"n": int(bank.shape[0]), "dim": int(bank.shape[1])}
    row.update(isotropy_measures(bank))
    notes = []
    if math.isnan(row["isoscore"]):
        notes.append("all bank vectors are identical")
    for label, (detector, params) in DETECTORS.items():
        row[f"auroc_{label}"], error = _auroc(detector, params, bank, labels, test, ood)
        if error:
            notes.append(error)
    for gap, (a, b) in GAPS.items():
        x, y = row[f"auroc_{a}"], row[f"auroc_{b}"]
        row[gap] = None if x is None or y is None else x - y
    row["note"] = "; ".join(notes) or None
    return row


# ---------------------------------------------------------------------------- correlations
def correlations(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Spearman's ρ between each isotropy measure and each AUROC gap.

    Over every row (``scope="all"``) and over the layers of each model (``scope=<model>``).
    Rows where either value is missing or ``nan`` are left out; fewer than 3 pairs, or a
    constant column, give ``rho = None``. The p-value is scipy's, which assumes independent
    samples; neighbouring layers are not, so read it as descriptive.

    Returns
    -------
    list of dict
        ``scope``, ``measure``, ``gap``, ``n``, ``rho``, ``p_value`` and ``more_isotropic``
        (whether a higher or lower measure means more isotropic).
    """
    from scipy.stats import spearmanr

    scopes = {"all": list(rows)}
    for row in rows:
        scopes.setdefault(str(row["model"]), []).append(row)
    out = []
    for scope, members in scopes.items():
        for measure in CORRELATED:
            for gap in GAPS:
                pairs = np.array(
                    [(r[measure], r[gap]) for r in members
                     if _finite(r.get(measure)) and _finite(r.get(gap))], dtype=np.float64,
                ).reshape(-1, 2)
                rho = p_value = None
                if len(pairs) >= 3 and np.ptp(pairs[:, 0]) > 0 and np.ptp(pairs[:, 1]) > 0:
                    result = spearmanr(pairs[:, 0], pairs[:, 1])
                    rho, p_value = float(result.statistic), float(result.pvalue)
                out.append({"scope": scope, "measure": measure, "gap": gap, "n": len(pairs),
                            "rho": rho, "p_value": p_value,
                            "more_isotropic": MEASURES[measure]})
    return out


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


# ---------------------------------------------------------------------------- the run
@dataclass
class StudyResult:
    """What :func:`run_study` measured.

    Attributes
    ----------
    rows : list of dict
        One per (model, layer), with the columns of :data:`ROW_COLUMNS`.
    correlations : list of dict
        :func:`correlations` of ``rows``.
    meta : dict
        ``config``, ``models`` (resolved pooling/template, hidden states, dimension), ``data``,
        ``versions``, ``machine`` and ``timing_s``.
    """

    rows: list[dict[str, Any]]
    correlations: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)


def run_study(
    config: IsotropyConfig, *, corpora: Mapping[str, Any] | None = None
) -> StudyResult:
    """Measure isotropy and detection on every layer of every model of ``config``.

    Parameters
    ----------
    config : IsotropyConfig
    corpora : mapping of str to Corpus, optional
        Where ``config.id_corpus`` and ``config.ood_corpus`` are looked up; default the
        ``zero-grad`` suite's. Tests pass small synthetic corpora here.

    Returns
    -------
    StudyResult

    Raises
    ------
    InputError
        On an unknown model, pooling or corpus (before any model runs).
    """
    from tqdm.auto import tqdm

    from ...features import extract
    from ..suites import get_suite

    rows: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    with RunSession(config.threads) as session:
        resolved = [resolve_model(m) for m in config.models]
        texts = draw_texts(config, get_suite("zero-grad").corpora if corpora is None else corpora)
        for model in resolved:
            with session.stage(f"{model.name}:extract"):
                features = {}
                for part, part_texts in (("id", texts.id_texts), ("ood", texts.ood_texts)):
                    if config.progress:
                        print(f"{model.name}: extracting {part} ({len(part_texts)} texts)",
                              file=sys.stderr)
                    features[part] = extract(
                        part_texts, model.name, layers="all", pooling=model.pooling,
                        template=model.template, batch_size=config.batch_size,
                        max_length=config.max_length, cache=config.cache,
                        progress=config.progress,
                    ).features
            with session.stage(f"{model.name}:analysis"):
                id_feats, ood_feats = features["id"], features["ood"]
                n_states = int(id_feats.shape[1])
                for layer in tqdm(range(n_states), desc=f"{model.name} layers", unit="layer",
                                  disable=not config.progress):
                    x = id_feats[:, layer]
                    row = layer_row(x[: texts.n_bank], texts.bank_labels, x[texts.n_bank :],
                                    ood_feats[:, layer])
                    rows.append({"model": model.name, "layer": layer,
                                 "depth": layer / max(1, n_states - 1), **row})
            models.append({**asdict(model), "n_states": n_states,
                           "dim": int(id_feats.shape[2])})
    meta = {
        "config": jsonable(asdict(config)),
        "models": models,
        "data": {
            "id": config.id_corpus, "ood": config.ood_corpus, "descriptions": texts.descriptions,
            "n_bank": texts.n_bank, "n_test": len(texts.id_texts) - texts.n_bank,
            "n_ood": len(texts.ood_texts),
            "bank_classes": {str(c): int(k) for c, k in
                             zip(*np.unique(texts.bank_labels, return_counts=True), strict=True)},
        },
        "detectors": {label: {"detector": d, "params": dict(p)}
                      for label, (d, p) in DETECTORS.items()},
        "threads": session.threads,
        **session.metadata(),
    }
    return StudyResult(rows, correlations(rows), meta)

