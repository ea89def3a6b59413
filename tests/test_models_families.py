"""The model-family registry: lookups, the FLOPs numbers, and a toy fourth family end to end.

The toy family (its own config subclass and a one-attention-layer model that
shares no code with `DecoderLM`) is registered for one test and removed
after it; with no edit anywhere else it trains through the objective and the
sharded train step, decodes with `generate` over a KV cache (token for token
what step-by-step argmax of the full forward gives), is scored by the
evaluation's predictors through `evaluate`, and gives its FLOPs count.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from flax import nnx

from llmos_jax import metrics
from llmos_jax.data.sources import FunctionSource
from llmos_jax.errors import UserError
from llmos_jax.evaluation.evaluator import evaluate
from llmos_jax.evaluation.objective_predictors import model_functions
from llmos_jax.inference import DecodeConfig, generate
from llmos_jax.models import (DecoderLM, Encoder, EncoderConfig, EncoderDecoderConfig,
                              EncoderDecoderLM, EncoderForSequenceClassification,
                              TransformerConfig, gpt2_config)
from llmos_jax.models import axes
from llmos_jax.models.attention import SelfAttention, cached_attention_mask
from llmos_jax.models.dense import Dense
from llmos_jax.models.embeddings import TokenEmbedding
from llmos_jax.models.families import (ArchitectureKind, ModelFamily, family_for_config,
                                       family_of, get_family, register, unregister)
from llmos_jax.objectives import CausalLm, Seq2Seq, SequenceClassification
from llmos_jax.objectives.model_building import model_spec
from llmos_jax.partitioning import Layout, MeshConfig
from llmos_jax.training.optimizers import current_learning_rate, make_optimizer
from llmos_jax.training.train_state import init_train_state, state_shardings
from llmos_jax.training.train_step import StepConfig, jit_train_step, make_train_step

VOCAB = seqio.ByteVocabulary()  # 259 ids: 0 pad, 1 EOS, 2 UNK, bytes from 3


# ----------------------------------------------------------------------------- the toy family


@dataclasses.dataclass(frozen=True)
class ToyConfig(TransformerConfig):
    """A `TransformerConfig` subclass: the lookup must pick the toy family, not the decoder."""


class ToyLM(nnx.Module):
    """Token embedding, one RoPE self-attention layer with a residual, an output projection.

    No norms, no MLP, no layer stack: nothing of `DecoderLM`.
    """

    def __init__(self, config: ToyConfig, *, rngs: nnx.Rngs,
                 shard: axes.ActivationSharder = axes.no_sharding):
        self.config = config
        self.shard = shard
        self.token_embed = TokenEmbedding(config.vocab_size, config.embed_dim, init_std=0.5,
                                          param_dtype=config.storage_dtype, rngs=rngs)
        self.attn = SelfAttention(config.embed_dim, config.num_heads, config.num_kv_heads,
                                  config.head_dim, use_bias=False, init_std=0.3,
                                  out_init_std=0.3, impl="xla",
                                  param_dtype=config.storage_dtype, rngs=rngs)
        self.lm_head = Dense((config.embed_dim,), (config.vocab_size,), (axes.EMBED,),
                             (axes.VOCAB,), use_bias=False, init_std=0.3,
                             param_dtype=config.storage_dtype, rngs=rngs)

    def __call__(self, tokens, *, positions=None, segment_ids=None, dropout_key=None):
        del dropout_key
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32),
                                         tokens.shape)
        x = self.token_embed(tokens, self.config.compute_dtype, self.shard)
        x = x + self.attn(x, positions=positions, segment_ids=segment_ids,
                          rope_theta=self.config.rope_theta, shard=self.shard)
        return self.logits(x)

    def logits(self, hidden):
        return self.lm_head(hidden).astype(jnp.float32)

    def extend(self, tokens, *, positions, keys, values, write_index, key_valid):
        x = self.token_embed(tokens, self.config.compute_dtype, self.shard)
        mask = cached_attention_mask(key_valid, write_index, tokens.shape[1])
        h, layer_keys, layer_values = self.attn.attend_cached(
            x, keys=keys[0], values=values[0], write_index=write_index, mask=mask,
            positions=positions, rope_theta=self.config.rope_theta, shard=self.shard)
        return x + h, (layer_keys,), (layer_values,)


def toy_flops(config: ToyConfig, seq_len: int) -> float:
    """3 x forward: 2 x (q, k, v, out projections + output head) + causal attention."""
    projections = 4 * config.embed_dim * config.num_heads * config.head_dim
    head = config.embed_dim * config.vocab_size
    attention = 2 * 2 * seq_len * config.num_heads * config.head_dim * 0.5
    return 3.0 * (2 * (projections + head) + attention)


TOY = ModelFamily(name="toy", kind=ArchitectureKind.DECODER, config_class=ToyConfig,
                  model_class=ToyLM, training_flops_per_token=toy_flops)
TOY_CONFIG = ToyConfig(vocab_size=VOCAB.vocab_size, num_layers=1, embed_dim=16, num_heads=2,
                       max_len=32, position_embedding="rope", scan_layers=False,
                       dropout_rate=0.0)


@pytest.fixture
def toy_family():
    register(TOY)
    yield TOY
    unregister(TOY.name)


# ----------------------------------------------------------------------------- lookups


def test_each_config_selects_its_family_and_subclasses_their_ancestors():
    assert family_for_config(gpt2_config()).name == "decoder"
    assert family_for_config(EncoderConfig(vocab_size=8, num_layers=1, embed_dim=8,
                                           num_heads=2)).name == "bert"
    assert family_for_config(EncoderDecoderConfig).name == "t5"
    assert family_for_config(ToyConfig).name == "decoder"  # unregistered: nearest ancestor
    assert [get_family(n).model_class for n in ("decoder", "bert", "t5")] == [
        DecoderLM, Encoder, EncoderDecoderLM]
    assert [get_family(n).kind for n in ("decoder", "bert", "t5")] == [
        ArchitectureKind.DECODER, ArchitectureKind.ENCODER, ArchitectureKind.ENCODER_DECODER]


def test_unknown_config_and_clashing_registrations_are_user_errors(toy_family):
    @dataclasses.dataclass(frozen=True)
    class Stray:
        vocab_size: int = 8

    with pytest.raises(UserError, match=r"model config Stray belongs to no registered model "
                                        r"family \(registered: decoder \(TransformerConfig\), "
                                        r"bert \(EncoderConfig\), t5 \(EncoderDecoderConfig\), "
                                        r"toy \(ToyConfig\)\)"):
        family_for_config(Stray())
    with pytest.raises(UserError, match="'toy' is already registered"):
        register(TOY)
    with pytest.raises(UserError, match="ToyConfig already selects family 'toy'"):
        register(dataclasses.replace(TOY, name="toy2"))
    with pytest.raises(UserError, match="needs train.model_config = @EncoderDecoderConfig"):
        Seq2Seq().build_model(TOY_CONFIG, rngs=nnx.Rngs(0), shard=axes.no_sharding)


def test_built_models_know_their_family():
    config = EncoderConfig(vocab_size=8, num_layers=1, embed_dim=8, num_heads=2, max_len=8,
                           dropout_rate=0.0)
    classifier = nnx.eval_shape(lambda: SequenceClassification(num_classes=2).build_model(
        config, rngs=nnx.Rngs(0), shard=axes.no_sharding))
    assert isinstance(classifier, EncoderForSequenceClassification)
    assert family_of(classifier).name == "bert"
    with pytest.raises(UserError, match=r"EncoderForSequenceClassification \(model family "
                                        r"'bert', a encoder\) cannot generate text"):
        generate(classifier, None, [[3, 4]], DecodeConfig(max_new_tokens=2))


def test_decoder_flops_are_the_mfu_numbers():
    """The trainer's MFU numerator through the family: the hand-checked GPT-2 small count."""
    config = gpt2_config(vocab_size=50257)
    assert family_for_config(config).flops_per_token(config, 1024) == 797_815_296
    assert family_for_config(EncoderDecoderConfig).flops_per_token(None, 8) is None
    assert get_family("bert").flops_per_token(None, 8) is None


# ----------------------------------------------------------------------------- the toy, end to end


def _register_task(name):
    records = [{"targets": text} for text in ("abcabc", "cabcab", "bcabca", "abcab")]
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name, source=FunctionSource(lambda split: records, ["validation"], features=("targets",)),
        preprocessors=[functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=True)],
        output_features={"targets": seqio.Feature(VOCAB, add_eos=False)},
        metric_fns=[metrics.perplexity])
    return seqio.get_mixture_or_task(name)


def test_a_registered_toy_family_trains_decodes_evaluates_and_counts_flops(toy_family):
    assert family_for_config(TOY_CONFIG) is toy_family

    # Training: the objective builds the toy's model; the sharded train step learns "abc" cycles.
    objective = CausalLm()
    layout = Layout.build(MeshConfig(data=2, fsdp=4, tensor=1))
    spec = model_spec(lambda rngs: objective.build_model(
        TOY_CONFIG, rngs=rngs, shard=layout.activation_sharder), seed=0)
    tx = make_optimizer(name="adamw", learning_rate=3e-2, weight_decay=0.0, grad_clip_norm=1.0)
    shardings = state_shardings(spec, tx, layout)
    # 8 rows of 12 tokens, the cycle started at each letter: only "next letter" fits them all.
    cycle = np.array([VOCAB.encode(("abc" * 5)[row % 3:][:12]) for row in range(8)], np.int32)
    batch = {"decoder_input_tokens": np.pad(cycle[:, :-1], [(0, 0), (1, 0)]),
             "decoder_target_tokens": cycle,
             "decoder_loss_weights": np.ones(cycle.shape, np.float32)}
    step = jit_train_step(make_train_step(spec, tx, current_learning_rate,
                                          StepConfig(microbatches=1, use_dropout=False), layout,
                                          objective),
                          shardings, {k: v.ndim for k, v in batch.items()}, layout)
    state = init_train_state(spec, tx, shardings)
    device_batch = layout.global_batch(batch)
    losses = []
    for _ in range(30):
        state, step_metrics = step(state, device_batch)
        losses.append(float(jax.device_get(step_metrics)["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses
    params = jax.device_get(state.params)
    model = spec.merge(params)
    assert isinstance(model, ToyLM) and family_of(model) is toy_family

    # Decoding: each token greedy KV-cache decoding picks is the argmax of the full forward
    # over the prompt and the tokens before it (one right-padded causal batch checks all).
    forward = jax.jit(lambda p, tokens: spec.merge(p)(tokens))
    # Ragged (left padding exercised), each behind the 0 that training rows start with.
    prompts = [[0, *VOCAB.encode("ab")], [0, *VOCAB.encode("cabca")]]
    results = generate(model, params, prompts, DecodeConfig(max_new_tokens=5), vocabulary=VOCAB)
    assert all(result.ok for result in results), [result.error for result in results]
    sequences = [list(p) + list(r.completions[0].tokens) for p, r in zip(prompts, results)]
    logits = forward(params, jnp.asarray([s + [0] * (16 - len(s)) for s in sequences]))
    for row, (prompt, sequence) in enumerate(zip(prompts, sequences)):
        assert len(sequence) == len(prompt) + 5
        for index in range(len(prompt), len(sequence)):
            assert sequence[index] == int(jnp.argmax(logits[row, index - 1]))
    texts = [r.completions[0].text for r in results]
    assert texts == ["cabca", "bcabc"], (texts, losses)  # it learned the cycle

    # Evaluation: the CausalLm objective's score function, through `evaluate`, gives the
    # perplexity of the teacher-forced forward.
    task = _register_task("toy_family_cycles")
    functions = model_functions(objective, model, params, provider=task,
                                lengths={"targets": 16}, batch_size=4)
    scores = evaluate(task.name, "validation", score_fn=functions["score_fn"], batch_size=4)
    rows = [[0, *VOCAB.encode(text)]  # the shift-right start, then the targets (no EOS step)
            for text in ("abcabc", "cabcab", "bcabca", "abcab")]
    log_probs = jax.nn.log_softmax(
        forward(params, jnp.asarray([r[:-1] + [0] * (16 - len(r)) for r in rows])))
    nll = -sum(float(log_probs[row, i, t])
               for row, r in enumerate(rows) for i, t in enumerate(r[1:]))
    count = sum(len(r) - 1 for r in rows)
    assert scores[task.name]["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    seqio.TaskRegistry.remove(task.name)

    # FLOPs: the toy's own formula, as the trainer reads it.
    assert toy_family.flops_per_token(TOY_CONFIG, 12) == toy_flops(TOY_CONFIG, 12) == 3.0 * (
        2 * (4 * 16 * 2 * 8 + 16 * 259) + 2 * 2 * 12 * 2 * 8 * 0.5)


def test_the_toy_family_is_gone_after_its_test():
    assert family_for_config(TOY_CONFIG).name == "decoder"
    with pytest.raises(UserError, match="no model family 'toy'"):
        get_family("toy")
