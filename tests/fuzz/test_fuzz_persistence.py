"""Fuzzing save/load: round trips of every registered detector, and random corruptions of the
saved directory (truncations, flipped bytes, edited or nested JSON fields, deleted or stray
files, re-hashed non-finite state).

The property: ``ood_zoo.load`` either raises :class:`~ood_zoo.errors.PersistenceError`, or
returns a detector that scores valid queries with finite scores (identical to the saved
detector's when the save was not changed in substance); never another exception, never a
detector that fails later.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fuzzing import (
    assert_clear_error,
    assert_finite,
    attempt,
    fitted_detector,
    fuzz_settings,
    scratch_dir,
    tolerate_known,
)
from hypothesis import event, given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import ood_zoo
from ood_zoo.errors import NotFittedError, PersistenceError, UnknownDetectorError

pytestmark = pytest.mark.fuzz

DETECTORS = ood_zoo.list_detectors()
CORRUPTIONS = (
    "none", "truncate-tensors", "flip-tensors", "truncate-json", "flip-json", "delete-json",
    "delete-tensors", "json-edit", "json-delete-key", "json-nest", "nan-state", "stray-files",
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2**40) | st.floats(allow_nan=True)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=4,
)


def leaf_paths(node, prefix=()):
    """Every key path into a JSON document (dict keys and list indices), leaves and inner."""
    items = node.items() if isinstance(node, dict) else (
        enumerate(node) if isinstance(node, list) else ())
    for key, value in items:
        yield (*prefix, key)
        yield from leaf_paths(value, (*prefix, key))


def set_path(doc, path, value) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def delete_path(doc, path) -> None:
    for key in path[:-1]:
        doc = doc[key]
    del doc[path[-1]]


def queries_for(det, original: dict, seed: int) -> dict:
    """The original queries, or fresh ones of the width a loaded detector says it has."""
    key = next(iter(original))
    array = original[key]
    width = det.n_features_in_ if key == "features" else det.n_logits_in_
    if width is None or width == array.shape[-1]:  # the width is the last axis (layered too)
        return original
    rng = np.random.default_rng(seed)
    return {key: rng.normal(size=(*array.shape[:-1], width)).astype(array.dtype)}


def corrupt(directory: Path, corruption: str, data: st.DataObject) -> dict:
    """Apply ``corruption`` to a saved directory; returns the tags the known defects read."""
    config_path = directory / "detector.json"
    config = json.loads(config_path.read_text())
    tensors_path = directory / config["tensors"]["file"]
    tags: dict = {"corruption": corruption}
    if corruption in ("truncate-tensors", "truncate-json"):
        path = tensors_path if corruption == "truncate-tensors" else config_path
        raw = path.read_bytes()
        path.write_bytes(raw[: data.draw(st.integers(0, max(0, len(raw) - 1)), label="keep")])
    elif corruption in ("flip-tensors", "flip-json"):
        path = tensors_path if corruption == "flip-tensors" else config_path
        raw = bytearray(path.read_bytes())
        for _ in range(data.draw(st.integers(1, 3), label="flips")):
            at = data.draw(st.integers(0, len(raw) - 1), label="at")
            raw[at] ^= data.draw(st.integers(1, 255), label="mask")
        path.write_bytes(bytes(raw))
    elif corruption == "delete-json":
        config_path.unlink()
    elif corruption == "delete-tensors":
        tensors_path.unlink()
    elif corruption in ("json-edit", "json-delete-key"):
        path = data.draw(st.sampled_from(sorted(leaf_paths(config), key=repr)), label="path")
        tags["json_path"] = ".".join(str(p) for p in path)
        if corruption == "json-edit":
            set_path(config, path, data.draw(JSON_VALUES, label="value"))
        else:
            delete_path(config, path)
        config_path.write_text(json.dumps(config))
    elif corruption == "json-nest":
        depth = data.draw(st.sampled_from([50, 5_000, 100_000]), label="depth")
        key = data.draw(st.sampled_from(sorted(config)), label="key")
        tags["json_path"] = key
        text = json.dumps({**config, key: None}).replace(
            f'"{key}": null', f'"{key}": ' + "[" * depth + "]" * depth)
        config_path.write_text(text)
    elif corruption == "nan-state":
        tensors = load_file(str(tensors_path))
        floats = sorted(n for n, t in tensors.items() if t.is_floating_point() and t.numel())
        if not floats:
            return {"corruption": "none"}
        name = data.draw(st.sampled_from(floats), label="tensor")
        bad = tensors[name].clone().reshape(-1)
        bad[data.draw(st.integers(0, bad.numel() - 1), label="at")] = data.draw(
            st.sampled_from([float("nan"), float("inf"), float("-inf")]), label="value")
        tensors[name] = bad.reshape(tensors[name].shape)
        save_file(tensors, str(tensors_path), metadata={"format": "ood_zoo.detector"})
        from ood_zoo.io import sha256_file

        config["tensors"].update(sha256=sha256_file(tensors_path),
                                 bytes=tensors_path.stat().st_size)
        config_path.write_text(json.dumps(config))
    elif corruption == "stray-files":
        (directory / ".tensors.abc123.tmp").write_bytes(b"half a write")
        (directory / "tensors-0000000000000000.safetensors").write_bytes(b"old generation")
        tags["corruption"] = "none"
    return tags


@fuzz_settings(4)
@given(name=st.sampled_from(DETECTORS), corruption=st.sampled_from(CORRUPTIONS),
       seed=st.integers(0, 2**16), data=st.data())
def test_load_returns_the_saved_detector_or_a_persistence_error(name, corruption, seed, data):
    det, queries = fitted_detector(name, seed)
    before = det.score(**queries)
    directory = scratch_dir() / "saved"
    det.save(directory)
    try:
        tags = corrupt(directory, corruption, data)
        with tolerate_known(tags):
            loaded, err = attempt(ood_zoo.load, directory)
            if err is not None:
                # a flipped detector name is a registry lookup that fails, also clearly
                assert_clear_error(err, must=(PersistenceError, UnknownDetectorError))
                assert tags["corruption"] != "none", f"a whole save was refused: {err}"
                event(f"load refused: {corruption}")
                return
            assert type(loaded) is type(det)
            try:
                after = loaded.score(**queries_for(loaded, queries, seed))
            except NotFittedError:
                assert not loaded.is_fitted_, "a fitted detector raised NotFittedError"
                return
            assert_finite(after, f"{name} scores after loading a {corruption} save")
            if tags["corruption"] == "none":
                np.testing.assert_array_equal(after, before)
                assert loaded.get_params() == det.get_params()
                assert loaded.threshold_ == det.threshold_
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@fuzz_settings(1)
@given(name=st.sampled_from(DETECTORS), seed=st.integers(0, 2**16))
def test_resaving_keeps_one_generation_and_no_temporaries(name, seed):
    det, queries = fitted_detector(name, seed)
    directory = scratch_dir() / "saved"
    for _ in range(3):
        det.save(directory)
    names = sorted(p.name for p in directory.iterdir())
    assert len(names) == 2, names
    assert names[0] == "detector.json", names
    np.testing.assert_array_equal(ood_zoo.load(directory).score(**queries), det.score(**queries))
