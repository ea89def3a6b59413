"""A character-vocabulary task and in-process `train` runs of a tiny decoder, for tests that
need a real run (its export, checkpoints, adapters) in seconds."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence

import gin
import seqio
import tensorflow as tf

from llmos_jax.data.char_vocabulary import CharacterVocabulary

CORPUS = "\n\n".join("the cat sat on the mat and the dog ran to the red barn" for _ in range(30))

TINY_DECODER_GIN = """
TransformerConfig.num_layers = 1
TransformerConfig.embed_dim = 16
TransformerConfig.num_heads = 2
TransformerConfig.max_len = 32
TransformerConfig.dropout_rate = 0.0
train.model_config = @TransformerConfig()
train.sequence_length = 32
train.global_batch_size = 8
train.eval_batches = 1
train.async_checkpointing = False
train.sample_prompts = []
train.progress_bar = False
"""


def tiny_run_bindings(steps: int, *extra: str) -> list[str]:
    """The tiny decoder's gin lines for a run of `steps` steps, evaluated and saved at the
    end, then `extra` (which may override any of them)."""
    return [*TINY_DECODER_GIN.strip().splitlines(), f"train.num_steps = {steps}",
            f"train.eval_every = {steps}", f"train.checkpoint_every = {steps}", *extra]


@contextlib.contextmanager
def character_task(prefix: str) -> Iterator[tuple[str, CharacterVocabulary]]:
    """Registers an LM task over `CORPUS` with a character vocabulary; removes it after."""
    from llmos_jax.data.registry import register_lm_task

    name = f"{prefix}_{uuid.uuid4().hex[:6]}"
    documents = CORPUS.split("\n\n")
    vocabulary = CharacterVocabulary.from_texts([CORPUS])
    register_lm_task(name, seqio.FunctionDataSource(
        lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
            {"text": documents}), ["train", "validation"]), vocabulary)
    try:
        yield name, vocabulary
    finally:
        seqio.TaskRegistry.remove(name)


def train_in_process(model_dir, bindings: Sequence[str]):
    """`train(model_dir=...)` after parsing `bindings` alone, with gin cleared before and after."""
    from llmos_jax.cli.gin_config import parse_gin
    from llmos_jax.training.trainer import train

    gin.clear_config()
    try:
        parse_gin([], list(bindings))
        return train(model_dir=str(model_dir))
    finally:
        gin.clear_config()
