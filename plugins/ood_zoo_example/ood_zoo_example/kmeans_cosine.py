r"""Cosine similarity to the nearest spherical k-means centroid: a compressed cosine detector.

ood_zoo's ``cosine`` detector compares a query with every row of the in-distribution bank. For a
bank of millions of hidden states that is memory- and compute-heavy. ``kmeans_cosine`` first
summarises the bank by ``k`` unit-norm centroids found with spherical k-means (Dhillon & Modha,
"Concept decompositions for large sparse text data using clustering", Machine Learning 42, 2001),
then scores

.. math::

    s(x) = \max_{c=1..k} \frac{x^\top \mu_c}{\lVert x \rVert},
    \qquad \lVert \mu_c \rVert = 1,

so scoring costs ``O(k d)`` per query instead of ``O(n d)``. Higher = more in-distribution.
"""

from __future__ import annotations

import torch

from ood_zoo.api import Detector, Param, Requirements
from ood_zoo.errors import InputError
from ood_zoo.ops import compute_dtype, normalise_rows

#: Rows handled at a time when assigning the bank to centroids (bounds the ``rows × k`` block).
ASSIGN_CHUNK_ROWS = 65_536


def _nearest(units: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best cosine similarity of each unit row to ``centroids`` and the centroid's index."""
    best, index = [], []
    for start in range(0, units.shape[0], ASSIGN_CHUNK_ROWS):
        values, where = (units[start : start + ASSIGN_CHUNK_ROWS] @ centroids.T).max(dim=1)
        best.append(values)
        index.append(where)
    return torch.cat(best), torch.cat(index)


def _cluster_sums(units: torch.Tensor, assign: torch.Tensor, k: int) -> torch.Tensor:
    sums = torch.zeros(k, units.shape[1], dtype=units.dtype, device=units.device)
    return sums.index_add_(0, assign, units)


def spherical_kmeans(
    units: torch.Tensor, n_clusters: int, n_iter: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spherical k-means on unit rows, seeded with k-means++ on the cosine distance.

    Returns ``(centroids, assign, sums)``: the unit centroids ``[k, d]``, each row's centroid
    index and the per-cluster sums of the unit rows, with ``centroids = sums / ||sums||`` for the
    final assignment. An emptied cluster is re-seeded with the row farthest from its centroid.
    """
    n = units.shape[0]
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    best = units @ units[chosen[0]]
    for _ in range(1, n_clusters):
        distance = (1.0 - best).clamp_min(0.0).cpu().double()
        distance[chosen] = 0.0
        if float(distance.sum()) > 0.0:
            pick = int(torch.multinomial(distance, 1, generator=generator))
        else:  # the remaining rows all duplicate a chosen one: any unchosen row will do
            free = torch.ones(n, dtype=torch.bool)
            free[chosen] = False
            pick = int(free.nonzero()[torch.randint(int(free.sum()), (1,), generator=generator)])
        chosen.append(pick)
        best = torch.maximum(best, units @ units[pick])
    centroids = units[chosen].clone()

    assign = torch.full((n,), -1, dtype=torch.long, device=units.device)
    for _ in range(n_iter):
        similarity, new_assign = _nearest(units, centroids)
        counts = torch.bincount(new_assign, minlength=n_clusters)
        for empty in (counts == 0).nonzero().flatten().tolist():
            # Give the empty cluster the row that its current centroid explains worst.
            donors = counts[new_assign] > 1
            if not bool(donors.any()):
                break
            row = int(torch.where(donors, similarity, torch.inf).argmin())
            counts[new_assign[row]] -= 1
            new_assign[row], similarity[row] = empty, 1.0
            counts[empty] = 1
        converged = bool(torch.equal(new_assign, assign))
        assign = new_assign
        sums = _cluster_sums(units, assign, n_clusters)
        centroids = normalise_rows(sums)
        if converged:
            break
    return centroids, assign, sums


class KMeansCosineDetector(Detector):
    """Cosine similarity to the nearest spherical k-means centroid of the ID bank.

    Parameters
    ----------
    n_clusters : int, default 64
        Number of centroids ``k``; at most the number of fit rows.
    n_iter : int, default 25
        Maximum number of Lloyd iterations (stops early once assignments are stable).
    seed : int, default 0
        Seed of the k-means++ initialisation.

    Attributes
    ----------
    centroids_ : torch.Tensor
        ``[k, d]`` unit-norm centroids, in float32 (float64 when fitted on float64).

    Notes
    -----
    Score ``s(x) = max_c cos(x, mu_c)``, computed in float32 (float64 for float64 input). The
    default threshold is placed on leave-one-out scores of the fit rows: each row is compared
    with its own centroid recomputed without it, so that small clusters do not flatter their
    members. Spherical k-means: Dhillon & Modha (2001).
    """

    name = "kmeans_cosine"
    version = "1"
    requires = Requirements(features=True)
    params = (
        Param("n_clusters", 64, "number of spherical k-means centroids", type=int, minimum=1),
        Param("n_iter", 25, "maximum number of k-means iterations", type=int, minimum=1),
        Param("seed", 0, "seed of the k-means++ initialisation", type=int, minimum=0),
    )
    state_tensors = ("centroids_",)

    def _fit(self, features, labels, logits) -> None:
        k, n = self.hparams["n_clusters"], int(features.shape[0])
        if k > n:
            raise InputError(
                f"{self.name}: n_clusters={k} is larger than the {n} fit rows; "
                f"pass n_clusters <= {n}"
            )
        units = normalise_rows(features.to(compute_dtype(features.dtype)))
        centroids, assign, sums = spherical_kmeans(
            units, k, self.hparams["n_iter"], self.hparams["seed"]
        )
        self.centroids_ = centroids
        self._fit_cache = (units, assign, sums)  # for the leave-one-out threshold, then dropped

    def _score(self, features, logits) -> torch.Tensor:
        dtype = compute_dtype(features.dtype)
        units = normalise_rows(features.to(dtype))
        centroids = self.centroids_.to(device=units.device, dtype=dtype)
        return _nearest(units, centroids)[0]

    def _fit_scores(self, features, logits, rows) -> torch.Tensor:
        cache = self.__dict__.pop("_fit_cache", None)
        if cache is None:
            return super()._fit_scores(features, logits, rows)
        units, assign, sums = cache
        rows = rows.to(units.device)
        units, own = units[rows], assign[rows]
        similarity = units @ self.centroids_.T
        counts = torch.bincount(assign, minlength=self.centroids_.shape[0])[own]
        without_self = normalise_rows(sums[own] - units)
        own_similarity = (units * without_self).sum(dim=1)
        # A row alone in its cluster has no leave-one-out centroid: only the others count.
        own_similarity = torch.where(counts > 1, own_similarity, -torch.inf)
        similarity.scatter_(1, own[:, None], own_similarity[:, None])
        best = similarity.max(dim=1).values
        if bool(torch.isinf(best).any()):  # a single cluster of a single row
            best = torch.where(torch.isinf(best), (units @ self.centroids_.T).max(dim=1).values,
                               best)
        return best
