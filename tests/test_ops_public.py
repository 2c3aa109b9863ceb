"""The ops a detector author builds on: the public helpers, and their documented signatures."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ood_zoo import ops

README = Path(__file__).resolve().parents[1] / "README.md"
#: ``ood_zoo.ops.NAME(PARAMS)``, one per line of a README code block.
SIGNATURE = re.compile(r"^ood_zoo\.ops\.([\w.]+)\((.*?)\)(?: -> .+)?$", flags=re.M)
DOCUMENTED = {"knn", "KNNIndex", "KNNIndex.search", "mahalanobis", "compute_dtype",
              "normalise_rows"}


def _documented_signatures() -> dict[str, str]:
    return dict(SIGNATURE.findall(README.read_text()))


def _parameters(qualname: str) -> str:
    """The parameter list of ``ood_zoo.ops.<qualname>`` as the README writes it: no annotations,
    no ``self``, double-quoted string defaults."""
    target = ops
    for part in qualname.split("."):
        target = getattr(target, part)
    parameters = list(inspect.signature(target).parameters.values())
    if "." in qualname:  # a method: drop self
        parameters = parameters[1:]
    bare = inspect.Signature([p.replace(annotation=inspect.Parameter.empty) for p in parameters])
    return str(bare)[1:-1].replace("'", '"')


def test_readme_documents_the_ops_a_plugin_uses():
    assert set(_documented_signatures()) == DOCUMENTED
    assert {name.split(".")[0] for name in DOCUMENTED} <= set(ops.__all__)


@pytest.mark.parametrize("qualname", sorted(DOCUMENTED))
def test_documented_signature_matches_the_code(qualname):
    assert _documented_signatures()[qualname] == _parameters(qualname)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
     (torch.float32, torch.float32), (torch.float64, torch.float64)],
)
def test_compute_dtype_accumulates_half_precision_in_float32(dtype, expected):
    assert ops.compute_dtype(dtype) == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalise_rows_follows_the_norm_eps_convention(dtype):
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-14, 0.0], [3e30, -4e30]], dtype=dtype)
    out = ops.normalise_rows(x)
    assert ops.NORM_EPS == 1e-12
    expected = torch.nn.functional.normalize(x[:3].double(), dim=1, eps=ops.NORM_EPS)
    torch.testing.assert_close(out[:3].double(), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(out[3].double(), torch.tensor([0.6, -0.8], dtype=torch.float64),
                               rtol=1e-6, atol=0)  # its squares overflow float32: still exact
    assert out.dtype == dtype


def test_normalise_rows_is_what_knn_cosine_divides_by():
    rng = np.random.default_rng(0)
    queries = torch.from_numpy(rng.normal(size=(5, 6)))
    bank = torch.from_numpy(rng.normal(size=(40, 6)))
    values, indices = ops.knn(queries, bank, 3, "cosine")
    similarity = ops.normalise_rows(queries) @ ops.normalise_rows(bank).T
    torch.testing.assert_close(values, similarity.gather(1, indices), rtol=1e-12, atol=1e-12)
