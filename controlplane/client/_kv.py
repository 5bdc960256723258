"""The values the SDK returns for the key space, watches and the cluster: frozen dataclasses and
enums, free of protobuf types (each domain's own are in its module: ``_ports``, ``_models``...).

Callers never see a generated message: the wire schema can grow (new fields, new enum values)
without changing these types, and a result can be hashed, compared and kept after the client closes.
Revisions are the cluster-wide counter every write advances; ``0`` always means "none".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from controlplane.v1 import cluster_pb2, common_pb2, watch_pb2

if TYPE_CHECKING:
    from controlplane.client._gossip import GossipEvent
    from controlplane.client._membership import MembershipEvent
    from controlplane.client._models import ModelEvent
    from controlplane.client._ports import PortEvent

__all__ = [
    "CasResult",
    "ClusterStatus",
    "Consistency",
    "DeleteResult",
    "Event",
    "EventType",
    "KeyValue",
    "ListResult",
    "Member",
    "PutResult",
    "Role",
    "SnapshotInfo",
]


class Consistency(enum.Enum):
    """How fresh a read must be (``ReadOptions.consistency``)."""

    #: Answer from the replica that receives the read, at once. May lag the leader (~100 ms measured).
    STALE = common_pb2.CONSISTENCY_STALE
    #: Ordered through the Raft log: sees every write acknowledged before the read started.
    LINEARIZABLE = common_pb2.CONSISTENCY_LINEARIZABLE


class EventType(enum.Enum):
    """What happened to a key in an :class:`Event`."""

    PUT = watch_pb2.EVENT_TYPE_PUT
    DELETE = watch_pb2.EVENT_TYPE_DELETE


class Role(enum.Enum):
    """A server's Raft role. ``UNKNOWN`` when the answering node cannot tell (e.g. an unreachable member)."""

    UNKNOWN = cluster_pb2.ROLE_UNSPECIFIED
    FOLLOWER = cluster_pb2.ROLE_FOLLOWER
    CANDIDATE = cluster_pb2.ROLE_CANDIDATE
    LEADER = cluster_pb2.ROLE_LEADER
    #: A non-voting server catching up before its promotion.
    LEARNER = cluster_pb2.ROLE_LEARNER


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key and its value. ``mod_revision`` is the token :meth:`compare_and_swap` expects."""

    key: str
    value: bytes
    #: Revision that created the key (reset when a deleted key is created again).
    create_revision: int
    #: Revision of the last change.
    mod_revision: int
    #: Writes since creation, starting at 1.
    version: int


@dataclass(frozen=True, slots=True)
class PutResult:
    #: The revision this write created.
    revision: int
    kv: KeyValue
    #: The previous value, when asked for with ``prev_kv=True`` and the key existed.
    prev_kv: KeyValue | None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    revision: int
    #: False when the key did not exist (deleting a missing key is not an error).
    deleted: bool
    prev_kv: KeyValue | None


@dataclass(frozen=True, slots=True)
class ListResult:
    #: The revision the listing reflects; pass it as ``min_revision`` to read at least this state elsewhere.
    revision: int
    kvs: tuple[KeyValue, ...]
    #: More keys follow: call again with ``start_after=kvs[-1].key``.
    more: bool


@dataclass(frozen=True, slots=True)
class CasResult:
    revision: int
    #: False when the key's mod_revision no longer matched: a lost race, not an error.
    succeeded: bool
    #: The key after the call: the new value on success, the current holder on a lost race,
    #: None when the key does not exist (a successful delete, or a race lost to a delete).
    kv: KeyValue | None


@dataclass(frozen=True, slots=True)
class Event:
    """One change, delivered by :meth:`watch` in revision order."""

    revision: int
    type: EventType
    #: Which part of the state changed: "kv", "cluster", ...
    domain: str
    key: str
    #: The key after a PUT; None for a DELETE.
    kv: KeyValue | None
    #: The value before the change, when the server keeps it.
    prev_kv: KeyValue | None
    #: Leader-stamped time of the change (milliseconds since the Unix epoch).
    time_unix_ms: int
    #: For domain "ports": the change with the old and new port.
    port: PortEvent | None = None
    #: For domain "models": the model or version after the change.
    model: ModelEvent | None = None
    #: For domain "membership": the node, network, placement or flag after the change.
    membership: MembershipEvent | None = None
    #: For domain "gossip": the round after the change (keys "rounds/...") or the matrix version ("bandwidth").
    gossip: GossipEvent | None = None


@dataclass(frozen=True, slots=True)
class Member:
    """A Raft server (voter or learner) as seen by the node that answered."""

    id: str
    raft_address: str
    #: Where clients reach it over gRPC.
    client_address: str
    role: Role
    #: Reachable over Raft from the answering node (always True for itself).
    healthy: bool
    voter: bool
    #: Highest log index known replicated on it; only filled in when the leader answers.
    match_index: int = 0
    #: A learner: receives the log, does not vote, promoted once caught up and stable.
    learner: bool = False
    #: Leader-answered only: its applied index, since when it has been caught up continuously, and
    #: when the leader last reached it.
    applied_index: int = 0
    stable_since_unix_ms: int = 0
    last_contact_unix_ms: int = 0
    #: Leader-answered only: its commit index at the leader's last health check.
    commit_index: int = 0


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """The view of the one node that answered :meth:`status` (``node_id``)."""

    node_id: str
    role: Role
    leader_id: str
    leader_address: str
    term: int
    commit_index: int
    applied_index: int
    applied_revision: int
    members: tuple[Member, ...]
    has_quorum: bool
    #: The oldest revision a watch can still start from.
    oldest_revision: int
    raft_log_size: int
    version: str
    #: Caught up and serving (False while starting, switching from learner to voter, or stopping).
    ready: bool = True
    #: The membership change in flight on the leader, if any.
    membership_change: str = ""
    #: "fsync" (the journal is synced before anything is acknowledged) or "none" (never synced:
    #: survives kill -9, not a power cut); "" from a server older than this field.
    durability: str = ""
    #: "mtls" (servers authenticate each other) or "insecure" (--insecure-dev).
    peer_security: str = ""
    #: The highest cluster level this server's release applies (1 for a release before levels).
    apply_level: int = 1
    #: The level the cluster applies commands at (raised once every server's apply_level reaches
    #: it); above apply_level, this server is too old for its cluster.
    cluster_level: int = 1


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A backup written by :meth:`snapshot`: its revision, size in bytes and hex sha256."""

    revision: int
    size: int
    sha256: str
