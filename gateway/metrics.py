"""Prometheus metrics of one gateway process, served by the gateway itself at ``GET /metrics``.

Requests are labelled by route *template* (``/v1/nodes/{node_id}``), never by the raw path: a path
carries ids, and a label per id would grow without bound. A request that matched no route is
``route="unmatched"``.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "controlplane_gateway_http_requests_total",
    "HTTP requests the gateway answered, by route template, method and status code",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "controlplane_gateway_http_request_duration_seconds",
    "Time from a request reaching the gateway to its response sent, by route template, method and status code",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


class RequestMetrics:
    """ASGI middleware, outermost of ours: counts and times every HTTP request, refusals included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what Starlette answers when the app raises before starting a response

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # The router records the matched route in the scope it was handed (this one).
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            labels = (route, scope["method"], str(status))
            REQUESTS.labels(*labels).inc()
            LATENCY.labels(*labels).observe(time.perf_counter() - started)
