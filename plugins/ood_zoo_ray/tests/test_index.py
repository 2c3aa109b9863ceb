"""``ShardedIndex``: sharded exact kNN on Ray against a float64 brute-force reference.

The bank is anisotropic (an LLM-like decaying spectrum around a mean, so the big shard's
``KNNIndex`` takes the pruned path), has rows duplicated across shards (exact ties), uneven
shards (2600, 900, 0, 7 and 1493 rows), memmapped ``.npy`` files and in-memory arrays. Values
are compared with the reference; ids through the reference's value at each returned id, since
ties may be broken either way. Actors reserve 0.1 CPU each, so the tests' indexes fit together.
"""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
import torch
from ood_zoo_ray.index import ShardedIndex

from ood_zoo import create, ops
from ood_zoo.errors import InputError

DIM = 256
SIZES = (2600, 900, 0, 7, 1493)
CPUS = 0.1


def make_bank(n: int, seed: int = 0) -> np.ndarray:
    """``mean + z diag(s)``, ``s_i = 4 / i``: most energy in a few directions, as LLM states."""
    rng = np.random.default_rng(seed)
    spectrum = 4.0 / np.arange(1, DIM + 1)
    return (rng.normal(size=(n, DIM)) * spectrum + rng.normal(size=DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def bank() -> np.ndarray:
    x = make_bank(sum(SIZES))
    x[3000:3010] = x[5]  # ties across shards 0 and 1
    x[3509] = x[3000]  # and into the torch shard
    return x


@pytest.fixture(scope="module")
def shards(bank, tmp_path_factory):
    """The shards as given to ShardedIndex: files, numpy, an empty one, a tensor, a file."""
    directory = tmp_path_factory.mktemp("shards")
    cuts = np.cumsum((0, *SIZES))
    parts = [bank[a:b] for a, b in itertools.pairwise(cuts)]
    np.save(directory / "s0.npy", parts[0])
    np.save(directory / "s4.npy", parts[4])
    return [directory / "s0.npy", parts[1], parts[2], torch.from_numpy(parts[3].copy()),
            str(directory / "s4.npy")]


@pytest.fixture(scope="module")
def queries(bank) -> np.ndarray:
    fresh = make_bank(40, seed=1)
    return np.concatenate([fresh, bank[[5, 3000, 3509, 4999, 0]]])


@pytest.fixture(scope="module")
def cosine_index(ray_cluster, shards):
    with ShardedIndex(shards, "cosine", num_actors=3, num_cpus_per_actor=CPUS) as index:
        yield index


@pytest.fixture(scope="module")
def l2_index(ray_cluster, shards):
    with ShardedIndex(shards, "l2", shards_per_actor=2, num_cpus_per_actor=CPUS) as index:
        yield index


def goodness(queries: np.ndarray, bank: np.ndarray, metric: str) -> np.ndarray:
    """The float64 ``[Q, N]`` cosine similarities or Euclidean distances."""
    q, b = queries.astype(np.float64), bank.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return q @ b.T
    squared = (q * q).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * q @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


def check_exact(values, indices, queries, bank, k: int, metric: str) -> None:
    """``values`` are the reference's best k, and each id's reference value is its value.

    l2 is compared on squared distances, within ``1e-5 (|q|² + |b|²)``: fp32 rounding of the
    expanded square, what ops.knn promises (a row's distance to itself is ~``sqrt(u |q|²)``).
    """
    values, indices = np.asarray(values, dtype=np.float64), np.asarray(indices)
    assert values.shape == indices.shape == (queries.shape[0], k)
    assert indices.dtype == np.int64
    matrix = goodness(queries, bank, metric)
    best = -np.sort(-matrix, axis=1) if metric == "cosine" else np.sort(matrix, axis=1)
    at_ids = np.take_along_axis(matrix, indices, 1)
    if metric == "l2":
        values, best, at_ids = values**2, best**2, at_ids**2
        atol = 1e-5 * 2 * max(float((queries.astype(np.float64) ** 2).sum(1).max()),
                              float((bank.astype(np.float64) ** 2).sum(1).max()))
    else:
        atol = 1e-5
    np.testing.assert_allclose(values, best[:, :k], rtol=0, atol=atol)
    np.testing.assert_allclose(at_ids, values, rtol=0, atol=atol)
    assert all(np.unique(row).size == k for row in indices)


@pytest.mark.parametrize("k", [1, 10, 100, sum(SIZES)])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_search_is_exact(cosine_index, l2_index, bank, queries, metric, k):
    index = cosine_index if metric == "cosine" else l2_index
    values, indices = index.search(queries, k)
    check_exact(values, indices, queries, bank, k, metric)
    want_values, _ = ops.knn(queries, bank, k, metric)
    assert values.dtype == want_values.dtype == np.float32
    np.testing.assert_allclose(values, want_values, rtol=1e-5, atol=1e-5 if metric == "cosine"
                               else 0.02)  # l2 near 0: sqrt of the fp32 rounding


def test_layout_stats_and_rows(cosine_index, l2_index, bank, shards):
    assert (cosine_index.n_rows, cosine_index.dim) == bank.shape
    assert isinstance(cosine_index, ops.SearchIndex)
    # non-empty shards 0, 1, 3, 4: three runs of nearly equal count; pairs
    assert [group for *_, group in cosine_index.layout] == [[0], [1], [3, 4]]
    assert [group for *_, group in l2_index.layout] == [[0, 1], [3, 4]]
    assert [(first, rows) for first, rows, _ in cosine_index.layout] == [
        (0, 2600), (2600, 900), (3500, 1500)]
    cosine_index.search(bank[:200], 10)
    stats = cosine_index.stats()
    first = stats["actors"][0]
    assert first["shards"] == [f"shard 0 ({shards[0]})"]
    assert first["pruned"]  # 2600 anisotropic rows: the bound prunes
    assert first["last_search"]["path"] == "pruned"
    assert 0 < first["last_search"]["survivor_rate"] < 0.5
    assert first["build_seconds"] > 0
    assert stats["actors"][2]["dense_reason"].startswith("bank of 1500 rows")
    assert len(stats["last_search"]["actor_seconds"]) == 3
    rows = torch.tensor([4999, 0, 3505, 3500, 2600, 3499])
    np.testing.assert_array_equal(cosine_index.rows(rows).numpy(), bank[rows.numpy()])
    with pytest.raises(InputError, match=r"row indices must lie in \[0, 5000\)"):
        cosine_index.rows(torch.tensor([5000]))


def test_query_kinds_and_dtypes(cosine_index, bank, queries):
    tensor = torch.from_numpy(queries)
    values, indices = cosine_index.search(tensor, 5)
    assert isinstance(values, torch.Tensor)
    assert isinstance(indices, torch.Tensor)
    assert (values.dtype, indices.dtype) == (torch.float32, torch.int64)
    check_exact(values.numpy(), indices.numpy(), queries, bank, 5, "cosine")
    values64, indices64 = cosine_index.search(queries.astype(np.float64), 5)
    assert values64.dtype == np.float64
    check_exact(values64, indices64, queries, bank, 5, "cosine")
    values16, _ = cosine_index.search(tensor.to(torch.bfloat16), 3)
    want, _ = ops.knn(tensor.to(torch.bfloat16), bank, 3)
    assert values16.dtype == want.dtype == torch.float32
    np.testing.assert_allclose(values16.numpy(), want.numpy(), atol=1e-5)


def test_query_errors(cosine_index, queries):
    with pytest.raises(InputError, match="k=5001 is larger than the bank"):
        cosine_index.search(queries, 5001)
    with pytest.raises(InputError, match="k must be a positive int"):
        cosine_index.search(queries, 0)
    with pytest.raises(InputError, match="empty input"):
        cosine_index.search(queries[:0], 1)  # Q = 0: refused, as ops.knn refuses it
    with pytest.raises(InputError, match="queries have 255 features but the bank has 256"):
        cosine_index.search(queries[:, 1:], 1)
    bad = queries.copy()
    bad[3, 7] = np.nan
    with pytest.raises(InputError, match="queries: contains NaN"):
        cosine_index.search(bad, 1)


def test_unreadable_shards_are_named(tmp_path, bank):
    good = bank[:10]
    text = tmp_path / "text.npy"
    text.write_text("not an array")
    np.savez(tmp_path / "arch.npz", x=good)
    np.save(tmp_path / "ints.npy", np.arange(20).reshape(2, 10))
    np.save(tmp_path / "flat.npy", good[0])
    np.save(tmp_path / "narrow.npy", good[:, :-1])
    np.save(tmp_path / "f64.npy", good.astype(np.float64))
    cases = [
        ([], "non-empty list"),
        (good, "non-empty list"),
        ([good, tmp_path / "missing.npy"], r"shard 1 \(.*missing.npy\) cannot be read"),
        ([text], r"shard 0 \(.*text.npy\) cannot be read as a .npy array"),
        ([good, tmp_path / "arch.npz"], r"shard 1 \(.*arch.npz\) is not a .npy array"),
        ([tmp_path / "ints.npy"], r"shard 0 \(.*ints.npy\): expected floating-point"),
        ([tmp_path / "flat.npy"], r"shard 0 \(.*flat.npy\): expected a 2-D array"),
        ([good, good, tmp_path / "narrow.npy"],
         r"shard 2 \(.*narrow.npy\) is torch.float32 \[10, 255\] but shard 0 \(in memory\)"),
        ([good, tmp_path / "f64.npy"], r"shard 1 \(.*f64.npy\) is torch.float64"),
        ([good[:0], good[:0]], "every shard is empty"),
        ([good, 3], "shard 1 must be a .npy path or an array, got int"),
    ]
    for shards, message in cases:
        with pytest.raises(InputError, match=message):
            ShardedIndex(shards)
    with pytest.raises(InputError, match="not both"):
        ShardedIndex([good], shards_per_actor=1, num_actors=1)
    with pytest.raises(InputError, match="num_actors must be a positive int"):
        ShardedIndex([good], num_actors=0)


def test_nonfinite_shard_is_named(ray_cluster, bank):
    broken = bank[:50].copy()
    broken[7, 3] = np.inf
    # one actor over both shards: ops.knn counts the row within the actor's bank (20 + 7)
    message = r"shard 0 \(in memory\), shard 1 \(in memory\): bank: contains Inf \(.*row 27\)"
    with pytest.raises(InputError, match=message), \
            ShardedIndex([bank[:20], broken], shards_per_actor=2, num_cpus_per_actor=CPUS) as index:
        index.search(bank[:2], 1)


def test_search_survives_an_actor_killed_mid_search(ray_cluster, l2_index, bank):
    """An actor killed while it searches is restarted, rebuilds its index, and the retried
    search returns the same answer (the index stays usable for the other tests)."""
    many = np.concatenate([bank, make_bank(3000, seed=2)])  # long enough to kill mid-search
    want = l2_index.search(many, 10)
    pids = [actor["pid"] for actor in l2_index.stats()["actors"]]
    result: list = []
    search = threading.Thread(target=lambda: result.append(l2_index.search(many, 10)))
    search.start()
    time.sleep(0.3)
    ray_cluster.kill(l2_index.actors[0], no_restart=False)
    search.join()
    assert len(result) == 1
    np.testing.assert_array_equal(result[0][0], want[0])
    np.testing.assert_array_equal(result[0][1], want[1])
    after = [actor["pid"] for actor in l2_index.stats()["actors"]]
    assert after[0] != pids[0]  # restarted
    assert after[1] == pids[1]  # the other untouched


@pytest.mark.parametrize(("name", "params", "metric"), [
    ("cosine", {}, "cosine"),
    ("knn", {}, "cosine"),
    ("knn", {"k": 5, "normalize": False}, "l2"),
])
def test_detectors_on_a_sharded_index(cosine_index, l2_index, bank, queries, name, params,
                                      metric):
    index = cosine_index if metric == "cosine" else l2_index
    on_shards = create(name, **params).fit_index(index)
    on_bank = create(name, **params).fit(bank)
    # l2 distances (not normalised, |x|² ~ 600) carry the fp32 rounding of their squares
    atol = 1e-5 if metric == "cosine" else 1e-4
    np.testing.assert_allclose(on_shards.score(queries), on_bank.score(queries), atol=atol)
    assert on_shards.threshold_ == pytest.approx(on_bank.threshold_, abs=atol)
