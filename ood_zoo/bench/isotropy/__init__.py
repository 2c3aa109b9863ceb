"""The isotropy suite (``ood-zoo isotropy``): isotropy of the ID bank per model and layer against
the AUROC gap between cosine and Euclidean / Mahalanobis detectors.

- :mod:`.study`: the configuration, the text draws, one row per (model, layer), the Spearman
  correlations and :func:`run_study`.
- :mod:`.outputs`: the tables and ``isotropy.json`` / ``.md`` / ``.csv``; :mod:`.figures` draws
  the plots.

The measures themselves are :mod:`ood_zoo.analysis`.

>>> config = IsotropyConfig(models=(ModelChoice("minilm"),), n_bank=50)  # doctest: +SKIP
>>> result = run_study(config)                                          # doctest: +SKIP
>>> write_outputs(result, "results/isotropy")                           # doctest: +SKIP
"""

from __future__ import annotations

from .figures import write_plots
from .outputs import final_rows, render_tables, write_outputs
from .study import (
    CORRELATED,
    DEFAULT_MODELS,
    DEFAULT_N,
    DETECTORS,
    GAPS,
    ROW_COLUMNS,
    SHORT_NAMES,
    IsotropyConfig,
    ModelChoice,
    ResolvedModel,
    StudyResult,
    StudyTexts,
    correlations,
    draw_texts,
    layer_row,
    resolve_model,
    run_study,
)

__all__ = [
    "CORRELATED",
    "DEFAULT_MODELS",
    "DEFAULT_N",
    "DETECTORS",
    "GAPS",
    "ROW_COLUMNS",
    "SHORT_NAMES",
    "IsotropyConfig",
    "ModelChoice",
    "ResolvedModel",
    "StudyResult",
    "StudyTexts",
    "correlations",
    "draw_texts",
    "final_rows",
    "layer_row",
    "render_tables",
    "resolve_model",
    "run_study",
    "write_outputs",
    "write_plots",
]
