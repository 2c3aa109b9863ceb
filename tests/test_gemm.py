"""Tests of the fp32 tile GEMM behind the CPU kernels (``ood_zoo::gemm_nt``, csrc/cpu/gemm.cpp).

Every available provider must match a float64 reference on odd shapes, with leading dimensions
larger than the rows, and for m, n or k = 1 (or k = 0); the ``OOD_ZOO_GEMM`` override and the
fallback when a provider is missing are checked in fresh subprocesses (the choice is made once
per process); ``ood-zoo doctor`` must show the choice. No timing assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ood_zoo import ops
from ood_zoo.ops import extension

pytestmark = pytest.mark.skipif(
    not extension.available(), reason=f"C++ extension: {extension.load_error()}"
)

ROOT = Path(__file__).resolve().parents[1]
PROVIDERS = ("aten", "onednn", "openblas")


def info() -> dict:
    return json.loads(torch.ops.ood_zoo.gemm_info())


def available(provider: str) -> bool:
    return provider in info()["available"]


def strided(rows: int, cols: int, pad: int, rng: np.random.Generator) -> torch.Tensor:
    """A [rows, cols] float32 view whose row stride (leading dimension) is cols + pad."""
    full = torch.from_numpy(rng.standard_normal((rows, cols + pad)).astype(np.float32))
    return full[:, :cols]


SHAPES = [
    (1, 1, 1), (1, 7, 3), (5, 1, 9), (3, 4, 1), (17, 33, 65), (31, 129, 1000), (64, 256, 24),
    (100, 37, 4099), (257, 300, 17), (2, 3, 0),
]


@pytest.mark.parametrize("provider", ["", *PROVIDERS])
@pytest.mark.parametrize(("m", "n", "k"), SHAPES)
@pytest.mark.parametrize("pad", [0, 5])
def test_provider_matches_float64_reference(provider, m, n, k, pad):
    if provider and not available(provider):
        pytest.skip(f"{provider} unavailable: {info()}")
    rng = np.random.default_rng(m * 10_000 + n * 100 + k)
    a, b = strided(m, k, pad, rng), strided(n, k, pad, rng)
    c_full = torch.full((m, n + 2 * pad), 7.0)  # NaN-free sentinel outside the written block
    c = c_full[:, :n]
    torch.ops.ood_zoo.gemm_nt_out(a, b, c, provider)
    ref = a.double() @ b.double().T
    scale = (a.double().abs() @ b.double().abs().T).clamp_min(1.0)
    err = ((c.double() - ref).abs() / scale).max().item() if m * n else 0.0
    assert err <= 1e-5 * max(1, k) ** 0.5, (provider, err)
    if pad:
        assert torch.all(c_full[:, n:] == 7.0), "wrote past n columns (ldc ignored)"


def test_unknown_or_unavailable_provider_is_an_error():
    a, b, c = torch.ones(2, 3), torch.ones(4, 3), torch.empty(2, 4)
    with pytest.raises(RuntimeError, match="unknown provider"):
        torch.ops.ood_zoo.gemm_nt_out(a, b, c, "nope")
    with pytest.raises(RuntimeError, match="shapes"):
        torch.ops.ood_zoo.gemm_nt_out(a, b, torch.empty(3, 4), "aten")


def test_info_is_consistent():
    got = info()
    assert got["provider"] in got["available"]
    assert "aten" in got["available"]
    assert got["threads"] == torch.get_num_threads()
    if got["requested"] == "auto":  # calibrated: every available provider has a rate
        assert set(got["gflops"]) == set(got["available"])
        assert got["gflops"][got["provider"]] == max(got["gflops"].values())
    if "openblas" in got["available"]:
        assert got["openblas"]["path"]
        assert "sgemm" in got["openblas"]["symbol"]


def fresh_info(**env: str) -> dict:
    """gemm_info() and one kNN result from a new process with ``env`` set."""
    code = (
        "import json, torch; from ood_zoo import ops; from ood_zoo.ops import extension;"
        "assert extension.available();"
        "torch.manual_seed(0); q, b = torch.randn(9, 70), torch.randn(300, 70);"
        "v, i = ops.knn(q, b, 3); out = json.loads(torch.ops.ood_zoo.gemm_info());"
        "out['knn'] = i.tolist(); print(json.dumps(out))"
    )
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OOD_ZOO_BACKEND": "ext", **env}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_env_override_and_missing_openblas_fallback():
    base = fresh_info(OOD_ZOO_GEMM="aten")
    assert (base["provider"], base["requested"], base["gflops"]) == ("aten", "aten", {})
    # a missing library: the provider is unavailable, so the override falls back to aten
    missing = fresh_info(OOD_ZOO_GEMM="openblas", OOD_ZOO_OPENBLAS="/nonexistent/libopenblas.so")
    assert missing["provider"] == "aten"
    assert "openblas" not in missing["available"]
    assert "unavailable" in missing["reason"]
    assert "/nonexistent/libopenblas.so" in missing["openblas"]["error"]
    assert missing["knn"] == base["knn"]
    off = fresh_info(OOD_ZOO_OPENBLAS="none")
    assert "openblas" not in off["available"]
    assert off["provider"] in off["available"]
    assert off["knn"] == base["knn"]
    bogus = fresh_info(OOD_ZOO_GEMM="bogus")
    assert bogus["provider"] == "aten"
    assert "unknown" in bogus["reason"]


@pytest.mark.parametrize("provider", ["openblas", "onednn"])
def test_forced_provider_runs_the_kernel(provider):
    if not available(provider):
        pytest.skip(f"{provider} unavailable")
    forced = fresh_info(OOD_ZOO_GEMM=provider)
    assert forced["provider"] == provider
    assert forced["knn"] == fresh_info(OOD_ZOO_GEMM="aten")["knn"]


def test_kernels_use_gemm_and_match_reference():
    """ops.knn and ops.mahalanobis (fp32, through gemm_nt) agree with float64."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((13, 70)).astype(np.float32)
    b = rng.standard_normal((501, 70)).astype(np.float32)
    for metric in ("cosine", "l2"):
        v, _ = ops.knn(torch.from_numpy(q), torch.from_numpy(b), 5, metric)
        v64, _ = ops.knn(torch.from_numpy(q).double(), torch.from_numpy(b).double(), 5, metric)
        np.testing.assert_allclose(v.numpy(), v64.numpy(), rtol=1e-4, atol=1e-4)
    w = torch.linalg.qr(torch.randn(70, 70, dtype=torch.float64)).Q
    mu = torch.randn(4, 70, dtype=torch.float64)
    x = torch.from_numpy(q)
    d2, arg = ops.mahalanobis(x, w.float(), mu.float())
    d2_64, arg_64 = ops.mahalanobis(x.double(), w, mu)
    np.testing.assert_allclose(d2.numpy(), d2_64.numpy(), rtol=1e-3, atol=1e-3)
    assert torch.equal(arg, arg_64)


def test_doctor_shows_the_choice(capsys):
    from ood_zoo import cli

    assert cli.main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    gemm = report["kernels"]["cpu_gemm"]
    assert gemm["provider"] == info()["provider"]
    assert "gflops" in gemm
    assert "reason" in gemm
    assert ops.describe_backend()["cpu_gemm"]["provider"] == gemm["provider"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_fp32_even_when_torch_allows_reduced_matmul_precision(provider):
    """gemm_nt stays IEEE fp32 (no bf16/TF32 fpmath) under set_float32_matmul_precision."""
    if not available(provider):
        pytest.skip(f"{provider} unavailable")
    rng = np.random.default_rng(11)
    a, b = strided(96, 1000, 0, rng), strided(80, 1000, 3, rng)
    ref = a.double() @ b.double().T
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        c = torch.empty(96, 80)
        torch.ops.ood_zoo.gemm_nt_out(a, b, c, provider)
    finally:
        torch.set_float32_matmul_precision(before)
    scale = (a.double().abs() @ b.double().abs().T).max().item()
    assert (c.double() - ref).abs().max().item() <= 1e-5 * scale


def test_provider_failing_at_run_time_is_dropped():
    """torch's oneDNN fp32 matmul refuses CPUs without AVX-512 (as on Zen 3): capped to AVX2, it
    must be reported unavailable, in calibration and when forced, and the kernel still works."""
    capped = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    base = fresh_info(OOD_ZOO_GEMM="aten")
    auto = fresh_info(**capped)
    forced = fresh_info(OOD_ZOO_GEMM="onednn", **capped)
    for got in (auto, forced):
        assert "onednn" not in got["available"]
        assert got["provider"] != "onednn"
        assert got["knn"] == base["knn"]
    assert forced["provider"] == "aten"
    if "onednn" in info()["available"]:  # it works uncapped here, so the cap made it fail
        assert forced["onednn_error"].startswith("failed:")
        assert "Exception raised from" not in forced["onednn_error"]  # no C++ backtrace


def test_calibration_leaves_torch_rng_alone():
    """The first kNN call calibrates; it must not advance the user's seeded torch generator."""
    code = (
        "import numpy as np, torch; from ood_zoo import ops; from ood_zoo.ops import extension;"
        "assert extension.available();"
        "q = np.ones((2, 8), np.float32); b = np.eye(8, dtype=np.float32);"
        "torch.manual_seed(0); want = torch.rand(4);"
        "torch.manual_seed(0); ops.knn(q, b, 2); got = torch.rand(4);"
        "assert torch.equal(got, want), (got, want); print('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OOD_ZOO_BACKEND": "ext"}
    env.pop("OOD_ZOO_GEMM", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
