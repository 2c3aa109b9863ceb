"""WMT16 and Multi30K: unlabelled English sentences (news, image captions), the paper's far-OOD
sets."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ...specs import DatasetSpec
from ..textset import TextSet
from ._files import data_root, file_dataset, first_existing, labelled, missing_files, read_lines

_WMT_URL = "https://www.statmt.org/wmt16/translation-task.html (newstest2016, English side)"
_WMT_SOURCE = "WMT16 de-en newstest2016, English side (Bojar et al. 2016)"
_WMT_LICENSE = "WMT16 test sets: research use (statmt.org)"
_SEG = re.compile(r"<seg[^>]*>(.*)</seg>", re.IGNORECASE)


def _plain_or_sgm(path: Path) -> list[str]:
    lines = read_lines(path)
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
    base = data_root(root, "wmt16", "WMT16", "test.en")
    path: Path | None = base if base.is_file() else None
    if path is None and base.is_dir():
        path = first_existing(base, ("test.en", "newstest2016.en"))
        if path is None:
            found = sorted(base.glob("newstest2016*.en")) or sorted(
                base.glob("newstest2016*en.sgm")
            )
            path = found[0] if found else None
    if path is None:
        raise missing_files(
            "WMT16", base, "test.en (or newstest2016-*.en / -*en.sgm, or a file path)", _WMT_URL
        )
    return labelled("wmt16", _plain_or_sgm(path), None, (), f"{_WMT_SOURCE}: {path.name}",
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
    base = data_root(root, "multi30k", "Multi30K", ", ".join(MULTI30K_FILES))
    paths = [base] if base.is_file() else [base / f for f in MULTI30K_FILES if (base / f).is_file()]
    if not paths:
        raise missing_files("Multi30K", base, ", ".join(MULTI30K_FILES), _M30K_URL)
    texts: list[str] = []
    domains: list[int] = []
    for d, path in enumerate(paths):
        lines = read_lines(path)
        texts += lines
        domains += [d] * len(lines)
    return labelled("multi30k", texts, None, (), _M30K_SOURCE, _M30K_LICENSE, dedupe=dedupe,
                    domains=domains, domain_names=[p.name for p in paths])


#: The unlabelled-sentence benchmarks (part of :data:`ood_zoo.data.BUILTIN_DATASETS`).
SENTENCE_DATASETS: tuple[DatasetSpec, ...] = (
    file_dataset("wmt16", wmt16, "WMT16 newstest2016 English sentences (paper far-OOD)",
                 _WMT_SOURCE, _WMT_LICENSE, "test.en (or a file path)"),
    file_dataset("multi30k", multi30k, "Multi30K English test captions (paper far-OOD)",
                 _M30K_SOURCE, _M30K_LICENSE,
                 "test_2016_flickr.en, test_2017_mscoco.en, test_2018_flickr.en"),
)
