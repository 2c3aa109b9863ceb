"""What kind of model this is: the one place that reads it off a model or its directory.

- :func:`is_causal_lm`: a causal LM with an LM head (label-token logits, likelihoods) or not;
- :func:`lm_head` and :func:`backbone`: the LM head and the transformer body before it (to the
  final norm), a peft wrapper unwrapped;
- :func:`n_hidden_states` and :func:`logit_softcap`: what the config says about its outputs;
- :func:`default_pooling` and :func:`default_template`: how to read one vector per text out of
  a model that no :class:`~ood_zoo.features.ModelSpec` describes (a registered model's spec
  carries its own ``pooling``, ``template`` and ``kind``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = [
    "PAPER_TEMPLATE",
    "backbone",
    "default_pooling",
    "default_template",
    "input_device",
    "is_causal_lm",
    "lm_head",
    "logit_softcap",
    "n_hidden_states",
]

#: The prompt of Liu et al. (2024), §2 of the paper digest (``template.json``, ``normal``);
#: ``{text}`` marks the input.
PAPER_TEMPLATE = "### Input:\n{text}\n\n### Output:\n"

#: Class names of causal LMs in transformers (``LlamaForCausalLM``, ``GPT2LMHeadModel``).
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")

ModelOrDirectory = torch.nn.Module | str | os.PathLike[str]


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft ``PeftModel`` (its LoRA layers stay active)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _output_embeddings(model: torch.nn.Module) -> torch.nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if callable(getter) else None


def is_causal_lm(model: ModelOrDirectory) -> bool:
    """Whether ``model`` is a causal (decoder) LM with an LM head.

    Parameters
    ----------
    model : torch.nn.Module, str or path-like
        A loaded model (a peft wrapper is looked through), or a local ``save_pretrained``
        directory, judged by its ``config.json`` without loading it.

    Returns
    -------
    bool
        True for ``*ForCausalLM`` and ``*LMHeadModel`` models (by class or config
        ``architectures``) that are not encoder-decoders; for a loaded model the LM head must
        also be present.
    """
    if isinstance(model, str | os.PathLike):
        try:
            config = json.loads((Path(model) / "config.json").read_text())
        except (OSError, ValueError):
            return False
        names = [str(a) for a in config.get("architectures") or []]
        return not config.get("is_encoder_decoder", False) and any(
            n.endswith(_CAUSAL_SUFFIXES) for n in names)
    inner = _unwrapped(model)
    config = getattr(inner, "config", None)
    if getattr(config, "is_encoder_decoder", False) or _output_embeddings(inner) is None:
        return False
    names = [type(inner).__name__, *(getattr(config, "architectures", None) or [])]
    return any(n.endswith(_CAUSAL_SUFFIXES) for n in names)


def lm_head(model: torch.nn.Module, *, purpose: str = "this") -> torch.nn.Module:
    """The LM head (output embeddings) of a causal LM, a peft wrapper unwrapped.

    Raises
    ------
    ValueError
        If the model has no LM head (a base ``AutoModel``, an encoder); the message says that
        ``purpose`` (e.g. ``"label_words"``) needs one.
    """
    inner = _unwrapped(model)
    head = _output_embeddings(inner)
    if head is None:
        raise ValueError(
            f"{purpose} needs a causal language model with an LM head (e.g. LlamaForCausalLM); "
            f"{type(inner).__name__} has none"
        )
    return head


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body of ``model``, up to its final norm (``model.model`` for Llama).

    Its outputs are the hidden states, without the LM head; a peft wrapper is unwrapped, and
    weight adapters (LoRA) stay active inside it.
    """
    inner = _unwrapped(model)
    return getattr(inner, "base_model", inner)


def n_hidden_states(model: torch.nn.Module) -> int | None:
    """``num_hidden_layers + 1`` from the (text) config: embeddings plus one state per block;
    ``None`` when the config does not say."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    n_layers = getattr(config, "num_hidden_layers", None)
    return None if n_layers is None else int(n_layers) + 1


def logit_softcap(model: torch.nn.Module) -> float | None:
    """The final-logit soft-capping of the config (Gemma 2: ``tanh(z / c) * c``), or ``None``."""
    return getattr(getattr(model, "config", None), "final_logit_softcapping", None)


def input_device(model: torch.nn.Module) -> torch.device | None:
    """Where input ids must go: the device of the input embeddings (``device_map`` aware), else
    of the first parameter; ``None`` for a model without parameters."""
    getter = getattr(model, "get_input_embeddings", None)
    embeddings = getter() if callable(getter) else None
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    parameter = next(model.parameters(), None)
    return None if parameter is None else parameter.device


def default_pooling(model: ModelOrDirectory) -> str:
    """``"last"`` for a causal LM (its first position is an attention sink), else ``"mean"``."""
    return "last" if is_causal_lm(model) else "mean"


def default_template(model: ModelOrDirectory) -> str | None:
    """:data:`PAPER_TEMPLATE` for a causal LM, else ``None`` (raw text)."""
    return PAPER_TEMPLATE if is_causal_lm(model) else None
