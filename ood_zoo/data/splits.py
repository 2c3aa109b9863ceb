"""Seeded evaluation splits: train/validation/test, held-out classes and few-shot subsets.

The paper fits its detectors on the ID **validation** split (paper.md §8.2), so every benchmark
needs one. :func:`standard_splits` returns ``{"train", "validation", "test"}`` for any registered
dataset or :class:`~ood_zoo.data.TextSet`:

- the official splits where the data has them (CLINC150, SST-2, MNLI, RTE);
- a validation set carved out of ``train`` where only train/test exist (Banking77, 20NG, TREC,
  IMDB): :data:`VALIDATION_FRACTION` (10%) of train, as the paper does for TREC and IMDB;
- otherwise a split of the whole corpus in :data:`DEFAULT_FRACTIONS` (80/10/10, the paper's 20NG
  proportions).

Every random split is seeded, disjoint and stratified: by class where there are labels, and by
class x domain where there are domains too. :func:`holdout_classes` and :func:`near_ood_splits`
hold out classes (or domains) as near-OOD; :func:`few_shot` draws K examples per class.

Underneath, :func:`split_indices` draws disjoint, seeded index sets (:func:`split` and
:func:`subsample` take them from a :class:`~ood_zoo.data.TextSet`), and :func:`split_pool`
splits a pool of texts into named parts, as the benchmark suites do per seed.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from .textset import TextSet

__all__ = [
    "DEFAULT_FRACTIONS",
    "VALIDATION_FRACTION",
    "choose_id_classes",
    "few_shot",
    "few_shot_indices",
    "holdout_classes",
    "near_ood_splits",
    "split",
    "split_indices",
    "split_pool",
    "standard_splits",
    "subsample",
    "train_val_test",
]

#: Train / validation / test fractions for a corpus with no official split (the paper's 20NG
#: proportions).
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
#: The share of ``train`` held out as validation when a dataset has train and test only (the
#: paper reserves 10% of train for TREC and IMDB).
VALIDATION_FRACTION = 0.1

Shot = int | float | Literal["full"] | None
By = Literal["label", "domain"]


# ------------------------------------------------------------------------------ seeded subsets


def _resolve_sizes(n: int, sizes: Sequence[int | float]) -> list[int]:
    counts: list[int] = []
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, numbers.Real):
            raise TypeError(f"sizes must be ints (counts) or floats (fractions), got {size!r}")
        if isinstance(size, numbers.Integral):
            count = int(size)
        elif 0.0 <= float(size) <= 1.0:
            count = round(float(size) * n)
        else:
            raise ValueError(f"a fractional size must lie in [0, 1], got {size!r}")
        if count < 0:
            raise ValueError(f"sizes must be >= 0, got {size!r}")
        counts.append(count)
    if sum(counts) > n:
        raise ValueError(f"sizes {list(sizes)} ask for {sum(counts)} items but only {n} exist")
    return counts


def split_indices(
    n: int,
    sizes: Sequence[int | float],
    *,
    seed: int = 0,
    stratify: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Disjoint, seeded random index sets of the given sizes out of ``range(n)``.

    Parameters
    ----------
    n : int
        The number of items.
    sizes : sequence of int or float
        One entry per part: an ``int`` count or a ``float`` fraction of ``n``. They may sum to
        less than ``n``; the rest is left out.
    seed : int
        Seed of the permutation; the same ``(n, sizes, seed, stratify)`` always gives the same
        parts.
    stratify : numpy.ndarray, optional
        Integer labels; if given, every part keeps the class proportions of the whole as far as
        whole numbers allow (largest remainders), each class drawn from its own permutation.

    Returns
    -------
    list of numpy.ndarray
        ``int64`` indices per part, each sorted ascending.
    """
    counts = _resolve_sizes(n, sizes)
    rng = np.random.default_rng(seed)
    if stratify is None:
        order = rng.permutation(n)
        bounds = np.cumsum([0, *counts])
        return [np.sort(order[a:b]) for a, b in itertools.pairwise(bounds)]

    labels = np.asarray(stratify)
    if labels.shape != (n,):
        raise ValueError(f"stratify must have shape ({n},), got {labels.shape}")
    classes, inverse = np.unique(labels, return_inverse=True)
    members = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
    taken = np.zeros(len(classes), dtype=np.int64)
    parts: list[np.ndarray] = []
    for count in counts:
        want = _apportion(count, np.array([len(m) for m in members]) - taken, n - taken.sum())
        part = [m[t : t + w] for m, t, w in zip(members, taken, want, strict=True)]
        taken += want
        parts.append(np.sort(np.concatenate(part)) if part else np.empty(0, np.int64))
    return parts


def _apportion(count: int, available: np.ndarray, total: int) -> np.ndarray:
    """Split ``count`` over classes in proportion to ``available`` (largest remainders)."""
    if count == 0 or total == 0:
        return np.zeros_like(available)
    exact = count * available / total
    want = np.minimum(np.floor(exact).astype(np.int64), available)
    order = np.argsort(-(exact - want), kind="stable")
    for c in order:
        if want.sum() >= count:
            break
        if want[c] < available[c]:
            want[c] += 1
    return want


def split(
    data: TextSet,
    sizes: Sequence[int | float],
    *,
    seed: int = 0,
    stratify: bool = False,
    names: Sequence[str] | None = None,
) -> list[TextSet]:
    """Disjoint seeded subsets of ``data`` (see :func:`split_indices`).

    Parameters
    ----------
    stratify : bool
        Keep the class proportions in every part (``data`` must be labelled).
    names : sequence of str, optional
        A name per part; by default ``"<name>[i]"``.
    """
    if stratify and data.labels is None:
        raise ValueError(f"{data.name}: cannot stratify an unlabelled set")
    parts = split_indices(
        len(data), sizes, seed=seed, stratify=data.labels if stratify else None
    )
    if names is not None and len(names) != len(parts):
        raise ValueError(f"{len(parts)} parts but {len(names)} names")
    return [
        data.take(idx, name=names[i] if names is not None else f"{data.name}[{i}]")
        for i, idx in enumerate(parts)
    ]


def subsample(data: TextSet, n: int, *, seed: int = 0) -> TextSet:
    """A seeded random subset of ``min(n, len(data))`` texts, in corpus order."""
    (part,) = split(data, [min(int(n), len(data))], seed=seed, names=[data.name])
    return part

def split_pool(
    n: int, sizes: Mapping[str, int], seed: int, labels: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Disjoint, seeded parts of a pool of ``n`` texts: ``{part: sorted indices}``.

    Parameters
    ----------
    n : int
        The pool size.
    sizes : mapping of str to int
        Texts per part, e.g. ``{"validation": 200, "test": 200}``; scaled down proportionally
        (rounding down) when the pool holds fewer texts than they ask for.
    seed : int
        Seed of the split.
    labels : numpy.ndarray, optional
        Class labels; if given, every part keeps the class proportions of the pool.
    """
    wanted = dict(sizes)
    total = sum(wanted.values())
    if total > n:
        wanted = {k: v * n // total for k, v in wanted.items()}
    parts = split_indices(n, list(wanted.values()), seed=seed, stratify=labels)
    return dict(zip(wanted, parts, strict=True))


# ------------------------------------------------------------------------------ standard splits


def _strata(data: TextSet) -> np.ndarray | None:
    """The stratification key: class, domain, or class x domain where both exist."""
    if data.labels is not None and data.domains is not None:
        return data.labels * max(len(data.domain_names), 1) + data.domains
    if data.labels is not None:
        return data.labels
    return data.domains


def train_val_test(
    data: TextSet,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    seed: int = 0,
    stratify: bool = True,
) -> dict[str, TextSet]:
    """Split a corpus with no official split into seeded, disjoint train / validation / test.

    Parameters
    ----------
    data : TextSet
        The whole corpus.
    fractions : sequence of 3 floats
        The train, validation and test shares; they must sum to at most 1 (the rest is unused).
        Default :data:`DEFAULT_FRACTIONS` (0.8, 0.1, 0.1).
    seed : int
        The same ``(data, fractions, seed)`` always gives the same parts.
    stratify : bool
        Keep the class (and domain) proportions in every part; ignored for unlabelled data.

    Returns
    -------
    dict of str to TextSet
        ``train``, ``validation`` and ``test``, each in corpus order.
    """
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, validation, test), got {fractions!r}")
    if sum(fractions) > 1.0 + 1e-9:
        raise ValueError(f"fractions {tuple(fractions)} sum to more than 1")
    if any(f < 0 for f in fractions):
        raise ValueError(f"fractions must be >= 0, got {tuple(fractions)}")
    n = len(data)
    n_val, n_test = round(fractions[1] * n), round(fractions[2] * n)
    # fractions summing to 1 use every text (the training part absorbs rounding)
    whole = abs(sum(fractions) - 1.0) < 1e-9
    n_train = n - n_val - n_test if whole else min(round(fractions[0] * n), n - n_val - n_test)
    parts = split_indices(n, [n_train, n_val, n_test], seed=seed,
                          stratify=_strata(data) if stratify else None)
    return {
        split: data.take(idx, name=f"{data.name}_{split}")
        for split, idx in zip(("train", "validation", "test"), parts, strict=True)
    }


def _carve_validation(train: TextSet, fraction: float, seed: int) -> tuple[TextSet, TextSet]:
    n_val = round(fraction * len(train))
    val, rest = split_indices(len(train), [n_val, len(train) - n_val], seed=seed,
                              stratify=_strata(train))
    base = train.name.removesuffix("_train")
    return train.take(rest, name=f"{base}_train"), train.take(val, name=f"{base}_validation")


def _load(name: str, seed: int, options: dict[str, object]) -> object:
    from .catalog import dataset_spec

    spec = dataset_spec(name)
    if spec.seeded and "seed" not in options:
        options = {**options, "seed": seed}
    return spec.load(**options)


def standard_splits(
    data: str | TextSet | Mapping[str, TextSet],
    *,
    seed: int = 0,
    shot: Shot = "full",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    validation_fraction: float = VALIDATION_FRACTION,
    **options: object,
) -> dict[str, TextSet]:
    """The ``train`` / ``validation`` / ``test`` splits of any dataset, seeded.

    Parameters
    ----------
    data : str, TextSet or mapping of str to TextSet
        A registered dataset name (loaded with ``options``, e.g. ``root=``), a corpus, or splits
        already loaded.
    seed : int
        Seeds every random choice. A loader registered as ``seeded`` (the CLINC domain splits,
        whose seed picks the held-out intents) receives it too, unless ``options`` sets it, as
        the paper's ``--seed`` drives both.
    shot : int, float or "full"
        Keep K examples per class in ``train`` **and** ``validation`` (:func:`few_shot`; the
        paper's few-shot setting, K in 1, 5, 10). ``"full"`` keeps everything.
    fractions : sequence of 3 floats
        For a single corpus: train, validation and test shares (:func:`train_val_test`).
    validation_fraction : float
        For splits with ``train`` but no ``validation``: the share of train held out
        (stratified).
    **options
        Passed to the loader of a registered dataset.

    Returns
    -------
    dict of str to TextSet
        ``train``, ``validation``, ``test`` where the data allows, plus any other split the loader
        returned (``ood_test`` for the CLINC domains, ``oos_*``). Fit the detector bank on
        ``validation``.
    """
    if isinstance(data, str):
        data = _load(data, seed, dict(options))  # type: ignore[assignment]
    elif options:
        raise TypeError(f"options {sorted(options)} apply to a dataset name only")
    if isinstance(data, TextSet):
        out = train_val_test(data, fractions, seed=seed)
    elif isinstance(data, Mapping):
        out = dict(data)
        if "validation" not in out and "train" in out:
            if not 0.0 < validation_fraction < 1.0:
                raise ValueError(f"validation_fraction must lie in (0, 1), got "
                                 f"{validation_fraction!r}")
            out["train"], out["validation"] = _carve_validation(
                out["train"], validation_fraction, seed
            )
        order = ["train", "validation", "test"]
        out = {k: out[k] for k in [*[s for s in order if s in out],
                                   *[s for s in out if s not in order]]}
    else:
        raise TypeError(f"expected a dataset name, TextSet or mapping of splits, got {data!r}")
    for split in ("train", "validation"):
        if split in out:
            out[split] = few_shot(out[split], shot, seed=seed)
    return out


# ------------------------------------------------------------------------------ held-out classes


def _codes(data: TextSet, by: By) -> tuple[np.ndarray, tuple[str, ...]]:
    if by == "label":
        codes, names = data.labels, data.label_names
    elif by == "domain":
        codes, names = data.domains, data.domain_names
    else:
        raise ValueError(f"by must be 'label' or 'domain', got {by!r}")
    if codes is None:
        raise ValueError(f"{data.name}: has no {by}s to hold out")
    return codes, names


def choose_id_classes(
    names: Sequence[str], *, n_ood: int | None = None, n_id: int | None = None, seed: int = 0
) -> list[str]:
    """The ID classes among ``names``, drawn as the paper draws its known classes.

    ``np.random.RandomState(seed).choice(np.array(names), n_id, replace=False)``: the same
    numbers as the paper's ``np.random.seed(seed); np.random.choice(...)``, without touching
    numpy's global generator. Exactly one of ``n_ood`` and ``n_id`` is given.

    Returns
    -------
    list of str
        The ID classes in the order of ``names``.
    """
    if (n_ood is None) == (n_id is None):
        raise ValueError("give exactly one of n_ood and n_id")
    n_id = len(names) - int(n_ood) if n_id is None else int(n_id)  # type: ignore[arg-type]
    if not 1 <= n_id < len(names):
        raise ValueError(f"need 1 <= n_id < {len(names)} classes, got n_id={n_id}")
    picked = set(np.random.RandomState(seed).choice(np.array(names), n_id, replace=False))
    return [n for n in names if n in picked]


def _restrict(data: TextSet, keep: Sequence[str], by: By, name: str) -> TextSet:
    """The texts whose ``by`` is in ``keep``, with that column relabelled onto ``keep``."""
    codes, names = _codes(data, by)
    mapping = np.full(len(names), -1, dtype=np.int64)
    mapping[[names.index(k) for k in keep]] = np.arange(len(keep))
    idx = np.flatnonzero(mapping[codes] >= 0)
    part = data.take(idx, name=name)
    new_codes = mapping[codes[idx]]
    if by == "label":
        return TextSet(part.name, part.texts, new_codes, tuple(keep), part.source, part.license,
                       part.domains, part.domain_names)
    return TextSet(part.name, part.texts, part.labels, part.label_names, part.source,
                   part.license, new_codes, tuple(keep))


def holdout_classes(
    data: TextSet,
    n_ood: int | None = None,
    *,
    seed: int = 0,
    n_id: int | None = None,
    id_classes: Sequence[str] | None = None,
    by: By = "label",
) -> tuple[TextSet, TextSet]:
    """Split a corpus into ID classes and held-out (near-OOD) classes.

    Parameters
    ----------
    data : TextSet
        A labelled corpus (or one with domains, for ``by="domain"``).
    n_ood, n_id : int, optional
        How many classes to hold out, or to keep; exactly one unless ``id_classes`` is given.
        The ID classes are drawn by :func:`choose_id_classes` (the paper's rule).
    seed : int
        Seeds the draw; loop over seeds for the paper's repeated class splits.
    id_classes : sequence of str, optional
        Name the ID classes instead of drawing them.
    by : {"label", "domain"}
        Hold out classes (``labels``) or domains (``domains``, e.g. tweets by topic).

    Returns
    -------
    id_set, ood_set : TextSet
        The texts of the ID and of the held-out classes. The ``by`` column of each is relabelled
        onto its own classes (in corpus class order), so ``id_set.labels`` index the ID classes
        only; the other column is kept as is. Names are ``<name>_id`` and ``<name>_ood``.

    Examples
    --------
    BBC News, 3 topics ID vs 2 held out, over seeds::

        for seed in range(5):
            id_set, ood_set = holdout_classes(bbc_news(), n_ood=2, seed=seed)

    Airline tweets as ID, every other domain as OOD::

        id_set, ood_set = holdout_classes(sentiment_tweets(), id_classes=["airline"], by="domain")
    """
    _, names = _codes(data, by)
    if id_classes is not None:
        if n_ood is not None or n_id is not None:
            raise ValueError("give id_classes or n_ood / n_id, not both")
        unknown = [c for c in id_classes if c not in names]
        if unknown:
            raise ValueError(f"{data.name}: unknown {by}s {unknown}; known: {list(names)}")
        keep = [n for n in names if n in set(id_classes)]
        if not 1 <= len(keep) < len(names):
            raise ValueError(f"id_classes must name 1 to {len(names) - 1} {by}s")
    else:
        keep = choose_id_classes(names, n_ood=n_ood, n_id=n_id, seed=seed)
    held_out = [n for n in names if n not in keep]
    return (_restrict(data, keep, by, f"{data.name}_id"),
            _restrict(data, held_out, by, f"{data.name}_ood"))


def near_ood_splits(
    data: str | TextSet | Mapping[str, TextSet],
    n_ood: int | None = None,
    *,
    seed: int = 0,
    n_id: int | None = None,
    id_classes: Sequence[str] | None = None,
    by: By = "label",
    shot: Shot = "full",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    **options: object,
) -> dict[str, TextSet]:
    """Near-OOD splits by held-out classes, shaped like the paper's CLINC benchmark.

    The data is split by :func:`standard_splits` (seeded, stratified), then the same ID classes
    are kept in every split (:func:`holdout_classes`).

    Returns
    -------
    dict of str to TextSet
        ``train`` / ``validation`` / ``test`` over the ID classes, and ``ood_test``: the
        held-out classes' texts from the test split only. With ``shot``, the ID train and
        validation keep K examples per class.
    """
    splits = standard_splits(data, seed=seed, fractions=fractions, **options)
    _, names = _codes(splits["test"], by)
    if id_classes is None:
        id_classes = choose_id_classes(names, n_ood=n_ood, n_id=n_id, seed=seed)
    elif n_ood is not None or n_id is not None:
        raise ValueError("give id_classes or n_ood / n_id, not both")
    out: dict[str, TextSet] = {}
    for split in ("train", "validation", "test"):
        out[split], ood_part = holdout_classes(splits[split], id_classes=id_classes, by=by)
        if split == "test":
            out["ood_test"] = ood_part
    for split in ("train", "validation"):
        out[split] = few_shot(out[split], shot, seed=seed)
    return out


# ------------------------------------------------------------------------------ few-shot


def few_shot(data: TextSet, k: Shot, *, seed: int = 0, by: By = "label") -> TextSet:
    """K examples per class, seeded, as the paper's ``select_few_shot`` draws them.

    For each class, on its members in corpus order: ``np.random.seed(seed)``,
    ``np.random.shuffle`` and keep the first K (the first ``int(n_c * k)`` for a fraction). This
    function makes the same draws on a private ``RandomState``, so it selects the same examples
    as the paper's code without touching numpy's global generator.

    Parameters
    ----------
    data : TextSet
        A labelled set (or one with domains, for ``by="domain"``); unlabelled sets are allowed
        only with ``k="full"``.
    k : int, float in (0, 1), "full" or None
        Examples per class (the paper uses 1, 5 and 10), a per-class fraction, or everything.
        A class with fewer than K members keeps all of them.
    seed : int
        The same ``(data, k, seed)`` always gives the same subset.
    by : {"label", "domain"}
        The grouping to sample within.

    Returns
    -------
    TextSet
        The selected texts in corpus order (the same name and metadata).
    """
    if k is None or k == "full":
        return data
    codes, _ = _codes(data, by)
    return data.take(few_shot_indices(codes, k, seed=seed))


def few_shot_indices(codes: np.ndarray, k: Shot, *, seed: int = 0) -> np.ndarray:
    """Sorted positions of K examples per class of ``codes``: the draws of :func:`few_shot`.

    Parameters
    ----------
    codes : numpy.ndarray
        Integer class (or domain) of each example.
    k, seed
        As in :func:`few_shot`; ``k="full"`` or ``None`` keeps every position.
    """
    codes = np.asarray(codes)
    if k is None or k == "full":
        return np.arange(len(codes))
    if isinstance(k, bool) or not isinstance(k, int | float | np.integer | np.floating):
        raise TypeError(f"k must be an int, a fraction or 'full', got {k!r}")
    if isinstance(k, float | np.floating) and not float(k).is_integer() and not 0 < k < 1:
        raise ValueError(f"a fractional k must lie in (0, 1), got {k!r}")
    if k < 1 and not 0 < k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    chosen: list[np.ndarray] = []
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        take = int(len(members) * k) if k < 1 else int(k)
        order = np.random.RandomState(seed).permutation(len(members))
        chosen.append(members[order[:take]])
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, np.int64)
