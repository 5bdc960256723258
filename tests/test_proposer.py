"""The proposer's read barrier, in-process: which readers may share a barrier command.

A reader may join a barrier only while it is still queued. Once the barrier has left for the
leader, it may already hold a place in the log ahead of a write acknowledged since; a reader that
started after that acknowledgement and joined it would read the old value (issue 13, item 1).
The leader is played by a forwarder whose answers the test releases one at a time.
"""

from __future__ import annotations

import asyncio

import pytest

from controlplane.errors import UnknownOutcome
from controlplane.server.proposer import FORWARD_TIMEOUT_S, Proposer
from controlplane.state.machine import CommandResult
from controlplane.v1 import command_pb2


class _Follower:
    """The one thing the proposer asks of Raft here: this server is not the leader."""

    def is_leader(self) -> bool:
        return False


class _Leader:
    """Records each forwarded batch and answers it when the test says so."""

    def __init__(self) -> None:
        self.batches: list[list[command_pb2.Command]] = []
        self._answers: list[asyncio.Future[int]] = []

    async def forward(self, _address: str, commands: list[command_pb2.Command], _timeout: float) -> list[CommandResult]:
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.batches.append(commands)
        self._answers.append(answer)
        revision = await answer
        return [CommandResult(revision=revision, barrier=command_pb2.BarrierResult()) for _ in commands]

    def answer(self, batch: int, revision: int) -> None:
        self._answers[batch].set_result(revision)


def _proposer(leader: _Leader) -> Proposer:
    return Proposer(
        "n2",
        _Follower(),  # type: ignore[arg-type]
        lambda: "127.0.0.1:1",
        leader.forward,
        max_batch_commands=1000,
        max_batch_bytes=1 << 20,
        commit_timeout_s=30.0,
    )


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_readers_in_one_turn_share_one_barrier() -> None:
    leader = _Leader()
    proposer = _proposer(leader)
    readers = [asyncio.ensure_future(proposer.barrier()) for _ in range(5)]
    await _settle()
    assert [len(batch) for batch in leader.batches] == [1], "five concurrent readers cost one barrier"
    leader.answer(0, 42)
    assert await asyncio.gather(*readers) == [42] * 5


async def test_a_reader_after_the_barrier_left_gets_a_barrier_of_its_own() -> None:
    leader = _Leader()
    proposer = _proposer(leader)
    early = asyncio.ensure_future(proposer.barrier())
    await _settle()
    assert len(leader.batches) == 1, "the first barrier has left for the leader"

    # A write is acknowledged now (revision 7, after the first barrier's place in the log); then a
    # new read starts. It must not join the barrier already on its way.
    late = asyncio.ensure_future(proposer.barrier())
    await _settle()
    assert len(leader.batches) == 2, "a reader arriving after the barrier left joined it"
    assert leader.batches[1][0].HasField("barrier")

    leader.answer(0, 6)
    leader.answer(1, 8)
    assert await early == 6
    assert await late == 8


async def test_readers_queued_behind_full_slots_share_the_next_barrier() -> None:
    leader = _Leader()
    proposer = _proposer(leader)
    # Two batches fill both in-flight slots: later readers wait in the queue and may share.
    first = asyncio.ensure_future(proposer.barrier())
    await _settle()
    second = asyncio.ensure_future(proposer.barrier())
    await _settle()
    assert len(leader.batches) == 2
    queued = [asyncio.ensure_future(proposer.barrier()) for _ in range(3)]
    await _settle()
    assert len(leader.batches) == 2, "no slot is free: the third barrier waits in the queue"
    leader.answer(0, 10)
    await _settle()
    assert [len(batch) for batch in leader.batches] == [1, 1, 1], "the queued readers share one barrier"
    leader.answer(1, 11)
    leader.answer(2, 12)
    assert (await first, await second) == (10, 11)
    assert await asyncio.gather(*queued) == [12, 12, 12]


async def test_a_write_forwarded_to_a_deposed_leader_is_abandoned_when_another_leads() -> None:
    """A frozen or cut-off leader keeps its connection open and never answers: the forward must not
    wait out its timeout once this follower knows another leader (issue 13's 6 s gap)."""
    leader = _Leader()
    current = {"address": "127.0.0.1:1"}
    clients = {"127.0.0.1:1": "127.0.0.1:7101", "127.0.0.1:2": "127.0.0.1:7102"}
    proposer = Proposer(
        "n2",
        _Follower(),  # type: ignore[arg-type]
        lambda: current["address"],
        leader.forward,
        max_batch_commands=1000,
        max_batch_bytes=1 << 20,
        commit_timeout_s=30.0,
        leader_client_address=lambda: clients[current["address"]],
    )
    write = asyncio.ensure_future(proposer.propose(command_pb2.Command(request_id="w-1")))
    await _settle()
    assert len(leader.batches) == 1, "forwarded to the leader, which never answers"

    current["address"] = "127.0.0.1:2"  # an election elsewhere: this follower now follows n3
    with pytest.raises(UnknownOutcome, match=r"lost the leadership .*now: 127\.0\.0\.1:2.*same request id") as lost:
        await asyncio.wait_for(write, timeout=FORWARD_TIMEOUT_S * 10)
    assert lost.value.leader_address == "127.0.0.1:7102", "the client is told where the new leader takes writes"

    # The slot was released: the next write goes to the new leader.
    again = asyncio.ensure_future(proposer.propose(command_pb2.Command(request_id="w-1")))
    await _settle()
    assert len(leader.batches) == 2
    leader.answer(1, 9)
    assert (await again).revision == 9
    proposer.close()


async def test_a_paused_proposer_sends_nothing_until_resumed() -> None:
    """A leadership transfer pauses the proposer: commands wait and leave together on resume."""
    leader = _Leader()
    proposer = _proposer(leader)
    resume = proposer.pause()
    writes = [asyncio.ensure_future(proposer.propose(command_pb2.Command(request_id=f"w{i}"))) for i in range(3)]
    await _settle()
    assert leader.batches == [] and proposer.queued == 3 and proposer.in_flight == 0
    resume()
    resume()  # idempotent: a second call must not release another holder's pause
    await _settle()
    assert [len(batch) for batch in leader.batches] == [3]
    assert proposer.in_flight == 1
    leader.answer(0, 9)
    assert [result.revision for result in await asyncio.gather(*writes)] == [9, 9, 9]
    assert proposer.in_flight == 0


async def test_each_pause_must_be_resumed() -> None:
    leader = _Leader()
    proposer = _proposer(leader)
    first, second = proposer.pause(), proposer.pause()
    write = asyncio.ensure_future(proposer.propose(command_pb2.Command(request_id="w")))
    first()
    first()
    await _settle()
    assert leader.batches == [], "one holder still pauses it"
    second()
    await _settle()
    assert len(leader.batches) == 1
    leader.answer(0, 3)
    assert (await write).revision == 3
