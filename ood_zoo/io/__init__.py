"""Saving and loading fitted detectors: safetensors for tensors, JSON for the rest. No pickle.

A saved detector is a directory::

    detector.json                  name, versions, plugin, hyperparameters, threshold,
                                   JSON fitted attributes, tensor manifest
    tensors-<sha256[:16]>.safetensors

**Fitted state.** The tensors of ``state_tensors`` go to safetensors; every other fitted
attribute (a public name ending in ``_``, see :mod:`ood_zoo.api`) goes to ``detector.json`` if it
is a JSON scalar or a list of them, and a save refuses any other (:func:`fitted_attributes`)
rather than drop it. ``plugin`` records the class and the distribution that provided it, so a
load without that plugin says what to install. Once calibrated, the tensor file also holds the
sorted calibration scores (:data:`CALIBRATION_TENSOR`) and ``detector.json`` the threshold's
``false_alarm_bound``. Format version 1 (without these) still loads.

**Writes.** A save writes the tensor file in a scratch directory (``.tensors.*.tmp/``), fsyncs
it and renames it to its content-addressed name; then it replaces ``detector.json`` in one
rename (through ``.detector.json.*.tmp``) and fsyncs the directory. Each ``detector.json`` is
one *generation*: it names its own tensor file, which no later save modifies. A save that fails
(full disk, an exception, SIGKILL) leaves the previous generation whole and loadable.

**Loads.** A load reads ``detector.json`` once, validates it against :data:`CONFIG_SCHEMA`
(types, required keys, bounded size and depth), cross-checks it against the detector class and
the tensor manifest, and checks the tensor file's size and SHA-256 before any state is set.
So a load returns exactly one generation, whole (the one ``detector.json`` named when it was
read), or raises :class:`~ood_zoo.errors.PersistenceError`; never a mix of two generations and
never a partial file. Loading never runs code: JSON and safetensors are data only.

**Removal.** Saves and loads hold a shared ``flock`` on the directory from before they read or
write anything until their files are open. After its rename a save tries to take the lock
exclusively, without waiting. Only if it gets it (no other save or load of the directory is in
progress; a killed process holds no lock) does it remove the tensor files that the current
``detector.json`` does not name, and the temporary files that killed or failed saves left
behind. Otherwise it removes nothing and leaves that to a later save. Hence:

- a load never finds its generation's tensor file missing, whatever saves run meanwhile;
- after a save that ran alone, the directory holds ``detector.json`` and one tensor file
  (plus any files of the user's own), nothing else;
- old generations pile up only while saves and loads of one directory overlap without pause.

On a file system without ``flock`` (e.g. Lustre mounted without it) nothing is ever removed:
loads stay safe, and old tensor files stay until removed by hand.

This module sits below the detector API and knows no registry: :func:`load_detector` is given
the class to load into, :func:`load_saved` a function from the saved name to the class.
Finding the class by name is :func:`ood_zoo.load`'s job (:meth:`ood_zoo.registry.Registry.load`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import PersistenceError, UnknownDetectorError
from ..version import __version__, distribution_of
from ._schema import (
    FITTED_VALUE,
    NULLABLE_TEXT,
    NUMBER,
    ListOf,
    MapOf,
    Record,
    Value,
    bounded_text,
    finite,
    fitted_value,
    integer,
    nesting_depth,
    param_value,
    preview,
    refuse_constant,
)

if TYPE_CHECKING:
    from ..api import Detector

FORMAT = "ood_zoo.detector"
FORMAT_VERSION = 2
#: The fields format version 2 added to version 1 (which loads as if they were empty).
ADDED_IN_2 = ("plugin", "fitted_attributes", "false_alarm_bound")
#: The tensor of a calibrated detector's ``calibration_scores_`` in the tensor file.
CALIBRATION_TENSOR = "calibration_scores_"
CONFIG_FILE = "detector.json"
#: Permissions of written files (what a plain open() gives under the usual umask 022).
FILE_MODE = 0o644
#: ``detector.json`` is refused unread beyond this size, and unparsed beyond this nesting depth
#: (the schema needs 5 levels); JSON's own parser would raise RecursionError on deep nesting.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 8
#: Temporary files of a save in progress, or left by one that was killed.
TEMP_PREFIXES = (".tensors.", f".{CONFIG_FILE}.")
TEMP_SUFFIX = ".tmp"
TENSOR_FILE = re.compile(r"tensors-[0-9a-f]{16}\.safetensors")
#: flock errors meaning "this file system has no locks" (rather than "someone holds it").
_NO_LOCKS = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOLCK)

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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
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


# ---------------------------------------------------------------------------- the schema


#: The fitted attributes the Detector base class sets, not ``_fit``: ``detector.json`` holds the
#: first four in fields of their own and the calibration in ``false_alarm_bound`` and
#: :data:`CALIBRATION_TENSOR`; the head is saved by the detectors that score with it, in their
#: ``state_tensors`` (a fusion only hands it to its members).
BASE_ATTRIBUTES = ("threshold_", "n_features_in_", "n_logits_in_", "is_fitted_",
                   "calibration_scores_", "false_alarm_bound_", "head_weight_", "head_bias_")

#: The schema of ``detector.json`` (format version 2), as written by :func:`save_detector`.
#: Hyperparameter values are checked further by the detector's declared ``Param``s.
CONFIG_SCHEMA = Record({
    "format": Value((str,), repr(FORMAT), lambda s: s == FORMAT),
    "format_version": Value((int,), "1 or 2", lambda n: n in (1, FORMAT_VERSION)),
    "detector": bounded_text(200),
    "detector_version": bounded_text(200),
    "ood_zoo_version": bounded_text(200),
    "false_alarm_bound": Value((float,), "a number in (0, 1) or null", lambda b: 0 < b < 1,
                               nullable=True),
    "plugin": Record({
        "class": bounded_text(500), "distribution": NULLABLE_TEXT, "version": NULLABLE_TEXT,
    }),
    "fitted_attributes": MapOf(FITTED_VALUE, max_items=1000),
    "params": MapOf(
        Value((bool, int, float, str), "a bool, a finite number or a string of at most 10,000 "
              "characters", param_value),
        max_items=1000,
    ),
    "target_tpr": NUMBER,
    "threshold": Value((int, float), "a finite number or null", finite, nullable=True),
    "n_features_in": integer(1, nullable=True),
    "n_logits_in": integer(1, nullable=True),
    "fitted": Value((bool,), "true or false"),
    "tensors": Record({
        "file": bounded_text(255),
        "sha256": bounded_text(64, "[0-9a-f]{64}"),
        "bytes": integer(0),
        "entries": MapOf(
            Record({"dtype": bounded_text(32, "[a-z0-9_]+"), "shape": ListOf(integer(0), 16)}),
            max_items=1000,
        ),
    }),
})


# ---------------------------------------------------------------------------- the lock


@contextmanager
def _directory_lock(directory: Path, *, exclusive: bool) -> Iterator[bool]:
    """Hold a ``flock`` on ``directory`` (see the module notes); yields whether it is held.

    Shared locks wait; the exclusive one does not: it is not held while anyone else holds the
    lock. Neither is held where the file system has no locks.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        yield False  # nothing saved here to protect (the load says so), or unlistable
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
        except BlockingIOError:
            held = False
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
            held = False
        else:
            held = True
        yield held
    finally:
        os.close(fd)  # releases the lock


def _sweep(directory: Path) -> None:
    """Remove stale temporary files and unnamed tensor files, if no save or load is running."""
    with _directory_lock(directory, exclusive=True) as alone:
        if not alone:
            return
        try:
            keep: set[str] | None = {read_config(directory)["tensors"]["file"]}
        except PersistenceError:  # no save at all: no tensor file is needed; a damaged one: keep
            keep = None if (directory / CONFIG_FILE).exists() else set()
        for path in directory.iterdir():
            name = path.name
            stale_temp = name.startswith(TEMP_PREFIXES) and name.endswith(TEMP_SUFFIX)
            unnamed = keep is not None and name not in keep and bool(TENSOR_FILE.fullmatch(name))
            if stale_temp and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif stale_temp or unnamed:
                path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- saving


def save_detector(detector: Detector, path: str | Path) -> Path:
    """Save ``detector`` into directory ``path`` (created if needed) and return the path.

    Raises
    ------
    PersistenceError
        If ``path`` is a file, or the tensors could not be written (a full disk, say).
    OSError
        If writing or syncing ``detector.json`` failed. Either way the previous save stays.
    """
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise PersistenceError(f"{directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = detector.state_dict() if detector.is_fitted_ else {}
    if detector.calibration_scores_ is not None:
        tensors[CALIBRATION_TENSOR] = detector.calibration_scores_.detach().cpu().contiguous()
    attributes = fitted_attributes(detector)
    cls = type(detector)
    provider = distribution_of(cls.__module__) or (None, None)
    try:
        with _directory_lock(directory, exclusive=False):
            tensor_file, sha, size = _write_tensors(directory, tensors, detector.name)
            config = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "detector": detector.name,
                "detector_version": detector.version,
                "ood_zoo_version": __version__,
                "plugin": {"class": f"{cls.__module__}.{cls.__qualname__}",
                           "distribution": provider[0], "version": provider[1]},
                "fitted_attributes": attributes,
                "params": detector.hparams,
                "target_tpr": detector.target_tpr,
                "threshold": detector.threshold_,
                "false_alarm_bound": detector.false_alarm_bound_,
                "n_features_in": detector.n_features_in_,
                "n_logits_in": detector.n_logits_in_,
                "fitted": detector.is_fitted_,
                "tensors": {
                    "file": tensor_file.name,
                    "sha256": sha,
                    "bytes": size,
                    "entries": {
                        n: {"dtype": _dtype_name(t.dtype), "shape": list(t.shape)}
                        for n, t in tensors.items()
                    },
                },
            }
            text = json.dumps(config, indent=2, allow_nan=False) + "\n"
            atomic_write_bytes(directory / CONFIG_FILE, text.encode())
    finally:  # a failed save's tensor file is unnamed, hence swept like the old generation's
        _sweep(directory)
    return directory


def fitted_attributes(detector: Detector) -> dict[str, Any]:
    """The fitted attributes saved in ``detector.json``: every public attribute ending in ``_``
    (set by ``_fit``) but the tensors of ``state_tensors`` and :data:`BASE_ATTRIBUTES`.

    Raises
    ------
    PersistenceError
        Naming an attribute whose value is not a JSON scalar or a list of them (a tensor
        missing from ``state_tensors``, an object): it would be lost.
    """
    found = {}
    skip = (*BASE_ATTRIBUTES, *detector.state_tensors)
    for attr, value in sorted(vars(detector).items()):
        if attr.startswith("_") or not attr.endswith("_") or attr in skip:
            continue
        if not fitted_value(value):
            raise PersistenceError(
                f"{detector.name}: cannot save fitted attribute {attr!r} "
                f"({type(value).__module__}.{type(value).__qualname__}): a tensor goes in "
                "state_tensors; other fitted state must be JSON (None, a bool, a finite number, "
                "a string or a list of them); a value that need not be saved takes a name "
                "without the trailing underscore"
            )
        found[attr] = value
    return found


def _write_tensors(
    directory: Path, tensors: dict[str, torch.Tensor], name: str,
) -> tuple[Path, str, int]:
    """Write ``tensors`` to their content-addressed file; return it, its SHA-256 and size.

    The file is written in a scratch directory of its own (``.tensors.*.tmp/``), so whatever
    temporary files safetensors' writer makes stay inside it, and one ``rmtree`` (here, or in
    a later sweep after a SIGKILL) removes them all.
    """
    scratch = Path(tempfile.mkdtemp(dir=directory, prefix=TEMP_PREFIXES[0], suffix=TEMP_SUFFIX))
    try:
        tmp = scratch / "tensors.safetensors"
        try:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "detector": name})
        except SafetensorError as exc:  # safetensors reports I/O errors (ENOSPC) as its own
            raise PersistenceError(f"{directory}: could not write the tensors: {exc}") from exc
        tmp.chmod(FILE_MODE)  # safetensors creates 0600
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        sha = sha256_file(tmp)
        size = tmp.stat().st_size
        tensor_file = directory / f"tensors-{sha[:16]}.safetensors"
        os.replace(tmp, tensor_file)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return tensor_file, sha, size


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------- loading


def read_config(path: str | Path) -> dict[str, Any]:
    """Read ``detector.json`` of a saved detector and validate it against :data:`CONFIG_SCHEMA`.

    Raises
    ------
    PersistenceError
        Naming the file and every field that is missing, unexpected or invalid.
    """
    directory = Path(path)
    config_path = directory / CONFIG_FILE
    try:
        with config_path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise PersistenceError(
            f"{directory} is not a saved ood_zoo detector (no {CONFIG_FILE})"
        ) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise PersistenceError(f"{config_path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = data.decode("utf-8")
        depth = nesting_depth(text)
        if depth > MAX_CONFIG_DEPTH:
            raise PersistenceError(
                f"{config_path} nests {depth} levels deep; a detector file nests at most "
                f"{MAX_CONFIG_DEPTH}"
            )
        config = json.loads(text, parse_constant=refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, too many digits
        raise PersistenceError(f"{config_path} is corrupt: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise PersistenceError(f"{config_path} is not an ood_zoo detector file")
    if config.get("format_version") not in (1, FORMAT_VERSION):
        raise PersistenceError(
            f"{config_path} has format version {preview(config.get('format_version'))}; this "
            f"ood_zoo reads versions 1 and {FORMAT_VERSION}"
        )
    if config["format_version"] == 1:
        stray = [(key, "is not a field of format version 1") for key in ADDED_IN_2
                 if key in config]
        config = {**config, "plugin": None, "fitted_attributes": {}, "false_alarm_bound": None}
        problems = stray + [(f, p) for f, p in CONFIG_SCHEMA.problems(config, "")
                            if f.partition(".")[0] not in ADDED_IN_2]
    else:
        problems = list(CONFIG_SCHEMA.problems(config, ""))
    missing = sorted(field for field, problem in problems if problem == "is missing")
    invalid = [(field, problem) for field, problem in problems if problem != "is missing"]
    if missing:
        raise PersistenceError(f"{config_path} lacks {missing}")
    if invalid:
        raise PersistenceError(
            f"{config_path}: invalid field(s) {[field for field, _ in invalid]}: "
            + "; ".join(f"{field} {problem}" for field, problem in invalid)
        )
    return config


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

    def this_class(name: str) -> type[D]:
        if name != cls.name:
            raise PersistenceError(f"{path} holds a {name!r} detector, not {cls.name!r}")
        return cls

    return load_saved(path, this_class)


def load_saved(path: str | Path, find_class: Callable[[str], type[D]]) -> D:
    """Load the detector saved in ``path`` into the class ``find_class(saved name)`` returns.

    ``detector.json`` is read once, so the class, the parameters and the tensors all come from
    one generation (see the module notes).

    Raises
    ------
    PersistenceError
        If ``path`` is not a whole, valid and consistent save of that class's detector.
    """
    directory = Path(path)
    with _directory_lock(directory, exclusive=False):
        config = read_config(directory)
        name = config["detector"]
        try:
            cls = find_class(name)
        except UnknownDetectorError as exc:
            raise UnknownDetectorError(f"{exc}; {_provenance(directory, config)}") from None
        if config["detector_version"] != str(cls.version):
            raise PersistenceError(
                f"{directory} was saved by {name!r} version {config['detector_version']}, "
                f"but the installed {name!r} is version {cls.version}"
            )
        try:
            detector = cls(target_tpr=config["target_tpr"], **config["params"])
        except (TypeError, ValueError) as exc:
            raise PersistenceError(f"{directory}: saved parameters are invalid: {exc}") from exc
        _check_metadata(config, detector, f"{directory / CONFIG_FILE}")
        tensors = _read_tensors(directory, config["tensors"])
    calibration = tensors.pop(CALIBRATION_TENSOR, None)
    if calibration is not None:
        _check_calibration(calibration, config, f"{directory / CONFIG_FILE}")
    if config["fitted"]:
        for attr, value in config["fitted_attributes"].items():
            setattr(detector, attr, value)
        try:
            detector.load_state_dict(tensors)
        except (KeyError, ValueError) as exc:
            raise PersistenceError(f"{directory}: saved state is invalid: {exc}") from exc
    detector.is_fitted_ = config["fitted"]
    detector.threshold_ = config["threshold"]
    detector.calibration_scores_ = calibration
    detector.false_alarm_bound_ = config["false_alarm_bound"]
    detector.n_features_in_ = config["n_features_in"]
    detector.n_logits_in_ = config["n_logits_in"]
    return detector


def _provenance(directory: Path, config: dict[str, Any]) -> str:
    """Where the saved detector's class came from, and what to install to load it."""
    plugin = config["plugin"]
    if plugin is None:
        return f"{directory} was saved by ood_zoo {config['ood_zoo_version']} (format version 1)"
    if plugin["distribution"] is None:
        return (f"{directory} was saved from class {plugin['class']}, which no installed "
                "distribution provided: register that class's plugin")
    dist, version = plugin["distribution"], plugin["version"]
    return (f"{directory} was saved from class {plugin['class']} of the {dist!r} package "
            f"{version}: install it (pip install '{dist}=={version}')")


def _check_metadata(config: dict[str, Any], detector: Detector, where: str) -> None:
    """Refuse metadata that contradicts the detector or the saved tensors' manifest.

    ``detector`` is the detector built from the saved parameters: its declarations (``requires``,
    ``state_tensors``) may depend on them, as a fusion's do on its members.
    """
    entries = dict(config["tensors"]["entries"])
    calibration = entries.pop(CALIBRATION_TENSOR, None)
    attributes = sorted(config["fitted_attributes"])
    problems = [f"fitted attribute {attr!r} is not a public name ending in '_' of its own"
                for attr in attributes if not attr.isidentifier() or attr.startswith("_")
                or not attr.endswith("_") or attr in BASE_ATTRIBUTES
                or attr in detector.state_tensors or hasattr(type(detector), attr)]
    if (calibration is None) != (config["false_alarm_bound"] is None):
        problems.append(f"false_alarm_bound is {config['false_alarm_bound']} but the tensors "
                        f"{'lack' if calibration is None else 'hold'} {CALIBRATION_TENSOR!r}")
    elif calibration is not None and (calibration["dtype"] != "float64"
                                      or len(calibration["shape"]) != 1
                                      or config["threshold"] is None):
        problems.append(f"{CALIBRATION_TENSOR!r} must be a float64 vector with a threshold")
    widths = {"n_features_in": config["n_features_in"], "n_logits_in": config["n_logits_in"]}
    if not config["fitted"]:
        problems += [f"{key} is {value} but the detector is not fitted"
                     for key, value in widths.items() if value is not None]
        if attributes:
            problems.append(f"it holds fitted attributes {attributes} but is not fitted")
        if entries:
            problems.append(f"it holds tensors {sorted(entries)} but is not fitted")
        if config["threshold"] is not None and detector.requires.fit:
            problems.append("it has a threshold but is not fitted")
    else:
        if set(entries) != set(detector.state_tensors):
            problems.append(
                f"the saved tensors {sorted(entries)} are not the state of {detector.name!r} "
                f"{sorted(detector.state_tensors)}"
            )
        needed = {"n_features_in": detector.requires.features,
                  "n_logits_in": detector.requires.logits}
        problems += [f"{key} is null but {detector.name!r} is fitted on "
                     f"{key.removeprefix('n_').removesuffix('_in')}"
                     for key, need in needed.items() if need and widths[key] is None]
        for key, (tensor, axis) in detector.state_widths.items():
            shape = entries.get(tensor, {}).get("shape", [])
            if widths[key] is not None and (axis >= len(shape) or shape[axis] != widths[key]):
                problems.append(
                    f"{key} is {widths[key]} but the saved {tensor!r} has shape {shape} "
                    f"(its axis {axis} is that width)"
                )
    if problems:
        raise PersistenceError(f"{where} is inconsistent: " + "; ".join(problems))


def _check_calibration(scores: torch.Tensor, config: dict[str, Any], where: str) -> None:
    """Refuse calibration scores that are not finite and sorted, or that do not place the
    saved threshold: the ``k``-th smallest of ``n``, ``k = false_alarm_bound (n + 1)``."""
    n = scores.numel()
    rank = round(config["false_alarm_bound"] * (n + 1))
    if not (bool(scores.isfinite().all()) and bool((scores[1:] >= scores[:-1]).all())
            and 1 <= rank <= n and rank / (n + 1) == config["false_alarm_bound"]
            and float(scores[rank - 1]) == config["threshold"]):
        raise PersistenceError(
            f"{where} is inconsistent: the calibration scores (n={n}) are not finite and sorted, "
            f"or do not place threshold {config['threshold']} at false_alarm_bound "
            f"{config['false_alarm_bound']}"
        )


def _read_tensors(directory: Path, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    name = manifest["file"]
    tensor_path = directory / name
    if Path(name).name != name or not tensor_path.is_file():
        raise PersistenceError(f"{directory}: tensor file {name!r} is missing")
    size = tensor_path.stat().st_size
    if size != manifest["bytes"]:
        raise PersistenceError(
            f"{tensor_path} is {size} bytes but {manifest['bytes']} were saved: truncated "
            f"or modified"
        )
    if sha256_file(tensor_path) != manifest["sha256"]:
        raise PersistenceError(f"{tensor_path} does not match its saved SHA-256: modified")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as exc:
        raise PersistenceError(f"{tensor_path} is not a valid safetensors file: {exc}") from exc
    # Tensors come back at their offsets in the file; BLAS results can depend on alignment (MKL's
    # fp64 GEMM does, in the last bit), so give every tensor torch's own 64-byte alignment: a
    # loaded detector then scores bit for bit like the one that was saved.
    tensors = {k: t if t.data_ptr() % 64 == 0 else t.clone() for k, t in tensors.items()}
    entries = manifest["entries"]
    for key, spec in entries.items():
        tensor = tensors.get(key)
        if tensor is None or list(tensor.shape) != spec["shape"] or (
            _dtype_name(tensor.dtype) != spec["dtype"]
        ):
            raise PersistenceError(f"{tensor_path}: tensor {key!r} does not match the manifest")
    if set(tensors) != set(entries):
        unexpected = sorted(set(tensors) ^ set(entries))
        raise PersistenceError(f"{tensor_path}: unexpected tensors {unexpected}")
    return tensors
