"""What a client asks the serving engine for, and what the engine sends back.

These are the contract between the HTTP layer (`llmos_jax.serving.api`), which
turns OpenAI-shaped JSON into `GenerationRequest`s, and the engine
(`llmos_jax.serving.engine`), which runs them in a continuous batch. Every
request carries its own `SamplingSettings`; the engine applies them per slot,
never one request's settings to another.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence

__all__ = [
    "FinishReason", "SamplingSettings", "GenerationRequest", "TokenEvent", "FinishEvent",
    "Event", "EventSink", "QueueFull", "EngineNotReady",
]

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat `top_logprobs`


class FinishReason(str, enum.Enum):
    """Why a request ended (the OpenAI `finish_reason`, plus our operational ones)."""

    STOP = "stop"        # EOS, a stop token id, or a stop string
    LENGTH = "length"    # max_tokens, or the context is full
    ABORT = "abort"      # the client went away or the server is shutting down
    TIMEOUT = "timeout"  # the per-request deadline passed
    ERROR = "error"      # the engine failed on this request


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """One request's decoding settings, applied to its slot alone.

    Attributes:
      max_tokens: New tokens at most (>= 1).
      min_tokens: EOS and `stop_token_ids` are masked until this many were generated.
      temperature: 0 means greedy (argmax).
      top_k: Keep the k most likely tokens; 0 keeps all.
      top_p: Nucleus mass in (0, 1].
      seed: Makes sampling reproducible for this request whatever shares the batch;
        None draws a seed.
      stop: Stop strings (matched by the text layer, which asks the engine to stop).
      stop_token_ids: Token ids that end the request (in addition to EOS).
      ignore_eos: Keep going past EOS.
      repetition_penalty: CTRL/Hugging Face penalty over prompt and generated tokens (1 = off).
      presence_penalty, frequency_penalty: OpenAI's penalties over generated tokens (0 = off).
      logprobs: How many top log-probabilities to return per token (None: none, 0: only
        the chosen token's).
      adapter: The LoRA adapter the slot decodes with, by its `llmos serve --lora` name
        (None: the base model); rows with different adapters share one batch.
    """

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    adapter: str | None = None

    def __post_init__(self):
        checks = [
            (self.max_tokens >= 1, "max_tokens", f"must be >= 1, got {self.max_tokens}"),
            (self.min_tokens >= 0, "min_tokens", f"must be >= 0, got {self.min_tokens}"),
            (self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}"),
            (self.top_k >= 0, "top_k", f"must be >= 0 (0 = off), got {self.top_k}"),
            (0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}"),
            (self.repetition_penalty > 0, "repetition_penalty",
             f"must be > 0 (1 = off), got {self.repetition_penalty}"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty",
             f"must be in [-2, 2], got {self.presence_penalty}"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty",
             f"must be in [-2, 2], got {self.frequency_penalty}"),
            (self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS, "logprobs",
             f"must be between 0 and {MAX_TOP_LOGPROBS}, got {self.logprobs}"),
        ]
        for ok, field, message in checks:
            if not ok:
                raise InvalidSetting(field, f"{field} {message}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class InvalidSetting(ValueError):
    """A request field is out of range; `field` names it (the API answers 400 with it)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclasses.dataclass
class GenerationRequest:
    """One sequence to generate (an OpenAI request with `n` > 1 becomes n of these).

    Attributes:
      request_id: Unique while the request lives (used to abort it).
      prompt_ids: The prompt's token ids (the encoder input for encoder-decoders).
      settings: Its sampling settings.
      deadline: `time.monotonic()` after which the engine ends it with TIMEOUT; None: none.
      arrival_time: `time.monotonic()` when the server received it (queue-time metric).
    """

    request_id: str
    prompt_ids: Sequence[int]
    settings: SamplingSettings
    deadline: float | None = None
    arrival_time: float | None = None


@dataclasses.dataclass(frozen=True)
class TokenEvent:
    """A new token of one request.

    Attributes:
      token_id: The token.
      logprob: Its log-probability under the model's (unprocessed) distribution, when
        the request asked for logprobs; else None.
      top_logprobs: The `settings.logprobs` most likely (token id, logprob) pairs.
      index: 0 for the first generated token, 1 for the next, ...
    """

    request_id: str
    token_id: int
    index: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class FinishEvent:
    """The last event of a request: why it ended, and its token counts."""

    request_id: str
    reason: FinishReason
    prompt_tokens: int
    generated_tokens: int
    message: str = ""  # for ERROR
    queue_seconds: float | None = None  # arrival until the engine started its prefill


Event = TokenEvent | FinishEvent

# Called on the engine's thread for every event of a request. Returning True from a
# TokenEvent ends the request with STOP at once (the text layer matched a stop string);
# the slot is freed before the next decode step. Must not block.
EventSink = Callable[[Event], "bool | None"]


class QueueFull(RuntimeError):
    """The waiting queue is at its bound (the API answers 429 with Retry-After)."""

    def __init__(self, waiting: int, retry_after_seconds: float):
        super().__init__(f"{waiting} requests are already waiting; retry later")
        self.waiting = waiting
        self.retry_after_seconds = retry_after_seconds


class EngineNotReady(RuntimeError):
    """The engine is warming up or draining and admits no requests (the API answers 503)."""
