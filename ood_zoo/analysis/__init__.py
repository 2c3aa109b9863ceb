"""Isotropy of embedding spaces, as pure measures of an ``[n, d]`` matrix (:mod:`.isotropy`):
average cosine (Ethayarajh 2019), partition isotropy (Mu & Viswanath 2018), IsoScore (Rudman et
al. 2022) and top-principal-component variance.

The study that relates them to detection, ``ood-zoo isotropy``, is a benchmark suite:
:mod:`ood_zoo.bench.isotropy`.
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
