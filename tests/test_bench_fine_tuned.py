"""The fine-tuned suite end to end on a tiny saved Llama and synthetic corpora (no downloads)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_finetune import make_model, make_tokenizer

from ood_zoo import metrics
from ood_zoo.bench.fine_tuned import (
    CPU_RECIPE,
    FineTunedBenchConfig,
    comparison,
    render_fine_tuned,
    run_fine_tuned,
    write_fine_tuned_outputs,
)
from ood_zoo.bench.suites import Corpus, Setting, Suite
from ood_zoo.cli import main
from ood_zoo.data.textset import TextSet
from ood_zoo.features import extract
from ood_zoo.finetune import load_fine_tuned

TEMPLATE = "input : {text} output :"
#: Detectors that work on the tiny banks here (knn, lof and gmm need more fit samples).
DETECTORS = ("cosine", "mahalanobis", "msp", "energy", "maxlogit", "msp_vocab", "perplexity",
             "renyi", "fisher_rao", "self_certainty", "likelihood_ratio", "vim", "fdbd", "nci")
ADJECTIVES = {"positive": "great", "negative": "bad", "neutral": "very"}


def toy_reviews() -> TextSet:
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for label, word in enumerate(ADJECTIVES.values()):
        for i in range(14):
            filler = rng.choice(["the film was", "the plot was", "really", "the film"], 1)[0]
            texts.append(f"{filler} {word}" + " really" * (i % 3))
            labels.append(label)
    return TextSet("toy", texts, np.array(labels), tuple(ADJECTIVES))


def toy_other() -> TextSet:
    return TextSet("other", [f"input output {'plot ' * (i % 4)}:" for i in range(12)])


SUITE = Suite(
    name="fine-tuned",
    description="toy",
    corpora={
        "toy": Corpus("toy", toy_reviews, "toy reviews", {k: k for k in ADJECTIVES}),
        "other": Corpus("other", toy_other, "toy OOD"),
    },
    settings=(Setting("near", "toy", "toy", holdout=1), Setting("far", "toy", "other")),
    template=TEMPLATE,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("tiny-llama")
    make_model().save_pretrained(directory)
    make_tokenizer().save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def result(model_dir, tmp_path_factory):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    adapters = tmp_path_factory.mktemp("adapters")
    config = FineTunedBenchConfig(
        model=model_dir, datasets=None, shots=("full", 2), seeds=(1, 2),
        part_sizes={"train": 15, "validation": 12, "test": 12},
        train=replace(CPU_RECIPE, learning_rate=3e-2, max_epochs=3, min_epochs=0, patience=3,
                      batch_size=4, max_new_tokens=3, max_length=32, progress=False),
        detectors=DETECTORS, cache=False, progress=False, threads=1,
    )
    try:
        yield run_fine_tuned(config, suite=SUITE, adapters_dir=adapters), config
    finally:
        torch.set_num_threads(previous)


def test_every_variant_setting_seed_and_shot_is_measured(result):
    res, _config = result
    combos = {(r["setting"], r["variant"], r["shots"], r["seed"]) for r in res.rows}
    want = {(s, v, k, seed) for s in ("near:toy>toy-holdout1", "far:toy>other")
            for v in ("zero-grad", "generative", "discriminative") for k in ("full", "2")
            for seed in (1, 2)}
    assert combos == want
    by_variant: dict[str, set[str]] = {}
    for row in res.rows:
        by_variant.setdefault(row["variant"], set()).add(row["detector"])
    for detectors in by_variant.values():
        assert {"cosine", "mahalanobis", "msp", "energy", "maxlogit", "perplexity", "renyi",
                "fisher_rao", "self_certainty"} <= detectors
        assert detectors <= set(DETECTORS)
    assert "likelihood_ratio" not in by_variant["zero-grad"]
    assert "likelihood_ratio" in by_variant["generative"]
    assert "msp_vocab" in by_variant["generative"]
    assert "msp_vocab" not in by_variant["discriminative"]
    failed = [r for r in res.rows if r["error"]]
    assert not failed, [(r["detector"], r["variant"], r["shots"], r["error"]) for r in failed][:6]
    aggregated = {(r["setting"], r["variant"], r["shots"], r["detector"]): r for r in res.table}
    assert all(r["n_seeds"] == 2 for r in aggregated.values())


def test_few_shot_keeps_k_per_class_of_train_and_bank(result):
    res, _ = result
    for record in res.training:
        n_classes = 2 if "holdout" in record["setting"] else 3
        if record["shots"] == "2":
            assert record["n_train"] == 2 * n_classes
            assert record["n_dev"] == 2 * n_classes
    for row in res.rows:
        if row["shots"] == "2":
            assert row["n_bank"] == 2 * len(row["id_classes"].split(","))


def test_fine_tuned_rows_carry_test_accuracy_and_adapters_reload(result, model_dir):
    res, _ = result
    assert len(res.training) == 2 * 2 * 2 * 2  # ID tasks × seeds × shots × objectives
    for record in res.training:
        assert 0.0 <= record["test_accuracy"] <= 1.0
        assert 1 <= record["best_epoch"] <= len(record["history"])
        assert Path(record["adapter"]).is_dir()
    record = res.training[0]
    from ood_zoo.features import load_model

    lm, tokenizer = load_model(model_dir)
    loaded = load_fine_tuned(record["adapter"], lm, tokenizer)
    assert loaded.best_epoch == record["best_epoch"]
    for row in res.rows:
        if row["variant"] != "zero-grad":
            assert row["id_accuracy"] is not None


def test_zero_grad_cosine_matches_an_independent_computation(result, model_dir):
    """Recompute the zero-grad cosine AUROC of the far setting (seed 1, full) from scratch:
    features of the base model, float64 max cosine to the bank."""
    from ood_zoo.bench.pools import draw_pools, tasks
    from ood_zoo.data import split_pool

    res, config = result
    pools, _ = draw_pools(SUITE, config.pool_sizes)
    task = next(t for t in tasks(SUITE, pools, 1, "validation") if t.holdout == 0)
    assert split_pool  # the suite's splits come from split_pool (same seed, same parts)
    from ood_zoo.features import load_model

    lm, tokenizer = load_model(model_dir)

    def feats(key, idx):
        texts = [pools[key].texts[i] for i in idx]
        return extract(texts, lm, tokenizer, layers=-1, pooling="last", template=TEMPLATE,
                       max_length=32, progress=False).features.double().numpy()

    def cosine(x, bank):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
        return (x @ bank.T).max(axis=1)

    bank = feats("toy", task.bank_idx)
    ood = task.oods[0]
    want = metrics.auroc(cosine(feats("toy", task.test_idx), bank),
                         cosine(feats(ood.pool, ood.idx), bank))
    got = next(r for r in res.rows if r["variant"] == "zero-grad" and r["seed"] == 1
               and r["shots"] == "full" and r["detector"] == "cosine"
               and r["setting"] == "far:toy>other")
    assert got["auroc"] == pytest.approx(want, abs=1e-9)


def test_outputs_and_report(result, tmp_path):
    res, _ = result
    written = write_fine_tuned_outputs(res, tmp_path)
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["format"] == "ood_zoo.bench"
    assert payload["settings"]["config"]["suite"] == "fine-tuned"
    assert {r["variant"] for r in payload["table"]} == {"zero-grad", "generative",
                                                        "discriminative"}
    assert len(payload["training"]) == len(res.training)
    md, txt = render_fine_tuned(res)
    assert payload["convention"] == {"positive": "id", "note": metrics.convention("id")}
    assert metrics.convention("id") in md
    assert metrics.convention("id") in txt
    assert "Zero-grad vs fine-tuned" in md
    assert "generative_auroc" in md
    side = comparison(res.table)
    assert all("zero-grad_auroc" in row for row in side)
    assert any(f.endswith("training.png") for f in written["files"])
    from ood_zoo.bench.report import build_report

    paths = build_report(tmp_path)
    html = Path(paths.html).read_text()
    assert "generative" in html
    assert "discriminative" in html


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shots", "full,ten"], "--shots"),
        (["--objectives", "contrastive"], "objectives"),
        (["--seeds", "1,1"], "distinct"),
    ],
)
def test_cli_rejects_bad_options(model_dir, capsys, argv, message):
    code = main(["bench", "--suite", "fine-tuned", "--model", model_dir, "--quiet", *argv])
    assert code == 2
    assert message in capsys.readouterr().err
