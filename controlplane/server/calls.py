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
- A call holds one of the stream's ``MAX_CALLS_IN_FLIGHT`` places from when it is read until its
  answer is written: beyond that the stream is not read, and HTTP/2's flow control holds the
  sender back, so a caller that reads no answers grows neither the calls nor the answers.
- An answer too large for one message is that call's RESOURCE_EXHAUSTED, never the stream's end.
- A stopping server (``Node.begin_stop``) reads no more calls, answers those it has and ends the
  stream with UNAVAILABLE, so the stream does not hold the shutdown's grace and the client carries
  its next calls to another server.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, NamedTuple

import grpc
import structlog

from controlplane.errors import InvalidArgument, Shutdown
from controlplane.grpc_options import MESSAGE_LIMIT_BYTES
from controlplane.methods import CARRY_ACCEPTED, CARRY_PATH
from controlplane.server.interceptor import ErrorsAndMetrics
from controlplane.server.node import Node
from controlplane.v1 import calls_pb2, calls_pb2_grpc

#: Calls one stream may have running at once; the SDK keeps far fewer in flight per server.
MAX_CALLS_IN_FLIGHT = 1024
#: A batch of answers stops growing past this size (one answer larger than it goes alone).
ANSWER_BATCH_BYTES = 1024 * 1024
#: An answer over this is that call's RESOURCE_EXHAUSTED (a message may hold MESSAGE_LIMIT_BYTES,
#: less the batch's framing), not a failure of the stream and of every call on it.
MAX_ANSWER_BYTES = MESSAGE_LIMIT_BYTES - 1024
log = structlog.get_logger("controlplane.grpc")
_NOTHING_YET = object()
_STOPPING = "the server is shutting down; its calls read were answered, carry the next ones elsewhere"


class _Details(NamedTuple):
    """What ``ErrorsAndMetrics.service`` reads to find a method's handler."""

    method: str
    invocation_metadata: Any


class CallContext:
    """What a unary handler sees of its call when the call travels on a ``Carry`` stream: the
    stream's caller and the call's own deadline; ``abort`` ends this call, not the stream. Also
    what generated servicer defaults call (``set_code``, ``set_details``), so they answer as they
    would alone."""

    __slots__ = ("_deadline", "_stream", "code", "details", "trailing_metadata")

    def __init__(self, stream: grpc.aio.ServicerContext, deadline: float | None) -> None:
        self._stream = stream
        self._deadline = deadline
        self.code: grpc.StatusCode | None = None
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

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, str]]) -> None:
        self.trailing_metadata = tuple(trailing_metadata)

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
        if self._node.stopping:  # before the headers: the client has written nothing, none ran
            raise Shutdown(_STOPPING)
        # Headers at once, with the mark the client writes only after: a refused stream ends
        # before any headers, and a write racing that end would hide why it was refused.
        await context.send_initial_metadata((CARRY_ACCEPTED,))
        stream = _Stream(self._api, context)
        reading = asyncio.ensure_future(stream.read(request_iterator))
        writing = asyncio.ensure_future(stream.write_answers())
        stop_begun = self._node.until_stop_begins()
        try:
            await asyncio.wait({reading, writing, stop_begun}, return_when=asyncio.FIRST_COMPLETED)
            if writing.done():  # the caller takes no more answers: nothing more can reach it
                return
            reading.cancel()  # a stopping server reads no more calls (a no-op once the caller is done)
            await asyncio.wait({reading})  # not `await reading`: that would swallow our own cancellation
            if not reading.cancelled() and reading.exception() is not None:
                log.info("carried_stream_unreadable", error=repr(reading.exception()), peer=context.peer())
                raise InvalidArgument("the call stream's messages do not decode as CallBatch")
            await stream.finish()
            await writing
        finally:
            # However the stream ends (the caller went away, the server stopped): nothing outlives
            # it, and no task's exception is left unretrieved.
            stream.closing = True
            for task in (stop_begun, reading, writing):
                task.cancel()
            stream.cancel_all()
            for task in (stop_begun, reading, writing):
                if task.done() and not task.cancelled():
                    task.exception()
        if stop_begun.done() and not stop_begun.cancelled():
            # Every call read was answered; the ones not read never ran: Shutdown tells the client
            # so (they are not of unknown outcome), and to carry them to another server.
            raise Shutdown(_STOPPING)


class _Stream:
    """One ``Carry`` stream's calls in flight and the answers waiting to be written.

    A call holds one of the stream's ``MAX_CALLS_IN_FLIGHT`` places from the moment it is read
    until its answer is written (or it is cancelled): a caller that stops reading its answers stops
    this stream reading its calls, so neither running calls nor queued answers grow without bound.
    """

    def __init__(self, api: ErrorsAndMetrics, context: grpc.aio.ServicerContext) -> None:
        self._api = api
        self._context = context
        self._calls: dict[int, asyncio.Task[None]] = {}
        self._answers: asyncio.Queue[Any] = asyncio.Queue()
        self._held = 0  # places taken: calls read whose answer is not written yet
        self._room = asyncio.Event()
        self._room.set()
        self._cancel_asked: set[int] = set()  # ids the caller cancelled: answered by no one
        #: The stream is ending: its calls are cancelled with it, and answered by no one.
        self.closing = False

    def _take_place(self) -> None:
        self._held += 1
        if self._held >= MAX_CALLS_IN_FLIGHT:
            self._room.clear()

    def _give_back(self, places: int) -> None:
        self._held -= places
        if self._held < MAX_CALLS_IN_FLIGHT:
            self._room.set()

    def _answer(self, answer: Any) -> None:
        self._answers.put_nowait(answer)

    async def read(self, request_iterator: AsyncIterator[Any]) -> None:
        async for batch in request_iterator:
            for message in batch.calls:
                if message.cancel:
                    task = self._calls.get(message.id)
                    if task is not None:
                        self._cancel_asked.add(message.id)
                        task.cancel()
                    continue
                self._take_place()
                if message.id in self._calls:
                    already = f"call id {message.id} is already in flight"
                    self._answer(_failed(message.id, grpc.StatusCode.INVALID_ARGUMENT, already))
                else:
                    self._start(message)
                await self._room.wait()

    def _start(self, message: Any) -> None:
        method = message.method
        handler = None
        if method != CARRY_PATH:
            handler = self._api.service(_Details(method, self._context.invocation_metadata()))
        if handler is None or handler.unary_unary is None:
            unary = f"{method!r} is not a unary method of this server"
            self._answer(_failed(message.id, grpc.StatusCode.UNIMPLEMENTED, unary))
            return
        deadline = time.monotonic() + message.timeout_ms / 1000 if message.timeout_ms else None
        task = asyncio.ensure_future(self._run(message.id, method, handler, message.request, deadline))
        self._calls[message.id] = task
        task.add_done_callback(functools.partial(self._ended, message.id))

    def _ended(self, call_id: int, task: asyncio.Task[None]) -> None:
        self._calls.pop(call_id, None)
        if not task.cancelled():
            return  # it queued its answer, which gives its place back once written
        if call_id in self._cancel_asked or self.closing:
            self._cancel_asked.discard(call_id)
            self._give_back(1)  # nobody waits for an answer
        else:  # cancelled from inside (a handler awaiting something cancelled): the caller still waits
            self._answer(_failed(call_id, grpc.StatusCode.UNAVAILABLE, "the call was cancelled on the server; retry"))

    async def _run(
        self, call_id: int, method: str, handler: grpc.RpcMethodHandler, payload: bytes, deadline: float | None
    ) -> None:
        try:
            request = handler.request_deserializer(payload)
        except Exception:  # bytes from the client: its error, never a server bug
            undecodable = f"the request does not decode as {method}'s"
            self._answer(_failed(call_id, grpc.StatusCode.INVALID_ARGUMENT, undecodable))
            return
        context = CallContext(self._context, deadline)
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                response = await handler.unary_unary(request, context)
            if context.code is not None and context.code != grpc.StatusCode.OK:  # set_code, then returned
                answer = _failed(call_id, context.code, context.details, context.trailing_metadata)
            else:
                answer = calls_pb2.CallResponse(id=call_id, response=handler.response_serializer(response))
        except grpc.aio.AbortError:
            answer = _failed(
                call_id, context.code or grpc.StatusCode.UNKNOWN, context.details, context.trailing_metadata
            )
        except TimeoutError:
            answer = _failed(call_id, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        except Exception:  # not reached: the handler turns every exception into an abort; never unanswered
            log.exception("carried_call_bug", method=method)
            answer = _failed(call_id, grpc.StatusCode.INTERNAL, f"internal error in {method}; the server log has it")
        if answer.ByteSize() > MAX_ANSWER_BYTES:
            too_large = f"the answer is {answer.ByteSize()} bytes, over the {MAX_ANSWER_BYTES} a message may hold"
            answer = _failed(call_id, grpc.StatusCode.RESOURCE_EXHAUSTED, too_large)
        self._answer(answer)

    async def finish(self) -> None:
        """Wait for the calls in flight, then end the answers."""
        while self._calls:
            await asyncio.wait(set(self._calls.values()))
        self._answer(None)

    async def write_answers(self) -> None:
        """Every answer waiting goes out in one message (up to ``ANSWER_BATCH_BYTES``, one answer
        larger than that alone): under load one write carries many answers. Ends at the None
        ``finish`` queues."""
        answer = await self._answers.get()
        while answer is not None:
            batch, size = [answer], answer.ByteSize()
            answer = _NOTHING_YET
            while not self._answers.empty():
                more = self._answers.get_nowait()
                if more is None or size + more.ByteSize() > ANSWER_BATCH_BYTES:
                    answer = more  # the end, or the next batch's first
                    break
                batch.append(more)
                size += more.ByteSize()
            try:
                await self._context.write(calls_pb2.AnswerBatch(answers=batch))
            except Exception:  # the caller went away: it takes no more answers (Carry ends the stream)
                return
            self._give_back(len(batch))
            if answer is _NOTHING_YET:
                answer = await self._answers.get()

    def cancel_all(self) -> None:
        for task in self._calls.values():
            task.cancel()


def _loop_time(deadline: float | None) -> float | None:
    """A ``time.monotonic`` deadline on the event loop's clock (``asyncio.timeout_at`` reads that)."""
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())
