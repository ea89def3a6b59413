"""Streaming a sharded Llama checkpoint onto the mesh tensor by tensor
(`llmos_jax.convert.streaming_load`): the same parameters as the in-memory path,
on the layout's shardings, with a host-memory peak far below the model's size."""

import json
import os
import shutil
import tracemalloc

import jax
import numpy as np
import pytest

pytest.importorskip("safetensors")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from convert_helpers import assert_same_params  # noqa: E402
from flax import nnx  # noqa: E402

from llmos_jax.convert import llama  # noqa: E402
from llmos_jax.convert.model_params import param_specs  # noqa: E402
from llmos_jax.errors import UserError  # noqa: E402
from llmos_jax.models.axes import logical_axes_of  # noqa: E402
from llmos_jax.partitioning import Layout, MeshConfig  # noqa: E402

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            tie_word_embeddings=False)
# ~6.6M parameters (26 MB in float32); the largest tensors (embeddings, lm_head) are 4 MB.
MEDIUM = dict(vocab_size=4096, hidden_size=256, intermediate_size=1024, num_hidden_layers=6,
              num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64,
              tie_word_embeddings=False)


def save_llama(torch, transformers, directory, fields, *, shard_size, dtype=None):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields))
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(directory, max_shard_size=shard_size)
    assert (directory / "model.safetensors.index.json").is_file()
    return directory


@pytest.fixture(scope="module")
def tiny_checkpoints(torch, transformers, tmp_path_factory):
    """The tiny model in float32 and in bfloat16, each over several ~20 KB shards."""
    return {dtype: save_llama(torch, transformers, tmp_path_factory.mktemp(dtype), TINY,
                              shard_size="20KB", dtype=dtype)
            for dtype in ("float32", "bfloat16")}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("scan_layers", [True, False])
def test_streamed_parameters_equal_the_in_memory_import(tiny_checkpoints, dtype, scan_layers):
    directory = tiny_checkpoints[dtype]
    assert len(list(directory.glob("model-*.safetensors"))) > 3
    streamed = llama.import_llama(directory, scan_layers=scan_layers)
    assert_same_params(streamed, llama.import_llama_in_memory(directory, scan_layers=scan_layers))
    assert all(dtype == np.float32 for _, dtype in param_specs(streamed).values())


def test_streamed_parameters_land_on_the_layout_shardings(tiny_checkpoints):
    layout = Layout.build(MeshConfig(fsdp=4, tensor=2))
    directory = tiny_checkpoints["float32"]
    streamed = llama.import_llama(directory, layout=layout)
    variables = list(nnx.to_flat_state(nnx.state(streamed, nnx.Param)))
    for path, variable in variables:
        value = variable.get_value()
        assert value.sharding == layout.sharding(logical_axes_of(variable), value.shape), path
    # Some parameters really are split (over fsdp and tensor), not merely replicated.
    assert any(len(v.get_value().sharding.device_set) == 8
               and not v.get_value().sharding.is_fully_replicated for _, v in variables)
    assert_same_params(streamed, llama.import_llama_in_memory(directory))


def host_peak_bytes(load) -> int:
    """Peak numpy/Python allocation while `load()` runs (device buffers are not counted)."""
    tracemalloc.start()
    try:
        model = load()
        jax.block_until_ready(jax.tree.leaves(nnx.state(model, nnx.Param)))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streaming_peak_host_memory_is_a_fraction_of_the_model(torch, transformers, tmp_path):
    directory = save_llama(torch, transformers, tmp_path, MEDIUM, shard_size="3MB")
    specs = param_specs(llama.import_llama(directory))
    model_bytes = sum(int(np.prod(shape)) * 4 for shape, _ in specs.values())
    largest = max(int(np.prod(shape)) * 4 for shape, _ in specs.values()
                  if len(shape) == 2)  # embeddings / lm_head, 4 MB each
    streamed = host_peak_bytes(lambda: llama.import_llama(directory))
    in_memory = host_peak_bytes(lambda: llama.import_llama_in_memory(directory))
    # The in-memory path holds at least the whole checkpoint: the measure sees a full copy.
    assert in_memory > model_bytes, (in_memory, model_bytes)
    # Streaming holds about one tensor (read + converted copy), never the model.
    assert streamed < 3 * largest < 0.5 * model_bytes, (streamed, largest, model_bytes)


def test_an_index_naming_the_wrong_shard_is_refused_before_reading(tiny_checkpoints, tmp_path):
    copy = shutil.copytree(tiny_checkpoints["float32"], tmp_path / "copy")
    index = json.loads((copy / "model.safetensors.index.json").read_text())
    name = "model.norm.weight"
    others = sorted(set(index["weight_map"].values()) - {index["weight_map"][name]})
    index["weight_map"][name] = others[0]
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=f"tensor '{name}' is listed in the safetensors index "
                                        f"but not in .*{others[0]}"):
        llama.import_llama(copy)
