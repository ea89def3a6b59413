"""The generation endpoints: `POST /v1/completions` and `POST /v1/chat/completions`.

Each request leases the live model's current deployment and holds it to its
last byte (see `live_model`). A streamed response frees its slots and lease
however it ends: at its last event, when the client leaves mid-stream, and
also when the client is gone before the stream is first iterated (the
generator's own `finally` never runs then) or the response is never sent.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from llmos_jax.errors import UserError
from llmos_jax.serving.engine import ServingEngine
from llmos_jax.serving.http_guard import request_info
from llmos_jax.serving.live_model import Deployment, Lease, LiveModel
from llmos_jax.serving.metrics import ServingMetrics
from llmos_jax.serving.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    error_body,
    now,
)
from llmos_jax.serving.request_run import RequestRun, Update
from llmos_jax.serving.requests import (
    FinishReason,
    InvalidSetting,
    SamplingSettings,
    TokenEvent,
)
from llmos_jax.serving.served_model import ServedModel

__all__ = ["ApiError", "add_generation_routes", "chat_prompt", "check_model", "check_token_ids"]


class ApiError(Exception):
    """An error answered with its status and OpenAI's error body (see `create_app`)."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.param, self.kind, self.code = status, param, kind, code
        self.headers = headers or {}


def check_model(name: str | None, served: ServedModel) -> str | None:
    """Refuses a request naming a model other than the one served or one of its adapters.

    Returns:
      The LoRA adapter the request names (None: the base model).
    """
    if name is not None and name in served.adapters:
        return name
    if name is not None and name != served.name:
        known = ", ".join(repr(n) for n in (served.name, *served.adapters))
        raise ApiError(400, f"model {name!r} is not served here; this server serves "
                        f"{known} (GET /v1/models)", param="model",
                        code="model_not_found")
    return None


def chat_prompt(body_messages, served: ServedModel) -> str:
    """The chat messages rendered through the served model's template."""
    messages = [{"role": m.role, "content": m.text(),
                 **({"name": m.name} if m.name else {})} for m in body_messages]
    try:
        return served.render_chat(messages)
    except UserError as err:  # no template, or it refused these messages
        raise InvalidSetting("messages", str(err)) from None


def check_token_ids(ids, field: str, engine: ServingEngine) -> None:
    """Refuses token ids outside the vocabulary, naming the field."""
    for t in ids:
        if not 0 <= t < engine.vocab_size:
            raise InvalidSetting(field, f"token id {t} is outside the vocabulary "
                                 f"[0, {engine.vocab_size})")


def add_generation_routes(app: FastAPI, live_model: LiveModel, metrics: ServingMetrics, *,
                          request_timeout: float | None, log_prompts: bool) -> None:
    """Adds the completion and chat endpoints to `app`.

    Args:
      live_model: Whose current deployment answers each request.
      metrics: Where each request's tokens and outcome are counted.
      request_timeout: Seconds from arrival to the last token (None: no limit).
      log_prompts: Put prompt text in the access log.
    """

    def settings_for(body, served: ServedModel, *, max_tokens: int | None,
                     logprobs: int | None) -> list[SamplingSettings]:
        if max_tokens is None:
            max_tokens = served.max_context  # up to the context (finish_reason "length")
        seed = body.seed
        if seed is None and (body.temperature is None or body.temperature > 0):
            seed = secrets.randbits(31)
        adapter = check_model(body.model, served)
        return [body.sampling(max_tokens=max_tokens, logprobs=logprobs, adapter=adapter,
                              seed=None if seed is None else seed + j) for j in range(body.n)]

    async def start_run(request: Request, prompts: list[list[int]],
                        settings: list[SamplingSettings], deployment: Deployment) -> RequestRun:
        arrival = time.monotonic()
        deadline = (arrival + request_timeout if request_timeout else None)
        info = request_info(request.scope)
        run = RequestRun(deployment.engine, metrics, deployment.served.tokenizer,
                         run_id=secrets.token_hex(8),
                         arrival=arrival, deadline=deadline)
        run.submit(prompts, settings)
        info["prompt_tokens"] = run.prompt_tokens
        return run

    async def leased(handler, body, request: Request):
        """Runs a generation handler on the current deployment, held to the response's end."""
        lease = live_model.lease()
        try:
            return await handler(body, request, lease)
        finally:
            if not getattr(request.state, "lease_kept", False):  # A stream releases at its end.
                lease.release()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await leased(completion_response, body, request)

    async def completion_response(body: CompletionRequest, request: Request, lease: Lease):
        deployment = lease.deployment
        served, engine = deployment.served, deployment.engine
        check_model(body.model, served)
        body.check_supported(engine.max_slots)
        prompts, texts = completion_prompts(body.prompt, deployment)
        if log_prompts:
            request_info(request.scope)["prompt"] = texts[0] if len(texts) == 1 else texts
        settings = settings_for(body, served, max_tokens=body.max_tokens,
                                logprobs=body.logprobs)
        run = await start_run(request, prompts, settings, deployment)
        echo = [t if body.echo else "" for t in texts]
        shape = _CompletionShape(run.run_id, settings[0].adapter or served.name, echo,
                                 served.tokenizer, body.logprobs)
        return await respond(request, run, shape, body.stream, body.include_usage, lease)

    def completion_prompts(prompt, deployment: Deployment
                           ) -> tuple[list[list[int]], list[str]]:
        served = deployment.served
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise InvalidSetting("prompt", "the prompt is empty")
        if all(isinstance(p, int) for p in prompt):
            prompt = [prompt]
        ids, texts = [], []
        for item in prompt:
            if isinstance(item, str):
                ids.append(served.encode_prompt(item))
                texts.append(item)
            else:
                check_token_ids(item, "prompt", deployment.engine)
                ids.append(list(item))
                texts.append(served.tokenizer.decode(item))
        return ids, texts

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await leased(chat_response, body, request)

    async def chat_response(body: ChatCompletionRequest, request: Request, lease: Lease):
        deployment = lease.deployment
        served = deployment.served
        check_model(body.model, served)
        body.check_supported(deployment.engine.max_slots)
        text = chat_prompt(body.messages, served)
        if log_prompts:
            request_info(request.scope)["prompt"] = text
        settings = settings_for(body, served,
                                max_tokens=body.max_completion_tokens or body.max_tokens,
                                logprobs=body.logprob_count())
        prompt_ids = served.encode_prompt(text, add_special_tokens=False)  # the template has them
        run = await start_run(request, [prompt_ids], settings, deployment)
        shape = _ChatShape(run.run_id, settings[0].adapter or served.name, served.tokenizer,
                           body.logprobs)
        return await respond(request, run, shape, body.stream, body.include_usage, lease)

    async def respond(request: Request, run: RequestRun, shape, stream: bool,
                      include_usage: bool, lease: Lease):
        info = request_info(request.scope)
        if stream:
            request.state.lease_kept = True  # Released when the stream ends.
            return _ClosingStream(stream_events(run, shape, include_usage, info, lease),
                                  close=lambda: end_stream(run, info, lease),
                                  media_type="text/event-stream",
                                  headers={"Cache-Control": "no-cache"})
        try:
            while not await _wait(run, 0.25):
                if await request.is_disconnected():
                    run.abort_unfinished()
                    await run.finished()
                    break
        finally:
            run.abort_unfinished()
        note_usage(info, run)
        failure = _failure(run)
        if failure is not None:
            raise failure
        return JSONResponse(shape.response(run))

    async def stream_events(run: RequestRun, shape, include_usage: bool,
                            info: dict, lease: Lease) -> AsyncIterator[str]:
        try:
            for chunk in shape.opening(run):
                yield _sse(chunk)
            async for update in run.updates():
                if update.finish is not None and update.finish.reason not in (
                        FinishReason.STOP, FinishReason.LENGTH):
                    continue  # reported once all choices are done
                chunk = shape.chunk(update)
                if chunk is not None:
                    yield _sse(chunk)
            failure = _failure(run)
            if failure is not None:
                yield _sse(error_body(str(failure), kind=failure.kind, code=failure.code))
            elif include_usage:
                yield _sse(shape.usage_chunk(run))
            yield "data: [DONE]\n\n"
        finally:
            end_stream(run, info, lease)

    def end_stream(run: RequestRun, info: dict, lease: Lease) -> None:
        """Frees a stream's slots and lease; idempotent (called however the stream ends)."""
        run.abort_unfinished()  # the client left (or the stream failed): free the slots
        note_usage(info, run)
        lease.release()

    def note_usage(info: dict, run: RequestRun) -> None:
        info["completion_tokens"] = run.completion_tokens
        info["finish_reasons"] = [s.reason.value if s.reason else "running"
                                  for s in run.sequences]


class _ClosingStream(StreamingResponse):
    """A streamed response that runs `close` however it ends (once; `close` is idempotent).

    Starlette never starts the body iterator when the client is gone before
    the first send, so the iterator's `finally` alone would leak the lease;
    the finalizer covers a response that is dropped without being sent.
    """

    def __init__(self, content: AsyncIterator[str], *, close: Callable[[], None], **kwargs):
        super().__init__(content, **kwargs)
        self._close = weakref.finalize(self, close)

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._close()


async def _wait(run: RequestRun, seconds: float) -> bool:
    try:
        await asyncio.wait_for(asyncio.shield(run.finished()), seconds)
        return True
    except asyncio.TimeoutError:
        return False


def _failure(run: RequestRun) -> ApiError | None:
    """The error a finished request reports, if any of its choices failed."""
    reasons = {s.reason for s in run.sequences}
    if FinishReason.TIMEOUT in reasons:
        return ApiError(504, "the request passed its deadline (the server's "
                         "--request-timeout) and was stopped", kind="timeout",
                         code="request_timeout")
    if FinishReason.ERROR in reasons:
        message = next(s.finish.message for s in run.sequences
                       if s.reason == FinishReason.ERROR)
        return ApiError(500, f"the request failed: {message}", kind="server_error",
                         code="engine_error")
    if FinishReason.ABORT in reasons:
        return ApiError(503, "the request was aborted (the server is shutting down or the "
                         "client went away)", kind="service_unavailable", code="aborted")
    return None


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _usage(run: RequestRun) -> dict[str, int]:
    prompt, completion = run.prompt_tokens, run.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


class _CompletionShape:
    """`/v1/completions` bodies and chunks (object `text_completion`)."""

    def __init__(self, run_id: str, model: str, echo: list[str], tokenizer,
                 logprobs: int | None):
        self.id, self.model, self.echo = f"cmpl-{run_id}", model, echo
        self.tokenizer, self.logprobs = tokenizer, logprobs
        self.created = now()
        self._offsets: dict[int, int] = {}

    def _envelope(self, choices: list[dict]) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "choices": choices}

    def _logprobs(self, index: int, tokens: tuple[TokenEvent, ...] | list[TokenEvent]):
        if self.logprobs is None:
            return None
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        offset = self._offsets.get(index, 0)
        for event in tokens:
            text = self.tokenizer.decode([event.token_id])
            out["tokens"].append(text)
            out["token_logprobs"].append(event.logprob)
            out["top_logprobs"].append({self.tokenizer.decode([t]): lp
                                        for t, lp in event.top_logprobs})
            out["text_offset"].append(offset)
            offset += len(text)
        self._offsets[index] = offset
        return out

    def opening(self, run: RequestRun) -> list[dict]:
        echoed = [dict(index=s.index, text=self.echo[s.prompt_index], logprobs=None,
                       finish_reason=None) for s in run.sequences if self.echo[s.prompt_index]]
        return [self._envelope([c]) for c in echoed]

    def chunk(self, update: Update) -> dict | None:
        finish = update.finish.reason.value if update.finish is not None else None
        if not update.text and not finish and self.logprobs is None:
            return None
        return self._envelope([{"index": update.index, "text": update.text,
                                "logprobs": self._logprobs(update.index, update.tokens),
                                "finish_reason": finish}])

    def usage_chunk(self, run: RequestRun) -> dict:
        return {**self._envelope([]), "usage": _usage(run)}

    def response(self, run: RequestRun) -> dict:
        choices = []
        for s in run.sequences:
            choices.append({"index": s.index, "text": self.echo[s.prompt_index] + s.stream.text,
                            "logprobs": self._logprobs(s.index, s.tokens),
                            "finish_reason": s.reason.value})
        return {**self._envelope(choices), "usage": _usage(run)}


class _ChatShape:
    """`/v1/chat/completions` bodies and chunks (`chat.completion[.chunk]`)."""

    def __init__(self, run_id: str, model: str, tokenizer, logprobs: bool):
        self.id, self.model, self.tokenizer, self.logprobs = (
            f"chatcmpl-{run_id}", model, tokenizer, logprobs)
        self.created = now()

    def _envelope(self, choices: list[dict], chunk: bool) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk" if chunk else "chat.completion",
                "created": self.created, "model": self.model, "choices": choices}

    def _entry(self, token_id: int, logprob: float | None) -> dict:
        text = self.tokenizer.decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def _logprobs(self, tokens) -> dict | None:
        if not self.logprobs:
            return None
        return {"content": [{**self._entry(e.token_id, e.logprob),
                             "top_logprobs": [self._entry(t, lp) for t, lp in e.top_logprobs]}
                            for e in tokens]}

    def opening(self, run: RequestRun) -> list[dict]:
        return [self._envelope([{"index": s.index, "delta": {"role": "assistant", "content": ""},
                                 "logprobs": None, "finish_reason": None}], chunk=True)
                for s in run.sequences]

    def chunk(self, update: Update) -> dict | None:
        finish = update.finish.reason.value if update.finish is not None else None
        if not update.text and not finish and not self.logprobs:
            return None
        delta = {"content": update.text} if update.text else {}
        return self._envelope([{"index": update.index, "delta": delta,
                                "logprobs": self._logprobs(update.tokens),
                                "finish_reason": finish}], chunk=True)

    def usage_chunk(self, run: RequestRun) -> dict:
        return {**self._envelope([], chunk=True), "usage": _usage(run)}

    def response(self, run: RequestRun) -> dict:
        choices = [{"index": s.index,
                    "message": {"role": "assistant", "content": s.stream.text},
                    "logprobs": self._logprobs(s.tokens), "finish_reason": s.reason.value}
                   for s in run.sequences]
        return {**self._envelope(choices, chunk=False), "usage": _usage(run)}
