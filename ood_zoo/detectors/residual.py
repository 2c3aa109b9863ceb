"""The principal-subspace residual detector, ``residual`` (the "Residual" score of ViM)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from ..api import Param, Requirements
from ..errors import InputError
from ..ops.arrays import compute_dtype
from ..ops.magnitude import row_norms
from ._covariance import Moments, class_means, estimate_covariance, residual_moments
from .chunks import check_state_shapes, map_rows
from .statistics import ClassStatistics, StatisticsDetector


def auto_dim(n_samples: int, n_features: int) -> int:
    """The default principal dimension: ``min(d // 2, (n - 1) // 2)``.

    Half the feature dimension, as ViM's choices for wide features (1000 of 2048, 512 of 768),
    capped at half the rank ``n - 1`` of the centred fit data, so that the fit data keeps a
    non-zero residual when ``n < d`` (with ``n - 1`` components every fit row would score 0).
    """
    return max(0, min(n_features // 2, (n_samples - 1) // 2))


def check_subspace_dim(owner: str, dim: int, n_samples: int, n_features: int) -> None:
    """Refuse a principal dimension ``D`` outside ``D < d`` and ``D <= n - 1``, where the
    residual's complement would be empty or the subspace undetermined by the fit data.

    Raises
    ------
    InputError
        Naming ``owner`` and the bound ``dim`` breaks.
    """
    if dim >= n_features:
        raise InputError(
            f"{owner}: dim={dim} must be smaller than the feature dimension {n_features}"
        )
    if dim > n_samples - 1:
        raise InputError(
            f"{owner}: dim={dim} needs at least {dim + 1} fit samples, got {n_samples} "
            f"(the principal subspace is undetermined beyond the data's rank)"
        )


class ResidualDetector(StatisticsDetector):
    """Norm of the feature's residual off the principal subspace of the fit features.

    ``score(x) = -|(x - m) Q Qᵀ|`` where ``m`` is the fit mean and ``Q`` (``[d, d - D]``) spans
    the orthogonal complement of the top-``D`` principal subspace (the eigenvectors of the fit
    covariance with the ``d - D`` smallest eigenvalues). Wang et al., "ViM: Out-Of-Distribution
    with Virtual-logit Matching", CVPR 2022 (its "Residual" score). ViM centres at the origin
    ``-W⁺b`` given by the classifier head; with features alone, the fit mean is used instead.

    ``dim = 0`` (the default) picks ``D = min(d // 2, (n - 1) // 2)`` (see :func:`auto_dim`);
    otherwise ``1 <= D < d`` and ``D <= n - 1`` (beyond the rank of the centred fit data the
    subspace is not determined). The covariance is accumulated in float64 row chunks. Fits
    from sharded statistics too (:meth:`partial_statistics`, :meth:`fit_statistics`; see
    :mod:`.statistics`).
    """

    name = "residual"
    version = "1"
    requires = Requirements(features=True)
    params = (
        Param("dim", 0, "principal dimension D (0: min(d // 2, (n - 1) // 2))", type=int,
              minimum=0),
    )
    state_tensors: ClassVar[tuple[str, ...]] = ("mean_", "complement_")
    state_widths: ClassVar[Mapping[str, tuple[str, int]]] = {"n_features_in": ("mean_", 0)}

    def _fit(self, features, labels, logits):
        _, mean = class_means(features, None)
        (moments,) = residual_moments(features, [(mean, None)])
        self._set_subspace(mean, moments)

    def _fit_statistics(self, statistics: ClassStatistics) -> None:
        pooled = statistics.pooled()
        self._set_subspace(pooled.means, pooled.moments())

    def _set_subspace(self, mean: torch.Tensor, moments: Moments) -> None:
        """The fitted state from the fit mean ``[1, d]`` and the moments about it."""
        n, d = moments.n, mean.shape[1]
        dim = self.hparams["dim"] or auto_dim(n, d)
        check_subspace_dim(self.name, dim, n, d)
        cov = estimate_covariance(moments, "empirical")
        _, evecs = torch.linalg.eigh(0.5 * (cov + cov.T))  # ascending eigenvalues
        self.mean_ = mean[0]
        self.complement_ = evecs[:, : d - dim]
        self.dim_ = dim

    def _score(self, features, logits):
        device, dtype = features.device, compute_dtype(features.dtype)
        mean = self.mean_.to(device=device, dtype=dtype)
        basis = self.complement_.to(device=device, dtype=dtype)
        return map_rows(
            features, lambda x: -row_norms((x - mean) @ basis),
            width=features.shape[1] + basis.shape[1],
        )

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(tensors)
        d = self.mean_.shape[0] if self.mean_.dim() == 1 else -1
        check_state_shapes(
            self.name, mean_=(self.mean_, (None,)), complement_=(self.complement_, (d, None)),
        )
        self.dim_ = d - self.complement_.shape[1]
