"""Tests of ood_zoo.metrics: hand-computed values, sklearn as oracle, brute force, inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from ood_zoo import metrics
from ood_zoo.metrics import (
    METRIC_NAMES,
    evaluate,
    format_table,
    fpr_at_tpr,
    roc_curve,
)

SETTINGS = settings(max_examples=50, deadline=None)


# --------------------------------------------------------------------------------------------
# Strategies and references
# --------------------------------------------------------------------------------------------


def _score_lists(max_size: int = 60) -> st.SearchStrategy[list[float]]:
    """Scores drawn from a handful of integers (heavy ties) or from general floats."""
    tied = st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=max_size)
    spread = st.lists(
        st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False), min_size=1, max_size=max_size
    )
    return st.one_of(tied, tied, spread)


tprs = st.one_of(
    st.sampled_from([0.95, 0.9, 0.5, 0.07, 0.3, 1.0]),
    st.floats(min_value=1e-6, max_value=1.0),
)


def _labelled(id_scores: list[float], ood_scores: list[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    s = np.r_[np.asarray(id_scores, float), np.asarray(ood_scores, float)]
    return y, s


def _brute_fpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float) -> float:
    """Largest candidate threshold keeping >= tpr of the ID scores, then the OOD acceptance."""
    best = -np.inf
    for t in np.unique(np.r_[id_scores, ood_scores]):
        if np.mean(id_scores >= t) >= tpr:
            best = max(best, float(t))
    return float(np.mean(ood_scores >= best))


def _brute_detection_error(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    candidates = [*np.unique(np.r_[id_scores, ood_scores]).tolist(), np.inf]
    errors = [
        0.5 * (1.0 - np.mean(id_scores >= t)) + 0.5 * np.mean(ood_scores >= t) for t in candidates
    ]
    return float(min(errors))


# --------------------------------------------------------------------------------------------
# Hand-computed cases
# --------------------------------------------------------------------------------------------


def test_hand_computed_small_case() -> None:
    # Descending pooled order: 3(ID) 2.5(OOD) 2(ID) 1(ID) 0.5(OOD).
    result = evaluate([3.0, 2.0, 1.0], [0.5, 2.5])
    # ID > OOD in 4 of 6 pairs.
    assert result["auroc"] == 2 / 3
    # 95% of 3 ID scores needs all 3: t = 1; OOD >= 1 is {2.5}.
    assert result["fpr95"] == 0.5
    # Precision at each ID hit: 1/1, 2/3, 3/4.
    assert result["aupr_in"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3, abs=1e-15)
    # Ascending order 0.5(OOD) 1 2 2.5(OOD) 3: precision at OOD hits 1/1, 2/4.
    assert result["aupr_out"] == pytest.approx((1 + 1 / 2) / 2, abs=1e-15)
    # Best threshold t = 1: TPR 1, FPR 1/2.
    assert result["detection_error"] == 0.25


def test_perfect_separation() -> None:
    result = evaluate([2.0, 3.0, 4.0], [0.0, 1.0])
    assert result == {
        "auroc": 1.0,
        "fpr95": 0.0,
        "aupr_in": 1.0,
        "aupr_out": 1.0,
        "detection_error": 0.0,
    }


def test_reversed_separation() -> None:
    result = evaluate([0.0, 1.0], [2.0, 3.0, 4.0])
    assert result["auroc"] == 0.0
    assert result["fpr95"] == 1.0
    assert result["detection_error"] == 0.5
    # ID found last: precision 1/4 then 2/5.
    assert result["aupr_in"] == pytest.approx((1 / 4 + 2 / 5) / 2, abs=1e-15)


def test_all_ties() -> None:
    result = evaluate([1.0, 1.0, 1.0], [1.0, 1.0])
    assert result["auroc"] == 0.5
    assert result["fpr95"] == 1.0
    assert result["aupr_in"] == pytest.approx(3 / 5, abs=1e-15)
    assert result["aupr_out"] == pytest.approx(2 / 5, abs=1e-15)
    assert result["detection_error"] == 0.5


def test_partial_ties_count_half() -> None:
    # Pairs: (2,1) win, (2,2) tie, (1,1) tie, (1,2) loss -> (1 + 0.5 + 0.5) / 4.
    assert evaluate([2.0, 1.0], [1.0, 2.0])["auroc"] == 0.5
    # (2 > 1) win, (2 = 2) tie -> 1.5 / 2.
    assert evaluate([2.0], [1.0, 2.0])["auroc"] == 0.75


def test_signed_zeros_tie() -> None:
    result = evaluate([0.0, 1.0], [-0.0])
    assert result["auroc"] == 0.75
    assert roc_curve([0.0, 1.0], [-0.0])[2].size == 3  # +inf, 1, 0


def test_fpr_threshold_rule_uses_largest_threshold_and_tpr() -> None:
    id_scores = np.arange(1.0, 21.0)  # 20 scores
    ood = [1.5, 2.0, 2.5]
    # 95% of 20 = 19 scores: t = 2 (the 19th largest); OOD >= 2 is {2, 2.5}.
    assert fpr_at_tpr(id_scores, ood, 0.95) == 2 / 3
    assert evaluate(id_scores, ood)["fpr95"] == 2 / 3
    # 90% = 18 scores: t = 3, no OOD accepted.
    assert fpr_at_tpr(id_scores, ood, 0.9) == 0.0
    assert evaluate(id_scores, ood, tpr=0.9)["fpr95"] == 0.0
    # 100%: t = 1, everything accepted.
    assert fpr_at_tpr(id_scores, ood, 1.0) == 1.0


def test_fpr_threshold_is_robust_to_rounding_of_tpr_times_n() -> None:
    # 0.07 * 100 == 7.000000000000001 in float64, but 7 / 100 >= 0.07 already: t must be the
    # 7th largest score (93), not the 8th (92).
    id_scores = np.arange(100.0)
    assert fpr_at_tpr(id_scores, [92.5], 0.07) == 0.0
    assert fpr_at_tpr(id_scores, [93.0], 0.07) == 1.0


def test_roc_curve_hand_computed() -> None:
    fpr, tpr, thresholds = roc_curve([3.0, 2.0, 1.0], [0.5, 2.5])
    np.testing.assert_array_equal(thresholds, [np.inf, 3.0, 2.5, 2.0, 1.0, 0.5])
    np.testing.assert_array_equal(tpr, [0.0, 1 / 3, 1 / 3, 2 / 3, 1.0, 1.0])
    np.testing.assert_array_equal(fpr, [0.0, 0.0, 0.5, 0.5, 0.5, 1.0])
    assert fpr.dtype == tpr.dtype == thresholds.dtype == np.float64


def test_roc_curve_merges_ties() -> None:
    fpr, tpr, thresholds = roc_curve([1.0, 1.0, 0.0], [1.0, 0.0])
    np.testing.assert_array_equal(thresholds, [np.inf, 1.0, 0.0])
    np.testing.assert_array_equal(tpr, [0.0, 2 / 3, 1.0])
    np.testing.assert_array_equal(fpr, [0.0, 0.5, 1.0])


def test_result_keys_and_types() -> None:
    result = evaluate(np.array([0.3, 0.9, 0.1]), np.array([0.2, 0.4]))
    assert tuple(result) == METRIC_NAMES
    assert all(type(value) is float for value in result.values())


# --------------------------------------------------------------------------------------------
# Agreement with sklearn and brute force
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(_score_lists(), _score_lists())
def test_matches_sklearn(id_scores: list[float], ood_scores: list[float]) -> None:
    y, s = _labelled(id_scores, ood_scores)
    result = evaluate(id_scores, ood_scores)
    assert result["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert result["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert result["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    assert metrics.auroc(id_scores, ood_scores) == result["auroc"]
    assert metrics.aupr_in(id_scores, ood_scores) == result["aupr_in"]
    assert metrics.aupr_out(id_scores, ood_scores) == result["aupr_out"]


@SETTINGS
@given(_score_lists(), _score_lists())
def test_roc_curve_matches_sklearn(id_scores: list[float], ood_scores: list[float]) -> None:
    y, s = _labelled(id_scores, ood_scores)
    sk_fpr, sk_tpr, sk_thresholds = sk_roc_curve(y, s, drop_intermediate=False)
    fpr, tpr, thresholds = roc_curve(id_scores, ood_scores)
    np.testing.assert_allclose(fpr, sk_fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, rtol=0, atol=1e-12)
    assert thresholds[0] == np.inf
    np.testing.assert_array_equal(thresholds[1:], sk_thresholds[1:])
    assert np.all(np.diff(thresholds) < 0)


@SETTINGS
@given(_score_lists(), _score_lists(), tprs)
def test_fpr_matches_brute_force(
    id_scores: list[float], ood_scores: list[float], tpr: float
) -> None:
    id_array, ood_array = np.asarray(id_scores), np.asarray(ood_scores)
    expected = _brute_fpr(id_array, ood_array, tpr)
    assert fpr_at_tpr(id_scores, ood_scores, tpr) == pytest.approx(expected, abs=1e-12)
    assert evaluate(id_scores, ood_scores, tpr=tpr)["fpr95"] == pytest.approx(expected, abs=1e-12)


@SETTINGS
@given(_score_lists(), _score_lists())
def test_detection_error_matches_brute_force(
    id_scores: list[float], ood_scores: list[float]
) -> None:
    expected = _brute_detection_error(np.asarray(id_scores), np.asarray(ood_scores))
    result = evaluate(id_scores, ood_scores)
    assert result["detection_error"] == pytest.approx(expected, abs=1e-12)
    assert metrics.detection_error(id_scores, ood_scores) == result["detection_error"]


def test_large_input_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    id_scores = rng.integers(0, 50, size=20_000).astype(float)
    ood_scores = rng.integers(-10, 40, size=15_000).astype(float)
    y, s = _labelled(id_scores, ood_scores)
    result = evaluate(id_scores, ood_scores)
    assert result["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert result["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert result["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)


# --------------------------------------------------------------------------------------------
# Input kinds
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_torch_input_equals_numpy(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(1)
    # Quarter-integers in [-8, 8) are exact in every dtype tested, bf16 included.
    id_np = rng.integers(-32, 32, size=200) / 4.0
    ood_np = rng.integers(-40, 24, size=150) / 4.0
    expected = evaluate(id_np, ood_np, tpr=0.9)
    got = evaluate(torch.tensor(id_np, dtype=dtype), torch.tensor(ood_np, dtype=dtype), tpr=0.9)
    assert got == expected
    fpr, tpr, thresholds = roc_curve(torch.tensor(id_np, dtype=dtype), ood_np)
    np.testing.assert_array_equal(thresholds, roc_curve(id_np, ood_np)[2])
    assert isinstance(fpr, np.ndarray)
    assert isinstance(tpr, np.ndarray)


def test_float64_tensor_keeps_full_precision() -> None:
    # 1 + 1e-12 and 1 are equal in fp32; computing in float64 keeps them apart.
    id_t = torch.tensor([1.0 + 1e-12], dtype=torch.float64)
    ood_t = torch.tensor([1.0], dtype=torch.float64)
    assert evaluate(id_t, ood_t)["auroc"] == 1.0
    assert evaluate(id_t, ood_t)["detection_error"] == 0.0


def test_torch_requires_grad_and_cuda_device() -> None:
    id_t = torch.tensor([3.0, 2.0, 1.0], requires_grad=True)
    ood_t = torch.tensor([0.5, 2.5])
    assert evaluate(id_t, ood_t)["auroc"] == 2 / 3
    if torch.cuda.is_available():
        assert evaluate(id_t.cuda(), ood_t.cuda().half())["auroc"] == 2 / 3


def test_lists_and_int_arrays_work() -> None:
    expected = evaluate(np.array([3.0, 2.0, 1.0]), np.array([0.5, 2.5]))
    assert evaluate([3, 2, 1], [0.5, 2.5]) == expected
    assert evaluate((3.0, 2.0, 1.0), np.array([0.5, 2.5], dtype=np.float32)) == expected
    assert evaluate(np.array([6, 4, 2]), np.array([1, 5])) == expected


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("id_scores", "ood_scores", "match"),
    [
        ([], [1.0], r"id_scores: is empty"),
        ([1.0], np.array([]), r"ood_scores: is empty"),
        ([1.0, np.nan], [1.0], r"id_scores: contains NaN"),
        ([1.0], [0.0, np.inf], r"ood_scores: contains Inf"),
        ([1.0], torch.tensor([-float("inf")]), r"ood_scores: contains Inf"),
        (torch.tensor([float("nan")], dtype=torch.bfloat16), [1.0], r"id_scores: contains NaN"),
        (np.ones((3, 2)), [1.0], r"id_scores: expected a 1-D"),
        ([1.0], torch.ones(2, 2), r"ood_scores: expected a 1-D"),
        (np.float64(1.0), [1.0], r"id_scores: expected a 1-D"),
        (["a", "b"], [1.0], r"id_scores: expected real numbers"),
        ([1.0], [[1.0], [2.0, 3.0]], r"ood_scores: cannot be read"),
    ],
)
def test_invalid_scores_raise(id_scores: object, ood_scores: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        evaluate(id_scores, ood_scores)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        roc_curve(id_scores, ood_scores)  # type: ignore[arg-type]


def test_large_value_half_overflow_is_reported() -> None:
    # 1e5 overflows fp16 to Inf; that must be caught rather than ranked.
    with pytest.raises(ValueError, match="id_scores: contains Inf"):
        evaluate(torch.tensor([1e5]).half(), [0.0])


@pytest.mark.parametrize("tpr", [0.0, -0.1, 1.5, float("nan"), "high"])
def test_invalid_tpr_raises(tpr: object) -> None:
    with pytest.raises(ValueError, match="tpr"):
        evaluate([1.0, 2.0], [0.0], tpr=tpr)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr([1.0, 2.0], [0.0], tpr)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Table rendering
# --------------------------------------------------------------------------------------------


def test_format_table_layout() -> None:
    rows = [
        {"detector": "cosine", "auroc": 0.912345, "fpr95": 0.5},
        {"detector": "maha", "auroc": np.float32(1.0), "n": 12},
    ]
    expected = "\n".join(
        [
            "detector   auroc   fpr95   n",
            "--------  ------  ------  --",
            "cosine    0.9123  0.5000   -",
            "maha      1.0000       -  12",
        ]
    )
    assert format_table(rows) == expected


def test_format_table_selects_and_orders_columns() -> None:
    rows = [{"auroc": 0.25, "detector": "knn", "extra": "x"}]
    table = format_table(rows, columns=["detector", "auroc"])
    assert table.splitlines() == ["detector   auroc", "--------  ------", "knn       0.2500"]


def test_format_table_renders_evaluate_output() -> None:
    row = {"name": "a", **evaluate([3.0, 2.0, 1.0], [0.5, 2.5])}
    lines = format_table([row], columns=["name", *METRIC_NAMES]).splitlines()
    assert lines[0].split() == ["name", *METRIC_NAMES]
    assert lines[2].split() == ["a", "0.6667", "0.5000", "0.8056", "0.7500", "0.2500"]
    assert len({len(line) for line in lines}) == 1  # fixed width
