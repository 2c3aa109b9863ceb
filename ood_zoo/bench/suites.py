"""Benchmark suites: which corpora are in-distribution, which are OOD, and how they are split.

A :class:`Suite` names its corpora (:class:`Corpus`, each a loader of a
:class:`~ood_zoo.data.TextSet`) and its settings (:class:`Setting`, one ID corpus against one OOD
set). The runner (:mod:`ood_zoo.bench.zero_grad`) extracts features once per corpus and reuses
them for every setting, seed and detector.

The ``fine-tuned`` suite (:mod:`ood_zoo.bench.fine_tuned`) reuses these corpora: the near-OOD
settings and two far-OOD ones, before and after LoRA fine-tuning on the ID task.

The ``zero-grad`` suite
-----------------------
The first experiment of Liu et al., "How Good Are LLMs at Out-of-Distribution Detection?"
(LREC-COLING 2024), rebuilt on the corpora that install offline (none of the paper's benchmarks
does; see ``ref/offline-data-models.md``):

==========  ============================================  =====================================
kind        ID                                            OOD
==========  ============================================  =====================================
far-OOD     ``rt``: Rotten Tomatoes fresh/rotten          ``chitchat``, ``bbc``, ``gsm8k``,
            (stand-in for SST-2)                          ``tweets`` (each scored on its own)
far-OOD     ``bbc``: BBC News, 5 topics (stand-in for     ``chitchat``, ``rt``, ``gsm8k``,
            20 Newsgroups)                                ``tweets``
near-OOD    ``bbc``, 3 topics drawn per seed              the 2 held-out topics (as the
                                                          paper's CLINC150 8-vs-7 split)
near-OOD    ``tweets_airline`` (airline @-mentions)       tweets from the other domains
near-OOD    ``rt`` reviews                                ``rt_plots``: plot synopses of the
                                                          same films
==========  ============================================  =====================================

A corpus whose package is missing is skipped with a reason; the other settings still run.

Splits
------
Each corpus gets one fixed pool, drawn once with :data:`POOL_SEED` (class-stratified when
labelled), so features are extracted once per corpus (:mod:`ood_zoo.bench.pools`). Every seed then
splits an ID pool anew into disjoint parts (``train``, ``validation``, ``test``; stratified by
class; :func:`ood_zoo.data.split_pool`), so the spread over seeds measures the choice of bank and
test texts. OOD-only corpora have a ``test`` part only.
As in the paper, the detectors' bank (cosine's reference vectors, Mahalanobis's class means and
covariance) is the ID **validation** part; ``bank="train"`` uses the (larger) train part instead.
In held-out-class settings the seed also draws the ID classes, with the paper's RNG call
``np.random.seed(seed); np.random.choice(classes, n_known, replace=False)``
(:func:`ood_zoo.data.choose_id_classes`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..data import (
    TWEET_DOMAINS,
    TextSet,
    bbc_news,
    chitchat,
    gsm8k,
    rotten_tomatoes,
    sentiment_tweets,
)
from ..features import PAPER_TEMPLATE

__all__ = [
    "FINE_TUNED",
    "POOL_SEED",
    "SPLIT_SCALE",
    "SUITES",
    "Corpus",
    "Setting",
    "Suite",
    "get_suite",
]

#: Seed of the one-off draw of each corpus's pool (the per-seed splits use the run's seeds).
POOL_SEED = 0

#: Size of each split relative to ``max_per_split`` (the train part is larger than validation,
#: as in real benchmarks; OOD-only corpora use ``test``).
SPLIT_SCALE: Mapping[str, int] = {"train": 2, "validation": 1, "test": 1}

Kind = Literal["far", "near"]


@dataclass(frozen=True)
class Corpus:
    """A corpus a suite draws texts from.

    Attributes
    ----------
    key : str
        Short name used in setting names and result tables, e.g. ``"rt"``.
    load : callable
        ``load() -> TextSet``. It may raise (e.g. a missing package); the corpus is then skipped.
    description : str
        One line for the report.
    label_words : mapping of str to str, optional
        Class name → the word the LM is asked to emit for it (the paper's label verbalisation).
        Only ID corpora need it; their MSP/MaxLogit/Energy read these words' next-token logits.
    """

    key: str
    load: Callable[[], TextSet]
    description: str
    label_words: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Setting:
    """One ID set against one OOD set.

    Attributes
    ----------
    kind : {"far", "near"}
        Far-OOD (another corpus) or near-OOD (held-out classes, another domain or genre).
    id_corpus, ood_corpus : str
        Corpus keys. They are equal for held-out-class settings.
    holdout : int
        Number of ``id_corpus`` classes held out as OOD (0: none, ``ood_corpus`` is another
        corpus). The held-out classes change with the seed
        (:func:`ood_zoo.data.choose_id_classes`).
    """

    kind: Kind
    id_corpus: str
    ood_corpus: str
    holdout: int = 0

    def __post_init__(self) -> None:
        if self.holdout < 0:
            raise ValueError(f"holdout must be >= 0, got {self.holdout}")
        if (self.holdout > 0) != (self.id_corpus == self.ood_corpus):
            raise ValueError(
                "a held-out-class setting has ood_corpus == id_corpus and holdout > 0; "
                f"got {self.id_corpus!r} vs {self.ood_corpus!r} with holdout={self.holdout}"
            )

    @property
    def name(self) -> str:
        """``"<kind>:<id>><ood>"``, e.g. ``"far:rt>chitchat"`` or ``"near:bbc>bbc-holdout2"``."""
        ood = f"{self.ood_corpus}-holdout{self.holdout}" if self.holdout else self.ood_corpus
        return f"{self.kind}:{self.id_corpus}>{ood}"


@dataclass(frozen=True)
class Suite:
    """A named set of settings over named corpora.

    Attributes
    ----------
    name, description : str
    corpora : mapping of str to Corpus
        Every corpus a setting refers to, by key.
    settings : tuple of Setting
    template : str
        The prompt every text is wrapped in for decoder LMs (``{text}`` is replaced).
    """

    name: str
    description: str
    corpora: Mapping[str, Corpus]
    settings: tuple[Setting, ...]
    template: str = PAPER_TEMPLATE
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for setting in self.settings:
            for key in (setting.id_corpus, setting.ood_corpus):
                if key not in self.corpora:
                    raise ValueError(f"suite {self.name!r}: setting {setting.name} names "
                                     f"unknown corpus {key!r}")
            if self.corpora[setting.id_corpus].label_words is None:
                raise ValueError(f"suite {self.name!r}: ID corpus {setting.id_corpus!r} "
                                 "has no label_words")

    def id_corpora(self) -> list[str]:
        """Keys of the corpora used as ID somewhere, in first-use order."""
        return list(dict.fromkeys(s.id_corpus for s in self.settings))

    def select(self, corpora: Sequence[str] | None) -> Suite:
        """The suite restricted to settings whose ID and OOD corpora are all in ``corpora``.

        Raises
        ------
        ValueError
            If a key is not one of this suite's corpora.
        """
        if corpora is None:
            return self
        unknown = [key for key in corpora if key not in self.corpora]
        if unknown:
            raise ValueError(
                f"unknown dataset(s) {', '.join(map(repr, unknown))} for suite {self.name!r}; "
                f"choose from {', '.join(self.corpora)}"
            )
        keep = set(corpora)
        settings = tuple(
            s for s in self.settings if s.id_corpus in keep and s.ood_corpus in keep
        )
        return Suite(self.name, self.description, self.corpora, settings, self.template,
                     self.notes)


#: The tweet domains other than ``airline``: the near-OOD side of the airline tweets.
_NON_AIRLINE = tuple(name for name, _ in TWEET_DOMAINS if name != "airline")

_SENTIMENT = {"rotten": "negative", "fresh": "positive",
              "negative": "negative", "neutral": "neutral", "positive": "positive"}
_TOPICS = {"business": "business", "entertainment": "entertainment", "politics": "politics",
           "sports": "sports", "sport": "sports", "tech": "tech"}

_ZERO_GRAD_CORPORA = (
    Corpus("rt", rotten_tomatoes, "Rotten Tomatoes critic snippets, fresh/rotten "
           "(SST-2 stand-in); label words negative/positive as the paper's SST-2", _SENTIMENT),
    Corpus("bbc", bbc_news, "BBC News articles, 5 topics (20 Newsgroups stand-in); label words "
           "= topic names", _TOPICS),
    Corpus("tweets_airline", functools.partial(sentiment_tweets, "airline"),
           "tweets @-mentioning US airlines, 3-class sentiment", _SENTIMENT),
    Corpus("rt_plots", functools.partial(rotten_tomatoes, "plots"),
           "Rotten Tomatoes plot synopses of the same films (near-OOD genre shift)"),
    Corpus("chitchat", chitchat, "open-domain chit-chat utterances"),
    Corpus("gsm8k", gsm8k, "GSM8K grade-school maths questions"),
    Corpus("tweets", functools.partial(sentiment_tweets, _NON_AIRLINE),
           "tweets from the non-airline domains (DeflateGate, self-driving cars, brands)"),
)

_ZERO_GRAD_SETTINGS = (
    *(Setting("far", "rt", ood) for ood in ("chitchat", "bbc", "gsm8k", "tweets")),
    *(Setting("far", "bbc", ood) for ood in ("chitchat", "rt", "gsm8k", "tweets")),
    Setting("near", "bbc", "bbc", holdout=2),
    Setting("near", "tweets_airline", "tweets"),
    Setting("near", "rt", "rt_plots"),
)

ZERO_GRAD = Suite(
    name="zero-grad",
    description="Liu et al. (2024) zero-grad experiment on offline stand-ins: far-OOD (ID "
    "sentiment or news vs other corpora) and near-OOD (held-out topics, other tweet domains, "
    "plot synopses); no fine-tuning",
    corpora={c.key: c for c in _ZERO_GRAD_CORPORA},
    settings=_ZERO_GRAD_SETTINGS,
    notes=(
        "OOD texts are wrapped in the ID task's template, as in the paper.",
        "Long texts are truncated before templating, so the prompt's last token is always the "
        "template's final newline (the paper truncated after, see its pitfall 8).",
    ),
)

FINE_TUNED = Suite(
    name="fine-tuned",
    description="Liu et al. (2024) fine-tuned experiment on offline stand-ins: the LM is LoRA "
    "fine-tuned on the ID task (generatively, or with a classification head) and every "
    "detector is compared with the zero-grad model on the same texts",
    corpora=ZERO_GRAD.corpora,
    settings=(
        Setting("near", "bbc", "bbc", holdout=2),
        Setting("near", "tweets_airline", "tweets"),
        Setting("near", "rt", "rt_plots"),
        Setting("far", "rt", "chitchat"),
        Setting("far", "bbc", "chitchat"),
    ),
    notes=(
        *ZERO_GRAD.notes,
        "The bank (and the early-stopping dev set) is the ID validation part, as in the paper.",
    ),
)

#: The suites known by name.
SUITES: Mapping[str, Suite] = {ZERO_GRAD.name: ZERO_GRAD, FINE_TUNED.name: FINE_TUNED}


def get_suite(name: str) -> Suite:
    """The suite called ``name``.

    Raises
    ------
    ValueError
        If there is none, naming the known suites.
    """
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(
            f"unknown suite {name!r}; choose from {', '.join(SUITES)}"
        ) from None
