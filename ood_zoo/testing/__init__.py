"""A conformance kit for detector authors: does a :class:`~ood_zoo.api.Detector` keep the contract?

Every detector in ood_zoo, built in or shipped by a third party, is expected to pass these
checks. They read the detector's ``requires`` to decide what to feed it (features, class labels,
logits, the linear head), fit it on small synthetic data and check

``check_api_shape``
    the class attributes (a non-empty ``name`` and ``version``, a :class:`~ood_zoo.api.Requirements`
    instance, :class:`~ood_zoo.api.Param` records whose defaults validate, ``state_tensors`` that
    exist as tensors after ``fit``); ``fit`` returns ``self``; ``score`` returns a finite 1-D
    array with one score per input row; ``predict`` returns booleans.
``check_numpy_torch_roundtrip``
    numpy in gives numpy out, torch in gives torch out on the input's device; float32 in gives
    float32 out and float64 in gives float64 out; numpy and torch inputs give the same scores.
``check_half_precision``
    float16 and bfloat16 inputs are accepted (at fit and score time), scored in float32, and agree
    with the float32 scores of the same values.
``check_score_direction``
    higher = more in-distribution: on synthetic data the mean in-distribution (ID) score is above
    the mean out-of-distribution (OOD) score and the AUROC is above 0.9.
``check_save_load_roundtrip``
    ``save`` then ``load`` reproduces identical scores, threshold and parameters, and loading the
    directory into another detector class raises :class:`~ood_zoo.errors.PersistenceError`.
``check_bad_input_errors``
    NaN, Inf, a wrong rank, an empty array, a feature (or logit) width other than the fitted
    one, labels of the wrong length or missing when required, and a missing, non-finite or
    misshapen head when required all raise :class:`~ood_zoo.errors.InputError`; scoring before
    ``fit`` raises :class:`~ood_zoo.errors.NotFittedError` when ``requires.fit``.

``check_plugin`` (:mod:`~ood_zoo.testing.plugins`) checks the wiring instead: it loads a
plugin's entry points the way ood_zoo does, in strict mode, and returns the detectors it
registered::

    from ood_zoo.testing import check_detector, check_plugin

    def test_entry_point(tmp_path):
        detectors = check_plugin("my-package")  # the installed distribution's entry points
        assert set(detectors) == {"my_detector"}
        for cls in detectors.values():
            check_detector(cls, tmp_path=tmp_path)

Each check raises ``AssertionError`` with a message naming the detector, the check and what went
wrong; an unexpected exception from the detector is reported the same way, chained to its cause.

The synthetic data (:func:`make_synthetic_inputs`): ID samples are ``n_classes`` Gaussian
clusters (unit variance) whose means lie on orthogonal axes at distance 8 from the origin, with
their class labels; OOD samples are one more cluster of the same shape on another orthogonal axis,
so it is far from the ID data both in angle and in Euclidean distance. Logits, for detectors that
need them, are those of a linear head (the unit class axes, a small bias) on the features: about 8
on an ID sample's class, N(0, 1) noise elsewhere and everywhere for OOD; the head itself goes to
the detectors that need it (``requires.head``). Detectors on layered features
(``requires.layered``) get the same data seen through three layers, ``[n, 3, d]``
(:func:`make_layered_inputs`). A detector that needs other data passes its own ``make_inputs``.

Usage, for a plugin author (in the plugin's test suite)::

    import pytest
    from ood_zoo.testing import check_detector, detector_params
    from my_package import MyDetector, MyOtherDetector

    def test_conforms(tmp_path):
        check_detector(MyDetector, tmp_path=tmp_path)  # all checks, stops at the first failure

    # or one test per check and detector, so that every failure shows up, with readable ids
    # (test_check[my_detector:check_api_shape], ...):
    @pytest.mark.parametrize(("name", "check"), detector_params(MyDetector, MyOtherDetector))
    def test_check(name, check):
        check()

    # with non-default hyperparameters:
    def test_small_k(tmp_path):
        check_detector(MyDetector, params={"k": 3}, tmp_path=tmp_path)

Detectors that need the language model itself (``requires.language_model``) take per-text
statistics of it as ``features`` (see :mod:`ood_zoo.detectors.likelihood`). Those whose
``stats_columns`` are built-in column names (:data:`LIKELIHOOD_COLUMNS`, then ``n_tokens``) get
every check on synthetic statistics
(:func:`make_likelihood_inputs`); for any other, pass ``make_inputs`` (its ``features`` are the
statistics), or only the class attributes are checked.
"""

from __future__ import annotations

from .checks import (
    CHECKS,
    MIN_AUROC,
    auroc,
    check_api_shape,
    check_bad_input_errors,
    check_class_attributes,
    check_detector,
    check_half_precision,
    check_numpy_torch_roundtrip,
    check_save_load_roundtrip,
    check_score_direction,
    detector_checks,
    detector_params,
)
from .inputs import (
    LIKELIHOOD_COLUMNS,
    MakeInputs,
    Split,
    SyntheticInputs,
    default_make_inputs,
    make_layered_inputs,
    make_likelihood_inputs,
    make_synthetic_inputs,
)
from .plugins import check_plugin

__all__ = [
    "CHECKS",
    "LIKELIHOOD_COLUMNS",
    "MIN_AUROC",
    "MakeInputs",
    "Split",
    "SyntheticInputs",
    "auroc",
    "check_api_shape",
    "check_bad_input_errors",
    "check_class_attributes",
    "check_detector",
    "check_half_precision",
    "check_numpy_torch_roundtrip",
    "check_plugin",
    "check_save_load_roundtrip",
    "check_score_direction",
    "default_make_inputs",
    "detector_checks",
    "detector_params",
    "make_layered_inputs",
    "make_likelihood_inputs",
    "make_synthetic_inputs",
]
