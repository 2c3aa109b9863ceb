"""Plugin discovery and the detector registry: isolation, duplicates, allow/block lists, strict."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import textwrap
import uuid
from importlib import metadata
from pathlib import Path

import numpy as np
import pluggy
import pytest

import ood_zoo
import ood_zoo.data
import ood_zoo.features
import ood_zoo.specs
from ood_zoo import hookspecs
from ood_zoo.errors import (
    DuplicateDetectorError,
    PluginError,
    UnknownDetectorError,
    UnknownNameError,
)
from ood_zoo.registry import (
    BUILTIN_PLUGIN,
    ENV_ALLOW,
    ENV_BLOCK,
    ENV_STRICT,
    Registry,
    reset_registry,
)
from ood_zoo.testing import check_plugin

BUILTIN_NAMES = {
    "cosine", "knn", "mahalanobis", "relative_mahalanobis", "msp", "maxlogit", "energy", "lof",
    "gmm", "residual", "perplexity", "likelihood_ratio",
}

DETECTOR_SOURCE = '''
import torch
from ood_zoo import Detector, Requirements, hookimpl


class ToyDetector(Detector):
    """Negative distance to the mean of the fit features."""

    name = {name!r}
    requires = Requirements(features=True)
    state_tensors = ("mean_",)

    def _fit(self, features, labels, logits):
        self.mean_ = features.float().mean(dim=0)

    def _score(self, features, logits):
        return -(features.float() - self.mean_).norm(dim=1)


@hookimpl
def ood_zoo_detectors():
    return {returned}
'''


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in (ENV_ALLOW, ENV_BLOCK, ENV_STRICT):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def make_plugin(tmp_path, monkeypatch):
    """Write a plugin module under ``tmp_path`` (on sys.path) and return its entry point.

    Module names are unique per call, so a module imported by one test is never reused by
    another; they are removed from ``sys.modules`` afterwards.
    """
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    modules: list[str] = []

    def make(
        plugin_name: str, source: str | None = None, *, detector: str | None = None,
        returned: str = "[ToyDetector]",
    ) -> metadata.EntryPoint:
        module = f"fake_ood_zoo_{plugin_name}_{uuid.uuid4().hex[:8]}"
        if source is None:
            source = DETECTOR_SOURCE.format(name=detector or f"toy_{plugin_name}",
                                            returned=returned)
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        modules.append(module)
        return metadata.EntryPoint(name=plugin_name, value=module, group="ood_zoo")

    yield make
    for module in modules:
        sys.modules.pop(module, None)


def _registry(*entry_points, **kwargs) -> Registry:
    kwargs.setdefault("builtins", False)
    return Registry(entry_points=list(entry_points), **kwargs)


REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------ built-ins


def test_builtins_are_registered_as_a_default_plugin():
    registry = Registry(entry_points=[])
    record = registry.plugins[BUILTIN_PLUGIN]
    assert record.builtin is True
    assert record.status == "loaded"
    assert record.error is None
    assert record.distribution == "ood_zoo"
    assert record.version == ood_zoo.__version__
    assert set(record.detectors) >= BUILTIN_NAMES
    assert set(registry.detectors) >= BUILTIN_NAMES
    for name in BUILTIN_NAMES:
        assert registry.get(name).plugin == BUILTIN_PLUGIN
        assert isinstance(registry.create(name), registry.get(name).cls)
    assert registry.failed == []


def test_builtins_can_be_left_out():
    registry = Registry(entry_points=[], builtins=False)
    assert registry.detectors == {}
    assert BUILTIN_PLUGIN not in registry.plugins


def test_the_core_imports_the_builtins_only_by_module_path():
    """``import ood_zoo`` loads the API layer only; the first registry imports ood_zoo.builtin."""
    script = textwrap.dedent("""
        import sys
        import ood_zoo

        def loaded():
            return sorted({m for m in sys.modules
                           if m.split(".")[:2] in (["ood_zoo", "builtin"], ["ood_zoo", "data"],
                                                   ["ood_zoo", "features"],
                                                   ["ood_zoo", "detectors"])})

        print(loaded())
        ood_zoo.registry.Registry(entry_points=[])
        print("ood_zoo.builtin" in loaded())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.splitlines()
    assert out == ["[]", "True"]


def test_plugin_records_live_next_to_the_hookspecs():
    assert ood_zoo.features.ModelSpec is ood_zoo.specs.ModelSpec
    assert ood_zoo.data.DatasetSpec is ood_zoo.specs.DatasetSpec


def test_third_party_plugin_is_recorded_with_its_detectors(make_plugin):
    ep = make_plugin("good")
    registry = _registry(ep)
    record = registry.plugins["good"]
    assert (record.status, record.builtin, record.error) == ("loaded", False, None)
    assert record.module == ep.value
    assert record.detectors == ["toy_good"]
    assert registry.get("toy_good").plugin == "good"
    data = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    scores = registry.create("toy_good").fit(data).score(data)
    assert scores.shape == (20,)


def test_distribution_name_and_version_are_recorded(tmp_path, monkeypatch, make_plugin):
    ep = make_plugin("packaged")
    dist_info = tmp_path / "site" / "fake_ood_zoo_dist-2.5.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-ood-zoo-dist\nVersion: 2.5\n"
    )
    (dist_info / "entry_points.txt").write_text(f"[ood_zoo]\npackaged = {ep.value}\n")
    (real_ep,) = metadata.Distribution.at(dist_info).entry_points.select(group="ood_zoo")
    registry = _registry(real_ep)
    record = registry.plugins["packaged"]
    assert (record.distribution, record.version, record.status) == (
        "fake-ood-zoo-dist", "2.5", "loaded"
    )
    assert registry.get("toy_packaged").plugin_version == "2.5"
    # the allow-list also matches the distribution name
    allowed = _registry(real_ep, allow={"fake-ood-zoo-dist"})
    assert allowed.plugins["packaged"].status == "loaded"


def test_in_process_plugin_object(make_plugin):
    class Inline:
        @ood_zoo.hookimpl
        def ood_zoo_detectors(self):
            return []

    registry = _registry()
    record = registry.register_plugin(Inline(), "inline")
    assert record.status == "loaded"
    assert registry.plugins["inline"].detectors == []


# ------------------------------------------------------------------------ isolation


def test_broken_import_is_recorded_and_others_still_load(make_plugin):
    broken = metadata.EntryPoint(name="broken", value="nonexistent_mod_xyz", group="ood_zoo")
    good = make_plugin("good")
    with pytest.warns(RuntimeWarning, match="'broken' failed to load"):
        registry = Registry(entry_points=[broken, good])
    record = registry.plugins["broken"]
    assert record.status == "failed"
    assert record.name == "broken"
    assert "ModuleNotFoundError" in record.error
    assert "nonexistent_mod_xyz" in record.error
    assert registry.failed == [record]
    assert registry.plugins["good"].status == "loaded"
    assert "toy_good" in registry.detectors
    assert set(registry.detectors) >= BUILTIN_NAMES  # the built-ins are unaffected


def test_plugin_raising_at_import_is_recorded(make_plugin):
    ep = make_plugin("explodes", "raise RuntimeError('boom at import time')\n")
    good = make_plugin("good")
    with pytest.warns(RuntimeWarning, match="explodes"):
        registry = _registry(ep, good)
    assert registry.plugins["explodes"].status == "failed"
    assert "RuntimeError: boom at import time" in registry.plugins["explodes"].error
    assert "toy_good" in registry.detectors


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ("{'not': 'a list'}", "must return a list of Detector subclasses, got dict"),
        ("ToyDetector", "must return a list of Detector subclasses, got"),
        ("[object]", "which is not a Detector subclass"),
        ("[ToyDetector, 42]", "42, which is not a Detector subclass"),
        ("[ToyDetector()]", "which is not a Detector subclass"),
        ("[type('Nameless', (ToyDetector,), {'name': ''})]", "has no name"),
        ("None", "got NoneType"),
    ],
)
def test_invalid_hook_results_are_recorded(make_plugin, returned, message):
    bad = make_plugin("bad", returned=returned, detector="toy_bad")
    good = make_plugin("good")
    with pytest.warns(RuntimeWarning, match="'bad' failed"):
        registry = _registry(bad, good)
    record = registry.plugins["bad"]
    assert record.status == "failed"
    assert "PluginError" in record.error
    assert message in record.error
    # nothing of a failed plugin is registered, not even its valid detectors
    assert "toy_bad" not in registry.detectors
    assert record.detectors == []
    assert "toy_good" in registry.detectors


def test_hook_that_raises_is_recorded(make_plugin):
    source = """
        from ood_zoo import hookimpl

        @hookimpl
        def ood_zoo_detectors():
            raise ValueError("the hook exploded")
    """
    bad = make_plugin("raiser", source)
    good = make_plugin("good")
    with pytest.warns(RuntimeWarning, match="raiser"):
        registry = _registry(bad, good)
    assert registry.plugins["raiser"].status == "failed"
    assert "ValueError: the hook exploded" in registry.plugins["raiser"].error
    assert "toy_good" in registry.detectors
    # the failed plugin is unregistered from pluggy: registering its module again runs its hook
    # again (pluggy refuses a module it still holds, with another error)
    with pytest.warns(RuntimeWarning, match="raiser_again"):
        again = registry.register_plugin(importlib.import_module(bad.value), "raiser_again")
    assert again.status == "failed"
    assert "ValueError: the hook exploded" in again.error


def test_hookimpl_with_unknown_argument_is_recorded(make_plugin):
    source = """
        from ood_zoo import hookimpl

        @hookimpl
        def ood_zoo_detectors(not_a_hook_argument):
            return []
    """
    with pytest.warns(RuntimeWarning, match="badsig"):
        registry = _registry(make_plugin("badsig", source))
    assert registry.plugins["badsig"].status == "failed"
    assert "not_a_hook_argument" in registry.plugins["badsig"].error


def test_same_plugin_name_twice_keeps_the_first(make_plugin):
    first = make_plugin("same", detector="toy_first")
    second = make_plugin("same", detector="toy_second")
    second = metadata.EntryPoint(name="same", value=second.value, group="ood_zoo")
    with pytest.warns(RuntimeWarning, match="'same' failed"):
        registry = _registry(first, second)
    assert registry.plugins["same"].status == "loaded"
    failed = [p for p in registry.plugins.values() if p.status == "failed"]
    assert len(failed) == 1
    assert failed[0].module == second.value
    assert "taken" in failed[0].error
    assert "toy_first" in registry.detectors
    assert "toy_second" not in registry.detectors


UNMARKED_SOURCE = """
    from ood_zoo import hookimpl


    def ood_zoo_detectors():
        return []


    @hookimpl
    def ood_zoo_detector():
        return []
"""


def test_unmarked_and_misspelt_hooks_are_reported(make_plugin):
    ep = make_plugin("sloppy", UNMARKED_SOURCE)
    with pytest.warns(RuntimeWarning, match="'sloppy'") as caught:
        registry = _registry(ep)
    message = str(caught[0].message)
    path = str(Path(sys.modules[ep.value].__file__))
    unmarked = f"{ep.value}:ood_zoo_detectors ({path}:5) is not marked with @ood_zoo.hookimpl"
    assert unmarked in message
    assert f"{ep.value}:ood_zoo_detector ({path}:9) is not an ood_zoo hook" in message
    assert "did you mean ood_zoo_detectors?" in message
    record = registry.plugins["sloppy"]
    assert record.status == "loaded"
    assert record.error == message.removeprefix("ood_zoo plugin 'sloppy': ")


@pytest.mark.parametrize("via", ["argument", "environment"])
def test_unmarked_hooks_fail_in_strict_mode(make_plugin, monkeypatch, via):
    ep = make_plugin("sloppy", UNMARKED_SOURCE)
    if via == "environment":
        monkeypatch.setenv(ENV_STRICT, "1")
    with pytest.raises(PluginError, match=r"'sloppy' failed.*not marked with @ood_zoo\.hookimpl"):
        _registry(ep, **({"strict": True} if via == "argument" else {}))


def test_a_method_plugin_without_hookimpl_is_reported():
    class Inline:
        def ood_zoo_detectors(self):
            return []

    with pytest.warns(RuntimeWarning, match="Inline.ood_zoo_detectors .*not marked"):
        _registry().register_plugin(Inline(), "inline")


def test_builtin_plugin_has_no_stray_hooks(recwarn):
    registry = Registry(entry_points=[], strict=True)
    assert registry.plugins[BUILTIN_PLUGIN].error is None


def test_errors_point_at_the_plugins_hook(make_plugin):
    bad = make_plugin("bad", returned="[object]")
    with pytest.warns(RuntimeWarning):
        registry = _registry(bad)
    error = registry.plugins["bad"].error
    path = str(Path(sys.modules[bad.value].__file__))
    assert f"hook {bad.value}:ood_zoo_detectors ({path}:" in error
    assert "registry.py" not in error
    raiser = make_plugin("raiser", """
        from ood_zoo import hookimpl

        @hookimpl
        def ood_zoo_detectors():
            raise ValueError("the hook exploded")
    """)
    with pytest.warns(RuntimeWarning):
        registry = _registry(raiser)
    error = registry.plugins["raiser"].error
    path = str(Path(sys.modules[raiser.value].__file__))
    assert f"hook {raiser.value}:ood_zoo_detectors ({path}:4) raised ValueError" in error
    assert f"(at {path}:6)" in error  # where it was raised


def _install(site: Path, entry_point: metadata.EntryPoint, name: str = "fake-kit-dist") -> None:
    """A dist-info under ``site`` declaring ``entry_point``, as pip would write it."""
    dist_info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        f"[ood_zoo]\n{entry_point.name} = {entry_point.value}\n"
    )


def test_check_plugin_loads_an_installed_distributions_entry_points(tmp_path, make_plugin,
                                                                    monkeypatch):
    ep = make_plugin("wired", detector="toy_wired")
    _install(tmp_path / "site", ep)
    monkeypatch.setenv(ENV_BLOCK, "wired")  # the check ignores the lists
    detectors = check_plugin("fake-kit-dist")
    assert list(detectors) == ["toy_wired"]
    assert detectors["toy_wired"] is sys.modules[ep.value].ToyDetector
    by_entry_point = check_plugin(entry_points=[ep])
    assert by_entry_point == detectors


def test_check_plugin_fails_on_what_would_load_silently(tmp_path, make_plugin):
    with pytest.raises(PluginError, match=r"not marked with @ood_zoo\.hookimpl"):
        check_plugin(entry_points=[make_plugin("sloppy", UNMARKED_SOURCE)])
    with pytest.raises(DuplicateDetectorError, match="'clash' registers detector 'cosine'"):
        check_plugin(entry_points=[make_plugin("clash", detector="cosine")])
    with pytest.raises(AssertionError, match=r"'empty' .* registered nothing"):
        check_plugin(entry_points=[make_plugin("empty", returned="[]")])
    with pytest.raises(AssertionError, match="'no-such-dist-xyz' is not installed"):
        check_plugin("no-such-dist-xyz")
    with pytest.raises(TypeError, match="not both"):
        check_plugin()


# ------------------------------------------------------------------------ duplicates


def test_duplicate_detector_name_stays_with_the_first_plugin(make_plugin):
    alpha = make_plugin("alpha", detector="dupe")
    beta = make_plugin("beta", detector="dupe")
    with pytest.warns(RuntimeWarning, match="plugin 'beta' registers detector 'dupe'") as caught:
        registry = _registry(alpha, beta)
    assert "'alpha' registered first" in str(caught[0].message)
    assert registry.get("dupe").plugin == "alpha"
    assert registry.conflicts == {"dupe": ["alpha", "beta"]}
    assert registry.plugins["alpha"].error is None
    assert registry.plugins["alpha"].detectors == ["dupe"]
    assert "dupe" not in registry.plugins["beta"].detectors
    assert "'beta' registers detector 'dupe'" in registry.plugins["beta"].error


def test_a_third_party_cannot_take_a_builtin_name(make_plugin):
    clash = make_plugin("clash", detector="cosine")
    with pytest.warns(RuntimeWarning, match=rf"'clash' registers detector 'cosine'.*"
                                            rf"'{BUILTIN_PLUGIN}' registered first"):
        registry = Registry(entry_points=[clash])
    assert registry.get("cosine").plugin == BUILTIN_PLUGIN
    data = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    assert registry.create("cosine").fit(data).score(data).shape == (20,)
    assert registry.plugins[BUILTIN_PLUGIN].error is None
    assert "cosine" in registry.plugins["clash"].error
    assert "knn" in registry.detectors


def test_three_claimants_are_all_listed(make_plugin):
    eps = [make_plugin(name, detector="dupe") for name in ("a1", "b2", "c3")]
    with pytest.warns(RuntimeWarning):
        registry = _registry(*eps)
    assert registry.get("dupe").plugin == "a1"
    assert registry.conflicts == {"dupe": ["a1", "b2", "c3"]}


@pytest.mark.parametrize("via", ["argument", "environment"])
def test_duplicate_raises_at_registration_in_strict_mode(make_plugin, monkeypatch, via):
    alpha = make_plugin("alpha", detector="dupe")
    beta = make_plugin("beta", detector="dupe")
    kwargs = {"strict": True} if via == "argument" else {}
    if via == "environment":
        monkeypatch.setenv(ENV_STRICT, "1")
    with pytest.raises(DuplicateDetectorError) as excinfo:
        _registry(alpha, beta, **kwargs)
    assert "'alpha'" in str(excinfo.value)
    assert "'beta'" in str(excinfo.value)


# ------------------------------------------------------------------------ allow / block


def test_builtins_can_be_blocked(make_plugin, monkeypatch):
    monkeypatch.setenv(ENV_BLOCK, BUILTIN_PLUGIN)
    registry = Registry(entry_points=[make_plugin("solo", detector="solo_detector")])
    assert registry.plugins[BUILTIN_PLUGIN].status == "blocked"
    assert list(registry.detectors) == ["solo_detector"]
    with pytest.raises(UnknownDetectorError):
        registry.create("cosine")


def _statuses(registry: Registry) -> dict[str, str]:
    return {name: p.status for name, p in registry.plugins.items() if not p.builtin}


def test_allow_list_argument(make_plugin):
    alpha, beta = make_plugin("alpha"), make_plugin("beta")
    registry = _registry(alpha, beta, allow={"alpha"})
    assert _statuses(registry) == {"alpha": "loaded", "beta": "blocked"}
    assert "toy_beta" not in registry.detectors
    assert ENV_ALLOW in registry.plugins["beta"].error
    assert beta.value not in sys.modules  # a blocked plugin is never imported


def test_block_list_argument(make_plugin):
    alpha, beta = make_plugin("alpha"), make_plugin("beta")
    registry = _registry(alpha, beta, block={"beta"})
    assert _statuses(registry) == {"alpha": "loaded", "beta": "blocked"}
    assert ENV_BLOCK in registry.plugins["beta"].error
    assert beta.value not in sys.modules


def test_allow_list_environment(make_plugin, monkeypatch):
    alpha, beta, gamma = make_plugin("alpha"), make_plugin("beta"), make_plugin("gamma")
    monkeypatch.setenv(ENV_ALLOW, " alpha , gamma ")
    registry = Registry(entry_points=[alpha, beta, gamma])
    assert _statuses(registry) == {"alpha": "loaded", "beta": "blocked", "gamma": "loaded"}
    assert set(registry.detectors) >= BUILTIN_NAMES  # the allow-list is for third parties


def test_block_list_environment(make_plugin, monkeypatch):
    alpha, beta, gamma = make_plugin("alpha"), make_plugin("beta"), make_plugin("gamma")
    monkeypatch.setenv(ENV_BLOCK, "beta,gamma")
    registry = _registry(alpha, beta, gamma)
    assert _statuses(registry) == {"alpha": "loaded", "beta": "blocked", "gamma": "blocked"}


def test_block_list_wins_over_allow_list(make_plugin, monkeypatch):
    alpha, beta = make_plugin("alpha"), make_plugin("beta")
    monkeypatch.setenv(ENV_ALLOW, "alpha,beta")
    monkeypatch.setenv(ENV_BLOCK, "beta")
    assert _statuses(_registry(alpha, beta)) == {"alpha": "loaded", "beta": "blocked"}


def test_empty_allow_list_loads_no_third_party_plugin(make_plugin, monkeypatch):
    monkeypatch.setenv(ENV_ALLOW, "")
    alpha = make_plugin("alpha")
    assert _statuses(_registry(alpha)) == {"alpha": "blocked"}


def test_arguments_override_the_environment(make_plugin, monkeypatch):
    alpha, beta = make_plugin("alpha"), make_plugin("beta")
    monkeypatch.setenv(ENV_ALLOW, "alpha")
    monkeypatch.setenv(ENV_BLOCK, "alpha")
    registry = _registry(alpha, beta, allow={"alpha", "beta"}, block=set())
    assert _statuses(registry) == {"alpha": "loaded", "beta": "loaded"}


def test_blocking_a_broken_plugin_avoids_its_failure(make_plugin, recwarn):
    broken = metadata.EntryPoint(name="broken", value="nonexistent_mod_xyz", group="ood_zoo")
    registry = _registry(broken, make_plugin("good"), block={"broken"}, strict=True)
    assert registry.plugins["broken"].status == "blocked"
    assert registry.failed == []
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


# ------------------------------------------------------------------------ strict mode


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_strict_environment_reraises_plugin_errors(make_plugin, monkeypatch, value):
    monkeypatch.setenv(ENV_STRICT, value)
    broken = metadata.EntryPoint(name="broken", value="nonexistent_mod_xyz", group="ood_zoo")
    with pytest.raises(PluginError, match="'broken' failed") as excinfo:
        _registry(make_plugin("good"), broken)
    assert isinstance(excinfo.value.__cause__, ModuleNotFoundError)


def test_strict_argument_reraises_a_bad_hook_result(make_plugin):
    bad = make_plugin("bad", returned="[object]")
    with pytest.raises(PluginError, match="not a Detector subclass"):
        _registry(bad, strict=True)


@pytest.mark.parametrize("value", ["0", "", "no"])
def test_strict_off_values(make_plugin, monkeypatch, value):
    monkeypatch.setenv(ENV_STRICT, value)
    broken = metadata.EntryPoint(name="broken", value="nonexistent_mod_xyz", group="ood_zoo")
    with pytest.warns(RuntimeWarning):
        registry = _registry(broken)
    assert registry.plugins["broken"].status == "failed"


# ------------------------------------------------------------------------ lookups


def test_unknown_detector_lists_registered_names(make_plugin):
    registry = _registry(make_plugin("alpha"), make_plugin("beta"))
    with pytest.raises(UnknownDetectorError) as excinfo:
        registry.create("no_such_detector")
    message = str(excinfo.value)
    assert "'no_such_detector'" in message
    assert "toy_alpha, toy_beta" in message
    assert isinstance(excinfo.value, KeyError)


def test_unknown_detector_mentions_failed_plugins(make_plugin):
    broken = metadata.EntryPoint(name="broken", value="nonexistent_mod_xyz", group="ood_zoo")
    with pytest.warns(RuntimeWarning):
        registry = _registry(broken)
    with pytest.raises(UnknownDetectorError, match=r"registered detectors: none.*broken"):
        registry.get("whatever")


def test_unknown_params_go_through_create(make_plugin):
    registry = Registry(entry_points=[])
    with pytest.raises(TypeError, match="unknown parameter"):
        registry.create("cosine", nonsense=1)
    assert registry.create("knn", k=3).hparams["k"] == 3


# ------------------------------------------------------------------------ global registry


@pytest.fixture
def fresh_global_registry():
    reset_registry()
    yield
    reset_registry()


def test_global_create_and_list(make_plugin, monkeypatch, fresh_global_registry):
    ep = make_plugin("globalplug")
    real = metadata.entry_points

    def fake_entry_points(**params):
        if params.get("group") == "ood_zoo":
            return metadata.EntryPoints([ep])
        return real(**params)

    monkeypatch.setattr(ood_zoo.registry.metadata, "entry_points", fake_entry_points)
    names = ood_zoo.list_detectors()
    assert names == sorted(names)
    assert set(names) >= BUILTIN_NAMES | {"toy_globalplug"}
    assert ood_zoo.get_registry() is ood_zoo.get_registry()
    assert ood_zoo.get_registry().get("toy_globalplug").plugin == "globalplug"
    detector = ood_zoo.create("knn", k=2)
    assert detector.name == "knn"
    assert detector.hparams["k"] == 2
    with pytest.raises(UnknownDetectorError, match="toy_globalplug"):
        ood_zoo.create("missing_detector")
    first = ood_zoo.get_registry()
    reset_registry()
    monkeypatch.setattr(ood_zoo.registry.metadata, "entry_points", real)
    assert ood_zoo.get_registry() is not first
    assert "toy_globalplug" not in ood_zoo.list_detectors()


def test_global_registry_reads_the_environment(make_plugin, monkeypatch, fresh_global_registry):
    ep = make_plugin("envplug")
    monkeypatch.setattr(
        ood_zoo.registry.metadata, "entry_points",
        lambda **params: metadata.EntryPoints([ep] if params.get("group") == "ood_zoo" else []),
    )
    monkeypatch.setenv(ENV_BLOCK, "envplug")
    assert "toy_envplug" not in ood_zoo.list_detectors()
    assert ood_zoo.get_registry().plugins["envplug"].status == "blocked"


# ------------------------------------------------------------------------ hookspecs


def _hookspecs() -> dict[str, object]:
    marker = f"{hookspecs.PROJECT}_spec"
    return {
        name: obj for name, obj in vars(hookspecs).items()
        if inspect.isfunction(obj) and hasattr(obj, marker)
    }


def test_there_are_hookspecs():
    assert "ood_zoo_detectors" in _hookspecs()


@pytest.mark.parametrize("name", sorted(_hookspecs()))
def test_hookspec_is_named_and_documented(name):
    function = _hookspecs()[name]
    assert name.startswith("ood_zoo_"), f"hookspec {name} must be named ood_zoo_*"
    doc = inspect.getdoc(function)
    assert doc, f"hookspec {name} has no docstring"
    assert "\n" not in doc.strip(), f"hookspec {name} needs a one-line docstring, got {doc!r}"
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    assert hasattr(manager.hook, name)


def test_every_ood_zoo_function_in_hookspecs_is_a_hookspec():
    functions = {
        name for name, obj in vars(hookspecs).items()
        if inspect.isfunction(obj) and obj.__module__ == hookspecs.__name__
    }
    assert functions == set(_hookspecs()), "a function in hookspecs.py lacks @hookspec"


# ------------------------------------------------------------------------ models and datasets

SPEC_SOURCE = '''
from ood_zoo import hookimpl
from ood_zoo.specs import DatasetSpec, ModelSpec


def _load(**options):
    return ["a text", "another text"]


@hookimpl
def ood_zoo_models():
    return [ModelSpec(name={model!r}, load=_load, pooling="mean", max_length=8, package="none",
                      license="MIT")]


@hookimpl
def ood_zoo_datasets():
    return {datasets}
'''


def test_plugins_register_models_and_datasets(make_plugin):
    source = SPEC_SOURCE.format(
        model="tiny_model", datasets='[DatasetSpec(name="tiny_texts", load=_load)]'
    )
    registry = _registry(make_plugin("specs", source))
    record = registry.plugins["specs"]
    assert record.status == "loaded"
    assert record.as_dict()["models"] == ["tiny_model"]
    assert record.as_dict()["datasets"] == ["tiny_texts"]
    assert registry.lookup("datasets", "tiny_texts").spec.load() == ["a text", "another text"]
    assert registry.models["tiny_model"].as_dict()["pooling"] == "mean"
    with pytest.raises(UnknownNameError, match="unknown dataset 'nope'"):
        registry.lookup("datasets", "nope")


def test_a_bad_dataset_record_fails_the_plugin_only(make_plugin):
    bad = make_plugin("bad_specs", SPEC_SOURCE.format(model="m1", datasets='["not a spec"]'))
    good = make_plugin("good")
    with pytest.warns(RuntimeWarning, match="bad_specs"):
        registry = _registry(bad, good)
    assert registry.plugins["bad_specs"].status == "failed"
    assert "not a DatasetSpec" in registry.plugins["bad_specs"].error
    assert "m1" not in registry.models  # nothing of a failed plugin is registered
    assert "toy_good" in registry.detectors


ENGINE_SOURCE = '''
from ood_zoo import hookimpl
from ood_zoo.specs import EngineSpec


def _extract(texts, model, **options):
    return [len(t) for t in texts], model, options


@hookimpl
def ood_zoo_engines():
    return {engines}
'''


def test_plugins_register_engines(make_plugin):
    source = ENGINE_SOURCE.format(
        engines='[EngineSpec(name="local_pool", extract=_extract, description="d", package="p")]')
    registry = _registry(make_plugin("engine", source))
    assert registry.plugins["engine"].as_dict()["engines"] == ["local_pool"]
    spec = registry.lookup("engines", "local_pool").spec
    assert spec.extract(["ab", "c"], "m", layers=-1) == ([2, 1], "m", {"layers": -1})
    assert registry.engines["local_pool"].as_dict()["package"] == "p"
    with pytest.raises(UnknownNameError, match="unknown engine 'nope'; registered engines: "):
        registry.lookup("engines", "nope")


def test_a_bad_engine_record_fails_the_plugin_only(make_plugin):
    bad = make_plugin("bad_engine", ENGINE_SOURCE.format(engines='[_extract]'))
    with pytest.warns(RuntimeWarning, match="bad_engine"):
        registry = _registry(bad, make_plugin("good"))
    assert registry.plugins["bad_engine"].status == "failed"
    assert "not a EngineSpec" in registry.plugins["bad_engine"].error
    assert "toy_good" in registry.detectors


def test_duplicate_model_name_stays_with_the_first_plugin(make_plugin):
    one = make_plugin("one", SPEC_SOURCE.format(model="same", datasets="[]"))
    two = make_plugin("two", SPEC_SOURCE.format(model="same", datasets="[]"))
    with pytest.warns(RuntimeWarning, match="'two' registers model 'same'"):
        registry = _registry(one, two)
    assert registry.lookup("models", "same").plugin == "one"
    assert registry.conflicts_of("models") == {"same": ["one", "two"]}
