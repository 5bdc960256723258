"""Deadlines for a request to arrive: a slow or half-sent request cannot hold the gateway.

uvicorn closes a connection idle between requests (``timeout_keep_alive``), but once a client has
sent one byte nothing bounds how long it may take to send the rest: a few hundred connections each
trickling a request line (slowloris) hold as many sockets and tasks for ever. ``ArrivalDeadlines``
is uvicorn's h11 protocol with two deadlines per request:

* the headers must be whole within ``header_timeout_s`` of the connection, or of the previous
  response on a kept-alive connection;
* the body must be whole within ``body_timeout_s`` of the headers.

A request that misses its deadline is answered 408 (when nothing was answered yet) and its
connection closed. uvicorn's own ``limit_concurrency`` caps connections beyond that (503).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.defaults import DEFAULT_BODY_TIMEOUT_S, DEFAULT_HEADER_TIMEOUT_S

log = structlog.get_logger("gateway.slow_clients")


_TIMEOUT_BODY = b"the request did not arrive in time\n"
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)


class ArrivalDeadlines(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request's headers and for its body."""

    header_timeout_s = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s = DEFAULT_BODY_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._arrival: asyncio.TimerHandle | None = None
        self._waiting_for = ""

    @classmethod
    def with_timeouts(cls, header_timeout_s: float, body_timeout_s: float) -> type[ArrivalDeadlines]:
        """The protocol class to hand uvicorn (``Config(http=...)``) for these deadlines."""
        if not (header_timeout_s > 0 and body_timeout_s > 0):
            raise ValueError("header and body timeouts must be positive")
        return type(cls.__name__, (cls,), {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._follow()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Arm the deadline for what the client owes now: headers, a body, or nothing."""
        state = self.conn.their_state
        if state is h11.IDLE and self.conn.our_state is h11.IDLE:
            self._arm("headers", self.header_timeout_s)
        elif state is h11.SEND_BODY:
            self._arm("body", self.body_timeout_s)
        else:
            self._disarm()  # the request is whole (or the connection is closing): the app has it

    def _arm(self, waiting_for: str, timeout_s: float) -> None:
        if self._waiting_for == waiting_for and self._arrival is not None:
            return  # the deadline runs from when this part became due, not from the last byte
        self._disarm()
        self._waiting_for = waiting_for
        self._arrival = self.loop.call_later(timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._arrival is not None:
            self._arrival.cancel()
        self._arrival, self._waiting_for = None, ""

    def _expired(self) -> None:
        waiting_for, self._arrival = self._waiting_for, None
        self._waiting_for = ""
        if self.transport.is_closing():
            return
        started = not (self.conn.their_state is h11.IDLE and self.conn.trailing_data == (b"", False))
        if started:  # part of a request came: say why it is dropped (a silent connection just closes)
            log.warning("gateway_request_too_slow", client=_client(self.client), waiting_for=waiting_for)
            if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
                self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def _client(address: tuple[str, int] | None) -> str:
    return f"{address[0]}:{address[1]}" if address else "?"
