"""The model a server answers with, swappable while it serves: deploy and roll back by alias.

`LiveModel` holds the current `Deployment` (an engine, its `ServedModel`
and a version label). Each HTTP request leases the deployment it starts on
and keeps it to its last byte, so `switch` can put a new deployment in
front at once: new requests go to the new engine, requests in flight finish
on the old one, and the old engine is shut down (its memory freed) when its
last lease is returned.

`ModelFollower` polls something that names the version to serve (the CLI
passes a registry alias lookup; serving knows nothing of registries). When
the name changes it loads and warms up the new version in the background,
and only then switches. A version that fails to load or compile leaves the
current one serving; the failure is logged and counted (`/metrics`:
`llmos_model_switch_failures_total`). Moving the alias back rolls back the
same way.

On shutdown the follower is told to stop without waiting for a compile in
progress (whose engine is then shut down, never switched to); the drain
lets requests on retiring versions finish too, and every engine is shut
down at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from llmos_jax.serving.engine import ServingEngine
from llmos_jax.serving.served_model import ServedModel

log = logging.getLogger("llmos_jax.serving")

__all__ = ["Deployment", "Follow", "LiveModel", "ModelFollower"]


@dataclasses.dataclass(frozen=True)
class Follow:
    """What `--follow-alias` asks of a server.

    Attributes:
      target: Returns the version to serve now (e.g. where an alias points).
      load: Loads a version's model (not yet placed in an engine).
      interval: Seconds between polls of `target`.
    """

    target: Callable[[], str]
    load: Callable[[str], ServedModel]
    interval: float = 10.0


@dataclasses.dataclass(eq=False)
class Deployment:
    """One loaded version: its engine, model and the label `/v1/models` shows."""

    engine: ServingEngine
    served: ServedModel
    version: str | None = None
    leases: int = 0


class Lease:
    """A request's hold on a deployment; `release` is idempotent."""

    def __init__(self, live: LiveModel, deployment: Deployment):
        self._live, self.deployment, self._held = live, deployment, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._live._release(self.deployment)


class LiveModel:
    """The current deployment, leased per request and switched without failing any.

    Deployments switched away from stay tracked (`retiring`) until their last
    lease is returned, so a drain can let their requests finish too and
    `shutdown` stops every engine, not just the current one.
    """

    def __init__(self, engine: ServingEngine, served: ServedModel, version: str | None = None):
        self._current = Deployment(engine, served, version)
        self._retiring: list[Deployment] = []
        self._closed = False
        self._cond = threading.Condition()
        self.switches = 0
        self.failed_switches = 0

    def current(self) -> Deployment:
        with self._cond:
            return self._current

    def retiring(self) -> list[Deployment]:
        """Deployments switched away from whose requests are still running."""
        with self._cond:
            return list(self._retiring)

    def lease(self) -> Lease:
        """The current deployment, held until the lease is released."""
        with self._cond:
            self._current.leases += 1
            return Lease(self, self._current)

    def _release(self, deployment: Deployment) -> None:
        with self._cond:
            deployment.leases -= 1
            self._cond.notify_all()

    def switch(self, engine: ServingEngine, served: ServedModel, version: str | None,
               *, retire_timeout: float = 600.0) -> bool:
        """Serves new requests from `engine` (started); retires the old one when idle.

        Returns:
          False (and shuts `engine` down) when the server is already shutting down.
        """
        with self._cond:
            if self._closed:
                closed = True
            else:
                closed = False
                old, self._current = self._current, Deployment(engine, served, version)
                self._retiring.append(old)
                self.switches += 1
        if closed:
            log.info("version %s is ready but the server is shutting down; not switching",
                     version)
            engine.shutdown()
            return False
        log.info("now serving version %s (was %s); the old one finishes its requests",
                 version, old.version)

        def retire():
            with self._cond:
                self._cond.wait_for(lambda: old.leases == 0 or self._closed, retire_timeout)
                if self._closed:
                    return  # `shutdown` stops it.
            old.engine.shutdown()
            with self._cond:
                if old in self._retiring:
                    self._retiring.remove(old)
            log.info("version %s retired", old.version)

        threading.Thread(target=retire, name="llmos-retire", daemon=True).start()
        return True

    def drain(self, grace: float) -> bool:
        """Stops admitting; waits up to `grace` s for every deployment's requests.

        Requests on retiring versions count too (they hold leases). Returns
        True if all finished in time.
        """
        deadline = time.monotonic() + grace
        finished = self.current().engine.drain(grace)
        with self._cond:
            retired = self._cond.wait_for(
                lambda: all(d.leases == 0 for d in self._retiring),
                max(0.0, deadline - time.monotonic()))
        return finished and retired

    def shutdown(self) -> None:
        """Stops every engine (current and retiring); later switches are refused."""
        with self._cond:
            self._closed = True
            engines = [d.engine for d in (*self._retiring, self._current)]
            self._retiring.clear()
            self._cond.notify_all()
        for engine in engines:
            engine.shutdown()


class ModelFollower:
    """Polls `target()` and switches `live` to the version it names once that is warm.

    Args:
      live: The server's live model.
      target: Returns the version to serve (e.g. the version an alias points at).
      load: Builds an engine (not started) and its model for a version.
      interval: Seconds between polls.
    """

    def __init__(self, live: LiveModel, target: Callable[[], str],
                 load: Callable[[str], tuple[ServingEngine, ServedModel]], interval: float):
        self._live, self._target, self._load, self._interval = live, target, load, interval
        self._stop = threading.Event()
        self._failed: str | None = None  # Not retried until the target changes again.
        self._thread = threading.Thread(target=self._run, name="llmos-follow", daemon=True)

    def start(self) -> ModelFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Asks the follower to stop, without waiting for it.

        A version still compiling is not switched to: its engine is shut down
        once it is ready (or, if it gets past the check, `LiveModel.switch`
        refuses it after `LiveModel.shutdown`).
        """
        self._stop.set()

    def poll_once(self) -> None:
        """One check: switch if the target moved (and loads), else nothing."""
        try:
            wanted = str(self._target())
        except Exception as error:  # The registry is unreachable: keep serving.
            log.warning("could not read the version to serve (%s); keeping version %s", error,
                        self._live.current().version)
            return
        if wanted == self._live.current().version or wanted == self._failed:
            return
        log.info("the target moved to version %s: loading and compiling it", wanted)
        engine = None
        try:
            engine, served = self._load(wanted)
            engine.start()  # Compiles every shape before any request reaches it.
        except Exception as error:
            if engine is not None:
                engine.shutdown()  # A half-started engine: free its threads and memory.
            self._failed = wanted
            self._live.failed_switches += 1
            current = self._live.current().version
            if "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower():
                log.error("version %s does not fit in device memory beside version %s, which "
                          "serves until the switch; still serving version %s. Serve it on a "
                          "fresh server (or with fewer --max-slots / a shorter --max-context).",
                          wanted, current, current)
            else:
                log.error("version %s failed to load (%s: %s); still serving version %s",
                          wanted, type(error).__name__, str(error)[:300], current)
            return
        self._failed = None
        if self._stop.is_set():  # The server began shutting down while this one compiled.
            log.info("version %s is ready but the server is shutting down; not switching",
                     wanted)
            engine.shutdown()
            return
        self._live.switch(engine, served, wanted)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.poll_once()
