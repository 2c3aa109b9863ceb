"""Robust density estimation ``rde``: an RBF kernel PCA of the fit features, then a robust
(minimum covariance determinant) Mahalanobis distance in the kernel-PCA space.

Fitting runs scikit-learn's ``KernelPCA`` and ``MinCovDet`` in float64; what scoring needs is
kept as tensors (the fit rows, the fit kernel's column means, the scaled eigenvectors, the robust
location and precision), so the detector saves and loads without pickle, and scoring is torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import ClassVar

import torch

from ..api import Detector, Param, Requirements
from ..errors import InputError
from ..ops.arrays import compute_dtype
from .chunks import check_state_shapes, row_chunks, rows_per_chunk, to_numpy64

#: The most kernel-PCA components chosen by default (the RDE paper's 100).
MAX_AUTO_COMPONENTS = 100
#: The most fit rows the kernel PCA is fit on by default: its float64 kernel is ``[n, n]``
#: (32 MB at 2,000 rows), so a larger bank is sampled (seeded) down to this many.
DEFAULT_MAX_FIT_ROWS = 2000


def auto_components(n_samples: int) -> int:
    """The default kernel-PCA dimension: ``min(100, (n - 1) // 2)``.

    The paper's 100, capped at half the rank ``n - 1`` of the centred fit kernel, so that the
    minimum-covariance-determinant subsets (about ``(n + m + 1) / 2`` rows by default) have more
    rows than dimensions and the robust covariance is full rank, even for a bank of 80 rows of
    576 features, where the feature-space covariance is singular.
    """
    return max(0, min(MAX_AUTO_COMPONENTS, (n_samples - 1) // 2))


def rbf_scale_gamma(x64: torch.Tensor) -> float:
    """The default RBF width ``γ = 1 / (d · Var(x))`` over all entries (scikit-learn's
    ``gamma="scale"`` for SVMs; 1 for constant data), invariant to rescaling the features."""
    variance = float(x64.var(correction=0))
    return 1.0 / (x64.shape[1] * variance) if variance > 0 else 1.0


def rbf_kernel(x: torch.Tensor, rows: torch.Tensor, gamma: float) -> torch.Tensor:
    """``exp(-γ |x_i - r_j|²)`` with squared distances ``|x|² + |r|² - 2 <x, r>`` clamped at 0
    (as scikit-learn's ``rbf_kernel``), all in the dtype of ``x``."""
    squared = (x.square().sum(dim=1, keepdim=True) + rows.square().sum(dim=1)
               - 2.0 * (x @ rows.T)).clamp_min(0.0)
    return torch.exp(-gamma * squared)


class RDEDetector(Detector):
    """Robust Mahalanobis distance in the space of an RBF kernel PCA of the fit features.

    ``φ(x) ∈ R^m`` is the projection of ``x`` on the top-``m`` kernel principal components of the
    fit rows ``b_i`` under ``k(x, b) = exp(-γ |x - b|²)``: with the centred fit kernel
    ``K̃ = H K H`` (``H = I - 11ᵀ/n``), its top eigenpairs ``(λ_j, α_j)`` and
    ``k̃(x) = k(x) - k̄ - mean(k(x)) + mean(K)`` (``k̄`` the column means of ``K``),
    ``φ_j(x) = <k̃(x), α_j> / sqrt(λ_j)`` (0 for ``λ_j = 0``). The minimum covariance determinant
    estimator (Rousseeuw 1984, with scikit-learn's reweighting) gives a robust location ``μ`` and
    precision ``P`` of ``φ(b_i)``; ``score(x) = -(φ(x) - μ)ᵀ P (φ(x) - μ)`` (higher = more ID).
    Yoo et al., "Detection of Adversarial Examples in Text Classification: Benchmark and
    Baseline via Robust Density Estimation", Findings of ACL 2022.

    ``n_components = 0`` picks ``m = min(100, (n - 1) // 2)`` (see :func:`auto_components`);
    otherwise ``1 <= m <= n - 1``. ``gamma = 0`` picks ``γ = 1 / (d · Var)`` (see
    :func:`rbf_scale_gamma`); the paper's code and lm-polygraph's ``RDESeq`` use scikit-learn's
    default ``1 / d`` (``m = 100``, ``seed = 42``), which depends on the features' scale.
    lm-polygraph returns the distance (higher = OOD): ``score = -RDESeq``. ``support_fraction =
    0`` is scikit-learn's default. Scores are computed in float64 (the projection divides by
    ``sqrt(λ_j)``) and returned in float32 (float64 for float64 input). The fit kernel is
    ``[n, n]``, so a bank of more than ``max_fit_rows`` rows is fit on a seeded sample of that
    many (``seed``); all of them are then kept for scoring.
    """

    name = "rde"
    version = "1"
    requires = Requirements(features=True)
    params = (
        Param("n_components", 0, "kernel-PCA dimension m (0: min(100, (n - 1) // 2))", type=int,
              minimum=0),
        Param("gamma", 0.0, "RBF width γ (0: 1 / (d · variance of the fit features))",
              type=float, minimum=0.0),
        Param("support_fraction", 0.0,
              "share of rows in the MCD support (0: scikit-learn's (n + m + 1) / 2n)",
              type=float, minimum=0.0, maximum=1.0),
        Param("seed", 42, "random state of the MCD subset search and of the fit-row sample",
              type=int, minimum=0),
        Param("max_fit_rows", DEFAULT_MAX_FIT_ROWS,
              "fit the kernel PCA on at most this many fit rows (a seeded sample)", type=int,
              minimum=3),
    )
    state_tensors: ClassVar[tuple[str, ...]] = (
        "fit_rows_", "kernel_col_means_", "kernel_mean_", "projection_", "location_",
        "precision_", "gamma_",
    )
    state_widths: ClassVar[Mapping[str, tuple[str, int]]] = {"n_features_in": ("fit_rows_", 1)}

    def _fit(self, features, labels, logits):
        from sklearn.covariance import MinCovDet
        from sklearn.decomposition import KernelPCA

        n = features.shape[0]
        if n > self.hparams["max_fit_rows"]:
            generator = torch.Generator().manual_seed(self.hparams["seed"])
            sample = torch.randperm(n, generator=generator)[: self.hparams["max_fit_rows"]]
            features = features[sample.sort().values.to(features.device)]
            n = features.shape[0]
        m = self.hparams["n_components"] or auto_components(n)
        if m == 0:
            raise InputError(f"{self.name}: needs at least 3 fit samples, got {n}")
        if m > n - 1:
            raise InputError(
                f"{self.name}: n_components={m} needs at least {m + 1} fit samples, got {n} "
                f"(the centred kernel has rank at most n - 1)"
            )
        x64 = to_numpy64(features)
        rows = torch.from_numpy(x64)
        gamma = self.hparams["gamma"] or rbf_scale_gamma(rows)
        kpca = KernelPCA(n_components=m, kernel="rbf", gamma=gamma, eigen_solver="dense")
        mcd = MinCovDet(support_fraction=self.hparams["support_fraction"] or None,
                        random_state=self.hparams["seed"])
        try:
            with warnings.catch_warnings():  # rank warnings of degenerate fit sets
                warnings.simplefilter("ignore", RuntimeWarning)
                warnings.simplefilter("ignore", UserWarning)
                mcd.fit(kpca.fit_transform(x64))
        except ValueError as exc:  # e.g. a singular covariance on every MCD subset, or an
            # eigensolver that fails on a kernel with one repeated eigenvalue (every row isolated)
            raise InputError(
                f"{self.name}: kernel PCA + MinCovDet failed on these fit features (γ={gamma:g}): "
                f"{exc}"
            ) from exc
        kernel = rbf_kernel(rows, rows, gamma)
        eigenvalues = torch.from_numpy(kpca.eigenvalues_)
        scale = torch.where(eigenvalues > 0, eigenvalues.clamp_min(1e-300).rsqrt(),
                            torch.zeros_like(eigenvalues))
        self.fit_rows_ = rows
        self.kernel_col_means_ = kernel.mean(dim=0)
        self.kernel_mean_ = self.kernel_col_means_.mean()
        self.projection_ = torch.from_numpy(kpca.eigenvectors_) * scale
        self.location_ = torch.from_numpy(mcd.location_)
        self.precision_ = torch.from_numpy(mcd.precision_)
        self.gamma_ = torch.tensor(gamma, dtype=torch.float64)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """The kernel-PCA features ``φ(x)`` ``[n, m]`` (float64) of validated features."""
        device = features.device
        rows, col_means, projection = (t.to(device) for t in (
            self.fit_rows_, self.kernel_col_means_, self.projection_))
        gamma, kernel_mean = float(self.gamma_), self.kernel_mean_.to(device)
        width = 2 * rows.shape[0] + features.shape[1] + projection.shape[1]
        out = []
        for _, chunk in row_chunks(features, rows_per_chunk(width)):
            kernel = rbf_kernel(chunk.to(torch.float64), rows, gamma)
            centred = kernel - col_means - kernel.mean(dim=1, keepdim=True) + kernel_mean
            out.append(centred @ projection)
        return torch.cat(out)

    def _score(self, features, logits):
        diff = self.embed(features) - self.location_.to(features.device)
        distance = ((diff @ self.precision_.to(features.device)) * diff).sum(dim=1)
        return (-distance).to(compute_dtype(features.dtype))

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(tensors)
        n = self.fit_rows_.shape[0] if self.fit_rows_.dim() == 2 else -1
        m = self.location_.shape[0] if self.location_.dim() == 1 else -1
        check_state_shapes(
            self.name, fit_rows_=(self.fit_rows_, (None, None)),
            kernel_col_means_=(self.kernel_col_means_, (n,)), kernel_mean_=(self.kernel_mean_, ()),
            projection_=(self.projection_, (n, m)), location_=(self.location_, (None,)),
            precision_=(self.precision_, (m, m)), gamma_=(self.gamma_, ()),
        )
