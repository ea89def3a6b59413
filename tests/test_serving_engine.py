"""The continuous-batching engine: per-slot settings, parity with `generate`, slots freed at once."""

import threading
import time

import numpy as np
import pytest
from flax import nnx
from inference_helpers import random_model
from sharding_helpers import sharded_copy

from llmos_jax.inference import DecodeConfig, DecodingEngine
from llmos_jax.models import DecoderLM, EncoderDecoderLM, TransformerConfig, t5_config
from llmos_jax.serving import slot_programs
from llmos_jax.serving.engine import ServingEngine
from llmos_jax.serving.requests import (
    EngineNotReady,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    InvalidSetting,
    QueueFull,
    SamplingSettings,
    TokenEvent,
)

CONTEXT, CHUNK, SLOTS = 64, 16, 4


class Collector:
    """Events of many requests, in arrival order, with a wait for each request's end."""

    def __init__(self):
        self.events: list = []  # (request_id, event) in the order the engine sent them
        self._done: dict[str, threading.Event] = {}
        self.stop_after: dict[str, int] = {}  # request id -> end after this many tokens

    def sink(self, request_id: str):
        self._done[request_id] = threading.Event()

        def receive(event):
            self.events.append((request_id, event))
            if isinstance(event, FinishEvent):
                self._done[request_id].set()
                return None
            return event.index + 1 == self.stop_after.get(request_id)
        return receive

    def tokens(self, request_id: str) -> list[int]:
        return [e.token_id for r, e in self.events if r == request_id and isinstance(e, TokenEvent)]

    def finish(self, request_id: str, timeout: float = 60) -> FinishEvent:
        assert self._done[request_id].wait(timeout), f"{request_id} did not finish"
        return next(e for r, e in self.events if r == request_id and isinstance(e, FinishEvent))


def submit(engine, collector, request_id, prompt, **settings):
    engine.submit(GenerationRequest(request_id, list(prompt), SamplingSettings(**settings)),
                  collector.sink(request_id))


_REFERENCE_ENGINES = {}


def greedy_alone(model, prompt, max_tokens, **config):
    """`generate`'s greedy tokens for `prompt` alone (greedy is prefix-stable, so one
    compiled 20-token program serves every shorter length)."""
    engine = _REFERENCE_ENGINES.setdefault((id(model), tuple(config.items())),
                                           DecodingEngine(model))
    result = engine.generate([list(prompt)], DecodeConfig(max_new_tokens=20, **config))[0]
    assert max_tokens <= 20
    return list(result.tokens)[:max_tokens]


@pytest.fixture(scope="module")
def decoder():
    config = TransformerConfig(vocab_size=259, num_layers=2, embed_dim=32, num_heads=2,
                               max_len=CONTEXT, scan_layers=True)
    return random_model(lambda rngs: DecoderLM(config, rngs=rngs), seed=3, std=0.3)


@pytest.fixture(scope="module")
def engine(decoder):
    # Attention spans of 16, 32 and 64 positions, so rows of all lengths cross buckets.
    smallest, slot_programs.READ_SPAN_SMALLEST = slot_programs.READ_SPAN_SMALLEST, 16
    engine = ServingEngine(decoder, max_slots=SLOTS, max_queue=8, prefill_chunk=CHUNK)
    slot_programs.READ_SPAN_SMALLEST = smallest
    assert engine.programs.step_spans == (16, 32, 64)
    with pytest.raises(EngineNotReady):
        engine.submit(GenerationRequest("early", [5], SamplingSettings()), lambda e: None)
    engine.start()
    engine.compiled_at_ready = engine.stats().compilations
    yield engine
    engine.shutdown()


PROMPTS = [np.random.default_rng(i).integers(3, 259, size=n).tolist()
           for i, n in enumerate((5, 17, 40, 3, 33, 8, 50, 12))]


def test_greedy_equals_generate_whatever_shares_the_batch(engine, decoder):
    collector = Collector()
    others = [dict(temperature=1.3, top_k=20, seed=1), dict(temperature=0.8, top_p=0.7, seed=2),
              dict(temperature=1.0, repetition_penalty=1.5, presence_penalty=1.0,
                   frequency_penalty=0.5, seed=3), dict(temperature=2.0, seed=4)]
    for i, prompt in enumerate(PROMPTS):
        settings = dict(temperature=0.0) if i % 2 == 0 else others[i // 2]
        submit(engine, collector, f"r{i}", prompt, max_tokens=10 + i, **settings)
    for i, prompt in enumerate(PROMPTS):
        finish = collector.finish(f"r{i}")
        room = CONTEXT - len(prompt)  # prompt and output fit the context
        assert (finish.reason, finish.generated_tokens) == (FinishReason.LENGTH,
                                                            min(10 + i, room))
        if i % 2 == 0:
            assert collector.tokens(f"r{i}") == greedy_alone(decoder, prompt, 10 + i)
    # Sampled rows really sampled: no two of them equal their greedy continuation.
    assert all(collector.tokens(f"r{i}") != greedy_alone(decoder, PROMPTS[i], 10 + i)
               for i in (1, 7))


def test_a_seeded_sample_is_the_same_alone_and_in_a_busy_batch(engine):
    settings = dict(temperature=1.0, top_p=0.9, top_k=50, seed=1234, max_tokens=12)
    alone = Collector()
    submit(engine, alone, "alone", PROMPTS[2], **settings)
    alone.finish("alone")
    busy = Collector()
    submit(engine, busy, "noise0", PROMPTS[0], temperature=1.5, max_tokens=20, seed=9)
    submit(engine, busy, "busy", PROMPTS[2], **settings)
    submit(engine, busy, "noise1", PROMPTS[1], temperature=0.0, max_tokens=20)
    for rid in ("noise0", "busy", "noise1"):
        busy.finish(rid)
    assert busy.tokens("busy") == alone.tokens("alone")
    other = Collector()
    submit(engine, other, "other_seed", PROMPTS[2], **{**settings, "seed": 99})
    other.finish("other_seed")
    assert other.tokens("other_seed") != alone.tokens("alone")


def test_penalties_change_only_their_own_row(engine, decoder):
    collector = Collector()
    submit(engine, collector, "penalised", PROMPTS[3], temperature=0.0, max_tokens=12,
           repetition_penalty=3.0, frequency_penalty=2.0)
    submit(engine, collector, "plain", PROMPTS[3], temperature=0.0, max_tokens=12)
    collector.finish("penalised"), collector.finish("plain")
    plain = greedy_alone(decoder, PROMPTS[3], 12)
    assert collector.tokens("plain") == plain
    assert collector.tokens("penalised") == greedy_alone(decoder, PROMPTS[3], 12,
                                                         repetition_penalty=3.0)[:1] + \
        collector.tokens("penalised")[1:]
    # The plain greedy continuation repeats tokens; the penalised one repeats fewer.
    assert len(set(collector.tokens("penalised"))) > len(set(plain))


def test_stop_token_ids_min_tokens_and_stop_from_the_sink(engine, decoder):
    plain = greedy_alone(decoder, PROMPTS[0], 10)
    stop = plain[6]
    first = plain.index(stop)
    collector = Collector()
    submit(engine, collector, "stops", PROMPTS[0], temperature=0.0, max_tokens=10,
           stop_token_ids=(stop,))
    submit(engine, collector, "late", PROMPTS[0], temperature=0.0, max_tokens=10,
           stop_token_ids=(stop,), min_tokens=first + 1)
    collector.stop_after["by_text"] = 3
    submit(engine, collector, "by_text", PROMPTS[0], temperature=0.0, max_tokens=10)
    stops = collector.finish("stops")
    assert stops.reason is FinishReason.STOP and collector.tokens("stops") == plain[:first]
    late = collector.finish("late")
    assert stop not in collector.tokens("late")[:first + 1]
    assert len(collector.tokens("late")) > first
    by_text = collector.finish("by_text")
    assert (by_text.reason, collector.tokens("by_text")) == (FinishReason.STOP, plain[:3])
    assert late.prompt_tokens == len(PROMPTS[0])


def test_a_full_context_ends_with_length(engine, decoder):
    collector = Collector()
    prompt = (PROMPTS[6] + PROMPTS[2])[:CONTEXT - 4]  # room for 4 more tokens
    submit(engine, collector, "full", prompt, temperature=0.0, max_tokens=50)
    finish = collector.finish("full")
    assert (finish.reason, finish.generated_tokens) == (FinishReason.LENGTH, 4)
    assert collector.tokens("full") == greedy_alone(decoder, prompt, 20)


def test_running_streams_keep_decoding_while_a_long_prompt_prefills(engine):
    collector = Collector()
    submit(engine, collector, "running", PROMPTS[0], temperature=0.0, max_tokens=40)
    while not collector.tokens("running"):
        time.sleep(0.01)
    submit(engine, collector, "long", list(range(3, 3 + CONTEXT - 1)), temperature=0.0,
           max_tokens=1)
    collector.finish("long"), collector.finish("running")
    order = [r for r, e in collector.events if isinstance(e, TokenEvent)]
    submitted = order.index("running") + 1
    long_first = order.index("long")
    # Four chunks of 16: the running stream got a token after each of the first three.
    assert order[submitted:long_first].count("running") >= CONTEXT // CHUNK - 1


def test_a_burst_is_prefilled_as_one_group_and_each_row_equals_generate(engine, decoder):
    """Four waiting prompts of different lengths (ending in chunks 1, 2, 3 and 1) are
    prefilled together; every row still gets exactly `generate`'s greedy tokens, and a
    request aborted while it waited is never prefilled."""
    assert engine.programs.group_sizes == (1, 2, 4)
    real_chunk, groups = engine.programs.prefill_chunk, []

    def recording_chunk(buffer, logits, tokens, *args):  # the real program, observed
        groups.append(tokens.shape[0])
        return real_chunk(buffer, logits, tokens, *args)

    engine.programs.prefill_chunk = recording_chunk
    collector = Collector()
    burst = [PROMPTS[0], PROMPTS[1], PROMPTS[6], PROMPTS[3], PROMPTS[2]]
    try:
        with engine._cond:  # the engine thread waits on this lock: all five queue up at once
            for i, prompt in enumerate(burst):
                submit(engine, collector, f"g{i}", prompt, temperature=0.0, max_tokens=6)
            engine.abort("g4")  # waiting: never prefilled
        for i, prompt in enumerate(burst[:4]):
            collector.finish(f"g{i}")
            assert collector.tokens(f"g{i}") == greedy_alone(decoder, prompt, 6), i
        assert collector.finish("g4").reason is FinishReason.ABORT
    finally:
        engine.programs.prefill_chunk = real_chunk
    # 50 tokens in chunks of 16: one group of four rows, prefilled in four calls.
    assert groups == [4, 4, 4, 4]
    assert engine.stats().compilations == engine.compiled_at_ready


def test_abort_and_deadline_free_the_slot_at_once(engine):
    collector = Collector()
    for i in range(SLOTS):
        submit(engine, collector, f"busy{i}", PROMPTS[i], temperature=1.0, max_tokens=50, seed=i)
    submit(engine, collector, "queued", PROMPTS[5], temperature=0.0, max_tokens=2)
    while len(collector.tokens("busy0")) < 2:
        time.sleep(0.005)
    received = len(collector.tokens("busy0"))
    engine.abort("busy0")
    assert collector.finish("busy0").reason is FinishReason.ABORT
    assert len(collector.tokens("busy0")) <= received + 1
    # The freed slot takes the queued request while the others still run.
    assert collector.finish("queued").reason is FinishReason.LENGTH
    assert not any(r.startswith("busy") and isinstance(e, FinishEvent) and r != "busy0"
                   for r, e in collector.events)
    # Overdue while running: a slow reader (20 ms per token) meets a 0.2 s deadline.
    slow_sink = collector.sink("overdue")
    engine.submit(GenerationRequest("overdue", PROMPTS[3], SamplingSettings(max_tokens=60),
                                    deadline=time.monotonic() + 0.2),
                  lambda event: time.sleep(0.02) or slow_sink(event))
    overdue = collector.finish("overdue")
    assert overdue.reason is FinishReason.TIMEOUT and 0 < overdue.generated_tokens < 60
    # Overdue before it got a slot.
    engine.submit(GenerationRequest("stale", PROMPTS[3], SamplingSettings(),
                                    deadline=time.monotonic() - 1), collector.sink("stale"))
    stale = collector.finish("stale")
    assert (stale.reason, stale.generated_tokens) == (FinishReason.TIMEOUT, 0)
    for i in range(1, SLOTS):
        engine.abort(f"busy{i}")
        collector.finish(f"busy{i}")


def test_a_full_queue_refuses_at_once_and_bad_prompts_are_named(engine):
    collector = Collector()
    accepted = []
    with pytest.raises(QueueFull) as refused:
        for i in range(SLOTS + engine.max_queue + 1):
            submit(engine, collector, f"fill{i}", PROMPTS[1], temperature=1.0, max_tokens=60)
            accepted.append(f"fill{i}")
    assert engine.max_queue <= len(accepted) <= SLOTS + engine.max_queue
    assert refused.value.retry_after_seconds >= 1
    for rid in accepted:
        engine.abort(rid)
    for rid in accepted:
        collector.finish(rid)
    with pytest.raises(InvalidSetting, match="65 tokens but the model's context holds 64"):
        submit(engine, collector, "too_long", [5] * 65)
    with pytest.raises(InvalidSetting, match="token id 259 is outside") as bad:
        submit(engine, collector, "bad_id", [5, 259])
    assert bad.value.field == "prompt"
    with pytest.raises(InvalidSetting, match="top_p"):
        SamplingSettings(top_p=0.0)


def test_serving_compiles_nothing_after_warm_up(engine):
    # Runs last in this module: everything above went through the warm programs.
    collector = Collector()
    submit(engine, collector, "top", PROMPTS[1], temperature=0.5, max_tokens=3, logprobs=5)
    collector.finish("top")
    events = [e for r, e in collector.events if isinstance(e, TokenEvent)]
    assert all(len(e.top_logprobs) == 5 and e.logprob <= 0 for e in events)
    assert [lp for _, lp in events[0].top_logprobs] == sorted(
        (lp for _, lp in events[0].top_logprobs), reverse=True)
    assert engine.stats().compilations == engine.compiled_at_ready
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.kv_cache_usage) == (0, 0, 0.0)


def test_encoder_decoder_greedy_equals_generate():
    config = t5_config("1.1", vocab_size=64, num_layers=2, embed_dim=32, num_heads=4, head_dim=8,
                       mlp_dim=48, relative_buckets=8, relative_max_distance=20, dropout_rate=0.0,
                       max_len=32)
    model = random_model(lambda rngs: EncoderDecoderLM(config, rngs=rngs), seed=1, std=0.3)
    engine = ServingEngine(model, max_slots=3, max_context=16)
    engine.start()
    collector = Collector()
    prompts = [[5, 9, 2], list(range(3, 23)), [7, 1, 4, 4, 8, 3], [11] * 30]
    for i, prompt in enumerate(prompts):
        submit(engine, collector, f"t{i}", prompt, temperature=0.0, max_tokens=8)
    for i, prompt in enumerate(prompts):
        collector.finish(f"t{i}")
        assert collector.tokens(f"t{i}") == greedy_alone(model, prompt, 8)
    engine.shutdown()


def test_tensor_parallel_serving_equals_one_device(decoder):
    sharded, _ = sharded_copy(lambda shard: DecoderLM(decoder.config, rngs=nnx.Rngs(0),
                                                      shard=shard), decoder)
    engine = ServingEngine(sharded, max_slots=SLOTS, prefill_chunk=CHUNK)
    engine.start()
    for block in engine._state.cache.keys[0].blocks:  # each block of the cache is split
        assert len(block.sharding.device_set) == 8
    collector = Collector()
    for i, prompt in enumerate(PROMPTS[:4]):
        submit(engine, collector, f"s{i}", prompt, temperature=0.0, max_tokens=6)
    for i, prompt in enumerate(PROMPTS[:4]):
        collector.finish(f"s{i}")
        assert collector.tokens(f"s{i}") == greedy_alone(decoder, prompt, 6)
    assert engine.drain(timeout=5)
    with pytest.raises(EngineNotReady):
        submit(engine, collector, "after_drain", PROMPTS[0])
    engine.shutdown()
