"""The zero-grad configurations of ``--config auto``: ID-only selection and the peeking oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ood_zoo
from ood_zoo import metrics
from ood_zoo.bench.selection import (
    ORACLE,
    Configuration,
    auto_configuration,
    candidate_configurations,
    class_holdout_auroc,
    oracle_rows,
    select_by_class_holdout,
)

torch.set_num_threads(1)


def layered_bank(seed: int = 0, n_per_class: int = 20, d: int = 8):
    """Three layers: 0 noise, 1 classes far apart, 2 classes slightly apart."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n_per_class)
    centres = rng.normal(size=(2, d))
    layers = [rng.normal(size=(labels.size, d)),
              centres[labels] * 6 + rng.normal(size=(labels.size, d)),
              centres[labels] * 0.5 + rng.normal(size=(labels.size, d))]
    return torch.tensor(np.stack(layers, axis=1), dtype=torch.float32), labels


def test_auto_reads_every_block_output_but_not_the_embeddings():
    config = auto_configuration(31)
    assert config.detector == "layers"
    assert config.layers == tuple(range(1, 31))
    assert config.params == {"detector": "cosine", "combine": "fisher"}
    assert auto_configuration(1).layers == (0,)
    labels = [c.label for c in candidate_configurations(4)]
    assert labels == ["layers:fisher", "layers:mean", "cosine@L1", "cosine@L2", "cosine@L3"]


def test_configuration_features_slice_one_or_several_layers():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    assert torch.equal(Configuration("a", "cosine", (2,)).features(x), x[:, 2])
    assert torch.equal(Configuration("b", "layers", (0, 2)).features(x), x[:, [0, 2]])


def reference_class_holdout(x: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """The same protocol with a float64 numpy 1-NN cosine, written independently."""
    def cosine_scores(bank, queries):
        b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        return (q @ b.T).max(axis=1)

    rng = np.random.default_rng(seed)
    values = []
    for c in np.unique(labels):
        rest = rng.permutation(np.flatnonzero(labels != c))
        a, b = rest[: rest.size // 2], rest[rest.size // 2:]
        for fit, held in ((a, b), (b, a)):
            values.append(metrics.auroc(cosine_scores(x[fit], x[held]),
                                        cosine_scores(x[fit], x[labels == c])))
    return float(np.mean(values))


def test_class_holdout_auroc_matches_an_independent_reference():
    x, labels = layered_bank()
    registry = ood_zoo.get_registry()
    for layer in range(3):
        got = class_holdout_auroc(Configuration("c", "cosine", (layer,)), x, labels, registry,
                                  seed=3)
        want = reference_class_holdout(x[:, layer].double().numpy(), labels, seed=3)
        assert got == pytest.approx(want, abs=1e-12)


def test_selection_prefers_the_layer_that_separates_the_classes():
    x, labels = layered_bank()
    candidates = [Configuration(f"cosine@L{i}", "cosine", (i,)) for i in range(3)]
    chosen, values = select_by_class_holdout(candidates, x, labels, ood_zoo.get_registry())
    assert chosen.label == "cosine@L1"
    assert values["cosine@L1"] > 0.95 > values["cosine@L0"]


def test_selection_without_two_classes_keeps_the_first_candidate():
    x, labels = layered_bank()
    one_class = np.zeros_like(labels)
    candidates = [Configuration("first", "cosine", (0,)), Configuration("second", "cosine", (1,))]
    chosen, values = select_by_class_holdout(candidates, x, one_class, ood_zoo.get_registry())
    assert chosen.label == "first"
    assert values == {"first": None, "second": None}


def test_oracle_takes_each_settings_best_cosine_layer():
    sweep = [
        {"setting": "a", "detector": "cosine", "layer": 1, "auroc": 0.7},
        {"setting": "a", "detector": "cosine", "layer": 2, "auroc": 0.9},
        {"setting": "a", "detector": "mahalanobis", "layer": 3, "auroc": 0.99},
        {"setting": "b", "detector": "cosine", "layer": 1, "auroc": None},
        {"setting": "b", "detector": "cosine", "layer": 4, "auroc": 0.6},
    ]
    rows = {r["setting"]: r for r in oracle_rows(sweep)}
    assert rows["a"]["auroc"] == 0.9
    assert rows["a"]["chosen"] == "cosine@L2"
    assert rows["b"]["auroc"] == 0.6
    assert rows["b"]["detector"] == ORACLE
