"""Analyses of embedding spaces: isotropy measures and the isotropy-vs-detection study.

- :mod:`.isotropy`: average cosine (Ethayarajh 2019), partition isotropy (Mu & Viswanath 2018),
  IsoScore (Rudman et al. 2022) and top-principal-component variance of an ``[n, d]`` matrix.
- :mod:`.study`: ``ood-zoo isotropy``, which measures them on every layer of several models and
  relates them to the AUROC gap between cosine and Euclidean / Mahalanobis detectors.
"""

from __future__ import annotations

from .isotropy import (
    MEASURES,
    average_cosine,
    isoscore,
    isotropy_measures,
    partition_isotropy,
    top_pc_variance,
)

__all__ = [
    "MEASURES",
    "average_cosine",
    "isoscore",
    "isotropy_measures",
    "partition_isotropy",
    "top_pc_variance",
]
