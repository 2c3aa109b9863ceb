"""Plugin discovery and the detector registry (pluggy + entry points).

Detectors come from plugins: ood_zoo's own (``ood_zoo.builtin``, imported by module path and
registered first, the same way as any other) and the entry points in group ``ood_zoo``. Entry
points are loaded one at a time, each in its own ``try``: a plugin that fails to import, or whose
hook raises or returns something that is not a list of :class:`~ood_zoo.api.Detector` subclasses,
is recorded with its error and never stops the others.

The registry imports only the API layer (:mod:`~ood_zoo.api`, :mod:`~ood_zoo.hookspecs`,
:mod:`~ood_zoo.specs`, :mod:`~ood_zoo.io`), never the detectors, features or data it registers.
It is also the one place where a saved detector's name is turned into its class
(:meth:`Registry.load`, :func:`load`).

Environment:

``OOD_ZOO_PLUGINS``
    Comma-separated allow-list of entry-point (or distribution) names; only these load.
    Unset loads all; an empty value loads none.
``OOD_ZOO_BLOCK_PLUGINS``
    Comma-separated block-list, applied after the allow-list. ``ood_zoo.builtin`` blocks
    ood_zoo's own detectors (the allow-list applies to third-party plugins only).
``OOD_ZOO_STRICT_PLUGINS``
    ``1`` re-raises the first plugin failure instead of recording it: duplicate names and
    functions that look like hooks but are none included.

A name (of a detector, model or dataset) claimed by a second plugin stays with the first one,
ood_zoo's own plugin being registered first: a third party cannot take ``cosine`` away. The
collision is reported on the newcomer (a warning and its record's ``error``; an error in strict
mode). A function named ``ood_zoo_*`` without ``@hookimpl``, or a hookimpl whose name is no hook
(``ood_zoo_detector``), is reported the same way, naming the function and its file and line.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import threading
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import pluggy

from . import hookspecs
from .api import Detector
from .errors import DuplicateDetectorError, PluginError, UnknownDetectorError, UnknownNameError
from .io import load_saved
from .specs import DatasetSpec, EngineSpec, ModelSpec
from .version import __version__

ENTRY_POINT_GROUP = hookspecs.PROJECT
#: Every hook's name starts with this.
HOOK_PREFIX = f"{hookspecs.PROJECT}_"
BUILTIN_PLUGIN = "ood_zoo.builtin"
ENV_ALLOW = "OOD_ZOO_PLUGINS"
ENV_BLOCK = "OOD_ZOO_BLOCK_PLUGINS"
ENV_STRICT = "OOD_ZOO_STRICT_PLUGINS"

PluginStatus = Literal["loaded", "failed", "blocked"]


@dataclass
class PluginRecord:
    """What happened to one plugin: where it came from, its status and what it registered."""

    name: str
    module: str | None
    distribution: str | None
    version: str | None
    builtin: bool
    status: PluginStatus = "loaded"
    error: str | None = None
    provides: dict[str, list[str]] = field(
        default_factory=lambda: {kind: [] for kind in KINDS}
    )

    @property
    def detectors(self) -> list[str]:
        return self.provides["detectors"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "module": self.module, "distribution": self.distribution,
            "version": self.version, "builtin": self.builtin, "status": self.status,
            "error": self.error, **{kind: sorted(names) for kind, names in self.provides.items()},
        }


@dataclass(frozen=True)
class DetectorRecord:
    """A registered detector class and the plugin that provided it."""

    name: str
    cls: type[Detector]
    plugin: str
    plugin_version: str | None

    def as_dict(self) -> dict[str, Any]:
        doc = (self.cls.__doc__ or "").strip().splitlines()
        return {
            "name": self.name,
            "class": f"{self.cls.__module__}.{self.cls.__qualname__}",
            "summary": doc[0] if doc else "",
            "plugin": self.plugin,
            "plugin_version": self.plugin_version,
            "detector_version": self.cls.version,
            "requires": self.cls.requires.as_dict(),
            "params": [p.as_dict() for p in self.cls.params],
        }


@dataclass(frozen=True)
class SpecRecord:
    """A registered model, dataset or engine spec and the plugin that provided it."""

    name: str
    spec: ModelSpec | DatasetSpec | EngineSpec
    plugin: str
    plugin_version: str | None

    def as_dict(self) -> dict[str, Any]:
        fields = {
            key: value for key, value in vars(self.spec).items()
            if isinstance(value, str | int | float | bool) or value is None
        }
        return {**fields, "name": self.name, "plugin": self.plugin,
                "plugin_version": self.plugin_version}


def _detector_name(value: object) -> str:
    if not (isinstance(value, type) and issubclass(value, Detector)):
        raise PluginError(
            f"ood_zoo_detectors() returned {value!r}, which is not a Detector subclass"
        )
    if not isinstance(value.name, str) or not value.name.strip():
        raise PluginError(f"detector class {value.__qualname__} has no name")
    return value.name


def _spec_name(hook: str, expected: type) -> Callable[[object], str]:
    def name_of(value: object) -> str:
        if not isinstance(value, expected):
            raise PluginError(f"{hook}() returned {value!r}, which is not a {expected.__name__}")
        if not isinstance(value.name, str) or not value.name.strip():
            raise PluginError(f"{hook}() returned a {expected.__name__} with no name")
        return value.name
    return name_of


#: What plugins register: kind -> (hook name, function returning a valid record's name).
KINDS: dict[str, tuple[str, Callable[[object], str]]] = {
    "detectors": ("ood_zoo_detectors", _detector_name),
    "models": ("ood_zoo_models", _spec_name("ood_zoo_models", ModelSpec)),
    "datasets": ("ood_zoo_datasets", _spec_name("ood_zoo_datasets", DatasetSpec)),
    "engines": ("ood_zoo_engines", _spec_name("ood_zoo_engines", EngineSpec)),
}
_SINGULAR = {"detectors": "detector", "models": "model", "datasets": "dataset",
             "engines": "engine"}
_ITEMS = {
    "detectors": "Detector subclasses", "models": "ModelSpec records",
    "datasets": "DatasetSpec records", "engines": "EngineSpec records",
}


def _env_list(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {item.strip() for item in value.split(",") if item.strip()}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _short_error(exc: BaseException) -> str:
    """``Type: message (at file:line)``, the line being where it was raised.

    A :class:`PluginError` is the registry's own verdict and already names the plugin's hook,
    so it gets no location: the registry's line would point away from the plugin.
    """
    if isinstance(exc, PluginError):
        return f"{type(exc).__name__}: {exc}"
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {frame[0].filename}:{frame[0].lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _where(function: Callable[..., Any]) -> str:
    """``module:qualname (file:line)`` of a plugin's function, for messages."""
    code = getattr(inspect.unwrap(function), "__code__", None)
    place = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
    return f"{function.__module__}:{function.__qualname__}{place}"


class Registry:
    """Loads plugins and holds the detectors they register.

    Parameters
    ----------
    entry_points : iterable of importlib.metadata.EntryPoint, optional
        The third-party plugins to load; by default those installed in group ``ood_zoo``.
    allow, block : set of str, optional
        Allow- and block-lists of plugin names; default from ``OOD_ZOO_PLUGINS`` and
        ``OOD_ZOO_BLOCK_PLUGINS``.
    strict : bool, optional
        Re-raise plugin failures; default from ``OOD_ZOO_STRICT_PLUGINS``.
    builtins : bool
        Register ood_zoo's own detectors (default ``True``).
    """

    def __init__(
        self,
        *,
        entry_points: Iterable[metadata.EntryPoint] | None = None,
        allow: set[str] | None = None,
        block: set[str] | None = None,
        strict: bool | None = None,
        builtins: bool = True,
    ) -> None:
        self.allow = _env_list(ENV_ALLOW) if allow is None else set(allow)
        self.block = (_env_list(ENV_BLOCK) or set()) if block is None else set(block)
        self.strict = _env_flag(ENV_STRICT) if strict is None else strict
        self.plugins: dict[str, PluginRecord] = {}
        self._entries: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
        self._conflicts: dict[str, dict[str, list[str]]] = {kind: {} for kind in KINDS}
        self._manager = pluggy.PluginManager(hookspecs.PROJECT)
        self._manager.add_hookspecs(hookspecs)
        if builtins:
            self._load_builtin()
        if entry_points is None:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        for entry_point in sorted(entry_points, key=lambda ep: ep.name):
            self._load_entry_point(entry_point)

    # ------------------------------------------------------------------ loading
    def _load_builtin(self) -> None:
        """Register ood_zoo's own plugin, imported by module path like an entry point's."""
        if BUILTIN_PLUGIN in self.block:
            self.plugins[BUILTIN_PLUGIN] = PluginRecord(
                BUILTIN_PLUGIN, BUILTIN_PLUGIN, "ood_zoo", __version__, builtin=True,
                status="blocked", error=f"blocked by {ENV_BLOCK}",
            )
            return
        self.register_plugin(
            importlib.import_module(BUILTIN_PLUGIN), BUILTIN_PLUGIN, module=BUILTIN_PLUGIN,
            distribution="ood_zoo", version=__version__, builtin=True,
        )

    def _load_entry_point(self, entry_point: metadata.EntryPoint) -> None:
        dist = getattr(entry_point, "dist", None)
        dist_name = dist.name if dist is not None else None
        version = dist.version if dist is not None else None
        names = {entry_point.name} | ({dist_name} if dist_name else set())
        record = PluginRecord(
            entry_point.name, entry_point.value, dist_name, version, builtin=False
        )
        if entry_point.name in self.plugins:
            self._fail(record, PluginError(
                f"plugin name {entry_point.name!r} is taken by "
                f"{self.plugins[entry_point.name].module}"
            ))
            return
        if (self.allow is not None and not names & self.allow) or names & self.block:
            record.status = "blocked"
            record.error = "blocked by " + (ENV_BLOCK if names & self.block else ENV_ALLOW)
            self.plugins[record.name] = record
            return
        try:
            plugin = entry_point.load()
        except Exception as exc:
            self._fail(record, exc)
            return
        self.register_plugin(
            plugin, entry_point.name, module=entry_point.value, distribution=dist_name,
            version=version,
        )

    def register_plugin(
        self,
        plugin: object,
        name: str,
        *,
        module: str | None = None,
        distribution: str | None = None,
        version: str | None = None,
        builtin: bool = False,
    ) -> PluginRecord:
        """Register an in-process plugin object (a module or any object with hookimpls)."""
        record = PluginRecord(name, module, distribution, version, builtin)
        if name in self.plugins:
            self._fail(record, PluginError(f"plugin name {name!r} is already registered"))
            return record
        try:
            self._manager.register(plugin, name=name)
            stray = self._stray_hooks(plugin)
            if stray and self.strict:
                raise PluginError(stray)
            provided = {kind: self._call_hook(kind, name) for kind in KINDS}
        except Exception as exc:
            if self._manager.is_registered(plugin):
                self._manager.unregister(plugin)
            self._fail(record, exc)
            return record
        if stray:
            record.error = stray
            warnings.warn(f"ood_zoo plugin {name!r}: {stray}", RuntimeWarning, stacklevel=3)
        self.plugins[name] = record
        for kind, values in provided.items():
            for entry_name, value in values:
                self._add(kind, entry_name, value, record)
        return record

    def _stray_hooks(self, plugin: object) -> str | None:
        """What looks like a hook of ``plugin`` but is none: ``None`` if nothing does.

        A function named ``ood_zoo_*`` without :data:`~ood_zoo.hookspecs.hookimpl` is never
        called, nor is a hookimpl whose name is no hook (``ood_zoo_detector``); both would load
        as a plugin that registers nothing.
        """
        hooks = self._manager.hook
        known = sorted(
            n for n in dir(hooks) if n.startswith(HOOK_PREFIX) and getattr(hooks, n).has_spec()
        )
        problems = []
        for attr in sorted(dir(plugin)):
            function = getattr(plugin, attr, None)
            if not attr.startswith(HOOK_PREFIX) or not callable(function):
                continue
            if self._manager.parse_hookimpl_opts(plugin, attr) is None:
                problems.append(f"{_where(function)} is not marked with @ood_zoo.hookimpl")
            elif attr not in known:
                close = difflib.get_close_matches(attr, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                problems.append(f"{_where(function)} is not an ood_zoo hook{hint}")
        if not problems:
            return None
        return "; ".join(problems) + f"; the hooks are {', '.join(known)}"

    def _call_hook(self, kind: str, plugin_name: str) -> list[tuple[str, Any]]:
        """Call one plugin's implementation of ``kind``'s hook and check what it returns."""
        hook_name, name_of = KINDS[kind]
        impls = [
            impl for impl in getattr(self._manager.hook, hook_name).get_hookimpls()
            if impl.plugin_name == plugin_name
        ]
        provided: list[tuple[str, Any]] = []
        for impl in impls:
            where = _where(impl.function)
            try:
                returned = impl.function()
            except Exception as exc:
                raise PluginError(f"hook {where} raised {_short_error(exc)}") from exc
            if not isinstance(returned, list | tuple):
                raise PluginError(
                    f"hook {where}: {hook_name}() must return a list of {_ITEMS[kind]}, "
                    f"got {type(returned).__name__}"
                )
            try:
                provided.extend((name_of(value), value) for value in returned)
            except PluginError as exc:
                raise PluginError(f"hook {where}: {exc}") from None
        return provided

    def _add(self, kind: str, name: str, value: Any, record: PluginRecord) -> None:
        """Register ``name``; a name already taken stays with its first plugin (the built-ins
        come first), and the collision is reported on the newcomer."""
        entries, conflicts = self._entries[kind], self._conflicts[kind]
        if name not in entries:
            entry_type = DetectorRecord if kind == "detectors" else SpecRecord
            entries[name] = entry_type(name, value, record.name, record.version)
            record.provides[kind].append(name)
            return
        conflicts.setdefault(name, [entries[name].plugin]).append(record.name)
        error = self._duplicate_error(kind, name, record.name)
        if self.strict:
            raise error
        warnings.warn(str(error), RuntimeWarning, stacklevel=2)
        record.error = "; ".join(filter(None, [record.error, str(error)]))

    def _duplicate_error(self, kind: str, name: str, newcomer: str) -> DuplicateDetectorError:
        holder = self._entries[kind][name]
        return DuplicateDetectorError(
            f"plugin {newcomer!r} registers {_SINGULAR[kind]} {name!r}, which plugin "
            f"{holder.plugin!r} registered first: {newcomer!r}'s is ignored and {name!r} stays "
            f"{holder.plugin!r}'s; rename it, or block one of them with {ENV_BLOCK}"
        )

    def _fail(self, record: PluginRecord, exc: BaseException) -> None:
        record.status = "failed"
        record.error = _short_error(exc)
        key, n = record.name, 1
        while key in self.plugins:  # a second plugin under a taken name is still listed
            n += 1
            key = f"{record.name}#{n}"
        self.plugins[key] = record
        if self.strict:
            raise PluginError(f"plugin {record.name!r} failed: {record.error}") from exc
        warnings.warn(
            f"ood_zoo plugin {record.name!r} failed to load and is skipped: {record.error}",
            RuntimeWarning,
            stacklevel=3,
        )

    # ------------------------------------------------------------------ queries
    @property
    def detectors(self) -> dict[str, DetectorRecord]:
        """The usable detectors by name (a name claimed twice is its first plugin's)."""
        return dict(sorted(self._entries["detectors"].items()))

    @property
    def models(self) -> dict[str, SpecRecord]:
        """The models known by name (see :class:`ood_zoo.specs.ModelSpec`)."""
        return dict(sorted(self._entries["models"].items()))

    @property
    def datasets(self) -> dict[str, SpecRecord]:
        """The datasets known by name (see :class:`ood_zoo.specs.DatasetSpec`)."""
        return dict(sorted(self._entries["datasets"].items()))

    @property
    def engines(self) -> dict[str, SpecRecord]:
        """The execution engines known by name (see :class:`ood_zoo.specs.EngineSpec`)."""
        return dict(sorted(self._entries["engines"].items()))

    @property
    def conflicts(self) -> dict[str, list[str]]:
        """Detector names claimed by more than one plugin, with the plugins that claim them
        (the first holds the name)."""
        return self.conflicts_of("detectors")

    def conflicts_of(self, kind: str) -> dict[str, list[str]]:
        """Names of ``kind`` claimed by more than one plugin, with the plugins that claim them."""
        return {name: list(plugins) for name, plugins in self._conflicts[kind].items()}

    @property
    def failed(self) -> list[PluginRecord]:
        return [p for p in self.plugins.values() if p.status == "failed"]

    def lookup(self, kind: str, name: str) -> Any:
        """The record of ``name`` among ``kind`` (its first plugin's); a clear error if unknown."""
        try:
            return self._entries[kind][name]
        except KeyError:
            known = ", ".join(sorted(self._entries[kind])) or "none"
            hint = ""
            if self.failed:
                hint = " (failed plugins: " + ", ".join(p.name for p in self.failed) + ")"
            error = UnknownDetectorError if kind == "detectors" else UnknownNameError
            raise error(
                f"unknown {_SINGULAR[kind]} {name!r}; registered {kind}: {known}{hint}"
            ) from None

    def get(self, name: str) -> DetectorRecord:
        """The record of detector ``name``; a clear error if unknown."""
        return self.lookup("detectors", name)

    def create(self, name: str, **params: Any) -> Detector:
        """Instantiate detector ``name`` with hyperparameters ``params``."""
        return self.get(name).cls(**params)

    def load(self, path: str | Path) -> Detector:
        """Load a saved detector of any registered class, looked up by the name it was saved under.

        Raises
        ------
        PersistenceError
            If ``path`` is not a whole, valid save (see :mod:`ood_zoo.io`).
        UnknownDetectorError
            If no registered detector has the saved name.
        """
        return load_saved(path, lambda name: self.get(name).cls)


_registry: Registry | None = None
_registry_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = Registry()
        return _registry


def reset_registry() -> None:
    """Forget the process-wide registry, so the next use rediscovers plugins."""
    global _registry
    with _registry_lock:
        _registry = None


def create(name: str, **params: Any) -> Detector:
    """Create a registered detector: ``ood_zoo.create("knn", k=50)``."""
    return get_registry().create(name, **params)


def load(path: str | Path) -> Detector:
    """Load any saved detector: ``ood_zoo.load("my_detector/")``."""
    return get_registry().load(path)


def list_detectors() -> list[str]:
    """The names of every usable registered detector, sorted."""
    return list(get_registry().detectors)
