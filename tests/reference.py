"""Independent float64 numpy reference implementations of the built-in detectors.

Written from the formulas, by brute force over full matrices, sharing no code with
``ood_zoo.detectors``: pairwise matrices by broadcasting, pseudo-inverses by SVD
(``numpy.linalg.pinv``), principal subspaces by SVD of the data, LOF from its definition.
scikit-learn appears only as an oracle (Ledoit–Wolf covariance, Gaussian-mixture likelihood,
LOF). Every function returns scores with **higher = more in-distribution**.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

EPS = np.finfo(np.float64).eps


# ----------------------------------------------------------------------------- neighbours
#: ood_zoo's cosine divides by ``max(|x|, NORM_EPS)`` (``ops.NORM_EPS``, the convention
#: of ``torch.nn.functional.normalize``): a zero vector has similarity 0 to everything.
NORM_EPS = 1e-12


def cosine_matrix(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """``<q_i, b_j> / (max(|q_i|, eps) max(|b_j|, eps))`` with ``eps = NORM_EPS``."""
    qn = np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), NORM_EPS)
    bn = np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), NORM_EPS)
    return (queries / qn) @ (bank / bn).T


def euclidean_matrix(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """``|q_i - b_j|`` by explicit differences (no expanded-square cancellation)."""
    return np.sqrt(((queries[:, None, :] - bank[None, :, :]) ** 2).sum(axis=-1))


def _knn_matrix(queries, bank, metric, normalize):
    """Per-query matrix of 'goodness' (higher = closer) and its score transform."""
    if metric == "cosine":
        return cosine_matrix(queries, bank)
    if normalize:  # |u - v| of unit vectors, sqrt(2 - 2 cos): a zero row is at sqrt(2)
        return -np.sqrt(np.maximum(2.0 - 2.0 * cosine_matrix(queries, bank), 0.0))
    return -euclidean_matrix(queries, bank)


def _kth_largest(matrix: np.ndarray, k: int) -> np.ndarray:
    return -np.sort(-matrix, axis=1)[:, k - 1]


def knn_scores(bank, queries, k=1, metric="cosine", normalize=True) -> np.ndarray:
    """k-th largest cosine similarity (``metric="cosine"``) or minus the k-th smallest L2
    distance (of L2-normalised vectors when ``normalize``)."""
    return _kth_largest(_knn_matrix(queries, bank, metric, normalize), k)


def knn_leave_one_out(bank, k=1, metric="cosine", normalize=True) -> np.ndarray:
    """Scores of every bank row against the other rows (``k`` capped at ``N - 1``)."""
    n = bank.shape[0]
    if n == 1:
        return knn_scores(bank, bank, 1, metric, normalize)
    goodness = _knn_matrix(bank, bank, metric, normalize)
    others = goodness[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    return _kth_largest(others, min(k, n - 1))


# ----------------------------------------------------------------------------- thresholds
def threshold_at_tpr(id_scores: np.ndarray, tpr: float) -> float:
    """Largest ``t`` with ``mean(id_scores >= t) >= tpr``."""
    ordered = np.sort(np.asarray(id_scores, dtype=np.float64))[::-1]
    need = max(1, math.ceil(tpr * ordered.size - 1e-9))
    return float(ordered[need - 1])


# ----------------------------------------------------------------------------- Gaussians
def pinv(cov: np.ndarray) -> np.ndarray:
    """SVD pseudo-inverse with the ``scipy.linalg.pinvh`` cutoff ``d · eps · max σ``."""
    return np.linalg.pinv(cov, rcond=cov.shape[0] * EPS)


def pinv_well_posed(cov: np.ndarray, *, null_margin=0.25, min_kept=1e-7) -> bool:
    """Whether ``pinv(cov)`` is numerically determined: no singular value near the cutoff
    (dropped ones below ``null_margin`` × cutoff) and the kept ones well conditioned."""
    s = np.linalg.svd(cov, compute_uv=False)
    if s[0] == 0:
        return True
    cutoff = cov.shape[0] * EPS * s[0]
    kept = s > cutoff
    return bool(np.all(s[~kept] <= null_margin * cutoff) and np.all(s[kept] >= min_kept * s[0]))


def covariance(centred: np.ndarray, method: str) -> np.ndarray:
    """Covariance of already-centred rows: maximum likelihood, or sklearn's Ledoit–Wolf."""
    if method == "empirical":
        return centred.T @ centred / centred.shape[0]
    from sklearn.covariance import LedoitWolf

    with warnings.catch_warnings():  # "Only one sample available" for n = 1
        warnings.simplefilter("ignore", UserWarning)
        return LedoitWolf(assume_centered=True).fit(centred).covariance_


def class_model(x: np.ndarray, y: np.ndarray, method: str):
    """``(class means [C, d], class-centred covariance [d, d])`` with classes in sorted order."""
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    return means, covariance(centred, method)


def squared_mahalanobis(queries, means, precision) -> np.ndarray:
    """``(q - μ_c)ᵀ P (q - μ_c)``, ``[Q, C]``, by explicit differences."""
    diff = queries[:, None, :] - means[None, :, :]
    return np.einsum("qcd,de,qce->qc", diff, precision, diff)


def mahalanobis_scores(x, y, queries, method="empirical") -> np.ndarray:
    """``-min_c (q - μ_c)ᵀ Σ⁺ (q - μ_c)``, Σ the shared class-centred covariance."""
    means, cov = class_model(x, y, method)
    return -squared_mahalanobis(queries, means, pinv(cov)).min(axis=1)


def relative_mahalanobis_scores(x, y, queries, method="empirical") -> np.ndarray:
    """``-min_c [MD_c(q) - MD_0(q)]`` with MD_0 the global-Gaussian (background) distance."""
    means, cov = class_model(x, y, method)
    class_md = squared_mahalanobis(queries, means, pinv(cov))
    mean0 = x.mean(axis=0, keepdims=True)
    cov0 = covariance(x - mean0, method)
    background_md = squared_mahalanobis(queries, mean0, pinv(cov0))[:, 0]
    return -(class_md - background_md[:, None]).min(axis=1)


def background_covariance(x: np.ndarray, method: str) -> np.ndarray:
    return covariance(x - x.mean(axis=0, keepdims=True), method)


# ----------------------------------------------------------------------------- logits
def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]


def msp_scores(logits, temperature=1.0) -> np.ndarray:
    z = logits / temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).max(axis=1)


def maxlogit_scores(logits) -> np.ndarray:
    return logits.max(axis=1)


def energy_scores(logits, temperature=1.0) -> np.ndarray:
    return temperature * _logsumexp(logits / temperature)


# ----------------------------------------------------------------------------- LOF
def _lof_distances(a, b, metric):
    return euclidean_matrix(a, b) if metric == "euclidean" else 1.0 - cosine_matrix(a, b)


def lof_scores(bank, queries, n_neighbors=20, metric="euclidean"):
    """Negated local outlier factor from its definition (Breunig et al. 2000).

    Fit points' neighbourhoods exclude the point itself; ``kdist(p)`` is the distance to the
    k-th of them; ``reach(x, p) = max(kdist(p), d(x, p))``;
    ``lrd(x) = 1 / (mean_{p ∈ N_k(x)} reach(x, p) + 1e-10)`` (scikit-learn's guard);
    ``score(x) = -mean_{p ∈ N_k(x)} lrd(p) / lrd(x)``.

    Returns ``(query scores, fit-point scores)``; the latter leave each point out.
    """
    k = n_neighbors
    n = bank.shape[0]
    dist_bb = _lof_distances(bank, bank, metric)
    dist_bb[np.arange(n), np.arange(n)] = np.inf
    nbrs_b = np.argsort(dist_bb, axis=1, kind="stable")[:, :k]
    kdist = np.take_along_axis(dist_bb, nbrs_b, axis=1)[:, k - 1]

    def lrd(dist_to_nbrs, nbrs):
        reach = np.maximum(kdist[nbrs], dist_to_nbrs)
        return 1.0 / (reach.mean(axis=1) + 1e-10)

    lrd_bank = lrd(np.take_along_axis(dist_bb, nbrs_b, axis=1), nbrs_b)
    fit_scores = -(lrd_bank[nbrs_b] / lrd_bank[:, None]).mean(axis=1)

    dist_qb = _lof_distances(queries, bank, metric)
    nbrs_q = np.argsort(dist_qb, axis=1, kind="stable")[:, :k]
    lrd_q = lrd(np.take_along_axis(dist_qb, nbrs_q, axis=1), nbrs_q)
    return -(lrd_bank[nbrs_q] / lrd_q[:, None]).mean(axis=1), fit_scores


# ----------------------------------------------------------------------------- GMM
def gmm_log_likelihood(queries, weights, means, covariances, covariance_type) -> np.ndarray:
    """``log Σ_k π_k N(q; μ_k, Σ_k)`` from the covariances (slogdet + solve, no Cholesky)."""
    n_components, d = means.shape
    if covariance_type == "full":
        covs = covariances
    elif covariance_type == "tied":
        covs = np.broadcast_to(covariances, (n_components, d, d))
    elif covariance_type == "diag":
        covs = np.stack([np.diag(c) for c in covariances])
    else:
        covs = np.stack([v * np.eye(d) for v in covariances])
    log_terms = []
    for k in range(n_components):
        diff = queries - means[k]
        _, logdet = np.linalg.slogdet(covs[k])
        quad = (diff * np.linalg.solve(covs[k], diff.T).T).sum(axis=1)
        log_terms.append(np.log(weights[k]) - 0.5 * (d * np.log(2 * np.pi) + logdet + quad))
    return _logsumexp(np.stack(log_terms, axis=1))


def sklearn_gmm(x, n_components, covariance_type, reg_covar, seed):
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(
        n_components=n_components, covariance_type=covariance_type, reg_covar=reg_covar,
        random_state=seed,
    ).fit(x)


# ----------------------------------------------------------------------------- residual
def residual_scores(x, queries, dim) -> tuple[np.ndarray, np.ndarray]:
    """``-|(q - m) - P(q - m)|`` with ``P`` the projector on the top-``dim`` right singular
    vectors of the centred data. Returns ``(scores, singular values)``."""
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=True)
    top = vt[:dim]
    diff = queries - mean
    resid = diff - (diff @ top.T) @ top
    s_full = np.zeros(x.shape[1])
    s_full[: s.size] = s
    return -np.linalg.norm(resid, axis=1), s_full


# ----------------------------------------------------------------------------- classifier head
def head_logits(x, weight, bias) -> np.ndarray:
    """``x Wᵀ + b`` in float64."""
    return np.asarray(x, np.float64) @ np.asarray(weight, np.float64).T + bias


def vim_dim(d: int) -> int:
    """ViM's width rule: 1000 if ``d >= 2048``, 512 if ``d >= 768``, else ``d // 2``."""
    return 1000 if d >= 2048 else 512 if d >= 768 else d // 2


def vim_parts(fit, weight, bias, dim):
    """``(origin u = -W⁺b, complement Q [d, d - dim], α, ascending eigenvalues)`` of ViM."""
    origin = -np.linalg.pinv(weight) @ bias
    centred = fit - origin
    values, vectors = np.linalg.eigh(centred.T @ centred / len(fit))
    complement = vectors[:, : fit.shape[1] - dim]
    alpha = (head_logits(fit, weight, bias).max(axis=1).mean()
             / np.linalg.norm(centred @ complement, axis=1).mean())
    return origin, complement, alpha, values


def vim_scores(fit, weight, bias, queries, dim) -> np.ndarray:
    """``logsumexp(z) - α |(q - u) Q|``."""
    origin, complement, alpha, _ = vim_parts(fit, weight, bias, dim)
    z = head_logits(queries, weight, bias)
    top = z.max(axis=1, keepdims=True)
    energy = (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]
    return energy - alpha * np.linalg.norm((queries - origin) @ complement, axis=1)


def fdbd_scores(fit, weight, bias, queries) -> np.ndarray:
    """Mean over ``c != argmax`` of ``|z_top - z_c| / |w_top - w_c|``, over ``|q - mean(fit)|``."""
    z = head_logits(queries, weight, bias)
    out = np.empty(len(queries))
    for i, row in enumerate(z):
        top = int(np.argmax(row))
        gaps = [abs(row[top] - row[c]) / np.linalg.norm(weight[top] - weight[c])
                for c in range(len(row)) if c != top]
        out[i] = np.mean(gaps) / np.linalg.norm(queries[i] - fit.mean(axis=0))
    return out


def nci_scores(fit, weight, bias, queries, alpha=0.0) -> np.ndarray:
    """``(q - μ) · w_argmax / |q - μ| + α |q|₁`` with ``μ = mean(fit)``."""
    centred = queries - fit.mean(axis=0)
    rows = np.asarray(weight, np.float64)[head_logits(queries, weight, bias).argmax(axis=1)]
    return ((centred * rows).sum(axis=1) / np.linalg.norm(centred, axis=1)
            + alpha * np.abs(queries).sum(axis=1))


def head_scores(name, hp, fit, queries, weight, bias):
    """The reference of ``vim``/``fdbd``/``nci``, or ``None`` where rounding decides the answer:
    a near-tied argmax (fdbd, nci), a query within 1e-3 of its own size of the fit mean (fdbd,
    nci), or ViM's subspace split inside a near-degenerate eigenvalue cluster."""
    z = head_logits(queries, weight, bias)
    if name in ("fdbd", "nci"):
        if z.shape[1] > 1:
            two = np.sort(z, axis=1)[:, -2:]
            if np.any(two[:, 1] - two[:, 0] <= 1e-6 * (np.abs(z).max() + 1e-300)):
                return None
        mean = fit.mean(axis=0)
        spread = np.linalg.norm(queries - mean, axis=1)
        if np.any(spread <= 1e-3 * (np.linalg.norm(queries, axis=1) + np.linalg.norm(mean))):
            return None
        if name == "fdbd":
            return fdbd_scores(fit, weight, bias, queries)
        return nci_scores(fit, weight, bias, queries, hp["alpha"])
    n, d = fit.shape
    dim = hp["dim"] or min(vim_dim(d), max(0, (n - 1) // 2))
    _, _, _, values = vim_parts(fit, weight, bias, dim)
    if dim > 0 and values[d - dim] - values[d - dim - 1] <= 1e-3 * values[-1]:
        return None
    return vim_scores(fit, weight, bias, queries, dim)


def head_error_scale(name, hp, fit, queries, weight, bias) -> float:
    """A bound on ``|score|`` error per unit round-off and feature: the magnitude of the terms
    that are rounded times the amplification of the divisions."""
    w_max = float(np.abs(weight).max())
    q_norms = np.linalg.norm(queries, axis=1)
    terms = q_norms * np.linalg.norm(weight, axis=1).max() + float(np.abs(bias).max())
    if name == "vim":
        n, d = fit.shape
        dim = hp["dim"] or min(vim_dim(d), max(0, (n - 1) // 2))
        origin, _complement, alpha, values = vim_parts(fit, weight, bias, dim)
        gap = values[d - dim] - values[d - dim - 1] if dim else values[-1]
        residual = np.linalg.norm(queries - origin, axis=1) + np.linalg.norm(origin)
        fit_terms = np.linalg.norm(fit - origin, axis=1).max() + np.linalg.norm(origin)
        return float(terms.max() + abs(alpha) * residual.max()
                     * (1 + fit_terms**2 / gap)) * 1e2
    mean = fit.mean(axis=0)
    spread = np.linalg.norm(queries - mean, axis=1)
    amplify = 1 + (q_norms + np.linalg.norm(mean)) / spread
    if name == "fdbd":
        pairs = [np.linalg.norm(weight[p] - weight[c]) for p in range(len(weight))
                 for c in range(len(weight)) if p != c]
        return float(np.max(terms / (min(pairs) * spread) * amplify))
    return float(np.max(w_max * np.sqrt(fit.shape[1]) * amplify
                        + hp["alpha"] * np.abs(queries).sum(axis=1)))
# ----------------------------------------------------------------------------- feature + logits
def nnguide_scores(fit, fit_logits, queries, query_logits, k) -> np.ndarray:
    """``E(x) · mean of the top-k <x̂, E(b) b̂>`` (``k`` capped at the bank size)."""
    inner = cosine_matrix(queries, fit) * _logsumexp(fit_logits)[None, :]
    top = -np.sort(-inner, axis=1)[:, : min(k, len(fit))]
    return _logsumexp(query_logits) * top.mean(axis=1)


def nnguide_leave_one_out(fit, fit_logits, k) -> np.ndarray:
    """Each fit row guided by the other rows (a one-row bank by itself)."""
    n = len(fit)
    if n == 1:
        return nnguide_scores(fit, fit_logits, fit, fit_logits, k)
    inner = cosine_matrix(fit, fit) * _logsumexp(fit_logits)[None, :]
    others = inner[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    top = -np.sort(-others, axis=1)[:, : min(k, n - 1)]
    return _logsumexp(fit_logits) * top.mean(axis=1)


def she_scores(fit, labels, fit_logits, queries, query_logits) -> np.ndarray:
    """``<x, S_ŷ>``: ``S_c`` the mean of the fit rows labelled and predicted ``c``, else of all
    rows labelled ``c``, else 0."""
    predicted = fit_logits.argmax(axis=1)
    patterns = np.zeros((fit_logits.shape[1], fit.shape[1]))
    for c in range(fit_logits.shape[1]):
        correct = (labels == c) & (predicted == c)
        rows = correct if correct.any() else labels == c
        if rows.any():
            patterns[c] = fit[rows].mean(axis=0)
    return (queries * patterns[query_logits.argmax(axis=1)]).sum(axis=1)


def neco_scores(fit, queries, query_logits, dim, scale="maxlogit") -> np.ndarray:
    """``|P_D u| / |u|`` (times the max logit) with ``u`` standardised by the fit mean and
    population std (1 for a constant feature) and ``P_D`` the top-``D`` right singular vectors
    of the standardised fit data; ``u = 0`` gives 1."""
    mean, std = fit.mean(axis=0), fit.std(axis=0)
    std = np.where(std <= 1e-12 * np.abs(mean), 1.0, std)  # constant: rounding only
    _, _, vt = np.linalg.svd((fit - mean) / std, full_matrices=True)
    u = (queries - mean) / std
    total = np.linalg.norm(u, axis=1)
    safe = np.where(total > 0, total, 1.0)
    ratio = np.where(total > 0, np.linalg.norm(u @ vt[:dim].T, axis=1) / safe, 1.0)
    return ratio * query_logits.max(axis=1) if scale == "maxlogit" else ratio
