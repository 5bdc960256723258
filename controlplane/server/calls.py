"""``Calls.Carry``: unary calls of the client port as messages on one long-lived stream.

grpcio's asyncio server pays for every call of its own: a call object, metadata, a status, and
completions handed from its poller thread to the event loop. A message on an open stream costs a
read and a write: 0.11-0.15 ms of the server's CPU against 0.25-0.26 ms for a unary echo
(bench/README.md, Round 11). The asyncio SDK therefore carries its unary calls on one stream per
server (``controlplane/client/_calls.py``).

Every call on the stream is resolved through the client port's one handler
(``interceptor.ErrorsAndMetrics``), so it is checked, rate-limited, measured and audited exactly as
the same call made on its own: the handler sees a ``CallContext`` that answers with the stream's
caller (metadata, peer, certificate) and the call's own deadline, and whose ``abort`` ends this
call only. Invariants:

- A call's answer carries its request's id; answers go out in the order calls finish, one write at
  a time (grpc.aio allows no more on a stream), each write carrying every answer waiting then
  (batches, both ways: under load one message carries many calls).
- Only unary methods travel here (not ``Carry`` itself, nor a stream); anything else, a method no
  service has, or a request that does not decode is that call's error, never the stream's.
- At most ``MAX_CALLS_IN_FLIGHT`` calls run per stream: beyond that the stream is not read, and
  HTTP/2's flow control holds the sender back.
- A stopping server (``Node.begin_stop``) reads no more calls, answers those it has and ends the
  stream with UNAVAILABLE, so the stream does not hold the shutdown's grace and the client carries
  its next calls to another server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, NamedTuple

import grpc
import structlog

from controlplane.errors import Unavailable
from controlplane.server.interceptor import CARRY_PATH, ErrorsAndMetrics
from controlplane.server.node import Node
from controlplane.v1 import calls_pb2, calls_pb2_grpc

#: Calls one stream may have running at once; the SDK keeps far fewer in flight per server.
MAX_CALLS_IN_FLIGHT = 1024
#: A batch of answers stops growing past this size (one answer larger than it goes alone).
ANSWER_BATCH_BYTES = 1024 * 1024
log = structlog.get_logger("controlplane.grpc")


class _Details(NamedTuple):
    """What ``ErrorsAndMetrics.service`` reads to find a method's handler."""

    method: str
    invocation_metadata: Any


class CallContext:
    """What a unary handler sees of its call when the call travels on a ``Carry`` stream: the
    stream's caller and the call's own deadline; ``abort`` ends this call, not the stream."""

    __slots__ = ("_deadline", "_stream", "code", "details", "trailing_metadata")

    def __init__(self, stream: grpc.aio.ServicerContext, deadline: float | None) -> None:
        self._stream = stream
        self._deadline = deadline
        self.code = grpc.StatusCode.UNKNOWN
        self.details = ""
        self.trailing_metadata: Sequence[tuple[str, str]] = ()

    def invocation_metadata(self) -> Any:
        return self._stream.invocation_metadata()

    def peer(self) -> str:
        return self._stream.peer()

    def peer_identity_key(self) -> str | None:
        return self._stream.peer_identity_key()

    def peer_identities(self) -> Any:
        return self._stream.peer_identities()

    def auth_context(self) -> Any:
        return self._stream.auth_context()

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.code, self.details, self.trailing_metadata = code, details, tuple(trailing_metadata)
        raise grpc.aio.AbortError()


def _failed(call_id: int, code: grpc.StatusCode, message: str, trailing: Sequence[tuple[str, str]] = ()) -> Any:
    return calls_pb2.CallResponse(
        id=call_id,
        code=code.value[0],
        message=message,
        trailing_metadata=[calls_pb2.CallMetadata(key=key, value=str(value)) for key, value in trailing],
    )


class CallsService(calls_pb2_grpc.CallsServicer):
    def __init__(self, api: ErrorsAndMetrics, node: Node) -> None:
        self._api = api
        self._node = node

    async def Carry(self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        # Headers at once: the client writes only once it has them (a server without this service
        # ends the call instead, and a write racing that end would hide its UNIMPLEMENTED).
        await context.send_initial_metadata(())
        stream = _Stream(self._api, context)
        reading = asyncio.ensure_future(stream.read(request_iterator))
        stop_begun = self._node.until_stop_begins()
        writing = asyncio.ensure_future(stream.write_answers())
        try:
            await asyncio.wait({reading, stop_begun}, return_when=asyncio.FIRST_COMPLETED)
            reading.cancel()  # a stopping server reads no more calls (a no-op once the caller is done)
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            await stream.finish()
            await writing
        finally:
            # However the stream ends (the caller went away, the server stopped): nothing outlives it.
            stop_begun.cancel()
            reading.cancel()
            writing.cancel()
            stream.cancel_all()
        if stop_begun.done() and not stop_begun.cancelled() and stop_begun.exception() is not None:
            raise Unavailable("the server is shutting down; its calls were answered, carry the next ones elsewhere")


class _Stream:
    """One ``Carry`` stream's calls in flight and the answers waiting to be written."""

    def __init__(self, api: ErrorsAndMetrics, context: grpc.aio.ServicerContext) -> None:
        self._api = api
        self._context = context
        self._calls: dict[int, asyncio.Task[None]] = {}
        self._answers: asyncio.Queue[Any] = asyncio.Queue()
        self._room = asyncio.Event()
        self._room.set()

    async def read(self, request_iterator: AsyncIterator[Any]) -> None:
        async for batch in request_iterator:
            for message in batch.calls:
                if message.cancel:
                    task = self._calls.get(message.id)
                    if task is not None:
                        task.cancel()
                    continue
                if message.id in self._calls:
                    already = f"call id {message.id} is already in flight"
                    self._answers.put_nowait(_failed(message.id, grpc.StatusCode.INVALID_ARGUMENT, already))
                    continue
                self._start(message)
                if len(self._calls) >= MAX_CALLS_IN_FLIGHT:
                    self._room.clear()
                    await self._room.wait()

    def _start(self, message: Any) -> None:
        method = message.method
        handler = None
        if method != CARRY_PATH:
            handler = self._api.service(_Details(method, self._context.invocation_metadata()))
        if handler is None or handler.unary_unary is None:
            self._answers.put_nowait(
                _failed(message.id, grpc.StatusCode.UNIMPLEMENTED, f"{method!r} is not a unary method of this server")
            )
            return
        deadline = time.monotonic() + message.timeout_ms / 1000 if message.timeout_ms else None
        task = asyncio.ensure_future(self._run(message.id, method, handler, message.request, deadline))
        self._calls[message.id] = task
        task.add_done_callback(functools.partial(self._ended, message.id))

    def _ended(self, call_id: int, _: asyncio.Task[None]) -> None:
        self._calls.pop(call_id, None)
        if len(self._calls) < MAX_CALLS_IN_FLIGHT:
            self._room.set()

    async def _run(
        self, call_id: int, method: str, handler: grpc.RpcMethodHandler, payload: bytes, deadline: float | None
    ) -> None:
        try:
            request = handler.request_deserializer(payload)
        except Exception:  # bytes from the client: its error, never a server bug
            self._answers.put_nowait(
                _failed(call_id, grpc.StatusCode.INVALID_ARGUMENT, f"the request does not decode as {method}'s")
            )
            return
        context = CallContext(self._context, deadline)
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                response = await handler.unary_unary(request, context)
        except grpc.aio.AbortError:
            self._answers.put_nowait(_failed(call_id, context.code, context.details, context.trailing_metadata))
        except TimeoutError:
            self._answers.put_nowait(_failed(call_id, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
        except Exception:  # not reached: the handler turns every exception into an abort; never unanswered
            log.exception("carried_call_bug", method=method)
            message = f"internal error in {method}; the server log has the details"
            self._answers.put_nowait(_failed(call_id, grpc.StatusCode.INTERNAL, message))
        else:
            self._answers.put_nowait(calls_pb2.CallResponse(id=call_id, response=handler.response_serializer(response)))

    async def finish(self) -> None:
        """Wait for the calls in flight, then end the answers."""
        while self._calls:
            await asyncio.wait(set(self._calls.values()))
        self._answers.put_nowait(None)

    async def write_answers(self) -> None:
        """Every answer waiting goes out in one message (up to ``ANSWER_BATCH_BYTES``): under load
        one write carries many answers."""
        ended = False
        while not ended and (answer := await self._answers.get()) is not None:
            batch, size = [answer], answer.ByteSize()
            while size < ANSWER_BATCH_BYTES and not self._answers.empty():
                more = self._answers.get_nowait()
                if more is None:
                    ended = True
                    break
                batch.append(more)
                size += more.ByteSize()
            await self._context.write(calls_pb2.AnswerBatch(answers=batch))

    def cancel_all(self) -> None:
        for task in self._calls.values():
            task.cancel()


def _loop_time(deadline: float | None) -> float | None:
    """A ``time.monotonic`` deadline on the event loop's clock (``asyncio.timeout_at`` reads that)."""
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())
