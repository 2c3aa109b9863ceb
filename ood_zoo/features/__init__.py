"""Feature extraction: hidden states of a transformers model, pooled into one vector per text.

>>> from ood_zoo.features import extract
>>> feats = extract(["I love this film"], "minilm", pooling="mean")  # doctest: +SKIP
>>> feats.shape                                                     # doctest: +SKIP
torch.Size([1, 384])
"""

from __future__ import annotations

from .extract import extract, resolve_layers
from .models import BUILTIN_MODELS, ModelSpec, load_model, load_pretrained, minilm_dir, model_spec
from .pooling import POOLING_MODES, pool

__all__ = [
    "BUILTIN_MODELS",
    "POOLING_MODES",
    "ModelSpec",
    "extract",
    "load_model",
    "load_pretrained",
    "minilm_dir",
    "model_spec",
    "pool",
    "resolve_layers",
]
