"""The zero-grad benchmark: suites, splits, aggregation, outputs (synthetic features, fast)."""

from __future__ import annotations

import csv
import json
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from ood_zoo import metrics
from ood_zoo.bench import fit_probe, probe_head, probe_logits
from ood_zoo.bench import plots as plots_module
from ood_zoo.bench import suites as suites_module
from ood_zoo.bench.pools import draw_pools, tasks
from ood_zoo.bench.selection import AUTO, AUTO_CV, ORACLE, candidate_configurations
from ood_zoo.bench.suites import ZERO_GRAD, Corpus, Setting, Suite
from ood_zoo.bench.tables import aggregate
from ood_zoo.bench.zero_grad import BenchConfig, run_bench, write_outputs
from ood_zoo.data import TextSet, choose_id_classes, split_pool
from ood_zoo.features import Extraction

# ---------------------------------------------------------------------------- synthetic suite
N_LAYERS, DIM = 3, 12
WORDS = ("neg", "pos", "alpha", "beta", "gamma")


def _labelled(name: str, n: int, classes: tuple[str, ...]) -> TextSet:
    labels = np.arange(n) % len(classes)
    return TextSet(name, [f"{name} {i}" for i in range(n)], labels.astype(np.int64), classes)


def tiny_suite() -> Suite:
    corpora = {
        "sent": Corpus("sent", lambda: _labelled("sent", 90, ("bad", "good")), "two classes",
                       {"bad": "neg", "good": "pos"}),
        "topic": Corpus("topic", lambda: _labelled("topic", 90, ("a", "b", "c")), "three classes",
                        {"a": "alpha", "b": "beta", "c": "gamma"}),
        "far": Corpus("far", lambda: TextSet("far", [f"far {i}" for i in range(50)]), "far"),
        "broken": Corpus("broken", _raise, "a corpus whose package is missing"),
    }
    settings = (
        Setting("far", "sent", "far"),
        Setting("far", "sent", "topic"),
        Setting("near", "topic", "topic", holdout=1),
        Setting("far", "topic", "broken"),
    )
    return Suite("tiny", "synthetic", corpora, settings)


def _raise() -> TextSet:
    raise ModuleNotFoundError("no module named 'missing_corpus'")


def synthetic_extractor(calls: list[str] | None = None):
    """Layer 0 is pure noise, layer 2 separates corpora (and topic classes) clearly."""

    def extract(key: str, texts):
        if calls is not None:
            calls.append(key)
        n = len(texts)
        x = np.zeros((n, N_LAYERS, DIM))
        for i, text in enumerate(texts):
            rng = np.random.default_rng(zlib.crc32(text.encode()))
            x[i] = rng.normal(scale=1.0, size=(N_LAYERS, DIM))
            corpus, number = text.split()
            slot = {"sent": 0, "topic": 3, "far": 8}[corpus]
            if corpus == "topic":
                slot += int(number) % 3  # one direction per topic class
            x[i, 2, slot] += 6.0
            x[i, 1, slot] += 1.0
        label = np.random.default_rng(1).normal(size=(n, len(WORDS)))
        return Extraction(torch.tensor(x, dtype=torch.float32), tuple(range(N_LAYERS)), N_LAYERS,
                          torch.tensor(label, dtype=torch.float32), torch.full((n,), 7.0),
                          tuple(range(len(WORDS))), WORDS)

    return extract


def config(**kwargs) -> BenchConfig:
    base = {"suite": "tiny", "model": "synthetic", "seeds": (1, 2, 3), "max_per_split": 20,
            "progress": False, "detectors": ("cosine", "mahalanobis", "msp", "energy"),
            "sweep_detectors": ("cosine",)}
    base.update(kwargs)
    return BenchConfig(**base)


@pytest.fixture(scope="module")
def result():
    return run_bench(config(), extractor=synthetic_extractor(), suite=tiny_suite())


# ---------------------------------------------------------------------------- suite definition
def test_zero_grad_suite_has_the_papers_shape():
    names = [s.name for s in ZERO_GRAD.settings]
    assert "far:rt>chitchat" in names
    assert "far:bbc>chitchat" in names
    assert "near:bbc>bbc-holdout2" in names
    assert "near:tweets_airline>tweets" in names
    assert "near:rt>rt_plots" in names
    far = [s for s in ZERO_GRAD.settings if s.kind == "far"]
    assert {s.id_corpus for s in far} == {"rt", "bbc"}
    assert ZERO_GRAD.template == "### Input:\n{text}\n\n### Output:\n"
    assert ZERO_GRAD.corpora["rt"].label_words == {
        "rotten": "negative", "fresh": "positive",
        "negative": "negative", "neutral": "neutral", "positive": "positive"}


def test_get_suite_and_select_errors():
    with pytest.raises(ValueError, match="unknown suite 'nope'"):
        suites_module.get_suite("nope")
    with pytest.raises(ValueError, match="unknown dataset"):
        ZERO_GRAD.select(["rt", "imagenet"])
    only = ZERO_GRAD.select(["rt", "chitchat", "rt_plots"])
    assert [s.name for s in only.settings] == ["far:rt>chitchat", "near:rt>rt_plots"]


def test_setting_validation():
    with pytest.raises(ValueError, match="held-out"):
        Setting("near", "a", "a")
    with pytest.raises(ValueError, match="held-out"):
        Setting("near", "a", "b", holdout=1)
    assert Setting("near", "bbc", "bbc", holdout=2).name == "near:bbc>bbc-holdout2"


def held_out(names: tuple[str, ...], n_ood: int, seed: int):
    """The suites' draw of ID and held-out classes for one seed."""
    known = tuple(choose_id_classes(names, n_ood=n_ood, seed=seed))
    return known, tuple(n for n in names if n not in known)


def test_holdout_classes_uses_the_papers_rng_call():
    names = tuple(f"intent{i}" for i in range(15))
    known, held = held_out(names, 7, seed=1)
    expected = np.random.RandomState(1).choice(list(names), 8, replace=False)
    assert set(known) == set(expected.tolist())
    assert len(held) == 7
    assert not set(known) & set(held)
    assert set(known) | set(held) == set(names)
    assert held_out(names, 7, seed=2) != (known, held)
    with pytest.raises(ValueError, match="need 1 <= n_id"):
        held_out(("a", "b"), 2, seed=0)


def test_split_pool_is_disjoint_stratified_and_seeded():
    labels = np.repeat([0, 1, 2], [30, 20, 10])
    parts = split_pool(60, {"validation": 20, "test": 30}, seed=4, labels=labels)
    assert len(parts["validation"]) == 20
    assert len(parts["test"]) == 30
    assert not set(parts["validation"]) & set(parts["test"])
    assert np.bincount(labels[parts["test"]]).tolist() == [15, 10, 5]
    again = split_pool(60, {"validation": 20, "test": 30}, seed=4, labels=labels)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = split_pool(60, {"validation": 20, "test": 30}, seed=5, labels=labels)
    assert not np.array_equal(parts["test"], other["test"])
    shrunk = split_pool(10, {"validation": 20, "test": 20}, seed=0)
    assert len(shrunk["validation"]) == 5
    assert len(shrunk["test"]) == 5


# ---------------------------------------------------------------------------- aggregation
def test_aggregate_mean_and_sample_std_by_hand():
    rows = [
        {"setting": "s", "detector": "d", "seed": 1, "auroc": 0.8, "fpr95": 0.5, "aupr_in": 0.7},
        {"setting": "s", "detector": "d", "seed": 2, "auroc": 0.9, "fpr95": 0.3, "aupr_in": 0.9},
        {"setting": "s", "detector": "d", "seed": 3, "auroc": 0.7, "fpr95": 0.4, "aupr_in": 0.8},
        {"setting": "s", "detector": "d", "seed": 4, "auroc": None, "fpr95": None,
         "aupr_in": None, "error": "fit: boom"},
        {"setting": "s", "detector": "e", "seed": 1, "auroc": 0.6, "fpr95": 0.9, "aupr_in": 0.5},
    ]
    table = aggregate(rows)
    d = next(r for r in table if r["detector"] == "d")
    assert d["auroc"] == pytest.approx(0.8)
    # sample std of 0.8, 0.9, 0.7: sqrt(((0)^2 + 0.1^2 + 0.1^2) / 2) = 0.1
    assert d["auroc_std"] == pytest.approx(0.1)
    assert d["fpr95"] == pytest.approx(0.4)
    assert d["fpr95_std"] == pytest.approx(0.1)
    assert d["aupr_in_std"] == pytest.approx(0.1)
    assert d["n_seeds"] == 3
    assert d["n_errors"] == 1
    assert d["error"] == "fit: boom"
    assert d["auroc_pm"] == "0.800 ± 0.100"
    e = next(r for r in table if r["detector"] == "e")
    assert e["auroc_std"] == 0.0
    assert e["n_seeds"] == 1
    assert [r["detector"] for r in table] == ["d", "e"]  # best mean AUROC first


def test_aggregate_all_failed_group():
    table = aggregate([{"setting": "s", "detector": "x", "seed": 1, "auroc": None,
                        "fpr95": None, "aupr_in": None, "error": "score: nan"}])
    assert table[0]["auroc"] is None
    assert table[0]["auroc_pm"] == "-"


# ---------------------------------------------------------------------------- the run
def test_run_covers_settings_seeds_detectors(result):
    settings = {r["setting"] for r in result.rows}
    assert settings == {"far:sent>far", "far:sent>topic", "near:topic>topic-holdout1"}
    assert result.meta["settings"]["skipped_corpora"].keys() == {"broken"}
    assert "missing_corpus" in result.meta["settings"]["skipped_corpora"]["broken"]
    dets = {r["detector"] for r in result.rows}
    assert dets == {"cosine", "mahalanobis", "msp", "energy", "msp_vocab"}
    assert {r["seed"] for r in result.rows} == {1, 2, 3}
    assert len(result.rows) == 3 * 3 * 5
    assert not [r for r in result.rows if r["error"]]
    assert all(r["layer"] == N_LAYERS - 1 for r in result.rows)
    for key in ("settings", "versions", "machine", "timing_s"):
        assert key in result.meta
    assert result.meta["machine"]["cpu_count"] >= 1


def test_table_matches_per_seed_rows(result):
    for entry in result.table:
        values = [r["auroc"] for r in result.rows
                  if r["setting"] == entry["setting"] and r["detector"] == entry["detector"]]
        assert entry["auroc"] == pytest.approx(np.mean(values))
        assert entry["auroc_std"] == pytest.approx(np.std(values, ddof=1))


def test_far_ood_is_separated_at_the_informative_layer(result):
    cosine = {r["setting"]: r for r in result.table if r["detector"] == "cosine"}
    assert cosine["far:sent>far"]["auroc"] > 0.99
    sweep = {(r["setting"], r["layer"]): r["auroc"] for r in result.sweep_table}
    assert sweep[("far:sent>far", 2)] > 0.99
    assert sweep[("far:sent>far", 0)] < 0.8  # layer 0 is noise
    assert {r["layer"] for r in result.sweep_rows} == {0, 1, 2}
    assert {r["detector"] for r in result.sweep_rows} == {"cosine"}


def test_bank_is_the_validation_split_by_default():
    suite = tiny_suite().select(["sent", "far"])
    pools, _ = draw_pools(suite, config().pool_sizes)
    assert pools["sent"].sizes == {"validation": 20, "test": 20}
    for seed in (1, 2):
        (task,) = tasks(suite, pools, seed, "validation")
        parts = split_pool(len(pools["sent"].texts), pools["sent"].sizes, seed,
                           pools["sent"].labels)
        assert np.array_equal(task.bank_idx, parts["validation"])
        assert np.array_equal(task.test_idx, parts["test"])
        assert not set(task.bank_idx) & set(task.test_idx)
    train_pools, _ = draw_pools(suite, config(bank="train").pool_sizes)
    assert train_pools["sent"].sizes == {"train": 40, "test": 20}
    (task,) = tasks(suite, train_pools, 1, "train")
    assert len(task.bank_idx) == 40


def test_bank_option_changes_the_bank_size():
    suite = tiny_suite().select(["sent", "far"])
    val = run_bench(config(sweep_layers=None, seeds=(1,)), extractor=synthetic_extractor(),
                    suite=suite)
    train = run_bench(config(sweep_layers=None, seeds=(1,), bank="train"),
                      extractor=synthetic_extractor(), suite=suite)
    assert {r["n_bank"] for r in val.rows} == {20}
    assert {r["n_bank"] for r in train.rows} == {40}
    assert val.meta["settings"]["bank"] == "validation"
    assert train.meta["settings"]["bank"] == "train"


def test_held_out_classes_change_with_seed_and_are_disjoint(result):
    near = [r for r in result.rows
            if r["setting"] == "near:topic>topic-holdout1" and r["detector"] == "cosine"]
    assert len(near) == 3
    seen = set()
    for row in near:
        id_classes, ood_classes = row["id_classes"].split(","), row["ood_classes"].split(",")
        assert len(id_classes) == 2
        assert len(ood_classes) == 1
        assert set(id_classes) | set(ood_classes) == {"a", "b", "c"}
        expected = held_out(("a", "b", "c"), 1, row["seed"])
        assert (tuple(id_classes), tuple(ood_classes)) == expected
        seen.add(row["ood_classes"])
        assert row["n_ood"] < row["n_id"]  # one held-out class vs two ID classes
    # held-out topics get their own direction at layer 2: near-OOD is detectable
    table = {r["detector"]: r for r in result.table if r["setting"].startswith("near")}
    assert table["cosine"]["auroc"] > 0.9


def test_msp_vocab_is_the_papers_msp(result):
    # recompute seed 1 of far:sent>far by hand from the synthetic label logits
    extract = synthetic_extractor()
    suite = tiny_suite()
    pools, _ = draw_pools(suite, config().pool_sizes)
    extracted = {key: extract(key, pool.texts) for key, pool in pools.items()}
    task = next(t for t in tasks(suite, pools, 1, "validation") if t.id_corpus == "sent")
    ood = next(o for o in task.oods if o.setting.name == "far:sent>far")

    def paper_msp(ext, idx):
        z = ext.label_logits[torch.as_tensor(idx)][:, :2]  # neg, pos
        return torch.exp(z - ext.vocab_logsumexp[torch.as_tensor(idx), None]).max(dim=1).values

    expected = metrics.auroc(paper_msp(extracted["sent"], task.test_idx),
                             paper_msp(extracted["far"], ood.idx))
    row = next(r for r in result.rows if r["setting"] == "far:sent>far"
               and r["detector"] == "msp_vocab" and r["seed"] == 1)
    assert row["auroc"] == pytest.approx(expected)


def test_extraction_runs_once_per_corpus():
    calls: list[str] = []
    run_bench(config(seeds=(1, 2, 3, 4)), extractor=synthetic_extractor(calls),
              suite=tiny_suite())
    assert sorted(calls) == ["far", "sent", "topic"]


def test_unknown_detector_is_an_error_before_any_work():
    calls: list[str] = []
    with pytest.raises(ValueError, match="unknown main detector"):
        run_bench(config(detectors=("cosine", "nope")), extractor=synthetic_extractor(calls),
                  suite=tiny_suite())
    assert calls == []


def test_config_validation():
    with pytest.raises(ValueError, match="bank"):
        BenchConfig(bank="test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="distinct"):
        BenchConfig(seeds=(1, 1))
    with pytest.raises(ValueError, match="max_per_split"):
        BenchConfig(max_per_split=1)
    with pytest.raises(ValueError, match="template"):
        BenchConfig(template="no field")


# ---------------------------------------------------------------------------- outputs
def test_outputs_written(result, tmp_path):
    pytest.importorskip("matplotlib")
    status = write_outputs(result, tmp_path)
    for name in ("results.json", "results.csv", "layer_sweep.csv", "table.md", "table.txt"):
        assert (tmp_path / name).is_file(), name
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["format"] == "ood_zoo.bench"
    assert {"settings", "versions", "machine", "table", "rows", "layer_sweep"} <= payload.keys()
    assert len(payload["rows"]) == len(result.rows)
    with (tmp_path / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sum(r["row_type"] == "seed" for r in rows) == len(result.rows)
    assert sum(r["row_type"] == "aggregate" for r in rows) == len(result.table)
    # the metric convention: a JSON entry, a CSV column and the tables' header
    assert payload["convention"] == {"positive": "id", "note": metrics.convention("id")}
    assert {r["positive"] for r in rows} == {"id"}
    for name in ("table.md", "table.txt"):
        assert metrics.convention("id") in (tmp_path / name).read_text(), name
    table_md = (tmp_path / "table.md").read_text()
    assert "| AUROC |" in table_md
    assert "±" in table_md
    assert "Layer sweep" in table_md
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "layer_sweep.png" in pngs
    assert "layer_sweep_heatmap.png" in pngs
    assert "far_sent-far.png" in pngs
    assert all((tmp_path / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert len(status["plots"]["files"]) == len(pngs)


def test_outputs_without_matplotlib(result, tmp_path, monkeypatch, capsys):
    def missing():
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(plots_module, "figure_class", missing)
    status = write_outputs(result, tmp_path)
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert "skipped" in status["plots"]
    assert not (tmp_path / "plots").exists()
    payload = json.loads((tmp_path / "results.json").read_text())
    assert "matplotlib" in payload["plots"]["skipped"]
    assert (tmp_path / "table.txt").is_file()
    assert (tmp_path / "results.csv").is_file()


# ---------------------------------------------------------------------------- the linear head
def test_head_detectors_get_the_label_head_at_the_final_layer():
    plain = synthetic_extractor()
    weight = torch.from_numpy(np.random.default_rng(2).normal(size=(len(WORDS), DIM))).float()

    def with_head(key: str, texts):
        out = plain(key, texts)
        return replace(out, label_logits=out.layer(-1) @ weight.T,
                       label_head_weight=weight, label_head_bias=torch.zeros(len(WORDS)))

    names = ("vim", "fdbd", "nci", "msp")
    suite = tiny_suite().select(["sent", "far"])
    got = run_bench(config(detectors=names, seeds=(1,)), extractor=with_head, suite=suite)
    assert {r["detector"] for r in got.rows} >= set(names)
    assert not [r for r in got.rows if r["error"]]
    assert all(0 <= r["auroc"] <= 1 for r in got.rows)
    without = run_bench(config(detectors=names, seeds=(1,)), extractor=plain, suite=suite)
    errors = {r["detector"]: r["error"] for r in without.rows if r["error"]}
    assert errors.keys() == {"vim", "fdbd", "nci"}
    assert all("needs the linear head" in e for e in errors.values())


def test_probe_head_folds_the_scaler():
    rng = np.random.default_rng(3)
    for n_classes in (2, 3):
        x = torch.from_numpy(rng.normal(size=(60, 5)) * [1, 10, 0.1, 3, 1] + 4).float()
        labels = np.arange(60) % n_classes
        probe = fit_probe(x, labels)
        weight, bias = probe_head(probe)
        assert weight.shape == (n_classes, 5)
        torch.testing.assert_close(x @ weight.T + bias, probe_logits(probe, x),
                                   atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------- --config auto
def test_config_auto_runs_the_id_only_configurations_next_to_the_oracle(tmp_path):
    got = run_bench(config(selection="auto", seeds=(1, 2)), extractor=synthetic_extractor(),
                    suite=tiny_suite())
    by = {(r["setting"], r["detector"]): r for r in got.table}
    oracle = {r["setting"]: r for r in got.meta["settings"]["oracle"]}
    assert all(r["detector"] != ORACLE for r in got.table)  # it peeks: kept out of the table
    settings = {r["setting"] for r in got.table if r["detector"] == "cosine"}
    assert settings
    assert set(oracle) == settings
    for setting in settings:
        assert {(setting, name) for name in (AUTO, AUTO_CV)} <= set(by)
        best = max(r["auroc"] for r in got.sweep_table
                   if r["setting"] == setting and r["detector"] == "cosine")
        assert oracle[setting]["auroc"] == best
        assert oracle[setting]["detector"] == ORACLE
    assert by[("far:sent>far", AUTO)]["auroc"] > 0.95  # layer 2 separates the corpora
    choices = got.meta["settings"]["selection"]
    assert len(choices) == 2 * 2  # seeds × ID tasks (sent; topic with one class held out)
    labels = {c.label for c in candidate_configurations(N_LAYERS)}
    for choice in choices:
        assert choice["auto"] == "layers:fisher"
        assert choice["auto_cv"] in labels
        assert set(choice["class_holdout_auroc"]) == labels
    written = write_outputs(got, tmp_path)
    assert any(f.endswith("table.md") for f in written["files"])
    table = (tmp_path / "table.md").read_text()
    assert "## Configurations" in table
    assert "peeks" in table


def test_config_auto_never_sees_ood_data():
    """Changing only the OOD corpus's features leaves every ID-only choice as it was."""
    plain = synthetic_extractor()

    def shifted(key, texts):
        out = plain(key, texts)
        if key != "far":
            return out
        return replace(out, features=out.features * 3.0 + 1.0)

    runs = [run_bench(config(selection="auto", seeds=(1,)), extractor=extractor,
                      suite=tiny_suite()) for extractor in (plain, shifted)]
    first, second = (r.meta["settings"]["selection"] for r in runs)
    assert first == second


def test_config_auto_needs_every_hidden_state():
    plain = synthetic_extractor()

    def last_only(key, texts):
        out = plain(key, texts)
        return replace(out, features=out.features[:, -1], layers=(N_LAYERS - 1,))

    with pytest.raises(ValueError, match="every hidden state"):
        run_bench(config(selection="auto", sweep_layers=None, seeds=(1,)), extractor=last_only,
                  suite=tiny_suite())
    with pytest.raises(ValueError, match="selection"):
        config(selection="best")
