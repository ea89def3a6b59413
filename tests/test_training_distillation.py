"""`train.objective = @distillation()`: a student trains against a teacher export through
the real trainer; a teacher with another vocabulary is refused before training."""

import json
import types
import uuid

import gin
import pytest
import seqio
import tensorflow as tf
from flax import nnx

from llmos_jax.data.char_vocabulary import CharacterVocabulary
from llmos_jax.errors import UserError
from llmos_jax.models import DecoderLM, TransformerConfig
from llmos_jax.training.hooks import StepContext, Throughput
from llmos_jax.training.run_metadata import describe_run
from llmos_jax.training.standard_hooks import ExportParams

CORPUS = "\n\n".join("the cat sat on the mat and the dog ran to the red barn" for _ in range(30))
STUDENT_GIN = """
TransformerConfig.vocab_size = {vocab}
TransformerConfig.num_layers = 1
TransformerConfig.embed_dim = 16
TransformerConfig.num_heads = 2
TransformerConfig.max_len = 32
TransformerConfig.dropout_rate = 0.0
train.model_config = @TransformerConfig()
train.objective = @distillation()
distillation.teacher = '{teacher}'
distillation.temperature = 2.0
distillation.alpha = 0.5
train.sequence_length = 32
train.global_batch_size = 8
train.num_steps = 3
train.eval_every = 3
train.eval_batches = 1
train.checkpoint_every = 3
train.async_checkpointing = False
train.sample_prompts = []
train.progress_bar = False
"""


def export_teacher(directory, vocabulary, vocab_size):
    config = TransformerConfig(vocab_size=vocab_size, num_layers=2, embed_dim=32, num_heads=2,
                               max_len=32, dropout_rate=0.0)
    model = DecoderLM(config, rngs=nnx.Rngs(3))
    meta = {**describe_run(config, vocabulary, task_name="teacher", seed=0, global_batch_size=1,
                           sequence_length=32, pack=False), "objective": {"name": "CausalLm"}}
    state = types.SimpleNamespace(params=nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    ExportParams(directory, meta).on_end(StepContext(
        step=1, state=state, metrics=None, last=True, stopping=False,
        throughput=Throughput(1.0), finished=True))


@pytest.fixture
def char_task():
    from llmos_jax.data.registry import register_lm_task

    name = f"distill_chars_{uuid.uuid4().hex[:6]}"
    documents = CORPUS.split("\n\n")
    vocabulary = CharacterVocabulary.from_texts([CORPUS])
    register_lm_task(name, seqio.FunctionDataSource(
        lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
            {"text": documents}), ["train", "validation"]), vocabulary)
    yield name, vocabulary
    seqio.TaskRegistry.remove(name)


def run(tmp_path, task, vocab, teacher):
    from llmos_jax.cli.gin_config import parse_gin
    from llmos_jax.training.trainer import train

    gin.clear_config()
    try:
        parse_gin([], [*STUDENT_GIN.format(vocab=vocab, teacher=teacher).strip().splitlines(),
                       f"train.task_name = {task!r}"])
        return train(model_dir=str(tmp_path / "student"))
    finally:
        gin.clear_config()


def test_a_student_trains_against_a_teacher_export(tmp_path, char_task):
    task, vocabulary = char_task
    export_teacher(tmp_path / "teacher", vocabulary, 32)
    result = run(tmp_path, task, 32, tmp_path / "teacher")
    assert result.last_step == 3
    lines = [json.loads(line) for line in
             (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    kl = [line["distill_kl"] for line in lines if "distill_kl" in line]
    assert kl and all(value > 0 for value in kl)


def test_a_teacher_with_another_vocabulary_is_refused_before_training(tmp_path, char_task):
    task, vocabulary = char_task
    export_teacher(tmp_path / "teacher", vocabulary, 40)
    with pytest.raises(UserError, match="teacher's vocabulary has 40 entries"):
        run(tmp_path, task, 32, tmp_path / "teacher")
