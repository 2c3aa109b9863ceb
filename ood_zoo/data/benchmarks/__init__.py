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

from ...specs import DatasetSpec
from ._files import DATA_ENV, DatasetFilesError
from .classification import CLASSIFICATION_DATASETS, TREC_COARSE, imdb, newsgroups20, sst2, trec
from .intents import (
    CLINC_DOMAINS,
    CLINC_PARAPHRASES,
    INTENT_DATASETS,
    banking77,
    clinc150,
    clinc150_domain,
    clinc_heldout_intents,
)
from .pairs import PAIR_DATASETS, mnli, rte
from .sentences import MULTI30K_FILES, SENTENCE_DATASETS, multi30k, wmt16

__all__ = [
    "BENCHMARK_DATASETS",
    "CLINC_DOMAINS",
    "CLINC_PARAPHRASES",
    "DATA_ENV",
    "MULTI30K_FILES",
    "TREC_COARSE",
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

#: The paper's benchmarks, loaded from user files (part of
#: :data:`ood_zoo.data.BUILTIN_DATASETS`).
BENCHMARK_DATASETS: tuple[DatasetSpec, ...] = (
    INTENT_DATASETS + CLASSIFICATION_DATASETS + PAIR_DATASETS + SENTENCE_DATASETS
)
