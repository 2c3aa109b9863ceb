"""What every check of the kit shares: failure messages, fitting and scoring with clear errors."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import Detector, Requirements
from .inputs import MakeInputs, Split, SyntheticInputs, default_make_inputs


def to_numpy(array: Any) -> np.ndarray:
    """A numpy copy of an array or tensor; bfloat16 (which numpy lacks) becomes float32."""
    if isinstance(array, torch.Tensor):
        tensor = array.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    return np.asarray(array)


def _label(cls: type) -> str:
    name = getattr(cls, "name", "")
    return f"{cls.__qualname__} ({name!r})" if name else cls.__qualname__


class Checker:
    """Formats failures as ``<class> (<name>): <check>: <what>`` and wraps surprises."""

    def __init__(self, cls: type[Detector], check: str) -> None:
        self.cls, self.check = cls, check

    def prefix(self) -> str:
        return f"{_label(self.cls)}: {self.check}"

    def fail(self, message: str) -> None:
        raise AssertionError(f"{self.prefix()}: {message}")

    def require(self, condition: bool, message: str) -> None:
        if not condition:
            self.fail(message)

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        """Run a step; an exception other than AssertionError becomes a clear AssertionError."""
        try:
            yield
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(
                f"{self.prefix()}: {what} raised {type(exc).__name__}: {exc}"
            ) from exc

    @contextlib.contextmanager
    def expect(self, error: type[BaseException], what: str) -> Iterator[None]:
        """The block must raise ``error`` (a subclass counts)."""
        try:
            yield
        except error:
            return
        except Exception as exc:
            raise AssertionError(
                f"{self.prefix()}: {what} should raise {error.__name__}, "
                f"but raised {type(exc).__name__}: {exc}"
            ) from exc
        self.fail(f"{what} should raise {error.__name__}, but raised nothing")


def inputs_for(cls: type[Detector], make_inputs: MakeInputs | None) -> SyntheticInputs:
    """The caller's inputs for ``cls``, or the kit's own (see :func:`data_checks_apply`)."""
    make = make_inputs or default_make_inputs(cls)
    assert make is not None  # data_checks_apply said so
    return make()


def new_detector(c: Checker, params: Mapping[str, Any] | None) -> Detector:
    """``c.cls(**params)``; an error in the constructor is reported as the check's failure."""
    with c.step(f"{c.cls.__qualname__}(**{dict(params or {})!r})"):
        return c.cls(**dict(params or {}))


def fitted_detector(
    c: Checker, params: Mapping[str, Any] | None, data: Split,
    convert: Callable[[Any], Any] | None = None,
) -> Detector:
    """A new detector fitted on ``data`` (mapped by ``convert``); ``fit`` must return self."""
    detector = new_detector(c, params)
    with c.step("fit"):
        returned = detector.fit(**data.fit_kwargs(c.cls.requires, convert))
    c.require(returned is detector, f"fit() must return self, got {returned!r}")
    return detector


def score_split(
    c: Checker, detector: Detector, data: Split, what: str,
    convert: Callable[[Any], Any] | None = None,
) -> Any:
    """``detector.score`` on ``data`` (mapped by ``convert``), errors reported as ``what``."""
    with c.step(f"score({what})"):
        return detector.score(**data.score_kwargs(c.cls.requires, convert))


def check_scores(c: Checker, scores: Any, n: int, what: str) -> np.ndarray:
    """Scores must be a 1-D array of length ``n`` holding finite values; returns them as numpy."""
    c.require(
        isinstance(scores, np.ndarray | torch.Tensor),
        f"score({what}) must return a numpy array or torch tensor, got {type(scores).__name__}",
    )
    c.require(
        scores.ndim == 1 and scores.shape[0] == n,
        f"score({what}) must return shape ({n},), got {tuple(scores.shape)}",
    )
    values = to_numpy(scores)
    c.require(
        np.issubdtype(values.dtype, np.floating),
        f"score({what}) must return floating-point scores, got dtype {scores.dtype}",
    )
    c.require(bool(np.isfinite(values).all()), f"score({what}) returned non-finite values")
    return values


def data_checks_apply(cls: type[Detector], make_inputs: MakeInputs | None) -> bool:
    """Whether the kit has data for ``cls``: its own synthetic data, or the caller's."""
    requires = getattr(cls, "requires", None)
    return isinstance(requires, Requirements) and (
        make_inputs is not None or default_make_inputs(cls) is not None
    )


@contextlib.contextmanager
def writable_directory(path: str | Path | None) -> Iterator[Path]:
    """``path`` (created if needed), or a temporary directory removed afterwards if ``None``."""
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="ood_zoo_check_") as tmp:
        yield Path(tmp)
