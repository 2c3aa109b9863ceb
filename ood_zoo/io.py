"""Saving and loading fitted detectors: safetensors for tensors, JSON for the rest. No pickle.

A saved detector is a directory::

    detector.json                  name, versions, hyperparameters, threshold, tensor manifest
    tensors-<sha256[:16]>.safetensors

Writes are atomic: the tensor file is written under a temporary name, fsynced and renamed to its
content-addressed name; then ``detector.json`` is replaced in one rename. A reader therefore sees
either the old save or the new one, never a mix. On load the tensor file's size and SHA-256 are
checked against the manifest, so a truncated or modified file is an error, not a silent misload.
Loading never runs code: JSON and safetensors are data only.

This module sits below the detector API and knows no registry: :func:`load_detector` is given
the class to load into. Finding the class from the saved name is :func:`ood_zoo.load`'s job
(:meth:`ood_zoo.registry.Registry.load`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import PersistenceError
from .version import __version__

if TYPE_CHECKING:
    from .api import Detector

FORMAT = "ood_zoo.detector"
FORMAT_VERSION = 1
CONFIG_FILE = "detector.json"
#: Permissions of written files (what a plain open() gives under the usual umask 022).
FILE_MODE = 0o644

D = TypeVar("D", bound="Detector")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp creates 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_detector(detector: Detector, path: str | Path) -> Path:
    """Save ``detector`` into directory ``path`` (created if needed) and return the path."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise PersistenceError(f"{directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = detector.state_dict() if detector.is_fitted_ else {}
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=".tensors.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "detector": detector.name})
        tmp.chmod(FILE_MODE)  # mkstemp and safetensors create 0600
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        sha = sha256_file(tmp)
        tensor_file = directory / f"tensors-{sha[:16]}.safetensors"
        os.replace(tmp, tensor_file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "detector": detector.name,
        "detector_version": detector.version,
        "ood_zoo_version": __version__,
        "params": detector.hparams,
        "target_tpr": detector.target_tpr,
        "threshold": detector.threshold_,
        "n_features_in": detector.n_features_in_,
        "n_logits_in": detector.n_logits_in_,
        "fitted": detector.is_fitted_,
        "tensors": {
            "file": tensor_file.name,
            "sha256": sha,
            "bytes": tensor_file.stat().st_size,
            "entries": {
                n: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
                for n, t in tensors.items()
            },
        },
    }
    config_path = directory / CONFIG_FILE
    previous = _previous_tensor_file(config_path)
    try:
        atomic_write_bytes(config_path, (json.dumps(config, indent=2) + "\n").encode())
    except BaseException:
        if previous != tensor_file.name:  # the old save stays whole; drop the orphan
            tensor_file.unlink(missing_ok=True)
        raise
    for stale in directory.glob("tensors-*.safetensors"):
        if stale != tensor_file:
            stale.unlink(missing_ok=True)
    return directory


def _previous_tensor_file(config_path: Path) -> str | None:
    try:
        return json.loads(config_path.read_text())["tensors"]["file"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_config(path: str | Path) -> dict[str, Any]:
    """Read and check a saved detector's ``detector.json``."""
    directory = Path(path)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise PersistenceError(
            f"{directory} is not a saved ood_zoo detector (no {CONFIG_FILE})"
        )
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersistenceError(f"{config_path} is corrupt: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise PersistenceError(f"{config_path} is not an ood_zoo detector file")
    if config.get("format_version") != FORMAT_VERSION:
        raise PersistenceError(
            f"{config_path} has format version {config.get('format_version')}; this ood_zoo "
            f"reads version {FORMAT_VERSION}"
        )
    required = ("detector", "detector_version", "params", "tensors", "fitted")
    missing = [key for key in required if key not in config]
    if missing:
        raise PersistenceError(f"{config_path} lacks {missing}")
    threshold = config.get("threshold")
    checks = {
        "detector": isinstance(config["detector"], str),
        "params": isinstance(config["params"], dict),
        "tensors": isinstance(config["tensors"], dict)
        and isinstance(config["tensors"].get("entries", {}), dict),
        "fitted": isinstance(config["fitted"], bool),
        "threshold": threshold is None
        or (isinstance(threshold, int | float) and not isinstance(threshold, bool)
            and math.isfinite(threshold)),
        "target_tpr": isinstance(config.get("target_tpr", 0.95), int | float),
    }
    bad = [key for key, ok in checks.items() if not ok]
    if bad:
        raise PersistenceError(f"{config_path}: invalid field(s) {bad}")
    for key in ("n_features_in", "n_logits_in"):
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise PersistenceError(f"{config_path}: invalid field {key!r}")
    return config


def _read_tensors(directory: Path, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    name = manifest.get("file", "")
    tensor_path = directory / name
    if Path(name).name != name or not tensor_path.is_file():
        raise PersistenceError(f"{directory}: tensor file {name!r} is missing")
    size = tensor_path.stat().st_size
    if size != manifest.get("bytes"):
        raise PersistenceError(
            f"{tensor_path} is {size} bytes but {manifest.get('bytes')} were saved: truncated "
            f"or modified"
        )
    if sha256_file(tensor_path) != manifest.get("sha256"):
        raise PersistenceError(f"{tensor_path} does not match its saved SHA-256: modified")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as exc:
        raise PersistenceError(f"{tensor_path} is not a valid safetensors file: {exc}") from exc
    # Tensors come back at their offsets in the file; BLAS results can depend on alignment (MKL's
    # fp64 GEMM does, in the last bit), so give every tensor torch's own 64-byte alignment: a
    # loaded detector then scores bit for bit like the one that was saved.
    tensors = {k: t if t.data_ptr() % 64 == 0 else t.clone() for k, t in tensors.items()}
    entries = manifest.get("entries", {})
    for key, spec in entries.items():
        tensor = tensors.get(key)
        if tensor is None or list(tensor.shape) != spec["shape"] or (
            str(tensor.dtype).removeprefix("torch.") != spec["dtype"]
        ):
            raise PersistenceError(f"{tensor_path}: tensor {key!r} does not match the manifest")
    if set(tensors) != set(entries):
        unexpected = sorted(set(tensors) ^ set(entries))
        raise PersistenceError(f"{tensor_path}: unexpected tensors {unexpected}")
    return tensors


def load_detector(path: str | Path, cls: type[D]) -> D:
    """Load a detector saved by :func:`save_detector` into detector class ``cls``.

    Parameters
    ----------
    path : str or Path
        The directory written by ``save``.
    cls : Detector subclass
        The class to load into; the saved detector must be this one (by name). It need not be
        registered. :func:`ood_zoo.load` finds the class by the saved name instead.
    """
    directory = Path(path)
    config = read_config(directory)
    name = config["detector"]
    if cls.name != name:
        raise PersistenceError(f"{directory} holds a {name!r} detector, not {cls.name!r}")
    if str(config["detector_version"]) != str(cls.version):
        raise PersistenceError(
            f"{directory} was saved by {name!r} version {config['detector_version']}, "
            f"but the installed {name!r} is version {cls.version}"
        )
    try:
        detector = cls(target_tpr=config.get("target_tpr", 0.95), **config["params"])
    except (TypeError, ValueError) as exc:
        raise PersistenceError(f"{directory}: saved parameters are invalid: {exc}") from exc
    tensors = _read_tensors(directory, config["tensors"])
    if config["fitted"]:
        try:
            detector.load_state_dict(tensors)
        except (KeyError, ValueError) as exc:
            raise PersistenceError(f"{directory}: saved state is invalid: {exc}") from exc
    detector.is_fitted_ = bool(config["fitted"])
    detector.threshold_ = config.get("threshold")
    detector.n_features_in_ = config.get("n_features_in")
    detector.n_logits_in_ = config.get("n_logits_in")
    return detector

