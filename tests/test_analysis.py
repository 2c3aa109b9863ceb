"""Isotropy measures against float64 references written differently, and the isotropy study end
to end on tiny random Llama/BERT models and synthetic corpora (no downloads)."""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_features import N_LAYERS, make_model, make_tokenizer

from ood_zoo.analysis import (
    MEASURES,
    average_cosine,
    isoscore,
    isotropy_measures,
    partition_isotropy,
    study,
    top_pc_variance,
)
from ood_zoo.bench import plots as plots_module
from ood_zoo.bench import suites as suites_module
from ood_zoo.bench.suites import Corpus
from ood_zoo.cli import CommandError
from ood_zoo.data import TextSet
from ood_zoo.errors import InputError
from ood_zoo.features import extract


# ---------------------------------------------------------------------------- references
def ref_average_cosine(x: np.ndarray) -> float:
    """Mean over all unordered pairs, one pair at a time."""
    total, count = 0.0, 0
    for i, j in itertools.combinations(range(len(x)), 2):
        a, b = np.linalg.norm(x[i]), np.linalg.norm(x[j])
        total += 0.0 if a == 0 or b == 0 else float(x[i] @ x[j]) / (a * b)
        count += 1
    return total / count


def ref_partition_isotropy(x: np.ndarray) -> float:
    """Z(c) by an explicit sum over rows, for c = ± every eigenvector of XᵀX (d x d eigh)."""
    _, vectors = np.linalg.eigh(x.T @ x)
    z = []
    for c in vectors.T:
        for sign in (1.0, -1.0):
            z.append(sum(math.exp(sign * float(c @ row)) for row in x))
    return min(z) / max(z)


def ref_eigenvalues(x: np.ndarray) -> np.ndarray:
    """Covariance eigenvalues from numpy's d x d covariance, descending, clipped at 0."""
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    return np.clip(np.sort(np.linalg.eigvalsh(cov))[::-1], 0.0, None)


def ref_isoscore(x: np.ndarray) -> float:
    """Closed form: the participation ratio (Σλ)² / Σλ², rescaled from [1, d] to [0, 1]."""
    lam = ref_eigenvalues(x)
    return (lam.sum() ** 2 / (lam**2).sum() - 1.0) / (x.shape[1] - 1.0)


def ref_top_pc_variance(x: np.ndarray, k: int) -> float:
    lam = ref_eigenvalues(x)
    return float(lam[:k].sum() / lam.sum())


def gaussian(n: int, d: int, seed: int = 0, anisotropy: float = 0.0) -> np.ndarray:
    """Normal rows whose per-dimension scales spread by ``exp(anisotropy)``."""
    rng = np.random.default_rng(seed)
    scales = np.exp(anisotropy * rng.uniform(-1.0, 1.0, size=d))
    return rng.normal(size=(n, d)) * scales + rng.normal(size=d)


def rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


# ---------------------------------------------------------------------------- against references
@pytest.mark.parametrize(("n", "d", "anisotropy"),
                         [(30, 5, 0.0), (12, 20, 1.0), (40, 8, 2.0), (7, 7, 0.5)])
def test_measures_match_references(n, d, anisotropy):
    x = gaussian(n, d, seed=n + d, anisotropy=anisotropy)
    assert average_cosine(x) == pytest.approx(ref_average_cosine(x), abs=1e-12)
    assert partition_isotropy(x) == pytest.approx(ref_partition_isotropy(x), rel=1e-9)
    assert partition_isotropy(x, log=True) == pytest.approx(
        math.log(ref_partition_isotropy(x)), rel=1e-9, abs=1e-12)
    assert isoscore(x) == pytest.approx(ref_isoscore(x), abs=1e-10)
    for k in (1, 3, d):
        assert top_pc_variance(x, k) == pytest.approx(ref_top_pc_variance(x, k), abs=1e-10)


def test_partition_isotropy_counts_the_null_space():
    """3 full-rank rows in 6-d, all Z(±c) > n over the row space: a null direction (Z = n) is
    the minimum."""
    x = np.random.default_rng(118).normal(size=(3, 6)) * 5.0
    _, vectors = np.linalg.eigh(x @ x.T)
    row_space = x.T @ vectors  # unnormalised eigenvectors of XᵀX with non-zero eigenvalue
    row_space /= np.linalg.norm(row_space, axis=0)
    log_z = [math.log(sum(math.exp(s * float(c @ r)) for r in x)) for c in row_space.T
             for s in (1.0, -1.0)]
    assert min(log_z) > math.log(3) + 0.1
    assert partition_isotropy(x) == pytest.approx(ref_partition_isotropy(x), rel=1e-9)
    assert partition_isotropy(x, log=True) == pytest.approx(math.log(3) - max(log_z), rel=1e-9)


def test_zero_rows_have_cosine_zero():
    x = gaussian(6, 4, seed=1)
    x[2] = 0.0
    assert average_cosine(x) == pytest.approx(ref_average_cosine(x), abs=1e-12)


def test_sampled_average_cosine():
    x = gaussian(300, 16, seed=2, anisotropy=1.0)
    exact = average_cosine(x)
    estimate = average_cosine(x, n_pairs=20_000, seed=3)
    assert estimate == pytest.approx(exact, abs=0.02)
    assert estimate == average_cosine(x, n_pairs=20_000, seed=3)  # seeded
    assert estimate != average_cosine(x, n_pairs=20_000, seed=4)
    small = x[:10]
    assert average_cosine(small, n_pairs=45) == pytest.approx(ref_average_cosine(small), abs=1e-12)


def test_isotropy_measures_is_every_measure():
    x = gaussian(50, 12, seed=5, anisotropy=1.0)
    out = isotropy_measures(torch.tensor(x))
    assert set(out) == set(MEASURES)
    assert out["average_cosine"] == average_cosine(x)
    assert out["isoscore"] == isoscore(x)
    assert out["top1_variance"] == top_pc_variance(x, 1)
    assert out["top10_variance"] == top_pc_variance(x, 10)
    assert out["log_partition_isotropy"] == pytest.approx(partition_isotropy(x, log=True))
    assert out["partition_isotropy"] == pytest.approx(partition_isotropy(x))


# ---------------------------------------------------------------------------- known cases
def test_isotropic_gaussian_is_isotropic():
    x = np.random.default_rng(0).normal(size=(4000, 8))
    assert abs(average_cosine(x)) < 0.01
    assert partition_isotropy(x) > 0.8
    assert isoscore(x) > 0.98
    assert top_pc_variance(x, 1) < 0.15


def test_common_offset_is_anisotropic():
    x = np.random.default_rng(0).normal(size=(500, 8))
    shifted = x + 1000.0 * np.ones(8)
    assert average_cosine(shifted) > 0.999
    assert partition_isotropy(shifted) < 1e-300
    assert partition_isotropy(shifted, log=True) < -1000.0
    assert isoscore(shifted) == pytest.approx(isoscore(x), abs=1e-9)  # translation-invariant


def test_rank_one_data():
    rng = np.random.default_rng(0)
    x = np.outer(rng.normal(size=40), rng.normal(size=6)) + rng.normal(size=6)
    assert isoscore(x) == pytest.approx(0.0, abs=1e-12)
    assert top_pc_variance(x, 1) == pytest.approx(1.0, abs=1e-12)


def test_isoscore_is_capped_by_the_sample_size():
    """A regular simplex of m points in d >= m dimensions: m - 1 equal variances."""
    m, d = 5, 9
    x = np.zeros((m, d))
    x[:, :m] = np.eye(m)
    assert isoscore(x) == pytest.approx((m - 2) / (d - 1), abs=1e-12)
    assert isoscore(x @ rotation(d, 0)) == pytest.approx((m - 2) / (d - 1), abs=1e-12)


def test_identical_rows():
    x = np.tile(np.array([[1.0, -2.0, 0.5]]), (4, 1))
    out = isotropy_measures(x)
    assert out["average_cosine"] == pytest.approx(1.0)
    assert math.isnan(out["isoscore"])
    assert math.isnan(out["top1_variance"])
    with pytest.raises(InputError, match="identical"):
        isoscore(x)
    with pytest.raises(InputError, match="identical"):
        top_pc_variance(x, 1)


# ---------------------------------------------------------------------------- properties
@st.composite
def clouds(draw):
    n = draw(st.integers(3, 30))
    d = draw(st.integers(2, 10))
    seed = draw(st.integers(0, 2**16))
    anisotropy = draw(st.floats(0.0, 3.0))
    return gaussian(n, d, seed=seed, anisotropy=anisotropy), seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clouds(), st.floats(0.01, 100.0), st.floats(-5.0, 5.0))
def test_invariances_and_bounds(cloud, scale, shift):
    x, seed = cloud
    n, d = x.shape
    rotated = x @ rotation(d, seed)
    # rotation: every measure
    assert average_cosine(rotated) == pytest.approx(average_cosine(x), abs=1e-9)
    assert partition_isotropy(rotated, log=True) == pytest.approx(
        partition_isotropy(x, log=True), rel=1e-7, abs=1e-9)
    assert isoscore(rotated) == pytest.approx(isoscore(x), abs=1e-9)
    assert top_pc_variance(rotated, 2) == pytest.approx(top_pc_variance(x, 2), abs=1e-9)
    # scale: all but the partition function
    assert average_cosine(scale * x) == pytest.approx(average_cosine(x), abs=1e-9)
    assert isoscore(scale * x) == pytest.approx(isoscore(x), abs=1e-9)
    assert top_pc_variance(scale * x, 1) == pytest.approx(top_pc_variance(x, 1), abs=1e-9)
    # translation: the variance-based measures
    assert isoscore(x + shift) == pytest.approx(isoscore(x), abs=1e-8)
    assert top_pc_variance(x + shift, 1) == pytest.approx(top_pc_variance(x, 1), abs=1e-8)
    # bounds
    assert -1.0 / (n - 1) - 1e-12 <= average_cosine(x) <= 1.0
    assert 0.0 <= partition_isotropy(x) <= 1.0
    assert partition_isotropy(x, log=True) <= 0.0
    assert 0.0 <= isoscore(x) <= min(1.0, (n - 2) / (d - 1) + 1e-9)
    fractions = [top_pc_variance(x, k) for k in range(1, d + 1)]
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(fractions))
    assert fractions[0] >= 1.0 / d - 1e-12
    assert fractions[-1] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- dtypes and errors
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    x = torch.tensor(gaussian(40, 6, seed=7, anisotropy=1.0), dtype=torch.float32)
    half = x.to(dtype)
    exact = half.double().numpy()  # the same rounded values, in float64
    assert isotropy_measures(half) == pytest.approx(isotropy_measures(exact), rel=1e-12)
    if dtype == torch.float16:
        assert isotropy_measures(half.numpy()) == pytest.approx(isotropy_measures(exact),
                                                                rel=1e-12)
    close = isotropy_measures(x)
    for name, value in isotropy_measures(half).items():
        assert value == pytest.approx(close[name], rel=0.05, abs=0.02), name


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), "Inf"),
        (np.ones((1, 3)), "at least 2 rows"),
        (np.ones(3), "2-D"),
        (np.ones((2, 2, 2)), "2-D"),
        (np.ones((0, 3)), "empty"),
        ([[1.0, 2.0], [3.0, 4.0]], "numpy array or a torch tensor"),
        (np.ones((3, 2), dtype=np.int64), "floating"),
    ],
)
def test_bad_inputs_raise(x, message):
    for measure in (average_cosine, partition_isotropy, isoscore, top_pc_variance,
                    isotropy_measures):
        with pytest.raises(InputError, match=message):
            measure(x)


def test_bad_parameters_raise():
    x = gaussian(5, 3)
    with pytest.raises(InputError, match="k must be"):
        top_pc_variance(x, 0)
    with pytest.raises(InputError, match="n_pairs"):
        average_cosine(x, n_pairs=0)
    with pytest.raises(InputError, match="2 dimensions"):
        isoscore(gaussian(5, 1))


# ---------------------------------------------------------------------------- the study
N_PART = 12
ID_WORDS = ["film", "movie", "plot", "story", "actor", "scene", "great", "bad", "boring", "fun"]
OOD_WORDS = ["i", "you", "we", "it", "and", "that", "very", "really", "not", "long"]


def _texts(words: list[str], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=int(rng.integers(3, 8)))) + f" {w}"
            for w, _ in zip(itertools.cycle(words), range(n), strict=False)]


CORPORA = {
    "reviews": Corpus("reviews", lambda: TextSet(
        "reviews", _texts(ID_WORDS, 40, 0), np.arange(40) % 2, ("bad", "good")),
        "synthetic reviews", {"bad": "bad", "good": "great"}),
    "chat": Corpus("chat", lambda: TextSet("chat", _texts(OOD_WORDS, 30, 1)), "synthetic chat"),
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A tiny causal Llama and a tiny BERT saved as local model directories."""
    dirs = {}
    for kind, name in (("llama-lm", "tiny-llama"), ("bert", "tiny-bert")):
        path = tmp_path_factory.mktemp(name)
        make_model(kind).save_pretrained(path)
        make_tokenizer(kind, "right").save_pretrained(path)
        dirs[kind] = str(path)
    return dirs


def _config(model_dirs, **kwargs) -> study.IsotropyConfig:
    base = {
        "models": (study.ModelChoice(model_dirs["llama-lm"]),
                   study.ModelChoice(model_dirs["bert"])),
        "id_corpus": "reviews", "ood_corpus": "chat", "n_bank": N_PART, "n_test": N_PART,
        "n_ood": N_PART, "cache": False, "progress": False, "threads": 1,
    }
    base.update(kwargs)
    return study.IsotropyConfig(**base)


@pytest.fixture(scope="module")
def result(model_dirs):
    return study.run_study(_config(model_dirs), corpora=CORPORA)


def test_defaults_follow_the_model():
    from ood_zoo.bench.suites import PAPER_TEMPLATE

    smol = study.resolve_model(study.ModelChoice("smollm2-135m"))
    assert (smol.pooling, smol.template, smol.kind) == ("last", PAPER_TEMPLATE, "decoder")
    minilm = study.resolve_model(study.ModelChoice("minilm"))
    assert (minilm.pooling, minilm.template) == ("mean", None)
    forced = study.resolve_model(study.ModelChoice("smollm2-135m", pooling="mean", template=""))
    assert (forced.pooling, forced.template) == ("mean", None)
    with pytest.raises(InputError, match="unknown model"):
        study.resolve_model(study.ModelChoice("no-such-model"))
    with pytest.raises(InputError, match="unknown pooling"):
        study.resolve_model(study.ModelChoice("minilm", pooling="max"))


def test_draw_is_disjoint_stratified_and_seeded(model_dirs):
    texts = study._draw_texts(_config(model_dirs), CORPORA)
    assert len(texts.id_texts) == 2 * N_PART
    assert len(set(texts.id_texts)) == len(texts.id_texts)
    assert np.bincount(texts.bank_labels).tolist() == [N_PART // 2, N_PART // 2]
    assert len(texts.ood_texts) == N_PART
    other = study._draw_texts(_config(model_dirs, seed=1), CORPORA)
    assert other.id_texts != texts.id_texts
    big = study._draw_texts(_config(model_dirs, n_bank=30, n_test=30, n_ood=99), CORPORA)
    assert (big.n_bank, len(big.id_texts), len(big.ood_texts)) == (20, 40, 30)


def test_rows_cover_every_model_and_layer(result, model_dirs):
    layers = N_LAYERS + 1
    assert [(r["model"], r["layer"]) for r in result.rows] == [
        (m, layer) for m in (model_dirs["llama-lm"], model_dirs["bert"]) for layer in range(layers)
    ]
    assert [m["pooling"] for m in result.meta["models"]] == ["last", "mean"]
    for row in result.rows:
        assert row["depth"] == pytest.approx(row["layer"] / (layers - 1))
        assert (row["n"], row["dim"]) == (N_PART, 32)
        for label in study.DETECTORS:
            value = row[f"auroc_{label}"]
            assert value is None or 0.0 <= value <= 1.0


def test_embedding_layer_at_the_templates_last_token_is_degenerate(result, model_dirs):
    """The paper's template ends every prompt with the same token: layer 0 rows are identical."""
    row = next(r for r in result.rows if r["model"] == model_dirs["llama-lm"] and r["layer"] == 0)
    assert row["average_cosine"] == pytest.approx(1.0)
    assert math.isnan(row["isoscore"])
    assert "identical" in row["note"]
    assert row["auroc_cosine"] == pytest.approx(0.5)


@pytest.mark.parametrize("which", ["llama-lm", "bert"])
def test_rows_match_an_independent_recomputation(result, model_dirs, which):
    texts = study._draw_texts(_config(model_dirs), CORPORA)
    model = model_dirs[which]
    spec = study.resolve_model(study.ModelChoice(model))
    kwargs = {"layers": "all", "pooling": spec.pooling, "template": spec.template,
              "max_length": 128, "progress": False}
    ids = extract(texts.id_texts, model, **kwargs).double().numpy()
    ood = extract(texts.ood_texts, model, **kwargs).double().numpy()
    layer = ids.shape[1] - 1
    bank, test, out = ids[:N_PART, layer], ids[N_PART:, layer], ood[:, layer]
    row = next(r for r in result.rows if r["model"] == model and r["layer"] == layer)

    def auroc(id_scores, ood_scores):
        return np.mean([(a > b) + 0.5 * (a == b) for a in id_scores for b in ood_scores])

    def cosine(q):
        return max(float(q @ b) / (np.linalg.norm(q) * np.linalg.norm(b)) for b in bank)

    def euclid(q):
        return -min(float(np.linalg.norm(q - b)) for b in bank)

    assert row["average_cosine"] == pytest.approx(ref_average_cosine(bank), abs=1e-6)
    assert row["isoscore"] == pytest.approx(ref_isoscore(bank), abs=1e-6)
    assert row["top1_variance"] == pytest.approx(ref_top_pc_variance(bank, 1), abs=1e-6)
    cos_auroc = auroc([cosine(q) for q in test], [cosine(q) for q in out])
    l2_auroc = auroc([euclid(q) for q in test], [euclid(q) for q in out])
    assert row["auroc_cosine"] == pytest.approx(cos_auroc, abs=1e-9)
    assert row["auroc_euclidean"] == pytest.approx(l2_auroc, abs=1e-9)
    assert row["gap_cos_euclid"] == pytest.approx(cos_auroc - l2_auroc, abs=1e-9)
    assert row["gap_cos_maha"] == pytest.approx(cos_auroc - row["auroc_mahalanobis"], abs=1e-12)


def test_layer_row_euclidean_is_on_raw_vectors():
    """ID on a ray, OOD just off it: cosine separates perfectly, raw Euclidean inverts."""
    e1, e2 = torch.eye(3)[0], torch.eye(3)[1]
    r = torch.arange(1.0, 11.0)[:, None]
    bank, test, ood = r * e1, (r + 0.5) * e1, r * e1 + 0.1 * e2
    row = study.layer_row(bank, np.arange(10) % 2, test, ood)
    assert row["auroc_cosine"] == pytest.approx(1.0)
    assert row["auroc_euclidean"] == pytest.approx(0.0)
    assert row["gap_cos_euclid"] == pytest.approx(1.0)
    assert row["isoscore"] == pytest.approx(0.0, abs=1e-12)
    assert row["average_cosine"] == pytest.approx(1.0)


def test_correlations_by_hand():
    rows = [{"model": m, "layer": i, "average_cosine": a, "log_partition_isotropy": -a,
             "isoscore": math.nan if i == 0 else b, "top1_variance": a, "top10_variance": 1.0,
             "gap_cos_euclid": g, "gap_cos_maha": None if i == 3 else g}
            for m, i, a, b, g in [("x", 0, 0.1, 0.5, 0.3), ("x", 1, 0.2, 0.4, 0.1),
                                  ("x", 2, 0.3, 0.3, 0.2), ("x", 3, 0.4, 0.1, 0.0)]]
    table = {(c["scope"], c["measure"], c["gap"]): c for c in study.correlations(rows)}
    assert len(table) == 2 * len(study.CORRELATED) * len(study.GAPS)
    # ranks of average_cosine 1,2,3,4 vs gaps 4,2,3,1: rho = 1 - 6 * (9 + 0 + 0 + 9) / 60
    assert table[("all", "average_cosine", "gap_cos_euclid")]["rho"] == pytest.approx(-0.8)
    assert table[("all", "log_partition_isotropy", "gap_cos_euclid")]["rho"] == pytest.approx(0.8)
    assert table[("all", "isoscore", "gap_cos_euclid")]["n"] == 3  # nan left out
    assert table[("all", "average_cosine", "gap_cos_maha")]["n"] == 3  # None left out
    assert table[("x", "top10_variance", "gap_cos_euclid")]["rho"] is None  # constant
    assert table[("x", "average_cosine", "gap_cos_euclid")]["more_isotropic"] == "lower"


def test_outputs_written(result, tmp_path):
    pytest.importorskip("matplotlib")
    written = study.write_outputs(result, tmp_path)
    payload = json.loads((tmp_path / "isotropy.json").read_text())
    assert (payload["format"], payload["format_version"]) == ("ood_zoo.isotropy", 1)
    assert {"config", "rows", "correlations", "versions", "machine", "plots"} <= payload.keys()
    assert payload["plots"]["files"] == ["plots/isotropy_layers.png", "plots/isotropy_vs_gap.png"]
    assert all((tmp_path / f).read_bytes()[:4] == b"\x89PNG" for f in payload["plots"]["files"])
    assert len(payload["rows"]) == len(result.rows)
    assert set(study.ROW_COLUMNS) <= payload["rows"][0].keys()
    assert payload["rows"][0]["isoscore"] is None  # nan is written as null
    with (tmp_path / "isotropy.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(result.rows)
    md = (tmp_path / "isotropy.md").read_text()
    assert "## Final layer" in md
    assert "## Every layer" in md
    assert len(written["files"]) == 5


def test_outputs_without_matplotlib(result, tmp_path, monkeypatch, capsys):
    def missing():
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(plots_module, "_figure_module", missing)
    written = study.write_outputs(result, tmp_path)
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert "skipped" in written["plots"]
    assert not (tmp_path / "plots").exists()
    assert "matplotlib" in json.loads((tmp_path / "isotropy.json").read_text())["plots"]["skipped"]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    study.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_end_to_end(model_dirs, tmp_path, monkeypatch, capsys):
    class FakeSuite:
        corpora = CORPORA

    monkeypatch.setattr(suites_module, "get_suite", lambda name: FakeSuite)
    llama, bert = model_dirs["llama-lm"], model_dirs["bert"]
    out = tmp_path / "out"
    args = _parse(["--models", f"{llama},{bert}", "--id", "reviews", "--ood", "chat",
                   "--n-bank", "8", "--n-test", "8", "--n-ood", "8", "--pooling", f"{bert}=first",
                   "--template", f"{llama}=review : {{text}} sentiment :", "--no-cache",
                   "--no-plots", "--quiet", "--threads", "1", "--out", str(out)])
    assert study.run_cli(args) == 0
    stdout = capsys.readouterr().out
    assert "final layer" in stdout
    assert "Spearman" in stdout
    payload = json.loads((out / "isotropy.json").read_text())
    models = {m["name"]: m for m in payload["models"]}
    assert models[bert]["pooling"] == "first"
    assert models[llama]["template"] == "review : {text} sentiment :"
    assert payload["plots"] == {"skipped": "disabled"}
    assert payload["config"]["n_bank"] == 8


@pytest.mark.parametrize(
    ("argv", "error", "message"),
    [
        (["--models", "no-such-model"], CommandError, "unknown model"),
        (["--models", " , "], CommandError, "--models is empty"),
        (["--id", "nope"], CommandError, "--id: unknown corpus 'nope'"),
        (["--id", "rt", "--ood", "rt"], InputError, "must differ"),
        (["--pooling", "last", "--pooling", "mean"], CommandError, "given twice"),
        (["--pooling", "max"], CommandError, "unknown pooling"),
        (["--template", "no field"], InputError, "{text}"),
        (["--n-bank", "1"], InputError, "n_bank must be >= 2"),
    ],
)
def test_cli_usage_errors_before_any_work(argv, error, message, monkeypatch):
    def no_run(*args, **kwargs):
        raise AssertionError("a usage error must stop before any model runs")

    monkeypatch.setattr(study, "run_study", no_run)
    with pytest.raises(error, match=message.replace("(", r"\(")):
        study.run_cli(_parse(argv))
