"""CLINC150 and Banking77: intent classification. CLINC's banking and travel domains, with some
intents held out, are the paper's near-OOD benchmark."""

from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ...specs import DatasetSpec
from ..textset import TextSet
from ._files import DatasetFilesError, Splits, data_root, file_dataset, labelled, missing_files

_CLINC_URL = "https://github.com/clinc/oos-eval (data/data_full.json)"
_CLINC_SOURCE = "CLINC150 (Larson et al., EMNLP 2019), data_full.json from clinc/oos-eval"
_CLINC_LICENSE = "CC BY 3.0 (clinc/oos-eval)"
_CLINC_SPLITS = (("train", "train"), ("val", "validation"), ("test", "test"))
_CLINC_TSV = (("train_para.tsv", "train"), ("valid_para.tsv", "validation"),
              ("test_para.tsv", "test"))

#: The paper's label paraphrases (``para.ipynb``): each label in a domain gets a unique first
#: token, which MSP and energy need (paper.md §1, §8.4).
CLINC_PARAPHRASES: dict[str, str] = {
    "bill_due": "due_bill",
    "transfer": "money_transfer",
    "travel_notification": "notification_of_travel",
    "travel_suggestion": "suggestion_of_travel",
    "travel_alert": "alert_of_travel",
    "book_hotel": "reserve_hotel",
    "car_rental": "rent_car",
}

#: The intents of the two domains the paper uses, paraphrased, in the order of the paper's
#: ``data/clinc_full/domains_para.json``. The order matters: the held-out intents are drawn from
#: this list with ``np.random.choice``.
CLINC_DOMAINS: dict[str, tuple[str, ...]] = {
    "banking": (
        "freeze_account", "routing", "pin_change", "due_bill", "pay_bill", "account_blocked",
        "interest_rate", "min_payment", "bill_balance", "money_transfer", "order_checks",
        "balance", "spending_history", "transactions", "report_fraud",
    ),
    "travel": (
        "plug_type", "notification_of_travel", "translate", "flight_status",
        "international_visa", "timezone", "exchange_rate", "suggestion_of_travel",
        "alert_of_travel", "vaccines", "lost_luggage", "book_flight", "reserve_hotel",
        "carry_on", "rent_car",
    ),
}


def _clinc_rows(root: Path) -> dict[str, list[tuple[str, str]]]:
    """``{split: [(text, intent), ...]}`` with ``oos`` rows under ``oos_<split>``."""
    path = root / "data_full.json" if root.is_dir() else root
    if path.is_file() and path.suffix == ".json":
        with path.open(encoding="utf-8") as handle:
            raw = json.load(handle)
        out: dict[str, list[tuple[str, str]]] = {}
        for key, split in _CLINC_SPLITS:
            if key not in raw:
                raise DatasetFilesError(f"{path}: no {key!r} key (keys: {sorted(raw)})")
            out[split] = [(str(t), str(y)) for t, y in raw[key]]
            out[f"oos_{split}"] = [(str(t), "oos") for t, _ in raw.get(f"oos_{key}", [])]
        return out
    if root.is_dir() and all((root / f).is_file() for f, _ in _CLINC_TSV):
        out = {}
        for file, split in _CLINC_TSV:
            with (root / file).open(encoding="utf-8", newline="") as handle:
                rows = [r for i, r in enumerate(csv.reader(handle, delimiter="\t")) if i and
                        len(r) == 2]
            out[split] = [(t, y) for t, y in rows if y != "oos"]
            out[f"oos_{split}"] = [(t, y) for t, y in rows if y == "oos"]
        return out
    raise missing_files(
        "CLINC150", root, "data_full.json (or the paper's {train,valid,test}_para.tsv)", _CLINC_URL
    )


def clinc150(
    root: str | os.PathLike[str] | None = None,
    *,
    paraphrase: bool = True,
    oos: bool = False,
    dedupe: bool = False,
) -> Splits:
    """CLINC150 intent classification (150 intents), the full split.

    Parameters
    ----------
    root : path, optional
        The directory holding ``data_full.json`` (keys ``train``, ``val``, ``test``,
        ``oos_train``, ``oos_val``, ``oos_test``; each a list of ``[text, intent]``), or the file
        itself. The paper's ``{train,valid,test}_para.tsv`` (``text<TAB>label`` with a header) are
        read too. Default: ``$OOD_ZOO_DATA/clinc150``.
    paraphrase : bool
        Rename the 7 intents of :data:`CLINC_PARAPHRASES` as the paper does.
    oos : bool
        Also return CLINC's out-of-scope utterances as unlabelled ``oos_train``,
        ``oos_validation`` and ``oos_test`` (the paper does not use them).
    dedupe : bool
        Drop exact repeats within each split.

    Returns
    -------
    dict of str to TextSet
        ``train`` (15,000), ``validation`` (3,000) and ``test`` (4,500); ``label_names`` are the
        intents sorted by name.

    Raises
    ------
    DatasetFilesError
        If the files are missing.

    Notes
    -----
    Licence: CC BY 3.0. Larson et al., "An Evaluation Dataset for Intent Classification and
    Out-of-Scope Prediction", EMNLP 2019.
    """
    base = data_root(root, "clinc150", "CLINC150", "data_full.json")
    rows = _clinc_rows(base)
    rename = CLINC_PARAPHRASES if paraphrase else {}
    names = sorted({rename.get(y, y) for split in ("train", "validation", "test")
                    for _, y in rows[split]})
    index = {n: i for i, n in enumerate(names)}
    out: Splits = {}
    for split in ("train", "validation", "test"):
        texts = [t for t, _ in rows[split]]
        labels = [index[rename.get(y, y)] for _, y in rows[split]]
        out[split] = labelled(f"clinc150_{split}", texts, labels, names, _CLINC_SOURCE,
                              _CLINC_LICENSE, dedupe=dedupe)
    if oos:
        for split in ("train", "validation", "test"):
            texts = [t for t, _ in rows[f"oos_{split}"]]
            out[f"oos_{split}"] = labelled(f"clinc150_oos_{split}", texts, None, (),
                                           _CLINC_SOURCE, _CLINC_LICENSE, dedupe=dedupe)
    return out


def clinc_heldout_intents(
    domain: Literal["banking", "travel"], seed: int, *, known_ratio: float = 0.5
) -> tuple[list[str], list[str]]:
    """The paper's known (ID) and held-out (OOD) intents of a CLINC domain for ``seed``.

    The official code (``data.py``, ``load_clinc``) does, on the domain's intents in
    :data:`CLINC_DOMAINS` order::

        n_known_cls = round(len(label_list) * known_ratio)        # round(7.5) = 8
        np.random.seed(seed)
        known = list(np.random.choice(np.array(label_list), n_known_cls, replace=False))

    This function makes the same draw on a private ``np.random.RandomState(seed)``, which yields
    the same numbers as seeding the global legacy generator, without touching the global state.

    Parameters
    ----------
    domain : {"banking", "travel"}
    seed : int
        The paper uses seeds 1 to 5.
    known_ratio : float
        The fraction of the domain's 15 intents kept as ID (0.5 gives 8 ID and 7 held out).

    Returns
    -------
    known : list of str
        The ID intents in the order drawn; this order is the paper's label index order.
    held_out : list of str
        The held-out intents, in domain order.
    """
    try:
        labels = CLINC_DOMAINS[domain]
    except KeyError:
        raise ValueError(
            f"unknown CLINC domain {domain!r}; the paper's domains: {sorted(CLINC_DOMAINS)}"
        ) from None
    n_known = round(len(labels) * known_ratio)
    rng = np.random.RandomState(seed)
    known = [str(x) for x in rng.choice(np.array(labels), n_known, replace=False)]
    return known, [y for y in labels if y not in known]


def clinc150_domain(
    root: str | os.PathLike[str] | None = None,
    *,
    domain: Literal["banking", "travel"] = "banking",
    seed: int = 1,
    known_ratio: float = 0.5,
    dedupe: bool = False,
) -> Splits:
    """The paper's near-OOD benchmark: one CLINC domain, 8 ID intents and 7 held out.

    Parameters
    ----------
    root : path, optional
        As for :func:`clinc150`.
    domain : {"banking", "travel"}
    seed : int
        Chooses the held-out intents (:func:`clinc_heldout_intents`); the paper uses 1 to 5.
    known_ratio : float
        The ID share of the domain's 15 intents.
    dedupe : bool
        Drop exact repeats within each split.

    Returns
    -------
    dict of str to TextSet
        ``train`` / ``validation`` / ``test``: the ID intents' utterances (800 / 160 / 240),
        ``label_names`` in the paper's label order. ``ood_test``: the held-out intents' test
        utterances (210), labelled by held-out intent. CLINC's ``oos`` utterances are not used,
        as in the paper. Fit the detector bank on ``validation`` (paper.md §8.2).
    """
    known, held_out = clinc_heldout_intents(domain, seed, known_ratio=known_ratio)
    full = clinc150(root, paraphrase=True, dedupe=dedupe)
    out: Splits = {}
    for split in ("train", "validation", "test"):
        out[split] = _subset_classes(full[split], known, f"clinc150_{domain}_{split}")
    out["ood_test"] = _subset_classes(full["test"], held_out, f"clinc150_{domain}_ood_test")
    return out


def _subset_classes(data: TextSet, names: Sequence[str], name: str) -> TextSet:
    """The texts of classes ``names``, relabelled ``0..len(names)-1`` in that order."""
    assert data.labels is not None
    missing = [n for n in names if n not in data.label_names]
    if missing:
        raise DatasetFilesError(f"{data.name}: the file has no intents {missing}")
    old = np.array([data.label_names.index(n) for n in names])
    mapping = np.full(len(data.label_names), -1, dtype=np.int64)
    mapping[old] = np.arange(len(names))
    idx = np.flatnonzero(mapping[data.labels] >= 0)
    return TextSet(name, [data.texts[i] for i in idx], mapping[data.labels[idx]], tuple(names),
                   data.source, data.license)


# ------------------------------------------------------------------------------ Banking77

_B77_URL = "https://github.com/PolyAI-LDN/task-specific-datasets (banking_data/)"
_B77_SOURCE = "Banking77 (Casanueva et al. 2020), banking_data/{train,test}.csv from PolyAI"
_B77_LICENSE = "CC BY 4.0 (PolyAI task-specific-datasets)"


def banking77(root: str | os.PathLike[str] | None = None, *, dedupe: bool = False) -> Splits:
    """Banking77 intent classification (77 intents).

    Parameters
    ----------
    root : path, optional
        The directory holding ``train.csv`` and ``test.csv`` (columns ``text,category``).
        Default: ``$OOD_ZOO_DATA/banking77``.
    dedupe : bool
        Drop exact repeats within each split.

    Returns
    -------
    dict of str to TextSet
        ``train`` (10,003) and ``test`` (3,080); ``label_names`` are the categories sorted.

    Notes
    -----
    Licence: CC BY 4.0. Casanueva et al., "Efficient Intent Detection with Dual Sentence
    Encoders", NLP4ConvAI 2020.
    """
    base = data_root(root, "banking77", "Banking77", "train.csv, test.csv")
    files = {split: base / f"{split}.csv" for split in ("train", "test")}
    if not any(p.is_file() for p in files.values()):
        raise missing_files("Banking77", base, "train.csv and test.csv", _B77_URL)
    rows: dict[str, list[tuple[str, str]]] = {}
    for split, path in files.items():
        if not path.is_file():
            continue
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"text", "category"} <= set(reader.fieldnames):
                raise DatasetFilesError(
                    f"{path}: expected columns text,category, got {reader.fieldnames}"
                )
            rows[split] = [(r["text"], r["category"]) for r in reader]
    names = sorted({y for part in rows.values() for _, y in part})
    return {
        split: labelled(f"banking77_{split}", [t for t, _ in part],
                        [names.index(y) for _, y in part], names, _B77_SOURCE, _B77_LICENSE,
                        dedupe=dedupe)
        for split, part in rows.items()
    }


#: The intent benchmarks (part of :data:`ood_zoo.data.BUILTIN_DATASETS`).
INTENT_DATASETS: tuple[DatasetSpec, ...] = (
    file_dataset("clinc150", clinc150, "CLINC150 intents, full split (data_full.json)",
                 _CLINC_SOURCE, _CLINC_LICENSE, "data_full.json"),
    file_dataset("clinc150_banking", functools.partial(clinc150_domain, domain="banking"),
                 "CLINC150 banking: 8 ID vs 7 held-out intents by seed (paper near-OOD)",
                 _CLINC_SOURCE, _CLINC_LICENSE, "data_full.json", seeded=True),
    file_dataset("clinc150_travel", functools.partial(clinc150_domain, domain="travel"),
                 "CLINC150 travel: 8 ID vs 7 held-out intents by seed (paper near-OOD)",
                 _CLINC_SOURCE, _CLINC_LICENSE, "data_full.json", seeded=True),
    file_dataset("banking77", banking77, "Banking77 intents (train.csv/test.csv)", _B77_SOURCE,
                 _B77_LICENSE, "train.csv, test.csv"),
)
