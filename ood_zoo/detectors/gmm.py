"""A Gaussian-mixture density detector, ``gmm``.

Fitted with scikit-learn's ``GaussianMixture`` (EM, in float64); scored in torch from the fitted
weights, means and Cholesky factors of the precisions, so scoring runs on the queries' device
(CUDA included) and after loading without scikit-learn's object.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch

from ..api import Detector, Param, Requirements
from ..errors import InputError
from ..ops.arrays import compute_dtype
from .chunks import check_state_shapes, map_rows, to_numpy64

COVARIANCE_TYPES = ("full", "diag", "tied", "spherical")


class GMMDetector(Detector):
    """Log-likelihood under a Gaussian mixture fitted to the in-distribution features.

    ``score(x) = log Σ_k π_k N(x; μ_k, Σ_k)``, with ``log N(x; μ, Σ) = -d/2 log 2π
    + log det L - |Lᵀ(x - μ)|² / 2`` for the Cholesky factor ``L`` of ``Σ⁻¹ = L Lᵀ``
    (scikit-learn's ``precisions_cholesky_``). Constants and the log-sum-exp are float64; the
    quadratic form is in the queries' compute dtype. As OpenOOD's ``gmm`` postprocessor, applied
    to LLM features; the mixture is fitted by EM (Dempster, Laird & Rubin 1977) with
    ``sklearn.mixture.GaussianMixture``.
    """

    name = "gmm"
    version = "1"
    requires = Requirements(features=True)
    params = (
        Param("n_components", 8, "number of mixture components", type=int, minimum=1),
        Param("covariance_type", "diag", "covariance structure per component", type=str,
              choices=COVARIANCE_TYPES),
        Param("reg_covar", 1e-6, "added to covariance diagonals for stability", type=float,
              minimum=0.0),
        Param("seed", 0, "random seed of the k-means initialisation", type=int, minimum=0),
    )
    state_tensors: ClassVar[tuple[str, ...]] = ("weights_", "means_", "precisions_cholesky_")
    state_widths: ClassVar[Mapping[str, tuple[str, int]]] = {"n_features_in": ("means_", 1)}

    def _fit(self, features, labels, logits):
        from sklearn.mixture import GaussianMixture

        k = self.hparams["n_components"]
        if features.shape[0] < 2:
            raise InputError(f"{self.name}: needs at least 2 fit samples, got {features.shape[0]}")
        if k > features.shape[0]:
            raise InputError(
                f"{self.name}: n_components={k} is larger than the number of fit samples "
                f"({features.shape[0]})"
            )
        x = to_numpy64(features)
        model = GaussianMixture(
            n_components=k, covariance_type=self.hparams["covariance_type"],
            reg_covar=self.hparams["reg_covar"], random_state=self.hparams["seed"],
        )
        try:
            model.fit(x)
        except ValueError as exc:  # sklearn's EM: e.g. an ill-defined (singular) covariance
            raise InputError(
                f"{self.name}: GaussianMixture could not fit these features ({exc}); "
                f"reg_covar={self.hparams['reg_covar']:g} is absolute and the features reach "
                f"|x| = {float(abs(x).max()):.3g}: standardise them, raise reg_covar or use "
                f"fewer components"
            ) from exc
        self.weights_ = torch.from_numpy(model.weights_).to(torch.float64)
        self.means_ = torch.from_numpy(model.means_).to(torch.float64)
        self.precisions_cholesky_ = torch.from_numpy(model.precisions_cholesky_).to(
            torch.float64
        )

    def _log_det(self) -> torch.Tensor:
        """``log det L_k`` per component, float64 ``[K]``."""
        chol, kind = self.precisions_cholesky_.to(torch.float64), self.hparams["covariance_type"]
        n_components, d = self.means_.shape
        if kind == "full":
            return torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(dim=-1)
        if kind == "tied":
            return torch.diagonal(chol).log().sum().expand(n_components)
        if kind == "diag":
            return chol.log().sum(dim=1)
        return d * chol.log()

    def _score(self, features, logits):
        kind = self.hparams["covariance_type"]
        device, dtype = features.device, compute_dtype(features.dtype)
        means = self.means_.to(device=device, dtype=dtype)
        chol = self.precisions_cholesky_.to(device=device, dtype=dtype)
        n_components, d = means.shape
        constant = (
            self.weights_.to(device=device, dtype=torch.float64).log()
            + self._log_det().to(device)
            - 0.5 * d * math.log(2 * math.pi)
        )

        def quadratic(x: torch.Tensor) -> torch.Tensor:  # |Lᵀ(x - μ_k)|², [q, K]
            if kind in ("full", "tied"):
                factors = chol if kind == "full" else chol.expand(n_components, d, d)
                return torch.stack(
                    [((x - means[j]) @ factors[j]).square().sum(dim=1)
                     for j in range(n_components)], dim=1,
                )
            diff = x.unsqueeze(1) - means  # [q, K, d]
            if kind == "diag":
                return (diff * chol).square().sum(dim=-1)
            return diff.square().sum(dim=-1) * chol.square()

        def log_likelihood(x: torch.Tensor) -> torch.Tensor:
            log_joint = constant - 0.5 * quadratic(x).to(torch.float64)
            return torch.logsumexp(log_joint, dim=1).to(dtype)

        width = d * (n_components if kind in ("diag", "spherical") else 2)
        return map_rows(features, log_likelihood, width=width)

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(tensors)
        kind = self.hparams["covariance_type"]
        k, d = self.means_.shape if self.means_.dim() == 2 else (-1, -1)
        chol_shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[kind]
        check_state_shapes(
            self.name,
            means_=(self.means_, (None, None)),
            weights_=(self.weights_, (k,)),
            precisions_cholesky_=(self.precisions_cholesky_, chol_shape),
        )
