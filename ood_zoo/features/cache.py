"""An on-disk cache of extracted features, one safetensors file per extraction.

The key covers everything that changes the numbers: the model's weights (:func:`model_fingerprint`),
the tokenizer, layers, pooling, template, ``max_length``, dtype, label words, and a SHA-256 of the
texts themselves (not of a dataset's name), as DESIGN.md's features-cache contract asks. A file
is ``<root>/features/<sha256 of the key>.safetensors`` holding the tensors plus, in its JSON
header, the full key and a SHA-256 checksum of the tensor data. Writes are atomic (temporary
file, fsync, rename). On read the key, the row count and the checksum are verified; a corrupt or
truncated entry is reported with a warning, not used, and rebuilt by the caller.

No pickle is involved, so reading a cache entry never runs code.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..io import atomic_write_bytes
from .models import cache_root

__all__ = [
    "FORMAT", "entry_path", "features_dir", "key_digest", "read_entry", "texts_sha256",
    "write_entry",
]

#: Stored in every entry's header; bump when the layout or the key changes meaning.
FORMAT = "ood_zoo.features/3"

#: Set to ``1`` to turn the cache off everywhere, whatever ``extract(cache=...)`` says.
DISABLE_ENV = "OOD_ZOO_NO_CACHE"


def features_dir(cache: bool | str | os.PathLike[str] | None) -> Path | None:
    """The directory that ``extract(cache=...)`` uses, or ``None`` when caching is off.

    ``True`` means ``<cache_root()>/features`` (``$OOD_ZOO_CACHE`` or ``~/.cache/ood_zoo``); a
    path is used as is; ``False``/``None`` or ``$OOD_ZOO_NO_CACHE=1`` turn the cache off. The
    directory need not exist yet, but it must be able to: callers ask for it before any work.

    Raises
    ------
    TypeError
        If ``cache`` is neither a bool nor a path.
    InputError
        If the directory, or the first of its parents that exists, is not a directory.
    """
    if cache is None or cache is False or os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None
    if cache is True:
        directory = cache_root() / "features"
    elif isinstance(cache, str | os.PathLike):
        directory = Path(cache).expanduser()
    else:
        raise TypeError(f"cache must be True, False or a directory, got {cache!r}")
    existing = next(p for p in (directory, *directory.parents)
                    if p.exists() or p.is_symlink() or p == p.parent)
    if not existing.is_dir():
        fix = "set $OOD_ZOO_CACHE to a directory" if cache is True else "pass a directory"
        raise InputError(
            f"the features cache directory {str(directory)!r} cannot be used: "
            f"{str(existing)!r} exists and is not a directory; {fix}, or cache=False"
        )
    return directory


def texts_sha256(texts: Sequence[str]) -> str:
    """SHA-256 of the texts in order (each UTF-8, length-prefixed, so boundaries count)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _canonical(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def key_digest(key: Mapping[str, Any]) -> str:
    """The file stem of an entry: SHA-256 of the canonical JSON of ``key``."""
    return hashlib.sha256(_canonical(key).encode()).hexdigest()


def entry_path(directory: Path, key: Mapping[str, Any]) -> Path:
    """``<directory>/<key_digest(key)>.safetensors``."""
    return directory / f"{key_digest(key)}.safetensors"


def _checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_entry(path: Path, tensors: Mapping[str, torch.Tensor], key: Mapping[str, Any]) -> str:
    """Write ``tensors`` (CPU) with ``key`` atomically (:func:`ood_zoo.io.atomic_write_bytes`);
    returns the file's SHA-256 (hex), from the bytes written, so no caller reads it back."""
    from safetensors.torch import save

    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    meta = {"format": FORMAT, "key": _canonical(key), "checksum": _checksum(tensors)}
    data = save(tensors, metadata=meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def read_entry(
    path: Path, key: Mapping[str, Any], *, n_rows: int
) -> dict[str, torch.Tensor] | None:
    """The tensors stored at ``path`` if it is a valid entry for ``key``; else ``None``.

    A missing file returns ``None`` silently. A file that does not parse, whose header key or
    format differs, whose ``features`` do not have ``n_rows`` rows, or whose checksum does not
    match its data is reported with a :class:`RuntimeWarning` and removed, so the caller
    rebuilds it.
    """
    if not path.is_file():
        return None
    from safetensors.torch import load

    reason = None
    tensors: dict[str, torch.Tensor] = {}
    try:
        data = path.read_bytes()
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = header.get("__metadata__") or {}
        if meta.get("format") != FORMAT:
            reason = f"format {meta.get('format')!r}, expected {FORMAT!r}"
        elif meta.get("key") != _canonical(key):
            reason = "its stored key differs from the requested one (hash collision?)"
        elif "features" not in tensors or tensors["features"].shape[0] != n_rows:
            reason = f"it does not hold {n_rows} feature rows"
        elif meta.get("checksum") != _checksum(tensors):
            reason = "its checksum does not match the data"
    except Exception as err:  # truncated or garbled: safetensors raises several error types
        reason = f"it does not parse ({type(err).__name__}: {err})"
    if reason is None:
        return tensors
    warnings.warn(
        f"ood_zoo feature cache entry {str(path)!r} is corrupt: {reason}; ignoring it and "
        "recomputing",
        RuntimeWarning,
        stacklevel=3,
    )
    path.unlink(missing_ok=True)
    return None
