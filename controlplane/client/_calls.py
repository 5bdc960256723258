"""Unary calls carried as messages on one stream per server (``Calls.Carry``; the server's side is
``controlplane/server/calls.py``, which says why: about half of a server's CPU per call).

``CallCarrier`` holds one server's stream, opened on the first call and again on the first call
after it ended. ``CarriedUnary`` is the multicallable the asyncio client uses for a unary method:
called, it returns a task that queues the request for the stream's writer (which sends whatever
is queued as one message) and waits for the answer tagged with its id. The caller sees exactly
what a unary call would give it: the response, or a ``grpc.aio.AioRpcError`` with the call's
status code, message and trailing metadata (so the error mapping and the retry rules do not
change), DEADLINE_EXCEEDED after its timeout, and cancelling the task cancels the call on the
server. Invariants:

- A call answered on no stream (the stream ended first) fails with the stream's status: a write's
  outcome is then unknown and the client retries it with its request id, as after a lost call.
- A server without the ``Calls`` service (an older release) refuses the stream before answering
  anything; the calls waiting on it, and every later one to that server, go as unary calls. So
  does a stream refused for the caller's stream limit (RESOURCE_EXHAUSTED before any answer).
- A request over ``MAX_CARRIED_BYTES`` goes as a unary call of its own, so that it does not hold
  the stream's other calls behind it (one stream's messages travel in order).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable
from typing import Any

import grpc

from controlplane.v1 import calls_pb2

CARRY_PATH = "/controlplane.v1.Calls/Carry"
#: Larger requests travel as calls of their own.
MAX_CARRIED_BYTES = 64 * 1024
#: A batch of calls stops growing past this size.
CALL_BATCH_BYTES = 1024 * 1024
_CODES = {code.value[0]: code for code in grpc.StatusCode}
#: How a server that cannot carry calls refuses the stream, before answering anything.
_REFUSALS = frozenset({grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED})


class _NotCarried(Exception):
    """The stream was refused before it carried anything: send the call on its own."""


def _error(code: grpc.StatusCode, message: str, trailing: grpc.aio.Metadata | None = None) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing or grpc.aio.Metadata(), message)


class _OpenStream:
    """One ``Carry`` call: a writer sending the queued requests and a reader settling each
    answer's waiting future; when the stream ends, every call still waiting fails with its status."""

    def __init__(self, carry: Any) -> None:
        self._call = carry()
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.ended = False
        self._answered = False
        self._outgoing: asyncio.Queue[Any] = asyncio.Queue()
        self._tasks = (asyncio.ensure_future(self._write_all()), asyncio.ensure_future(self._read_all()))

    def send(self, message: Any) -> None:
        self._outgoing.put_nowait(message)

    async def close(self) -> None:
        self._outgoing.put_nowait(None)
        self._call.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _write_all(self) -> None:
        # The server sends its headers as it takes the stream; one without the service ends the
        # call instead, and a write racing that end would turn its status into INTERNAL.
        try:
            await self._call.initial_metadata()
        except Exception:  # the call failed before its headers: the reader sees how
            return
        if self._call.done():
            return
        ended = False
        while not ended and (message := await self._outgoing.get()) is not None:
            batch, size = [message], message.ByteSize()
            while size < CALL_BATCH_BYTES and not self._outgoing.empty():  # whatever waits goes too
                more = self._outgoing.get_nowait()
                if more is None:
                    ended = True
                    break
                batch.append(more)
                size += more.ByteSize()
            try:
                await self._call.write(calls_pb2.CallBatch(calls=batch))
            except Exception:  # the stream ended (or cannot take writes): end it, the reader fails the waiting
                self._call.cancel()
                return

    async def _read_all(self) -> None:
        failure: Exception = _error(grpc.StatusCode.UNAVAILABLE, "the server ended the call stream")
        try:
            while (batch := await self._call.read()) is not grpc.aio.EOF:
                self._answered = True
                for answer in batch.answers:
                    waiter = self.waiting.get(answer.id)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(answer)
        except grpc.aio.AioRpcError as exc:
            failure = _NotCarried() if exc.code() in _REFUSALS and not self._answered else exc
        except asyncio.CancelledError:
            failure = _error(grpc.StatusCode.CANCELLED, "the client closed the call stream")
            raise
        finally:
            self.ended = True
            self._outgoing.put_nowait(None)  # the writer ends too
            for waiter in self.waiting.values():
                if not waiter.done():
                    waiter.set_exception(failure)


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
        #: The server refused to carry calls: every call goes on its own from now on.
        self.refused = False

    async def invoke(self, path: str, payload: bytes, timeout: float | None) -> bytes:
        """The serialized answer of the unary call ``path``; raises ``grpc.aio.AioRpcError`` as
        the call made on its own would, or ``_NotCarried``."""
        stream = self._stream
        if stream is None or stream.ended:
            stream = self._stream = _OpenStream(self._carry)
        call_id = next(self._ids)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        stream.waiting[call_id] = answer
        timeout_ms = max(1, math.ceil(timeout * 1000)) if timeout is not None else 0
        stream.send(calls_pb2.CallRequest(id=call_id, method=path, request=payload, timeout_ms=timeout_ms))
        try:
            async with asyncio.timeout(timeout):
                response = await answer
        except TimeoutError:
            stream.send(calls_pb2.CallRequest(id=call_id, cancel=True))
            raise _error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except asyncio.CancelledError:
            if not answer.done():
                stream.send(calls_pb2.CallRequest(id=call_id, cancel=True))
            raise
        except _NotCarried:
            self.refused = True
            raise
        finally:
            del stream.waiting[call_id]
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

    def __call__(self, request: Any, *, timeout: float | None = None) -> asyncio.Task[Any]:
        return asyncio.ensure_future(self._call(request, timeout))

    async def _call(self, request: Any, timeout: float | None) -> Any:
        if not self._carrier.refused:
            payload = self._serialize(request)
            if len(payload) <= MAX_CARRIED_BYTES:
                try:
                    return self._deserialize(await self._carrier.invoke(self._path, payload, timeout))
                except _NotCarried:
                    pass  # refused before it carried anything: this call never reached a handler
        return await self._alone(request, timeout=timeout)
