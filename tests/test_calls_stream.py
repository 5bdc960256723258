"""``server/calls.py``'s stream in-process: a caller that stops reading its answers stops the
stream reading its calls once ``MAX_CALLS_IN_FLIGHT`` are held, so neither calls nor answers grow
without bound; when the answers move again, every call is answered. (Against real servers:
tests/cluster/test_calls.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

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
