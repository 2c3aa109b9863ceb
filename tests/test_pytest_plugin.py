"""ood_zoo.testing.pytest_plugin: one line runs the kit over every detector a plugin registers."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "ood_zoo.testing.pytest_plugin"
CHECKS = [
    "check_api_shape", "check_numpy_torch_roundtrip", "check_half_precision",
    "check_score_direction", "check_save_load_roundtrip", "check_bad_input_errors",
]


@pytest.fixture
def plugin_project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytest.importorskip("ood_zoo_example")
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\nood_zoo_plugins = ["ood_zoo_example"]\n')
    pytester.makepyfile(test_own="def test_own():\n    pass\n")
    return pytester


def test_registered_as_a_pytest11_entry_point_named_as_its_module():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["entry-points"]["pytest11"] == {PLUGIN: PLUGIN}


def test_one_line_runs_every_check_over_every_detector(plugin_project):
    result = plugin_project.runpytest("-p", PLUGIN, "-v")
    result.assert_outcomes(passed=1 + 1 + len(CHECKS))
    result.stdout.fnmatch_lines(
        ["ood_zoo[[]ood_zoo_example[]]::check_plugin PASSED*"]
        + [f"ood_zoo[[]ood_zoo_example[]]::kmeans_cosine::{check} PASSED*" for check in CHECKS]
    )


def test_checks_are_selected_with_k(plugin_project):
    result = plugin_project.runpytest("-p", PLUGIN, "-k", "check_plugin")
    result.assert_outcomes(passed=1, deselected=1 + len(CHECKS))


def test_a_session_naming_a_file_runs_only_that_file(plugin_project):
    plugin_project.runpytest("-p", PLUGIN, "test_own.py").assert_outcomes(passed=1)


def test_nothing_is_added_without_the_setting(pytester):
    pytester.makepyfile(test_own="def test_own():\n    pass\n")
    pytester.runpytest("-p", PLUGIN).assert_outcomes(passed=1)


def test_the_option_names_a_distribution_and_a_missing_one_fails_its_wiring_test(pytester):
    pytester.makepyfile(test_own="def test_own():\n    pass\n")
    result = pytester.runpytest("-p", PLUGIN, "--ood-zoo-plugin", "no_such_plugin", "test_own.py")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["distribution 'no_such_plugin' is not installed", "FAILED ood_zoo[[]no_such_plugin[]]::*"]
    )


def test_a_failing_check_is_reported_with_the_kits_message(pytester, monkeypatch):
    pytest.importorskip("ood_zoo_example")
    import ood_zoo_example

    monkeypatch.setattr(ood_zoo_example.KMeansCosineDetector, "version", "")
    pytester.makepyfile(test_own="def test_own():\n    pass\n")
    result = pytester.runpytest("-p", PLUGIN, "--ood-zoo-plugin", "ood_zoo_example", "-k", "api")
    result.assert_outcomes(failed=1, deselected=1 + 1 + len(CHECKS) - 1)
    result.stdout.fnmatch_lines(["*version must be a non-empty string*"])
