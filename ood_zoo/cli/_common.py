"""What every ``ood-zoo`` command shares: the program name, :class:`CommandError`, reading
feature files and writing scores and JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OodZooError

__all__ = ["PROG", "CommandError", "optional_array", "parse_params", "print_json", "read_array",
           "to_numpy", "write_scores", "write_text"]

PROG = "ood-zoo"


class CommandError(OodZooError):
    """A usage problem detected by a command (bad file, bad --param)."""


def read_array(path: str | Path, *, key: str | None = None) -> Any:
    """Read a ``.npy`` file (memory-mapped) or one tensor of a ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise CommandError(f"no such file: {path}")
    if path.suffix == ".npy":
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise CommandError(f"{path} is not a readable .npy array: {exc}") from exc
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CommandError(f"{path} is not a valid safetensors file: {exc}") from exc
        if key is None:
            if len(tensors) != 1:
                raise CommandError(
                    f"{path} holds tensors {sorted(tensors)}; choose one with --key"
                )
            return next(iter(tensors.values()))
        if key not in tensors:
            raise CommandError(f"{path} has no tensor {key!r}; it holds {sorted(tensors)}")
        return tensors[key]
    raise CommandError(f"{path}: expected a .npy or .safetensors file")


def optional_array(path: str | None, key: str | None = None) -> Any:
    return None if path is None else read_array(path, key=key)


def write_text(path: Path, text: str) -> None:
    from ..io import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())


def write_scores(path: Path, scores: np.ndarray) -> None:
    import io as _io

    from ..io import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        write_text(path, json.dumps([float(s) for s in scores]) + "\n")
    elif path.suffix == ".npy":
        buffer = _io.BytesIO()
        np.save(buffer, np.asarray(scores), allow_pickle=False)
        atomic_write_bytes(path, buffer.getvalue())
    else:
        raise CommandError(f"{path}: scores are written as .npy or .json")


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--param expects KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def to_numpy(scores: Any) -> np.ndarray:
    if hasattr(scores, "detach"):
        return scores.detach().float().cpu().numpy()
    return np.asarray(scores)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))
