"""The agent's renewal schedule against a leader that expires a lease the moment it is due (issue 13
item 2: every steady agent of make bench lost its lease at once at the end of the churn, with no
election).

In-process and deterministic: the agent runs on an event loop whose clock jumps to the next timer
instead of sleeping, against a fake leader with the server's lease rule (a renewal processed a TTL
or more after the previous one finds the lease expired). The faults are the two that cost leases:
a heartbeat path that stalls (a busy leader answering late while Raft kept beating) and the agent's
own event loop blocked for seconds at a time (the bench's end-of-churn check). No network, no wall
clock: the same on a quiet machine and a busy one, and a minute of agent life takes milliseconds.
"""

from __future__ import annotations

import asyncio
import random
import selectors
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import pytest

from controlplane import agent as agent_module
from controlplane.agent import Agent
from controlplane.client import AsyncClient, DeadlineExceeded, FailedPrecondition, NodeState, NotFound, Unavailable

T = TypeVar("T")

TTL_S = 10.0
INTERVAL_S = TTL_S / 3
LATENCY_S = 0.05


class _JumpingSelector(selectors.DefaultSelector):
    """Never waits: when nothing is ready it moves the clock to where the loop wanted to wake up."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready:
            if timeout is None:
                raise RuntimeError("nothing is scheduled and nothing can happen: the test deadlocked")
            self.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: timers fire in order, instantly, at their own virtual time."""

    def __init__(self) -> None:
        self._clock = _JumpingSelector()
        super().__init__(self._clock)

    def time(self) -> float:
        return self._clock.now

    def block(self, seconds: float) -> None:
        """What a synchronous stretch of work in a callback does: time passes and nothing else runs."""
        self._clock.now += seconds


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


@dataclass
class FakeLeader:
    """``client.membership`` as an agent sees it, with the leader's lease rule.

    A request is processed ``LATENCY_S`` after it is sent, or, while the heartbeat path is stalled,
    ``LATENCY_S`` after the stall ends. A request still unprocessed when its caller's timeout runs
    out is cancelled unprocessed (gRPC drops a call whose deadline passed). Processing a renewal a TTL
    or more after the last one finds the lease expired: the leader's housekeeper may end it at that
    moment, so a holder must renew before it. The leader is another process: a request is processed
    at its own time even when the agent's event loop is blocked and reads the answer late.
    """

    ttl_s: float = TTL_S
    #: Node id -> virtual time its lease was last renewed (absent: dead or never registered).
    renewed: dict[str, float] = field(default_factory=dict)
    expired: list[tuple[str, float]] = field(default_factory=list)
    #: (start, end) of the stall, once it began.
    stall: tuple[float, float] | None = None
    #: The stall starts with the first heartbeat sent at or after ``stall_from``, for ``stall_s``.
    stall_from: float | None = None
    stall_s: float = 0.0
    #: Heartbeats processed in [start, end) are refused at once (a non-retryable answer).
    refuse: tuple[float, float] | None = None
    #: Node id -> the instance that registered it (the server's rule: another instance is refused
    #: while the node lives, issue 17).
    holder: dict[str, str] = field(default_factory=dict)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def _processed(self, timeout: float | None) -> float:
        """Wait until the request is processed (its virtual time), or raise DeadlineExceeded."""
        sent = self._now()
        start = sent
        if self.stall is not None and self.stall[0] <= sent < self.stall[1]:
            start = self.stall[1]
        processed = start + LATENCY_S
        if timeout is not None and processed - sent > timeout:
            await asyncio.sleep(timeout)
            raise DeadlineExceeded(f"no answer within the {timeout:g} s deadline")
        await asyncio.sleep(processed - sent)
        return processed

    def _alive(self, node_id: str, now: float) -> bool:
        renewed = self.renewed.get(node_id)
        if renewed is not None and now >= renewed + self.ttl_s:
            del self.renewed[node_id]
            self.expired.append((node_id, now))
        return node_id in self.renewed

    async def register_node(self, node_id: str, *, instance_id: str = "", **_: Any) -> Any:
        now = await self._processed(None)
        if self._alive(node_id, now) and self.holder.get(node_id, instance_id) != instance_id:
            raise FailedPrecondition(f"node id {node_id} is in use by another running agent")
        self.renewed[node_id] = now
        self.holder[node_id] = instance_id
        return SimpleNamespace(node=SimpleNamespace(state=NodeState.JOINING))

    async def heartbeat(
        self, node_id: str, *, activity: str = "", instance_id: str = "", timeout: float | None = None
    ) -> NodeState:
        now = self._now()
        if self.stall is None and self.stall_from is not None and now >= self.stall_from:
            self.stall = (now, now + self.stall_s)
        now = await self._processed(timeout)
        if self.refuse is not None and self.refuse[0] <= now < self.refuse[1]:
            raise Unavailable("refused")
        if not self._alive(node_id, now):
            raise NotFound(f"node {node_id} is dead; register it again")
        if self.holder.get(node_id, instance_id) != instance_id:
            raise FailedPrecondition(f"node {node_id} was registered again by another agent")
        self.renewed[node_id] = now
        return NodeState.ACTIVE


async def live_for(leader: FakeLeader, seconds: float, agents: int = 1) -> list[Agent]:
    """Start agents against ``leader``, let them run ``seconds`` of virtual time, stop them."""
    fleet = [
        Agent(cast(AsyncClient, SimpleNamespace(membership=leader)), f"agent-{i}", ttl_s=leader.ttl_s)
        for i in range(agents)
    ]
    for agent in fleet:
        await agent.start()
    await asyncio.sleep(seconds)  # virtual time: the agents' lives, not a wait for a condition
    for agent in fleet:
        await agent.stop(deregister=False)
    return fleet


@pytest.fixture(autouse=True)
def _seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    # The agents' jitter: the same schedule on every run.
    monkeypatch.setattr(agent_module, "random", random.Random(13))


@pytest.mark.parametrize(
    "stall_s", [1.2 * INTERVAL_S, 1.5 * INTERVAL_S, 1.9 * INTERVAL_S], ids=["1.2-intervals", "1.5", "1.9"]
)
def test_a_heartbeat_slower_than_a_third_of_the_ttl_costs_no_lease(stall_s: float) -> None:
    # The heartbeat path stalls from the moment one of the agent's heartbeats is sent: that heartbeat
    # is answered only after more than a third of the TTL. The schedule this replaced abandoned it
    # after a third of the TTL and waited another third, so its next renewal came a whole TTL after
    # the last one and found the lease expired.
    leader = FakeLeader(stall_from=30.0, stall_s=stall_s)

    async def main() -> list[Agent]:
        return await live_for(leader, 60.0)

    [agent] = run_virtual(main)
    assert leader.stall is not None, "the stall never began"
    assert leader.expired == []
    assert (agent.stats.lease_lost, agent.stats.registrations) == (0, 1)
    assert agent.state is NodeState.ACTIVE


def test_a_fleet_caught_by_one_stall_keeps_every_lease() -> None:
    # Many agents at every phase of the interval, one stall of 1.5 intervals: each agent's heartbeat
    # in flight is slow at a different point of its own schedule.
    leader = FakeLeader(stall_from=30.0, stall_s=1.5 * INTERVAL_S)

    async def main() -> list[Agent]:
        return await live_for(leader, 60.0, agents=50)

    fleet = run_virtual(main)
    assert leader.expired == []
    assert sum(agent.stats.lease_lost for agent in fleet) == 0


def test_a_refused_heartbeat_is_retried_before_the_lease_runs_out() -> None:
    # Every heartbeat refused at once for 1.3 intervals from 30 s: retried every half interval, the
    # agent renews soon after the refusals stop. (Waiting a whole interval after each failure let
    # the lease run out.)
    leader = FakeLeader()

    async def main() -> list[Agent]:
        async def refuse_soon() -> None:
            await asyncio.sleep(30.0)
            leader.refuse = (30.0, 30.0 + 1.3 * INTERVAL_S)

        refusing = asyncio.ensure_future(refuse_soon())
        fleet = await live_for(leader, 60.0, agents=10)
        await refusing
        return fleet

    fleet = run_virtual(main)
    assert leader.expired == []
    assert sum(agent.stats.lease_lost for agent in fleet) == 0
    failures = [agent.stats.failures for agent in fleet]
    assert all(failures), failures  # every agent met the refusals
    assert max(failures) <= 3, failures  # retried every half interval, not in a tight loop


def test_a_lease_lost_in_a_long_outage_is_registered_again_once() -> None:
    # A stall longer than the TTL: the lease is gone whatever the agent does. It counts one loss,
    # registers once more and goes on renewing the new lease.
    leader = FakeLeader(stall_from=30.0, stall_s=1.5 * TTL_S)

    async def main() -> list[Agent]:
        return await live_for(leader, 90.0)

    [agent] = run_virtual(main)
    assert [node for node, _ in leader.expired] == ["agent-0"]
    assert (agent.stats.lease_lost, agent.stats.registrations) == (1, 2)
    assert agent.state is NodeState.ACTIVE and "agent-0" in leader.renewed


def test_an_agent_whose_own_loop_is_blocked_for_seconds_keeps_its_lease() -> None:
    # The end of make bench's membership_churn: its consistency check turned three servers' lists of
    # ~4,000 nodes into SDK objects in the process that ran the 1,000 agents, blocking their event loop
    # for about 4.6 s at a time (measured on the busy 2-core machine), with short network waits in
    # between. Every agent's heartbeat went out in the same short window, and the burst's answers came
    # back during the next blocked stretch. The schedule this replaced waited an interval after
    # *reading* an answer, so each agent made one heartbeat per two stretches: more than a TTL between
    # renewals, for every agent at once. Here: stretches of 0.55 TTL, windows shorter than a round trip.
    leader = FakeLeader()

    async def main() -> list[Agent]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)

        async def busy_process() -> None:
            await asyncio.sleep(30.0)
            for _ in range(4):
                loop.block(0.55 * TTL_S)
                await asyncio.sleep(LATENCY_S / 2)  # the loop runs again, briefly, between two stretches

        blocking = asyncio.ensure_future(busy_process())
        fleet = await live_for(leader, 60.0, agents=20)
        await blocking
        return fleet

    fleet = run_virtual(main)
    assert leader.expired == []
    assert sum(agent.stats.lease_lost for agent in fleet) == 0


def test_a_second_instance_is_refused_and_an_agent_whose_node_was_taken_over_stops_without_deregistering() -> None:
    """Issue 17: a second agent with the same id is refused at once (never retried); an agent cut off
    long enough for its lease to expire and its id to be registered by another instance stops when
    it comes back, instead of renewing the new holder's lease (or, later, deregistering it)."""

    async def main() -> tuple[Agent, Agent, int]:
        leader = FakeLeader(stall_from=20.0, stall_s=3 * TTL_S)
        client = cast(AsyncClient, SimpleNamespace(membership=leader))
        first = Agent(client, "gpu-07", ttl_s=TTL_S, instance_id="one")
        await first.start()
        second = Agent(client, "gpu-07", ttl_s=TTL_S, instance_id="two")
        with pytest.raises(FailedPrecondition, match="in use by another running agent"):
            await second.start()
        assert second.stats.registrations == 0 and second.stats.failures == 0  # refused once, not retried
        # The first one is cut off from 20 s for 3 TTLs: its lease expires, and a third instance
        # registers the id meanwhile (its request is processed only after the stall, like all).
        await asyncio.sleep(20.0 + TTL_S + 1.0)  # virtual time: into the stall, past the lease
        third = Agent(client, "gpu-07", ttl_s=TTL_S, instance_id="three")
        await third.start()
        await first.wait_ended()  # its next answer refuses it: the loop ends by itself
        await third.stop(deregister=False)
        return first, third, len(leader.expired)

    first, third, expiries = run_virtual(main)
    assert first.displaced is not None and "registered again by another agent" in first.displaced.message
    assert third.displaced is None and third.instance_id != first.instance_id
    assert expiries == 1


@pytest.mark.parametrize("taken_over", [False, True], ids=["thaws-alone", "id-taken-while-frozen"])
def test_an_agent_frozen_while_its_first_renewal_is_in_flight_renews_when_it_thaws(taken_over: bool) -> None:
    """The first renewal after registering (the one that turns the node ACTIVE) is handled like every
    later one. CI froze an agent (SIGSTOP) while it was in flight and another agent took its id
    meanwhile; when it thawed, the call's deadline had passed, start() raised DeadlineExceeded, and
    the agent exited with a traceback instead of stopping as displaced."""
    leader = FakeLeader()

    async def main() -> Agent:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        original = leader.heartbeat

        async def frozen_in_flight(node_id: str, **kwargs: Any) -> NodeState:
            leader.heartbeat = original  # type: ignore[method-assign]  # only the first renewal
            await original(node_id, **kwargs)  # the leader renews; the answer is never read in time
            loop.block(2 * TTL_S)  # the process is stopped for two TTLs: the lease expires meanwhile
            if taken_over:  # and another instance registers the id (a fresh lease of its own)
                leader.renewed[node_id], leader.holder[node_id] = loop.time(), "successor"
            raise DeadlineExceeded("no answer within the deadline")

        leader.heartbeat = frozen_in_flight  # type: ignore[method-assign]
        agent = Agent(cast(AsyncClient, SimpleNamespace(membership=leader)), "frozen", ttl_s=TTL_S, instance_id="one")
        await agent.start()  # must not raise
        await asyncio.sleep(3 * TTL_S)  # virtual time: the agent's life after the thaw
        # The fake has no deregister: stopping a displaced agent must not call it (the node is the
        # successor's).
        await agent.stop(deregister=taken_over)
        return agent

    agent = run_virtual(main)
    assert agent.stats.failures == 1  # the renewal that was in flight
    if taken_over:
        assert agent.displaced is not None and "registered again by another agent" in agent.displaced.message
        assert leader.holder["frozen"] == "successor" and "frozen" in leader.renewed
    else:
        assert (agent.stats.lease_lost, agent.stats.registrations) == (1, 2)  # found dead, registered again
        assert agent.displaced is None and agent.state is NodeState.ACTIVE and "frozen" in leader.renewed


def test_an_agent_whose_first_renewal_finds_its_id_taken_over_is_displaced_not_raised() -> None:
    leader = FakeLeader()

    async def main() -> Agent:
        agent = Agent(cast(AsyncClient, SimpleNamespace(membership=leader)), "taken", ttl_s=TTL_S, instance_id="one")
        original = leader.register_node

        async def taken_right_after(node_id: str, **kwargs: Any) -> Any:
            registered = await original(node_id, **kwargs)
            leader.holder[node_id] = "two"  # another instance took the id before the first renewal
            return registered

        leader.register_node = taken_right_after  # type: ignore[method-assign]
        await agent.start()  # must not raise
        await agent.wait_ended()
        return agent

    agent = run_virtual(main)
    assert agent.displaced is not None and "registered again by another agent" in agent.displaced.message
    assert agent.stats.registrations == 1
