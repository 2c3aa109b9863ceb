"""What :func:`~ood_zoo.features.extract` and
:func:`~ood_zoo.features.sequence_log_likelihood` share before a forward pass: checked
arguments, the model resolved from a name, directory or module, the tokenizer's identity for
cache keys, and right-padded batches."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .introspect import input_device
from .models import default_device, load_model, resolve_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

#: transformers' stand-in for "no limit" in ``tokenizer.model_max_length`` is ~1e30.
_NO_LIMIT = 10**9


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an int >= 1 (not a bool); else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list, refusing one bare string and non-string items."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string; wrap it in a list")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
    return texts


def length_order(lengths: Sequence[int]) -> list[int]:
    """Positions longest first, ties in input order (sort key ``(-length, i)``): the order in
    which :func:`~ood_zoo.features.extract` and
    :func:`~ood_zoo.features.next_token_statistics` batch texts.

    Cutting this order into runs of whole batches and handing each run, in order, to one call
    of those functions reproduces their batches exactly.
    """
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def token_budget(tokenizer: PreTrainedTokenizerBase, max_length: int) -> int:
    """``max_length``, capped by the tokenizer's ``model_max_length`` where it sets one."""
    limit = getattr(tokenizer, "model_max_length", None)
    return min(max_length, limit) if isinstance(limit, int) and limit < _NO_LIMIT else max_length


def resolve_model(
    model: PreTrainedModel | str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase | None,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    device_map: str | dict[str, Any] | None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, torch.device]:
    """The model (loaded by name or path, or moved in place), its tokenizer and input device.

    ``device`` is checked (:func:`~ood_zoo.features.models.resolve_device`) before anything is
    loaded or moved.
    """
    checked = resolve_device(device) if device is not None else None
    if isinstance(model, str | os.PathLike):
        loaded, own_tokenizer = load_model(model, device=checked, dtype=dtype,
                                           device_map=device_map)
        chosen = own_tokenizer if tokenizer is None else tokenizer
    elif isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise TypeError("a loaded model needs its tokenizer: extract(texts, model, tokenizer)")
        if device_map is not None:
            raise ValueError("device_map applies when extract loads the model (by name or path)")
        if checked is not None or dtype is not None:
            model.to(device=checked, dtype=dtype)
        loaded, chosen = model, tokenizer
    else:
        raise TypeError(
            "model must be a transformers model, a local model directory or a registered name, "
            f"got {type(model).__name__}"
        )
    return loaded, chosen, input_device(loaded) or checked or default_device()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 of a tokenizer's definition (``tokenizer.json`` or vocabulary), for cache keys."""
    digest = hashlib.sha256(type(tokenizer).__qualname__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        definition = json.loads(backend.to_str())
        for transient in ("truncation", "padding"):  # set per call by ``tokenizer(...)``
            definition.pop(transient, None)
        digest.update(json.dumps(definition, sort_keys=True).encode())
    else:
        digest.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    specials = getattr(tokenizer, "special_tokens_map", {})
    digest.update(repr(sorted((k, str(v)) for k, v in specials.items())).encode())
    return "sha256:" + digest.hexdigest()


def collate(
    encoded: dict[str, list[list[int]]],
    rows: Sequence[int],
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Right-pad the encodings of ``rows`` into tensors (padding ids never reach a feature)."""
    pad_id = tokenizer.pad_token_id
    if pad_id is None:  # e.g. Llama-2: any id works, the attention mask hides it
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    fill = {
        "input_ids": pad_id,
        "attention_mask": 0,
        "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0),
    }
    width = max(len(encoded["input_ids"][i]) for i in rows)
    batch = {}
    for key, value in fill.items():
        if key not in encoded:
            continue
        padded = [encoded[key][i] + [value] * (width - len(encoded[key][i])) for i in rows]
        batch[key] = torch.tensor(padded, dtype=torch.long, device=device)
    return batch
