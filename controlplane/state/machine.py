"""The replicated state machine: a pure function from log entries to state and results.

Invariants (DESIGN.md explains why each one matters):

* ``apply_entry`` never raises. Malformed input and bugs alike become error *results*; an
  exception here would make every node retry the entry forever and stop all writes.
* It is deterministic: no clock, no randomness, no I/O, no iteration over unordered
  containers. Time arrives in the entry (stamped by the leader) and only moves forward.
* Every state change bumps ``revision`` by exactly one and records exactly one watch event
  with that revision, so the history is addressable by revision.
* A command with a request id that was already applied returns the recorded result and
  changes nothing (retries after an unknown outcome are safe).

The machine is not thread-safe: the caller serialises ``apply_entry`` against reads.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar, cast

from google.protobuf.message import DecodeError, Message

from controlplane.state import levels, limits, snapshot_v1
from controlplane.state.auth import AuthTable
from controlplane.state.directory import CLUSTER_LEVEL_KEY, DOMAIN_CLUSTER, MemberDirectory
from controlplane.state.gossip import GossipTable
from controlplane.state.journal import Detail
from controlplane.state.kv import DOMAIN_KV, KvTable
from controlplane.state.leases import LeaseTable
from controlplane.state.membership import MembershipTable, state_name
from controlplane.state.models import ModelTable
from controlplane.state.ports import NodeOffer, PortTable, ServiceHooks
from controlplane.state.refusal import Refused, error_result
from controlplane.state.tables import BackupSource, DomainTable
from controlplane.v1 import (
    command_pb2,
    common_pb2,
    gossip_pb2,
    kv_pb2,
    membership_pb2,
    models_pb2,
    ports_pb2,
    watch_pb2,
)

#: The snapshot format written from cluster level SNAPSHOT_TABLES on: one entry per domain table.
SNAPSHOT_FORMAT_VERSION = 2
#: Every format restore reads: format 1 (snapshot_v1.py) is what the releases before 2 wrote.
SNAPSHOT_FORMATS = (snapshot_v1.FORMAT_VERSION, SNAPSHOT_FORMAT_VERSION)
# The snapshot's last bytes: protobuf parses a cut-short message without complaint, so a snapshot
# missing its end marker is known to be truncated.
SNAPSHOT_END_MARKER = 0x5AFE5AFE
_END_MARKER_BYTES = command_pb2.StateSnapshot(end_marker=SNAPSHOT_END_MARKER).SerializeToString()

__all__ = [
    "CLUSTER_LEVEL_KEY",
    "DOMAIN_CLUSTER",
    "DOMAIN_KV",
    "SNAPSHOT_END_MARKER",
    "SNAPSHOT_FORMATS",
    "SNAPSHOT_FORMAT_VERSION",
    "CommandResult",
    "SnapshotError",
    "StateMachine",
    "batch_entry",
    "event_size",
    "parse_snapshot",
]

DEFAULT_HISTORY_LIMIT = 10_000
# The watch history's second bound: the bytes of its events (about their serialized size, what a
# resumed watch would be sent). Events of a few hundred bytes meet the count first (10,000 of them
# are a few MB), so this bites only on large values: a 1 MiB put with its previous value is about
# 2 MiB, and 64 MiB keeps the last ~32 of those rather than 10,000 (measured before the cap: 100
# puts of 1 MiB held ~300 MiB per server). Retained events share their values with the key space,
# so the memory the history adds is at most this.
DEFAULT_HISTORY_LIMIT_BYTES = 64 * 1024 * 1024
# What an event costs besides its key, values and typed change (revision, type, domain, time, tags).
_EVENT_OVERHEAD_BYTES = 32
DEFAULT_DEDUPE_LIMIT = 100_000
# Long enough for any client retry loop (the SDK gives up after its deadline, seconds).
DEFAULT_DEDUPE_TTL_MS = 15 * 60 * 1000

CommandResult = command_pb2.CommandResult
TableT = TypeVar("TableT")
# Which Event.detail field carries each typed change.
_DETAIL_FIELDS: dict[type, str] = {
    ports_pb2.PortEvent: "port",
    models_pb2.ModelEvent: "model",
    membership_pb2.MembershipEvent: "membership",
    gossip_pb2.GossipEvent: "gossip",
}


class _Change(NamedTuple):
    """One retained watch event, held by reference: built into a protobuf only when read.

    Stored ``KeyValue`` objects are never mutated (writes replace them), so sharing them with the
    history is safe and saves two message copies per change on every replica. A typed change is
    held serialized: as a message it would cost several times its bytes (a model event carries a
    whole model or version), for every one of the retained events.
    """

    revision: int
    type: watch_pb2.EventType
    domain: str
    key: str
    kv: kv_pb2.KeyValue | None
    prev_kv: kv_pb2.KeyValue | None
    time_unix_ms: int
    # The typed change of a domain with one: the Event.detail field ("" for none) and its bytes.
    detail_field: str = ""
    detail: bytes = b""
    # What it counts towards history_limit_bytes (_event_bytes).
    size: int = 0

    def to_event(self) -> watch_pb2.Event:
        event = watch_pb2.Event(
            revision=self.revision, type=self.type, domain=self.domain, key=self.key, time_unix_ms=self.time_unix_ms
        )
        if self.kv is not None:
            event.kv.CopyFrom(self.kv)
        if self.prev_kv is not None:
            event.prev_kv.CopyFrom(self.prev_kv)
        if self.detail_field:
            detail = getattr(event, self.detail_field)
            detail.SetInParent()  # set even when every field is at its default (no bytes)
            detail.MergeFromString(self.detail)
        return event

    @classmethod
    def from_event(cls, event: watch_pb2.Event) -> _Change:
        kv = event.kv if event.HasField("kv") else None
        prev_kv = event.prev_kv if event.HasField("prev_kv") else None
        field = event.WhichOneof("detail") or ""
        detail = getattr(event, field).SerializeToString(deterministic=True) if field else b""
        size = _event_bytes(event.key, kv, prev_kv, detail)
        return cls(
            event.revision, event.type, event.domain, event.key, kv, prev_kv, event.time_unix_ms, field, detail, size
        )


# Stands in for a compacted event until the history list is cut (it holds no values).
_COMPACTED = _Change(0, watch_pb2.EVENT_TYPE_UNSPECIFIED, "", "", None, None, 0)


def event_size(event: watch_pb2.Event) -> int:
    """What an event counts towards ``history_limit_bytes``."""
    return _Change.from_event(event).size


def _event_bytes(key: str, kv: kv_pb2.KeyValue | None, prev_kv: kv_pb2.KeyValue | None, detail: bytes) -> int:
    """About the serialized size of an event (exact up to a few bytes of tags and lengths)."""
    size = _EVENT_OVERHEAD_BYTES + len(key) + len(detail)
    if kv is not None:
        size += kv.ByteSize()
    if prev_kv is not None:
        size += prev_kv.ByteSize()
    return size


class SnapshotError(ValueError):
    """A snapshot that cannot be restored: corrupt, or of a format this version does not know."""


class StateMachine:
    def __init__(
        self,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        dedupe_limit: int = DEFAULT_DEDUPE_LIMIT,
        dedupe_ttl_ms: int = DEFAULT_DEDUPE_TTL_MS,
        history_limit_bytes: int = DEFAULT_HISTORY_LIMIT_BYTES,
    ) -> None:
        self.history_limit = history_limit
        self.history_limit_bytes = history_limit_bytes
        self.dedupe_limit = dedupe_limit
        self.dedupe_ttl_ms = dedupe_ttl_ms
        #: Every domain table, in snapshot order, which is also the order a restore takes them in.
        self.tables: tuple[DomainTable[Any], ...] = self._make_tables()
        self._tables_by_type: dict[type, DomainTable[Any]] = {type(table): table for table in self.tables}
        self._reset()
        self._handlers: dict[str, Callable[[command_pb2.Command], CommandResult]] = {
            "barrier": self._barrier,
            "restore_state": self._restore_state,
        }
        for table in self.tables:
            for kind, handler in table.handlers().items():
                if kind in self._handlers:
                    raise ValueError(f"two tables apply the command {kind!r}")  # a wiring bug, at start-up
                self._handlers[kind] = handler
        # A table at its defaults is left out of a snapshot (TableState in command.proto).
        self._default_states = {
            table.name: table.to_state().SerializeToString(deterministic=True) for table in self.tables
        }

    def table(self, kind: type[TableT]) -> TableT:
        """The machine's table of class ``kind`` (a read's one way in: ``Node.read_table``)."""
        table = self._tables_by_type.get(kind)
        if table is None:
            raise KeyError(f"this state machine has no {kind.__name__}")
        return cast(TableT, table)

    def _make_tables(self) -> tuple[DomainTable[Any], ...]:
        """Build the domain tables, wired to each other through narrow callbacks (not the machine).
        The one place a domain registers: a table added here is dispatched, reset, snapshot and
        restored by the loops over ``self.tables``."""
        self.ports = PortTable(
            self,
            lease_exists=lambda lease_id: self.leases.exists(lease_id),
            hooks=ServiceHooks(
                grant=lambda ttl_ms: self.leases.grant(ttl_ms).id,
                renew=lambda lease_id: self.leases.renew(lease_id),
                end=lambda lease_id, reason: self.leases.end(lease_id, reason),
                capabilities=lambda host: self.membership.live_capabilities(host),
                node_gone=lambda host: self.membership.is_gone(host),
                live_nodes=lambda: [
                    NodeOffer(
                        node_id=record.spec.id,
                        state=state_name(record.state),
                        capabilities=tuple(record.spec.capabilities),
                        gpus=record.spec.resources.gpus,
                        memory_mb=record.spec.resources.memory_bytes // (1024 * 1024),
                        cpu_millis=record.spec.resources.cpu_millis,
                    )
                    for record in self.membership.live_nodes()
                ],
            ),
        )
        self.kv = KvTable(self)
        self.directory = MemberDirectory(self)
        self.leases = LeaseTable(self, release=self._release_lease)
        self.registry = ModelTable(self, node_problem=lambda node_id: self.membership.node_problem(node_id))
        self.membership = MembershipTable(
            self,
            leases=lambda: self.leases,
            node_ended=lambda node_id, reason: self.ports.node_ended(node_id, reason),
            model_problem=lambda reference: self.registry.reference_problem(reference),
        )
        self.gossip = GossipTable(self)
        self.auth = AuthTable(self)
        # The lease table before membership: a restore ends what hangs on a lease the backup lacks.
        return (
            self.kv,
            self.directory,
            self.ports,
            self.leases,
            self.registry,
            self.membership,
            self.gossip,
            self.auth,
        )

    def _reset(self) -> None:
        self.revision = 0
        self.time_unix_ms = 0
        self.compacted_revision = 0
        # What commands apply as (levels.py): a fresh state is at the base, like a replay from genesis.
        self.cluster_level = levels.BASE_LEVEL
        # The watch history is a list with a moving start, trimmed in bulk (amortised O(1)).
        self._history: list[_Change] = []
        self._history_start = 0
        self._history_revisions: list[int] = []
        self._history_bytes = 0  # of the retained events (from _history_start)
        # request id -> (leader time, the result's serialized bytes): a result held as a message
        # costs several times its bytes (a bulk registration's holds every version it registered).
        self._dedupe: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        for table in self.tables:
            table.reset()

    # ----------------------------------------------------------------- applying

    def _release_lease(self, lease_id: int, reason: str, expired: bool) -> int:
        """What hangs on a lease that ends: port assignments, a node's liveness, client places."""
        self.membership.release_lease(lease_id, reason, expired)
        return self.ports.release_lease(lease_id, reason)

    def apply_entry(self, entry: bytes) -> list[CommandResult]:
        """Apply one log entry (a serialized CommandBatch); one result per command, in order."""
        try:
            batch = command_pb2.CommandBatch.FromString(entry)
        except DecodeError:
            return []
        # Time only moves forward, whatever a new leader's clock says.
        self.time_unix_ms = max(self.time_unix_ms, batch.time_unix_ms)
        self._expire_dedupe()
        return [self.apply_command(command) for command in batch.commands]

    def apply_command(self, command: command_pb2.Command) -> CommandResult:
        request_id = command.request_id
        if request_id:
            seen = self._dedupe.get(request_id)
            if seen is not None:
                return CommandResult.FromString(seen[1])
            problem = limits.check_request_id(request_id)
            if problem:
                return error_result(common_pb2.ERROR_CODE_INVALID_ARGUMENT, problem, self.revision)
        kind = command.WhichOneof("body")
        handler = self._handlers.get(kind or "")
        if handler is None:
            result = error_result(
                common_pb2.ERROR_CODE_INVALID_ARGUMENT,
                f"unknown command {kind!r}: is this server older than the one that proposed it?",
                self.revision,
            )
        else:
            try:
                result = handler(command)
            except Exception as exc:  # a bug; deterministic on every replica, and never fatal
                result = CommandResult(
                    revision=self.revision,
                    error=common_pb2.Error(
                        code=common_pb2.ERROR_CODE_INTERNAL,
                        message=f"{type(exc).__name__} while applying {kind}: {exc}",
                    ),
                )
        if request_id:
            self._dedupe[request_id] = (self.time_unix_ms, result.SerializeToString(deterministic=True))
            if len(self._dedupe) > self.dedupe_limit:
                self._dedupe.popitem(last=False)
        return result

    def _expire_dedupe(self) -> None:
        horizon = self.time_unix_ms - self.dedupe_ttl_ms
        while self._dedupe:
            first_id, (stamped, _) = next(iter(self._dedupe.items()))
            if stamped >= horizon:
                break
            del self._dedupe[first_id]

    def record_detail(self, domain: str, key: str, event_type: watch_pb2.EventType, detail: Detail) -> int:
        """For the domain tables (the Journal protocol): a change described by a typed event."""
        return self.record_change(domain, key, event_type, None, None, detail)

    def record_change(
        self,
        domain: str,
        key: str,
        event_type: watch_pb2.EventType,
        kv: kv_pb2.KeyValue | None,
        prev_kv: kv_pb2.KeyValue | None,
        detail: Detail = None,
    ) -> int:
        """For the domain tables (the Journal protocol): bump the revision and append the one event
        that describes the change."""
        self.revision += 1
        field = _DETAIL_FIELDS[type(detail)] if detail is not None else ""
        data = detail.SerializeToString(deterministic=True) if detail is not None else b""
        size = _event_bytes(key, kv, prev_kv, data)
        self._history.append(
            _Change(self.revision, event_type, domain, key, kv, prev_kv, self.time_unix_ms, field, data, size)
        )
        self._history_revisions.append(self.revision)
        self._history_bytes += size
        self._trim_history()
        return self.revision

    def _trim_history(self) -> None:
        """Compact the oldest events past either bound (count or bytes); the newest too, if it
        alone is over the byte bound."""
        history, start, end = self._history, self._history_start, len(self._history)
        if end - start <= self.history_limit and self._history_bytes <= self.history_limit_bytes:
            return
        while start < end and (end - start > self.history_limit or self._history_bytes > self.history_limit_bytes):
            oldest = history[start]
            self.compacted_revision = oldest.revision
            self._history_bytes -= oldest.size
            # The list is cut in bulk (below); its values are let go now, or the byte bound would
            # bound nothing until the next cut.
            history[start] = _COMPACTED
            start += 1
        self._history_start = start
        if start > max(self.history_limit, 1024) or start == end:
            del history[:start]
            del self._history_revisions[:start]
            self._history_start = 0

    @property
    def history_bytes(self) -> int:
        """What the retained watch history counts towards ``history_limit_bytes``."""
        return self._history_bytes

    @property
    def history_events(self) -> int:
        """How many watch events are retained."""
        return len(self._history) - self._history_start

    def _barrier(self, command: command_pb2.Command) -> CommandResult:
        return CommandResult(revision=self.revision, barrier=command_pb2.BarrierResult())

    # ----------------------------------------------------------------- restore from a backup

    def _restore_state(self, command: command_pb2.Command) -> CommandResult:
        """Replace the user data with a backup's, atomically: every table checks its part first,
        then takes it as its domain wants (``DomainTable.restore_backup``).

        The member directory and the dedupe table stay: they describe this cluster, not the
        backup's, and so does the cluster level (what this cluster's servers apply). So does the
        auth state, unless the command asks for the backup's users, roles and tokens
        (``AuthTable.restore``: revocations and the on/off switch stay this cluster's). The watch
        history is dropped and marked compacted, so every watcher learns (OUT_OF_RANGE) that it
        must re-read rather than silently missing the swap.
        """
        # Below SNAPSHOT_TABLES an older release may apply this entry too, and it reads format 1
        # only: refuse a format-2 backup as it does, word for word (results are in the dedupe table).
        formats = SNAPSHOT_FORMATS if self.cluster_level >= levels.SNAPSHOT_TABLES else (snapshot_v1.FORMAT_VERSION,)
        try:
            snapshot = parse_snapshot(command.restore_state.snapshot, formats)
            states = self._table_states(snapshot)
        except SnapshotError as exc:
            return error_result(common_pb2.ERROR_CODE_INVALID_ARGUMENT, str(exc), self.revision)
        backup = BackupSource(
            revision=snapshot.revision,
            cluster_level=levels.stored_level(snapshot.cluster_level),
            include_auth=command.restore_state.include_auth,
        )
        for table in self.tables:
            try:
                table.check_backup(states.get(table.name), backup)
            except Refused as refused:
                return error_result(refused.code, f"backup holds {table.backup_noun}: {refused.message}", self.revision)
        self.revision = max(self.revision, snapshot.revision) + 1
        for table in self.tables:
            table.restore_backup(states.get(table.name), backup)
        self._history, self._history_revisions, self._history_start, self._history_bytes = [], [], 0, 0
        self.compacted_revision = self.revision
        return CommandResult(revision=self.revision, restore=command_pb2.RestoreResult(keys=self.kv.key_count()))

    # ----------------------------------------------------------------- reads

    @property
    def oldest_revision(self) -> int:
        """The oldest revision a watch can still start from."""
        return self.compacted_revision + 1

    def events_from(self, revision: int, max_events: int = 1000) -> list[watch_pb2.Event]:
        """Retained events with revision >= ``revision``, oldest first.

        The caller must check ``revision > compacted_revision`` first: older events are gone.
        """
        index = bisect.bisect_left(self._history_revisions, revision, lo=self._history_start)
        return [change.to_event() for change in self._history[index : index + max_events]]

    def keys_from(self, revision: int, domain: str, max_events: int) -> tuple[set[str], int]:
        """Keys of ``domain`` changed from ``revision`` on (within ``max_events`` retained events),
        and the last revision looked at; no event is built. Same precondition as ``events_from``.
        """
        index = bisect.bisect_left(self._history_revisions, revision, lo=self._history_start)
        window = self._history[index : index + max_events]
        keys = {change.key for change in window if change.domain == domain}
        return keys, window[-1].revision if window else self.revision

    # ----------------------------------------------------------------- snapshots

    def snapshot(self) -> bytes:
        """The whole state as a StateSnapshot (deterministic bytes): format 2 from cluster level
        SNAPSHOT_TABLES on, format 1 below it, which every release of the cluster reads."""
        header = command_pb2.StateSnapshot(
            revision=self.revision,
            time_unix_ms=self.time_unix_ms,
            compacted_revision=self.compacted_revision,
        )
        header.history.extend(change.to_event() for change in self._history[self._history_start :])
        for rid, (stamped, result) in self._dedupe.items():
            entry = header.dedupe.add(request_id=rid, time_unix_ms=stamped)
            entry.result.MergeFromString(result)
        states = {table.name: table.to_state() for table in self.tables}

        def at_defaults(name: str) -> bool:
            return states[name].SerializeToString(deterministic=True) == self._default_states[name]

        # Format 1 holds only its own tables: one it cannot hold that has state (which that table's
        # own cluster level prevents) is written in format 2, which an older release refuses loudly,
        # rather than dropped.
        if self.cluster_level < levels.SNAPSHOT_TABLES and all(
            at_defaults(name) for name in states if name not in snapshot_v1.TABLES
        ):
            return snapshot_v1.write(
                header,
                states,
                auth_is_default=at_defaults("auth"),
                cluster_level=self.cluster_level,
                end_marker=SNAPSHOT_END_MARKER,
            )
        header.format_version = SNAPSHOT_FORMAT_VERSION
        header.cluster_level = self.cluster_level
        for name, state in states.items():
            data = state.SerializeToString(deterministic=True)
            if data != self._default_states[name]:
                header.tables.add(name=name, state=data)
        # The end marker's field number is below the tables': it is appended, to be the last bytes.
        return header.SerializeToString(deterministic=True) + _END_MARKER_BYTES

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot. Raises SnapshotError; not for the replicated path."""
        snap = parse_snapshot(data)
        states = self._table_states(snap)  # every table's part parses before anything changes
        snap = _header_only(snap)
        self._reset()
        self.revision = snap.revision
        self.time_unix_ms = snap.time_unix_ms
        self.compacted_revision = snap.compacted_revision
        # Before the tables: a table loads its part as this level holds it (PortTable.load_state).
        self.cluster_level = levels.stored_level(snap.cluster_level)
        self._history = [_Change.from_event(event) for event in snap.history]
        self._history_revisions = [event.revision for event in self._history]
        self._history_bytes = sum(change.size for change in self._history)
        self._trim_history()  # a snapshot from a server with larger bounds
        self._dedupe = OrderedDict(
            (entry.request_id, (entry.time_unix_ms, entry.result.SerializeToString(deterministic=True)))
            for entry in snap.dedupe
        )
        for table in self.tables:
            table.load_state(states.get(table.name))

    def _table_states(self, snap: command_pb2.StateSnapshot) -> dict[str, Message]:
        """Each table's part of a snapshot (``parse_snapshot``'s), parsed; a table without one has none.
        Raises SnapshotError for a part this release has no table for, or one that does not parse."""
        if snap.format_version == snapshot_v1.FORMAT_VERSION:
            return snapshot_v1.table_states(snap)
        tables = {table.name: table for table in self.tables}
        states: dict[str, Message] = {}
        for entry in snap.tables:
            table = tables.get(entry.name)
            if table is None:
                raise SnapshotError(
                    f"snapshot holds table {entry.name!r}, which this release does not know: "
                    "it was written by a newer release"
                )
            if entry.name in states:
                raise SnapshotError(f"snapshot holds table {entry.name!r} twice")
            try:
                states[entry.name] = table.state_type.FromString(entry.state)
            except DecodeError as exc:
                raise SnapshotError(f"snapshot table {entry.name!r} does not parse: {exc}") from None
        return states


def _header_only(snap: command_pb2.StateSnapshot) -> command_pb2.StateSnapshot:
    """``snap`` without its tables' parts, once they are parsed, in memory of its own.

    The machine keeps parts of the parsed header (the history's values) by reference, and one part
    kept keeps all of its memory: the tables' parts (a model registry's can be hundreds of MB) would
    stay behind them.
    """
    header = command_pb2.StateSnapshot(
        format_version=snap.format_version,
        revision=snap.revision,
        time_unix_ms=snap.time_unix_ms,
        compacted_revision=snap.compacted_revision,
        cluster_level=snap.cluster_level,
    )
    header.history.extend(snap.history)
    header.dedupe.extend(snap.dedupe)
    return command_pb2.StateSnapshot.FromString(header.SerializeToString())


def parse_snapshot(data: bytes, formats: tuple[int, ...] = SNAPSHOT_FORMATS) -> command_pb2.StateSnapshot:
    """A snapshot of one of ``formats``, checked for what every part shares (its format, its end
    marker, its revision). Raises SnapshotError."""
    try:
        snap = command_pb2.StateSnapshot.FromString(data)
    except DecodeError as exc:
        raise SnapshotError(f"not a controlplane snapshot: {exc}") from None
    if snap.format_version not in formats:
        readable = " and ".join(str(version) for version in formats)
        raise SnapshotError(
            f"snapshot format version {snap.format_version} is not supported "
            f"(this server reads version{'s' if len(formats) > 1 else ''} {readable})"
        )
    if snap.end_marker != SNAPSHOT_END_MARKER:
        raise SnapshotError("snapshot is truncated: its end marker is missing")
    if snap.revision >= limits.MAX_REVISION:
        raise SnapshotError(f"snapshot revision {snap.revision} is beyond the supported maximum {limits.MAX_REVISION}")
    if snap.format_version == snapshot_v1.FORMAT_VERSION:
        # Never read in format 1, as the releases that wrote it ignored the field they did not know.
        snap.ClearField("tables")
    elif any(field.name in snapshot_v1.DOMAIN_FIELDS for field, _ in snap.ListFields()):
        raise SnapshotError("a format-2 snapshot holds format-1 domain fields: it is damaged")
    return snap


def batch_entry(time_unix_ms: int, leader_id: str, commands: Iterable[command_pb2.Command]) -> bytes:
    """Serialize commands as one log entry."""
    batch = command_pb2.CommandBatch(time_unix_ms=time_unix_ms, leader_id=leader_id)
    batch.commands.extend(commands)
    return batch.SerializeToString()
