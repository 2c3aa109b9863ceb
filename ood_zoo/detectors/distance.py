"""Nearest-neighbour detectors over a bank of in-distribution features: ``cosine`` and ``knn``.

The bank is kept as given to ``fit`` (same dtype, device and storage, a numpy memmap included;
no normalised copy) and searched through an exact :class:`ood_zoo.ops.KNNIndex` built at fit:
on anisotropic banks (LLM hidden states) it prunes most rows with a principal-subspace bound,
elsewhere it runs the dense streaming :func:`ood_zoo.ops.knn`; the results are the same. The
index's tensors (about ``N (p + 2)`` fp32 values) are saved with the detector. Because the bank is
referenced, not copied, changing the array passed to ``fit`` changes the detector.

``fit_index`` fits ``cosine`` and ``knn`` on an external exact index instead (any
:class:`ood_zoo.ops.SearchIndex`, such as ``ood_zoo_ray.ShardedIndex`` over shards held by other
processes): the scores and the default threshold are those of ``fit`` on the index's bank.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Self

import torch

from .. import ops
from ..api import Detector, Param, Requirements, threshold_at_tpr, threshold_rows
from ..errors import InputError, PersistenceError

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

    def _check_bank_rows(self, n_rows: int) -> None:
        """Raise InputError if a bank of ``n_rows`` rows is too small for this detector."""

    def _fit_bank(self, features: torch.Tensor) -> None:
        self.bank_ = features
        self._index = ops.KNNIndex(features, self._metric())
        state = self._index.state_dict()  # the index's own tensors, not copies
        for key, name in INDEX_STATE.items():
            setattr(self, name, state[key])

    def fit_index(self, index: ops.SearchIndex) -> Self:
        """Fit on the bank behind an external exact kNN index, kept by reference.

        Equivalent to ``fit(bank)`` with the bank that ``index`` searches: the same scores, and
        the default threshold placed on the leave-one-out scores of the same sampled rows
        (:func:`ood_zoo.api.threshold_rows` of ``index.n_rows``), which ``index.rows`` returns.
        The detector holds no bank, so it cannot be saved; ``fit`` on the bank makes it
        saveable again.

        Raises
        ------
        InputError
            If ``index`` is not an :class:`ood_zoo.ops.SearchIndex`, searches another metric
            than this detector needs, or has too few rows (``knn``: fewer than ``k``).
        TypeError
            If the detector needs more than features to fit (labels, logits, a head).
        """
        if not isinstance(index, ops.SearchIndex):
            raise InputError(f"{self.name}: fit_index needs an exact kNN index (search, rows, "
                             f"n_rows, dim, metric), got {type(index).__name__}")
        needs = self.requires
        if needs.labels or needs.logits or needs.head:
            raise TypeError(f"{self.name}: fit_index fits on features alone, but this detector "
                            f"needs more ({needs}); use fit")
        if index.metric != self._metric():
            raise InputError(f"{self.name}: needs a {self._metric()!r} index with these "
                             f"parameters, got a {index.metric!r} one")
        self._check_bank_rows(index.n_rows)
        self.bank_ = None
        for name in INDEX_STATE.values():
            setattr(self, name, None)
        self._index = index
        self.n_features_in_, self.n_logits_in_ = int(index.dim), None
        self.is_fitted_ = True
        self.calibration_scores_ = self.false_alarm_bound_ = None
        rows = threshold_rows(index.n_rows, self.target_tpr)
        self.threshold_ = threshold_at_tpr(self._fit_scores(None, None, rows), self.target_tpr)
        return self

    def index(self) -> ops.SearchIndex:
        """The fitted index: over ``bank_`` (rebuilt from the saved tensors after a load), or
        the external one given to :meth:`fit_index`."""
        index = getattr(self, "_index", None)
        if self.bank_ is None:
            return index
        if index is None or index.shards[0] is not self.bank_:
            state = {key: getattr(self, name) for key, name in INDEX_STATE.items()}
            index = self._index = ops.KNNIndex.from_state(self.bank_, self._metric(), state)
        return index

    def _check_saveable(self) -> None:
        if self.is_fitted_ and self.bank_ is None:
            raise PersistenceError(
                f"{self.name}: fitted with fit_index on an external {type(self._index).__name__}"
                ", whose bank lives outside the detector; it cannot be saved. Fit on the bank "
                "itself (fit(bank), a memmap works) to save"
            )

    def save(self, path: str | Path) -> Path:
        self._check_saveable()
        return super().save(path)

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_saveable()
        return super().state_dict()

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
        index = self.index()
        k_loo = min(k, index.n_rows - 1)
        queries = index.rows(rows)
        if k_loo == 0:
            return self._kth_neighbour(queries, 1)
        values, indices = index.search(queries, k_loo + 1)
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

    def _check_bank_rows(self, n_rows: int) -> None:
        k = self.hparams["k"]
        if k > n_rows:
            raise InputError(
                f"{self.name}: k={k} is larger than the bank ({n_rows} rows); "
                f"pass more fit samples or a smaller k"
            )

    def _fit(self, features, labels, logits):
        self._check_bank_rows(features.shape[0])
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
