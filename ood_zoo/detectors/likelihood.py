"""Detectors on a language model's own likelihood pass. No fit.

They need the language model itself (``requires.language_model``), but, like every detector,
never load it: a runner computes per-text statistics with
:func:`ood_zoo.features.next_token_statistics` (sums over the text's tokens, then their count)
and passes the columns each detector names in its ``stats_columns``, in that order, as
``features`` (the bench runner picks them by name):

- ``perplexity``: ``[n, 2]`` ``(log_likelihood, n_tokens)`` under the base LM;
- ``renyi``, ``fisher_rao``, ``self_certainty``: ``[n, 2]`` ``(renyi_divergence, n_tokens)``,
  ``(fisher_rao, n_tokens)``, ``(self_certainty, n_tokens)``: how far, on average over the
  text's tokens, the model's next-token distributions are from the uniform one;
- ``likelihood_ratio``: ``[n, 3]`` ``(log_likelihood_finetuned, log_likelihood_base, n_tokens)``
  from :func:`ood_zoo.features.likelihood_ratio_inputs`.

``fit`` is optional: it only places the :meth:`~ood_zoo.api.Detector.predict` threshold. Scores
are float32, or float64 for float64 statistics (what ``sequence_log_likelihood`` returns).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..api import Detector, Param, Requirements
from ..errors import InputError
from ..ops.arrays import ArrayKind, ArrayLike, check_matrix, compute_dtype

#: Columns of :func:`ood_zoo.features.sequence_log_likelihood`, the ``perplexity`` input.
SEQUENCE_STATS = ("log_likelihood", "n_tokens")
#: The ``renyi`` input: two columns of :func:`ood_zoo.features.next_token_statistics`.
RENYI_STATS = ("renyi_divergence", "n_tokens")
#: The ``fisher_rao`` input: two columns of :func:`ood_zoo.features.next_token_statistics`.
FISHER_RAO_STATS = ("fisher_rao", "n_tokens")
#: The ``self_certainty`` input: two columns of :func:`ood_zoo.features.next_token_statistics`.
SELF_CERTAINTY_STATS = ("self_certainty", "n_tokens")
#: Columns of :func:`ood_zoo.features.likelihood_ratio_inputs`, the ``likelihood_ratio`` input.
RATIO_STATS = ("log_likelihood_finetuned", "log_likelihood_base", "n_tokens")


class _LanguageModelDetector(Detector):
    """Validates the ``[n, len(stats_columns)]`` statistics passed as ``features``."""

    requires = Requirements(features=False, language_model=True, fit=False)
    state_tensors: ClassVar[tuple[str, ...]] = ()
    #: The statistics' columns, in order; the last is always the number of scored tokens.
    stats_columns: ClassVar[tuple[str, ...]] = ()

    def _check_inputs(self, features, labels, logits, *, fitting):
        layout = f"[n, {len(self.stats_columns)}] ({', '.join(self.stats_columns)})"
        if features is None:
            raise InputError(
                f"{self.name}: needs language-model statistics {layout} as features, got None"
            )
        stats = check_matrix(features, name="features")
        if stats.shape[1] != len(self.stats_columns):
            raise InputError(
                f"{self.name}: features must be language-model statistics {layout}, got shape "
                f"{tuple(stats.shape)}"
            )
        counts = stats[:, -1]
        if not bool(((counts >= 1) & (counts == counts.round())).all()):
            raise InputError(
                f"{self.name}: the last column of {layout} must hold whole token counts >= 1"
            )
        return stats, None, None

    def score(self, features: ArrayLike | None = None, logits: ArrayLike | None = None):
        """One score per text (higher = more in-distribution), of the kind ``features`` is."""
        self._check_fitted()
        stats, _, _ = self._check_inputs(features, None, None, fitting=False)
        return ArrayKind.of(features).wrap(self._score(stats, None))

    def _score(self, features: torch.Tensor | None, logits: torch.Tensor | None) -> torch.Tensor:
        assert features is not None
        return self._reduce(features.to(compute_dtype(features.dtype)))

    def _reduce(self, stats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class _TokenMeanDetector(_LanguageModelDetector):
    """Scores a per-text sum over tokens divided by the token count: ``stats[:, 0] / m``."""

    def _reduce(self, stats):
        return stats[:, 0] / stats[:, 1]


class PerplexityDetector(_TokenMeanDetector):
    """Mean token log-likelihood under the language model: ``-log`` of the perplexity.

    For text ``x`` with ``m`` scored tokens, ``score(x) = log p(x) / m = -log PPL(x)``, where
    ``log p(x) = Σ_t log p(x_t | x_<t)`` (:func:`ood_zoo.features.sequence_log_likelihood`).
    Input ``[n, 2]``: ``(log_likelihood, n_tokens)``. Perplexity as an OOD score for text:
    Arora, Huang & He, "Types of Out-of-Distribution Texts and How to Detect Them", EMNLP 2021.
    """

    name = "perplexity"
    version = "1"
    stats_columns = SEQUENCE_STATS


class RenyiDetector(_TokenMeanDetector):
    """Mean Rényi divergence of the next-token distributions from the uniform one.

    For text ``x`` with ``m`` scored tokens and next-token distributions ``p_t`` over a
    vocabulary of ``N`` tokens, ``score(x) = (1/m) Σ_t D_α(p_t || u)`` with
    ``D_α(p || u) = log N + log(Σ_i p_i^α) / (α - 1)`` (``KL(p || u) = log N - H(p)`` at
    ``α = 1``): higher for more peaked, more confident predictions, taken as more ID. Input
    ``[n, 2]``: ``(renyi_divergence, n_tokens)`` of :func:`ood_zoo.features.next_token_statistics`,
    whose ``alpha`` (default :data:`ood_zoo.features.RENYI_ALPHA` = 0.5) sets the order.
    Darrin, Piantanida & Colombo, "RAINPROOF: An Umbrella To Shield Text Generators From
    Out-Of-Distribution Data", EMNLP 2023: their no-reference score, the divergence to the
    uniform distribution (the Rényi negentropy ``log N - H_α(p)``) averaged over tokens. They
    score generated tokens with a softmax temperature (2 in their code and in lm-polygraph);
    here it is the text's own tokens at temperature 1, as ``perplexity`` reads them.
    lm-polygraph 0.7.0's ``RenyiNeg`` returns ``D_α - 2 log N`` for ``α != 1`` (a constant
    offset) and ``D_1`` at ``α = 1``: the same order as this score.
    """

    name = "renyi"
    version = "1"
    stats_columns = RENYI_STATS


class FisherRaoDetector(_TokenMeanDetector):
    """Mean normalised Fisher–Rao distance of the next-token distributions from the uniform one.

    ``score(x) = (1/m) Σ_t (2/π) arccos(Σ_i sqrt(p_t,i / N))``, in ``[0, 1]``: the Fisher–Rao
    geodesic distance ``2 arccos(Σ_i sqrt(p_i q_i))`` between ``p_t`` and the uniform ``u``,
    divided by its maximum ``π`` as RAINPROOF (Darrin et al., EMNLP 2023) normalises it. Higher =
    farther from uniform = more ID. Input ``[n, 2]``: ``(fisher_rao, n_tokens)`` of
    :func:`ood_zoo.features.next_token_statistics`. lm-polygraph 0.7.0's ``FisherRao`` (at
    ``temperature=1``) is the same value.
    """

    name = "fisher_rao"
    version = "1"
    stats_columns = FISHER_RAO_STATS


class SelfCertaintyDetector(_TokenMeanDetector):
    """Mean self-certainty: the KL divergence from the uniform distribution to the next-token one.

    ``score(x) = (1/m) Σ_t KL(u || p_t) = (1/m) Σ_t (-log N - (1/N) Σ_i log p_t,i)``, higher for
    more confident predictions, taken as more ID. Kang, Zhao & Song, "Scalable Best-of-N
    Selection for Large Language Models via Self-Certainty", 2025 (arXiv:2502.18581), where it
    ranks sampled answers by confidence. Input ``[n, 2]``: ``(self_certainty, n_tokens)`` of
    :func:`ood_zoo.features.next_token_statistics`. lm-polygraph 0.7.0's ``SelfCertainty`` is
    its negation (higher = more uncertain there).
    """

    name = "self_certainty"
    version = "1"
    stats_columns = SELF_CERTAINTY_STATS


class LikelihoodRatioDetector(_LanguageModelDetector):
    """Log-likelihood ratio of a fine-tuned language model to its base model.

    ``score(x) = log p_ft(x) - log p_base(x)``, or that divided by the token count ``m`` with
    ``per_token=True``. Input ``[n, 3]``: ``(log_likelihood_finetuned, log_likelihood_base,
    n_tokens)`` (:func:`ood_zoo.features.likelihood_ratio_inputs`). The base model accounts for
    how likely a text is in general, the fine-tuned one for how likely it is in distribution.
    Zhang, Xiao, Liu, Bamler & Wischik, "Your Finetuned Large Language Model is Already a
    Powerful Out-of-distribution Detector", AISTATS 2025 (arXiv:2404.08679); their OOD score
    ``p_base(x) / p_ft(x)`` is the whole-sequence ratio, here negated in log space.
    """

    name = "likelihood_ratio"
    version = "1"
    stats_columns = RATIO_STATS
    params = (
        Param("per_token", False, "divide the log-ratio by the number of tokens", type=bool),
    )

    def _reduce(self, stats):
        ratio = stats[:, 0] - stats[:, 1]
        return ratio / stats[:, 2] if self.hparams["per_token"] else ratio
