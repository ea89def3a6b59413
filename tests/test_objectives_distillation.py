"""Distillation: the loss by hand (decoder and seq2seq), no gradient into the teacher,
a real train step that moves only the student, and a teacher with another vocabulary refused."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llmos_jax.errors import UserError
from llmos_jax.models import DecoderLM, EncoderDecoderConfig, TransformerConfig
from llmos_jax.models.encoder_decoder import EncoderDecoderLM
from llmos_jax.objectives import CausalLm, Seq2Seq
from llmos_jax.objectives.distillation import Distillation
from llmos_jax.objectives.model_building import model_spec
from llmos_jax.partitioning import DEFAULT_RULES, Layout, LogicalSharder, MeshConfig, build_mesh
from llmos_jax.training.optimizers import current_learning_rate, make_optimizer
from llmos_jax.training.train_state import init_train_state, state_shardings
from llmos_jax.training.train_step import StepConfig, jit_train_step, make_train_step

VOCAB, LENGTH = 24, 6
TEACHER = TransformerConfig(vocab_size=VOCAB, num_layers=2, embed_dim=32, num_heads=2, mlp_dim=64,
                            max_len=LENGTH, dropout_rate=0.0, init_std=0.3, scan_layers=False)
STUDENT = dataclasses.replace(TEACHER, num_layers=1, embed_dim=16, mlp_dim=32)
RNG = np.random.default_rng(0)
TOKENS = RNG.integers(1, VOCAB, (8, LENGTH + 1)).astype(np.int32)
WEIGHTS = (RNG.random((8, LENGTH)) > 0.2).astype(np.float32)
BATCH = {"decoder_input_tokens": TOKENS[:, :-1], "decoder_target_tokens": TOKENS[:, 1:],
         "decoder_loss_weights": WEIGHTS}


def distillation_loss(objective, student, batch):
    """The objective's loss, jitted (eager model calls are slow)."""
    def run(model):
        sums = objective.sums(model, batch, dropout_key=None, z_loss=0.0)
        return objective.loss(sums, objective.denominators(batch)), sums
    return nnx.jit(run)(student)


call = nnx.jit(lambda model, *tokens: model(*tokens))


def by_hand(student_logits, teacher_logits, targets, weights, temperature, alpha):
    def log_softmax(x):
        x = np.asarray(x, np.float64)
        return x - np.log(np.sum(np.exp(x - x.max(-1, keepdims=True)), -1,
                                 keepdims=True)) - x.max(-1, keepdims=True)

    p = np.exp(log_softmax(teacher_logits / temperature))
    soft = -np.sum(p * log_softmax(student_logits / temperature), -1) * temperature ** 2
    hard = -np.take_along_axis(log_softmax(student_logits), targets[..., None], -1)[..., 0]
    return np.sum((alpha * soft + (1 - alpha) * hard) * weights) / np.sum(weights)


def test_alpha_1_temperature_1_is_cross_entropy_against_the_teacher_distribution():
    teacher = DecoderLM(TEACHER, rngs=nnx.Rngs(1))
    student = DecoderLM(STUDENT, rngs=nnx.Rngs(2))
    objective = Distillation(CausalLm(), teacher, temperature=1.0, alpha=1.0)
    loss, _ = distillation_loss(objective, student, BATCH)
    inputs = jnp.asarray(TOKENS[:, :-1])
    expected = by_hand(call(student, inputs), call(teacher, inputs), TOKENS[:, 1:], WEIGHTS,
                       1.0, 1.0)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # Against itself the KL is zero and the soft term is the teacher's entropy.
    _, own = distillation_loss(objective, teacher, BATCH)
    assert abs(float(own["distill_kl"])) < 1e-4


def test_seq2seq_mixes_soft_and_hard_terms_at_temperature():
    config = EncoderDecoderConfig(vocab_size=VOCAB, num_layers=1, embed_dim=16, num_heads=2,
                                  head_dim=8, mlp_dim=32, position_embedding="none",
                                  norm="rmsnorm", mlp_activation="relu", use_bias=False,
                                  dropout_rate=0.0, relative_buckets=8, relative_max_distance=16,
                                  init_std=0.3)
    teacher = EncoderDecoderLM(dataclasses.replace(config, num_layers=2), rngs=nnx.Rngs(1))
    student = EncoderDecoderLM(config, rngs=nnx.Rngs(2))
    batch = {"encoder_input_tokens": TOKENS[:, 1:], **BATCH}
    objective = Distillation(Seq2Seq(), teacher, temperature=2.0, alpha=0.3)
    loss, _ = distillation_loss(objective, student, batch)
    encoder, decoder = jnp.asarray(TOKENS[:, 1:]), jnp.asarray(TOKENS[:, :-1])
    expected = by_hand(call(student, encoder, decoder), call(teacher, encoder, decoder),
                       TOKENS[:, 1:], WEIGHTS, 2.0, 0.3)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_gradients_reach_only_the_student_and_training_leaves_the_teacher_as_it_was():
    teacher = DecoderLM(TEACHER, rngs=nnx.Rngs(1))
    graphdef, teacher_state = nnx.split(teacher)
    student = DecoderLM(STUDENT, rngs=nnx.Rngs(2))

    def loss_of_teacher(state):
        objective = Distillation(CausalLm(), nnx.merge(graphdef, state), alpha=0.7)
        sums = objective.sums(student, BATCH, dropout_key=None, z_loss=0.0)
        return objective.loss(sums, objective.denominators(BATCH))

    teacher_grads = jax.jit(jax.grad(loss_of_teacher))(teacher_state)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(teacher_grads))

    mesh = build_mesh(MeshConfig(data=2, fsdp=4, tensor=1))
    layout = Layout(mesh, DEFAULT_RULES)
    objective = Distillation(CausalLm(), teacher, temperature=2.0, alpha=0.7)
    spec = model_spec(lambda rngs: objective.build_model(
        STUDENT, rngs=rngs, shard=LogicalSharder(mesh, DEFAULT_RULES)), seed=0)
    tx = make_optimizer(learning_rate=1e-2, weight_decay=0.0)
    shardings = state_shardings(spec, tx, layout)
    state = init_train_state(spec, tx, shardings)
    assert jax.tree.structure(state.params) == jax.tree.structure(spec.abstract_params)
    step = jit_train_step(make_train_step(spec, tx, current_learning_rate,
                                          StepConfig(use_dropout=False), layout, objective),
                          shardings, {k: 2 for k in BATCH}, layout)
    before = jax.device_get(nnx.to_pure_dict(nnx.state(teacher, nnx.Param)))
    losses = []
    for _ in range(8):
        state, metrics = step(state, layout.global_batch(BATCH))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] and "distill_kl" in metrics
    after = jax.device_get(nnx.to_pure_dict(nnx.state(teacher, nnx.Param)))
    jax.tree.map(np.testing.assert_array_equal, after, before)


def test_a_teacher_with_another_vocabulary_is_refused():
    teacher = DecoderLM(dataclasses.replace(TEACHER, vocab_size=VOCAB + 8), rngs=nnx.Rngs(1))
    objective = Distillation(CausalLm(), teacher)
    with pytest.raises(UserError, match=r"teacher's vocabulary has 32 entries but the student's.*24"):
        objective.build_model(STUDENT, rngs=nnx.Rngs(0), shard=lambda x, a: x)
    with pytest.raises(UserError, match="temperature"):
        Distillation(CausalLm(), teacher, temperature=0.0)
