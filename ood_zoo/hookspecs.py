"""The hooks an ood_zoo plugin may implement.

A plugin is a module or object with functions marked by :data:`hookimpl`, exposed through an
entry point in group ``ood_zoo``::

    [project.entry-points.ood_zoo]
    my_detectors = "my_package.plugin"

ood_zoo's own detectors are registered the same way (see ``ood_zoo.builtin``). Every
hook returns a list of records; ood_zoo calls each plugin's hooks one plugin at a time, so a
broken plugin is recorded and never stops the others. A plugin function named ``ood_zoo_*``
must be marked with :data:`hookimpl` and spelt as a hook below; the registry reports any other
(naming its file and line) rather than load a plugin that registers nothing.
``ood_zoo.testing.check_plugin`` loads a plugin's entry points strictly, for its tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from .specs import DatasetSpec, EngineSpec, ModelSpec

if TYPE_CHECKING:
    from .api import Detector

PROJECT = "ood_zoo"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ood_zoo_detectors() -> list[type[Detector]]:
    """Return the :class:`ood_zoo.api.Detector` subclasses this plugin provides."""


@hookspec
def ood_zoo_models() -> list[ModelSpec]:
    """Return :class:`ood_zoo.specs.ModelSpec` records of models loadable by name."""


@hookspec
def ood_zoo_datasets() -> list[DatasetSpec]:
    """Return :class:`ood_zoo.specs.DatasetSpec` records of datasets loadable by name."""


@hookspec
def ood_zoo_engines() -> list[EngineSpec]:
    """Return :class:`ood_zoo.specs.EngineSpec` records of execution engines usable by name."""
