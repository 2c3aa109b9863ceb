"""The conformance kit as a pytest plugin: every check over every detector a plugin registers.

pytest loads this module wherever ood_zoo is installed (entry point in group ``pytest11``), and
it does nothing until told which distributions to check. One line in the plugin's
``pyproject.toml`` does it::

    [tool.pytest.ini_options]
    ood_zoo_plugins = ["my-package"]

Each session that collects a directory (``pytest``, ``pytest tests/``; not one that names a
file or a test), or any session given ``--ood-zoo-plugin my-package`` (repeatable), then gets, per
distribution, a test of its entry-point wiring (:func:`~ood_zoo.testing.check_plugin`, id
``ood_zoo[my-package]::check_plugin``) and one test per detector it registers and check of
:func:`~ood_zoo.testing.detector_checks` (``ood_zoo[my-package]::my_detector::check_api_shape``).
With ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, load it with ``-p ood_zoo.testing.pytest_plugin``
(the entry point has that name, so loading it twice is harmless).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

__all__ = ["ConformanceCheck", "PluginChecks"]

OPTION = "ood_zoo_plugins"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        OPTION, "distributions whose ood_zoo plugins get the conformance kit's tests",
        type="linelist", default=[],
    )
    parser.addoption(
        "--ood-zoo-plugin", action="append", default=[], dest=OPTION, metavar="DISTRIBUTION",
        help="run ood_zoo's conformance kit over the detectors of this installed distribution",
    )


class ConformanceCheck(pytest.Item):
    """One check of the kit (or the entry-point wiring check), run as a test."""

    def __init__(self, *, check: Callable[[], object], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.check = check

    def runtest(self) -> None:
        self.check()

    def reportinfo(self) -> tuple[Path, None, str]:
        return self.path, None, self.nodeid

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> object:
        """The kit's message alone, unless it chains the detector's own exception."""
        if isinstance(excinfo.value, AssertionError) and excinfo.value.__cause__ is None:
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class PluginChecks(pytest.Collector):
    """The tests of one distribution: its wiring, then every check of every detector."""

    def __init__(self, *, distribution: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.distribution = distribution

    def collect(self) -> Iterator[ConformanceCheck]:
        from ..errors import PluginError
        from . import check_plugin, detector_checks

        def wiring() -> None:
            check_plugin(self.distribution)

        yield ConformanceCheck.from_parent(self, name="check_plugin", check=wiring)
        try:
            detectors = check_plugin(self.distribution)
        except (AssertionError, PluginError):
            return  # the wiring test reports it
        for name, cls in detectors.items():
            for check_name, check in detector_checks(cls):
                yield ConformanceCheck.from_parent(
                    self, name=f"{name}::{check_name}", check=check
                )


def _collects_a_directory(config: pytest.Config) -> bool:
    root = config.invocation_params.dir
    return all((root / arg.split("::")[0]).is_dir() for arg in config.args)


@pytest.hookimpl(tryfirst=True)  # before -k and -m deselect
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    distributions = config.getoption(OPTION) or (
        config.getini(OPTION) if _collects_a_directory(config) else []
    )
    for distribution in dict.fromkeys(distributions):
        name = f"ood_zoo[{distribution}]"
        checks = PluginChecks.from_parent(
            session, name=name, nodeid=name, distribution=distribution
        )
        items.extend(checks.collect())
