"""``BankDetector.fit_index``: the kNN detectors fitted on an external exact index.

The external index here is a small in-process one over shards (a top-k per shard with
``ops.knn``, merged), standing in for ``ood_zoo_ray.ShardedIndex``; the scores and thresholds
are checked against ``fit`` on the whole bank and against the float64 references.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ood_zoo import create, ops
from ood_zoo.api import threshold_rows
from ood_zoo.errors import InputError, PersistenceError

try:  # tests/ as a package, or on sys.path (pytest's default rootdir-relative import)
    from . import reference as ref
except ImportError:
    import reference as ref


class ShardListIndex:
    """Exact kNN over a list of shards: each shard searched by ``ops.knn``, the results merged."""

    def __init__(self, shards: list[np.ndarray], metric: str) -> None:
        self.shards = [torch.from_numpy(s) for s in shards]
        self.metric = metric
        self.n_rows = sum(s.shape[0] for s in shards)
        self.dim = shards[0].shape[1]
        self.searches = 0

    def search(self, queries, k):
        self.searches += 1
        values, indices, offset = [], [], 0
        for shard in self.shards:
            v, i = ops.knn(queries, shard, min(k, shard.shape[0]), self.metric)
            values.append(v)
            indices.append(i + offset)
            offset += shard.shape[0]
        values, indices = torch.cat(values, dim=1), torch.cat(indices, dim=1)
        order = values.argsort(dim=1, descending=self.metric == "cosine", stable=True)[:, :k]
        return values.gather(1, order), indices.gather(1, order)

    def rows(self, indices):
        return ops.bank_rows(self.shards, indices)


CASES = [
    ("cosine", {}, "cosine", True),
    ("knn", {}, "cosine", True),  # normalize=True: an l2 score from the cosine index
    ("knn", {"k": 3, "metric": "cosine"}, "cosine", True),
    ("knn", {"k": 4, "normalize": False}, "l2", False),
]


def bank_and_queries(n: int = 700, d: int = 12, seed: int = 0):
    """A bank with duplicated rows (ties), cut into three uneven shards, and queries."""
    rng = np.random.default_rng(seed)
    bank = (rng.normal(size=(n, d)) * np.linspace(3.0, 0.2, d) + 1.0).astype(np.float32)
    bank[10:20] = bank[0]
    cuts = [0, 5, 410, n]
    shards = [bank[a:b] for a, b in itertools.pairwise(cuts)]
    queries = np.concatenate([rng.normal(size=(40, d)).astype(np.float32) + 1.0, bank[:5]])
    return bank, shards, queries


@pytest.mark.parametrize(("name", "params", "metric", "normalize"), CASES)
def test_fit_index_equals_fit_on_the_bank(name, params, metric, normalize):
    bank, shards, queries = bank_and_queries()
    index = ShardListIndex(shards, metric)
    on_bank = create(name, **params).fit(bank)
    on_index = create(name, **params).fit_index(index)
    assert on_index.n_features_in_ == bank.shape[1]
    assert on_index.is_fitted_
    np.testing.assert_allclose(on_index.score(queries), on_bank.score(queries), atol=1e-5)
    assert on_index.threshold_ == pytest.approx(on_bank.threshold_, abs=1e-5)
    # float64 references: the scores, and the threshold on the leave-one-out scores of the
    # sampled rows (700 rows > 500: a sample, so the row draw must match fit's)
    k = params.get("k", 1 if name == "cosine" else 10)
    ref_metric = params.get("metric", "cosine" if name == "cosine" else "l2")
    want = ref.knn_scores(bank.astype(np.float64), queries.astype(np.float64), k, ref_metric,
                          normalize)
    np.testing.assert_allclose(on_index.score(queries), want, atol=1e-5)
    rows = threshold_rows(bank.shape[0], on_index.target_tpr).numpy()
    assert 0 < rows.size < bank.shape[0]
    loo = ref.knn_leave_one_out(bank.astype(np.float64), k, ref_metric, normalize)[rows]
    assert on_index.threshold_ == pytest.approx(ref.threshold_at_tpr(loo, 0.95), abs=1e-5)
    np.testing.assert_array_equal(on_index.predict(queries), on_bank.predict(queries))


def test_fit_index_k_equal_to_the_bank():
    bank, shards, queries = bank_and_queries(n=30)
    index = ShardListIndex([*shards[:1], bank[5:30]], "cosine")
    on_index = create("knn", k=30).fit_index(index)
    np.testing.assert_allclose(on_index.score(queries), create("knn", k=30).fit(bank)
                               .score(queries), atol=1e-5)
    with pytest.raises(InputError, match="k=31 is larger than the bank"):
        create("knn", k=31).fit_index(index)


def test_fit_index_refuses_save_and_refit_restores_it(tmp_path):
    bank, shards, queries = bank_and_queries()
    detector = create("cosine").fit_index(ShardListIndex(shards, "cosine"))
    target = tmp_path / "saved"
    with pytest.raises(PersistenceError, match="fit_index on an external ShardListIndex"):
        detector.save(target)
    assert not target.exists()  # nothing half-written
    with pytest.raises(PersistenceError, match="cannot be saved"):
        detector.state_dict()
    detector.fit(bank)  # back on a bank of its own: saveable, same scores
    loaded = type(detector).load(detector.save(target))
    np.testing.assert_allclose(loaded.score(queries), detector.score(queries), atol=1e-6)


def test_fit_index_uses_the_index_it_was_given():
    _bank, shards, queries = bank_and_queries()
    index = ShardListIndex(shards, "cosine")
    detector = create("cosine").fit_index(index)
    searches = index.searches
    detector.score(queries)
    assert index.searches == searches + 1


def test_fit_index_errors():
    _, shards, _ = bank_and_queries()
    with pytest.raises(InputError, match="needs a 'l2' index"):
        create("knn", normalize=False).fit_index(ShardListIndex(shards, "cosine"))
    with pytest.raises(InputError, match="needs a 'cosine' index"):
        create("cosine").fit_index(ShardListIndex(shards, "l2"))
    with pytest.raises(InputError, match="needs an exact kNN index"):
        create("cosine").fit_index(shards[0])
    with pytest.raises(TypeError, match="fits on features alone"):
        create("nnguide").fit_index(ShardListIndex(shards, "cosine"))


def test_knn_index_is_a_search_index_and_returns_rows():
    bank, _, _ = bank_and_queries()
    index = ops.KNNIndex([bank[:300], bank[300:]], "cosine")
    assert isinstance(index, ops.SearchIndex)
    rows = torch.tensor([699, 0, 300, 299, 0])
    np.testing.assert_array_equal(index.rows(rows).numpy(), bank[rows.numpy()])
    assert index.rows(torch.tensor([], dtype=torch.int64)).shape == (0, bank.shape[1])
    for bad in (torch.tensor([700]), torch.tensor([-1]), torch.tensor([[0]]),
                torch.tensor([0.5])):
        with pytest.raises(InputError, match="row indices"):
            index.rows(bad)
