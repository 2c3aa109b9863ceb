"""The ``fusion`` detector against a float64 numpy reference of its mid-rank empirical CDFs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ood_zoo
from ood_zoo import testing as kit
from ood_zoo.detectors import FusionDetector, MahalanobisDetector, MaxLogitDetector
from ood_zoo.errors import PersistenceError, UnknownDetectorError

torch.set_num_threads(1)

_INPUTS = kit.make_synthetic_inputs(seed=5)
DATA = kit.SyntheticInputs(*(split.astype(np.float64)
                             for split in (_INPUTS.fit, _INPUTS.id, _INPUTS.ood)))


def mid_rank(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The share of ``reference`` below each score, ties counted half, by explicit counting."""
    return np.array([((reference < s).sum() + (reference <= s).sum()) / (2 * reference.size)
                     for s in scores])


def ecdf(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The continuous mid-rank empirical CDF: interpolated, with hyperbolic tails; float64."""
    reference = np.asarray(reference, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    values = np.unique(reference)
    mids = mid_rank(reference, values)
    scale = np.abs(reference - reference.mean()).mean() or 1.0
    out = np.interp(scores, values, mids)
    low, high = scores < values[0], scores > values[-1]
    out[low] = mids[0] * scale / (scale + values[0] - scores[low])
    out[high] = 1 - (1 - mids[-1]) * scale / (scale + scores[high] - values[-1])
    return out


def cosine_leave_one_out(bank: np.ndarray) -> np.ndarray:
    """Each bank row's best cosine similarity among the other rows."""
    unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.max(axis=1)


def test_matches_a_float64_reference_of_the_weighted_mean_of_ranks():
    fit, query = DATA.fit, np.concatenate([DATA.id.features, DATA.ood.features])
    logits = np.concatenate([DATA.id.logits, DATA.ood.logits])
    fusion = ood_zoo.create("fusion", members=["mahalanobis", "energy", "gmm"], weights=[1, 3, 2],
                            member_params={"gmm": {"n_components": 2}})
    fusion.fit(fit.features, fit.labels, fit.logits)
    members = [MahalanobisDetector().fit(fit.features, fit.labels),
               ood_zoo.create("energy").fit(logits=fit.logits),
               ood_zoo.create("gmm", n_components=2).fit(fit.features, fit.labels)]
    ranks = [ecdf(member.score(fit.features, fit.logits), member.score(query, logits))
             for member in members]
    want = (1 * ranks[0] + 3 * ranks[1] + 2 * ranks[2]) / 6
    got = fusion.score(query, logits)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert ((got > 0) & (got < 1)).all()


def test_bank_members_rank_against_their_leave_one_out_fit_scores():
    fit, query = DATA.fit, np.concatenate([DATA.id.features, DATA.ood.features])
    fusion = FusionDetector(members="cosine").fit(fit.features)
    reference = fusion.reference_[0].numpy()  # ties depend on the last bit: take them as they are
    np.testing.assert_allclose(reference, np.sort(cosine_leave_one_out(fit.features)),
                               rtol=0, atol=1e-12)
    cosine = ood_zoo.create("cosine").fit(fit.features)
    np.testing.assert_allclose(fusion.score(query), ecdf(reference, cosine.score(query)),
                               rtol=0, atol=1e-12)


def test_ties_count_half_and_the_tails_keep_the_order():
    rng = np.random.default_rng(0)
    fit_logits = rng.integers(0, 4, size=(60, 3)).astype(np.float32)  # max logits tie a lot
    maxima = np.array([0, 1, 1.5, 2, 3, 4, 9, -1, -5], dtype=np.float32)
    query = np.stack([maxima, np.full_like(maxima, -9), np.full_like(maxima, -9)], axis=1)
    fusion = FusionDetector(members="maxlogit").fit(logits=fit_logits)
    reference = fit_logits.max(axis=1)
    got = fusion.score(logits=query)
    np.testing.assert_allclose(got, ecdf(reference, maxima), rtol=0, atol=1e-7)
    present = np.isin(maxima, reference)  # at a fit score: exactly its mid-rank
    np.testing.assert_allclose(got[present], mid_rank(reference, maxima[present]), atol=1e-7)
    np.testing.assert_allclose(got[2], (got[1] + got[3]) / 2, atol=1e-7)  # linear in between
    top, bottom = mid_rank(reference, [reference.max()])[0], mid_rank(reference, [0.0])[0]
    assert top < got[5] < got[6] < 1  # above every fit score: ordered, below 1
    assert bottom > got[7] > got[8] > 0
    assert not fusion.requires.features
    assert fusion.requires.logits


def test_one_member_is_a_monotone_transform_of_that_member():
    fusion = FusionDetector(members="mahalanobis").fit(DATA.fit.features, DATA.fit.labels)
    member = MahalanobisDetector().fit(DATA.fit.features, DATA.fit.labels)
    query = np.concatenate([DATA.id.features, DATA.ood.features])
    order = np.argsort(member.score(query), kind="stable")
    assert (np.diff(fusion.score(query)[order]) >= 0).all()
    assert kit.auroc(fusion.score(DATA.id.features), fusion.score(DATA.ood.features)) == (
        kit.auroc(member.score(DATA.id.features), member.score(DATA.ood.features))
    )


def test_save_load_round_trip_restores_every_member(tmp_path):
    fusion = ood_zoo.create(
        "fusion", members=["knn", "maxlogit", "mahalanobis"],
        member_params={"knn": {"k": 3, "normalize": False}}, weights=[2, 1, 1],
    ).fit(DATA.fit.features, DATA.fit.labels, DATA.fit.logits)
    fusion.save(tmp_path / "fusion")
    loaded = ood_zoo.load(tmp_path / "fusion")
    assert type(loaded) is FusionDetector
    assert loaded.get_params() == fusion.get_params()
    assert loaded.threshold_ == fusion.threshold_
    assert loaded.member_detectors[0].hparams["k"] == 3
    for split in (DATA.id, DATA.ood):
        np.testing.assert_array_equal(
            loaded.score(split.features, split.logits), fusion.score(split.features, split.logits)
        )
    again = FusionDetector.load(tmp_path / "fusion")
    np.testing.assert_array_equal(again.score(DATA.id.features, DATA.id.logits),
                                  fusion.score(DATA.id.features, DATA.id.logits))
    with pytest.raises(PersistenceError):
        MaxLogitDetector.load(tmp_path / "fusion")


def test_a_save_whose_members_were_edited_is_refused(tmp_path):
    FusionDetector(members="cosine,maxlogit").fit(DATA.fit.features, logits=DATA.fit.logits).save(
        tmp_path / "fusion"
    )
    config_path = tmp_path / "fusion" / "detector.json"
    config = json.loads(config_path.read_text())
    config["params"]["members"] = "cosine,mahalanobis"
    config_path.write_text(json.dumps(config))
    with pytest.raises(PersistenceError, match="not the state of 'fusion'"):
        ood_zoo.load(tmp_path / "fusion")


def test_loading_refuses_state_that_does_not_match_the_members(tmp_path):
    fusion = FusionDetector(members="cosine,maxlogit")
    fusion.fit(DATA.fit.features, logits=DATA.fit.logits)
    state = fusion.state_dict()
    unsorted = {**state, "reference_": state["reference_"].flip(1)}
    with pytest.raises(ValueError, match="sorted"):
        FusionDetector(members="cosine,maxlogit").load_state_dict(unsorted)
    with pytest.raises(ValueError, match="reference_"):
        FusionDetector(members="cosine,maxlogit").load_state_dict(
            {**state, "reference_": state["reference_"][:1]}
        )
    with pytest.raises(KeyError):
        FusionDetector(members="cosine,mahalanobis").load_state_dict(state)


def test_clear_errors_for_bad_members_weights_and_member_params():
    with pytest.raises(UnknownDetectorError, match=r"\['nope', 'zilch'\]"):
        FusionDetector(members=["cosine", "nope", "zilch"])
    with pytest.raises(ValueError, match="language model"):
        FusionDetector(members=["cosine", "perplexity"])
    with pytest.raises(ValueError, match="at least one"):
        FusionDetector(members=[])
    with pytest.raises(ValueError, match="2 positive"):
        FusionDetector(members="cosine,mahalanobis", weights=[1])
    with pytest.raises(ValueError, match="2 positive"):
        FusionDetector(members="cosine,mahalanobis", weights="1,-1")
    with pytest.raises(ValueError, match="not members"):
        FusionDetector(members="cosine", member_params={"knn": {"k": 3}})
    with pytest.raises(TypeError, match="unknown parameter"):
        FusionDetector(members="knn", member_params={"knn": {"kk": 3}})
    with pytest.raises(ValueError, match="JSON"):
        FusionDetector(member_params="{not json")


def test_requirements_are_the_union_of_the_members():
    assert FusionDetector().requires == ood_zoo.api.Requirements(features=True, labels=True)
    both = FusionDetector(members="cosine,energy").requires
    assert (both.features, both.labels, both.logits, both.fit) == (True, False, True, True)


def test_conformance_kit(tmp_path):
    kit.check_detector(FusionDetector, params={"members": "cosine,mahalanobis"}, tmp_path=tmp_path)


@pytest.mark.cuda  # skipped by tests/conftest.py where no GPU is present
def test_cuda_input_matches_cpu():
    fit = DATA.fit.astype(np.float32)
    query = DATA.id.astype(np.float32)
    cpu = FusionDetector(members="knn,mahalanobis,energy").fit(fit.features, fit.labels,
                                                                fit.logits)
    want = torch.from_numpy(cpu.score(query.features, query.logits))
    gpu_inputs = [torch.from_numpy(a).cuda() for a in (fit.features, fit.labels, fit.logits)]
    gpu = FusionDetector(members="knn,mahalanobis,energy").fit(*gpu_inputs)
    queries = [torch.from_numpy(a).cuda() for a in (query.features, query.logits)]
    for detector in (gpu, cpu):  # fitted on the GPU, and fitted on the CPU scoring GPU queries
        got = detector.score(*queries)
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-4)


def test_a_large_fit_set_gives_the_cdfs_a_seeded_sample(monkeypatch):
    """Above REFERENCE_ROWS fit rows the CDFs hold the leave-one-out scores of a seeded sample
    (checked against the float64 1-NN reference), and the threshold is still placed."""
    from ood_zoo.detectors import fusion as fusion_module

    try:
        from . import reference as ref
    except ImportError:
        import reference as ref
    monkeypatch.setattr(fusion_module, "REFERENCE_ROWS", 40)
    x = np.random.default_rng(7).normal(size=(200, 5))
    det = FusionDetector(members="cosine").fit(x)
    rows = fusion_module.reference_rows(200)
    assert rows.shape == (40,)
    assert bool((rows[1:] > rows[:-1]).all())
    want = np.sort(ref.knn_leave_one_out(x, 1, "cosine")[rows.numpy()])
    np.testing.assert_allclose(det.reference_[0].numpy(), want, atol=1e-12)
    assert det.threshold_ is not None
