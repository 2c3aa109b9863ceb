"""Loaders for the paper's benchmarks, read from files the user already has.

None of these corpora installs offline, so each loader reads the files in the format they are
published in and never downloads anything. Pass ``root=`` (a directory, or for the plain-text sets
a file), or set ``OOD_ZOO_DATA`` to a directory holding one sub-directory per dataset (the
``subdir`` named in each loader's docstring). A missing file raises :class:`DatasetFilesError`
naming the files expected and where they were looked for.

=================  ===========================================  ====================================
loader             files (published format)                     returns
=================  ===========================================  ====================================
:func:`clinc150`   ``data_full.json`` (oos-eval)                train / validation / test, 150
                                                                intents (+ ``oos_*`` on request)
:func:`clinc150_domain`  same                                   the paper's banking / travel split:
                                                                8 ID intents, 7 held out
:func:`banking77`  ``train.csv``, ``test.csv``                  train / test, 77 intents
:func:`sst2`       GLUE ``train.tsv``, ``dev.tsv`` (+ the       train / validation (/ test)
                   paper's ``test.data`` = ``stsa.binary.test``)
:func:`newsgroups20`  ``20news-bydate-{train,test}/<group>/<id>``  train / test, 20 groups
:func:`trec`       ``train_5500.label``, ``TREC_10.label``      train / test, 6 coarse classes
:func:`mnli`       GLUE ``{train,dev_*,test_*}.tsv``            train / validation / test
:func:`rte`        GLUE ``{train,dev,test}.tsv``                train / validation / test
:func:`wmt16`      plain text or ``.sgm``, English side of      one unlabelled TextSet
                   newstest2016 (``test.en``)
:func:`multi30k`   ``test_2016_flickr.en``, ``test_2017_mscoco.en``,  one unlabelled TextSet
                   ``test_2018_flickr.en``
:func:`imdb`       ``aclImdb/{train,test}/{pos,neg}/*.txt``     train / test, negative / positive
=================  ===========================================  ====================================

Unlike the offline corpora, these loaders keep the published rows as they are (stripped, empty
lines dropped) so that counts match the literature; ``dedupe=True`` drops exact repeats. The texts
keep their publishers' terms; the ``license`` of each TextSet states them.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import OodZooError
from .spec import DatasetSpec
from .textset import TextSet, strip_rows

__all__ = [
    "BENCHMARK_DATASETS",
    "CLINC_DOMAINS",
    "CLINC_PARAPHRASES",
    "DATA_ENV",
    "DatasetFilesError",
    "banking77",
    "clinc150",
    "clinc150_domain",
    "clinc_heldout_intents",
    "imdb",
    "mnli",
    "multi30k",
    "newsgroups20",
    "rte",
    "sst2",
    "trec",
    "wmt16",
]

#: Environment variable naming a directory with one sub-directory per dataset.
DATA_ENV = "OOD_ZOO_DATA"

Splits = dict[str, TextSet]


class DatasetFilesError(OodZooError, FileNotFoundError):
    """The files of a dataset loaded from disk are missing; the message names them."""


# ------------------------------------------------------------------------------ helpers


def _root(root: str | os.PathLike[str] | None, subdir: str, title: str, files: str) -> Path:
    if root is not None:
        return Path(root).expanduser()
    base = os.environ.get(DATA_ENV)
    if base:
        return Path(base).expanduser() / subdir
    raise DatasetFilesError(
        f"{title}: no root given. Pass root=<directory with {files}> or set {DATA_ENV} to a "
        f"directory holding {subdir}/"
    )


def _missing(title: str, root: Path, files: str, url: str) -> DatasetFilesError:
    return DatasetFilesError(
        f"{title}: expected {files} under {root}, found none. ood_zoo never downloads "
        f"benchmarks; get them from {url} and pass root= (or set {DATA_ENV})."
    )


def _first_existing(root: Path, names: Iterable[str]) -> Path | None:
    for name in names:
        path = root / name
        if path.is_file():
            return path
    return None


def _labelled(
    name: str,
    texts: Sequence[str],
    labels: Sequence[int] | None,
    label_names: Sequence[str],
    source: str,
    license: str,
    *,
    dedupe: bool,
    domains: Sequence[int] | None = None,
    domain_names: Sequence[str] = (),
) -> TextSet:
    columns = [c for c in (labels, domains) if c is not None]
    kept, cols = strip_rows(texts, *columns, dedupe_texts=dedupe)
    y = cols.pop(0) if labels is not None else None
    d = cols.pop(0) if domains is not None else None
    return TextSet(
        name, kept, y, tuple(label_names) if labels is not None else (), source, license,
        domains=d, domain_names=tuple(domain_names) if domains is not None else (),
    )


def _read_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    with path.open(encoding=encoding, errors="replace", newline="") as handle:
        return handle.read().splitlines()


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    """A GLUE tsv: header and rows, split on tabs only (GLUE text contains quote characters)."""
    lines = _read_lines(path)
    if not lines:
        return [], []
    header = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    return header, rows


def _column(header: list[str], name: str, path: Path) -> int:
    try:
        return header.index(name)
    except ValueError:
        raise DatasetFilesError(f"{path}: no column {name!r} in the header {header}") from None


# ------------------------------------------------------------------------------ CLINC150

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
    raise _missing(
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
    base = _root(root, "clinc150", "CLINC150", "data_full.json")
    rows = _clinc_rows(base)
    rename = CLINC_PARAPHRASES if paraphrase else {}
    names = sorted({rename.get(y, y) for split in ("train", "validation", "test")
                    for _, y in rows[split]})
    index = {n: i for i, n in enumerate(names)}
    out: Splits = {}
    for split in ("train", "validation", "test"):
        texts = [t for t, _ in rows[split]]
        labels = [index[rename.get(y, y)] for _, y in rows[split]]
        out[split] = _labelled(f"clinc150_{split}", texts, labels, names, _CLINC_SOURCE,
                               _CLINC_LICENSE, dedupe=dedupe)
    if oos:
        for split in ("train", "validation", "test"):
            texts = [t for t, _ in rows[f"oos_{split}"]]
            out[f"oos_{split}"] = _labelled(f"clinc150_oos_{split}", texts, None, (),
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
    base = _root(root, "banking77", "Banking77", "train.csv, test.csv")
    files = {split: base / f"{split}.csv" for split in ("train", "test")}
    if not any(p.is_file() for p in files.values()):
        raise _missing("Banking77", base, "train.csv and test.csv", _B77_URL)
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
        split: _labelled(f"banking77_{split}", [t for t, _ in part],
                         [names.index(y) for _, y in part], names, _B77_SOURCE, _B77_LICENSE,
                         dedupe=dedupe)
        for split, part in rows.items()
    }


# ------------------------------------------------------------------------------ SST-2

_SST_URL = "GLUE (https://gluebenchmark.com/tasks, SST-2.zip) and stsa.binary.test"
_SST_SOURCE = "SST-2 (Socher et al. 2013) in the GLUE tsv format; test = stsa.binary.test"
_SST_LICENSE = "GLUE SST-2: research use (Stanford Sentiment Treebank)"
_SST_NAMES = ("negative", "positive")


def sst2(root: str | os.PathLike[str] | None = None, *, dedupe: bool = False) -> Splits:
    """SST-2 binary sentiment, as in the paper.

    Parameters
    ----------
    root : path, optional
        The GLUE ``SST-2`` directory: ``train.tsv`` and ``dev.tsv`` (header
        ``sentence<TAB>label``, label 0 or 1). The paper's labelled test set, ``test.data`` or
        ``stsa.binary.test`` (lines ``<label> <sentence>``, 1,821 lines), is read when present;
        GLUE's unlabelled ``test.tsv`` is ignored. Default: ``$OOD_ZOO_DATA/sst2``.
    dedupe : bool
        Drop exact repeats within each split.

    Returns
    -------
    dict of str to TextSet
        ``train`` (67,349), ``validation`` (872) and, when present, ``test`` (1,821), labelled
        ``("negative", "positive")``.

    Notes
    -----
    Licence: the Stanford Sentiment Treebank is distributed for research use.
    """
    base = _root(root, "sst2", "SST-2", "train.tsv, dev.tsv")
    out: Splits = {}
    for file, split in (("train.tsv", "train"), ("dev.tsv", "validation")):
        path = base / file
        if not path.is_file():
            continue
        header, rows = _read_tsv(path)
        ti, li = _column(header, "sentence", path), _column(header, "label", path)
        out[split] = _labelled(f"sst2_{split}", [r[ti] for r in rows],
                               [int(r[li]) for r in rows], _SST_NAMES, _SST_SOURCE,
                               _SST_LICENSE, dedupe=dedupe)
    test = _first_existing(base, ("test.data", "stsa.binary.test"))
    if test is not None:
        pairs = [line.split(maxsplit=1) for line in _read_lines(test) if line.strip()]
        out["test"] = _labelled("sst2_test", [p[1] if len(p) > 1 else "" for p in pairs],
                                [int(p[0]) for p in pairs], _SST_NAMES, _SST_SOURCE,
                                _SST_LICENSE, dedupe=dedupe)
    if not out:
        raise _missing("SST-2", base, "train.tsv, dev.tsv (and test.data)", _SST_URL)
    return out


# ------------------------------------------------------------------------------ 20 Newsgroups

_NG_URL = "http://qwone.com/~jason/20Newsgroups/ (20news-bydate.tar.gz)"
_NG_SOURCE = "20 Newsgroups, bydate version (Lang 1995), 20news-bydate-{train,test}/<group>/<id>"
_NG_LICENSE = "20 Newsgroups: free for research use (no explicit licence)"


def _numeric_key(path: Path) -> tuple[int, str]:
    head = path.name.split("_")[0].split(".")[0]
    return (int(head), path.name) if head.isdigit() else (-1, path.name)


def newsgroups20(
    root: str | os.PathLike[str] | None = None,
    *,
    remove_headers: bool = False,
    dedupe: bool = False,
) -> Splits:
    """20 Newsgroups, the bydate train/test split, labelled by group.

    Parameters
    ----------
    root : path, optional
        The directory holding ``20news-bydate-train/`` and ``20news-bydate-test/``, each with one
        directory per group of posts named by number. Default: ``$OOD_ZOO_DATA/20newsgroups``.
    remove_headers : bool
        Drop each post's header block (up to the first blank line). The paper used HF's
        ``newsgroup`` 18828 subsets, which keep only ``From:`` and ``Subject:``.
    dedupe : bool
        Drop exact repeats within each split.

    Returns
    -------
    dict of str to TextSet
        ``train`` (11,314) and ``test`` (7,532); ``label_names`` are the 20 groups sorted.
        Posts are decoded as latin-1 and kept whole (the paper truncates at 600 tokens).

    Notes
    -----
    The paper's own split (per class, in file order, first 80% train, 10% dev, 10% test)
    comes from a JSON file absent from its repository (paper.md §1); use
    :func:`ood_zoo.data.standard_splits` for a seeded validation split instead.
    """
    base = _root(root, "20newsgroups", "20 Newsgroups", "20news-bydate-train/, -test/")
    dirs = {split: base / f"20news-bydate-{split}" for split in ("train", "test")}
    if not any(d.is_dir() for d in dirs.values()):
        raise _missing("20 Newsgroups", base,
                       "20news-bydate-train/<group>/<id> and 20news-bydate-test/", _NG_URL)
    names = sorted({g.name for d in dirs.values() if d.is_dir() for g in d.iterdir()
                    if g.is_dir()})
    out: Splits = {}
    for split, d in dirs.items():
        if not d.is_dir():
            continue
        texts: list[str] = []
        labels: list[int] = []
        for label, group in enumerate(names):
            folder = d / group
            if not folder.is_dir():
                continue
            for path in sorted((p for p in folder.iterdir() if p.is_file()), key=_numeric_key):
                text = path.read_bytes().decode("latin-1")
                if remove_headers:
                    _, sep, body = text.partition("\n\n")
                    text = body if sep else text
                texts.append(text)
                labels.append(label)
        out[split] = _labelled(f"20newsgroups_{split}", texts, labels, names, _NG_SOURCE,
                               _NG_LICENSE, dedupe=dedupe)
    return out


# ------------------------------------------------------------------------------ TREC

_TREC_URL = "https://cogcomp.seas.upenn.edu/Data/QA/QC/ (train_5500.label, TREC_10.label)"
_TREC_SOURCE = "TREC question classification (Li & Roth 2002), train_5500.label / TREC_10.label"
_TREC_LICENSE = "TREC QC (Li & Roth): free for research use"
#: The coarse classes in the order of HF ``trec`` ``coarse_label`` (and of the paper's names).
TREC_COARSE = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")
_TREC_LINE = re.compile(r"^([A-Z]+):(\S+)\s+(.*)$")


def trec(
    root: str | os.PathLike[str] | None = None,
    *,
    label: Literal["coarse", "fine"] = "coarse",
    dedupe: bool = False,
) -> Splits:
    """TREC question classification.

    Parameters
    ----------
    root : path, optional
        The directory holding ``train_5500.label`` and ``TREC_10.label`` (lines
        ``COARSE:fine question``, latin-1). Default: ``$OOD_ZOO_DATA/trec``.
    label : {"coarse", "fine"}
        ``coarse``: the 6 classes of :data:`TREC_COARSE` (the paper's ``coarse_label``);
        ``fine``: the 50 ``COARSE:fine`` classes, sorted.
    dedupe : bool
        Drop exact repeats within each split.

    Returns
    -------
    dict of str to TextSet
        ``train`` (5,452) and ``test`` (500). The paper uses the test split as OOD.
    """
    base = _root(root, "trec", "TREC", "train_5500.label, TREC_10.label")
    files = {"train": base / "train_5500.label", "test": base / "TREC_10.label"}
    if not any(p.is_file() for p in files.values()):
        raise _missing("TREC", base, "train_5500.label and TREC_10.label", _TREC_URL)
    parsed: dict[str, list[tuple[str, str, str]]] = {}
    for split, path in files.items():
        if not path.is_file():
            continue
        rows = []
        for n, line in enumerate(_read_lines(path, encoding="latin-1"), 1):
            if not line.strip():
                continue
            match = _TREC_LINE.match(line.strip())
            if match is None:
                raise DatasetFilesError(f"{path}:{n}: not a 'COARSE:fine text' line: {line!r}")
            rows.append(match.groups())
        parsed[split] = rows
    if label == "coarse":
        names: Sequence[str] = TREC_COARSE
        key: Callable[[tuple[str, str, str]], str] = lambda r: r[0]  # noqa: E731
    elif label == "fine":
        names = sorted({f"{c}:{f}" for rows in parsed.values() for c, f, _ in rows})
        key = lambda r: f"{r[0]}:{r[1]}"  # noqa: E731
    else:
        raise ValueError(f"label must be 'coarse' or 'fine', got {label!r}")
    return {
        split: _labelled(f"trec_{split}", [r[2] for r in rows],
                         [list(names).index(key(r)) for r in rows], names, _TREC_SOURCE,
                         _TREC_LICENSE, dedupe=dedupe)
        for split, rows in parsed.items()
    }


# ------------------------------------------------------------------------------ MNLI and RTE

_GLUE_URL = "GLUE (https://gluebenchmark.com/tasks)"
_MNLI_SOURCE = "MultiNLI (Williams et al. 2018) in the GLUE tsv format"
_MNLI_LICENSE = "MultiNLI: mostly OANC (free), some CC BY-SA 3.0; see the MultiNLI paper"
_MNLI_NAMES = ("entailment", "neutral", "contradiction")
_RTE_SOURCE = "RTE 1-3, 5 (Dagan et al.; Bentivogli et al.) in the GLUE tsv format"
_RTE_LICENSE = "RTE: research use (PASCAL RTE challenges, as redistributed by GLUE)"
_RTE_NAMES = ("entailment", "not_entailment")

PairText = Literal["pair", "premise", "hypothesis"]


def _pair_text(first: str, second: str, text: PairText) -> str:
    if text == "pair":
        return (first + " " + second).strip()
    if text == "premise":
        return first
    if text == "hypothesis":
        return second
    raise ValueError(f"text must be 'pair', 'premise' or 'hypothesis', got {text!r}")


def _glue_pairs(
    title: str,
    base: Path,
    files: Sequence[tuple[str, str]],
    columns: tuple[str, str, str],
    names: Sequence[str],
    source: str,
    license: str,
    text: PairText,
    dedupe: bool,
) -> Splits:
    _pair_text("", "", text)  # validate early
    first_col, second_col, label_col = columns
    by_split: dict[str, list[tuple[str, int | None]]] = {}
    for file, split in files:
        path = base / file
        if not path.is_file():
            continue
        header, rows = _read_tsv(path)
        a, b = _column(header, first_col, path), _column(header, second_col, path)
        y = header.index(label_col) if label_col in header else None
        part = by_split.setdefault(split, [])
        for row in rows:
            if len(row) <= max(a, b):
                continue
            label = None
            if y is not None:
                if len(row) <= y or row[y] not in names:
                    continue  # GLUE drops pairs without a gold label ("-")
                label = list(names).index(row[y])
            part.append((_pair_text(row[a], row[b], text), label))
    if not by_split:
        expected = ", ".join(f for f, _ in files)
        raise _missing(title, base, expected, _GLUE_URL)
    out: Splits = {}
    for split, part in by_split.items():
        labelled = all(y is not None for _, y in part)
        out[split] = _labelled(
            f"{title.lower()}_{split}", [t for t, _ in part],
            [int(y) for _, y in part if y is not None] if labelled else None, names, source,
            license, dedupe=dedupe,
        )
    return out


def mnli(
    root: str | os.PathLike[str] | None = None,
    *,
    text: PairText = "pair",
    dedupe: bool = False,
) -> Splits:
    """MultiNLI sentence pairs, as the paper uses them for far-OOD.

    Parameters
    ----------
    root : path, optional
        The GLUE ``MNLI`` directory: ``train.tsv``, ``dev_matched.tsv``, ``dev_mismatched.tsv``,
        ``test_matched.tsv``, ``test_mismatched.tsv`` (columns ``sentence1``, ``sentence2`` and,
        except in the test files, ``gold_label``). Any subset of them is read.
        Default: ``$OOD_ZOO_DATA/mnli``.
    text : {"pair", "premise", "hypothesis"}
        ``pair`` (default, the paper's choice): premise + " " + hypothesis, i.e. ``sentence1``
        + " " + ``sentence2``; or the premise (``sentence1``) or hypothesis (``sentence2``)
        alone.
    dedupe : bool
        Drop exact repeats within each split.

    Returns
    -------
    dict of str to TextSet
        ``train``; ``validation`` = matched then mismatched dev (labelled ``entailment``,
        ``neutral``, ``contradiction``); ``test`` = matched then mismatched test (unlabelled), the
        paper's OOD set.
    """
    base = _root(root, "mnli", "MNLI", "dev_matched.tsv, test_matched.tsv, ...")
    files = (("train.tsv", "train"), ("dev_matched.tsv", "validation"),
             ("dev_mismatched.tsv", "validation"), ("test_matched.tsv", "test"),
             ("test_mismatched.tsv", "test"))
    return _glue_pairs("MNLI", base, files, ("sentence1", "sentence2", "gold_label"),
                       _MNLI_NAMES, _MNLI_SOURCE, _MNLI_LICENSE, text, dedupe)


def rte(
    root: str | os.PathLike[str] | None = None,
    *,
    text: PairText = "pair",
    dedupe: bool = False,
) -> Splits:
    """RTE sentence pairs, as the paper uses them for far-OOD.

    Parameters
    ----------
    root : path, optional
        The GLUE ``RTE`` directory: ``train.tsv``, ``dev.tsv``, ``test.tsv`` (columns ``index``,
        ``sentence1``, ``sentence2`` and, except in the test file, ``label``).
        Default: ``$OOD_ZOO_DATA/rte``.
    text : {"pair", "premise", "hypothesis"}
        ``pair`` (default, the paper's choice): ``sentence1`` + " " + ``sentence2``; or
        ``sentence1`` (premise) or ``sentence2`` (hypothesis) alone.
    dedupe : bool
        Drop exact repeats within each split.

    Returns
    -------
    dict of str to TextSet
        ``train`` and ``validation`` labelled ``entailment`` / ``not_entailment``; ``test``
        unlabelled (3,000), the paper's OOD set.
    """
    base = _root(root, "rte", "RTE", "train.tsv, dev.tsv, test.tsv")
    files = (("train.tsv", "train"), ("dev.tsv", "validation"), ("test.tsv", "test"))
    return _glue_pairs("RTE", base, files, ("sentence1", "sentence2", "label"), _RTE_NAMES,
                       _RTE_SOURCE, _RTE_LICENSE, text, dedupe)


# ------------------------------------------------------------------------------ WMT16, Multi30K

_WMT_URL = "https://www.statmt.org/wmt16/translation-task.html (newstest2016, English side)"
_WMT_SOURCE = "WMT16 de-en newstest2016, English side (Bojar et al. 2016)"
_WMT_LICENSE = "WMT16 test sets: research use (statmt.org)"
_SEG = re.compile(r"<seg[^>]*>(.*)</seg>", re.IGNORECASE)


def _plain_or_sgm(path: Path) -> list[str]:
    lines = _read_lines(path)
    if path.suffix.lower() == ".sgm":
        return [m.group(1) for line in lines if (m := _SEG.search(line))]
    return lines


def wmt16(root: str | os.PathLike[str] | None = None, *, dedupe: bool = False) -> TextSet:
    """WMT16 English news sentences (the newstest2016 test set's English side), unlabelled.

    Parameters
    ----------
    root : path, optional
        A plain-text file with one sentence per line (or an ``.sgm`` file, whose ``<seg>``
        contents are read), or a directory holding ``test.en``, ``newstest2016.en``,
        ``newstest2016-*.en`` or ``newstest2016-*en.sgm``. Default: ``$OOD_ZOO_DATA/wmt16``.
    dedupe : bool
        Drop exact repeats.

    Returns
    -------
    TextSet
        About 3k sentences (the paper uses HF ``wmt16 de-en`` test, English side: 2,999).
    """
    base = _root(root, "wmt16", "WMT16", "test.en")
    path: Path | None = base if base.is_file() else None
    if path is None and base.is_dir():
        path = _first_existing(base, ("test.en", "newstest2016.en"))
        if path is None:
            found = sorted(base.glob("newstest2016*.en")) or sorted(
                base.glob("newstest2016*en.sgm")
            )
            path = found[0] if found else None
    if path is None:
        raise _missing("WMT16", base, "test.en (or newstest2016-*.en / -*en.sgm, or a file path)",
                       _WMT_URL)
    return _labelled("wmt16", _plain_or_sgm(path), None, (), f"{_WMT_SOURCE}: {path.name}",
                     _WMT_LICENSE, dedupe=dedupe)


_M30K_URL = "https://github.com/multi30k/dataset (data/task1/raw/test_*.en)"
_M30K_SOURCE = "Multi30K (Elliott et al. 2016) English test captions"
_M30K_LICENSE = "Multi30K: research use (Flickr30K / MSCOCO captions terms)"
#: The files the paper joins (2,532 captions in all).
MULTI30K_FILES = ("test_2016_flickr.en", "test_2017_mscoco.en", "test_2018_flickr.en")


def multi30k(root: str | os.PathLike[str] | None = None, *, dedupe: bool = False) -> TextSet:
    """Multi30K English image captions, unlabelled; the paper's union of three test files.

    Parameters
    ----------
    root : path, optional
        A directory holding any of :data:`MULTI30K_FILES` (one caption per line), or one such
        file. Default: ``$OOD_ZOO_DATA/multi30k``.
    dedupe : bool
        Drop exact repeats.

    Returns
    -------
    TextSet
        The captions of the files found, in :data:`MULTI30K_FILES` order (1,000 + 461 + 1,071 =
        2,532 with all three). ``domains`` record which file each caption comes from.
    """
    base = _root(root, "multi30k", "Multi30K", ", ".join(MULTI30K_FILES))
    paths = [base] if base.is_file() else [base / f for f in MULTI30K_FILES if (base / f).is_file()]
    if not paths:
        raise _missing("Multi30K", base, ", ".join(MULTI30K_FILES), _M30K_URL)
    texts: list[str] = []
    domains: list[int] = []
    for d, path in enumerate(paths):
        lines = _read_lines(path)
        texts += lines
        domains += [d] * len(lines)
    return _labelled("multi30k", texts, None, (), _M30K_SOURCE, _M30K_LICENSE, dedupe=dedupe,
                     domains=domains, domain_names=[p.name for p in paths])


# ------------------------------------------------------------------------------ IMDB

_IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/ (aclImdb_v1.tar.gz)"
_IMDB_SOURCE = "Large Movie Review Dataset (Maas et al. 2011), aclImdb/{train,test}/{pos,neg}"
_IMDB_LICENSE = "aclImdb: research use (cite Maas et al., ACL 2011)"
_IMDB_NAMES = ("negative", "positive")


def imdb(
    root: str | os.PathLike[str] | None = None,
    *,
    clean_html: bool = False,
    dedupe: bool = False,
) -> Splits:
    """IMDB movie reviews (Large Movie Review Dataset), negative / positive.

    Parameters
    ----------
    root : path, optional
        The ``aclImdb`` directory or its parent; reviews are ``{train,test}/{pos,neg}/<id>_<stars>
        .txt`` (``unsup`` is ignored). Default: ``$OOD_ZOO_DATA/imdb``.
    clean_html : bool
        Replace the ``<br />`` line breaks of the files with spaces (off: the files' text, as in
        HF ``imdb``).
    dedupe : bool
        Drop exact repeats within each split.

    Returns
    -------
    dict of str to TextSet
        ``train`` and ``test`` (25,000 each), negative reviews first, each folder in id order.
    """
    base = _root(root, "imdb", "IMDB", "aclImdb/{train,test}/{pos,neg}/*.txt")
    top = base / "aclImdb" if (base / "aclImdb").is_dir() else base
    out: Splits = {}
    for split in ("train", "test"):
        texts: list[str] = []
        labels: list[int] = []
        for label, folder in enumerate(("neg", "pos")):
            d = top / split / folder
            if not d.is_dir():
                continue
            for path in sorted(d.glob("*.txt"), key=_numeric_key):
                text = path.read_text(encoding="utf-8", errors="replace")
                texts.append(text.replace("<br />", " ") if clean_html else text)
                labels.append(label)
        if texts:
            out[split] = _labelled(f"imdb_{split}", texts, labels, _IMDB_NAMES, _IMDB_SOURCE,
                                   _IMDB_LICENSE, dedupe=dedupe)
    if not out:
        raise _missing("IMDB", base, "aclImdb/{train,test}/{pos,neg}/*.txt", _IMDB_URL)
    return out


# ------------------------------------------------------------------------------ registry


def _spec(name: str, load: Callable[..., object], description: str, source: str,
          license: str, files: str) -> DatasetSpec:
    return DatasetSpec(name, load, description, source, license, needs_files=True, files=files)


#: The paper's benchmarks, loaded from user files (part of
#: :data:`ood_zoo.data.BUILTIN_DATASETS`).
BENCHMARK_DATASETS: tuple[DatasetSpec, ...] = (
    _spec("clinc150", clinc150, "CLINC150 intents, full split (data_full.json)", _CLINC_SOURCE,
          _CLINC_LICENSE,
          "data_full.json"),
    _spec("clinc150_banking", functools.partial(clinc150_domain, domain="banking"),
          "CLINC150 banking: 8 ID vs 7 held-out intents by seed (paper near-OOD)",
          _CLINC_SOURCE, _CLINC_LICENSE,
          "data_full.json"),
    _spec("clinc150_travel", functools.partial(clinc150_domain, domain="travel"),
          "CLINC150 travel: 8 ID vs 7 held-out intents by seed (paper near-OOD)",
          _CLINC_SOURCE, _CLINC_LICENSE,
          "data_full.json"),
    _spec("banking77", banking77, "Banking77 intents (train.csv/test.csv)", _B77_SOURCE,
          _B77_LICENSE,
          "train.csv, test.csv"),
    _spec("sst2", sst2, "SST-2 sentiment, GLUE tsv + stsa.binary.test (paper ID / OOD)",
          _SST_SOURCE, _SST_LICENSE,
          "train.tsv, dev.tsv, test.data"),
    _spec("20newsgroups", newsgroups20, "20 Newsgroups, bydate tree (paper ID / OOD)",
          _NG_SOURCE, _NG_LICENSE,
          "20news-bydate-{train,test}/<group>/<id>"),
    _spec("trec", trec, "TREC questions, 6 coarse classes (paper far-OOD)", _TREC_SOURCE,
          _TREC_LICENSE,
          "train_5500.label, TREC_10.label"),
    _spec("mnli", mnli, "MNLI premise + hypothesis, GLUE tsv (paper far-OOD)", _MNLI_SOURCE,
          _MNLI_LICENSE,
          "{train,dev_matched,dev_mismatched,test_matched,test_mismatched}.tsv"),
    _spec("rte", rte, "RTE sentence1 + sentence2, GLUE tsv (paper far-OOD)", _RTE_SOURCE,
          _RTE_LICENSE,
          "{train,dev,test}.tsv"),
    _spec("wmt16", wmt16, "WMT16 newstest2016 English sentences (paper far-OOD)", _WMT_SOURCE,
          _WMT_LICENSE,
          "test.en (or a file path)"),
    _spec("multi30k", multi30k, "Multi30K English test captions (paper far-OOD)", _M30K_SOURCE,
          _M30K_LICENSE,
          "test_2016_flickr.en, test_2017_mscoco.en, test_2018_flickr.en"),
    _spec("imdb", imdb, "IMDB reviews, aclImdb tree (paper far-OOD for 20NG)", _IMDB_SOURCE,
          _IMDB_LICENSE,
          "aclImdb/{train,test}/{pos,neg}/*.txt"),
)
