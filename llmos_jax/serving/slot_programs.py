"""The serving engine's device programs: chunked prefill, insert into a slot, one decode step.

The running batch is a `SlotState`: one preallocated KV cache with a row per
slot (for decoders, each layer's keys and values split into blocks of
`READ_SPAN_SMALLEST` slots, `llmos_jax.models.cache_blocks`, so a step reads the
prefix its longest row needs without copying it), and per slot its length (the next cache position it writes, so each row
masks and positions by its own length), last token, generated-token counts,
prompt tokens, banned-until-`min_tokens` tokens and random key. Prompts are
prefilled into a buffer of a few rows (a prefill group: up to `prefill_rows`
waiting requests at once, so a burst of arrivals is admitted in a few large
matmuls rather than one prompt per step), `prefill_chunk` tokens of each per
call, so a long prompt costs the running streams one chunk per engine iteration
rather than the whole prompt at once. Each finished row is then copied into a
free slot (`insert`), which also chooses the request's first token with its
settings.

Every program has a fixed set of shapes (one prefill chunk size, group sizes
1, 2, 4, ... up to `prefill_rows`; for encoder-decoders, one row and a few
encoder-length buckets), and `warm_up` runs each
before the server reports ready, so a running server never compiles;
`compilations` counts what was compiled (the engine exports it to /metrics,
and a test checks it does not move after warm-up). The state is donated to
each program, so the cache is updated in place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmos_jax.compression.multi_lora import select_adapters
from llmos_jax.inference.decoding_model import (
    is_encoder_decoder,
    unstack_params,
    unstacked_structure,
)
from llmos_jax.inference.kv_cache import CACHE_AXES, KVCache, empty_cache
from llmos_jax.models.cache_blocks import CacheBlocks
from llmos_jax.serving.slot_sampling import Choice, SlotSettings, choose_tokens, settings_rows

Params = Any

READ_SPAN_SMALLEST = 128  # the smallest compiled attention span of a decode step

__all__ = ["SlotState", "SlotPrograms", "encoder_buckets", "doubling_buckets"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SlotState:
    """The running batch on the device; every array has one row per slot."""

    cache: KVCache
    lengths: jax.Array      # int32 [slots]: positions written (the next write position)
    last_tokens: jax.Array  # int32 [slots]: the token the next decode step feeds
    generated: jax.Array    # int32 [slots]: tokens generated so far
    counts: jax.Array       # int32 [slots, vocab]: generated-token counts (penalties)
    prompt_seen: jax.Array  # bool [slots, vocab]: prompt tokens (repetition penalty)
    stop_ban: jax.Array     # bool [slots, vocab]: EOS/stop ids, banned below min_tokens
    keys: jax.Array         # uint32 [slots, 2]: each request's random key


def doubling_buckets(largest: int, smallest: int) -> tuple[int, ...]:
    """`smallest`, twice that, ... below `largest`, then `largest`: the compiled sizes."""
    sizes, size = [], min(smallest, largest)
    while size < largest:
        sizes.append(size)
        size *= 2
    return tuple(sizes) + (largest,)


def encoder_buckets(max_len: int, smallest: int = 16) -> tuple[int, ...]:
    """Encoder input lengths compiled for encoder-decoders: powers of two up to `max_len`."""
    return doubling_buckets(max_len, smallest)


def bucket_for(buckets: tuple[int, ...], needed: int) -> int:
    """The smallest bucket that holds `needed`."""
    return next(b for b in buckets if b >= needed)


class SlotPrograms:
    """Compiled programs of one model over `slots` rows of `context` positions.

    Args:
      model: A decoder or encoder-decoder (NNX module with its weights).
      slots: Rows of the running batch.
      context: Cache positions per row (prompt + generated; decoder positions for
        encoder-decoders).
      prefill_chunk: Prompt tokens per prefill call (decoders).
      prefill_rows: Most prompts prefilled together (decoders; a group's size is
        bucketed to 1, 2, 4, ...). Encoder-decoders prefill one at a time.
      decoder_start_id: Encoder-decoders' first decoder token.
      encoder_context: Longest encoder input (encoder-decoders).
    """

    def __init__(self, model: nnx.Module, *, slots: int, context: int, prefill_chunk: int,
                 prefill_rows: int = 1, decoder_start_id: int = 0,
                 encoder_context: int | None = None):
        self.encoder_decoder = is_encoder_decoder(model)
        self.config = config = model.config
        self.slots, self.context = slots, context
        self.vocab_size = config.vocab_size
        self.chunk_len = min(prefill_chunk, context)
        # The prefill buffer is a whole number of chunks long, so no chunk write is clamped.
        self.buffer_len = -(-context // self.chunk_len) * self.chunk_len
        self.encoder_context = encoder_context or config.max_len
        # Decoders attend over the cache's first `read_len` positions, the longest live row
        # rounded up to one of these (the cache is never read in full while rows are short).
        self.step_spans = ((context,) if self.encoder_decoder
                           else doubling_buckets(context, READ_SPAN_SMALLEST))
        self.prefill_spans = doubling_buckets(self.buffer_len,
                                              max(READ_SPAN_SMALLEST, self.chunk_len))
        largest_group = 1 if self.encoder_decoder else max(1, min(prefill_rows, slots))
        self.group_sizes = doubling_buckets(largest_group, 1)
        self.decoder_start_id = decoder_start_id
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        if config.scan_layers:  # decoding reads per-layer weights in place
            self.graphdef, abstract = unstacked_structure(type(model), config, model.shard)
            params = jax.jit(lambda p: unstack_params(p, abstract))(params)
        else:
            self.graphdef = nnx.graphdef(model)
        self.params = params
        self._shard = model.shard
        self._programs: list[Callable] = []
        self._init_fn = self._jit(self._init_state)
        self._buffer_fn = self._jit(lambda rows: self._cache(rows, self.buffer_len, None),
                                    static=("rows",))
        self._chunk_fn = self._jit(self._prefill_chunk, donate=(1,), static=("read_len",))
        self._encode_fn = self._jit(self._prefill_encoder)
        self._insert_fn = self._jit(self._insert, donate=(0,))
        self._step_fn = self._jit(self._decode_step, donate=(1,), static=("read_len",))

    # -- shapes ------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return self.config.num_decoder_layers if self.encoder_decoder else self.config.num_layers

    def _cache(self, rows: int, length: int, encoder_len: int | None) -> KVCache:
        config = self.config
        cache = empty_cache(self.num_layers, rows, length, config.num_kv_heads, config.head_dim,
                            config.compute_dtype, jnp.ones((rows, length), bool), self._shard)
        if encoder_len is None:
            return cache
        cross = empty_cache(self.num_layers, rows, encoder_len, config.num_kv_heads,
                            config.head_dim, config.compute_dtype,
                            jnp.zeros((rows, encoder_len), bool), self._shard)
        return dataclasses.replace(cache, cross_keys=cross.keys, cross_values=cross.values,
                                   encoder_valid=cross.key_valid)

    def _slot_cache(self) -> KVCache:
        """The running batch's cache: blocked for decoders (see the module docstring)."""
        if self.encoder_decoder:
            return self._cache(self.slots, self.context, self.encoder_context)
        config, block_len = self.config, self.step_spans[0]

        def layer() -> CacheBlocks:
            return CacheBlocks.zeros(self.slots, config.num_kv_heads, self.context,
                                     config.head_dim, config.compute_dtype, block_len).map(
                lambda block: self._shard(block, CACHE_AXES))

        return KVCache(keys=tuple(layer() for _ in range(self.num_layers)),
                       values=tuple(layer() for _ in range(self.num_layers)),
                       key_valid=jnp.ones((self.slots, self.context), bool))

    def _init_state(self) -> SlotState:
        slots, vocab = self.slots, self.vocab_size
        zeros = jnp.zeros((slots,), jnp.int32)
        return SlotState(cache=self._slot_cache(), lengths=zeros,
                         last_tokens=zeros, generated=zeros,
                         counts=jnp.zeros((slots, vocab), jnp.int32),
                         prompt_seen=jnp.zeros((slots, vocab), bool),
                         stop_ban=jnp.zeros((slots, vocab), bool),
                         keys=jnp.zeros((slots, 2), jnp.uint32))

    # -- program bodies ----------------------------------------------------------

    def _model(self, params):
        return nnx.merge(self.graphdef, params)

    def _prefill_chunk(self, params, buffer: KVCache, final_logits, tokens, start, last, ends,
                       adapter_ids, *, read_len: int):
        """Writes one chunk [G, C] of G decoder prompts at `start` (the same for every row).

        Row i's logits at chunk index `last[i]` replace its row of `final_logits` where
        `ends[i]` (its prompt ends in this chunk); a row whose prompt ended earlier keeps
        the logits it had, whatever this chunk computes for it. Row i runs with LoRA
        adapter `adapter_ids[i]` (0: the base).
        """
        model = self._model(params)
        select_adapters(model, adapter_ids)
        rows, length = tokens.shape
        positions = jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32), (rows, length))
        hidden, keys, values = model.extend(tokens, positions=positions, keys=buffer.keys,
                                            values=buffer.values, write_index=start,
                                            key_valid=buffer.key_valid, read_len=read_len)
        last_hidden = jnp.take_along_axis(hidden, last[:, None, None], axis=1)
        logits = model.logits(last_hidden)[:, 0]
        final_logits = jnp.where(ends[:, None], logits, final_logits)
        return dataclasses.replace(buffer, keys=keys, values=values), final_logits

    def _prefill_encoder(self, params, prompt, prompt_valid, adapter_ids):
        """Encodes a [1, bucket] prompt, caches its cross keys/values and runs the start token."""
        model = self._model(params)
        select_adapters(model, adapter_ids)
        encoded = model.encode(prompt, segment_ids=prompt_valid.astype(jnp.int32))
        cross_keys, cross_values = model.cross_keys_values(encoded)
        pad = self.encoder_context - prompt.shape[1]

        def widen(a):  # [1, heads, bucket, head_dim] -> [1, heads, encoder_context, head_dim]
            return jnp.pad(a, ((0, 0), (0, 0), (0, pad), (0, 0)))

        buffer = self._cache(1, self.context, None)
        buffer = dataclasses.replace(
            buffer, cross_keys=tuple(map(widen, cross_keys)),
            cross_values=tuple(map(widen, cross_values)),
            encoder_valid=jnp.pad(prompt_valid, ((0, 0), (0, pad))))
        start = jnp.full((1, 1), self.decoder_start_id, jnp.int32)
        hidden, keys, values = model.extend_decoder(
            start, keys=buffer.keys, values=buffer.values, cross_keys=buffer.cross_keys,
            cross_values=buffer.cross_values, write_index=jnp.int32(0),
            encoder_valid=buffer.encoder_valid)
        return dataclasses.replace(buffer, keys=keys, values=values), model.logits(hidden)[:, 0]

    def _insert(self, state: SlotState, buffer: KVCache, logits, row, slot, length, prompt_ids,
                stop_ban, key, settings: SlotSettings):
        """Copies row `row` of a prefilled buffer into slot `slot`; chooses its first token."""
        def take(a):  # row `row` of a [G, ...] buffer array, as [1, ...]
            return jax.lax.dynamic_slice_in_dim(a, row, 1, axis=0)

        buffer = jax.tree.map(take, buffer)
        logits = take(logits)
        vocab = self.vocab_size
        prompt_seen = jnp.zeros((vocab,), bool).at[prompt_ids].max(prompt_ids >= 0)[None]
        counts = jnp.zeros((1, vocab), jnp.int32)
        choice = choose_tokens(logits, settings, counts=counts, prompt_seen=prompt_seen,
                               stop_ban=stop_ban[None], generated=jnp.zeros((1,), jnp.int32),
                               keys=key[None])

        def put(target, row):  # row [1, ...] into target [slots, ...] at `slot`
            start = (slot,) + (0,) * (target.ndim - 1)
            return jax.lax.dynamic_update_slice(target, row.astype(target.dtype), start)

        def put_layer(target, row):  # a row's whole cache [1, heads, >= context, head_dim]
            if isinstance(target, CacheBlocks):
                return CacheBlocks(tuple(
                    put(block, row[:, :, start:start + block.shape[2]])
                    for start, block in zip(target.starts, target.blocks)))
            return put(target, row[:, :, :self.context])

        cache = state.cache
        cache = dataclasses.replace(
            cache,
            keys=tuple(put_layer(t, b) for t, b in zip(cache.keys, buffer.keys)),
            values=tuple(put_layer(t, b) for t, b in zip(cache.values, buffer.values)),
            cross_keys=tuple(put(t, b) for t, b in zip(cache.cross_keys, buffer.cross_keys)),
            cross_values=tuple(put(t, b) for t, b in zip(cache.cross_values,
                                                         buffer.cross_values)),
            encoder_valid=(None if cache.encoder_valid is None
                           else put(cache.encoder_valid, buffer.encoder_valid)))
        token = choice.tokens
        state = SlotState(
            cache=cache,
            lengths=put(state.lengths, length[None]),
            last_tokens=put(state.last_tokens, token),
            generated=put(state.generated, jnp.ones((1,), jnp.int32)),
            counts=put(state.counts, counts.at[0, token[0]].add(1)),
            prompt_seen=put(state.prompt_seen, prompt_seen),
            stop_ban=put(state.stop_ban, stop_ban[None]),
            keys=put(state.keys, key[None]))
        return state, choice

    def _decode_step(self, params, state: SlotState, settings: SlotSettings, active,
                     adapter_ids, *, read_len: int):
        """One token for every slot; inactive rows compute but change nothing that is read.

        `adapter_ids` [slots]: each row's LoRA adapter (0: the base; see
        `compression.multi_lora`); a model without adapters ignores it.
        """
        model = self._model(params)
        select_adapters(model, adapter_ids)
        cache = state.cache
        write = jnp.minimum(state.lengths, self.context - 1)
        tokens = state.last_tokens[:, None]
        if self.encoder_decoder:
            hidden, keys, values = model.extend_decoder(
                tokens, keys=cache.keys, values=cache.values, cross_keys=cache.cross_keys,
                cross_values=cache.cross_values, write_index=write,
                encoder_valid=cache.encoder_valid)
        else:
            hidden, keys, values = model.extend(tokens, positions=write[:, None],
                                                keys=cache.keys, values=cache.values,
                                                write_index=write, key_valid=cache.key_valid,
                                                read_len=read_len)
        logits = model.logits(hidden)[:, 0]
        choice = choose_tokens(logits, settings, counts=state.counts,
                               prompt_seen=state.prompt_seen, stop_ban=state.stop_ban,
                               generated=state.generated, keys=state.keys)
        step = active.astype(jnp.int32)
        rows = jnp.arange(self.slots)
        state = SlotState(
            cache=dataclasses.replace(cache, keys=keys, values=values),
            lengths=state.lengths + step,
            last_tokens=jnp.where(active, choice.tokens, state.last_tokens),
            generated=state.generated + step,
            counts=state.counts.at[rows, choice.tokens].add(step),
            prompt_seen=state.prompt_seen, stop_ban=state.stop_ban, keys=state.keys)
        return state, choice

    # -- compilation and running ------------------------------------------------------

    def _jit(self, fn: Callable, donate: tuple[int, ...] = (),
             static: tuple[str, ...] = ()) -> Callable:
        jitted = jax.jit(fn, donate_argnums=donate, static_argnames=static)
        self._programs.append(jitted)
        return jitted

    @property
    def compilations(self) -> int:
        """Programs compiled so far (each shape/layout a program was called with)."""
        return sum(program._cache_size() for program in self._programs)

    def warm_up(self) -> SlotState:
        """Runs every program on every shape and layout the engine uses; returns a fresh state.

        Called once, before the server reports ready: after it, serving compiles
        nothing (`compilations` stays put). Each program runs twice, so that one whose
        outputs come back with another layout than its inputs compiles that one too.
        """
        state = self.initial_state()
        no_ban = np.zeros((self.vocab_size,), bool)
        key = np.zeros((2,), np.uint32)
        one = settings_rows([None])
        for slot in range(min(2, self.slots)):
            if self.encoder_decoder:
                for bucket in encoder_buckets(self.encoder_context):
                    buffer, logits = self.prefill_encoder([0] * bucket)
                state, _ = self.insert(state, buffer, logits, 0, slot, 1, [0], no_ban, key, one)
                continue
            for rows in self.group_sizes:
                buffer, logits = self.empty_buffer(rows), self.no_logits(rows)
                # A chunk ending at each span's end, each twice: a group's first chunk
                # takes a fresh buffer and host logits, the next ones the previous outputs.
                for span in self.prefill_spans:
                    for _ in range(2):
                        buffer, logits = self.prefill_chunk(
                            buffer, logits, np.zeros((rows, self.chunk_len), np.int32),
                            span - self.chunk_len, np.zeros((rows,), np.int32),
                            np.ones((rows,), bool))
                state, _ = self.insert(state, buffer, logits, rows - 1, slot, 1, [0], no_ban,
                                       key, one)
        every = settings_rows([None] * self.slots)
        active = np.zeros((self.slots,), bool)
        adapters = np.zeros((self.slots,), np.int32)
        for _ in range(2):
            for span in self.step_spans:
                state, choice = self.decode_step(state, every, active, adapters, span)
        jax.block_until_ready(choice.tokens)
        return self.initial_state()

    def initial_state(self) -> SlotState:
        """An empty running batch (every slot free)."""
        return self._init_fn()

    @property
    def prompt_capacity(self) -> int:
        """Longest prompt a slot takes (the encoder input for encoder-decoders)."""
        return self.encoder_context if self.encoder_decoder else self.context

    def empty_buffer(self, rows: int = 1) -> KVCache:
        """A prefill buffer for a group of `rows` prompts (one of `group_sizes`)."""
        return self._buffer_fn(rows=rows)

    def no_logits(self, rows: int = 1) -> np.ndarray:
        """The `final_logits` a group starts from (replaced as each prompt ends)."""
        return np.zeros((rows, self.vocab_size), np.float32)

    def prefill_chunk(self, buffer: KVCache, final_logits, tokens: np.ndarray, start: int,
                      last: np.ndarray, ends: np.ndarray,
                      adapter_ids: np.ndarray | None = None) -> tuple[KVCache, jax.Array]:
        """Prefills `tokens` [G, chunk_len] at `start` (`buffer` is donated).

        Returns the buffer and `final_logits` [G, vocab], whose row i is replaced by the
        logits at chunk index `last[i]` where `ends[i]`. `adapter_ids` [G]: each row's
        LoRA adapter (default: the base for every row).
        """
        span = bucket_for(self.prefill_spans, start + self.chunk_len)
        if adapter_ids is None:
            adapter_ids = np.zeros((tokens.shape[0],), np.int32)
        return self._chunk_fn(self.params, buffer, final_logits, tokens, np.int32(start),
                              np.asarray(last, np.int32), np.asarray(ends, bool),
                              np.asarray(adapter_ids, np.int32), read_len=span)

    def prefill_encoder(self, prompt_ids: list[int],
                        adapter_id: int = 0) -> tuple[KVCache, jax.Array]:
        """Encodes a prompt (padded to its bucket) and runs the decoder start token, with
        LoRA adapter `adapter_id` (0: the base)."""
        bucket = next(b for b in encoder_buckets(self.encoder_context) if b >= len(prompt_ids))
        prompt = np.zeros((1, bucket), np.int32)
        prompt[0, :len(prompt_ids)] = prompt_ids
        valid = np.zeros((1, bucket), bool)
        valid[0, :len(prompt_ids)] = True
        return self._encode_fn(self.params, prompt, valid, np.full((1,), adapter_id, np.int32))

    def insert(self, state: SlotState, buffer: KVCache, logits: jax.Array, row: int, slot: int,
               length: int, prompt_ids: list[int], stop_ban: np.ndarray, key: np.ndarray,
               settings: SlotSettings) -> tuple[SlotState, Choice]:
        """Puts row `row` of a prefilled buffer into slot `slot` (`state` is donated) and
        chooses its first token."""
        padded = np.full((self.prompt_capacity,), -1, np.int32)
        padded[:len(prompt_ids)] = prompt_ids
        return self._insert_fn(state, buffer, logits, np.int32(row), np.int32(slot),
                               np.int32(length), padded,
                               stop_ban, key, settings)

    def decode_step(self, state: SlotState, settings: SlotSettings, active: np.ndarray,
                    adapter_ids: np.ndarray, longest: int) -> tuple[SlotState, Choice]:
        """One token for every slot (`state` is donated).

        `longest`: the most positions any live row will hold after this step (its
        length plus the token written now); attention reads that many, bucketed.
        """
        span = bucket_for(self.step_spans, min(longest, self.context))
        return self._step_fn(self.params, state, settings, active, adapter_ids, read_len=span)
