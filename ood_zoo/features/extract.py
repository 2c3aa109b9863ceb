"""Sentence features from the hidden states of a transformers model.

:func:`extract` runs a model over texts in length-sorted batches and pools the hidden states of
one or more layers into one vector per text (see :mod:`ood_zoo.features.pooling`). For decoder
LMs it can also return, from the same forward pass, the next-token logits of label words that
the paper's MSP and energy detectors need, and each text's next-token statistics under the LM. It
knows nothing about detectors: it returns one :class:`Extraction` of plain tensors for the next
stage, optionally cached on disk (:mod:`ood_zoo.features.cache`).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from . import cache as _cache
from ._inputs import (
    check_texts,
    collate,
    length_order,
    positive_int,
    resolve_model,
    token_budget,
    tokenizer_fingerprint,
)
from .encode import Template, encode, label_token_ids
from .introspect import backbone, is_causal_lm, lm_head, logit_softcap, n_hidden_states
from .likelihood import next_token_statistics
from .models import (
    DType,
    directory_fingerprint,
    model_fingerprint,
    model_spec,
    resolve_device,
    resolve_dtype,
)
from .pooling import POOLING_MODES, Pooling, avg_avg, pool

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "Extraction", "cache_key", "extract", "feature_lengths", "length_order", "model_identity",
    "resolve_layers",
]

Layers = int | Sequence[int] | Literal["all"]
Rows = Sequence[int] | np.ndarray | torch.Tensor


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


@dataclass(frozen=True)
class Extraction:
    """What one :func:`extract` call read from a model: row ``i`` belongs to text ``i``.

    Attributes
    ----------
    features : torch.Tensor
        float32 on the CPU: ``[n, d]`` for one int layer, ``[n, len(layers), d]`` for a list of
        layers or ``"all"``.
    layers : tuple of int
        The non-negative hidden-state index of each feature slice (one for ``[n, d]``).
    n_states : int
        The model's hidden states (embeddings + one per block); negative layers count from it.
    label_logits : torch.Tensor or None
        ``[n, C]`` float32: the next-token logit of each label word's first sub-token at the
        prompt's last position (Liu et al., 2024, §3); ``None`` without label words.
    vocab_logsumexp : torch.Tensor or None
        ``[n]`` float32: ``logsumexp`` of all next-token logits over the full vocabulary at that
        position, the log-normaliser of the LM's softmax; ``None`` without label words.
    label_token_ids : tuple of int
        The vocabulary ids whose logits are in ``label_logits``.
    label_words : tuple of str
        The label words, in column order.
    lm_stats : torch.Tensor or None
        ``[n, 5]`` float64 per-text next-token statistics, the columns
        :data:`~ood_zoo.features.NEXT_TOKEN_STATS` (``log_likelihood``, the three divergences
        from uniform, ``n_tokens``) of :func:`~ood_zoo.features.next_token_statistics`, with
        ``extract(lm_stats=True)``.
    label_head_weight, label_head_bias : torch.Tensor or None
        ``[C, d]`` and ``[C]`` float32: the LM head's rows of the label tokens (bias zeros if
        the head has none), which map the final hidden state at the logits' position to
        ``label_logits``; recorded only where that state is the final layer's feature
        (``pooling="last"``, no special token after the prompt, no logit soft-capping). See
        :meth:`label_head`.

    Notes
    -----
    The paper's MSP is the full-vocabulary softmax probability of the label tokens, maximised
    over labels and *not* renormalised over them: ``label_log_probs().exp().amax(dim=1)``. Its
    energy score is ``logsumexp(label_logits, dim=1)`` over the label tokens only (the
    ``energy`` detector given ``label_logits``). The ``msp`` detector renormalises over the
    columns it gets: give it ``label_logits`` for the renormalised variant; the ``maxlogit``
    detector on :meth:`label_log_probs` ranks texts as the paper's MSP does.
    """

    features: torch.Tensor
    layers: tuple[int, ...]
    n_states: int
    label_logits: torch.Tensor | None = None
    vocab_logsumexp: torch.Tensor | None = None
    label_token_ids: tuple[int, ...] = ()
    label_words: tuple[str, ...] = ()
    lm_stats: torch.Tensor | None = None
    label_head_weight: torch.Tensor | None = None
    label_head_bias: torch.Tensor | None = None

    def __post_init__(self) -> None:
        slices = 1 if self.features.dim() == 2 else self.features.shape[1]
        if self.features.dim() not in (2, 3) or slices != len(self.layers):
            raise ValueError(f"features of shape {tuple(self.features.shape)} do not hold one "
                             f"slice per layer of {list(self.layers)}")
        columns = 0 if self.label_logits is None else self.label_logits.shape[1]
        if not columns == len(self.label_words) == len(self.label_token_ids):
            raise ValueError(f"{columns} label-logit columns for the label words "
                             f"{list(self.label_words)} and token ids {list(self.label_token_ids)}")
        if (self.label_head_weight is None) != (self.label_head_bias is None) or (
            self.label_head_weight is not None and self.label_head_weight.shape[0] != columns
        ):
            raise ValueError(f"the label head must have one weight row and one bias per "
                             f"label-logit column ({columns})")

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def layer(self, layer: int) -> torch.Tensor:
        """``[n, d]`` features of hidden state ``layer`` (negative counts from ``n_states``).

        Raises
        ------
        ValueError
            If that hidden state was not extracted.
        """
        index = layer % self.n_states if -self.n_states <= layer < self.n_states else None
        if index is None or index not in self.layers:
            raise ValueError(f"layer {layer} was not extracted (have {list(self.layers)} of "
                             f"{self.n_states} hidden states)")
        return self.features if self.features.dim() == 2 else (
            self.features[:, self.layers.index(index)])

    def label_head(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The linear head ``(weight [C, d], bias [C])`` with ``layer(layer) @ weight.T + bias =
        label_logits``, or ``None`` where there is none: ``layer`` is not the final hidden
        state, or the head was not recorded (see :attr:`label_head_weight`)."""
        if self.label_head_weight is None or self.label_head_bias is None:
            return None
        if layer % self.n_states != self.n_states - 1:
            return None
        return self.label_head_weight, self.label_head_bias

    def label_log_probs(self) -> torch.Tensor:
        """``[n, C]`` log-probabilities of the label tokens under the full-vocabulary softmax:
        ``label_logits - vocab_logsumexp[:, None]``."""
        if self.label_logits is None or self.vocab_logsumexp is None:
            raise ValueError("no label-token logits: extract them with label_words=[...]")
        return self.label_logits - self.vocab_logsumexp[:, None]

    def rows(self, index: Rows) -> Extraction:
        """The bundle restricted to the rows ``index`` (positions, in that order)."""
        idx = torch.as_tensor(index, dtype=torch.long)

        def pick(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[idx]

        return replace(self, features=self.features[idx], label_logits=pick(self.label_logits),
                       vocab_logsumexp=pick(self.vocab_logsumexp), lm_stats=pick(self.lm_stats))

    def for_labels(self, words: Sequence[str]) -> Extraction:
        """The bundle with the label columns of ``words`` only, in that order.

        Raises
        ------
        ValueError
            If a word is not among :attr:`label_words`.
        """
        missing = [w for w in words if w not in self.label_words]
        if missing or self.label_logits is None:
            raise ValueError(f"label words {missing or list(words)} were not extracted "
                             f"(have {list(self.label_words)})")
        columns = [self.label_words.index(w) for w in words]
        def pick(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[columns]

        return replace(self, label_logits=self.label_logits[:, columns],
                       label_token_ids=tuple(self.label_token_ids[c] for c in columns),
                       label_words=tuple(words), label_head_weight=pick(self.label_head_weight),
                       label_head_bias=pick(self.label_head_bias))


def model_identity(
    model: PreTrainedModel | str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[str, str] | None:
    """``(model id, tokenizer id)`` for :func:`cache_key`, or ``None`` if the model must be
    loaded first.

    A registered name gives its ``ModelSpec.fingerprint()`` (with ``"own"`` tokenizer), a local
    directory the SHA-256 of its files, a loaded model :func:`model_fingerprint` and
    :func:`~ood_zoo.features.tokenizer_fingerprint`; a name or path with a tokenizer that
    overrides its own, or a registered model without a fingerprint, gives ``None``.
    """
    if isinstance(model, str | os.PathLike):
        if tokenizer is not None:
            return None
        spec = model_spec(model) if isinstance(model, str) else None
        if spec is not None:
            return (spec.fingerprint(), "own") if spec.fingerprint is not None else None
        if Path(model).is_dir():
            return "dir-sha256:" + directory_fingerprint(Path(model)), "own"
        return None
    return model_fingerprint(model), tokenizer_fingerprint(tokenizer)


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
    lm_stats: bool = False,
    device: str | torch.device | None = None,
    dtype: DType = None,
    device_map: str | dict[str, Any] | None = None,
    sort_by_length: bool = True,
    cache: bool | str | os.PathLike[str] | None = False,
    progress: bool = True,
) -> Extraction:
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
    pooling : {"mean", "last", "first", "avg_avg"}
        How token states become one vector (:func:`ood_zoo.features.pooling.pool`). Use
        ``"last"`` for decoder LMs: their first position is an attention sink that dominates a
        mean. ``"avg_avg"`` (:func:`ood_zoo.features.pooling.avg_avg`) averages the token means
        of every block's output, hidden states ``1..L`` (the embedding output, context-free, is
        left out), leaving out the first real token in a causal LM (:func:`is_causal_lm`); it
        takes no ``layers`` (leave the default), and ``features`` is ``[n, d]`` with
        ``layers == (n_states - 1,)``, the last state averaged.
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
        Verbalised labels, e.g. ``["negative", "positive"]``. Then the result also holds, from
        the same forward pass, the next-token logits of each word's first sub-token (tokenised in
        context after the template's suffix) at the last real position, and the full-vocabulary
        ``logsumexp`` there. Needs an LM head; the head runs on the last position only. First
        tokens must differ between labels.
    lm_stats : bool
        Also score each text under the LM (:func:`~ood_zoo.features.next_token_statistics`
        with the same template, ``max_length``, ``batch_size`` and cache, and the default Rényi
        order): the ``[n, 5]`` statistics of :attr:`Extraction.lm_stats`. Needs an LM head.
    device, dtype : optional
        Where and in which precision to run; ``dtype`` may be a name (``"bfloat16"``). A
        loaded ``model`` is moved there in place (as ``Module.to`` does); a model loaded by name
        or path defaults to CUDA if available and float32. A device this torch cannot use is an
        :class:`~ood_zoo.errors.InputError` before anything loads
        (:func:`~ood_zoo.features.models.resolve_device`).
    device_map : str or dict, optional
        Passed to ``from_pretrained`` when loading by name or path (needs ``accelerate``).
    sort_by_length : bool
        Batch texts sorted by token length (longest first), so each batch holds similar lengths
        and little padding; results are put back in input order either way.
    cache : bool or path
        ``True`` reads and writes the features cache under ``$OOD_ZOO_CACHE/features`` (default
        ``~/.cache/ood_zoo/features``), a path uses that directory, ``False`` (default) turns it
        off, as does ``$OOD_ZOO_NO_CACHE=1``. A location that is (or lies under) a file is an
        :class:`~ood_zoo.errors.InputError` before any work. See :mod:`ood_zoo.features.cache`.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    Extraction
        ``features`` float32 on the CPU (``[n, d]`` for one int layer, ``[n, len(layers), d]``
        for a list or ``"all"``), the hidden-state index of each slice, the model's number of
        hidden states, and the label-token logits and LM statistics where asked for.

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
    if pooling == "avg_avg" and (isinstance(layers, bool) or layers != -1):
        raise ValueError(f"pooling 'avg_avg' averages every block's hidden state, so it takes no "
                         f"layers; leave layers at its default -1, got {layers!r}")
    positive_int("batch_size", batch_size)
    positive_int("max_length", max_length)
    texts = check_texts(texts)
    dtype = resolve_dtype(dtype)
    device = resolve_device(device) if device is not None else None
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

    def lookup(identity: tuple[str, str], run_dtype: torch.dtype) -> tuple[dict[str, Any], Path]:
        key = cache_key(identity, texts, layers, pooling, template, max_length, run_dtype,
                         words)
        return key, _cache.entry_path(store, key)

    key: dict[str, Any] | None = None
    path: Path | None = None
    tensors: dict[str, torch.Tensor] | None = None
    if store is not None:
        identity = model_identity(model, tokenizer)
        if identity is not None:
            key, path = lookup(identity, dtype or torch.float32)
            tensors = _cache.read_entry(path, key, n_rows=len(texts))
    if tensors is not None and not lm_stats:
        return _bundle(tensors, layers, words, None)

    model, tokenizer, where = resolve_model(model, tokenizer, device, dtype, device_map)
    if tensors is None and store is not None and key is None:
        identity = (model_fingerprint(model), tokenizer_fingerprint(tokenizer))
        key, path = lookup(identity, next(model.parameters()).dtype)
        tensors = _cache.read_entry(path, key, n_rows=len(texts))
    if tensors is None:
        tensors = _run(texts, model, tokenizer, where, layers=layers, pooling=pooling,
                       batch_size=batch_size, max_length=max_length, template=parsed,
                       words=words, sort_by_length=sort_by_length, progress=progress)
        if key is not None and path is not None:
            _cache.write_entry(path, tensors, key)
    stats = None
    if lm_stats:
        stats = next_token_statistics(
            texts, model, tokenizer, template=template, max_length=max_length,
            batch_size=batch_size, sort_by_length=sort_by_length, cache=cache,
            progress=progress,
        )
    return _bundle(tensors, layers, words, stats)


def cache_key(
    identity: tuple[str, str],
    texts: Sequence[str],
    layers: Layers,
    pooling: str,
    template: str | None,
    max_length: int,
    dtype: torch.dtype,
    words: Sequence[str] | None,
) -> dict[str, Any]:
    """The features-cache key of one :func:`extract` call: everything that changes its numbers.

    ``identity`` is :func:`model_identity`'s pair; the texts enter as their SHA-256
    (:func:`~ood_zoo.features.cache.texts_sha256`) and count. An engine that runs
    :func:`extract` elsewhere records this key to say which extraction its output is.
    """
    layer_key: Any = layers if isinstance(layers, str) else (
        [int(x) for x in layers] if isinstance(layers, Sequence) else int(layers)
    )
    return {
        "model": identity[0], "tokenizer": identity[1], "layers": layer_key, "pooling": pooling,
        "template": template, "max_length": max_length, "dtype": str(dtype).removeprefix("torch."),
        "label_words": list(words) if words is not None else None,
        "texts_sha256": _cache.texts_sha256(texts), "n_texts": len(texts),
    }


def feature_lengths(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int = 512,
    template: str | None = None,
) -> list[int]:
    """The number of tokens :func:`extract` feeds the model for each text (special tokens and
    template included, after truncation), which :func:`length_order` sorts.

    Raises
    ------
    ValueError
        If a text tokenises to no tokens.
    """
    texts = check_texts(texts)
    parsed = Template.parse(template) if template is not None else None
    encoded, _ = encode(texts, tokenizer, max_length=token_budget(tokenizer, max_length),
                        template=parsed)
    return _checked_lengths(texts, encoded)


def _checked_lengths(texts: list[str], encoded: dict[str, list[list[int]]]) -> list[int]:
    lengths = [len(ids) for ids in encoded["input_ids"]]
    if any(length == 0 for length in lengths):
        empty = lengths.index(0)
        raise ValueError(f"text {empty} ({texts[empty]!r}) tokenises to no tokens")
    return lengths


def _bundle(
    tensors: dict[str, torch.Tensor], layers: Layers, words: tuple[str, ...] | None,
    lm_stats: torch.Tensor | None,
) -> Extraction:
    """The :class:`Extraction` of a cache entry's (or a run's) tensors."""
    n_states = int(tensors["n_states"])
    indices, _ = resolve_layers(layers, n_states)
    if words is None:
        return Extraction(tensors["features"], tuple(indices), n_states, lm_stats=lm_stats)
    return Extraction(
        tensors["features"], tuple(indices), n_states,
        label_logits=tensors["label_logits"],
        vocab_logsumexp=tensors["vocab_logsumexp"],
        label_token_ids=tuple(int(i) for i in tensors["label_token_ids"].tolist()),
        label_words=words,
        label_head_weight=tensors.get("label_head_weight"),
        label_head_bias=tensors.get("label_head_bias"),
        lm_stats=lm_stats,
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
    """The forward passes: ``features``, ``n_states`` and, with label words, the label-token
    tensors."""
    net = backbone(model)  # hidden states do not need the LM head
    n_states = n_hidden_states(model)
    selected: list[int] | None = None
    single = not isinstance(layers, str | Sequence)
    if n_states is not None:  # fail early on bad layers; checked again on the real outputs
        selected, single = resolve_layers(layers, n_states)
    elif not texts:
        raise ValueError(f"{type(model).__name__}'s config does not give its number of layers; "
                         "extract needs at least one text to find its hidden states")
    head = lm_head(model, purpose="label_words") if words is not None else None
    token_ids = label_token_ids(tokenizer, words, template) if words is not None else []
    softcap = logit_softcap(model)
    skip_first = is_causal_lm(model)  # avg_avg leaves a decoder's attention sink out

    encoded, n_trailing = encode(texts, tokenizer, max_length=token_budget(tokenizer, max_length),
                                 template=template)
    lengths = _checked_lengths(texts, encoded)
    order = length_order(lengths) if sort_by_length else list(range(len(texts)))

    out: torch.Tensor | None = None
    if not texts:
        assert selected is not None
        out = torch.empty(0, len(selected), getattr(model.config, "hidden_size", 0))
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
                batch = collate(encoded, rows, tokenizer, where)
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
                mask = batch["attention_mask"]
                pooled = [avg_avg(states[1:], mask, skip_first=skip_first)] if (
                    pooling == "avg_avg") else [pool(states[i], mask, pooling) for i in selected]
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
    if out is None or n_states is None:  # unreachable: texts were given, so a batch ran
        raise RuntimeError("extract produced no output")
    tensors = {"features": (out[:, 0] if single else out).contiguous(),
               "n_states": torch.tensor(n_states, dtype=torch.int64)}
    if words is not None:
        tensors.update(
            label_logits=label_logits, vocab_logsumexp=vocab_lse, label_token_ids=ids_on_device
        )
        if head is not None and pooling == "last" and n_trailing == 0 and not softcap:
            # the final layer's feature is the state the logits were read from: a linear head
            rows = head.weight[ids_on_device.to(head.weight.device)]
            bias = head.bias[ids_on_device.to(head.weight.device)] if head.bias is not None else (
                torch.zeros(len(token_ids)))
            tensors.update(label_head_weight=rows.detach().float().cpu().contiguous(),
                           label_head_bias=bias.detach().float().cpu().contiguous())
    return tensors
