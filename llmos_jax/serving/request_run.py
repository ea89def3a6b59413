"""One HTTP request's sequences in the engine, bridged to the asyncio side.

An OpenAI request becomes `len(prompts) * n` engine requests. Their events
arrive on the engine's thread; `RequestRun` turns each token into final text
there (so a stop string stops the slot before the next step), records the
latency metrics, and hands updates to the request's event loop. The handler
awaits `updates()` (streaming) or `finished()` and calls `abort_unfinished()`
when the client goes away.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Sequence

from llmos_jax.serving.engine import ServingEngine
from llmos_jax.serving.metrics import ServingMetrics
from llmos_jax.serving.requests import (
    Event,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    QueueFull,
    SamplingSettings,
    TokenEvent,
)
from llmos_jax.serving.served_model import TextTokenizer
from llmos_jax.serving.text_stream import TextStream

log = logging.getLogger(__name__)

__all__ = ["ChoiceState", "Update", "RequestRun"]


@dataclasses.dataclass
class ChoiceState:
    """One generated sequence (choice) and what it has produced so far."""

    index: int
    prompt_index: int
    prompt_ids: Sequence[int]
    stream: TextStream
    token_ids: list[int] = dataclasses.field(default_factory=list)
    tokens: list[TokenEvent] = dataclasses.field(default_factory=list)
    finish: FinishEvent | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None

    @property
    def reason(self) -> FinishReason | None:
        if self.finish is None:
            return None
        return self.finish.reason


@dataclasses.dataclass(frozen=True)
class Update:
    """New text (and the tokens behind it) of one sequence; `finish` set on its last."""

    index: int
    text: str
    tokens: tuple[TokenEvent, ...] = ()
    finish: FinishEvent | None = None


class RequestRun:
    """Submits one HTTP request's sequences and collects their events.

    Args:
      engine: The serving engine.
      metrics: Where latencies and token counts are recorded.
      tokenizer: Decodes generated tokens.
      run_id: Unique prefix of the engine request ids.
      arrival: `time.monotonic()` when the HTTP request arrived.
      deadline: When the engine must end the sequences (None: never).
    """

    def __init__(self, engine: ServingEngine, metrics: ServingMetrics,
                 tokenizer: TextTokenizer, run_id: str, arrival: float,
                 deadline: float | None):
        self._engine, self._metrics, self._tokenizer = engine, metrics, tokenizer
        self.run_id, self.arrival, self.deadline = run_id, arrival, deadline
        self.sequences: list[ChoiceState] = []
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Update] = asyncio.Queue()
        self._done = asyncio.Event()
        self._open = 0

    # -- submitting (event loop thread) -------------------------------------------------

    def submit(self, prompts: Sequence[Sequence[int]], settings: Sequence[SamplingSettings]
               ) -> None:
        """Submits every (prompt, settings) pair; all or none.

        `settings[j]` is used for choice j of every prompt (choices numbered
        prompt by prompt, as OpenAI numbers them).

        Raises:
          InvalidSetting, QueueFull, EngineNotReady: from the engine; sequences
            already submitted are aborted first.
        """
        index = 0
        try:
            for prompt_index, prompt in enumerate(prompts):
                for choice in settings:
                    sequence = ChoiceState(index, prompt_index, prompt,
                                         TextStream(self._tokenizer, choice.stop))
                    request = GenerationRequest(f"{self.run_id}-{index}", list(prompt), choice,
                                                deadline=self.deadline,
                                                arrival_time=self.arrival)
                    self._engine.submit(request, self._sink(sequence))
                    self.sequences.append(sequence)
                    self._open += 1
                    index += 1
        except QueueFull:
            self._metrics.rejected("queue_full")
            self.abort_unfinished()
            raise
        except Exception:
            self.abort_unfinished()
            raise

    def abort_unfinished(self, reason: FinishReason = FinishReason.ABORT) -> None:
        """Ends every sequence still running (the client left); their slots free at once."""
        for sequence in self.sequences:
            if sequence.finish is None:
                self._engine.abort(f"{self.run_id}-{sequence.index}", reason)

    # -- consuming (event loop thread) ----------------------------------------------------

    async def updates(self) -> AsyncIterator[Update]:
        """Every update until all sequences finished."""
        remaining = len(self.sequences)
        while remaining:
            update = await self._queue.get()
            if update.finish is not None:
                remaining -= 1
            yield update

    async def finished(self) -> None:
        await self._done.wait()

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens of the distinct prompts (counted once whatever `n` is)."""
        seen: dict[int, int] = {}
        for sequence in self.sequences:
            seen[sequence.prompt_index] = len(sequence.prompt_ids)
        return sum(seen.values())

    @property
    def completion_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.sequences)

    # -- the engine's side (engine thread) ------------------------------------------------

    def _sink(self, sequence: ChoiceState):
        metrics = self._metrics

        def on_event(event: Event) -> bool:
            now = time.monotonic()
            if isinstance(event, TokenEvent):
                if sequence.first_token_at is None:
                    sequence.first_token_at = now
                    metrics.time_to_first_token.observe(now - self.arrival)
                else:
                    metrics.inter_token_latency.observe(now - sequence.last_token_at)
                sequence.last_token_at = now
                metrics.generation_tokens.inc()
                sequence.token_ids.append(event.token_id)
                sequence.tokens.append(event)
                text = sequence.stream.add(event.token_id)
                self._post(Update(sequence.index, text, (event,)))
                return sequence.stream.stopped
            sequence.finish = event
            tail = ""
            if event.reason in (FinishReason.STOP, FinishReason.LENGTH):
                tail = sequence.stream.finish()
            metrics.e2e_request_latency.observe(now - self.arrival)
            if event.queue_seconds is not None:
                metrics.request_queue_time.observe(event.queue_seconds)
            metrics.prompt_tokens.inc(event.prompt_tokens)
            metrics.request_finished(event.reason.value)
            self._post(Update(sequence.index, tail, (), event))
            return False

        return on_event

    def _post(self, update: Update) -> None:
        def put():
            self._queue.put_nowait(update)
            if update.finish is not None:
                self._open -= 1
                if self._open == 0:
                    self._done.set()

        try:
            self._loop.call_soon_threadsafe(put)
        except RuntimeError:  # the event loop is gone (server stopped)
            pass
