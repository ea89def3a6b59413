"""The OpenAI-compatible HTTP API over a `ServingEngine` (FastAPI).

Routes: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models`,
`POST /tokenize`, `POST /detokenize`, `GET /health/live`, `GET /health/ready`,
`GET /metrics`, `GET /version` and the playground page at `GET /`.

Status codes a client can act on: 400 with OpenAI's error body naming the
field (`param`) for bad input; 401 without a valid key; 413 for a body over the
limit; 429 with `Retry-After` when the waiting queue is full; 503 while warming
up or draining; 504 when a request passes its deadline (streams get an error
chunk instead, since their 200 has gone out). A request that ends in error
never disturbs the others in the batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.resources
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmos_jax.errors import UserError
from llmos_jax.serving.engine import ServingEngine
from llmos_jax.serving.http_guard import HttpGuard, request_info
from llmos_jax.serving.live_model import Deployment, Lease, LiveModel
from llmos_jax.serving.metrics import ServingMetrics
from llmos_jax.serving.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    error_body,
    now,
)
from llmos_jax.serving.request_run import RequestRun, Update
from llmos_jax.serving.requests import (
    EngineNotReady,
    FinishReason,
    InvalidSetting,
    QueueFull,
    SamplingSettings,
    TokenEvent,
)
from llmos_jax.serving.served_model import ServedModel

log = logging.getLogger(__name__)

__all__ = ["ApiOptions", "create_app"]

SERVER_VERSION = "llmos-serve 1"


@dataclasses.dataclass(frozen=True)
class ApiOptions:
    """HTTP-level settings of `llmos serve`.

    Attributes:
      api_keys: Bearer keys accepted on the model endpoints (empty: open).
      request_timeout: Seconds a request may take from arrival to its last token
        (None: no limit). Overdue requests end and free their slot.
      max_body_bytes: Request bodies above this get 413.
      cors_origins: Origins allowed by CORS (empty: CORS off).
      log_prompts: Put prompt text in the access log (off: counts only).
    """

    api_keys: tuple[str, ...] = ()
    request_timeout: float | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    cors_origins: tuple[str, ...] = ()
    log_prompts: bool = False

    def __post_init__(self):
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0, got {self.request_timeout}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")


class _ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.param, self.kind, self.code = status, param, kind, code
        self.headers = headers or {}


def _error_response(status: int, message: str, *, param: str | None = None,
                    kind: str = "invalid_request_error", code: str | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind=kind, param=param, code=code), status_code=status,
                        headers=headers)


def _validation_error(err: RequestValidationError) -> JSONResponse:
    first = err.errors()[0] if err.errors() else {}
    if first.get("type") == "json_invalid":
        return _error_response(400, f"the request body is not valid JSON: {first.get('msg')}",
                               code="invalid_json")
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    field = loc[0] if loc else None
    where = ".".join(loc) or "the request body"
    return _error_response(400, f"{where}: {first.get('msg', 'invalid value')}", param=field)


def create_app(engine: ServingEngine, served: ServedModel,
               options: ApiOptions = ApiOptions(), live: LiveModel | None = None) -> FastAPI:
    """The FastAPI app serving `served` through `engine` (which the caller starts).

    With `live`, requests go to its current deployment (which a `ModelFollower`
    may switch while serving); `engine` and `served` are its first.
    """
    app = FastAPI(title="llmos serve", version=SERVER_VERSION, docs_url=None, redoc_url=None)
    live_model = live or LiveModel(engine, served)
    metrics = ServingMetrics(lambda: live_model.current().engine.stats(), served.name,
                             switches=lambda: (live_model.switches, live_model.failed_switches))
    app.state.engine, app.state.served, app.state.metrics = engine, served, metrics
    app.state.live = live_model
    app.state.draining = False
    app.state.options = options

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request, err):
        return _validation_error(err)

    @app.exception_handler(InvalidSetting)
    async def on_invalid_setting(_request, err: InvalidSetting):
        return _error_response(400, str(err), param=err.field)

    @app.exception_handler(UserError)
    async def on_user_error(_request, err: UserError):
        return _error_response(400, str(err))

    @app.exception_handler(_ApiError)
    async def on_api_error(_request, err: _ApiError):
        return _error_response(err.status, str(err), param=err.param, kind=err.kind,
                               code=err.code, headers=err.headers)

    @app.exception_handler(QueueFull)
    async def on_queue_full(_request, err: QueueFull):
        retry = max(1, math.ceil(err.retry_after_seconds))
        return _error_response(429, f"the server is at capacity ({err.waiting} requests waiting);"
                               f" retry after {retry} s", kind="rate_limit_error",
                               code="queue_full", headers={"Retry-After": str(retry)})

    @app.exception_handler(EngineNotReady)
    async def on_not_ready(_request, err: EngineNotReady):
        metrics.rejected("not_ready")
        return _error_response(503, str(err), kind="service_unavailable",
                               headers={"Retry-After": "5"})

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request, err: StarletteHTTPException):
        return _error_response(err.status_code, str(err.detail), kind="invalid_request_error")

    # -- operations ---------------------------------------------------------------------

    @app.get("/health/live")
    async def live():
        return {"status": "live"}

    @app.get("/health/ready")
    async def ready():
        current = live_model.current()
        stats = current.engine.stats()
        if stats.ready and not app.state.draining:
            return {"status": "ready", "model": current.served.name}
        state = "draining" if (app.state.draining or stats.draining) else "warming up"
        return JSONResponse({"status": state, "model": current.served.name}, status_code=503)

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/version")
    async def version():
        return {"version": SERVER_VERSION}

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        page = importlib.resources.files("llmos_jax.serving").joinpath("static/playground.html")
        return HTMLResponse(page.read_text(encoding="utf-8"))

    # -- models and tokens ------------------------------------------------------------------

    created = now()

    @app.get("/v1/models")
    async def models():
        current = live_model.current()
        served = current.served
        return {"object": "list", "data": [{
            "id": served.name, "object": "model", "created": created, "owned_by": "llmos",
            "root": served.source or served.name, "max_model_len": served.max_context,
            **({"version": current.version} if current.version is not None else {})}]}

    def check_model(name: str | None, served: ServedModel) -> None:
        if name is not None and name != served.name:
            raise _ApiError(400, f"model {name!r} is not served here; this server serves "
                            f"{served.name!r} (GET /v1/models)", param="model",
                            code="model_not_found")

    def chat_prompt(body_messages, served: ServedModel) -> str:
        messages = [{"role": m.role, "content": m.text(),
                     **({"name": m.name} if m.name else {})} for m in body_messages]
        try:
            return served.render_chat(messages)
        except UserError as err:  # no template, or it refused these messages
            raise InvalidSetting("messages", str(err)) from None

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        served = live_model.current().served
        check_model(body.model, served)
        if (body.prompt is None) == (body.messages is None):
            raise InvalidSetting("prompt", "send exactly one of prompt and messages")
        if body.prompt is not None:
            ids = served.encode_prompt(body.prompt)
        else:
            ids = served.encode_prompt(chat_prompt(body.messages, served),
                                       add_special_tokens=False)
        return {"tokens": ids, "count": len(ids), "max_model_len": served.max_context}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        current = live_model.current()
        check_model(body.model, current.served)
        check_token_ids(body.tokens, "tokens", current.engine)
        return {"prompt": current.served.tokenizer.decode(body.tokens)}

    def check_token_ids(ids, field: str, engine: ServingEngine) -> None:
        for t in ids:
            if not 0 <= t < engine.vocab_size:
                raise InvalidSetting(field, f"token id {t} is outside the vocabulary "
                                     f"[0, {engine.vocab_size})")

    # -- generation ---------------------------------------------------------------------

    def settings_for(body, served: ServedModel, *, max_tokens: int | None,
                     logprobs: int | None) -> list[SamplingSettings]:
        if max_tokens is None:
            max_tokens = served.max_context  # up to the context (finish_reason "length")
        seed = body.seed
        if seed is None and (body.temperature is None or body.temperature > 0):
            seed = secrets.randbits(31)
        return [body.sampling(max_tokens=max_tokens, logprobs=logprobs,
                              seed=None if seed is None else seed + j) for j in range(body.n)]

    async def start_run(request: Request, prompts: list[list[int]],
                        settings: list[SamplingSettings], deployment: Deployment) -> RequestRun:
        arrival = time.monotonic()
        deadline = (arrival + options.request_timeout if options.request_timeout else None)
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
        if options.log_prompts:
            request_info(request.scope)["prompt"] = texts[0] if len(texts) == 1 else texts
        settings = settings_for(body, served, max_tokens=body.max_tokens,
                                logprobs=body.logprobs)
        run = await start_run(request, prompts, settings, deployment)
        echo = [t if body.echo else "" for t in texts]
        shape = _CompletionShape(run.run_id, served.name, echo, served.tokenizer, body.logprobs)
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
        if options.log_prompts:
            request_info(request.scope)["prompt"] = text
        settings = settings_for(body, served,
                                max_tokens=body.max_completion_tokens or body.max_tokens,
                                logprobs=body.logprob_count())
        prompt_ids = served.encode_prompt(text, add_special_tokens=False)  # the template has them
        run = await start_run(request, [prompt_ids], settings, deployment)
        shape = _ChatShape(run.run_id, served.name, served.tokenizer, body.logprobs)
        return await respond(request, run, shape, body.stream, body.include_usage, lease)

    async def respond(request: Request, run: RequestRun, shape, stream: bool,
                      include_usage: bool, lease: Lease):
        info = request_info(request.scope)
        if stream:
            request.state.lease_kept = True  # Released when the stream ends.
            return StreamingResponse(stream_events(run, shape, include_usage, info, lease),
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
            run.abort_unfinished()  # the client left (or the stream failed): free the slots
            note_usage(info, run)
            lease.release()

    def note_usage(info: dict, run: RequestRun) -> None:
        info["completion_tokens"] = run.completion_tokens
        info["finish_reasons"] = [s.reason.value if s.reason else "running"
                                  for s in run.sequences]

    app.add_middleware(HttpGuard, api_keys=options.api_keys,
                       max_body_bytes=options.max_body_bytes, metrics=metrics,
                       log_prompts=options.log_prompts)
    if options.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(options.cors_origins),
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
                           expose_headers=["X-Request-Id", "Retry-After"])
    return app


async def _wait(run: RequestRun, seconds: float) -> bool:
    try:
        await asyncio.wait_for(asyncio.shield(run.finished()), seconds)
        return True
    except asyncio.TimeoutError:
        return False


def _failure(run: RequestRun) -> _ApiError | None:
    """The error a finished request reports, if any of its choices failed."""
    reasons = {s.reason for s in run.sequences}
    if FinishReason.TIMEOUT in reasons:
        return _ApiError(504, "the request passed its deadline (the server's "
                         "--request-timeout) and was stopped", kind="timeout",
                         code="request_timeout")
    if FinishReason.ERROR in reasons:
        message = next(s.finish.message for s in run.sequences
                       if s.reason == FinishReason.ERROR)
        return _ApiError(500, f"the request failed: {message}", kind="server_error",
                         code="engine_error")
    if FinishReason.ABORT in reasons:
        return _ApiError(503, "the request was aborted (the server is shutting down or the "
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

