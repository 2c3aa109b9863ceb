"""The example plugin, built and installed like any third-party package, shows up in ood_zoo.

Nothing in ood_zoo changes: the plugin is pip-installed into a temporary target directory and
found through its ``ood_zoo`` entry point by a fresh interpreter with that directory on
``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PLUGIN_SOURCE = REPO / "plugins" / "ood_zoo_example"


def _env(*paths: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OOD_ZOO_")}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    env["PYTHONNOUSERSITE"] = "1"
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example plugin pip-installed (built from a copy of its source) into a target dir."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    shutil.copytree(
        PLUGIN_SOURCE, source,
        ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"),
    )
    target = root / "site"
    _run(
        ["-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(source)],
        env=_env(REPO), cwd=root,
    )
    assert list(target.glob("ood_zoo_example-*.dist-info")), sorted(os.listdir(target))
    shutil.rmtree(source)  # the installed copy must stand on its own
    return target


def _detectors(env: dict[str, str], cwd: Path) -> dict[str, dict]:
    out = _run(["-m", "ood_zoo.cli", "detectors", "--json"], env, cwd).stdout
    records = json.loads(out)
    assert isinstance(records, list)
    return {r["name"]: r for r in records}


def test_installed_plugin_is_discovered(installed):
    cwd = installed.parent
    detectors = _detectors(_env(installed, REPO), cwd)
    assert "cosine" in detectors
    record = detectors.get("kmeans_cosine")
    assert record is not None, f"kmeans_cosine not listed: {sorted(detectors)}"
    assert record["plugin"] == "example"
    assert record["plugin_version"] == "0.1.0"
    assert record["class"] == "ood_zoo_example.kmeans_cosine.KMeansCosineDetector"
    assert {p["name"] for p in record["params"]} == {"n_clusters", "n_iter", "seed"}

    plugins = json.loads(
        _run(["-m", "ood_zoo.cli", "plugins", "--json"], _env(installed, REPO), cwd).stdout
    )
    (example,) = [p for p in plugins if p["name"] == "example"]
    assert example["status"] == "loaded"
    assert example["distribution"] == "ood_zoo_example"
    assert example["module"] == "ood_zoo_example.plugin"
    assert example["detectors"] == ["kmeans_cosine"]


def test_installed_plugin_is_usable(installed):
    script = (
        "import json, numpy as np, ood_zoo, ood_zoo_example\n"
        "x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)\n"
        "d = ood_zoo.create('kmeans_cosine', n_clusters=4).fit(x)\n"
        "print(json.dumps({'file': ood_zoo_example.__file__, 'n': int(d.score(x).shape[0]),\n"
        "                  'k': int(d.centroids_.shape[0])}))\n"
    )
    result = json.loads(_run(["-c", script], _env(installed, REPO), installed.parent).stdout)
    assert Path(result["file"]).is_relative_to(installed)
    assert (result["n"], result["k"]) == (50, 4)


def test_installed_plugin_passes_check_plugin_and_records_its_package(installed):
    script = (
        "import json, numpy as np, ood_zoo\n"
        "from ood_zoo.testing import check_plugin\n"
        "detectors = sorted(check_plugin('ood_zoo_example'))\n"
        "x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)\n"
        "ood_zoo.create('kmeans_cosine', n_clusters=4).fit(x).save('saved')\n"
        "print(json.dumps({'detectors': detectors,\n"
        "                  'plugin': json.load(open('saved/detector.json'))['plugin']}))\n"
    )
    cwd = installed.parent
    result = json.loads(_run(["-c", script], _env(installed, REPO), cwd).stdout)
    assert result["detectors"] == ["kmeans_cosine"]
    assert result["plugin"] == {
        "class": "ood_zoo_example.kmeans_cosine.KMeansCosineDetector",
        "distribution": "ood_zoo_example", "version": "0.1.0",
    }
    # without the plugin (blocked, lest another copy be installed), the error names the package
    failed = subprocess.run(
        [sys.executable, "-c", "import ood_zoo; ood_zoo.load('saved')"],
        env=_env(REPO, OOD_ZOO_BLOCK_PLUGINS="example"), cwd=cwd, capture_output=True,
        text=True, timeout=300,
    )
    assert failed.returncode != 0
    assert "unknown detector 'kmeans_cosine'" in failed.stderr
    assert "pip install 'ood_zoo_example==0.1.0'" in failed.stderr


LIST_BOTH = (
    "import json\n"
    "from ood_zoo.registry import get_registry\n"
    "registry = get_registry()\n"
    "print(json.dumps({'detectors': sorted(registry.detectors),\n"
    "                  'plugins': {n: p.status for n, p in registry.plugins.items()}}))\n"
)


@pytest.mark.parametrize(
    ("variable", "value"), [("OOD_ZOO_BLOCK_PLUGINS", "example"), ("OOD_ZOO_PLUGINS", "other")]
)
def test_installed_plugin_obeys_allow_and_block_lists(installed, variable, value):
    env = _env(installed, REPO, **{variable: value})
    listing = json.loads(_run(["-c", LIST_BOTH], env, installed.parent).stdout)
    assert "cosine" in listing["detectors"]
    assert "kmeans_cosine" not in listing["detectors"]
    assert listing["plugins"]["example"] == "blocked"


def test_not_discovered_without_the_install(installed):
    cwd = installed.parent
    env = _env(REPO)
    probe = _run(
        ["-c", "from importlib import metadata\n"
               "try:\n    metadata.distribution('ood_zoo_example')\n    print('installed')\n"
               "except metadata.PackageNotFoundError:\n    print('absent')"],
        env, cwd,
    ).stdout.strip()
    if probe == "installed":
        pytest.skip("ood_zoo_example is installed in this environment")
    detectors = _detectors(env, cwd)
    assert "cosine" in detectors
    assert "kmeans_cosine" not in detectors
