"""Detectors on language-model likelihoods: ``perplexity`` and ``likelihood_ratio``. No fit.

They need the language model itself (``requires.language_model``), but, like every detector,
never load it: a runner computes per-text statistics with
:func:`ood_zoo.features.sequence_log_likelihood` and passes them as ``features``. The columns
each detector takes are named in its ``stats_columns``:

- ``perplexity``: ``[n, 2]`` ``(log_likelihood, n_tokens)`` under the base LM;
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


class PerplexityDetector(_LanguageModelDetector):
    """Mean token log-likelihood under the language model: ``-log`` of the perplexity.

    For text ``x`` with ``m`` scored tokens, ``score(x) = log p(x) / m = -log PPL(x)``, where
    ``log p(x) = Σ_t log p(x_t | x_<t)`` (:func:`ood_zoo.features.sequence_log_likelihood`).
    Input ``[n, 2]``: ``(log_likelihood, n_tokens)``. Perplexity as an OOD score for text:
    Arora, Huang & He, "Types of Out-of-Distribution Texts and How to Detect Them", EMNLP 2021.
    """

    name = "perplexity"
    version = "1"
    stats_columns = SEQUENCE_STATS

    def _reduce(self, stats):
        return stats[:, 0] / stats[:, 1]


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
