"""Datasets: offline corpora, loaders for the paper's benchmarks, and seeded splits.

>>> from ood_zoo.data import standard_splits, holdout_classes, bbc_news
>>> splits = standard_splits("rotten_tomatoes", seed=0)     # doctest: +SKIP
>>> bank = splits["validation"]                             # the paper fits on ID validation
>>> id_set, ood_set = holdout_classes(bbc_news(), n_ood=2, seed=1)  # doctest: +SKIP
>>> clinc = standard_splits("clinc150_banking", seed=1, root="~/data/clinc150")  # doctest: +SKIP
"""

from __future__ import annotations

from ..packages import MissingPackageError, package_dir, package_file, package_version
from ..specs import DatasetSpec
from .benchmarks import (
    CLINC_DOMAINS,
    CLINC_PARAPHRASES,
    DatasetFilesError,
    banking77,
    clinc150,
    clinc150_domain,
    clinc_heldout_intents,
    imdb,
    mnli,
    multi30k,
    newsgroups20,
    rte,
    sst2,
    trec,
    wmt16,
)
from .catalog import BUILTIN_DATASETS, dataset_spec, list_datasets, load_dataset
from .corpora import (
    TWEET_DOMAINS,
    bbc_news,
    chitchat,
    gsm8k,
    rotten_tomatoes,
    sentiment_tweets,
    tweet_domain,
)
from .splits import (
    DEFAULT_FRACTIONS,
    VALIDATION_FRACTION,
    choose_id_classes,
    few_shot,
    few_shot_indices,
    holdout_classes,
    near_ood_splits,
    split,
    split_indices,
    split_pool,
    standard_splits,
    subsample,
    train_val_test,
)
from .textset import TextSet

__all__ = [
    "BUILTIN_DATASETS",
    "CLINC_DOMAINS",
    "CLINC_PARAPHRASES",
    "DEFAULT_FRACTIONS",
    "TWEET_DOMAINS",
    "VALIDATION_FRACTION",
    "DatasetFilesError",
    "DatasetSpec",
    "MissingPackageError",
    "TextSet",
    "banking77",
    "bbc_news",
    "chitchat",
    "choose_id_classes",
    "clinc150",
    "clinc150_domain",
    "clinc_heldout_intents",
    "dataset_spec",
    "few_shot",
    "few_shot_indices",
    "gsm8k",
    "holdout_classes",
    "imdb",
    "list_datasets",
    "load_dataset",
    "mnli",
    "multi30k",
    "near_ood_splits",
    "newsgroups20",
    "package_dir",
    "package_file",
    "package_version",
    "rotten_tomatoes",
    "rte",
    "sentiment_tweets",
    "split",
    "split_indices",
    "split_pool",
    "sst2",
    "standard_splits",
    "subsample",
    "train_val_test",
    "trec",
    "tweet_domain",
    "wmt16",
]
