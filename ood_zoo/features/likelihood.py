"""Per-text statistics of a causal language model's next-token distributions.

:func:`next_token_statistics` runs the LM head once over the positions that predict a text's own
tokens and returns, per text, sums over those tokens (the log-likelihood and three divergences of
each next-token distribution from the uniform one, :func:`next_token_divergences`) and their
number: the columns :data:`NEXT_TOKEN_STATS`. :func:`sequence_log_likelihood` is its
``(log_likelihood, n_tokens)`` columns, the statistics perplexity-style OOD scores need.
:func:`likelihood_ratio_inputs` puts those of a fine-tuned model and of its base side by side.
Like :func:`~ood_zoo.features.extract`, this knows nothing about detectors: it returns plain
float64 tensors.
"""

from __future__ import annotations

import math
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
    length_order,
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

__all__ = [
    "NEXT_TOKEN_STATS",
    "RENYI_ALPHA",
    "likelihood_ratio_inputs",
    "next_token_divergences",
    "next_token_statistics",
    "prompt_lengths",
    "sequence_log_likelihood",
]

#: The columns of :func:`next_token_statistics`: sums over a text's scored tokens, then their count.
NEXT_TOKEN_STATS = (
    "log_likelihood", "renyi_divergence", "fisher_rao", "self_certainty", "n_tokens",
)
#: The default Rényi order ``α`` of :func:`next_token_divergences` (lm-polygraph's ``RenyiNeg``).
RENYI_ALPHA = 0.5
#: Below this ``|α - 1|``, ``log Σ p^α`` is taken as ``log1p(Σ p (p^(α-1) - 1))``, exact near 1.
_NEAR_ONE = 0.25

#: Logits formed at a time by the LM head: ``[rows, vocab]`` float32 of at most 64 MiB.
_HEAD_ELEMENTS = 2**24


def _renyi_order(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
            math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"the Rényi order alpha must be a finite number > 0, got {alpha!r}")
    return float(alpha)


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``log p = (z - max z) - logsumexp(z - max z)``, exact to the ulps of ``log N``, not of z."""
    shifted = logits - logits.amax(dim=-1, keepdim=True)
    return shifted - torch.logsumexp(shifted, dim=-1, keepdim=True)


def _divergences(log_p: torch.Tensor, alpha: float) -> torch.Tensor:
    """:func:`next_token_divergences` of log-probabilities ``log p`` ``[rows, N]``.

    ``log p`` may be off by a rounding-sized common shift ``log Z = logsumexp(log p)``: every
    formula is written for ``p / Z``, so that the shift cancels exactly instead of being divided
    by ``α - 1``.
    """
    log_n = math.log(log_p.shape[-1])
    log_z = torch.logsumexp(log_p, dim=-1)
    support = log_p > -math.inf
    beta = alpha - 1.0
    if beta == 0.0:  # KL(p || u) = log N + Σ p log p
        p = torch.exp(log_p - log_z[:, None])
        log_moment_over_beta = torch.where(support, p * log_p, 0.0).sum(-1) - log_z
    elif abs(beta) < _NEAR_ONE:
        # Σ p^α = 1 + S with S = Σ p (p^β - 1), whose terms share the sign of -β: summed in log
        # space, log|p expm1(x)| = log p + max(x, 0) + log(-expm1(-|x|)) with x = β log p
        x = torch.where(support, beta * log_p, 0.0)
        log_terms = log_p + x.clamp(min=0.0) + torch.log(-torch.expm1(-x.abs()))
        magnitude = torch.exp(torch.logsumexp(log_terms, dim=-1) - log_z)
        log_moment_over_beta = torch.log1p(-magnitude if beta > 0 else magnitude) / beta - log_z
    else:
        log_moment = torch.logsumexp(alpha * log_p, dim=-1) - alpha * log_z
        log_moment_over_beta = log_moment / beta
    renyi = log_n + log_moment_over_beta
    # Hellinger: 1 - BC = ½ Σ (sqrt(p) - sqrt(1/N))², so arccos(BC) = 2 asin(sqrt((1 - BC) / 2))
    root_p = torch.exp(0.5 * (log_p - log_z[:, None]))
    hellinger = 0.5 * (root_p - math.exp(-0.5 * log_n)).square().sum(-1)
    fisher_rao = (4.0 / math.pi) * torch.asin(torch.sqrt(0.5 * hellinger))
    self_certainty = log_z - log_n - log_p.mean(-1)
    return torch.stack([renyi, fisher_rao, self_certainty], dim=-1)


def next_token_divergences(logits: torch.Tensor, alpha: float = RENYI_ALPHA) -> torch.Tensor:
    """How far each next-token distribution is from the uniform one: ``[rows, 3]``.

    For ``p = softmax(logits)`` over a vocabulary of ``N`` tokens and the uniform ``u``, the
    columns are (``NEXT_TOKEN_STATS[1:4]``, all higher for a more peaked ``p``):

    - ``renyi_divergence``: ``D_α(p || u) = log N + log(Σ_i p_i^α) / (α - 1)``; its limit at
      ``α = 1`` (taken there) is ``KL(p || u) = log N - H(p)``. In ``[0, log N]``.
    - ``fisher_rao``: ``(2/π) arccos(Σ_i sqrt(p_i / N))``, the Fisher–Rao geodesic distance
      ``2 arccos(·)`` on the simplex divided by its maximum ``π``, as RAINPROOF normalises it.
      In ``[0, 1]``.
    - ``self_certainty``: ``KL(u || p) = -log N - (1/N) Σ_i log p_i``, in ``[0, ∞)``.

    Darrin, Piantanida & Colombo, "RAINPROOF: An Umbrella To Shield Text Generators From
    Out-Of-Distribution Data", EMNLP 2023 (Rényi and Fisher–Rao to the uniform distribution);
    Kang, Zhao & Song, "Scalable Best-of-N Selection for Large Language Models via
    Self-Certainty", 2025.

    Parameters
    ----------
    logits : torch.Tensor
        ``[rows, N]`` next-token logits; computed in their own floating dtype.
    alpha : float
        The Rényi order, ``> 0``.

    Notes
    -----
    Everything is taken from ``log p = (z - max z) - logsumexp(z - max z)`` (``z`` the
    logits), normalised again where rounding would be divided by ``α - 1``: ``Σ p^α`` as
    ``logsumexp(α log p)``, or, for ``|α - 1| < 0.25``, as ``log1p`` of a one-signed sum that
    keeps its precision as ``α → 1``; ``arccos`` through the Hellinger distance, exact near
    ``p = u``. Zero probabilities (``-inf`` logits) add nothing to ``D_α`` and make
    ``self_certainty`` infinite.
    """
    alpha = _renyi_order(alpha)
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating [rows, vocab] tensor, got "
                         f"{tuple(logits.shape)} {logits.dtype}")
    return _divergences(_log_softmax(logits), alpha)


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
            "next_token_statistics needs a fast (Rust) tokenizer for its offset mapping; "
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


def prompt_lengths(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    template: str | None = None,
    max_length: int = 512,
) -> list[int]:
    """The prompt length, in tokens, of each text as :func:`next_token_statistics` feeds it
    (template, BOS/EOS context and truncation included), which
    :func:`~ood_zoo.features.length_order` sorts into its batches.

    Raises
    ------
    InputError
        If a text has no token to score.
    """
    texts = check_texts(texts)
    parsed = Template.parse(template) if template is not None else None
    budget = token_budget(tokenizer, positive_int("max_length", max_length))
    return [len(ids) for ids, _, _ in _encode(texts, tokenizer, parsed, budget)]


def _refuse_prompt_learning(model: torch.nn.Module) -> None:
    """Refuse peft prompt-learning adapters, whose virtual tokens this pass does not feed."""
    peft_config = getattr(model, "active_peft_config", None)
    if getattr(peft_config, "is_prompt_learning", False):
        raise ValueError(
            "prompt-learning adapters (prompt, prefix or p-tuning) add virtual tokens that "
            "next_token_statistics does not feed; use a weight adapter such as LoRA"
        )


def next_token_statistics(
    texts: Sequence[str],
    model: PreTrainedModel | str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    template: str | None = None,
    max_length: int = 512,
    batch_size: int = 16,
    alpha: float = RENYI_ALPHA,
    device: str | torch.device | None = None,
    sort_by_length: bool = True,
    cache: bool | str | os.PathLike[str] | None = False,
    progress: bool = True,
) -> torch.Tensor:
    """Sums over each text's own tokens of its next-token statistics under a causal LM.

    For text ``x`` with tokens ``x_1..x_m`` inside a prompt ``c`` (the template's prefix, or a
    BOS/EOS token when nothing precedes the text), let ``p_t = p(· | c, x_<t)`` be the model's
    next-token distribution that predicts ``x_t``. The columns (:data:`NEXT_TOKEN_STATS`) are

    - ``log_likelihood``: ``log p(x | c) = Σ_t log p_t(x_t)``, so ``-log p(x | c) / m`` is the
      log-perplexity;
    - ``renyi_divergence``, ``fisher_rao``, ``self_certainty``: ``Σ_t`` of
      :func:`next_token_divergences` of ``p_t`` (``D_α(p_t || u)`` with ``alpha``, the
      normalised Fisher–Rao distance to ``u``, ``KL(u || p_t)``);
    - ``n_tokens``: ``m``.

    Dividing a sum by ``m`` gives the per-token mean that the ``perplexity``, ``renyi``,
    ``fisher_rao`` and ``self_certainty`` detectors score. The template's suffix is not scored.

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
    alpha : float
        The Rényi order of ``renyi_divergence`` (``> 0``; ``1`` is the KL limit).
    device : str or torch.device, optional
        Where to run; a loaded model is moved there in place. A device this torch cannot use
        is an :class:`~ood_zoo.errors.InputError` before anything loads.
    sort_by_length : bool
        Batch texts sorted by token length (longest first); results are in input order anyway.
    cache : bool or path
        Keep the result in the features cache (``True``: ``<cache_root()>/features``; a path: that
        directory), keyed by the model and tokenizer fingerprints, template, ``max_length``,
        ``alpha``, dtype and the texts, as :func:`~ood_zoo.features.extract` keys features. A
        corrupt entry is recomputed; a location that is (or lies under) a file is an
        :class:`~ood_zoo.errors.InputError` before any work.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    torch.Tensor
        ``[n, 5]`` float64 on the CPU, the columns :data:`NEXT_TOKEN_STATS` per text.

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
    token, a few rows at a time; ``log p = (z - max z) - logsumexp(z - max z)`` of the logits
    ``z`` and the divergences are taken in float32 and summed in float64; the
    ``[batch, seq, vocab]`` logits are never formed.
    """
    positive_int("batch_size", batch_size)
    max_length = positive_int("max_length", max_length)
    alpha = _renyi_order(alpha)
    texts = check_texts(texts)
    parsed = Template.parse(template) if template is not None else None
    store = features_dir(cache)
    if not texts:
        return torch.empty(0, len(NEXT_TOKEN_STATS), dtype=torch.float64)
    model, tokenizer, where = resolve_model(model, tokenizer, device, None, None)
    _refuse_prompt_learning(model)
    body = backbone(model)
    head = lm_head(model, purpose="next_token_statistics")
    softcap = logit_softcap(model)
    max_length = token_budget(tokenizer, max_length)

    path = key = None
    if store is not None:
        key = {
            "kind": "next_token_statistics/1", "model": model_fingerprint(model),
            "tokenizer": tokenizer_fingerprint(tokenizer), "template": template,
            "max_length": max_length, "alpha": alpha,
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
    order = length_order([len(ids) for ids in prompts]) if sort_by_length else (
        list(range(len(texts))))
    totals = torch.zeros(len(texts), len(NEXT_TOKEN_STATS) - 1, dtype=torch.float64)
    head_device = head.weight.device
    chunk = max(1, _HEAD_ELEMENTS // int(head.weight.shape[0]))

    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            tqdm(total=len(texts), desc="next-token statistics", unit="text",
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
                    log_p = _log_softmax(logits)
                    picked = log_p.gather(1, targets[lo : lo + chunk, None])
                    per_token = torch.cat([picked, _divergences(log_p, alpha)], dim=1)
                    totals.index_add_(0, owner[lo : lo + chunk], per_token.double().cpu())
                bar.update(len(rows))
    finally:
        model.train(was_training)
    counts = torch.tensor([stop - first for _, first, stop in encoded], dtype=torch.float64)
    stats = torch.cat([totals, counts[:, None]], dim=1)
    if path is not None and key is not None:
        write_entry(path, {"features": stats}, key)
    return stats


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

    For text ``x`` with tokens ``x_1..x_m`` inside a prompt ``c``,
    ``log p(x | c) = Σ_{t=1..m} log p(x_t | c, x_<t)``, so ``-log p(x | c) / m`` is the
    log-perplexity. These are the ``log_likelihood`` and ``n_tokens`` columns of
    :func:`next_token_statistics`, which takes the same arguments (its cache entry with the
    default ``alpha`` is shared).

    Returns
    -------
    torch.Tensor
        ``[n, 2]`` float64 on the CPU: ``(log p(x | c), m)`` per text.
    """
    stats = next_token_statistics(
        texts, model, tokenizer, template=template, max_length=max_length,
        batch_size=batch_size, device=device, sort_by_length=sort_by_length, cache=cache,
        progress=progress,
    )
    return stats[:, [0, -1]]


def _as_stats(stats: Any, name: str) -> torch.Tensor:
    """``(log_likelihood, n_tokens)`` of a :func:`sequence_log_likelihood` or
    :func:`next_token_statistics` result, as float64 on the CPU."""
    tensor = as_tensor(stats, name=name)
    if tensor.dim() != 2 or tensor.shape[1] not in (2, len(NEXT_TOKEN_STATS)):
        raise InputError(
            f"{name}: expected sequence_log_likelihood output of shape [n, 2] "
            f"(log_likelihood, n_tokens) or next_token_statistics output of shape "
            f"[n, {len(NEXT_TOKEN_STATS)}], got shape {tuple(tensor.shape)}"
        )
    return tensor.detach().to("cpu", torch.float64)[:, [0, -1]]


def likelihood_ratio_inputs(finetuned: Any, base: Any) -> torch.Tensor:
    """``[n, 3]`` float64 ``(log p_finetuned(x), log p_base(x), n_tokens)`` per text.

    Parameters
    ----------
    finetuned, base : torch.Tensor or numpy.ndarray
        :func:`sequence_log_likelihood` (or :func:`next_token_statistics`) of the same texts,
        template and ``max_length`` under the fine-tuned model and under its base model.

    Raises
    ------
    InputError
        If a shape is neither ``[n, 2]`` nor ``[n, 5]``, the row counts differ, or a text has a
        different number of tokens under the two (another tokenizer, template or truncation).
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
