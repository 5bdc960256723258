"""Membership under churn, with the agents' heartbeat path stalled (`make soak`, about 70 s).

Issue 13 item 2: at the end of ``make bench``'s membership churn (50 joins + 50 leaves per second on a
busy 2-core machine) every steady agent lost its lease at once, with no election. The leader may
expire a lease as soon as it has heard nothing for a TTL; the agents waited TTL/3 after *reading*
each answer and gave up on a heartbeat after TTL/3, so a delay of about TTL/3 - a late answer, or
their own event loop blocked for seconds (the bench's end-of-churn check did that) - left a whole TTL
between renewals (``controlplane/agent.py``; the blocked-loop case is in ``tests/test_agent_lease.py``,
which can time it exactly).

Here the same condition is made on purpose rather than hoped for: a real 3-server cluster, agents in
this process (each its own client and lease, as ``cpctl agent`` runs), churn from an admin client,
and in the middle of the churn every agent's calls are held for 1.3 heartbeat intervals - longer
than TTL/3, shorter than two thirds of the TTL - by an interceptor on the agents' channels, as the
busy leader's queue held them: a call goes out when the stall ends with what is left of its
deadline, or fails with DEADLINE_EXCEEDED if its deadline comes first (a queued request the server
never got to). Raft, the churn and the leader's housekeeping run on untouched; the leader looks for
expired leases every 50 ms, so a renewal that comes after its lease's deadline is caught. Afterwards:

* no steady agent lost its lease (none registered again, none died) and no election ran;
* the live set is exactly the steady agents plus the churned nodes still in;
* every server, asked on its own, lists the same node records at one revision.

Nothing waits on a clock to decide: the phases have minimum lengths and the checks wait on
conditions with generous deadlines, so a busy machine only makes the run longer.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane.agent import Agent
from controlplane.client import AsyncClient, NodeRole, NodeState
from controlplane.dev import LocalCluster
from controlplane.grpc_options import CHANNEL_OPTIONS
from controlplane.v1 import common_pb2, membership_pb2, membership_pb2_grpc

from .conftest import started_cluster

pytestmark = [pytest.mark.soak, pytest.mark.cluster, pytest.mark.timeout(600)]

AGENTS = 500
TTL_S = 15.0
INTERVAL_S = TTL_S / 3
# Longer than one heartbeat interval (a heartbeat in flight is answered late), shorter than two less
# the time the leader needs to answer what the stall held.
STALL_S = 1.3 * INTERVAL_S
CHURN_PER_S = 50  # joins and as many leaves per second, as in make bench
# The leader must have led for TTL + leader_fallback_s before it expires anything (housekeeping.py):
# the stall comes after this much churn, well past that point.
CHURN_BEFORE_STALL_S = 25.0
# A renewal held by the stall is due within two intervals of its start; the churn goes on past that.
CHURN_AFTER_STALL_S = 25.0
# The leader as strict as its rule allows: a lease is expired within 50 ms of its deadline.
CLUSTER_SETTINGS = {"lease_check_interval_s": 0.05}
CHECK_TIMEOUT_S = 120.0


class HeartbeatPathStall(grpc.aio.UnaryUnaryClientInterceptor):
    """Holds every call on the channels it is installed on while a stall lasts (see the module docstring)."""

    def __init__(self) -> None:
        self._until = 0.0  # event-loop time

    def stall(self, seconds: float) -> None:
        self._until = asyncio.get_running_loop().time() + seconds

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        hold = self._until - asyncio.get_running_loop().time()
        if hold > 0:
            timeout = details.timeout
            if timeout is not None and timeout <= hold:
                await asyncio.sleep(timeout)  # the call's deadline passes while it waits in the queue
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(), "Deadline Exceeded"
                )
            await asyncio.sleep(hold)  # held until the stall ends
            if timeout is not None:
                details = details._replace(timeout=timeout - hold)
        return await continuation(details, request)

    def channel(self, address: str) -> grpc.aio.Channel:
        """An ``AsyncClient`` channel factory."""
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=[self])


class Churn:
    """Nodes joining (register, first heartbeat, every fifth joining a network) and the oldest leaving,
    ``CHURN_PER_S`` of each per second, from one admin client."""

    def __init__(self, admin: AsyncClient, network: str, run: str) -> None:
        self._admin = admin
        self._network = network
        self._run = run
        self._ids = itertools.count()
        self.joined: list[str] = []  # in, oldest first
        self.errors: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def _join(self) -> None:
        node_id = f"churn-{self._run}-{next(self._ids):05d}"
        try:
            # A lease far longer than the run: a churned node leaves by deregistering, never by expiry.
            await self._admin.membership.register_node(node_id, ttl_s=TTL_S * 20)
            await self._admin.membership.heartbeat(node_id)
            if len(self.joined) % 5 == 0:
                await self._admin.membership.join(self._network, node_id=node_id)
            self.joined.append(node_id)
        except Exception as exc:
            self.errors.append(f"join {node_id}: {exc!r}")

    async def _leave(self) -> None:
        if not self.joined:
            return
        node_id = self.joined.pop(0)
        try:
            await self._admin.membership.deregister(node_id)
        except Exception as exc:
            self.errors.append(f"leave {node_id}: {exc!r}")

    async def run_for(self, seconds: float) -> None:
        """Start a tenth of a second's joins and leaves every 100 ms for ``seconds``, paced against the
        loop's clock as make bench paces them (ticks missed while the loop was busy are caught up)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        for tick in itertools.count():
            if loop.time() - started >= seconds:
                return
            for _ in range(max(1, CHURN_PER_S // 10)):
                for work in (self._join(), self._leave()):
                    task = asyncio.ensure_future(work)
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(max(0.0, started + (tick + 1) / 10 - loop.time()))  # the churn's pace

    async def finish(self) -> None:
        await asyncio.gather(*self._tasks)


async def agent_records(address: str, min_revision: int) -> tuple[int, list[bytes]]:
    """One server's own answer (STALE, at min_revision or later): its revision and every non-server node
    record, as bytes (replicated state only: no per-server view such as connectivity)."""
    async with grpc.aio.insecure_channel(address) as channel:
        response = await membership_pb2_grpc.MembershipStub(channel).ListNodes(
            membership_pb2.ListNodesRequest(
                include_gone=True,
                read=common_pb2.ReadOptions(consistency=common_pb2.CONSISTENCY_STALE, min_revision=min_revision),
            ),
            timeout=30,
        )
    records = sorted(
        view.node.SerializeToString(deterministic=True)
        for view in response.nodes
        if view.node.spec.role != membership_pb2.NODE_ROLE_SERVER
    )
    return response.header.revision, records


async def same_nodes_everywhere(cluster: LocalCluster, admin: AsyncClient) -> int:
    """Wait until every server answers at one revision, and check they list the same records there."""
    deadline = time.monotonic() + CHECK_TIMEOUT_S
    while True:
        revision = (await admin.status()).applied_revision
        answers = await asyncio.gather(*(agent_records(a, revision) for a in cluster.client_addresses))
        revisions = {answered for answered, _ in answers}
        if len(revisions) == 1:
            first = answers[0][1]
            differing = [
                a for a, (_, records) in zip(cluster.client_addresses, answers, strict=True) if records != first
            ]
            assert not differing, (
                f"at revision {revision}, {differing} list other nodes than {cluster.client_addresses[0]}"
            )
            return revision
        assert time.monotonic() < deadline, f"the servers never answered at one revision (last: {sorted(revisions)})"
        await asyncio.sleep(0.2)  # something still commits (a late churn write): ask again


async def churn_with_a_stalled_heartbeat_path(cluster: LocalCluster) -> None:
    run = os.urandom(3).hex()
    endpoints = cluster.client_addresses
    async with AsyncClient(endpoints, timeout=60, credentials=cluster.credentials) as admin:
        await admin.membership.set_flag("multi_network", True)
        network = f"soak-{run}"
        await admin.membership.create_network(network, "soak-model", 100_000)

        # Steady agents, each with its own client, spread over the servers.
        stall = HeartbeatPathStall()
        fleet = [
            Agent(
                AsyncClient(endpoints[i % len(endpoints)], timeout=30, channel_factory=stall.channel),
                f"agent-{run}-{i:04d}",
                ttl_s=TTL_S,
            )
            for i in range(AGENTS)
        ]
        gate = asyncio.Semaphore(32)

        async def bring_up(agent: Agent) -> None:
            async with gate:
                await agent.start()

        try:
            await asyncio.gather(*(bring_up(agent) for agent in fleet))
            term = (await admin.status()).term
            churn = Churn(admin, network, run)
            await churn.run_for(CHURN_BEFORE_STALL_S)
            stall.stall(STALL_S)
            await churn.run_for(STALL_S + CHURN_AFTER_STALL_S)
            await churn.finish()

            assert churn.errors == [], churn.errors[:5]
            assert (await admin.status()).term == term, "an election ran: the scenario is meant to have none"
            lost = {agent.node_id: agent.stats.lease_lost for agent in fleet if agent.stats.lease_lost}
            failures = sum(agent.stats.failures for agent in fleet)
            assert not lost, f"{len(lost)} steady agents lost their lease ({failures} heartbeats failed): {lost}"

            revision = await same_nodes_everywhere(cluster, admin)
            views = await admin.membership.nodes(include_gone=True, min_revision=revision)
            steady = {agent.node_id for agent in fleet}
            agents = {v.node.spec.id: v.node for v in views if v.node.spec.role is not NodeRole.SERVER}
            died = sorted(
                i
                for i in steady
                if i not in agents or (agents[i].state, agents[i].incarnation) != (NodeState.ACTIVE, 1)
            )
            assert not died, f"steady agents that died or came back as a new incarnation: {died[:10]}"
            live = {i for i, node in agents.items() if node.state is NodeState.ACTIVE}
            assert live == steady | set(churn.joined), (
                f"not live: {sorted(steady | set(churn.joined) - live)[:10]}; "
                f"live but not expected: {sorted(live - steady - set(churn.joined))[:10]}"
            )
        finally:
            await asyncio.gather(*(agent.stop(deregister=False) for agent in fleet), return_exceptions=True)
            await asyncio.gather(*(agent.client.close() for agent in fleet), return_exceptions=True)


def test_churn_with_a_stalled_heartbeat_path_costs_no_steady_lease(tmp_path: Path) -> None:
    with started_cluster(tmp_path / "cluster", extra_config=CLUSTER_SETTINGS) as cluster:
        asyncio.run(churn_with_a_stalled_heartbeat_path(cluster))
