"""Feature extraction: hidden states of a transformers model, pooled into one vector per text.

Every call returns one :class:`Extraction`:

>>> from ood_zoo.features import PAPER_TEMPLATE, extract
>>> out = extract(["I love this film"], "minilm", pooling="mean")  # doctest: +SKIP
>>> out.features.shape                                              # doctest: +SKIP
torch.Size([1, 384])
>>> out = extract(texts, "smollm2-135m", layers="all", pooling="last", template=PAPER_TEMPLATE,
...               label_words=["negative", "positive"], lm_stats=True, cache=True)  # doctest: +SKIP
>>> out.layer(-1).shape, out.label_log_probs().shape                # doctest: +SKIP
>>> out.lm_stats.shape  # NEXT_TOKEN_STATS per text: [n, 5]         # doctest: +SKIP
>>> out.rows([0, 2]).features.shape                                 # doctest: +SKIP

:func:`is_causal_lm`, :func:`lm_head` and the other functions of :mod:`.introspect` say what a
model is; :func:`next_token_statistics` (and its two columns :func:`sequence_log_likelihood`)
scores texts under a causal LM on its own.
"""

from __future__ import annotations

from ..specs import ModelSpec
from ._inputs import length_order, token_budget, tokenizer_fingerprint
from .encode import Template, label_token_ids
from .extract import (
    Extraction,
    cache_key,
    extract,
    feature_lengths,
    model_identity,
    resolve_layers,
)
from .introspect import (
    PAPER_TEMPLATE,
    backbone,
    default_pooling,
    default_template,
    input_device,
    is_causal_lm,
    lm_head,
    logit_softcap,
    n_hidden_states,
)
from .likelihood import (
    NEXT_TOKEN_STATS,
    RENYI_ALPHA,
    likelihood_ratio_inputs,
    next_token_divergences,
    next_token_statistics,
    prompt_lengths,
    sequence_log_likelihood,
)
from .models import (
    BUILTIN_MODELS,
    cache_root,
    load_model,
    load_pretrained,
    load_smollm2,
    minilm_dir,
    model_fingerprint,
    model_spec,
    resolve_device,
    resolve_dtype,
    smollm2_cache_dir,
    smollm2_gguf,
)
from .pooling import POOLING_MODES, avg_avg, pool

__all__ = [
    "BUILTIN_MODELS",
    "NEXT_TOKEN_STATS",
    "PAPER_TEMPLATE",
    "POOLING_MODES",
    "RENYI_ALPHA",
    "Extraction",
    "ModelSpec",
    "Template",
    "avg_avg",
    "backbone",
    "cache_key",
    "cache_root",
    "default_pooling",
    "default_template",
    "extract",
    "feature_lengths",
    "input_device",
    "is_causal_lm",
    "label_token_ids",
    "length_order",
    "likelihood_ratio_inputs",
    "lm_head",
    "load_model",
    "load_pretrained",
    "load_smollm2",
    "logit_softcap",
    "minilm_dir",
    "model_fingerprint",
    "model_identity",
    "model_spec",
    "n_hidden_states",
    "next_token_divergences",
    "next_token_statistics",
    "pool",
    "prompt_lengths",
    "resolve_device",
    "resolve_dtype",
    "resolve_layers",
    "sequence_log_likelihood",
    "smollm2_cache_dir",
    "smollm2_gguf",
    "token_budget",
    "tokenizer_fingerprint",
]
