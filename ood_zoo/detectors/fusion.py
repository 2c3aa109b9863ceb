"""Rank fusion of registered detectors: ``fusion``.

The members are any registered detectors (built-in or from plugins) that do not need the
language model. Each is fitted on the fusion's fit inputs; its scores on the fit set are kept,
sorted, as the reference of its empirical CDF, and the fused score is the weighted mean of the
members' empirical CDF values. Member states are saved inside the fusion's own state, as
``member{i}_{tensor}``, so a fusion saves and loads like any detector.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..api import Detector, Param, Requirements
from ..ops.arrays import compute_dtype
from ._members import parse_json_object, registered_classes
from .chunks import check_state_shapes
from .distance import CosineDetector
from .mahalanobis import MahalanobisDetector

#: The members of ``create("fusion")`` without arguments; the class-level declarations
#: (``requires``, ``state_tensors``) describe this default.
DEFAULT_MEMBERS: tuple[type[Detector], ...] = (CosineDetector, MahalanobisDetector)


def union_requirements(members: Sequence[type[Detector] | Detector]) -> Requirements:
    """What a fusion of ``members`` needs: every input any member needs, and a fit."""
    return Requirements(
        features=any(m.requires.features for m in members),
        labels=any(m.requires.labels for m in members),
        logits=any(m.requires.logits for m in members),
        fit=True,
        head=any(m.requires.head for m in members),
    )


def member_state_name(index: int, tensor: str) -> str:
    """The fusion's name of member ``index``'s state tensor ``tensor``."""
    return f"member{index}_{tensor}"


def member_state_names(members: Sequence[type[Detector] | Detector]) -> tuple[str, ...]:
    """The state tensors of a fusion of ``members``: the reference, then each member's state."""
    return ("reference_", "tail_scale_", *(
        member_state_name(i, tensor)
        for i, member in enumerate(members) for tensor in member.state_tensors
    ))


def tail_scale(reference: torch.Tensor) -> torch.Tensor:
    """Per-row scale of the CDF tails: the mean absolute deviation of ``reference`` [M, n].

    Rows whose values are all equal get 1.
    """
    deviation = (reference - reference.mean(dim=1, keepdim=True)).abs().mean(dim=1)
    return torch.where(deviation > 0, deviation, torch.ones_like(deviation))


#: The empirical CDFs of ``fusion`` and ``layers`` are of the fit scores of at most this many fit
#: rows (a seeded sample; leave-one-out for kNN banks): ranks resolved to 1/5,000, and fitting on
#: a million rows scores 5,000 of them, not a million against a million.
REFERENCE_ROWS = 5000


def reference_rows(n_rows: int) -> torch.Tensor:
    """The fit rows whose scores make the empirical CDFs: all of them up to
    :data:`REFERENCE_ROWS`, else a sorted seeded sample of that many."""
    if n_rows <= REFERENCE_ROWS:
        return torch.arange(n_rows)
    generator = torch.Generator().manual_seed(0)
    return torch.randperm(n_rows, generator=generator)[:REFERENCE_ROWS].sort().values


@dataclass(frozen=True)
class FitScores:
    """The fit scores of the :func:`reference_rows` (``[k, rows]``, unsorted), kept from ``_fit``
    so that placing the default threshold right after does not score those rows again."""

    rows: torch.Tensor
    scores: torch.Tensor

    def of(self, rows: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]
           ) -> torch.Tensor:
        """The scores of sorted fit rows ``rows``: looked up when every one is a reference row
        (the threshold's sample always is), else ``compute(rows)``."""
        at = torch.searchsorted(self.rows, rows).clamp_max(self.rows.numel() - 1)
        if bool((self.rows[at] == rows).all()):
            return self.scores[:, at]
        return compute(rows)


def empirical_cdf(reference: torch.Tensor, scores: torch.Tensor, scale: float) -> torch.Tensor:
    """The continuous mid-rank empirical CDF of ``scores`` against sorted 1-D ``reference``.

    At each distinct reference value ``u_j`` (``c_j`` copies, ``C_j`` values up to it, of
    ``n``), ``F(u_j) = (C_j - c_j / 2) / n``: the share of the reference below ``u_j``, ties
    counted half. Between two distinct values ``F`` is linear; below the smallest
    (``u_1``) and above the largest (``u_k``) it has hyperbolic tails with scale ``σ``,
    ``F(s) = F(u_1) σ / (σ + u_1 - s)`` and ``F(s) = 1 - (1 - F(u_k)) σ / (σ + s - u_k)``. So
    ``F`` is continuous and strictly increasing, in ``(0, 1)``: samples beyond every fit score
    keep their order instead of tying at 0 or 1. Computed in float64.
    """
    values, counts = torch.unique_consecutive(reference, return_counts=True)
    below_or_at = counts.cumsum(0)
    mid = (2 * below_or_at - counts).to(torch.float64) / (2 * reference.numel())
    s = scores.to(torch.float64)
    right = torch.searchsorted(values, s.contiguous(), side="right")
    lo = (right - 1).clamp(0, values.numel() - 1)
    hi = right.clamp(max=values.numel() - 1)
    span = values[hi] - values[lo]
    step = torch.where(span > 0, (s - values[lo]) / torch.where(span > 0, span, 1.0), 0.0)
    inside = mid[lo] + step * (mid[hi] - mid[lo])
    low_tail = mid[0] * scale / (scale + (values[0] - s).clamp_min(0))
    high_tail = 1 - (1 - mid[-1]) * scale / (scale + (s - values[-1]).clamp_min(0))
    return torch.where(s < values[0], low_tail, torch.where(s > values[-1], high_tail, inside))


def _split_names(members: str | Sequence[str]) -> str:
    names = members.split(",") if isinstance(members, str) else list(members)
    return ",".join(name.strip() for name in names)


def _canonical_member_params(member_params: str | Mapping[str, Any]) -> str:
    parsed = parse_json_object(member_params, "fusion", "member_params")
    if not all(isinstance(v, Mapping) for v in parsed.values()):
        raise ValueError(
            f"fusion: member_params must map member names to parameter dicts, got "
            f"{member_params!r}"
        )
    return json.dumps(parsed, sort_keys=True)


def _canonical_weights(weights: str | Sequence[float]) -> str:
    if isinstance(weights, str):
        return weights
    return ",".join(repr(float(w)) for w in weights)


class FusionDetector(Detector):
    """Weighted mean of the members' empirical-CDF ranks against the fit set (HUQ-style).

    For members ``m = 1..M`` with scores ``s_m`` (each higher = more ID) and fit-set scores
    ``r_m1..r_mn``, ``F_m`` is member ``m``'s mid-rank empirical CDF made continuous
    (:func:`empirical_cdf`): at a fit score ``u``, ``F_m(u) = (#{j: r_mj < u} + #{j: r_mj <= u})
    / (2n)``; linear between fit scores; hyperbolic tails beyond them, with the scale
    ``σ_m`` = the mean absolute deviation of ``r_m`` (:func:`tail_scale`). The fused score is
    ``score(x) = Σ_m w_m F_m(s_m(x)) / Σ_m w_m``, in ``(0, 1)``. The ranks put members of any
    scale on one footing (the fusion is invariant to increasing affine maps of a member's
    score), and since every ``F_m`` is strictly increasing a one-member fusion ranks samples as
    that member does (same AUROC); OOD samples below every fit score keep their order rather
    than tying at 0. The fit-set scores of kNN members are leave-one-out (what they place their
    threshold on), since a bank row always matches itself; a fit set of more than
    :data:`REFERENCE_ROWS` rows gives its CDFs a seeded sample of that many. Vazhentsev et al.,
    "Hybrid Uncertainty Quantification for Selective Text Classification in Ambiguous Tasks",
    ACL 2023 (HUQ combines uncertainty scores through their ranks).

    Members are resolved by name in the process-wide registry
    (:func:`ood_zoo.registry.get_registry`) and fed the fusion's validated inputs; the fusion
    needs every input any member needs (the linear head too, passed on to the members that use
    it and saved in their state). Members that need the language model are refused.
    ``members``, ``member_params`` and ``weights`` may be given as a list, a mapping and a list
    of numbers; they are kept (and saved) as the strings below. ``requires``,
    ``state_tensors`` and ``nonfinite_state`` are set per instance, from the members; the
    class-level ones describe the default members (``cosine`` and ``mahalanobis``).
    """

    name = "fusion"
    version = "1"
    requires = union_requirements(DEFAULT_MEMBERS)
    params = (
        Param("members", ",".join(m.name for m in DEFAULT_MEMBERS),
              "comma-separated names of the registered detectors to fuse (at least one)",
              type=str),
        Param("member_params", "{}",
              "JSON object: member name -> that member's parameters", type=str),
        Param("weights", "", "comma-separated positive weights, one per member; empty = equal",
              type=str),
    )
    state_tensors: ClassVar[tuple[str, ...]] = member_state_names(DEFAULT_MEMBERS)

    def __init__(
        self, *, members: str | Sequence[str] = params[0].default,
        member_params: str | Mapping[str, Any] = params[1].default,
        weights: str | Sequence[float] = params[2].default, **kwargs: Any,
    ) -> None:
        super().__init__(
            members=_split_names(members), member_params=_canonical_member_params(member_params),
            weights=_canonical_weights(weights), **kwargs,
        )
        names = self.hparams["members"].split(",")
        if names == [""] or "" in names:
            raise ValueError(f"fusion: members must name at least one detector, got {members!r}")
        classes = registered_classes(names, "fusion", "member")
        needs_lm = sorted({cls.name for cls in classes if cls.requires.language_model})
        if needs_lm:
            raise ValueError(
                f"fusion: member(s) {needs_lm} need the language model, which a fusion cannot "
                "feed; fuse detectors on features or logits"
            )
        per_member = json.loads(self.hparams["member_params"])
        stray = sorted(set(per_member) - set(names))
        if stray:
            raise ValueError(f"fusion: member_params names {stray}, which are not members")
        self.member_detectors = [cls(**per_member.get(cls.name, {})) for cls in classes]
        self.weights = self._parse_weights(len(names))
        self.requires = union_requirements(self.member_detectors)
        self.state_tensors = member_state_names(self.member_detectors)
        self.nonfinite_state = tuple(
            member_state_name(i, tensor)
            for i, member in enumerate(self.member_detectors) for tensor in member.nonfinite_state
        )

    def _parse_weights(self, n_members: int) -> torch.Tensor:
        text = self.hparams["weights"]
        if not text:
            return torch.full((n_members,), 1.0 / n_members, dtype=torch.float64)
        try:
            weights = [float(w) for w in text.split(",")]
        except ValueError:
            raise ValueError(
                f"fusion: weights must be comma-separated numbers, got {text!r}"
            ) from None
        if len(weights) != n_members or not all(0 < w < float("inf") for w in weights):
            raise ValueError(
                f"fusion: weights must be {n_members} positive finite numbers (one per member), "
                f"got {text!r}"
            )
        total = sum(weights)
        return torch.tensor([w / total for w in weights], dtype=torch.float64)

    def _member_inputs(
        self, member: Detector, features: torch.Tensor | None, logits: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return (features if member.requires.features else None,
                logits if member.requires.logits else None)

    def _fit(self, features, labels, logits):
        for i, member in enumerate(self.member_detectors):
            x, z = self._member_inputs(member, features, logits)
            head = (self.head_weight_, self.head_bias_) if member.requires.head else None
            member.fit(x, labels if member.requires.labels else None, z, head=head)
            for tensor in member.state_tensors:
                setattr(self, member_state_name(i, tensor), getattr(member, tensor))
        rows = reference_rows(features.shape[0] if features is not None else logits.shape[0])
        self._fit_cache = FitScores(rows, self._member_fit_scores(features, logits, rows))
        self.reference_ = self._fit_cache.scores.sort(dim=1).values
        self.tail_scale_ = tail_scale(self.reference_)

    def _member_fit_scores(self, features, logits, rows: torch.Tensor) -> torch.Tensor:
        """Each member's fit scores of the fit rows ``rows`` (``[members, rows]``, float64)."""
        return torch.stack([
            member._fit_scores(*self._member_inputs(member, features, logits), rows)
            .to("cpu", torch.float64) for member in self.member_detectors
        ])

    def _fuse(self, member_scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Weighted mean over members (rows of ``member_scores``) of their empirical CDFs."""
        reference = self.reference_.to(member_scores.device)
        ranks = torch.stack([
            empirical_cdf(reference[i], member_scores[i], float(self.tail_scale_[i]))
            for i in range(len(self.member_detectors))
        ])
        return (self.weights.to(ranks.device) @ ranks).to(dtype)

    def _score(self, features, logits):
        dtype = compute_dtype((features if features is not None else logits).dtype)
        scores = torch.stack([
            member._score(*self._member_inputs(member, features, logits)).to(torch.float64)
            for member in self.member_detectors
        ])
        return self._fuse(scores, dtype)

    def _fit_scores(self, features, logits, rows):
        dtype = compute_dtype((features if features is not None else logits).dtype)
        scores = self._fit_cache.of(
            rows, lambda other: self._member_fit_scores(features, logits, other))
        return self._fuse(scores, dtype)

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(tensors)
        n_members = len(self.member_detectors)
        check_state_shapes(
            self.name, reference_=(self.reference_, (n_members, None)),
            tail_scale_=(self.tail_scale_, (n_members,)),
        )
        if self.reference_.dtype != torch.float64 or self.reference_.shape[1] == 0:
            raise ValueError(f"{self.name}: state tensor 'reference_' must be non-empty float64")
        if self.tail_scale_.dtype != torch.float64 or not bool((self.tail_scale_ > 0).all()):
            raise ValueError(f"{self.name}: state tensor 'tail_scale_' must be positive float64")
        if not bool((self.reference_[:, 1:] >= self.reference_[:, :-1]).all()):
            raise ValueError(f"{self.name}: state tensor 'reference_' must be sorted per member")
        for i, member in enumerate(self.member_detectors):
            member.load_state_dict(
                {t: tensors[member_state_name(i, t)] for t in member.state_tensors}
            )
