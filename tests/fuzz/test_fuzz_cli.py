"""Fuzzing the command line: ``ood-zoo fit``, ``score`` and ``evaluate`` (through
``ood_zoo.cli.main``) on random ``.npy`` and ``.safetensors`` files, valid and broken.

The property: every run exits 0 or 2, never with a traceback; a valid file is accepted; an
exit 2 prints ``ood-zoo: error: <why>``; what the CLI writes equals what the Python API gives
for the same arrays.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzzing import (
    detector_inputs,
    fuzz_settings,
    scratch_dir,
    tolerate_known,
)
from hypothesis import event, given
from hypothesis import strategies as st
from safetensors.torch import save_file

import ood_zoo
from ood_zoo import metrics
from ood_zoo.cli import main, read_array

pytestmark = pytest.mark.fuzz

DETECTORS = ood_zoo.list_detectors()
#: How a file is written; the first group is valid, the rest is not.
VALID_FORMATS = ("npy", "npy-fortran", "npy-big-endian", "npy-float16", "npy-float64",
                 "safetensors", "safetensors-bf16", "safetensors-keyed")
BROKEN_FORMATS = ("npy-1d", "npy-3d", "npy-empty", "npy-nan", "npy-complex", "npy-text",
                  "npy-truncated", "safetensors-garbage", "safetensors-two", "txt", "missing")


def run(*argv: str) -> tuple[int, str, str]:
    """``ood-zoo argv``: exit status, stdout, stderr; an escaping exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(argv))
        except SystemExit as exc:  # argparse's usage errors
            status = exc.code
    return status, out.getvalue(), err.getvalue()


def write(path: Path, array: np.ndarray, fmt: str) -> tuple[Path, list[str]]:
    """Write ``array`` as ``fmt``; returns the file and the extra arguments it needs (--key)."""
    if fmt.startswith("safetensors") or fmt == "txt":
        path = path.with_suffix(".txt" if fmt == "txt" else ".safetensors")
    else:
        path = path.with_suffix(".npy")
    extra: list[str] = []
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if fmt == "npy":
        np.save(path, array.astype(np.float32))
    elif fmt == "npy-fortran":
        np.save(path, np.asfortranarray(array.astype(np.float32)))
    elif fmt == "npy-big-endian":
        np.save(path, array.astype(">f4"))
    elif fmt == "npy-float16":
        np.save(path, array.astype(np.float16))
    elif fmt == "npy-float64":
        np.save(path, array.astype(np.float64))
    elif fmt == "safetensors":
        save_file({"x": tensor}, str(path))
    elif fmt == "safetensors-bf16":
        save_file({"x": tensor.bfloat16()}, str(path))
    elif fmt == "safetensors-keyed":
        save_file({"features": tensor, "other": tensor[:1].clone()}, str(path))
        extra = ["features"]
    elif fmt == "npy-1d":
        np.save(path, array[:, 0].astype(np.float32))
    elif fmt == "npy-3d":
        np.save(path, array[None].astype(np.float32))
    elif fmt == "npy-empty":
        np.save(path, np.zeros((0, array.shape[1]), dtype=np.float32))
    elif fmt == "npy-nan":
        bad = array.astype(np.float32)
        bad[0, 0] = np.nan
        np.save(path, bad)
    elif fmt == "npy-complex":
        np.save(path, array.astype(np.complex64))
    elif fmt == "npy-text":
        np.save(path, array.astype(str))
    elif fmt == "npy-truncated":
        np.save(path, array.astype(np.float32))
        path.write_bytes(path.read_bytes()[:-7])
    elif fmt == "safetensors-garbage":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    elif fmt == "safetensors-two":
        save_file({"a": tensor, "b": tensor.clone()}, str(path))
    elif fmt == "txt":
        path.write_text("1 2 3\n")
    return path, extra  # "missing": nothing is written


def assert_refused(err: str) -> None:
    """An exit 2 prints one line saying why, and no traceback."""
    assert err.startswith("ood-zoo: error: "), err
    assert len(err.strip()) > len("ood-zoo: error: ") + 5, err
    assert "Traceback" not in err, err


def read(path: Path, extra: list[str]):
    return read_array(path, key=extra[0] if extra else None)


@fuzz_settings(1.5)
@given(name=st.sampled_from(DETECTORS), seed=st.integers(0, 2**16),
       fit_format=st.sampled_from(VALID_FORMATS + BROKEN_FORMATS),
       score_format=st.sampled_from(VALID_FORMATS + BROKEN_FORMATS),
       scores_as=st.sampled_from(["npy", "json"]), tpr=st.sampled_from(["0.95", "1", "0", "x"]))
def test_fit_score_evaluate_exit_cleanly_and_match_the_api(name, seed, fit_format,
                                                           score_format, scores_as, tpr):
    fit_kwargs, score_kwargs = detector_inputs(name, seed)
    work = scratch_dir()
    option = "--features" if "features" in fit_kwargs else "--logits"
    key_option = "--key" if option == "--features" else "--logits-key"
    main_key = option.removeprefix("--")
    fit_file, fit_extra = write(work / "fit", fit_kwargs[main_key], fit_format)
    argv = ["fit", name, option, str(fit_file), "--out", str(work / "det"), "--json"]
    argv += [key_option, fit_extra[0]] if fit_extra else []
    if "labels" in fit_kwargs:
        np.save(work / "labels.npy", fit_kwargs["labels"])
        argv += ["--labels", str(work / "labels.npy")]
    if "head" in fit_kwargs:
        np.save(work / "head-weight.npy", fit_kwargs["head"][0])
        np.save(work / "head-bias.npy", fit_kwargs["head"][1])
        argv += ["--head-weight", str(work / "head-weight.npy"),
                 "--head-bias", str(work / "head-bias.npy")]
    # a detector of features and logits: the logits as valid .npy files (the features fuzzed)
    both = main_key == "features" and "logits" in fit_kwargs
    if both:
        np.save(work / "fit-logits.npy", fit_kwargs["logits"])
        np.save(work / "score-logits.npy", score_kwargs["logits"])
        argv += ["--logits", str(work / "fit-logits.npy")]
    tags = {"layouts": {f.removeprefix("npy-") for f in (fit_format, score_format)}}
    with tolerate_known(tags):
        status, out, err = run(*argv)
        assert status in (0, 2), (status, err)
        if fit_format in BROKEN_FORMATS:
            assert status == 2, f"fit accepted a {fit_format} file"
        if status == 2:
            assert_refused(err)
            assert fit_format in BROKEN_FORMATS, f"fit refused a valid {fit_format} file: {err}"
            event(f"fit refused: {fit_format}")
            return
        summary = json.loads(out)
        direct = ood_zoo.create(name).fit(**{
            **fit_kwargs, main_key: read(fit_file, fit_extra)})
        assert summary["threshold"] == direct.threshold_

        score_file, score_extra = write(work / "queries", score_kwargs[main_key], score_format)
        scores_path = work / f"scores.{scores_as}"
        argv = ["score", str(work / "det"), option, str(score_file), "--out", str(scores_path)]
        argv += [key_option, score_extra[0]] if score_extra else []
        argv += ["--logits", str(work / "score-logits.npy")] if both else []
        status, out, err = run(*argv)
        assert status in (0, 2), (status, err)
        if status == 2:
            assert_refused(err)
            assert score_format in BROKEN_FORMATS, f"score refused a valid {score_format}: {err}"
            return
        assert score_format not in BROKEN_FORMATS, f"score accepted a {score_format} file"
        written = (np.load(scores_path) if scores_as == "npy"
                   else np.asarray(json.loads(scores_path.read_text())))
        want = np.asarray(direct.score(**{**score_kwargs, main_key: read(score_file, score_extra)}),
                          dtype=np.float64)
        np.testing.assert_array_equal(np.asarray(written, dtype=np.float64), want)

        half = len(want) // 2
        np.save(work / "id.npy", written[:half] if half else written)
        np.save(work / "ood.npy", written[half:])
        status, out, err = run("evaluate", "--id-scores", str(work / "id.npy"),
                               "--ood-scores", str(work / "ood.npy"), "--tpr", tpr, "--json")
        if tpr in ("0", "x"):
            assert status == 2, out
            assert "error:" in err, err  # argparse's usage error, or ood-zoo's
            assert "Traceback" not in err, err
            return
        assert status == 0, err
        row = json.loads(out)
        expected = metrics.evaluate(written[:half] if half else written, written[half:],
                                    tpr=float(tpr))
        assert {k: row[k] for k in expected} == expected
