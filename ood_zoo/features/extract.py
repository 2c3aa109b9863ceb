"""Sentence features from the hidden states of a transformers model.

:func:`extract` runs a model over texts in length-sorted batches and pools the hidden states of
one or more layers into one vector per text (see :mod:`ood_zoo.features.pooling`). For decoder
LMs it can also return, from the same forward pass, the next-token logits of label words that
the paper's MSP and energy detectors need. It knows nothing about detectors: it returns plain
tensors for the next stage, optionally cached on disk (:mod:`ood_zoo.features.cache`).
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from tqdm.auto import tqdm

from . import cache as _cache
from .encode import Template, encode, label_token_ids
from .models import (
    DType,
    _dir_fingerprint,
    default_device,
    load_model,
    model_fingerprint,
    model_spec,
    resolve_dtype,
)
from .pooling import POOLING_MODES, Pooling, pool

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["Extraction", "extract", "resolve_layers", "tokenizer_fingerprint"]

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


@dataclass(frozen=True)
class Extraction:
    """Features plus label-token logits from one forward pass (``extract(label_words=...)``).

    Attributes
    ----------
    features : torch.Tensor
        As :func:`extract` returns without label words.
    label_logits : torch.Tensor
        ``[n, C]`` float32: the next-token logit of each label word's first sub-token at the
        prompt's last position (Liu et al., 2024, §3).
    vocab_logsumexp : torch.Tensor
        ``[n]`` float32: ``logsumexp`` of all next-token logits over the full vocabulary at that
        position, the log-normaliser of the LM's softmax.
    label_token_ids : tuple of int
        The vocabulary ids whose logits are in ``label_logits``.
    label_words : tuple of str
        The label words, in column order.

    Notes
    -----
    The paper's MSP is the full-vocabulary softmax probability of the label tokens, maximised
    over labels and *not* renormalised over them:
    ``msp = exp(label_logits - vocab_logsumexp[:, None]).max(dim=1)`` (:meth:`msp`). Its energy
    score is ``logsumexp(label_logits, dim=1)`` over the label tokens only (:meth:`energy`, the
    same as the ``energy`` detector given ``label_logits``). The ``msp`` detector renormalises
    over the columns it gets, so feed it ``label_logits`` only for the renormalised variant.
    """

    features: torch.Tensor
    label_logits: torch.Tensor
    vocab_logsumexp: torch.Tensor
    label_token_ids: tuple[int, ...]
    label_words: tuple[str, ...] = ()

    def label_log_probs(self) -> torch.Tensor:
        """``[n, C]`` log-probabilities of the label tokens under the full-vocabulary softmax."""
        return self.label_logits - self.vocab_logsumexp[:, None]

    def msp(self) -> torch.Tensor:
        """The paper's MSP: ``max_c softmax(all logits)[tok_c]`` (higher = more ID)."""
        return self.label_log_probs().exp().amax(dim=1)

    def energy(self) -> torch.Tensor:
        """The paper's (negated) energy: ``logsumexp_c logits[tok_c]`` (higher = more ID)."""
        return torch.logsumexp(self.label_logits, dim=1)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 of a tokenizer's definition (``tokenizer.json`` or vocabulary), for cache keys."""
    import hashlib

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


def _input_device(model: torch.nn.Module, fallback: str | torch.device | None) -> torch.device:
    """Where the input ids must go: the device of the input embeddings (``device_map`` aware)."""
    getter = getattr(model, "get_input_embeddings", None)
    embeddings = getter() if callable(getter) else None
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device(fallback) if fallback is not None else default_device()


def _resolve_model(
    model: PreTrainedModel | str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase | None,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    device_map: str | dict[str, Any] | None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, torch.device]:
    if isinstance(model, str | os.PathLike):
        loaded, own_tokenizer = load_model(model, device=device, dtype=dtype, device_map=device_map)
        chosen = own_tokenizer if tokenizer is None else tokenizer
        return loaded, chosen, _input_device(loaded, device)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            "model must be a transformers model, a local model directory or a registered name, "
            f"got {type(model).__name__}"
        )
    if tokenizer is None:
        raise TypeError("a loaded model needs its tokenizer: extract(texts, model, tokenizer)")
    if device_map is not None:
        raise ValueError("device_map applies when extract loads the model (by name or path)")
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model, tokenizer, _input_device(model, device)


def _model_identity(
    model: PreTrainedModel | str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase | None,
) -> tuple[str, str] | None:
    """(model id, tokenizer id) for the cache key, or ``None`` if the model must be loaded first."""
    if isinstance(model, str | os.PathLike):
        if tokenizer is not None:
            return None
        spec = model_spec(model) if isinstance(model, str) else None
        if spec is not None:
            return (spec.fingerprint(), "own") if spec.fingerprint is not None else None
        if Path(model).is_dir():
            return "dir-sha256:" + _dir_fingerprint(Path(model)), "own"
        return None
    return model_fingerprint(model), tokenizer_fingerprint(tokenizer)


def _label_head(model: torch.nn.Module) -> torch.nn.Module:
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if head is None:
        raise ValueError(
            f"label_words needs a language model with an LM head (e.g. LlamaForCausalLM); "
            f"{type(model).__name__} has none"
        )
    return head


def extract(
    texts: Sequence[str],
    model: PreTrainedModel | str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    layers: Layers = -1,
    pooling: Pooling = "mean",
    batch_size: int = 32,
    max_length: int = 512,
    template: str | None = None,
    label_words: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    dtype: DType = None,
    device_map: str | dict[str, Any] | None = None,
    sort_by_length: bool = True,
    cache: bool | str | os.PathLike[str] | None = False,
    progress: bool = True,
) -> torch.Tensor | Extraction:
    """Pooled hidden-state features, one row per text, in input order.

    Parameters
    ----------
    texts : sequence of str
        The inputs, tokenised with special tokens (BOS, ``[CLS]``/``[SEP]``) as the model expects.
    model : transformers model, path or str
        A loaded model (then ``tokenizer`` is required), a local ``save_pretrained`` directory,
        or a name registered in ``ood_zoo_models`` hook (``"minilm"``, ``"smollm2-135m"``).
        Loading is offline (``local_files_only=True``).
    tokenizer : transformers tokenizer, optional
        Overrides the loaded model's own tokenizer.
    layers : int, list of int or "all"
        Indices into the hidden states: 0 is the embedding output, ``i`` the output of block
        ``i``, ``-1`` the last block. A model with ``L`` blocks has ``L + 1`` hidden states
        (SmolLM2-135M: 31). In transformers' Llama the last entry is taken after the final
        RMSNorm, the paper's embedding (§2).
    pooling : {"mean", "last", "first"}
        How token states become one vector (:func:`ood_zoo.features.pooling.pool`). Use
        ``"last"`` for decoder LMs: their first position is an attention sink that dominates a
        mean.
    batch_size : int
        Texts per forward pass.
    max_length : int
        Tokens per sequence at most (also capped by the tokenizer's ``model_max_length``).
        With a template only the text is truncated, so the template's suffix always survives.
    template : str, optional
        A prompt with one ``{text}`` slot, e.g. the paper's
        ``"### Input:\\n{text}\\n\\n### Output:\\n"`` (``ModelSpec.template``). Wrap ID and OOD
        texts in the same template (paper pitfall 9).
    label_words : sequence of str, optional
        Verbalised labels, e.g. ``["negative", "positive"]``. Then the result is an
        :class:`Extraction` that also holds, from the same forward pass, the next-token logits of
        each word's first sub-token (tokenised in context after the template's suffix) at the
        last real position, and the full-vocabulary ``logsumexp`` there. Needs an LM head; the
        head runs on the last position only. First tokens must differ between labels.
    device, dtype : optional
        Where and in which precision to run; ``dtype`` may be a name (``"bfloat16"``). A
        loaded ``model`` is moved there in place (as ``Module.to`` does); a model loaded by name
        or path defaults to CUDA if available and float32.
    device_map : str or dict, optional
        Passed to ``from_pretrained`` when loading by name or path (needs ``accelerate``).
    sort_by_length : bool
        Batch texts sorted by token length (longest first), so each batch holds similar lengths
        and little padding; results are put back in input order either way.
    cache : bool or path
        ``True`` reads and writes the features cache under ``$OOD_ZOO_CACHE/features`` (default
        ``~/.cache/ood_zoo/features``), a path uses that directory, ``False`` (default) turns it
        off, as does ``$OOD_ZOO_NO_CACHE=1``. See :mod:`ood_zoo.features.cache`.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    torch.Tensor or Extraction
        float32 on the CPU: ``[n, d]`` for one int layer, ``[n, len(layers), d]`` for a list or
        ``"all"``; an :class:`Extraction` around it when ``label_words`` is given.

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
    dtype = resolve_dtype(dtype)
    parsed = Template.parse(template) if template is not None else None
    words: tuple[str, ...] | None = None
    if label_words is not None:
        if isinstance(label_words, str):
            raise TypeError("label_words must be a sequence of strings, not one string")
        words = tuple(label_words)
        if not words or not all(isinstance(w, str) and w for w in words):
            raise ValueError(f"label_words must be non-empty strings, got {label_words!r}")
        if len(set(words)) != len(words):
            raise ValueError(f"label_words has duplicates: {list(words)}")
    store = _cache.features_dir(cache)

    key: dict[str, Any] | None = None
    path: Path | None = None
    if store is not None:
        identity = _model_identity(model, tokenizer)
        if identity is not None:
            key, path = _lookup_key(identity, texts, layers, pooling, template, max_length,
                                    dtype or torch.float32, words, store)
            hit = _cache.read_entry(path, key, n_rows=len(texts))
            if hit is not None:
                return _from_tensors(hit, words)

    model, tokenizer, where = _resolve_model(model, tokenizer, device, dtype, device_map)
    if store is not None and key is None:
        identity = (model_fingerprint(model), tokenizer_fingerprint(tokenizer))
        model_dtype = next(model.parameters()).dtype
        key, path = _lookup_key(identity, texts, layers, pooling, template, max_length,
                                model_dtype, words, store)
        hit = _cache.read_entry(path, key, n_rows=len(texts))
        if hit is not None:
            return _from_tensors(hit, words)

    tensors = _run(texts, model, tokenizer, where, layers=layers, pooling=pooling,
                   batch_size=batch_size, max_length=max_length, template=parsed,
                   words=words, sort_by_length=sort_by_length, progress=progress)
    if key is not None and path is not None:
        _cache.write_entry(path, tensors, key)
    return _from_tensors(tensors, words)


def _lookup_key(
    identity: tuple[str, str],
    texts: list[str],
    layers: Layers,
    pooling: str,
    template: str | None,
    max_length: int,
    dtype: torch.dtype,
    words: tuple[str, ...] | None,
    store: Path,
) -> tuple[dict[str, Any], Path]:
    layer_key: Any = layers if isinstance(layers, str) else (
        [int(x) for x in layers] if isinstance(layers, Sequence) else int(layers)
    )
    key = {
        "model": identity[0], "tokenizer": identity[1], "layers": layer_key, "pooling": pooling,
        "template": template, "max_length": max_length, "dtype": str(dtype).removeprefix("torch."),
        "label_words": list(words) if words is not None else None,
        "texts_sha256": _cache.texts_sha256(texts), "n_texts": len(texts),
    }
    return key, _cache.entry_path(store, key)


def _from_tensors(
    tensors: dict[str, torch.Tensor], words: tuple[str, ...] | None
) -> torch.Tensor | Extraction:
    if words is None:
        return tensors["features"]
    return Extraction(
        features=tensors["features"],
        label_logits=tensors["label_logits"],
        vocab_logsumexp=tensors["vocab_logsumexp"],
        label_token_ids=tuple(int(i) for i in tensors["label_token_ids"].tolist()),
        label_words=words,
    )


def _run(
    texts: list[str],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    where: torch.device,
    *,
    layers: Layers,
    pooling: Pooling,
    batch_size: int,
    max_length: int,
    template: Template | None,
    words: tuple[str, ...] | None,
    sort_by_length: bool,
    progress: bool,
) -> dict[str, torch.Tensor]:
    """The forward passes: ``features`` and, with label words, the label-token tensors."""
    net = getattr(model, "base_model", model)  # hidden states do not need the LM head
    n_states = _n_states(model)
    selected: list[int] | None = None
    single = not isinstance(layers, str | Sequence)
    if n_states is not None:  # fail early on bad layers; checked again on the real outputs
        selected, single = resolve_layers(layers, n_states)
    head = _label_head(model) if words is not None else None
    token_ids = label_token_ids(tokenizer, words, template) if words is not None else []
    config = getattr(model, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None) if config is not None else None

    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < _NO_LIMIT:
        max_length = min(max_length, limit)
    encoded, n_trailing = encode(texts, tokenizer, max_length=max_length, template=template)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    if any(length == 0 for length in lengths):
        empty = lengths.index(0)
        raise ValueError(f"text {empty} ({texts[empty]!r}) tokenises to no tokens")
    if sort_by_length:
        order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    else:
        order = list(range(len(texts)))

    out: torch.Tensor | None = None
    if not texts:
        width = getattr(config, "hidden_size", 0)
        count = len(selected) if selected is not None else 1
        out = torch.empty(0, count, width)
    label_logits = torch.empty(len(texts), len(token_ids))
    vocab_lse = torch.empty(len(texts))
    ids_on_device = torch.tensor(token_ids, dtype=torch.long)

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
                index = torch.tensor(rows)
                pooled = [pool(states[i], batch["attention_mask"], pooling) for i in selected]
                out[index] = torch.stack(pooled, dim=1).float().cpu()
                if head is not None:
                    final = outputs.last_hidden_state  # after the final norm
                    last = batch["attention_mask"].sum(dim=1) - 1 - n_trailing
                    where_final = torch.arange(len(rows), device=final.device)
                    state = final[where_final, last.to(final.device)].to(head.weight.device)
                    logits = head(state).float()  # [B, V]: the LM head on one position only
                    if softcap:
                        logits = torch.tanh(logits / softcap) * softcap
                    vocab_lse[index] = torch.logsumexp(logits, dim=-1).cpu()
                    label_logits[index] = logits[:, ids_on_device.to(logits.device)].cpu()
                bar.update(len(rows))
    finally:
        model.train(was_training)
    if out is None:  # unreachable: texts were given, so a batch ran
        raise RuntimeError("extract produced no output")
    tensors = {"features": (out[:, 0] if single else out).contiguous()}
    if words is not None:
        tensors.update(
            label_logits=label_logits, vocab_logsumexp=vocab_lse, label_token_ids=ids_on_device
        )
    return tensors
