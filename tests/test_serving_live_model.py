"""Switching versions while serving: no engine leaks, and a drain covers retiring versions.

Real engines over a tiny random model (one slot, a short context) so each
warm-up is a fraction of a second.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from serving_api_helpers import tiny_served_model

from llmos_jax.serving.api import create_app
from llmos_jax.serving.engine import ServingEngine
from llmos_jax.serving.live_model import LiveModel, ModelFollower
from llmos_jax.serving.server import EngineOptions, build_engine

OPTIONS = EngineOptions(max_slots=1, max_queue=1, prefill_chunk=8)


@pytest.fixture(scope="module")
def served():
    return tiny_served_model(context=16)


def started(served) -> ServingEngine:
    engine = build_engine(served, OPTIONS)
    engine.start()
    return engine


def is_stopped(engine: ServingEngine) -> bool:
    """Shut down: admits nothing, its loop thread has ended and its KV cache is freed."""
    return (engine.stats().draining and not engine._thread.is_alive()
            and engine._state is None)


class FailsAfterStarting(ServingEngine):
    """A real engine whose warm-up gets as far as its loop thread, then fails (as an OOM can)."""

    def start(self) -> None:
        super().start()
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory while compiling")


def test_a_version_that_fails_to_start_is_shut_down_and_the_old_one_serves(served):
    live = LiveModel(started(served), served, "1")
    built = []

    def load(version):
        built.append(FailsAfterStarting(served.model, max_slots=1, max_context=16,
                                        prefill_chunk=8, eos_id=served.eos_id))
        return built[-1], served

    follower = ModelFollower(live, lambda: "2", load, interval=60)
    follower.poll_once()
    assert live.current().version == "1" and live.failed_switches == 1
    assert is_stopped(built[0])
    live.shutdown()


def test_a_version_ready_after_the_drain_began_is_shut_down_not_switched_to(served):
    live = LiveModel(started(served), served, "1")
    built = []

    def load(version):  # The server starts shutting down while this version compiles.
        follower.stop()
        built.append(build_engine(served, OPTIONS))
        return built[-1], served

    follower = ModelFollower(live, lambda: "2", load, interval=60)
    follower.poll_once()
    assert live.current().version == "1" and live.switches == 0
    assert is_stopped(built[0])
    # Past the follower's check, the live model itself refuses once it has shut down.
    live.shutdown()
    late = started(served)
    assert live.switch(late, served, "3") is False
    assert live.current().version == "1" and is_stopped(late)


def test_the_drain_waits_for_requests_on_a_retiring_version_then_stops_every_engine(served):
    first, second = started(served), started(served)
    live = LiveModel(first, served, "1")
    running = live.lease()  # A request still running on version 1 ...
    assert live.switch(second, served, "2")  # ... when version 2 takes over.
    assert live.retiring() == [running.deployment]
    assert live.drain(0.2) is False  # The grace ends first: the drain says so.

    result = {}
    drainer = threading.Thread(target=lambda: result.update(finished=live.drain(30)))
    drainer.start()
    time.sleep(0.3)
    assert drainer.is_alive() and not is_stopped(first)
    running.release()
    running.release()  # Idempotent.
    drainer.join(10)
    assert result == {"finished": True}
    live.shutdown()
    assert is_stopped(first) and is_stopped(second) and live.retiring() == []


async def _stream_to_a_client_already_gone(app) -> None:
    """One ASGI streamed request whose client leaves before the first byte is sent."""
    body = json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 14, "stream": True,
                       "ignore_eos": True, "temperature": 0}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
             "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            raise OSError("the client closed the connection")  # as uvicorn's send does

    try:
        await app({**scope}, receive, send)
    except Exception:  # Starlette reports the disconnect; the server carries on.
        pass


def test_a_stream_whose_client_left_before_it_began_returns_its_lease(served):
    engine = started(served)
    live = LiveModel(engine, served, "1")
    app = create_app(engine, served, live=live)
    asyncio.run(_stream_to_a_client_already_gone(app))
    assert live.current().leases == 0  # Not held until a switch's retire timeout.
    deadline = time.monotonic() + 10
    while engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats().running == 0
    live.shutdown()
