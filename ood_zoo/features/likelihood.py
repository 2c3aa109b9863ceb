"""Sequence log-likelihoods of texts under a causal language model.

:func:`sequence_log_likelihood` returns, per text, the sum of ``log p(token | prefix)`` over the
text's own tokens and their number: the statistics that perplexity-style OOD scores need.
:func:`likelihood_ratio_inputs` puts those of a fine-tuned model and of its base side by side.
Like :func:`~ood_zoo.features.extract`, this knows nothing about detectors: it returns plain
float64 tensors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..ops.arrays import as_tensor
from ._inputs import (
    check_texts,
    collate,
    positive_int,
    resolve_model,
    token_budget,
    tokenizer_fingerprint,
)
from .cache import entry_path, features_dir, read_entry, texts_sha256, write_entry
from .encode import Template
from .introspect import backbone, lm_head, logit_softcap
from .models import model_fingerprint

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["likelihood_ratio_inputs", "sequence_log_likelihood"]

#: Logits formed at a time by the LM head: ``[rows, vocab]`` float32 of at most 64 MiB.
_HEAD_ELEMENTS = 2**24


def _text_span(offsets: Sequence[tuple[int, int]], start: int, stop: int) -> tuple[int, int] | None:
    """Token positions ``[first, last + 1)`` whose characters overlap ``[start, stop)``."""
    inside = [i for i, (lo, hi) in enumerate(offsets) if lo < stop and hi > start]
    return (inside[0], inside[-1] + 1) if inside else None


def _encode(
    texts: list[str], tokenizer: PreTrainedTokenizerBase, template: Template | None,
    max_length: int,
) -> list[tuple[list[int], int, int]]:
    """Per text: the prompt's ids and the span ``[first, stop)`` of the text's own tokens.

    A token that straddles the text's boundary with the template counts as the text's. A text
    with nothing before it gets the tokenizer's BOS token (else EOS) as context, so that its first
    token is scored too. Over-long texts lose their last tokens until the prompt fits.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            "sequence_log_likelihood needs a fast (Rust) tokenizer for its offset mapping; "
            f"{type(tokenizer).__name__} is not one"
        )
    prefix, suffix = (template.prefix, template.suffix) if template is not None else ("", "")
    context = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else (
        tokenizer.eos_token_id)

    def tokenize(batch: list[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
        out = tokenizer([prefix + t + suffix for t in batch], return_offsets_mapping=True)
        return out["input_ids"], out["offset_mapping"]

    all_ids, all_offsets = tokenize(texts)
    encoded = []
    for i, text in enumerate(texts):
        ids, offsets = all_ids[i], all_offsets[i]
        while True:
            span = _text_span(offsets, len(prefix), len(prefix) + len(text))
            if span is None:
                raise InputError(f"text {i} ({texts[i][:60]!r}) has no token to score")
            first, stop = span
            if first == 0 and context is None:
                raise ValueError(
                    "the tokenizer has neither a BOS nor an EOS token to condition a text's first "
                    "token on; pass a template"
                )
            lead = [] if first > 0 else [context]
            excess = len(lead) + len(ids) - max_length
            if excess <= 0:
                break
            keep = stop - first - excess
            cut = offsets[first + keep][0] - len(prefix) if keep >= 1 else 0
            if cut <= 0:
                raise ValueError(
                    f"max_length={max_length} leaves no room for text {i}: the template and "
                    f"special tokens take {len(lead) + len(ids) - (stop - first)} tokens"
                )
            text = text[:cut]
            (ids,), (offsets,) = tokenize([text])
        encoded.append((lead + list(ids), first + len(lead), stop + len(lead)))
    return encoded


def _refuse_prompt_learning(model: torch.nn.Module) -> None:
    """Refuse peft prompt-learning adapters, whose virtual tokens this pass does not feed."""
    peft_config = getattr(model, "active_peft_config", None)
    if getattr(peft_config, "is_prompt_learning", False):
        raise ValueError(
            "prompt-learning adapters (prompt, prefix or p-tuning) add virtual tokens that "
            "sequence_log_likelihood does not feed; use a weight adapter such as LoRA"
        )


def sequence_log_likelihood(
    texts: Sequence[str],
    model: PreTrainedModel | str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    template: str | None = None,
    max_length: int = 512,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    sort_by_length: bool = True,
    cache: bool | str | os.PathLike[str] | None = False,
    progress: bool = True,
) -> torch.Tensor:
    """Log-likelihood of each text's own tokens under a causal LM, and how many there are.

    For text ``x`` with tokens ``x_1..x_m`` inside a prompt ``c`` (the template's prefix, or a
    BOS/EOS token when nothing precedes the text),

    ``log p(x | c) = Σ_{t=1..m} log p(x_t | c, x_<t)``,

    so ``-log p(x | c) / m`` is the log-perplexity. The template's suffix is not scored.

    Parameters
    ----------
    texts : sequence of str
        The inputs; each must have at least one token.
    model : transformers causal LM, peft model, path or str
        A loaded ``*ForCausalLM`` (then ``tokenizer`` is required), a peft ``PeftModel`` with a
        weight adapter (LoRA) around one, a local ``save_pretrained`` directory or a registered
        name (``"smollm2-135m"``), loaded as :func:`~ood_zoo.features.extract` does.
    tokenizer : transformers fast tokenizer, optional
        Overrides the loaded model's own tokenizer.
    template : str, optional
        A prompt with one ``{text}`` slot. The whole prompt is tokenised at once and the text's
        tokens are found with the tokenizer's offset mapping; a token that straddles the text's
        boundary with the template counts as the text's.
    max_length : int
        Tokens per prompt at most (also capped by ``tokenizer.model_max_length``). Only the text
        is truncated (its last tokens go), never the template.
    batch_size : int
        Texts per forward pass.
    device : str or torch.device, optional
        Where to run; a loaded model is moved there in place. A device this torch cannot use
        is an :class:`~ood_zoo.errors.InputError` before anything loads.
    sort_by_length : bool
        Batch texts sorted by token length (longest first); results are in input order anyway.
    cache : bool or path
        Keep the result in the features cache (``True``: ``<cache_root()>/features``; a path: that
        directory), keyed by the model and tokenizer fingerprints, template, ``max_length``,
        dtype and the texts, as :func:`~ood_zoo.features.extract` keys features. A corrupt entry
        is recomputed; a location that is (or lies under) a file is an
        :class:`~ood_zoo.errors.InputError` before any work.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    torch.Tensor
        ``[n, 2]`` float64 on the CPU: ``(log p(x | c), m)`` per text.

    Raises
    ------
    InputError
        If a text has no token to score (e.g. the empty string), ``device`` is not usable here
        or ``cache`` is not a directory.

    Notes
    -----
    Batches are right-padded whatever ``tokenizer.padding_side`` says, so every real token sees
    the positions it would see alone. The model runs in eval mode under
    :func:`torch.inference_mode`. The LM head runs only on the positions that predict a text
    token, a few rows at a time, and ``log p = logit - logsumexp(logits)`` is taken in float32
    and summed in float64; the ``[batch, seq, vocab]`` logits are never formed.
    """
    positive_int("batch_size", batch_size)
    max_length = positive_int("max_length", max_length)
    texts = check_texts(texts)
    parsed = Template.parse(template) if template is not None else None
    store = features_dir(cache)
    if not texts:
        return torch.empty(0, 2, dtype=torch.float64)
    model, tokenizer, where = resolve_model(model, tokenizer, device, None, None)
    _refuse_prompt_learning(model)
    body = backbone(model)
    head = lm_head(model, purpose="sequence_log_likelihood")
    softcap = logit_softcap(model)
    max_length = token_budget(tokenizer, max_length)

    path = key = None
    if store is not None:
        key = {
            "kind": "sequence_log_likelihood/1", "model": model_fingerprint(model),
            "tokenizer": tokenizer_fingerprint(tokenizer), "template": template,
            "max_length": max_length,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "texts_sha256": texts_sha256(texts), "n_texts": len(texts),
        }
        path = entry_path(store, key)
        hit = read_entry(path, key, n_rows=len(texts))
        if hit is not None:
            return hit["features"]

    encoded = _encode(texts, tokenizer, parsed, max_length)
    prompts = [ids for ids, _, _ in encoded]
    inputs = {"input_ids": prompts, "attention_mask": [[1] * len(ids) for ids in prompts]}
    if sort_by_length:
        order = sorted(range(len(texts)), key=lambda i: (-len(prompts[i]), i))
    else:
        order = list(range(len(texts)))
    totals = torch.zeros(len(texts), dtype=torch.float64)
    head_device = head.weight.device
    chunk = max(1, _HEAD_ELEMENTS // int(head.weight.shape[0]))

    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            tqdm(total=len(texts), desc="log-likelihood", unit="text",
                 disable=not progress) as bar,
        ):
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                batch = collate(inputs, rows, tokenizer, where)
                hidden = body(**batch, return_dict=True).last_hidden_state
                spans = [encoded[i][1:] for i in rows]
                row = torch.cat([torch.full((b - a,), r) for r, (a, b) in enumerate(spans)])
                position = torch.cat([torch.arange(a, b) for a, b in spans])  # scored tokens
                owner = torch.tensor(rows)[row]
                targets = batch["input_ids"][row.to(where), position.to(where)].to(head_device)
                states = hidden[row.to(hidden.device), (position - 1).to(hidden.device)]
                states = states.to(head_device)
                for lo in range(0, len(position), chunk):
                    logits = head(states[lo : lo + chunk]).float()
                    if softcap:
                        logits = torch.tanh(logits / softcap) * softcap
                    picked = logits.gather(1, targets[lo : lo + chunk, None])[:, 0]
                    log_p = picked - torch.logsumexp(logits, dim=-1)
                    totals.index_add_(0, owner[lo : lo + chunk], log_p.double().cpu())
                bar.update(len(rows))
    finally:
        model.train(was_training)
    counts = torch.tensor([stop - first for _, first, stop in encoded], dtype=torch.float64)
    stats = torch.stack([totals, counts], dim=1)
    if path is not None and key is not None:
        write_entry(path, {"features": stats}, key)
    return stats


def _as_stats(stats: Any, name: str) -> torch.Tensor:
    tensor = as_tensor(stats, name=name)
    if tensor.dim() != 2 or tensor.shape[1] != 2:
        raise InputError(
            f"{name}: expected sequence_log_likelihood output of shape [n, 2] "
            f"(log_likelihood, n_tokens), got shape {tuple(tensor.shape)}"
        )
    return tensor.detach().to("cpu", torch.float64)


def likelihood_ratio_inputs(finetuned: Any, base: Any) -> torch.Tensor:
    """``[n, 3]`` float64 ``(log p_finetuned(x), log p_base(x), n_tokens)`` per text.

    Parameters
    ----------
    finetuned, base : torch.Tensor or numpy.ndarray
        :func:`sequence_log_likelihood` of the same texts, template and ``max_length`` under the
        fine-tuned model and under its base model.

    Raises
    ------
    InputError
        If a shape is not ``[n, 2]``, the row counts differ, or a text has a different number of
        tokens under the two (another tokenizer, template or truncation).
    """
    ft, bs = _as_stats(finetuned, "finetuned"), _as_stats(base, "base")
    if ft.shape[0] != bs.shape[0]:
        raise InputError(f"finetuned has {ft.shape[0]} texts but base has {bs.shape[0]}")
    differ = (ft[:, 1] != bs[:, 1]).nonzero()
    if differ.numel():
        i = int(differ[0, 0])
        raise InputError(
            f"text {i} has {int(ft[i, 1])} scored tokens under the fine-tuned model but "
            f"{int(bs[i, 1])} under the base model; a likelihood ratio needs the same tokens "
            "(same tokenizer, template and max_length)"
        )
    return torch.stack([ft[:, 0], bs[:, 0], ft[:, 1]], dim=1)
