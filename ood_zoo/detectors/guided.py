"""Detectors on features guided by the classifier's logits: ``nnguide`` and ``she``.

Both read hidden-state features and class (or label-token) logits at fit and at score time.
``nnguide`` searches its confidence-scaled bank with the exact :class:`ood_zoo.ops.KNNIndex`;
``she`` keeps one stored pattern per logit column. Queries are computed in float32 (float64
for float64 features); the fitted state is built in float64.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from ..api import Detector, Param, Requirements
from ..errors import InputError
from ..ops.arrays import compute_dtype
from ..ops.magnitude import normalise_rows
from ._covariance import class_means
from .chunks import (
    check_scores_representable,
    check_state_shapes,
    map_feature_logit_rows,
    map_rows,
    row_chunks,
    rows_per_chunk,
)
from .distance import BankDetector


def _energy(logits: torch.Tensor) -> torch.Tensor:
    """``logsumexp_c z_c`` per row, in the compute dtype of ``logits``, a chunk at a time."""
    return map_rows(logits, lambda z: torch.logsumexp(z, dim=1))


class NNGuideDetector(BankDetector):
    """Nearest-neighbour guidance: the energy scaled by the similarity to a confidence-scaled bank.

    With ``E(x) = logsumexp_c z_c(x)`` (the negative energy of the logits) and
    ``x̂ = x / max(|x|, 1e-12)``, the bank holds ``v_j = E(b_j) b̂_j`` for the fit rows ``b_j``;
    then ``G(x) = mean_{top-k j} <x̂, v_j>`` (the ``k`` largest inner products) and
    ``score(x) = E(x) · G(x)`` (higher = more ID).
    Park et al., "Nearest Neighbor Guidance for Out-of-Distribution Detection", ICCV 2023.

    The inner-product search runs as an exact cosine search through :class:`ood_zoo.ops.KNNIndex`
    on a lifted bank: with ``M = max_j |E(b_j)|``, the stored row ``j`` is the unit vector
    ``[v_j / M, sqrt(1 - |v_j / M|²)]`` and a query is ``[x, 0]``, so the cosine is
    ``<x̂, v_j> / M`` and the ranking is that of the inner products (``M = 0`` stores
    ``[0, 1]``, every ``G = 0``). ``k`` is capped at the bank size. pytorch-ood's ``NNGuide``
    returns ``-E(x) G(x)``: ``score = -NNGuide_pood``. The fit threshold is placed on
    leave-one-out scores (each fit row guided by the other rows). A score beyond the output
    dtype (inputs far outside the safe range) raises :class:`InputError`.

    Attributes
    ----------
    bank_ : torch.Tensor
        ``[N, d + 1]`` the lifted bank (float32, float64 for float64 fit features).
    scale_ : torch.Tensor
        The float64 scalar ``M``.
    """

    name = "nnguide"
    version = "1"
    requires = Requirements(features=True, logits=True)
    params = (
        Param("k", 10, "neighbours whose inner products are averaged (capped at the bank size)",
              type=int, minimum=1),
    )
    state_tensors: ClassVar[tuple[str, ...]] = (*BankDetector.state_tensors, "scale_")
    state_widths: ClassVar[Mapping[str, tuple[str, int]]] = {}  # bank_ is one column wider
    checks_finite_fit_features = False  # the index sees the lifted bank, not the features

    def _metric(self) -> str:
        return "cosine"

    def _fit(self, features, labels, logits):
        energy = torch.cat([torch.logsumexp(chunk.to(torch.float64), dim=1)
                            for _, chunk in row_chunks(logits, rows_per_chunk(logits.shape[1]))])
        scale = energy.abs().max()
        weight = energy / scale if bool(scale > 0) else torch.zeros_like(energy)
        n, d = features.shape
        bank = torch.empty(n, d + 1, dtype=compute_dtype(features.dtype), device=features.device)
        for start, chunk in row_chunks(features, rows_per_chunk(d)):
            stop = start + chunk.shape[0]
            scaled = normalise_rows(chunk.to(torch.float64)) * weight[start:stop, None]
            lift = (1.0 - scaled.square().sum(dim=1)).clamp_min(0.0).sqrt()
            bank[start:stop] = torch.cat([scaled, lift[:, None]], dim=1).to(bank.dtype)
        self.scale_ = scale
        self._fit_bank(bank)

    def _lift(self, x: torch.Tensor) -> torch.Tensor:
        """Queries ``[x, 0]`` (their cosine with a lifted bank row is ``<x̂, v_j> / M``)."""
        return torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1)

    def _guided(
        self, features: torch.Tensor, logits: torch.Tensor, mean_cosine: torch.Tensor,
    ) -> torch.Tensor:
        """``E(x) · M · mean_cosine`` (``M · mean_cosine = G(x)``), formed in float64 and
        returned in the compute dtype of ``features``."""
        guidance = mean_cosine.to(torch.float64) * self.scale_.to(mean_cosine.device)
        scores = _energy(logits).to(torch.float64) * guidance
        return check_scores_representable(self.name, scores, compute_dtype(features.dtype))

    def _score(self, features, logits):
        k = min(self.hparams["k"], self.bank_.shape[0])
        mean_cos = map_rows(features, lambda x: self.index().search(self._lift(x), k)[0]
                            .mean(dim=1), width=features.shape[1] + k)
        return self._guided(features, logits, mean_cos)

    def _fit_scores(self, features, logits, rows):
        """Each fit row guided by the other rows: ``k + 1`` neighbours, the row itself skipped
        by index (or the last one, when it is not among them); a one-row bank keeps itself."""
        n = self.bank_.shape[0]
        k = min(self.hparams["k"], n - 1)
        queries = features[rows.to(features.device)]
        if k == 0:
            return self._score(queries, logits[rows.to(logits.device)])
        values, indices = self.index().search(self._lift(queries.to(compute_dtype(queries.dtype))),
                                              k + 1)
        not_self = indices != rows.to(indices.device).unsqueeze(1)
        keep = not_self & (not_self.cumsum(dim=1) <= k)
        mean_cos = (values * keep).sum(dim=1) / k
        return self._guided(queries, logits[rows.to(logits.device)], mean_cos)

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(tensors)
        check_state_shapes(self.name, scale_=(self.scale_, ()))


class SHEDetector(Detector):
    """Simplified Hopfield energy: the inner product with the stored pattern of the predicted class.

    ``fit`` stores, for each logit column ``c``, the pattern ``S_c``: the mean fit feature of the
    rows labelled ``c`` that the logits also predict as ``c`` (``argmax_j z_j = c``). A class
    with no correctly predicted fit row falls back to the mean of all its labelled rows; a
    column no fit row is labelled with has ``S_c = 0`` (nothing memorised: score 0). Then
    ``score(x) = <x, S_ŷ>`` with ``ŷ = argmax_c z_c(x)`` (the first maximum at ties).
    Zhang et al., "Out-of-Distribution Detection based on In-Distribution Data Patterns
    Memorization with Modern Hopfield Energy", ICLR 2023.

    Labels are logit column indices ``0..C-1``. pytorch-ood's ``SHE`` returns ``-<x, S_ŷ>`` (and
    refuses a class without a correct prediction): ``score = -SHE_pood``. oodeel's ``SHE``
    scores ``max_c <x, S_c> / d`` over all classes instead of the predicted one (a different
    score, not compared). A score beyond the output dtype raises :class:`InputError`.

    Attributes
    ----------
    patterns_ : torch.Tensor
        ``[C, d]`` float64 stored patterns.
    """

    name = "she"
    version = "1"
    requires = Requirements(features=True, labels=True, logits=True)
    params = ()
    state_tensors: ClassVar[tuple[str, ...]] = ("patterns_",)
    state_widths: ClassVar[Mapping[str, tuple[str, int]]] = {
        "n_features_in": ("patterns_", 1), "n_logits_in": ("patterns_", 0),
    }

    def _fit(self, features, labels, logits):
        n_classes = logits.shape[1]
        if bool((labels < 0).any() | (labels >= n_classes).any()):
            raise InputError(
                f"{self.name}: labels must be logit column indices 0..{n_classes - 1}, got "
                f"values in [{int(labels.min())}, {int(labels.max())}]"
            )
        predicted = map_rows(logits, lambda z: z.argmax(dim=1))
        correct = torch.where(predicted == labels, labels, n_classes)  # n_classes: discarded
        counts, means = class_means(features, correct, n_classes + 1)
        _, labelled_means = class_means(features, labels, n_classes)  # 0 for unlabelled columns
        fallback = (counts[:n_classes] == 0).unsqueeze(1)
        self.patterns_ = torch.where(fallback, labelled_means, means[:n_classes])

    def _score(self, features, logits):
        def energy(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            patterns = self.patterns_.to(device=x.device, dtype=x.dtype)
            return (x * patterns[z.argmax(dim=1)]).sum(dim=1)

        scores = map_feature_logit_rows(features, logits, energy,
                                        width=2 * features.shape[1] + logits.shape[1])
        return check_scores_representable(self.name, scores, scores.dtype)

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(tensors)
        check_state_shapes(self.name, patterns_=(self.patterns_, (None, None)))
