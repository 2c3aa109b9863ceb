"""Shared test setup: one torch thread, fixed seeds, and the ``cuda`` marker's skip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fixed_seed() -> None:
    """Seed torch's and numpy's global generators before every test."""
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 - legacy global state, for code under test that uses it


@pytest.fixture
def rng() -> np.random.Generator:
    """A numpy generator with a fixed seed."""
    return np.random.default_rng(0)
