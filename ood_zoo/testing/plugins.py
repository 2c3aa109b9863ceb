"""Does a plugin's entry-point wiring work? :func:`check_plugin` loads it the way ood_zoo does."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata

from ..api import Detector
from ..registry import ENTRY_POINT_GROUP, KINDS, Registry

__all__ = ["check_plugin"]


def check_plugin(
    distribution: str | None = None, *, entry_points: Iterable[metadata.EntryPoint] | None = None,
) -> dict[str, type[Detector]]:
    """Load a plugin through its entry points as ood_zoo would, strictly; return its detectors.

    A fresh :class:`~ood_zoo.registry.Registry` loads the built-ins, then the plugin, in strict
    mode, whatever ``OOD_ZOO_PLUGINS`` and ``OOD_ZOO_BLOCK_PLUGINS`` say: an import error, a
    hook that raises or returns something else than a list of records, a function named
    ``ood_zoo_*`` that is not a hook, or a name a built-in already has, raises
    :class:`~ood_zoo.errors.PluginError` naming it.

    Parameters
    ----------
    distribution : str, optional
        An installed distribution (``"ood_zoo_example"``): its ``ood_zoo`` entry points, read
        from its metadata, so this checks what ``pip install`` wired up.
    entry_points : iterable of importlib.metadata.EntryPoint, optional
        Instead, entry points of a source tree that is not installed, e.g.
        ``EntryPoint(name="example", value="ood_zoo_example.plugin", group="ood_zoo")``.

    Returns
    -------
    dict
        Detector name -> class, of the detectors the plugin registered; pass each class to
        :func:`~ood_zoo.testing.check_detector`.

    Raises
    ------
    AssertionError
        If there are no entry points in group ``ood_zoo``, or a plugin registers nothing.
    PluginError
        If a plugin fails to load or register (see above).
    """
    if (distribution is None) == (entry_points is None):
        raise TypeError("check_plugin() takes a distribution name or entry_points, not both")
    if distribution is not None:
        try:
            found = metadata.distribution(distribution).entry_points
        except metadata.PackageNotFoundError:
            raise AssertionError(f"distribution {distribution!r} is not installed") from None
        entry_points = found.select(group=ENTRY_POINT_GROUP)
    entry_points = list(entry_points or ())
    what = repr(distribution) if distribution is not None else "the entry points given"
    if not entry_points:
        raise AssertionError(f"{what} has no entry point in group {ENTRY_POINT_GROUP!r}")
    names = {entry_point.name for entry_point in entry_points}
    registry = Registry(entry_points=entry_points, allow=names, block=set(), strict=True)
    detectors: dict[str, type[Detector]] = {}
    for entry_point in entry_points:
        record = registry.plugins[entry_point.name]
        if not any(record.provides[kind] for kind in KINDS):
            raise AssertionError(
                f"plugin {entry_point.name!r} ({entry_point.value}) loaded but registered "
                f"nothing: its hooks {', '.join(hook for hook, _ in KINDS.values())} returned "
                "empty lists"
            )
        detectors.update({name: registry.get(name).cls for name in record.detectors})
    return detectors
