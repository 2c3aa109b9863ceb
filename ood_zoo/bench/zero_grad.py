"""The zero-grad benchmark: every detector on frozen LM features, over settings and seeds.

:func:`run_bench` runs a suite (:mod:`ood_zoo.bench.suites`) in four steps:

1. **Pools.** Each corpus of the suite is loaded and one pool of texts is drawn from it
   (``max_per_split`` texts per split it needs, or the whole corpus with ``full=True``).
2. **Features, once.** Every pool goes through the model once: hidden states of *all* layers,
   pooled (``[n, L, d]``), plus, for a causal LM, the next-token logits of every ID label word and
   the log-sum-exp over the whole vocabulary at the prompt's last position. A causal LM also
   scores each text in a second pass (:func:`~ood_zoo.features.sequence_log_likelihood`, same
   template and truncation) for the ``perplexity`` detector. Every setting, seed, layer and
   detector reuses them.
3. **Seeds × ID tasks × detectors.** Per seed each ID pool is split anew; each registered detector
   is fit on the bank (the ID *validation* part, as in the paper; ``bank="train"`` for the train
   part) and scored on the ID test part against each OOD set of the suite. The layer sweep refits
   the sweep detectors (cosine and Mahalanobis by default) on every layer.
4. **Outputs.** Per-seed rows, mean ± std over seeds, tables, plots, all written atomically.

Logits for MSP, MaxLogit and Energy
-----------------------------------
*Decoder LMs* (zero-grad, as the paper): the ID class names are verbalised (``negative`` /
``positive``, topic names) and the logits of each word's first token are read at the last prompt
position. The registered ``msp``, ``maxlogit`` and ``energy`` detectors get those label-token
logits, so ``energy`` is the paper's energy (logsumexp over label tokens, T = 1) and ``msp`` is the
softmax **renormalised over the label tokens**. The paper's MSP takes the softmax over the **full
vocabulary** and the max over the label tokens, not renormalised; it is reported as the row
``msp_vocab``: the ``maxlogit`` detector on the label tokens' vocabulary log-probabilities
``logit_c - logsumexp(vocab)``, i.e. the log of the paper's MSP (same AUROC, FPR95 and AUPR).
*Encoders* (MiniLM): a linear probe fit on the bank (:func:`~ood_zoo.bench.runner.fit_probe`)
gives the class logits.

Language-model detectors
------------------------
``perplexity`` gets the base model's ``(log p(text | prompt), n_tokens)`` per text (decoders
only; cached like the features). ``likelihood_ratio`` needs a fine-tuned model as well and is
skipped here.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .. import metrics
from ..registry import Registry, get_registry
from .runner import (
    FeatureSet,
    fit_probe,
    probe_logits,
    run_detectors,
    usable_detectors,
)
from .session import bench_threads, machine_info, package_versions
from .suites import (
    POOL_SEED,
    SPLIT_SCALE,
    Setting,
    Suite,
    get_suite,
    holdout_classes,
    split_pool,
)
from .tables import aggregate, csv_bytes, json_bytes, jsonable, markdown_table, write_files

__all__ = [
    "DEFAULT_MAX_PER_SPLIT",
    "SWEEP_DETECTORS",
    "BenchConfig",
    "BenchResult",
    "Extracted",
    "ModelExtractor",
    "draw_pools",
    "run_bench",
    "write_outputs",
]

#: Texts per split by default, sized for the default SmolLM2 run to take at most ~5 minutes on
#: 2 CPU cores, model load and extraction included (measured: 3.5 min cold on a shared 2-vCPU
#: EPYC; 100 per split took 5.7 min there under load).
DEFAULT_MAX_PER_SPLIT = 80
#: Detectors refit on every layer of the layer sweep by default.
SWEEP_DETECTORS = ("cosine", "mahalanobis")
#: Detectors shown in the per-setting ROC/histogram plots (those present).
PLOT_DETECTORS = ("cosine", "mahalanobis", "msp_vocab", "msp", "energy")
#: Split fractions of a corpus with ``full=True`` (the 20NG split of the paper's code).
FULL_FRACTIONS: Mapping[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}
#: Name of the row of the paper's full-vocabulary MSP (see the module notes).
MSP_VOCAB = "msp_vocab"


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
        Use the features cache (when the installed :func:`ood_zoo.features.extract` has one).
    plots : bool
        Draw plots (needs matplotlib; skipped with a message when it is missing).
    progress : bool
        Progress bars.
    threads : int, optional
        Torch threads; default ``OMP_NUM_THREADS`` or 2.
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
        if self.template and "{text}" not in self.template:
            raise ValueError("template must contain the field {text}")


# ---------------------------------------------------------------------------- extraction
@dataclass(frozen=True)
class Extracted:
    """Model outputs for one pool of texts.

    Attributes
    ----------
    features : torch.Tensor
        ``[n, L, d]`` pooled hidden states of the layers in ``layers``.
    layers : tuple of int
        The non-negative hidden-state index of each feature slice.
    label_logits : torch.Tensor or None
        ``[n, W]`` next-token logits of the first token of each label word (causal LMs only).
    vocab_logsumexp : torch.Tensor or None
        ``[n]`` log-sum-exp of the next-token logits over the whole vocabulary.
    label_words : tuple of str
        The words of the ``label_logits`` columns.
    lm_stats : torch.Tensor or None
        ``[n, 2]`` float64 :func:`~ood_zoo.features.sequence_log_likelihood` of the texts in the
        prompt (causal LMs only): the ``perplexity`` detector's input.
    """

    features: torch.Tensor
    layers: tuple[int, ...]
    label_logits: torch.Tensor | None = None
    vocab_logsumexp: torch.Tensor | None = None
    label_words: tuple[str, ...] = ()
    lm_stats: torch.Tensor | None = None

    def layer(self, layer: int) -> torch.Tensor:
        """``[n, d]`` features of hidden state ``layer`` (negative counts from the end)."""
        n_states = self.n_states
        index = layer % n_states if -n_states <= layer < n_states else None
        if index is None or index not in self.layers:
            raise ValueError(f"layer {layer} was not extracted (have {list(self.layers)})")
        return self.features[:, self.layers.index(index)]

    @property
    def n_states(self) -> int:
        """One more than the largest extracted index (all states when every layer was kept)."""
        return max(self.layers) + 1


class ModelExtractor:
    """Runs a model over pools of texts: all layers in one pass, label-token logits, cache.

    Parameters
    ----------
    config : BenchConfig
    template : str
        The suite's prompt for causal LMs (``config.template`` overrides it).
    label_words : sequence of str
        Every ID label word of the suite, for the label-token logits.

    Notes
    -----
    Built on :func:`ood_zoo.features.extract`, which wraps each text in the template (truncating
    the text, never the template, to ``max_length`` tokens), pools every hidden state in one
    forward pass, reads the label-token logits and the vocabulary log-sum-exp at the prompt's last
    position, and caches the result (keyed by model, layers, pooling, template and texts).
    """

    def __init__(self, config: BenchConfig, template: str, label_words: Sequence[str]) -> None:
        from ..features import load_model, model_spec

        self.config = config
        start = time.perf_counter()
        self.model, self.tokenizer = load_model(config.model)
        self.load_s = time.perf_counter() - start
        self.causal = _is_causal_lm(self.model)
        spec = model_spec(config.model) if isinstance(config.model, str) else None
        native = getattr(spec, "pooling", None)
        self.pooling = config.pooling or ("last" if self.causal else (native or "mean"))
        if config.template is not None:
            self.template = config.template
        else:
            self.template = template if self.causal else ""
        self.label_words = tuple(dict.fromkeys(label_words)) if self.causal else ()
        self.label_token_ids: tuple[int, ...] = ()
        self._params = inspect.signature(_extract_fn()).parameters
        self.cache_used = config.cache and "cache" in self._params

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
            "features_cache": self.cache_used,
            "logits": ("label-token logits of the LM (first sub-token of each label word)"
                       if self.causal else "linear probe fit on the bank"),
            "lm_stats": ("sequence_log_likelihood of each text in the template (base model)"
                         if self.causal else None),
        }

    def __call__(self, key: str, texts: Sequence[str]) -> Extracted:
        """Features of every layer and (causal LMs) label-token logits and LM stats of ``texts``."""
        kwargs: dict[str, Any] = {
            "layers": "all", "pooling": self.pooling, "batch_size": self.config.batch_size,
            "max_length": self.config.max_length, "progress": self.config.progress,
            "template": self.template or None,
        }
        if self.label_words:
            kwargs["label_words"] = list(self.label_words)
        if "tokenizer" in self._params:
            kwargs["tokenizer"] = self.tokenizer
        if "cache" in self._params:
            kwargs["cache"] = self.config.cache
        if self.config.progress:
            print(f"extracting {key}: {len(texts)} texts", file=sys.stderr)
        result = _extract_fn()(list(texts), self.model, **kwargs)
        features = getattr(result, "features", result)
        if features.ndim == 2:
            features = features[:, None]
        layers = tuple(range(features.shape[1]))
        label_logits = getattr(result, "label_logits", None)
        if label_logits is None:
            return Extracted(features.float(), layers)
        ids = getattr(result, "label_token_ids", None)
        if ids is not None:
            self.label_token_ids = tuple(int(i) for i in ids)
        return Extracted(features.float(), layers, label_logits.float(),
                         result.vocab_logsumexp.float(), self.label_words,
                         self.lm_stats(list(texts)))

    def lm_stats(self, texts: list[str]) -> torch.Tensor:
        """Base-model :func:`~ood_zoo.features.sequence_log_likelihood` of ``texts``, cached
        with the features."""
        from ..features import sequence_log_likelihood

        return sequence_log_likelihood(
            texts, self.model, self.tokenizer, template=self.template or None,
            max_length=self.config.max_length, batch_size=self.config.batch_size,
            cache=self.config.cache, progress=self.config.progress,
        )


def _extract_fn() -> Callable[..., Any]:
    from ..features import extract

    return extract


def _is_causal_lm(model: Any) -> bool:
    """Whether ``model`` is a causal LM with an LM head (label-token logits are available)."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return False
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        return False
    names = [type(model).__name__, *(getattr(config, "architectures", None) or [])]
    return any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names)


# ---------------------------------------------------------------------------- pools and tasks
@dataclass
class Pool:
    """The texts drawn from one corpus, the parts each seed splits them into, their features."""

    key: str
    texts: list[str]
    labels: np.ndarray | None
    label_names: tuple[str, ...]
    sizes: dict[str, int]
    extracted: Extracted | None = None


def _build_pools(
    suite: Suite, config: BenchConfig
) -> tuple[dict[str, Pool], dict[str, str]]:
    def sizes(is_id: bool, n: int) -> dict[str, int]:
        parts = [config.bank, "test"] if is_id else ["test"]
        if config.full:
            fractions = {p: FULL_FRACTIONS[p] for p in parts} if is_id else {"test": 1.0}
            return {p: int(n * f) for p, f in fractions.items()}
        return {p: SPLIT_SCALE[p] * int(config.max_per_split or 0) for p in parts}

    return draw_pools(suite, sizes)


def draw_pools(
    suite: Suite, part_sizes: Callable[[bool, int], dict[str, int]]
) -> tuple[dict[str, Pool], dict[str, str]]:
    """One pool per corpus the suite's settings use, drawn once with :data:`POOL_SEED`.

    Parameters
    ----------
    suite : Suite
    part_sizes : callable
        ``part_sizes(is_id_corpus, corpus_size) -> {part: texts}``; the pool holds their sum
        (at most the whole corpus), class-stratified when the corpus is labelled.

    Returns
    -------
    (pools, skipped)
        ``skipped`` maps a corpus that could not be used (missing package, empty, an ID corpus
        without labels) to the reason.
    """
    from ..data import split

    ids = set(suite.id_corpora())
    used = list(dict.fromkeys(k for s in suite.settings for k in (s.id_corpus, s.ood_corpus)))
    pools: dict[str, Pool] = {}
    skipped: dict[str, str] = {}
    for key in used:
        corpus = suite.corpora[key]
        try:
            data = corpus.load()
        except Exception as exc:  # a missing package or loader skips this corpus only
            skipped[key] = f"{type(exc).__name__}: {exc}"
            continue
        if len(data) == 0:
            skipped[key] = "the corpus is empty"
            continue
        sizes = part_sizes(key in ids, len(data))
        stratify = data.labels is not None
        if key in ids and data.labels is None:
            skipped[key] = "the ID corpus has no class labels"
            continue
        n = min(sum(sizes.values()), len(data))
        (drawn,) = split(data, [n], seed=POOL_SEED, stratify=stratify, names=[key])
        pools[key] = Pool(key, drawn.texts, drawn.labels, tuple(drawn.label_names), sizes)
    return pools, skipped


@dataclass
class _Task:
    """One ID task in one seed: its classes, bank and test, and the OOD sets it is scored on."""

    id_corpus: str
    holdout: int
    id_classes: tuple[str, ...]
    bank_idx: np.ndarray
    bank_labels: np.ndarray
    test_idx: np.ndarray
    oods: list[tuple[Setting, str, np.ndarray, tuple[str, ...]]]  # setting, pool, idx, classes


def _tasks(
    suite: Suite, pools: Mapping[str, Pool], seed: int, bank: str
) -> list[_Task]:
    parts = {
        key: split_pool(len(pool.texts), pool.sizes, seed, pool.labels)
        for key, pool in pools.items()
    }
    groups: dict[tuple[str, int], list[Setting]] = defaultdict(list)
    for setting in suite.settings:
        if setting.id_corpus in pools and setting.ood_corpus in pools:
            groups[(setting.id_corpus, setting.holdout)].append(setting)
    tasks = []
    for (id_key, holdout), settings in groups.items():
        pool = pools[id_key]
        assert pool.labels is not None
        names = pool.label_names
        if holdout:
            id_classes, ood_classes = holdout_classes(names, holdout, seed)
        else:
            id_classes, ood_classes = names, ()
        id_codes = [names.index(c) for c in id_classes]
        remap = {code: i for i, code in enumerate(id_codes)}

        def of(part: str, codes: Sequence[int], pool: Pool = pool) -> np.ndarray:
            idx = parts[pool.key][part]
            return idx[np.isin(pool.labels[idx], codes)]

        bank_idx = of(bank, id_codes)
        bank_labels = np.array([remap[int(c)] for c in pool.labels[bank_idx]], dtype=np.int64)
        oods = []
        for s in settings:
            if holdout:
                idx = of("test", [names.index(c) for c in ood_classes])
                oods.append((s, id_key, idx, ood_classes))
            else:
                oods.append((s, s.ood_corpus, parts[s.ood_corpus]["test"], ()))
        tasks.append(_Task(id_key, holdout, id_classes, bank_idx, bank_labels,
                           of("test", id_codes), oods))
    return tasks


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
    registry: Registry, names: Sequence[str] | None, what: str, lm_columns: int | None = None,
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


def run_bench(
    config: BenchConfig,
    *,
    extractor: Callable[[str, Sequence[str]], Extracted] | None = None,
    suite: Suite | None = None,
    registry: Registry | None = None,
) -> BenchResult:
    """Run a benchmark suite: every detector, every setting, every seed.

    Parameters
    ----------
    config : BenchConfig
        The run's settings.
    extractor : callable, optional
        ``extractor(pool_key, texts) -> Extracted``; default a :class:`ModelExtractor` over
        ``config.model``. Tests pass synthetic features here.
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
        On an unknown suite, dataset or detector, or when no setting can run.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    suite = (suite or get_suite(config.suite)).select(config.datasets)
    if not suite.settings:
        raise ValueError(f"no setting of suite {suite.name!r} uses only {config.datasets}")
    registry = registry or get_registry()
    _check_detectors(registry, config.detectors, "main")  # unknown names fail before extraction
    sweep_names, _ = _check_detectors(registry, config.sweep_detectors, "sweep")
    want_vocab_msp = config.detectors is None or MSP_VOCAB in config.detectors or (
        "msp" in config.detectors)

    previous_threads = torch.get_num_threads()
    threads = bench_threads(config.threads)
    torch.set_num_threads(threads)
    timing: dict[str, float] = {}
    try:
        tick = time.perf_counter()
        pools, skipped_corpora = _build_pools(suite, config)
        runnable = [s for s in suite.settings if s.id_corpus in pools and s.ood_corpus in pools]
        if not runnable:
            raise ValueError(f"no setting can run; skipped corpora: {skipped_corpora}")
        timing["data_s"] = time.perf_counter() - tick

        words = [w for key in suite.id_corpora() if key in pools
                 for w in _label_words(suite, pools[key])]
        extraction: dict[str, Any] = {}
        if extractor is None:
            tick = time.perf_counter()
            model_extractor = ModelExtractor(config, suite.template, words)
            timing["load_s"] = time.perf_counter() - tick
            extraction = model_extractor.describe()
            extractor = model_extractor
        tick = time.perf_counter()
        for pool in pools.values():
            pool.extracted = extractor(pool.key, pool.texts)
        timing["extract_s"] = time.perf_counter() - tick
        n_texts = sum(len(p.texts) for p in pools.values())
        stats = [p.extracted.lm_stats for p in pools.values() if p.extracted is not None]
        lm_columns = None if any(t is None for t in stats) else int(stats[0].shape[1])
        main_names, skipped_detectors = _check_detectors(
            registry, config.detectors, "main", lm_columns
        )

        tick = time.perf_counter()
        rows, sweep_rows, scores = _evaluate(
            suite, pools, config, registry, main_names, sweep_names, want_vocab_msp
        )
        timing["detectors_s"] = time.perf_counter() - tick
    finally:
        torch.set_num_threads(previous_threads)
    timing["total_s"] = time.perf_counter() - start

    order = [s.name for s in suite.settings]
    table = aggregate(rows, order=order)
    sweep_table = aggregate(sweep_rows, keys=("setting", "detector", "layer"), order=order)
    any_pool = next(iter(pools.values())).extracted
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
            "n_texts": n_texts,
            "n_states": any_pool.n_states if any_pool is not None else None,
            "main_layer": config.layer,
            "extraction": extraction,
            "skipped_corpora": skipped_corpora,
            "skipped_detectors": skipped_detectors,
            "bank": config.bank,
            "threads": threads,
            "msp_variants": {
                "msp": "softmax renormalised over the label tokens (decoders) or probe classes",
                MSP_VOCAB: "the paper's MSP: full-vocabulary softmax, max over label tokens "
                           "(reported as its log; decoders only)",
            },
            "std": "sample standard deviation over seeds (ddof=1; 0 for one seed)",
        },
        "versions": package_versions(),
        "machine": machine_info(),
        "timing_s": timing,
    }
    return BenchResult(rows, sweep_rows, table, sweep_table, scores, meta)


def _label_words(suite: Suite, pool: Pool) -> list[str]:
    mapping = suite.corpora[pool.key].label_words or {}
    return [mapping.get(name, name) for name in pool.label_names]


def _evaluate(
    suite: Suite,
    pools: Mapping[str, Pool],
    config: BenchConfig,
    registry: Registry,
    main_names: list[str],
    sweep_names: list[str],
    want_vocab_msp: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    sweep_rows: list[dict[str, Any]] = []
    scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = defaultdict(dict)
    first = next(iter(pools.values())).extracted
    assert first is not None
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

    jobs = [(seed, task) for seed in config.seeds
            for task in _tasks(suite, pools, seed, config.bank)]
    for seed, task in tqdm(jobs, desc="detectors", unit="task", disable=not config.progress):
        id_pool = pools[task.id_corpus]
        words = _label_words(suite, id_pool)
        columns = [words[id_pool.label_names.index(c)] for c in task.id_classes]

        def sets(
            layer: int, logits: Literal["label", "vocab", "probe", "none"], probe: Any = None,
            task: _Task = task, columns: list[str] = columns,
        ) -> tuple[FeatureSet, FeatureSet, list[FeatureSet]]:
            def make(pool_key: str, idx: np.ndarray, name: str, labels: Any = None) -> FeatureSet:
                ext = pools[pool_key].extracted
                assert ext is not None
                rows = torch.as_tensor(idx, dtype=torch.long)
                x = ext.layer(layer)[rows]
                z = None
                if logits in ("label", "vocab") and ext.label_logits is not None:
                    col = [ext.label_words.index(w) for w in columns]
                    z = ext.label_logits[rows][:, col]
                    if logits == "vocab":
                        assert ext.vocab_logsumexp is not None
                        z = z - ext.vocab_logsumexp[rows, None]
                elif logits == "probe":
                    z = probe_logits(probe, x)
                stats = None if ext.lm_stats is None else ext.lm_stats[rows]
                return FeatureSet(name, x, z, labels, stats)

            bank = make(task.id_corpus, task.bank_idx, "bank", task.bank_labels)
            id_test = make(task.id_corpus, task.test_idx, "id_test")
            oods = [make(pk, idx, s.name) for s, pk, idx, _ in task.oods]
            return bank, id_test, oods

        ext = id_pool.extracted
        assert ext is not None
        causal = ext.label_logits is not None
        if causal:
            bank, id_test, oods = sets(main_index, "label")
        else:
            x = ext.layer(main_index)[torch.as_tensor(task.bank_idx, dtype=torch.long)]
            probe = fit_probe(x, task.bank_labels, seed=seed) if len(task.id_classes) > 1 else None
            bank, id_test, oods = sets(main_index, "probe" if probe is not None else "none", probe)

        keep = seed == config.seeds[0]

        def on_scores(det: str, ood: str, a: Any, b: Any, keep: bool = keep) -> None:
            if keep:
                scores[ood][det] = (_np(a), _np(b))

        base = {"seed": seed, "n_bank": len(bank), "n_id": len(id_test),
                "id_classes": ",".join(task.id_classes)}
        found = run_detectors(bank, id_test, oods, registry=registry, detectors=main_names,
                              on_scores=on_scores)
        if causal and want_vocab_msp and "maxlogit" in registry.detectors:
            vb, vi, vo = sets(main_index, "vocab")

            def on_vocab(det: str, ood: str, a: Any, b: Any) -> None:
                on_scores(MSP_VOCAB, ood, a, b)

            extra = run_detectors(vb, vi, vo, registry=registry, detectors=["maxlogit"],
                                  on_scores=on_vocab)
            for row in extra:
                row["detector"] = MSP_VOCAB
            found += extra
        rows += [_tag(row, task, base, main_index) for row in found]

        for layer in sweep_layers:
            sb, si, so = sets(layer, "none")
            for row in run_detectors(sb, si, so, registry=registry, detectors=sweep_names):
                sweep_rows.append(_tag(row, task, base, layer))
    return rows, sweep_rows, dict(scores)


def _tag(row: dict[str, Any], task: _Task, base: dict[str, Any], layer: int) -> dict[str, Any]:
    setting, _, idx, ood_classes = next(o for o in task.oods if o[0].name == row["ood_set"])
    return {
        "setting": setting.name, "kind": setting.kind, "id": setting.id_corpus,
        "ood": setting.ood_corpus, "detector": row["detector"], "layer": layer, **base,
        "n_ood": len(idx), "ood_classes": ",".join(ood_classes),
        **{k: row[k] for k in ("auroc", "fpr95", "aupr_in", "aupr_out", "fit_s", "score_s",
                               "error")},
    }


def _np(scores: Any) -> np.ndarray:
    if hasattr(scores, "detach"):
        return scores.detach().float().cpu().numpy()
    return np.asarray(scores, dtype=np.float64)


# ---------------------------------------------------------------------------- aggregation
def summary_by_kind(table: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean AUROC and FPR95 of each detector over the far-OOD and the near-OOD settings."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in table:
        if row.get("auroc") is None:
            continue
        acc[row["detector"]][f"{row['kind']}_auroc"].append(row["auroc"])
        acc[row["detector"]][f"{row['kind']}_fpr95"].append(row["fpr95"])
    out = []
    for det, values in acc.items():
        entry: dict[str, Any] = {"detector": det}
        for name in ("far_auroc", "far_fpr95", "near_auroc", "near_fpr95"):
            entry[name] = float(np.mean(values[name])) if values.get(name) else None
        out.append(entry)
    return sorted(out, key=lambda e: -(e["far_auroc"] or 0.0))


# ---------------------------------------------------------------------------- outputs
TABLE_COLUMNS = ("setting", "detector", "auroc_pm", "fpr95_pm", "aupr_in_pm", "n_seeds")
TABLE_HEADERS = {"auroc_pm": "AUROC", "fpr95_pm": "FPR95", "aupr_in_pm": "AUPR-In",
                 "n_seeds": "seeds"}
CSV_COLUMNS = (
    "row_type", "setting", "kind", "id", "ood", "detector", "layer", "seed", "n_bank", "n_id",
    "n_ood", "id_classes", "ood_classes", "auroc", "auroc_std", "fpr95", "fpr95_std", "aupr_in",
    "aupr_in_std", "aupr_out", "n_seeds", "n_errors", "fit_s", "score_s", "error",
)


def _sweep_wide(result: BenchResult) -> tuple[list[dict[str, Any]], list[str]]:
    """Layer-sweep table: one row per (setting, detector), one AUROC column per layer."""
    wide: dict[tuple[str, str], dict[str, Any]] = {}
    layers: list[int] = sorted({int(r["layer"]) for r in result.sweep_table})
    for r in result.sweep_table:
        entry = wide.setdefault((r["setting"], r["detector"]),
                                {"setting": r["setting"], "detector": r["detector"]})
        entry[f"L{r['layer']}"] = r["auroc"]
    for entry in wide.values():
        values = {layer: entry.get(f"L{layer}") for layer in layers}
        valid = {k: v for k, v in values.items() if v is not None}
        if valid:
            best = max(valid, key=lambda k: valid[k])
            entry["best_layer"], entry["best_auroc"] = best, valid[best]
            entry["last_auroc"] = values.get(layers[-1])
    return list(wide.values()), [f"L{layer}" for layer in layers]


def render_tables(result: BenchResult) -> tuple[str, str]:
    """The report as Markdown and as plain text: main table, summary, layer sweep."""
    s = result.meta.get("settings", {})
    ext = s.get("extraction") or {}
    config = s.get("config", {})
    title = (f"{config.get('suite', 'zero-grad')} benchmark: model "
             f"{ext.get('model', config.get('model', '?'))}, "
             f"{ext.get('pooling', config.get('pooling') or '?')} pooling, "
             f"layer {s.get('main_layer')}, "
             f"bank = ID {s.get('bank')} split, seeds {config.get('seeds')}")
    notes = [
        "AUROC / FPR95 / AUPR-In: mean ± sample std over seeds; ID is the positive class, higher "
        "score = more ID.",
        f"msp: {s.get('msp_variants', {}).get('msp', '')}; {MSP_VOCAB}: "
        f"{s.get('msp_variants', {}).get(MSP_VOCAB, '')}.",
    ]
    if s.get("skipped_corpora"):
        notes.append("skipped corpora: " + "; ".join(
            f"{k} ({v})" for k, v in s["skipped_corpora"].items()))
    summary = summary_by_kind(result.table)
    sum_cols = ("detector", "far_auroc", "far_fpr95", "near_auroc", "near_fpr95")
    sweep, layer_cols = _sweep_wide(result)
    sweep_cols = ["setting", "detector", "best_layer", "best_auroc", "last_auroc", *layer_cols]

    md = [f"# {title}", "", *[f"- {n}" for n in notes], "",
          markdown_table(result.table, TABLE_COLUMNS, TABLE_HEADERS), "",
          "## Mean over settings", "", markdown_table(summary, sum_cols, {}), ""]
    txt = [title, *notes, "", metrics.format_table(
        [{TABLE_HEADERS.get(k, k): r.get(k) for k in TABLE_COLUMNS} for r in result.table]),
        "", "mean over settings:", metrics.format_table(summary, sum_cols), ""]
    if sweep:
        md += ["## Layer sweep (AUROC, mean over seeds)", "",
               markdown_table(sweep, sweep_cols, {}), ""]
        txt += ["layer sweep (AUROC, mean over seeds):",
                metrics.format_table(sweep, sweep_cols[:5]), ""]
    return "\n".join(md), "\n".join(txt)


def write_outputs(result: BenchResult, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write ``results.json``, ``results.csv``, ``layer_sweep.csv``, ``table.md``, ``table.txt``
    and the plots under ``plots/`` into ``out_dir``, each file atomically.

    Returns
    -------
    dict
        ``{"files": [...], "plots": {...}}``: the paths written and the plot status (a list of
        files, or the reason plots were skipped, e.g. matplotlib missing).
    """
    from .plots import write_plots

    directory = Path(out_dir)
    plot_status = (write_plots(result, directory / "plots")
                   if result.meta.get("settings", {}).get("config", {}).get("plots", True)
                   else {"skipped": "disabled"})
    md, txt = render_tables(result)
    payload = {
        "format": "ood_zoo.bench", "format_version": 1,
        "table": result.table, "rows": result.rows,
        "layer_sweep": {"table": result.sweep_table, "rows": result.sweep_rows},
        "summary": summary_by_kind(result.table),
        **result.meta, "plots": plot_status,
    }

    def seeds_and_means(rows: Sequence[Mapping[str, Any]],
                        table: Sequence[Mapping[str, Any]]) -> bytes:
        return csv_bytes([{**r, "row_type": "seed"} for r in rows]
                         + [{**r, "row_type": "aggregate", "seed": "all"} for r in table],
                         CSV_COLUMNS)

    files = write_files(directory, {
        "results.json": json_bytes(payload),
        "results.csv": seeds_and_means(result.rows, result.table),
        "layer_sweep.csv": seeds_and_means(result.sweep_rows, result.sweep_table),
        "table.md": (md + "\n").encode("utf-8"),
        "table.txt": (txt + "\n").encode("utf-8"),
    })
    return {"files": files + list(plot_status.get("files", [])), "plots": plot_status}
