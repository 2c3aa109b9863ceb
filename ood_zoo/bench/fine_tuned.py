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
reads each variant's own model likelihood of the text, ``renyi``, ``fisher_rao`` and
``self_certainty`` its next-token distributions; ``likelihood_ratio`` (fine-tuned variants)
reads ``log p_ft(x) - log p_base(x)``.

Pools and tasks are the zero-grad suite's (:mod:`ood_zoo.bench.pools`): one pool per corpus,
split per seed into train / validation / test parts, held-out classes drawn with the paper's RNG.
K-shot runs keep K examples per class of *both* train and validation (the paper's
``select_few_shot``, :meth:`~ood_zoo.bench.pools.Task.few_shot`).

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
from ..detectors.likelihood import RATIO_STATS
from ..features import Extraction, extract, is_causal_lm, likelihood_ratio_inputs, load_model
from ..finetune import FineTuned, TrainConfig, fine_tune
from ..finetune.train import OBJECTIVES
from ..registry import Registry, get_registry
from .plots import PLOT_DETECTORS, slug, write_plots
from .pools import MakeInputs, Pool, Task, draw_pools, label_words, tasks
from .runner import MSP_VOCAB, DetectorInputs, run_detectors, run_msp_vocab
from .session import RunSession
from .suites import FINE_TUNED, Suite
from .tables import (
    POSITIVE,
    TABLE_HEADERS,
    aggregate,
    convention_record,
    json_bytes,
    jsonable,
    markdown_table,
    write_files,
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
        """Texts per part of an ID corpus's pool (:data:`DEFAULT_PART_SIZES` by default)."""
        return dict(self.part_sizes or DEFAULT_PART_SIZES)

    def pool_sizes(self, is_id: bool, n: int) -> dict[str, int]:
        """Texts per part of a corpus's pool (:func:`~.pools.draw_pools`): train, validation
        and test for an ID corpus, test only for an OOD corpus."""
        sizes = self.sizes()
        return sizes if is_id else {"test": sizes["test"]}


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
def _extract_rows(model: Any, tokenizer: Any, texts: Sequence[str], idx: np.ndarray,
                  label_words: Sequence[str], template: str, config: FineTunedBenchConfig,
                  cache: bool) -> Extraction:
    """Final-layer last-token features, label-token logits and LM statistics of ``texts[idx]``,
    as a bundle over all of ``texts`` (the rows outside ``idx`` are NaN)."""
    got = extract([texts[i] for i in idx], model, tokenizer, layers=-1, pooling="last",
                  template=template, max_length=config.train.max_length,
                  batch_size=config.batch_size, label_words=list(label_words), lm_stats=True,
                  cache=cache, progress=config.progress)
    rows = torch.as_tensor(idx, dtype=torch.long)

    def full(values: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(texts), *values.shape[1:]), float("nan"), dtype=values.dtype)
        out[rows] = values
        return out

    return replace(got, features=full(got.features), label_logits=full(got.label_logits),
                   vocab_logsumexp=full(got.vocab_logsumexp), lm_stats=full(got.lm_stats))


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
        If no setting can run, or on an unknown detector or a model that is not a causal LM.
    """
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
    rows: list[dict[str, Any]] = []
    training: list[dict[str, Any]] = []
    scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    with RunSession(config.threads, stages=("train", "extract", "detectors")) as session:
        pools, skipped = draw_pools(suite, config.pool_sizes)
        base_model, tokenizer = load_model(config.model)
        if not is_causal_lm(base_model):
            raise ValueError(f"{config.model} is not a causal LM with an LM head; the "
                             "fine-tuned suite needs one")
        words = {key: label_words(suite, pool) for key, pool in pools.items()
                 if key in suite.id_corpora()}
        all_words = list(dict.fromkeys(w for ws in words.values() for w in ws))
        with session.stage("extract"):
            base = {key: _extract_rows(base_model, tokenizer, pool.texts,
                                       np.arange(len(pool.texts)), all_words, suite.template,
                                       config, config.cache)
                    for key, pool in pools.items()}
        del base_model

        for seed in config.seeds:
            for task in tasks(suite, pools, seed, "validation"):
                names = pools[task.id_corpus].label_names
                class_words = [words[task.id_corpus][names.index(c)] for c in task.id_classes]
                for shots in config.shots:
                    shot_task = task.few_shot(shots)
                    tags = {"shots": str(shots), "n_train": len(shot_task.train_idx),
                            "id_accuracy": None}
                    first = seed == config.seeds[0] and shots == config.shots[0]
                    with session.stage("detectors"):
                        rows += _detect(shot_task, base, None, class_words, "zero-grad", tags,
                                        registry, config, scores if first else None)
                    for objective in config.objectives:
                        record, outputs, run = _train_one(
                            config, suite, tokenizer, pools, shot_task, class_words, objective,
                            shots, session, adapters_dir)
                        training.append(record)
                        with session.stage("detectors"):
                            rows += _detect(shot_task, outputs, run, class_words, objective,
                                            {**tags, "id_accuracy": record["test_accuracy"]},
                                            registry, config, scores if first else None,
                                            base=base)
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
            "threads": session.threads,
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
        **session.metadata(),
    }
    return FineTunedResult(rows, table, training, scores, meta)


def _train_one(
    config: FineTunedBenchConfig, suite: Suite, tokenizer: Any, pools: Mapping[str, Pool],
    task: Task, class_words: Sequence[str], objective: str, shots: Shot, session: RunSession,
    adapters_dir: str | os.PathLike[str] | None,
) -> tuple[dict[str, Any], dict[str, Extraction], FineTuned]:
    """Fine-tune a fresh copy of the base model on the task's train part (early stopping on its
    bank), measure its ID test accuracy, save its adapters, and run the merged model over every
    text the task scores."""
    texts = pools[task.id_corpus].texts
    model, _ = load_model(config.model)
    with session.stage("train"):
        tick = time.perf_counter()
        run = fine_tune(model, tokenizer, [texts[i] for i in task.train_idx], task.train_labels,
                        [texts[i] for i in task.bank_idx], task.bank_labels,
                        label_words=class_words, objective=objective,  # type: ignore[arg-type]
                        template=suite.template, config=config.train)
        train_s = time.perf_counter() - tick
    accuracy = run.accuracy([texts[i] for i in task.test_idx], task.test_labels,
                            progress=config.progress)
    setting = task.oods[0].setting.name
    name = f"{setting}-seed{task.seed}-{objective}-k{shots}"
    adapter = None
    if config.save_adapters and adapters_dir is not None:
        adapter = str(run.save(Path(adapters_dir) / slug(name)))
    record = {
        "setting": setting, "seed": task.seed, "variant": objective, "shots": str(shots),
        "n_train": len(task.train_idx), "n_dev": len(task.bank_idx),
        "best_epoch": run.best_epoch, "best_dev_accuracy": run.best_dev_accuracy,
        "test_accuracy": accuracy, "history": run.history, "train_s": train_s,
        "adapter": adapter,
    }
    if config.progress:
        print(f"{name}: best epoch {run.best_epoch}, dev accuracy {run.best_dev_accuracy:.3f}, "
              f"test accuracy {accuracy:.3f}, {train_s:.0f} s", file=sys.stderr)
    with session.stage("extract"):
        needed = {task.id_corpus: np.union1d(task.bank_idx, task.test_idx)}
        for ood in task.oods:
            needed[ood.pool] = np.union1d(needed.get(ood.pool, np.empty(0, np.int64)), ood.idx)
        merged = run.merged()
        outputs = {key: _extract_rows(merged, tokenizer, pools[key].texts, idx, class_words,
                                      suite.template, config, cache=False)
                   for key, idx in needed.items()}
    return record, outputs, run


def _detect(
    task: Task, outputs: Mapping[str, Extraction], run: FineTuned | None,
    class_words: Sequence[str], variant: str, tags: Mapping[str, Any], registry: Registry,
    config: FineTunedBenchConfig,
    scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] | None,
    base: Mapping[str, Extraction] | None = None,
) -> list[dict[str, Any]]:
    """Every detector on one variant's outputs for one task; rows tagged with the variant and
    ``tags`` (``shots``, ``n_train``, ``id_accuracy``). Scores are kept in ``scores`` if given."""
    wanted = config.detectors
    discriminative = run is not None and run.objective == "discriminative"

    def inputs(kind: str) -> MakeInputs:
        def make(pool_key: str, idx: np.ndarray) -> DetectorInputs:
            part = outputs[pool_key].rows(idx)
            x = part.layer(-1)
            head = None
            if run is not None and discriminative:
                logits = run.head_logits(x)
                weight = run.head.weight.detach().float().cpu()
                head = (weight, torch.zeros(weight.shape[0]))
            elif kind == "vocab":
                logits = part.for_labels(class_words).label_log_probs()
            else:
                logits = part.for_labels(class_words).label_logits
                head = part.for_labels(class_words).label_head(-1)
            if kind == "ratio":
                assert base is not None
                stats = likelihood_ratio_inputs(part.lm_stats, base[pool_key].rows(idx).lm_stats)
                return DetectorInputs(x, logits, lm_stats=stats, lm_columns=RATIO_STATS,
                                      head=head)
            return DetectorInputs(x, logits, lm_stats=part.lm_stats, head=head)

        return make

    def keep(det: str, ood: str, a: np.ndarray, b: np.ndarray) -> None:
        if scores is not None:
            scores.setdefault(f"{ood} [{variant}]", {})[det] = (a, b)

    plain = [d for d in (wanted or registry.detectors)
             if d in registry.detectors and d != "likelihood_ratio"]
    found = run_detectors(*task.inputs(inputs("label")), registry=registry, detectors=plain,
                          on_scores=keep)
    if not discriminative and (wanted is None or MSP_VOCAB in wanted):
        found += run_msp_vocab(*task.inputs(inputs("vocab")), registry=registry, on_scores=keep)
    if base is not None and "likelihood_ratio" in registry.detectors and (
            wanted is None or "likelihood_ratio" in wanted):
        found += run_detectors(*task.inputs(inputs("ratio")), registry=registry,
                               detectors=["likelihood_ratio"], on_scores=keep)
    return [{**task.row(row, -1), "variant": variant, "shots": tags["shots"],
             "n_train": tags["n_train"], "id_accuracy": tags["id_accuracy"]}
            for row in found]


# ------------------------------------------------------------------------------ outputs
TABLE_COLUMNS = ("setting", "variant", "shots", "detector", "auroc_pm", "fpr95_pm",
                 "aupr_in_pm", "id_accuracy_pm", "n_seeds")
_HEADERS = {**TABLE_HEADERS, "id_accuracy_pm": "ID acc."}
#: Detectors in the per-setting plots: the default ones and the language-model detectors.
_PLOTTED = (*PLOT_DETECTORS, "perplexity", "likelihood_ratio")
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
        metrics.convention(POSITIVE),
        "AUROC / FPR95 / AUPR-In: mean ± sample std over seeds.",
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
    directory = Path(out_dir)
    plot_status = (write_plots(result.scores, directory / "plots", detectors=_PLOTTED,
                               training=result.training)
                   if result.meta["settings"]["config"]["plots"] else {"skipped": "disabled"})
    md, txt = render_fine_tuned(result)
    payload = {
        "format": "ood_zoo.bench", "format_version": 1, "table": result.table,
        "rows": result.rows, "summary": comparison(result.table), "training": result.training,
        "convention": convention_record(), **result.meta, "plots": plot_status,
    }
    files = write_files(directory, {
        "results.json": json_bytes(payload),
        "table.md": (md + "\n").encode("utf-8"),
        "table.txt": (txt + "\n").encode("utf-8"),
    })
    return {"files": files + list(plot_status.get("files", [])), "plots": plot_status}
