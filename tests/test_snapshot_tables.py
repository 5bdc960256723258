"""Snapshots by domain table (format 2): every table's state round-trips, format 1 still restores
and is still written below SNAPSHOT_TABLES, a snapshot names its tables, and a domain added to
the machine is one more entry that older snapshots restore without.

The per-domain behaviour of a restore is tested with each domain (test_ports_state.py,
test_auth_state.py, ...); this file pins down the snapshot layout itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

import pytest

from controlplane.state import levels, snapshot_v1
from controlplane.state.journal import Journal
from controlplane.state.machine import SNAPSHOT_END_MARKER, SnapshotError, StateMachine, batch_entry, parse_snapshot
from controlplane.state.refusal import Handler, invalid
from controlplane.state.tables import BackupSource, DomainTable
from controlplane.v1 import (
    auth_pb2,
    command_pb2,
    gossip_pb2,
    kv_pb2,
    leases_pb2,
    membership_pb2,
    models_pb2,
    ports_pb2,
)

from machine_driver import MachineDriver

AGENT = membership_pb2.NODE_ROLE_AGENT
#: Written by the release before format 2 (fixtures/make_snapshot_format1.py says how).
FORMAT_1_FROM_THE_LAST_RELEASE = Path(__file__).parent / "fixtures" / "snapshot_format1_level3.bin"


def apply(machine: StateMachine, *bodies: dict[str, Any]) -> None:
    """Apply commands (one per body) in one entry each, and insist that every one succeeded."""
    driver = MachineDriver(now=machine.time_unix_ms, make_machine=lambda: machine)
    for body in bodies:
        driver.ok(**body)


def populated(level: int = levels.APPLY_LEVEL) -> StateMachine:
    """A machine with something in every table, at ``level``."""
    machine = StateMachine()
    apply(
        machine,
        {"set_cluster_level": command_pb2.SetClusterLevel(level=level)},
        {"kv_put": command_pb2.KvPut(key="app/a", value=b"1")},
        {
            "member_upsert": command_pb2.MemberUpsert(
                member=command_pb2.MemberRecord(id="s1", raft_address="10.0.0.1:7000", client_address="10.0.0.1:7001")
            )
        },
        {"ports_allocate": ports_pb2.AllocateRequest(host="h1", service="web", name="http")},
        {"lease_grant": leases_pb2.GrantLeaseRequest(ttl_ms=60_000)},
        {
            "model_register": models_pb2.RegisterVersionRequest(
                model="m", sha256=hashlib.sha256(b"m").hexdigest(), format=models_pb2.MODEL_FORMAT_GGUF
            )
        },
        {
            "node_register": membership_pb2.RegisterNodeRequest(
                node=membership_pb2.NodeSpec(id="a1", role=AGENT), lease_ttl_ms=10_000
            )
        },
        {
            "gossip_report_bandwidth": gossip_pb2.ReportBandwidthRequest(
                node_id="a1", links=[gossip_pb2.LinkReport(peer="a2", bandwidth_bps=1e6, samples=2)]
            )
        },
        {"auth": auth_pb2.AuthCommand(user_add="bob")},
    )
    return machine


def table_states(machine: StateMachine) -> dict[str, bytes]:
    return {table.name: table.to_state().SerializeToString(deterministic=True) for table in machine.tables}


def test_every_table_is_one_entry_and_round_trips() -> None:
    machine = populated()
    data = machine.snapshot()
    snapshot = parse_snapshot(data)
    assert snapshot.format_version == 2 and data.endswith(
        command_pb2.StateSnapshot(end_marker=SNAPSHOT_END_MARKER).SerializeToString()
    )
    assert [entry.name for entry in snapshot.tables] == [table.name for table in machine.tables]
    copy = StateMachine()
    copy.restore(data)
    assert table_states(copy) == table_states(machine)
    assert copy.snapshot() == data
    assert copy.cluster_level == levels.APPLY_LEVEL and copy.revision == machine.revision


def test_a_table_at_its_defaults_is_left_out() -> None:
    machine = populated()
    apply(machine, {"kv_delete": command_pb2.KvDelete(key="app/a")})
    assert "kv" not in [entry.name for entry in parse_snapshot(machine.snapshot()).tables]
    empty = StateMachine()
    apply(empty, {"set_cluster_level": command_pb2.SetClusterLevel(level=levels.APPLY_LEVEL)})
    assert list(parse_snapshot(empty.snapshot()).tables) == []


def test_below_the_level_format_1_is_written_and_both_formats_restore_the_same_state() -> None:
    old = populated(levels.PLACEMENT)
    legacy = old.snapshot()
    assert command_pb2.StateSnapshot.FromString(legacy).format_version == snapshot_v1.FORMAT_VERSION
    assert list(command_pb2.StateSnapshot.FromString(legacy).tables) == []
    # The same state at the level writes format 2; both restore to the same tables.
    new = StateMachine()
    new.restore(legacy)
    assert new.snapshot() == legacy, "format 1 is written back byte for byte"
    apply(new, {"set_cluster_level": command_pb2.SetClusterLevel(level=levels.SNAPSHOT_TABLES)})
    current = new.snapshot()
    assert parse_snapshot(current).format_version == 2
    from_current = StateMachine()
    from_current.restore(current)
    assert table_states(from_current) == table_states(new) == table_states(old)


def test_a_format_1_snapshot_of_the_last_release_restores_and_is_written_back_byte_for_byte() -> None:
    data = FORMAT_1_FROM_THE_LAST_RELEASE.read_bytes()
    machine = StateMachine()
    machine.restore(data)
    assert machine.cluster_level == levels.PLACEMENT and list(machine.directory.removed_members) == ["s2"]
    assert "bob" in machine.auth.users and machine.gossip.to_state().matrix.links
    assert machine.snapshot() == data
    # Raised to SNAPSHOT_TABLES it writes format 2, which holds the same tables.
    apply(machine, {"set_cluster_level": command_pb2.SetClusterLevel(level=levels.SNAPSHOT_TABLES)})
    again = StateMachine()
    again.restore(machine.snapshot())
    assert table_states(again) == table_states(machine)
    legacy = StateMachine()
    legacy.restore(data)
    assert table_states(again) == table_states(legacy)


def test_gossip_is_a_table_of_its_own_in_format_2_and_nested_in_membership_in_format_1() -> None:
    legacy = command_pb2.StateSnapshot.FromString(populated(levels.PLACEMENT).snapshot())
    assert legacy.membership.gossip.matrix.links
    current = parse_snapshot(populated().snapshot())
    states = {entry.name: entry.state for entry in current.tables}
    assert gossip_pb2.GossipState.FromString(states["gossip"]).matrix.links
    assert not membership_pb2.MembershipState.FromString(states["membership"]).HasField("gossip")


def test_a_restore_through_the_log_takes_a_format_2_backup_only_at_the_level() -> None:
    backup = populated().snapshot()
    restore = command_pb2.Command(restore_state=command_pb2.RestoreState(snapshot=backup))
    assert levels.required_level(restore) == levels.SNAPSHOT_TABLES
    legacy = command_pb2.Command(
        restore_state=command_pb2.RestoreState(snapshot=populated(levels.PLACEMENT).snapshot())
    )
    assert levels.required_level(legacy) == levels.BASE_LEVEL
    # Below the level, refused word for word as the releases before format 2 refuse it.
    below = populated(levels.PLACEMENT)
    (refused,) = below.apply_entry(batch_entry(below.time_unix_ms + 10, "n1", [restore]))
    assert refused.error.message == "snapshot format version 2 is not supported (this server reads version 1)"
    assert below.kv.get("app/a").value == b"1" and refused.revision == below.revision
    target = StateMachine()
    apply(target, {"set_cluster_level": command_pb2.SetClusterLevel(level=levels.SNAPSHOT_TABLES)})
    (result,) = target.apply_entry(batch_entry(target.time_unix_ms + 10, "n1", [restore]))
    assert result.restore.keys == 1 and target.kv.get("app/a") is not None


BAD_TABLES = {
    "unknown table": ([command_pb2.TableState(name="quotas", state=b"")], "newer release"),
    "a table twice": ([command_pb2.TableState(name="kv"), command_pb2.TableState(name="kv")], "twice"),
    "a table that does not parse": ([command_pb2.TableState(name="kv", state=b"\xff")], "does not parse"),
}


@pytest.mark.parametrize(("tables", "message"), BAD_TABLES.values(), ids=BAD_TABLES.keys())
def test_a_snapshot_with_bad_tables_is_refused_and_changes_nothing(
    tables: list[command_pb2.TableState], message: str
) -> None:
    data = (
        command_pb2.StateSnapshot(format_version=2, cluster_level=levels.APPLY_LEVEL, tables=tables).SerializeToString()
        + command_pb2.StateSnapshot(end_marker=SNAPSHOT_END_MARKER).SerializeToString()
    )
    machine = populated()
    before = (machine.revision, table_states(machine))
    with pytest.raises(SnapshotError, match=message):
        machine.restore(data)
    (result,) = machine.apply_entry(
        batch_entry(
            machine.time_unix_ms + 10,
            "n1",
            [command_pb2.Command(restore_state=command_pb2.RestoreState(snapshot=data))],
        )
    )
    assert message in result.error.message
    assert (machine.revision, table_states(machine)) == before


def test_format_2_refuses_format_1_fields_and_format_1_ignores_tables_as_its_releases_did() -> None:
    marker = command_pb2.StateSnapshot(end_marker=SNAPSHOT_END_MARKER).SerializeToString()
    v2_with_keys = command_pb2.StateSnapshot(format_version=2, kvs=[kv_pb2.KeyValue(key="a")]).SerializeToString()
    with pytest.raises(SnapshotError, match="damaged"):
        parse_snapshot(v2_with_keys + marker)
    # A release that wrote format 1 read an unknown field 18 as nothing: so does this one, in format 1.
    key = kv_pb2.KeyValue(key="a", value=b"1", create_revision=1, mod_revision=1, version=1)
    v1_with_tables = command_pb2.StateSnapshot(
        format_version=1, revision=1, kvs=[key], tables=[command_pb2.TableState(name="quotas")]
    ).SerializeToString()
    machine = StateMachine()
    machine.restore(v1_with_tables + marker)
    assert machine.kv.get("a") == key


def test_a_table_format_1_cannot_hold_is_written_in_format_2_rather_than_dropped() -> None:
    machine = WithNotes()
    assert command_pb2.StateSnapshot.FromString(machine.snapshot()).format_version == 1
    machine.notes.notes["kept"] = b"yes"
    data = machine.snapshot()
    assert parse_snapshot(data).format_version == 2
    again = WithNotes()
    again.restore(data)
    assert again.notes.notes == {"kept": b"yes"} and again.cluster_level == levels.BASE_LEVEL


# ------------------------------------------------------------------- a domain added later


class NotesTable:
    """The smallest domain: notes by key in a ``KvState``, no commands. Stands in for a domain a
    later release adds (a real one also adds its commands to command.proto and a cluster level)."""

    name: ClassVar[str] = "notes"
    state_type: ClassVar[type[command_pb2.KvState]] = command_pb2.KvState
    backup_noun: ClassVar[str] = "bad notes"

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.notes: dict[str, bytes] = {}

    def handlers(self) -> dict[str, Handler]:
        return {}

    def reset(self) -> None:
        self.notes = {}

    def to_state(self) -> command_pb2.KvState:
        return command_pb2.KvState(kvs=[kv_pb2.KeyValue(key=k, value=v) for k, v in sorted(self.notes.items())])

    def load_state(self, state: command_pb2.KvState | None) -> None:
        self.notes = {kv.key: kv.value for kv in state.kvs} if state is not None else {}

    def check_backup(self, state: command_pb2.KvState | None, backup: BackupSource) -> None:
        if state is not None and any(not kv.key for kv in state.kvs):
            raise invalid("a note without a key")

    def restore_backup(self, state: command_pb2.KvState | None, backup: BackupSource) -> None:
        self.load_state(state)


class WithNotes(StateMachine):
    def _make_tables(self) -> tuple[DomainTable[Any], ...]:
        self.notes = NotesTable(self)
        return (*super()._make_tables(), self.notes)


def test_a_new_domain_is_one_more_entry_and_older_snapshots_restore_without_it() -> None:
    older = populated()
    newer = WithNotes()
    newer.restore(older.snapshot())  # no "notes" entry: the table's defaults
    assert newer.notes.notes == {} and table_states(older).items() <= table_states(newer).items()
    assert newer.snapshot() == older.snapshot(), "a table at its defaults changes no byte"
    newer.notes.notes["hello"] = b"world"
    data = newer.snapshot()
    assert [entry.name for entry in parse_snapshot(data).tables][-1] == "notes"
    again = WithNotes()
    again.restore(data)
    assert again.notes.notes == {"hello": b"world"}
    # A release without the table refuses the snapshot rather than dropping the domain's state.
    with pytest.raises(SnapshotError, match="'notes', which this release does not know"):
        StateMachine().restore(data)
    # A backup's notes are checked like any table's part.
    newer.notes.notes[""] = b"no key"
    (result,) = again.apply_entry(
        batch_entry(
            again.time_unix_ms + 10,
            "n1",
            [command_pb2.Command(restore_state=command_pb2.RestoreState(snapshot=newer.snapshot()))],
        )
    )
    assert result.error.message == "backup holds bad notes: a note without a key"
