"""Sentence features from the hidden states of a transformers model.

:func:`extract` runs a model over texts in length-sorted batches and pools the hidden states of
one or more layers into one vector per text (see :mod:`ood_zoo.features.pooling`). It knows
nothing about detectors: it returns a plain tensor for the next stage.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from tqdm.auto import tqdm

from .models import default_device, load_model
from .pooling import POOLING_MODES, Pooling, pool

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["extract", "resolve_layers"]

Layers = int | Sequence[int] | Literal["all"]

#: transformers' stand-in for "no limit" in ``tokenizer.model_max_length`` is ~1e30.
_NO_LIMIT = 10**9


def resolve_layers(layers: Layers, n_states: int) -> tuple[list[int], bool]:
    """Normalise a layer selection to non-negative indices into the ``n_states`` hidden states.

    Hidden state 0 is the embedding output and state ``i`` the output of block ``i``, so a model
    with ``L`` blocks has ``n_states = L + 1``; ``-1`` is the last block.

    Returns
    -------
    (indices, single)
        The indices, and whether ``layers`` was a single int (a ``[n, d]`` result).
    """
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be an int, a list of ints or 'all', got {layers!r}")
        return list(range(n_states)), False
    single = not isinstance(layers, Sequence)
    chosen = [layers] if single else list(layers)
    if not chosen:
        raise ValueError("layers is empty; give at least one layer")
    indices = []
    for layer in chosen:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise TypeError(f"layer indices must be ints, got {layer!r}")
        layer = int(layer)
        if not -n_states <= layer < n_states:
            raise ValueError(
                f"layer {layer} is out of range: the model has {n_states} hidden states "
                f"(embeddings + {n_states - 1} blocks), valid indices {-n_states}..{n_states - 1}"
            )
        indices.append(layer % n_states)
    return indices, single


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string; wrap it in a list")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
    return texts


def _n_states(model: PreTrainedModel) -> int | None:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    n_layers = getattr(config, "num_hidden_layers", None)
    return None if n_layers is None else int(n_layers) + 1


def _collate(
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


def _resolve_model(
    model: PreTrainedModel | str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase | None,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, torch.device]:
    if isinstance(model, str | os.PathLike):
        loaded, own_tokenizer = load_model(model, device=device, dtype=dtype)
        chosen = own_tokenizer if tokenizer is None else tokenizer
        return loaded, chosen, next(loaded.parameters()).device
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            "model must be a transformers model, a local model directory or a registered name, "
            f"got {type(model).__name__}"
        )
    if tokenizer is None:
        raise TypeError("a loaded model needs its tokenizer: extract(texts, model, tokenizer)")
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    try:
        where = next(model.parameters()).device
    except StopIteration:
        where = torch.device(device) if device is not None else default_device()
    return model, tokenizer, where


def extract(
    texts: Sequence[str],
    model: PreTrainedModel | str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    layers: Layers = -1,
    pooling: Pooling = "mean",
    batch_size: int = 32,
    max_length: int = 512,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Pooled hidden-state features, one row per text, in input order.

    Parameters
    ----------
    texts : sequence of str
        The inputs, tokenised with special tokens (BOS, ``[CLS]``/``[SEP]``) as the model expects.
    model : transformers model, path or str
        A loaded model (then ``tokenizer`` is required), a local ``save_pretrained`` directory,
        or a name registered in ``ood_zoo_models`` hook (``"minilm"``). Loading is
        offline (``local_files_only=True``).
    tokenizer : transformers tokenizer, optional
        Overrides the loaded model's own tokenizer.
    layers : int, list of int or "all"
        Indices into the hidden states: 0 is the embedding output, ``i`` the output of block
        ``i``, ``-1`` the last block.
    pooling : {"mean", "last", "first"}
        How token states become one vector (:func:`ood_zoo.features.pooling.pool`). Use
        ``"last"`` for decoder LMs: their first position is an attention sink that dominates a
        mean.
    batch_size : int
        Texts per forward pass. Texts are sorted by token length (longest first) so that each
        batch holds similar lengths and little padding; results are put back in input order.
    max_length : int
        Texts are truncated to this many tokens (and to the tokenizer's ``model_max_length``).
    device, dtype : optional
        Where and in which precision to run. A loaded ``model`` is moved there in place (as
        ``Module.to`` does); a model loaded by name or path defaults to CUDA if available and
        float32.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    torch.Tensor
        float32 on the CPU: ``[n, d]`` for one int layer, ``[n, len(layers), d]`` for a list or
        ``"all"``.

    Notes
    -----
    The model runs in eval mode (its previous mode is restored afterwards) under
    :func:`torch.inference_mode`, so repeated calls give the same result. Batches are always
    padded on the right, whatever ``tokenizer.padding_side`` says: with the attention mask, right
    padding leaves every real token's hidden state as if the text were alone, in encoders and
    causal decoders alike, with each model's default position ids. (Left padding, the generation
    default of Gemma's tokenizer, would shift the position ids of real tokens.) Pooling then
    reads the mask, so no padding reaches a feature.
    """
    if pooling not in POOLING_MODES:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLING_MODES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    texts = _check_texts(texts)
    model, tokenizer, where = _resolve_model(model, tokenizer, device, dtype)
    net = getattr(model, "base_model", model)  # skip an LM head: hidden states do not need it
    n_states = _n_states(model)
    selected: list[int] | None = None
    single = not isinstance(layers, str | Sequence)
    if n_states is not None:  # fail early on bad layers; checked again on the real outputs
        selected, single = resolve_layers(layers, n_states)

    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < _NO_LIMIT:
        max_length = min(max_length, limit)
    encoded: dict[str, list[list[int]]] = {"input_ids": []}
    if texts:
        inputs = set(getattr(tokenizer, "model_input_names", ())) | {"input_ids", "attention_mask"}
        raw = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
        encoded = {key: value for key, value in raw.items() if key in inputs}
        encoded.setdefault("attention_mask", [[1] * len(ids) for ids in encoded["input_ids"]])
    lengths = [len(ids) for ids in encoded["input_ids"]]
    if any(length == 0 for length in lengths):
        empty = lengths.index(0)
        raise ValueError(f"text {empty} ({texts[empty]!r}) tokenises to no tokens")
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))

    out: torch.Tensor | None = None
    if not texts:
        width = getattr(model.config, "hidden_size", 0)
        count = len(selected) if selected is not None else 1
        out = torch.empty(0, count, width)

    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            tqdm(total=len(texts), desc="extract", unit="text", disable=not progress) as bar,
        ):
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                batch = _collate(encoded, rows, tokenizer, where)
                outputs = net(**batch, output_hidden_states=True, return_dict=True)
                states = getattr(outputs, "hidden_states", None)
                if states is None:
                    raise TypeError(
                        f"{type(net).__name__} returned no hidden_states; extract needs a model "
                        "that supports output_hidden_states=True"
                    )
                if selected is None or len(states) != n_states:
                    selected, single = resolve_layers(layers, len(states))
                    n_states = len(states)
                if out is None:
                    out = torch.empty(len(texts), len(selected), states[0].shape[-1])
                pooled = [pool(states[i], batch["attention_mask"], pooling) for i in selected]
                out[torch.tensor(rows)] = torch.stack(pooled, dim=1).float().cpu()
                bar.update(len(rows))
    finally:
        model.train(was_training)
    if out is None:  # unreachable: texts were given, so a batch ran
        raise RuntimeError("extract produced no output")
    return out[:, 0] if single else out
