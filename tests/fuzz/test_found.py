"""The failure classes the fuzz suite found, each as its smallest example, kept as plain tests.

Issue 11's root causes 1-6 and the two NEW classes the suite found (gmm's absolute
``reg_covar`` at large magnitudes, the residual norm's overflow) are fixed; each example here
failed before its fix. A class found later and not yet fixed gets a strict
``pytest.mark.xfail`` here, whose reason names its ``fuzzing.KNOWN['key']`` entry, so that the
fuzz tests tolerate it until the fix turns the xfail red (XPASS) and both are removed.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from fuzzing import KNOWN, attempt, backend, is_clear_error, scratch_dir
from safetensors.torch import load_file, save_file

import ood_zoo
from ood_zoo import ops
from ood_zoo.errors import PersistenceError
from ood_zoo.io import sha256_file

pytestmark = pytest.mark.fuzz

BACKENDS = ("torch", "ext", "faiss")


# ----------------------------------------------------------------------------- root cause 1
@pytest.mark.parametrize("name", BACKENDS)
def test_knn_l2_fp32_1e20_queries_on_bank_rows(name):
    bank = np.array([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0]], dtype=np.float32) * 1e20
    with backend(name):
        values, _ = ops.knn(bank, bank, 2, "l2")
    # each query is a bank row: the expanded |q|² + |b|² - 2q·b loses about (d + 2)·2⁻²⁴·2|b|²
    # to rounding, whose square root is ~1.8e17 here (MKL tiles gave 1.02e17, OpenBLAS less)
    np.testing.assert_allclose(values[:, 0], 0.0, atol=2e17)
    np.testing.assert_allclose(values[:, 1], np.sqrt(11.8125) * 1e20, rtol=1e-4)


@pytest.mark.parametrize("name", ["torch", "faiss"])
def test_knn_cosine_bf16_1e30(name):
    bank = (torch.tensor([[1.0, 2.0], [-1.0, 0.5]]) * 1e30).bfloat16()
    with backend(name):
        values, _ = ops.knn(bank, bank, 1, "cosine")
    torch.testing.assert_close(values[:, 0], torch.ones(2), atol=1e-2, rtol=0)


@pytest.mark.parametrize("name", BACKENDS)
def test_mahalanobis_means_1e19_query_on_a_mean(name):
    means = np.array([[1.0, -1.0], [-1.0, 1.0]], dtype=np.float32) * 1e19
    with backend(name):
        d2, argmin = ops.mahalanobis(means[:1], np.eye(2, dtype=np.float32), means)
    assert np.isfinite(d2).all()
    assert d2[0] == 0.0
    assert argmin[0] == 0


@pytest.mark.parametrize("name", BACKENDS)
def test_knn_l2_fp32_1e_30_distances(name):
    bank = np.array([[0.0], [3.0]], dtype=np.float32) * 1e-30
    queries = np.array([[1.0]], dtype=np.float32) * 1e-30
    with backend(name):
        values, _ = ops.knn(queries, bank, 2, "l2")
    np.testing.assert_allclose(values[0], [1e-30, 2e-30], rtol=1e-3)


def test_residual_detector_fp32_1e20():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(16, 3)) * 1e20).astype(np.float32)
    scores = ood_zoo.create("residual").fit(x).score(x)
    assert np.isfinite(scores).all()


# ----------------------------------------------------------------------------- tiny norms
@pytest.mark.parametrize("name", BACKENDS)
def test_cosine_of_tiny_rows_follows_the_norm_eps_convention(name):
    """Found by the fuzz suite: rows below ``ops.NORM_EPS`` are divided by it (the
    documented convention, torch's ``normalize``), on every backend alike."""
    bank = np.array([[1.0, 0.0], [0.0, 1.0]]) * 1e-14  # float64: nothing underflows
    queries = np.array([[1.0, 1.0]]) * 1e-14
    with backend(name):
        values, _ = ops.knn(queries, bank, 1, "cosine")
    assert ops.NORM_EPS == 1e-12
    np.testing.assert_allclose(values[0, 0], 1e-28 / (1e-12 * 1e-12), rtol=1e-6)


# ----------------------------------------------------------------------------- root cause 2
@pytest.mark.parametrize("name", BACKENDS)
def test_negative_stride_view_is_accepted(name):
    bank = np.arange(12, dtype=np.float32).reshape(4, 3)[::-1]
    with backend(name):
        _, indices = ops.knn(bank, bank, 1, "l2")
    np.testing.assert_array_equal(indices[:, 0], np.arange(4))


@pytest.mark.parametrize("name", BACKENDS)
def test_big_endian_array_is_accepted(name):
    bank = np.arange(12, dtype=">f4").reshape(4, 3)
    with backend(name):
        _, indices = ops.knn(bank, bank, 1, "l2")
    np.testing.assert_array_equal(indices[:, 0], np.arange(4))


def test_faiss_accepts_requires_grad():
    bank = torch.arange(12, dtype=torch.float32).reshape(4, 3).requires_grad_(True)
    with backend("faiss"):
        _, indices = ops.knn(bank, bank, 1, "l2")
    torch.testing.assert_close(indices[:, 0], torch.arange(4))


def test_cli_fit_on_big_endian_npy(capsys):
    from ood_zoo.cli import main

    work = scratch_dir()
    np.save(work / "x.npy", np.random.default_rng(0).normal(size=(20, 4)).astype(">f4"))
    assert main(["fit", "cosine", "--features", str(work / "x.npy"), "--out",
                 str(work / "det")]) == 0, capsys.readouterr().err


# ----------------------------------------------------------------------------- root cause 3
@pytest.mark.parametrize("name", BACKENDS)
def test_knn_chunk_rows_float_names_the_parameter(name):
    x = np.ones((3, 2), dtype=np.float32)
    with backend(name), pytest.raises(ValueError, match="chunk_rows"):
        ops.knn(x, x, 1, chunk_rows=2.5)


def test_mahalanobis_chunk_rows_string_names_the_parameter():
    x = np.ones((3, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="chunk_rows"):
        ops.mahalanobis(x, np.eye(2, dtype=np.float32), x, chunk_rows="3")


def test_create_target_tpr_string_names_the_parameter():
    with pytest.raises(ValueError, match="target_tpr"):
        ood_zoo.create("cosine", target_tpr="0.9")


# ----------------------------------------------------------------------------- root cause 4
def _saved(name: str = "cosine"):
    x = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    directory = scratch_dir() / "saved"
    ood_zoo.create(name).fit(x).save(directory)
    return directory, json.loads((directory / "detector.json").read_text())


def test_deeply_nested_json_is_a_persistence_error():
    directory, config = _saved()
    text = json.dumps({**config, "params": None}).replace(
        '"params": null', '"params": ' + "[" * 100_000 + "]" * 100_000)
    (directory / "detector.json").write_text(text)
    with pytest.raises(PersistenceError):
        ood_zoo.load(directory)


def test_tensor_file_of_wrong_type_is_a_persistence_error():
    directory, config = _saved()
    config["tensors"]["file"] = 3
    (directory / "detector.json").write_text(json.dumps(config))
    with pytest.raises(PersistenceError):
        ood_zoo.load(directory)


def test_manifest_entry_without_shape_is_a_persistence_error():
    directory, config = _saved()
    del config["tensors"]["entries"]["bank_"]["shape"]
    (directory / "detector.json").write_text(json.dumps(config))
    with pytest.raises(PersistenceError):
        ood_zoo.load(directory)


def test_n_features_in_contradicting_the_bank_is_a_persistence_error():
    directory, config = _saved()
    config["n_features_in"] = 5
    (directory / "detector.json").write_text(json.dumps(config))
    with pytest.raises(PersistenceError):
        ood_zoo.load(directory)


# ----------------------------------------------------------------------------- root cause 5
@pytest.mark.parametrize(("name", "tensor"), [("gmm", "weights_"), ("residual", "mean_"),
                                              ("knn", "bank_")])
def test_nan_state_tensor_is_refused_at_load(name, tensor):
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    directory = scratch_dir() / "saved"
    ood_zoo.create(name).fit(x).save(directory)
    config = json.loads((directory / "detector.json").read_text())
    path = directory / config["tensors"]["file"]
    tensors = load_file(str(path))
    tensors[tensor] = tensors[tensor].clone()
    tensors[tensor].view(-1)[0] = float("nan")
    save_file(tensors, str(path), metadata={"format": "ood_zoo.detector"})
    config["tensors"].update(sha256=sha256_file(path), bytes=path.stat().st_size)
    (directory / "detector.json").write_text(json.dumps(config))
    with pytest.raises(PersistenceError, match=tensor):
        ood_zoo.load(directory)


# ----------------------------------------------------------------------------- root cause 6
def test_stale_temporary_is_swept_by_the_next_save():
    directory, _ = _saved()
    (directory / ".tensors.killed.tmp").write_bytes(b"half a write")
    ood_zoo.create("cosine").fit(np.ones((3, 2), dtype=np.float32)).save(directory)
    assert not (directory / ".tensors.killed.tmp").exists()


# ----------------------------------------------------------------------------- NEW: gmm
def test_gmm_at_large_magnitude_fits_or_refuses_clearly():
    x = np.random.default_rng(207).normal(size=(11, 6)) * 1e10
    detector = ood_zoo.create("gmm", n_components=7, covariance_type="full", seed=5)
    _, err = attempt(detector.fit, x)
    assert err is None or is_clear_error(err), f"{type(err).__name__}: {err}"


def test_every_known_defect_has_a_strict_xfail_here():
    """``fuzzing.KNOWN`` and the xfails of this module name each other, so that a fixed class's
    mark and its ``KNOWN`` entry are removed together."""
    marks = [
        mark for item in globals().values() if callable(item)
        for mark in getattr(item, "pytestmark", []) if mark.name == "xfail"
    ]
    assert all(mark.kwargs["strict"] for mark in marks)
    named = {key for mark in marks for key in re.findall(r"KNOWN\['([\w-]+)'\]",
                                                         mark.kwargs["reason"])}
    assert named == set(KNOWN), (
        f"without a regression: {set(KNOWN) - named}; not in KNOWN: {named - set(KNOWN)}")
