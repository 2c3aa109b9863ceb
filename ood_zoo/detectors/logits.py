"""Detectors on class logits: ``msp``, ``maxlogit``, ``energy``, ``entropy`` and ``gen`` need no
fit; ``klm`` fits one typical softmax distribution per predicted class.

The input is whatever ``[n, C]`` logits the caller passes. The LLM-OOD code of Liu et al. (2024)
scores the next-token logits of the *label tokens* (the first sub-token of each verbalised
label): its MSP takes a softmax over the **full vocabulary** and then the maximum over the
label tokens (not renormalised), and its energy is the logsumexp over the label-token logits.
To reproduce its energy, pass the label-token logits. To reproduce its MSP, either pass the
full-vocabulary logits (then MSP is the max over all tokens, not only labels) or compute the
label-token probabilities yourself; here the softmax always runs over the ``C`` columns given.

For every detector but ``klm``, ``fit`` is optional: it only places the
:meth:`~ood_zoo.api.Detector.predict` threshold. Logits are upcast to float32 (float64 stays
float64) one chunk of rows at a time; ``klm`` fits in float64.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch.nn import functional

from ..api import Detector, Param, Requirements
from .chunks import check_state_shapes, map_rows, row_chunks, rows_per_chunk

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


def _log_softmax_parts(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p, log(1 - p_max))`` of ``p = softmax(logits)``, row-wise, accurate as ``p_max → 1``.

    With ``u = z - max z`` and ``r = logsumexp_{j ≠ argmax} u_j`` (the log of the other classes'
    mass relative to the top one), ``log p = u - softplus(r)`` and ``log(1 - p_max) =
    r - softplus(r)``. Neither rounds ``1 - p_max`` (which underflows in fp32 once the other
    classes hold less than 6e-8), and neither underflows where ``Σ_{j≠max} exp(u_j)`` would.
    """
    top = logits.max(dim=1, keepdim=True)
    shifted = logits - top.values
    others = shifted.scatter(1, top.indices, float("-inf"))
    rest = torch.logsumexp(others, dim=1, keepdim=True)  # -inf for one class
    log_total = functional.softplus(rest)
    return shifted - log_total, (rest - log_total).squeeze(1)


class EntropyDetector(_LogitDetector):
    """Negative Shannon entropy of the softmax.

    ``score(z) = -H(p) = Σ_c p_c log p_c`` with ``p = softmax(z / T)``, in ``[-log C, 0]``
    (higher = more peaked = more ID). ``log p`` is computed so that it stays exact as
    ``p_max → 1``. pytorch-ood's ``Entropy`` returns ``H`` (higher = OOD): ``score = -H``.
    Hendrycks & Gimpel, ICLR 2017 (the entropy baseline); Hendrycks et al., "Scaling
    Out-of-Distribution Detection for Real-World Settings", ICML 2022.
    """

    name = "entropy"
    version = "1"
    params = (_TEMPERATURE,)

    def _reduce(self, logits):
        log_p, _ = _log_softmax_parts(logits / self.hparams["temperature"])
        return (torch.exp(log_p) * log_p).sum(dim=1)


class GENDetector(_LogitDetector):
    """Negative generalized entropy of the top-``M`` softmax probabilities (GEN).

    ``score(z) = -Σ_{c ∈ top-M(p)} p_c^γ (1 - p_c)^γ`` with ``p = softmax(z)`` and
    ``M = min(M, C)``; higher = more ID. Each term is ``exp(γ (log p_c + log(1 - p_c)))`` in log
    space, with ``log(1 - p_max)`` from the other classes' log-mass, so it stays exact in fp32
    when ``1 - p_max`` underflows. pytorch-ood's ``GEN`` returns the *mean* of the terms over
    the top ``M`` and clamps ``p`` to ``[1e-7, 1 - 1e-7]``: ``score = -M · GEN_pood``.
    Liu et al., "GEN: Pushing the Limits of Softmax-Based Out-of-Distribution Detection",
    CVPR 2023 (``γ = 0.1``, ``M = 100`` on ImageNet).
    """

    name = "gen"
    version = "1"
    params = (
        Param("gamma", 0.1, "exponent γ > 0 of the generalized entropy", type=float,
              minimum=0.0, exclusive_minimum=True),
        Param("M", 100, "number of top classes summed (capped at C)", type=int, minimum=1),
    )

    def _reduce(self, logits):
        log_p, log_rest_of_max = _log_softmax_parts(logits)
        top = torch.topk(log_p, min(self.hparams["M"], logits.shape[1]), dim=1).values
        log_complement = torch.cat(
            [log_rest_of_max.unsqueeze(1), torch.log1p(-torch.exp(top[:, 1:]))], dim=1
        )  # below the top class p <= 1/2, where log1p(-p) is exact
        return -torch.exp(self.hparams["gamma"] * (top + log_complement)).sum(dim=1)


class KLMatchingDetector(Detector):
    """KL matching to the typical softmax distribution of the predicted class.

    ``fit`` forms, for each class ``c`` predicted (``argmax``) on at least one fit row, the mean
    softmax ``d_c = mean_{x: argmax p(x) = c} p(x)``; labels are not used. Then
    ``score(z) = -min_c KL(p || d_c) = max_c Σ_j p_j log d_cj - Σ_j p_j log p_j``, with
    ``p = softmax(z)`` (higher = more ID). ``log d_c`` is accumulated in float64 log space
    (a log-sum-exp per class), so it is finite even where every ``p_j`` underflows.
    pytorch-ood's ``KLMatching`` returns ``min_c KL`` (higher = OOD): ``score = -KL_pood``.
    ``fit`` holds two ``[C, C]`` float64 tensors: it is meant for class or label-token logits,
    not a whole vocabulary.
    Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings", ICML 2022.

    Attributes
    ----------
    classes_ : torch.Tensor
        ``[K]`` the predicted classes (logit columns) with a typical distribution.
    log_dists_ : torch.Tensor
        ``[K, C]`` float64 ``log d_c``.
    """

    name = "klm"
    version = "1"
    requires = Requirements(features=False, logits=True, fit=True)
    params = ()
    state_tensors: ClassVar[tuple[str, ...]] = ("classes_", "log_dists_")
    state_widths: ClassVar[Mapping[str, tuple[str, int]]] = {"n_logits_in": ("log_dists_", 1)}

    def _fit(self, features, labels, logits):
        n_classes, device = logits.shape[1], logits.device
        rows = rows_per_chunk(3 * n_classes)
        # pass 1: per predicted class, the largest log p_j of each column and the row count
        peak = torch.full(
            (n_classes, n_classes), float("-inf"), dtype=torch.float64, device=device
        )
        counts = torch.zeros(n_classes, dtype=torch.int64, device=device)
        for _, chunk in row_chunks(logits, rows):
            log_p, predicted = self._fit_chunk(chunk)
            peak.scatter_reduce_(0, predicted.unsqueeze(1).expand_as(log_p), log_p, "amax")
            counts += torch.bincount(predicted, minlength=n_classes)
        # pass 2: Σ exp(log p - peak), each term <= 1 and the peak's own term 1
        mass = torch.zeros_like(peak)
        for _, chunk in row_chunks(logits, rows):
            log_p, predicted = self._fit_chunk(chunk)
            mass.index_add_(0, predicted, torch.exp(log_p - peak[predicted]))
        seen = torch.nonzero(counts).squeeze(1)  # at least one: every row predicts a class
        self.classes_ = seen
        log_counts = torch.log(counts[seen].to(torch.float64)).unsqueeze(1)
        self.log_dists_ = peak[seen] + torch.log(mass[seen]) - log_counts

    @staticmethod
    def _fit_chunk(chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p, argmax)`` of one chunk of fit logits, ``log p`` in float64."""
        log_p, _ = _log_softmax_parts(chunk.to(torch.float64))
        return log_p, log_p.argmax(dim=1)

    def _score(self, features, logits):
        return map_rows(logits, self._reduce, width=2 * logits.shape[1] + self.classes_.numel())

    def _reduce(self, logits: torch.Tensor) -> torch.Tensor:
        log_p, _ = _log_softmax_parts(logits)
        p = torch.exp(log_p)
        log_dists = self.log_dists_.to(device=p.device, dtype=p.dtype)
        cross = p @ log_dists.T  # [rows, K]: Σ_j p_j log d_cj
        return cross.max(dim=1).values - (p * log_p).sum(dim=1)

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(tensors)
        k = self.log_dists_.shape[0] if self.log_dists_.dim() == 2 else -1
        check_state_shapes(
            self.name,
            log_dists_=(self.log_dists_, (None, None)),
            classes_=(self.classes_, (k,)),
        )
