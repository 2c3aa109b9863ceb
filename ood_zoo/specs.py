"""The records a plugin returns from the ``ood_zoo_models``, ``ood_zoo_datasets`` and
``ood_zoo_engines`` hooks.

They sit next to :mod:`ood_zoo.hookspecs` and depend on nothing else in ood_zoo, so the plugin
layer can check them without importing the feature or data code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["DatasetSpec", "EngineSpec", "Loaded", "ModelSpec"]

#: What a model loader returns: the model and its tokenizer.
Loaded = tuple["PreTrainedModel", "PreTrainedTokenizerBase"]


@dataclass(frozen=True)
class ModelSpec:
    """A model known by name.

    Attributes
    ----------
    name : str
        The registry name.
    load : callable
        ``load(device=..., dtype=...) -> (model, tokenizer)``, offline. Built-in loaders also
        take ``device_map=`` (passed to ``from_pretrained``; needs ``accelerate``).
    pooling : str
        The model's native (or recommended) pooling, see :mod:`ood_zoo.features.pooling`.
    max_length : int
        The longest input, in tokens, the model was trained for.
    package : str
        The distribution that carries the weights.
    license : str
        The terms of the weights.
    kind : {"encoder", "decoder"}
        A bidirectional encoder or a causal decoder LM (which has label-token logits).
    template : str or None
        The recommended prompt template (``{text}`` marks the input), e.g. the paper's
        :data:`ood_zoo.features.PAPER_TEMPLATE` for decoder LMs; ``None`` for raw text.
    description : str
        One line for listings.
    fingerprint : callable or None
        ``fingerprint() -> str``: the identity of the weights (a file hash or revision) without
        loading the model, for cache keys; ``None`` if unknown before loading.
    """

    name: str
    load: Callable[..., Loaded]
    pooling: str
    max_length: int
    package: str
    license: str
    kind: Literal["encoder", "decoder"] = "encoder"
    template: str | None = None
    description: str = ""
    fingerprint: Callable[[], str] | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset known by name.

    Attributes
    ----------
    name : str
        The registry name (``"rotten_tomatoes"``).
    load : callable
        ``load(**options)`` returns the data (a :class:`~ood_zoo.data.TextSet`, or a mapping of
        split name to TextSet); offline only.
    description : str
        One line on what it holds and what it stands in for.
    source, license : str
        Where the texts come from and under which terms.
    needs_files : bool
        True for loaders that read files the user provides (``root=``), e.g. CLINC150.
    files : str
        For ``needs_files`` loaders, the files expected under ``root`` (shown by
        ``ood-zoo datasets``).
    seeded : bool
        True for loaders whose draw depends on a ``seed=`` option (the CLINC domain splits):
        :func:`ood_zoo.data.standard_splits` passes them its seed.
    """

    name: str
    load: Callable[..., Any]
    description: str = ""
    source: str = ""
    license: str = ""
    needs_files: bool = False
    files: str = ""
    seeded: bool = False


@dataclass(frozen=True)
class EngineSpec:
    """An execution engine that runs a stage across processes or machines (e.g. Ray).

    The core is engine-free: an engine only replaces *where* a stage runs, never what it
    computes, so its results must equal the single-process stage's.

    Attributes
    ----------
    name : str
        The registry name, as ``ood-zoo bench --engine NAME`` takes it.
    extract : callable
        ``extract(texts, model, **options) -> Extraction``: the contract of
        :func:`ood_zoo.features.extract` with ``model`` given by registry name or local path
        (each worker loads its own copy), returning the same rows in input order; it also
        takes ``num_workers`` (``ood-zoo bench --workers``).
    description : str
        One line for listings.
    package : str
        The distribution that provides the engine.
    """

    name: str
    extract: Callable[..., Any]
    description: str = ""
    package: str = ""
