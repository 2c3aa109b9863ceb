"""Next-token divergences from uniform (``renyi``, ``fisher_rao``, ``self_certainty``), offline.

The per-token quantities are checked against float64 numpy written here from the definitions
(random, peaked, flat and ±1e4 logits, vocabularies of 1 and 2, ``α`` near 1); the whole pass
against a float64 reference from the tiny model's full ``model(...).logits``, one text at a time.
With the lm-polygraph 0.7.0 wheel unpacked (``tests/oracles.py``; ``make test`` does it), its
``RenyiNeg``, ``FisherRao`` and ``SelfCertainty`` estimators are an oracle on the same per-token
log-probabilities."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from oracles import peer_modules
from scipy.special import log_softmax

import ood_zoo
from ood_zoo import Requirements, metrics
from ood_zoo import testing as kit
from ood_zoo.bench.runner import DetectorInputs, run_detectors, usable_detectors
from ood_zoo.bench.zero_grad import run_bench
from ood_zoo.detectors import (
    FisherRaoDetector,
    RenyiDetector,
    SelfCertaintyDetector,
)
from ood_zoo.detectors.likelihood import RATIO_STATS
from ood_zoo.features import (
    NEXT_TOKEN_STATS,
    RENYI_ALPHA,
    next_token_divergences,
    next_token_statistics,
    sequence_log_likelihood,
)
from ood_zoo.registry import Registry

try:  # tests/ as a package, or on sys.path (pytest's default rootdir-relative import)
    from . import test_bench as bench_tests
    from .test_features import TEMPLATE, TEXTS, make_model, make_tokenizer
    from .test_likelihood import PREFIX, SUFFIX, _with_lm_stats, word_ids
except ImportError:
    import test_bench as bench_tests
    from test_features import TEMPLATE, TEXTS, make_model, make_tokenizer
    from test_likelihood import PREFIX, SUFFIX, _with_lm_stats, word_ids

DETECTORS = (RenyiDetector, FisherRaoDetector, SelfCertaintyDetector)
COLUMN = {"renyi": 1, "fisher_rao": 2, "self_certainty": 3}


# ----------------------------------------------------------------------------- references
def ref_divergences(z: np.ndarray, alpha: float) -> np.ndarray:
    """float64 ``[rows, 3]``: ``D_α(p || u)``, ``(2/π) arccos Σ sqrt(p/N)``, ``KL(u || p)``."""
    log_p = log_softmax(np.asarray(z, dtype=np.float64), axis=1)
    p = np.exp(log_p)
    n = z.shape[1]
    if alpha == 1.0:
        renyi = np.log(n) + np.sum(np.where(p > 0, p * log_p, 0.0), axis=1)
    else:
        renyi = np.log(n) + np.log(np.sum(p**alpha, axis=1)) / (alpha - 1)
    fisher_rao = 2 / np.pi * np.arccos(np.clip(np.sum(np.sqrt(p / n), axis=1), -1.0, 1.0))
    self_certainty = -np.log(n) - log_p.mean(axis=1)
    return np.stack([renyi, fisher_rao, self_certainty], axis=1)


def logit_cases(n: int, seed: int) -> np.ndarray:
    """Random, flat, peaked, ±1e4 and tied rows over a vocabulary of ``n``."""
    rng = np.random.default_rng(seed)
    rows = [rng.normal(scale=3.0, size=n), np.zeros(n), rng.normal(scale=0.01, size=n)]
    peaked = rng.normal(size=n)
    peaked[0] = 40.0
    extreme = rng.choice([-1e4, 1e4, 0.0], size=n)
    extreme[0] = 1e4
    rows += [peaked, extreme, np.full(n, 1e4), rng.normal(scale=30.0, size=n)]
    return np.stack(rows)


# ----------------------------------------------------------------------------- per token
@pytest.mark.parametrize("n", [1, 2, 7, 1000, 50_000])
@pytest.mark.parametrize("alpha", [0.5, 0.1, 1.0, 1 - 1e-4, 1 + 1e-6, 1.2, 2.0, 5.0])
def test_divergences_match_float64_reference(n, alpha):
    z = logit_cases(n, seed=n)
    want = ref_divergences(z, alpha)
    scale = np.maximum(10.0, np.abs(z).max(axis=1, keepdims=True))  # ulps of the logits
    got64 = next_token_divergences(torch.from_numpy(z), alpha)
    assert got64.dtype == torch.float64
    assert got64.shape == (len(z), 3)
    # the reference's own log Σ p^α / (α - 1) loses ~1e-16 / |α - 1| near α = 1
    near_one = 1e-15 / abs(alpha - 1) if alpha != 1 else 0.0
    log_n = math.log(n)
    assert_within(got64, want, 5e-14 * (scale + log_n) + near_one, 1e-12)
    got32 = next_token_divergences(torch.from_numpy(z).float(), alpha)
    assert got32.dtype == torch.float32
    assert_within(got32, want, 1e-6 * (scale + 2 * log_n), 1e-5)


def assert_within(got: torch.Tensor, want: np.ndarray, atol, rtol: float) -> None:
    error = np.abs(got.double().numpy() - want)
    bound = atol + rtol * np.abs(want)
    assert np.isfinite(got.numpy()).all()
    assert (error <= bound).all(), (error.max(axis=0), (error / bound).max(axis=0))


def test_divergences_at_their_bounds():
    n = 1000
    flat = next_token_divergences(torch.zeros(1, n), 0.5)[0]
    torch.testing.assert_close(flat, torch.zeros(3), atol=1e-6, rtol=0)
    one_hot = torch.full((1, n), -1e4)
    one_hot[0, 3] = 1e4
    sharp = next_token_divergences(one_hot, 0.5)[0].double()
    assert float(sharp[0]) == pytest.approx(math.log(n), abs=1e-6)  # D_α = log N
    assert float(sharp[1]) == pytest.approx(2 / math.pi * math.acos(math.sqrt(1 / n)), abs=1e-6)
    assert float(sharp[2]) == pytest.approx(2e4 * (n - 1) / n - math.log(n), rel=1e-6)
    minus_inf = torch.tensor([[0.0, 0.0, -math.inf, -math.inf]])  # two tokens out of four
    for alpha in (0.7, 0.9, 1.0, 1.1, 3.0):  # D_α of a uniform p on half the vocabulary: log 2
        got = next_token_divergences(minus_inf, alpha)[0]
        assert float(got[0]) == pytest.approx(math.log(2), abs=1e-6)
        assert float(got[1]) == pytest.approx(2 / math.pi * math.acos(math.sqrt(0.5)), abs=1e-6)
        assert math.isinf(float(got[2]))


def test_renyi_is_continuous_at_alpha_one():
    """``D_α - KL ≈ (α - 1) Var_p(log p) / 2`` near 1, in float64 and float32 alike."""
    z = torch.from_numpy(logit_cases(500, seed=3))
    kl = next_token_divergences(z, 1.0)[:, 0]
    log_p = log_softmax(z.numpy(), axis=1)
    p = np.exp(log_p)
    mean = (p * log_p).sum(axis=1, keepdims=True)
    variance = torch.from_numpy((p * (log_p - mean) ** 2).sum(axis=1))
    for alpha in (1 - 1e-7, 1 + 1e-7, 1 - 1e-4, 1 + 1e-4):
        gap = (next_token_divergences(z, alpha)[:, 0] - kl).abs()
        assert bool((gap <= abs(alpha - 1) * variance + 1e-10).all())
        gap32 = (next_token_divergences(z.float(), alpha)[:, 0] - kl).abs()
        scale = z.abs().amax(1).clamp(min=10.0)
        assert bool((gap32 <= abs(alpha - 1) * variance + 1e-6 * scale).all()), gap32
    orders = [next_token_divergences(z, a)[:, 0] for a in (0.3, 0.5, 1.0, 2.0, 5.0)]
    for low, high in itertools.pairwise(orders):  # D_α grows with α
        assert bool((low <= high + 1e-9).all())


@pytest.mark.parametrize("alpha", [0, -1.0, math.nan, math.inf, True, "0.5"])
def test_bad_inputs_are_refused(alpha):
    with pytest.raises(ValueError, match="Rényi order"):
        next_token_divergences(torch.zeros(1, 3), alpha)
    with pytest.raises(ValueError, match="Rényi order"):
        next_token_statistics(["fun"], make_model("llama-lm"), make_tokenizer("llama-lm", "right"),
                              alpha=alpha, progress=False)
    for bad in (torch.zeros(3), torch.zeros(1, 3, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"\[rows, vocab\]"):
            next_token_divergences(bad, 0.5)


# ----------------------------------------------------------------------------- the pass
@pytest.fixture(scope="module")
def lm():
    return make_model("llama-lm")


def reference_statistics(texts: list[str], net: torch.nn.Module, tokenizer, *, alpha: float,
                         template: bool) -> np.ndarray:
    """float64 ``NEXT_TOKEN_STATS`` per text from the full ``model(ids).logits`` of that text."""
    net64 = copy.deepcopy(net).double()
    prefix = PREFIX.split() if template else []
    suffix = SUFFIX.split() if template else []
    rows = []
    for text in texts:
        words = text.split()
        ids = [tokenizer.bos_token_id, *word_ids(tokenizer, prefix + words + suffix)]
        first = 1 + len(prefix)
        with torch.inference_mode():
            logits = net64(torch.tensor([ids])).logits[0].numpy()
        predicting = logits[first - 1 : first - 1 + len(words)]  # position p - 1 predicts p
        log_p = log_softmax(predicting, axis=1)
        picked = log_p[np.arange(len(words)), ids[first : first + len(words)]].sum()
        rows.append([picked, *ref_divergences(predicting, alpha).sum(axis=0), len(words)])
    return np.array(rows)


@pytest.mark.parametrize(("alpha", "template"), [(RENYI_ALPHA, True), (1.0, False), (2.0, True)])
def test_pass_matches_reference_from_full_logits(lm, alpha, template):
    tokenizer = make_tokenizer("llama-lm", "right")
    got = next_token_statistics(TEXTS, lm, tokenizer, template=TEMPLATE if template else None,
                                alpha=alpha, batch_size=3, progress=False)
    assert got.dtype == torch.float64
    assert got.shape == (len(TEXTS), len(NEXT_TOKEN_STATS))
    want = reference_statistics(TEXTS, lm, tokenizer, alpha=alpha, template=template)
    np.testing.assert_array_equal(got[:, -1].numpy(), want[:, -1])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    assert bool((got[:, 1] > 0).all() and (got[:, 2] > 0).all() and (got[:, 3] > 0).all())
    seq = sequence_log_likelihood(TEXTS, lm, tokenizer, template=TEMPLATE if template else None,
                                  batch_size=3, progress=False)
    torch.testing.assert_close(seq, got[:, [0, -1]], rtol=1e-6, atol=1e-6)


def test_pass_is_exact_for_large_logits(lm):
    tokenizer = make_tokenizer("llama-lm", "right")
    sharp = copy.deepcopy(lm)
    with torch.no_grad():
        sharp.lm_head.weight.mul_(300)
    got = next_token_statistics(TEXTS, sharp, tokenizer, template=TEMPLATE, progress=False)
    want = reference_statistics(TEXTS, sharp, tokenizer, alpha=RENYI_ALPHA, template=True)
    assert want[:, 3].max() > 100  # self-certainty of logits in the hundreds
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-3)


def test_alpha_is_part_of_the_cache_key(lm, tmp_path):
    tokenizer = make_tokenizer("llama-lm", "right")
    kw = {"template": TEMPLATE, "max_length": 12, "progress": False, "cache": tmp_path}
    first = next_token_statistics(TEXTS, lm, tokenizer, **kw)
    calls = []
    hook = lm.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        assert torch.equal(next_token_statistics(TEXTS, lm, tokenizer, alpha=RENYI_ALPHA, **kw),
                           first)
        assert torch.equal(sequence_log_likelihood(TEXTS, lm, tokenizer, **kw), first[:, [0, -1]])
        assert not calls  # one entry serves both
        other = next_token_statistics(TEXTS, lm, tokenizer, alpha=2.0, **kw)
        assert calls
    finally:
        hook.remove()
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    torch.testing.assert_close(other[:, [0, 2, 3, 4]], first[:, [0, 2, 3, 4]])
    assert bool((other[:, 1] > first[:, 1]).all())  # D_2 > D_0.5


# ----------------------------------------------------------------------------- the detectors
RNG = np.random.default_rng(1)
COUNTS = RNG.integers(1, 50, size=30).astype(np.float64)
STATS = np.stack([-COUNTS * RNG.uniform(1, 4, 30), COUNTS * RNG.uniform(0, 8, 30),
                  COUNTS * RNG.uniform(0, 1, 30), COUNTS * RNG.uniform(0, 12, 30), COUNTS], 1)


@pytest.mark.parametrize("cls", DETECTORS)
def test_score_is_the_per_token_mean(cls, tmp_path):
    detector = cls()
    assert detector.requires == Requirements(features=False, language_model=True, fit=False)
    assert cls.stats_columns == (NEXT_TOKEN_STATS[COLUMN[cls.name]], "n_tokens")
    stats = STATS[:, [COLUMN[cls.name], -1]]
    want = STATS[:, COLUMN[cls.name]] / COUNTS
    np.testing.assert_allclose(detector.score(stats), want, rtol=1e-15)  # no fit needed
    as32 = detector.score(torch.from_numpy(stats).float())
    assert as32.dtype == torch.float32
    np.testing.assert_allclose(as32.numpy(), want, rtol=1e-6)
    fitted = cls(target_tpr=0.9).fit(stats)
    fitted.save(tmp_path / cls.name)
    again = ood_zoo.load(tmp_path / cls.name)
    assert type(again) is cls
    assert again.threshold_ == fitted.threshold_
    with pytest.raises(ood_zoo.InputError, match=r"\[n, 2\]"):
        detector.score(STATS)


@pytest.mark.parametrize("cls", DETECTORS)
def test_kit_runs_every_check(cls, tmp_path):
    assert [n for n, _ in kit.detector_checks(cls)] == list(kit.CHECKS)
    kit.check_detector(cls, tmp_path=tmp_path)
    data = kit.make_likelihood_inputs(columns=NEXT_TOKEN_STATS)
    for split in (data.fit, data.id, data.ood):
        per_token = split.features[:, 1:4] / split.features[:, 4:]
        assert (per_token > 0).all()  # plausible values
        assert (per_token[:, 1] < 1).all()
        assert (split.features[:, 0] < 0).all()


def test_kit_layouts():
    same = kit.make_likelihood_inputs(columns=("self_certainty", "log_likelihood", "n_tokens"))
    full = kit.make_likelihood_inputs(columns=NEXT_TOKEN_STATS)
    np.testing.assert_array_equal(same.id.features, full.id.features[:, [3, 0, 4]])
    for bad in (("renyi_divergence",), ("n_tokens", "renyi_divergence"), ("entropy", "n_tokens")):
        with pytest.raises(ValueError, match="columns must be"):
            kit.make_likelihood_inputs(columns=bad)


# ----------------------------------------------------------------------------- lm-polygraph
@pytest.fixture
def lm_polygraph():
    """lm-polygraph's ``RenyiNeg``, ``FisherRao`` and ``SelfCertainty``, imported from the wheel.

    The packages' ``__init__`` modules import the whole library (and its model stack), so the
    packages are stand-ins with the wheel's path and only the three estimator modules (with the
    ``estimator`` and ``utils.common`` modules they use) are imported; ``sys.modules`` is
    restored after.
    """
    names = ("renyi_neg", "fisher_rao", "self_certainty")
    with peer_modules("lm-polygraph", ("lm_polygraph", "lm_polygraph.estimators",
                                       "lm_polygraph.utils"),
                      [f"lm_polygraph.estimators.{name}" for name in names]) as modules:
        yield {"renyi": modules[0].RenyiNeg, "fisher_rao": modules[1].FisherRao,
               "self_certainty": modules[2].SelfCertainty}


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("n", [2, 50, 2000])
def test_parity_with_lm_polygraph(lm_polygraph, alpha, n):
    """Our scores against lm-polygraph's at ``temperature=1`` on the same log-probabilities.

    Mapping: renyi = RenyiNeg + 2 log N for α != 1 (their offset is ``-(α-1) log N`` inside
    the ``1/(α-1)`` factor) and RenyiNeg at α = 1; fisher_rao = FisherRao; self_certainty =
    -SelfCertainty. Each "text" is a few positions of random logits (scale 3, some rows
    peaked); their score is the mean over positions, ours the summed statistic / n_tokens.
    """
    rng = np.random.default_rng(n)
    texts = []
    for length in (1, 3, 8):
        z = rng.normal(scale=3.0, size=(length, n))
        z[0, 0] += 20.0
        texts.append(log_softmax(z, axis=1))  # their input: per-token log-probabilities
    ours = {}
    for name in COLUMN:
        stats = [np.concatenate([next_token_divergences(torch.from_numpy(lp), alpha).numpy()
                                 .sum(axis=0), [len(lp)]]) for lp in texts]
        cls = {"renyi": RenyiDetector, "fisher_rao": FisherRaoDetector,
               "self_certainty": SelfCertaintyDetector}[name]
        ours[name] = cls().score(np.array(stats)[:, [COLUMN[name] - 1, 3]])
    stats_in = {"greedy_log_probs": texts}
    theirs = {
        "renyi": lm_polygraph["renyi"](alpha=alpha, temperature=1)(stats_in)
        + (0.0 if alpha == 1 else 2 * np.log(n)),
        "fisher_rao": lm_polygraph["fisher_rao"](temperature=1)(stats_in),
        "self_certainty": -lm_polygraph["self_certainty"]()(stats_in),
    }
    for name in COLUMN:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- the runners
def _sets() -> tuple[DetectorInputs, DetectorInputs, dict[str, DetectorInputs]]:
    """``NEXT_TOKEN_STATS`` where ID text is the more likely and the more peaked."""
    rng = np.random.default_rng(5)

    def one(shift: float, n: int, labels=None) -> DetectorInputs:
        counts = rng.integers(5, 30, size=n).astype(np.float64)
        means = [(-3.0 + shift, 0.3), (4.0 + shift, 0.3), (0.6 + shift / 10, 0.03),
                 (7.0 + shift, 0.3)]
        sums = [counts * rng.normal(m, sd, size=n) for m, sd in means]
        stats = torch.from_numpy(np.stack([*sums, counts], axis=1))
        return DetectorInputs(torch.from_numpy(rng.normal(size=(n, 4))).float(), None, labels,
                              stats)

    return one(1.0, 50, np.zeros(50, dtype=np.int64)), one(1.0, 40), {"ood": one(-1.0, 40)}


def test_runner_gives_each_detector_its_columns_by_name():
    registry = Registry(entry_points=[], allow=set(), block=set(), strict=False)
    names = ["perplexity", "renyi", "fisher_rao", "self_certainty", "likelihood_ratio"]
    bank, id_test, oods = _sets()
    assert id_test.lm_columns == NEXT_TOKEN_STATS
    kept: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rows = run_detectors(bank, id_test, oods, registry=registry, detectors=names,
                         on_scores=lambda d, o, a, b: kept.__setitem__(d, (a, b)))
    assert {r["detector"] for r in rows} == set(names) - {"likelihood_ratio"}
    assert all(r["error"] is None for r in rows), rows
    assert all(r["auroc"] > 0.95 for r in rows), rows
    for name, column in {"perplexity": 0, **COLUMN}.items():
        for inputs, got in zip((id_test, oods["ood"]), kept[name], strict=True):
            want = (inputs.lm_stats[:, column] / inputs.lm_stats[:, -1]).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-6)
        row = next(r for r in rows if r["detector"] == name)
        assert row["auroc"] == pytest.approx(metrics.evaluate(*kept[name])["auroc"], abs=1e-12)
    _, reasons = usable_detectors(registry, names, NEXT_TOKEN_STATS)
    assert reasons == {"likelihood_ratio": "takes [n, 3] language-model statistics ("
                       f"{', '.join(RATIO_STATS)}); this run has [n, 5] "
                       f"({', '.join(NEXT_TOKEN_STATS)})"}
    _, reasons = usable_detectors(registry, names, RATIO_STATS)
    assert set(reasons) == set(names) - {"likelihood_ratio"}


def test_detector_inputs_name_their_columns():
    bank, _, _ = _sets()
    picked = bank.lm_features(("self_certainty", "n_tokens"))
    torch.testing.assert_close(picked, bank.lm_stats[:, [3, 4]])
    assert bank.lm_features(()) is bank.lm_stats
    with pytest.raises(ValueError, match="no column 'log_likelihood_finetuned'"):
        bank.lm_features(RATIO_STATS)
    with pytest.raises(ValueError, match="do not have the 3 columns"):
        DetectorInputs(bank.features, lm_stats=bank.lm_stats, lm_columns=RATIO_STATS)
    with pytest.raises(ValueError, match="no language-model statistics"):
        DetectorInputs(bank.features).lm_features(("n_tokens",))
    ratio = DetectorInputs(bank.features, lm_stats=bank.lm_stats[:, [0, 0, 4]],
                           lm_columns=RATIO_STATS)
    with pytest.raises(ValueError, match="different columns"):
        run_detectors(bank, ratio, {}, detectors=["perplexity"])


def test_zero_grad_runs_the_next_token_detectors():
    names = ("cosine", "perplexity", "renyi", "fisher_rao", "self_certainty")
    config = bench_tests.config(seeds=(1,), sweep_layers=None, detectors=names)
    result = run_bench(config, extractor=_with_lm_stats(bench_tests.synthetic_extractor()),
                       suite=bench_tests.tiny_suite())
    for name in names[2:]:
        rows = [r for r in result.rows if r["detector"] == name]
        assert {r["setting"] for r in rows} == {"far:sent>far", "far:sent>topic",
                                                "near:topic>topic-holdout1"}
        assert all(r["error"] is None for r in rows)
        assert next(r["auroc"] for r in rows if r["setting"] == "far:sent>far") == 1.0
    assert not {"renyi", "fisher_rao", "self_certainty"} & set(
        result.meta["settings"]["skipped_detectors"])
