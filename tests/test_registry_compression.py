"""Compressed versions in the registry (embedded MLflow store): method, sizes and parent."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from flax import nnx
from registry_helpers import cli

from llmos_jax.checkpoints.checkpointer import export_params
from llmos_jax.compression.adapters import ADAPTERS_FILE, save_adapters
from llmos_jax.compression.lora import LoraConfig, apply_lora
from llmos_jax.errors import UserError
from llmos_jax.models import DecoderLM, TransformerConfig
from llmos_jax.models.families import DECODER
from llmos_jax.registry.compression_tags import stored_bytes
from llmos_jax.registry.store import open_store
from llmos_jax.registry.versions import register_export

CONFIG = TransformerConfig(vocab_size=32, num_layers=1, embed_dim=16, num_heads=2, max_len=32,
                           scan_layers=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny decoder's export registered as tiny/1, and a LoRA 'run' of it: the same export
    and rank-2 adapters on attention query/value saved as `train.lora` saves them."""
    root = tmp_path_factory.mktemp("registry_compression")
    saved = {key: os.environ.get(key) for key in ("LLMOS_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["LLMOS_HOME"] = str(root / "home")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    model = DecoderLM(CONFIG, rngs=nnx.Rngs(0))
    meta = {"step": 0, "model_family": DECODER.name,
            "model_config": json.loads(json.dumps(dataclasses.asdict(CONFIG), default=str))}
    for run in ("base", "lora"):
        export_params(root / run / "export", nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                      meta)
    lora = LoraConfig(rank=2, target_patterns=[r"attn/(query|value)$"])
    apply_lora(model, lora)
    save_adapters(root / "lora" / "adapters", nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                  lora)
    store = open_store()
    registered = register_export(store, "tiny", root / "base")
    yield {"base": root / "base", "lora": root / "lora", "store": store, "parent": registered}
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def test_compressed_versions_record_method_sizes_and_parent(runs, capsys):
    store = runs["store"]
    base = runs["parent"]
    float_bytes = stored_bytes(runs["base"] / "export")
    assert int(base.tags["llmos.param_bytes"]) == float_bytes > 10000
    assert "llmos.compression" not in base.tags

    int8 = register_export(store, "tiny-int8", runs["base"], parent="tiny/1",
                           compression_method="int8")
    tags = int8.tags
    assert (tags["llmos.compression"], tags["llmos.parent"], tags["llmos.quantize"]) == (
        "int8", "tiny/1", "int8")
    int8_bytes = int(tags["llmos.param_bytes"])
    # int8 weights, float32 scales per output channel, float norms and biases (a 16-wide
    # model: the scales weigh 1/4 of its int8 kernels; GPT-2 small is 3.9x smaller).
    assert float_bytes / 4 < int8_bytes < float_bytes / 2
    assert float(tags["llmos.size_vs_parent"]) == pytest.approx(int8_bytes / float_bytes,
                                                                abs=1e-4)

    lora = register_export(store, "tiny-lora", runs["lora"], parent="tiny/1",
                           compression_method="lora")
    adapter_bytes = int(lora.tags["llmos.adapter_bytes"])
    assert 0 < adapter_bytes < float_bytes / 10
    assert float(lora.tags["llmos.size_vs_parent"]) == pytest.approx(
        adapter_bytes / float_bytes, abs=1e-4)
    folder = lora.source.rsplit("/", 1)[0].rsplit("/artifacts/", 1)[1]
    listed = {a.path for a in store.client.list_artifacts(lora.run_id, f"{folder}/adapters")}
    assert f"{folder}/adapters/{ADAPTERS_FILE}" in listed

    assert cli("models", "show", "tiny-int8/1") == 0
    shown = capsys.readouterr().out
    assert "compression: int8 of tiny/1" in shown and f"{int8_bytes:,}" in shown
    assert "lineage: tiny-int8/1 <- tiny/1" in shown


def test_compressed_registrations_without_a_real_parent_or_adapters_are_refused(runs):
    store = runs["store"]
    with pytest.raises(UserError, match="--compression=int8 needs --parent"):
        register_export(store, "x", runs["base"], compression_method="int8")
    with pytest.raises(UserError, match="--parent='nope/3' is not a registered version"):
        register_export(store, "x", runs["base"], parent="nope/3", compression_method="int8")
    with pytest.raises(UserError, match="has no adapters/ folder"):
        register_export(store, "x", runs["base"], parent="tiny/1", compression_method="lora")
    with pytest.raises(UserError, match="--compression='int4': use one of"):
        register_export(store, "x", runs["base"], parent="tiny/1", compression_method="int4")
