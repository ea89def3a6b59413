"""`TrainConfig`: built from the `train.NAME` gin bindings, validated by the binding to fix."""

import gin
import pytest

from llmos_jax.errors import UserError
from llmos_jax.models import TransformerConfig
from llmos_jax.partitioning import DEFAULT_RULES
from llmos_jax.training import trainer  # noqa: F401 (registers the gin configurables)
from llmos_jax.training.hooks import Schedule
from llmos_jax.training.train_config import TrainConfig

MODEL = TransformerConfig(vocab_size=64, num_layers=1, embed_dim=16, num_heads=2, max_len=32)


@pytest.fixture(autouse=True)
def fresh_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_train_bindings_build_the_config():
    gin.parse_config([
        "TransformerConfig.vocab_size = 64", "TransformerConfig.max_len = 128",
        "train.model_config = @TransformerConfig()", "train.task_name = 'some_task'",
        "train.num_steps = 7", "train.sample_prompts = ['a', 'b']",
        "train.axis_rules = [('embed', None), ('batch', ['data', 'fsdp'])]",
        # The full name, as a gin file may spell it, binds the same config.
        "llmos_jax.training.trainer.train.log_every = 3",
    ])
    config = TrainConfig.from_gin()
    assert isinstance(config, TrainConfig)
    assert (config.num_steps, config.log_every, config.task_name) == (7, 3, "some_task")
    assert config.model_config.max_len == 128
    # Gin's lists become immutable values; the rules become the rule tuple.
    assert config.sample_prompts == ("a", "b")
    assert config.axis_rules == (("embed", None), ("batch", ("data", "fsdp")))
    assert config.global_batch_size == 16 and config.hooks == ()  # defaults
    assert TrainConfig.from_gin(num_steps=9).num_steps == 9
    assert "train.num_steps = 7" in gin.operative_config_str()


def test_defaults_and_derived_sizes():
    config = TrainConfig(model_config=MODEL, task_name="t", global_batch_size=4,
                         sequence_length={"inputs": 8, "targets": 4})
    assert config.axis_rules == DEFAULT_RULES
    assert config.longest_sequence == 8 and config.tokens_per_step == 4 * 12
    assert config.as_dict()["model_config"] is MODEL


@pytest.mark.parametrize("changes, message", [
    (dict(model_config=None), "train.model_config is not bound"),
    (dict(microbatches=3), r"train.microbatches=3 must divide train.global_batch_size=16"),
    (dict(log_every=0), r"train.log_every=0 must be positive"),
    (dict(checkpoint_every=0), r"train.checkpoint_every=0 must be positive"),
    (dict(eval_every=-1), r"train.eval_every=-1 must be at least 0"),
    (dict(eval_batches=0), r"train.eval_batches=0 must be positive"),
    (dict(sample_temperature=-1.0), r"train.sample_temperature=-1.0 must not be negative"),
    (dict(sequence_length=0), r"train.sequence_length=0 must be a positive length"),
    (dict(sequence_length=64), r"train.sequence_length=64 exceeds TransformerConfig.max_len=32"),
    (dict(hooks=[object()]), r"train.hooks holds .* not a TrainHook"),
])
def test_invalid_settings_name_the_binding(changes, message):
    settings = dict(model_config=MODEL, task_name="t", sequence_length=16)
    with pytest.raises(UserError, match=message):
        TrainConfig(**{**settings, **changes})


def test_rope_models_take_any_length():
    rope = TransformerConfig(vocab_size=64, num_layers=1, embed_dim=16, num_heads=2, max_len=8,
                             position_embedding="rope")
    assert TrainConfig(model_config=rope, sequence_length=64).longest_sequence == 64


def test_unbound_model_config_is_reported_from_gin():
    gin.parse_config(["train.task_name = 'some_task'"])
    with pytest.raises(UserError, match="train.model_config is not bound"):
        TrainConfig.from_gin()


def test_config_is_frozen():
    config = TrainConfig(model_config=MODEL, sequence_length=16)
    with pytest.raises(AttributeError):
        config.num_steps = 3


@pytest.mark.parametrize("schedule, due_at", [
    (Schedule(every=3), [3, 6, 7]),                  # every 3, and the last step (7)
    (Schedule(every=3, at_last=False), [3, 6]),
    (Schedule(every=0), [7]),
    (Schedule(every=0, at_last=False, on_stop=True), [5]),
    (Schedule(every=2, on_stop=True), [2, 4, 5, 6, 7]),
])
def test_schedule(schedule, due_at):
    due = [step for step in range(1, 8)
           if schedule.due(step, last=step == 7, stopping=step == 5)]
    assert due == due_at
