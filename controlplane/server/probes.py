"""The metrics port: Prometheus ``/metrics``, and ``/livez`` and ``/readyz`` for orchestrators.

etcd answers ``/livez`` and ``/readyz`` beside its metrics for the same reason: the client port
needs TLS, and a kubelet's gRPC and HTTP probes speak neither client certificates nor this
cluster's CA. So the probes go where Prometheus already scrapes, in plain HTTP, and say only
what anyone who can reach that port may know:

* ``/livez``: 200 while the server's event loop runs its health beat (every 0.25 s); 503 once the
  beat has not run for ``LIVENESS_STALL_S``, or no answer at all: restart it when this keeps failing;
* ``/readyz``: 200 once this server knows a leader, reaches a majority and has caught up (what the
  gRPC health service reports as SERVING), else 503 with the reason in the body: send it no
  clients until then.

Everything else is ``/metrics`` (as ``prometheus_client.start_http_server`` answered before).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

__all__ = ["LIVENESS_STALL_S", "Readiness", "serve_metrics_and_probes"]

#: How long the health beat may go without running before /livez fails. The busiest CI machines
#: stalled the event loop for up to ~6 s; an orchestrator restarts only after several failures.
LIVENESS_STALL_S = 15.0


class Readiness:
    """Whether this server should receive clients, and why not; set by the health beat (app.py),
    whose last run also says the event loop lives."""

    def __init__(self) -> None:
        self.ready = False
        self.reason = "starting"
        self.beat_at = time.monotonic()

    def set(self, ready: bool, reason: str = "") -> None:
        # Assignments read by other threads: a reader may see a new flag with an old reason for an
        # instant, which a probe repeated every few seconds cannot tell from a change.
        self.ready, self.reason, self.beat_at = ready, reason, time.monotonic()

    def stalled_for(self) -> float:
        return time.monotonic() - self.beat_at


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes and scrapes every few seconds: not worth a log line each (the server logs JSON only)."""


def serve_metrics_and_probes(host: str, port: int, readiness: Readiness) -> ThreadingWSGIServer:
    """Serve on ``host:port`` in a daemon thread (a server's lifetime; ``shutdown()`` ends it) and
    return the listener: ``server_address`` is the address bound (port 0: any free one). Raises
    OSError when the address cannot be bound."""
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/livez":
            stalled = readiness.stalled_for()
            if stalled > LIVENESS_STALL_S:
                return _answer(start_response, "503 Service Unavailable", f"event loop stalled for {stalled:.0f} s")
            return _answer(start_response, "200 OK", "ok")
        if path == "/readyz":
            if readiness.ready:
                return _answer(start_response, "200 OK", "ready")
            return _answer(start_response, "503 Service Unavailable", f"not ready: {readiness.reason}")
        result: Iterable[bytes] = metrics(environ, start_response)
        return result

    # The address bound is the one resolved here (as check_bindable and prometheus_client do), so
    # "localhost" cannot bind ::1 after 127.0.0.1 was checked.
    resolved = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, sockaddr = resolved[0][0], resolved[0][4]

    class _Server(ThreadingWSGIServer):
        address_family = family

    server = make_server(str(sockaddr[0]), port, app, server_class=_Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def _answer(start_response: Callable[..., Any], status: str, text: str) -> list[bytes]:
    body = f"{text}\n".encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]
