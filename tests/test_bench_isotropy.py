"""The isotropy suite (``ood-zoo isotropy``) end to end on tiny random Llama/BERT models and
synthetic corpora (no downloads)."""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from test_analysis import ref_average_cosine, ref_isoscore, ref_top_pc_variance
from test_features import N_LAYERS, make_model, make_tokenizer

from ood_zoo import metrics
from ood_zoo.bench import isotropy
from ood_zoo.bench import suites as suites_module
from ood_zoo.bench.suites import Corpus
from ood_zoo.cli import CommandError, build_parser
from ood_zoo.data import TextSet
from ood_zoo.errors import InputError
from ood_zoo.features import PAPER_TEMPLATE, extract

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


def _config(model_dirs, **kwargs) -> isotropy.IsotropyConfig:
    base = {
        "models": (isotropy.ModelChoice(model_dirs["llama-lm"]),
                   isotropy.ModelChoice(model_dirs["bert"])),
        "id_corpus": "reviews", "ood_corpus": "chat", "n_bank": N_PART, "n_test": N_PART,
        "n_ood": N_PART, "cache": False, "progress": False, "threads": 1,
    }
    base.update(kwargs)
    return isotropy.IsotropyConfig(**base)


@pytest.fixture(scope="module")
def result(model_dirs):
    return isotropy.run_study(_config(model_dirs), corpora=CORPORA)


def test_defaults_follow_the_model():
    smol = isotropy.resolve_model(isotropy.ModelChoice("smollm2-135m"))
    assert (smol.pooling, smol.template, smol.kind) == ("last", PAPER_TEMPLATE, "decoder")
    minilm = isotropy.resolve_model(isotropy.ModelChoice("minilm"))
    assert (minilm.pooling, minilm.template) == ("mean", None)
    forced = isotropy.resolve_model(
        isotropy.ModelChoice("smollm2-135m", pooling="mean", template=""))
    assert (forced.pooling, forced.template) == ("mean", None)
    with pytest.raises(InputError, match="unknown model"):
        isotropy.resolve_model(isotropy.ModelChoice("no-such-model"))
    with pytest.raises(InputError, match="unknown pooling"):
        isotropy.resolve_model(isotropy.ModelChoice("minilm", pooling="max"))


def test_draw_is_disjoint_stratified_and_seeded(model_dirs):
    texts = isotropy.draw_texts(_config(model_dirs), CORPORA)
    assert len(texts.id_texts) == 2 * N_PART
    assert len(set(texts.id_texts)) == len(texts.id_texts)
    assert np.bincount(texts.bank_labels).tolist() == [N_PART // 2, N_PART // 2]
    assert len(texts.ood_texts) == N_PART
    other = isotropy.draw_texts(_config(model_dirs, seed=1), CORPORA)
    assert other.id_texts != texts.id_texts
    big = isotropy.draw_texts(_config(model_dirs, n_bank=30, n_test=30, n_ood=99), CORPORA)
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
        for label in isotropy.DETECTORS:
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
    texts = isotropy.draw_texts(_config(model_dirs), CORPORA)
    model = model_dirs[which]
    spec = isotropy.resolve_model(isotropy.ModelChoice(model))
    kwargs = {"layers": "all", "pooling": spec.pooling, "template": spec.template,
              "max_length": 128, "progress": False}
    ids = extract(texts.id_texts, model, **kwargs).features.double().numpy()
    ood = extract(texts.ood_texts, model, **kwargs).features.double().numpy()
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
    row = isotropy.layer_row(bank, np.arange(10) % 2, test, ood)
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
    table = {(c["scope"], c["measure"], c["gap"]): c for c in isotropy.correlations(rows)}
    assert len(table) == 2 * len(isotropy.CORRELATED) * len(isotropy.GAPS)
    # ranks of average_cosine 1,2,3,4 vs gaps 4,2,3,1: rho = 1 - 6 * (9 + 0 + 0 + 9) / 60
    assert table[("all", "average_cosine", "gap_cos_euclid")]["rho"] == pytest.approx(-0.8)
    assert table[("all", "log_partition_isotropy", "gap_cos_euclid")]["rho"] == pytest.approx(0.8)
    assert table[("all", "isoscore", "gap_cos_euclid")]["n"] == 3  # nan left out
    assert table[("all", "average_cosine", "gap_cos_maha")]["n"] == 3  # None left out
    assert table[("x", "top10_variance", "gap_cos_euclid")]["rho"] is None  # constant
    assert table[("x", "average_cosine", "gap_cos_euclid")]["more_isotropic"] == "lower"


def test_outputs_written(result, tmp_path):
    pytest.importorskip("matplotlib")
    written = isotropy.write_outputs(result, tmp_path)
    payload = json.loads((tmp_path / "isotropy.json").read_text())
    assert (payload["format"], payload["format_version"]) == ("ood_zoo.isotropy", 1)
    assert {"config", "rows", "correlations", "versions", "machine", "plots"} <= payload.keys()
    assert payload["plots"]["files"] == ["plots/isotropy_layers.png", "plots/isotropy_vs_gap.png"]
    assert all((tmp_path / f).read_bytes()[:4] == b"\x89PNG" for f in payload["plots"]["files"])
    assert len(payload["rows"]) == len(result.rows)
    assert set(isotropy.ROW_COLUMNS) <= payload["rows"][0].keys()
    assert payload["rows"][0]["isoscore"] is None  # nan is written as null
    with (tmp_path / "isotropy.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(result.rows)
    md = (tmp_path / "isotropy.md").read_text()
    assert "## Final layer" in md
    assert "## Every layer" in md
    assert metrics.convention("id") in md
    assert payload["convention"] == {"positive": "id", "note": metrics.convention("id")}
    assert len(written["files"]) == 5


def test_outputs_without_matplotlib(result, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # the import fails
    written = isotropy.write_outputs(result, tmp_path)
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert "skipped" in written["plots"]
    assert not (tmp_path / "plots").exists()
    assert "matplotlib" in json.loads((tmp_path / "isotropy.json").read_text())["plots"]["skipped"]


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["isotropy", *argv])


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
    assert args.func(args) == 0
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

    monkeypatch.setattr(isotropy, "run_study", no_run)
    args = _parse(argv)
    with pytest.raises(error, match=message.replace("(", r"\(")):
        args.func(args)
