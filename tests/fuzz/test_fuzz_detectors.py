"""Fuzzing every registered detector through ``ood_zoo.create``: fit, score, predict.

Hyperparameters are drawn from each detector's declared ``Param`` records; inputs have random
shapes (one row, one feature), dtypes, layouts, magnitudes and NaN/Inf placements. Scores are
checked against the float64 references of ``tests/reference.py`` where one exists, and for
every detector: finite, one per query, of the queries' kind and dtype, and ``predict`` is
``score >= threshold_``.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import replace

import numpy as np
import pytest
import reference as ref
import torch
from fuzzing import (
    SPECIALS,
    TORCH_DTYPES,
    Given,
    assert_clear_error,
    assert_finite,
    attempt,
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
from hypothesis import event, given
from hypothesis import strategies as st

import ood_zoo
from ood_zoo.api import Param
from ood_zoo.errors import InputError

pytestmark = pytest.mark.fuzz

DETECTORS = ood_zoo.list_detectors()
#: Detectors whose scores go through a cosine (normalised rows) in ood_zoo.ops.
COSINE_DETECTORS = {"cosine", "kmeans_cosine"}


def param_values(param: Param) -> st.SearchStrategy:
    """Valid values of a declared parameter, small ones favoured (tiny fit sets)."""
    if param.choices is not None:
        return st.sampled_from(param.choices)
    if param.type is bool:
        return st.booleans()
    low = param.minimum if param.minimum is not None else 0
    if param.type is int:
        low = int(low) + (1 if param.exclusive_minimum else 0)
        return st.integers(low, low + 6)
    if param.type is float:
        values = [param.default, low + 1e-3, low + 0.5, low + 3.0]
        return st.sampled_from([v for v in values if param.maximum is None or v <= param.maximum])
    return st.just(param.default)


@st.composite
def detector_cases(draw: st.DrawFn) -> dict:
    name = draw(st.sampled_from(DETECTORS))
    cls = ood_zoo.get_registry().get(name).cls
    dtype = draw(st.sampled_from(["float16", "bfloat16", "float32", "float64"]))
    n = draw(st.integers(1, 24))
    return {
        "name": name,
        "params": {p.name: draw(param_values(p)) for p in cls.params if draw(st.booleans())},
        "target_tpr": draw(st.sampled_from([0.95, 1.0, 0.5, 1e-3])),
        "dtype": dtype, "n": n, "d": draw(st.integers(1, 6)), "nq": draw(st.integers(1, 5)),
        "n_classes": draw(st.integers(1, min(n, 4))), "n_logits": draw(st.integers(1, 5)),
        "scale": draw(magnitudes(dtype)),
        "fit_layout": draw(layouts(dtype)), "query_layout": draw(layouts(dtype)),
        "special": draw(st.sampled_from(SPECIALS)),
        "special_at": draw(st.sampled_from(["fit", "score"])),
        "skip_fit": not cls.requires.fit and draw(st.booleans()),  # fit is optional for these
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def make_arrays(case: dict, cls: type) -> dict:
    """float64 fit/score inputs for what ``cls.requires`` asks for.

    ``fit``/``score`` are the features (or the logits of a logit-only detector); a detector on
    features that also needs logits or the linear head gets a random head ``(W, b)`` and the
    logits ``x Wᵀ + b`` of the features (``fit_logits``/``score_logits``, ``head``).
    """
    rng = np.random.default_rng(case["seed"])
    n, nq, s = case["n"], case["nq"], case["scale"]
    req = cls.requires
    if req.language_model:  # per-text sums over tokens, then whole token counts
        # log-likelihoods are <= 0, divergences from uniform >= 0 (fisher_rao <= 1 per token)
        per_token = np.array([-s if c.startswith("log_likelihood") else
                              min(s, 1.0) if c == "fisher_rao" else s
                              for c in cls.stats_columns[:-1]])

        def stats(rows: int) -> np.ndarray:
            counts = rng.integers(1, 50, size=(rows, 1)).astype(np.float64)
            sums = rng.random((rows, per_token.size)) * per_token * counts
            return np.concatenate([sums, counts], axis=1)

        return {"fit": stats(n), "score": stats(nq), "labels": None}
    if req.logits and not req.features:
        fit = rng.normal(size=(n, case["n_logits"])) * s
        return {"fit": fit, "score": rng.normal(size=(nq, case["n_logits"])) * s,
                "labels": None}
    d = case["d"] * (1 + case["seed"] % 3 if req.layered else 1)  # layered: L·d, see layered()
    fit, rng = base_values(case["seed"], (n, d), s)
    queries = np.concatenate([rng.normal(size=(nq, d)) * s + fit.mean(axis=0),
                              fit[:2]])
    labels = None
    if req.labels:
        n_classes = min(case["n_classes"], case["n_logits"]) if req.logits else case["n_classes"]
        labels = np.concatenate([np.arange(n_classes),
                                 rng.integers(0, n_classes, n - n_classes)])
        rng.shuffle(labels)
        if not req.logits:  # arbitrary, non-contiguous class codes, unless they name logit columns
            labels = labels * 7 - 3
    arrays = {"fit": fit, "score": queries, "labels": labels}
    if req.logits or req.head:
        weight = rng.normal(size=(case["n_logits"], case["d"]))
        bias = rng.normal(size=case["n_logits"]) * s
        arrays["head"] = (weight, bias)
        if req.logits:
            arrays["fit_logits"], arrays["score_logits"] = fit @ weight.T + bias, (
                queries @ weight.T + bias)
    return arrays


def layered(given: Given, case: dict, cls: type) -> Given:
    """For detectors on layered features, ``[n, L·d]`` values seen as ``[n, L, d]``: 1-3 layers,
    from the seed (no draw of its own, so the other detectors' cases stay as they were)."""
    if not cls.requires.layered:
        return given
    shape = (given.truth.shape[0], 1 + case["seed"] % 3, -1)
    return replace(given, value=given.value.reshape(shape), truth=given.truth.reshape(shape))


def reference_scores(name: str, hp: dict, fit: np.ndarray, queries: np.ndarray, labels,
                     head: tuple[np.ndarray, np.ndarray] | None = None,
                     logits: tuple[np.ndarray, np.ndarray] | None = None):
    """float64 reference scores of the detectors that have one, else ``None``; ``head`` is the
    linear head and ``logits`` the fit and query logits of detectors that read them."""
    if name in ("vim", "fdbd", "nci"):
        return ref.head_scores(name, hp, fit, queries, *head)
    if name == "nnguide":
        return ref.nnguide_scores(fit, logits[0], queries, logits[1], hp["k"])
    if name == "she":
        return ref.she_scores(fit, labels, logits[0], queries, logits[1])
    if name == "cosine":
        return ref.knn_scores(fit, queries, 1, "cosine")
    if name == "knn":
        return ref.knn_scores(fit, queries, hp["k"], hp["metric"], hp["normalize"])
    if name == "msp":
        return ref.msp_scores(queries, hp["temperature"])
    if name == "maxlogit":
        return ref.maxlogit_scores(queries)
    if name == "energy":
        return ref.energy_scores(queries, hp["temperature"])
    if name in ("perplexity", "renyi", "fisher_rao", "self_certainty"):  # per-token means
        return queries[:, 0] / queries[:, 1]
    if name == "likelihood_ratio":
        ratio = queries[:, 0] - queries[:, 1]
        return ratio / queries[:, 2] if hp["per_token"] else ratio
    if name in ("mahalanobis", "relative_mahalanobis"):
        _, cov = ref.class_model(fit, labels, hp["covariance"])
        if not ref.pinv_well_posed(cov):
            return None
        if name == "relative_mahalanobis" and not ref.pinv_well_posed(
            ref.background_covariance(fit, hp["covariance"])
        ):
            return None
        fn = ref.mahalanobis_scores if name == "mahalanobis" else ref.relative_mahalanobis_scores
        return fn(fit, labels, queries, hp["covariance"])
    return None


def tolerance(name: str, hp: dict, want: np.ndarray, fit: np.ndarray, queries: np.ndarray,
              u: float, head: tuple[np.ndarray, np.ndarray] | None = None,
              logits: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, float]:
    """``(atol, rtol)`` for the reference comparison."""
    d = fit.shape[1]
    if name in ("vim", "fdbd", "nci"):
        return 64 * d * u * ref.head_error_scale(name, hp, fit, queries, *head), 64 * d * u
    if name == "nnguide":  # E(x) · M · (a cosine): rounding relative to |E(x)| M
        bound = np.abs(ref.energy_scores(logits[1])).max() * np.abs(
            ref.energy_scores(logits[0])).max()
        return 64 * (d + 2) * u * max(1.0, float(bound)), 64 * u
    if name == "she":  # an inner product: rounding relative to Σ |x_j| |S_j|
        bound = np.abs(queries).sum(axis=1).max() * np.abs(fit).max()
        return 64 * (d + 1) * u * max(1.0, float(bound)), 64 * u
    if name == "cosine" or (name == "knn" and hp["metric"] == "cosine"):
        return 64 * d * u, 0.0
    if name == "knn":  # L2 from expanded squares: ~sqrt(u) of the norms near distance 0
        norms = np.concatenate([np.linalg.norm(fit, axis=1), np.linalg.norm(queries, axis=1)])
        return 8 * np.sqrt(d * u) * (1.0 if hp["normalize"] else norms.max()), 64 * d * u
    if name in ("mahalanobis", "relative_mahalanobis"):
        # the pseudo-inverse amplifies rounding by the condition number (well posed: <= 1e7)
        return 1e7 * 64 * d * u * max(1.0, float(np.abs(want).max())), 1e-6
    return 64 * u * max(1.0, float(np.abs(want).max())), 64 * u


def uses_cosine(name: str, hparams: dict) -> bool:
    """Whether a detector's scores go through normalised rows in ood_zoo.ops."""
    return name in COSINE_DETECTORS or (name == "knn" and (
        hparams["metric"] == "cosine" or hparams["normalize"])) or (
        name == "lof" and hparams["metric"] == "cosine")


@fuzz_settings(6)
@given(case=detector_cases())
def test_every_detector_fits_and_scores_or_refuses_clearly(case):
    name = case["name"]
    cls = ood_zoo.get_registry().get(name).cls
    arrays = make_arrays(case, cls)
    rng = np.random.default_rng(case["seed"] + 1)
    place_special(arrays[case["special_at"]], case["special"], rng)
    fit = layered(lay_out(arrays["fit"], case["dtype"], *case["fit_layout"]), case, cls)
    queries = layered(lay_out(arrays["score"], case["dtype"], *case["query_layout"]), case, cls)
    req = cls.requires
    det = ood_zoo.create(name, target_tpr=case["target_tpr"], **case["params"])
    role = "features" if req.features or req.language_model else "logits"
    fit_kwargs, score_kwargs = {role: fit.value}, {role: queries.value}
    fit_truths, score_truths = [fit.truth], [queries.truth]
    logits = None
    if "fit_logits" in arrays:  # features and logits
        fit_logits = lay_out(arrays["fit_logits"], case["dtype"], *case["fit_layout"])
        query_logits = lay_out(arrays["score_logits"], case["dtype"], *case["query_layout"])
        fit_kwargs["logits"], score_kwargs["logits"] = fit_logits.value, query_logits.value
        fit_truths.append(fit_logits.truth)
        score_truths.append(query_logits.truth)
        logits = (fit_logits.truth, query_logits.truth)
    head = None
    if req.head:
        weight = lay_out(arrays["head"][0], case["dtype"], *case["fit_layout"])
        bias = torch.from_numpy(arrays["head"][1]).to(TORCH_DTYPES[case["dtype"]])
        fit_kwargs["head"] = (weight.value,
                              bias if case["fit_layout"][0] == "torch" else bias.numpy())
        head = (weight.truth, bias.double().numpy())
        fit_truths += list(head)
    if req.labels:
        fit_kwargs["labels"] = arrays["labels"]
    fit_bad = not all(np.isfinite(t).all() for t in fit_truths)
    score_bad = not all(np.isfinite(t).all() for t in score_truths)
    tags = {
        "detector": name, "layouts": {fit.layout, queries.layout},
        "max_abs": float(np.abs(fit.truth[np.isfinite(fit.truth)]).max(initial=0.0)),
        "safe_range": in_safe_range(*fit_truths, *score_truths),
    }
    with tolerate_known(tags), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if not case["skip_fit"]:
            _, err = attempt(det.fit, **fit_kwargs)
            if err is not None:
                assert_clear_error(err, must=InputError if fit_bad else None)
                if not fit_bad:  # e.g. k or n_components > n: the statistics list them
                    event(f"fit refused valid data ({name}): "
                          f"{re.sub(r'[0-9]+', '#', str(err))[:60]}")
                return
            assert not fit_bad, "NaN/Inf fit data was accepted"
        scores, err = attempt(det.score, **score_kwargs)
        if err is not None:
            assert_clear_error(err, must=InputError if score_bad else None)
            assert score_bad or not tags["safe_range"], f"valid queries refused: {err}"
            return
        assert not score_bad, "NaN/Inf queries were not refused"
        got = assert_finite(scores, f"{name} scores")
        assert got.shape == (queries.truth.shape[0],)
        assert isinstance(scores, type(queries.value) if isinstance(queries.value, torch.Tensor)
                          else np.ndarray)
        want_dtype = "float64" if case["dtype"] == "float64" else "float32"
        assert str(scores.dtype).removeprefix("torch.") == want_dtype, scores.dtype
        if det.threshold_ is not None:
            decided = to_float64(det.predict(**score_kwargs)).astype(bool)
            np.testing.assert_array_equal(decided, got >= det.threshold_)
        want = reference_scores(name, det.hparams, fit.truth, queries.truth, arrays["labels"],
                                head, logits)
        if want is not None:
            atol, rtol = tolerance(name, det.hparams, want, fit.truth, queries.truth,
                                   unit_roundoff(case["dtype"]), head, logits)
            close(got, want, atol=atol, rtol=rtol, what=f"{name} scores")
    for warning in caught:  # in the statistics, not in every run's warnings summary
        event(f"warning ({name}): {str(warning.message)[:60]}")
