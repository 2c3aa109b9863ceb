"""Persistence: safetensors + JSON round trips, no pickle, atomic writes, clear errors."""

from __future__ import annotations

import ast
import contextlib
import fcntl
import json
import math
import os
import pickle
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import ood_zoo
from ood_zoo import Detector, Requirements
from ood_zoo.cli import main as cli_main
from ood_zoo.errors import NotFittedError, PersistenceError, UnknownDetectorError
from ood_zoo.io import CONFIG_FILE, MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, load_detector
from ood_zoo.registry import (
    ENV_ALLOW,
    ENV_BLOCK,
    ENV_STRICT,
    Registry,
    get_registry,
    reset_registry,
)
from ood_zoo.testing import default_make_inputs, make_synthetic_inputs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def default_registry(monkeypatch):
    for var in (ENV_ALLOW, ENV_BLOCK, ENV_STRICT):
        monkeypatch.delenv(var, raising=False)
    reset_registry()
    yield
    reset_registry()


def _builtin_names() -> list[str]:
    reset_registry()
    try:
        return [
            name for name, record in get_registry().detectors.items()
            if record.plugin == "ood_zoo.builtin"
        ]
    finally:
        reset_registry()


BUILTINS = _builtin_names()
DATA = make_synthetic_inputs(seed=11)


def _data(cls: type[Detector]):
    """DATA, or the kit's own inputs for detectors on LM statistics or layered features."""
    special = cls.requires.language_model or cls.requires.layered
    return DATA if not special else default_make_inputs(cls)()


def _fit(detector: Detector, split=DATA.fit, dtype=np.float32) -> Detector:
    split = split.astype(dtype)
    return detector.fit(**split.fit_kwargs(detector.requires))


def _scores(detector: Detector, split, dtype=np.float32) -> np.ndarray:
    return detector.score(**split.astype(dtype).score_kwargs(detector.requires))


def _other_params(cls: type[Detector]) -> dict:
    """A non-default value for every categorical (choices) and bool hyperparameter."""
    params = {}
    for p in cls.params:
        if p.type is bool:
            params[p.name] = not p.default
        elif p.choices:
            params[p.name] = next(c for c in reversed(p.choices) if c != p.default)
    return params


def _tensor_file(directory: Path) -> Path:
    (path,) = directory.glob("tensors-*.safetensors")
    return path


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or
                  p.suffix == ".tmp")


# ------------------------------------------------------------------------ round trips


def test_every_builtin_is_covered():
    assert set(BUILTINS) >= {
        "cosine", "knn", "mahalanobis", "relative_mahalanobis", "msp", "maxlogit", "energy",
        "lof", "gmm", "residual", "perplexity", "likelihood_ratio",
    }


def _round_trip_cases():
    for name in BUILTINS:
        yield pytest.param(name, "default", id=f"{name}-default")
        if _other_params(get_registry().get(name).cls):
            yield pytest.param(name, "other", id=f"{name}-other")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize(("name", "params"), list(_round_trip_cases()))
def test_builtin_round_trip(name, params, dtype, tmp_path):
    cls = get_registry().get(name).cls
    kwargs = _other_params(cls) if params == "other" else {}
    data = _data(cls)
    detector = _fit(ood_zoo.create(name, target_tpr=0.8, **kwargs), data.fit, dtype=dtype)
    saved = detector.save(tmp_path / name)
    assert saved == tmp_path / name
    loaded = ood_zoo.load(tmp_path / name)
    assert type(loaded) is cls
    assert loaded.get_params() == detector.get_params()
    assert loaded.get_params()["target_tpr"] == 0.8
    assert loaded.threshold_ == detector.threshold_
    assert loaded.n_features_in_ == detector.n_features_in_
    assert loaded.n_logits_in_ == detector.n_logits_in_
    for state_name in cls.state_tensors:
        before, after = getattr(detector, state_name), getattr(loaded, state_name)
        assert after.dtype == before.dtype, state_name
        assert torch.equal(after.cpu(), before.cpu()), state_name
    for split in (data.id, data.ood):
        before, after = _scores(detector, split, dtype), _scores(loaded, split, dtype)
        assert after.dtype == before.dtype
        np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(
        loaded.predict(**data.id.score_kwargs(cls.requires)),
        detector.predict(**data.id.score_kwargs(cls.requires)),
    )


def test_saved_files_are_json_and_safetensors(tmp_path):
    _fit(ood_zoo.create("knn", k=3)).save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        CONFIG_FILE, _tensor_file(tmp_path).name
    ]
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["detector"] == "knn"
    assert config["params"]["k"] == 3
    header_len = int.from_bytes(_tensor_file(tmp_path).read_bytes()[:8], "little")
    header = json.loads(_tensor_file(tmp_path).read_bytes()[8 : 8 + header_len])
    assert "bank_" in header


def test_unfitted_detector_round_trip(tmp_path):
    ood_zoo.create("cosine").save(tmp_path)
    loaded = ood_zoo.load(tmp_path)
    assert loaded.is_fitted_ is False
    assert loaded.threshold_ is None
    with pytest.raises(NotFittedError):
        loaded.score(DATA.id.features)


def test_saving_again_replaces_the_previous_save(tmp_path):
    first = _fit(ood_zoo.create("cosine"), DATA.fit)
    second = _fit(ood_zoo.create("cosine"), DATA.id)
    first.save(tmp_path)
    old_file = _tensor_file(tmp_path)
    second.save(tmp_path)
    assert not old_file.exists()
    np.testing.assert_array_equal(
        _scores(ood_zoo.load(tmp_path), DATA.ood), _scores(second, DATA.ood)
    )


def test_save_onto_a_file_is_an_error(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("x")
    with pytest.raises(PersistenceError, match="not a directory"):
        _fit(ood_zoo.create("cosine")).save(target)


# ------------------------------------------------------------------------ no pickle

FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
                     "marshal"}
FORBIDDEN_CALLS = {"torch.load", "torch.serialization.load", "torch.jit.load", "pd.read_pickle",
                   "pandas.read_pickle"}
NUMPY_LOADS = {"np.load", "numpy.load"}


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def pickle_uses(source: str) -> list[str]:
    """What in ``source`` could unpickle: imports of pickling modules and loader calls."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in FORBIDDEN_MODULES:
                found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names
                      if f"{node.module}.{a.name}" in FORBIDDEN_CALLS]
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in FORBIDDEN_CALLS:
                found.append(name)
            elif name in NUMPY_LOADS and any(
                k.arg == "allow_pickle" and not (
                    isinstance(k.value, ast.Constant) and k.value.value is False
                ) for k in node.keywords
            ):
                found.append(f"{name}(allow_pickle=...)")
            elif name in {"__import__", "importlib.import_module"} and node.args and (
                isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).split(".")[0] in FORBIDDEN_MODULES
            ):
                found.append(f"{name}({node.args[0].value!r})")
    return found


@pytest.mark.parametrize(
    "source",
    [
        "import pickle",
        "import joblib.numpy_pickle",
        "from pickle import loads",
        "from torch import load",
        "import torch\nx = torch.load('f')",
        "import numpy as np\nnp.load('f', allow_pickle=True)",
        "__import__('cloudpickle')",
    ],
)
def test_pickle_scanner_finds_unpickling(source):
    assert pickle_uses(source)


@pytest.mark.parametrize(
    "source",
    [
        '"""No pickle here: safetensors, not torch.load."""',
        "import numpy as np\nnp.load('f', mmap_mode='r', allow_pickle=False)",
        "from safetensors.torch import load_file",
    ],
)
def test_pickle_scanner_ignores_safe_code(source):
    assert pickle_uses(source) == []


def _package_sources() -> list[Path]:
    files = sorted((REPO / "ood_zoo").rglob("*.py"))
    for plugin in sorted(p.parent for p in (REPO / "plugins").glob("*/pyproject.toml")):
        files += sorted(
            p for p in plugin.rglob("*.py")
            if not {"tests", "build", ".venv"} & set(p.relative_to(plugin).parts)
        )
    return files


def test_no_pickle_anywhere_in_the_package():
    sources = _package_sources()
    assert REPO / "ood_zoo" / "io" / "__init__.py" in sources
    offenders = {
        str(path.relative_to(REPO)): uses
        for path in sources if (uses := pickle_uses(path.read_text()))
    }
    assert offenders == {}


@pytest.mark.parametrize("name", BUILTINS)
def test_loading_never_unpickles(name, tmp_path, monkeypatch):
    data = _data(get_registry().get(name).cls)
    detector = _fit(ood_zoo.create(name), data.fit)
    detector.save(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling was attempted while loading a detector")

    for attribute in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, attribute, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = ood_zoo.load(tmp_path)
    np.testing.assert_allclose(_scores(loaded, data.ood), _scores(detector, data.ood),
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ atomic writes


class InjectedFailure(OSError):
    pass


def _fail_in_tensor_write(monkeypatch):
    import ood_zoo.io as io

    real = io.save_file

    def half_written(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise InjectedFailure("disk full while writing tensors")

    monkeypatch.setattr(io, "save_file", half_written)


def _fail_in_config_rename(monkeypatch):
    import ood_zoo.io as io

    real = io.os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == CONFIG_FILE:
            Path(src).write_bytes(b"{ half a conf")  # the temp file is garbage by now
            raise InjectedFailure("crash before detector.json was replaced")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(io.os, "replace", replace)


def _disk_full_on_config(monkeypatch):
    """Any write to a file whose name holds ``detector.json`` writes half its data and fails.

    This does not depend on how ood_zoo writes: ``open``, ``Path.write_*`` and ``os.fdopen``
    (for a temporary file named after the config) are all covered.
    """
    import builtins
    import io as pyio
    import os

    real_open, real_fdopen = builtins.open, os.fdopen

    class HalfWriter:
        def __init__(self, handle):
            self._handle = handle

        def write(self, data):
            self._handle.write(data[: len(data) // 2])
            self._handle.flush()
            raise InjectedFailure("disk full while writing detector.json")

        def __getattr__(self, name):
            return getattr(self._handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._handle.close()

    def writing(mode: str) -> bool:
        return any(flag in mode for flag in "wax+")

    def fake_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if writing(mode) and not isinstance(file, int) and CONFIG_FILE in Path(file).name:
            return HalfWriter(handle)
        return handle

    def fake_fdopen(fd, mode="r", *args, **kwargs):
        handle = real_fdopen(fd, mode, *args, **kwargs)
        if writing(mode) and CONFIG_FILE in Path(os.readlink(f"/proc/self/fd/{fd}")).name:
            return HalfWriter(handle)
        return handle

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to name an open file")
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(pyio, "open", fake_open)
    monkeypatch.setattr(os, "fdopen", fake_fdopen)


@pytest.mark.parametrize(
    "inject", [_fail_in_tensor_write, _fail_in_config_rename, _disk_full_on_config],
    ids=["tensor-write", "config-rename", "config-write"],
)
def test_failed_save_leaves_the_previous_save(inject, tmp_path, monkeypatch):
    old = _fit(ood_zoo.create("knn", k=2), DATA.fit)
    new = _fit(ood_zoo.create("knn", k=5), DATA.id)
    old.save(tmp_path)
    old_scores = _scores(old, DATA.ood)
    assert not np.array_equal(old_scores, _scores(new, DATA.ood))  # the test can tell them apart
    with monkeypatch.context() as patch:
        inject(patch)
        with pytest.raises(InjectedFailure):
            new.save(tmp_path)
    assert _leftovers(tmp_path) == []
    loaded = ood_zoo.load(tmp_path)
    assert loaded.hparams["k"] == 2
    np.testing.assert_array_equal(_scores(loaded, DATA.ood), old_scores)
    # and the next save goes through and cleans up
    new.save(tmp_path)
    assert len(list(tmp_path.glob("tensors-*.safetensors"))) == 1
    np.testing.assert_array_equal(_scores(ood_zoo.load(tmp_path), DATA.ood),
                                  _scores(new, DATA.ood))


def test_failed_save_leaves_no_orphan_tensor_file(tmp_path, monkeypatch):
    _fit(ood_zoo.create("knn", k=2), DATA.fit).save(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    _fail_in_config_rename(monkeypatch)
    with pytest.raises(InjectedFailure):
        _fit(ood_zoo.create("knn", k=5), DATA.id).save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_failed_first_save_leaves_nothing_loadable(tmp_path, monkeypatch):
    _fail_in_config_rename(monkeypatch)
    with pytest.raises(InjectedFailure):
        _fit(ood_zoo.create("cosine")).save(tmp_path)
    assert _leftovers(tmp_path) == []
    with pytest.raises(PersistenceError, match="not a saved ood_zoo detector"):
        ood_zoo.load(tmp_path)


# ------------------------------------------------------------------------ damaged saves


@pytest.fixture
def saved(tmp_path) -> Path:
    _fit(ood_zoo.create("knn", k=3)).save(tmp_path / "knn")
    return tmp_path / "knn"


def _edit_config(directory: Path, **changes) -> None:
    path = directory / CONFIG_FILE
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _rewrite_manifest(directory: Path, data: bytes) -> None:
    """Write ``data`` as the tensor file and make the manifest agree with it (size, hash)."""
    import hashlib

    _tensor_file(directory).write_bytes(data)
    config = json.loads((directory / CONFIG_FILE).read_text())
    config["tensors"]["bytes"] = len(data)
    config["tensors"]["sha256"] = hashlib.sha256(data).hexdigest()
    (directory / CONFIG_FILE).write_text(json.dumps(config))


def test_truncated_tensor_file(saved):
    path = _tensor_file(saved)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(PersistenceError, match="truncated"):
        ood_zoo.load(saved)


@pytest.mark.parametrize("where", [10, -1, 0.5], ids=["header", "last", "middle"])
def test_flipped_byte_in_tensor_file(saved, where):
    path = _tensor_file(saved)
    data = bytearray(path.read_bytes())
    index = int(where * len(data)) if isinstance(where, float) else where
    data[index] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(PersistenceError, match="SHA-256"):
        ood_zoo.load(saved)


def test_garbage_tensor_file_with_a_matching_manifest(saved):
    data = bytearray(_tensor_file(saved).read_bytes())
    data[8] = ord("[")  # the header is no longer a JSON object
    _rewrite_manifest(saved, bytes(data))
    with pytest.raises(PersistenceError, match="not a valid safetensors file"):
        ood_zoo.load(saved)


def test_manifest_disagreeing_with_the_tensors(saved):
    config = json.loads((saved / CONFIG_FILE).read_text())
    config["tensors"]["entries"]["bank_"]["shape"][0] += 1
    (saved / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PersistenceError, match="does not match the manifest"):
        ood_zoo.load(saved)


@pytest.mark.parametrize(
    "text", ["{ not json", "", "\x00\xff\xfe", "[]", '{"format": "something.else"}'],
    ids=["syntax", "empty", "binary", "list", "foreign"],
)
def test_corrupt_config(saved, text):
    (saved / CONFIG_FILE).write_bytes(text.encode("latin-1"))
    with pytest.raises(PersistenceError, match=CONFIG_FILE):
        ood_zoo.load(saved)


def test_flipped_byte_in_config(saved):
    path = saved / CONFIG_FILE
    data = bytearray(path.read_bytes())
    data[data.index(b'"format"')] ^= 0x20  # '"' -> '\x02': no longer JSON
    path.write_bytes(bytes(data))
    with pytest.raises(PersistenceError, match="corrupt"):
        ood_zoo.load(saved)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format_version": 99}, "format version 99"),
        ({"detector_version": "99"}, "version 99"),
        ({"params": {"k": 0}}, "saved parameters are invalid"),
        ({"params": {"no_such_param": 1}}, "saved parameters are invalid"),
        ({"params": None}, r"invalid field\(s\) \[.params.\]"),
        ({"fitted": None, "detector": None}, None),
    ],
    ids=["format-version", "detector-version", "bad-param", "unknown-param", "null-params",
         "nulls"],
)
def test_inconsistent_config(saved, changes, message):
    _edit_config(saved, **changes)
    with pytest.raises((PersistenceError, UnknownDetectorError), match=message):
        ood_zoo.load(saved)


@pytest.mark.parametrize(
    "changes", [{"tensors": []}, {"threshold": "abc"}], ids=["tensors-list", "threshold-str"],
)
def test_config_with_wrongly_typed_fields(saved, changes):
    _edit_config(saved, **changes)
    try:
        detector = ood_zoo.load(saved)
    except PersistenceError:
        return
    detector.predict(DATA.id.features)  # a bad threshold surfaces here, far from its cause
    raise AssertionError(f"loaded a detector from a config with {changes}")


def test_config_missing_keys(saved):
    config = json.loads((saved / CONFIG_FILE).read_text())
    del config["tensors"]
    (saved / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PersistenceError, match="lacks"):
        ood_zoo.load(saved)


def test_tensor_file_outside_the_directory(saved, tmp_path):
    config = json.loads((saved / CONFIG_FILE).read_text())
    (tmp_path / "elsewhere.safetensors").write_bytes(_tensor_file(saved).read_bytes())
    config["tensors"]["file"] = "../elsewhere.safetensors"
    (saved / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PersistenceError, match="missing"):
        ood_zoo.load(saved)


def test_missing_tensor_file(saved):
    _tensor_file(saved).unlink()
    with pytest.raises(PersistenceError, match="missing"):
        ood_zoo.load(saved)


def test_missing_config(saved):
    (saved / CONFIG_FILE).unlink()
    with pytest.raises(PersistenceError, match="not a saved ood_zoo detector"):
        ood_zoo.load(saved)


def test_missing_directory(tmp_path):
    with pytest.raises(PersistenceError, match="not a saved ood_zoo detector"):
        ood_zoo.load(tmp_path / "never_saved")


def test_other_detector_loaded_into_a_class(saved):
    cosine = get_registry().get("cosine").cls
    with pytest.raises(PersistenceError, match=r"holds a 'knn' detector, not 'cosine'"):
        cosine.load(saved)
    knn = get_registry().get("knn").cls
    assert type(knn.load(saved)) is knn


def test_the_base_class_cannot_load_and_points_to_ood_zoo_load(saved):
    with pytest.raises(TypeError, match=r"ood_zoo\.load\(path\)"):
        Detector.load(saved)
    assert type(ood_zoo.load(saved)) is get_registry().get("knn").cls


def test_load_detector_takes_the_class_to_load_into(saved):
    knn = get_registry().get("knn").cls
    assert type(load_detector(saved, knn)) is knn
    with pytest.raises(PersistenceError, match=r"holds a 'knn' detector, not 'cosine'"):
        load_detector(saved, get_registry().get("cosine").cls)


def test_a_registry_loads_by_the_saved_name_among_its_own_detectors(saved):
    assert type(Registry(entry_points=[]).load(saved)) is get_registry().get("knn").cls
    with pytest.raises(UnknownDetectorError, match="unknown detector 'knn'"):
        Registry(entry_points=[], builtins=False).load(saved)


# ------------------------------------------------------------------------ unknown plugins


class NotInstalledDetector(Detector):
    """A detector no installed plugin provides."""

    name = "not_installed_xyz"
    requires = Requirements(features=True)
    state_tensors = ("mean_",)

    def _fit(self, features, labels, logits):
        self.mean_ = features.float().mean(dim=0)

    def _score(self, features, logits):
        return -(features.float() - self.mean_).norm(dim=1)


def test_loading_a_detector_whose_plugin_is_not_installed(tmp_path):
    detector = _fit(NotInstalledDetector())
    detector.save(tmp_path)
    with pytest.raises(UnknownDetectorError, match="not_installed_xyz"):
        ood_zoo.load(tmp_path)
    # the class itself can still load it
    loaded = NotInstalledDetector.load(tmp_path)
    np.testing.assert_array_equal(_scores(loaded, DATA.ood), _scores(detector, DATA.ood))


def test_a_save_records_the_class_and_its_distribution(tmp_path):
    _fit(NotInstalledDetector()).save(tmp_path / "test")
    plugin = json.loads((tmp_path / "test" / CONFIG_FILE).read_text())["plugin"]
    assert plugin == {"class": f"{__name__}.NotInstalledDetector", "distribution": None,
                      "version": None}
    _fit(ood_zoo.create("knn", k=3)).save(tmp_path / "knn")
    plugin = json.loads((tmp_path / "knn" / CONFIG_FILE).read_text())["plugin"]
    assert plugin == {"class": "ood_zoo.detectors.distance.KNNDetector",
                      "distribution": "ood_zoo", "version": ood_zoo.__version__}


def test_loading_without_the_plugin_names_the_package_to_install(tmp_path, monkeypatch):
    _fit(NotInstalledDetector()).save(tmp_path)
    with pytest.raises(UnknownDetectorError, match="which no installed distribution provided"):
        ood_zoo.load(tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["plugin"].update(distribution="ood-zoo-gen", version="1.2.0")
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UnknownDetectorError) as excinfo:
        ood_zoo.load(tmp_path)
    message = str(excinfo.value)
    assert "unknown detector 'not_installed_xyz'" in message
    assert f"class {__name__}.NotInstalledDetector of the 'ood-zoo-gen' package 1.2.0" in message
    assert "pip install 'ood-zoo-gen==1.2.0'" in message


def test_a_format_version_1_save_still_loads(saved):
    before = ood_zoo.load(saved)
    config = json.loads((saved / CONFIG_FILE).read_text())
    for field in ("plugin", "fitted_attributes", "false_alarm_bound"):
        del config[field]
    config["format_version"] = 1
    (saved / CONFIG_FILE).write_text(json.dumps(config))
    loaded = ood_zoo.load(saved)
    np.testing.assert_array_equal(_scores(loaded, DATA.ood), _scores(before, DATA.ood))
    _edit_config(saved, detector="gone_xyz")
    with pytest.raises(UnknownDetectorError, match=r"saved by ood_zoo .* \(format version 1\)"):
        ood_zoo.load(saved)


class ChosenWidth(NotInstalledDetector):
    """Keeps a JSON fitted attribute, and (when asked) one that JSON cannot hold."""

    name = "test_chosen_width"

    def _fit(self, features, labels, logits):
        super()._fit(features, labels, logits)
        self.width_ = int(features.shape[1])
        self.classes_seen_ = [0, 1, None, "x", 2.5]
        self._scratch = object()  # a leading underscore: not fitted state


@pytest.mark.parametrize(
    ("value", "kind"),
    [(torch.zeros(3), "torch.Tensor"), ((1, 2), "builtins.tuple"), (math.nan, "builtins.float"),
     (np.int64(3), "numpy.int64"), ({"a": 1}, "builtins.dict"), ([[1]], "builtins.list")],
)
def test_fitted_state_json_cannot_hold_is_refused_by_name(tmp_path, value, kind):
    detector = _fit(ChosenWidth())
    detector.extra_ = value
    with pytest.raises(PersistenceError, match=rf"fitted attribute 'extra_' \({re.escape(kind)}\)"):
        detector.save(tmp_path / "refused")
    assert not (tmp_path / "refused" / CONFIG_FILE).exists()


def test_json_fitted_attributes_round_trip(tmp_path):
    detector = _fit(ChosenWidth())
    detector.save(tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["fitted_attributes"] == {"classes_seen_": [0, 1, None, "x", 2.5], "width_": 16}
    loaded = ChosenWidth.load(tmp_path)
    assert (loaded.width_, loaded.classes_seen_) == (16, [0, 1, None, "x", 2.5])
    assert not hasattr(loaded, "_scratch")


@pytest.mark.parametrize(
    "attr", ["threshold_", "is_fitted_", "mean_", "_private_", "no_underscore"]
)
def test_a_fitted_attribute_may_not_overwrite_anything(tmp_path, attr):
    _fit(ChosenWidth()).save(tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["fitted_attributes"][attr] = 1
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PersistenceError, match=f"fitted attribute '{attr}'"):
        ChosenWidth.load(tmp_path)


def test_saved_files_are_world_readable(tmp_path):
    _fit(ood_zoo.create("knn", k=2), DATA.fit).save(tmp_path)
    for path in tmp_path.iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, path.name


# ------------------------------------------------------------------------ the detector.json schema
# Issue 11, root cause 4: nesting raised RecursionError, wrong JSON types raised TypeError, and
# metadata that contradicts the tensors loaded and failed later.


def _nest(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [MAX_CONFIG_DEPTH + 1, 100_000])
def test_a_deeply_nested_config_is_refused_unparsed(saved, depth):
    (saved / CONFIG_FILE).write_text(
        f'{{"format": "ood_zoo.detector", "format_version": 1, "params": {_nest(depth)}}}'
    )
    with pytest.raises(PersistenceError, match=rf"nests {depth + 1} levels deep"):
        ood_zoo.load(saved)


def test_brackets_inside_strings_do_not_count_as_nesting(saved):
    _edit_config(saved, ood_zoo_version=_nest(50) + '\\"{')
    assert ood_zoo.load(saved).hparams["k"] == 3


def test_the_cli_reports_a_deeply_nested_config_without_a_traceback(saved, tmp_path, capsys):
    (saved / CONFIG_FILE).write_text(_nest(100_000))
    code = cli_main(["score", str(saved), "--features", "x.npy", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2
    assert "nests 100000 levels deep" in err
    assert "Traceback" not in err


def test_an_oversized_config_is_refused_unread(saved):
    (saved / CONFIG_FILE).write_text(" " * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(PersistenceError, match="larger than"):
        ood_zoo.load(saved)


def _set(path: str, value):
    """An edit of the config setting the dotted ``path`` (``[i]`` indexes a list) to ``value``."""

    def edit(config: dict) -> None:
        *parents, last = path.replace("[", ".[").split(".")
        node = config
        for key in parents:
            node = node[int(key[1:-1])] if key.startswith("[") else node[key]
        if last.startswith("["):
            node[int(last[1:-1])] = value
        else:
            node[last] = value

    return edit


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tensors.file", 123), ("tensors.file", None), ("tensors.file", ["a"]),
        ("tensors.sha256", "not-hex"), ("tensors.sha256", 5), ("tensors.bytes", "100"),
        ("tensors.bytes", -1), ("tensors.bytes", 2**70), ("tensors.entries", []),
        ("tensors.entries.bank_", 5), ("tensors.entries.bank_", None),
        ("tensors.entries.bank_.shape", "32"), ("tensors.entries.bank_.shape[0]", -1),
        ("tensors.entries.bank_.shape[0]", 1.5), ("tensors.entries.bank_.shape[0]", True),
        ("tensors.entries.bank_.shape", [1] * 17), ("tensors.entries.bank_.dtype", 3),
        ("tensors.entries.bank_.dtype", "Float32!"), ("tensors.entries.bank_.extra", 1),
        ("tensors.extra", 1), ("n_features_in", "16"), ("n_features_in", 0),
        ("n_features_in", True), ("n_logits_in", 1.0), ("target_tpr", "0.9"),
        ("target_tpr", None), ("threshold", "abc"), ("threshold", [1.0]), ("fitted", 1),
        ("params.k", [3]), ("params.k", None), ("params.k", {"a": 1}), ("params.k", "x" * 10_001),
        ("detector_version", 2), ("ood_zoo_version", None), ("detector", "x" * 201),
        ("extra", 1),
    ],
)
def test_every_field_of_the_config_is_validated(saved, field, value):
    config = json.loads((saved / CONFIG_FILE).read_text())
    _set(field, value)(config)
    (saved / CONFIG_FILE).write_text(json.dumps(config))
    named = field.split("[")[0] if field.endswith("extra") else field
    with pytest.raises(PersistenceError, match=re.escape(named)):
        ood_zoo.load(saved)


def test_every_invalid_field_is_named_at_once(saved):
    _edit_config(saved, threshold="abc", n_features_in="16")
    named = r"invalid field\(s\) \['threshold', 'n_features_in'\]"
    with pytest.raises(PersistenceError, match=named):
        ood_zoo.load(saved)


@pytest.mark.parametrize(
    "literal", ["NaN", "Infinity", "-Infinity", "1e999", "9" * 30], ids=str.lower,
)
def test_non_finite_and_huge_numbers_are_refused(saved, literal):
    text = (saved / CONFIG_FILE).read_text()
    threshold = re.search(r'"threshold": [^,]*,', text).group()
    (saved / CONFIG_FILE).write_text(text.replace(threshold, f'"threshold": {literal},'))
    with pytest.raises(PersistenceError, match=r"threshold|not a JSON number"):
        ood_zoo.load(saved)


def test_a_huge_integer_hyperparameter_is_refused(saved):
    _edit_config(saved, params={"k": 2**64})
    with pytest.raises(PersistenceError, match=r"params\.k"):
        ood_zoo.load(saved)


WIDTH_DECLARED = [
    n for n in BUILTINS if "n_features_in" in get_registry().get(n).cls.state_widths
]


def test_the_feature_width_is_declared_by_every_builtin_with_a_feature_state():
    # (nnguide's bank is one column wider than the features: a contradicting width fails its
    # first search, with an InputError)
    assert set(WIDTH_DECLARED) == {
        "cosine", "knn", "lof", "gmm", "residual", "mahalanobis", "relative_mahalanobis",
        "vim", "fdbd", "nci", "she", "neco", "rde",
    }
    logit_width = {n for n in BUILTINS if "n_logits_in" in get_registry().get(n).cls.state_widths}
    assert logit_width == {"klm", "she"}


def test_n_logits_in_contradicting_the_saved_state_is_refused(tmp_path):
    detector = _fit(ood_zoo.create("klm"))
    detector.save(tmp_path)
    _edit_config(tmp_path, n_logits_in=detector.n_logits_in_ + 1)
    with pytest.raises(PersistenceError, match=rf"n_logits_in is {detector.n_logits_in_ + 1}"):
        ood_zoo.load(tmp_path)


@pytest.mark.parametrize("name", WIDTH_DECLARED)
def test_n_features_in_contradicting_the_saved_state_is_refused(name, tmp_path):
    detector = _fit(ood_zoo.create(name))
    detector.save(tmp_path)
    _edit_config(tmp_path, n_features_in=detector.n_features_in_ + 1)
    with pytest.raises(PersistenceError, match=rf"n_features_in is {detector.n_features_in_ + 1}"):
        ood_zoo.load(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("n_features_in", None), "n_features_in is null but 'knn' is fitted on features"),
        (_set("fitted", False), "but the detector is not fitted"),
        (_set("tensors.entries.index_basis_", None), None),
    ],
    ids=["no-width", "not-fitted", "entry-dropped"],
)
def test_metadata_contradicting_the_tensors_is_refused(saved, edit, message):
    config = json.loads((saved / CONFIG_FILE).read_text())
    if message is None:  # drop a state tensor from the manifest
        del config["tensors"]["entries"]["index_basis_"]
        message = r"the saved tensors \[.*\] are not the state of 'knn'"
    else:
        edit(config)
    (saved / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PersistenceError, match=message):
        ood_zoo.load(saved)


def test_an_unfitted_save_with_a_threshold_is_refused(tmp_path):
    ood_zoo.create("cosine").save(tmp_path)
    _edit_config(tmp_path, threshold=0.5)
    with pytest.raises(PersistenceError, match="has a threshold but is not fitted"):
        ood_zoo.load(tmp_path)
    ood_zoo.create("msp").calibrate(logits=DATA.id.logits).save(tmp_path / "msp")
    assert ood_zoo.load(tmp_path / "msp").threshold_ is not None  # needs no fit


# ------------------------------------------------------------------------ non-finite state
# Issue 11, root cause 5: a re-hashed file with NaN in gmm.weights_ loaded and scored NaN.


def _poison(directory: Path, state_name: str, value: float) -> None:
    """Put ``value`` into one element of a saved state tensor and re-hash the manifest."""
    from safetensors.torch import load_file, save

    tensors = {k: v.clone() for k, v in load_file(str(_tensor_file(directory))).items()}
    tensors[state_name].view(-1)[0] = value
    _rewrite_manifest(directory, save(tensors))


@pytest.mark.parametrize("name", [n for n in BUILTINS if get_registry().get(n).cls.state_tensors])
def test_non_finite_saved_state_is_refused_for_every_builtin(name, tmp_path):
    detector = _fit(ood_zoo.create(name), _data(get_registry().get(name).cls).fit)
    floating = [n for n, t in detector.state_dict().items()
                if t.is_floating_point() and t.numel()]
    assert floating
    for state_name in floating:
        directory = tmp_path / state_name
        detector.save(directory)
        for value in (math.nan, math.inf):
            _poison(directory, state_name, value)
            with pytest.raises(PersistenceError, match=rf"state tensor {state_name!r}"):
                ood_zoo.load(directory)


# ------------------------------------------------------------------------ generations
# Issue 11, root cause 6: temp files of killed saves stayed forever, and a load racing a save
# found "tensor file ... is missing".


def test_a_save_sweeps_what_killed_or_failed_saves_left_behind(saved):
    stale = [".tensors.abc123.tmp", f".{CONFIG_FILE}.xyz.tmp",
             "tensors-0123456789abcdef.safetensors"]
    for name in stale:
        (saved / name).write_bytes(b"left by a SIGKILL")
    (saved / "notes.txt").write_text("the user's own file")
    _fit(ood_zoo.create("knn", k=4)).save(saved)
    assert sorted(p.name for p in saved.iterdir()) == sorted(
        [CONFIG_FILE, _tensor_file(saved).name, "notes.txt"]
    )
    assert ood_zoo.load(saved).hparams["k"] == 4


@contextlib.contextmanager
def _held_like_a_load(directory: Path):
    """Hold the directory's shared lock, as a load in progress does (see ood_zoo.io)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def test_no_generation_is_removed_while_a_load_or_save_is_in_progress(saved):
    (saved / ".tensors.killed.tmp").write_bytes(b"")
    first = _tensor_file(saved)
    with _held_like_a_load(saved):  # three banks, so three distinct tensor files
        _fit(ood_zoo.create("knn", k=4), DATA.id).save(saved)
        _fit(ood_zoo.create("knn", k=5), DATA.ood).save(saved)
        assert first.exists()
        assert (saved / ".tensors.killed.tmp").exists()
        assert len(list(saved.glob("tensors-*.safetensors"))) == 3
    assert ood_zoo.load(saved).hparams["k"] == 5
    _fit(ood_zoo.create("knn", k=6)).save(saved)  # alone: sweeps
    assert sorted(p.name for p in saved.iterdir()) == [CONFIG_FILE, _tensor_file(saved).name]


def test_a_load_returns_its_generation_whole_while_two_saves_complete(saved, monkeypatch):
    import ood_zoo.io as io

    old = ood_zoo.load(saved)
    reached, resume = threading.Event(), threading.Event()
    real_sha = io.sha256_file

    def slow_for_the_reader(path):
        if threading.current_thread().name == "reader":
            reached.set()
            assert resume.wait(30)
        return real_sha(path)

    monkeypatch.setattr(io, "sha256_file", slow_for_the_reader)
    results: list = []
    reader = threading.Thread(
        target=lambda: results.append(_capture(ood_zoo.load, saved)), name="reader"
    )
    reader.start()
    assert reached.wait(30)  # the reader has read detector.json and is about to hash
    _fit(ood_zoo.create("knn", k=4), DATA.id).save(saved)
    _fit(ood_zoo.create("knn", k=5), DATA.ood).save(saved)
    resume.set()
    reader.join(30)
    (loaded,) = results
    assert not isinstance(loaded, BaseException), loaded
    assert loaded.hparams["k"] == 3
    np.testing.assert_array_equal(_scores(loaded, DATA.ood), _scores(old, DATA.ood))
    assert ood_zoo.load(saved).hparams["k"] == 5


def _capture(fn, *args):
    try:
        return fn(*args)
    except BaseException as exc:
        return exc


def test_a_tensor_write_error_is_a_persistence_error(saved, monkeypatch):
    from safetensors import SafetensorError

    import ood_zoo.io as io

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    monkeypatch.setattr(io, "save_file", full_disk)
    with pytest.raises(PersistenceError, match=r"could not write the tensors: .*No space left"):
        _fit(ood_zoo.create("knn", k=4)).save(saved)
    assert _leftovers(saved) == []
    assert ood_zoo.load(saved).hparams["k"] == 3
