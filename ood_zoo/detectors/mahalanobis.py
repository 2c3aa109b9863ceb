"""Class-conditional Gaussian detectors: ``mahalanobis`` and ``relative_mahalanobis``.

Both fit in float64 by streaming over the features (class counts and sums, then the scatter
matrix in row chunks; see :mod:`._covariance`), factor the pseudo-inverse of the shared
covariance as ``W Wᵀ`` with ``eigh``, and score through :func:`ood_zoo.ops.mahalanobis`. The
fitted state is kept in float64 and cast to the compute dtype of the queries at score time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from .. import ops
from ..api import Param, Requirements
from ..ops.arrays import compute_dtype
from ._covariance import (
    COVARIANCES,
    Moments,
    class_means,
    encode_labels,
    estimate_covariance,
    pinv_factor,
    residual_moments,
)
from .chunks import check_state_shapes
from .statistics import ClassStatistics, StatisticsDetector

_COVARIANCE_PARAM = Param(
    "covariance", "empirical",
    "shared covariance estimator: 'empirical' (maximum likelihood, pseudo-inverted when "
    "singular) or 'ledoit_wolf' (Ledoit-Wolf 2004 shrinkage)",
    type=str, choices=COVARIANCES,
)


def _min_class_distance(
    features: torch.Tensor, whitening: torch.Tensor, means: torch.Tensor, center: torch.Tensor,
) -> torch.Tensor:
    """``min_c (x - μ_c)ᵀ W Wᵀ (x - μ_c)`` per row, in the compute dtype of ``features``."""
    dtype, device = compute_dtype(features.dtype), features.device
    d2, _ = ops.mahalanobis(
        features,
        whitening.to(device=device, dtype=dtype),
        means.to(device=device, dtype=dtype),
        center=center.to(device=device, dtype=dtype),
    )
    return d2


class MahalanobisDetector(StatisticsDetector):
    """Minimum Mahalanobis distance to the class means, with one shared covariance.

    ``score(x) = -min_c (x - μ_c)ᵀ Σ⁺ (x - μ_c)``, where ``μ_c`` are the class means of the fit
    features and ``Σ`` the covariance of the class-centred features ``x_i - μ_{y_i}``:
    the maximum-likelihood (``1/N``) estimate as scikit-learn's ``EmpiricalCovariance``, which
    the LLM-OOD code uses, or its Ledoit–Wolf shrinkage. ``Σ⁺`` is the pseudo-inverse, needed
    when ``N`` is below the feature dimension. Lee et al., "A Simple Unified Framework for
    Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018.

    Labels may be any integers; they are mapped to ``0..C-1`` and kept in ``classes_``.
    Fits from sharded statistics too (:meth:`partial_statistics`, :meth:`fit_statistics`; see
    :mod:`.statistics`).
    """

    name = "mahalanobis"
    version = "1"
    requires = Requirements(features=True, labels=True)
    params = (_COVARIANCE_PARAM,)
    state_tensors: ClassVar[tuple[str, ...]] = (
        "classes_", "class_means_", "whitening_", "center_",
    )
    state_widths: ClassVar[Mapping[str, tuple[str, int]]] = {
        "n_features_in": ("class_means_", 1),
    }

    #: Whether the fit also models all rows as one Gaussian (``relative_mahalanobis``).
    background: ClassVar[bool] = False

    def higher_moments_needed(self) -> bool:
        return self.hparams["covariance"] == "ledoit_wolf"

    def _fit(self, features, labels, logits):
        classes, index = encode_labels(labels)
        counts, means = class_means(features, index, int(classes.numel()))
        centerings = [(means, index)]
        overall = (counts.unsqueeze(1).to(torch.float64) * means).sum(0) / features.shape[0]
        if self.background:
            centerings.append((overall.unsqueeze(0), None))
        moments = residual_moments(features, centerings)
        self._set_class_model(classes, means, moments[0], overall, moments[-1])

    def _fit_statistics(self, statistics: ClassStatistics) -> None:
        pooled = statistics.pooled()
        self._set_class_model(statistics.classes, statistics.means, statistics.moments(),
                              pooled.means[0], pooled.moments())

    def _set_class_model(
        self, classes: torch.Tensor, means: torch.Tensor, within: Moments,
        overall: torch.Tensor, background: Moments,
    ) -> None:
        """The fitted state from the class means, the moments about them (``within``) and,
        for the background model, the overall mean and the moments about it."""
        method = self.hparams["covariance"]
        self.classes_ = classes
        self.class_means_ = means
        self.whitening_ = pinv_factor(estimate_covariance(within, method))
        self.center_ = means.mean(dim=0)
        if self.background:
            self.background_mean_ = overall
            self.background_whitening_ = pinv_factor(estimate_covariance(background, method))

    def _class_distance(self, features: torch.Tensor) -> torch.Tensor:
        return _min_class_distance(features, self.whitening_, self.class_means_, self.center_)

    def _score(self, features, logits):
        return -self._class_distance(features)

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(tensors)
        c, d = self.class_means_.shape if self.class_means_.dim() == 2 else (-1, -1)
        check_state_shapes(
            self.name,
            class_means_=(self.class_means_, (None, None)),
            classes_=(self.classes_, (c,)),
            whitening_=(self.whitening_, (d, None)),
            center_=(self.center_, (d,)),
        )


class RelativeMahalanobisDetector(MahalanobisDetector):
    """Relative Mahalanobis distance: class-conditional minus background Mahalanobis distance.

    ``RMD_c(x) = MD_c(x) - MD_0(x)`` and ``score(x) = -min_c RMD_c(x)``, where ``MD_c`` is the
    class-conditional distance of the ``mahalanobis`` detector and ``MD_0`` the distance to a
    single Gaussian fitted to all fit features (global mean and covariance, same estimator).
    Since ``MD_0`` does not depend on ``c``, ``min_c RMD_c = min_c MD_c - MD_0``.
    Ren et al., "A Simple Fix to Mahalanobis Distance for Improving Near-OOD Detection", 2021.
    """

    name = "relative_mahalanobis"
    version = "1"
    state_tensors: ClassVar[tuple[str, ...]] = (
        *MahalanobisDetector.state_tensors, "background_mean_", "background_whitening_",
    )
    background = True

    def _score(self, features, logits):
        background = _min_class_distance(
            features, self.background_whitening_, self.background_mean_.unsqueeze(0),
            self.background_mean_,
        )
        return background - self._class_distance(features)

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(tensors)
        d = self.class_means_.shape[1]
        check_state_shapes(
            self.name,
            background_mean_=(self.background_mean_, (d,)),
            background_whitening_=(self.background_whitening_, (d, None)),
        )
