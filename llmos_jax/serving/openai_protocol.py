"""The OpenAI request bodies we accept, and the response and chunk shapes we send.

Field names, defaults and shapes are OpenAI's (`max_tokens` defaults to 16 for
completions, `logprobs` is an int for completions and a bool plus
`top_logprobs` for chat), so the official `openai` client works unchanged. Our
extras (`top_k`, `min_tokens`, `ignore_eos`, `stop_token_ids`,
`repetition_penalty`) arrive through the client's `extra_body`, as vLLM's do.
Unknown fields are ignored, as OpenAI ignores them; fields we cannot honour
(`logit_bias`, `suffix`, `best_of`, tools) are refused with a 400 naming them.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmos_jax.serving.requests import FinishReason, InvalidSetting, SamplingSettings

__all__ = [
    "StreamOptions", "CompletionRequest", "ChatMessage", "ChatCompletionRequest",
    "TokenizeRequest", "DetokenizeRequest", "error_body", "finish_reason_field",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _SamplingFields(_Body):
    """Settings shared by completions and chat (OpenAI's, then our extras)."""

    model: str
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None
    logit_bias: dict[str, float] | None = None
    # extras, through extra_body
    top_k: int = 0
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] = Field(default_factory=list)
    repetition_penalty: float = 1.0

    def check_supported(self, max_n: int) -> None:
        """Refuses what we cannot honour, naming the field."""
        if self.logit_bias:
            raise InvalidSetting("logit_bias", "logit_bias is not supported by this server; "
                                 "remove it (stop_token_ids and top_k are)")
        if not 1 <= self.n <= max_n:
            raise InvalidSetting("n", f"n must be between 1 and {max_n} (the server's decode "
                                 f"slots), got {self.n}")
        if self.stream_options is not None and not self.stream:
            raise InvalidSetting("stream_options", "stream_options needs stream: true")

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if len(stops) > 16:
            raise InvalidSetting("stop", f"at most 16 stop strings, got {len(stops)}")
        return tuple(s for s in stops if s)

    def sampling(self, *, max_tokens: int, logprobs: int | None, seed: int | None,
                 adapter: str | None = None) -> SamplingSettings:
        """This request's `SamplingSettings` (range errors name the field)."""
        return SamplingSettings(
            max_tokens=max_tokens, min_tokens=self.min_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_k=self.top_k, top_p=1.0 if self.top_p is None else self.top_p, seed=seed,
            stop=self.stop_strings(), stop_token_ids=tuple(self.stop_token_ids),
            ignore_eos=self.ignore_eos, repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            logprobs=logprobs, adapter=adapter)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingFields):
    """`POST /v1/completions`: one prompt or several, as text or token ids."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def check_supported(self, max_n: int) -> None:
        super().check_supported(max_n)
        if self.suffix:
            raise InvalidSetting("suffix", "suffix (insertion) is not supported; remove it")
        if self.best_of not in (None, 1, self.n):
            raise InvalidSetting("best_of", "best_of is not supported; use n")


class ChatMessage(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        """The content as text (text parts of a multi-part content joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise InvalidSetting("messages", f"message content of type "
                                     f"{part.get('type')!r} is not supported; send text")
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class ChatCompletionRequest(_SamplingFields):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[Any] | None = None

    def check_supported(self, max_n: int) -> None:
        super().check_supported(max_n)
        if not self.messages:
            raise InvalidSetting("messages", "messages is empty; send at least one message")
        if self.tools:
            raise InvalidSetting("tools", "tool calling is not supported; remove tools")
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidSetting("top_logprobs", "top_logprobs needs logprobs: true")

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class TokenizeRequest(_Body):
    """`POST /tokenize`: a text prompt, or chat messages through the template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int]


def error_body(message: str, *, kind: str = "invalid_request_error", param: str | None = None,
               code: str | int | None = None) -> dict[str, Any]:
    """OpenAI's error shape, which the `openai` client turns into its exceptions."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def finish_reason_field(reason: FinishReason) -> Literal["stop", "length", "abort"] | str:
    """The `finish_reason` a client sees (timeouts and errors never get here: they are errors)."""
    return reason.value


def now() -> int:
    return int(time.time())
