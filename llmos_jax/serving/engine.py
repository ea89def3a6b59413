"""The continuous-batching serving engine: many requests, one running batch of slots.

One background thread runs the loop. Each iteration it
1. applies aborts and deadlines (a freed slot is free before the next step),
2. admits the oldest waiting requests into free slots, as one prefill group of up
   to `prefill_batch` prompts (1, 2, 4, ...: as many as wait and fit), and
   prefills at most one chunk of each (`prefill_chunk` tokens; encoder-decoders
   encode one whole prompt at once), so a long prompt delays the running streams
   by one chunk per iteration, never by the whole prompt, and a burst of
   arrivals is prefilled in a few large matmuls instead of one prompt per step,
3. when the group's prompts are done, copies each into its slot and sends its
   first token,
4. runs one decode step for every slot and sends each running request its token.
Requests are validated in `submit` (on the caller's thread), the waiting queue is
bounded (`QueueFull` past it), and every request's settings stay its own
(`slot_sampling`). The device programs are in `slot_programs`; this module is the
host-side bookkeeping only.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import secrets
import threading
import time

import jax
import numpy as np
from flax import nnx

from llmos_jax.compression.multi_lora import adapter_names
from llmos_jax.serving.requests import (
    EngineNotReady,
    EventSink,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    InvalidSetting,
    QueueFull,
    SamplingSettings,
    TokenEvent,
)
from llmos_jax.serving.slot_programs import SlotPrograms
from llmos_jax.serving.slot_sampling import Choice, settings_rows, slot_key

log = logging.getLogger(__name__)

__all__ = ["EngineStats", "ServingEngine"]


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


@dataclasses.dataclass(eq=False)  # members are found by identity
class _Live:
    """A request that holds a slot: prefilling (in a `_PrefillGroup`) or decoding."""

    request: GenerationRequest
    sink: EventSink
    slot: int
    stop_ids: frozenset[int]
    queue_seconds: float
    row: int = 0           # its row of the prefill group's buffer
    prefilled: int = 0     # prompt tokens prefilled so far
    generated: int = 0

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def effective_settings(self) -> SamplingSettings:
        """The settings the device applies: `min_tokens` bans nothing without stop ids
        (e.g. `ignore_eos`), so it is dropped and the step skips the masking."""
        settings = self.request.settings
        if settings.min_tokens and not self.stop_ids:
            return dataclasses.replace(settings, min_tokens=0)
        return settings


@dataclasses.dataclass
class _PrefillGroup:
    """Requests prefilled together, one chunk of each per iteration, in one buffer."""

    members: list[_Live]
    buffer: object  # the [rows, ...] prefill cache
    logits: object  # [rows, vocab]: each prompt's last logits, once its prompt ended
    start: int = 0  # prompt position of the next chunk (the same for every row)

    @property
    def longest(self) -> int:
        return max(member.prompt_len for member in self.members)


class ServingEngine:
    """Serves `GenerationRequest`s from many threads over one model, in one running batch.

    Args:
      model: A decoder or encoder-decoder model (NNX module with its weights, laid
        out on its mesh if sharded).
      max_slots: Decode slots (rows of the running batch).
      max_queue: Requests allowed to wait for a busy slot; past it `submit` raises
        `QueueFull` (0: only as many requests as there are free slots).
      max_context: Positions per slot (prompt + generated; decoder positions for
        encoder-decoders); default the model's `max_len`.
      prefill_chunk: Prompt tokens of each prefilling request per loop iteration.
      prefill_batch: Most requests prefilled together (a burst of arrivals waits
        for fewer steps); the running streams wait for up to
        `prefill_batch * prefill_chunk` prompt tokens per iteration.
      eos_id: End-of-sequence id (None: none).
      decoder_start_id: Encoder-decoders' decoder start token.

    All public methods are thread-safe. Sinks are called on the engine's thread.
    """

    def __init__(self, model: nnx.Module, *, max_slots: int = 8, max_queue: int = 64,
                 max_context: int | None = None, prefill_chunk: int = 64,
                 prefill_batch: int = 4, eos_id: int | None = None,
                 decoder_start_id: int = 0):
        if max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {max_slots}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        config = model.config
        context = max_context or config.max_len
        if not 2 <= context <= config.max_len:
            raise ValueError(f"max_context must be in [2, {config.max_len}] (the model's max_len), "
                             f"got {context}")
        if prefill_batch < 1:
            raise ValueError(f"prefill_batch must be >= 1, got {prefill_batch}")
        self.programs = SlotPrograms(model, slots=max_slots, context=context,
                                     prefill_chunk=prefill_chunk, prefill_rows=prefill_batch,
                                     decoder_start_id=decoder_start_id)
        self.max_slots, self.max_queue, self.max_context = max_slots, max_queue, context
        self.vocab_size = config.vocab_size
        self.eos_id = eos_id
        self.is_encoder_decoder = self.programs.encoder_decoder
        # LoRA adapters served over the base (`compression.multi_lora`): name -> row id, 0 = base.
        self.adapter_ids = {name: i for i, name in enumerate(adapter_names(model), start=1)}
        self._cond = threading.Condition()
        self._waiting: collections.deque[tuple[GenerationRequest, EventSink]] = (
            collections.deque())
        self._aborts: dict[str, FinishReason] = {}
        self._slots: list[_Live | None] = [None] * max_slots
        self._prefilling: _PrefillGroup | None = None
        self._known: set[str] = set()
        self._ready = self._draining = self._stopping = False
        self._thread: threading.Thread | None = None
        self._state = None
        self._settings = None  # per-slot SlotSettings, rebuilt when slots change
        self._mean_seconds = 1.0  # running mean request duration (for Retry-After)

    # -- public API ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready and not self._draining

    def start(self) -> None:
        """Compiles and runs every program once (warm-up), then starts the loop."""
        if self._thread is not None:
            return
        self._state = self.programs.warm_up()
        self._thread = threading.Thread(target=self._run, name="llmos-serving-engine",
                                        daemon=True)
        self._thread.start()
        with self._cond:
            self._ready = True

    def submit(self, request: GenerationRequest, sink: EventSink) -> None:
        """Queues `request`; its events go to `sink`.

        Raises:
          InvalidSetting: the prompt is empty, too long, or has ids outside the vocabulary.
          EngineNotReady: warming up, draining or stopped.
          QueueFull: `max_queue` requests already wait.
        """
        self._validate(request)
        if request.arrival_time is None:
            request.arrival_time = time.monotonic()
        with self._cond:
            if not self._ready or self._draining or self._stopping:
                raise EngineNotReady("the model is warming up or the server is shutting down")
            # Requests that free slots will take at once do not count as waiting.
            free = sum(s is None for s in self._slots) - len(self._prefill_members())
            if len(self._waiting) >= self.max_queue + max(0, free):
                busy = len(self._waiting) / self.max_slots + 1
                raise QueueFull(len(self._waiting), max(1.0, busy * self._mean_seconds))
            if request.request_id in self._known:
                raise InvalidSetting("request_id", f"request id {request.request_id!r} is "
                                     "already in use")
            self._known.add(request.request_id)
            self._waiting.append((request, sink))
            self._cond.notify()

    def abort(self, request_id: str, reason: FinishReason = FinishReason.ABORT) -> None:
        """Ends a request (queued or running); its slot is free before the next step."""
        with self._cond:
            if request_id in self._known:
                self._aborts[request_id] = reason
                self._cond.notify()

    def drain(self, timeout: float) -> bool:
        """Stops admitting and waits for every admitted request; True if all finished."""
        with self._cond:
            self._draining = True
            self._cond.notify()
            return self._cond.wait_for(lambda: not self._known, timeout)

    def shutdown(self) -> None:
        """Aborts whatever is left and stops the loop."""
        with self._cond:
            self._draining = True
            for request_id in self._known:
                self._aborts.setdefault(request_id, FinishReason.ABORT)
            self._cond.notify()
        if self._thread is not None:
            with self._cond:
                self._cond.wait_for(lambda: not self._known, 30)
                self._stopping = True
                self._cond.notify()
            self._thread.join(timeout=30)
        if self._thread is None or not self._thread.is_alive():
            self._state = None  # The KV cache: freed now, not when the engine is dropped.

    def stats(self) -> EngineStats:
        with self._cond:
            live = [s for s in self._slots if s is not None]
            prefilling = self._prefill_members()
            running = len(live) + len(prefilling)
            used = sum(s.prompt_len + s.generated for s in live)
            used += sum(s.prefilled for s in prefilling)
            return EngineStats(running=running, waiting=len(self._waiting),
                               kv_cache_usage=min(1.0, used / (self.max_slots * self.max_context)),
                               compilations=self.programs.compilations,
                               max_slots=self.max_slots, max_queue=self.max_queue,
                               ready=self.ready, draining=self._draining)

    # -- validation ----------------------------------------------------------------------

    def _validate(self, request: GenerationRequest) -> None:
        ids = request.prompt_ids
        if len(ids) == 0:
            raise InvalidSetting("prompt", "the prompt is empty; send at least one token")
        capacity = self.programs.prompt_capacity
        if len(ids) > capacity:
            what = "encoder input" if self.is_encoder_decoder else "context"
            raise InvalidSetting("prompt", f"the prompt has {len(ids)} tokens but the model's "
                                 f"{what} holds {capacity}; shorten the prompt")
        bad = [t for t in ids if not 0 <= int(t) < self.vocab_size]
        if bad:
            raise InvalidSetting("prompt", f"token id {bad[0]} is outside the vocabulary "
                                 f"[0, {self.vocab_size})")
        adapter = request.settings.adapter
        if adapter is not None and adapter not in self.adapter_ids:
            raise InvalidSetting("model", f"no adapter named {adapter!r} is served here; "
                                 f"served adapters: {sorted(self.adapter_ids)}")
        for t in request.settings.stop_token_ids:
            if not 0 <= t < self.vocab_size:
                raise InvalidSetting("stop_token_ids", f"stop_token_ids: token id {t} is "
                                     f"outside the vocabulary [0, {self.vocab_size})")

    # -- the loop (engine thread only below) ------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(self._has_work, timeout=0.05)
                if self._stopping:
                    return
                aborts, self._aborts = self._aborts, {}
            try:
                self._iterate(aborts)
            except Exception as err:  # a bug or a device failure: fail the live requests, keep serving
                log.exception("serving engine step failed")
                self._fail_all(f"engine error: {err}")
                self._state = self.programs.initial_state()  # the old one may have been donated

    def _has_work(self) -> bool:
        return bool(self._stopping or self._aborts or self._waiting or self._prefilling
                    or any(s is not None for s in self._slots))

    def _iterate(self, aborts: dict[str, FinishReason]) -> None:
        now = time.monotonic()
        self._apply_aborts(aborts, now)
        if self._prefilling is None:
            self._admit(now)
        if self._prefilling is not None:
            self._prefill_step()
        if any(s is not None for s in self._slots):
            self._decode_step()

    def _apply_aborts(self, aborts: dict[str, FinishReason], now: float) -> None:
        with self._cond:
            for request, sink in list(self._waiting):
                rid = request.request_id
                if rid in aborts or (request.deadline is not None and now > request.deadline):
                    self._waiting.remove((request, sink))
                    reason = aborts.get(rid, FinishReason.TIMEOUT)
                    self._finish_unadmitted(request, sink, reason)
        for live in [*self._prefill_members(), *self._slots]:
            if live is None:
                continue
            rid = live.request.request_id
            if rid in aborts:
                self._finish(live, aborts[rid])
            elif live.request.deadline is not None and now > live.request.deadline:
                self._finish(live, FinishReason.TIMEOUT)

    def _prefill_members(self) -> list[_Live]:
        return [] if self._prefilling is None else list(self._prefilling.members)

    def _admit(self, now: float) -> None:
        """Starts a prefill group: as many waiting requests as fit a free slot each."""
        programs = self.programs
        with self._cond:
            free = [i for i, s in enumerate(self._slots) if s is None]
            count = min(len(free), len(self._waiting))
            if count == 0:
                return
            rows = max(g for g in programs.group_sizes if g <= count)
            taken = [self._waiting.popleft() for _ in range(rows)]
        members = []
        for row, ((request, sink), slot) in enumerate(zip(taken, free)):
            stop_ids = set(request.settings.stop_token_ids)
            if self.eos_id is not None and not request.settings.ignore_eos:
                stop_ids.add(self.eos_id)
            members.append(_Live(request=request, sink=sink, slot=slot, row=row,
                                 stop_ids=frozenset(stop_ids),
                                 queue_seconds=now - (request.arrival_time or now)))
        buffer = None if self.is_encoder_decoder else programs.empty_buffer(rows)
        self._prefilling = _PrefillGroup(members=members, buffer=buffer,
                                         logits=programs.no_logits(rows))

    def _prefill_step(self) -> None:
        group, programs = self._prefilling, self.programs
        if self.is_encoder_decoder:  # one request per group, encoded at once
            live = group.members[0]
            group.buffer, group.logits = programs.prefill_encoder(
                list(live.request.prompt_ids), self._adapter_id(live))
            live.prefilled = group.start = live.prompt_len
        else:
            chunk, start = programs.chunk_len, group.start
            rows = len(group.logits)
            tokens = np.zeros((rows, chunk), np.int32)
            last = np.zeros((rows,), np.int32)
            ends = np.zeros((rows,), bool)
            adapters = np.zeros((rows,), np.int32)
            for live in group.members:
                adapters[live.row] = self._adapter_id(live)
                piece = live.request.prompt_ids[start:start + chunk]
                if len(piece):
                    tokens[live.row, :len(piece)] = piece
                    last[live.row] = len(piece) - 1
                    ends[live.row] = start + chunk >= live.prompt_len
                live.prefilled = min(live.prompt_len, start + chunk)
            group.buffer, group.logits = programs.prefill_chunk(
                group.buffer, group.logits, tokens, start, last, ends, adapters)
            group.start = start + chunk
        if group.start >= group.longest:
            for live in list(group.members):
                self._insert(group, live)
            self._prefilling = None

    def _insert(self, group: _PrefillGroup, live: _Live) -> None:
        settings = live.request.settings
        ban = np.zeros((self.vocab_size,), bool)
        ban[list(live.stop_ids)] = True
        seed = settings.seed if settings.seed is not None else secrets.randbits(32)
        length = 1 if self.is_encoder_decoder else live.prompt_len
        self._state, choice = self.programs.insert(
            self._state, group.buffer, group.logits, live.row, live.slot, length,
            list(live.request.prompt_ids), ban, slot_key(seed),
            settings_rows([live.effective_settings]))
        with self._cond:
            group.members.remove(live)
            self._slots[live.slot] = live
            self._settings = None
        self._deliver(live, jax.device_get(choice), 0)

    def _decode_step(self) -> None:
        if self._settings is None:
            self._settings = settings_rows([None if s is None else s.effective_settings
                                            for s in self._slots])
        active = np.array([s is not None for s in self._slots])
        adapters = np.array([0 if s is None else self._adapter_id(s) for s in self._slots],
                            np.int32)
        # After this step a row holds its prompt, its generated tokens fed back so far, and
        # (encoder-decoders) the start token: at most prompt + generated positions.
        longest = max(s.generated + (1 if self.is_encoder_decoder else s.prompt_len)
                      for s in self._slots if s is not None)
        self._state, choice = self.programs.decode_step(self._state, self._settings, active,
                                                        adapters, longest)
        choice = jax.device_get(choice)
        for row, live in enumerate(list(self._slots)):
            if live is not None:
                self._deliver(live, choice, row)

    def _adapter_id(self, live: _Live) -> int:
        """The row id of `live`'s LoRA adapter (0: the base model)."""
        adapter = live.request.settings.adapter
        return 0 if adapter is None else self.adapter_ids[adapter]

    def _deliver(self, live: _Live, choice: Choice, row: int) -> None:
        """Sends `live` its token from row `row` of `choice` and ends it when due."""
        token = int(choice.tokens[row])
        settings = live.request.settings
        if token in live.stop_ids:
            self._finish(live, FinishReason.STOP)
            return
        top = ()
        if settings.logprobs:
            top = tuple((int(i), float(v)) for i, v in zip(
                choice.top_ids[row][:settings.logprobs], choice.top_logprobs[row]))
        event = TokenEvent(request_id=live.request.request_id, token_id=token,
                           index=live.generated,
                           logprob=None if settings.logprobs is None else float(
                               choice.logprobs[row]),
                           top_logprobs=top)
        live.generated += 1
        try:
            stop_now = live.sink(event)
        except Exception:
            log.exception("event sink of request %s failed", live.request.request_id)
            self._finish(live, FinishReason.ERROR, "the request's event sink failed")
            return
        # Prompt and generated tokens together fit the context (encoder-decoders: the
        # decoder start token and the generated ones), as `generate` counts them.
        length = live.generated + (1 if self.is_encoder_decoder else live.prompt_len)
        if stop_now:
            self._finish(live, FinishReason.STOP)
        elif live.generated >= settings.max_tokens or length >= self.max_context:
            self._finish(live, FinishReason.LENGTH)

    def _finish(self, live: _Live, reason: FinishReason, message: str = "") -> None:
        with self._cond:
            group = self._prefilling
            if group is not None and live in group.members:
                group.members.remove(live)
                if not group.members:
                    self._prefilling = None
            elif self._slots[live.slot] is live:
                self._slots[live.slot] = None
                self._settings = None
            else:
                return  # already finished
        request = live.request
        if request.arrival_time is not None:
            seconds = time.monotonic() - request.arrival_time
            self._mean_seconds = 0.9 * self._mean_seconds + 0.1 * seconds
        self._send_finish(live.sink, FinishEvent(
            request_id=request.request_id, reason=reason, prompt_tokens=live.prompt_len,
            generated_tokens=live.generated, message=message, queue_seconds=live.queue_seconds))

    def _finish_unadmitted(self, request: GenerationRequest, sink: EventSink,
                           reason: FinishReason) -> None:
        self._send_finish(sink, FinishEvent(request_id=request.request_id, reason=reason,
                                            prompt_tokens=len(request.prompt_ids),
                                            generated_tokens=0))

    def _send_finish(self, sink: EventSink, event: FinishEvent) -> None:
        try:
            sink(event)
        except Exception:
            log.exception("event sink of request %s failed", event.request_id)
        with self._cond:
            self._known.discard(event.request_id)
            self._cond.notify_all()

    def _fail_all(self, message: str) -> None:
        for live in [*self._prefill_members(), *self._slots]:
            if live is not None:
                self._finish(live, FinishReason.ERROR, message)

