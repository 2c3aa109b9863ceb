"""End-to-end tests of the ``ood-zoo`` command line on feature files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score

import ood_zoo
from ood_zoo.cli import main


@pytest.fixture
def feature_files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 4
    labels = rng.integers(0, 3, size=150)
    train = (centers[labels] + rng.normal(size=(150, 8))).astype(np.float32)
    id_test = (centers[rng.integers(0, 3, size=60)] + rng.normal(size=(60, 8))).astype(np.float32)
    ood_test = (rng.normal(size=(50, 8)) * 4 + 12).astype(np.float32)
    paths = {
        "train": tmp_path / "train.npy",
        "labels": tmp_path / "labels.npy",
        "id": tmp_path / "id.npy",
        "ood": tmp_path / "ood.safetensors",
    }
    np.save(paths["train"], train)
    np.save(paths["labels"], labels)
    np.save(paths["id"], id_test)
    save_file({"features": torch.from_numpy(ood_test)}, str(paths["ood"]))
    return paths


def run_cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_detectors_lists_builtins_as_json(capsys):
    code, out, _ = run_cli("detectors", "--json", capsys=capsys)
    assert code == 0
    records = {r["name"]: r for r in json.loads(out)}
    for name in ("cosine", "knn", "mahalanobis", "relative_mahalanobis", "msp", "maxlogit",
                 "energy", "lof"):
        assert records[name]["plugin"] == "ood_zoo.builtin"
    assert records["mahalanobis"]["requires"]["labels"] is True
    assert records["msp"]["requires"]["logits"] is True
    assert {p["name"] for p in records["knn"]["params"]} >= {"k"}


def test_detectors_and_plugins_tables(capsys):
    code, out, _ = run_cli("detectors", capsys=capsys)
    assert code == 0
    assert "cosine" in out
    assert "needs" in out
    code, out, _ = run_cli("plugins", capsys=capsys)
    assert code == 0
    assert "ood_zoo.builtin" in out
    assert "loaded" in out
    code, out, _ = run_cli("plugins", "--json", capsys=capsys)
    assert any(p["builtin"] and p["status"] == "loaded" for p in json.loads(out))


def test_doctor_reports_backend_threads_and_cuda(capsys):
    code, out, _ = run_cli("doctor", "--json", capsys=capsys)
    assert code == 0
    report = json.loads(out)
    assert report["versions"]["ood_zoo"] == ood_zoo.__version__
    assert report["kernels"]["backend"] in ("torch", "ext", "faiss")
    assert report["threads"]["torch"] == torch.get_num_threads()
    assert report["cuda"]["available"] == torch.cuda.is_available()


def test_fit_takes_the_linear_head(feature_files, tmp_path, capsys):
    train = np.load(feature_files["train"])
    weight = np.random.default_rng(0).normal(size=(3, train.shape[1]))
    np.save(tmp_path / "w.npy", weight)
    np.save(tmp_path / "b.npy", np.arange(3.0))
    features = ["--features", str(feature_files["train"])]
    code, _, err = run_cli("fit", "vim", *features, "--head-weight", str(tmp_path / "w.npy"),
                           "--head-bias", str(tmp_path / "b.npy"), "--out", str(tmp_path / "vim"),
                           capsys=capsys)
    assert code == 0, err
    direct = ood_zoo.create("vim").fit(train, head=(weight, np.arange(3.0)))
    np.testing.assert_array_equal(ood_zoo.load(tmp_path / "vim").score(train), direct.score(train))
    code, _, err = run_cli("fit", "nci", *features, "--out", str(tmp_path / "nci"), capsys=capsys)
    assert code == 2
    assert "needs the linear head" in err
    code, _, err = run_cli("fit", "nci", *features, "--head-bias", str(tmp_path / "b.npy"),
                           "--out", str(tmp_path / "nci"), capsys=capsys)
    assert code == 2
    assert "--head-bias needs --head-weight" in err


def test_fit_score_evaluate_round_trip(feature_files, tmp_path, capsys):
    model = tmp_path / "maha"
    code, _, err = run_cli(
        "fit", "mahalanobis", "--features", str(feature_files["train"]),
        "--labels", str(feature_files["labels"]), "--param", 'covariance="ledoit_wolf"',
        "--out", str(model), capsys=capsys,
    )
    assert code == 0, err
    assert ood_zoo.load(model).hparams["covariance"] == "ledoit_wolf"

    scores_path = tmp_path / "id_scores.npy"
    code, out, err = run_cli(
        "score", str(model), "--features", str(feature_files["id"]), "--out", str(scores_path),
        "--json", capsys=capsys,
    )
    assert code == 0, err
    summary = json.loads(out)
    id_scores = np.load(scores_path)
    expected = ood_zoo.load(model).score(np.load(feature_files["id"]))
    np.testing.assert_allclose(id_scores, expected)
    assert summary["n"] == 60

    results = tmp_path / "results"
    code, out, err = run_cli(
        "evaluate", str(model), "--id-features", str(feature_files["id"]),
        "--ood-features", str(feature_files["ood"]), "--out", str(results), "--json",
        capsys=capsys,
    )
    assert code == 0, err
    row = json.loads(out)
    ood_scores = np.load(results / "ood_scores.npy")
    truth = roc_auc_score(np.r_[np.ones(60), np.zeros(50)], np.r_[id_scores, ood_scores])
    assert row["auroc"] == pytest.approx(truth)
    assert json.loads((results / "metrics.json").read_text()) == row
    assert "auroc" in (results / "metrics.txt").read_text()

    code, out, _ = run_cli(
        "evaluate", "--id-scores", str(scores_path),
        "--ood-scores", str(results / "ood_scores.npy"), capsys=capsys,
    )
    assert code == 0
    assert "auroc" in out
    assert f"{truth:.4f}" in out


def test_logit_detector_from_cli(tmp_path, capsys):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(40, 4)).astype(np.float32)
    np.save(tmp_path / "logits.npy", logits)
    code, _, err = run_cli(
        "fit", "energy", "--logits", str(tmp_path / "logits.npy"), "--param", "temperature=2",
        "--out", str(tmp_path / "energy"), capsys=capsys,
    )
    assert code == 0, err
    code, _, err = run_cli(
        "score", str(tmp_path / "energy"), "--logits", str(tmp_path / "logits.npy"),
        "--out", str(tmp_path / "s.json"), capsys=capsys,
    )
    assert code == 0, err
    scores = np.array(json.loads((tmp_path / "s.json").read_text()))
    reference = 2.0 * np.log(np.exp(logits.astype(np.float64) / 2.0).sum(axis=1))
    np.testing.assert_allclose(scores, reference, rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "params", "reference"),
    [
        ("msp", [], lambda z: np.exp(z.max(axis=1) - np.logaddexp.reduce(z, axis=1))),
        ("energy", ["--param", "temperature=2"],
         lambda z: 2.0 * np.logaddexp.reduce(z / 2.0, axis=1)),
    ],
)
def test_fit_free_detector_scores_by_name(name, params, reference, tmp_path, capsys):
    logits = np.random.default_rng(2).normal(size=(30, 5)).astype(np.float32)
    np.save(tmp_path / "logits.npy", logits)
    code, out, err = run_cli(
        "score", name, "--logits", str(tmp_path / "logits.npy"), *params,
        "--out", str(tmp_path / "s.npy"), "--json", capsys=capsys,
    )
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), reference(logits.astype(np.float64)),
                               rtol=1e-5)
    summary = json.loads(out)
    assert summary["n"] == 30
    assert summary["threshold"] is None
    assert "no threshold" in summary["guarantee"]


def test_a_directory_wins_over_a_detector_name(tmp_path, capsys, monkeypatch):
    """``score DIR`` keeps working when DIR is also a detector's name."""
    logits = np.random.default_rng(3).normal(size=(20, 4)).astype(np.float32)
    np.save(tmp_path / "logits.npy", logits)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("fit", "energy", "--logits", "logits.npy", "--param",
                           "temperature=3", "--out", "energy", capsys=capsys)
    assert code == 0, err
    code, _, err = run_cli("score", "energy", "--logits", "logits.npy", "--out", "s.npy",
                           capsys=capsys)
    assert code == 0, err
    np.testing.assert_allclose(np.load("s.npy"), ood_zoo.load("energy").score(logits=logits))
    assert ood_zoo.load("energy").get_params()["temperature"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["score", "knn", "--features", "{train}", "--out", "{tmp}/s.npy"],
         "detector 'knn' needs fitting: run `ood-zoo fit knn"),
        (["score", "no_such_detector", "--features", "{train}", "--out", "{tmp}/s.npy"],
         "neither a directory written by `ood-zoo fit` nor a registered detector"),
        (["score", "msp", "--param", "bogus=1", "--logits", "{train}", "--out", "{tmp}/s.npy"],
         "unknown parameter"),
        (["score", "{tmp}", "--param", "k=3", "--features", "{train}", "--out", "{tmp}/s.npy"],
         "--param is for a detector name"),
        (["fit", "no_such_detector", "--features", "{train}", "--out", "{tmp}/x"],
         "unknown detector"),
        (["fit", "mahalanobis", "--features", "{train}", "--out", "{tmp}/x"], "labels"),
        (["fit", "knn", "--features", "{train}", "--param", "k=1000", "--out", "{tmp}/x"],
         "larger than the bank"),
        (["fit", "knn", "--features", "{tmp}/missing.npy", "--out", "{tmp}/x"], "no such file"),
        (["fit", "knn", "--features", "{train}", "--param", "k", "--out", "{tmp}/x"],
         "KEY=VALUE"),
        (["fit", "knn", "--features", "{train}", "--param", "bogus=1", "--out", "{tmp}/x"],
         "unknown parameter"),
        (["score", "{tmp}", "--features", "{train}", "--out", "{tmp}/s.npy"],
         "not a saved ood_zoo detector"),
        (["evaluate", "--id-scores", "{train}"], "needs either"),
    ],
)
def test_errors_are_clear_and_exit_2(args, message, feature_files, tmp_path, capsys):
    filled = [a.format(train=feature_files["train"], tmp=tmp_path) for a in args]
    code, _, err = run_cli(*filled, capsys=capsys)
    assert code == 2
    assert message in err
    assert not (tmp_path / "x").exists()


def test_nan_features_rejected(tmp_path, capsys):
    bad = np.ones((5, 3), dtype=np.float32)
    bad[2, 1] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    code, _, err = run_cli(
        "fit", "cosine", "--features", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "m"),
        capsys=capsys,
    )
    assert code == 2
    assert "NaN" in err
    assert not (tmp_path / "m").exists()


def test_console_script_is_installed():
    exe = shutil.which("ood-zoo", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("ood_zoo is not pip-installed in this environment")
    result = subprocess.run([exe, "detectors", "--json"], capture_output=True, text=True,
                            check=True, timeout=120)
    assert "cosine" in {r["name"] for r in json.loads(result.stdout)}
