"""KNNIndex: exact kNN over a fixed bank, pruned by a principal-subspace bound."""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch

from ..errors import BackendUnavailableError, InputError
from . import extension
from ._dispatch import requested_backend, resolve_backend
from .arrays import (
    ArrayKind,
    ArrayLike,
    Bank,
    RowPeaks,
    bank_peaks,
    check_bank,
    check_finite,
    check_matrix,
    check_positive_int,
    check_search,
)
from .dense import Metric, knn
from .magnitude import in_range, normalise_rows, times_pow2
from .streaming import bank_rows, sort_heaps

#: Principal directions the index projects on, by default: 64 below 1,024 features, 128 from
#: there (at most ``d // 4``). On SmolLM2's middle layer (d = 576) 128 directions cut the k = 10
#: survivors from 10% to 1.3% but cost twice the bound's work; on the 1M x 1024 synthetic bank
#: they cut them from 16% to 6% and the search time by a third (benchmarks/RESULTS.md).
INDEX_RANK, INDEX_RANK_WIDE, INDEX_WIDE_DIM = 64, 128, 1024
#: Bank rows sampled to find the principal directions.
INDEX_SAMPLE_ROWS = 8192
#: ``mode="auto"`` prunes only if the sampled rows keep at most this share of their energy
#: outside the principal subspace. Measured: SmolLM2 final layer 0.14, middle layer 0.18, the
#: 1M x 1024 synthetic bank 0.19 (all prune well), the 200k x 4096 synthetic bank 0.23 (does
#: not pay), MiniLM 0.47, isotropic Gaussian data ~0.9.
INDEX_MAX_RESIDUAL_ENERGY = 0.2
#: ``mode="auto"`` searches densely once more than this share of the (query, row) pairs had to
#: be scored exactly: about where the pruned kernel stops beating the dense one, measured on
#: SmolLM2's middle layer (k = 10: 10% survivors, 0.68 s pruned vs 0.65 s dense) and the
#: synthetic banks (benchmarks/RESULTS.md).
INDEX_MAX_SURVIVOR_RATE = 0.1
#: The seed pass scores this many candidates per neighbour exactly to set the first threshold.
INDEX_SEED_FACTOR = 4
#: Queries searched before the survivor rate is judged.
INDEX_PROBE_QUERIES = 128
#: Banks with fewer rows or features than this are searched densely (pruning cannot pay).
INDEX_MIN_ROWS, INDEX_MIN_DIM = 2048, 256
_UNIT_ROUNDOFF = 2.0**-24
#: Bank rows per group of the pruned kernel's bound micro-kernel (kGroup in the C++).
_GROUP = 16
#: A bank sample whose largest |value| is beyond ``2**±this`` is rescaled to find the basis.
_SAMPLE_MAX_EXPONENT = 32
#: Relative slack on the float64 residual ``|x|² - |c|²`` (its rounding error is ~d 2^-53).
_FP64_SLACK = 2.0**-40


@runtime_checkable
class SearchIndex(Protocol):
    """What an exact kNN index over a fixed bank offers; :class:`KNNIndex` is one.

    The kNN detectors fit on any such object (``BankDetector.fit_index``), so the bank may live
    elsewhere: in shards held by other processes (``ood_zoo_ray.ShardedIndex``), say. ``search``
    must return what :func:`knn` over the whole bank returns (values within float rounding, the
    same neighbours except at exact ties).
    """

    #: ``"cosine"`` (similarities, descending) or ``"l2"`` (distances, ascending).
    metric: Metric
    #: Rows in the bank (``N``) and their width (``d``).
    n_rows: int
    dim: int

    def search(self, queries: ArrayLike, k: int) -> tuple[ArrayLike, ArrayLike]:
        """``(values [Q, k], indices [Q, k] int64)`` of each query's k nearest bank rows."""
        ...

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        """The bank rows at global positions ``indices`` (1-D int64), as a ``[len, d]`` tensor."""
        ...


def _index_tile_rows(dim: int) -> int:
    """Bank rows per tile of the pruned kernel: a tile's fp32 rows take ~512 KB of cache."""
    return max(16, min(4096, 2**19 // (4 * dim)))


class KNNIndex:
    """Exact k-nearest-neighbour index over a fixed bank, pruned where the bank is anisotropic.

    ``search`` returns the same result as :func:`knn` (values within fp32 rounding, the same
    neighbours except at exact ties), but on LLM hidden states, whose energy concentrates in a
    few directions, it scores most (query, row) pairs without touching the rows.

    **Bound.** With ``V`` the top-``p`` principal directions of the bank (orthonormal, from a
    sample of rows, uncentred), ``a = Vᵀq``, ``c = Vᵀb`` and residual norms
    ``r_q = |q - Va|``, ``r_b = |b - Vc|``, Cauchy–Schwarz gives

    ``<q, b> = <a, c> + <q⊥, b⊥> <= <a, c> + r_q r_b``

    (for cosine, on unit vectors). The kernel computes ``<a, c>`` for every pair, 8 queries by
    16 bank rows at a time in registers (the ``[Q, N]`` matrix is never written), and scores a
    row exactly only if its bound can still reach the query's running k-th best exact score.
    That threshold is seeded by a first pass: the ``4 k`` rows with the best approximate scores
    ``<a, c>``, scored exactly. Exact scores come from the bank rows as stored, in fp32.

    **Rounding.** ``a`` and ``r_q`` are computed in float64 from the fp32 queries. The bank's
    ``c`` comes from one fp32 GEMM of its rows (each scaled by a power of two to a peak in
    ``[1/2, 1)``, exactly) with the basis rounded to fp32: in any summation order, each entry is
    within ``γ_d Σ_i |x_i| |V_ij|`` of the product with the fp32 basis, which is within
    ``u Σ_i |x_i| |V_ij|`` of the exact one, and ``Σ_i |x_i| |V_ij| <= |x|`` (Cauchy–Schwarz,
    unit columns), so ``|c̃ - c| <= e |b|`` with ``e = 1.01 √p (γ_(d+2) + d 2^-146)`` (the last
    term for underflow). Hence ``<a, c> <= <a, c̃> + e |q| |b|``, and ``r_b`` is stored as the
    float64 ``sqrt(|b|² - max(0, |c̃| - e |b|)²)`` plus a ``2^-40`` slack, rounded up to fp32; ``e``
    is added to ``M`` (cosine: ``|q| = |b| = 1``; l2: ``2 e |q| |b| <= e (|q|² + |b|²)``).
    With ``u = 2^-24`` and
    ``γ_m = m u / (1 - m u)``, for cosine (unit rows, ``|a|, |c| <= 1``): the stored projections
    cost ``2u``, the fp32 sum of the ``p`` products ``γ_p``, the bound's product and sum ``2u``;
    the exact score (32-lane FMA accumulation, see ``csrc/cpu/knn_pruned_cpu.cpp``) is within
    ``γ_m``, ``m = ⌈d/32⌉ + 5``, plus ``2u`` for its scaling. For l2 each term, doubled, is
    at most that multiple of ``u (|q|² + |b|²)`` on squared distances, plus ``u`` for each of
    ``|q|²`` and ``|b|²`` and ``4u`` for each of the two sums of three terms. A row is pruned
    only if ``bound + M < τ`` (cosine; l2: ``(1 - M)(|q|² + |b|²) - 2 bound > τ``) with
    ``M = 1.01 (p + ⌈d/32⌉ + 24) u + e``, which exceeds the sum of these terms. So a row whose
    exactly computed score reaches the k-th best is never pruned, and the result is the top-k
    of the exact scores over the whole bank.

    **Magnitudes.** That analysis holds for operands inside the fp32 safe range of
    :mod:`ood_zoo.ops.magnitude` (row norms up to ``2**62``; l2 queries, unless zero, not below
    ``2**-50``), where nothing overflows and underflow stays far below the margin. The pruned
    kernel never rescales: a bank beyond the range is searched densely (``mode="pruned"``
    refuses it), and so is every search whose queries leave the range; :func:`knn` then
    rescales exactly. So the bound stays rigorous at any magnitude.

    **Fallback.** ``mode="auto"`` searches densely (the fused :func:`knn` kernel) when the bank
    keeps more than :data:`INDEX_MAX_RESIDUAL_ENERGY` of its energy outside the subspace, is
    small (:data:`INDEX_MIN_ROWS`, :data:`INDEX_MIN_DIM`), beyond the safe range, or the
    extension is missing; and searches go dense once more than :data:`INDEX_MAX_SURVIVOR_RATE`
    of the pairs had to be scored (observed on an earlier search with the same ``k``, or on the
    first :data:`INDEX_PROBE_QUERIES` queries of a large batch). :meth:`stats` says which path
    ran. CUDA and float64 queries always take :func:`knn`.

    Parameters
    ----------
    bank : array ``[N, d]`` or a list of shards
        Kept by reference (a numpy memmap is read a tile at a time, never copied); the index
        adds ``N (p + 2)`` fp32 values.
    metric : {"cosine", "l2"}
    rank : int, optional
        ``p``, the principal directions used (default :data:`INDEX_RANK`, or
        :data:`INDEX_RANK_WIDE` from :data:`INDEX_WIDE_DIM` features; at most ``d // 4``).
    mode : {"auto", "pruned", "dense"}
    sample_rows : int
        Bank rows sampled (seeded by ``seed``) to find the principal directions.
    tile_rows : int, optional
        Bank rows per tile of the pruned kernel (by default sized for the cache; for tests).

    Raises
    ------
    InputError
        For NaN/Inf in the bank, ``rank``/``sample_rows``/``tile_rows`` that are not positive
        ints, a ``seed`` that is not an int, or ``mode="pruned"`` on a bank beyond the range.
    """

    def __init__(
        self,
        bank: Bank,
        metric: Metric = "cosine",
        *,
        rank: int | None = None,
        mode: str = "auto",
        sample_rows: int = INDEX_SAMPLE_ROWS,
        seed: int = 0,
        tile_rows: int | None = None,
    ) -> None:
        if metric not in ("cosine", "l2"):
            raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
        if mode not in ("auto", "pruned", "dense"):
            raise ValueError(f"mode must be 'auto', 'pruned' or 'dense', got {mode!r}")
        rank, tile_rows = (None if value is None else check_positive_int(value, name=name)
                           for name, value in (("rank", rank), ("tile_rows", tile_rows)))
        sample_rows = check_positive_int(sample_rows, name="sample_rows")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) \
                or not -(2**63) <= seed < 2**64:
            raise InputError(f"seed must be an int in [-2**63, 2**64), got {seed!r}")
        seed = int(seed)
        start = time.perf_counter()
        self.metric: Metric = metric
        self.mode = mode
        self.tile_rows = tile_rows
        # finiteness is checked while projecting (indexes that search densely leave it to knn)
        self.shards = check_bank(bank, finite=False)
        self.n_rows = sum(s.shape[0] for s in self.shards)
        self.dim = int(self.shards[0].shape[1])
        default_rank = INDEX_RANK_WIDE if self.dim >= INDEX_WIDE_DIM else INDEX_RANK
        self.rank = min(rank or default_rank, max(1, self.dim // 4))
        self._last_search: dict[str, Any] = {}
        #: per k: (queries, pairs, pairs scored exactly) over the pruned searches so far
        self._observed: dict[int, tuple[int, int, int]] = {}
        self.residual_energy: float | None = None
        self.basis = self.bank_res = self.bank_term = self.bank_groups = None
        reason = self._dense_reason(mode)
        if reason is None:
            limit = INDEX_MAX_RESIDUAL_ENERGY if mode == "auto" else math.inf
            reason = self._build(sample_rows, seed, max_residual_energy=limit)
            if reason is not None:
                self.basis = self.bank_res = self.bank_term = self.bank_groups = None
        self.dense_reason = reason
        self.build_seconds = time.perf_counter() - start

    # ------------------------------------------------------------------ build
    def _dense_reason(self, mode: str) -> str | None:
        if mode == "dense":
            return "mode='dense'"
        if not extension.available() or resolve_backend(warn=False) != "ext":
            if mode == "pruned":
                raise BackendUnavailableError(
                    "KNNIndex(mode='pruned') needs the C++ extension and the ext backend "
                    f"({extension.load_error() or 'OOD_ZOO_BACKEND=' + str(requested_backend())})"
                )
            return "the ext backend is not in use"
        devices = sorted({str(s.device) for s in self.shards if s.device.type != "cpu"})
        if devices:
            if mode == "pruned":
                raise InputError(f"KNNIndex(mode='pruned') needs a CPU bank, not {devices}")
            return f"bank on {', '.join(devices)}"
        if mode == "auto" and self.n_rows < INDEX_MIN_ROWS:
            return f"bank of {self.n_rows} rows < {INDEX_MIN_ROWS}"
        if mode == "auto" and self.dim < INDEX_MIN_DIM:
            return f"dimension {self.dim} < {INDEX_MIN_DIM}"
        return None

    def _build(self, sample_rows: int, seed: int, *, max_residual_energy: float) -> str | None:
        """Principal directions from a sample; then, if the sample's residual energy is at most
        ``max_residual_energy`` and the bank is inside the safe range, the projections of the
        whole bank. Returns why the index searches densely instead, or None."""
        generator = torch.Generator().manual_seed(seed)
        n_sample = min(self.n_rows, sample_rows)
        rows = torch.randperm(self.n_rows, generator=generator)[:n_sample].sort().values
        sample = bank_rows(self.shards, rows).to(torch.float64)
        if not bool(torch.isfinite(sample).all()):
            bank_peaks(self.shards)  # raises InputError naming the bank row
        # Everything below is scale-free: a power of two (exact) brings a sample far from unit
        # magnitude near it, so that the fp32 products of the basis neither overflow nor underflow.
        exponent = math.frexp(float(sample.abs().max()))[1]
        if abs(exponent) > _SAMPLE_MAX_EXPONENT:
            sample = times_pow2(sample, -exponent)
        if self.metric == "cosine":
            sample = normalise_rows(sample)
        self.basis = _principal_directions(sample, self.rank, generator)
        energy = (sample * sample).sum()
        outside = energy - ((sample @ self.basis) ** 2).sum()
        self.residual_energy = float(outside.clamp_min(0) / energy.clamp_min(1e-300))
        if self.residual_energy > max_residual_energy:
            return f"residual energy {self.residual_energy:.3f} > {INDEX_MAX_RESIDUAL_ENERGY}"
        # One pass over the bank: the projections, which also check NaN/Inf and measure every
        # row's norm (the term: 1/|b| for cosine, |b|² for l2), so the safe range costs no pass.
        try:
            self.bank_groups, self.bank_res, self.bank_term = self._project_bank()
        except InputError:
            # a NaN/Inf row (bank_peaks raises naming it), or an l2 row whose |b|² overflows
            if in_range(bank_peaks(self.shards), self.dim, torch.float32, lower=False):
                raise
            return self._beyond_safe_range()
        beyond = (self.bank_term < 2.0**-62) if self.metric == "cosine" \
            else (self.bank_term > 2.0**124)
        if bool(beyond.any()):
            return self._beyond_safe_range()
        return None

    def _project_bank(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(groups, residual norms, terms)`` of the whole bank, a chunk of rows at a time, each
        chunk's projections written straight into the grouped layout the kernel reads: per
        shard, rows in groups of 16, each group transposed, a shard's last group padded with
        zero rows (``[sum_s ceil(n_s / 16), p, 16]``, also the saved form)."""
        n_groups = sum(-(-shard.shape[0] // _GROUP) for shard in self.shards)
        groups = torch.empty(n_groups, self.basis.shape[1], _GROUP)
        res, term = torch.empty(self.n_rows), torch.empty(self.n_rows)
        step = _index_build_rows(self.dim)
        offset = group = 0
        for shard in self.shards:
            for start in range(0, shard.shape[0], step):
                c, r, t = self.project(shard[start : start + step], unit=self.metric == "cosine",
                                       offset=offset + start, fp32_gemm=True)
                rows = c.shape[0]
                width = -(-rows // _GROUP)
                if rows % _GROUP:
                    c = torch.cat([c, c.new_zeros(width * _GROUP - rows, c.shape[1])])
                groups[group : group + width].copy_(c.view(width, _GROUP, -1).transpose(1, 2))
                res[offset + start : offset + start + rows] = r
                term[offset + start : offset + start + rows] = t
                group += width
            offset += shard.shape[0]
        return groups, res, term

    def _beyond_safe_range(self) -> str:
        """Why a bank with rows beyond the fp32 safe range is searched densely (or, with
        ``mode="pruned"``, the error)."""
        if self.mode == "pruned":
            raise InputError("KNNIndex(mode='pruned'): bank row norms reach beyond the safe "
                             "range of the pruned kernel (2**62 ≈ 4.6e18); use mode='auto'")
        return "bank row norms beyond the safe range (2**62)"

    def project(
        self, x: torch.Tensor, *, unit: bool, offset: int = 0, fp32_gemm: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows -> (projections, residual norms rounded up, per-row term): the quantities of the
        bound (bank rows give :attr:`bank_proj`, ``bank_res``, ``bank_term``).

        ``c = Vᵀx̂`` and ``|x̂ - Vc| <= sqrt(max(0, |x̂|² - max(0, |c̃| - e |x̂|)²) + 2^-40 |x̂|²)``,
        where ``x̂`` is the row scaled to unit norm if ``unit`` (cosine bank rows; the term is then
        the inverse norm) or the row itself (the term is the squared norm), ``|x̂|²`` is in
        float64 and ``c̃`` the computed ``c``: in float64 (``e = 0``; the slack covers its
        rounding), or with ``fp32_gemm`` from one fp32 GEMM, ``|c̃ - c| <= e |x̂|`` with
        ``e =`` :meth:`projection_error`. The squared norms double as the finiteness check: a
        row holding NaN or Inf is reported with its position ``offset + i``.
        """
        project = torch.ops.ood_zoo.knn_pruned_project  # reads any float dtype as fp32
        error = self.projection_error() if fp32_gemm else 0.0
        proj, res, term, bad = project(x, self.basis, unit, _FP64_SLACK, error)
        if bad >= 0:
            raise InputError(f"bank: row {offset + bad} is not finite (NaN or Inf) or overflows")
        return proj, res, term

    def _shard_groups(self) -> Iterator[tuple[torch.Tensor, int, torch.Tensor]]:
        """``(shard, its first row, its groups of projections)`` for every shard."""
        offset = group = 0
        for shard in self.shards:
            n_groups = -(-shard.shape[0] // _GROUP)
            yield shard, offset, self.bank_groups[group : group + n_groups]
            offset += shard.shape[0]
            group += n_groups

    @property
    def bank_proj(self) -> torch.Tensor | None:
        """The bank's projections ``c = Vᵀb̂``, ``[N, p]`` fp32 (None for a dense index)."""
        if self.bank_groups is None:
            return None
        return torch.cat([
            groups.transpose(1, 2).reshape(-1, self.bank_groups.shape[1])[: shard.shape[0]]
            for shard, _, groups in self._shard_groups()
        ])

    @property
    def pruned(self) -> bool:
        """Whether searches take the pruned kernel (else the dense :func:`knn`)."""
        return self.bank_groups is not None and self.dense_reason is None

    def margin(self) -> float:
        """The rounding margin ``M`` of the bound (see the class docstring)."""
        return 1.01 * (self.rank + math.ceil(self.dim / 32) + 24) * _UNIT_ROUNDOFF \
            + self.projection_error()

    def projection_error(self) -> float:
        """``e``, the bound on ``|c̃ - c| / |b|`` of the bank's projections, computed by one fp32
        GEMM: ``1.01 √p (γ_(d+2) + d 2^-146)`` (see the class docstring)."""
        width = self.dim + 2
        gamma = width * _UNIT_ROUNDOFF / (1 - width * _UNIT_ROUNDOFF)
        return 1.01 * math.sqrt(self.rank) * (gamma + self.dim * 2.0**-146)

    # ------------------------------------------------------------------ search
    def search(self, queries: ArrayLike, k: int) -> tuple[ArrayLike, ArrayLike]:
        """The k nearest bank rows of each query, as :func:`knn` returns them.

        Returns
        -------
        values : array ``[Q, k]``
            Cosine similarities (descending) or Euclidean distances (ascending), fp32.
        indices : array ``[Q, k]`` of int64
        """
        q = check_matrix(queries, name="queries", finite=False)
        peaks = check_finite(q, name="queries")
        k = check_search(q, k, n_rows=self.n_rows, dim=self.dim)
        start = time.perf_counter()
        kind = ArrayKind.of(queries)
        why = self.dense_reason if not self.pruned else self._dense_query_reason(q, peaks)
        if why is not None:
            values, indices = knn(q, self.shards, k, self.metric)
            self._last_search = {"path": "dense", "reason": why, "queries": q.shape[0]}
        else:
            values, indices = self._search_pruned(q, k)
        self._last_search["seconds"] = time.perf_counter() - start
        return kind.wrap(values), kind.wrap(indices)

    def _dense_query_reason(self, q: torch.Tensor, peaks: RowPeaks) -> str | None:
        """Why these queries take the dense :func:`knn` (which rescales exactly), or None."""
        if q.dtype == torch.float64:
            return "float64 queries"
        if q.device.type != "cpu":
            return f"{q.device} queries"
        if not in_range(peaks, self.dim, torch.float32, lower=self.metric == "l2"):
            return "queries beyond the safe range"
        return None

    def _search_pruned(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pruned search, or the dense one where the survivor rate says pruning won't pay.

        In ``mode="auto"`` the survivor rate accumulated for this ``k`` over earlier searches
        decides up front, once it covers :data:`INDEX_PROBE_QUERIES` queries (one outlier query
        does not switch an index); without it, a large batch is probed: its first
        :data:`INDEX_PROBE_QUERIES` queries run pruned, and the rest densely if more than
        :data:`INDEX_MAX_SURVIVOR_RATE` of their pairs survived (a smaller batch runs pruned in
        one go: the probe would cost a pass).
        """
        qf = q.to(torch.float32)
        if self.metric == "cosine":
            qf = normalise_rows(qf)
        qf = qf.contiguous()
        n_q = qf.shape[0]
        auto = self.mode == "auto"
        observed_queries, observed_pairs, observed_scored = self._observed.get(k, (0, 0, 0))
        seen = (observed_scored / max(observed_pairs, 1)
                if observed_queries >= INDEX_PROBE_QUERIES else None)
        if auto and seen is not None and seen > INDEX_MAX_SURVIVOR_RATE:
            values, indices = knn(qf, self.shards, k, self.metric)
            self._last_search = {"path": "dense", "queries": n_q, "reason":
                                 f"survivor rate {seen:.3f} > {INDEX_MAX_SURVIVOR_RATE} over "
                                 f"{observed_queries} earlier queries with k={k}"}
            return values, indices
        probe = INDEX_PROBE_QUERIES if auto and seen is None and n_q >= 4 * INDEX_PROBE_QUERIES \
            else n_q
        values, indices, pairs, scored = self._pruned_block(qf[:probe], k)
        rate = scored / max(pairs, 1)
        info: dict[str, Any] = {"path": "pruned", "queries": n_q, "survivor_rate": rate}
        pruned_queries = probe
        if probe < n_q:
            if rate > INDEX_MAX_SURVIVOR_RATE:
                rest = knn(qf[probe:], self.shards, k, self.metric)
                info.update(path="pruned+dense", reason=f"survivor rate {rate:.3f} > "
                            f"{INDEX_MAX_SURVIVOR_RATE} on the first {probe} queries")
            else:
                *rest, more_pairs, more_scored = self._pruned_block(qf[probe:], k)
                pairs, scored, pruned_queries = pairs + more_pairs, scored + more_scored, n_q
                info["survivor_rate"] = scored / max(pairs, 1)
            values = torch.cat([values, rest[0]])
            indices = torch.cat([indices, rest[1]])
        self._observed[k] = (observed_queries + pruned_queries, observed_pairs + pairs,
                             observed_scored + scored)
        self._last_search = info
        return values, indices

    def _pruned_block(
        self, qf: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        cosine = self.metric == "cosine"
        # the queries as the kernel sees them (unit fp32 rows for cosine), projected exactly
        a, r_q, q_sq = self.project(qf, unit=False)
        if cosine:
            q_sq = torch.empty(0)
        tiles = self.tile_rows or _index_tile_rows(self.dim)
        stats = torch.zeros(2, dtype=torch.int64)

        def run(seed: bool, tau: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
            values = torch.full((qf.shape[0], width), -math.inf if cosine else math.inf)
            indices = torch.full((qf.shape[0], width), torch.iinfo(torch.int64).max)
            for shard, offset, groups in self._shard_groups():
                n = shard.shape[0]
                if n:
                    torch.ops.ood_zoo.knn_pruned_update(
                        qf, a, r_q, q_sq, shard, groups,
                        self.bank_res[offset : offset + n], self.bank_term[offset : offset + n],
                        offset, values, indices, tau, self.metric, seed, self.margin(), tiles,
                        stats,
                    )
            return values, indices

        # Seed: the rows with the best approximate scores <a, c>, scored exactly; their k-th best
        # exact score is a valid threshold (the k-th best over the whole bank can only be better).
        width = min(self.n_rows, max(INDEX_SEED_FACTOR * k, 8))
        no_tau = torch.full((qf.shape[0],), -math.inf if cosine else math.inf)
        _, seeds = run(True, no_tau, width)
        exact = torch.empty(seeds.shape)
        offset = 0
        for shard in self.shards:
            n = shard.shape[0]
            torch.ops.ood_zoo.knn_pruned_rescore(
                qf, q_sq, shard, offset, seeds, self.bank_term[offset : offset + n],
                self.metric, exact,
            )
            offset += n
        tau = exact.topk(k, dim=1, largest=cosine).values[:, -1]
        stats.zero_()
        values, indices = run(False, tau.contiguous(), k)
        values, indices = sort_heaps(values, indices, largest=cosine)
        if not cosine:
            values = values.sqrt()
        return values, indices, int(stats[0]), int(stats[1])

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        """The bank rows at global positions ``indices`` (1-D int64), in the bank's dtype and
        on its device (only those rows are read from a memmap).

        Raises
        ------
        InputError
            If an index is outside ``[0, N)``.
        """
        return bank_rows(self.shards, indices)

    def stats(self) -> dict[str, Any]:
        """How the index was built and how the last search ran (path, survivor rate, times)."""
        return {
            "metric": self.metric,
            "mode": self.mode,
            "rows": self.n_rows,
            "dim": self.dim,
            "rank": self.rank if self.pruned else 0,
            "pruned": self.pruned,
            "dense_reason": self.dense_reason,
            "residual_energy": self.residual_energy,
            "margin": self.margin(),
            "build_seconds": self.build_seconds,
            "last_search": dict(self._last_search),
        }

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The index's own tensors (the bank is not included); empty ones for a dense index."""
        if self.bank_groups is None:
            empty = torch.empty(0, dtype=torch.float32)
            return {"basis": torch.empty(self.dim, 0, dtype=torch.float64),
                    "proj": empty.reshape(0, 0, _GROUP), "res": empty, "term": empty,
                    "residual_energy": torch.empty(0, dtype=torch.float64)}
        return {"basis": self.basis, "proj": self.bank_groups, "res": self.bank_res,
                "term": self.bank_term,
                "residual_energy": torch.tensor([self.residual_energy], dtype=torch.float64)}

    @classmethod
    def from_state(
        cls, bank: Bank, metric: Metric, state: dict[str, torch.Tensor], *, mode: str = "auto"
    ) -> KNNIndex:
        """Rebuild an index from :meth:`state_dict` without recomputing it.

        Raises
        ------
        InputError
            If the tensors do not fit the bank (shapes, dtypes, non-finite values).
        """
        index = cls.__new__(cls)
        index.metric, index.mode, index.tile_rows = metric, mode, None
        index.shards = check_bank(bank, finite=False)
        index.n_rows = sum(s.shape[0] for s in index.shards)
        index.dim = int(index.shards[0].shape[1])
        index._last_search = {}
        index._observed = {}
        index.build_seconds = 0.0
        basis = state["basis"]
        p = basis.shape[1] if basis.dim() == 2 else -1
        n_groups = sum(-(-s.shape[0] // _GROUP) for s in index.shards)
        expected = {"basis": ((index.dim, p), torch.float64),
                    "proj": ((n_groups, p, _GROUP) if p else (0, 0, _GROUP), torch.float32),
                    "res": ((index.n_rows,) if p else (0,), torch.float32),
                    "term": ((index.n_rows,) if p else (0,), torch.float32),
                    "residual_energy": ((1,) if p else (0,), torch.float64)}
        for name, (shape, dtype) in expected.items():
            t = state[name]
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise InputError(f"KNNIndex state {name!r} is {t.dtype} {tuple(t.shape)}, "
                                 f"expected {dtype} {shape} for this bank")
        if p and not all(bool(torch.isfinite(state[n]).all()) for n in expected):
            raise InputError("KNNIndex state holds non-finite values")
        index.rank = max(p, 1)
        index.basis = index.bank_res = index.bank_term = index.bank_groups = None
        index.residual_energy = None
        index.dense_reason = "saved as a dense index"
        if p:
            index.basis, index.bank_groups = basis, state["proj"]
            index.bank_res, index.bank_term = state["res"], state["term"]
            index.residual_energy = float(state["residual_energy"][0])
            usable = extension.available() and resolve_backend(warn=False) == "ext"
            index.dense_reason = (
                "mode='dense'" if mode == "dense"
                else None if usable else "the ext backend is not in use"
            )
        return index


def _principal_directions(x64: torch.Tensor, rank: int, generator: torch.Generator) -> torch.Tensor:
    """An orthonormal float64 ``[d, rank]`` basis of the top right singular vectors of ``x64``.

    Subspace iteration on the (uncentred) rows in fp32 with ``rank + 8`` vectors, then a
    Rayleigh–Ritz step; only the orthonormality of the result matters for the bound's validity
    (re-orthonormalised in float64), its accuracy only for how much the index prunes.
    """
    x = x64.to(torch.float32)
    width = min(rank + 8, *x.shape)
    z = torch.randn(x.shape[1], width, generator=generator)
    for _ in range(4):
        z, _ = torch.linalg.qr(x.T @ (x @ z))
    y = x @ z
    _, vectors = torch.linalg.eigh((y.T @ y).to(torch.float64))
    basis = z.to(torch.float64) @ vectors.flip(1)[:, :rank]
    return torch.linalg.qr(basis)[0].contiguous()


def _index_build_rows(dim: int) -> int:
    """Bank rows projected per call while building: about 32 MB of fp32 rows, whole groups."""
    return max(256, 2**23 // dim // _GROUP * _GROUP)
