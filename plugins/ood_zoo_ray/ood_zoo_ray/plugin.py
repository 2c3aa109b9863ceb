"""The ``ood_zoo`` entry point: registers the ``ray`` execution engine.

Neither this module nor the registry imports Ray: the engine's functions import it when called.
"""

from __future__ import annotations

from typing import Any

from ood_zoo import hookimpl
from ood_zoo.specs import EngineSpec


def _extract(texts: Any, model: Any, **options: Any) -> Any:
    """:func:`ood_zoo_ray.extraction.extract_features`, imported at the first call."""
    from .extraction import extract_features

    return extract_features(texts, model, **options)


@hookimpl
def ood_zoo_engines() -> list[EngineSpec]:
    return [EngineSpec(
        name="ray",
        extract=_extract,
        description="Ray Data actor pools: one model load per actor, length-sorted batches",
        package="ood_zoo_ray",
    )]
