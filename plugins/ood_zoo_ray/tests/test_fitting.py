"""``ood_zoo_ray.fitting.fit``: Ray tasks per shard, a merge tree, equal to the whole-bank fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ood_zoo_ray.fitting import fit

import ood_zoo
from ood_zoo.detectors import MahalanobisDetector, RelativeMahalanobisDetector
from ood_zoo.errors import InputError

CUTS = (300, 301, 700)


def make_bank(n: int = 1100, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Anisotropic rows far from the origin, labels in {2, 5, 9}; no 9 in rows 301..700."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array([2, 5, 9]), size=n)
    labels[301:700] = np.where(labels[301:700] == 9, 2, labels[301:700])
    x = rng.normal(size=(n, d)) * rng.uniform(0.3, 3.0, size=d) + 20.0
    x += 4.0 * rng.normal(size=(3, d))[np.searchsorted([2, 5, 9], labels)]
    return x, labels


def write_shards(tmp_path, x, y, dtype=np.float32):
    paths, label_paths = [], []
    for i, (xs, ys) in enumerate(zip(np.split(x, CUTS), np.split(y, CUTS), strict=True)):
        paths.append(tmp_path / f"shard{i}.npy")
        label_paths.append(str(tmp_path / f"labels{i}.npy"))
        np.save(paths[-1], xs.astype(dtype))
        np.save(label_paths[-1], ys)
    return paths, label_paths


def assert_same_fit(got, want, queries, rtol):
    for name, tensor in want.state_dict().items():
        mine = got.state_dict()[name].double()
        tensor = tensor.double()
        if name.endswith(("whitening_", "complement_")):  # compare what the factor determines
            mine, tensor = mine @ mine.T, tensor @ tensor.T
        torch.testing.assert_close(mine, tensor, rtol=0, atol=1e-9 * float(tensor.abs().max()),
                                   msg=name)
    assert got.threshold_ == pytest.approx(want.threshold_, rel=rtol)
    np.testing.assert_allclose(got.score(queries), want.score(queries), rtol=rtol,
                               atol=rtol * np.abs(want.score(queries)).max())


@pytest.mark.parametrize(("name", "params"), [
    ("mahalanobis", {}), ("relative_mahalanobis", {"covariance": "ledoit_wolf"}),
    ("residual", {"dim": 3}),
])
def test_fit_from_npy_shards_equals_the_whole_bank_fit(ray_cluster, tmp_path, name, params):
    x, y = make_bank()
    paths, label_paths = write_shards(tmp_path, x, y)
    x32 = x.astype(np.float32)
    whole = ood_zoo.create(name, **params).fit(x32, y)
    fitted = fit(name, paths, label_paths, progress=False, **params)
    assert type(fitted) is type(whole)
    assert fitted.get_params() == whole.get_params()
    assert_same_fit(fitted, whole, x32[:64], rtol=1e-5)


def test_fit_from_arrays_and_save_load(ray_cluster, tmp_path):
    x, y = make_bank()
    detector = MahalanobisDetector(covariance="ledoit_wolf")
    shards = np.split(x, CUTS)
    shards[1] = torch.from_numpy(shards[1])
    fitted = fit(detector, shards, np.split(y, CUTS), progress=False)
    assert fitted is detector
    whole = MahalanobisDetector(covariance="ledoit_wolf").fit(x, y)
    assert_same_fit(fitted, whole, x[:64], rtol=1e-9)
    loaded = ood_zoo.load(fitted.save(tmp_path / "det"))
    assert loaded.threshold_ == fitted.threshold_
    np.testing.assert_array_equal(loaded.score(x[:64]), fitted.score(x[:64]))


def test_fit_errors_name_the_shard(ray_cluster, tmp_path):
    x, y = make_bank(n=400)
    paths, label_paths = write_shards(tmp_path, np.concatenate([x, x[:300]]),
                                      np.concatenate([y, y[:300]]))
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"not a numpy file")
    with pytest.raises(InputError, match=r"shard 1 \(.*broken.npy\): cannot read its features"):
        fit("mahalanobis", [paths[0], broken], label_paths[:2], progress=False)
    with pytest.raises(InputError, match=r"shard 1 \(.*shard1.npy\): has 1 rows but 300 labels"):
        fit("mahalanobis", paths[:2], [label_paths[0], label_paths[0]], progress=False)
    with pytest.raises(InputError, match="shard 1: has 7 features, but shard 0 has 8"):
        fit("residual", [x, x[:, :7]], progress=False)
    with pytest.raises(InputError, match="shard 0: mahalanobis: needs class labels"):
        fit("mahalanobis", [x], progress=False)
    with pytest.raises(InputError, match="2 label arrays for 1 shards"):
        fit("mahalanobis", [x], [y, y], progress=False)
    with pytest.raises(InputError, match="knn: does not fit from sharded statistics"):
        fit("knn", [x], progress=False)
    with pytest.raises(TypeError, match="go with a detector name"):
        fit(RelativeMahalanobisDetector(), [x], [y], covariance="ledoit_wolf")


def test_shard_task_runs_on_one_torch_thread():
    """Each statistics task holds one Ray CPU; a reused worker may have started with more."""
    from ood_zoo_ray.fitting import shard_statistics

    x, y = make_bank(200)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        statistics, _, n = shard_statistics(ood_zoo.create("mahalanobis"), x, y,
                                             torch.arange(3), "shard 0")
        assert n == 200
        assert int(statistics.counts.sum()) == 200
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(saved)
