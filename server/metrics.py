"""Prometheus metrics of one app, in its own CollectorRegistry (never the process-global one, so
several apps, e.g. in tests, do not collide), and the ASGI middleware that times every request.
"""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
RTF_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    """The service's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("endpoint", "method", "status")
        self.requests = Counter("vocoder_http_requests", "HTTP requests by endpoint and status",
                                labels, registry=self.registry)
        self.latency = Histogram("vocoder_http_request_duration_seconds",
                                 "Time from request start to the last response byte",
                                 labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("vocoder_batch_size", "Requests per inference batch",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("vocoder_queue_depth", "Requests waiting for the inference worker",
                                 registry=self.registry)
        self.audio_seconds = Counter("vocoder_audio_seconds", "Seconds of audio generated",
                                     registry=self.registry)
        self.real_time_factor = Histogram("vocoder_real_time_factor",
                                          "Inference time / audio duration, per batch",
                                          buckets=RTF_BUCKETS, registry=self.registry)
        self.dropped = Counter("vocoder_dropped_requests",
                               "Queued requests dropped before inference, by reason",
                               ("reason",), registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Count and time requests per route template (not per raw path, which would let clients
    create unbounded label values)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            labels = (_endpoint(scope), scope["method"], str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)


def _endpoint(scope: Scope) -> str:
    """The route template that served the request (FastAPI records API routes in the scope; plain
    Starlette routes such as /docs, and requests answered before routing, are matched here)."""
    route = scope.get("route")
    if route is None:
        routes = getattr(getattr(scope.get("app"), "router", None), "routes", ())
        route = next((candidate for candidate in routes if candidate.matches(scope)[0] == Match.FULL), None)
    return getattr(route, "path", None) or "unmatched"
