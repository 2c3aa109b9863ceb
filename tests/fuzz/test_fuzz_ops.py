"""Fuzzing the kernels: ``ops.knn`` on every backend, ``KNNIndex`` and ``ops.mahalanobis``.

Random shapes (n = 1, d = 1, k = n and k > n included), dtypes, memory layouts, magnitudes from
1e-30 to 1e30, NaN/Inf placements and parameters, against float64 references computed here from
the values actually given (``tests/reference.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import torch
from fuzzing import (
    BACKENDS,
    SPECIALS,
    Given,
    assert_clear_error,
    assert_finite,
    attempt,
    backend,
    base_values,
    close,
    fuzz_settings,
    in_safe_range,
    lay_out,
    layouts,
    magnitudes,
    place_special,
    to_float64,
    tolerate_known,
    unit_roundoff,
)
from hypothesis import example, given
from hypothesis import strategies as st

from ood_zoo import ops
from ood_zoo.errors import InputError

pytestmark = pytest.mark.fuzz

DTYPES = st.sampled_from(["float16", "bfloat16", "float32", "float64"])


def pairwise(queries: np.ndarray, bank: np.ndarray, metric: str) -> np.ndarray:
    """``[Q, N]`` cosine similarities or L2 distances (explicit differences)."""
    if metric == "cosine":
        return ref.cosine_matrix(queries, bank)
    return ref.euclidean_matrix(queries, bank)


def knn_reference(queries: np.ndarray, bank: np.ndarray, k: int, metric: str) -> np.ndarray:
    """The k best values per query: similarities descending, distances ascending."""
    sign = -1.0 if metric == "cosine" else 1.0
    return sign * np.sort(sign * pairwise(queries, bank, metric), axis=1)[:, :k]


def knn_tolerance(q: np.ndarray, b: np.ndarray, metric: str, u: float) -> tuple[float, float]:
    """``(atol, rtol)``: cosine to ``~d u``; L2, from the expanded ``|q|² + |b|² - 2 q·b``, to
    ``~sqrt(d u)`` of the largest norm near distance 0."""
    d = q.shape[1]
    if metric == "cosine":
        return 64 * d * u, 0.0
    scale = max(float(np.linalg.norm(q, axis=1).max()), float(np.linalg.norm(b, axis=1).max()))
    return 8 * np.sqrt(d * u) * scale, 64 * d * u


def case_tags(case: dict, *given: Given) -> dict:
    """What ``fuzzing.KNOWN`` reads: layouts, backend, magnitudes."""
    truths = [g.truth for g in given]
    return {
        "layouts": {g.layout for g in given}, "backend": case.get("backend"),
        "safe_range": in_safe_range(*truths),
    }


def non_finite(*given: Given) -> bool:
    """Whether any input holds NaN/Inf (placed, or from a cast that overflowed)."""
    return not all(np.isfinite(g.truth).all() for g in given)


@st.composite
def knn_cases(draw: st.DrawFn) -> dict:
    dtype = draw(DTYPES)
    n, d, nq = draw(st.integers(1, 12)), draw(st.integers(1, 8)), draw(st.integers(1, 4))
    return {
        "dtype": dtype, "n": n, "d": d, "nq": nq,
        "k": draw(st.one_of(st.sampled_from([1, n, n + 1]), st.integers(1, n))),
        "scale": draw(magnitudes(dtype)), "metric": draw(st.sampled_from(["cosine", "l2"])),
        "backend": draw(st.sampled_from(BACKENDS)),
        "bank": draw(layouts(dtype)), "queries": draw(layouts(dtype)),
        "on_rows": draw(st.booleans()),  # queries equal to bank rows: distance 0, cosine 1
        "special": draw(st.sampled_from(SPECIALS)), "special_in_bank": draw(st.booleans()),
        "chunk_rows": draw(st.one_of(st.none(), st.integers(1, n + 2))),
        "precision": draw(st.sampled_from([None, "exact", "bf16"])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


EDGE = {"dtype": "float32", "scale": 1.0, "metric": "l2", "backend": "ext",
        "bank": ("numpy", "c"), "queries": ("numpy", "c"), "on_rows": True, "special": None,
        "special_in_bank": False, "chunk_rows": None, "precision": None, "seed": 0}


@fuzz_settings(4)
@given(case=knn_cases())
@example(case={**EDGE, "n": 1, "d": 1, "nq": 1, "k": 1})
@example(case={**EDGE, "n": 3, "d": 2, "nq": 2, "k": 4})  # k > n
@example(case={**EDGE, "n": 5, "d": 3, "nq": 3, "k": 5, "metric": "cosine", "chunk_rows": 1})
def test_knn_is_exact_or_a_clear_error(case):
    bank, rng = base_values(case["seed"], (case["n"], case["d"]), case["scale"])
    queries = rng.normal(size=(case["nq"], case["d"])) * case["scale"]
    if case["on_rows"]:
        queries[: min(case["nq"], case["n"])] = bank[: case["nq"]]
    place_special(bank if case["special_in_bank"] else queries, case["special"], rng)
    b = lay_out(bank, case["dtype"], *case["bank"])
    q = lay_out(queries, case["dtype"], *case["queries"])
    tags = case_tags(case, q, b)
    invalid = non_finite(q, b) or case["k"] > case["n"]
    with tolerate_known(tags), backend(case["backend"]):
        result, err = attempt(ops.knn, q.value, b.value, case["k"], case["metric"],
                              chunk_rows=case["chunk_rows"], precision=case["precision"])
        if err is not None:
            assert_clear_error(err, must=InputError if invalid else None)
            assert invalid or not tags["safe_range"], f"valid input refused: {err}"
            return
        assert not invalid, "NaN/Inf or k > n was not refused"
        values, indices = result
        assert isinstance(values, type(q.value) if isinstance(q.value, torch.Tensor)
                          else np.ndarray)
        got = assert_finite(values, "knn values")
        want = knn_reference(q.truth, b.truth, case["k"], case["metric"])
        u = unit_roundoff(case["dtype"], case["backend"])
        atol, rtol = knn_tolerance(q.truth, b.truth, case["metric"], u)
        close(got, want, atol=atol, rtol=rtol, what=f"knn {case['metric']}")
        idx = to_float64(indices).astype(np.int64)
        assert ((idx >= 0) & (idx < case["n"])).all(), idx
        full = pairwise(q.truth, b.truth, case["metric"])
        close(np.take_along_axis(full, idx, axis=1), want, atol=atol, rtol=rtol,
              what="knn values of the returned indices")


@st.composite
def index_cases(draw: st.DrawFn) -> dict:
    n, d = draw(st.integers(1, 40)), draw(st.integers(1, 24))
    return {
        "n": n, "d": d, "nq": draw(st.integers(1, 5)),
        "k": draw(st.one_of(st.sampled_from([1, n, n + 1]), st.integers(1, n))),
        "rank": draw(st.one_of(st.none(), st.integers(1, 8))),
        "mode": draw(st.sampled_from(["auto", "pruned", "dense"])),
        "metric": draw(st.sampled_from(["cosine", "l2"])),
        "dtype": draw(st.sampled_from(["float32", "float64", "bfloat16"])),
        "scale": draw(magnitudes("float32")), "low_rank": draw(st.booleans()),
        "special": draw(st.sampled_from(SPECIALS)),
        "tile_rows": draw(st.one_of(st.none(), st.integers(1, 16))),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@fuzz_settings(2)
@given(case=index_cases())
def test_knn_index_search_is_exact_or_a_clear_error(case):
    rng = np.random.default_rng(case["seed"])
    n, d = case["n"], case["d"]
    if case["low_rank"]:  # what the pruned search is for: most energy in a few directions
        basis = rng.normal(size=(min(3, d), d))
        bank = rng.normal(size=(n, basis.shape[0])) @ basis + 1e-3 * rng.normal(size=(n, d))
    else:
        bank = rng.normal(size=(n, d))
    bank *= case["scale"]
    queries = np.concatenate([rng.normal(size=(case["nq"], d)) * case["scale"], bank[:2]])
    place_special(bank, case["special"], rng)
    b = lay_out(bank, case["dtype"], "torch", "c")
    q = lay_out(queries, case["dtype"], "torch", "c")
    tags = case_tags(case, q, b)
    invalid = non_finite(b) or case["k"] > n

    def build_and_search():
        index = ops.KNNIndex(b.value, case["metric"], rank=case["rank"], mode=case["mode"],
                             tile_rows=case["tile_rows"])
        return index.search(q.value, case["k"])

    with tolerate_known(tags):
        result, err = attempt(build_and_search)
        if err is not None:
            assert_clear_error(err, must=InputError if invalid else None)
            # mode="pruned" needs the ext backend; extreme magnitudes may be refused
            assert invalid or case["mode"] == "pruned" or not tags["safe_range"], err
            return
        assert not invalid, "NaN/Inf or k > n was not refused"
        got = assert_finite(result[0], "KNNIndex values")
        want = knn_reference(q.truth, b.truth, case["k"], case["metric"])
        u = unit_roundoff("float64" if case["dtype"] == "float64" else "float32")
        atol, rtol = knn_tolerance(q.truth, b.truth, case["metric"], u)
        close(got, want, atol=atol, rtol=rtol, what=f"KNNIndex {case['mode']}")


@st.composite
def mahalanobis_cases(draw: st.DrawFn) -> dict:
    dtype = draw(DTYPES)
    d = draw(st.integers(1, 6))
    return {
        "dtype": dtype, "d": d, "r": draw(st.integers(1, d)), "c": draw(st.integers(1, 4)),
        "nq": draw(st.integers(1, 6)), "scale": draw(magnitudes(dtype)),
        "w_scale": draw(magnitudes(dtype)), "on_mean": draw(st.booleans()),
        "center": draw(st.booleans()), "backend": draw(st.sampled_from(BACKENDS)),
        "layout": draw(layouts(dtype)), "special": draw(st.sampled_from(SPECIALS)),
        "chunk_rows": draw(st.one_of(st.none(), st.integers(1, 7))),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@fuzz_settings(3)
@given(case=mahalanobis_cases())
def test_mahalanobis_is_exact_or_a_clear_error(case):
    rng = np.random.default_rng(case["seed"])
    d, dtype = case["d"], case["dtype"]
    means = rng.normal(size=(case["c"], d)) * case["scale"]
    queries = rng.normal(size=(case["nq"], d)) * case["scale"]
    if case["on_mean"]:
        queries[0] = means[-1]
    place_special(queries, case["special"], rng)
    kind = case["layout"][0]
    q = lay_out(queries, dtype, *case["layout"])
    w = lay_out(rng.normal(size=(d, case["r"])) * case["w_scale"], dtype, kind, "c")
    mu = lay_out(means, dtype, kind, "c")
    center = lay_out(means.mean(axis=0, keepdims=True), dtype, kind, "c")
    tags = case_tags(case, q, w, mu)
    invalid = non_finite(q, w, mu, center)
    out = np.float64 if dtype == "float64" else np.float32
    if not invalid:
        z = (q.truth[:, None, :] - mu.truth[None]) @ w.truth  # [Q, C, r], explicit differences
        d2 = (z**2).sum(axis=-1)
        want = d2.min(axis=1)
        overflows = want.max() > np.finfo(out).max / 16  # then inf, or an error, is honest
    with tolerate_known(tags), backend(case["backend"]):
        result, err = attempt(ops.mahalanobis, q.value, w.value, mu.value,
                              center=center.value[0] if case["center"] else None,
                              chunk_rows=case["chunk_rows"])
        if err is not None:
            assert_clear_error(err, must=InputError if invalid else None)
            assert invalid or overflows or not tags["safe_range"], f"valid input refused: {err}"
            return
        assert not invalid, "NaN/Inf input was not refused"
        if overflows:
            return
        got = assert_finite(result[0], "mahalanobis min_d2")
        u = unit_roundoff(dtype)
        # the expanded |z|² + |n|² - 2 z·n loses ~u (|z|² + |n|²) to cancellation, and an
        # answer below the output's smallest normal number underflows
        m = mu.truth.mean(axis=0)
        norms = (((q.truth - m) @ w.truth) ** 2).sum(axis=1).max() + (
            ((mu.truth - m) @ w.truth) ** 2).sum(axis=1).max()
        atol = 64 * d * u * norms + 64 * float(np.finfo(out).tiny)
        close(got, want, atol=atol, rtol=64 * d * u, what="mahalanobis min_d2")
        picked = d2[np.arange(len(want)), to_float64(result[1]).astype(np.int64)]
        close(picked, want, atol=atol, rtol=64 * d * u, what="mahalanobis argmin's distance")


BAD_PARAMS = {
    "knn": [("k", 0), ("k", 2.5), ("k", "3"), ("k", True), ("chunk_rows", 0),
            ("chunk_rows", -1), ("chunk_rows", 2.5), ("chunk_rows", "3"), ("metric", "cos"),
            ("metric", None), ("precision", "fp8")],
    "mahalanobis": [("chunk_rows", 0), ("chunk_rows", -3), ("chunk_rows", 2.5),
                    ("chunk_rows", "3"), ("chunk_rows", True)],
}


@fuzz_settings(0.5)
@given(op_param=st.sampled_from([(op, p) for op, ps in BAD_PARAMS.items() for p in ps]),
       name=st.sampled_from(BACKENDS))
def test_bad_parameters_are_refused_by_name(op_param, name):
    op, (param, value) = op_param
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    # a bool chunk_rows passes an int check; that it is refused at all is root cause 3's job
    tags = {"bad_param_type": isinstance(value, bool) or not isinstance(value, int | None)}
    with tolerate_known(tags), backend(name):
        if op == "knn":
            _, err = attempt(ops.knn, x, x, **{"k": 2, "metric": "cosine", param: value})
        else:
            _, err = attempt(ops.mahalanobis, x, np.eye(3, dtype=np.float32), x[:2],
                             chunk_rows=value)
        assert err is not None, f"{op}({param}={value!r}) was accepted"
        assert_clear_error(err)
        assert param in str(err), f"the error does not name {param!r}: {err}"
