"""Pooling of per-token hidden states ``[B, T, D]`` into one vector per text ``[B, D]``.

Every mode reads the attention mask, so padding never enters a vector and a text gets the same
vector whether it was padded on the left (Gemma, most decoder LMs at inference), on the right
(BERT, SmolLM2) or not at all.

Modes
-----
``last``
    The hidden state of the last real token. In a causal decoder this is the only position that
    has attended to the whole text, so it is the usual sentence vector for LLMs and the one used
    by Liu et al. (LREC-COLING 2024).
``mean``
    The average over real tokens. The native pooling of sentence encoders such as
    all-MiniLM-L6-v2.
``first``
    The hidden state of the first real token: ``[CLS]`` in BERT-style encoders.
``avg_avg``
    Avg-Avg (Chen et al., "Holistic Sentence Embeddings for Better Out-of-Distribution
    Detection", Findings of EMNLP 2022): the token mean of every block's output, averaged over
    the blocks (:func:`avg_avg`). It pools several layers at once, so it is a mode of
    :func:`~ood_zoo.features.extract`, not of :func:`pool`. In a causal decoder the first real
    token (the attention sink, see below) is left out of the token means.

Notes
-----
**Mean pooling is a poor choice for decoder LMs.** In a causal LM the first position cannot
attend to anything but itself and becomes an *attention sink* (Xiao et al., 2023): later tokens
park attention on it, and its hidden state carries massive activations, with a norm far larger
than any other position's. A plain mean over tokens is therefore mostly that one vector, which is
nearly the same for every text (it has seen only the BOS token or the first word). Measured on
SmolLM2-135M with a cosine 1-NN detector, mean pooling gave AUROC 0.55-0.78 at every layer, and
last-token pooling 0.78-0.94 (0.86-0.94 on raw text, no template; see the project's findings). Use
``last`` for decoder LMs; ``mean`` is right for bidirectional encoders, where no position is a
sink. ``first`` in a decoder LM has seen only the first token: with a BOS token it is the same
vector for every text, so it is useful only as a diagnostic there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

import torch

__all__ = ["POOLING_MODES", "Pooling", "avg_avg", "pool"]

Pooling = Literal["last", "mean", "first", "avg_avg"]

#: The supported pooling modes of :func:`~ood_zoo.features.extract`; all but ``avg_avg`` (which
#: pools several layers, :func:`avg_avg`) are modes of :func:`pool`.
POOLING_MODES: Final[tuple[str, ...]] = ("last", "mean", "first", "avg_avg")


def pool(
    hidden: torch.Tensor, attention_mask: torch.Tensor, mode: Pooling = "mean"
) -> torch.Tensor:
    """Pool token states into one vector per sequence, using only the real (unmasked) tokens.

    Parameters
    ----------
    hidden : torch.Tensor
        Hidden states ``[B, T, D]``.
    attention_mask : torch.Tensor
        ``[B, T]``, nonzero (or ``True``) at real tokens and zero at padding, on either side.
    mode : {"last", "mean", "first"}
        ``last``: the last real token, at index ``max{t : mask[b, t] != 0}``.
        ``first``: the first real token, at index ``min{t : mask[b, t] != 0}``.
        ``mean``: ``sum_t mask[b, t] * h[b, t] / sum_t mask[b, t]``, accumulated in float32 or
        better; padded positions are excluded even if they hold NaN.

    Returns
    -------
    torch.Tensor
        ``[B, D]``. ``last``/``first`` keep ``hidden``'s dtype; ``mean`` returns float32 for
        half-precision input and ``hidden``'s dtype otherwise.

    Raises
    ------
    ValueError
        On an unknown mode (or ``avg_avg``), mismatched shapes, or a sequence with no real token.
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; choose one of {list(POOLING_MODES)}")
    if mode == "avg_avg":
        raise ValueError("pooling 'avg_avg' pools several layers: call avg_avg(states, mask)")
    if hidden.ndim != 3:
        raise ValueError(f"hidden must be [B, T, D], got shape {tuple(hidden.shape)}")
    if attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match hidden "
            f"[B, T] = {tuple(hidden.shape[:2])}"
        )
    real = attention_mask.to(device=hidden.device) != 0
    n_real = real.sum(dim=1)
    if bool((n_real == 0).any()):
        empty = torch.nonzero(n_real == 0).flatten().tolist()
        raise ValueError(f"sequences {empty} have no real token (all-zero attention mask)")

    if mode == "mean":
        accumulate = hidden.dtype if hidden.dtype == torch.float64 else torch.float32
        masked = torch.where(real.unsqueeze(-1), hidden.to(accumulate), 0.0)
        return masked.sum(dim=1) / n_real.unsqueeze(-1).to(accumulate)

    positions = torch.arange(hidden.shape[1], device=hidden.device).expand_as(real)
    if mode == "last":
        index = torch.where(real, positions, -1).amax(dim=1)
    else:  # first
        index = torch.where(real, positions, hidden.shape[1]).amin(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def avg_avg(
    states: Sequence[torch.Tensor], attention_mask: torch.Tensor, *, skip_first: bool,
) -> torch.Tensor:
    """Avg-Avg: the mean over ``states`` (layers) of each layer's token mean.

    ``avg_avg(h_1..h_L)[b] = (1/L) Σ_l mean_{t ∈ T_b} h_l[b, t]``, ``T_b`` the real tokens of
    sequence ``b``, without its first real token when ``skip_first`` (a causal decoder's
    attention sink), except in a one-token sequence, which keeps its only token. Chen et al.,
    "Holistic Sentence Embeddings for Better Out-of-Distribution Detection", Findings of EMNLP
    2022.

    Parameters
    ----------
    states : sequence of torch.Tensor
        The layers' hidden states, each ``[B, T, D]`` (at least one).
    attention_mask : torch.Tensor
        ``[B, T]``, nonzero at real tokens, as for :func:`pool`.
    skip_first : bool
        Leave each sequence's first real token out of the token means.

    Returns
    -------
    torch.Tensor
        ``[B, D]``, float32 for half-precision input, else the states' dtype.
    """
    if not states:
        raise ValueError("avg_avg needs at least one layer's hidden states")
    keep = attention_mask.to(device=states[0].device) != 0
    if skip_first:
        positions = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
        first = torch.where(keep, positions, keep.shape[1]).amin(dim=1, keepdim=True)
        rest = keep & (positions != first)
        keep = torch.where(rest.any(dim=1, keepdim=True), rest, keep)
    return torch.stack([pool(hidden, keep, "mean") for hidden in states]).mean(dim=0)
