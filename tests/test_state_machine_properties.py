"""Focused properties of the replicated state machine: determinism, never raising, the bounds of
the dedupe table, and restoring a backup through the log (RestoreState).

The whole-behaviour model test is in test_state_machine.py; these pin down what a random walk
reaches only by luck (exact time boundaries, corrupt input, the uint64 edge).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.state import limits, snapshot_v1
from controlplane.state.machine import (
    SNAPSHOT_END_MARKER,
    SNAPSHOT_FORMAT_VERSION,
    SnapshotError,
    StateMachine,
    batch_entry,
    parse_snapshot,
)
from controlplane.v1 import command_pb2, common_pb2, kv_pb2

INVALID = common_pb2.ERROR_CODE_INVALID_ARGUMENT
UINT64_MAX = 2**64 - 1
INT64 = st.integers(-(2**63), 2**63 - 1)

FAST = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def put(key: str, value: bytes = b"v", request_id: str = "") -> command_pb2.Command:
    return command_pb2.Command(request_id=request_id, kv_put=command_pb2.KvPut(key=key, value=value))


def upsert(member_id: str, raft: str = "10.0.0.1:7000", client: str = "10.0.0.1:7001") -> command_pb2.Command:
    record = command_pb2.MemberRecord(id=member_id, raft_address=raft, client_address=client)
    return command_pb2.Command(member_upsert=command_pb2.MemberUpsert(member=record))


def backup(revision: int, *kvs: kv_pb2.KeyValue, **fields: object) -> bytes:
    """A well-formed backup (StateSnapshot) holding ``kvs``; ``fields`` override any field."""
    snapshot = command_pb2.StateSnapshot(
        format_version=snapshot_v1.FORMAT_VERSION, revision=revision, kvs=kvs, end_marker=SNAPSHOT_END_MARKER
    )
    for name, value in fields.items():
        setattr(snapshot, name, value)
    return snapshot.SerializeToString(deterministic=True)


def restore_state(snapshot: bytes, request_id: str = "") -> command_pb2.Command:
    return command_pb2.Command(request_id=request_id, restore_state=command_pb2.RestoreState(snapshot=snapshot))


def apply(machine: StateMachine, time_unix_ms: int, *commands: command_pb2.Command) -> list[command_pb2.CommandResult]:
    return machine.apply_entry(batch_entry(time_unix_ms, "leader-1", commands))


def machine_with(*commands: command_pb2.Command, **limits_: int) -> StateMachine:
    machine = StateMachine(**limits_)
    for index, command in enumerate(commands):
        apply(machine, 1_000 + index, command)
    return machine


# ------------------------------------------------------------------- arbitrary well-formed input

KEYS = st.one_of(st.sampled_from(["", "a", "b", "a/b", "k" * 4097]), st.text(max_size=4))
IDS = st.one_of(st.sampled_from(["", "r1", "r2", "r3", "r" * 129]), st.text(max_size=6))
ADDRESSES = st.one_of(st.sampled_from(["10.0.0.1:1", "10.0.0.2:1", "[::1]:2", "h:0", "h"]), st.text(max_size=8))


@st.composite
def snapshots(draw: st.DrawFn) -> bytes:
    """Backups: mostly well-formed, with any revision a uint64 can hold."""
    snapshot = command_pb2.StateSnapshot(
        format_version=draw(st.sampled_from([1, 1, 0, 2, 3, 2**32 - 1])),
        revision=draw(st.one_of(st.integers(0, 100), st.integers(0, UINT64_MAX))),
        end_marker=draw(st.sampled_from([SNAPSHOT_END_MARKER, SNAPSHOT_END_MARKER, 0, SNAPSHOT_END_MARKER ^ 1])),
        time_unix_ms=draw(INT64),
        kvs=[
            kv_pb2.KeyValue(key=key, value=value, create_revision=rev, mod_revision=rev, version=1)
            for key, value, rev in draw(
                st.lists(st.tuples(KEYS, st.binary(max_size=4), st.integers(0, UINT64_MAX)), max_size=3)
            )
        ],
        removed_members=draw(st.lists(st.text(max_size=3), max_size=2)),
    )
    encoded = snapshot.SerializeToString()
    return draw(st.one_of(st.just(encoded), st.binary(max_size=20), st.just(encoded[: draw(st.integers(0, 30))])))


@st.composite
def commands(draw: st.DrawFn) -> command_pb2.Command:
    command = command_pb2.Command(request_id=draw(IDS))
    kind = draw(st.sampled_from(["none", "put", "delete", "cas", "barrier", "upsert", "remove", "restore"]))
    if kind == "put":
        command.kv_put.CopyFrom(
            command_pb2.KvPut(key=draw(KEYS), value=draw(st.binary(max_size=4)), prev_kv=draw(st.booleans()))
        )
    elif kind == "delete":
        command.kv_delete.key = draw(KEYS)
    elif kind == "cas":
        command.kv_compare_and_swap.CopyFrom(
            command_pb2.KvCompareAndSwap(
                key=draw(KEYS),
                expected_mod_revision=draw(st.one_of(st.integers(0, 8), st.just(UINT64_MAX))),
                value=draw(st.binary(max_size=4)),
                delete=draw(st.booleans()),
            )
        )
    elif kind == "barrier":
        command.barrier.SetInParent()
    elif kind == "upsert":
        command.member_upsert.member.CopyFrom(
            command_pb2.MemberRecord(
                id=draw(st.one_of(st.sampled_from(["n1", "n2"]), st.text(max_size=4))),
                raft_address=draw(ADDRESSES),
                client_address=draw(ADDRESSES),
                added_revision=draw(st.integers(0, UINT64_MAX)),
            )
        )
    elif kind == "remove":
        command.member_remove.id = draw(st.one_of(st.sampled_from(["n1", "n2"]), st.text(max_size=4)))
    elif kind == "restore":
        command.restore_state.snapshot = draw(snapshots())
    return command  # "none": an empty body, as a command from a newer server decodes


ENTRIES = st.lists(st.tuples(INT64, st.lists(commands(), max_size=4)), max_size=12)


def check_results(machine: StateMachine, results: object, commands_: list[command_pb2.Command]) -> None:
    assert isinstance(results, list) and len(results) == len(commands_)
    for result in results:
        assert isinstance(result, command_pb2.CommandResult)
        # Exactly one of error or a body is set (command.proto).
        assert result.HasField("error") != (result.WhichOneof("body") is not None), result
        assert result.revision <= machine.revision


@FAST
@given(entries=ENTRIES, history_limit=st.integers(0, 4), dedupe_limit=st.integers(0, 3))
def test_apply_entry_never_raises_on_well_formed_batches(
    entries: list[tuple[int, list[command_pb2.Command]]], history_limit: int, dedupe_limit: int
) -> None:
    machine = StateMachine(history_limit=history_limit, dedupe_limit=dedupe_limit, dedupe_ttl_ms=1_000)
    for time_unix_ms, batch in entries:
        results = machine.apply_entry(batch_entry(time_unix_ms, "leader", batch))
        check_results(machine, results, batch)
        assert machine.time_unix_ms >= max(time_unix_ms, 0)
        assert machine.compacted_revision <= machine.revision
        assert len(machine.events_from(0)) <= history_limit


@FAST
@given(garbage=st.lists(st.binary(max_size=64), max_size=6))
def test_apply_entry_never_raises_on_arbitrary_bytes(garbage: list[bytes]) -> None:
    machine = machine_with(put("a"), upsert("n1"))
    for entry in garbage:
        results = machine.apply_entry(entry)
        assert isinstance(results, list)
        assert all(isinstance(result, command_pb2.CommandResult) for result in results)
    # Whatever it swallowed, the machine still works.
    (result,) = apply(machine, 10**12, put("after"))
    assert result.HasField("kv_put") and machine.kv.get("after") is not None


@FAST
@given(data=st.data())
def test_apply_entry_never_raises_on_damaged_entries(data: st.DataObject) -> None:
    """A valid entry with one byte changed or cut short: the bytes a bad disk would hand back."""
    entry = bytearray(batch_entry(5, "leader", data.draw(st.lists(commands(), min_size=1, max_size=3))))
    if data.draw(st.booleans()):
        at = data.draw(st.integers(0, len(entry) - 1))
        entry[at] = data.draw(st.integers(0, 255))
    else:
        del entry[data.draw(st.integers(0, len(entry))) :]
    machine = StateMachine()
    assert isinstance(machine.apply_entry(bytes(entry)), list)


# ------------------------------------------------------------------- determinism


@FAST
@given(entries=ENTRIES, split=st.integers(0, 12))
def test_same_entries_give_byte_identical_snapshots(
    entries: list[tuple[int, list[command_pb2.Command]]], split: int
) -> None:
    """Two replicas fed the same log agree byte for byte, and so does one restored mid-way."""
    encoded = [batch_entry(time_unix_ms, "leader", batch) for time_unix_ms, batch in entries]
    first, second = StateMachine(history_limit=3, dedupe_limit=2), StateMachine(history_limit=3, dedupe_limit=2)
    late = StateMachine(history_limit=3, dedupe_limit=2)
    for index, entry in enumerate(encoded):
        if index == split:
            late.restore(first.snapshot())
        results = first.apply_entry(entry)
        assert second.apply_entry(entry) == results
        if index >= split:
            assert late.apply_entry(entry) == results
    if split >= len(encoded):
        late.restore(first.snapshot())
    assert first.snapshot() == first.snapshot(), "snapshot() is not stable"
    assert first.snapshot() == second.snapshot() == late.snapshot()
    assert late.events_from(0) == first.events_from(0)


# ------------------------------------------------------------------- dedupe bounds


def test_dedupe_forgets_the_oldest_ids_beyond_the_count_limit() -> None:
    machine = StateMachine(dedupe_limit=3, dedupe_ttl_ms=10**9)
    first = [apply(machine, 1, put("k", str(n).encode(), f"r{n}"))[0] for n in range(4)]
    assert machine.revision == 4
    # r1..r3 are the three newest: answered from the table, nothing written.
    for n in (1, 2, 3):
        assert apply(machine, 2, put("k", b"changed", f"r{n}")) == [first[n]]
    assert machine.revision == 4 and machine.kv.get("k").value == b"3"
    # r0 fell out: the retry executes again.
    (again,) = apply(machine, 2, put("k", b"again", "r0"))
    assert again.revision == 5 and machine.kv.get("k").value == b"again"
    assert [entry.request_id for entry in parse_snapshot(machine.snapshot()).dedupe] == ["r2", "r3", "r0"]


def test_dedupe_forgets_ids_older_than_the_ttl_by_leader_time() -> None:
    machine = StateMachine(dedupe_ttl_ms=1_000)
    (first,) = apply(machine, 10_000, put("k", b"1", "r1"))
    # Exactly the TTL later it is still remembered; a clock that went backwards changes nothing.
    assert apply(machine, 11_000, put("k", b"2", "r1")) == [first]
    assert apply(machine, 500, put("k", b"3", "r1")) == [first]
    assert machine.revision == 1 and machine.time_unix_ms == 11_000
    # One millisecond more and it is forgotten: the retry is a new write.
    (again,) = apply(machine, 11_001, put("k", b"4", "r1"))
    assert again.revision == 2 and machine.kv.get("k").value == b"4"


def test_dedupe_expiry_happens_at_the_start_of_each_entry_on_every_replica_alike() -> None:
    replicas = [StateMachine(dedupe_ttl_ms=100), StateMachine(dedupe_ttl_ms=100)]
    for replica in replicas:
        apply(replica, 0, put("k", b"1", "r1"), put("k", b"2", "r2"))
        apply(replica, 101, command_pb2.Command(barrier=command_pb2.Barrier()))
    assert replicas[0].snapshot() == replicas[1].snapshot()
    assert parse_snapshot(replicas[0].snapshot()).dedupe == []


def test_a_remembered_id_is_honoured_after_snapshot_restore_and_restore_state() -> None:
    machine = StateMachine()
    (first,) = apply(machine, 1, put("k", b"1", "r1"))
    restored = StateMachine()
    restored.restore(machine.snapshot())
    assert apply(restored, 2, put("k", b"2", "r1")) == [first]
    backup = machine_with(put("other")).snapshot()
    apply(restored, 3, restore_state(backup))
    revision = restored.revision
    assert apply(restored, 4, put("k", b"3", "r1")) == [first]
    assert restored.revision == revision and restored.kv.get("k") is None


def test_request_id_length_limit() -> None:
    machine = StateMachine()
    longest = "r" * limits.MAX_REQUEST_ID_CHARS
    (ok,) = apply(machine, 1, put("k", b"1", longest))
    assert apply(machine, 2, put("k", b"2", longest)) == [ok]
    too_long = longest + "r"
    for time_unix_ms in (3, 4):  # refused, and not remembered: refused again the same way
        (refused,) = apply(machine, time_unix_ms, put("k", b"3", too_long))
        assert refused.error.code == INVALID and refused.error.message
    assert machine.revision == 1


@FAST
@given(steps=st.lists(st.tuples(st.integers(-2, 3), st.sampled_from(["r1", "r2", "r3", "r4"])), max_size=30))
def test_dedupe_table_matches_a_naive_model(steps: list[tuple[int, str]]) -> None:
    """Time steps are multiples of half the TTL, so the exact boundary is hit often."""
    ttl, limit = 1_000, 2
    machine = StateMachine(dedupe_limit=limit, dedupe_ttl_ms=ttl)
    remembered: dict[str, tuple[int, command_pb2.CommandResult]] = {}
    clock = now = 0
    for step, rid in steps:
        clock += step * 500
        now = max(now, clock)
        remembered = {r: seen for r, seen in remembered.items() if now - seen[0] <= ttl}
        revision = machine.revision
        (result,) = apply(machine, clock, put("k", rid.encode(), rid))
        if rid in remembered:
            assert result == remembered[rid][1] and machine.revision == revision
        else:
            assert result.revision == revision + 1
            remembered[rid] = (now, result)
            if len(remembered) > limit:
                del remembered[next(iter(remembered))]
    assert [e.request_id for e in parse_snapshot(machine.snapshot()).dedupe] == list(remembered)


# ------------------------------------------------------------------- RestoreState


@pytest.mark.parametrize("backup_ahead", [True, False])
def test_restore_state_replaces_keys_keeps_members_and_compacts_history(backup_ahead: bool) -> None:
    source = machine_with(put("a", b"1"), put("b", b"2"), put("a", b"3"), upsert("src", "9.9.9.9:1", "9.9.9.9:2"))
    if backup_ahead:
        for n in range(10):
            apply(source, 2_000 + n, put("c", str(n).encode()))
    target = machine_with(upsert("n1"), upsert("n2", "10.0.0.2:1", "10.0.0.2:2"), put("mine", b"x"))
    apply(target, 1_900, command_pb2.Command(member_remove=command_pb2.MemberRemove(id="n2")))
    apply(target, 1_950, put("mine", b"y", "target-rid"))
    members, removed = dict(target.directory.members), list(target.directory.removed_members)
    before = max(source.revision, target.revision)

    (result,) = apply(target, 3_000, restore_state(source.snapshot()))

    assert result.HasField("restore") and result.restore.keys == source.kv.key_count()
    assert target.revision == result.revision == before + 1
    assert (
        target.kv.list_keys("")[0] == source.kv.list_keys("")[0]
    )  # the keys and their revision metadata, as backed up
    assert target.kv.get("mine") is None
    assert target.directory.members == members and list(target.directory.removed_members) == removed
    assert target.compacted_revision == target.revision and target.oldest_revision == target.revision + 1
    assert target.events_from(0) == []
    # The dedupe table describes this cluster's clients: it stays.
    assert apply(target, 3_001, put("mine", b"z", "target-rid"))[0].kv_put.kv.key == "mine"
    assert target.revision == result.revision
    # History resumes at the next revision.
    (after,) = apply(target, 3_002, put("a", b"4"))
    assert after.revision == result.revision + 1
    assert [event.revision for event in target.events_from(0)] == [after.revision]
    assert target.kv.get("a").version == source.kv.get("a").version + 1
    assert target.kv.get("a").create_revision == source.kv.get("a").create_revision


CORRUPT_SNAPSHOTS = {
    "not protobuf": b"\xff\xff\xff",
    "truncated varint": b"\x08",
    "empty (format 0)": b"",
    "unknown format": backup(1, format_version=SNAPSHOT_FORMAT_VERSION + 1),
    "no end marker": backup(1, kv_pb2.KeyValue(key="a"), end_marker=0),
    "wrong end marker": backup(1, kv_pb2.KeyValue(key="a"), end_marker=SNAPSHOT_END_MARKER ^ 1),
    "revision at the limit": backup(limits.MAX_REVISION),
    "revision at uint64 max": backup(UINT64_MAX),
    "wrong wire type": b"\x0a\x01x",
}


@pytest.mark.parametrize("snapshot", CORRUPT_SNAPSHOTS.values(), ids=CORRUPT_SNAPSHOTS.keys())
def test_restore_state_refuses_a_corrupt_or_unknown_snapshot(snapshot: bytes) -> None:
    with pytest.raises(SnapshotError):
        parse_snapshot(snapshot)
    machine = machine_with(put("a"), upsert("n1"))
    before = machine.snapshot()
    (result,) = apply(machine, machine.time_unix_ms, restore_state(snapshot))
    assert result.error.code == INVALID and result.error.message
    assert result.revision == machine.revision
    assert machine.snapshot() == before
    with pytest.raises(SnapshotError):
        machine.restore(snapshot)
    assert machine.snapshot() == before


@pytest.mark.parametrize("key", ["", "k" * (limits.MAX_KEY_BYTES + 1)])
def test_restore_state_refuses_a_backup_holding_an_invalid_key(key: str) -> None:
    data = backup(3, kv_pb2.KeyValue(key="ok"), kv_pb2.KeyValue(key=key))
    parse_snapshot(data)  # well-formed: refused for its content
    machine = machine_with(put("a"))
    before = machine.snapshot()
    (result,) = apply(machine, machine.time_unix_ms, restore_state(data))
    assert result.error.code == INVALID and "bad key" in result.error.message
    assert machine.snapshot() == before


def test_limits_at_the_boundary_are_accepted() -> None:
    machine = StateMachine()
    results = apply(
        machine,
        1,
        put("k" * limits.MAX_KEY_BYTES),
        put("é" * (limits.MAX_KEY_BYTES // 2)),
        put("v", b"\0" * limits.MAX_VALUE_BYTES),
        upsert("n" * limits.MAX_MEMBER_ID_CHARS, "[::1]:65535", "h:1"),
    )
    assert [result.HasField("error") for result in results] == [False] * 4
    assert machine.revision == 4


# ------------------------------------------------------------------- regressions (bugs these tests found)


@pytest.mark.parametrize(
    ("member_id", "raft", "client"),
    [
        ("n1\n", "10.0.0.1:7000", "10.0.0.1:7001"),  # '$' matches before a trailing newline
        ("n1", "10.0.0.1:7000\n", "10.0.0.1:7001"),
        ("n1", "10.0.0.1:7000", "10.0.0.1:\u0667\u0660\u0660\u0661"),  # '\d' matches Arabic-Indic digits
    ],
    ids=["id-trailing-newline", "address-trailing-newline", "address-non-ascii-digits"],
)
def test_member_upsert_refuses_input_that_only_looks_valid(member_id: str, raft: str, client: str) -> None:
    machine = StateMachine()
    (result,) = apply(machine, 1, upsert(member_id, raft, client))
    assert result.error.code == INVALID, f"accepted member {member_id!r} at {raft!r} / {client!r}"
    assert machine.revision == 0 and machine.directory.members == {}


@pytest.mark.parametrize("revision", [limits.MAX_REVISION, UINT64_MAX])
def test_restore_state_beyond_the_revision_limit_is_refused_not_raised(revision: int) -> None:
    """A backup at the largest uint64 revision used to raise out of apply_entry (backup + 1 does
    not fit the result's uint64 field, and neither did the INTERNAL error built for it): every
    replica would have failed that entry forever."""
    machine = machine_with(put("a", b"1"))
    before = machine.snapshot()
    (result,) = apply(machine, machine.time_unix_ms, restore_state(backup(revision, kv_pb2.KeyValue(key="b"))))
    assert result.error.code == INVALID and machine.snapshot() == before
    (after,) = apply(machine, machine.time_unix_ms + 1, put("c"))
    assert after.HasField("kv_put")


def test_restore_state_just_below_the_revision_limit_works() -> None:
    machine = machine_with(put("a", b"1"))
    (result,) = apply(
        machine,
        5_000,
        restore_state(
            backup(limits.MAX_REVISION - 1, kv_pb2.KeyValue(key="b", create_revision=1, mod_revision=1, version=1))
        ),
    )
    assert result.revision == machine.revision == limits.MAX_REVISION
    (after,) = apply(machine, 5_001, put("c"))
    assert after.revision == limits.MAX_REVISION + 1 and machine.kv.get("c") is not None


def test_a_bug_in_a_handler_becomes_an_internal_error_result() -> None:
    """What the except clause in apply_command is for: a handler that raises must not raise out
    of apply_entry, nor stop the entry's other commands."""
    machine = machine_with(put("a"))

    def broken(command: command_pb2.Command) -> command_pb2.CommandResult:
        raise RuntimeError("boom")

    machine._handlers["barrier"] = broken
    barrier = command_pb2.Command(request_id="b1", barrier=command_pb2.Barrier())
    failed, written = apply(machine, 5_000, barrier, put("b"))
    assert failed.error.code == common_pb2.ERROR_CODE_INTERNAL and "boom" in failed.error.message
    assert written.HasField("kv_put") and machine.kv.get("b") is not None
    assert apply(machine, 5_001, barrier) == [failed]  # recorded like any result


def test_truncated_snapshot_is_refused() -> None:
    """A backup cut short at a field boundary (a partial download, a full disk) must not restore.

    Protobuf cannot tell such a prefix from a smaller valid message: before the end marker it
    parsed as a backup with fewer (or no) keys, and RestoreState silently replaced the user's data.
    """
    source = machine_with(put("a", b"1"), put("b", b"2"), put("c", b"3"))
    snapshot = source.snapshot()
    accepted = []
    for length in range(len(snapshot)):
        try:
            parse_snapshot(snapshot[:length])
        except SnapshotError:
            continue
        accepted.append(length)
    assert accepted == [], f"prefixes of a {len(snapshot)}-byte snapshot parsed as snapshots: {accepted}"
    machine = machine_with(put("mine"))
    (result,) = apply(machine, 5_000, restore_state(snapshot[: len(snapshot) // 2]))
    assert result.error.code == INVALID and machine.kv.get("mine") is not None


@pytest.mark.parametrize(
    "kv",
    [
        kv_pb2.KeyValue(key="k", create_revision=0, mod_revision=1, version=1),
        kv_pb2.KeyValue(key="k", create_revision=3, mod_revision=2, version=1),
        kv_pb2.KeyValue(key="k", create_revision=1, mod_revision=11, version=1),
        kv_pb2.KeyValue(key="k", create_revision=1, mod_revision=1, version=0),
    ],
    ids=["create-zero", "create-after-mod", "mod-after-snapshot", "version-zero"],
)
def test_restore_state_refuses_keys_with_impossible_revisions(kv: kv_pb2.KeyValue) -> None:
    """A key's revisions must fit its snapshot: 1 <= create <= mod <= snapshot revision, version >= 1.
    Otherwise compare-and-swap tokens and watch positions after the restore would be meaningless."""
    machine = machine_with(put("a", b"1"))
    revision, keys = machine.revision, machine.kv.list_keys("")
    (result,) = apply(machine, 5_000, restore_state(backup(10, kv)))
    assert result.error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT and "impossible" in result.error.message
    assert (machine.revision, machine.kv.list_keys("")) == (revision, keys)
