"""What every HTTP request passes through before and after its handler.

One pure ASGI middleware (so streamed responses are measured to their last
byte, which Starlette's `BaseHTTPMiddleware` cannot do):

- gives every response an `X-Request-Id` (the client's, if it sent a sane one);
- refuses bodies over `max_body_bytes` with 413 before the handler parses them;
- checks `Authorization: Bearer` on everything but health, metrics and the
  playground page, comparing SHA-256 digests in constant time (401 otherwise);
- writes one access-log line per request when its response has ended: id,
  route, status, prompt and output tokens, latency and finish reasons (the
  prompt text only when asked for).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Sequence

from llmos_jax.serving.metrics import ServingMetrics
from llmos_jax.serving.openai_protocol import error_body

access_log = logging.getLogger("llmos_jax.serving.access")

__all__ = ["HttpGuard", "OPEN_PATHS", "request_info"]

OPEN_PATHS = ("/health/", "/metrics", "/version", "/favicon.ico")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_KNOWN_ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/tokenize",
                 "/detokenize", "/health/live", "/health/ready", "/metrics", "/version", "/")


def request_info(scope) -> dict:
    """The per-request record handlers fill in (tokens, finish reasons, prompt)."""
    return scope.setdefault("llmos", {})


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class HttpGuard:
    """ASGI middleware: request ids, body limit, API keys, access log, HTTP metrics.

    Args:
      app: The wrapped ASGI app.
      api_keys: Accepted bearer keys (empty: no key needed).
      max_body_bytes: Larger request bodies get 413.
      metrics: Counts responses by route and status.
      log_prompts: Put the prompt text in the access log.
    """

    def __init__(self, app, *, api_keys: Sequence[str], max_body_bytes: int,
                 metrics: ServingMetrics, log_prompts: bool = False):
        self.app = app
        self._keys = [_digest(k) for k in api_keys]
        self._max_body = max_body_bytes
        self._metrics = metrics
        self._log_prompts = log_prompts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        sent_id = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = sent_id if _SANE_ID.match(sent_id) else secrets.token_hex(12)
        info = request_info(scope)
        info["request_id"] = request_id
        status_holder = {"status": 500}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                self._log(scope, status_holder["status"], started)
            await send(message)

        if not self._authorized(scope):
            await self._refuse(send_with_id, 401, "missing or wrong API key; send "
                               "'Authorization: Bearer <key>'", "invalid_api_key")
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body = await self._read_body(receive)
            if body is None:
                await self._refuse(send_with_id, 413, f"the request body is larger than "
                                   f"{self._max_body} bytes (the server's --max-body-bytes)",
                                   "request_too_large")
                return
            receive = self._replay(body, receive)
        await self.app(scope, receive, send_with_id)

    def _authorized(self, scope) -> bool:
        path = scope["path"]
        if not self._keys or path == "/" or path.startswith(OPEN_PATHS) or (
                scope["method"] == "OPTIONS"):
            return True
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = header.partition(" ")
        given = _digest(key.strip()) if scheme.lower() == "bearer" else b""
        matched = False
        for expected in self._keys:  # every key is compared: no early exit on a match
            matched |= hmac.compare_digest(given, expected)
        return matched

    async def _read_body(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return b"".join(chunks)

    @staticmethod
    def _replay(body: bytes, receive):
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the client's disconnect

        return replay

    @staticmethod
    async def _refuse(send, status: int, message: str, code: str) -> None:
        payload = json.dumps(error_body(message, kind="invalid_request_error" if status != 401
                                        else "authentication_error", code=code)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    def _log(self, scope, status: int, started: float) -> None:
        path = scope["path"]
        route = path if path in _KNOWN_ROUTES else "other"
        self._metrics.http_response(route, status)
        if path.startswith(("/health/", "/metrics")):
            return  # probes and scrapes would drown the log
        info = request_info(scope)
        fields = [f"id={info.get('request_id')}", f"{scope['method']} {path}", f"status={status}",
                  f"prompt_tokens={info.get('prompt_tokens', 0)}",
                  f"output_tokens={info.get('completion_tokens', 0)}",
                  f"latency={time.monotonic() - started:.3f}s",
                  f"finish={','.join(info.get('finish_reasons', [])) or '-'}"]
        if self._log_prompts and "prompt" in info:
            fields.append(f"prompt={info['prompt']!r}")
        access_log.info(" ".join(fields))
