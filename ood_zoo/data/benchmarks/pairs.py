"""MNLI and RTE: GLUE sentence pairs, which the paper uses as far-OOD sets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ...specs import DatasetSpec
from ._files import Splits, column_index, data_root, file_dataset, labelled, missing_files, read_tsv

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
        header, rows = read_tsv(path)
        a, b = column_index(header, first_col, path), column_index(header, second_col, path)
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
        raise missing_files(title, base, expected, _GLUE_URL)
    out: Splits = {}
    for split, part in by_split.items():
        has_labels = all(y is not None for _, y in part)
        out[split] = labelled(
            f"{title.lower()}_{split}", [t for t, _ in part],
            [int(y) for _, y in part if y is not None] if has_labels else None, names, source,
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
    base = data_root(root, "mnli", "MNLI", "dev_matched.tsv, test_matched.tsv, ...")
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
    base = data_root(root, "rte", "RTE", "train.tsv, dev.tsv, test.tsv")
    files = (("train.tsv", "train"), ("dev.tsv", "validation"), ("test.tsv", "test"))
    return _glue_pairs("RTE", base, files, ("sentence1", "sentence2", "label"), _RTE_NAMES,
                       _RTE_SOURCE, _RTE_LICENSE, text, dedupe)


#: The sentence-pair benchmarks (part of :data:`ood_zoo.data.BUILTIN_DATASETS`).
PAIR_DATASETS: tuple[DatasetSpec, ...] = (
    file_dataset("mnli", mnli, "MNLI premise + hypothesis, GLUE tsv (paper far-OOD)",
                 _MNLI_SOURCE, _MNLI_LICENSE,
                 "{train,dev_matched,dev_mismatched,test_matched,test_mismatched}.tsv"),
    file_dataset("rte", rte, "RTE sentence1 + sentence2, GLUE tsv (paper far-OOD)", _RTE_SOURCE,
                 _RTE_LICENSE, "{train,dev,test}.tsv"),
)
