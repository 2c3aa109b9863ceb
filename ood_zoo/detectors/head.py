"""Classifier-head geometry: ``vim``, ``fdbd`` and ``nci``.

Each uses the linear head ``(W [C, d], b [C])`` that maps the features to their logits
(``fit(features, head=(W, b))``, see :mod:`ood_zoo.api`): for a causal LM at its final layer
with last-token features, the label tokens' rows of the LM head (bias 0); for an encoder, a
linear probe's. The logits are computed from it, ``z = x Wᵀ + b``, so they always agree with the
features (no logits are passed). The head is saved with the detector.

Fitted state is computed in float64; scores in float32, or float64 for float64 features.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import ClassVar

import torch

from ..api import Detector, Param, Requirements
from ..errors import InputError
from ..ops.arrays import compute_dtype
from ..ops.magnitude import row_norms
from ._covariance import class_means, estimate_covariance, residual_moments
from .chunks import check_state_shapes, map_rows, row_chunks, rows_per_chunk
from .residual import check_subspace_dim


def _cast(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return tensor.to(device=like.device, dtype=like.dtype)


def distance_to_mean(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``|x - μ|`` per row, floored at ``ε (|x| + |μ|)`` (``ε`` the unit round-off of ``x``'s
    dtype), the rounding error of ``x - μ`` itself; at least the dtype's smallest normal. Below
    the floor the difference has no direction, so ``fdbd`` and ``nci`` stay finite there (a
    query equal to the fit mean included)."""
    info = torch.finfo(x.dtype)
    floor = info.eps * (row_norms(x) + row_norms(mean.unsqueeze(0)))
    return torch.maximum(row_norms(x - mean), floor).clamp_min(info.tiny)


class _HeadDetector(Detector):
    """Shared by the head detectors: the head in the state, logits ``x Wᵀ + b``."""

    requires = Requirements(features=True, head=True)
    state_widths: ClassVar[Mapping[str, tuple[str, int]]] = {
        "n_features_in": ("head_weight_", 1),
    }

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """``x Wᵀ + b`` in ``x``'s dtype."""
        return torch.addmm(_cast(self.head_bias_, x), x, _cast(self.head_weight_, x).T)

    def _fit_logits(self, features: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Float64 ``(chunk, logits)`` over the fit rows."""
        rows = rows_per_chunk(features.shape[1] + self.head_weight_.shape[0])
        for _, chunk in row_chunks(features, rows):
            x = chunk.to(torch.float64)
            yield x, self._logits(x)

    def _check_head_state(self) -> None:
        c = self.head_weight_.shape[0] if self.head_weight_.dim() == 2 else -1
        check_state_shapes(
            self.name, head_weight_=(self.head_weight_, (None, None)),
            head_bias_=(self.head_bias_, (c,)),
        )



def vim_dim(n_features: int) -> int:
    """ViM's principal dimension for ``d`` features: 1000 if ``d >= 2048``, 512 if ``d >= 768``,
    else ``d // 2`` (the choices of Wang et al.'s code: 1000 of 2048, 512 of 768)."""
    if n_features >= 2048:
        return 1000
    if n_features >= 768:
        return 512
    return n_features // 2


class ViMDetector(_HeadDetector):
    """Virtual-logit matching (ViM), the full version: energy minus the scaled residual.

    With the head ``(W, b)``, the origin ``u = -W⁺ b`` (``W⁺`` the pseudo-inverse, so that
    ``W u + b`` is as close to 0 as the head allows) and ``Q`` ``[d, d - D]`` the eigenvectors
    of ``Σ = mean_fit (x - u)(x - u)ᵀ`` (uncentred about ``u``) with the ``d - D`` smallest
    eigenvalues, the residual is ``r(x) = |(x - u) Q|`` and

    ``score(x) = logsumexp_c z_c - α r(x)``, ``z = x Wᵀ + b``,
    ``α = mean_fit(max_c z_c) / mean_fit(r(x))``.

    Higher = more ID. pytorch-ood's ``ViM`` returns ``α r(x) - logsumexp(z)``: ``score = -ViM``.
    ``dim = 0`` (the default) takes ``D`` from :func:`vim_dim` (1000 for ``d >= 2048``, 512 for
    ``d >= 768``, else ``d // 2``), capped at ``(n - 1) // 2`` so that the fit rows keep a
    residual; otherwise ``1 <= D < d`` and ``D <= n - 1``. As in the paper, ``α`` takes the sign
    of the mean max-logit. Wang et al., "ViM: Out-Of-Distribution with Virtual-logit Matching",
    CVPR 2022.

    Attributes
    ----------
    origin_ : torch.Tensor
        ``[d]`` float64 ``u``.
    complement_ : torch.Tensor
        ``[d, d - D]`` float64 ``Q``.
    alpha_ : torch.Tensor
        0-d float64 ``α``.
    """

    name = "vim"
    version = "1"
    params = (
        Param("dim", 0, "principal dimension D (0: 1000 / 512 / d // 2 by width, see vim_dim)",
              type=int, minimum=0),
    )
    state_tensors: ClassVar[tuple[str, ...]] = (
        "head_weight_", "head_bias_", "origin_", "complement_", "alpha_",
    )

    def _fit(self, features, labels, logits):
        n, d = features.shape
        dim = self.hparams["dim"] or min(vim_dim(d), max(0, (n - 1) // 2))
        check_subspace_dim(self.name, dim, n, d)
        weight = self.head_weight_.to(torch.float64)
        origin = -(torch.linalg.pinv(weight) @ self.head_bias_.to(torch.float64))
        (moments,) = residual_moments(features, [(origin.unsqueeze(0), None)])
        cov = estimate_covariance(moments, "empirical")
        _, evecs = torch.linalg.eigh(0.5 * (cov + cov.T))  # ascending eigenvalues
        self.origin_, self.complement_ = origin, evecs[:, : d - dim]
        max_logits = torch.zeros((), dtype=torch.float64, device=features.device)
        residuals = torch.zeros_like(max_logits)
        for x, z in self._fit_logits(features):
            max_logits += z.max(dim=1).values.sum()
            residuals += row_norms((x - origin) @ self.complement_).sum()
        if not residuals > 0:
            raise InputError(
                f"{self.name}: the fit features have no residual off the {dim}-dimensional "
                f"principal subspace through u = -W⁺b; lower dim"
            )
        self.alpha_ = max_logits / residuals
        self.dim_ = dim

    def _score(self, features, logits):
        dtype = compute_dtype(features.dtype)
        origin = self.origin_.to(device=features.device, dtype=dtype)
        basis = self.complement_.to(device=features.device, dtype=dtype)
        alpha = float(self.alpha_)

        def reduce(x: torch.Tensor) -> torch.Tensor:
            energy = torch.logsumexp(self._logits(x), dim=1)
            return energy - alpha * row_norms((x - origin) @ basis)

        return map_rows(
            features, reduce,
            width=features.shape[1] + basis.shape[1] + self.head_weight_.shape[0],
        )

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(tensors)
        self._check_head_state()
        d = self.head_weight_.shape[1]
        check_state_shapes(
            self.name, origin_=(self.origin_, (d,)), complement_=(self.complement_, (d, None)),
            alpha_=(self.alpha_, ()),
        )
        self.dim_ = d - self.complement_.shape[1]


class FDBDDetector(_HeadDetector):
    """Fast decision-boundary distance (fDBD), normalised by the distance to the fit mean.

    With ``z = x Wᵀ + b``, the predicted class ``ŷ = argmax_c z_c`` (the first on ties) and
    ``μ`` the mean of the fit features,

    ``score(x) = (1 / (C - 1)) Σ_{c ≠ ŷ} |z_ŷ - z_c| / |w_ŷ - w_c|  /  |x - μ|``,

    the mean distance from ``x`` to the decision boundaries between ``ŷ`` and each other class,
    relative to ``x``'s distance from the fit mean (``|x - μ|`` floored at its rounding error,
    :func:`distance_to_mean`). Higher = more ID (far from the boundaries, relative to the spread).
    pytorch-ood's ``fDBD`` returns the negation: ``score = -fDBD_pood``. Needs ``C >= 2`` and
    distinct head rows. Holds the ``[C, C]`` float64 ``|w_p - w_c|``: meant for class or
    label-token heads, not a whole vocabulary. Liu & Qin, "Fast Decision Boundary based
    Out-of-Distribution Detector", ICML 2024.

    Attributes
    ----------
    mean_ : torch.Tensor
        ``[d]`` float64 ``μ``.
    boundary_norms_ : torch.Tensor
        ``[C, C]`` float64 ``|w_p - w_c|`` (1 on the diagonal, which is never used).
    """

    name = "fdbd"
    version = "1"
    params = ()
    state_tensors: ClassVar[tuple[str, ...]] = (
        "head_weight_", "head_bias_", "mean_", "boundary_norms_",
    )

    def _fit(self, features, labels, logits):
        weight = self.head_weight_.to(torch.float64)
        n_classes = weight.shape[0]
        if n_classes < 2:
            raise InputError(f"{self.name}: needs a head with at least 2 classes, got 1")
        norms = torch.stack([row_norms(weight - row) for row in weight])
        norms.fill_diagonal_(1.0)
        if not bool((norms > 0).all()):
            p, c = (norms == 0).nonzero()[0].tolist()
            raise InputError(
                f"{self.name}: head rows {p} and {c} are identical, so no decision boundary "
                "separates those classes"
            )
        _, mean = class_means(features, None)
        self.mean_, self.boundary_norms_ = mean[0], norms

    def _score(self, features, logits):
        dtype = compute_dtype(features.dtype)
        mean = self.mean_.to(device=features.device, dtype=dtype)
        norms = self.boundary_norms_.to(device=features.device, dtype=dtype)
        n_classes = norms.shape[0]

        def reduce(x: torch.Tensor) -> torch.Tensor:
            z = self._logits(x)
            top = z.max(dim=1)
            distances = (top.values.unsqueeze(1) - z).abs() / norms[top.indices]
            return distances.sum(dim=1) / (n_classes - 1) / distance_to_mean(x, mean)

        return map_rows(features, reduce, width=features.shape[1] + 3 * n_classes)

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(tensors)
        self._check_head_state()
        c, d = self.head_weight_.shape
        check_state_shapes(
            self.name, mean_=(self.mean_, (d,)), boundary_norms_=(self.boundary_norms_, (c, c)),
        )


class NCIDetector(_HeadDetector):
    """Neural-collapse inspired score (NCI): alignment with the predicted class's head row.

    With ``z = x Wᵀ + b``, ``ŷ = argmax_c z_c`` (the first on ties) and ``μ_G`` the mean of
    the fit features,

    ``score(x) = (x - μ_G) · w_ŷ / |x - μ_G|  +  α |x|₁``,

    the projection of the centred feature's direction on ``w_ŷ`` (its cosine times ``|w_ŷ|``;
    ``|x - μ_G|`` floored at its rounding error, :func:`distance_to_mean`) plus a feature-norm
    term. Higher = more ID. pytorch-ood's ``NCI`` returns the negation: ``score = -NCI_pood``
    (its default, like ours, is ``α = 0``; it searches ``α`` in 0..1 on held-out OOD data,
    which ood_zoo never sees). Liu & Qin, "Detecting Out-of-distribution through the Lens of
    Neural Collapse", CVPR 2025.

    Attributes
    ----------
    mean_ : torch.Tensor
        ``[d]`` float64 ``μ_G``.
    """

    name = "nci"
    version = "1"
    params = (
        Param("alpha", 0.0, "weight α >= 0 of the feature L1 norm", type=float, minimum=0.0),
    )
    state_tensors: ClassVar[tuple[str, ...]] = ("head_weight_", "head_bias_", "mean_")

    def _fit(self, features, labels, logits):
        _, mean = class_means(features, None)
        self.mean_ = mean[0]

    def _score(self, features, logits):
        dtype = compute_dtype(features.dtype)
        mean = self.mean_.to(device=features.device, dtype=dtype)
        alpha = self.hparams["alpha"]

        def reduce(x: torch.Tensor) -> torch.Tensor:
            predicted = self._logits(x).argmax(dim=1)
            centred = x - mean
            rows = _cast(self.head_weight_, x)[predicted]
            score = (centred * rows).sum(dim=1) / distance_to_mean(x, mean)
            return score + alpha * x.abs().sum(dim=1) if alpha else score

        return map_rows(
            features, reduce, width=3 * features.shape[1] + self.head_weight_.shape[0],
        )

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(tensors)
        self._check_head_state()
        check_state_shapes(self.name, mean_=(self.mean_, (self.head_weight_.shape[1],)))
