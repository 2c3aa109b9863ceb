"""What a detector declares about itself: the inputs it needs and its hyperparameters.

:class:`Requirements` says which inputs a detector reads (features, labels, logits, the linear
head, the language model, per-layer features), so a runner can extract them once and feed every
detector; :class:`Param` declares one hyperparameter with its default, type and bounds, so
constructors, ``ood-zoo detectors --json`` and the scikit-learn wrapper validate and list them the
same way. Both are re-exported by :mod:`ood_zoo.api`, where detectors are written.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Param", "Requirements"]


@dataclass(frozen=True, kw_only=True)
class Requirements:
    """What a detector needs, so a runner can extract inputs once and feed every detector.

    Every field is a keyword. ``features`` has no default, so each detector says whether it
    reads features: a logit detector is ``Requirements(features=False, logits=True, fit=False)``
    and takes ``score(logits=...)`` alone; one with ``features=True`` is always given features
    (the conformance kit feeds each detector exactly the inputs it declares).

    Attributes
    ----------
    features : bool
        Needs hidden-state features ``[n, d]`` (required: no default).
    labels : bool
        Needs integer ID class labels at fit time.
    logits : bool
        Needs class (or label-token) logits ``[n, C]`` at fit and score time.
    fit : bool
        Needs ``fit`` before ``score``. Logit detectors such as MSP do not.
    language_model : bool
        Needs the language model itself (e.g. perplexity); such detectors are fed by a runner.
    head : bool
        Needs, at fit time, the linear head ``(W [C, d], b [C])`` mapping features to logits
        ``x Wᵀ + b`` (a classifier's last layer; for an LM, the label tokens' LM-head rows).
    layered : bool
        Its features are per-layer hidden states ``[n, L, d]`` (``extract(layers="all")``), not
        ``[n, d]``; validated the same way (floating, finite, non-empty), the width ``d`` being
        the last axis.
    """

    features: bool
    labels: bool = False
    logits: bool = False
    fit: bool = True
    language_model: bool = False
    head: bool = False
    layered: bool = False

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)


@dataclass(frozen=True)
class Param:
    """A declared hyperparameter with its default, type and allowed values.

    Attributes
    ----------
    name, default, doc
        The keyword, its default value and a one-line description.
    type
        ``int``, ``float``, ``str`` or ``bool``; values are checked (ints are accepted as floats).
        By default the type of ``default``: ``Param("k", 10, ...)`` is an ``int``,
        ``Param("alpha", 1.0, ...)`` a ``float``, ``Param("flag", False, ...)`` a ``bool``.
        Give ``type=float`` for a float whose default is written as an int.
    choices
        The allowed values, if the parameter is categorical.
    minimum, maximum
        The smallest and largest allowed values (inclusive), for numeric parameters.
    exclusive_minimum, exclusive_maximum
        If true, ``minimum`` (``maximum``) itself is not allowed: ``Param("gamma", 0.1, ...,
        minimum=0.0, exclusive_minimum=True, maximum=1.0, exclusive_maximum=True)`` is
        ``0 < γ < 1``.
    """

    name: str
    default: Any
    doc: str
    type: type | None = None  # None: the type of ``default`` (set in __post_init__)
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    exclusive_maximum: bool = False

    def __post_init__(self) -> None:
        if self.type is None:
            object.__setattr__(self, "type", _type_of(self.default))

    def validate(self, value: Any, owner: str) -> Any:
        """Return ``value`` converted to this parameter's type, or raise ``ValueError``."""
        where = f"{owner}: parameter {self.name!r}"
        if self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{where} must be a bool, got {value!r}")
        elif self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{where} must be an int, got {value!r}")
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{where} must be a number, got {value!r}")
            try:
                value = float(value)
            except OverflowError:  # an int beyond float range
                value = math.inf
            if not math.isfinite(value):
                raise ValueError(f"{where} must be finite, got {value!r}")
        elif self.type is str and not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        if self.minimum is not None:
            too_small = value <= self.minimum if self.exclusive_minimum else value < self.minimum
            if too_small:
                op = ">" if self.exclusive_minimum else ">="
                raise ValueError(f"{where} must be {op} {self.minimum}, got {value!r}")
        if self.maximum is not None:
            too_large = value >= self.maximum if self.exclusive_maximum else value > self.maximum
            if too_large:
                op = "<" if self.exclusive_maximum else "<="
                raise ValueError(f"{where} must be {op} {self.maximum}, got {value!r}")
        return value

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["type"] = self.type.__name__
        return out


def _type_of(default: Any) -> type:
    """The declared type a default implies: bool, int, str, else float (bool is an int too)."""
    for kind in (bool, int, str):
        if isinstance(default, kind):
            return kind
    return float
