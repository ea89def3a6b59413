"""Every objective through the real (sharded, jitted) train step: each head learns a tiny task.

Tiny models, one fixed batch of separable examples, a few dozen AdamW steps
on a data x fsdp mesh of simulated devices (and tensor parallel for the
tagger), rank-1 features such as `label` included. Also: accumulating microbatches equals one big batch for the
two-term MLM + NSP loss, and eval's all-zero padding rows count nowhere.
"""

import jax
import numpy as np
import pytest

from llmos_jax.errors import UserError
from llmos_jax.models import EncoderConfig, EncoderDecoderConfig, TransformerConfig
from llmos_jax.partitioning import DEFAULT_RULES, Layout, LogicalSharder, MeshConfig, build_mesh
from llmos_jax.objectives import (BertPretraining, Seq2Seq, SequenceClassification,
                                           TokenClassification, check_batch_features)
from llmos_jax.training.optimizers import current_learning_rate, make_optimizer
from llmos_jax.training.train_state import init_train_state, state_shardings
from llmos_jax.objectives.model_building import model_spec
from llmos_jax.training.train_step import (StepConfig, jit_eval_step, jit_train_step,
                                           make_eval_step, make_train_step)

VOCAB, LENGTH, ROWS = 32, 8, 16
CLS, SEP, MASK = 1, 2, 3
ENCODER = EncoderConfig(vocab_size=VOCAB, num_layers=2, embed_dim=32, num_heads=2, max_len=LENGTH,
                        position_embedding="learned", norm="layernorm", use_bias=True,
                        mlp_activation="gelu_exact", dropout_rate=0.0, norm_placement="post",
                        scan_layers=True)
T5 = EncoderDecoderConfig(vocab_size=VOCAB, num_layers=2, embed_dim=32, num_heads=2, head_dim=16,
                          mlp_dim=64, position_embedding="none", norm="rmsnorm",
                          mlp_activation="relu", use_bias=False, tie_embeddings=True,
                          dropout_rate=0.0, relative_buckets=8, relative_max_distance=16)


DATA_FSDP = MeshConfig(data=2, fsdp=4, tensor=1)


def setup(objective, config, *, learning_rate=1e-2, seed=0, mesh_config=DATA_FSDP):
    mesh = build_mesh(mesh_config)
    spec = model_spec(lambda rngs: objective.build_model(
        config, rngs=rngs, shard=LogicalSharder(mesh, DEFAULT_RULES)), seed)
    tx = make_optimizer(name="adamw", learning_rate=learning_rate, weight_decay=0.0,
                        grad_clip_norm=1.0)
    shardings = state_shardings(spec, tx, Layout(mesh, DEFAULT_RULES))
    return mesh, spec, tx, shardings


def train(objective, config, batch, steps, *, microbatches=1, learning_rate=1e-2,
          mesh_config=DATA_FSDP):
    mesh, spec, tx, shardings = setup(objective, config, learning_rate=learning_rate,
                                      mesh_config=mesh_config)
    ranks = {key: value.ndim for key, value in batch.items()}
    step_fn = jit_train_step(
        make_train_step(spec, tx, current_learning_rate,
                        StepConfig(microbatches=microbatches, use_dropout=False),
                        Layout(mesh, DEFAULT_RULES), objective), shardings, ranks,
        Layout(mesh, DEFAULT_RULES))
    state = init_train_state(spec, tx, shardings)
    device_batch = Layout(mesh, DEFAULT_RULES).global_batch(batch)
    history = []
    for _ in range(steps):
        state, metrics = step_fn(state, device_batch)
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return state, history, (mesh, spec, shardings, ranks)


def random_rows(rng, low=4, high=VOCAB):
    """[CLS] + 1..LENGTH-1 tokens, then padding (0)."""
    ids = np.zeros((ROWS, LENGTH), np.int32)
    lengths = rng.integers(3, LENGTH + 1, ROWS)
    for row, length in enumerate(lengths):
        ids[row, 0] = CLS
        ids[row, 1:length] = rng.integers(low, high, length - 1)
    return ids


def test_sequence_classification_learns_a_separable_task():
    rng = np.random.default_rng(0)
    ids = random_rows(rng)
    label = (ids[:, 1] < 18).astype(np.int32)  # Decided by the first word.
    batch = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "label": label}
    for pooling in ("cls", "mean"):
        _, history, _ = train(SequenceClassification(num_classes=2, pooling=pooling), ENCODER,
                              batch, 25)
        assert history[0]["examples"] == ROWS
        assert history[-1]["accuracy"] == 1.0, (pooling, history[-1])
        assert history[-1]["loss"] < 0.1 < history[0]["loss"]


def test_token_classification_learns_tags_on_first_subtokens_only():
    rng = np.random.default_rng(1)
    ids = random_rows(rng)
    labels = np.where(ids > 0, ids % 3, 0).astype(np.int32)
    weights = ((ids > CLS) & (rng.random(ids.shape) < 0.7)).astype(np.float32)
    labels[weights == 0] = 0  # What the model must *not* be scored on.
    batch = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "labels": labels,
             "label_weights": weights}
    _, history, _ = train(TokenClassification(num_classes=3), ENCODER, batch, 30,
                          mesh_config=MeshConfig(data=2, fsdp=2, tensor=2))
    assert history[0]["tokens"] == weights.sum()
    assert history[-1]["accuracy"] == 1.0
    assert history[-1]["loss"] < 0.1 < history[0]["loss"]


def mlm_nsp_batch(seed=2):
    """Counting sequences (t, t+1, ...) with masked positions; NSP label = parity of [CLS]+1."""
    rng = np.random.default_rng(seed)
    start = rng.integers(4, VOCAB - LENGTH, ROWS)
    original = (start[:, None] + np.arange(LENGTH)).astype(np.int32)
    original[:, 0] = CLS
    masked = np.zeros_like(original, bool)
    masked[np.arange(ROWS), rng.integers(2, LENGTH, ROWS)] = True
    ids = np.where(masked, MASK, original).astype(np.int32)
    return {"input_ids": ids, "token_type_ids": (np.arange(LENGTH) >= 4).astype(np.int32)[None]
            .repeat(ROWS, 0), "mlm_targets": np.where(masked, original, 0).astype(np.int32),
            "mlm_weights": masked.astype(np.float32), "nsp_label": (start % 2).astype(np.int32)}


def test_mlm_and_nsp_learn_together():
    batch = mlm_nsp_batch()
    _, history, _ = train(BertPretraining(), ENCODER, batch, 40)
    first, last = history[0], history[-1]
    assert first["masked_tokens"] == ROWS and first["examples"] == ROWS
    assert first["loss"] == pytest.approx(first["mlm_loss"] + first["nsp_loss"], rel=1e-5)
    assert last["mlm_accuracy"] == 1.0 and last["nsp_accuracy"] == 1.0, last
    assert last["loss"] < 0.2 * first["loss"]


def test_two_term_loss_accumulates_microbatches_exactly():
    # Two microbatches with different mask counts: averaging per-microbatch means would
    # differ from the full batch; the step reads denominators from the whole batch first.
    batch = mlm_nsp_batch(seed=3)
    batch["mlm_weights"][:8] = 0.0
    batch["mlm_weights"][:8, 2:5] = 1.0
    batch["mlm_targets"][:8, 2:5] = 5
    whole, h1, _ = train(BertPretraining(), ENCODER, batch, 1)
    split, h2, _ = train(BertPretraining(), ENCODER, batch, 1, microbatches=2)
    assert h1[0]["loss"] == pytest.approx(h2[0]["loss"], rel=1e-5)
    assert h1[0]["grad_norm"] == pytest.approx(h2[0]["grad_norm"], rel=1e-4)
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(split.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_seq2seq_learns_to_copy():
    rng = np.random.default_rng(4)
    tokens = rng.integers(4, VOCAB, (ROWS, LENGTH - 1)).astype(np.int32)
    targets = np.concatenate([tokens, np.ones((ROWS, 1), np.int32)], axis=1)  # + EOS
    encoder = np.concatenate([tokens, np.ones((ROWS, 1), np.int32)], axis=1)
    encoder[:4, -3:] = 0  # Some padded encoder inputs (masked from id 0).
    targets[:4, -3:] = 0
    batch = {"encoder_input_tokens": encoder,
             "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
             "decoder_target_tokens": targets,
             "decoder_loss_weights": (targets > 0).astype(np.float32)}
    _, history, _ = train(Seq2Seq(), T5, batch, 60)
    assert history[0]["tokens"] == (targets > 0).sum()
    assert history[-1]["accuracy"] > 0.95, history[-1]
    assert history[-1]["loss"] < 0.2 * history[0]["loss"]


def test_eval_padding_rows_count_nowhere():
    objective = SequenceClassification(num_classes=2, pooling="mean")
    rng = np.random.default_rng(5)
    ids = random_rows(rng)
    batch = {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
             "label": rng.integers(0, 2, ROWS).astype(np.int32)}
    padded = {k: np.concatenate([v[:10], np.zeros_like(v[:6])]) for k, v in batch.items()}
    head = {k: v[:10] for k, v in batch.items()}
    mesh, spec, tx, shardings = setup(objective, ENCODER)
    params = init_train_state(spec, tx, shardings).params
    ranks = {k: v.ndim for k, v in batch.items()}
    eval_step = jit_eval_step(make_eval_step(spec, objective), shardings.params, ranks,
                              Layout(mesh, DEFAULT_RULES))
    sums = jax.device_get(eval_step(params, Layout(mesh, DEFAULT_RULES).global_batch(padded)))
    model = spec.merge(jax.device_get(params))
    expected = jax.device_get(objective.sums(model, head, dropout_key=None, z_loss=0.0))
    assert sums["weight"] == 10
    for key in expected:
        assert float(sums[key]) == pytest.approx(float(expected[key]), rel=1e-4, abs=1e-5)


def test_wrong_config_or_features_are_user_errors():
    with pytest.raises(UserError, match=r"needs train.model_config = @EncoderConfig\(\)"):
        setup(SequenceClassification(num_classes=2),
              TransformerConfig(vocab_size=VOCAB, num_layers=1, embed_dim=16, num_heads=2,
                                max_len=LENGTH))
    with pytest.raises(UserError, match=r"missing \['label'\].*@ExampleBatches"):
        check_batch_features(SequenceClassification(num_classes=2), {"input_ids"})
    with pytest.raises(UserError, match="num_classes=1 must be at least 2"):
        TokenClassification(num_classes=1)
