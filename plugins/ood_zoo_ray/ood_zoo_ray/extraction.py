"""Feature extraction on Ray Data: :func:`ood_zoo.features.extract` in actor pools, sharded.

The driver tokenises the texts once and sorts them as :func:`ood_zoo.features.extract` does
(:func:`~ood_zoo.features.length_order` of :func:`~ood_zoo.features.feature_lengths`: longest
first, ties in input order). It cuts that order into shards of whole batches (``shard_rows``, a
multiple of ``batch_size``), and each Ray Data actor (one model load per actor) runs the core's
own :func:`~ood_zoo.features.extract` on a shard's texts in that order. So every forward pass
sees exactly the batch it would see in one process, and the result is bitwise that of
``ood_zoo.features.extract(texts, model, ...)`` run with the actors' torch thread count
(``max(1, int(num_cpus_per_worker))``: the CPU GEMMs round differently with 1 and 2
threads). With ``lm_stats=True`` a second set of shards cuts the order of
:func:`~ood_zoo.features.next_token_statistics` (its prompt lengths,
:func:`~ood_zoo.features.prompt_lengths`) the same way.

The driver writes what the actors return into ``output``::

    plan.json                    first: the extraction's key and the shard layout
    features-00000.safetensors   one file per shard: its rows (input positions) and tensors,
    lm_stats-00000.safetensors   the shard's key and a SHA-256 of the data in the header
    manifest.json                last: the plan plus each shard file's SHA-256 and size

Every file is written atomically (temporary file, fsync, rename). A re-run with the same
``output`` keeps the shards that verify (key and checksum) and computes only the others, so an
interrupted run resumes where it stopped; an ``output`` planned with other settings is an error
unless ``overwrite=True``. Ray Data restarts a failed actor and retries its shard (its
actor-pool defaults ``max_restarts=-1``, ``max_task_retries=-1``); a shard that comes back twice
is written once.

The actors must see the model (a registered name, or a directory on a file system every node
mounts); the driver also loads it once, on the CPU, to tokenise, fingerprint and check the
arguments on one text before any actor starts. Shards travel through Ray's object store to the
driver, so ``output`` needs to be writable by the driver only.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ood_zoo.data import TextSet
from ood_zoo.errors import InputError, PersistenceError
from ood_zoo.features import (
    POOLING_MODES,
    RENYI_ALPHA,
    Extraction,
    cache_key,
    feature_lengths,
    length_order,
    load_model,
    model_fingerprint,
    model_identity,
    prompt_lengths,
    resolve_dtype,
    resolve_layers,
    tokenizer_fingerprint,
)
from ood_zoo.features import extract as extract_one_process
from ood_zoo.features.cache import key_digest, read_entry, write_entry
from ood_zoo.io import atomic_write_bytes, sha256_file

from .cluster import ensure_ray, torch_threads

__all__ = ["FORMAT", "MANIFEST", "PLAN", "ShardWorker", "extract", "extract_features", "load"]

#: Written into the plan, the manifest and every shard's header.
FORMAT = "ood_zoo_ray.extract/1"
#: The file written before any shard (settings and layout) and the one written last.
PLAN, MANIFEST = "plan.json", "manifest.json"
#: Rows of a shard by default, in batches.
DEFAULT_BATCHES_PER_SHARD = 32

_FEATURES, _LM_STATS = "features", "lm_stats"
#: A features shard's tensors with one row per text, and those it shares with every shard.
_ROW_TENSORS = ("label_logits", "vocab_logsumexp")
_CONSTANT_TENSORS = ("n_states", "label_token_ids", "label_head_weight", "label_head_bias")


@dataclass(frozen=True)
class _Shard:
    """Positions ``[start, stop)`` of one stage's length order."""

    stage: str
    index: int
    start: int
    stop: int

    @property
    def file(self) -> str:
        return f"{self.stage}-{self.index:05d}.safetensors"


def extract(
    data: Sequence[str] | TextSet | Any,
    model: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str],
    layers: int | Sequence[int] | str = -1,
    pooling: str = "mean",
    template: str | None = None,
    label_words: Sequence[str] | None = None,
    lm_stats: bool = False,
    batch_size: int = 32,
    max_length: int = 512,
    dtype: torch.dtype | str | None = None,
    device: str | None = None,
    sort_by_length: bool = True,
    num_workers: int = 1,
    num_cpus_per_worker: float = 1,
    num_gpus_per_worker: float = 0,
    shard_rows: int | None = None,
    text_column: str = "text",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Extract features with a pool of Ray Data actors into shards under ``output``.

    Parameters
    ----------
    data : sequence of str, TextSet or ray.data.Dataset
        The texts. A Dataset's ``text_column`` is read to the driver (``take_all``, in the
        dataset's order) to be tokenised and sorted.
    model : str or path
        A registered model name (``"minilm"``, ``"smollm2-135m"``) or a local model directory;
        each actor loads its own copy (:func:`ood_zoo.features.load_model`).
    output : path
        The directory of the shards and the manifest (created if missing).
    layers, pooling, template, label_words, lm_stats, batch_size, max_length, dtype, \
sort_by_length
        As in :func:`ood_zoo.features.extract`.
    device : str, optional
        The device inside each actor; default CUDA where the actor has a GPU, else the CPU.
    num_workers : int
        Actors in the pool (each loads the model once).
    num_cpus_per_worker, num_gpus_per_worker : float
        Ray resources of each actor; torch in an actor uses ``max(1, int(num_cpus_per_worker))``
        threads (set in the actor: a reused Ray worker keeps the thread count it was started
        with), and a GPU actor sees its GPU as ``cuda``.
    shard_rows : int, optional
        Texts per shard, a multiple of ``batch_size``; default
        ``DEFAULT_BATCHES_PER_SHARD * batch_size``. Part of the plan: a re-run must keep it.
    text_column : str
        The column of a ``ray.data.Dataset`` that holds the texts.
    overwrite : bool
        Replace an extraction of other settings found in ``output`` instead of refusing it.
    progress : bool
        A tqdm bar over shards (Ray Data's own bars stay off).

    Returns
    -------
    pathlib.Path
        ``output``; :func:`load` reads it back as an :class:`~ood_zoo.features.Extraction`.

    Raises
    ------
    InputError
        If ``output`` holds an extraction planned with other settings (and not ``overwrite``),
        or is not a directory, or a Dataset lacks ``text_column``.
    TypeError, ValueError
        On bad arguments, as :func:`ood_zoo.features.extract` raises them (checked on the
        driver, on the first text, before any actor starts).
    """
    texts = _texts(data, text_column)
    if not isinstance(model, str | os.PathLike):
        raise TypeError("the ray engine loads the model in every actor: give a registered "
                        f"name or a local model directory, not a {type(model).__name__}")
    for name, value in (("batch_size", batch_size), ("num_workers", num_workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    rows_per_shard = DEFAULT_BATCHES_PER_SHARD * batch_size if shard_rows is None else shard_rows
    if isinstance(rows_per_shard, bool) or not isinstance(rows_per_shard, int) or (
            rows_per_shard < 1 or rows_per_shard % batch_size):
        raise ValueError(f"shard_rows must be a positive multiple of batch_size={batch_size} "
                         f"(shards of whole batches keep every batch as in one process), got "
                         f"{shard_rows!r}")
    if pooling not in POOLING_MODES:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLING_MODES)}")
    words = None if label_words is None else (
        label_words if isinstance(label_words, str) else list(label_words))
    options = {"layers": layers, "pooling": pooling, "template": template, "label_words": words,
               "batch_size": batch_size, "max_length": max_length,
               "sort_by_length": sort_by_length}

    plan, orders = _plan(texts, model, options, lm_stats=lm_stats, dtype=resolve_dtype(dtype),
                         shard_rows=rows_per_shard)
    directory = _prepare(Path(output).expanduser(), plan, overwrite=overwrite)
    shards = [_Shard(**{k: s[k] for k in ("stage", "index", "start", "stop")})
              for s in plan["shards"]]
    todo = [j for j, shard in enumerate(shards)
            if read_entry(directory / shard.file, _shard_key(plan, shard),
                          n_rows=shard.stop - shard.start) is None]
    digests: dict[int, str] = {}  # of the shards written now (the others are hashed below)
    if todo:
        (directory / MANIFEST).unlink(missing_ok=True)
        worker = {"model": str(model), "options": options, "dtype": dtype, "device": device,
                  "threads": torch_threads(num_cpus_per_worker)}
        with tqdm(total=len(shards), initial=len(shards) - len(todo), desc="extract (ray)",
                  unit="shard", disable=not progress) as bar:
            for j, tensors in _run_shards(texts, orders, shards, todo, worker, num_workers,
                                          num_cpus_per_worker, num_gpus_per_worker):
                shard = shards[j]
                tensors["rows"] = torch.tensor(orders[shard.stage][shard.start : shard.stop])
                digests[j] = write_entry(directory / shard.file, tensors,
                                         _shard_key(plan, shard))
                bar.update(1)
    manifest = {**plan, "shards": [
        {**entry, "sha256": digests.get(j) or sha256_file(directory / entry["file"]),
         "bytes": (directory / entry["file"]).stat().st_size}
        for j, entry in enumerate(plan["shards"])
    ]}
    atomic_write_bytes(directory / MANIFEST, json.dumps(manifest, indent=1).encode())
    return directory


def load(output: str | os.PathLike[str], *, verify: bool = True) -> Extraction:
    """The :class:`~ood_zoo.features.Extraction` that :func:`extract` wrote to ``output``, row
    ``i`` for text ``i``.

    Shards are read through ``safetensors.safe_open`` (memory-mapped) straight into the result.

    Parameters
    ----------
    verify : bool
        Check every shard file's SHA-256 against the manifest first.

    Raises
    ------
    InputError
        If ``output`` holds no finished extraction (no manifest: run :func:`extract` again with
        the same ``output`` to finish it).
    PersistenceError
        If a shard file is missing or does not match the manifest, or the shards do not cover
        every row exactly once.
    """
    from safetensors import safe_open

    directory = Path(output).expanduser()
    manifest = _read_json(directory / MANIFEST)
    if manifest is None or manifest.get("format") != FORMAT:
        state = ("is unfinished: run extract again with the same output to finish it"
                 if (directory / PLAN).is_file() else "holds no ood_zoo_ray extraction")
        raise InputError(f"{str(directory)!r} {state}")
    n = int(manifest["key"]["n_texts"])
    tensors: dict[str, torch.Tensor] = {}
    seen = {_FEATURES: torch.zeros(n, dtype=torch.int64),
            _LM_STATS: torch.zeros(n, dtype=torch.int64)}
    for entry in manifest["shards"]:
        path = directory / entry["file"]
        if verify and (not path.is_file() or sha256_file(path) != entry["sha256"]):
            raise PersistenceError(f"shard {str(path)!r} is missing or does not match the "
                                   "manifest; run extract again with the same output to "
                                   "recompute it")
        with safe_open(str(path), framework="pt") as handle:
            names = set(handle.keys())
            rows = handle.get_tensor("rows")
            seen[entry["stage"]].index_add_(0, rows, torch.ones_like(rows))
            per_row = {("lm_stats" if entry["stage"] == _LM_STATS else "features"): "features"}
            if entry["stage"] == _FEATURES:
                per_row.update({name: name for name in _ROW_TENSORS if name in names})
                for name in _CONSTANT_TENSORS:
                    if name in names and name not in tensors:
                        tensors[name] = handle.get_tensor(name)
            for name, stored in per_row.items():
                part = handle.get_tensor(stored)
                if name not in tensors:
                    tensors[name] = torch.empty((n, *part.shape[1:]), dtype=part.dtype)
                tensors[name][rows] = part
    stages = {entry["stage"] for entry in manifest["shards"]}
    for stage in stages:
        if not bool((seen[stage] == 1).all()):
            raise PersistenceError(f"the {stage} shards of {str(directory)!r} do not hold every "
                                   "row exactly once")
    return _extraction(manifest["key"], tensors)


def extract_features(
    texts: Sequence[str] | TextSet | Any,
    model: str | os.PathLike[str],
    tokenizer: None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    cache: bool | None = False,
    device_map: None = None,
    **options: Any,
) -> Extraction:
    """The ``ray`` engine's ``extract``: :func:`ood_zoo.features.extract`'s contract on Ray.

    Runs :func:`extract` (``options`` are its keyword arguments, engine ones included:
    ``num_workers``, ``num_gpus_per_worker``, ``shard_rows``, ...) into ``output`` (default a
    temporary directory, removed afterwards) and returns :func:`load` of it: bitwise the rows of
    ``ood_zoo.features.extract(texts, model, **options)`` with the actors' torch thread count
    (one by default), in input order.

    Raises
    ------
    TypeError
        If a tokenizer is given (each actor loads the model's own).
    ValueError
        If ``cache`` or ``device_map`` is set: the engine keeps its shards in ``output``
        instead, and places one model per actor.
    """
    if tokenizer is not None:
        raise TypeError("the ray engine loads each model with its own tokenizer; "
                        "save a model directory with the tokenizer you want instead")
    if cache:
        raise ValueError("the ray engine does not use the features cache; pass output=DIR to "
                         "keep (and resume) its shards")
    if device_map is not None:
        raise ValueError("the ray engine places one model per actor; device_map is not used")
    if output is not None:
        return load(extract(texts, model, output=output, **options))
    with tempfile.TemporaryDirectory(prefix="ood_zoo_ray-") as scratch:
        return load(extract(texts, model, output=scratch, **options), verify=False)


# ---------------------------------------------------------------------------- the driver


def _texts(data: Any, text_column: str) -> list[str]:
    """The texts of a list, a TextSet or a ``ray.data.Dataset`` (checked as strings later)."""
    if isinstance(data, TextSet):
        return list(data.texts)
    if type(data).__module__.startswith("ray.data") and hasattr(data, "take_all"):
        columns = data.columns() or []
        if text_column not in columns:
            raise InputError(f"the dataset has no column {text_column!r} (columns: {columns}); "
                             "pass text_column=")
        projected = data.select_columns([text_column])
        with _quiet_ray_data(projected.context, preserve_order=True):
            return [row[text_column] for row in projected.take_all()]
    if isinstance(data, str | bytes) or not isinstance(data, Iterable):
        raise TypeError("data must be a sequence of strings, a TextSet or a ray.data.Dataset, "
                        f"got {type(data).__name__}")
    return list(data)


def _plan(
    texts: list[str], model: str | os.PathLike[str], options: dict[str, Any], *,
    lm_stats: bool, dtype: torch.dtype | None, shard_rows: int,
) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """The plan (key, settings, shards) and each stage's order, from one driver-side load."""
    sort_by_length = options["sort_by_length"]
    loaded, tokenizer = load_model(model, device="cpu", dtype=dtype)
    try:
        lengths = feature_lengths(texts, tokenizer, max_length=options["max_length"],
                                  template=options["template"])
        if texts:  # the core's own checks of every argument, on one text
            extract_one_process(texts[:1], loaded, tokenizer, lm_stats=lm_stats, progress=False,
                                **options)
        identity = model_identity(model) or (model_fingerprint(loaded),
                                             tokenizer_fingerprint(tokenizer))
        run_dtype = next(loaded.parameters()).dtype
        orders = {_FEATURES: length_order(lengths) if sort_by_length else list(range(len(texts)))}
        if lm_stats:
            prompts = prompt_lengths(texts, tokenizer, template=options["template"],
                                     max_length=options["max_length"])
            orders[_LM_STATS] = length_order(prompts) if sort_by_length else (
                list(range(len(texts))))
    finally:
        del loaded
    key = cache_key(identity, texts, options["layers"], options["pooling"], options["template"],
                    options["max_length"], run_dtype, options["label_words"])
    shards = [
        {"stage": stage, "index": k, "start": start, "stop": min(start + shard_rows, len(texts)),
         "file": _Shard(stage, k, 0, 0).file}
        for stage in orders
        for k, start in enumerate(range(0, max(len(texts), 1), shard_rows))
    ]
    plan = {
        "format": FORMAT, "key": key, "batch_size": options["batch_size"],
        "shard_rows": shard_rows, "sort_by_length": sort_by_length,
        "lm_stats": {"alpha": RENYI_ALPHA} if lm_stats else None, "shards": shards,
    }
    return json.loads(json.dumps(plan)), orders


def _shard_key(plan: dict[str, Any], shard: _Shard) -> dict[str, Any]:
    """The key in a shard's header: the plan it belongs to and its place in it."""
    return {"format": FORMAT, "plan": key_digest(plan), "stage": shard.stage,
            "index": shard.index, "start": shard.start, "stop": shard.stop}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _prepare(directory: Path, plan: dict[str, Any], *, overwrite: bool) -> Path:
    """``directory`` holding ``plan.json`` of ``plan``, refusing (or, with ``overwrite``,
    clearing) an extraction planned otherwise."""
    if directory.exists() and not directory.is_dir():
        raise InputError(f"output {str(directory)!r} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    found = _read_json(directory / PLAN)
    if found == plan:
        return directory
    if found is not None:
        if not overwrite:
            differ = sorted(
                {k for k in plan["key"] if found.get("key", {}).get(k) != plan["key"][k]}
                | {k for k in plan if k != "key" and found.get(k) != plan[k]}
            )
            raise InputError(
                f"{str(directory)!r} holds an extraction with other settings (differing: "
                f"{', '.join(differ)}); pass overwrite=True to replace it, or another output"
            )
        for stale in [directory / MANIFEST, *directory.glob("features-*.safetensors"),
                      *directory.glob("lm_stats-*.safetensors")]:
            stale.unlink(missing_ok=True)
    atomic_write_bytes(directory / PLAN, json.dumps(plan, indent=1).encode())
    return directory


def _run_shards(
    texts: list[str], orders: dict[str, list[int]], shards: list[_Shard], todo: list[int],
    worker: dict[str, Any], num_workers: int, num_cpus: float, num_gpus: float,
) -> Iterable[tuple[int, dict[str, torch.Tensor]]]:
    """``(shard number, tensors)`` of every shard in ``todo``, as the actors finish them."""
    from safetensors.torch import load as load_bytes

    ray = ensure_ray()
    with _quiet_ray_data(ray.data.DataContext.get_current(), preserve_order=False):
        items = [{"shard": j, "texts": [texts[i] for i in
                                        orders[shards[j].stage][shards[j].start:shards[j].stop]],
                  "stage": shards[j].stage} for j in todo]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ShardWorker, batch_size=1, batch_format="pyarrow", fn_constructor_kwargs=worker,
            compute=ray.data.ActorPoolStrategy(size=min(num_workers, len(items))),
            num_cpus=num_cpus,
            num_gpus=num_gpus or None,
        )
        done = set()
        for row in dataset.iter_rows():
            j = int(row["shard"])
            if j not in done:  # a retried shard may come back twice: identical, keep one
                done.add(j)
                yield j, load_bytes(bytes(row["data"]))
    missing = sorted(set(todo) - done)
    if missing:
        raise RuntimeError(f"Ray Data returned no result for shards {missing}")


@contextmanager
def _quiet_ray_data(context: Any, *, preserve_order: bool) -> Iterator[None]:
    """A Ray Data context without its progress bars and start-up messages (the caller shows one
    tqdm bar over shards), with ``preserve_order`` as given; restored on exit.

    A Dataset keeps the context it was created in (``Dataset.context``), so this applies to
    that one's context or to the current one before the Dataset is made.
    """
    saved = (context.enable_progress_bars, context.print_on_execution_start,
             context.execution_options.preserve_order)
    context.enable_progress_bars = context.print_on_execution_start = False
    context.execution_options.preserve_order = preserve_order
    try:
        yield
    finally:
        (context.enable_progress_bars, context.print_on_execution_start,
         context.execution_options.preserve_order) = saved


class ShardWorker:
    """A Ray Data actor: loads the model once, then runs the core's extraction on shards."""

    def __init__(self, model: str, options: dict[str, Any], dtype: Any, device: str | None,
                 threads: int):
        torch.set_num_threads(threads)  # set, not inherited: see cluster.torch_threads
        self.model, self.tokenizer = load_model(model, device=device, dtype=dtype)
        self.options = options

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        from safetensors.torch import save

        from ood_zoo.features import next_token_statistics

        blobs = []
        for stage, texts in zip(batch["stage"].to_pylist(), batch["texts"].to_pylist(),
                                strict=True):
            if stage == _LM_STATS:
                stats = next_token_statistics(
                    texts, self.model, self.tokenizer, template=self.options["template"],
                    max_length=self.options["max_length"],
                    batch_size=self.options["batch_size"],
                    sort_by_length=self.options["sort_by_length"], progress=False,
                )
                tensors = {"features": stats}
            else:
                tensors = _tensors(extract_one_process(texts, self.model, self.tokenizer,
                                                       progress=False, **self.options))
            blobs.append(save({k: v.contiguous() for k, v in tensors.items()}))
        return {"shard": np.asarray(batch["shard"].to_pylist(), dtype=np.int64),
                "data": np.asarray(blobs, dtype=object)}


def _tensors(result: Extraction) -> dict[str, torch.Tensor]:
    """The tensors of a features shard (constants repeated in each, for a self-contained file)."""
    tensors = {"features": result.features,
               "n_states": torch.tensor(result.n_states, dtype=torch.int64)}
    if result.label_logits is not None:
        tensors.update(label_logits=result.label_logits, vocab_logsumexp=result.vocab_logsumexp,
                       label_token_ids=torch.tensor(result.label_token_ids, dtype=torch.int64))
    if result.label_head_weight is not None and result.label_head_bias is not None:
        tensors.update(label_head_weight=result.label_head_weight,
                       label_head_bias=result.label_head_bias)
    return {k: v for k, v in tensors.items() if v is not None}


def _extraction(key: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Extraction:
    """The :class:`Extraction` of the tensors :func:`load` gathered."""
    n_states = int(tensors["n_states"])
    indices, _ = resolve_layers(key["layers"], n_states)
    words = tuple(key["label_words"] or ())
    head = (tensors.get("label_head_weight"), tensors.get("label_head_bias"))
    return Extraction(
        tensors["features"], tuple(indices), n_states,
        label_logits=tensors.get("label_logits"), vocab_logsumexp=tensors.get("vocab_logsumexp"),
        label_token_ids=tuple(int(i) for i in tensors["label_token_ids"].tolist()) if words
        else (),
        label_words=words, lm_stats=tensors.get("lm_stats"),
        label_head_weight=head[0], label_head_bias=head[1],
    )

