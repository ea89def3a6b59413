"""Shared by the tests that train a tiny encoder classifier through gin: its gin lines and a
synthetic classification task (label: whether the first token is below 18)."""

from collections.abc import Callable, Sequence

import numpy as np
import seqio
import tensorflow as tf

from llmos_jax.data.finetune_tasks.seqio_tasks import class_label_id, label_as_target_text

# A 1-layer encoder over 32 ids with a mean-pooled classification head, on 8 devices
# (2-way data x 4-way FSDP). Tests add the run settings (steps, eval, checkpoints).
CLASSIFIER_GIN = """
EncoderConfig.vocab_size = 32
EncoderConfig.num_layers = 1
EncoderConfig.embed_dim = 16
EncoderConfig.num_heads = 2
EncoderConfig.max_len = 8
EncoderConfig.position_embedding = 'learned'
EncoderConfig.norm = 'layernorm'
EncoderConfig.use_bias = True
EncoderConfig.dropout_rate = 0.0
train.model_config = @EncoderConfig()
train.objective = @SequenceClassification()
SequenceClassification.pooling = 'mean'
train.batches = @ExampleBatches
train.pack = False
train.sequence_length = 8
train.global_batch_size = 8
train.progress_bar = False
MeshConfig.data = 2
MeshConfig.fsdp = -1
MeshConfig.tensor = 1
train.mesh_config = @MeshConfig()
make_optimizer.weight_decay = 0.0
"""


def register_classification_task(name: str, metric_fns: Sequence[Callable],
                                 vocab_size: int = 32) -> str:
    """Registers `name`: 40 train and 24 validation rows of 3 to 11 ids, some longer than 8."""
    rng = np.random.default_rng(0)
    ids = [[1] + rng.integers(4, 32, rng.integers(2, 11)).tolist() for _ in range(64)]
    labels = [int(row[1] < 18) for row in ids]

    def dataset(split, shuffle_files, seed=None):
        rows = slice(0, 40) if split == "train" else slice(40, 64)
        return tf.data.Dataset.from_tensor_slices({
            "input_ids": tf.ragged.constant(ids[rows], dtype=tf.int32),
            "label": tf.constant(labels[rows], tf.int32)})

    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(dataset, ["train", "validation"]),
        preprocessors=[label_as_target_text], postprocess_fn=class_label_id,
        metric_fns=list(metric_fns),
        output_features={"input_ids": seqio.Feature(seqio.PassThroughVocabulary(vocab_size),
                                                    add_eos=False)})
    return name


def train_from_gin(gin_file, model_dir, *bindings: str):
    """`train(model_dir=...)` configured by `gin_file` and `bindings`; gin is cleared after."""
    import gin

    from llmos_jax.cli.gin_config import parse_gin
    from llmos_jax.training import trainer

    gin.clear_config()
    try:
        parse_gin([str(gin_file)], list(bindings))
        return trainer.train(model_dir=str(model_dir))
    finally:
        gin.clear_config()
