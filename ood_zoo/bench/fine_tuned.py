"""The fine-tuned benchmark: OOD detection before and after LoRA fine-tuning of the LM.

The second experiment of Liu et al., "How Good Are LLMs at Out-of-Distribution Detection?"
(LREC-COLING 2024). For each setting, seed and number of shots K it compares, on the same texts:

``zero-grad``
    the frozen base model (features, label-token logits, the LM's own likelihood);
``generative``
    the model LoRA-fine-tuned to write the label name (:func:`ood_zoo.finetune.fine_tune`); MSP,
    MaxLogit and Energy read its label-token logits, as the paper's;
``discriminative``
    the model LoRA-fine-tuned with a classification head on the last token; MSP, MaxLogit and
    Energy read the head's class logits.

Every registered detector runs on each variant's final-layer last-token features, fit on the ID
*validation* part (the paper's bank; in K-shot runs K examples per class of it). ``perplexity``
reads each variant's own model likelihood of the text; ``likelihood_ratio`` (fine-tuned
variants) reads ``log p_ft(x) - log p_base(x)``.

Splits follow :mod:`ood_zoo.bench.zero_grad`: one pool per corpus, split per seed into train /
validation / test parts, held-out classes drawn with the paper's RNG. K-shot runs keep K examples
per class of *both* train and validation (the paper's ``select_few_shot``).

The CPU budget
--------------
The default run (one near-OOD setting, one seed, both objectives, K = full) takes about 15
minutes on 2 CPU cores. The paper's recipe (:class:`~ood_zoo.finetune.TrainConfig` defaults:
lr 1e-4, up to 50 epochs, early stop after 6 epochs without improvement once past epoch 15)
assumes thousands of optimizer steps; the default here trains ``DEFAULT_EPOCHS`` epochs on a
small train part, so it raises the learning rate to ``DEFAULT_LEARNING_RATE`` and shortens the
early stop. ``--paper-recipe`` restores the paper's values.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import metrics
from ..finetune import FineTuned, TrainConfig, fine_tune
from ..finetune.train import OBJECTIVES
from ..io import atomic_write_bytes
from ..registry import Registry, get_registry
from .runner import FeatureSet, run_detectors
from .session import bench_threads, machine_info, package_versions
from .suites import FINE_TUNED, Suite, split_pool
from .tables import aggregate, jsonable, markdown_table
from .zero_grad import (
    MSP_VOCAB,
    PLOT_DETECTORS,
    TABLE_HEADERS,
    Pool,
    _label_words,
    _np,
    _tag,
    _Task,
    _tasks,
    draw_pools,
)

__all__ = [
    "CPU_RECIPE",
    "DEFAULT_EPOCHS",
    "DEFAULT_LEARNING_RATE",
    "VARIANTS",
    "FineTunedBenchConfig",
    "FineTunedResult",
    "comparison",
    "render_fine_tuned",
    "run_fine_tuned",
    "write_fine_tuned_outputs",
]

#: Epochs of the default CPU run, its learning rate and its early stop (see the module notes).
DEFAULT_EPOCHS = 8
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_PATIENCE = 2
DEFAULT_MIN_EPOCHS = 3
#: Tokens per prompt of the default run (BBC articles are cut to their first sentences).
DEFAULT_MAX_LENGTH = 64
#: The default recipe: the paper's, but with the learning rate, epochs and early stop above.
CPU_RECIPE = TrainConfig(learning_rate=DEFAULT_LEARNING_RATE, max_epochs=DEFAULT_EPOCHS,
                         patience=DEFAULT_PATIENCE, min_epochs=DEFAULT_MIN_EPOCHS,
                         max_length=DEFAULT_MAX_LENGTH)
#: The compared variants, in table order.
VARIANTS = ("zero-grad", "generative", "discriminative")
#: Texts drawn per part and corpus (before held-out classes are removed).
DEFAULT_PART_SIZES: Mapping[str, int] = {"train": 100, "validation": 50, "test": 100}
Shot = int | str


@dataclass(frozen=True)
class FineTunedBenchConfig:
    """Everything that defines a fine-tuned benchmark run (stored in ``results.json``).

    Attributes
    ----------
    model : str
        A registered causal LM (``ood-zoo models``) or a local model directory.
    datasets : sequence of str, optional
        Restrict the suite to settings among these corpora (default ``("bbc",)``: the held-out
        topic setting, the analogue of the paper's CLINC150 near-OOD split).
    objectives : sequence of {"generative", "discriminative"}
    shots : sequence of int or "full"
        K examples per class of train and validation (the paper: full, 10, 5, 1).
    seeds : sequence of int
        Split seeds (held-out classes, parts, K-shot draws).
    part_sizes : mapping
        Texts per ``train`` / ``validation`` / ``test`` part of each corpus pool.
    train : TrainConfig
        The fine-tuning recipe.
    detectors : sequence of str, optional
        Default: every registered detector.
    batch_size : int
        Texts per forward pass of feature extraction.
    save_adapters : bool
        Save each run's LoRA adapters (safetensors) under ``<out>/adapters``.
    cache, plots, progress : bool
    threads : int, optional
    """

    model: str = "smollm2-135m"
    datasets: tuple[str, ...] | None = ("bbc",)
    objectives: tuple[str, ...] = ("generative", "discriminative")
    shots: tuple[Shot, ...] = ("full",)
    seeds: tuple[int, ...] = (1,)
    part_sizes: Mapping[str, int] | None = None
    train: TrainConfig = CPU_RECIPE
    detectors: tuple[str, ...] | None = None
    batch_size: int = 16
    save_adapters: bool = True
    cache: bool = True
    plots: bool = True
    progress: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown or not self.objectives:
            raise ValueError(f"objectives must be among {OBJECTIVES}, got {self.objectives}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"give distinct seeds, got {list(self.seeds)}")
        for k in self.shots:
            if k != "full" and not (isinstance(k, int) and k >= 1):
                raise ValueError(f"shots must be 'full' or integers >= 1, got {k!r}")
        sizes = self.sizes()
        if set(sizes) != {"train", "validation", "test"} or min(sizes.values()) < 2:
            raise ValueError(f"part_sizes needs train, validation and test >= 2, got {sizes}")

    def sizes(self) -> dict[str, int]:
        return dict(self.part_sizes or DEFAULT_PART_SIZES)


@dataclass
class FineTunedResult:
    """What :func:`run_fine_tuned` measured: per-seed ``rows``, the ``table`` (mean ± std over
    seeds per setting × variant × shots × detector), one ``training`` record per fine-tuning run,
    the first seed's ``scores`` for plots and ``meta`` (config, versions, machine, timing)."""

    rows: list[dict[str, Any]]
    table: list[dict[str, Any]]
    training: list[dict[str, Any]]
    scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    meta: dict[str, Any]


# ------------------------------------------------------------------------------ model outputs
@dataclass
class _Outputs:
    """One model's outputs over a pool's texts, rows in pool order (NaN rows: not computed).

    ``features`` are final-layer last-token states, ``label_logits`` the next-token logits of
    the first token of each of ``words``, ``vocab_logsumexp`` the log-sum-exp over the whole
    vocabulary, ``likelihood`` the ``[n, 2]`` (sum log p(text tokens), token count).
    """

    features: torch.Tensor
    label_logits: torch.Tensor
    vocab_logsumexp: torch.Tensor
    likelihood: torch.Tensor
    words: tuple[str, ...]

    def logits_of(self, idx: torch.Tensor, words: Sequence[str]) -> torch.Tensor:
        return self.label_logits[idx][:, [self.words.index(w) for w in words]]


def _run_model(model: Any, tokenizer: Any, texts: Sequence[str], idx: np.ndarray,
               label_words: Sequence[str], template: str, config: FineTunedBenchConfig,
               cache: bool) -> _Outputs:
    """Run ``model`` over ``texts[idx]``; rows outside ``idx`` stay NaN."""
    from ..features import extract, sequence_log_likelihood

    chosen = [texts[i] for i in idx]
    common = {"template": template, "max_length": config.train.max_length,
              "batch_size": config.batch_size, "progress": config.progress}
    got = extract(chosen, model, tokenizer, layers=-1, pooling="last",
                  label_words=list(label_words), cache=cache, **common)
    likelihood = sequence_log_likelihood(chosen, model, tokenizer, cache=cache, **common)
    rows = torch.as_tensor(idx, dtype=torch.long)

    def full(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        out = torch.full((len(texts), *values.shape[1:]), float("nan"), dtype=dtype)
        out[rows] = values.to(dtype)
        return out

    return _Outputs(full(got.features, torch.float32), full(got.label_logits, torch.float32),
                    full(got.vocab_logsumexp, torch.float32),
                    full(likelihood, torch.float64), tuple(label_words))


def _pools(suite: Suite, config: FineTunedBenchConfig) -> tuple[dict[str, Pool], dict[str, str]]:
    """One pool per corpus: ID corpora with train/validation/test parts, OOD corpora test only."""
    sizes = config.sizes()
    return draw_pools(suite, lambda is_id, n: dict(sizes) if is_id else {"test": sizes["test"]})


# ------------------------------------------------------------------------------ the run
def run_fine_tuned(
    config: FineTunedBenchConfig,
    *,
    suite: Suite | None = None,
    registry: Registry | None = None,
    adapters_dir: str | os.PathLike[str] | None = None,
) -> FineTunedResult:
    """Run the fine-tuned suite: zero-grad vs generative vs discriminative, every detector.

    Parameters
    ----------
    config : FineTunedBenchConfig
    suite : Suite, optional
        Default :data:`~ood_zoo.bench.suites.FINE_TUNED`.
    registry : Registry, optional
    adapters_dir : path, optional
        Where each run's adapters are saved (with ``config.save_adapters``).

    Raises
    ------
    ValueError
        If no setting can run, or on an unknown detector or a model without an LM head.
    """
    from ..features import load_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    suite = (suite or FINE_TUNED).select(config.datasets)
    if not suite.settings:
        raise ValueError(f"no setting of suite {suite.name!r} uses only {config.datasets}")
    registry = registry or get_registry()
    if config.detectors is not None:
        unknown = [d for d in config.detectors
                   if d not in registry.detectors and d != MSP_VOCAB]
        if unknown:
            raise ValueError(f"unknown detector(s) {unknown}; registered: "
                             f"{', '.join(registry.detectors)}")
    previous_threads = torch.get_num_threads()
    threads = bench_threads(config.threads)
    torch.set_num_threads(threads)
    timing: dict[str, float] = {"train_s": 0.0, "extract_s": 0.0, "detectors_s": 0.0}
    rows: list[dict[str, Any]] = []
    training: list[dict[str, Any]] = []
    scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    try:
        pools, skipped = _pools(suite, config)
        base_model, tokenizer = load_model(config.model)
        if base_model.get_output_embeddings() is None:
            raise ValueError(f"{config.model} has no LM head; the fine-tuned suite needs a "
                             "causal LM")
        words = {key: _label_words(suite, pool) for key, pool in pools.items()
                 if key in suite.id_corpora()}
        all_words = list(dict.fromkeys(w for ws in words.values() for w in ws))
        tick = time.perf_counter()
        base = {key: _run_model(base_model, tokenizer, pool.texts, np.arange(len(pool.texts)),
                                all_words, suite.template, config, config.cache)
                for key, pool in pools.items()}
        timing["extract_s"] += time.perf_counter() - tick
        del base_model

        for seed in config.seeds:
            for task in _tasks(suite, pools, seed, "validation"):
                id_pool = pools[task.id_corpus]
                names = id_pool.label_names
                class_words = [words[task.id_corpus][names.index(c)] for c in task.id_classes]
                codes = [names.index(c) for c in task.id_classes]
                parts = split_pool(len(id_pool.texts), id_pool.sizes, seed, id_pool.labels)
                train_all = parts["train"][np.isin(id_pool.labels[parts["train"]], codes)]
                remap = {code: i for i, code in enumerate(codes)}
                for shots in config.shots:
                    train_idx = _few_shot(train_all, id_pool.labels, shots, seed)
                    keep = _few_shot(np.arange(len(task.bank_idx)), task.bank_labels, shots, seed)
                    shot_task = replace(task, bank_idx=task.bank_idx[keep],
                                        bank_labels=task.bank_labels[keep])
                    common = {"seed": seed, "shots": str(shots), "n_train": len(train_idx)}
                    tick = time.perf_counter()
                    rows += _detect(shot_task, pools, base, None, class_words, "zero-grad",
                                    common, registry, config, scores)
                    timing["detectors_s"] += time.perf_counter() - tick
                    for objective in config.objectives:
                        record, outputs, run = _train_one(
                            config, suite, tokenizer, pools, train_idx, shot_task, remap,
                            class_words, objective, seed, shots, timing, adapters_dir)
                        training.append(record)
                        tick = time.perf_counter()
                        rows += _detect(shot_task, pools, outputs, run, class_words, objective,
                                        {**common, "id_accuracy": record["test_accuracy"]},
                                        registry, config, scores, base=base)
                        timing["detectors_s"] += time.perf_counter() - tick
    finally:
        torch.set_num_threads(previous_threads)
    timing["total_s"] = time.perf_counter() - start
    order = [s.name for s in suite.settings]
    table = aggregate(rows, keys=("setting", "variant", "shots", "detector"),
                      metric_names=("auroc", "fpr95", "aupr_in", "id_accuracy"), order=order)
    meta = {
        "settings": {
            "config": jsonable(asdict(config) | {"suite": suite.name,
                                                  "part_sizes": config.sizes()}),
            "suite": {"name": suite.name, "description": suite.description,
                      "notes": list(suite.notes)},
            "template": suite.template,
            "corpora": {k: suite.corpora[k].description for k in pools},
            "pools": {k: {"n": len(p.texts), "parts": p.sizes, "classes": list(p.label_names)}
                      for k, p in pools.items()},
            "skipped_corpora": skipped,
            "bank": "validation",
            "threads": threads,
            "reporting_epoch": "the first epoch with the best dev accuracy (greedy exact match "
                               "for generative, argmax for discriminative)",
            "variants": {
                "zero-grad": "frozen base model; MSP/Energy on label-token logits",
                "generative": "LoRA, loss on label tokens + EOS; MSP/Energy on label-token "
                              "logits",
                "discriminative": "LoRA + linear head on the last token; MSP/Energy on the "
                                  "head's class logits",
            },
            "std": "sample standard deviation over seeds (ddof=1; 0 for one seed)",
        },
        "versions": package_versions(),
        "machine": machine_info(),
        "timing_s": timing,
    }
    return FineTunedResult(rows, table, training, scores, meta)


def _few_shot(idx: np.ndarray, labels: np.ndarray, shots: Shot, seed: int) -> np.ndarray:
    """``idx`` restricted to K per class of ``labels[idx]`` (all of them for ``"full"``)."""
    from ..data import few_shot_indices

    return idx[few_shot_indices(labels[idx], shots, seed=seed)]


def _train_one(
    config: FineTunedBenchConfig, suite: Suite, tokenizer: Any, pools: Mapping[str, Pool],
    train_idx: np.ndarray, task: _Task, remap: Mapping[int, int], class_words: Sequence[str],
    objective: str, seed: int, shots: Shot, timing: dict[str, float],
    adapters_dir: str | os.PathLike[str] | None,
) -> tuple[dict[str, Any], dict[str, _Outputs], FineTuned]:
    """Fine-tune a fresh copy of the base model, measure its ID test accuracy, save its
    adapters, and run the merged model over every text the task scores."""
    from ..features import load_model
    from .plots import slug

    id_pool = pools[task.id_corpus]
    texts = id_pool.texts
    assert id_pool.labels is not None
    model, _ = load_model(config.model)
    tick = time.perf_counter()
    run = fine_tune(model, tokenizer, [texts[i] for i in train_idx],
                    [remap[int(id_pool.labels[i])] for i in train_idx],
                    [texts[i] for i in task.bank_idx], task.bank_labels,
                    label_words=class_words, objective=objective,  # type: ignore[arg-type]
                    template=suite.template, config=config.train)
    train_s = time.perf_counter() - tick
    timing["train_s"] += train_s
    test_codes = np.array([remap[int(id_pool.labels[i])] for i in task.test_idx])
    accuracy = run.accuracy([texts[i] for i in task.test_idx], test_codes,
                            progress=config.progress)
    setting = task.oods[0][0].name
    name = f"{setting}-seed{seed}-{objective}-k{shots}"
    adapter = None
    if config.save_adapters and adapters_dir is not None:
        adapter = str(run.save(Path(adapters_dir) / slug(name)))
    record = {
        "setting": setting, "seed": seed, "variant": objective, "shots": str(shots),
        "n_train": len(train_idx), "n_dev": len(task.bank_idx), "best_epoch": run.best_epoch,
        "best_dev_accuracy": run.best_dev_accuracy, "test_accuracy": accuracy,
        "history": run.history, "train_s": train_s, "adapter": adapter,
    }
    if config.progress:
        print(f"{name}: best epoch {run.best_epoch}, dev accuracy {run.best_dev_accuracy:.3f}, "
              f"test accuracy {accuracy:.3f}, {train_s:.0f} s", file=sys.stderr)
    tick = time.perf_counter()
    needed = {task.id_corpus: np.union1d(task.bank_idx, task.test_idx)}
    for _, pool_key, idx, _ in task.oods:
        needed[pool_key] = np.union1d(needed.get(pool_key, np.empty(0, np.int64)), idx)
    merged = run.merged()
    outputs = {key: _run_model(merged, tokenizer, pools[key].texts, idx, class_words,
                               suite.template, config, cache=False)
               for key, idx in needed.items()}
    timing["extract_s"] += time.perf_counter() - tick
    return record, outputs, run


def _detect(
    task: _Task, pools: Mapping[str, Pool], outputs: Mapping[str, _Outputs],
    run: FineTuned | None, class_words: Sequence[str], variant: str,
    common: Mapping[str, Any], registry: Registry, config: FineTunedBenchConfig,
    scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    base: Mapping[str, _Outputs] | None = None,
) -> list[dict[str, Any]]:
    """Every detector on one variant's outputs for one task; rows tagged with the variant."""
    from ..features import likelihood_ratio_inputs

    wanted = config.detectors
    discriminative = run is not None and run.objective == "discriminative"

    def sets(kind: str) -> tuple[FeatureSet, FeatureSet, list[FeatureSet]]:
        def make(pool_key: str, idx: np.ndarray, name: str, labels: Any = None) -> FeatureSet:
            out = outputs[pool_key]
            rows = torch.as_tensor(idx, dtype=torch.long)
            x = out.features[rows]
            if discriminative:
                assert run is not None
                z = run.head_logits(x)
            else:
                z = out.logits_of(rows, class_words)
                if kind == "vocab":
                    z = z - out.vocab_logsumexp[rows, None]
            stats = out.likelihood[rows]
            if kind == "ratio":
                assert base is not None
                stats = likelihood_ratio_inputs(stats, base[pool_key].likelihood[rows])
            return FeatureSet(name, x, z, labels, lm_stats=stats)

        bank = make(task.id_corpus, task.bank_idx, "bank", task.bank_labels)
        id_test = make(task.id_corpus, task.test_idx, "id_test")
        oods = [make(pool_key, idx, s.name) for s, pool_key, idx, _ in task.oods]
        return bank, id_test, oods

    first = common["seed"] == config.seeds[0] and common["shots"] == str(config.shots[0])

    def keep(det: str, ood: str, a: Any, b: Any) -> None:
        if first:
            scores.setdefault(f"{ood} [{variant}]", {})[det] = (_np(a), _np(b))

    plain = [d for d in (wanted or registry.detectors)
             if d in registry.detectors and d != "likelihood_ratio"]
    found = run_detectors(*sets("label"), registry=registry, detectors=plain, on_scores=keep)
    if not discriminative and "maxlogit" in registry.detectors and (
            wanted is None or MSP_VOCAB in wanted):
        extra = run_detectors(*sets("vocab"), registry=registry, detectors=["maxlogit"],
                              on_scores=lambda d, o, a, b: keep(MSP_VOCAB, o, a, b))
        for row in extra:
            row["detector"] = MSP_VOCAB
        found += extra
    if base is not None and "likelihood_ratio" in registry.detectors and (
            wanted is None or "likelihood_ratio" in wanted):
        found += run_detectors(*sets("ratio"), registry=registry,
                               detectors=["likelihood_ratio"], on_scores=keep)
    info = {"seed": common["seed"], "n_bank": len(task.bank_idx), "n_id": len(task.test_idx),
            "id_classes": ",".join(task.id_classes)}
    tagged = []
    for row in found:
        entry = _tag(row, task, info, -1)
        entry.update(variant=variant, shots=common["shots"], n_train=common["n_train"],
                     id_accuracy=common.get("id_accuracy"))
        tagged.append(entry)
    return tagged


# ------------------------------------------------------------------------------ outputs
TABLE_COLUMNS = ("setting", "variant", "shots", "detector", "auroc_pm", "fpr95_pm",
                 "aupr_in_pm", "id_accuracy_pm", "n_seeds")
_HEADERS = {**TABLE_HEADERS, "id_accuracy_pm": "ID acc."}
TRAINING_COLUMNS = ("setting", "seed", "variant", "shots", "n_train", "n_dev", "best_epoch",
                    "best_dev_accuracy", "test_accuracy", "train_s")


def comparison(table: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (setting, shots, detector): AUROC and FPR95 of each variant side by side."""
    variants = [v for v in VARIANTS if any(row["variant"] == v for row in table)]
    empty = {f"{v}_{m}": None for v in variants for m in ("auroc", "fpr95")}
    wide: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in table:
        key = (row["setting"], row["shots"], row["detector"])
        entry = wide.setdefault(key, {"setting": key[0], "shots": key[1], "detector": key[2],
                                      **empty})
        entry[f"{row['variant']}_auroc"] = row.get("auroc")
        entry[f"{row['variant']}_fpr95"] = row.get("fpr95")
    return list(wide.values())


def render_fine_tuned(result: FineTunedResult) -> tuple[str, str]:
    """The report as Markdown and plain text: variants side by side, full table, training."""
    s = result.meta["settings"]
    config = s["config"]
    title = (f"fine-tuned benchmark: model {config['model']}, final layer, last token, bank = "
             f"ID validation split, seeds {config['seeds']}, shots {config['shots']}")
    train = config["train"]
    notes = [
        "AUROC / FPR95 / AUPR-In: mean ± sample std over seeds; ID is the positive class.",
        f"LoRA r16 α16 dropout 0.05 on q/k/v/o; lr {train['learning_rate']}, "
        f"{train['max_epochs']} epochs max, early stop patience {train['patience']} after "
        f"epoch {train['min_epochs']}; reporting epoch: {s['reporting_epoch']}.",
        "ID acc.: greedy generation, exact match (generative); head argmax (discriminative).",
    ]
    present = [v for v in VARIANTS if any(r["variant"] == v for r in result.table)]
    side = comparison(result.table)
    side_cols = ["setting", "shots", "detector",
                 *[f"{v}_{m}" for m in ("auroc", "fpr95") for v in present]]
    md = [f"# {title}", "", *[f"- {n}" for n in notes], "",
          "## Zero-grad vs fine-tuned", "", markdown_table(side, side_cols, {}), "",
          "## All results", "", markdown_table(result.table, TABLE_COLUMNS, _HEADERS), "",
          "## Fine-tuning runs", "", markdown_table(result.training, TRAINING_COLUMNS, {}), ""]
    txt = [title, *notes, "", metrics.format_table(side, side_cols), "",
           metrics.format_table(result.training, TRAINING_COLUMNS), ""]
    return "\n".join(md), "\n".join(txt)


def write_fine_tuned_outputs(result: FineTunedResult, out_dir: str | os.PathLike[str]
                             ) -> dict[str, Any]:
    """Write ``results.json`` (format ``ood_zoo.bench``, rows carry ``variant`` and
    ``shots``), ``table.md``, ``table.txt`` and ``plots/`` into ``out_dir``, atomically."""
    from .plots import plot_setting, plot_training, slug

    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    plot_status: dict[str, Any] = {"skipped": "disabled"}
    if result.meta["settings"]["config"].get("plots", True):
        try:
            files = []
            for name, per_detector in result.scores.items():
                picked = {d: per_detector[d] for d in
                          (*PLOT_DETECTORS, "perplexity", "likelihood_ratio")
                          if d in per_detector}
                if picked:
                    files.append(plot_setting(name, picked, directory / "plots" /
                                              f"{slug(name)}.png"))
            if result.training:
                files.append(plot_training(result.training,
                                           directory / "plots" / "training.png"))
            plot_status = {"files": files}
        except ImportError:
            from .plots import MISSING_MATPLOTLIB

            print(MISSING_MATPLOTLIB, file=sys.stderr)
            plot_status = {"skipped": MISSING_MATPLOTLIB}
    md, txt = render_fine_tuned(result)
    payload = {
        "format": "ood_zoo.bench", "format_version": 1, "table": result.table,
        "rows": result.rows, "summary": comparison(result.table), "training": result.training,
        **result.meta, "plots": plot_status,
    }
    outputs = {
        "results.json": json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n",
        "table.md": md + "\n",
        "table.txt": txt + "\n",
    }
    written = []
    for name, text in outputs.items():
        atomic_write_bytes(directory / name, text.encode("utf-8"))
        written.append(str(directory / name))
    return {"files": written + list(plot_status.get("files", [])), "plots": plot_status}
