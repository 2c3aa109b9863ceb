"""plugins/template renders a plugin that installs, registers its detector and passes its tests.

As simonw/llm-plugin's template is tested: render it with cookiecutter into a temporary
directory, install the result there (``pip --target``, offline, without touching the
environment's site-packages) and run the rendered project's own tests in a subprocess, with the
install target on ``PYTHONPATH`` so that its entry points are found.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ood_zoo

cookiecutter_main = pytest.importorskip("cookiecutter.main")

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "plugins" / "template"
CHECKS = [
    "check_api_shape", "check_numpy_torch_roundtrip", "check_half_precision",
    "check_score_direction", "check_save_load_roundtrip", "check_bad_input_errors",
]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    project = cookiecutter_main.cookiecutter(
        str(TEMPLATE), no_input=True, output_dir=str(out),
        extra_context={"detector_name": "toy_gate"},
    )
    return Path(project)


def test_renders_every_name_from_the_detector_name(rendered):
    assert rendered.name == "ood_zoo_toy_gate"
    files = sorted(p.relative_to(rendered).as_posix() for p in rendered.rglob("*") if p.is_file())
    assert files == [
        "README.md", "ood_zoo_toy_gate/__init__.py", "ood_zoo_toy_gate/detector.py",
        "ood_zoo_toy_gate/plugin.py", "pyproject.toml", "tests/test_toy_gate.py",
    ]
    for path in rendered.rglob("*.*"):
        text = path.read_text(encoding="utf-8")
        assert "{{" not in text, path
        assert "cookiecutter" not in text, path
    detector = (rendered / "ood_zoo_toy_gate" / "detector.py").read_text(encoding="utf-8")
    assert "class ToyGateDetector(Detector):" in detector


def test_rendered_code_is_ruff_clean(rendered):
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    result = subprocess.run([ruff, "check", "--no-cache", "."], cwd=rendered, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_installs_and_its_tests_pass(rendered, tmp_path):
    source = shutil.copytree(rendered, tmp_path / "source")  # the build writes into its tree
    target = tmp_path / "site"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True, env=env, cwd=tmp_path,
    )
    assert (target / "ood_zoo_toy_gate-0.1.0.dist-info" / "entry_points.txt").is_file()
    ood_zoo_root = Path(ood_zoo.__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(ood_zoo_root)])
    env["OMP_NUM_THREADS"] = "1"
    # -p: where the installed ood_zoo predates its pytest11 entry point; a no-op otherwise
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
         "-p", "ood_zoo.testing.pytest_plugin"],
        cwd=rendered, env=env, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tests/test_toy_gate.py::test_the_entry_point_registers_the_detector PASSED" in (
        result.stdout
    )
    assert "ood_zoo[ood_zoo_toy_gate]::check_plugin PASSED" in result.stdout
    for check in CHECKS:
        assert f"ood_zoo[ood_zoo_toy_gate]::toy_gate::{check} PASSED" in result.stdout
