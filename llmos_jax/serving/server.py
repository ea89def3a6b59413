"""Running the API: uvicorn with warm-up before ready, and a graceful drain on SIGTERM.

`serve` is what `llmos serve` runs: the socket opens at once (so `/health/live`
answers and `/health/ready` says 503 while every shape compiles), the engine
warms up in the background, and the first SIGTERM (or Ctrl-C) turns readiness
off, stops admitting, lets running requests finish within the grace period,
then exits; a second signal exits at once. `background_server` runs the same
in a thread, for notebooks and tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from llmos_jax.serving.api import ApiOptions, create_app
from llmos_jax.serving.engine import ServingEngine
from llmos_jax.serving.live_model import Follow, LiveModel, ModelFollower
from llmos_jax.serving.served_model import ServedModel

log = logging.getLogger("llmos_jax.serving")

__all__ = ["EngineOptions", "build_engine", "DrainingServer", "serve", "background_server",
           "free_port"]


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """The engine's capacity (see `ServingEngine`).

    Attributes:
      max_slots: Decode slots (requests decoded together).
      max_queue: Requests waiting beyond the free slots before 429.
      max_context: Positions per slot (default: the model's).
      prefill_chunk: Prompt tokens of each prefilling request per engine iteration.
      prefill_batch: Most requests prefilled together.
    """

    max_slots: int = 8
    max_queue: int = 64
    max_context: int | None = None
    prefill_chunk: int = 64
    prefill_batch: int = 4


def build_engine(served: ServedModel, options: EngineOptions = EngineOptions()
                 ) -> ServingEngine:
    """A (not yet started) engine for `served`."""
    context = options.max_context or served.max_context
    return ServingEngine(served.model, max_slots=options.max_slots, max_queue=options.max_queue,
                         max_context=min(context, served.max_context),
                         prefill_chunk=options.prefill_chunk,
                         prefill_batch=options.prefill_batch, eos_id=served.eos_id,
                         decoder_start_id=served.decoder_start_id)


class DrainingServer(uvicorn.Server):
    """uvicorn, whose first exit signal drains the engine before the server stops."""

    def __init__(self, config: uvicorn.Config, live: LiveModel, app, grace: float):
        super().__init__(config)
        self.live, self._app, self._grace = live, app, grace
        self.follower: ModelFollower | None = None
        self._draining = False

    def handle_exit(self, sig, frame) -> None:
        if self._draining:
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        self.begin_drain()

    def begin_drain(self) -> None:
        """Readiness off, no new requests, running ones finish (up to the grace), then exit."""
        if self._draining:
            return
        self._draining = True
        self._app.state.draining = True
        log.info("draining: not ready; waiting up to %.0f s for running requests", self._grace)

        def drain():
            if self.follower is not None:
                self.follower.stop()  # No join: a version still compiling must not hold us.
            if not self.live.drain(self._grace):  # Retiring versions' requests count too.
                log.warning("grace period over: aborting the requests still running")
            self.live.shutdown()
            self.should_exit = True

        threading.Thread(target=drain, name="llmos-drain", daemon=True).start()


def _warm_up(engine: ServingEngine, server: DrainingServer,
             follower: ModelFollower | None = None) -> None:
    started = time.perf_counter()
    try:
        engine.start()
    except Exception:
        log.exception("warm-up failed; stopping the server")
        server.should_exit = True
        return
    log.info("ready: %d programs compiled in %.1f s", engine.stats().compilations,
             time.perf_counter() - started)
    if follower is not None:
        server.follower = follower.start()


def _server(served: ServedModel, engine_options: EngineOptions, api_options: ApiOptions,
            host: str, port: int, shutdown_grace: float, log_level: str,
            version: str | None = None, follow: Follow | None = None
            ) -> tuple[DrainingServer, ServingEngine, ModelFollower | None]:
    engine = build_engine(served, engine_options)
    live = LiveModel(engine, served, version)
    app = create_app(engine, served, api_options, live=live)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=5, lifespan="off")
    follower = None
    if follow is not None:
        def load(wanted: str) -> tuple[ServingEngine, ServedModel]:
            model = follow.load(wanted)
            return build_engine(model, engine_options), model

        follower = ModelFollower(live, follow.target, load, follow.interval)
    return DrainingServer(config, live, app, shutdown_grace), engine, follower


def serve(served: ServedModel, *, engine_options: EngineOptions = EngineOptions(),
          api_options: ApiOptions = ApiOptions(), host: str = "127.0.0.1", port: int = 8000,
          shutdown_grace: float = 30.0, log_level: str = "info", version: str | None = None,
          follow: Follow | None = None) -> None:
    """Serves until SIGTERM/SIGINT (blocks). Ready once every shape has compiled.

    Args:
      version: The label `/v1/models` shows for `served` (a registered version).
      follow: Switch to the version `follow.target()` names whenever it changes.
    """
    server, engine, follower = _server(served, engine_options, api_options, host, port,
                                       shutdown_grace, log_level, version, follow)
    threading.Thread(target=_warm_up, args=(engine, server, follower), name="llmos-warm-up",
                     daemon=True).start()
    try:
        server.run()
    finally:
        if server.follower is not None:
            server.follower.stop()
        server.live.shutdown()


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def background_server(served: ServedModel, *, engine_options: EngineOptions = EngineOptions(),
                      api_options: ApiOptions = ApiOptions(), port: int | None = None,
                      shutdown_grace: float = 5.0, wait_ready: bool = True,
                      log_level: str = "warning", version: str | None = None,
                      follow: Follow | None = None) -> Iterator[DrainingServer]:
    """Serves on 127.0.0.1 from a thread; yields the server (`.base_url`, `.engine`).

    Leaving the block drains and stops it. With `wait_ready`, waits for warm-up.
    """
    port = port or free_port()
    server, engine, follower = _server(served, engine_options, api_options, "127.0.0.1", port,
                                       shutdown_grace, log_level, version, follow)
    server.base_url = f"http://127.0.0.1:{port}"
    server.engine = engine
    thread = threading.Thread(target=server.run, name="llmos-uvicorn", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the server on port {port} did not start")
        time.sleep(0.02)
    warm = threading.Thread(target=_warm_up, args=(engine, server, follower),
                            name="llmos-warm-up", daemon=True)
    warm.start()
    if wait_ready:
        warm.join()
        if not engine.ready:
            raise RuntimeError("the engine failed to warm up (see the log)")
    try:
        yield server
    finally:
        server.begin_drain()
        thread.join(timeout=shutdown_grace + 30)
        server.live.shutdown()
