"""benchmarks/gpu_check.sh --dry-run runs end to end on a CPU-only machine and writes its files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["nvidia-smi", "lscpu", "build", "import", "pytest", "bench", "sanitizer"]
FILES = [
    "summary.tsv",
    "summary.json",
    "nvidia-smi.txt",
    "lscpu.txt",
    "build.log",
    "import.log",
    "pytest-cuda.log",
    "pytest-cuda.xml",
    "bench_gpu.log",
    "bench_gpu.json",
    "bench_gpu.md",
    "sanitizer.log",
]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_check(out: Path, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    """``bash benchmarks/gpu_check.sh OUT --dry-run`` with ``python``, at most 60 s."""
    env = {**os.environ, "PYTHON": python, "GPU_CHECK_BUDGET": "50"}
    env.pop("OOD_ZOO_BACKEND", None)
    return subprocess.run(
        ["bash", str(SCRIPT), str(out), "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """One dry run shared by the tests: (output folder, exit code, its stdout + stderr)."""
    out = tmp_path_factory.mktemp("gpu_check")
    proc = run_check(out)
    return out, proc.returncode, proc.stdout + proc.stderr


def test_dry_run_succeeds_and_writes_every_file(dry_run):
    out, rc, log = dry_run
    assert rc == 0, log
    missing = [name for name in FILES if not (out / name).is_file()]
    assert not missing, missing


def test_summary_lists_every_step(dry_run):
    out, _, _ = dry_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True
    assert summary["failed"] == []
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert list(status) == STEPS
    assert status["build"] == status["sanitizer"] == "skipped"
    assert status["lscpu"] == status["pytest"] == status["bench"] == "ok"
    assert "skipped" in (out / "sanitizer.log").read_text()


def test_cuda_tests_were_collected_and_skipped(dry_run):
    out, _, _ = dry_run
    suite = ET.parse(out / "pytest-cuda.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert suite is not None
    assert int(suite.get("tests", 0)) > 0
    assert int(suite.get("failures", 0)) == int(suite.get("errors", 0)) == 0


def test_bench_outputs_are_well_formed(dry_run):
    out, _, _ = dry_run
    record = json.loads((out / "bench_gpu.json").read_text())
    assert record["dry_run"] is True
    assert record["failures"] == []
    cases = record["cases"]
    for name in ("gemm_bf16", "knn_torch", "mahalanobis_torch"):
        assert cases[name]["status"] == "ok"
        assert cases[name]["gflops"] > 0
        assert cases[name]["fraction_of_gemm"] > 0
    assert cases["knn_ext"]["status"] in {"ok", "skipped"}
    if cases["knn_ext"]["status"] == "ok":
        assert cases["checks"]["knn_ext_vs_fp32"]["ok"]
    table = (out / "bench_gpu.md").read_text()
    assert "| case | status | seconds | GFLOP/s |" in table
    assert "| knn_torch | ok |" in table


def test_a_failing_step_is_recorded_and_fails_the_run(tmp_path):
    proc = run_check(tmp_path, python=str(tmp_path / "no-such-python"))
    assert proc.returncode != 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status["bench"] == status["pytest"] == "failed"
    assert status["lscpu"] == "ok"
    assert {"import", "pytest", "bench"} <= set(summary["failed"])
    assert "bench" in (tmp_path / "bench_gpu.log").read_text()


def test_bad_arguments_are_refused(tmp_path):
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path), "--wet-run"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert proc.returncode == 2
    assert "usage" in proc.stderr
