"""Fuzzing the metrics: ``evaluate``, ``auroc``, ``fpr_at_tpr`` on tied, extreme, odd inputs.

The references here are written from the definitions by brute force: AUROC over all pairs,
FPR at the largest threshold that keeps a fraction ``tpr`` of ID scores, the detection error
over every threshold; scikit-learn's ``average_precision_score`` is the AUPR oracle.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fuzzing import TORCH_DTYPES, assert_clear_error, attempt, fuzz_settings, magnitudes
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from ood_zoo import metrics
from ood_zoo.errors import InputError

pytestmark = pytest.mark.fuzz


def auroc_reference(pos: np.ndarray, neg: np.ndarray) -> float:
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def fpr_reference(pos: np.ndarray, neg: np.ndarray, tpr: float) -> float:
    ordered = np.sort(pos)[::-1]
    k = next(k for k in range(1, pos.size + 1) if k / pos.size >= tpr)
    return float((neg >= ordered[k - 1]).mean())


def detection_error_reference(pos: np.ndarray, neg: np.ndarray) -> float:
    thresholds = np.append(np.unique(np.concatenate([pos, neg])), np.inf)
    return float(min(0.5 * (1 - (pos >= t).mean()) + 0.5 * (neg >= t).mean()
                     for t in thresholds))


@st.composite
def score_arrays(draw: st.DrawFn, n: int):
    """``(as given, float64 truth)``: tied or spread values, any dtype, kind and layout."""
    dtype = draw(st.sampled_from(["float16", "bfloat16", "float32", "float64", "int64"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):  # heavy ties
        values = rng.integers(-3, 4, size=n).astype(np.float64)
    else:
        values = rng.normal(size=n) * draw(magnitudes("float16" if dtype == "float16"
                                                      else "float64"))
    if dtype == "int64":
        values = np.round(values).clip(-2**62, 2**62)
    special = None if dtype == "int64" else draw(st.sampled_from([None, np.nan, np.inf, -np.inf]))
    if special is not None:
        values[rng.integers(n)] = special
    kind = "torch" if dtype == "bfloat16" else draw(st.sampled_from(["numpy", "torch", "list"]))
    if dtype == "int64":
        tensor = torch.from_numpy(values.astype(np.int64))
    else:
        tensor = torch.from_numpy(values).to(TORCH_DTYPES[dtype])
    truth = tensor.double().numpy().copy()
    if kind == "torch":
        given_ = tensor
    elif kind == "list":
        given_ = truth.tolist()
    else:
        array = tensor.numpy()
        layout = draw(st.sampled_from(["c", "negative", "big-endian", "strided"]))
        if layout == "negative":
            array = np.ascontiguousarray(array[::-1])[::-1]
        elif layout == "big-endian":
            array = array.astype(array.dtype.newbyteorder(">"))
        elif layout == "strided":
            wide = np.zeros(2 * n, dtype=array.dtype)
            wide[::2] = array
            array = wide[::2]
        given_ = array
    return given_, truth


@st.composite
def metric_cases(draw: st.DrawFn):
    n_id, n_ood = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    tpr = draw(st.one_of(st.sampled_from([0.95, 1.0, 1e-9, 0.5, 0.07]),
                         st.floats(1e-6, 1.0), st.sampled_from([0.0, -0.1, 1.5, math.nan])))
    return draw(score_arrays(n_id)), draw(score_arrays(n_ood)), tpr


@fuzz_settings(3)
@given(case=metric_cases())
def test_metrics_match_brute_force_or_refuse_clearly(case):
    (id_given, pos), (ood_given, neg), tpr = case
    bad = not (np.isfinite(pos).all() and np.isfinite(neg).all()) or not 0 < tpr <= 1
    result, err = attempt(metrics.evaluate, id_given, ood_given, tpr=tpr)
    if err is not None:
        assert_clear_error(err, must=InputError)
        assert bad, f"valid scores refused: {err}"
        return
    assert not bad, "NaN/Inf scores or a tpr outside (0, 1] were accepted"
    assert set(result) == set(metrics.METRIC_NAMES)
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in result.values()), result
    assert result["auroc"] == pytest.approx(auroc_reference(pos, neg), abs=1e-12)
    assert result["fpr95"] == pytest.approx(fpr_reference(pos, neg, tpr), abs=1e-12)
    assert result["detection_error"] == pytest.approx(detection_error_reference(pos, neg),
                                                      abs=1e-12)
    labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    pooled = np.r_[pos, neg]
    assert result["aupr_in"] == pytest.approx(average_precision_score(labels, pooled), abs=1e-9)
    assert result["aupr_out"] == pytest.approx(
        average_precision_score(1 - labels, -pooled), abs=1e-9)
    assert metrics.auroc(id_given, ood_given) == result["auroc"]
    assert metrics.fpr_at_tpr(id_given, ood_given, tpr) == result["fpr95"]


SHAPES = st.sampled_from([(0,), (3, 1), (1, 3), (2, 2), (), (2, 0)])


@fuzz_settings(0.5)
@given(shape=SHAPES, which=st.sampled_from(["id", "ood"]),
       kind=st.sampled_from(["numpy", "torch", "list", "ragged", "strings", "complex"]))
def test_malformed_scores_are_named(shape, which, kind):
    good = np.arange(4.0)
    if kind == "ragged":
        bad = [[1.0, 2.0], [3.0]]
    elif kind == "strings":
        bad = np.array(["a", "b"])
    elif kind == "complex":
        bad = np.ones(3, dtype=np.complex64)
    else:
        bad = np.ones(shape)
        bad = torch.from_numpy(bad) if kind == "torch" else bad.tolist() if kind == "list" else bad
    args = (bad, good) if which == "id" else (good, bad)
    with pytest.raises(InputError, match=f"{which}_scores") as info:
        metrics.evaluate(*args)
    assert_clear_error(info.value, must=InputError)
