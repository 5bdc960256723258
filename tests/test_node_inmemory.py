"""The node's own logic on an in-memory consensus layer: no processes, no sockets, milliseconds.

Three real ``Node`` objects (handlers, proposer, housekeeper, read barriers) run on
``memraft.InMemoryNetwork``, where the test decides who leads and who is cut off. What only
real processes can show (the wire, the journal, elections) stays in tests/cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane.dev import free_port
from controlplane.errors import FailedPrecondition, NoLeader, Unavailable
from controlplane.server.config import Peer, ServerConfig
from controlplane.server.housekeeping import LocalDeadlines
from controlplane.server.leader_clock import LeaderClock
from controlplane.server.memraft import InMemoryNetwork
from controlplane.server.node import Node
from controlplane.v1 import cluster_pb2, command_pb2, common_pb2, leases_pb2, membership_pb2, ports_pb2

pytestmark = pytest.mark.timeout(60)

N4_RAFT = "127.0.0.1:7"  # a member that never runs: only its record matters here
LINEARIZABLE = common_pb2.ReadOptions(consistency=common_pb2.CONSISTENCY_LINEARIZABLE)


@dataclass
class Cluster:
    network: InMemoryNetwork
    nodes: dict[str, Node]

    def address(self, node_id: str) -> str:
        return self.nodes[node_id].config.raft_address

    async def read(self, node_id: str, key: str) -> bytes | None:
        node = self.nodes[node_id]
        await node.prepare_read(LINEARIZABLE, timeout=5)
        kv, _revision = node.get(key)
        return kv.value if kv is not None else None


def _config(tmp_path: Path, index: int, count: int, ports: list[int]) -> ServerConfig:
    def addresses(i: int) -> tuple[str, str]:
        # Loopback ports nobody listens on: Raft never dials them (it is in memory), and a call that
        # does dial a client address (a follower handing AddMember to the leader) is refused at once.
        return f"127.0.0.1:{ports[2 * i]}", f"127.0.0.1:{ports[2 * i + 1]}"

    raft, client = addresses(index)
    return ServerConfig(
        node_id=f"n{index}",
        client_address=client,
        raft_address=raft,
        metrics_address="",
        data_dir=tmp_path / f"n{index}",
        insecure_dev=True,
        commit_timeout_s=2.0,
        peers=tuple(Peer(f"n{i}", *addresses(i)) for i in range(1, count + 1) if i != index),
    )


async def _until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)  # the poll interval of a condition wait: the nodes run meanwhile


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    network = InMemoryNetwork()
    nodes = {}
    taken: set[int] = set()
    ports = [free_port(taken) for _ in range(10)]
    for index in (1, 2, 3):
        node = Node(_config(tmp_path, index, 3, ports), stop_process=lambda: None, consensus=network.factory)
        await node.start()
        nodes[node.node_id] = node
    network.elect(nodes["n1"].config.raft_address)
    test_cluster = Cluster(network, nodes)
    # Every server publishes itself in the member directory at start: let that settle first.
    await _until(lambda: all(len(n.directory()) == 3 for n in nodes.values()), "the member directory")
    try:
        yield test_cluster
    finally:
        for node in nodes.values():
            await node.stop()


def _put(key: str, value: bytes, request_id: str = "") -> command_pb2.Command:
    return command_pb2.Command(request_id=request_id, kv_put=command_pb2.KvPut(key=key, value=value))


async def test_a_write_through_a_follower_is_forwarded_and_read_linearizably_everywhere(cluster: Cluster) -> None:
    result = await cluster.nodes["n2"].write(_put("k", b"v1"), timeout=5)
    assert result.revision > 0
    for node_id in cluster.nodes:
        assert await cluster.read(node_id, "k") == b"v1", node_id


async def test_a_retried_write_with_the_same_request_id_applies_once(cluster: Cluster) -> None:
    first = await cluster.nodes["n2"].write(_put("once", b"a", request_id="req-1"), timeout=5)
    again = await cluster.nodes["n3"].write(_put("once", b"a", request_id="req-1"), timeout=5)
    assert again.revision == first.revision
    kv, _ = cluster.nodes["n1"].get("once")
    assert kv is not None and kv.version == 1


async def test_a_cut_off_follower_refuses_linearizable_reads_instead_of_answering_stale(cluster: Cluster) -> None:
    await cluster.nodes["n1"].write(_put("k", b"old"), timeout=5)
    await _until(lambda: cluster.nodes["n3"].get("k")[0] is not None, "n3 to apply the first write")
    cluster.network.isolate(cluster.address("n3"))
    await cluster.nodes["n1"].write(_put("k", b"new"), timeout=5)
    with pytest.raises(Unavailable):
        await cluster.read("n3", "k")
    # A stale read still answers, from what it has (that is what STALE means).
    kv, _ = cluster.nodes["n3"].get("k")
    assert kv is not None and kv.value == b"old"
    cluster.network.heal(cluster.address("n3"))
    assert await cluster.read("n3", "k") == b"new"


async def test_a_leader_without_a_majority_answers_no_linearizable_read(cluster: Cluster) -> None:
    await cluster.nodes["n1"].write(_put("k", b"v"), timeout=5)
    cluster.network.isolate(cluster.address("n2"))
    cluster.network.isolate(cluster.address("n3"))
    with pytest.raises(NoLeader):
        await cluster.read("n1", "k")
    with pytest.raises(NoLeader):
        await cluster.nodes["n1"].write(_put("k", b"lost"), timeout=5)


async def test_reads_after_a_leader_change_see_every_write_acknowledged_before_it(cluster: Cluster) -> None:
    for i in range(20):
        await cluster.nodes[f"n{i % 3 + 1}"].write(_put(f"seq/{i}", str(i).encode()), timeout=5)
    cluster.network.elect(cluster.address("n3"))
    for i in range(20):
        assert await cluster.read(f"n{(i + 1) % 3 + 1}", f"seq/{i}") == str(i).encode()


async def test_the_leader_refuses_forwarded_lease_expiry_and_strangers(cluster: Cluster) -> None:
    leader = cluster.nodes["n1"]
    for command in (
        command_pb2.Command(lease_expire=leases_pb2.ExpireLeases(lease_ids=[1])),
        command_pb2.Command(lease_checkpoint=leases_pb2.LeaseCheckpoint()),
    ):
        with pytest.raises(FailedPrecondition):
            await leader.propose_forwarded("n2", [command])
    with pytest.raises(Unavailable, match="not a member"):
        await leader.propose_forwarded("intruder", [_put("x", b"y")])
    assert leader.get("x")[0] is None


async def test_peer_admission_follows_the_member_directory(cluster: Cluster) -> None:
    """Who may hold a Raft connection: a member at its own address, never a stranger or a removed id."""
    authorize: Callable[[str, str, bool], str | None] = cluster.nodes["n1"]._authorize_peer
    assert authorize("n2", cluster.address("n2"), False) is None
    assert "not a member" in (authorize("n9", "127.0.0.1:9", False) or "")
    assert "is a member at" in (authorize("n2", "127.0.0.1:9", False) or "")
    assert "own id" in (authorize("n1", cluster.address("n1"), False) or "")


async def _gather(*calls: Awaitable[object]) -> list[object]:
    return list(await asyncio.gather(*calls))


async def test_concurrent_writes_from_every_node_are_all_applied_in_one_order(cluster: Cluster) -> None:
    await _gather(*(cluster.nodes[f"n{i % 3 + 1}"].write(_put(f"burst/{i:03d}", b"x"), timeout=5) for i in range(150)))
    revision = cluster.nodes["n1"].machine.revision
    await _until(lambda: all(n.machine.revision == revision for n in cluster.nodes.values()), "every node to apply")
    views = [node.list_keys(_list("burst/"))[0] for node in cluster.nodes.values()]
    assert len(views[0]) == 150 and views[0] == views[1] == views[2]


def _list(prefix: str) -> object:
    from controlplane.v1 import kv_pb2

    return kv_pb2.ListRequest(prefix=prefix, limit=1000)


async def test_a_member_added_then_removed_is_refused_on_the_peer_plane_for_good(cluster: Cluster) -> None:
    leader = cluster.nodes["n1"]
    added = await leader.add_member(
        cluster_pb2.AddMemberRequest(id="n4", raft_address=N4_RAFT, client_address="127.0.0.1:8"),
        timeout=5,
    )
    assert "n4" in {member.id for member in added}
    await _until(lambda: all(N4_RAFT in n.directory() for n in cluster.nodes.values()), "the record")
    assert all(n.directory()[N4_RAFT].learner for n in cluster.nodes.values()), "admitted as a learner"
    assert cluster.nodes["n2"]._authorize_peer("n4", N4_RAFT, True) is None

    remaining = await leader.remove_member(cluster_pb2.RemoveMemberRequest(id="n4"), timeout=5)
    assert "n4" not in {member.id for member in remaining}
    await _until(lambda: all("n4" in n.removed_ids() for n in cluster.nodes.values()), "the removal everywhere")
    for node in cluster.nodes.values():
        assert "removed" in (node._authorize_peer("n4", N4_RAFT, True) or ""), node.node_id


async def test_a_step_of_the_leaders_wall_clock_reaps_no_service_early(cluster: Cluster) -> None:
    """A critical instance with deregister_critical_after_s is reaped when both the replicated
    'critical since' and the leader's own monotonic count say so: an hour's step of the leader's wall
    clock must not reap every critical instance at once."""
    leader = cluster.nodes["n1"]
    spec = membership_pb2.NodeSpec(id="h1", role=membership_pb2.NODE_ROLE_AGENT)
    await leader.write(
        command_pb2.Command(node_register=membership_pb2.RegisterNodeRequest(node=spec, lease_ttl_ms=60_000))
    )
    check = ports_pb2.HealthCheck(type="http", path="/healthz", interval_s=1, deregister_critical_after_s=30)
    manifest = ports_pb2.ServiceManifest(
        name="api", host="h1", ports=[ports_pb2.DeclaredPort(name="http")], health_check=check
    )
    await leader.write(command_pb2.Command(service_register=ports_pb2.RegisterServiceRequest(manifest=manifest)))
    critical = ports_pb2.ReportHealthRequest(host="h1", name="api", status=ports_pb2.HEALTH_STATUS_CRITICAL)
    await leader.write(command_pb2.Command(service_health=critical))
    housekeeper = leader.housekeeper
    wall_ms, monotonic = time.time_ns() // 1_000_000, time.monotonic()
    assert housekeeper.due_reaps(wall_ms, monotonic) == []  # seen critical, 30 s to go on both clocks
    assert housekeeper.due_reaps(wall_ms + 3_600_000, monotonic + 1) == [], "an hour's step of the wall clock"
    due = housekeeper.due_reaps(wall_ms + 3_600_000, monotonic + 30)
    assert [(key.host, key.name) for key in due] == [("h1", "api")]


async def test_a_step_of_the_leaders_wall_clock_expires_no_lease_that_is_renewed(cluster: Cluster) -> None:
    """The leader decides expiry on the monotonic clock of its own renewals: an NTP step or a resumed
    VM moving the wall clock a minute ahead must not expire every lease at once (it did)."""
    leader = cluster.nodes["n1"]
    ttl_ms = 1000
    granted = await leader.write(command_pb2.Command(lease_grant=leases_pb2.GrantLeaseRequest(ttl_ms=ttl_ms)))
    lease_id = granted.lease_grant.lease.id
    housekeeper = leader.housekeeper
    # Expiry is only decided by a leader that has led for the TTL plus leader_fallback_s and whose
    # renewals table is authoritative (a barrier of its term applied).
    wait_s = ttl_ms / 1000 + leader.config.raft.leader_fallback_s
    await _until(
        lambda: housekeeper.leader_for_s() >= wait_s and leader.renewals.ready, "the leader to settle", timeout=30
    )
    assert leader.renew_from_memory(lease_id) is not None  # the holder renews, through the leader's memory
    wall_ms, monotonic = time.time_ns() // 1_000_000, time.monotonic()

    assert housekeeper.due_leases(wall_ms + 60_000, monotonic) == [], "a minute's step of the wall clock"
    # Control: the same lease is due once a TTL has passed on the monotonic clock as well.
    assert housekeeper.due_leases(wall_ms + 60_000, monotonic + ttl_ms / 1000) == [lease_id]


async def test_a_step_of_the_leaders_wall_clock_put_right_leaves_no_time_in_the_future(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An hour's step of the leader's wall clock, put right a moment later: neither the cluster's
    time nor a lease renewed meanwhile may stay an hour ahead. Before, every batch was stamped with
    the stepped clock (and the state's time never goes back), and a lease renewed during the step
    outlived its holder by an hour."""
    leader = cluster.nodes["n1"]
    real_time_ns, step_ms = time.time_ns, 0
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + step_ms * 1_000_000)  # the host's clock
    leader.leader_clock = LeaderClock(wall_ns=lambda: time.time_ns())  # reads it late, as the patch needs
    ttl_ms = 1000
    granted = await leader.write(command_pb2.Command(lease_grant=leases_pb2.GrantLeaseRequest(ttl_ms=ttl_ms)))
    lease_id = granted.lease_grant.lease.id
    wait_s = ttl_ms / 1000 + leader.config.raft.leader_fallback_s
    housekeeper = leader.housekeeper
    await _until(lambda: housekeeper.leader_for_s() >= wait_s and leader.renewals.ready, "the leader to settle", 30)

    step_ms = 3_600_000
    assert leader.renew_from_memory(lease_id) is not None  # the holder's last renewal, during the step
    await housekeeper._checkpoint()  # written into the log during the step
    await leader.write(command_pb2.Command(kv_put=command_pb2.KvPut(key="during-the-step", value=b"x")))
    step_ms = 0
    await leader.write(command_pb2.Command(kv_put=command_pb2.KvPut(key="after-the-step", value=b"x")))

    ahead_ms = leader.machine.time_unix_ms - real_time_ns() // 1_000_000
    assert ahead_ms < 60_000, f"the cluster's time is {ahead_ms / 1000:.0f} s ahead"
    lease = leader.machine.leases.leases.get(lease_id)
    assert lease is not None and lease.renewed_unix_ms - real_time_ns() // 1_000_000 < 60_000
    # The holder renews no more: the lease expires a TTL later, not an hour later.
    await _until(lambda: lease_id not in leader.machine.leases.leases, "the lease to expire", timeout=30)


async def _keep_renewing(cluster: Cluster, lease_id: int, every_s: float, stop: asyncio.Event) -> list[str]:
    """A holder's renewals, sent to whichever server leads, from memory where it can and through
    the log where it must (a new leader not settled yet); a renewal that finds no leader is tried
    again at the next beat, as an agent does. Returns what the servers refused."""
    refused: list[str] = []
    while not stop.is_set():
        leader = next((node for node in cluster.nodes.values() if node.raft.is_leader()), None)
        if leader is not None and leader.renew_from_memory(lease_id) is None:
            keepalive = leases_pb2.KeepAliveRequest(lease_id=lease_id)
            try:
                result = await leader.write(command_pb2.Command(lease_keepalive=keepalive), timeout=5)
            except (NoLeader, Unavailable, TimeoutError):
                result = None  # the election in progress: the next beat finds the new leader
            if result is not None and result.error.message:
                refused.append(result.error.message)
                return refused
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
    return refused


async def test_a_follower_whose_wall_clock_is_an_hour_ahead_is_elected_and_expires_only_what_nobody_renews(
    cluster: Cluster,
) -> None:
    """An election during a step: n2's wall clock is an hour ahead when it takes over, so the
    cluster's time jumps an hour (no server can tell that from a catch-up: leader_clock.py). A lease
    its holder keeps renewing must survive the jump; one nobody renews must still expire."""
    n2 = cluster.nodes["n2"]
    n2.leader_clock = LeaderClock(wall_ns=lambda: time.time_ns() + 3_600 * 10**9)
    ttl_ms, renewed_ttl_ms = 1000, 3000  # renewed every 0.75 s: it outlasts a busy machine's stalls
    leader = cluster.nodes["n1"]
    renewed = await leader.write(command_pb2.Command(lease_grant=leases_pb2.GrantLeaseRequest(ttl_ms=renewed_ttl_ms)))
    abandoned = await leader.write(command_pb2.Command(lease_grant=leases_pb2.GrantLeaseRequest(ttl_ms=ttl_ms)))
    renewed_id, abandoned_id = renewed.lease_grant.lease.id, abandoned.lease_grant.lease.id
    stop = asyncio.Event()
    holder = asyncio.create_task(_keep_renewing(cluster, renewed_id, renewed_ttl_ms / 4000, stop))
    try:
        before_ms = leader.machine.time_unix_ms
        cluster.network.elect(cluster.address("n2"))
        await n2.write(_put("after-the-election", b"x"), timeout=5)
        assert n2.machine.time_unix_ms - before_ms > 3_500_000, "the new leader's time is the cluster's"
        await _until(lambda: abandoned_id not in n2.machine.leases.leases, "the abandoned lease to expire", 30)
        # Not at the jump: every holder gets a full TTL under a new leader to find it (read once
        # the expiry was seen: never less than when it happened).
        assert n2.housekeeper.leader_for_s() >= ttl_ms / 1000, "a lease expired as soon as the time jumped"
        # The new leader has led long enough to expire the renewed lease (its TTL and the fallback
        # wait, and a second for a housekeeping pass), and it lives.
        judged_s = renewed_ttl_ms / 1000 + n2.config.raft.leader_fallback_s + 1
        await _until(lambda: n2.housekeeper.leader_for_s() >= judged_s, "the renewed lease to be judged", 60)
        assert renewed_id in n2.machine.leases.leases, "a lease its holder renews expired"
    finally:
        stop.set()
        refused = await holder
    assert refused == []


async def test_a_step_back_of_the_leaders_wall_clock_delays_no_expiry(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader's wall clock an hour behind (a step backwards), then put right: a lease nobody
    renews expires (a TTL and the leader's fallback wait after it was granted), not an hour later,
    with the clock behind and again once it is put right; and the cluster's time stays the true one."""
    leader = cluster.nodes["n1"]
    real_time_ns, step_ms = time.time_ns, 0
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + step_ms * 1_000_000)  # the host's clock
    leader.leader_clock = LeaderClock(wall_ns=lambda: time.time_ns())  # reads it late, as the patch needs
    step_ms = -3_600_000
    granted = await leader.write(command_pb2.Command(lease_grant=leases_pb2.GrantLeaseRequest(ttl_ms=1000)))
    lease_id = granted.lease_grant.lease.id
    await _until(lambda: lease_id not in leader.machine.leases.leases, "the lease to expire with the clock behind", 30)
    step_ms = 0
    granted = await leader.write(command_pb2.Command(lease_grant=leases_pb2.GrantLeaseRequest(ttl_ms=1000)))
    lease_id = granted.lease_grant.lease.id
    await _until(lambda: lease_id not in leader.machine.leases.leases, "the lease to expire, the clock put right", 30)
    ahead_ms = leader.machine.time_unix_ms - real_time_ns() // 1_000_000
    assert abs(ahead_ms) < 60_000, f"the cluster's time is {ahead_ms / 1000:.0f} s off the true time"


def test_local_deadlines_hold_each_deadline_to_the_monotonic_clock_from_first_sight() -> None:
    deadlines: LocalDeadlines[str] = LocalDeadlines()
    wall, mono = 1_000_000, 50.0
    # Seen with 10 s left on the wall clock: 10 s on the monotonic clock too.
    assert deadlines.due({"round": wall + 10_000}, wall, mono) == []
    assert deadlines.due({"round": wall + 10_000}, wall + 3_600_000, mono + 1) == []  # the wall clock stepped
    assert deadlines.due({"round": wall + 10_000}, wall + 3_600_000, mono + 10) == ["round"]
    # A deadline first seen already past is due at once; a key no longer given is forgotten.
    assert deadlines.due({"late": wall - 1}, wall, mono) == ["late"]
    assert deadlines.due({"round": wall + 3_600_000 + 10_000}, wall + 3_600_000, mono + 10) == []
    # A backward step only delays: both clocks must agree.
    assert deadlines.due({"x": wall + 5_000}, wall, mono) == []
    assert deadlines.due({"x": wall + 5_000}, wall - 60_000, mono + 5) == []
    assert deadlines.due({"x": wall + 5_000}, wall + 5_000, mono + 5) == ["x"]
