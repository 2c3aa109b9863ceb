"""What the fuzz suite shares: settings profiles, input strategies, the error property and the
register of known defects.

Profiles (applied per test, so the unit tests' own hypothesis settings are untouched):

``ood_zoo-fuzz-ci`` (the default)
    bounded ``max_examples`` per test, ``deadline=None``, ``derandomize=True``: every CI run
    tries the same cases, so a red run is reproducible.
``ood_zoo-fuzz-dev``
    with ``OOD_ZOO_FUZZ_EXAMPLES=N``: ``N`` examples per test (times the test's weight) and a
    random seed per run, for a longer local search.

Every test states one property: an input either gets a *clear* error (:func:`is_clear_error`:
an :class:`~ood_zoo.errors.OodZooError`, or a ``ValueError``/``TypeError`` raised by one of
ood_zoo's own ``raise`` statements) or a finite result that matches a float64 reference
computed in the test from the values actually given.

:data:`KNOWN` registers defect classes that are found but not yet fixed (none today: every
class issue 11 listed and the suite found is fixed). A failing case of such a class is recorded
as a hypothesis ``event`` (``--hypothesis-show-statistics`` shows how often) instead of failing
the test, so the rest of the space is still fuzzed; each class has a strict xfail in
``test_found.py`` that turns red once the fix lands, and then both are deleted.
``OOD_ZOO_FUZZ_KNOWN=0`` tolerates nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

import ood_zoo
from ood_zoo.errors import OodZooError
from ood_zoo.testing import default_make_inputs, make_layered_inputs, make_synthetic_inputs

_EXAMPLES = os.environ.get("OOD_ZOO_FUZZ_EXAMPLES")
_HEALTH = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]
settings.register_profile(
    "ood_zoo-fuzz-ci", max_examples=200, deadline=None, derandomize=True, database=None,
    suppress_health_check=_HEALTH, print_blob=True,
)
settings.register_profile(
    "ood_zoo-fuzz-dev", max_examples=int(_EXAMPLES or 200), deadline=None, derandomize=False,
    database=None, suppress_health_check=_HEALTH, print_blob=True,
)
PROFILE = settings.get_profile("ood_zoo-fuzz-dev" if _EXAMPLES else "ood_zoo-fuzz-ci")


def fuzz_settings(weight: float = 1.0) -> settings:
    """The active profile with ``weight`` times its examples (cheap tests get more)."""
    return settings(PROFILE, max_examples=max(1, round(PROFILE.max_examples * weight)))


OOD_ZOO_DIR = Path(ood_zoo.__file__).resolve().parent
BACKENDS = ("torch", "ext", "faiss")
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64}
#: Powers of ten drawn per dtype: fp16 has five exponent bits, the others reach 1e±30.
EXPONENTS = {"float16": (-4, 4), "bfloat16": (-30, 30), "float32": (-30, 30),
             "float64": (-30, 30)}
#: Outside this range of nonzero |x| a clear refusal is as good as a result (issue 11: "or
#: refuse inputs outside a documented safe range"); inside it valid input must be computed.
SAFE_MAGNITUDE = (1e-15, 1e15)
NUMPY_LAYOUTS = ("c", "fortran", "strided", "transposed", "negative", "memmap", "big-endian")
TORCH_LAYOUTS = ("c", "strided", "transposed", "requires-grad")
SPECIALS = (None, "nan", "inf", "-inf")


# ----------------------------------------------------------------------------- the property
def _raised_by_ood_zoo(err: BaseException) -> bool:
    """Whether one of ood_zoo's ``raise`` statements raised ``err`` (not a C function it
    called, such as ``torch.from_numpy``, which adds no frame of its own)."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames or not Path(frames[-1].filename).resolve().is_relative_to(OOD_ZOO_DIR):
        return False
    return (frames[-1].line or "").lstrip().startswith("raise")


def is_clear_error(err: BaseException) -> bool:
    """An :class:`OodZooError`, or a ``ValueError``/``TypeError`` that ood_zoo raised itself,
    with a message (not one from deep inside numpy, torch, sklearn or the json module)."""
    if not str(err):
        return False
    if isinstance(err, OodZooError):
        return True
    return isinstance(err, ValueError | TypeError) and _raised_by_ood_zoo(err)


def assert_clear_error(
    err: BaseException, *,
    must: type[BaseException] | tuple[type[BaseException], ...] | None = None,
) -> None:
    """Fail unless ``err`` is a clear error (and, with ``must``, of that type)."""
    if not is_clear_error(err) or (must is not None and not isinstance(err, must)):
        detail = "".join(traceback.format_exception(err)[-6:])
        raise AssertionError(f"not a clear ood_zoo error: {type(err).__name__}: {err}\n{detail}")


def attempt(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Exception | None]:
    """``(call(*args, **kwargs), None)``, or ``(None, the exception it raised)``."""
    try:
        return call(*args, **kwargs), None
    except Exception as err:
        return None, err


def to_float64(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def assert_finite(values: Any, what: str) -> np.ndarray:
    """``values`` as float64 numpy, failing on NaN/Inf (given finite input)."""
    array = to_float64(values)
    assert np.isfinite(array).all(), f"{what}: non-finite output for finite input: {array}"
    return array


def close(got: Any, want: np.ndarray, *, atol: float, rtol: float, what: str) -> None:
    """``|got - want| <= atol + rtol |want|`` elementwise, naming the values that are not."""
    got = to_float64(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    bad = ~(np.abs(got - want) <= atol + rtol * np.abs(want))
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {bad.size} values off (atol {atol:.3g}, rtol {rtol:.3g});"
        f" got {got[bad][:4]}, want {want[bad][:4]}"
    )


def unit_roundoff(dtype: str, backend_name: str | None = None) -> float:
    """Of the dtype an op computes in: fp64 for fp64 input (except on faiss), else fp32."""
    wide = dtype == "float64" and backend_name != "faiss"
    return float(np.finfo(np.float64 if wide else np.float32).eps)


def in_safe_range(*arrays: np.ndarray) -> bool:
    """No finite nonzero |x| of the inputs lies outside :data:`SAFE_MAGNITUDE`."""
    lo, hi = SAFE_MAGNITUDE
    for a in arrays:
        mags = np.abs(a[np.isfinite(a) & (a != 0)])
        if mags.size and (mags.min() < lo or mags.max() > hi):
            return False
    return True


# ----------------------------------------------------------------------------- known defects
@dataclass(frozen=True)
class Known:
    """A defect class fixed on another branch, and its predicate on the tags of a case."""

    cause: str
    applies: Callable[[dict[str, Any]], bool]


def _layouts(tags: dict[str, Any]) -> set[str]:
    return tags.get("layouts", set())


#: The open defect classes. Keys are named by the strict xfails of ``test_found.py``.
KNOWN: dict[str, Known] = {}  # every class issue 11 named, and those the suite found, is fixed

_TOLERATE = os.environ.get("OOD_ZOO_FUZZ_KNOWN", "1") != "0"


@contextlib.contextmanager
def tolerate_known(tags: dict[str, Any]) -> Iterator[None]:
    """Run a case; a failure of a :data:`KNOWN` class is recorded as an event, not raised."""
    try:
        yield
    except Exception:
        name = next((n for n, known in KNOWN.items() if known.applies(tags)), None)
        if name is None or not _TOLERATE:
            raise
        event(f"known defect tolerated: {name}")


# ----------------------------------------------------------------------------- detectors
def detector_inputs(name: str, seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Keyword arguments that fit registered detector ``name`` on the conformance kit's (small)
    synthetic data, and those that score its held-out ID and OOD samples."""
    cls = ood_zoo.get_registry().get(name).cls
    make = default_make_inputs(cls)
    if make is None:
        raise ValueError(f"{name}: the conformance kit has no synthetic data for it")
    if make in (make_synthetic_inputs, make_layered_inputs):
        inputs = make(dim=6, n_fit_per_class=25, n_test_per_class=4, seed=seed)
    else:
        inputs = make(n_fit=40, n_test=8, seed=seed)
    held_out = inputs.id.score_kwargs(cls.requires)
    ood = inputs.ood.score_kwargs(cls.requires)
    both = {key: np.concatenate([held_out[key], ood[key]]) for key in held_out}
    return inputs.fit.fit_kwargs(cls.requires), both


def fitted_detector(name: str, seed: int) -> tuple[Any, dict[str, np.ndarray]]:
    """Registered detector ``name`` fitted on :func:`detector_inputs`, and its score inputs."""
    fit_kwargs, score_kwargs = detector_inputs(name, seed)
    return ood_zoo.create(name).fit(**fit_kwargs), score_kwargs


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """``OOD_ZOO_BACKEND=name`` for the block."""
    old = os.environ.get("OOD_ZOO_BACKEND")
    os.environ["OOD_ZOO_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ["OOD_ZOO_BACKEND"]
        else:
            os.environ["OOD_ZOO_BACKEND"] = old


# ----------------------------------------------------------------------------- arrays
_SCRATCH = tempfile.TemporaryDirectory(prefix="ood_zoo-fuzz-")
_COUNTER = itertools.count()


def scratch_dir() -> Path:
    """A fresh directory in the session's scratch space (hypothesis cannot use ``tmp_path``)."""
    path = Path(_SCRATCH.name) / f"case-{next(_COUNTER)}"
    path.mkdir()
    return path


@dataclass(frozen=True)
class Given:
    """An array as handed to ood_zoo, the float64 values it holds, and its layout."""

    value: Any
    truth: np.ndarray
    layout: str


def lay_out(values: np.ndarray, dtype: str, kind: str, layout: str) -> Given:
    """``values`` cast to ``dtype`` and handed over as ``kind`` (numpy or torch) in ``layout``.

    numpy: C or Fortran order, a strided view (every other column of a wider array), a
    transposed view, a negative-stride view, a read-only memmap, big-endian bytes. torch:
    contiguous, strided, transposed, ``requires_grad``. bfloat16 is torch only.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(values)).to(TORCH_DTYPES[dtype])
    truth = tensor.double().numpy().copy()
    if kind == "torch":
        return Given(_torch_layout(tensor, layout), truth, layout)
    array = tensor.numpy()
    if layout == "fortran":
        out = np.asfortranarray(array)
    elif layout == "strided":
        wide = np.zeros((array.shape[0], 2 * array.shape[1]), dtype=array.dtype)
        wide[:, ::2] = array
        out = wide[:, ::2]
    elif layout == "transposed":
        out = np.ascontiguousarray(array.T).T
    elif layout == "negative":
        out = np.ascontiguousarray(array[::-1])[::-1]
    elif layout == "memmap":
        path = scratch_dir() / "array.npy"
        np.save(path, array)
        out = np.load(path, mmap_mode="r")
    elif layout == "big-endian":
        out = array.astype(array.dtype.newbyteorder(">"))
    else:
        out = np.ascontiguousarray(array)
    return Given(out, truth, layout)


def _torch_layout(tensor: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "strided":
        wide = torch.zeros(tensor.shape[0], 2 * tensor.shape[1], dtype=tensor.dtype)
        wide[:, ::2] = tensor
        return wide[:, ::2]
    if layout == "transposed":
        return tensor.T.contiguous().T
    if layout == "requires-grad":
        return tensor.clone().requires_grad_(True)
    return tensor.contiguous()


@st.composite
def layouts(draw: st.DrawFn, dtype: str) -> tuple[str, str]:
    """``(kind, layout)``: numpy or torch (bfloat16: torch), and a layout of that kind."""
    kind = "torch" if dtype == "bfloat16" else draw(st.sampled_from(["numpy", "torch"]))
    return kind, draw(st.sampled_from(NUMPY_LAYOUTS if kind == "numpy" else TORCH_LAYOUTS))


@st.composite
def magnitudes(draw: st.DrawFn, dtype: str) -> float:
    """A power of ten in the dtype's range; the edges and 1 are drawn often."""
    lo, hi = EXPONENTS[dtype]
    return 10.0 ** draw(st.one_of(st.sampled_from([lo, hi, 0]), st.integers(lo, hi)))


def base_values(seed: int, shape: tuple[int, int], scale: float):
    """Gaussian rows with a common offset (so cosines spread), times ``scale``; and the
    generator, to draw more."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) + 1.5 * rng.normal(size=shape[1])) * scale, rng


def place_special(values: np.ndarray, special: str | None, rng: np.random.Generator) -> None:
    """Put one NaN/±Inf (``special``, if any) at a random position of ``values``."""
    if special is not None and values.size:
        row, col = rng.integers(values.shape[0]), rng.integers(values.shape[1])
        values[row, col] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[special]
