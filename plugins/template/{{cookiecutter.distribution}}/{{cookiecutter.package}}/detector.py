"""``{{ cookiecutter.detector_name }}``: the diagonal Mahalanobis distance to the ID mean.

``s(x) = -sqrt(mean_j ((x_j - mu_j) / sigma_j)^2)`` with ``sigma_j = sqrt(var_j + eps)``, the
per-feature mean and variance of the fit features; higher = more in-distribution.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from ood_zoo import Detector, Param, Requirements
from ood_zoo.ops import compute_dtype


class {{ cookiecutter.class_name }}(Detector):
    """Negative diagonal Mahalanobis distance to the mean of the fit features.

    Parameters
    ----------
    eps : float, default 1e-6
        Variance floor (> 0), added to every feature's variance.

    Attributes
    ----------
    mean_, scale_ : torch.Tensor
        ``[d]`` the per-feature mean and ``sqrt(var + eps)``, float32 (float64 for float64 fit
        features).
    """

    name = "{{ cookiecutter.detector_name }}"
    version = "1"
    requires = Requirements(features=True)
    params = (
        Param("eps", 1e-6, "variance floor added to every feature's variance", minimum=0.0,
              exclusive_minimum=True),
    )
    state_tensors = ("mean_", "scale_")
    state_widths: ClassVar = {"n_features_in": ("mean_", 0)}

    def _fit(self, features, labels, logits) -> None:
        x = features.to(compute_dtype(features.dtype))
        self.mean_ = x.mean(dim=0)
        self.scale_ = (x.var(dim=0, correction=0) + self.hparams["eps"]).sqrt()

    def _score(self, features, logits) -> torch.Tensor:
        dtype = compute_dtype(features.dtype)
        mean = self.mean_.to(device=features.device, dtype=dtype)
        scale = self.scale_.to(device=features.device, dtype=dtype)
        return -((features.to(dtype) - mean) / scale).square().mean(dim=1).sqrt()
