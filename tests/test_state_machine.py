"""Stateful property test of the replicated state machine against a naive reference model.

Hypothesis drives a ``StateMachine`` (plus a twin fed the same entries and, after a
snapshot/restore, a restored copy) through random log entries, and a plain-Python model through
the same commands. After every step the machines must agree with the model and with each other:
keys and their revision metadata, list pagination, revision, machine time, the watch history and
its compaction point, the member directory, and byte-identical snapshots.

The model is deliberately naive (a dict, a counter, a list of events, a dict of remembered request
ids filtered by time): it is the specification the machine's sorted, trimmed, amortised structures
must implement.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from controlplane.state import limits
from controlplane.state.machine import SNAPSHOT_END_MARKER, StateMachine, batch_entry
from controlplane.v1 import command_pb2, common_pb2, kv_pb2, watch_pb2

CommandResult = command_pb2.CommandResult
INVALID = common_pb2.ERROR_CODE_INVALID_ARGUMENT
NOT_FOUND = common_pb2.ERROR_CODE_NOT_FOUND
ALREADY_EXISTS = common_pb2.ERROR_CODE_ALREADY_EXISTS
FAILED_PRECONDITION = common_pb2.ERROR_CODE_FAILED_PRECONDITION
PUT = watch_pb2.EVENT_TYPE_PUT
DELETE = watch_pb2.EVENT_TYPE_DELETE

# A small key space so that writes collide, plus keys at the byte limit (one of them multi-byte:
# the limit counts UTF-8 bytes, not characters).
KEYS = st.one_of(
    st.sampled_from(["a", "ab", "abc", "b", "b/1", "b/2", "é", "z", "a\x00", "k" * 4096, "é" * 2048]),
    st.text(alphabet="ab/", min_size=1, max_size=3),
)
VALUES = st.binary(max_size=8)
MEMBER_IDS = ["n1", "n2", "n3", "n4", "n5", "n6", "a.b_c-1"]
ADDRESSES = ["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000", "[::1]:7001", "node-3.internal:65535", "h:1"]
BAD_MEMBER_IDS = ["", "-n", ".n", "n 1", "n" * 65, "nö"]
BAD_ADDRESSES = [
    "",
    "nohost",
    "h:0",
    "h:65536",
    "h:",
    ":80",
    "h :80",
    "h:80:90",
    "[::1]",
    "[zz]:80",
    "h:123456",
]
# Prefixes and resume points for the list check, including ones below, inside and above the keys.
LIST_PREFIXES = ["", "a", "ab", "b/", "é", "q"]
LIST_STARTS = ["", "0", "a", "ab", "b/1", "zz"]


@dataclass(frozen=True)
class Stored:
    value: bytes
    create: int
    mod: int
    version: int


def full_kv(key: str, stored: Stored) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(
        key=key,
        value=stored.value,
        create_revision=stored.create,
        mod_revision=stored.mod,
        version=stored.version,
    )


def meta_kv(key: str, stored: Stored) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(key=key, create_revision=stored.create, mod_revision=stored.mod, version=stored.version)


def valid_key(key: str) -> bool:
    return 0 < len(key.encode("utf-8")) <= limits.MAX_KEY_BYTES


def valid_member_id(member_id: str) -> bool:
    return (
        0 < len(member_id) <= limits.MAX_MEMBER_ID_CHARS
        and member_id.isascii()
        and member_id[0].isalnum()
        and all(c.isalnum() or c in "._-" for c in member_id)
    )


def valid_address(address: str) -> bool:
    host, colon, port = address.rpartition(":")
    if not colon or not (port.isascii() and port.isdigit() and len(port) <= 5) or not 1 <= int(port) <= 65535:
        return False
    if host.startswith("[") and host.endswith("]"):
        return len(host) > 2 and all(c in "0123456789abcdefABCDEF:." for c in host[1:-1])
    return bool(host) and all(c.isascii() and (c.isalnum() or c in ".-") for c in host)


class Model:
    """What the machine must do, written the obvious way."""

    def __init__(self, history_limit: int, dedupe_limit: int, dedupe_ttl_ms: int) -> None:
        self.history_limit = history_limit
        self.dedupe_limit = dedupe_limit
        self.dedupe_ttl_ms = dedupe_ttl_ms
        self.kvs: dict[str, Stored] = {}
        self.revision = 0
        self.time = 0
        self.events: list[watch_pb2.Event] = []  # every event since the start or the last restore_state
        self.restored_at = 0  # the revision of the last restore_state: nothing older is retained
        self.members: dict[str, command_pb2.MemberRecord] = {}
        self.removed: list[str] = []
        self.dedupe: dict[str, tuple[int, CommandResult]] = {}  # request id -> (time, result), oldest first
        # Backups the test may restore from: their bytes -> (keys, revision); any other bytes are refused.
        self.backups: dict[bytes, tuple[dict[str, Stored], int]] = {}

    # --------------------------------------------------------------- derived views

    @property
    def retained(self) -> list[watch_pb2.Event]:
        return self.events[max(0, len(self.events) - self.history_limit) :]

    @property
    def compacted_revision(self) -> int:
        if len(self.events) > self.history_limit:
            return self.events[-self.history_limit - 1].revision
        return self.restored_at

    # --------------------------------------------------------------- applying

    def begin_entry(self, time_unix_ms: int) -> None:
        self.time = max(self.time, time_unix_ms)
        horizon = self.time - self.dedupe_ttl_ms
        self.dedupe = {rid: seen for rid, seen in self.dedupe.items() if seen[0] >= horizon}

    def recorded(self, command: command_pb2.Command) -> CommandResult | None:
        seen = self.dedupe.get(command.request_id) if command.request_id else None
        return seen[1] if seen is not None else None

    def remember(self, request_id: str, result: CommandResult) -> None:
        if request_id and len(request_id) <= limits.MAX_REQUEST_ID_CHARS and request_id not in self.dedupe:
            self.dedupe[request_id] = (self.time, result)
            while len(self.dedupe) > self.dedupe_limit:
                del self.dedupe[next(iter(self.dedupe))]

    def execute(self, command: command_pb2.Command) -> CommandResult:
        """The expected result of a command not answered from the dedupe table (error messages blank)."""
        if len(command.request_id) > limits.MAX_REQUEST_ID_CHARS:
            return self._error(INVALID)
        kind = command.WhichOneof("body")
        if kind == "kv_put":
            return self._put(command.kv_put)
        if kind == "kv_delete":
            return self._delete(command.kv_delete.key)
        if kind == "kv_compare_and_swap":
            return self._cas(command.kv_compare_and_swap)
        if kind == "barrier":
            return CommandResult(revision=self.revision, barrier=command_pb2.BarrierResult())
        if kind == "member_upsert":
            return self._member_upsert(command.member_upsert.member)
        if kind == "member_remove":
            return self._member_remove(command.member_remove.id)
        if kind == "restore_state":
            return self._restore_state(command.restore_state.snapshot)
        return self._error(INVALID)

    def _error(self, code: int) -> CommandResult:
        return CommandResult(revision=self.revision, error=common_pb2.Error(code=code))

    def _event(self, event_type: int, domain: str, key: str, kv: kv_pb2.KeyValue, prev: kv_pb2.KeyValue | None) -> int:
        self.revision += 1
        event = watch_pb2.Event(revision=self.revision, type=event_type, domain=domain, key=key, time_unix_ms=self.time)
        event.kv.CopyFrom(kv)
        if prev is not None:
            event.prev_kv.CopyFrom(prev)
        self.events.append(event)
        return self.revision

    def _write(self, key: str, value: bytes) -> Stored:
        prev = self.kvs.get(key)
        revision = self.revision + 1
        if prev is None:
            stored = Stored(value, create=revision, mod=revision, version=1)
        else:
            stored = Stored(value, create=prev.create, mod=revision, version=prev.version + 1)
        self.kvs[key] = stored
        self._event(PUT, "kv", key, full_kv(key, stored), full_kv(key, prev) if prev else None)
        return stored

    def _put(self, put: command_pb2.KvPut) -> CommandResult:
        if not valid_key(put.key) or len(put.value) > limits.MAX_VALUE_BYTES:
            return self._error(INVALID)
        prev = self.kvs.get(put.key)
        stored = self._write(put.key, put.value)
        result = CommandResult(revision=self.revision, kv_put=command_pb2.KvPutResult(kv=meta_kv(put.key, stored)))
        if put.prev_kv and prev is not None:
            result.kv_put.prev_kv.CopyFrom(full_kv(put.key, prev))
        return result

    def _delete(self, key: str) -> CommandResult:
        if not valid_key(key):
            return self._error(INVALID)
        prev = self.kvs.pop(key, None)
        body = command_pb2.KvDeleteResult(deleted=prev is not None)
        if prev is not None:
            tombstone = kv_pb2.KeyValue(key=key, mod_revision=self.revision + 1)
            self._event(DELETE, "kv", key, tombstone, full_kv(key, prev))
            body.prev_kv.CopyFrom(full_kv(key, prev))
        return CommandResult(revision=self.revision, kv_delete=body)

    def _cas(self, cas: command_pb2.KvCompareAndSwap) -> CommandResult:
        if not valid_key(cas.key) or len(cas.value) > limits.MAX_VALUE_BYTES:
            return self._error(INVALID)
        current = self.kvs.get(cas.key)
        if (current.mod if current else 0) != cas.expected_mod_revision:
            body = command_pb2.KvCompareAndSwapResult(succeeded=False, found=current is not None)
            if current is not None:
                body.kv.CopyFrom(full_kv(cas.key, current))
            return CommandResult(revision=self.revision, kv_compare_and_swap=body)
        if cas.delete:
            # Deleting a key that must not exist, and does not, succeeds and changes nothing.
            if current is not None:
                self._delete(cas.key)
            return CommandResult(
                revision=self.revision, kv_compare_and_swap=command_pb2.KvCompareAndSwapResult(succeeded=True)
            )
        stored = self._write(cas.key, cas.value)
        return CommandResult(
            revision=self.revision,
            kv_compare_and_swap=command_pb2.KvCompareAndSwapResult(
                succeeded=True, found=True, kv=meta_kv(cas.key, stored)
            ),
        )

    def _member_upsert(self, member: command_pb2.MemberRecord) -> CommandResult:
        if not (
            valid_member_id(member.id) and valid_address(member.raft_address) and valid_address(member.client_address)
        ):
            return self._error(INVALID)
        if member.id in self.removed:
            return self._error(FAILED_PRECONDITION)
        if any(o.id != member.id and o.raft_address == member.raft_address for o in self.members.values()):
            return self._error(ALREADY_EXISTS)
        prev = self.members.get(member.id)
        if prev and (prev.raft_address, prev.client_address) == (member.raft_address, member.client_address):
            return CommandResult(revision=self.revision, member=command_pb2.MemberResult(changed=False))
        record = command_pb2.MemberRecord(
            id=member.id,
            raft_address=member.raft_address,
            client_address=member.client_address,
            added_revision=prev.added_revision if prev else self.revision + 1,
        )
        self.members[member.id] = record
        value = record.SerializeToString(deterministic=True)
        self._event(PUT, "cluster", member.id, kv_pb2.KeyValue(key=member.id, value=value), None)
        return CommandResult(revision=self.revision, member=command_pb2.MemberResult(changed=True))

    def _member_remove(self, member_id: str) -> CommandResult:
        prev = self.members.pop(member_id, None)
        if prev is None:
            return self._error(NOT_FOUND)
        self.removed.append(member_id)
        value = prev.SerializeToString(deterministic=True)
        self._event(
            DELETE,
            "cluster",
            member_id,
            kv_pb2.KeyValue(key=member_id),
            kv_pb2.KeyValue(key=member_id, value=value),
        )
        return CommandResult(revision=self.revision, member=command_pb2.MemberResult(changed=True))

    def _restore_state(self, snapshot: bytes) -> CommandResult:
        if snapshot not in self.backups:
            return self._error(INVALID)
        kvs, revision = self.backups[snapshot]
        self.kvs = dict(kvs)
        self.revision = max(self.revision, revision) + 1
        self.events = []
        self.restored_at = self.revision
        return CommandResult(revision=self.revision, restore=command_pb2.RestoreResult(keys=len(kvs)))


def assert_result(got: CommandResult, want: CommandResult) -> None:
    """Exactly equal, except that an error's message is only required to be there."""
    if want.HasField("error"):
        assert got.HasField("error"), got
        assert got.WhichOneof("body") is None, got
        assert (got.error.code, got.revision) == (want.error.code, want.revision), got
        assert got.error.message, "an error result must say what is wrong"
    else:
        assert got == want


class StateMachineVsModel(RuleBasedStateMachine):
    @initialize(
        history_limit=st.integers(5, 12),
        dedupe_limit=st.integers(3, 8),
        dedupe_ttl_ms=st.sampled_from([2_000, 5_000]),
    )
    def setup(self, history_limit: int, dedupe_limit: int, dedupe_ttl_ms: int) -> None:
        self.limits = {
            "history_limit": history_limit,
            "dedupe_limit": dedupe_limit,
            "dedupe_ttl_ms": dedupe_ttl_ms,
        }
        self.model = Model(history_limit, dedupe_limit, dedupe_ttl_ms)
        self.primary = StateMachine(**self.limits)
        self.twin = StateMachine(**self.limits)  # fed the same entries: determinism
        self.restored: StateMachine | None = None  # restored from a snapshot mid-run, then fed on
        self.clock = 0  # the (unreliable) leader clock
        self.sent: dict[str, command_pb2.Command] = {}  # request id -> the first command sent with it
        self.next_id = 0
        self.answered_from_table: list[bool] = []  # per command of the last entry
        # Values handed to readers, with their bytes when handed out: the machine must never
        # mutate a stored KeyValue (or an event) in place, because readers hold them unlocked.
        self.handed_out: list[tuple[kv_pb2.KeyValue | watch_pb2.Event, bytes]] = []

    @property
    def machines(self) -> list[StateMachine]:
        return [m for m in (self.primary, self.twin, self.restored) if m is not None]

    # --------------------------------------------------------------- helpers

    def _request_id(self, data: st.DataObject) -> str:
        if not data.draw(st.booleans(), label="with request id"):
            return ""
        self.next_id += 1
        return f"req-{self.next_id}"

    def _apply(self, data: st.DataObject, commands: list[command_pb2.Command]) -> list[CommandResult]:
        # Leader clocks disagree: a later entry may carry an earlier time.
        self.clock += data.draw(st.integers(-1_500, 2_500), label="clock step")
        entry = batch_entry(self.clock, "leader-1", commands)
        for command in commands:
            if command.request_id:
                self.sent.setdefault(command.request_id, command)
        results = [machine.apply_entry(entry) for machine in self.machines]
        for other in results[1:]:
            assert other == results[0], "replicas diverged on the same entry"
        got = results[0]
        assert len(got) == len(commands)
        self.model.begin_entry(self.clock)
        self.answered_from_table = []
        for command, result in zip(commands, got, strict=True):
            recorded = self.model.recorded(command)
            self.answered_from_table.append(recorded is not None)
            if recorded is not None:
                assert result == recorded, "a retry must return the recorded result, byte for byte"
            else:
                assert_result(result, self.model.execute(command))
                self.model.remember(command.request_id, result)
        return got

    def _key(self, data: st.DataObject, existing: bool) -> str:
        if existing and self.model.kvs:
            return data.draw(st.sampled_from(sorted(self.model.kvs)), label="existing key")
        return data.draw(KEYS, label="key")

    def _command(self, data: st.DataObject) -> command_pb2.Command:
        """Any valid-or-not command, for batches."""
        kind = data.draw(st.sampled_from(["put", "delete", "cas", "barrier", "member", "invalid", "retry"]))
        if kind == "retry" and self.sent:
            return self.sent[data.draw(st.sampled_from(sorted(self.sent)), label="retried id")]
        rid = self._request_id(data)
        if kind == "put":
            put = command_pb2.KvPut(
                key=self._key(data, False), value=data.draw(VALUES), prev_kv=data.draw(st.booleans())
            )
            return command_pb2.Command(request_id=rid, kv_put=put)
        if kind == "delete":
            return command_pb2.Command(request_id=rid, kv_delete=command_pb2.KvDelete(key=self._key(data, True)))
        if kind == "cas":
            return self._cas_command(data, rid)
        if kind == "member":
            return self._member_command(data, rid)
        if kind == "invalid":
            return self._invalid_command(data, rid)
        return command_pb2.Command(request_id=rid, barrier=command_pb2.Barrier())

    def _cas_command(self, data: st.DataObject, rid: str) -> command_pb2.Command:
        key = self._key(data, data.draw(st.booleans(), label="existing"))
        current = self.model.kvs.get(key)
        actual = current.mod if current else 0
        how = data.draw(st.sampled_from(["right", "wrong", "zero"]), label="expected revision")
        if how == "right":
            expected = actual
        elif how == "zero":
            expected = 0
        else:
            expected = data.draw(st.integers(0, self.model.revision + 3).filter(lambda r: r != actual))
        cas = command_pb2.KvCompareAndSwap(
            key=key, expected_mod_revision=expected, value=data.draw(VALUES), delete=data.draw(st.booleans())
        )
        return command_pb2.Command(request_id=rid, kv_compare_and_swap=cas)

    def _member_command(self, data: st.DataObject, rid: str) -> command_pb2.Command:
        ids = MEMBER_IDS + sorted(self.model.members) + self.model.removed
        member_id = data.draw(st.sampled_from(ids), label="member id")
        if data.draw(st.integers(0, 3), label="remove if 0") == 0:
            return command_pb2.Command(request_id=rid, member_remove=command_pb2.MemberRemove(id=member_id))
        record = command_pb2.MemberRecord(
            id=member_id,
            raft_address=data.draw(st.sampled_from(ADDRESSES), label="raft address"),
            client_address=data.draw(st.sampled_from(ADDRESSES), label="client address"),
            added_revision=data.draw(st.integers(0, 5), label="ignored added_revision"),
        )
        return command_pb2.Command(request_id=rid, member_upsert=command_pb2.MemberUpsert(member=record))

    def _invalid_command(self, data: st.DataObject, rid: str) -> command_pb2.Command:
        too_long_key = data.draw(st.sampled_from(["k" * (limits.MAX_KEY_BYTES + 1), "é" * 2049]))
        too_big = b"v" * (limits.MAX_VALUE_BYTES + 1)
        good = data.draw(st.sampled_from(ADDRESSES))
        bad = data.draw(st.sampled_from(BAD_ADDRESSES))
        choices = [
            command_pb2.Command(kv_put=command_pb2.KvPut(key="", value=b"x")),
            command_pb2.Command(kv_put=command_pb2.KvPut(key=too_long_key, value=b"x")),
            command_pb2.Command(kv_put=command_pb2.KvPut(key="a", value=too_big)),
            command_pb2.Command(kv_delete=command_pb2.KvDelete(key="")),
            command_pb2.Command(kv_delete=command_pb2.KvDelete(key=too_long_key)),
            command_pb2.Command(kv_compare_and_swap=command_pb2.KvCompareAndSwap(key="")),
            command_pb2.Command(kv_compare_and_swap=command_pb2.KvCompareAndSwap(key="new", value=too_big)),
            command_pb2.Command(),  # no body: what a newer server's unknown command looks like
            command_pb2.Command(
                member_upsert=command_pb2.MemberUpsert(
                    member=command_pb2.MemberRecord(
                        id=data.draw(st.sampled_from(BAD_MEMBER_IDS)), raft_address=good, client_address=good
                    )
                )
            ),
            command_pb2.Command(
                member_upsert=command_pb2.MemberUpsert(
                    member=command_pb2.MemberRecord(id="n9", raft_address=bad, client_address=good)
                )
            ),
            command_pb2.Command(
                member_upsert=command_pb2.MemberUpsert(
                    member=command_pb2.MemberRecord(id="n9", raft_address=good, client_address=bad)
                )
            ),
            command_pb2.Command(kv_put=command_pb2.KvPut(key="a", value=b"x")),  # with a too-long request id
        ]
        index = data.draw(st.integers(0, len(choices) - 1), label="invalid command")
        command = choices[index]
        command.request_id = "r" * (limits.MAX_REQUEST_ID_CHARS + 1) if index == len(choices) - 1 else rid
        return command

    # --------------------------------------------------------------- rules

    @rule(data=st.data())
    def put(self, data: st.DataObject) -> None:
        key = self._key(data, data.draw(st.booleans(), label="existing"))
        put = command_pb2.KvPut(key=key, value=data.draw(VALUES), prev_kv=data.draw(st.booleans()))
        self._apply(data, [command_pb2.Command(request_id=self._request_id(data), kv_put=put)])

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        key = self._key(data, data.draw(st.booleans(), label="existing"))
        command = command_pb2.Command(request_id=self._request_id(data), kv_delete=command_pb2.KvDelete(key=key))
        self._apply(data, [command])

    @rule(data=st.data())
    def compare_and_swap(self, data: st.DataObject) -> None:
        self._apply(data, [self._cas_command(data, self._request_id(data))])

    @rule(data=st.data())
    def barrier(self, data: st.DataObject) -> None:
        before = self.primary.revision
        (result,) = self._apply(data, [command_pb2.Command(barrier=command_pb2.Barrier())])
        assert result.revision == before == self.primary.revision

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """Resend an earlier request id: the same command, or (a confused client) a different one."""
        rid = data.draw(st.sampled_from(sorted(self.sent)), label="retried id")
        if data.draw(st.booleans(), label="same command"):
            command = self.sent[rid]
        else:
            command = command_pb2.Command(request_id=rid, kv_put=command_pb2.KvPut(key="retry", value=b"?"))
        before = (self.primary.revision, self.primary.kv.list_keys("")[0], dict(self.primary.directory.members))
        self._apply(data, [command])
        if self.answered_from_table[0]:
            after = (self.primary.revision, self.primary.kv.list_keys("")[0], dict(self.primary.directory.members))
            assert after == before, "a retry answered from the dedupe table changed state"

    @rule(data=st.data(), size=st.integers(2, 5))
    def batch(self, data: st.DataObject, size: int) -> None:
        self._apply(data, [self._command(data) for _ in range(size)])

    @rule(data=st.data())
    def member(self, data: st.DataObject) -> None:
        self._apply(data, [self._member_command(data, self._request_id(data))])

    @precondition(lambda self: self.model.removed)
    @rule(data=st.data())
    def rejoin_removed_member(self, data: st.DataObject) -> None:
        record = command_pb2.MemberRecord(
            id=data.draw(st.sampled_from(self.model.removed)),
            raft_address="10.9.9.9:1",
            client_address="10.9.9.9:2",
        )
        command = command_pb2.Command(member_upsert=command_pb2.MemberUpsert(member=record))
        (result,) = self._apply(data, [command])
        assert result.error.code == FAILED_PRECONDITION

    @rule(data=st.data())
    def invalid_input(self, data: st.DataObject) -> None:
        before = self.primary.revision
        (result,) = self._apply(data, [self._invalid_command(data, self._request_id(data))])
        assert result.HasField("error") and result.error.code == INVALID
        assert self.primary.revision == before

    @rule(source=st.sampled_from(["primary", "restored"]))
    def restart_from_snapshot(self, source: str) -> None:
        donor = self.restored if source == "restored" and self.restored is not None else self.primary
        fresh = StateMachine(**self.limits)
        fresh.restore(donor.snapshot())
        self.restored = fresh

    @precondition(lambda self: len(self.model.backups) < 4)
    @rule()
    def take_backup(self) -> None:
        self.model.backups[self.primary.snapshot()] = (dict(self.model.kvs), self.model.revision)

    @precondition(lambda self: len(self.model.backups) < 4)
    @rule(data=st.data(), revision=st.integers(0, 60))
    def craft_backup(self, data: st.DataObject, revision: int) -> None:
        """A backup from another cluster, maybe ahead of this one, with members that must be ignored."""
        kvs: dict[str, Stored] = {}
        if revision:
            for key in data.draw(st.lists(KEYS, max_size=4, unique=True), label="backup keys"):
                create = data.draw(st.integers(1, revision))
                mod = data.draw(st.integers(create, revision))
                kvs[key] = Stored(data.draw(VALUES), create, mod, data.draw(st.integers(1, mod - create + 1)))
        snapshot = command_pb2.StateSnapshot(
            format_version=1,
            revision=revision,
            kvs=[full_kv(key, stored) for key, stored in kvs.items()],
            members=[command_pb2.MemberRecord(id="other", raft_address="9.9.9.9:1", client_address="9.9.9.9:2")],
            removed_members=["n1"],
            end_marker=SNAPSHOT_END_MARKER,
        )
        self.model.backups[snapshot.SerializeToString(deterministic=True)] = (kvs, revision)

    @rule(data=st.data())
    def restore_state(self, data: st.DataObject) -> None:
        corrupt = [
            b"\xff",
            b"\x08",  # truncated inside a varint
            command_pb2.StateSnapshot(format_version=3, end_marker=SNAPSHOT_END_MARKER).SerializeToString(),
            b"",  # format_version 0
            command_pb2.StateSnapshot(
                format_version=1, kvs=[kv_pb2.KeyValue(key="")], end_marker=SNAPSHOT_END_MARKER
            ).SerializeToString(),
            command_pb2.StateSnapshot(
                format_version=1, revision=limits.MAX_REVISION, end_marker=SNAPSHOT_END_MARKER
            ).SerializeToString(),
            self.primary.snapshot()[:-6],  # cut short: the end marker is missing
        ]
        snapshot = data.draw(st.sampled_from(sorted(self.model.backups) + corrupt), label="backup")
        before = self.primary.revision
        rid = self._request_id(data)
        (result,) = self._apply(
            data,
            [command_pb2.Command(request_id=rid, restore_state=command_pb2.RestoreState(snapshot=snapshot))],
        )
        if result.HasField("restore"):
            assert result.revision > before and self.primary.compacted_revision == result.revision
            assert self.primary.events_from(0) == []

    # --------------------------------------------------------------- invariants

    @invariant()
    def agrees_with_model(self) -> None:
        snapshots = {machine.snapshot() for machine in self.machines}
        assert len(snapshots) == 1, "replicas that applied the same log hold different snapshots"
        assert self.primary.snapshot() in snapshots, "snapshot() is not stable"
        for machine in self.machines:
            self._check_machine(machine)
        self._check_lists(self.primary)
        for held, when_read in self.handed_out:
            assert held.SerializeToString(deterministic=True) == when_read, "a value was mutated in place"
        fresh = [kv for kv in (self.primary.kv.get(k) for k in sorted(self.model.kvs)[:2]) if kv is not None]
        fresh += self.primary.events_from(self.primary.revision)
        self.handed_out = self.handed_out[-20:] + [(v, v.SerializeToString(deterministic=True)) for v in fresh]

    def _check_machine(self, machine: StateMachine) -> None:
        model = self.model
        assert machine.revision == model.revision
        assert machine.time_unix_ms == model.time
        assert machine.kv.key_count() == len(model.kvs)
        for key, stored in model.kvs.items():
            assert machine.kv.get(key) == full_kv(key, stored)
        for key in ("a", "b/1", "z", "retry", "missing"):
            if key not in model.kvs:
                assert machine.kv.get(key) is None
        assert machine.directory.members == model.members
        assert list(machine.directory.removed_members) == model.removed

        # The watch history: every retained event, with consecutive revisions up to the current one.
        retained = model.retained
        assert machine.compacted_revision == model.compacted_revision
        assert machine.oldest_revision == model.compacted_revision + 1
        assert [e.revision for e in retained] == list(range(machine.compacted_revision + 1, machine.revision + 1))
        for start in range(machine.revision + 2):
            want = [e for e in retained if e.revision >= start]
            assert machine.events_from(start) == want
            assert machine.events_from(start, max_events=2) == want[:2]

    def _check_lists(self, machine: StateMachine) -> None:
        keys = sorted(self.model.kvs)
        for prefix in LIST_PREFIXES:
            under = [k for k in keys if k.startswith(prefix)]
            for start_after in LIST_STARTS:
                after = [k for k in under if k > start_after]
                for limit in (1, 3, limits.MAX_LIST_LIMIT):
                    page, more = machine.kv.list_keys(prefix, start_after, limit)
                    assert [kv.key for kv in page] == after[:limit] and more == (len(after) > limit)
                    assert page == [full_kv(k, self.model.kvs[k]) for k in after[:limit]]
            # Walking the pages with start_after = the last key seen yields every key exactly once.
            walked: list[str] = []
            more, cursor = True, ""
            while more:
                page, more = machine.kv.list_keys(prefix, cursor, 2)
                walked += [kv.key for kv in page]
                cursor = walked[-1] if walked else cursor
            assert walked == under


StateMachineVsModel.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestStateMachineVsModel = StateMachineVsModel.TestCase
