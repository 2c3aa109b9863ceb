"""Neural-collapse-inspired detector ``neco``: the share of a standardised feature's norm inside
the fit set's principal subspace, times the maximum logit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from ..api import Detector, Param, Requirements
from ..errors import InputError
from ..ops.magnitude import row_norms
from ._covariance import class_means, residual_moments
from .chunks import check_state_shapes, map_feature_logit_rows
from .residual import auto_dim

SCALES = ("maxlogit", "none")


class NECODetector(Detector):
    """NECO: the relative norm of the standardised feature's projection on the principal subspace.

    With the fit mean ``m`` and standard deviation ``s`` of each feature (population, ``1/N``;
    a constant feature keeps ``s = 1``), ``u = (x - m) / s`` and ``P`` (``[d, D]``) the top-``D``
    principal directions of the standardised fit features (the eigenvectors of their
    correlation matrix), ``score(x) = |Pᵀu| / |u| · max_c z_c`` with ``scale="maxlogit"`` (the
    paper's score for vision transformers, the default), or ``|Pᵀu| / |u|`` with
    ``scale="none"`` (its score for ResNets). ``u = 0`` (the fit mean itself) has ratio 1.
    Ammar et al., "NECO: NEural Collapse Based Out-of-distribution detection", ICLR 2024. The
    paper's code standardises with scikit-learn's ``StandardScaler`` and projects with ``PCA``;
    the PCA's own centring of the standardised fit data is zero up to rounding and is omitted.

    ``dim = 0`` (the default) picks ``D = min(d // 2, (n - 1) // 2)`` (see
    :func:`~ood_zoo.detectors.residual.auto_dim`); otherwise ``1 <= D <= d``, and ``D <= n - 1``
    unless ``D = d`` (beyond the rank of the centred fit data the subspace is undetermined).
    Logits are required even with ``scale="none"``. Fitted in float64 (streaming moments).

    Attributes
    ----------
    mean_, std_ : torch.Tensor
        ``[d]`` float64 standardisation.
    components_ : torch.Tensor
        ``[d, D]`` float64 principal directions of the standardised fit features.
    """

    name = "neco"
    version = "1"
    requires = Requirements(features=True, logits=True)
    params = (
        Param("dim", 0, "principal dimension D (0: min(d // 2, (n - 1) // 2))", type=int,
              minimum=0),
        Param("scale", "maxlogit", "'maxlogit' (multiply by the maximum logit) or 'none'",
              type=str, choices=SCALES),
    )
    state_tensors: ClassVar[tuple[str, ...]] = ("mean_", "std_", "components_")
    state_widths: ClassVar[Mapping[str, tuple[str, int]]] = {"n_features_in": ("mean_", 0)}

    def _fit(self, features, labels, logits):
        n, d = features.shape
        dim = self.hparams["dim"] or auto_dim(n, d)
        if dim == 0:
            raise InputError(
                f"{self.name}: no default principal dimension for {n} fit rows of {d} features "
                f"(it needs d >= 2 and n >= 3); pass dim"
            )
        if dim > d:
            raise InputError(f"{self.name}: dim={dim} exceeds the feature dimension {d}")
        if d > dim > n - 1:
            raise InputError(
                f"{self.name}: dim={dim} needs at least {dim + 1} fit samples, got {n} "
                f"(the principal subspace is undetermined beyond the data's rank)"
            )
        _, mean = class_means(features, None)
        (moments,) = residual_moments(features, [(mean, None)])
        cov = moments.scatter / n
        std = cov.diagonal().clamp_min(0.0).sqrt()
        # a constant column: its float64 variance is rounding only (sklearn's StandardScaler
        # also keeps a unit scale there)
        constant = std <= 4 * n * torch.finfo(torch.float64).eps * mean[0].abs()
        std = torch.where(constant | (std == 0), torch.ones_like(std), std)
        correlation = cov / (std[:, None] * std[None, :])
        _, evecs = torch.linalg.eigh(0.5 * (correlation + correlation.T))  # ascending
        self.mean_ = mean[0]
        self.std_ = std
        self.components_ = evecs[:, d - dim :].flip(1)

    def _score(self, features, logits):
        def neco(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            mean, std, basis = (t.to(device=x.device, dtype=x.dtype)
                                for t in (self.mean_, self.std_, self.components_))
            u = (x - mean) / std
            total = row_norms(u)
            ratio = torch.where(total > 0, row_norms(u @ basis) / total, torch.ones_like(total))
            if self.hparams["scale"] == "maxlogit":
                ratio = ratio * z.max(dim=1).values.to(ratio.dtype)
            return ratio

        return map_feature_logit_rows(features, logits, neco,
                                      width=2 * features.shape[1] + logits.shape[1])

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(tensors)
        d = self.mean_.shape[0] if self.mean_.dim() == 1 else -1
        check_state_shapes(
            self.name, mean_=(self.mean_, (None,)), std_=(self.std_, (d,)),
            components_=(self.components_, (d, None)),
        )
