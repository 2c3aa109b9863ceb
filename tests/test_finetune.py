"""LoRA fine-tuning (ood_zoo.finetune) on a tiny in-process Llama: the loss against a float64
reference, training, early stopping, the reporting epoch, generation, save/load and merging."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ood_zoo.data import few_shot, few_shot_indices
from ood_zoo.data.textset import TextSet
from ood_zoo.errors import InputError, PersistenceError
from ood_zoo.features.models import FINGERPRINT_ATTR
from ood_zoo.finetune import LoraSettings, TrainConfig, fine_tune, load_fine_tuned

WORDS = ["the", "film", "was", "great", "bad", "really", "plot", "very", "input", "output",
         ":", "positive", "negative", "neutral"]
TEMPLATE = "input : {text} output :"
LABELS = ["negative", "positive"]
GOOD = ["the film was great", "really great plot", "very great", "great film", "the plot was great"]
BAD = ["the film was bad", "really bad plot", "very bad", "bad film", "the plot was bad"]


def make_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    from tokenizers import decoders

    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]",
                                   unk_token="[UNK]", bos_token="<s>", eos_token="</s>")


def make_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=4 + len(WORDS), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3, initializer_range=0.2)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def data():
    texts = GOOD + BAD
    labels = [1] * len(GOOD) + [0] * len(BAD)
    return texts, labels


QUICK = TrainConfig(learning_rate=3e-2, max_epochs=12, patience=6, min_epochs=0,
                    batch_size=4, max_new_tokens=4, progress=False, max_length=32)
NO_DROPOUT = LoraSettings(dropout=0.0)


def trained(objective: str = "generative", config: TrainConfig = QUICK):
    texts, labels = data()
    return fine_tune(make_model(), make_tokenizer(), texts, labels, texts, labels,
                     label_words=LABELS, objective=objective, template=TEMPLATE,
                     lora=NO_DROPOUT, config=config)


# --------------------------------------------------------------------------- the loss
def reference_generative_loss(lm, tokenizer, texts, labels) -> float:
    """Per-example full forward in float64, CE over the label tokens and EOS only."""
    lm = lm.double()
    total, count = 0.0, 0
    for text, label in zip(texts, labels, strict=True):
        prompt = tokenizer(TEMPLATE.replace("{text}", text))["input_ids"]
        target = [tokenizer.convert_tokens_to_ids(LABELS[label]), tokenizer.eos_token_id]
        ids = torch.tensor([prompt + target])
        with torch.no_grad():
            logp = F.log_softmax(lm(input_ids=ids).logits[0].double(), dim=-1)
        for j, token in enumerate(target):
            total -= float(logp[len(prompt) - 1 + j, token])
            count += 1
    return total / count


@pytest.mark.parametrize("objective", ["generative", "discriminative"])
def test_loss_matches_float64_reference(objective):
    run = trained(objective, TrainConfig(learning_rate=3e-2, max_epochs=2, min_epochs=0,
                                         patience=5, batch_size=4, progress=False,
                                         max_length=32, max_new_tokens=3))
    tokenizer = run.tokenizer
    texts, labels = data()
    run.model.eval()
    prompts = run._prompts(texts)
    with torch.no_grad():
        got = float(run.loss(prompts, labels, run._targets() if objective == "generative"
                             else None))
    merged_head = run.head
    lm = run.merged()
    if objective == "generative":
        want = reference_generative_loss(lm, tokenizer, texts, labels)
    else:
        lm = lm.double()
        logits = []
        for text in texts:
            ids = torch.tensor([tokenizer(TEMPLATE.replace("{text}", text))["input_ids"]])
            with torch.no_grad():
                hidden = lm.model(input_ids=ids).last_hidden_state[0, -1]
            logits.append(merged_head.weight.double() @ hidden)
        want = float(F.cross_entropy(torch.stack(logits), torch.tensor(labels)))
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_loss_ignores_the_prompt_tokens():
    """Changing the prompt's own continuation probabilities cannot enter the loss: the loss of a
    batch is the mean over target tokens only, so it equals the reference that never reads the
    prompt positions' targets, for prompts of different lengths in one padded batch."""
    texts, labels = ["great", "the film was really very bad"], [1, 0]
    run = fine_tune(make_model(), make_tokenizer(), texts, labels, texts, labels,
                    label_words=LABELS, template=TEMPLATE, lora=NO_DROPOUT,
                    config=TrainConfig(learning_rate=1e-9, max_epochs=1, min_epochs=0,
                                       progress=False, max_length=32, max_new_tokens=2))
    with torch.no_grad():
        got = float(run.loss(run._prompts(texts), labels, run._targets()))
    want = reference_generative_loss(run.merged(), make_tokenizer(), texts, labels)
    assert got == pytest.approx(want, rel=1e-4)


# --------------------------------------------------------------------------- training
def test_generative_training_learns_and_keeps_base_weights_frozen():
    base = make_model()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    texts, labels = data()
    untrained = fine_tune(make_model(), make_tokenizer(), texts, labels, texts, labels,
                          label_words=LABELS, template=TEMPLATE, lora=NO_DROPOUT,
                          config=TrainConfig(learning_rate=1e-9, max_epochs=1, min_epochs=0,
                                             progress=False, max_length=32, max_new_tokens=3))
    run = fine_tune(base, make_tokenizer(), texts, labels, texts, labels, label_words=LABELS,
                    template=TEMPLATE, lora=NO_DROPOUT, config=QUICK)
    assert untrained.best_dev_accuracy < 1.0
    assert run.best_dev_accuracy == 1.0
    assert run.accuracy(texts, labels) == 1.0
    losses = [h["train_loss"] for h in run.history]
    assert losses[-1] < losses[0]
    trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert trainable
    assert all("lora_" in n for n in trainable)
    for name, value in run.causal_lm.state_dict().items():
        plain = name.replace(".base_layer", "")
        if "lora_" not in name:
            torch.testing.assert_close(value, before[plain], rtol=0, atol=0)


def test_discriminative_training_learns():
    run = trained("discriminative")
    texts, labels = data()
    assert run.head is not None
    assert run.head.weight.shape == (2, 32)
    assert run.best_dev_accuracy == 1.0
    np.testing.assert_array_equal(run.predict(texts), labels)


def test_early_stop_rule_and_reporting_epoch():
    config = TrainConfig(patience=2, min_epochs=3)
    assert not config.should_stop(3, 1)  # not past min_epochs
    assert config.should_stop(4, 1)  # 3 epochs without improvement > 2, epoch 4 > 3
    assert not config.should_stop(4, 2)
    texts, labels = data()
    flat = TrainConfig(learning_rate=1e-12, max_epochs=10, patience=1, min_epochs=2,
                       progress=False, max_length=32, max_new_tokens=2)
    run = fine_tune(make_model(), make_tokenizer(), texts, labels, texts, labels,
                    label_words=LABELS, template=TEMPLATE, config=flat)
    # no learning: the first epoch stays the best; stop once epoch - 1 > 1 and epoch > 2
    assert run.best_epoch == 1
    assert [h["epoch"] for h in run.history] == [1, 2, 3]


def test_reporting_epoch_adapters_are_restored():
    """The returned adapters are those of the best epoch, not the last one."""
    texts, labels = data()
    config = TrainConfig(learning_rate=0.3, max_epochs=6, patience=10, min_epochs=0,
                         batch_size=2, progress=False, max_length=32, max_new_tokens=3)
    run = fine_tune(make_model(), make_tokenizer(), texts, labels, texts, labels,
                    label_words=LABELS, template=TEMPLATE, lora=NO_DROPOUT, config=config)
    assert run.accuracy(texts, labels) == pytest.approx(run.best_dev_accuracy)


# --------------------------------------------------------------------------- inference
def test_greedy_prediction_matches_a_plain_argmax_loop():
    run = trained()
    tokenizer = run.tokenizer
    texts = ["the film was great", "bad", "really very bad plot", "great"]
    got = run.predict(texts)
    lm = run.merged()
    want = []
    for text in texts:
        ids = tokenizer(TEMPLATE.replace("{text}", text))["input_ids"]
        out = []
        for _ in range(QUICK.max_new_tokens):
            with torch.no_grad():
                token = int(lm(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            out.append(token)
        word = tokenizer.decode(out, skip_special_tokens=True).strip()
        want.append(LABELS.index(word) if word in LABELS else -1)
    np.testing.assert_array_equal(got, want)


def test_a_generation_that_is_no_label_counts_as_wrong():
    run = trained(config=TrainConfig(learning_rate=1e-12, max_epochs=1, min_epochs=0,
                                     progress=False, max_length=32, max_new_tokens=3))
    predictions = run.predict(GOOD)
    assert set(predictions.tolist()) <= {-1, 0, 1}
    assert run._match("positive") == 1
    assert run._match("positive film") == -1


# --------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("objective", ["generative", "discriminative"])
def test_save_load_round_trip(tmp_path, objective):
    run = trained(objective)
    texts, _ = data()
    run.model.eval()
    with torch.no_grad():
        prompts = run._prompts(texts)
        if objective == "generative":
            ids = torch.tensor([prompts[0]])
            want = run.model(input_ids=ids).logits
        else:
            want = run.class_logits_of(prompts)
    target = tmp_path / "adapter"
    run.save(target)
    run.save(target)  # replacing an existing save is atomic and leaves no staging dirs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert (target / "adapter_model.safetensors").is_file()
    loaded = load_fine_tuned(target, make_model(), make_tokenizer())
    assert loaded.objective == objective
    assert loaded.best_epoch == run.best_epoch
    assert loaded.history == run.history
    with torch.no_grad():
        if objective == "generative":
            got = loaded.model(input_ids=torch.tensor([prompts[0]])).logits
        else:
            got = loaded.class_logits_of(prompts)
    torch.testing.assert_close(got, want)
    np.testing.assert_array_equal(loaded.predict(texts), run.predict(texts))


def test_load_errors(tmp_path):
    with pytest.raises(PersistenceError, match="missing"):
        load_fine_tuned(tmp_path, make_model(), make_tokenizer())
    run = trained(config=TrainConfig(learning_rate=1e-3, max_epochs=1, min_epochs=0,
                                     progress=False, max_length=32, max_new_tokens=2))
    run.save(tmp_path / "a")
    meta = tmp_path / "a" / "fine_tune.json"
    meta.write_text("{not json")
    with pytest.raises(PersistenceError, match="not valid JSON"):
        load_fine_tuned(tmp_path / "a", make_model(), make_tokenizer())
    meta.write_text(json.dumps({"format": "other", "format_version": 1}))
    with pytest.raises(PersistenceError, match="unknown format"):
        load_fine_tuned(tmp_path / "a", make_model(), make_tokenizer())


def test_fine_tuned_models_never_reuse_the_base_fingerprint():
    """A cached feature of the base model must not be served for the adapted model."""
    from ood_zoo.features.models import model_fingerprint

    base = make_model()
    setattr(base, FINGERPRINT_ATTR, "file-sha256:base")
    texts, labels = data()
    run = fine_tune(base, make_tokenizer(), texts, labels, texts, labels, label_words=LABELS,
                    template=TEMPLATE, config=QUICK)
    assert model_fingerprint(run.model) != "file-sha256:base"
    assert model_fingerprint(run.merged()) != "file-sha256:base"


def test_merged_model_equals_the_adapted_model():
    run = trained()
    ids = torch.tensor([run._prompts(["the film was great"])[0]])
    with torch.no_grad():
        want = run.model(input_ids=ids).logits
    lm = run.merged()
    assert not hasattr(lm, FINGERPRINT_ATTR)
    assert not any("lora_" in n for n, _ in lm.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(lm(input_ids=ids).logits, want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"train_texts": []}, "empty"),
        ({"train_labels": [0] * 9 + [2]}, r"labels must lie in \[0, 2\)"),
        ({"train_labels": [0] * 9}, "must be 10 integers"),
        ({"label_words": ["positive", "positive"]}, "distinct"),
        ({"objective": "contrastive"}, "objective"),
    ],
)
def test_bad_input(change, match):
    texts, labels = data()
    kwargs = {"train_texts": texts, "train_labels": labels, "dev_texts": texts,
              "dev_labels": labels, "label_words": LABELS, "objective": "generative"}
    kwargs.update(change)
    with pytest.raises(InputError, match=match):
        fine_tune(make_model(), make_tokenizer(), template=TEMPLATE, config=QUICK, **kwargs)


def test_lora_settings_validate_and_targets_must_exist():
    with pytest.raises(ValueError, match="rank"):
        LoraSettings(r=0)
    with pytest.raises(ValueError, match="dropout"):
        LoraSettings(dropout=1.0)
    texts, labels = data()
    with pytest.raises(ValueError, match="not found"):
        fine_tune(make_model(), make_tokenizer(), texts, labels, texts, labels,
                  label_words=LABELS, lora=LoraSettings(target_modules=("query",)),
                  config=QUICK)


# --------------------------------------------------------------------------- few-shot
@pytest.mark.parametrize("k", ["full", 1, 3, 0.5])
def test_few_shot_indices_are_the_draws_of_few_shot(k):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=40)
    texts = [f"t{i}" for i in range(40)]
    subset = few_shot(TextSet("x", texts, labels, ("a", "b", "c")), k, seed=5)
    idx = few_shot_indices(labels, k, seed=5)
    assert [texts[i] for i in idx] == subset.texts
    if k == 1:
        assert np.bincount(labels[idx]).tolist() == [1, 1, 1]
