"""The module the ``ood_zoo`` entry point names: it implements the ``ood_zoo_detectors`` hook."""

from __future__ import annotations

from ood_zoo import Detector, hookimpl

from .detector import {{ cookiecutter.class_name }}


@hookimpl
def ood_zoo_detectors() -> list[type[Detector]]:
    """The detectors this plugin adds to ood_zoo."""
    return [{{ cookiecutter.class_name }}]
