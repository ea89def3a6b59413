"""Caching a Task with Beam (local runner) and training from the cache (`use_cached=True`)."""

import importlib.util
import json
import uuid

import numpy as np
import pytest
import seqio

from llmos_jax.data import registry
from llmos_jax.data.lm_batches import LMBatches
from llmos_jax.data.records import JsonlFormat
from llmos_jax.data.sources import FileSource
from llmos_jax.errors import UserError


@pytest.fixture(scope="module")
def jsonl_task(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("cache_src")
    for shard in range(2):  # Two files: two work items for Beam.
        lines = [json.dumps({"text": f"doc {shard}-{i} " + "y" * (i % 9)}) for i in range(12)]
        (folder / f"train-{shard}.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "dev.jsonl").write_text('{"text": "held out"}\n')
    source = FileSource({"train": str(folder / "train-*.jsonl"),
                         "validation": str(folder / "dev.jsonl")}, JsonlFormat())
    return registry.register_lm_task(f"cached_{uuid.uuid4().hex[:8]}", source,
                                     seqio.ByteVocabulary())


def _batches(task: str, **kwargs) -> LMBatches:
    return LMBatches(task, "train", 8, 2, pack=False, process_index=0, process_count=1, **kwargs)


def _rows(batches: LMBatches) -> list[bytes]:
    rows = np.concatenate([b["decoder_target_tokens"] for b in batches.eval_batches()])
    return sorted(row.tobytes() for row in rows[: batches.num_examples])


def test_reading_an_uncached_task_names_the_tool_and_the_setting(jsonl_task, tmp_path):
    with pytest.raises(UserError, match=rf"task '{jsonl_task}' has no completed cache .*"
                                        r"LMBatches\.cache_dirs.*tools/cache_task\.py"):
        _batches(jsonl_task, use_cached=True, cache_dirs=[str(tmp_path / "empty_cache")])


@pytest.mark.skipif(importlib.util.find_spec("apache_beam") is None,
                    reason="needs the beam extra: pip install 'llmos_jax[beam]'")
def test_beam_cache_then_use_cached_gives_the_same_examples(jsonl_task, tmp_path):
    from llmos_jax.data.task_cache import cache_task

    # The default runner, FnApiRunner, is the DirectRunner's local batch engine without its
    # attempt to download Beam's Prism runner (no network in tests).
    output = cache_task(jsonl_task, tmp_path / "cache")

    assert {"COMPLETED", "info.train.json", "info.validation.json", "stats.train.json"} <= {
        p.name for p in output.iterdir()}
    assert json.loads((output / "stats.validation.json").read_text())["examples"] == 1
    fresh = _batches(jsonl_task)
    cached = _batches(jsonl_task, use_cached=True, cache_dirs=[str(tmp_path / "cache")])
    assert cached.num_examples == fresh.num_examples
    assert _rows(cached) == _rows(fresh)  # Beam shuffles order; the examples are identical.
    again = _batches(jsonl_task, use_cached=True, cache_dirs=[str(tmp_path / "cache")])
    assert all(np.array_equal(again.batch_at(3)[k], v) for k, v in cached.batch_at(3).items())
    with pytest.raises(UserError, match="already holds a cache.*--overwrite"):
        cache_task(jsonl_task, tmp_path / "cache")
