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
from typing import NamedTuple

from google.protobuf.message import DecodeError
from sortedcontainers import SortedDict

from controlplane.state import levels, limits
from controlplane.state.auth import AuthTable
from controlplane.state.gossip import GossipTable
from controlplane.state.journal import Detail
from controlplane.state.leases import LeaseTable
from controlplane.state.membership import MembershipTable, state_name
from controlplane.state.models import ModelTable
from controlplane.state.ports import PORT_MAP_FORMAT, NodeOffer, PortTable, ServiceHooks
from controlplane.state.refusal import Refused
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

SNAPSHOT_FORMAT_VERSION = 1
# Written last (highest field number): protobuf parses a cut-short message without complaint, so a
# snapshot missing its end marker is known to be truncated.
SNAPSHOT_END_MARKER = 0x5AFE5AFE

DOMAIN_KV = "kv"
DOMAIN_CLUSTER = "cluster"
#: The cluster-domain key of the cluster level's events (member ids cannot start with "/").
CLUSTER_LEVEL_KEY = "/level"

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


def _error(code: common_pb2.ErrorCode, message: str, revision: int) -> CommandResult:
    return CommandResult(revision=revision, error=common_pb2.Error(code=code, message=message))


def _meta_only(kv: kv_pb2.KeyValue) -> kv_pb2.KeyValue:
    """The key's metadata without its value: what write results return, to keep answers small."""
    return kv_pb2.KeyValue(
        key=kv.key, create_revision=kv.create_revision, mod_revision=kv.mod_revision, version=kv.version
    )


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
        self._reset()
        self._handlers: dict[str, Callable[[command_pb2.Command], CommandResult]] = {
            "kv_put": self._kv_put,
            "kv_delete": self._kv_delete,
            "kv_compare_and_swap": self._kv_compare_and_swap,
            "barrier": self._barrier,
            "member_upsert": self._member_upsert,
            "member_remove": self._member_remove,
            "restore_state": self._restore_state,
            "set_cluster_level": self._set_cluster_level,
            **self.ports.handlers(),
            **self.leases.handlers(),
            **self.registry.handlers(),
            **self.membership.handlers(),
            **self.gossip.handlers(),
            **self.auth.handlers(),
        }

    def _reset(self) -> None:
        self.revision = 0
        self.time_unix_ms = 0
        self.compacted_revision = 0
        # What commands apply as (levels.py): a fresh state is at the base, like a replay from genesis.
        self.cluster_level = levels.BASE_LEVEL
        self._kvs: SortedDict = SortedDict()
        # The watch history is a list with a moving start, trimmed in bulk (amortised O(1)).
        self._history: list[_Change] = []
        self._history_start = 0
        self._history_revisions: list[int] = []
        self._history_bytes = 0  # of the retained events (from _history_start)
        # request id -> (leader time, the result's serialized bytes): a result held as a message
        # costs several times its bytes (a bulk registration's holds every version it registered).
        self._dedupe: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self.members: dict[str, command_pb2.MemberRecord] = {}
        self.removed_members: dict[str, None] = {}
        self.ports.reset()
        self.leases.reset()
        self.registry.reset()
        self.membership.reset()
        self.gossip.reset()
        self.auth.reset()
        # Bumped on every directory change; derived, not snapshotted (readers cache by it).
        self.members_version = getattr(self, "members_version", 0) + 1

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
                return _error(common_pb2.ERROR_CODE_INVALID_ARGUMENT, problem, self.revision)
        kind = command.WhichOneof("body")
        handler = self._handlers.get(kind or "")
        if handler is None:
            result = _error(
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
        return self._record(domain, key, event_type, None, None, detail)

    def _record(
        self,
        domain: str,
        key: str,
        event_type: watch_pb2.EventType,
        kv: kv_pb2.KeyValue | None,
        prev_kv: kv_pb2.KeyValue | None,
        detail: Detail = None,
    ) -> int:
        """Bump the revision and append the one event that describes the change."""
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

    # ----------------------------------------------------------------- KV

    def _kv_put(self, command: command_pb2.Command) -> CommandResult:
        put = command.kv_put
        problem = limits.check_key(put.key) or limits.check_value(put.value)
        if problem:
            return _error(common_pb2.ERROR_CODE_INVALID_ARGUMENT, problem, self.revision)
        prev = self._kvs.get(put.key)
        result = self._write(put.key, put.value, prev)
        body = result.kv_put
        if put.prev_kv and prev is not None:
            body.prev_kv.CopyFrom(prev)
        return result

    def _write(self, key: str, value: bytes, prev: kv_pb2.KeyValue | None) -> CommandResult:
        revision = self.revision + 1
        kv = kv_pb2.KeyValue(
            key=key,
            value=value,
            create_revision=prev.create_revision if prev is not None else revision,
            mod_revision=revision,
            version=prev.version + 1 if prev is not None else 1,
        )
        self._kvs[key] = kv
        self._record(DOMAIN_KV, key, watch_pb2.EVENT_TYPE_PUT, kv, prev)
        return CommandResult(revision=revision, kv_put=command_pb2.KvPutResult(kv=_meta_only(kv)))

    def _delete(self, key: str) -> tuple[int, kv_pb2.KeyValue | None]:
        prev = self._kvs.pop(key, None)
        if prev is None:
            return self.revision, None
        tombstone = kv_pb2.KeyValue(key=key, mod_revision=self.revision + 1)
        return self._record(DOMAIN_KV, key, watch_pb2.EVENT_TYPE_DELETE, tombstone, prev), prev

    def _kv_delete(self, command: command_pb2.Command) -> CommandResult:
        key = command.kv_delete.key
        problem = limits.check_key(key)
        if problem:
            return _error(common_pb2.ERROR_CODE_INVALID_ARGUMENT, problem, self.revision)
        revision, prev = self._delete(key)
        body = command_pb2.KvDeleteResult(deleted=prev is not None)
        if prev is not None:
            body.prev_kv.CopyFrom(prev)
        return CommandResult(revision=revision, kv_delete=body)

    def _kv_compare_and_swap(self, command: command_pb2.Command) -> CommandResult:
        cas = command.kv_compare_and_swap
        problem = limits.check_key(cas.key) or limits.check_value(cas.value)
        if problem:
            return _error(common_pb2.ERROR_CODE_INVALID_ARGUMENT, problem, self.revision)
        current = self._kvs.get(cas.key)
        current_mod = current.mod_revision if current is not None else 0
        if current_mod != cas.expected_mod_revision:
            body = command_pb2.KvCompareAndSwapResult(succeeded=False, found=current is not None)
            if current is not None:
                body.kv.CopyFrom(current)
            return CommandResult(revision=self.revision, kv_compare_and_swap=body)
        if cas.delete:
            revision, _ = self._delete(cas.key)
            return CommandResult(
                revision=revision, kv_compare_and_swap=command_pb2.KvCompareAndSwapResult(succeeded=True)
            )
        written = self._write(cas.key, cas.value, current)
        return CommandResult(
            revision=written.revision,
            kv_compare_and_swap=command_pb2.KvCompareAndSwapResult(succeeded=True, found=True, kv=written.kv_put.kv),
        )

    def _barrier(self, command: command_pb2.Command) -> CommandResult:
        return CommandResult(revision=self.revision, barrier=command_pb2.BarrierResult())

    # ----------------------------------------------------------------- member directory

    def _member_upsert(self, command: command_pb2.Command) -> CommandResult:
        member = command.member_upsert.member
        problem = (
            limits.check_member_id(member.id)
            or limits.check_address(member.raft_address, "raft address")
            or limits.check_address(member.client_address, "client address")
        )
        if problem:
            return _error(common_pb2.ERROR_CODE_INVALID_ARGUMENT, problem, self.revision)
        if member.id in self.removed_members:
            return _error(
                common_pb2.ERROR_CODE_FAILED_PRECONDITION,
                f"member {member.id!r} was removed from this cluster and may not rejoin under that id; "
                "wipe its data directory and add it under a new id",
                self.revision,
            )
        for other in self.members.values():
            if other.id != member.id and other.raft_address == member.raft_address:
                return _error(
                    common_pb2.ERROR_CODE_ALREADY_EXISTS,
                    f"raft address {member.raft_address} already belongs to member {other.id!r}",
                    self.revision,
                )
        prev = self.members.get(member.id)
        if (
            prev is not None
            and prev.raft_address == member.raft_address
            and prev.client_address == member.client_address
            and prev.learner == member.learner
        ):
            return CommandResult(revision=self.revision, member=command_pb2.MemberResult(changed=False))
        record = command_pb2.MemberRecord(
            id=member.id,
            raft_address=member.raft_address,
            client_address=member.client_address,
            added_revision=prev.added_revision if prev is not None else self.revision + 1,
            learner=member.learner,
        )
        self.members[member.id] = record
        self.members_version += 1
        revision = self._record(
            DOMAIN_CLUSTER,
            member.id,
            watch_pb2.EVENT_TYPE_PUT,
            kv_pb2.KeyValue(key=member.id, value=record.SerializeToString(deterministic=True)),
            None,
        )
        return CommandResult(revision=revision, member=command_pb2.MemberResult(changed=True))

    def _set_cluster_level(self, command: command_pb2.Command) -> CommandResult:
        """Raise the cluster level; one at or below the current level changes nothing (never lowered).

        Stored whatever this release applies, so the replicas agree: a server whose release is
        below the level learns from ``cluster_level`` that it is too old (Cluster.Status says so).
        """
        level = command.set_cluster_level.level
        if level <= self.cluster_level:
            return CommandResult(
                revision=self.revision,
                cluster_level=command_pb2.ClusterLevelResult(level=self.cluster_level, changed=False),
            )
        self.cluster_level = level
        revision = self._record(
            DOMAIN_CLUSTER,
            CLUSTER_LEVEL_KEY,
            watch_pb2.EVENT_TYPE_PUT,
            kv_pb2.KeyValue(key=CLUSTER_LEVEL_KEY, value=str(level).encode()),
            None,
        )
        return CommandResult(revision=revision, cluster_level=command_pb2.ClusterLevelResult(level=level, changed=True))

    def _member_remove(self, command: command_pb2.Command) -> CommandResult:
        member_id = command.member_remove.id
        prev = self.members.pop(member_id, None)
        if prev is None:
            return _error(common_pb2.ERROR_CODE_NOT_FOUND, f"no member {member_id!r} in this cluster", self.revision)
        self.removed_members[member_id] = None
        self.members_version += 1
        revision = self._record(
            DOMAIN_CLUSTER,
            member_id,
            watch_pb2.EVENT_TYPE_DELETE,
            kv_pb2.KeyValue(key=member_id),
            kv_pb2.KeyValue(key=member_id, value=prev.SerializeToString(deterministic=True)),
        )
        return CommandResult(revision=revision, member=command_pb2.MemberResult(changed=True))

    # ----------------------------------------------------------------- restore from a backup

    def _restore_state(self, command: command_pb2.Command) -> CommandResult:
        """Replace the user data with a backup's, atomically.

        The member directory and the dedupe table stay: they describe this cluster, not the
        backup's, and so does the cluster level (what this cluster's servers apply). So does the
        auth state, unless the command asks for the backup's users, roles and
        tokens (``AuthTable.restore``: revocations and the on/off switch stay this cluster's). The
        watch history is dropped and marked compacted, so every watcher learns (OUT_OF_RANGE) that
        it must re-read rather than silently missing the swap.
        """
        try:
            snapshot = parse_snapshot(command.restore_state.snapshot)
        except SnapshotError as exc:
            return _error(common_pb2.ERROR_CODE_INVALID_ARGUMENT, str(exc), self.revision)
        for kv in snapshot.kvs:
            problem = limits.check_key(kv.key) or limits.check_value(kv.value)
            if not problem and not (1 <= kv.create_revision <= kv.mod_revision <= snapshot.revision and kv.version):
                problem = (
                    f"key {kv.key!r} has revisions create={kv.create_revision} mod={kv.mod_revision} "
                    f"version={kv.version}, impossible in a snapshot at revision {snapshot.revision}"
                )
            if problem:
                return _error(
                    common_pb2.ERROR_CODE_INVALID_ARGUMENT,
                    f"backup holds a bad key: {problem}",
                    self.revision,
                )
        if snapshot.revision >= limits.MAX_REVISION:
            return _error(
                common_pb2.ERROR_CODE_INVALID_ARGUMENT,
                f"backup revision {snapshot.revision} is beyond the supported maximum {limits.MAX_REVISION}",
                self.revision,
            )
        if snapshot.HasField("ports"):
            state = snapshot.ports
            # As this cluster's releases read it, and as the backup's cluster held it: a backup from
            # below UDP_PORTS may carry protocols an older release kept unread.
            levels.ports_state_at(state, min(self.cluster_level, levels.stored_level(snapshot.cluster_level)))
            try:
                self.ports.validate_map(
                    ports_pb2.PortMap(
                        format=PORT_MAP_FORMAT,
                        ranges=state.ranges,
                        reservations=state.reservations,
                        assignments=state.assignments,
                        services=state.services,
                        history=state.history,
                        observations=state.observations,
                    )
                )
            except Refused as refused:
                return _error(refused.code, f"backup holds a bad port map: {refused.message}", self.revision)
        try:
            ModelTable.validate_state(snapshot.models, snapshot.revision)
        except Refused as refused:
            return _error(refused.code, f"backup holds a bad model registry: {refused.message}", self.revision)
        try:
            MembershipTable.validate_state(snapshot.membership)
        except Refused as refused:
            return _error(refused.code, f"backup holds bad membership: {refused.message}", self.revision)
        with_auth = command.restore_state.include_auth
        try:
            if with_auth and snapshot.HasField("auth"):
                AuthTable.validate_state(snapshot.auth)
        except Refused as refused:
            return _error(refused.code, f"backup holds a bad auth state: {refused.message}", self.revision)
        self.revision = max(self.revision, snapshot.revision) + 1
        self.registry.load(snapshot.models)
        snapshot = _without_registry(snapshot)
        self._kvs = SortedDict((kv.key, kv) for kv in snapshot.kvs)
        if snapshot.HasField("ports"):
            self.ports.load(snapshot.ports)
        else:
            self.ports.reset()
        # Every restored lease gets a full TTL from now: its holder needs time to find the new state.
        # Never reuse a lease id: holders of leases granted after the backup may still send it.
        next_lease_id = max(self.leases.next_id, snapshot.next_lease_id)
        self.leases.load(list(snapshot.leases), next_lease_id, renewed_unix_ms=self.time_unix_ms)
        self.membership.load(snapshot.membership)
        self.membership.drop_dangling_leases(self.leases.exists)
        self.gossip.load(snapshot.membership.gossip)
        if with_auth:
            self.auth.restore(snapshot.auth if snapshot.HasField("auth") else None)
        self._history, self._history_revisions, self._history_start, self._history_bytes = [], [], 0, 0
        self.compacted_revision = self.revision
        return CommandResult(revision=self.revision, restore=command_pb2.RestoreResult(keys=len(self._kvs)))

    # ----------------------------------------------------------------- reads

    def get(self, key: str) -> kv_pb2.KeyValue | None:
        kv: kv_pb2.KeyValue | None = self._kvs.get(key)
        return kv

    def list_keys(
        self, prefix: str, start_after: str = "", limit: int = limits.MAX_LIST_LIMIT
    ) -> tuple[list[kv_pb2.KeyValue], bool]:
        """Keys under ``prefix`` in lexical order after ``start_after``; and whether more follow."""
        if start_after and start_after >= prefix:
            keys = self._kvs.irange(minimum=start_after, inclusive=(False, True))
        else:
            keys = self._kvs.irange(minimum=prefix)
        out: list[kv_pb2.KeyValue] = []
        for key in keys:
            if not key.startswith(prefix):
                break
            if len(out) == limit:
                return out, True
            out.append(self._kvs[key])
        return out, False

    def key_count(self) -> int:
        return len(self._kvs)

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
        """The whole state in the versioned StateSnapshot format (deterministic bytes)."""
        snap = command_pb2.StateSnapshot(
            format_version=SNAPSHOT_FORMAT_VERSION,
            revision=self.revision,
            time_unix_ms=self.time_unix_ms,
            compacted_revision=self.compacted_revision,
            removed_members=list(self.removed_members),
            end_marker=SNAPSHOT_END_MARKER,
        )
        snap.kvs.extend(self._kvs.values())
        snap.history.extend(change.to_event() for change in self._history[self._history_start :])
        for rid, (stamped, result) in self._dedupe.items():
            entry = snap.dedupe.add(request_id=rid, time_unix_ms=stamped)
            entry.result.MergeFromString(result)
        snap.members.extend(self.members.values())
        snap.ports.CopyFrom(self.ports.to_state())
        snap.leases.extend(self.leases.leases.values())
        snap.next_lease_id = self.leases.next_id
        snap.models.CopyFrom(self.registry.to_state())
        snap.membership.CopyFrom(self.membership.to_state())
        snap.membership.gossip.CopyFrom(self.gossip.to_state())
        tail = command_pb2.StateSnapshot()
        auth = self.auth.to_state()
        if auth != self.auth.default_state():
            tail.auth.CopyFrom(auth)
        if self.cluster_level != levels.BASE_LEVEL:
            tail.cluster_level = self.cluster_level
        if not tail.ListFields():
            # Auth at its defaults and the base level are what a snapshot without them loads as:
            # written as before either existed.
            return snap.SerializeToString(deterministic=True)
        # The end marker must stay the last bytes (a truncated snapshot lacks it), but the tail's
        # field numbers are above it: the parts are concatenated in this order (protobuf merges them).
        snap.ClearField("end_marker")
        return (
            snap.SerializeToString(deterministic=True)
            + tail.SerializeToString(deterministic=True)
            + command_pb2.StateSnapshot(end_marker=SNAPSHOT_END_MARKER).SerializeToString()
        )

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot. Raises SnapshotError; not for the replicated path."""
        snap = parse_snapshot(data)
        self._reset()
        self.registry.load(snap.models)
        snap = _without_registry(snap)
        self.revision = snap.revision
        self.time_unix_ms = snap.time_unix_ms
        self.compacted_revision = snap.compacted_revision
        self._kvs = SortedDict((kv.key, kv) for kv in snap.kvs)
        self._history = [_Change.from_event(event) for event in snap.history]
        self._history_revisions = [event.revision for event in self._history]
        self._history_bytes = sum(change.size for change in self._history)
        self._trim_history()  # a snapshot from a server with larger bounds
        self._dedupe = OrderedDict(
            (entry.request_id, (entry.time_unix_ms, entry.result.SerializeToString(deterministic=True)))
            for entry in snap.dedupe
        )
        self.members = {member.id: member for member in snap.members}
        self.removed_members = dict.fromkeys(snap.removed_members)
        self.cluster_level = levels.stored_level(snap.cluster_level)
        if snap.HasField("ports"):
            levels.ports_state_at(snap.ports, self.cluster_level)  # a dump an older release wrote
            self.ports.load(snap.ports)
        self.leases.load(list(snap.leases), snap.next_lease_id)
        self.membership.load(snap.membership)
        self.gossip.load(snap.membership.gossip)
        self.auth.load(snap.auth if snap.HasField("auth") else None)


def _without_registry(snap: command_pb2.StateSnapshot) -> command_pb2.StateSnapshot:
    """``snap`` without its model registry, once the registry has been loaded from it.

    The tables keep parts of the parsed snapshot (keys, history, ...) by reference, and one part
    kept keeps all of its memory: the parsed registry (which the registry has stored in its own,
    smaller form) would stay behind them. So the rest moves to memory of its own.
    """
    if not snap.HasField("models"):
        return snap
    snap.ClearField("models")
    return command_pb2.StateSnapshot.FromString(snap.SerializeToString())


def parse_snapshot(data: bytes) -> command_pb2.StateSnapshot:
    try:
        snap = command_pb2.StateSnapshot.FromString(data)
    except DecodeError as exc:
        raise SnapshotError(f"not a controlplane snapshot: {exc}") from None
    if snap.format_version != SNAPSHOT_FORMAT_VERSION:
        raise SnapshotError(
            f"snapshot format version {snap.format_version} is not supported "
            f"(this server reads version {SNAPSHOT_FORMAT_VERSION})"
        )
    if snap.end_marker != SNAPSHOT_END_MARKER:
        raise SnapshotError("snapshot is truncated: its end marker is missing")
    if snap.revision >= limits.MAX_REVISION:
        raise SnapshotError(f"snapshot revision {snap.revision} is beyond the supported maximum {limits.MAX_REVISION}")
    return snap


def batch_entry(time_unix_ms: int, leader_id: str, commands: Iterable[command_pb2.Command]) -> bytes:
    """Serialize commands as one log entry."""
    batch = command_pb2.CommandBatch(time_unix_ms=time_unix_ms, leader_id=leader_id)
    batch.commands.extend(commands)
    return batch.SerializeToString()
