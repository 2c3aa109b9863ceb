"""Tests of ``ops.KNNIndex``: exact kNN pruned by a principal-subspace bound.

Every search is compared with an independent float64 reference (values within fp32 rounding,
every returned index checked by value, neighbour sets equal wherever the k-th value is not tied),
on anisotropic banks (where the index prunes) and on adversarial ones: near-identical rows, rows
exactly inside the subspace, duplicates, a query equal to a bank row, extreme norms, odd shapes.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_ops import HYPOTHESIS, assert_knn, gaussian
from test_ops_fast import assert_exact_sets

from ood_zoo import ops
from ood_zoo.errors import BackendUnavailableError, InputError
from ood_zoo.ops import extension

needs_ext = pytest.mark.skipif(
    not extension.available(), reason=f"C++ extension: {extension.load_error()}"
)


@pytest.fixture(autouse=True)
def _ext_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OOD_ZOO_BACKEND", raising=False)


def cone(rng: np.random.Generator, n: int, d: int, *, rank: int = 8, noise: float = 0.02,
         basis_seed: int = 7, dtype=np.float32) -> np.ndarray:
    """Anisotropic rows like LLM hidden states: a large mean, a few strong directions, noise."""
    fixed = np.random.default_rng(basis_seed)
    mean = 3.0 * fixed.standard_normal(d)
    rank = min(rank, d)
    basis = np.linalg.qr(fixed.standard_normal((d, rank)))[0]
    scales = np.logspace(0.3, -1.0, rank)
    rows = mean + (rng.standard_normal((n, rank)) * scales) @ basis.T
    return (rows + noise * rng.standard_normal((n, d))).astype(dtype)


def pruned(bank, metric: str, **kwargs) -> ops.KNNIndex:
    index = ops.KNNIndex(bank, metric, mode="pruned", **kwargs)
    assert index.pruned
    return index


def check(index: ops.KNNIndex, queries, bank, k: int, metric: str) -> None:
    values, indices = index.search(queries, k)
    assert_knn(values, indices, queries, bank, k, metric)
    if metric == "cosine":  # l2's expanded form blurs near-ties at the scale of the norms
        assert_exact_sets(indices, queries, bank, k, metric)


# ---------------------------------------------------------------------------- agreement


@needs_ext
@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize(("n", "d", "k", "tile"), [
    (2500, 300, 1, None), (2500, 300, 7, 37), (1001, 77, 10, 64), (300, 20, 300, 16),
])
def test_matches_reference_on_anisotropic_banks(rng, metric, n, d, k, tile):
    bank, queries = cone(rng, n, d), cone(rng, 40, d)
    index = pruned(bank, metric, tile_rows=tile)
    check(index, queries, bank, k, metric)
    if k < n // 10:
        assert index.stats()["last_search"]["survivor_rate"] < 0.5  # it did prune


@needs_ext
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_many_tiles_in_several_parallel_regions(rng, dtype):
    """d = 1024 with 16-row tiles: the kernel's parallel regions (8 MB of fp32 rows, i.e. 2048
    rows) split the bank in three, the last one ending in a partial tile."""
    bank, queries = cone(rng, 5000, 1024, dtype=dtype), cone(rng, 40, 1024)
    check(pruned(bank, "cosine", tile_rows=16), queries, bank.astype(np.float32), 7, "cosine")


@needs_ext
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_equals_dense_kernel(rng, metric):
    bank, queries = cone(rng, 3000, 257), cone(rng, 64, 257)
    values, indices = pruned(bank, metric, tile_rows=100).search(queries, 5)
    dense_values, dense_indices = ops.knn(queries, bank, 5, metric)
    if metric == "l2":  # both use the expanded form: compare squared distances at its scale
        scale = 2 * float((bank.astype(np.float64) ** 2).sum(1).max())
        np.testing.assert_allclose(values**2, dense_values**2, rtol=0, atol=64 * 2**-24 * scale)
        return
    np.testing.assert_allclose(values, dense_values, rtol=1e-5, atol=1e-5)
    # the same rows wherever the dense kernel's 5th and 6th values are apart
    d6 = np.take_along_axis(ops.knn(queries, bank, 6, metric)[0], np.array([[4, 5]]), 1)
    apart = np.abs(d6[:, 0] - d6[:, 1]) > 1e-5
    assert apart.sum() > 10
    for r in np.flatnonzero(apart):
        assert set(indices[r].tolist()) == set(dense_indices[r].tolist())


@needs_ext
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_near_identical_rows(rng, metric):
    base = gaussian(rng, 1, 128)
    bank = (base + 1e-3 * gaussian(rng, 800, 128)).astype(np.float32)  # cosine ~0.9999
    queries = (base + 1e-3 * gaussian(rng, 12, 128)).astype(np.float32)
    check(pruned(bank, metric, tile_rows=50), queries, bank, 3, metric)


@needs_ext
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_rows_inside_the_subspace_have_zero_residual(rng, metric):
    d = 96
    basis = np.linalg.qr(rng.standard_normal((d, 6)))[0]
    bank = (rng.standard_normal((600, 6)) @ basis.T).astype(np.float32)
    queries = (rng.standard_normal((20, 6)) @ basis.T).astype(np.float32)
    index = pruned(bank, metric, rank=8)
    # zero up to the fp32 build's widening, sqrt(4 e) |b| (zero with a float64 build)
    norms = 1.0 if metric == "cosine" else np.linalg.norm(bank, axis=1)
    widening = math.sqrt(4 * index.projection_error() * 1.0001) * norms
    assert bool((index.bank_res.numpy() <= widening + 1e-6).all())
    assert_projections_within_their_bound(index, bank, unit=metric == "cosine")
    check(index, queries, bank, 4, metric)


@needs_ext
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_duplicates_and_a_query_equal_to_a_row(rng, metric):
    rows = cone(rng, 150, 64)
    bank = np.concatenate([rows, rows, rows[:30]])  # every row at least twice
    queries = np.concatenate([rows[:5], cone(rng, 5, 64)])
    values, indices = pruned(bank, metric, tile_rows=32).search(queries, 2)
    assert_knn(values, indices, queries, bank, 2, metric)
    for r in range(5):  # the query itself, then its copy: ties go to the lower index
        assert sorted(indices[r].tolist()) == indices[r].tolist()
        assert indices[r, 0] % 150 == r


@needs_ext
@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("scale", [1e-15, 1e15])
def test_extreme_norms(rng, metric, scale):
    bank, queries = cone(rng, 700, 48), cone(rng, 10, 48)
    if metric == "cosine":  # per-row magnitudes spanning 1e-15 .. 1e15
        bank = bank * np.logspace(-15, 15, 700, dtype=np.float64)[:, None].astype(np.float32)
        queries = queries * np.float32(scale)
    else:
        bank, queries = bank * np.float32(scale), queries * np.float32(scale)
    check(pruned(bank, metric), queries, bank, 3, metric)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_half_precision_banks_and_queries(rng, dtype, metric):
    bank = torch.from_numpy(cone(rng, 900, 80)).to(dtype)
    queries = torch.from_numpy(cone(rng, 16, 80)).to(dtype)
    values, indices = pruned(bank, metric, tile_rows=128).search(queries, 4)
    assert values.dtype == torch.float32
    assert_knn(values, indices, queries, bank, 4, metric)


@needs_ext
def test_zero_rows_and_zero_queries(rng):
    bank = cone(rng, 400, 40)
    bank[::7] = 0.0
    queries = np.concatenate([np.zeros((2, 40), np.float32), cone(rng, 6, 40)])
    check(pruned(bank, "cosine"), queries, bank, 5, "cosine")


@needs_ext
def test_memmap_and_shards(rng, tmp_path):
    bank = cone(rng, 1500, 64)
    path = tmp_path / "bank.npy"
    np.save(path, bank)
    mm = np.load(path, mmap_mode="r")
    queries = cone(rng, 12, 64)
    for source in (mm, [mm[:700], mm[700:1499], mm[1499:]]):
        check(pruned(source, "cosine", tile_rows=90), queries, bank, 6, "cosine")


def assert_projections_within_their_bound(index: ops.KNNIndex, bank: np.ndarray, *,
                                          unit: bool) -> None:
    """The bank's fp32-GEMM projections are within ``e |b|`` of the float64 ones (plus their fp32
    storage), and its residual norms bound the true ones from above, widened by no more than
    the ``e`` term allows (so an over-wide residual fails too)."""
    rows = torch.from_numpy(bank.astype(np.float32)).double()
    norms = rows.norm(dim=1, keepdim=True)
    if unit:
        rows = rows / norms.clamp_min(1e-300)
        norms = torch.ones_like(norms)
    exact = rows @ index.basis
    e = index.projection_error()
    got = index.bank_proj.double()
    # fp32 storage of the projections (absolute where they are subnormal: the kernel's margin is
    # relative to |q|² + |b|², and l2 queries stay above 2^-50, so that costs nothing there)
    slack = 2.0**-23 * exact.norm(dim=1) + math.sqrt(exact.shape[1]) * 2.0**-149
    assert bool(((got - exact).norm(dim=1) <= e * norms[:, 0] + slack).all())
    residual = (rows - exact @ index.basis.T).norm(dim=1)
    stored = index.bank_res.double()
    assert bool((stored >= residual).all())
    # |c̃| - e|b| >= |c| - 2e|b|, so the stored r² <= |b|² - (|c| - 2e|b|)² <= r² + 4e|b|²
    widest = torch.sqrt(residual**2 + 4 * e * norms[:, 0] ** 2) * (1 + 2.0**-20)
    assert bool((stored <= widest + 2.0**-19 * norms[:, 0] + 2.0**-149).all())


@needs_ext
@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("exponent", [-140, -30, 0, 50])
def test_fp32_gemm_projections_stay_within_their_bound(rng, metric, exponent):
    """At any magnitude the pruned kernel accepts, entries spread over 40 binades: the build's
    fp32 GEMM is covered by ``e``. (l2 rows near 2^-140 are subnormal: without the per-row power
    of two before the GEMM their products would underflow.)"""
    if metric == "cosine" and exponent < -30:
        pytest.skip("cosine rows below kNormEps (1e-12) count as zero rows")
    bank = cone(rng, 3000, 200).astype(np.float64)
    bank *= np.exp2(rng.integers(-40, 1, bank.shape))  # entries from 2^-40 to 1 of the cone's
    bank = (bank * 2.0**exponent).astype(np.float32)
    index = pruned(bank, metric, rank=16)
    assert_projections_within_their_bound(index, bank, unit=metric == "cosine")


@needs_ext
def test_build_chunks_and_partial_groups_of_several_shards(rng):
    """The build projects 2**23 values per call, straight into the grouped layout: shards that
    take two calls and end in partial groups of 16 get every row's projection, residual and
    term in place (against float64), zero padding, and a non-finite row named globally."""
    d = 2048  # 4,096 rows per build call
    bank = cone(rng, 8220, d, rank=4)
    shards = [bank[:4100], bank[4100:8213], bank[8213:]]
    index = pruned(shards, "cosine", rank=8)
    assert_projections_within_their_bound(index, bank, unit=True)
    norms = torch.from_numpy(bank).double().norm(dim=1)
    assert torch.allclose(index.bank_term.double(), 1 / norms, rtol=1e-6, atol=0)
    assert index.bank_groups.shape == (257 + 258 + 1, 8, 16)  # ceil(4100 / 16), ceil(4113 / 16)
    for last, used in ((256, 4), (514, 1), (515, 7)):  # every shard's last group is padded
        assert bool((index.bank_groups[last, :, used:] == 0).all())
        assert bool((index.bank_groups[last, :, :used] != 0).any())
    check(index, cone(rng, 5, d, rank=4), bank, 3, "cosine")
    shards[1] = shards[1].copy()
    shards[1][4097, 9] = np.inf  # the second build call of shard 1
    with pytest.raises(InputError, match=str(4100 + 4097)):
        ops.KNNIndex(shards, "cosine", mode="pruned", rank=8, sample_rows=16)


@needs_ext
@given(
    n=st.integers(4, 300), d=st.integers(4, 70), n_q=st.integers(1, 9), k_frac=st.floats(0, 1),
    rank=st.integers(1, 12), tile=st.integers(1, 120), noise=st.sampled_from([0.0, 1e-3, 0.3]),
    metric=st.sampled_from(["cosine", "l2"]), seed=st.integers(0, 2**16),
)
@HYPOTHESIS
def test_hypothesis_matches_reference(n, d, n_q, k_frac, rank, tile, noise, metric, seed):
    rng = np.random.default_rng(seed)
    bank, queries = cone(rng, n, d, noise=noise), cone(rng, n_q, d, noise=noise)
    k = 1 + round(k_frac * (n - 1))
    index = ops.KNNIndex(bank, metric, mode="pruned", rank=rank, tile_rows=tile)
    values, indices = index.search(queries, k)
    assert_knn(values, indices, queries, bank, k, metric)


@needs_ext
@given(
    n=st.integers(1, 200), d=st.integers(2, 64), rank=st.integers(1, 16),
    noise=st.sampled_from([0.0, 1e-4, 0.05, 1.0]), metric=st.sampled_from(["cosine", "l2"]),
    seed=st.integers(0, 2**16),
)
@HYPOTHESIS
def test_hypothesis_bound_never_excludes_a_pair(n, d, rank, noise, metric, seed):
    """bound + margin >= the kernel's exact score for every (query, row) pair."""
    rng = np.random.default_rng(seed)
    bank, queries = cone(rng, n, d, noise=noise), cone(rng, 7, d, noise=noise)
    index = ops.KNNIndex(bank, metric, mode="pruned", rank=rank)
    q = torch.from_numpy(queries)
    if metric == "cosine":
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
    a, r_q, q_sq = index.project(q, unit=False)
    bound = a @ index.bank_proj.T + r_q[:, None] * index.bank_res[None, :]
    every_row = torch.arange(n).expand(q.shape[0], n).contiguous()
    exact = torch.full((q.shape[0], n), math.nan)
    torch.ops.ood_zoo.knn_pruned_rescore(
        q.contiguous(), q_sq, torch.from_numpy(bank), 0, every_row, index.bank_term, metric, exact
    )
    assert not bool(exact.isnan().any())
    margin = index.margin()
    if metric == "cosine":
        assert bool((bound + margin >= exact).all())
    else:
        scale = q_sq[:, None] + index.bank_term[None, :]
        assert bool((scale * (1 - margin) - 2 * bound <= exact).all())


# ---------------------------------------------------------------------------- fallback, state


@needs_ext
def test_auto_mode_falls_back_on_isotropic_banks(rng):
    bank, queries = gaussian(rng, 4096, 256), gaussian(rng, 8, 256)
    index = ops.KNNIndex(bank, "cosine")
    stats = index.stats()
    assert not index.pruned
    assert stats["pruned"] is False
    assert "residual energy" in stats["dense_reason"]
    assert stats["residual_energy"] > 0.5
    values, indices = index.search(queries, 3)
    assert index.stats()["last_search"]["path"] == "dense"
    assert_knn(values, indices, queries, bank, 3, "cosine")


@needs_ext
def test_auto_mode_prunes_anisotropic_banks(rng):
    bank, queries = cone(rng, 4096, 256), cone(rng, 300, 256)
    index = ops.KNNIndex(bank, "cosine")
    assert index.pruned
    assert index.stats()["residual_energy"] < 0.05
    values, indices = index.search(queries, 2)
    last = index.stats()["last_search"]
    assert last["path"] == "pruned"
    assert last["survivor_rate"] < 0.2
    assert_knn(values, indices, queries, bank, 2, "cosine")


@needs_ext
def test_high_survivor_rate_finishes_densely(rng, monkeypatch):
    monkeypatch.setattr(ops.index, "INDEX_MAX_SURVIVOR_RATE", 0.0)
    monkeypatch.setattr(ops.index, "INDEX_PROBE_QUERIES", 5)
    bank, queries = cone(rng, 4096, 256), cone(rng, 20, 256)
    index = ops.KNNIndex(bank, "l2")
    values, indices = index.search(queries, 3)
    last = index.stats()["last_search"]
    assert last["path"] == "pruned+dense"
    assert "first 5 queries" in last["reason"]
    assert_knn(values, indices, queries, bank, 3, "l2")
    values, indices = index.search(queries[:4], 3)  # the observed rate now decides up front
    last = index.stats()["last_search"]
    assert last["path"] == "dense"
    assert "5 earlier queries with k=3" in last["reason"]
    assert_knn(values, indices, queries[:4], bank, 3, "l2")
    index.search(queries[:4], 2)  # another k is judged afresh (a small batch: no probe)
    assert index.stats()["last_search"]["path"] == "pruned"
    index.search(queries[4:5], 2)  # 4 queries are not enough evidence to switch: still pruned
    assert index.stats()["last_search"]["path"] == "pruned"
    index.search(queries[5:6], 2)  # now 5 observed queries, at a rate above 0
    assert index.stats()["last_search"]["path"] == "dense"


def test_small_banks_and_torch_backend_search_densely(rng, monkeypatch):
    bank, queries = cone(rng, 100, 300), cone(rng, 4, 300)
    index = ops.KNNIndex(bank, "cosine")
    assert not index.pruned
    check(index, queries, bank, 2, "cosine")
    monkeypatch.setenv("OOD_ZOO_BACKEND", "torch")
    assert "ext backend" in ops.KNNIndex(cone(rng, 5000, 300), "cosine").stats()["dense_reason"]
    with pytest.raises(BackendUnavailableError, match="mode='pruned'"):
        ops.KNNIndex(bank, "cosine", mode="pruned")


@needs_ext
def test_float64_queries_take_the_dense_path(rng):
    bank = cone(rng, 500, 32)
    queries = cone(rng, 3, 32, dtype=np.float64)
    index = pruned(bank, "cosine")
    values, indices = index.search(queries, 2)
    assert values.dtype == np.float64
    assert index.stats()["last_search"]["path"] == "dense"
    assert_knn(values, indices, queries, bank, 2, "cosine")


@needs_ext
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_state_round_trip(rng, metric):
    bank, queries = cone(rng, 700, 40), cone(rng, 9, 40)
    index = pruned(bank, metric)
    state = index.state_dict()
    again = ops.KNNIndex.from_state(bank, metric, state)
    assert again.pruned
    for a, b in zip(index.search(queries, 3), again.search(queries, 3), strict=True):
        np.testing.assert_array_equal(a, b)
    dense = ops.KNNIndex(bank, metric, mode="dense")
    reloaded = ops.KNNIndex.from_state(bank, metric, dense.state_dict())
    assert not reloaded.pruned
    assert reloaded.stats()["dense_reason"] == "saved as a dense index"


@needs_ext
def test_state_that_does_not_fit_is_refused(rng):
    bank = cone(rng, 300, 40)
    state = pruned(bank, "cosine").state_dict()
    with pytest.raises(InputError, match="proj"):
        ops.KNNIndex.from_state(bank[:200], "cosine", state)
    bad = dict(state, res=torch.full_like(state["res"], math.nan))
    with pytest.raises(InputError, match="non-finite"):
        ops.KNNIndex.from_state(bank, "cosine", bad)


def test_bad_arguments(rng):
    bank = cone(rng, 50, 8)
    with pytest.raises(ValueError, match="metric"):
        ops.KNNIndex(bank, "dot")
    with pytest.raises(ValueError, match="mode"):
        ops.KNNIndex(bank, mode="fast")
    with pytest.raises(InputError, match="rank"):
        ops.KNNIndex(bank, rank=0)
    index = ops.KNNIndex(bank)
    with pytest.raises(InputError, match="features"):
        index.search(cone(rng, 2, 9), 1)
    with pytest.raises(InputError, match="larger than the bank"):
        index.search(cone(rng, 2, 8), 51)
    with pytest.raises(InputError, match="positive int"):
        index.search(cone(rng, 2, 8), 0)


@needs_ext
def test_non_finite_bank_is_named(rng):
    bank = cone(rng, 300, 40)
    bank[123, 5] = np.nan
    with pytest.raises(InputError, match="123"):
        ops.KNNIndex(bank, "cosine", mode="pruned", sample_rows=10)
    with pytest.raises(InputError, match="NaN"):
        ops.KNNIndex(bank, "cosine", mode="pruned")


# ---------------------------------------------------------------------------- register blockings
#: Searches every case of the inputs file in a fresh process (OOD_ZOO_CPU_KERNELS is read once).
BLOCKING_SCRIPT = """
import sys
import numpy as np, torch
from ood_zoo import ops
torch.set_num_threads(1)
inputs, out = np.load(sys.argv[1]), {"kernels": np.array(ops.cpu_kernels())}
for case in sorted({key.rsplit("-", 1)[0] for key in inputs.files}):
    metric, k, tile = case.split("-")[0], int(inputs[case + "-k"]), int(inputs[case + "-tile"])
    index = ops.KNNIndex(inputs[case + "-bank"], metric, mode="pruned", tile_rows=tile or None)
    out[case + "-values"], out[case + "-indices"] = index.search(inputs[case + "-queries"], k)
np.savez(sys.argv[2], **out)
"""
#: (rows, dim, queries, k, tile rows; 0: the default) of each case, run for cosine and l2.
BLOCKING_CASES = ((3000, 257, 13, 5, 100), (1200, 64, 8, 1, 0), (900, 100, 3, 20, 48))


def _blocking_run(inputs, tmp_path, choice: str) -> dict[str, np.ndarray]:
    path = tmp_path / f"{choice or 'auto'}.npz"
    env = {**os.environ, "OOD_ZOO_BACKEND": "ext", "OOD_ZOO_CPU_KERNELS": choice,
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", BLOCKING_SCRIPT, str(inputs), str(path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with np.load(path) as data:
        return dict(data)


@needs_ext
def test_avx2_and_avx512_blockings_give_the_same_bits(rng, tmp_path):
    """Both register blockings of the pruned kernels (``OOD_ZOO_CPU_KERNELS``) sum every lane in
    the same order: the searches agree bit for bit, and with the float64 reference. On an AVX2
    CPU both runs take the AVX2 kernels, and the test checks the override's plumbing."""
    cases = {}
    for metric in ("cosine", "l2"):
        for n, d, n_q, k, tile in BLOCKING_CASES:
            case = f"{metric}-{n}x{d}"
            cases |= {f"{case}-bank": cone(rng, n, d), f"{case}-queries": cone(rng, n_q, d),
                      f"{case}-k": np.array(k), f"{case}-tile": np.array(tile)}
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, **cases)
    auto, narrow = _blocking_run(inputs, tmp_path, ""), _blocking_run(inputs, tmp_path, "avx2")
    assert str(narrow["kernels"]) in ("avx2", "generic")
    assert str(auto["kernels"]) in ("avx512", "avx2", "generic")
    assert auto.keys() == narrow.keys()
    assert len(auto) == 1 + 2 * 2 * len(BLOCKING_CASES)
    for key in auto.keys() - {"kernels"}:
        np.testing.assert_array_equal(auto[key], narrow[key], err_msg=key)
        if key.endswith("-values"):
            case, metric = key[: -len("-values")], key.split("-")[0]
            assert_knn(auto[key], auto[case + "-indices"], cases[case + "-queries"],
                       cases[case + "-bank"], int(cases[case + "-k"]), metric)


@needs_ext
def test_unknown_cpu_kernels_choice_is_an_error():
    code = "from ood_zoo import ops; ops.cpu_kernels()"
    env = {**os.environ, "OOD_ZOO_CPU_KERNELS": "sse9"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "OOD_ZOO_CPU_KERNELS must be auto or avx2, got 'sse9'" in proc.stderr
