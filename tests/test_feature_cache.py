"""The on-disk features cache: keys, hits, atomic writes, corruption detection, opt-out.

Every test points ``OOD_ZOO_CACHE`` (and ``HOME``) at a temporary directory, so nothing is
written to the user's cache.
"""

from __future__ import annotations

import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import transformers
from test_features import LABELS, TEMPLATE, TEXTS, make_model, make_tokenizer

from ood_zoo.errors import InputError
from ood_zoo.features import cache as fcache
from ood_zoo.features import extract, model_fingerprint, sequence_log_likelihood


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OOD_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(fcache.DISABLE_ENV, raising=False)
    return tmp_path / "cache" / "features"


@pytest.fixture
def lm():
    return make_model("llama-lm"), make_tokenizer("llama-lm", "right")


def entries(directory):
    return sorted(directory.glob("*.safetensors")) if directory.is_dir() else []


class CountingForward:
    """Counts forward passes of a module (a cache hit makes none)."""

    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


def test_hit_returns_the_same_tensors_without_a_forward(lm, tmp_cache):
    net, tokenizer = lm
    kw = {"pooling": "last", "template": TEMPLATE, "label_words": LABELS, "progress": False}
    first = extract(TEXTS, net, tokenizer, cache=True, **kw)
    assert len(entries(tmp_cache)) == 1
    counter = CountingForward(net.base_model)
    second = extract(TEXTS, net, tokenizer, cache=True, **kw)
    assert counter.calls == 0
    for name in ["features", "label_logits", "vocab_logsumexp"]:
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert second.label_token_ids == first.label_token_ids
    assert second.label_words == tuple(LABELS)
    assert (second.layers, second.n_states) == (first.layers, first.n_states)  # stored too
    plain = extract(TEXTS, net, tokenizer, cache=True, pooling="last", template=TEMPLATE,
                    progress=False)
    assert plain.label_logits is None  # a different key: no label words
    assert len(entries(tmp_cache)) == 2
    every = extract(TEXTS, net, tokenizer, cache=True, layers="all", progress=False)
    again = extract(TEXTS, net, tokenizer, cache=True, layers="all", progress=False)
    assert counter.calls == 2  # the two misses ran once each, the hit not at all
    assert again.layers == every.layers == tuple(range(again.n_states))


def test_every_key_part_matters(lm, tmp_cache):
    net, tokenizer = lm
    base = {"pooling": "last", "layers": -1, "template": None, "max_length": 512,
            "label_words": None}
    variants = [
        {}, {"pooling": "mean"}, {"layers": 1}, {"layers": [1, 2]}, {"template": TEMPLATE},
        {"max_length": 4}, {"label_words": LABELS},
    ]
    for change in variants:
        extract(TEXTS, net, tokenizer, cache=True, progress=False, **{**base, **change})
    extract([*TEXTS[:-1], "a different text"], net, tokenizer, cache=True, progress=False, **base)
    extract(TEXTS, net, tokenizer, cache=True, progress=False, dtype="bfloat16", **base)
    assert len(entries(tmp_cache)) == len(variants) + 2
    other = make_tokenizer("llama-lm", "right")
    other.add_tokens(["newword"])
    net2 = make_model("llama-lm")
    extract(TEXTS, net2, other, cache=True, progress=False, **base)  # another tokenizer
    assert len(entries(tmp_cache)) == len(variants) + 3


def test_fingerprint_follows_the_weights():
    net = make_model("llama-lm")
    before = model_fingerprint(net)
    assert before == model_fingerprint(make_model("llama-lm"))
    with torch.no_grad():
        net.model.norm.weight.add_(1.0)
    assert model_fingerprint(net) != before


def test_texts_hash_is_order_and_boundary_sensitive():
    h = fcache.texts_sha256
    assert h(["ab", "c"]) != h(["a", "bc"]) != h(["c", "ab"])
    assert h(["ab", "c"]) == h(("ab", "c"))


@pytest.mark.parametrize("damage", ["truncate", "flip-data", "flip-header", "empty"])
def test_corrupt_entry_is_detected_warned_and_rebuilt(lm, tmp_cache, damage):
    net, tokenizer = lm
    kw = {"pooling": "mean", "label_words": LABELS, "progress": False, "cache": True}
    good = extract(TEXTS, net, tokenizer, **kw)
    (path,) = entries(tmp_cache)
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    if damage == "truncate":
        data = data[: len(data) - 17]
    elif damage == "flip-data":
        for offset in (8 + header + 5, len(data) - 3):
            data[offset] ^= 0x5A
    elif damage == "flip-header":
        at = data.index(b"checksum") + 12
        data[at] = ord("0") if data[at] != ord("0") else ord("1")
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    counter = CountingForward(net.base_model)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        again = extract(TEXTS, net, tokenizer, **kw)
    assert counter.calls > 0  # recomputed, not read
    torch.testing.assert_close(again.features, good.features)
    torch.testing.assert_close(again.label_logits, good.label_logits)
    (rebuilt,) = entries(tmp_cache)
    assert fcache.read_entry(rebuilt, _key_of(rebuilt), n_rows=len(TEXTS)) is not None


def _key_of(path):
    import json

    data = path.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    return json.loads(header["__metadata__"]["key"])


def test_stored_key_and_shape_are_verified(tmp_cache):
    key = {"model": "m", "n_texts": 2}
    path = fcache.entry_path(tmp_cache, key)
    fcache.write_entry(path, {"features": torch.ones(2, 3)}, key)
    assert torch.equal(fcache.read_entry(path, key, n_rows=2)["features"], torch.ones(2, 3))
    with pytest.warns(RuntimeWarning, match="stored key differs"):
        assert fcache.read_entry(path, {"model": "other", "n_texts": 2}, n_rows=2) is None
    fcache.write_entry(path, {"features": torch.ones(2, 3)}, key)
    with pytest.warns(RuntimeWarning, match="does not hold 3 feature rows"):
        assert fcache.read_entry(path, key, n_rows=3) is None
    assert not path.exists()  # a bad entry is removed
    assert fcache.read_entry(path, key, n_rows=2) is None  # missing: silent


def test_write_returns_the_files_sha256(tmp_cache):
    from ood_zoo.io import sha256_file

    key = {"k": 2}
    path = fcache.entry_path(tmp_cache, key)
    digest = fcache.write_entry(path, {"features": torch.arange(6.0).reshape(2, 3)}, key)
    assert digest == sha256_file(path)
    assert len(digest) == 64


def test_writes_are_atomic_and_leave_no_temporaries(tmp_cache, monkeypatch):
    key = {"k": 1}
    path = fcache.entry_path(tmp_cache, key)
    fcache.write_entry(path, {"features": torch.zeros(1, 2)}, key)

    def boom(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(fcache.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        fcache.write_entry(path, {"features": torch.ones(1, 2)}, key)
    assert [p.name for p in tmp_cache.iterdir()] == [path.name]  # old entry intact, no temp
    assert torch.equal(fcache.read_entry(path, key, n_rows=1)["features"], torch.zeros(1, 2))


def test_cache_off_by_flag_env_and_explicit_directory(lm, tmp_cache, tmp_path, monkeypatch):
    net, tokenizer = lm
    extract(TEXTS, net, tokenizer, cache=False, progress=False)
    extract(TEXTS, net, tokenizer, progress=False)  # default: off
    assert entries(tmp_cache) == []
    monkeypatch.setenv(fcache.DISABLE_ENV, "1")
    extract(TEXTS, net, tokenizer, cache=True, progress=False)
    assert entries(tmp_cache) == []
    monkeypatch.delenv(fcache.DISABLE_ENV)
    elsewhere = tmp_path / "mine"
    extract(TEXTS, net, tokenizer, cache=elsewhere, progress=False)
    assert len(entries(elsewhere)) == 1
    assert entries(tmp_cache) == []
    assert not (tmp_path / "home").exists()
    with pytest.raises(TypeError, match="cache must be"):
        extract(TEXTS, net, tokenizer, cache=3, progress=False)


@pytest.mark.parametrize("where", ["file", "under-file", "env-file"])
def test_cache_location_that_is_a_file_fails_before_any_work(lm, tmp_path, monkeypatch, where):
    """Issue 11, root cause 8: ``[Errno 17] File exists`` after computing all the features."""
    net, tokenizer = lm
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    cache = {"file": blocker, "under-file": blocker / "features", "env-file": True}[where]
    if where == "env-file":
        monkeypatch.setenv("OOD_ZOO_CACHE", str(blocker))
    counter = CountingForward(net.base_model)
    message = rf"{re.escape(str(blocker))}.* exists and is not a directory"
    with pytest.raises(InputError, match=message):
        extract(TEXTS, net, tokenizer, cache=cache, progress=False)
    with pytest.raises(InputError, match=message):
        sequence_log_likelihood(TEXTS, net, tokenizer, cache=cache, progress=False)
    assert counter.calls == 0
    assert blocker.read_text() == "not a directory"


def test_named_model_directory_hits_without_loading(lm, tmp_cache, tmp_path, monkeypatch):
    net, tokenizer = lm
    net.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    first = extract(TEXTS, str(tmp_path / "m"), device="cpu", cache=True, progress=False)

    def no_load(*_a, **_k):
        raise AssertionError("a cache hit must not load the model")

    for auto in (transformers.AutoModel, transformers.AutoModelForCausalLM):
        monkeypatch.setattr(auto, "from_pretrained", no_load)
    second = extract(TEXTS, str(tmp_path / "m"), device="cpu", cache=True, progress=False)
    torch.testing.assert_close(first.features, second.features)
    assert (second.layers, second.n_states) == (first.layers, first.n_states)
    with pytest.raises(AssertionError, match="must not load"):  # a miss does load it
        extract(TEXTS[:2], str(tmp_path / "m"), device="cpu", cache=True, progress=False)
