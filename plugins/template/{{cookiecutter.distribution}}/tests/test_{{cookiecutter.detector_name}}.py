"""{{ cookiecutter.detector_name }}: a float64 reference, non-default parameters, the wiring.

Every conformance check with the default parameters runs through ood_zoo's pytest plugin
(``ood_zoo_plugins`` in pyproject.toml).
"""

from __future__ import annotations

import numpy as np
import pytest
from ood_zoo.testing import check_detector, check_plugin, make_synthetic_inputs

from {{ cookiecutter.package }} import {{ cookiecutter.class_name }}


def test_scores_match_a_float64_reference():
    data = make_synthetic_inputs(seed=1)
    bank = data.fit.features.astype(np.float64)
    queries = np.concatenate([data.id.features, data.ood.features]).astype(np.float64)
    detector = {{ cookiecutter.class_name }}(eps=1e-3).fit(bank)
    scale = np.sqrt(bank.var(axis=0) + 1e-3)
    expected = -np.sqrt((((queries - bank.mean(axis=0)) / scale) ** 2).mean(axis=1))
    np.testing.assert_allclose(detector.score(queries), expected, rtol=1e-12)


def test_conforms_with_a_large_variance_floor(tmp_path):
    check_detector({{ cookiecutter.class_name }}, params={"eps": 1.0}, tmp_path=tmp_path)


@pytest.mark.parametrize("eps", [0.0, -1.0])
def test_eps_must_be_positive(eps):
    with pytest.raises(ValueError, match="eps"):
        {{ cookiecutter.class_name }}(eps=eps)


def test_the_entry_point_registers_the_detector():
    detectors = check_plugin("{{ cookiecutter.distribution }}")
    assert detectors == {"{{ cookiecutter.detector_name }}": {{ cookiecutter.class_name }}}
