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
``renyi``                 :class:`RenyiDetector`                      :mod:`.likelihood`
``fisher_rao``            :class:`FisherRaoDetector`                  :mod:`.likelihood`
``self_certainty``        :class:`SelfCertaintyDetector`              :mod:`.likelihood`
``likelihood_ratio``      :class:`LikelihoodRatioDetector`            :mod:`.likelihood`
``fusion``                :class:`FusionDetector`                     :mod:`.fusion`
``vim``                   :class:`ViMDetector`                        :mod:`.head`
``fdbd``                  :class:`FDBDDetector`                       :mod:`.head`
``nci``                   :class:`NCIDetector`                        :mod:`.head`
``layers``                :class:`LayersDetector`                     :mod:`.layers`
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
from .head import FDBDDetector, NCIDetector, ViMDetector
from .layers import LayersDetector
from .likelihood import (
    FisherRaoDetector,
    LikelihoodRatioDetector,
    PerplexityDetector,
    RenyiDetector,
    SelfCertaintyDetector,
)
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
    RenyiDetector,
    FisherRaoDetector,
    SelfCertaintyDetector,
    LikelihoodRatioDetector,
    FusionDetector,
    ViMDetector,
    FDBDDetector,
    NCIDetector,
    LayersDetector,
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
    "FDBDDetector",
    "FisherRaoDetector",
    "FusionDetector",
    "GENDetector",
    "GMMDetector",
    "KLMatchingDetector",
    "KNNDetector",
    "LOFDetector",
    "LayersDetector",
    "LikelihoodRatioDetector",
    "MSPDetector",
    "MahalanobisDetector",
    "MaxLogitDetector",
    "NCIDetector",
    "NECODetector",
    "NNGuideDetector",
    "PerplexityDetector",
    "RDEDetector",
    "RelativeMahalanobisDetector",
    "RenyiDetector",
    "ResidualDetector",
    "SHEDetector",
    "SelfCertaintyDetector",
    "ViMDetector",
]
