"""``positive="ood"``: the metrics of OpenOOD v1.5 and pytorch-ood on ood_zoo's scores.

Two independent oracles: ``openood_metrics``, a numpy transcription of OpenOOD v1.5's
``openood/evaluators/metrics.py`` (``auc_and_fpr_recall``, sklearn based, as ``compute_all_metrics``
calls it), and pytorch-ood 0.4.0's ``OODMetrics`` from its unpacked wheel (``tests/oracles.py``).
Both take OOD as the positive class of the outlier score ``-score``. On every case below, ties,
tiny sets and all-equal scores included, ``evaluate(..., positive="ood")`` equals pytorch-ood
exactly in FPR95 (and to 1e-12 in the areas) and OpenOOD exactly wherever sklearn's
``drop_intermediate`` keeps the FPR95 point (always without ID/OOD ties; the divergence is pinned).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from oracles import peer_modules
from sklearn import metrics as skm

from ood_zoo import metrics
from ood_zoo.cli import main
from ood_zoo.errors import InputError

torch.set_num_threads(1)


def openood_metrics(conf: np.ndarray, label: np.ndarray, tpr_th: float = 0.95, *,
                    drop_intermediate: bool = True) -> dict[str, float]:
    """OpenOOD v1.5 ``auc_and_fpr_recall``: ``label == -1`` marks OOD, ``conf`` higher = ID."""
    ood_indicator = np.zeros_like(label)
    ood_indicator[label == -1] = 1
    fpr_list, tpr_list, _ = skm.roc_curve(ood_indicator, -conf,
                                          drop_intermediate=drop_intermediate)
    fpr = fpr_list[np.argmax(tpr_list >= tpr_th)]
    precision_in, recall_in, _ = skm.precision_recall_curve(1 - ood_indicator, conf)
    precision_out, recall_out, _ = skm.precision_recall_curve(ood_indicator, -conf)
    return {"auroc": float(skm.auc(fpr_list, tpr_list)), "fpr95": float(fpr),
            "aupr_in": float(skm.auc(recall_in, precision_in)),
            "aupr_out": float(skm.auc(recall_out, precision_out))}


def openood_of(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95, **kwargs):
    conf = np.concatenate([id_scores, ood_scores])
    label = np.concatenate([np.zeros(id_scores.size, int), -np.ones(ood_scores.size, int)])
    return openood_metrics(conf, label, tpr, **kwargs)


@pytest.fixture(scope="module")
def ood_metrics():
    """pytorch-ood 0.4.0's ``OODMetrics`` class."""
    with peer_modules("pytorch-ood", ("pytorch_ood", "pytorch_ood.utils", "pytorch_ood.metrics"),
                      ["pytorch_ood.metrics.ood"]) as (module,):
        yield module.OODMetrics


def pytorch_ood_of(oodmetrics, id_scores: np.ndarray, ood_scores: np.ndarray,
                   tpr: float = 0.95) -> dict[str, float]:
    scores = -torch.as_tensor(np.concatenate([id_scores, ood_scores]), dtype=torch.float64)
    labels = torch.cat([torch.zeros(id_scores.size, dtype=torch.long),
                        -torch.ones(ood_scores.size, dtype=torch.long)])
    found = oodmetrics(fpr_at=tpr).update(scores, labels).compute()
    return {"auroc": found["AUROC"], "fpr95": found[f"FPR{round(100 * tpr)}TPR"],
            "aupr_in": found["AUPR-IN"], "aupr_out": found["AUPR-OUT"]}


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(13)
    return {
        "gaussian": (rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 200)),
        "separated": (rng.uniform(2, 3, 40), rng.uniform(0, 1, 60)),
        "reversed": (rng.uniform(0, 1, 50), rng.uniform(2, 3, 30)),
        "rounded_ties": (np.round(rng.normal(0.5, 1, 400), 1), np.round(rng.normal(0, 1, 350), 1)),
        "integer_ties": (rng.integers(0, 5, 97).astype(float),
                         rng.integers(0, 4, 61).astype(float)),
        "paired_ties": (np.arange(20.0), np.arange(20.0)),
        "all_equal": (np.zeros(7), np.zeros(5)),
        "one_each": (np.array([1.0]), np.array([0.0])),
        "one_each_tied": (np.array([0.5]), np.array([0.5])),
        "tiny": (np.array([0.3, 0.1]), np.array([0.2, 0.1, 0.4])),
        "one_id": (np.array([0.0]), rng.normal(size=9)),
        "one_ood": (rng.normal(size=9), np.array([0.0])),
    }


CASES = _cases()
NO_MIXED_TIES = ("gaussian", "separated", "reversed", "one_each", "one_id", "one_ood")
TPRS = (0.95, 0.9, 0.5, 1.0)


def assert_matches(got: dict[str, float], want: dict[str, float], *, exact_fpr: bool = True):
    if exact_fpr:
        assert got["fpr95"] == want["fpr95"]
    for key in ("auroc", "aupr_in", "aupr_out"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


@pytest.mark.filterwarnings("ignore:AUTC is undefined")  # pytorch-ood's, on all-equal scores
@pytest.mark.parametrize("tpr", TPRS)
@pytest.mark.parametrize("case", list(CASES))
def test_ood_positive_matches_pytorch_ood(ood_metrics, case, tpr):
    id_scores, ood_scores = CASES[case]
    got = metrics.evaluate(id_scores, ood_scores, tpr=tpr, positive="ood")
    assert_matches(got, pytorch_ood_of(ood_metrics, id_scores, ood_scores, tpr))


@pytest.mark.parametrize("tpr", TPRS)
@pytest.mark.parametrize("case", list(CASES))
def test_ood_positive_matches_openood(case, tpr):
    id_scores, ood_scores = CASES[case]
    got = metrics.evaluate(id_scores, ood_scores, tpr=tpr, positive="ood")
    # The areas do not move when sklearn drops collinear ROC points; FPR95 can, on ties.
    assert_matches(got, openood_of(id_scores, ood_scores, tpr), exact_fpr=case in NO_MIXED_TIES)
    assert_matches(got, openood_of(id_scores, ood_scores, tpr, drop_intermediate=False))


def test_openood_drops_collinear_points_on_paired_ties():
    """Every score held by one ID and one OOD sample: the ROC curve is the diagonal, and
    OpenOOD's ``roc_curve(drop_intermediate=True)`` keeps only its ends."""
    id_scores, ood_scores = CASES["paired_ties"]
    assert metrics.fpr_at_tpr(id_scores, ood_scores, positive="ood") == 0.95
    assert openood_of(id_scores, ood_scores)["fpr95"] == 1.0


@pytest.mark.parametrize("case", list(CASES))
def test_auroc_and_detection_error_do_not_depend_on_the_convention(case):
    id_scores, ood_scores = CASES[case]
    by_id = metrics.evaluate(id_scores, ood_scores)
    by_ood = metrics.evaluate(id_scores, ood_scores, positive="ood")
    assert by_ood["auroc"] == by_id["auroc"]
    assert by_ood["detection_error"] == by_id["detection_error"]
    # the OOD-positive AUROC of -score, computed as such
    labels = np.r_[np.zeros(id_scores.size), np.ones(ood_scores.size)]
    assert by_id["auroc"] == pytest.approx(
        skm.roc_auc_score(labels, -np.r_[id_scores, ood_scores]), abs=1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_functions_agree_with_evaluate(case):
    id_scores, ood_scores = CASES[case]
    for positive in metrics.POSITIVE_CLASSES:
        result = metrics.evaluate(id_scores, ood_scores, tpr=0.9, positive=positive)
        assert metrics.fpr_at_tpr(id_scores, ood_scores, 0.9, positive=positive) \
            == result["fpr95"]
        assert metrics.aupr_in(id_scores, ood_scores, positive=positive) == result["aupr_in"]
        assert metrics.aupr_out(id_scores, ood_scores, positive=positive) == result["aupr_out"]


def test_default_is_id_positive():
    id_scores, ood_scores = CASES["gaussian"]
    assert metrics.evaluate(id_scores, ood_scores) \
        == metrics.evaluate(id_scores, ood_scores, positive="id")
    # ID positive: the OOD acceptance rate at 95% ID recall; OOD positive: ID flagged at 95%
    # OOD recall, i.e. ID positive with the roles of the classes and the sign swapped.
    assert metrics.fpr_at_tpr(id_scores, ood_scores, positive="ood") \
        == metrics.fpr_at_tpr(-ood_scores, -id_scores)


@pytest.mark.parametrize("bad", ["OOD", "in", "", None, 1])
def test_positive_is_validated(bad):
    id_scores, ood_scores = CASES["tiny"]
    for call in (lambda: metrics.evaluate(id_scores, ood_scores, positive=bad),
                 lambda: metrics.fpr_at_tpr(id_scores, ood_scores, positive=bad),
                 lambda: metrics.aupr_in(id_scores, ood_scores, positive=bad),
                 lambda: metrics.aupr_out(id_scores, ood_scores, positive=bad),
                 lambda: metrics.convention(bad)):
        with pytest.raises(InputError, match=r"positive: expected 'id'.*or 'ood'"):
            call()


def test_convention_names_the_positive_class():
    assert "ID positive" in metrics.convention()
    assert "95% ID recall" in metrics.convention()
    assert "OOD positive" in metrics.convention("ood", tpr=0.9)
    assert "90% OOD recall" in metrics.convention("ood", tpr=0.9)


@pytest.mark.parametrize("positive", metrics.POSITIVE_CLASSES)
def test_cli_evaluate_names_its_convention(tmp_path, capsys, positive):
    id_scores, ood_scores = CASES["rounded_ties"]
    np.save(tmp_path / "id.npy", id_scores)
    np.save(tmp_path / "ood.npy", ood_scores)
    scores = ["evaluate", "--id-scores", str(tmp_path / "id.npy"),
              "--ood-scores", str(tmp_path / "ood.npy"), "--tpr", "0.9", "--positive", positive]
    assert main([*scores, "--json", "--out", str(tmp_path / "out")]) == 0
    row = json.loads(capsys.readouterr().out)
    expected = metrics.evaluate(id_scores, ood_scores, tpr=0.9, positive=positive)
    assert {k: row[k] for k in expected} == expected
    assert row["convention"] == {"positive": positive,
                                 "note": metrics.convention(positive, tpr=0.9)}
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == row
    assert main(scores) == 0
    header, *_ = capsys.readouterr().out.splitlines()
    assert header == metrics.convention(positive, tpr=0.9)
    assert (tmp_path / "out" / "metrics.txt").read_text().splitlines()[0] == header


def test_cli_evaluate_refuses_an_unknown_convention(tmp_path, capsys):
    np.save(tmp_path / "s.npy", np.zeros(3))
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--id-scores", str(tmp_path / "s.npy"), "--ood-scores",
              str(tmp_path / "s.npy"), "--positive", "OOD"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'OOD'" in capsys.readouterr().err
