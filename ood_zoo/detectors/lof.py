"""The local outlier factor detector, ``lof`` (scikit-learn ``LocalOutlierFactor``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from ..api import Detector, Param, Requirements
from ..errors import InputError
from ..ops.arrays import compute_dtype
from .chunks import check_state_shapes, row_chunks, rows_per_chunk, to_numpy64


class LOFDetector(Detector):
    """Local outlier factor in novelty mode; the score is the negated LOF.

    With ``N_k(p)`` the ``k`` nearest fit points of ``p`` (excluding ``p`` itself for fit
    points), ``kdist(p)`` the distance to the k-th of them, the reachability distance
    ``reach(x, p) = max(kdist(p), dist(x, p))`` and the local reachability density
    ``lrd(x) = 1 / mean_{p ∈ N_k(x)} reach(x, p)``, the score is
    ``-LOF(x) = -mean_{p ∈ N_k(x)} lrd(p) / lrd(x)`` (about -1 inside clusters, lower outside).
    Breunig et al., "LOF: Identifying Density-Based Local Outliers", SIGMOD 2000; computed by
    scikit-learn's ``LocalOutlierFactor(novelty=True, algorithm="brute")`` in float64.

    The fit threshold is placed on the fit points' own LOF (scikit-learn's
    ``negative_outlier_factor_``), which leaves each point out of its neighbourhood. The state
    is the bank itself: loading refits the scikit-learn model from it (no pickle).
    """

    name = "lof"
    version = "1"
    requires = Requirements(features=True)
    params = (
        Param("n_neighbors", 20, "neighbourhood size k", type=int, minimum=1),
        Param("metric", "euclidean", "'euclidean' or 'cosine' (1 - cosine similarity)",
              type=str, choices=("euclidean", "cosine")),
    )
    state_tensors: ClassVar[tuple[str, ...]] = ("bank_",)
    state_widths: ClassVar[Mapping[str, tuple[str, int]]] = {"n_features_in": ("bank_", 1)}

    def _fit(self, features, labels, logits):
        k = self.hparams["n_neighbors"]
        if k >= features.shape[0]:
            raise InputError(
                f"{self.name}: n_neighbors={k} needs more than {k} fit samples, got "
                f"{features.shape[0]}; pass more samples or a smaller n_neighbors"
            )
        self.bank_ = features
        self._model = self._build(features)

    def _build(self, bank: torch.Tensor) -> Any:
        from sklearn.neighbors import LocalOutlierFactor

        model = LocalOutlierFactor(
            n_neighbors=self.hparams["n_neighbors"], metric=self.hparams["metric"],
            algorithm="brute", novelty=True,
        )
        return model.fit(to_numpy64(bank))

    def _score(self, features, logits):
        rows = rows_per_chunk(features.shape[1])
        scores = np.concatenate([
            self._model.score_samples(to_numpy64(chunk))
            for _, chunk in row_chunks(features, rows)
        ])
        return torch.from_numpy(scores).to(
            device=features.device, dtype=compute_dtype(features.dtype)
        )

    def _fit_scores(self, features, logits, rows):
        scores = self._model.negative_outlier_factor_[rows.cpu().numpy()]
        return torch.from_numpy(scores).to(compute_dtype(features.dtype))

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(tensors)
        check_state_shapes(self.name, bank_=(self.bank_, (None, None)))
        if self.hparams["n_neighbors"] >= self.bank_.shape[0]:
            raise ValueError(
                f"{self.name}: saved bank has {self.bank_.shape[0]} rows, too few for "
                f"n_neighbors={self.hparams['n_neighbors']}"
            )
        self._model = self._build(self.bank_)
