"""Nearest-neighbour detectors over a bank of in-distribution features: ``cosine`` and ``knn``.

The bank is kept as given to ``fit`` (same dtype, device and storage, a numpy memmap included;
no normalised copy), and scored with the exact streaming :func:`ood_zoo.ops.knn`. Because the
bank is referenced, not copied, changing the array passed to ``fit`` changes the detector.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .. import ops
from ..api import Detector, Param, Requirements
from ..errors import InputError


def _kth_neighbour(
    queries: torch.Tensor, bank: torch.Tensor, k: int, metric: str,
) -> torch.Tensor:
    """The k-th best similarity (cosine) or distance (l2) of each query in the bank."""
    values, _ = ops.knn(queries, bank, k, metric)
    return values[:, k - 1]


def _kth_neighbour_leave_one_out(
    bank: torch.Tensor, rows: torch.Tensor, k: int, metric: str,
) -> torch.Tensor:
    """The k-th best neighbour of bank rows ``rows`` among the *other* bank rows.

    Asks :func:`ops.knn` for ``k + 1`` neighbours and skips the row itself by index; when
    duplicates tie with it and push it out of the ``k + 1``, the k-th non-self entry is used.
    With fewer than ``k`` other rows (``k = N``) it falls back to ``k = N - 1``, which then
    equals the plain score: the row itself only shifts the others down by one rank. A one-row
    bank keeps the self match.
    """
    n = bank.shape[0]
    k_loo = min(k, n - 1)
    queries = bank[rows.to(bank.device)]
    if k_loo == 0:
        return _kth_neighbour(queries, bank, 1, metric)
    values, indices = ops.knn(queries, bank, k_loo + 1, metric)
    not_self = indices != rows.to(indices.device).unsqueeze(1)
    # first column at which k_loo non-self neighbours have been seen
    column = (not_self.cumsum(dim=1) == k_loo).to(torch.int8).argmax(dim=1, keepdim=True)
    return values.gather(1, column).squeeze(1)


class CosineDetector(Detector):
    """Maximum cosine similarity to the in-distribution bank (1-nearest neighbour).

    ``score(z) = max_j cos(z, b_j) = max_j <z, b_j> / (|z| |b_j|)`` over the bank vectors ``b_j``
    seen at fit time (labels are not used). This is the detector Liu et al., "How Good Are LLMs
    at Out-of-Distribution Detection?" (LREC-COLING 2024) found best for LLM embeddings. A zero
    vector has similarity 0 to everything.

    The fit threshold is placed on leave-one-out scores (each bank row's best match among the
    other rows), since a row always matches itself with similarity 1.
    """

    name = "cosine"
    version = "1"
    requires = Requirements(features=True)
    params = ()
    state_tensors: ClassVar[tuple[str, ...]] = ("bank_",)

    def _fit(self, features, labels, logits):
        self.bank_ = features

    def _score(self, features, logits):
        return _kth_neighbour(features, self.bank_, 1, "cosine")

    def _fit_scores(self, features, logits, rows):
        return _kth_neighbour_leave_one_out(self.bank_, rows, 1, "cosine")


class KNNDetector(Detector):
    """Distance to the k-th nearest in-distribution neighbour (deep nearest neighbours).

    ``score(z) = -|u(z) - u(b_(k))|``, the negated Euclidean distance to the k-th nearest bank
    vector ``b_(k)``, where ``u`` L2-normalises (``normalize=True``, as Sun et al. do) or is
    the identity. Normalised distances are computed as ``sqrt(2 - 2 cos)`` from the k-th largest
    cosine similarity, so the bank needs no normalised copy (a zero vector is at distance √2
    from everything). With ``metric="cosine"`` the score is the k-th largest cosine similarity.
    Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022.

    The fit threshold is placed on leave-one-out scores (the row itself is skipped).
    """

    name = "knn"
    version = "1"
    requires = Requirements(features=True)
    params = (
        Param("k", 10, "rank of the neighbour whose distance is the score", type=int, minimum=1),
        Param("metric", "l2", "'l2' (Euclidean distance) or 'cosine' (similarity)", type=str,
              choices=("l2", "cosine")),
        Param("normalize", True, "L2-normalise features before the 'l2' distance", type=bool),
    )
    state_tensors: ClassVar[tuple[str, ...]] = ("bank_",)

    def _fit(self, features, labels, logits):
        k = self.hparams["k"]
        if k > features.shape[0]:
            raise InputError(
                f"{self.name}: k={k} is larger than the bank ({features.shape[0]} rows); "
                f"pass more fit samples or a smaller k"
            )
        self.bank_ = features

    def _op_metric(self) -> str:
        use_cosine = self.hparams["metric"] == "cosine" or self.hparams["normalize"]
        return "cosine" if use_cosine else "l2"

    def _to_score(self, values: torch.Tensor) -> torch.Tensor:
        if self.hparams["metric"] == "cosine":
            return values
        if self.hparams["normalize"]:  # |u - v|² = 2 - 2 cos(u, v) for unit vectors
            return -(2.0 - 2.0 * values).clamp_min(0.0).sqrt()
        return -values

    def _score(self, features, logits):
        values = _kth_neighbour(features, self.bank_, self.hparams["k"], self._op_metric())
        return self._to_score(values)

    def _fit_scores(self, features, logits, rows):
        values = _kth_neighbour_leave_one_out(
            self.bank_, rows, self.hparams["k"], self._op_metric()
        )
        return self._to_score(values)
