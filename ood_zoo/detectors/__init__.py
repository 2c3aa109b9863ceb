"""The built-in detectors, one module per family.

========================  ==========================================  =========================
name                      class                                       module
========================  ==========================================  =========================
``cosine``                :class:`CosineDetector`                     :mod:`.distance`
``knn``                   :class:`KNNDetector`                        :mod:`.distance`
``mahalanobis``           :class:`MahalanobisDetector`                :mod:`.mahalanobis`
``relative_mahalanobis``  :class:`RelativeMahalanobisDetector`        :mod:`.mahalanobis`
``msp``                   :class:`MSPDetector`                        :mod:`.logits`
``maxlogit``              :class:`MaxLogitDetector`                   :mod:`.logits`
``energy``                :class:`EnergyDetector`                     :mod:`.logits`
``entropy``               :class:`EntropyDetector`                    :mod:`.logits`
``gen``                   :class:`GENDetector`                        :mod:`.logits`
``klm``                   :class:`KLMatchingDetector`                 :mod:`.logits`
``lof``                   :class:`LOFDetector`                        :mod:`.lof`
``gmm``                   :class:`GMMDetector`                        :mod:`.gmm`
``residual``              :class:`ResidualDetector`                   :mod:`.residual`
``perplexity``            :class:`PerplexityDetector`                 :mod:`.likelihood`
``likelihood_ratio``      :class:`LikelihoodRatioDetector`            :mod:`.likelihood`
``fusion``                :class:`FusionDetector`                     :mod:`.fusion`
``nnguide``               :class:`NNGuideDetector`                    :mod:`.guided`
``she``                   :class:`SHEDetector`                        :mod:`.guided`
``neco``                  :class:`NECODetector`                       :mod:`.neco`
``rde``                   :class:`RDEDetector`                        :mod:`.rde`
========================  ==========================================  =========================

They are registered through the plugin :mod:`ood_zoo.builtin`.
"""

from __future__ import annotations

from .distance import CosineDetector, KNNDetector
from .fusion import FusionDetector
from .gmm import GMMDetector
from .guided import NNGuideDetector, SHEDetector
from .likelihood import LikelihoodRatioDetector, PerplexityDetector
from .lof import LOFDetector
from .logits import (
    EnergyDetector,
    EntropyDetector,
    GENDetector,
    KLMatchingDetector,
    MaxLogitDetector,
    MSPDetector,
)
from .mahalanobis import MahalanobisDetector, RelativeMahalanobisDetector
from .neco import NECODetector
from .rde import RDEDetector
from .residual import ResidualDetector

BUILTIN_DETECTORS = (
    CosineDetector,
    KNNDetector,
    MahalanobisDetector,
    RelativeMahalanobisDetector,
    MSPDetector,
    MaxLogitDetector,
    EnergyDetector,
    EntropyDetector,
    GENDetector,
    KLMatchingDetector,
    LOFDetector,
    GMMDetector,
    ResidualDetector,
    PerplexityDetector,
    LikelihoodRatioDetector,
    FusionDetector,
    NNGuideDetector,
    SHEDetector,
    NECODetector,
    RDEDetector,
)

__all__ = [
    "BUILTIN_DETECTORS",
    "CosineDetector",
    "EnergyDetector",
    "EntropyDetector",
    "FusionDetector",
    "GENDetector",
    "GMMDetector",
    "KLMatchingDetector",
    "KNNDetector",
    "LOFDetector",
    "LikelihoodRatioDetector",
    "MSPDetector",
    "MahalanobisDetector",
    "MaxLogitDetector",
    "NECODetector",
    "NNGuideDetector",
    "PerplexityDetector",
    "RDEDetector",
    "RelativeMahalanobisDetector",
    "ResidualDetector",
    "SHEDetector",
]
