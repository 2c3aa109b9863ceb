"""Nearest-neighbour detectors over a bank of in-distribution features: ``cosine`` and ``knn``.

The bank is kept as given to ``fit`` (same dtype, device and storage, a numpy memmap included;
no normalised copy) and searched through an exact :class:`ood_zoo.ops.KNNIndex` built at fit:
on anisotropic banks (LLM hidden states) it prunes most rows with a principal-subspace bound,
elsewhere it runs the dense streaming :func:`ood_zoo.ops.knn`; the results are the same. The
index's tensors (about ``N (p + 2)`` fp32 values) are saved with the detector. Because the bank is
referenced, not copied, changing the array passed to ``fit`` changes the detector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from .. import ops
from ..api import Detector, Param, Requirements
from ..errors import InputError

#: State tensor names of the index, in ``KNNIndex.state_dict`` order.
INDEX_STATE = {"basis": "index_basis_", "proj": "index_proj_", "res": "index_res_",
               "term": "index_term_", "residual_energy": "index_energy_"}


class BankDetector(Detector):
    """Base of the detectors that search a bank of fit features with an exact kNN index."""

    state_tensors: ClassVar[tuple[str, ...]] = ("bank_", *INDEX_STATE.values())
    state_widths: ClassVar[Mapping[str, tuple[str, int]]] = {"n_features_in": ("bank_", 1)}
    # the index's projection pass, or the leave-one-out search that places the threshold,
    # reads every bank value and raises InputError on NaN/Inf
    checks_finite_fit_features = True

    def _metric(self) -> str:
        raise NotImplementedError

    def _fit_bank(self, features: torch.Tensor) -> None:
        self.bank_ = features
        self._index = ops.KNNIndex(features, self._metric())
        state = self._index.state_dict()  # the index's own tensors, not copies
        for key, name in INDEX_STATE.items():
            setattr(self, name, state[key])

    def index(self) -> ops.KNNIndex:
        """The fitted index over ``bank_`` (rebuilt from the saved tensors after a load)."""
        index = getattr(self, "_index", None)
        if index is None or index.shards[0] is not self.bank_:
            state = {key: getattr(self, name) for key, name in INDEX_STATE.items()}
            index = self._index = ops.KNNIndex.from_state(self.bank_, self._metric(), state)
        return index

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(tensors)
        self._index = None
        self.index()  # refuses tensors that do not fit the bank

    def _kth_neighbour(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """The k-th best similarity (cosine) or distance (l2) of each query in the bank."""
        values, _ = self.index().search(queries, k)
        return values[:, k - 1]

    def _kth_neighbour_leave_one_out(self, rows: torch.Tensor, k: int) -> torch.Tensor:
        """The k-th best neighbour of bank rows ``rows`` among the *other* bank rows.

        Asks for ``k + 1`` neighbours and skips the row itself by index; when duplicates tie
        with it and push it out of the ``k + 1``, the k-th non-self entry is used. With fewer
        than ``k`` other rows (``k = N``) it falls back to ``k = N - 1``, which then equals the
        plain score: the row itself only shifts the others down by one rank. A one-row bank
        keeps the self match.
        """
        bank = self.bank_
        k_loo = min(k, bank.shape[0] - 1)
        queries = bank[rows.to(bank.device)]
        if k_loo == 0:
            return self._kth_neighbour(queries, 1)
        values, indices = self.index().search(queries, k_loo + 1)
        not_self = indices != rows.to(indices.device).unsqueeze(1)
        # first column at which k_loo non-self neighbours have been seen
        column = (not_self.cumsum(dim=1) == k_loo).to(torch.int8).argmax(dim=1, keepdim=True)
        return values.gather(1, column).squeeze(1)


class CosineDetector(BankDetector):
    """Maximum cosine similarity to the in-distribution bank (1-nearest neighbour).

    ``score(z) = max_j cos(z, b_j) = max_j <z, b_j> / (|z| |b_j|)`` over the bank vectors ``b_j``
    seen at fit time (labels are not used). This is the detector Liu et al., "How Good Are LLMs
    at Out-of-Distribution Detection?" (LREC-COLING 2024) found best for LLM embeddings. A zero
    vector has similarity 0 to everything.

    The fit threshold is placed on leave-one-out scores (each bank row's best match among the
    other rows), since a row always matches itself with similarity 1.
    """

    name = "cosine"
    version = "2"
    requires = Requirements(features=True)
    params = ()

    def _metric(self) -> str:
        return "cosine"

    def _fit(self, features, labels, logits):
        self._fit_bank(features)

    def _score(self, features, logits):
        return self._kth_neighbour(features, 1)

    def _fit_scores(self, features, logits, rows):
        return self._kth_neighbour_leave_one_out(rows, 1)


class KNNDetector(BankDetector):
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
    version = "2"
    requires = Requirements(features=True)
    params = (
        Param("k", 10, "rank of the neighbour whose distance is the score", type=int, minimum=1),
        Param("metric", "l2", "'l2' (Euclidean distance) or 'cosine' (similarity)", type=str,
              choices=("l2", "cosine")),
        Param("normalize", True, "L2-normalise features before the 'l2' distance", type=bool),
    )

    def _fit(self, features, labels, logits):
        k = self.hparams["k"]
        if k > features.shape[0]:
            raise InputError(
                f"{self.name}: k={k} is larger than the bank ({features.shape[0]} rows); "
                f"pass more fit samples or a smaller k"
            )
        self._fit_bank(features)

    def _metric(self) -> str:
        use_cosine = self.hparams["metric"] == "cosine" or self.hparams["normalize"]
        return "cosine" if use_cosine else "l2"

    def _to_score(self, values: torch.Tensor) -> torch.Tensor:
        if self.hparams["metric"] == "cosine":
            return values
        if self.hparams["normalize"]:  # |u - v|² = 2 - 2 cos(u, v) for unit vectors
            return -(2.0 - 2.0 * values).clamp_min(0.0).sqrt()
        return -values

    def _score(self, features, logits):
        return self._to_score(self._kth_neighbour(features, self.hparams["k"]))

    def _fit_scores(self, features, logits, rows):
        return self._to_score(self._kth_neighbour_leave_one_out(rows, self.hparams["k"]))
