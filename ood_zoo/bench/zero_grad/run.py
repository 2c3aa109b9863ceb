"""The zero-grad run: configuration, extraction once, every detector per seed and task."""


from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ...features import (
    NEXT_TOKEN_STATS,
    Extraction,
    default_pooling,
    extract,
    is_causal_lm,
    load_model,
    model_spec,
)
from ...registry import Registry, get_registry
from ...specs import EngineSpec
from ..pools import MakeInputs, Pool, Task, draw_pools, label_words, tasks
from ..runner import (
    MSP_VOCAB,
    DetectorInputs,
    fit_probe,
    probe_head,
    probe_logits,
    run_detectors,
    run_msp_vocab,
    usable_detectors,
)
from ..selection import oracle_rows, run_configurations
from ..session import RunSession
from ..suites import SPLIT_SCALE, Suite, get_suite
from ..tables import (
    aggregate,
    jsonable,
)

__all__ = [
    "DEFAULT_MAX_PER_SPLIT",
    "SWEEP_DETECTORS",
    "BenchConfig",
    "BenchResult",
    "ModelExtractor",
    "run_bench",
]

#: Texts per split by default, sized for the default SmolLM2 run to take at most ~5 minutes on
#: 2 CPU cores, model load and extraction included (measured: 3.5 min cold on a shared 2-vCPU
#: EPYC; 100 per split took 5.7 min there under load).
DEFAULT_MAX_PER_SPLIT = 80
#: Detectors refit on every layer of the layer sweep by default.
SWEEP_DETECTORS = ("cosine", "mahalanobis")
#: Split fractions of a corpus with ``full=True`` (the 20NG split of the paper's code).
FULL_FRACTIONS: Mapping[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}


# ---------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class BenchConfig:
    """Everything that defines a benchmark run (stored in ``results.json``).

    Attributes
    ----------
    suite : str
        A suite name (:data:`~ood_zoo.bench.suites.SUITES`).
    model : str
        A registered model name (``ood-zoo models``) or a local model directory.
    layer : int
        Hidden state of the main table (``-1``: the last block's output).
    sweep_layers : "all", sequence of int, or None
        Layers of the layer sweep; ``None`` skips it.
    pooling : str, optional
        Default: the model's recommended pooling; ``last`` for causal LMs (the paper's), else
        ``mean``.
    template : str, optional
        Prompt with a ``{text}`` field. Default: the suite's (the paper's) for causal LMs, none
        (raw text) for encoders. ``""`` forces raw text.
    seeds : sequence of int
        Seeds of the splits and of the held-out classes (the paper's near-OOD runs use 1-5).
    bank : {"validation", "train"}
        The ID part the detectors are fit on.
    max_per_split : int, optional
        Texts per split and corpus (the train part gets twice as many); ``None`` with
        ``full=True`` uses whole corpora.
    max_length : int
        Tokens per text, the template included (texts are truncated before templating).
    batch_size : int
        Texts per forward pass.
    detectors : sequence of str, optional
        Detectors of the main table; default every usable registered one.
    sweep_detectors : sequence of str
        Detectors of the layer sweep.
    datasets : sequence of str, optional
        Restrict the suite to settings among these corpus keys.
    cache : bool
        Use the features cache (:mod:`ood_zoo.features.cache`).
    plots : bool
        Draw plots (needs matplotlib; skipped with a message when it is missing).
    progress : bool
        Progress bars.
    threads : int, optional
        Torch threads; default ``OMP_NUM_THREADS`` or 2.
    selection : {"paper", "auto"}
        ``"auto"`` also runs the configurations chosen from ID data alone next to the paper's and
        the peeking oracle layer (:mod:`ood_zoo.bench.selection`); it needs every hidden state.
    engine : str, optional
        A registered execution engine (``ood-zoo engines``, e.g. ``"ray"``) that runs the
        extraction instead of this process; its features equal the in-process ones at the
        engine's threads per worker (Ray: one, so ``threads=1``), and so do the tables. Engines
        keep no features cache: ``cache`` does not apply.
    workers : int, optional
        The engine's workers (``num_workers``; Ray: actors, each with its own model); default
        the engine's.
    """

    suite: str = "zero-grad"
    model: str = "smollm2-135m"
    layer: int = -1
    sweep_layers: Literal["all"] | tuple[int, ...] | None = "all"
    pooling: str | None = None
    template: str | None = None
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    bank: Literal["validation", "train"] = "validation"
    max_per_split: int | None = DEFAULT_MAX_PER_SPLIT
    full: bool = False
    max_length: int = 128
    batch_size: int = 32
    detectors: tuple[str, ...] | None = None
    sweep_detectors: tuple[str, ...] = SWEEP_DETECTORS
    datasets: tuple[str, ...] | None = None
    cache: bool = True
    plots: bool = True
    progress: bool = True
    threads: int | None = None
    selection: Literal["paper", "auto"] = "paper"
    engine: str | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.bank not in ("validation", "train"):
            raise ValueError(f"bank must be 'validation' or 'train', got {self.bank!r}")
        if not self.seeds:
            raise ValueError("give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")
        if not self.full and (self.max_per_split is None or self.max_per_split < 2):
            raise ValueError(f"max_per_split must be >= 2, got {self.max_per_split!r}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")
        if isinstance(self.sweep_layers, str) and self.sweep_layers != "all":
            raise ValueError(f"sweep_layers must be 'all', a list of ints or None, "
                             f"got {self.sweep_layers!r}")
        if self.selection not in ("paper", "auto"):
            raise ValueError(f"selection must be 'paper' or 'auto', got {self.selection!r}")
        if self.template and "{text}" not in self.template:
            raise ValueError("template must contain the field {text}")
        if self.workers is not None:
            if isinstance(self.workers, bool) or not isinstance(self.workers, int) or (
                    self.workers < 1):
                raise ValueError(f"workers must be a positive int, got {self.workers!r}")
            if self.engine is None:
                raise ValueError("workers is an engine option: give an engine too")

    def pool_sizes(self, is_id: bool, n: int) -> dict[str, int]:
        """Texts per part of the pool of a corpus of ``n`` texts (:func:`~.pools.draw_pools`):
        the bank and test parts of an ID corpus, the test part of an OOD corpus;
        :data:`~.suites.SPLIT_SCALE` × ``max_per_split`` each, or :data:`FULL_FRACTIONS` of the
        corpus with ``full=True``."""
        parts = [self.bank, "test"] if is_id else ["test"]
        if self.full:
            fractions = {p: FULL_FRACTIONS[p] for p in parts} if is_id else {"test": 1.0}
            return {p: int(n * f) for p, f in fractions.items()}
        return {p: SPLIT_SCALE[p] * int(self.max_per_split or 0) for p in parts}


# ---------------------------------------------------------------------------- extraction
class ModelExtractor:
    """Runs a model over pools of texts: all layers in one pass, label-token logits, cache.

    Parameters
    ----------
    config : BenchConfig
    template : str
        The suite's prompt for causal LMs (``config.template`` overrides it).
    label_words : sequence of str
        Every ID label word of the suite, for the label-token logits.
    engine : EngineSpec, optional
        Runs the extraction (``engine.extract(texts, config.model, ...)``); default this process.
        The model is still loaded here, for its kind and default pooling.

    Notes
    -----
    Built on :func:`ood_zoo.features.extract`, which wraps each text in the template (truncating
    the text, never the template, to ``max_length`` tokens), pools every hidden state in one
    forward pass, reads the label-token logits and the vocabulary log-sum-exp at the prompt's last
    position, scores the text under the LM (``lm_stats``), and caches the result (keyed by model,
    layers, pooling, template and texts).
    """

    def __init__(self, config: BenchConfig, template: str, label_words: Sequence[str],
                 engine: EngineSpec | None = None) -> None:
        self.config = config
        self.engine = engine
        start = time.perf_counter()
        self.model, self.tokenizer = load_model(config.model)
        self.load_s = time.perf_counter() - start
        self.causal = is_causal_lm(self.model)
        spec = model_spec(config.model)
        self.pooling = config.pooling or (
            spec.pooling if spec is not None else default_pooling(self.model))
        if config.template is not None:
            self.template = config.template
        else:
            self.template = template if self.causal else ""
        self.label_words = tuple(dict.fromkeys(label_words)) if self.causal else ()
        self.label_token_ids: tuple[int, ...] = ()

    def describe(self) -> dict[str, Any]:
        """The extraction settings, for the results file."""
        return {
            "model": str(self.config.model),
            "model_class": type(self.model).__name__,
            "causal_lm": self.causal,
            "pooling": self.pooling,
            "template": self.template or None,
            "max_length": self.config.max_length,
            "label_words": list(self.label_words),
            "label_token_ids": list(self.label_token_ids),
            "load_s": self.load_s,
            "engine": None if self.engine is None else {
                "name": self.engine.name, "package": self.engine.package,
                "workers": self.config.workers},
            "features_cache": self.config.cache and self.engine is None,
            "logits": ("label-token logits of the LM (first sub-token of each label word)"
                       if self.causal else "linear probe fit on the bank"),
            "lm_stats": ("next_token_statistics of each text in the template (base model)"
                         if self.causal else None),
        }

    def __call__(self, key: str, texts: Sequence[str]) -> Extraction:
        """Features of every layer and (causal LMs) label-token logits and LM stats of ``texts``."""
        if self.config.progress:
            print(f"extracting {key}: {len(texts)} texts", file=sys.stderr)
        options: dict[str, Any] = {
            "layers": "all", "pooling": self.pooling, "batch_size": self.config.batch_size,
            "max_length": self.config.max_length, "template": self.template or None,
            "label_words": list(self.label_words) or None, "lm_stats": bool(self.label_words),
            "progress": self.config.progress,
        }
        if self.engine is None:
            out = extract(list(texts), self.model, self.tokenizer, cache=self.config.cache,
                          **options)
        else:
            if self.config.workers is not None:
                options["num_workers"] = self.config.workers
            out = self.engine.extract(list(texts), self.config.model, **options)
        self.label_token_ids = out.label_token_ids
        return out


# ---------------------------------------------------------------------------- the run
@dataclass
class BenchResult:
    """What :func:`run_bench` measured.

    Attributes
    ----------
    rows : list of dict
        One row per (setting, seed, detector) at the main layer.
    sweep_rows : list of dict
        One row per (setting, seed, detector, layer) of the layer sweep.
    table, sweep_table : list of dict
        :func:`aggregate` of ``rows`` / ``sweep_rows``: mean ± std over seeds.
    scores : dict
        ``{setting: {detector: (id_scores, ood_scores)}}`` of the first seed, for plots.
    meta : dict
        ``settings`` (config, suite, extraction, pools, skipped corpora and detectors),
        ``versions``, ``machine`` and ``timing_s``.
    """

    rows: list[dict[str, Any]]
    sweep_rows: list[dict[str, Any]]
    table: list[dict[str, Any]]
    sweep_table: list[dict[str, Any]]
    scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _check_detectors(
    registry: Registry, names: Sequence[str] | None, what: str,
    lm_columns: Sequence[str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    if names is not None:
        unknown = [n for n in names if n not in registry.detectors and n != MSP_VOCAB]
        if unknown:
            raise ValueError(
                f"unknown {what} detector(s) {', '.join(map(repr, unknown))}; registered: "
                f"{', '.join(registry.detectors)}"
            )
        names = [n for n in names if n != MSP_VOCAB]
    return usable_detectors(registry, names, lm_columns)


def _engine(registry: Registry, name: str | None) -> EngineSpec | None:
    """The registered engine ``name`` (``None``: run in this process)."""
    if name is None:
        return None
    if name not in registry.engines:
        known = ", ".join(registry.engines) or "none (engines come from plugins, e.g. ood_zoo_ray)"
        raise ValueError(f"unknown engine {name!r}; registered: {known}")
    spec = registry.engines[name].spec
    assert isinstance(spec, EngineSpec)
    return spec


def run_bench(
    config: BenchConfig,
    *,
    extractor: Callable[[str, Sequence[str]], Extraction] | None = None,
    suite: Suite | None = None,
    registry: Registry | None = None,
) -> BenchResult:
    """Run a benchmark suite: every detector, every setting, every seed.

    Parameters
    ----------
    config : BenchConfig
        The run's settings.
    extractor : callable, optional
        ``extractor(pool_key, texts) -> Extraction`` of every layer; default a
        :class:`ModelExtractor` over ``config.model``. Tests pass synthetic features here.
    suite : Suite, optional
        Default ``get_suite(config.suite)``.
    registry : Registry, optional
        Where detectors come from; default the global registry.

    Returns
    -------
    BenchResult

    Raises
    ------
    ValueError
        On an unknown suite, dataset, detector or engine, or when no setting can run.
    """
    suite = (suite or get_suite(config.suite)).select(config.datasets)
    if not suite.settings:
        raise ValueError(f"no setting of suite {suite.name!r} uses only {config.datasets}")
    registry = registry or get_registry()
    _check_detectors(registry, config.detectors, "main")  # unknown names fail before extraction
    sweep_names, _ = _check_detectors(registry, config.sweep_detectors, "sweep")
    engine = _engine(registry, config.engine)
    want_vocab_msp = config.detectors is None or MSP_VOCAB in config.detectors or (
        "msp" in config.detectors)

    model_extractor: ModelExtractor | None = None
    with RunSession(config.threads) as session:
        with session.stage("data"):
            pools, skipped_corpora = draw_pools(suite, config.pool_sizes)
            runnable = [s for s in suite.settings
                        if s.id_corpus in pools and s.ood_corpus in pools]
            if not runnable:
                raise ValueError(f"no setting can run; skipped corpora: {skipped_corpora}")
        if extractor is None:
            words = [w for key in suite.id_corpora() if key in pools
                     for w in label_words(suite, pools[key])]
            with session.stage("load"):
                model_extractor = ModelExtractor(config, suite.template, words, engine)
            extractor = model_extractor
        with session.stage("extract"):
            extractions = {key: extractor(key, pool.texts) for key, pool in pools.items()}
        stats = [e.lm_stats for e in extractions.values()]
        lm_columns = None if any(t is None for t in stats) else NEXT_TOKEN_STATS
        main_names, skipped_detectors = _check_detectors(
            registry, config.detectors, "main", lm_columns
        )
        with session.stage("detectors"):
            rows, sweep_rows, scores, choices = _evaluate(
                suite, pools, extractions, config, registry, main_names, sweep_names,
                want_vocab_msp,
            )

    order = [s.name for s in suite.settings]
    table = aggregate(rows, order=order)
    sweep_table = aggregate(sweep_rows, keys=("setting", "detector", "layer"), order=order)
    meta = {
        "settings": {
            "config": jsonable(asdict(config)),
            "suite": {"name": suite.name, "description": suite.description,
                      "notes": list(suite.notes)},
            "suite_settings": [
                {"name": s.name, "kind": s.kind, "id": s.id_corpus, "ood": s.ood_corpus,
                 "holdout": s.holdout, "ran": s in runnable}
                for s in suite.settings
            ],
            "corpora": {k: suite.corpora[k].description for k in pools},
            "pools": {k: {"n": len(p.texts), "parts": p.sizes, "classes": list(p.label_names)}
                      for k, p in pools.items()},
            "n_texts": sum(len(p.texts) for p in pools.values()),
            "n_states": next(iter(extractions.values())).n_states,
            "main_layer": config.layer,
            "extraction": model_extractor.describe() if model_extractor is not None else {},
            "skipped_corpora": skipped_corpora,
            "skipped_detectors": skipped_detectors,
            "bank": config.bank,
            "threads": session.threads,
            "msp_variants": {
                "msp": "softmax renormalised over the label tokens (decoders) or probe classes",
                MSP_VOCAB: "the paper's MSP: full-vocabulary softmax, max over label tokens "
                           "(reported as its log; decoders only)",
            },
            "std": "sample standard deviation over seeds (ddof=1; 0 for one seed)",
            "selection": choices,
            "oracle": oracle_rows(sweep_table) if config.selection == "auto" else [],
        },
        **session.metadata(),
    }
    return BenchResult(rows, sweep_rows, table, sweep_table, scores, meta)


def _evaluate(
    suite: Suite,
    pools: Mapping[str, Pool],
    extractions: Mapping[str, Extraction],
    config: BenchConfig,
    registry: Registry,
    main_names: list[str],
    sweep_names: list[str],
    want_vocab_msp: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """Per seed and ID task: the main detectors (and the paper's MSP) at the main layer, the
    sweep detectors at every sweep layer and, with ``selection="auto"``, the configurations chosen
    on the bank (and what they chose)."""
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    sweep_rows: list[dict[str, Any]] = []
    scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = defaultdict(dict)
    first = next(iter(extractions.values()))
    if config.sweep_layers is None:
        sweep_layers: list[int] = []
    elif config.sweep_layers == "all":
        sweep_layers = list(first.layers)
    else:
        sweep_layers = [layer % first.n_states for layer in config.sweep_layers]
        for layer in config.sweep_layers:
            first.layer(layer)  # raises on a layer that was not extracted
    first.layer(config.layer)
    main_index = config.layer % first.n_states
    if config.selection == "auto" and first.layers != tuple(range(first.n_states)):
        raise ValueError(f"selection='auto' needs every hidden state; the extraction has "
                         f"{list(first.layers)} of {first.n_states}")

    def inputs_at(layer: int, logits: Callable[[Extraction], torch.Tensor | None],
                  head: tuple[torch.Tensor, torch.Tensor] | None = None) -> MakeInputs:
        def make(pool_key: str, idx: np.ndarray) -> DetectorInputs:
            part = extractions[pool_key].rows(idx)
            return DetectorInputs(part.layer(layer), logits(part), lm_stats=part.lm_stats,
                                  head=head)

        return make

    def no_logits(part: Extraction) -> None:
        return None

    def every_layer(pool_key: str, idx: np.ndarray) -> DetectorInputs:
        part = extractions[pool_key].rows(idx)
        return DetectorInputs(part.features, lm_stats=part.lm_stats)

    choices: list[dict[str, Any]] = []

    jobs = [(seed, task) for seed in config.seeds
            for task in tasks(suite, pools, seed, config.bank)]
    for seed, task in tqdm(jobs, desc="detectors", unit="task", disable=not config.progress):
        main = _main_logits(suite, pools[task.id_corpus], extractions[task.id_corpus], task,
                            main_index)
        keep = seed == config.seeds[0]

        def on_scores(det: str, ood: str, a: np.ndarray, b: np.ndarray, keep: bool = keep
                      ) -> None:
            if keep:
                scores[ood][det] = (a, b)

        found = run_detectors(*task.inputs(inputs_at(main_index, main.logits, main.head)),
                              registry=registry, detectors=main_names, on_scores=on_scores)
        if main.vocab is not None and want_vocab_msp:
            found += run_msp_vocab(*task.inputs(inputs_at(main_index, main.vocab)),
                                   registry=registry, on_scores=on_scores)
        rows += [task.row(row, main_index) for row in found]

        for layer in sweep_layers:
            for row in run_detectors(*task.inputs(inputs_at(layer, no_logits)),
                                     registry=registry, detectors=sweep_names):
                sweep_rows.append(task.row(row, layer))
        if config.selection == "auto":
            found, choice = run_configurations(task, every_layer, registry, first.n_states)
            rows += [task.row(row, main_index) for row in found]
            choices.append(choice)
    return rows, sweep_rows, dict(scores), choices


@dataclass(frozen=True)
class _Logits:
    """How one task's logits are read from a pool's extraction: ``logits`` for the logit
    detectors, ``vocab`` (causal LMs) for the paper's MSP; ``head``, the linear map from the
    layer's features to ``logits``, where there is one."""

    logits: Callable[[Extraction], torch.Tensor | None]
    vocab: Callable[[Extraction], torch.Tensor] | None = None
    head: tuple[torch.Tensor, torch.Tensor] | None = None


def _main_logits(suite: Suite, pool: Pool, extraction: Extraction, task: Task,
                 layer: int) -> _Logits:
    """The label-token logits of the task's ID classes for a causal LM (with their LM-head rows
    at the final layer); else a linear probe's, fit on the bank (none for a one-class task)."""
    if extraction.label_logits is not None:
        words = label_words(suite, pool)
        columns = [words[pool.label_names.index(c)] for c in task.id_classes]
        return _Logits(lambda part: part.for_labels(columns).label_logits,
                       lambda part: part.for_labels(columns).label_log_probs(),
                       extraction.for_labels(columns).label_head(layer))
    if len(task.id_classes) < 2:
        return _Logits(lambda part: None)
    probe = fit_probe(extraction.rows(task.bank_idx).layer(layer), task.bank_labels,
                      seed=task.seed)
    return _Logits(lambda part: probe_logits(probe, part.layer(layer)), head=probe_head(probe))


