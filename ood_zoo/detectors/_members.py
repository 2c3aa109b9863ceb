"""What the detectors built from other registered detectors (``fusion``, ``layers``) share.

Resolving detector names in the process-wide registry, and reading their hyperparameters given
as JSON text (how they are kept and saved) or as a mapping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..api import Detector
from ..errors import UnknownDetectorError
from ..registry import get_registry


def registered_classes(names: Sequence[str], owner: str, role: str) -> list[type[Detector]]:
    """The registered detector classes of ``names``, in order.

    Raises
    ------
    UnknownDetectorError
        Naming every unknown one (as ``owner``'s ``role``) and the registered detectors.
    """
    registry = get_registry()
    unknown = sorted({n for n in names if n not in registry.detectors})
    if unknown:
        known = ", ".join(registry.detectors)
        raise UnknownDetectorError(
            f"{owner}: unknown {role} detector(s) {unknown}; registered detectors: {known}"
        )
    return [registry.get(n).cls for n in names]


def parse_json_object(value: str | Mapping[str, Any], owner: str, param: str) -> dict[str, Any]:
    """``value`` as a dict: parsed if it is JSON text, which must hold an object.

    Raises
    ------
    ValueError
        If the text is not valid JSON, or does not hold an object.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{owner}: {param} is not valid JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise ValueError(f"{owner}: {param} must be a JSON object, got {value!r}")
    return dict(value)
