"""Fuzzing the features stage: corrupted cache entries, cache locations and device names.

The property of the cache: an entry is read back exactly as written, or reported (a
``RuntimeWarning``), removed and recomputed; it never returns other data. A cache location or
device that cannot be used is an :class:`~ood_zoo.errors.InputError` naming it.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from fuzzing import assert_clear_error, attempt, fuzz_settings, scratch_dir
from hypothesis import event, given
from hypothesis import strategies as st
from test_features import LABELS, TEXTS, make_model, make_tokenizer

from ood_zoo.errors import InputError
from ood_zoo.features import cache as fcache
from ood_zoo.features import extract, resolve_device

pytestmark = pytest.mark.fuzz

CORRUPTIONS = ("none", "flip", "truncate", "append", "empty", "other-entry", "rows",
               "header-zero")


@st.composite
def entries(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    """Tensors shaped like an extract() entry: features, label columns, a 0-d count."""
    n, d = draw(st.integers(0, 6)), draw(st.integers(1, 5))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    features = torch.randn(n, d, generator=generator).to(dtype)
    if draw(st.booleans()):
        features = torch.zeros(n, d, dtype=dtype)  # shifted offsets would read the same zeros
    tensors = {"features": features, "n_states": torch.tensor(draw(st.integers(1, 40)))}
    if draw(st.booleans()):
        tensors["label_logits"] = torch.randn(n, 2, generator=generator)
        tensors["label_token_ids"] = torch.tensor([3, 7])
    return tensors


def damage(path, corruption: str, data: st.DataObject) -> None:
    raw = bytearray(path.read_bytes())
    if corruption == "flip":
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            raw[data.draw(st.integers(0, len(raw) - 1), label="at")] ^= data.draw(
                st.integers(1, 255), label="mask")
    elif corruption == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="keep")]
    elif corruption == "append":
        raw += data.draw(st.binary(min_size=1, max_size=64), label="junk")
    elif corruption == "empty":
        raw = bytearray()
    elif corruption == "header-zero":
        raw[:8] = bytes(8)
    path.write_bytes(bytes(raw))


@fuzz_settings(4)
@given(tensors=entries(), corruption=st.sampled_from(CORRUPTIONS), data=st.data())
def test_cache_entry_reads_back_exactly_or_is_rebuilt(tensors, corruption, data):
    n = tensors["features"].shape[0]
    key = {"model": "m", "layers": -1, "n_texts": n, "texts_sha256": str(n)}
    directory = scratch_dir()
    path = fcache.entry_path(directory, key)
    fcache.write_entry(path, tensors, key)
    original = path.read_bytes()
    rows = n
    if corruption == "other-entry":  # another key's entry under this key's name
        other = {**key, "layers": 0}
        fcache.write_entry(fcache.entry_path(directory, other), tensors, other)
        fcache.entry_path(directory, other).replace(path)
    elif corruption == "rows":
        rows = n + 1
    else:
        damage(path, corruption, data)
    changed = path.read_bytes() != original or rows != n
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = fcache.read_entry(path, key, n_rows=rows)
    if got is None:
        assert changed, "an intact entry was not read"
        assert any(issubclass(w.category, RuntimeWarning) and "corrupt" in str(w.message)
                   for w in caught), [str(w.message) for w in caught]
        assert not path.exists(), "a corrupt entry was left in place"
        event(f"rebuilt: {corruption}")
        return
    assert set(got) == set(tensors)
    for name, tensor in tensors.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name
    event(f"read back: {corruption}")


@functools.cache
def tiny_lm():
    return make_model("llama-lm"), make_tokenizer("llama-lm", "right")


@fuzz_settings(0.5)
@given(corruption=st.sampled_from(CORRUPTIONS[:6]), labels=st.booleans(),
       lm_stats=st.booleans(), data=st.data())
def test_extract_recomputes_a_corrupt_entry(corruption, labels, lm_stats, data):
    net, tokenizer = tiny_lm()
    directory = scratch_dir()
    kwargs = {"pooling": "last", "label_words": LABELS if labels else None,
              "lm_stats": lm_stats, "progress": False}
    fresh = extract(TEXTS, net, tokenizer, **kwargs)
    extract(TEXTS, net, tokenizer, cache=directory, **kwargs)
    for path in sorted(directory.glob("*.safetensors")):
        damage(path, corruption, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        again = extract(TEXTS, net, tokenizer, cache=directory, **kwargs)
    for name in ("features", "label_logits", "vocab_logsumexp", "lm_stats"):
        want, got = getattr(fresh, name), getattr(again, name)
        assert (want is None) == (got is None), name
        if want is not None:
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (again.layers, again.n_states, again.label_token_ids) == (
        fresh.layers, fresh.n_states, fresh.label_token_ids)


LOCATIONS = ("dir", "dir/new", "dir/new/deeper", "file", "file/sub", "file/sub/deeper",
             "dangling", "dangling/sub")


@fuzz_settings(0.5)
@given(where=st.sampled_from(LOCATIONS), as_str=st.booleans())
def test_cache_location_is_usable_or_an_input_error(where, as_str):
    root = scratch_dir()
    (root / "dir").mkdir()
    (root / "file").write_text("x")
    (root / "dangling").symlink_to(root / "nowhere")
    location = root / where
    unusable = where.startswith(("file", "dangling"))
    got, err = attempt(fcache.features_dir, str(location) if as_str else location)
    if err is not None:
        assert_clear_error(err, must=InputError)
        assert unusable, f"a usable location was refused: {err}"
        assert str(location) in str(err)
    else:
        assert not unusable, f"{where} was accepted"
        assert got == location


DEVICES = st.one_of(
    st.sampled_from(["cpu", "cpu:0", "cuda", "cuda:0", "cuda:1", "cuda:99", "mps", "mps:0",
                     "xpu", "xpu:3", "meta", "gpu", "", "cuda:-1", "cuda:x", "CPU", " cpu"]),
    st.integers(-2, 9), st.text(max_size=8), st.just(torch.device("cpu")),
    st.sampled_from([1.5, [0], b"cpu"]),
)


@fuzz_settings(1)
@given(device=DEVICES)
def test_resolve_device_returns_a_usable_device_or_an_input_error(device):
    where, err = attempt(resolve_device, device)
    if err is not None:
        assert_clear_error(err, must=InputError)
        assert repr(device) in str(err) or str(device) in str(err), err
        return
    assert isinstance(where, torch.device)
    if where.type == "cuda":
        assert (where.index or 0) < torch.cuda.device_count()
    if where.type == "mps":
        assert torch.backends.mps.is_available()
    if where.type == "xpu":
        assert torch.xpu.is_available()
