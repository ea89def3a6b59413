"""`train.objective = @distillation()`: a student trains against a teacher export through
the real trainer; a teacher with another vocabulary is refused before training."""

import json
import types

import pytest
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.models import DecoderLM, TransformerConfig
from llmos_jax.training.hooks import StepContext, Throughput
from llmos_jax.training.run_metadata import describe_run
from llmos_jax.training.standard_hooks import ExportParams
from tiny_runs import character_task, tiny_run_bindings, train_in_process


def student_gin(vocab: int, teacher) -> list[str]:
    return tiny_run_bindings(
        3, f"TransformerConfig.vocab_size = {vocab}", "train.objective = @distillation()",
        f"distillation.teacher = '{teacher}'", "distillation.temperature = 2.0",
        "distillation.alpha = 0.5")


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
    with character_task("distill_chars") as task:
        yield task


def run(tmp_path, task, vocab, teacher):
    return train_in_process(tmp_path / "student",
                            [*student_gin(vocab, teacher), f"train.task_name = {task!r}"])


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
