"""The OpenAI-compatible HTTP API over a `ServingEngine` (FastAPI).

Routes: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models`,
`POST /tokenize`, `POST /detokenize`, `GET /health/live`, `GET /health/ready`,
`GET /metrics`, `GET /version` and the playground page at `GET /`.

Status codes a client can act on: 400 with OpenAI's error body naming the
field (`param`) for bad input; 401 without a valid key; 413 for a body over the
limit; 429 with `Retry-After` when the waiting queue is full; 503 while warming
up or draining; 504 when a request passes its deadline (streams get an error
chunk instead, since their 200 has gone out). A request that ends in error
never disturbs the others in the batch. The generation endpoints themselves
are in `generation_routes`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import math

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmos_jax.errors import UserError
from llmos_jax.serving.engine import ServingEngine
from llmos_jax.serving.generation_routes import (
    ApiError,
    add_generation_routes,
    chat_prompt,
    check_model,
    check_token_ids,
)
from llmos_jax.serving.http_guard import HttpGuard
from llmos_jax.serving.live_model import LiveModel
from llmos_jax.serving.metrics import ServingMetrics
from llmos_jax.serving.openai_protocol import (
    DetokenizeRequest,
    TokenizeRequest,
    error_body,
    now,
)
from llmos_jax.serving.requests import EngineNotReady, InvalidSetting, QueueFull
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

    @app.exception_handler(ApiError)
    async def on_api_error(_request, err: ApiError):
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
            **({"version": current.version} if current.version is not None else {})}] + [
            {"id": name, "object": "model", "created": created, "owned_by": "llmos",
             "root": source, "parent": served.name, "max_model_len": served.max_context}
            for name, source in served.adapters.items()]}

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

    add_generation_routes(app, live_model, metrics, request_timeout=options.request_timeout,
                          log_prompts=options.log_prompts)

    app.add_middleware(HttpGuard, api_keys=options.api_keys,
                       max_body_bytes=options.max_body_bytes, metrics=metrics,
                       log_prompts=options.log_prompts)
    if options.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(options.cors_origins),
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
                           expose_headers=["X-Request-Id", "Retry-After"])
    return app


