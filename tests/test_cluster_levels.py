"""Cluster levels in the pure state machine: raised, never lowered, kept by snapshots and restores;
below a feature's level the machine applies commands as the releases before the feature did."""

from __future__ import annotations

from test_ports_state import Driver, assign, command, declared, observe, register, restore_state

from controlplane.state import levels
from controlplane.state.machine import CLUSTER_LEVEL_KEY, DOMAIN_CLUSTER, StateMachine
from controlplane.state.ports import TCP, UDP
from controlplane.v1 import command_pb2, common_pb2, ports_pb2

FAILED_PRECONDITION = common_pb2.ERROR_CODE_FAILED_PRECONDITION
INVALID = common_pb2.ERROR_CODE_INVALID_ARGUMENT


def set_level(level: int) -> command_pb2.Command:
    return command(set_cluster_level=command_pb2.SetClusterLevel(level=level))


def test_the_level_starts_at_the_base_rises_and_never_falls() -> None:
    d = Driver(level=levels.BASE_LEVEL)
    base_snapshot = d.machine.snapshot()
    assert d.machine.cluster_level == levels.BASE_LEVEL
    assert not command_pb2.StateSnapshot.FromString(base_snapshot).cluster_level, "written as before levels"
    raised = d.ok(set_level(levels.UDP_PORTS))
    assert raised.cluster_level.changed and d.machine.cluster_level == levels.UDP_PORTS
    (event,) = d.machine.events_from(raised.revision, max_events=1)
    assert (event.domain, event.key, event.kv.value) == (DOMAIN_CLUSTER, CLUSTER_LEVEL_KEY, b"2")
    revision = d.machine.revision
    for lower in (levels.UDP_PORTS, levels.BASE_LEVEL, 0):
        again = d.ok(set_level(lower))
        assert not again.cluster_level.changed and again.cluster_level.level == levels.UDP_PORTS
    assert d.machine.revision == revision, "a level at or below the current one changes nothing"
    replica = StateMachine()
    replica.restore(d.machine.snapshot())
    assert replica.cluster_level == levels.UDP_PORTS and replica.snapshot() == d.machine.snapshot()
    # A level above this release's is stored all the same, so the replicas agree (Status says the
    # server is too old).
    assert d.ok(set_level(levels.APPLY_LEVEL + 1)).cluster_level.changed


def test_below_udp_ports_the_machine_applies_as_the_releases_before_udp() -> None:
    old = Driver(level=levels.BASE_LEVEL)
    old.ok(assign("h1", "dns", 53, name="tcp"))
    # A release from before UDP dropped the protocol: a second assignment of port 53.
    old.refused(assign("h1", "dns", 53, name="udp", protocol=UDP), FAILED_PRECONDITION, "dns/tcp")
    old.refused(observe("h1", (53, "a"), (53, "b", UDP)), INVALID, "port 53 appears twice")
    old.ok(observe("h1", (53, "dns"), complete_for=(TCP, UDP)))
    assert not old.ports.observations["h1"].complete_for, "dropped, as the releases before it did"
    record = old.ok(register("h1", "ntp", declared("ntp", 123, protocol="udp"))).service_register.service
    assert [(a.port, a.protocol) for a in record.ports] == [(123, TCP)]
    assert record.manifest.ports[0].protocol == "udp", "the manifest is stored as given"

    # Raised: UDP now means UDP, and what was applied before keeps its meaning (a replay of the
    # same log gives the same state), until the manifest is registered again.
    old.ok(set_level(levels.UDP_PORTS))
    assert old.ports.assignments[("h1", "ntp", "ntp")].protocol == TCP
    assert old.ok(assign("h1", "dns", 53, name="udp", protocol=UDP)).ports_assign.assignment.protocol == UDP
    again = old.ok(register("h1", "ntp", declared("ntp", 123, protocol="udp"))).service_register.service
    assert [(a.port, a.protocol) for a in again.ports] == [(123, UDP)]


def test_a_restore_keeps_the_cluster_level_and_reads_the_backup_at_it() -> None:
    source = Driver(level=levels.PLACEMENT)  # below SNAPSHOT_TABLES: a backup every release reads
    source.ok(assign("h1", "dns", 53, name="tcp"))
    source.ok(assign("h1", "dns", 53, name="udp", protocol=UDP))
    backup = source.machine.snapshot()
    # Into a cluster still at the base: read as its releases read it, 53 twice, so refused.
    old = Driver(level=levels.BASE_LEVEL)
    old.refused(restore_state(backup), INVALID, "share port 53")
    assert old.machine.cluster_level == levels.BASE_LEVEL
    # A backup of format 2 is refused there as the releases before SNAPSHOT_TABLES refuse it.
    old.refused(restore_state(Driver().machine.snapshot()), INVALID, "format version 2 is not supported")
    # A backup without the clash restores into the base-level cluster as its releases read it: TCP.
    udp_only = Driver(level=levels.PLACEMENT)
    udp_only.ok(assign("h1", "dns", 53, name="udp", protocol=UDP))
    old.ok(restore_state(udp_only.machine.snapshot()))
    assert old.ports.assignments[("h1", "dns", "udp")].protocol == TCP
    # Into a cluster at the level: restored, and a base-level backup does not lower the level.
    current = Driver()
    current.ok(restore_state(backup))
    assert current.ports.holder("h1", 53, UDP) is not None
    current.ok(restore_state(StateMachine().snapshot()))
    assert current.machine.cluster_level == levels.APPLY_LEVEL


def test_required_level_names_what_a_command_needs() -> None:
    def ports(**body: object) -> command_pb2.Command:
        return command(**body)  # type: ignore[arg-type]

    udp = ports(ports_allocate=ports_pb2.AllocateRequest(host="h", service="s", protocol=UDP))
    tcp = ports(ports_allocate=ports_pb2.AllocateRequest(host="h", service="s"))
    manifest = ports_pb2.ServiceManifest(name="s", host="h", ports=[declared("p", 5, protocol=" UDP ")])
    registered = ports(service_register=ports_pb2.RegisterServiceRequest(manifest=manifest))
    imported = ports(
        ports_import=ports_pb2.ImportPortsRequest(
            map=ports_pb2.PortMap(
                observations=[ports_pb2.HostObservation(host="h", ports=[ports_pb2.ObservedPort(port=5, protocol=UDP)])]
            )
        )
    )
    # A manifest's protocol text needs no level: below UDP_PORTS it applies as TCP, as it always did.
    assert [levels.required_level(c) for c in (udp, tcp, registered, imported)] == [2, 1, 1, 2]
    assert levels.required_level(command(kv_put=command_pb2.KvPut(key="k", value=b"v"))) == levels.BASE_LEVEL
    placed = ports(service_start=ports_pb2.StartServiceRequest(name="s", manifest=manifest))
    started = ports(service_start=ports_pb2.StartServiceRequest(host="h", name="s"))
    assert [levels.required_level(c) for c in (placed, started)] == [levels.PLACEMENT, levels.BASE_LEVEL]
    assert not levels.as_applied_at(placed, levels.UDP_PORTS).service_start.HasField("manifest")
    legacy = levels.as_applied_at(imported, levels.BASE_LEVEL)
    assert legacy.ports_import.map.observations[0].ports[0].protocol == TCP
    assert imported.ports_import.map.observations[0].ports[0].protocol == UDP, "the original is left alone"
    assert levels.as_applied_at(imported, levels.UDP_PORTS) is imported


def test_a_dump_an_older_release_wrote_is_read_without_the_protocols_it_kept_unread() -> None:
    # A release before UDP ports keeps a PortProtocol it does not know as an unknown field, in
    # its state and its dump; the state says level 1, so the protocol never meant anything.
    d = Driver()
    d.ok(assign("h1", "dns", 53, name="udp", protocol=UDP))
    snapshot = command_pb2.StateSnapshot.FromString(d.machine.snapshot())
    snapshot.ClearField("cluster_level")
    replica = StateMachine()
    replica.restore(snapshot.SerializeToString())
    assert replica.cluster_level == levels.BASE_LEVEL
    assert replica.ports.assignments[("h1", "dns", "udp")].protocol == TCP
    assert replica.ports.by_port == {"h1": {(53, TCP): ("h1", "dns", "udp")}}


def test_the_end_marker_stays_last_with_only_the_level_in_the_tail() -> None:
    d = Driver()
    marker = command_pb2.StateSnapshot(end_marker=0x5AFE5AFE).SerializeToString()
    data = d.machine.snapshot()
    assert data.endswith(marker) and command_pb2.StateSnapshot.FromString(data).cluster_level == levels.APPLY_LEVEL
    truncated = data[: -len(marker)]
    assert command_pb2.StateSnapshot.FromString(truncated).end_marker == 0, "a cut snapshot lacks its marker"


def test_no_map_holds_port_protocols() -> None:
    """The level walkers (levels._messages_in) look into message values only: a map whose values
    are PortProtocols would escape them. None exists; this fails the day one is added."""
    from google.protobuf.descriptor import FieldDescriptor

    from controlplane.v1 import cluster_pb2, gossip_pb2, membership_pb2, models_pb2

    protocol = ports_pb2.DESCRIPTOR.enum_types_by_name["PortProtocol"]
    seen: set[str] = set()
    pending = [
        message
        for module in (ports_pb2, command_pb2, cluster_pb2, membership_pb2, models_pb2, gossip_pb2)
        for message in module.DESCRIPTOR.message_types_by_name.values()
    ]
    while pending:
        message = pending.pop()
        if message.full_name in seen:
            continue
        seen.add(message.full_name)
        for field in message.fields:
            if field.type != FieldDescriptor.TYPE_MESSAGE:
                continue
            entry = field.message_type
            if entry.GetOptions().map_entry:
                assert entry.fields_by_name["value"].enum_type is not protocol, field.full_name
            pending.append(entry)
    assert "controlplane.v1.Command" in seen and "controlplane.v1.PortMap" in seen
