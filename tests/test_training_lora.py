"""`train.lora`: a LoRA run through the real trainer freezes the base, exports merged
weights that serve like any export, and writes its adapters alone."""

import json
import uuid

import gin
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf
from flax import nnx

from llmos_jax.compression.adapters import load_adapters, read_lora_config
from llmos_jax.compression.lora import apply_lora, merge_lora
from llmos_jax.data.char_vocabulary import CharacterVocabulary
from llmos_jax.errors import UserError
from llmos_jax.models import TransformerConfig
from llmos_jax.objectives import CausalLm

CORPUS = "\n\n".join("the cat sat on the mat and the dog ran to the red barn" for _ in range(30))
GIN = """
TransformerConfig.vocab_size = 32
TransformerConfig.num_layers = 1
TransformerConfig.embed_dim = 16
TransformerConfig.num_heads = 2
TransformerConfig.max_len = 32
TransformerConfig.dropout_rate = 0.0
TransformerConfig.scan_layers = False
train.model_config = @TransformerConfig()
train.lora = @LoraConfig()
LoraConfig.rank = 2
LoraConfig.alpha = 4.0
LoraConfig.dropout = 0.1
train.sequence_length = 32
train.global_batch_size = 8
train.num_steps = 4
train.eval_every = 4
train.eval_batches = 1
train.checkpoint_every = 4
train.async_checkpointing = False
train.sample_prompts = []
train.progress_bar = False
make_optimizer.learning_rate = 0.05
"""


def test_a_lora_run_exports_merged_weights_and_its_adapters(tmp_path):
    from llmos_jax.cli.gin_config import parse_gin
    from llmos_jax.data.registry import register_lm_task
    from llmos_jax.serving.model_source import load_served_model
    from llmos_jax.training.trainer import train

    name = f"lora_chars_{uuid.uuid4().hex[:6]}"
    documents = CORPUS.split("\n\n")
    register_lm_task(name, seqio.FunctionDataSource(
        lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
            {"text": documents}), ["train", "validation"]),
        CharacterVocabulary.from_texts([CORPUS]))
    gin.clear_config()
    try:
        parse_gin([], [*GIN.strip().splitlines(), f"train.task_name = {name!r}"])
        result = train(model_dir=str(tmp_path / "run"))
    finally:
        gin.clear_config()
        seqio.TaskRegistry.remove(name)
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


def test_lora_with_scanned_layers_is_refused_with_the_fix():
    from llmos_jax.compression.lora import LoraConfig
    from llmos_jax.training.train_config import TrainConfig

    with pytest.raises(UserError, match="scan_layers = False"):
        TrainConfig(model_config=TransformerConfig(vocab_size=8, num_layers=1, embed_dim=8,
                                                   num_heads=2, max_len=8, scan_layers=True),
                    lora=LoraConfig())
