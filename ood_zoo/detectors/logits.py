"""Detectors on class logits: ``msp``, ``maxlogit`` and ``energy``. They need no fit.

The input is whatever ``[n, C]`` logits the caller passes. The LLM-OOD code of Liu et al. (2024)
scores the next-token logits of the *label tokens* (the first sub-token of each verbalised
label): its MSP takes a softmax over the **full vocabulary** and then the maximum over the
label tokens (not renormalised), and its energy is the logsumexp over the label-token logits.
To reproduce its energy, pass the label-token logits. To reproduce its MSP, either pass the
full-vocabulary logits (then MSP is the max over all tokens, not only labels) or compute the
label-token probabilities yourself; here the softmax always runs over the ``C`` columns given.

``fit`` is optional: it only places the :meth:`~ood_zoo.api.Detector.predict` threshold.
Logits are upcast to float32 (float64 stays float64) one chunk of rows at a time.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..api import Detector, Param, Requirements
from .chunks import map_rows

_TEMPERATURE = Param(
    "temperature", 1.0, "softmax temperature T > 0", type=float, minimum=0.0,
    exclusive_minimum=True,
)


class _LogitDetector(Detector):
    requires = Requirements(features=False, logits=True, fit=False)
    state_tensors: ClassVar[tuple[str, ...]] = ()

    def _reduce(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _score(self, features, logits):
        return map_rows(logits, self._reduce)


class MSPDetector(_LogitDetector):
    """Maximum softmax probability.

    ``score(z) = max_c softmax(z / T)_c = 1 / Σ_c exp((z_c - max_j z_j) / T)`` over the
    ``C`` logit columns passed (see the module notes on label tokens versus the vocabulary).
    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution
    Examples in Neural Networks", ICLR 2017.
    """

    name = "msp"
    version = "1"
    params = (_TEMPERATURE,)

    def _reduce(self, logits):
        scaled = logits / self.hparams["temperature"]
        # 1 / Σ_c exp(z_c/T - max/T): no rounding of a large logsumexp
        return 1.0 / torch.exp(scaled - scaled.max(dim=1, keepdim=True).values).sum(dim=1)


class MaxLogitDetector(_LogitDetector):
    """Maximum logit.

    ``score(z) = max_c z_c``. Hendrycks et al., "Scaling Out-of-Distribution Detection for
    Real-World Settings", ICML 2022.
    """

    name = "maxlogit"
    version = "1"
    params = ()

    def _reduce(self, logits):
        return logits.max(dim=1).values


class EnergyDetector(_LogitDetector):
    """Negative free energy.

    ``score(z) = T · logsumexp_c(z_c / T)`` (the negated energy ``-E(z; T)``, so higher = more
    ID). The LLM-OOD code uses ``T = 1`` over the label-token logits.
    Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020.
    """

    name = "energy"
    version = "1"
    params = (_TEMPERATURE,)

    def _reduce(self, logits):
        t = self.hparams["temperature"]
        return t * torch.logsumexp(logits / t, dim=1)
