"""Split-conformal thresholds and p-values (Bates et al. 2023), and Benjamini–Hochberg.

The guarantee is checked over many random splits: each split draws a fresh calibration set and
one fresh ID test sample, so the rejections are independent Bernoulli draws and the binomial
bounds below are exact.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binom

import ood_zoo
from ood_zoo import InputError, NotFittedError, PersistenceError
from ood_zoo import testing as kit
from ood_zoo.api import threshold_at_tpr
from ood_zoo.cli import main
from ood_zoo.conformal import benjamini_hochberg, conformal_pvalues, conformal_rank
from ood_zoo.io import CONFIG_FILE
from ood_zoo.registry import get_registry

SPLITS = 2000
#: Two-sided tail of every binomial check (fixed seeds make the tests deterministic anyway).
TAIL = 1e-4
WIDTH = 8


def binomial_range(p: float, trials: int = SPLITS) -> tuple[int, int]:
    """Counts outside ``[lo, hi]`` have probability below ``TAIL`` each under ``Bin(trials, p)``."""
    return int(binom.ppf(TAIL, trials, p)), int(binom.isf(TAIL, trials, p))


def knn_detector(rng: np.random.Generator) -> ood_zoo.Detector:
    bank = rng.normal(size=(200, WIDTH)).astype(np.float32)
    return ood_zoo.create("knn", k=3, normalize=False).fit(bank)


def id_features(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"features": rng.normal(size=(n, WIDTH)).astype(np.float32)}


def id_logits(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"logits": rng.normal(size=(n, 4)) * 2.0}


DETECTORS = {
    "knn": (knn_detector, id_features),
    "msp": (lambda rng: ood_zoo.create("msp"), id_logits),  # fit-free, on logits
}


def simulate(name: str, n: int, alpha: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Over ``SPLITS`` splits: whether ``predict`` rejected the ID test sample, and its p-value."""
    make, draw = DETECTORS[name]
    rng = np.random.default_rng(seed)
    detector = make(rng)
    rejected, pvalues = np.empty(SPLITS, dtype=bool), np.empty(SPLITS)
    for split in range(SPLITS):
        detector.calibrate(**draw(rng, n), alpha=alpha)
        test = draw(rng, 1)
        rejected[split] = not detector.predict(**test)[0]
        pvalues[split] = detector.pvalues(**test)[0]
    return rejected, pvalues


@pytest.mark.parametrize("name", sorted(DETECTORS))
@pytest.mark.parametrize(("n", "alpha"), [(19, 0.1), (24, 0.1), (9, 0.25)])
def test_false_alarm_rate_is_within_the_binomial_bound_over_many_splits(name, n, alpha):
    rejected, pvalues = simulate(name, n, alpha, seed=n)
    k = conformal_rank(n, alpha)
    assert k == math.floor(alpha * (n + 1))
    lo, hi = binomial_range(k / (n + 1))
    # continuous scores: P(reject) = k / (n + 1) exactly, within [alpha - 1/(n+1), alpha]
    assert alpha - 1 / (n + 1) <= k / (n + 1) <= alpha
    assert lo <= rejected.sum() <= hi
    assert rejected.sum() <= binomial_range(alpha)[1]  # the guarantee itself
    # predict rejects exactly the samples with p <= alpha
    np.testing.assert_array_equal(rejected, pvalues <= alpha)
    # the p-values are uniform on {1, ..., n + 1} / (n + 1): P(p <= j / (n + 1)) = j / (n + 1)
    for j in range(1, n + 1):
        lo, hi = binomial_range(j / (n + 1))
        assert lo <= (pvalues <= j / (n + 1) + 1e-12).sum() <= hi, j


def test_tied_scores_keep_the_p_values_superuniform():
    """Scores from 3 distinct values: heavy ties, which only make the test conservative."""
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(3, 4)) * 2.0
    detector, n, alpha = ood_zoo.create("msp"), 20, 0.2
    pvalues, rejected = np.empty(SPLITS), np.empty(SPLITS, dtype=bool)
    for split in range(SPLITS):
        detector.calibrate(logits=rows[rng.integers(0, 3, size=n)], alpha=alpha)
        test = rows[rng.integers(0, 3, size=1)]
        pvalues[split] = detector.pvalues(logits=test)[0]
        rejected[split] = not detector.predict(logits=test)[0]
    np.testing.assert_array_equal(rejected, pvalues <= alpha)
    for u in np.linspace(0.05, 0.95, 19):
        assert (pvalues <= u).sum() <= binomial_range(u)[1], u
    assert rejected.sum() <= binomial_range(alpha)[1]


def test_ties_by_hand():
    calibration = torch.tensor([1.0, 1.0, 2.0, 3.0], dtype=torch.float64)  # n = 4
    scores = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0, 9.0])
    expected = torch.tensor([1, 3, 3, 4, 5, 5], dtype=torch.float64) / 5  # ties count for s
    torch.testing.assert_close(conformal_pvalues(calibration, scores), expected, rtol=0, atol=0)
    # alpha = 0.4: k = 2, the threshold is s_(2) = 1.0; a score tied with it is accepted
    assert conformal_rank(4, 0.4) == 2


@pytest.mark.parametrize(
    ("n", "alpha", "k"),
    [(1, 0.5, 1), (1, 0.99, 1), (2, 1 / 3, 1), (2, 2 / 3, 2), (2, 0.3, 0), (19, 0.05, 1),
     (18, 0.05, 0), (99, 0.1, 10), (100, 0.1, 10), (4, 1.0, 4)],
)
def test_conformal_rank_is_floor_of_alpha_n_plus_one(n, alpha, k):
    assert conformal_rank(n, alpha) == k
    assert conformal_rank(n, alpha) == sum(j / (n + 1) <= alpha for j in range(1, n + 1))


def test_tiny_calibration_sets():
    detector = ood_zoo.create("msp")
    one = np.array([[2.0, 0.0, 0.0]])
    detector.calibrate(logits=one, alpha=0.5)
    (calibration_score,) = detector.calibration_scores_.tolist()
    assert detector.threshold_ == calibration_score
    assert detector.false_alarm_bound_ == 0.5
    pvalues = detector.pvalues(logits=np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [9.0, 0, 0]]))
    np.testing.assert_array_equal(pvalues, [1.0, 0.5, 1.0])
    with pytest.raises(InputError, match=r"never reject.*at least 9 samples"):
        detector.calibrate(logits=one, alpha=0.1)
    two = np.array([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    detector.calibrate(logits=two, alpha=1 / 3)
    assert detector.false_alarm_bound_ == 1 / 3
    assert detector.threshold_ == detector.calibration_scores_[0]


def test_pvalues_need_calibrate_and_refit_clears_it(rng):
    detector = knn_detector(rng)
    with pytest.raises(NotFittedError, match=r"call calibrate\(\) with held-out ID data"):
        detector.pvalues(**id_features(rng, 5))
    with pytest.raises(NotFittedError, match="calibrate"):
        detector.predict(**id_features(rng, 5), fdr=0.1)
    assert detector.false_alarm_bound_ is None  # the fit threshold is in-sample
    detector.calibrate(**id_features(rng, 50), alpha=0.1)
    detector.fit(rng.normal(size=(100, WIDTH)).astype(np.float32))
    assert detector.calibration_scores_ is None
    assert detector.false_alarm_bound_ is None
    with pytest.raises(NotFittedError):
        detector.pvalues(**id_features(rng, 5))
    with pytest.raises(NotFittedError, match="fit"):
        ood_zoo.create("knn").calibrate(**id_features(rng, 5), alpha=0.1)


def test_calibrate_checks_alpha(rng):
    detector = knn_detector(rng)
    cal = id_features(rng, 50)
    with pytest.raises(TypeError, match="tpr or alpha, not both"):
        detector.calibrate(**cal, tpr=0.9, alpha=0.1)
    for bad in (0.0, -0.1, 1.5, math.nan, True):
        with pytest.raises(ValueError, match=r"calibrate\(alpha\)"):
            detector.calibrate(**cal, alpha=bad)


def test_tpr_calibration_keeps_its_threshold_and_states_its_bound(rng):
    detector = knn_detector(rng)
    cal = id_features(rng, 100)
    detector.calibrate(**cal, tpr=0.95)
    scores = torch.as_tensor(detector.score(**cal))
    assert detector.threshold_ == threshold_at_tpr(scores, 0.95)
    assert detector.false_alarm_bound_ == 6 / 101  # the 6th smallest of 100 scores
    assert (detector.pvalues(**cal) > 0).all()


def test_pvalues_and_predict_follow_the_input_kind(rng):
    detector = knn_detector(rng).calibrate(**id_features(rng, 60), alpha=0.2)
    x = id_features(rng, 30)["features"]
    pvalues = detector.pvalues(x)
    assert isinstance(pvalues, np.ndarray)
    assert pvalues.dtype == np.float64
    as_torch = detector.pvalues(torch.from_numpy(x))
    assert isinstance(as_torch, torch.Tensor)
    assert as_torch.dtype == torch.float64
    np.testing.assert_array_equal(as_torch.numpy(), pvalues)
    np.testing.assert_array_equal(detector.predict(x), pvalues > 0.2)
    assert isinstance(detector.predict(torch.from_numpy(x), fdr=0.1), torch.Tensor)


def reference_bh(pvalues: np.ndarray, q: float) -> np.ndarray:
    """Benjamini–Hochberg, step-up, written out."""
    m = len(pvalues)
    order = np.argsort(pvalues, kind="stable")
    below = [i for i in range(1, m + 1) if pvalues[order[i - 1]] <= q * i / m]
    rejected = np.zeros(m, dtype=bool)
    if below:
        rejected[order[: max(below)]] = True
    return rejected


def test_benjamini_hochberg_matches_the_step_up_definition(rng):
    for trial in range(300):
        m = int(rng.integers(1, 40))
        pvalues = rng.integers(1, 30, size=m) / 30 if trial % 2 else rng.uniform(size=m) ** 3
        q = float(rng.uniform(0.01, 0.5))
        got = benjamini_hochberg(pvalues, q)
        np.testing.assert_array_equal(got, reference_bh(pvalues, q))
        assert torch.equal(benjamini_hochberg(torch.from_numpy(pvalues), q),
                           torch.from_numpy(reference_bh(pvalues, q)))
    for bad_q in (0.0, 1.0, -1, True):
        with pytest.raises(InputError, match="q must be"):
            benjamini_hochberg(np.array([0.1]), bad_q)
    with pytest.raises(InputError, match=r"in \[0, 1\]"):
        benjamini_hochberg(np.array([0.1, 1.5]), 0.1)


def test_bh_on_conformal_pvalues_controls_the_fdr():
    rng = np.random.default_rng(3)
    detector = knn_detector(rng)
    q, n, m0, m1, sims = 0.2, 100, 40, 10, 400
    fdp, power = np.empty(sims), np.empty(sims)
    for sim in range(sims):
        detector.calibrate(**id_features(rng, n), alpha=0.1)
        ood = rng.normal(loc=1.5, size=(m1, WIDTH)).astype(np.float32)
        batch = np.concatenate([id_features(rng, m0)["features"], ood])
        flagged = ~detector.predict(batch, fdr=q)
        false = flagged[:m0].sum()
        fdp[sim] = false / max(flagged.sum(), 1)
        power[sim] = flagged[m0:].mean()
    # E[FDP] <= q m0 / m; allow three standard errors of the simulation
    assert fdp.mean() <= q * m0 / (m0 + m1) + 3 * fdp.std() / math.sqrt(sims)
    assert power.mean() > 0.5


def test_calibration_is_saved_and_loaded(rng, tmp_path):
    detector = knn_detector(rng).calibrate(**id_features(rng, 40), alpha=0.1)
    detector.save(tmp_path / "knn")
    loaded = ood_zoo.load(tmp_path / "knn")
    assert loaded.false_alarm_bound_ == detector.false_alarm_bound_ == 4 / 41
    assert loaded.threshold_ == detector.threshold_
    assert torch.equal(loaded.calibration_scores_, detector.calibration_scores_)
    x = id_features(rng, 30)["features"]
    np.testing.assert_array_equal(loaded.pvalues(x), detector.pvalues(x))
    msp = ood_zoo.create("msp").calibrate(**id_logits(rng, 30), alpha=0.2)  # unfitted, fit-free
    msp.save(tmp_path / "msp")
    assert ood_zoo.load(tmp_path / "msp").false_alarm_bound_ == msp.false_alarm_bound_
    uncalibrated = ood_zoo.load(knn_detector(rng).save(tmp_path / "plain"))
    assert uncalibrated.calibration_scores_ is None
    assert uncalibrated.false_alarm_bound_ is None


def edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / CONFIG_FILE).read_text())
    for key, value in changes.items():
        if value is ...:
            del config[key]
        else:
            config[key] = value
    (directory / CONFIG_FILE).write_text(json.dumps(config))


def test_format_version_1_saves_still_load(rng, tmp_path):
    detector = knn_detector(rng)
    detector.save(tmp_path)
    edit_config(tmp_path, format_version=1, false_alarm_bound=..., plugin=...,
                fitted_attributes=...)
    loaded = ood_zoo.load(tmp_path)
    assert loaded.threshold_ == detector.threshold_
    assert loaded.false_alarm_bound_ is None
    edit_config(tmp_path, false_alarm_bound=None)  # not a field of version 1
    with pytest.raises(PersistenceError, match="false_alarm_bound is not a field"):
        ood_zoo.load(tmp_path)
    edit_config(tmp_path, format_version=3, false_alarm_bound=...)
    with pytest.raises(PersistenceError, match="reads versions 1 and 2"):
        ood_zoo.load(tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"false_alarm_bound": None}, "hold 'calibration_scores_'"),
        ({"false_alarm_bound": 5 / 41}, "do not place threshold"),
        ({"false_alarm_bound": 0.1}, "do not place threshold"),
        ({"threshold": 0.5}, "do not place threshold"),
        ({"false_alarm_bound": 1.5}, "false_alarm_bound must be a number in"),
    ],
)
def test_inconsistent_calibration_is_refused(changes, message, rng, tmp_path):
    knn_detector(rng).calibrate(**id_features(rng, 40), alpha=0.1).save(tmp_path)
    edit_config(tmp_path, **changes)
    with pytest.raises(PersistenceError, match=message):
        ood_zoo.load(tmp_path)


def test_a_bound_without_calibration_scores_is_refused(rng, tmp_path):
    knn_detector(rng).save(tmp_path)
    edit_config(tmp_path, false_alarm_bound=0.1)
    with pytest.raises(PersistenceError, match="lack 'calibration_scores_'"):
        ood_zoo.load(tmp_path)


def test_cli_fit_with_alpha_and_score_print_the_guarantee(rng, tmp_path, capsys):
    paths = {}
    for name, n in (("train", 200), ("cal", 99), ("test", 50)):
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], id_features(rng, n)["features"])
    model = tmp_path / "model"
    code = main(["fit", "knn", "--features", str(paths["train"]), "--calibration-features",
                 str(paths["cal"]), "--alpha", "0.1", "--out", str(model)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "false-alarm rate <= 0.1, guaranteed (split-conformal, 99 calibration samples)" in out
    assert ood_zoo.load(model).false_alarm_bound_ == 0.1
    code = main(["score", str(model), "--features", str(paths["test"]), "--out",
                 str(tmp_path / "s.npy"), "--json"])
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert code == 0
    assert summary["false_alarm_bound"] == 0.1
    assert "guaranteed (split-conformal, 99 calibration samples)" in summary["guarantee"]
    main(["fit", "knn", "--features", str(paths["train"]), "--out", str(tmp_path / "plain")])
    capsys.readouterr()
    code = main(["score", str(tmp_path / "plain"), "--features", str(paths["test"]), "--out",
                 str(tmp_path / "s.npy")])
    out, _ = capsys.readouterr()
    assert code == 0
    assert "false_alarm_bound=None" in out
    assert "no guarantee; the threshold is an in-sample estimate" in out
    code = main(["fit", "knn", "--features", str(paths["train"]), "--alpha", "0.1",
                 "--out", str(tmp_path / "bad")])
    assert code == 2
    assert "--alpha needs --calibration-features" in capsys.readouterr().err


@pytest.mark.parametrize("name", ood_zoo.list_detectors())
def test_every_builtin_calibrates_and_saves_its_pvalues(name, tmp_path):
    cls = get_registry().get(name).cls
    special = cls.requires.language_model or cls.requires.layered
    data = kit.default_make_inputs(cls)() if special else kit.make_synthetic_inputs(seed=5)
    detector = ood_zoo.create(name).fit(**data.fit.fit_kwargs(cls.requires))
    detector.calibrate(**data.id.score_kwargs(cls.requires), alpha=0.2)
    inputs = data.ood.score_kwargs(cls.requires)
    pvalues = detector.pvalues(**inputs)
    assert ((pvalues > 0) & (pvalues <= 1)).all()
    np.testing.assert_array_equal(detector.predict(**inputs), pvalues > 0.2)
    loaded = ood_zoo.load(detector.save(tmp_path))
    assert loaded.false_alarm_bound_ == detector.false_alarm_bound_ <= 0.2
    np.testing.assert_array_equal(loaded.pvalues(**inputs), pvalues)


@pytest.mark.cuda
def test_pvalues_and_fdr_on_cuda(rng):
    bank = torch.from_numpy(rng.normal(size=(200, WIDTH)).astype(np.float32)).cuda()
    detector = ood_zoo.create("knn", k=3, normalize=False).fit(bank)
    detector.calibrate(torch.from_numpy(id_features(rng, 60)["features"]).cuda(), alpha=0.1)
    assert detector.calibration_scores_.device.type == "cpu"
    batch = torch.from_numpy(id_features(rng, 40)["features"]).cuda()
    pvalues = detector.pvalues(batch)
    assert pvalues.device.type == "cuda"
    assert pvalues.dtype == torch.float64
    expected = conformal_pvalues(detector.calibration_scores_, detector.score(batch).cpu())
    assert torch.equal(pvalues.cpu(), expected)
    accepted = detector.predict(batch, fdr=0.2)
    assert accepted.device.type == "cuda"
    assert torch.equal(accepted.cpu(), ~benjamini_hochberg(expected, 0.2))
