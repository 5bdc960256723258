"""Unary calls carried as messages on one stream per server (``Calls.Carry``; the server's side is
``controlplane/server/calls.py``, which says why: about half of a server's CPU per call, less
under load, when calls travel in batches).

``CallCarrier`` holds one server's stream, opened on the first call and again on the first call
after it ended. ``CarriedUnary`` is the multicallable the asyncio client uses for a unary method:
called, it returns a task that queues the request for the stream's writer (which sends whatever
is queued as one message) and waits for the answer tagged with its id. The caller sees exactly
what a unary call would give it: the response, or a ``grpc.aio.AioRpcError`` with the call's
status code, message and trailing metadata (so the error mapping and the retry rules do not
change), DEADLINE_EXCEEDED after its timeout, and cancelling the task cancels the call on the
server. Invariants:

- A call the stream's end leaves unanswered fails UNAVAILABLE: as ``UnknownOutcome`` when it was
  sent (the server may have run it; the client retries a write with its request id), plainly when
  it was not. Whatever status ended the stream: a write racing a stopping server's end shows as
  INTERNAL or CANCELLED, which must not reach the caller as the server's answer.
- A stream refused before the client wrote anything (``_REFUSALS``: an older release without the
  service, a caller without a usable identity, its stream limit) reached no handler: its calls,
  and the carrier's later ones (for ``RETRY_REFUSED_AFTER_S`` after a limit,
  ``RETRY_UNCARRIED_AFTER_S`` otherwise), go as unary calls. The server marks a stream it takes in
  its headers (``methods.CARRY_ACCEPTED``), and the client writes nothing before that mark, so a refusal is
  never mistaken for a failure of calls that may have run.
- A request over ``MAX_CARRIED_BYTES`` goes as a unary call of its own, so that it does not hold
  the stream's other calls behind it (one stream's messages travel in order).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import grpc

from controlplane.errors import ERROR_KIND_KEY
from controlplane.methods import CARRY_ACCEPTED, CARRY_PATH
from controlplane.v1 import calls_pb2

#: Larger requests travel as calls of their own.
MAX_CARRIED_BYTES = 64 * 1024
#: A batch of calls stops growing past this size.
CALL_BATCH_BYTES = 1024 * 1024
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_NOTHING_YET = object()
#: How a server refuses a stream it will not carry calls on (before the client wrote anything):
#: an older release without the service, the caller's stream limit, a caller without credentials.
_REFUSALS = frozenset(
    {
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)
#: After a refusal for a limit, calls go alone for this long, then a stream is tried again.
RETRY_REFUSED_AFTER_S = 30.0
#: After any other refusal (an older release, no usable identity): a server may be upgraded in place.
RETRY_UNCARRIED_AFTER_S = 600.0
#: What a call's deadline can say on the wire (uint32 milliseconds).
_MAX_TIMEOUT_MS = 2**32 - 1


class _NotCarried(Exception):
    """The stream was refused before the client wrote anything: send the call on its own."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code.name)
        self.code = code


def _error(code: grpc.StatusCode, message: str, trailing: grpc.aio.Metadata | None = None) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing or grpc.aio.Metadata(), message)


class _Pending:
    """A call queued for the stream: what the writer sends, and the future its caller awaits."""

    __slots__ = ("answer", "deadline", "path", "payload", "sent")

    def __init__(self, path: str, payload: bytes, deadline: float | None) -> None:
        self.path = path
        self.payload = payload
        self.deadline = deadline  # time.monotonic()
        self.answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent = False  # handed to the stream: the server may have run it


class _OpenStream:
    """One ``Carry`` call: a writer sending the queued requests and a reader settling each
    answer's waiting future; when the stream ends, every call still waiting fails."""

    def __init__(self, carry: Any) -> None:
        self._call = carry()
        self.waiting: dict[int, _Pending] = {}
        self.ended = False
        self._accepted = False  # the server took the stream (its headers carry CARRY_ACCEPTED)
        self._closing = False
        self._outgoing: asyncio.Queue[Any] = asyncio.Queue()
        self._tasks = (asyncio.ensure_future(self._write_all()), asyncio.ensure_future(self._read_all()))

    def send(self, message: Any) -> None:
        """Queue a call id (its ``_Pending`` is in ``waiting``) or a cancel request."""
        self._outgoing.put_nowait(message)

    async def close(self) -> None:
        self._closing = True
        self._outgoing.put_nowait(None)
        self._call.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _request(self, item: Any) -> Any:
        """The wire request for a queued item, or None for a call its caller no longer awaits."""
        if isinstance(item, calls_pb2.CallRequest):  # a cancel
            return item
        pending = self.waiting.get(item)
        if pending is None or pending.answer.done():
            return None
        timeout_ms = 0
        if pending.deadline is not None:  # what is left of it now, not when it was queued
            left_ms = math.ceil((pending.deadline - time.monotonic()) * 1000)
            timeout_ms = min(max(1, left_ms), _MAX_TIMEOUT_MS)
        pending.sent = True
        return calls_pb2.CallRequest(id=item, method=pending.path, request=pending.payload, timeout_ms=timeout_ms)

    async def _write_all(self) -> None:
        # A server that takes the stream says so in its headers before anything else; one that
        # refuses it ends the call without them (its empty headers can come before its status),
        # and a write racing that end would hide why. Nothing is written unless it was taken.
        try:
            headers = await self._call.initial_metadata()
        except Exception:  # the call failed before its headers: the reader sees how
            return
        if CARRY_ACCEPTED not in tuple(headers or ()):
            return
        self._accepted = True
        item = await self._outgoing.get()
        while item is not None:
            batch: list[Any] = []
            size = 0
            while True:
                request = self._request(item)
                if request is not None:
                    batch.append(request)
                    size += request.ByteSize()
                if size >= CALL_BATCH_BYTES or self._outgoing.empty():
                    item = _NOTHING_YET
                    break
                item = self._outgoing.get_nowait()
                if item is None:
                    break
            if batch:
                try:
                    await self._call.write(calls_pb2.CallBatch(calls=batch))
                except Exception:  # the stream ended (or takes no writes): end it, the reader fails the waiting
                    self._call.cancel()
                    return
            if item is _NOTHING_YET:
                item = await self._outgoing.get()

    async def _read_all(self) -> None:
        code, message = grpc.StatusCode.UNAVAILABLE, "the server ended the call stream"
        shutdown = False
        try:
            while (batch := await self._call.read()) is not grpc.aio.EOF:
                for answer in batch.answers:
                    pending = self.waiting.get(answer.id)
                    if pending is not None and not pending.answer.done():
                        pending.answer.set_result(answer)
        except grpc.aio.AioRpcError as exc:
            code, message = exc.code(), exc.details() or exc.code().name
            shutdown = (ERROR_KIND_KEY, "Shutdown") in tuple(exc.trailing_metadata() or ())
        except asyncio.CancelledError:
            code, message = grpc.StatusCode.CANCELLED, "the client closed the call stream"
            raise
        finally:
            self.ended = True
            self._outgoing.put_nowait(None)  # the writer ends too
            refused = code in _REFUSALS and not self._accepted
            for pending in self.waiting.values():
                if not pending.answer.done():
                    pending.answer.set_exception(self._failure(pending, code, message, refused, shutdown))

    def _failure(
        self, pending: _Pending, code: grpc.StatusCode, message: str, refused: bool, shutdown: bool
    ) -> Exception:
        """What a call the stream's end left unanswered raises (a fresh exception for each)."""
        if refused:
            return _NotCarried(code)
        if self._closing:
            return _error(grpc.StatusCode.CANCELLED, "the client closed the call stream")
        # The stream, not the call, failed (a server stopping or gone, a connection lost; a write
        # racing the server's end shows as INTERNAL or CANCELLED): the call may be retried. One
        # the server was sent may have run: its outcome is unknown (retried with its request id),
        # unless the server said it stopped, having answered every call it read.
        why = f"the call stream to the server ended ({code.name}: {message})"
        kind = "Shutdown" if shutdown else "UnknownOutcome" if pending.sent else ""
        return _error(grpc.StatusCode.UNAVAILABLE, why, grpc.aio.Metadata((ERROR_KIND_KEY, kind)) if kind else None)


class CallCarrier:
    """One server's ``Carry`` stream, on its channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._carry = channel.stream_stream(
            CARRY_PATH,
            request_serializer=calls_pb2.CallBatch.SerializeToString,
            response_deserializer=calls_pb2.AnswerBatch.FromString,
        )
        self._stream: _OpenStream | None = None
        self._ids = itertools.count(1)
        self._refused_until = 0.0

    @property
    def refused(self) -> bool:
        """The server refused to carry this client's calls: they go alone for a while (30 s after
        a stream limit, 10 minutes after any other refusal)."""
        return time.monotonic() < self._refused_until

    async def invoke(self, path: str, payload: bytes, timeout: float | None) -> bytes:
        """The serialized answer of the unary call ``path``; raises ``grpc.aio.AioRpcError`` as
        the call made on its own would, or ``_NotCarried``."""
        stream = self._stream
        if stream is None or stream.ended:
            stream = self._stream = _OpenStream(self._carry)
        call_id = next(self._ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = stream.waiting[call_id] = _Pending(path, payload, deadline)
        stream.send(call_id)
        try:
            async with asyncio.timeout(timeout):
                response = await pending.answer
        except TimeoutError:
            stream.send(calls_pb2.CallRequest(id=call_id, cancel=True))
            raise _error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except asyncio.CancelledError:
            if not pending.answer.done():
                stream.send(calls_pb2.CallRequest(id=call_id, cancel=True))
            raise
        except _NotCarried as refusal:
            limited = refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            self._refused_until = time.monotonic() + (RETRY_REFUSED_AFTER_S if limited else RETRY_UNCARRIED_AFTER_S)
            raise
        finally:
            del stream.waiting[call_id]
            if pending.answer.done() and not pending.answer.cancelled():
                pending.answer.exception()  # settled by the reader as this call gave up: seen
        if response.code:
            trailing = grpc.aio.Metadata(*((item.key, item.value) for item in response.trailing_metadata))
            raise _error(_CODES.get(response.code, grpc.StatusCode.UNKNOWN), response.message, trailing)
        return bytes(response.response)

    async def close(self) -> None:
        if self._stream is not None:
            await self._stream.close()
            self._stream = None


class CarriedUnary:
    """The multicallable of one unary method on a carrier (what ``channel.unary_unary`` would
    return, for the calls the asyncio client makes): ``method(request, timeout=...)`` is a task."""

    def __init__(
        self,
        carrier: CallCarrier,
        path: str,
        serialize: Callable[[Any], bytes],
        deserialize: Callable[[bytes], Any],
        alone: Callable[..., Any],
    ) -> None:
        self._carrier = carrier
        self._path = path
        self._serialize = serialize
        self._deserialize = deserialize
        self._alone = alone  # the same method as a call of its own

    @classmethod
    def on(
        cls,
        carrier: CallCarrier,
        channel: grpc.aio.Channel,
        path: str,
        serialize: Callable[[Any], bytes],
        deserialize: Callable[[bytes], Any],
    ) -> CarriedUnary:
        """Method ``path`` carried on ``carrier``, with ``channel``'s own unary call to fall back on."""
        alone = channel.unary_unary(path, request_serializer=serialize, response_deserializer=deserialize)
        return cls(carrier, path, serialize, deserialize, alone)

    def __call__(self, request: Any, *, timeout: float | None = None) -> asyncio.Task[Any]:
        return asyncio.ensure_future(self._call(request, timeout))

    @property
    def alone(self) -> Callable[..., Any]:
        """The method as a call of its own (a liveness probe must not wait behind the stream)."""
        return self._alone

    async def _call(self, request: Any, timeout: float | None) -> Any:
        if not self._carrier.refused:
            payload = self._serialize(request)
            if len(payload) <= MAX_CARRIED_BYTES:
                started = time.monotonic()
                try:
                    return self._deserialize(await self._carrier.invoke(self._path, payload, timeout))
                except _NotCarried:  # refused before the client wrote anything: no handler saw it
                    if timeout is not None:
                        timeout = max(0.0, timeout - (time.monotonic() - started))
        return await self._alone(request, timeout=timeout)
