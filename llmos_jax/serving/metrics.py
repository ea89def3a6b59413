"""Prometheus metrics of a serving process, in base units, names prefixed `llmos_`.

Names follow vLLM's where they exist (with `llmos_` and underscores: Prometheus
keeps colons for recording rules). Gauges that mirror the engine's state are
read from `ServingEngine.stats()` at scrape time, so they are never stale.
Each app gets its own registry, so several servers in one process (tests) do
not collide.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from llmos_jax.serving.engine import EngineStats

__all__ = ["ServingMetrics"]

# Seconds; from a fast local step to a long queue.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3,
                    0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0,
                    120.0, 300.0)


class _EngineCollector(Collector):
    """Engine state gauges and the compilation counter, read at scrape time."""

    def __init__(self, stats: Callable[[], EngineStats], model_name: str,
                 switches: Callable[[], tuple[int, int]] | None = None):
        self._stats, self._model, self._switches = stats, model_name, switches

    def collect(self):
        stats = self._stats()
        labels = ["model_name"]
        for name, doc, value in (
                ("llmos_num_requests_running", "Requests holding a decode slot.", stats.running),
                ("llmos_num_requests_waiting", "Requests queued for a slot.", stats.waiting),
                ("llmos_kv_cache_usage_ratio", "Occupied KV-cache positions over all, 0 to 1.",
                 stats.kv_cache_usage),
                ("llmos_num_slots", "Decode slots (rows of the running batch).", stats.max_slots),
                ("llmos_ready", "1 when warmed up and admitting requests.", int(stats.ready))):
            gauge = GaugeMetricFamily(name, doc, labels=labels)
            gauge.add_metric([self._model], value)
            yield gauge
        counter = CounterMetricFamily(
            "llmos_compilations", "Device programs compiled since start (flat after ready).",
            labels=labels)
        counter.add_metric([self._model], stats.compilations)
        yield counter
        if self._switches is not None:
            switched, failed = self._switches()
            for name, doc, value in (
                    ("llmos_model_switches", "Times a new version took over (--follow-alias).",
                     switched),
                    ("llmos_model_switch_failures", "New versions that failed to load or "
                     "compile; the old one kept serving.", failed)):
                counter = CounterMetricFamily(name, doc, labels=labels)
                counter.add_metric([self._model], value)
                yield counter


class ServingMetrics:
    """The serving process's metrics, in their own `registry`.

    Args:
      stats: Returns the engine's current `EngineStats`.
      model_name: The `model_name` label on every metric.
      switches: Returns (version switches, failed switches) of a live model.
    """

    def __init__(self, stats: Callable[[], EngineStats], model_name: str,
                 switches: Callable[[], tuple[int, int]] | None = None):
        self.registry = CollectorRegistry()
        self.model_name = model_name
        labels = ["model_name"]

        def histogram(name: str, doc: str, buckets=_LATENCY_BUCKETS) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets,
                             registry=self.registry).labels(model_name)

        self.time_to_first_token = histogram(
            "llmos_time_to_first_token_seconds", "Arrival to first generated token.")
        self.inter_token_latency = histogram(
            "llmos_inter_token_latency_seconds", "Time between consecutive tokens of a request.")
        self.e2e_request_latency = histogram(
            "llmos_e2e_request_latency_seconds", "Arrival to last token.", _REQUEST_BUCKETS)
        self.request_queue_time = histogram(
            "llmos_request_queue_time_seconds", "Arrival to the start of its prefill.",
            _REQUEST_BUCKETS)
        self.prompt_tokens = Counter("llmos_prompt_tokens", "Prompt tokens processed.", labels,
                                     registry=self.registry).labels(model_name)
        self.generation_tokens = Counter("llmos_generation_tokens", "Tokens generated.", labels,
                                         registry=self.registry).labels(model_name)
        self._success = Counter("llmos_request_success",
                                "Finished requests by finish reason.",
                                [*labels, "finished_reason"], registry=self.registry)
        self._http = Counter("llmos_http_requests", "HTTP responses by route and status code.",
                             [*labels, "route", "status"], registry=self.registry)
        self._rejected = Counter("llmos_request_rejected",
                                 "Requests refused before admission, by reason.",
                                 [*labels, "reason"], registry=self.registry)
        self.registry.register(_EngineCollector(stats, model_name, switches))

    def request_finished(self, reason: str) -> None:
        self._success.labels(self.model_name, reason).inc()

    def http_response(self, route: str, status: int) -> None:
        self._http.labels(self.model_name, route, str(status)).inc()

    def rejected(self, reason: str) -> None:
        self._rejected.labels(self.model_name, reason).inc()
