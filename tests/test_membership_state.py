"""Membership in the pure state machine: the capacity and assignment invariants under random command
sequences (including lease expiry), and the rules a person meets one at a time."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from controlplane.state import levels, membership
from controlplane.state.machine import StateMachine, batch_entry
from controlplane.state.membership import ACTIVE, DEAD, GONE_STATES, LEFT, MembershipTable, model_base
from controlplane.state.refusal import Refused
from controlplane.v1 import command_pb2, common_pb2, leases_pb2, membership_pb2, models_pb2, watch_pb2

from machine_driver import MachineDriver, error_code, expect_ok

AGENT = membership_pb2.NODE_ROLE_AGENT


class Cluster(MachineDriver):
    """A machine driven one command per entry, with a clock the test moves."""

    def register(self, node_id: str, capabilities: tuple[str, ...] = (), ttl_ms: int = 5_000) -> None:
        spec = membership_pb2.NodeSpec(id=node_id, role=AGENT, capabilities=capabilities)
        expect_ok(self.run(node_register=membership_pb2.RegisterNodeRequest(node=spec, lease_ttl_ms=ttl_ms)))
        expect_ok(self.run(node_heartbeat=membership_pb2.HeartbeatRequest(node_id=node_id)))

    def network(self, name: str, model: str, max_clients: int, priority: int = 0, **fields: object) -> None:
        network = membership_pb2.Network(name=name, model=model, max_clients=max_clients, priority=priority, **fields)
        expect_ok(self.run(network_create=membership_pb2.CreateNetworkRequest(network=network)))

    def join(self, network: str, node_id: str = "", client_id: str = "") -> command_pb2.CommandResult:
        return self.run(
            network_join=membership_pb2.JoinNetworkRequest(network=network, node_id=node_id, client_id=client_id)
        )

    def assign(self, client_id: str, model: str) -> command_pb2.CommandResult:
        return self.run(network_assign=membership_pb2.AssignClientRequest(client_id=client_id, model=model))

    def expire(self, node_id: str) -> None:
        """Let the node's lease run out and the leader expire it."""
        record = self.machine.membership.nodes[node_id]
        lease = self.machine.leases.leases[record.lease_id]
        self.now = max(self.now, lease.renewed_unix_ms + lease.ttl_ms)
        result = self.run(lease_expire=leases_pb2.ExpireLeases(lease_ids=[lease.id]))
        assert list(result.lease_expire.expired) == [lease.id]

    def enable(self, flag: str, enabled: bool = True) -> command_pb2.CommandResult:
        return self.run(flag_set=membership_pb2.SetFlagRequest(name=flag, enabled=enabled))


def check_invariants(machine: StateMachine) -> None:
    """What must hold after every command, read from the state itself."""
    table = machine.membership
    per_network: dict[str, int] = {}
    for client_id, placement in table.placements.items():
        assert placement.client_id == client_id
        network = table.networks[placement.network]
        per_network[placement.network] = per_network.get(placement.network, 0) + 1
        # Served by an ACTIVE member of its own network.
        assert placement.node_id in table.members[placement.network], placement
        assert table.nodes[placement.node_id].state == ACTIVE, placement
        if placement.model:
            assert model_base(placement.model) == model_base(network.model)
        if placement.lease_id:
            assert machine.leases.exists(placement.lease_id)
    for name, count in per_network.items():
        assert count <= table.networks[name].max_clients, f"{name} over capacity"
    for name, members in table.members.items():
        for node_id in members:
            record = table.nodes[node_id]
            assert record.state not in GONE_STATES, f"gone node {node_id} is a member of {name}"
            assert set(table.networks[name].required_capabilities) <= set(record.spec.capabilities)
    for node_id, record in table.nodes.items():
        if record.state in GONE_STATES:
            assert record.lease_id == 0
            assert table.clients_served_by(node_id) == 0
            assert not table.networks_of(node_id)
            assert node_id not in table.placements or table.placements[node_id].lease_id == 0
        else:
            assert machine.leases.exists(record.lease_id), f"live node {node_id} without a lease"
    if not table.flag("multi_network"):
        assert len(table.networks) <= 1
    # An unplaced client waits for a place: it holds none, and it is forgotten when its lease ends.
    assert len(table.unplaced) <= membership.MAX_UNPLACED_CLIENTS
    for client_id, waiting in table.unplaced.items():
        assert waiting.client_id == client_id and client_id not in table.placements, waiting
        assert not waiting.lease_id or machine.leases.exists(waiting.lease_id), waiting


def domain_state(machine: StateMachine) -> tuple[int, bytes, list[bytes]]:
    """What a command may change (the clock moves with every entry, so not the whole snapshot)."""
    return (
        machine.revision,
        machine.membership.to_state().SerializeToString(deterministic=True),
        [lease.SerializeToString() for lease in machine.leases.leases.values()],
    )


NODES = ["a1", "a2", "a3", "a4"]
CLIENTS = ["c1", "c2", "c3", "c4", "c5", "c6"]
NETWORKS = {"net-a": "llama", "net-b": "llama", "net-c": "qwen"}


class MembershipInvariants(RuleBasedStateMachine):
    """Random registrations, joins, assignments, drains, deregistrations and expiries; the invariants
    hold after each, a twin fed the same entries agrees byte for byte, and a snapshot restores to
    the same state."""

    @initialize(capacities=st.lists(st.integers(1, 3), min_size=3, max_size=3))
    def setup(self, capacities: list[int]) -> None:
        # Start from networks that have members, so most random commands meet a state they can change.
        self.cluster = Cluster(level=levels.APPLY_LEVEL)
        self.cluster.enable("multi_network")
        for (name, model), capacity, node in zip(sorted(NETWORKS.items()), capacities, NODES, strict=False):
            self.cluster.register(node)
            self.cluster.network(name, model, max_clients=capacity)
            expect_ok(self.cluster.join(name, node_id=node))
        self._sync_twin()

    def _sync_twin(self) -> None:
        self.twin = StateMachine()
        self.twin.restore(self.cluster.machine.snapshot())

    def _apply(self, **body: object) -> command_pb2.CommandResult:
        cluster = self.cluster
        cluster.now += 10
        entry = batch_entry(cluster.now, "n1", [command_pb2.Command(**body)])  # type: ignore[arg-type]
        before = domain_state(cluster.machine)
        result = cluster.machine.apply_entry(entry)[0]
        twin_result = self.twin.apply_entry(entry)[0]
        assert result == twin_result
        assert self.twin.snapshot() == cluster.machine.snapshot()
        if result.HasField("error"):
            assert domain_state(cluster.machine) == before, "a refused command changed the state"
            assert result.error.code != common_pb2.ERROR_CODE_INTERNAL, result.error.message
        return result

    @rule(
        node=st.sampled_from(NODES),
        gpu=st.booleans(),
        heartbeat=st.booleans(),
        instance=st.sampled_from(["", "i1", "i2"]),
    )
    def register(self, node: str, gpu: bool, heartbeat: bool, instance: str) -> None:
        previous = self.cluster.machine.membership.nodes.get(node)
        live_holder = previous.instance_id if previous is not None and previous.state not in GONE_STATES else ""
        spec = membership_pb2.NodeSpec(id=node, role=AGENT, capabilities=["gpu"] if gpu else [])
        result = self._apply(
            node_register=membership_pb2.RegisterNodeRequest(node=spec, lease_ttl_ms=2_000, instance_id=instance)
        )
        # One agent per live node (issue 17): another instance is refused, anything else is not for that.
        other_instance = bool(instance and live_holder and instance != live_holder)
        assert other_instance == ("another running agent" in result.error.message)
        if not result.HasField("error"):
            recorded = self.cluster.machine.membership.nodes[node].instance_id
            assert recorded == (instance or live_holder)
        if heartbeat:
            self._apply(node_heartbeat=membership_pb2.HeartbeatRequest(node_id=node, instance_id=instance))

    @rule(
        name=st.sampled_from(sorted(NETWORKS)),
        max_clients=st.integers(1, 4),
        priority=st.integers(0, 2),
        gpu=st.booleans(),
    )
    def create(self, name: str, max_clients: int, priority: int, gpu: bool) -> None:
        network = membership_pb2.Network(
            name=name,
            model=NETWORKS[name],
            max_clients=max_clients,
            priority=priority,
            required_capabilities=["gpu"] if gpu else [],
        )
        self._apply(network_create=membership_pb2.CreateNetworkRequest(network=network))

    @rule(name=st.sampled_from(sorted(NETWORKS)), max_clients=st.integers(1, 4))
    def resize(self, name: str, max_clients: int) -> None:
        network = membership_pb2.Network(name=name, max_clients=max_clients)
        self._apply(network_update=membership_pb2.UpdateNetworkRequest(network=network, update_mask=["max_clients"]))

    @rule(name=st.sampled_from(sorted(NETWORKS)), force=st.booleans(), rare=st.integers(0, 4))
    def delete(self, name: str, force: bool, rare: int) -> None:
        if rare:  # deleting often would leave little to test
            return
        self._apply(network_delete=membership_pb2.DeleteNetworkRequest(name=name, force=force))

    @rule(name=st.sampled_from(sorted(NETWORKS)), node=st.sampled_from(NODES))
    def join_member(self, name: str, node: str) -> None:
        self._apply(network_join=membership_pb2.JoinNetworkRequest(network=name, node_id=node))

    @rule(name=st.sampled_from(sorted(NETWORKS)), node=st.sampled_from(NODES))
    def leave_member(self, name: str, node: str) -> None:
        self._apply(network_leave=membership_pb2.LeaveNetworkRequest(network=name, node_id=node))

    @rule(name=st.sampled_from(sorted(NETWORKS)), client=st.sampled_from(CLIENTS + NODES))
    def join_client(self, name: str, client: str) -> None:
        result = self._apply(network_join=membership_pb2.JoinNetworkRequest(network=name, client_id=client))
        if result.error.code == common_pb2.ERROR_CODE_RESOURCE_EXHAUSTED:
            assert self.cluster.machine.membership.free_places(name) == 0

    @rule(name=st.sampled_from(sorted(NETWORKS)), client=st.sampled_from(CLIENTS))
    def leave_client(self, name: str, client: str) -> None:
        self._apply(network_leave=membership_pb2.LeaveNetworkRequest(network=name, client_id=client))

    @rule(client=st.sampled_from(CLIENTS), model=st.sampled_from(["llama", "qwen", "Llama@prod"]))
    def assign(self, client: str, model: str) -> None:
        table = self.cluster.machine.membership
        expected = table.best_network(model) if client not in table.placements else ""
        result = self._apply(network_assign=membership_pb2.AssignClientRequest(client_id=client, model=model))
        if expected:
            # The policy's choice is what the command did.
            assert result.network_assign.placement.network == expected

    @rule(node=st.sampled_from(NODES))
    def drain(self, node: str) -> None:
        self._apply(node_drain=membership_pb2.DrainNodeRequest(node_id=node))

    @rule(node=st.sampled_from(NODES))
    def deregister(self, node: str) -> None:
        self._apply(node_deregister=membership_pb2.DeregisterNodeRequest(node_id=node))

    @rule(node=st.sampled_from(NODES))
    def expire(self, node: str) -> None:
        table = self.cluster.machine.membership
        record = table.nodes.get(node)
        if record is None or record.state in GONE_STATES:
            return
        lease = self.cluster.machine.leases.leases[record.lease_id]
        self.cluster.now = max(self.cluster.now, lease.renewed_unix_ms + lease.ttl_ms)
        self._apply(lease_expire=leases_pb2.ExpireLeases(lease_ids=[lease.id]))
        assert table.nodes[node].state == DEAD

    @rule(enabled=st.booleans())
    def auto_reassign(self, enabled: bool) -> None:
        self._apply(flag_set=membership_pb2.SetFlagRequest(name="auto_reassign", enabled=enabled))

    @invariant()
    def invariants_hold(self) -> None:
        check_invariants(self.cluster.machine)

    @invariant()
    def snapshot_round_trips(self) -> None:
        restored = StateMachine()
        data = self.cluster.machine.snapshot()
        restored.restore(data)
        assert restored.snapshot() == data


TestMembershipInvariants = MembershipInvariants.TestCase
TestMembershipInvariants.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)


# ------------------------------------------------------------------------------------ examples


def test_capacity_is_never_exceeded_and_the_full_network_is_named() -> None:
    cluster = Cluster()
    cluster.register("a1")
    cluster.network("net", "llama", max_clients=2)
    expect_ok(cluster.join("net", node_id="a1"))
    expect_ok(cluster.join("net", client_id="c1"))
    expect_ok(cluster.join("net", client_id="c2"))
    full = cluster.join("net", client_id="c3")
    assert error_code(full) == common_pb2.ERROR_CODE_RESOURCE_EXHAUSTED
    assert "net" in full.error.message and "full" in full.error.message
    # A retry of a client already placed is not a second place.
    again = expect_ok(cluster.join("net", client_id="c1"))
    assert again.network_join.existing and cluster.machine.membership.network_view("net").clients == 2


def test_assignment_prefers_priority_then_load() -> None:
    cluster = Cluster()
    cluster.enable("multi_network")
    for node in ("a1", "a2", "a3"):
        cluster.register(node)
    cluster.network("low", "llama", max_clients=10, priority=0)
    cluster.network("high", "llama", max_clients=2, priority=5)
    cluster.network("other", "qwen", max_clients=10, priority=9)
    expect_ok(cluster.join("low", node_id="a1"))
    expect_ok(cluster.join("high", node_id="a2"))
    expect_ok(cluster.join("other", node_id="a3"))
    placed = [expect_ok(cluster.assign(f"c{i}", "Llama@prod")).network_assign.placement.network for i in range(4)]
    # The high-priority network fills first; then the low one takes the rest. The qwen network never
    # serves a llama client, however high its priority.
    assert placed == ["high", "high", "low", "low"]
    assert error_code(cluster.assign("x", "mistral")) == common_pb2.ERROR_CODE_NOT_FOUND


def test_a_dead_member_holds_nothing_and_its_clients_move() -> None:
    cluster = Cluster()
    cluster.enable("multi_network")
    for node in ("a1", "a2", "a3"):
        cluster.register(node)
    cluster.network("main", "llama", max_clients=4, priority=1)
    cluster.network("spare", "llama", max_clients=4)
    expect_ok(cluster.join("main", node_id="a1"))
    expect_ok(cluster.join("spare", node_id="a3"))
    clients = [expect_ok(cluster.assign(f"c{i}", "llama")).network_assign.placement for i in range(3)]
    assert {p.network for p in clients} == {"main"} and {p.node_id for p in clients} == {"a1"}
    # a1 also holds a place of its own as a client.
    expect_ok(cluster.join("spare", client_id="a1"))
    before = cluster.machine.revision

    cluster.expire("a1")

    table = cluster.machine.membership
    assert table.nodes["a1"].state == DEAD and table.nodes["a1"].lease_id == 0
    assert table.networks_of("a1") == [] and table.clients_served_by("a1") == 0
    assert "a1" not in table.placements  # its own place went with its lease
    # main has no other member, so its clients moved to the spare network, served by a3.
    assert {table.placements[f"c{i}"].network for i in range(3)} == {"spare"}
    assert {table.placements[f"c{i}"].node_id for i in range(3)} == {"a3"}
    moves = [
        e.membership
        for e in cluster.machine.events_from(before + 1)
        if e.domain == "membership" and e.key.startswith("placements/c")
    ]
    assert all(m.previous.node_id == "a1" and m.placement.node_id == "a3" for m in moves) and len(moves) == 3
    check_invariants(cluster.machine)


def test_a_dying_member_of_two_networks_does_not_take_its_own_clients_back() -> None:
    cluster = Cluster()
    cluster.enable("multi_network")
    for node in ("a1", "a2"):
        cluster.register(node)
    cluster.network("first", "llama", max_clients=4)
    cluster.network("second", "llama", max_clients=4, priority=5)
    expect_ok(cluster.join("second", node_id="a1"))
    assert expect_ok(cluster.assign("c1", "llama")).network_assign.placement.node_id == "a1"
    expect_ok(cluster.join("first", node_id="a2"))
    expect_ok(cluster.join("first", client_id="c0"))  # served by a2: a1 and a2 now carry one client each
    expect_ok(cluster.join("first", node_id="a1"))
    # a1 dies: c1 must move to "first", and there to a2, even though a1 (still listed there until it
    # is taken out) wins a tie on load by its id.
    cluster.expire("a1")
    placement = cluster.machine.membership.placements["c1"]
    assert (placement.network, placement.node_id) == ("first", "a2")
    check_invariants(cluster.machine)


def test_a_client_moves_to_another_member_of_its_own_network_first() -> None:
    cluster = Cluster()
    for node in ("a1", "a2"):
        cluster.register(node)
    cluster.network("main", "llama", max_clients=4)
    expect_ok(cluster.join("main", node_id="a1"))
    placement = expect_ok(cluster.assign("c1", "llama")).network_assign.placement
    expect_ok(cluster.join("main", node_id="a2"))
    assert placement.node_id == "a1"
    drained = expect_ok(cluster.run(node_drain=membership_pb2.DrainNodeRequest(node_id="a1"))).node_drain
    assert [(p.client_id, p.network, p.node_id) for p in drained.moved] == [("c1", "main", "a2")]
    # A draining node takes no new clients; the next one goes to a2 as well.
    assert expect_ok(cluster.assign("c2", "llama")).network_assign.placement.node_id == "a2"


def test_with_auto_reassign_off_clients_of_a_dead_member_are_unplaced() -> None:
    cluster = Cluster()
    for node in ("a1", "a2"):
        cluster.register(node)
    cluster.network("main", "llama", max_clients=4)
    expect_ok(cluster.join("main", node_id="a1"))
    expect_ok(cluster.join("main", node_id="a2"))
    expect_ok(cluster.assign("c1", "llama"))
    expect_ok(cluster.enable("auto_reassign", False))
    served_by = cluster.machine.membership.placements["c1"].node_id
    cluster.expire(served_by)
    assert "c1" not in cluster.machine.membership.placements


def test_an_unplaced_record_names_its_delete_event_and_why_nothing_moved_the_client() -> None:
    cluster = Cluster(level=levels.UNPLACED_CLIENTS)
    for node in ("a1", "a2"):
        cluster.register(node)
    cluster.network("main", "llama", max_clients=4)
    expect_ok(cluster.join("main", node_id="a1"))
    expect_ok(cluster.join("main", node_id="a2"))
    expect_ok(cluster.assign("c1", "llama"))
    expect_ok(cluster.enable("auto_reassign", False))
    before = cluster.machine.revision
    served_by = cluster.machine.membership.placements["c1"].node_id
    expect_ok(cluster.run(node_drain=membership_pb2.DrainNodeRequest(node_id=served_by)))
    (waiting,) = cluster.machine.membership.list_unplaced()
    assert waiting.reason.endswith("; auto_reassign is off"), waiting.reason
    (deleted,) = [
        e
        for e in cluster.machine.events_from(before + 1)
        if e.key == "placements/c1" and e.type == watch_pb2.EVENT_TYPE_DELETE
    ]
    assert waiting.revision == deleted.revision


def _unplaced(cluster: Cluster, network: str = "") -> list[tuple[str, str, str, str]]:
    return [(u.client_id, u.network, u.node_id, u.reason) for u in cluster.machine.membership.list_unplaced(network)]


def test_a_client_the_cluster_could_not_place_again_is_listed_with_why_until_it_is_placed() -> None:
    cluster = Cluster(level=levels.UNPLACED_CLIENTS)
    cluster.register("a1")
    cluster.network("main", "llama", max_clients=2)
    expect_ok(cluster.join("main", node_id="a1"))
    expect_ok(cluster.assign("c1", "llama"))
    expect_ok(cluster.join("main", client_id="c2"))

    cluster.expire("a1")  # main's only member: no member and no other network can take its clients

    # Newest first (c2 moved second), each with its member and why: what took the place, and why
    # nothing could give another.
    assert [(c, n, m) for c, n, m, _ in _unplaced(cluster)] == [("c2", "main", "a1"), ("c1", "main", "a1")]
    reasons = {c: r for c, _, _, r in _unplaced(cluster)}
    assert reasons["c1"] == "lease 1 expired (TTL 5000 ms); no network for its model has room", reasons
    assert cluster.machine.membership.list_unplaced()[1].model == "llama"  # c1 was placed by Assign
    assert _unplaced(cluster, "elsewhere") == [] and len(_unplaced(cluster, "main")) == 2
    check_invariants(cluster.machine)
    # Placed again (another member came): no longer waiting.
    cluster.register("a2")
    expect_ok(cluster.join("main", node_id="a2"))
    expect_ok(cluster.assign("c1", "llama"))
    assert [c for c, *_ in _unplaced(cluster)] == ["c2"]
    check_invariants(cluster.machine)


def test_an_unplaced_client_is_forgotten_when_its_lease_ends_and_a_clients_own_leave_is_no_unplacing() -> None:
    cluster = Cluster(level=levels.UNPLACED_CLIENTS)
    for node in ("a1", "a2", "a3"):
        cluster.register(node)
    cluster.network("main", "llama", max_clients=4)
    expect_ok(cluster.join("main", node_id="a1"))
    expect_ok(cluster.join("main", client_id="a2"))  # a registered node as a client: on a2's lease
    expect_ok(cluster.join("main", client_id="a3"))
    expect_ok(cluster.run(network_leave=membership_pb2.LeaveNetworkRequest(network="main", client_id="a3")))
    assert _unplaced(cluster) == []  # it asked to leave
    expect_ok(cluster.enable("auto_reassign", False))
    expect_ok(cluster.run(node_drain=membership_pb2.DrainNodeRequest(node_id="a1")))
    assert [(c, n) for c, n, *_ in _unplaced(cluster)] == [("a2", "main")]
    expect_ok(cluster.run(node_deregister=membership_pb2.DeregisterNodeRequest(node_id="a2")))
    assert _unplaced(cluster) == []  # gone: it waits for nothing
    check_invariants(cluster.machine)


def test_an_unplaced_client_on_a_lease_of_its_own_is_forgotten_when_it_ends_or_a_backup_lacks_it() -> None:
    cluster = Cluster(level=levels.UNPLACED_CLIENTS)
    cluster.register("a1")
    cluster.network("main", "llama", max_clients=4)
    expect_ok(cluster.join("main", node_id="a1"))
    leases = [
        expect_ok(cluster.run(lease_grant=leases_pb2.GrantLeaseRequest(ttl_ms=60_000))).lease_grant.lease.id
        for _ in range(2)
    ]
    for client_id, lease_id in zip(("c1", "c2"), leases, strict=True):
        join = membership_pb2.JoinNetworkRequest(network="main", client_id=client_id, lease_id=lease_id)
        expect_ok(cluster.run(network_join=join))
    expect_ok(cluster.run(network_leave=membership_pb2.LeaveNetworkRequest(network="main", node_id="a1")))
    assert [c for c, *_ in _unplaced(cluster)] == ["c2", "c1"]
    snapshot = command_pb2.StateSnapshot.FromString(cluster.machine.snapshot())

    expect_ok(cluster.run(lease_revoke=leases_pb2.RevokeLeaseRequest(lease_id=leases[0])))
    assert [c for c, *_ in _unplaced(cluster)] == ["c2"]  # c1 is gone with its lease
    check_invariants(cluster.machine)

    # A backup whose lease table lost c2's lease: restored, c2 waits for nothing any more.
    (lease_table,) = [table for table in snapshot.tables if table.name == "leases"]
    lease_state = leases_pb2.LeasesState.FromString(lease_table.state)
    kept = [lease for lease in lease_state.leases if lease.id != leases[1]]
    del lease_state.leases[:]
    lease_state.leases.extend(kept)
    lease_table.state = lease_state.SerializeToString()
    target = Cluster(level=levels.UNPLACED_CLIENTS)
    expect_ok(target.run(restore_state=command_pb2.RestoreState(snapshot=snapshot.SerializeToString())))
    assert [c for c, *_ in _unplaced(target)] == ["c1"]
    check_invariants(target.machine)


def test_unplaced_clients_are_kept_only_from_their_level_and_at_most_the_newest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def lose_clients(cluster: Cluster, count: int) -> None:
        cluster.register("a1")
        cluster.network("main", "llama", max_clients=count)
        expect_ok(cluster.join("main", node_id="a1"))
        for i in range(count):
            expect_ok(cluster.join("main", client_id=f"c{i}"))
        cluster.expire("a1")

    below = Cluster(level=levels.SNAPSHOT_TABLES)  # the releases before it keep no such record
    lose_clients(below, 2)
    assert not below.machine.membership.placements and _unplaced(below) == []

    monkeypatch.setattr(membership, "MAX_UNPLACED_CLIENTS", 2)
    cluster = Cluster(level=levels.UNPLACED_CLIENTS)
    lose_clients(cluster, 3)
    assert [c for c, *_ in _unplaced(cluster)] == ["c2", "c1"]  # newest first; c0 forgotten

    snapshot = cluster.machine.snapshot()
    again = StateMachine()
    again.restore(snapshot)
    assert [u.client_id for u in again.membership.list_unplaced()] == ["c2", "c1"]
    # A backup restored into a cluster below the level: its releases would drop them, so does this one.
    older = Cluster(level=levels.SNAPSHOT_TABLES)
    expect_ok(older.run(restore_state=command_pb2.RestoreState(snapshot=snapshot)))
    assert older.machine.cluster_level == levels.SNAPSHOT_TABLES and _unplaced(older) == []


def test_a_backup_listing_a_placed_client_as_unplaced_is_refused() -> None:
    cluster = Cluster(level=levels.UNPLACED_CLIENTS)
    cluster.register("a1")
    cluster.network("main", "llama", max_clients=2)
    expect_ok(cluster.join("main", node_id="a1"))
    expect_ok(cluster.join("main", client_id="c1"))
    state = cluster.machine.membership.to_state()
    state.unplaced.add(client_id="c1", network="main", reason="forged")
    with pytest.raises(Refused, match="c1"):
        MembershipTable.validate_state(state)


def test_a_forged_unplaced_list_is_refused_from_the_level_and_ignored_below_it() -> None:
    """As the releases below the level read a backup (they never look at the records), so must this
    one there: else a mixed cluster's servers would disagree on the restore."""
    source = Cluster(level=levels.UNPLACED_CLIENTS)
    source.register("a1")
    source.network("main", "llama", max_clients=2)
    expect_ok(source.join("main", node_id="a1"))
    expect_ok(source.join("main", client_id="c1"))
    snapshot = command_pb2.StateSnapshot.FromString(source.machine.snapshot())
    (membership_table,) = [t for t in snapshot.tables if t.name == "membership"]
    state = membership_pb2.MembershipState.FromString(membership_table.state)
    state.unplaced.add(client_id="c1", network="main", reason="forged: c1 is placed")
    membership_table.state = state.SerializeToString()
    forged = command_pb2.RestoreState(snapshot=snapshot.SerializeToString())

    at_level = Cluster(level=levels.UNPLACED_CLIENTS)
    assert error_code(at_level.run(restore_state=forged)) == common_pb2.ERROR_CODE_INVALID_ARGUMENT
    below = Cluster(level=levels.SNAPSHOT_TABLES)
    expect_ok(below.run(restore_state=forged))
    assert below.machine.membership.placements["c1"].network == "main" and _unplaced(below) == []


def test_multi_network_flag_gates_a_second_network() -> None:
    cluster = Cluster()
    cluster.network("one", "llama", max_clients=1)
    second = cluster.run(
        network_create=membership_pb2.CreateNetworkRequest(
            network=membership_pb2.Network(name="two", model="llama", max_clients=1)
        )
    )
    assert error_code(second) == common_pb2.ERROR_CODE_FAILED_PRECONDITION
    assert "multi_network" in second.error.message and "cpctl flags set multi_network on" in second.error.message
    expect_ok(cluster.enable("multi_network"))
    cluster.network("two", "llama", max_clients=1)
    off = cluster.enable("multi_network", False)
    assert error_code(off) == common_pb2.ERROR_CODE_FAILED_PRECONDITION and "2 networks" in off.error.message
    flags = {f.name: f for f in cluster.machine.membership.list_flags()}
    assert flags["multi_network"].enabled and flags["multi_network"].set
    assert flags["auto_reassign"].enabled and not flags["auto_reassign"].set


def test_node_lifecycle_joining_active_leaving_left_and_reregistering() -> None:
    cluster = Cluster()
    spec = membership_pb2.NodeSpec(id="a1", role=AGENT, capabilities=["gpu"], labels={"zone": "eu"})
    registered = expect_ok(cluster.run(node_register=membership_pb2.RegisterNodeRequest(node=spec)))
    node = registered.node_register.node
    assert node.state == membership_pb2.NODE_STATE_JOINING and node.lease_id and node.incarnation == 1
    assert registered.node_register.lease_ttl_ms == 10_000
    beat = expect_ok(cluster.run(node_heartbeat=membership_pb2.HeartbeatRequest(node_id="a1", activity="idle")))
    assert beat.node_heartbeat.state == ACTIVE
    revision = cluster.machine.revision
    # A heartbeat with nothing new renews the lease without a revision (1,000 agents would flood the history).
    expect_ok(cluster.run(node_heartbeat=membership_pb2.HeartbeatRequest(node_id="a1", activity="idle")))
    assert cluster.machine.revision == revision
    lease_id = cluster.machine.membership.nodes["a1"].lease_id
    gone = expect_ok(cluster.run(node_deregister=membership_pb2.DeregisterNodeRequest(node_id="a1")))
    assert gone.node_deregister.deregistered
    assert cluster.machine.membership.nodes["a1"].state == LEFT and not cluster.machine.leases.exists(lease_id)
    late = cluster.run(node_heartbeat=membership_pb2.HeartbeatRequest(node_id="a1"))
    assert error_code(late) == common_pb2.ERROR_CODE_NOT_FOUND and "register it again" in late.error.message
    again = expect_ok(cluster.run(node_register=membership_pb2.RegisterNodeRequest(node=spec)))
    assert (
        again.node_register.node.incarnation == 2
        and again.node_register.node.state == membership_pb2.NODE_STATE_JOINING
    )


def test_capabilities_gate_membership_and_bad_input_is_refused_clearly() -> None:
    cluster = Cluster()
    cluster.register("cpu-only")
    cluster.network("gpu-net", "llama", max_clients=2, required_capabilities=["gpu"])
    refused = cluster.join("gpu-net", node_id="cpu-only")
    assert error_code(refused) == common_pb2.ERROR_CODE_FAILED_PRECONDITION and "gpu" in refused.error.message
    no_member = cluster.join("gpu-net", client_id="c1")
    assert (
        error_code(no_member) == common_pb2.ERROR_CODE_FAILED_PRECONDITION
        and "no active member" in no_member.error.message
    )
    bad = [
        cluster.run(
            network_create=membership_pb2.CreateNetworkRequest(
                network=membership_pb2.Network(name="x y", model="m", max_clients=1)
            )
        ),
        cluster.run(
            network_create=membership_pb2.CreateNetworkRequest(
                network=membership_pb2.Network(name="z", model="m", max_clients=0)
            )
        ),
        cluster.run(
            node_register=membership_pb2.RegisterNodeRequest(
                node=membership_pb2.NodeSpec(id="n", role=AGENT), lease_ttl_ms=10
            )
        ),
        cluster.run(node_register=membership_pb2.RegisterNodeRequest(node=membership_pb2.NodeSpec(id="n"))),
        cluster.join("gpu-net", node_id="a", client_id="b"),
    ]
    assert [error_code(r) for r in bad] == [common_pb2.ERROR_CODE_INVALID_ARGUMENT] * 5
    assert error_code(cluster.join("nope", client_id="c")) == common_pb2.ERROR_CODE_NOT_FOUND


def test_every_change_is_a_typed_watch_event() -> None:
    cluster = Cluster()
    start = cluster.machine.revision + 1
    cluster.register("a1")
    cluster.network("net", "llama", max_clients=2)
    expect_ok(cluster.join("net", node_id="a1"))
    expect_ok(cluster.assign("c1", "llama"))
    events = [e for e in cluster.machine.events_from(start) if e.domain == "membership"]
    keys = [(e.key, e.type) for e in events]
    assert keys == [
        ("nodes/a1", watch_pb2.EVENT_TYPE_PUT),  # registered
        ("nodes/a1", watch_pb2.EVENT_TYPE_PUT),  # first heartbeat: active
        ("networks/net", watch_pb2.EVENT_TYPE_PUT),
        ("networks/net", watch_pb2.EVENT_TYPE_PUT),  # a1 joined
        ("placements/c1", watch_pb2.EVENT_TYPE_PUT),
    ]
    assert events[-1].membership.placement.node_id == "a1" and events[1].membership.node.state == ACTIVE


def test_restoring_a_backup_keeps_membership_and_kills_nodes_whose_lease_is_missing() -> None:
    cluster = Cluster()
    cluster.register("a1")
    cluster.network("net", "llama", max_clients=2)
    expect_ok(cluster.join("net", node_id="a1"))
    expect_ok(cluster.assign("c1", "llama"))
    snapshot = command_pb2.StateSnapshot.FromString(cluster.machine.snapshot())
    target = Cluster()
    restored = expect_ok(target.run(restore_state=command_pb2.RestoreState(snapshot=snapshot.SerializeToString())))
    assert restored.revision
    assert target.machine.membership.placements["c1"].node_id == "a1"
    # A backup whose lease table lost the node's lease: the node is dead, its clients unplaced.
    del snapshot.leases[:]
    other = Cluster()
    expect_ok(other.run(restore_state=command_pb2.RestoreState(snapshot=snapshot.SerializeToString())))
    assert other.machine.membership.nodes["a1"].state == DEAD and not other.machine.membership.placements
    check_invariants(other.machine)


def test_a_lease_checkpoint_moves_renewals_forward_only_and_never_past_its_own_time() -> None:
    cluster = Cluster()
    cluster.register("a1")
    lease_id = cluster.machine.membership.nodes["a1"].lease_id
    lease = cluster.machine.leases.leases[lease_id]
    before, revision = lease.renewed_unix_ms, cluster.machine.revision
    renewals = [
        leases_pb2.LeaseRenewal(lease_id=lease_id, renewed_unix_ms=cluster.now + 10_000),  # ahead of the log
        leases_pb2.LeaseRenewal(lease_id=999, renewed_unix_ms=cluster.now),  # no such lease
    ]
    result = expect_ok(cluster.run(lease_checkpoint=leases_pb2.LeaseCheckpoint(renewals=renewals)))
    assert result.lease_checkpoint.updated == 1
    assert lease.renewed_unix_ms == cluster.now > before  # capped at the entry's own time
    assert cluster.machine.revision == revision  # like a keepalive: no revision, no event
    older = leases_pb2.LeaseRenewal(lease_id=lease_id, renewed_unix_ms=before)
    assert (
        expect_ok(cluster.run(lease_checkpoint=leases_pb2.LeaseCheckpoint(renewals=[older]))).lease_checkpoint.updated
        == 0
    )
    assert lease.renewed_unix_ms > before


def test_review_fixes_refusals_change_nothing_and_lease_ids_are_never_reused() -> None:
    cluster = Cluster()
    cluster.enable("multi_network")
    cluster.register("a1", capabilities=("gpu",))
    cluster.network("gpu-net", "llama", max_clients=1, required_capabilities=["gpu"])
    expect_ok(cluster.join("gpu-net", node_id="a1"))
    lease = cluster.machine.leases.leases[cluster.machine.membership.nodes["a1"].lease_id]
    ttl = lease.ttl_ms
    # Re-registering without the capability its network requires is refused, and the lease is untouched.
    spec = membership_pb2.NodeSpec(id="a1", role=AGENT)
    refused = cluster.run(node_register=membership_pb2.RegisterNodeRequest(node=spec, lease_ttl_ms=60_000))
    assert error_code(refused) == common_pb2.ERROR_CODE_FAILED_PRECONDITION and lease.ttl_ms == ttl

    # A backup restored after more leases were granted never hands their ids out again.
    backup = command_pb2.StateSnapshot.FromString(cluster.machine.snapshot())
    for node in ("a2", "a3"):
        cluster.register(node)
    highest = max(cluster.machine.leases.leases)
    expect_ok(cluster.run(restore_state=command_pb2.RestoreState(snapshot=backup.SerializeToString())))
    cluster.register("a4")
    assert cluster.machine.membership.nodes["a4"].lease_id > highest

    # A backup in which two live nodes share a lease is refused (one would outlive its lease).
    shared = command_pb2.StateSnapshot.FromString(cluster.machine.snapshot())
    twin = membership_pb2.NodeRecord()
    twin.CopyFrom(shared.membership.nodes[0])
    twin.spec.id = "twin"
    shared.membership.nodes.append(twin)
    bad = cluster.run(restore_state=command_pb2.RestoreState(snapshot=shared.SerializeToString()))
    assert error_code(bad) == common_pb2.ERROR_CODE_INVALID_ARGUMENT and "lease of its own" in bad.error.message


def _register_as(cluster: Cluster, node_id: str, instance: str, ttl_ms: int = 5_000) -> command_pb2.CommandResult:
    spec = membership_pb2.NodeSpec(id=node_id, role=AGENT)
    return cluster.run(
        node_register=membership_pb2.RegisterNodeRequest(node=spec, lease_ttl_ms=ttl_ms, instance_id=instance)
    )


def test_a_live_node_is_refused_to_another_instance_and_free_once_its_lease_expired() -> None:
    """Issue 17: two agents with one --id shared a lease; the second is now refused while the first lives."""
    cluster = Cluster()
    first = expect_ok(_register_as(cluster, "a1", "instance-one"))
    assert first.node_register.node.instance_id == "instance-one"
    expect_ok(cluster.run(node_heartbeat=membership_pb2.HeartbeatRequest(node_id="a1")))
    before = cluster.machine.snapshot()
    lease = cluster.machine.leases.leases[first.node_register.node.lease_id]

    refused = _register_as(cluster, "a1", "instance-two")
    assert error_code(refused) == common_pb2.ERROR_CODE_FAILED_PRECONDITION
    message = refused.error.message
    assert "a1" in message and "instance-one" in message and "another running agent" in message
    # When the first one's lease expires at the earliest: its replicated deadline, in UTC.
    assert "1970-01-01 00:00:06 UTC" in message and "TTL 5 s" in message
    assert lease.renewed_unix_ms + lease.ttl_ms == 6_020  # 1970-01-01 00:00:06.020
    # A refusal changes nothing: same state, same record, the first instance's lease untouched.
    after = cluster.machine.snapshot()
    assert command_pb2.StateSnapshot.FromString(after).revision == command_pb2.StateSnapshot.FromString(before).revision
    assert cluster.machine.membership.nodes["a1"].instance_id == "instance-one"

    # The same instance registering again is idempotent: no new incarnation, the same lease.
    again = expect_ok(_register_as(cluster, "a1", "instance-one"))
    assert again.node_register.node.lease_id == lease.id and again.node_register.node.incarnation == 1

    # Once the lease expired (the agent was killed), another instance takes the id over.
    cluster.expire("a1")
    taken = expect_ok(_register_as(cluster, "a1", "instance-two"))
    assert taken.node_register.node.instance_id == "instance-two"
    assert taken.node_register.node.incarnation == 2
    # The first agent, back from a partition, may not renew the new holder's lease.
    held = cluster.machine.snapshot()
    stale = cluster.run(node_heartbeat=membership_pb2.HeartbeatRequest(node_id="a1", instance_id="instance-one"))
    assert error_code(stale) == common_pb2.ERROR_CODE_FAILED_PRECONDITION
    assert "registered again by another agent" in stale.error.message and "incarnation 2" in stale.error.message
    assert command_pb2.StateSnapshot.FromString(cluster.machine.snapshot()).revision == (
        command_pb2.StateSnapshot.FromString(held).revision
    )
    for instance in ("instance-two", ""):  # its own, and a heartbeat that names none (older agents)
        expect_ok(cluster.run(node_heartbeat=membership_pb2.HeartbeatRequest(node_id="a1", instance_id=instance)))


def test_a_deregistered_node_is_free_and_unknown_instances_register_as_before() -> None:
    cluster = Cluster()
    expect_ok(_register_as(cluster, "a1", "one"))
    expect_ok(cluster.run(node_deregister=membership_pb2.DeregisterNodeRequest(node_id="a1")))
    assert cluster.machine.membership.nodes["a1"].state == LEFT
    expect_ok(_register_as(cluster, "a1", "two"))  # a clean stop frees the id at once

    # A request without an instance (a server registering itself, an older agent) is not refused,
    # and leaves the record's instance as it was.
    kept = expect_ok(_register_as(cluster, "a1", ""))
    assert kept.node_register.node.instance_id == "two"
    # A record without one (an older agent, an old snapshot) is claimed by the first instance that registers.
    expect_ok(_register_as(cluster, "b1", ""))
    claimed = expect_ok(_register_as(cluster, "b1", "three"))
    assert claimed.node_register.node.instance_id == "three" and claimed.node_register.node.incarnation == 1
    assert error_code(_register_as(cluster, "b1", "four")) == common_pb2.ERROR_CODE_FAILED_PRECONDITION

    too_long = _register_as(cluster, "c1", "x" * 65)
    assert error_code(too_long) == common_pb2.ERROR_CODE_INVALID_ARGUMENT and "instance id" in too_long.error.message


def test_a_snapshot_from_before_instance_ids_loads_and_its_nodes_can_be_claimed() -> None:
    cluster = Cluster()
    expect_ok(_register_as(cluster, "a1", ""))
    # A record without an instance id serializes exactly as before the field existed (proto3 leaves
    # an empty string out), so this snapshot is byte for byte one an older server wrote.
    twin = Cluster()
    twin.machine.restore(cluster.machine.snapshot())
    assert twin.machine.membership.nodes["a1"].instance_id == ""
    twin.now = cluster.now
    expect_ok(_register_as(twin, "a1", "new"))
    assert error_code(_register_as(twin, "a1", "other")) == common_pb2.ERROR_CODE_FAILED_PRECONDITION


def test_a_backup_with_an_oversized_instance_id_is_refused() -> None:
    """A backup being restored is outside input: its records are checked like a registration."""
    cluster = Cluster()
    expect_ok(_register_as(cluster, "a1", "one"))
    state = cluster.machine.membership.to_state()
    MembershipTable.validate_state(state)
    state.nodes[0].instance_id = "x" * 65
    with pytest.raises(Refused, match="instance id"):
        MembershipTable.validate_state(state)


def test_a_network_or_replica_naming_nothing_registered_is_accepted_with_a_warning() -> None:
    """Accepted, so a network can be set up before its model is registered and an artifact recorded
    before its node's agent registers; but the answer says what looks wrong."""
    cluster = Cluster()

    def create(name: str, model: str) -> list[str]:
        network = membership_pb2.Network(name=name, model=model, max_clients=2)
        result = expect_ok(cluster.run(network_create=membership_pb2.CreateNetworkRequest(network=network)))
        return list(result.network_create.warnings)

    cluster.enable("multi_network")
    warned = create("eu", "llama-3")
    assert len(warned) == 1 and "model 'llama-3' is not registered (yet)" in warned[0]
    register = models_pb2.RegisterVersionRequest(model="Llama-3", sha256="a" * 64, size_bytes=1, format=1)
    expect_ok(cluster.run(model_register=register))
    assert create("us", "llama-3") == []  # names match ignoring case, as membership matches them
    assert create("asia", "Llama-3") == []
    assert "has no version or alias '4'" in create("v4", "Llama-3@4")[0]
    assert "has no version or alias 'prod'" in create("prod", "Llama-3@prod")[0]
    update = membership_pb2.UpdateNetworkRequest(
        network=membership_pb2.Network(name="eu", model="Llama-3"), update_mask=["model"]
    )
    assert list(expect_ok(cluster.run(network_update=update)).network_update.warnings) == []

    def replica(node_id: str) -> list[str]:
        request = models_pb2.ReplicaRequest(model="Llama-3", version=1, node_id=node_id)
        return list(expect_ok(cluster.run(model_add_replica=request)).model_add_replica.warnings)

    assert replica("gpu-9") == ["node 'gpu-9' is not registered in membership; recorded anyway"]
    cluster.register("gpu-1")
    assert replica("gpu-1") == []
    expect_ok(cluster.run(node_deregister=membership_pb2.DeregisterNodeRequest(node_id="gpu-1")))
    assert replica("gpu-1") == ["node 'gpu-1' is left; recorded anyway"]
    assert set(cluster.machine.registry.version("Llama-3", 1).replicas) == {"gpu-1", "gpu-9"}
