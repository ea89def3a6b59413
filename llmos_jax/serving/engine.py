"""The continuous-batching serving engine (interface first; being implemented).

One background thread runs a loop over a fixed number of decode slots that
share one preallocated KV cache: it admits waiting requests into free slots
(prefilling them in bounded chunks, interleaved with decode steps so a long
prompt does not stall running streams), runs one jitted decode step for all
slots, and sends each request's token to its `EventSink`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EngineStats:
    """A snapshot for /metrics and /health (read from any thread)."""

    running: int            # requests holding a slot (prefilling or decoding)
    waiting: int            # requests queued for a slot
    kv_cache_usage: float   # occupied cache positions / all positions, in [0, 1]
    compilations: int       # programs compiled since the engine was made
    max_slots: int
    max_queue: int
    ready: bool             # warmed up and admitting
    draining: bool


class ServingEngine:
    """Serves `GenerationRequest`s from many threads over one model, in one running batch.

    Args:
      model: A decoder or encoder-decoder model (NNX module with its weights).
      max_slots: Decode slots (rows of the running batch).
      max_queue: Requests allowed to wait for a slot; past it `submit` raises `QueueFull`.
      max_context: Positions per slot (prompt + generated); default the model's max_len.
      prefill_chunk: Prompt tokens prefilled per loop iteration (bounds how long a
        long prompt stalls the decode steps of running slots).
      eos_id: End-of-sequence id (None: no EOS).
      decoder_start_id: Encoder-decoders' decoder start token.

    Methods (all thread-safe):
      start(): compiles every program shape (warm-up), then starts the loop; `ready` after.
      submit(request, sink): queues a request; raises `QueueFull`, `EngineNotReady`, or
        `InvalidSetting` (prompt too long for `max_context`, token id outside the
        vocabulary, ...) before anything is queued.
      abort(request_id, reason=FinishReason.ABORT): ends a request; its slot is free
        before the next decode step. Unknown ids are ignored.
      drain(timeout): stops admitting (`ready` False), waits for running and waiting
        requests to finish; True if all did within `timeout` seconds.
      shutdown(): aborts what is left and stops the thread.
      stats() -> EngineStats.

    Attributes:
      max_context, vocab_size, eos_id, is_encoder_decoder, max_slots, max_queue.
    """
