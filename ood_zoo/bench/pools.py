"""Pools and tasks: the texts a suite draws once per corpus, and what each seed fits and scores.

Both the zero-grad and the fine-tuned suites work in two steps (the splits are described in
:mod:`ood_zoo.bench.suites`):

1. :func:`draw_pools` draws one :class:`Pool` per corpus, once (:data:`~.suites.POOL_SEED`), so
   a model reads each text once whatever the seeds, settings and detectors.
2. :func:`tasks` turns the pools into one :class:`Task` per ID corpus and held-out count for a
   seed: the pool parts of that seed (:func:`ood_zoo.data.split_pool`), the ID classes
   (drawn with the paper's RNG call in held-out settings), and the OOD sets it is scored on.
   :meth:`Task.inputs` cuts the detectors' inputs out of per-pool features and
   :meth:`Task.row` labels a runner row with the setting and the sizes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..data import choose_id_classes, few_shot_indices, split, split_pool
from .runner import DetectorInputs
from .suites import POOL_SEED, Setting, Suite

__all__ = ["RESULT_KEYS", "MakeInputs", "OodSet", "Pool", "Task", "draw_pools", "label_words",
           "tasks"]

#: The keys of a runner row that a suite's result row keeps.
RESULT_KEYS = ("auroc", "fpr95", "aupr_in", "aupr_out", "fit_s", "score_s", "error")


@dataclass(frozen=True)
class Pool:
    """The texts drawn from one corpus and the parts each seed splits them into.

    Attributes
    ----------
    key : str
        The corpus key in the suite.
    texts : list of str
    labels : numpy.ndarray or None
        Class codes into ``label_names`` (``None`` for an unlabelled OOD corpus).
    label_names : tuple of str
    sizes : dict of str to int
        Texts per part (``train``, ``validation``, ``test``) asked of every seed's split.
    """

    key: str
    texts: list[str]
    labels: np.ndarray | None
    label_names: tuple[str, ...]
    sizes: dict[str, int]


def draw_pools(
    suite: Suite, part_sizes: Callable[[bool, int], dict[str, int]]
) -> tuple[dict[str, Pool], dict[str, str]]:
    """One pool per corpus the suite's settings use, drawn once with :data:`~.suites.POOL_SEED`.

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


def label_words(suite: Suite, pool: Pool) -> list[str]:
    """The word the LM is asked for for each class of ``pool``, in class order."""
    mapping = suite.corpora[pool.key].label_words or {}
    return [mapping.get(name, name) for name in pool.label_names]


@dataclass(frozen=True)
class OodSet:
    """The OOD texts of one setting in one task: rows ``idx`` of pool ``pool``."""

    setting: Setting
    pool: str
    idx: np.ndarray
    classes: tuple[str, ...] = ()  # the held-out classes, in held-out-class settings


#: ``make(pool_key, rows)``: the detector inputs of those rows of that pool.
MakeInputs = Callable[[str, np.ndarray], DetectorInputs]


@dataclass(frozen=True)
class Task:
    """One ID task in one seed: its classes, its parts of the ID pool, and its OOD sets.

    ``*_idx`` are rows of the ID pool restricted to ``id_classes`` and ``*_labels`` their class
    codes into ``id_classes``. ``train_*`` are empty when the pool has no train part.
    """

    seed: int
    id_corpus: str
    holdout: int
    id_classes: tuple[str, ...]
    train_idx: np.ndarray
    train_labels: np.ndarray
    bank_idx: np.ndarray
    bank_labels: np.ndarray
    test_idx: np.ndarray
    test_labels: np.ndarray
    oods: tuple[OodSet, ...]

    def inputs(
        self, make: MakeInputs
    ) -> tuple[DetectorInputs, DetectorInputs, dict[str, DetectorInputs]]:
        """The bank (with its labels), the ID test set and each OOD set by setting name."""
        bank = replace(make(self.id_corpus, self.bank_idx), labels=self.bank_labels)
        oods = {ood.setting.name: make(ood.pool, ood.idx) for ood in self.oods}
        return bank, make(self.id_corpus, self.test_idx), oods

    def row(self, result: Mapping[str, Any], layer: int) -> dict[str, Any]:
        """A runner row (:func:`~.runner.run_detectors`) labelled with its setting and sizes."""
        ood = next(o for o in self.oods if o.setting.name == result["ood_set"])
        setting = ood.setting
        return {
            "setting": setting.name, "kind": setting.kind, "id": setting.id_corpus,
            "ood": setting.ood_corpus, "detector": result["detector"], "layer": layer,
            "seed": self.seed, "n_bank": len(self.bank_idx), "n_id": len(self.test_idx),
            "id_classes": ",".join(self.id_classes), "n_ood": len(ood.idx),
            "ood_classes": ",".join(ood.classes), **{k: result[k] for k in RESULT_KEYS},
        }

    def few_shot(self, shots: int | str) -> Task:
        """The task with K examples per class of train and bank (the paper's ``select_few_shot``,
        :func:`ood_zoo.data.few_shot_indices`); ``"full"`` keeps them all."""
        train = few_shot_indices(self.train_labels, shots, seed=self.seed)
        bank = few_shot_indices(self.bank_labels, shots, seed=self.seed)
        return replace(self, train_idx=self.train_idx[train], train_labels=self.train_labels[train],
                       bank_idx=self.bank_idx[bank], bank_labels=self.bank_labels[bank])


def tasks(suite: Suite, pools: Mapping[str, Pool], seed: int, bank: str) -> list[Task]:
    """The ID tasks of ``seed``: one per (ID corpus, held-out count) whose corpora were drawn.

    Parameters
    ----------
    suite : Suite
    pools : mapping of str to Pool
        From :func:`draw_pools`.
    seed : int
        Seeds the pool parts and the held-out classes.
    bank : {"validation", "train"}
        The ID part the detectors are fit on.
    """
    parts = {
        key: split_pool(len(pool.texts), pool.sizes, seed, pool.labels)
        for key, pool in pools.items()
    }
    groups: dict[tuple[str, int], list[Setting]] = defaultdict(list)
    for setting in suite.settings:
        if setting.id_corpus in pools and setting.ood_corpus in pools:
            groups[(setting.id_corpus, setting.holdout)].append(setting)
    found = []
    for (id_key, holdout), settings in groups.items():
        pool = pools[id_key]
        labels = pool.labels
        assert labels is not None
        names = pool.label_names
        id_classes = (tuple(choose_id_classes(names, n_ood=holdout, seed=seed)) if holdout
                      else names)
        ood_classes = tuple(n for n in names if n not in id_classes)
        id_codes = [names.index(c) for c in id_classes]
        remap = np.full(len(names), -1, dtype=np.int64)
        remap[id_codes] = np.arange(len(id_codes))

        def of(part: str, codes: list[int], key: str = id_key,
               labels: np.ndarray = labels) -> np.ndarray:
            if part not in parts[key]:
                return np.empty(0, dtype=np.int64)
            idx = parts[key][part]
            return idx[np.isin(labels[idx], codes)]

        train_idx, bank_idx, test_idx = of("train", id_codes), of(bank, id_codes), of(
            "test", id_codes)
        oods = []
        for s in settings:
            if holdout:
                held_out = of("test", [names.index(c) for c in ood_classes])
                oods.append(OodSet(s, id_key, held_out, ood_classes))
            else:
                oods.append(OodSet(s, s.ood_corpus, parts[s.ood_corpus]["test"]))
        found.append(Task(seed, id_key, holdout, id_classes, train_idx, remap[labels[train_idx]],
                          bank_idx, remap[labels[bank_idx]], test_idx, remap[labels[test_idx]],
                          tuple(oods)))
    return found
