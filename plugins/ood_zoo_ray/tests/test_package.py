"""The package's public names: lazy, and the same objects as in their home modules."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_public_names_are_their_modules_objects():
    import ood_zoo_ray
    from ood_zoo_ray import cluster, extraction, fitting, index

    assert ood_zoo_ray.extract is extraction.extract
    assert ood_zoo_ray.load is extraction.load
    assert ood_zoo_ray.ShardedIndex is index.ShardedIndex
    assert ood_zoo_ray.fit is fitting.fit
    assert ood_zoo_ray.ensure_ray is cluster.ensure_ray
    assert set(ood_zoo_ray.__all__) <= set(dir(ood_zoo_ray))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ood_zoo_ray.nope  # noqa: B018


def test_the_entry_point_imports_neither_ray_nor_the_engine_modules():
    code = ("import sys, ood_zoo_ray.plugin; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ood_zoo_ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['ood_zoo_ray.plugin']"
