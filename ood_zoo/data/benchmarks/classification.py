"""SST-2, 20 Newsgroups, TREC and IMDB: sentiment, topic and question-type classification, the
paper's ID sets and their far-OOD partners."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Literal

from ...specs import DatasetSpec
from ._files import (
    DatasetFilesError,
    Splits,
    column_index,
    data_root,
    file_dataset,
    first_existing,
    labelled,
    missing_files,
    numeric_key,
    read_lines,
    read_tsv,
)

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
    base = data_root(root, "sst2", "SST-2", "train.tsv, dev.tsv")
    out: Splits = {}
    for file, split in (("train.tsv", "train"), ("dev.tsv", "validation")):
        path = base / file
        if not path.is_file():
            continue
        header, rows = read_tsv(path)
        ti, li = column_index(header, "sentence", path), column_index(header, "label", path)
        out[split] = labelled(f"sst2_{split}", [r[ti] for r in rows],
                              [int(r[li]) for r in rows], _SST_NAMES, _SST_SOURCE,
                              _SST_LICENSE, dedupe=dedupe)
    test = first_existing(base, ("test.data", "stsa.binary.test"))
    if test is not None:
        pairs = [line.split(maxsplit=1) for line in read_lines(test) if line.strip()]
        out["test"] = labelled("sst2_test", [p[1] if len(p) > 1 else "" for p in pairs],
                               [int(p[0]) for p in pairs], _SST_NAMES, _SST_SOURCE,
                               _SST_LICENSE, dedupe=dedupe)
    if not out:
        raise missing_files("SST-2", base, "train.tsv, dev.tsv (and test.data)", _SST_URL)
    return out


# ------------------------------------------------------------------------------ 20 Newsgroups

_NG_URL = "http://qwone.com/~jason/20Newsgroups/ (20news-bydate.tar.gz)"
_NG_SOURCE = "20 Newsgroups, bydate version (Lang 1995), 20news-bydate-{train,test}/<group>/<id>"
_NG_LICENSE = "20 Newsgroups: free for research use (no explicit licence)"


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
    base = data_root(root, "20newsgroups", "20 Newsgroups", "20news-bydate-train/, -test/")
    dirs = {split: base / f"20news-bydate-{split}" for split in ("train", "test")}
    if not any(d.is_dir() for d in dirs.values()):
        raise missing_files("20 Newsgroups", base,
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
            for path in sorted((p for p in folder.iterdir() if p.is_file()), key=numeric_key):
                text = path.read_bytes().decode("latin-1")
                if remove_headers:
                    _, sep, body = text.partition("\n\n")
                    text = body if sep else text
                texts.append(text)
                labels.append(label)
        out[split] = labelled(f"20newsgroups_{split}", texts, labels, names, _NG_SOURCE,
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
    base = data_root(root, "trec", "TREC", "train_5500.label, TREC_10.label")
    files = {"train": base / "train_5500.label", "test": base / "TREC_10.label"}
    if not any(p.is_file() for p in files.values()):
        raise missing_files("TREC", base, "train_5500.label and TREC_10.label", _TREC_URL)
    parsed: dict[str, list[tuple[str, str, str]]] = {}
    for split, path in files.items():
        if not path.is_file():
            continue
        rows = []
        for n, line in enumerate(read_lines(path, encoding="latin-1"), 1):
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
        split: labelled(f"trec_{split}", [r[2] for r in rows],
                        [list(names).index(key(r)) for r in rows], names, _TREC_SOURCE,
                        _TREC_LICENSE, dedupe=dedupe)
        for split, rows in parsed.items()
    }


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
    base = data_root(root, "imdb", "IMDB", "aclImdb/{train,test}/{pos,neg}/*.txt")
    top = base / "aclImdb" if (base / "aclImdb").is_dir() else base
    out: Splits = {}
    for split in ("train", "test"):
        texts: list[str] = []
        labels: list[int] = []
        for label, folder in enumerate(("neg", "pos")):
            d = top / split / folder
            if not d.is_dir():
                continue
            for path in sorted(d.glob("*.txt"), key=numeric_key):
                text = path.read_text(encoding="utf-8", errors="replace")
                texts.append(text.replace("<br />", " ") if clean_html else text)
                labels.append(label)
        if texts:
            out[split] = labelled(f"imdb_{split}", texts, labels, _IMDB_NAMES, _IMDB_SOURCE,
                                  _IMDB_LICENSE, dedupe=dedupe)
    if not out:
        raise missing_files("IMDB", base, "aclImdb/{train,test}/{pos,neg}/*.txt", _IMDB_URL)
    return out


#: The classification benchmarks (part of :data:`ood_zoo.data.BUILTIN_DATASETS`).
CLASSIFICATION_DATASETS: tuple[DatasetSpec, ...] = (
    file_dataset("sst2", sst2, "SST-2 sentiment, GLUE tsv + stsa.binary.test (paper ID / OOD)",
                 _SST_SOURCE, _SST_LICENSE, "train.tsv, dev.tsv, test.data"),
    file_dataset("20newsgroups", newsgroups20, "20 Newsgroups, bydate tree (paper ID / OOD)",
                 _NG_SOURCE, _NG_LICENSE, "20news-bydate-{train,test}/<group>/<id>"),
    file_dataset("trec", trec, "TREC questions, 6 coarse classes (paper far-OOD)", _TREC_SOURCE,
                 _TREC_LICENSE, "train_5500.label, TREC_10.label"),
    file_dataset("imdb", imdb, "IMDB reviews, aclImdb tree (paper far-OOD for 20NG)",
                 _IMDB_SOURCE, _IMDB_LICENSE, "aclImdb/{train,test}/{pos,neg}/*.txt"),
)
