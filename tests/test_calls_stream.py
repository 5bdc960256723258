"""``server/calls.py``'s stream in-process: a caller that stops reading its answers stops the
stream reading its calls once ``MAX_CALLS_IN_FLIGHT`` are held, so neither calls nor answers grow
without bound; when the answers move again, every call is answered. Every way a call ends gives
its place back. (Against real servers: tests/cluster/test_calls.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from controlplane.server import calls
from controlplane.server.interceptor import ErrorsAndMetrics
from controlplane.v1 import calls_pb2

CALLS = 3 * calls.MAX_CALLS_IN_FLIGHT


class StuckCaller:
    """The stream's grpc context: a caller whose answers go nowhere until ``unstick``."""

    def __init__(self) -> None:
        self.moving = asyncio.Event()
        self.answered: list[int] = []

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def write(self, batch: Any) -> None:
        await self.moving.wait()
        self.answered.extend(answer.id for answer in batch.answers)


async def test_a_caller_that_reads_no_answers_stops_the_stream_reading_calls() -> None:
    sent = 0

    async def calls_sent() -> AsyncIterator[Any]:
        nonlocal sent
        for call_id in range(1, CALLS + 1):
            sent += 1
            # No service has it: answered at once, with no handler to run.
            yield calls_pb2.CallBatch(calls=[calls_pb2.CallRequest(id=call_id, method="/no.Such/Method")])

    caller = StuckCaller()
    stream = calls._Stream(ErrorsAndMetrics(), caller)  # type: ignore[arg-type]
    reading = asyncio.ensure_future(stream.read(calls_sent()))
    writing = asyncio.ensure_future(stream.write_answers())

    async def until_full() -> None:
        while stream._room.is_set():
            await asyncio.sleep(0)

    await asyncio.wait_for(until_full(), 30)  # the reader now waits for a place an answer frees
    for _ in range(1000):  # and stays there: no answer is written
        await asyncio.sleep(0)
    assert sent == calls.MAX_CALLS_IN_FLIGHT and not reading.done()

    caller.moving.set()
    await asyncio.wait_for(reading, 30)
    await stream.finish()
    await asyncio.wait_for(writing, 30)
    assert sorted(caller.answered) == list(range(1, CALLS + 1))


class FreeCaller:
    """The stream's grpc context for a caller that reads every answer at once."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, int]] = []

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    async def write(self, batch: Any) -> None:
        self.answers.extend((answer.id, answer.code) for answer in batch.answers)


def _api(handlers: dict[str, Any]) -> ErrorsAndMetrics:
    """The client port's handler (no authorizer) serving ``handlers`` as service ``t.S``, bytes in and out."""
    api = ErrorsAndMetrics()
    methods = {
        name: grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=lambda raw: raw, response_serializer=lambda raw: raw
        )
        for name, handler in handlers.items()
    }
    api.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", methods),))
    return api


async def test_every_way_a_call_ends_gives_its_place_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Answered, past its deadline, a duplicate id, an answer too large, cancelled by its caller,
    cancelled from inside its handler: each ends with the place it took given back, and with the
    answer its caller waits for (none for a call its caller cancelled)."""
    monkeypatch.setattr(calls, "MAX_ANSWER_BYTES", 1000)
    never = asyncio.Event()

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def wait(request: bytes, context: Any) -> bytes:
        await never.wait()
        return b""

    async def big(request: bytes, context: Any) -> bytes:
        return b"x" * 2000

    async def cancelled_inside(request: bytes, context: Any) -> bytes:
        raise asyncio.CancelledError  # as a handler awaiting something cancelled would

    def call(call_id: int, method: str, timeout_ms: int = 0) -> Any:
        return calls_pb2.CallRequest(id=call_id, method=f"/t.S/{method}", request=b"r", timeout_ms=timeout_ms)

    async def sent() -> AsyncIterator[Any]:
        yield calls_pb2.CallBatch(
            calls=[
                call(1, "Echo"),
                call(2, "Wait", timeout_ms=50),
                call(3, "Wait"),
                call(3, "Echo"),  # the same id while 3 runs
                call(4, "Big"),
                call(5, "CancelledInside"),
                call(6, "Wait"),
            ]
        )
        cancels = [calls_pb2.CallRequest(id=3, cancel=True), calls_pb2.CallRequest(id=6, cancel=True)]
        yield calls_pb2.CallBatch(calls=cancels)

    caller = FreeCaller()
    api = _api({"Echo": echo, "Wait": wait, "Big": big, "CancelledInside": cancelled_inside})
    stream = calls._Stream(api, caller)  # type: ignore[arg-type]
    writing = asyncio.ensure_future(stream.write_answers())
    await asyncio.wait_for(stream.read(sent()), 30)
    await asyncio.wait_for(stream.finish(), 30)  # waits for 2's deadline; 3 and 6 were cancelled
    await asyncio.wait_for(writing, 30)
    by_number = {code.value[0]: code for code in grpc.StatusCode}
    codes = {call_id: by_number[number] for call_id, number in caller.answers}
    assert codes == {
        1: grpc.StatusCode.OK,
        2: grpc.StatusCode.DEADLINE_EXCEEDED,
        3: grpc.StatusCode.INVALID_ARGUMENT,  # the duplicate's answer; the cancelled original has none
        4: grpc.StatusCode.RESOURCE_EXHAUSTED,
        5: grpc.StatusCode.UNAVAILABLE,
    }
    assert len(caller.answers) == 5
    assert stream._held == 0
