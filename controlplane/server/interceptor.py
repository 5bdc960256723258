"""The one place handler exceptions become gRPC statuses, and where every request is measured.

A ``ControlPlaneError`` becomes its status code, its message and its structured fields as
trailing metadata (``ControlPlaneError.metadata``). Anything else is a bug: it is logged with
its stack trace here and the client gets INTERNAL with a one-line message, never a trace.

Every method of the client port is served through ``ErrorsAndMetrics``: the services register
their handlers with it, and it is the only handler the gRPC server knows (app.py), so it wraps
each method as it first resolves it (an interceptor would have to sit beside a second object
doing the registering). It keeps grpcio from registering the methods: grpcio's asyncio server
(1.85) keeps one pending request per registered method and waits on all of them with
``asyncio.wait`` after every call it accepts, which with the client port's 106 methods cost every
call ~0.05 ms of the server's CPU (a one-method echo server 0.25 ms per call, with 85 more
methods registered 0.30 ms; bench/README.md, Round 10).
"""

from __future__ import annotations

import contextvars
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
import structlog

from controlplane.errors import ControlPlaneError, ResourceExhausted, Unimplemented
from controlplane.methods import CARRY_PATH
from controlplane.server import metrics
from controlplane.server.authz import DRY_RUN_METHODS, READ_ONLY, Authorizer, PermissionDenied

log = structlog.get_logger("controlplane.grpc")

#: The default of ``max_carry_streams_per_identity``: Calls.Carry streams one identity may hold on a
#: server (an SDK client holds one per server it calls); beyond, the stream is refused and that
#: client's calls go alone.
MAX_CARRY_STREAMS_PER_IDENTITY = 64


class ErrorsAndMetrics(grpc.GenericRpcHandler):
    """Errors, metrics and, given an ``Authorizer``, authentication, authorization and the audit
    log: every call is checked before its handler runs, and every changing call is audited.

    The generic handler of the client port: ``add_generic_rpc_handlers`` takes the services'
    handlers (the generated ``add_*Servicer_to_server`` functions call it with this object as
    their server), and the gRPC server is given only this one."""

    def __init__(
        self,
        authorizer: Authorizer | None = None,
        audit: Callable[..., None] | None = None,
        streams: StreamLimiter | None = None,
        connection_streams: StreamLimiter | None = None,
        carriers: StreamLimiter | None = None,
    ) -> None:
        self._services: list[grpc.GenericRpcHandler] = []
        # Wrapped handlers are built once per method, not per call (this is the hot path).
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self._authorizer = authorizer
        self._audit = audit
        self._streams = streams
        self._connection_streams = connection_streams
        self._carriers = carriers

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._services.extend(handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: object) -> None:
        """Dropped: the generic handler registered with them serves the same methods (see the
        module's docstring for why grpcio must not register them)."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            for service in self._services:
                handler = service.service(handler_call_details)
                if handler is not None:
                    # A Calls.Carry stream stands for a client's unary calls, each judged (and
                    # rate-limited) on its own: it does not use up the identity's watch allowance,
                    # which many processes sharing one identity would otherwise exhaust. Its own
                    # per-identity limit (anonymous callers: per host) and the per-connection one
                    # bound it.
                    streams = self._carriers if method == CARRY_PATH else self._streams
                    wrapped = _wrap(method, handler, self._authorizer, self._audit, streams, self._connection_streams)
                    if wrapped is not None:
                        self._wrapped[method] = wrapped
                    break
        return wrapped


def _wrap(
    method: str,
    handler: grpc.RpcMethodHandler,
    authorizer: Authorizer | None = None,
    audit: Callable[..., None] | None = None,
    streams: StreamLimiter | None = None,
    connection_streams: StreamLimiter | None = None,
) -> grpc.RpcMethodHandler | None:
    guard = _Guard(method, authorizer, None if method in READ_ONLY else audit) if authorizer is not None else None
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(method, handler.unary_unary, guard),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream(method, handler.unary_stream, guard, streams, connection_streams),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_unary(method, handler.stream_unary, guard),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None:
        # Checked, limited and measured as a server stream, judged before the first message (like a
        # client stream). Reflection's is the only one on the client port; a bidirectional write
        # would need auditing here first.
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(method, handler.stream_stream, guard, streams, connection_streams),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return None  # a handler with no behaviour: unserved (UNIMPLEMENTED), never unchecked


# What a handler adds to its call's audit record, for what the interceptor cannot see before the
# call runs (a client-streaming call's first message): see ``note_for_audit``. Each call runs in a
# task of its own, so a note never reaches another call's record.
_audit_note: contextvars.ContextVar[str] = contextvars.ContextVar("audit_note", default="")


def note_for_audit(note: str) -> None:
    """Add ``note`` to the audit record of the call being handled (``Cluster.Restore`` notes
    ``with-auth``: a restore that replaces the users and tokens must say so in the audit log).
    Unary and client-streaming calls only: server-streaming ones are all reads, never audited."""
    _audit_note.set(note)


def _with_note(resource: str) -> str:
    note = _audit_note.get()
    return f"{resource},{note}" if resource and note else resource or note


async def _fail(context: grpc.aio.ServicerContext, method: str, exc: BaseException) -> str:
    """Abort the call for ``exc``; returns the status code name for the metrics."""
    if isinstance(exc, ControlPlaneError):
        await context.abort(exc.code, exc.message, trailing_metadata=exc.metadata())
    log.exception("handler_bug", method=method)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error ({type(exc).__name__}) in {method}; the server log has the details",
    )
    return "INTERNAL"  # not reached: abort raises


_children: dict[tuple[str, str], tuple[Any, Any]] = {}


def _observe(method: str, code: str, started: float) -> None:
    children = _children.get((method, code))
    if children is None:
        children = _children[(method, code)] = (
            metrics.REQUESTS.labels(method=method, code=code),
            metrics.LATENCY.labels(method=method, code=code),
        )
    children[0].inc()
    children[1].observe(time.perf_counter() - started)


def _code_of(exc: BaseException) -> str:
    return exc.code.name if isinstance(exc, ControlPlaneError) else "INTERNAL"


def _as_error(method: str, exc: Exception) -> Exception:
    """A generated servicer's method nobody wrote (grpcio's health ``List``) raises
    NotImplementedError: to the client that is ``Unimplemented``, not a bug of this server."""
    if isinstance(exc, NotImplementedError):
        return Unimplemented(f"{method} is not implemented by this server")
    return exc


class _Guard:
    """The per-method authorization check and audit record."""

    def __init__(self, method: str, authorizer: Authorizer, audit: Callable[..., None] | None) -> None:
        self.method = method
        self.authorizer = authorizer
        self.audit = audit
        self.has_dry_runs = method in DRY_RUN_METHODS

    def check(self, request: Any, context: grpc.aio.ServicerContext) -> tuple[str, str]:
        caller, resource = self.authorizer.check(self.method, request, context)
        return (str(caller) if caller is not None else ""), resource

    def record(self, context: grpc.aio.ServicerContext, request: Any, who: str, resource: str, code: str) -> None:
        # A dry run (authz.DRY_RUN_METHODS) changes nothing: no record, so a console showing the
        # plan on every change does not fill the audit log.
        if self.audit is not None and not (self.has_dry_runs and request.dry_run):
            self.audit(who=who, method=self.method, resource=resource, code=code, peer=context.peer())


def _wrap_unary(method: str, behaviour: Callable[..., Any], guard: _Guard | None = None) -> Callable[..., Any]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        who = resource = ""
        _audit_note.set("")  # this call's notes only, whatever ran in this task before
        try:
            if guard is not None:
                who, resource = guard.check(request, context)
            response = await behaviour(request, context)
        except grpc.aio.AbortError:
            _observe(method, "ABORTED_BY_HANDLER", started)
            if guard is not None:
                guard.record(context, request, who, _with_note(resource), "ABORTED_BY_HANDLER")
            raise
        except Exception as raised:
            exc = _as_error(method, raised)
            _observe(method, _code_of(exc), started)
            if guard is not None:
                if isinstance(exc, PermissionDenied):
                    who, resource = str(exc.caller), exc.resource
                guard.record(context, request, who, _with_note(resource), _code_of(exc))
            await _fail(context, method, exc)
            raise
        _observe(method, "OK", started)
        if guard is not None:
            guard.record(context, request, who, _with_note(resource), "OK")
        return response

    return wrapped


class StreamLimiter:
    """Counts the server streams each holder keeps open on this server, up to ``limit`` each.

    Three are used: watches per identity (``per="identity"``: the authorized caller; without one,
    on an ``--insecure-dev`` client port, the peer's host, so one machine's runaway client is
    bounded there too), ``Calls.Carry`` streams per identity (``per="carrier"``: keyed the same
    way, with its own limit and message) and every stream per connection (``per="connection"``:
    the peer's address and port, one HTTP/2 connection), so one connection cannot carry thousands
    of streams even for an identity allowed many (a gateway's). Per server, not replicated.
    """

    def __init__(self, limit: int, per: str = "identity") -> None:
        if per not in ("identity", "connection", "carrier"):
            raise ValueError(f"per must be 'identity', 'connection' or 'carrier', got {per!r}")
        self.limit = limit
        self.per = per
        self._open: dict[str, int] = {}

    def acquire(self, holder: str) -> None:
        held = self._open.get(holder, 0)
        if held >= self.limit:
            if self.per == "carrier":
                raise ResourceExhausted(
                    f"{holder} already holds {held} Calls.Carry streams on this server, the limit per identity; "
                    "the SDK sends this client's calls alone meanwhile (raise max_carry_streams_per_identity "
                    "for more processes sharing one identity)"
                )
            if self.per == "connection":
                raise ResourceExhausted(
                    f"this connection ({holder}) already carries {held} streams (watches), the limit per "
                    "connection; share one watch between readers, open the others on another connection "
                    "(another client or channel), or raise max_streams_per_connection"
                )
            raise ResourceExhausted(
                f"{holder} already holds {held} streams (watches) on this server, its limit; "
                "close some, share one watch between readers, or raise max_streams_per_identity"
            )
        self._open[holder] = held + 1

    def release(self, holder: str) -> None:
        held = self._open.get(holder, 0) - 1
        if held > 0:
            self._open[holder] = held
        else:
            self._open.pop(holder, None)

    def held(self, holder: str) -> int:
        return self._open.get(holder, 0)


def _peer_host(peer: str) -> str:
    """``ipv4:127.0.0.1:5000`` -> ``ipv4:127.0.0.1``: the machine, not the connection."""
    return peer.rsplit(":", 1)[0] if peer.count(":") > 1 else peer


def _wrap_stream(
    method: str,
    behaviour: Callable[..., AsyncIterator[Any]],
    guard: _Guard | None = None,
    streams: StreamLimiter | None = None,
    connection_streams: StreamLimiter | None = None,
) -> Callable[..., AsyncIterator[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started = time.perf_counter()
        held: list[tuple[StreamLimiter, str]] = []
        try:
            who = guard.check(request, context)[0] if guard is not None else ""
            if streams is not None:
                identity = who or _peer_host(context.peer())
                streams.acquire(identity)
                held.append((streams, identity))
            if connection_streams is not None:
                connection_streams.acquire(context.peer())
                held.append((connection_streams, context.peer()))
            produced = behaviour(request, context)
            if inspect.isawaitable(produced):
                # A handler that writes with ``context.write`` instead of yielding (grpcio's health
                # Watch): run it to its end; its messages go out as it writes them.
                await produced
            else:
                async for item in produced:
                    yield item
        except grpc.aio.AbortError:
            raise
        except Exception as raised:
            exc = _as_error(method, raised)
            _observe(method, _code_of(exc), started)
            await _fail(context, method, exc)
            raise
        finally:
            # Runs however the stream ends: the client cancelled, the server stopped, an error.
            for limiter, holder in held:
                limiter.release(holder)
        _observe(method, "OK", started)

    return wrapped
