"""Feature extraction: hidden states of a transformers model, pooled into one vector per text.

>>> from ood_zoo.features import extract
>>> feats = extract(["I love this film"], "minilm", pooling="mean")  # doctest: +SKIP
>>> feats.shape                                                     # doctest: +SKIP
torch.Size([1, 384])
>>> out = extract(texts, "smollm2-135m", pooling="last", template=PAPER_TEMPLATE,
...               label_words=["negative", "positive"], cache=True)  # doctest: +SKIP
>>> out.features.shape, out.label_logits.shape, out.msp().shape      # doctest: +SKIP
>>> ll = sequence_log_likelihood(texts, "smollm2-135m", template=PAPER_TEMPLATE)  # doctest: +SKIP
>>> ll.shape  # (log p(text | prompt), n_tokens) per text          # doctest: +SKIP
"""

from __future__ import annotations

from ..specs import ModelSpec
from .encode import Template, label_token_ids
from .extract import Extraction, extract, resolve_layers, tokenizer_fingerprint
from .likelihood import likelihood_ratio_inputs, sequence_log_likelihood
from .models import (
    BUILTIN_MODELS,
    PAPER_TEMPLATE,
    cache_root,
    load_model,
    load_pretrained,
    load_smollm2,
    minilm_dir,
    model_fingerprint,
    model_spec,
    resolve_dtype,
    smollm2_cache_dir,
    smollm2_gguf,
)
from .pooling import POOLING_MODES, pool

__all__ = [
    "BUILTIN_MODELS",
    "PAPER_TEMPLATE",
    "POOLING_MODES",
    "Extraction",
    "ModelSpec",
    "Template",
    "cache_root",
    "extract",
    "label_token_ids",
    "likelihood_ratio_inputs",
    "load_model",
    "load_pretrained",
    "load_smollm2",
    "minilm_dir",
    "model_fingerprint",
    "model_spec",
    "pool",
    "resolve_dtype",
    "resolve_layers",
    "sequence_log_likelihood",
    "smollm2_cache_dir",
    "smollm2_gguf",
    "tokenizer_fingerprint",
]
