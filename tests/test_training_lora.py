"""`train.lora`: a LoRA run through the real trainer freezes the base, exports merged
weights that serve like any export, and writes its adapters alone."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from llmos_jax.compression.adapters import load_adapters, read_lora_config
from llmos_jax.compression.lora import apply_lora, merge_lora
from llmos_jax.errors import UserError
from llmos_jax.models import TransformerConfig
from llmos_jax.objectives import CausalLm
from tiny_runs import character_task, tiny_run_bindings, train_in_process

GIN = tiny_run_bindings(
    4, "TransformerConfig.vocab_size = 32", "TransformerConfig.scan_layers = False",
    "train.lora = @LoraConfig()", "LoraConfig.rank = 2", "LoraConfig.alpha = 4.0",
    "LoraConfig.dropout = 0.1", "make_optimizer.learning_rate = 0.05")


def test_a_lora_run_exports_merged_weights_and_its_adapters(tmp_path):
    from llmos_jax.serving.model_source import load_served_model

    with character_task("lora_chars") as (name, _):
        result = train_in_process(tmp_path / "run", [*GIN, f"train.task_name = {name!r}"])
    assert result.last_step == 4
    assert json.loads((tmp_path / "run" / "adapters" / "lora_config.json").read_text())["rank"] == 2

    # The base never moved: its seed-0 init plus the saved adapters, merged, is the export.
    config = TransformerConfig(vocab_size=32, num_layers=1, embed_dim=16, num_heads=2,
                               max_len=32, dropout_rate=0.0, scan_layers=False)
    base = CausalLm().build_model(config, rngs=nnx.Rngs(params=0), shard=lambda x, a: x)
    lora = read_lora_config(tmp_path / "run" / "adapters")
    apply_lora(base, lora)
    state = nnx.state(base, nnx.Param)
    nnx.replace_by_pure_dict(state, load_adapters(tmp_path / "run" / "adapters",
                                                  nnx.to_pure_dict(state)))
    nnx.update(base, state)
    assert not np.allclose(base.layers[0].mlp.wo.lora_b[...], 0.0)  # the adapters trained
    merge_lora(base)
    expected = nnx.to_pure_dict(nnx.state(base, nnx.Param))
    served = load_served_model(tmp_path / "run" / "export")
    exported = jax.device_get(nnx.to_pure_dict(nnx.state(served.model, nnx.Param)))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), exported, expected)

    # `llmos eval` / `llmos infer` on the training checkpoint (adapters apart from the
    # base) build the adapters in, restore and merge them: the export's weights again.
    import gin

    from llmos_jax.cli.run_loading import load_for_inference

    with character_task("lora_chars") as (name, _):
        try:
            loaded = load_for_inference([str(tmp_path / "run" / "config.gin")],
                                        checkpoint=str(tmp_path / "run"), task_name=name,
                                        split="validation")
        finally:
            gin.clear_config()
    assert loaded.location.params_key is not None  # a training checkpoint, not the export
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                 jax.device_get(loaded.params), expected)


def test_lora_with_scanned_layers_is_refused_with_the_fix():
    from llmos_jax.compression.lora import LoraConfig
    from llmos_jax.training.train_config import TrainConfig

    with pytest.raises(UserError, match="scan_layers = False"):
        TrainConfig(model_config=TransformerConfig(vocab_size=8, num_layers=1, embed_dim=8,
                                                   num_heads=2, max_len=8, scan_layers=True),
                    lora=LoraConfig())
