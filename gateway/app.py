"""The gateway's ASGI app: HTTP JSON for discovery and bootstrap, in front of the gRPC cluster.

``create_app(settings)`` builds it; ``cpctl gateway`` runs it under uvicorn. Every answer comes from
the cluster through the async SDK (:class:`controlplane.client.AsyncClient`), wrapped in
:class:`SdkBackend`: the gateway holds no state of its own that matters after a restart (see
``gateway/DESIGN.md``). The only memory is a one-second cache of the cluster's status, shared by
``/v1/cluster``, ``/v1/leader``, ``/v1/bootstrap`` and ``/readyz``.

The pieces, in the order a request meets them:

1. :class:`BodyLimit` (ASGI middleware): a body over ``max_body_bytes`` is refused with 413 before
   anything parses it, by its Content-Length or by counting the streamed bytes.
2. FastAPI routing and validation against the Pydantic models below (every request and response
   has one; string lengths and list sizes follow the cluster's own limits, so bad input is a 400
   here rather than a round trip).
3. :func:`require_token` on every POST/DELETE when a token is configured (constant-time compare).
4. The handler calls the :class:`Backend`; errors are mapped to HTTP in ``gateway.errors`` only.

The response models and the ``*_out`` converters are also what :class:`gateway.client.GatewayClient`
returns, including when it bypasses the gateway and asks the servers itself: one schema for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

import structlog
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controlplane import __version__, errors
from controlplane.client import (
    AsyncClient,
    ClusterStatus,
    Consistency,
    Flag,
    Moves,
    Network,
    NetworkDetail,
    NodeRecord,
    NodeState,
    NodeView,
    Placement,
    PortAssignment,
    PortList,
    Registered,
    Reservation,
    Role,
    SearchResult,
)
from controlplane.state import limits
from controlplane.state import membership as membership_limits
from gateway import errors as gw_errors
from gateway.formation import DEFAULT_CANDIDATE_TTL_S, Candidate, FormationTable

__all__ = [
    "Backend",
    "BodyLimit",
    "BootstrapOut",
    "ClusterOut",
    "ErrorOut",
    "GatewaySettings",
    "LeaderOut",
    "NodeViewOut",
    "RegisterNodeIn",
    "SdkBackend",
    "configure_logging",
    "create_app",
]

log = structlog.get_logger("gateway")

# --------------------------------------------------------------------------------------- limits

#: Request bodies above this many bytes are refused (413) before parsing. A registration with every
#: list at its maximum is about 40 KiB.
DEFAULT_MAX_BODY_BYTES = 64 * 1024
#: How long one status answer serves /v1/cluster, /v1/leader, /v1/bootstrap and /readyz.
DEFAULT_CACHE_TTL_S = 1.0
#: Deadline of the status call behind those endpoints: a starting node wants a quick "not now".
DEFAULT_STATUS_TIMEOUT_S = 2.0
#: Deadline of every other cluster call (the SDK retries within it).
DEFAULT_CALL_TIMEOUT_S = 5.0

# The cluster validates everything again (it is the authority); these bounds make the common
# mistakes a 400 from the gateway and keep any one request small. Imported where the cluster
# defines them, so the two cannot drift.
ID_CHARS = limits.MAX_MEMBER_ID_CHARS
NAME_CHARS = limits.MAX_NAME_CHARS
HOST_CHARS = limits.MAX_HOST_CHARS
ADDRESS_CHARS = limits.MAX_HOST_CHARS + 8  # HOST:PORT, IPv6 in brackets
LABEL_VALUE_CHARS = 256
VERSION_CHARS = 64
ACTIVITY_CHARS = 64
MAX_LABELS = membership_limits.MAX_LABELS
MAX_CAPABILITIES = membership_limits.MAX_CAPABILITIES
MAX_ADDRESSES = membership_limits.MAX_ADDRESSES
MIN_TTL_S = limits.MIN_LEASE_TTL_MS / 1000
MAX_TTL_S = limits.MAX_LEASE_TTL_MS / 1000
# controlplane/server/search.py: MAX_QUERY_CHARS and MAX_LIMIT (server internals, not imported).
QUERY_CHARS = 1024
MAX_SEARCH_LIMIT = 1000
MAX_SEARCH_OFFSET = 1_000_000
REQUEST_ID_CHARS = limits.MAX_REQUEST_ID_CHARS
#: Largest founding set a gateway forms (a Raft cluster of more voters only gets slower).
MAX_BOOTSTRAP_EXPECT = 9
#: How often a gateway pulls its peer gateways' candidate lists.
DEFAULT_RELAY_INTERVAL_S = 0.3
# Resources are uint32/uint64 on the wire; these bounds are generous and keep values encodable.
MAX_GPUS = 65_536
MAX_MEMORY_BYTES = 2**60
MAX_CPU_MILLIS = 2**31 - 1


def _encodable(text: str) -> str:
    """JSON may carry lone surrogates ("\\ud800") that protobuf cannot encode: refuse them here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return text


_Utf8 = AfterValidator(_encodable)
NodeId = Annotated[str, StringConstraints(min_length=1, max_length=ID_CHARS), _Utf8]
Name = Annotated[str, StringConstraints(min_length=1, max_length=NAME_CHARS), _Utf8]
LabelValue = Annotated[str, StringConstraints(max_length=LABEL_VALUE_CHARS), _Utf8]
Address = Annotated[str, StringConstraints(min_length=1, max_length=ADDRESS_CHARS), _Utf8]
Version = Annotated[str, StringConstraints(max_length=VERSION_CHARS), _Utf8]
Activity = Annotated[str, StringConstraints(max_length=ACTIVITY_CHARS), _Utf8]

# --------------------------------------------------------------------------------------- models


class _In(BaseModel):
    # A misspelt field is a 400 that names it, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ErrorOut(_Out):
    """Every error answer."""

    code: str = Field(description="Stable, for programs: INVALID_ARGUMENT, NOT_FOUND, NO_LEADER, ...")
    message: str = Field(description="For people; may change")


class Resources(_In):
    gpus: int = Field(default=0, ge=0, le=MAX_GPUS)
    memory_bytes: int = Field(default=0, ge=0, le=MAX_MEMORY_BYTES)
    cpu_millis: int = Field(default=0, ge=0, le=MAX_CPU_MILLIS, description="Thousandths of a core")


class RegisterNodeIn(_In):
    """A node (agent or server) registering; the cluster grants its liveness lease in the same step."""

    id: NodeId = Field(description="Letters, digits, '.', '_', '-'; starting with a letter or digit")
    role: Literal["agent", "server"] = "agent"
    addresses: dict[Name, Address] = Field(
        default_factory=dict, max_length=MAX_ADDRESSES, description='Purpose -> HOST:PORT, e.g. {"grpc": ...}'
    )
    capabilities: list[Name] = Field(default_factory=list, max_length=MAX_CAPABILITIES)
    resources: Resources | None = None
    labels: dict[Name, LabelValue] = Field(default_factory=dict, max_length=MAX_LABELS)
    version: Version = ""
    ttl_s: float = Field(default=10.0, ge=MIN_TTL_S, le=MAX_TTL_S, description="Lease TTL; heartbeat well within it")


class HeartbeatIn(_In):
    activity: Activity = Field(default="", description="e.g. idle, training, aggregating")


class ResourcesOut(_Out):
    gpus: int
    memory_bytes: int
    cpu_millis: int


class NodeRecordOut(_Out):
    """A node as the cluster records it."""

    id: str
    role: Literal["agent", "server", "unspecified"]
    state: Literal["joining", "active", "leaving", "left", "dead", "unspecified"]
    addresses: dict[str, str]
    capabilities: list[str]
    resources: ResourcesOut | None
    labels: dict[str, str]
    version: str
    activity: str
    reason: str = Field(description="Why it is in its state (e.g. lease expired)")
    incarnation: int
    lease_id: int
    registered_unix_ms: int
    state_changed_unix_ms: int
    create_revision: int
    mod_revision: int


class NodeViewOut(NodeRecordOut):
    """A node in the unified view: membership, Raft role, liveness, networks."""

    raft_role: str = Field(description="leader, follower, candidate or learner for servers; empty for agents")
    voter: bool
    connectivity: Literal["connected", "unreachable", "gone", "unspecified"]
    last_heartbeat_unix_ms: int
    lease_ttl_ms: int
    networks: list[str]
    clients_served: int


class NodesOut(_Out):
    nodes: list[NodeViewOut]


class RegisteredOut(_Out):
    revision: int
    lease_ttl_ms: int
    node: NodeRecordOut


class HeartbeatOut(_Out):
    node_id: str
    state: Literal["joining", "active", "leaving", "left", "dead", "unspecified"]


class PlacementOut(_Out):
    client_id: str
    network: str
    node_id: str = Field(description="The member serving the client")
    lease_id: int
    model: str
    placed_unix_ms: int
    revision: int


class MovesOut(_Out):
    revision: int
    changed: bool = Field(description="False when there was nothing to do (already gone)")
    moved: list[PlacementOut]
    unplaced: list[str]


class MemberOut(_Out):
    id: str
    client_address: str
    raft_address: str
    role: Literal["leader", "follower", "candidate", "learner", "unknown"]
    healthy: bool
    voter: bool


class LeaderOut(_Out):
    id: str
    client_address: str
    raft_address: str
    term: int


class ClusterOut(_Out):
    leader: LeaderOut | None = Field(description="null while an election runs or quorum is lost")
    term: int
    has_quorum: bool
    answered_by: str = Field(description="The server whose view this is (the leader's when reachable)")
    applied_revision: int
    version: str
    members: list[MemberOut]


class BootstrapMember(_Out):
    id: str
    client_address: str
    raft_address: str
    voter: bool = True


def _host_port(text: str) -> str:
    problem = limits.check_address(text, "address")
    if problem:
        raise ValueError(problem)
    return text


HostPort = Annotated[
    str,
    StringConstraints(min_length=3, max_length=ADDRESS_CHARS),
    AfterValidator(_encodable),
    AfterValidator(_host_port),
]


class CandidateIn(_In):
    """A server starting with ``--bootstrap-expect``: who it is and, once cast, its vote."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=ID_CHARS), AfterValidator(_encodable)]
    client_address: HostPort
    raft_address: HostPort
    #: The ids it voted for (sorted, itself included); empty until it voted. Never changes once cast.
    vote: list[Annotated[str, StringConstraints(min_length=1, max_length=ID_CHARS)]] = Field(
        default_factory=list, max_length=MAX_BOOTSTRAP_EXPECT
    )
    #: It runs Raft already (it founded or joined the cluster).
    started: bool = False


class CandidateOut(_Out):
    id: str
    client_address: str
    raft_address: str
    vote: list[str]
    started: bool
    #: Seconds since this candidacy was last posted (to this gateway or one of its peers).
    age_s: float


class CandidatesOut(_Out):
    """A gateway's candidate list, as its peer gateways pull it."""

    expect: int
    candidates: list[CandidateOut]


class BootstrapOut(_Out):
    """What a starting server or agent must do.

    - ``join``: a cluster exists; ``members`` are its servers and ``leader`` the one leading.
    - ``form`` (gateways run with ``--bootstrap-expect N``): no cluster exists, and every server in
      ``members`` voted for exactly this founding set: those servers start Raft with it. Any other
      server waits, then joins.
    - ``wait``: ask again (votes are still being cast, or a cluster exists but has no leader yet).

    Clients must treat an action they do not know as ``wait``. ``expect`` and ``candidates`` are
    set only by gateways run with ``--bootstrap-expect``.
    """

    action: Literal["join", "form", "wait"]
    members: list[BootstrapMember]
    leader: LeaderOut | None
    expect: int | None = None
    candidates: list[CandidateOut] = Field(default_factory=list)


class NetworkOut(_Out):
    name: str
    model: str
    max_clients: int
    priority: int
    labels: dict[str, str]
    required_capabilities: list[str]
    description: str
    members: list[str]
    active_members: int
    clients: int
    create_revision: int
    mod_revision: int


class NetworksOut(_Out):
    networks: list[NetworkOut]


class NetworkDetailOut(_Out):
    revision: int
    network: NetworkOut
    placements: list[PlacementOut]


class PortAssignmentOut(_Out):
    host: str
    service: str
    name: str
    port: int
    range: str
    lease_id: int
    create_revision: int
    mod_revision: int
    created_unix_ms: int
    updated_unix_ms: int


class ReservationOut(_Out):
    host: str = Field(description="Empty: reserved on every host")
    port: int
    reason: str
    revision: int


class PortsOut(_Out):
    revision: int
    assignments: list[PortAssignmentOut]
    reservations: list[ReservationOut]


class ModelOut(_Out):
    name: str
    description: str
    family: str
    tags: list[str]
    owner: str
    aliases: dict[str, int]
    latest_version: int
    version_count: int
    create_revision: int
    mod_revision: int


class SearchHitOut(_Out):
    model: ModelOut
    score: float = Field(description="bm25, lower is better; 0 from the LIKE fallback")


class SearchOut(_Out):
    revision: int
    total: int
    engine: str
    query_ms: float
    hits: list[SearchHitOut]


class FlagOut(_Out):
    name: str
    enabled: bool
    description: str
    set: bool = Field(description="False for a known flag never set: it shows its default")
    mod_revision: int


class FlagsOut(_Out):
    flags: list[FlagOut]


class HealthOut(_Out):
    status: Literal["ok"]


class ReadyOut(_Out):
    status: Literal["ready"]
    leader: LeaderOut


# --------------------------------------------------------------------------------------- converters


def _lower(enum_value: Any) -> Any:
    return enum_value.name.lower()


def member_role(role: Role, voter: bool) -> str:
    if not voter:
        return "learner"
    return "unknown" if role is Role.UNKNOWN else role.name.lower()


def leader_out(status: ClusterStatus) -> LeaderOut | None:
    if not status.leader_id:
        return None
    raft = next((m.raft_address for m in status.members if m.id == status.leader_id), "")
    return LeaderOut(id=status.leader_id, client_address=status.leader_address, raft_address=raft, term=status.term)


def cluster_out(status: ClusterStatus) -> ClusterOut:
    return ClusterOut(
        leader=leader_out(status),
        term=status.term,
        has_quorum=status.has_quorum,
        answered_by=status.node_id,
        applied_revision=status.applied_revision,
        version=status.version,
        members=[
            MemberOut(
                id=m.id,
                client_address=m.client_address,
                raft_address=m.raft_address,
                role=member_role(m.role, m.voter),  # type: ignore[arg-type]
                healthy=m.healthy,
                voter=m.voter,
            )
            for m in status.members
        ],
    )


def require_leader(status: ClusterStatus) -> LeaderOut:
    """The leader, or ``NoLeader`` (503): discovery answers only while a leader is reachable.

    A server that answers as leader must also still hold its quorum: a partitioned leader believes
    it leads until its fallback timeout passes.
    """
    leader = leader_out(status)
    if leader is None or (status.node_id == status.leader_id and not status.has_quorum):
        raise errors.NoLeader("no leader is reachable right now (an election is running or quorum is lost)")
    return leader


def bootstrap_out(status: ClusterStatus) -> BootstrapOut:
    leader = require_leader(status)
    return BootstrapOut(
        action="join",
        leader=leader,
        members=[
            BootstrapMember(id=m.id, client_address=m.client_address, raft_address=m.raft_address, voter=m.voter)
            for m in status.members
        ],
    )


def node_record_out(record: NodeRecord) -> NodeRecordOut:
    spec = record.spec
    res = spec.resources
    return NodeRecordOut(
        id=spec.id,
        role=_lower(spec.role),
        state=_lower(record.state),
        addresses=dict(spec.addresses),
        capabilities=list(spec.capabilities),
        resources=None
        if res is None
        else ResourcesOut(gpus=res.gpus, memory_bytes=res.memory_bytes, cpu_millis=res.cpu_millis),
        labels=dict(spec.labels),
        version=spec.version,
        activity=record.activity,
        reason=record.reason,
        incarnation=record.incarnation,
        lease_id=record.lease_id,
        registered_unix_ms=record.registered_unix_ms,
        state_changed_unix_ms=record.state_changed_unix_ms,
        create_revision=record.create_revision,
        mod_revision=record.mod_revision,
    )


def node_view_out(view: NodeView) -> NodeViewOut:
    return NodeViewOut(
        **node_record_out(view.node).model_dump(),
        raft_role=view.raft_role,
        voter=view.voter,
        connectivity=_lower(view.connectivity),
        last_heartbeat_unix_ms=view.last_heartbeat_unix_ms,
        lease_ttl_ms=view.lease_ttl_ms,
        networks=list(view.networks),
        clients_served=view.clients_served,
    )


def registered_out(registered: Registered) -> RegisteredOut:
    return RegisteredOut(
        revision=registered.revision, lease_ttl_ms=registered.lease_ttl_ms, node=node_record_out(registered.node)
    )


def placement_out(p: Placement) -> PlacementOut:
    return PlacementOut(
        client_id=p.client_id,
        network=p.network,
        node_id=p.node_id,
        lease_id=p.lease_id,
        model=p.model,
        placed_unix_ms=p.placed_unix_ms,
        revision=p.revision,
    )


def moves_out(moves: Moves) -> MovesOut:
    return MovesOut(
        revision=moves.revision,
        changed=moves.changed,
        moved=[placement_out(p) for p in moves.moved],
        unplaced=list(moves.unplaced),
    )


def network_out(n: Network) -> NetworkOut:
    return NetworkOut(
        name=n.name,
        model=n.model,
        max_clients=n.max_clients,
        priority=n.priority,
        labels=dict(n.labels),
        required_capabilities=list(n.required_capabilities),
        description=n.description,
        members=list(n.members),
        active_members=n.active_members,
        clients=n.clients,
        create_revision=n.create_revision,
        mod_revision=n.mod_revision,
    )


def network_detail_out(detail: NetworkDetail) -> NetworkDetailOut:
    return NetworkDetailOut(
        revision=detail.revision,
        network=network_out(detail.network),
        placements=[placement_out(p) for p in detail.placements],
    )


def _assignment_out(a: PortAssignment) -> PortAssignmentOut:
    return PortAssignmentOut(
        host=a.host,
        service=a.service,
        name=a.name,
        port=a.port,
        range=a.range,
        lease_id=a.lease_id,
        create_revision=a.create_revision,
        mod_revision=a.mod_revision,
        created_unix_ms=a.created_unix_ms,
        updated_unix_ms=a.updated_unix_ms,
    )


def _reservation_out(r: Reservation) -> ReservationOut:
    return ReservationOut(host=r.host, port=r.port, reason=r.reason, revision=r.revision)


def ports_out(ports: PortList) -> PortsOut:
    return PortsOut(
        revision=ports.revision,
        assignments=[_assignment_out(a) for a in ports.assignments],
        reservations=[_reservation_out(r) for r in ports.reservations],
    )


def search_out(result: SearchResult) -> SearchOut:
    return SearchOut(
        revision=result.revision,
        total=result.total,
        engine=result.engine,
        query_ms=result.query_ms,
        hits=[
            SearchHitOut(
                score=hit.score,
                model=ModelOut(
                    name=hit.model.name,
                    description=hit.model.description,
                    family=hit.model.family,
                    tags=list(hit.model.tags),
                    owner=hit.model.owner,
                    aliases=dict(hit.model.aliases),
                    latest_version=hit.model.latest_version,
                    version_count=hit.model.version_count,
                    create_revision=hit.model.create_revision,
                    mod_revision=hit.model.mod_revision,
                ),
            )
            for hit in result.hits
        ],
    )


def flag_out(flag: Flag) -> FlagOut:
    return FlagOut(
        name=flag.name, enabled=flag.enabled, description=flag.description, set=flag.set, mod_revision=flag.mod_revision
    )


# --------------------------------------------------------------------------------------- backend


ConsistencyName = Literal["linearizable", "stale"]


def consistency_of(name: ConsistencyName) -> Consistency:
    return Consistency.STALE if name == "stale" else Consistency.LINEARIZABLE


@dataclass(frozen=True)
class NodeFilters:
    role: Literal["agent", "server"] | None = None
    state: Literal["joining", "active", "leaving", "left", "dead"] | None = None
    labels: tuple[tuple[str, str], ...] = ()
    network: str = ""
    capability: str = ""
    include_gone: bool = False


class Backend(Protocol):
    """What the gateway needs from the cluster: nothing more, so a test double is a page of code.

    ``request_id`` makes a mutation idempotent across retries (the cluster deduplicates by it).
    Errors are the typed errors of :mod:`controlplane.errors`.
    """

    async def cluster_status(self, timeout: float) -> ClusterStatus: ...

    async def register_node(self, node: RegisterNodeIn, request_id: str | None) -> Registered: ...

    async def heartbeat(self, node_id: str, activity: str, request_id: str | None) -> NodeState: ...

    async def deregister(self, node_id: str, request_id: str | None) -> Moves: ...

    async def get_node(self, node_id: str, consistency: Consistency) -> NodeView: ...

    async def nodes(self, filters: NodeFilters, consistency: Consistency) -> tuple[NodeView, ...]: ...

    async def networks(self, model: str, consistency: Consistency) -> tuple[Network, ...]: ...

    async def get_network(self, name: str, consistency: Consistency) -> NetworkDetail: ...

    async def ports(self, host: str, service: str, consistency: Consistency) -> PortList: ...

    async def search_models(
        self, query: str, tag: str, family: str, limit: int, offset: int, consistency: Consistency
    ) -> SearchResult: ...

    async def flags(self, consistency: Consistency) -> tuple[Flag, ...]: ...

    async def close(self) -> None: ...


class SdkBackend:
    """:class:`Backend` over the async SDK: one client for the whole cluster, plus one pinned to the
    leader so that ``/v1/cluster`` shows the leader's view of every member's health.
    """

    #: Pinned clients kept at most (leaders seen recently); older ones are closed.
    MAX_PINNED = 8

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = DEFAULT_CALL_TIMEOUT_S,
        client_factory: Callable[[str | Sequence[str], float], AsyncClient] | None = None,
    ) -> None:
        self._factory = client_factory or (lambda e, t: AsyncClient(e, timeout=t))
        self._timeout = timeout
        self.client = self._factory(endpoints, timeout)
        self._pinned: dict[str, AsyncClient] = {}
        self._leader_address = ""

    async def _pinned_status(self, address: str, timeout: float) -> ClusterStatus:
        client = self._pinned.get(address)
        if client is None:
            if len(self._pinned) >= self.MAX_PINNED:
                oldest = next(iter(self._pinned))
                await self._pinned.pop(oldest).close()
            client = self._pinned[address] = self._factory(address, timeout)
        return await client.status(timeout=timeout)

    async def cluster_status(self, timeout: float) -> ClusterStatus:
        """The leader's status when it answers; otherwise whichever server answered.

        Only the leader sees every member's health; a follower's answer still names the leader
        and the members, which is all discovery needs.
        """
        deadline = time.monotonic() + timeout
        if self._leader_address:
            try:
                status = await self._pinned_status(self._leader_address, min(1.0, timeout))
                if status.role is Role.LEADER:
                    return status
            except errors.ControlPlaneError:
                pass
        status = await self.client.status(timeout=max(0.1, deadline - time.monotonic()))
        self._leader_address = status.leader_address
        if status.role is not Role.LEADER and status.leader_address:
            try:
                leader_view = await self._pinned_status(status.leader_address, max(0.1, deadline - time.monotonic()))
            except errors.ControlPlaneError:
                return status
            if leader_view.role is Role.LEADER:
                return leader_view
        return status

    async def register_node(self, node: RegisterNodeIn, request_id: str | None) -> Registered:
        res = node.resources or Resources()
        return await self.client.membership.register_node(
            node.id,
            role=node.role,
            addresses=node.addresses,
            capabilities=node.capabilities,
            gpus=res.gpus,
            memory_bytes=res.memory_bytes,
            cpu_millis=res.cpu_millis,
            labels=node.labels,
            version=node.version,
            ttl_s=node.ttl_s,
            request_id=request_id,
        )

    async def heartbeat(self, node_id: str, activity: str, request_id: str | None) -> NodeState:
        return await self.client.membership.heartbeat(node_id, activity=activity, request_id=request_id)

    async def deregister(self, node_id: str, request_id: str | None) -> Moves:
        return await self.client.membership.deregister(node_id, request_id=request_id)

    async def get_node(self, node_id: str, consistency: Consistency) -> NodeView:
        return await self.client.membership.get_node(node_id, consistency=consistency)

    async def nodes(self, filters: NodeFilters, consistency: Consistency) -> tuple[NodeView, ...]:
        return await self.client.membership.nodes(
            role=filters.role,
            state=filters.state,
            labels=dict(filters.labels),
            network=filters.network,
            capability=filters.capability,
            include_gone=filters.include_gone,
            consistency=consistency,
        )

    async def networks(self, model: str, consistency: Consistency) -> tuple[Network, ...]:
        return await self.client.membership.networks(model=model, consistency=consistency)

    async def get_network(self, name: str, consistency: Consistency) -> NetworkDetail:
        return await self.client.membership.get_network(name, consistency=consistency)

    async def ports(self, host: str, service: str, consistency: Consistency) -> PortList:
        return await self.client.ports.list(host=host, service=service, consistency=consistency)

    async def search_models(
        self, query: str, tag: str, family: str, limit: int, offset: int, consistency: Consistency
    ) -> SearchResult:
        return await self.client.models.search(
            query, tag=tag, family=family, limit=limit, offset=offset, consistency=consistency
        )

    async def flags(self, consistency: Consistency) -> tuple[Flag, ...]:
        return await self.client.membership.flags(consistency=consistency)

    async def close(self) -> None:
        pinned, self._pinned = list(self._pinned.values()), {}
        for client in [self.client, *pinned]:
            await client.close()


# --------------------------------------------------------------------------------------- the gateway


@dataclass(frozen=True)
class GatewaySettings:
    """Everything a gateway is configured with. Two gateways with equal settings are interchangeable."""

    #: The cluster's servers (client addresses). Empty with ``bootstrap_expect``: the cluster is then
    #: found through the candidacies of the servers that formed or joined it.
    endpoints: tuple[str, ...]
    #: Bearer token for POST/DELETE; None leaves them open (loopback / development only).
    token: str | None = None
    #: Form a cluster of this many servers when none exists (``/v1/bootstrap`` answers ``form``).
    bootstrap_expect: int | None = None
    #: Other gateways' base URLs (``http://HOST:PORT``): candidacies are relayed between them.
    peers: tuple[str, ...] = ()
    candidate_ttl_s: float = DEFAULT_CANDIDATE_TTL_S
    relay_interval_s: float = DEFAULT_RELAY_INTERVAL_S
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    cache_ttl_s: float = DEFAULT_CACHE_TTL_S
    status_timeout_s: float = DEFAULT_STATUS_TIMEOUT_S
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S

    def __repr__(self) -> str:  # the token must never reach a log line or a traceback
        return (
            f"GatewaySettings(endpoints={self.endpoints!r}, token={'<set>' if self.token else None}, "
            f"max_body_bytes={self.max_body_bytes}, cache_ttl_s={self.cache_ttl_s}, "
            f"bootstrap_expect={self.bootstrap_expect}, peers={self.peers!r})"
        )


class StatusCache:
    """One cluster status, shared for ``ttl_s`` by every request, fetched by one call at a time.

    Failures are kept for the same time: a gateway in front of a dead cluster answers 503 at once
    instead of sending every request into a timeout. This is the gateway's only memory, and losing
    it loses nothing: the next request asks the cluster.
    """

    def __init__(self, fetch: Callable[[], Awaitable[ClusterStatus]], ttl_s: float, clock: Callable[[], float]) -> None:
        self._fetch = fetch
        self._ttl = ttl_s
        self._clock = clock
        self._value: ClusterStatus | BaseException | None = None
        self._at = 0.0
        self._pending: asyncio.Future[ClusterStatus] | None = None

    async def get(self) -> ClusterStatus:
        if self._value is not None and self._clock() - self._at < self._ttl:
            if isinstance(self._value, BaseException):
                # with_traceback(None): re-raising one object would grow its traceback each time.
                raise self._value.with_traceback(None)
            return self._value
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._refresh())
        # Shielded: a caller that goes away (client disconnect) must not cancel the others' fetch.
        return await asyncio.shield(self._pending)

    async def _refresh(self) -> ClusterStatus:
        try:
            value = await self._fetch()
        except errors.ControlPlaneError as exc:
            self._value, self._at = exc, self._clock()
            raise
        finally:
            self._pending = None
        self._value, self._at = value, self._clock()
        return value

    def clear(self) -> None:
        self._value = None


class Gateway:
    """The per-app state: settings, the backend (created on first use, in the serving event loop),
    the status cache and, with ``bootstrap_expect``, the soft list of candidacies."""

    def __init__(
        self,
        settings: GatewaySettings,
        backend: Backend | None,
        backend_factory: Callable[[Sequence[str]], Backend],
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self._backend = backend
        self._backend_addresses: tuple[str, ...] = settings.endpoints
        self._factory = backend_factory
        self._retired: set[asyncio.Task[None]] = set()
        self._retired_backends: list[Backend] = []
        self.clock = clock
        self.cache = StatusCache(self._fetch_status, settings.cache_ttl_s, clock)
        self.formation = (
            FormationTable(settings.bootstrap_expect, settings.candidate_ttl_s) if settings.bootstrap_expect else None
        )

    def cluster_addresses(self) -> tuple[str, ...]:
        """Where the cluster is: the configured endpoints, else the servers that announced they run it."""
        if self.settings.endpoints or self.formation is None:
            return self.settings.endpoints
        return tuple(sorted(self.formation.cluster_addresses(self.clock())))

    @property
    def backend(self) -> Backend:
        # grpc.aio channels belong to the event loop that opened them: open them lazily, inside
        # the server's loop, not when the app object is built.
        addresses = self.cluster_addresses()
        if self._backend is not None and addresses and addresses != self._backend_addresses:
            # A server joined or left the announced set: follow it. The old backend may still carry
            # requests, so it is closed a little later rather than under them.
            self._retire(self._backend)
            self._backend = None
            self.cache.clear()
        if self._backend is None:
            if not addresses:
                raise errors.NoLeader(
                    "no cluster has formed yet: start the servers with --bootstrap-expect "
                    f"{self.settings.bootstrap_expect} and this gateway's URL (GET /v1/bootstrap shows the votes)"
                )
            self._backend = self._factory(addresses)
            self._backend_addresses = addresses
        return self._backend

    def _retire(self, backend: Backend) -> None:
        async def close_later() -> None:
            await asyncio.sleep(self.settings.call_timeout_s * 2)
            self._retired_backends.remove(backend)
            await backend.close()

        self._retired_backends.append(backend)
        task = asyncio.ensure_future(close_later())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _fetch_status(self) -> ClusterStatus:
        timeout = self.settings.status_timeout_s
        try:
            return await self.backend.cluster_status(timeout)
        except errors.DeadlineExceeded as exc:
            raise gw_errors.ClusterUnreachable(
                f"no server answered within {timeout:g} s (endpoints: {','.join(self._backend_addresses)})"
            ) from exc

    def candidates_out(self) -> list[CandidateOut]:
        if self.formation is None:
            return []
        return [
            CandidateOut(
                id=c.id,
                client_address=c.client_address,
                raft_address=c.raft_address,
                vote=list(c.vote),
                started=c.started,
                age_s=round(age, 3),
            )
            for c, age in self.formation.with_ages(self.clock())
        ]

    async def bootstrap(self, *, answer_wait: bool) -> BootstrapOut:
        """``/v1/bootstrap``: join the cluster if one is reachable; with ``bootstrap_expect`` and no
        cluster, form (every founder voted the same set) or wait. ``answer_wait``: answer ``wait``
        instead of 503 while a cluster exists but has no leader (candidacy posts always get an answer)."""
        if self.formation is None:
            return bootstrap_out(await self.cache.get())
        expect = self.settings.bootstrap_expect
        candidates = self.candidates_out()
        if self.cluster_addresses():
            try:
                joined = bootstrap_out(await self.cache.get())
            except errors.Unavailable:
                if not answer_wait:
                    raise
                # A cluster runs but has no leader right now: nothing is to be formed.
                return BootstrapOut(action="wait", members=[], leader=None, expect=expect, candidates=candidates)
            return joined.model_copy(update={"expect": expect, "candidates": candidates})
        formed = self.formation.formed(self.clock())
        if formed is None:
            return BootstrapOut(action="wait", members=[], leader=None, expect=expect, candidates=candidates)
        members = [
            BootstrapMember(id=c.id, client_address=c.client_address, raft_address=c.raft_address) for c in formed
        ]
        return BootstrapOut(action="form", members=members, leader=None, expect=expect, candidates=candidates)

    async def relay(self, http: Any) -> None:
        """Pull every peer gateway's candidate list once and merge it (unreachable peers are skipped:
        they only delay agreement, never change it)."""
        assert self.formation is not None
        for peer in self.settings.peers:
            try:
                response = await http.get(f"{peer.rstrip('/')}/v1/bootstrap/candidates")
                if response.status_code != 200:
                    continue
                listed = CandidatesOut.model_validate_json(response.content)
            except Exception as exc:  # any failure of one peer: skip it this time
                log.debug("relay_failed", peer=peer, error=f"{type(exc).__name__}: {exc}")
                continue
            if listed.expect != self.formation.expect:
                log.error("relay_expect_mismatch", peer=peer, theirs=listed.expect, ours=self.formation.expect)
                continue
            expect = self.formation.expect
            self.formation.merge(
                (
                    (Candidate(c.id, c.client_address, c.raft_address, tuple(c.vote), c.started), c.age_s)
                    for c in listed.candidates
                    # The same checks a posted vote passes: a broken peer cannot relay a malformed one.
                    if not c.vote or (len(c.vote) == expect and c.id in c.vote and c.vote == sorted(set(c.vote)))
                ),
                self.clock(),
            )

    async def close(self) -> None:
        for task in list(self._retired):
            task.cancel()
        retired, self._retired_backends = self._retired_backends, []
        for backend in retired:  # their delayed close was just cancelled: close them now
            await backend.close()
        if self._backend is not None:
            backend, self._backend = self._backend, None
            await backend.close()


async def get_gateway(request: Request) -> Gateway:
    # async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a hop per request.
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
_bearer = HTTPBearer(auto_error=False, description="Required on POST and DELETE when the gateway has a token")


async def require_token(
    gateway: GatewayDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Mutations need ``Authorization: Bearer <token>`` when a token is configured.

    Compared in constant time (``hmac.compare_digest``) so the answer's timing says nothing about
    how much of a guess was right. Route dependencies run before the body is validated, so an
    unauthenticated caller learns nothing about what a valid body looks like.
    """
    expected = gateway.settings.token
    if not expected:
        return
    presented = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8")):
        raise gw_errors.Unauthenticated("this gateway requires Authorization: Bearer <token> for changes")


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=REQUEST_ID_CHARS,
        pattern=r"^[\x21-\x7e]+$",
        description="Reuse it when retrying a change: the cluster applies it once (it becomes the request id)",
    ),
]
ConsistencyQuery = Annotated[
    ConsistencyName,
    Query(description="linearizable (default): ordered through the Raft log; stale: the answering server's state"),
]
NodeIdPath = Annotated[str, Path(min_length=1, max_length=ID_CHARS, description="The node's id")]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": description}
    for status, description in {
        400: "Invalid input (INVALID_ARGUMENT)",
        500: "A bug (INTERNAL); the body never holds a stack trace",
        503: "No leader reachable or the cluster is unavailable; see Retry-After",
        504: "The cluster did not answer in time",
    }.items()
}
MUTATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    401: {"model": ErrorOut, "description": "Missing or wrong bearer token"},
    409: {"model": ErrorOut, "description": "The cluster's state forbids it now"},
    413: {"model": ErrorOut, "description": "Body over the size limit"},
}
READ_RESPONSES: dict[int | str, dict[str, Any]] = {**ERROR_RESPONSES, 404: {"model": ErrorOut}}

router = APIRouter()
v1 = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)
mutation = [Depends(require_token)]


@router.get("/healthz", response_model=HealthOut, tags=["health"])
async def healthz() -> HealthOut:
    """The process is alive (says nothing about the cluster)."""
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyOut,
    tags=["health"],
    responses={503: {"model": ErrorOut, "description": "No leader reachable"}},
)
async def readyz(gateway: GatewayDep) -> ReadyOut:
    """200 only while a leader is reachable: take this gateway out of rotation otherwise."""
    return ReadyOut(status="ready", leader=require_leader(await gateway.cache.get()))


@v1.get("/cluster", response_model=ClusterOut, tags=["discovery"])
async def get_cluster(gateway: GatewayDep) -> ClusterOut:
    """Leader, term and every member with its role and health (the leader's view when it answers).
    Cached for up to a second."""
    return cluster_out(await gateway.cache.get())


@v1.get("/leader", response_model=LeaderOut, tags=["discovery"])
async def get_leader(gateway: GatewayDep) -> LeaderOut:
    """The current leader, or 503 NO_LEADER. Cached for up to a second."""
    return require_leader(await gateway.cache.get())


@v1.get("/bootstrap", response_model=BootstrapOut, tags=["discovery"])
async def get_bootstrap(gateway: GatewayDep) -> BootstrapOut:
    """What a starting server or agent must do: ``join`` the members listed (503 while no leader is
    reachable); with ``--bootstrap-expect`` and no cluster yet, ``form`` (the founding set) or ``wait``."""
    return await gateway.bootstrap(answer_wait=False)


@v1.post(
    "/bootstrap/candidates",
    response_model=BootstrapOut,
    tags=["discovery"],
    dependencies=mutation,
    responses={**MUTATION_RESPONSES, 409: {"model": ErrorOut, "description": "This gateway forms no cluster"}},
)
async def post_candidacy(gateway: GatewayDep, candidate: CandidateIn) -> BootstrapOut:
    """A server started with ``--bootstrap-expect`` announces itself (and its vote, once cast); the
    answer is what it must do now. Servers post again every quarter second; a candidacy not posted for
    ``candidate_ttl_s`` is dropped. Relayed to the peer gateways."""
    if gateway.formation is None:
        raise errors.FailedPrecondition("this gateway was not started with --bootstrap-expect: it forms no cluster")
    expect = gateway.formation.expect
    if candidate.vote and (len(candidate.vote) != expect or candidate.id not in candidate.vote):
        raise errors.InvalidArgument(f"a vote names exactly {expect} distinct ids, the voter's own among them")
    if candidate.vote and (sorted(set(candidate.vote)) != candidate.vote):
        raise errors.InvalidArgument("a vote's ids must be sorted and distinct")
    try:
        gateway.formation.post(
            Candidate(
                candidate.id, candidate.client_address, candidate.raft_address, tuple(candidate.vote), candidate.started
            ),
            gateway.clock(),
        )
    except OverflowError as exc:
        raise errors.ResourceExhausted(str(exc)) from None
    return await gateway.bootstrap(answer_wait=True)


@v1.get("/bootstrap/candidates", response_model=CandidatesOut, tags=["discovery"])
async def list_candidates(gateway: GatewayDep) -> CandidatesOut:
    """This gateway's candidacies (what its peer gateways pull); 404 unless run with ``--bootstrap-expect``."""
    if gateway.formation is None:
        raise errors.NotFound("this gateway was not started with --bootstrap-expect")
    return CandidatesOut(expect=gateway.formation.expect, candidates=gateway.candidates_out())


@v1.post("/nodes", response_model=RegisteredOut, tags=["nodes"], dependencies=mutation, responses=MUTATION_RESPONSES)
async def register_node(
    gateway: GatewayDep, node: RegisterNodeIn, idempotency_key: IdempotencyKey = None
) -> RegisteredOut:
    """Register a node and grant its liveness lease. Registering again updates it and keeps a live
    lease; after it left or died it comes back as a new incarnation."""
    return registered_out(await gateway.backend.register_node(node, idempotency_key))


@v1.post(
    "/nodes/{node_id}/heartbeat",
    response_model=HeartbeatOut,
    tags=["nodes"],
    dependencies=mutation,
    responses={**MUTATION_RESPONSES, 404: {"model": ErrorOut, "description": "Dead or left: register again"}},
)
async def heartbeat(
    gateway: GatewayDep,
    node_id: NodeIdPath,
    body: HeartbeatIn | None = None,
    idempotency_key: IdempotencyKey = None,
) -> HeartbeatOut:
    """Renew the node's lease (the first heartbeat makes a joining node active)."""
    state = await gateway.backend.heartbeat(node_id, body.activity if body else "", idempotency_key)
    return HeartbeatOut(node_id=node_id, state=_lower(state))


@v1.delete(
    "/nodes/{node_id}", response_model=MovesOut, tags=["nodes"], dependencies=mutation, responses=MUTATION_RESPONSES
)
async def deregister_node(gateway: GatewayDep, node_id: NodeIdPath, idempotency_key: IdempotencyKey = None) -> MovesOut:
    """A clean stop: the node leaves its networks, its clients move, its lease ends."""
    return moves_out(await gateway.backend.deregister(node_id, idempotency_key))


@v1.get("/nodes", response_model=NodesOut, tags=["nodes"], responses=READ_RESPONSES)
async def list_nodes(
    gateway: GatewayDep,
    role: Literal["agent", "server"] | None = None,
    state: Literal["joining", "active", "leaving", "left", "dead"] | None = None,
    label: Annotated[
        list[Annotated[str, StringConstraints(max_length=NAME_CHARS + 1 + LABEL_VALUE_CHARS)]],
        Query(max_length=MAX_LABELS, description="KEY=VALUE; every one must match (repeat)"),
    ] = [],  # noqa: B006 - FastAPI copies defaults per request
    network: Annotated[str, Query(max_length=NAME_CHARS)] = "",
    capability: Annotated[str, Query(max_length=NAME_CHARS)] = "",
    include_gone: bool = False,
    consistency: ConsistencyQuery = "linearizable",
) -> NodesOut:
    """Servers and agents in the unified view; left and dead ones only with include_gone (or a state)."""
    pairs = []
    for item in label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise errors.InvalidArgument(f"label takes KEY=VALUE, not {item!r}")
        pairs.append((key, value))
    filters = NodeFilters(role, state, tuple(pairs), network, capability, include_gone)
    views = await gateway.backend.nodes(filters, consistency_of(consistency))
    return NodesOut(nodes=[node_view_out(v) for v in views])


@v1.get("/nodes/{node_id}", response_model=NodeViewOut, tags=["nodes"], responses=READ_RESPONSES)
async def get_node(
    gateway: GatewayDep, node_id: NodeIdPath, consistency: ConsistencyQuery = "linearizable"
) -> NodeViewOut:
    """One node in the unified view (servers appear even if they never registered)."""
    return node_view_out(await gateway.backend.get_node(node_id, consistency_of(consistency)))


@v1.get("/networks", response_model=NetworksOut, tags=["networks"], responses=READ_RESPONSES)
async def list_networks(
    gateway: GatewayDep,
    model: Annotated[str, Query(max_length=2 * NAME_CHARS + 1, description="Only networks serving it")] = "",
    consistency: ConsistencyQuery = "linearizable",
) -> NetworksOut:
    """Every network with its capacity and members."""
    return NetworksOut(
        networks=[network_out(n) for n in await gateway.backend.networks(model, consistency_of(consistency))]
    )


@v1.get("/networks/{name}", response_model=NetworkDetailOut, tags=["networks"], responses=READ_RESPONSES)
async def get_network(
    gateway: GatewayDep,
    name: Annotated[str, Path(min_length=1, max_length=NAME_CHARS)],
    consistency: ConsistencyQuery = "linearizable",
) -> NetworkDetailOut:
    """A network with its members and every client placed in it."""
    return network_detail_out(await gateway.backend.get_network(name, consistency_of(consistency)))


@v1.get("/ports", response_model=PortsOut, tags=["ports"], responses=READ_RESPONSES)
async def list_ports(
    gateway: GatewayDep,
    host: Annotated[str, Query(max_length=HOST_CHARS)] = "",
    service: Annotated[str, Query(max_length=NAME_CHARS)] = "",
    consistency: ConsistencyQuery = "linearizable",
) -> PortsOut:
    """Port assignments (and reservations, unless filtered by service), by host and port."""
    return ports_out(await gateway.backend.ports(host, service, consistency_of(consistency)))


@v1.get("/models/search", response_model=SearchOut, tags=["models"], responses=READ_RESPONSES)
async def search_models(
    gateway: GatewayDep,
    q: Annotated[str, Query(max_length=QUERY_CHARS, description="Every term a prefix, all required")] = "",
    tag: Annotated[str, Query(max_length=NAME_CHARS)] = "",
    family: Annotated[str, Query(max_length=NAME_CHARS)] = "",
    limit: Annotated[int, Query(ge=1, le=MAX_SEARCH_LIMIT)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_SEARCH_OFFSET)] = 0,
    consistency: ConsistencyQuery = "linearizable",
) -> SearchOut:
    """Full-text search over the model registry, ranked by bm25."""
    return search_out(await gateway.backend.search_models(q, tag, family, limit, offset, consistency_of(consistency)))


@v1.get("/flags", response_model=FlagsOut, tags=["flags"], responses=READ_RESPONSES)
async def list_flags(gateway: GatewayDep, consistency: ConsistencyQuery = "linearizable") -> FlagsOut:
    """Cluster-wide feature flags, with their defaults when never set."""
    return FlagsOut(flags=[flag_out(f) for f in await gateway.backend.flags(consistency_of(consistency))])


# --------------------------------------------------------------------------------------- errors


def _answer(answer: gw_errors.ErrorAnswer) -> JSONResponse:
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors()[:5]:
        if error.get("type") == "json_invalid":
            problems.append(f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'decode error')})")
            continue
        where = ".".join(str(part) for part in error.get("loc", ()))
        problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    more = len(exc.errors()) - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def install_error_handlers(app: FastAPI) -> None:
    """Every failure leaves through here, mapped by ``gateway.errors`` (the one place)."""

    async def control_plane(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, errors.ControlPlaneError)
        answer = gw_errors.from_control_plane(exc)
        if answer.status >= 500:
            # 503s are routine during an election (and readiness probes repeat them): info, not warning.
            level = logging.INFO if answer.status == 503 else logging.WARNING
            log.log(level, "cluster_error", status=answer.status, code=answer.body["code"], message=exc.message)
        return _answer(answer)

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message = _validation_message(exc)
        content_type = request.headers.get("content-type", "")
        if any(tuple(e.get("loc", ())) == ("body",) for e in exc.errors()) and "json" not in content_type:
            # curl -d sends a form content type: say what to change rather than "not a dictionary".
            message = f"send the body as JSON with Content-Type: application/json (got {content_type or 'none'})"
        return _answer(gw_errors.ErrorAnswer(400, "INVALID_ARGUMENT", message))

    async def http(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else None
        answer = gw_errors.from_http_status(exc.status_code, detail)
        answer.headers.update(exc.headers or {})
        return _answer(answer)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        # The traceback as plain text: cheap under any renderer (a pretty one can take seconds).
        trace = "".join(traceback.format_exception(exc))
        log.error("unexpected_error", error_id=error_id, path=request.url.path, traceback=trace)
        return _answer(gw_errors.internal(error_id))

    app.add_exception_handler(errors.ControlPlaneError, control_plane)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(Exception, unexpected)


# --------------------------------------------------------------------------------------- body limit


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with 413 before anything parses it.

    A declared Content-Length over the limit is refused without reading a byte. Otherwise the body
    is read here, counting (chunked uploads declare no length), and handed on whole; the limit is
    small, so holding it costs nothing, and the app never sees a body that was cut short.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await self._refuse(scope, receive, send, errors.InvalidArgument("Content-Length is not a number"))
                return
            if length > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away before sending its body: nobody to answer
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            nonlocal whole
            if whole is not None:
                message, whole = whole, None
                return message
            return await receive()  # after the body: wait for the disconnect, as a server would

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = gw_errors.PayloadTooLarge(f"request body is larger than {self.max_bytes} bytes")
        await self._refuse(scope, receive, send, error)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, error: errors.ControlPlaneError) -> None:
        answer = gw_errors.from_control_plane(error)
        # Connection: close, because the rest of the body may still be on its way.
        response = JSONResponse(
            answer.body, status_code=answer.status, headers={**answer.headers, "Connection": "close"}
        )
        await response(scope, receive, send)


# --------------------------------------------------------------------------------------- the app


def create_app(
    settings: GatewaySettings,
    backend: Backend | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    backend_factory: Callable[[Sequence[str]], Backend] | None = None,
) -> FastAPI:
    """The gateway's ASGI app.

    ``backend`` defaults to :class:`SdkBackend` over ``settings.endpoints`` (with ``bootstrap_expect``
    and no endpoints: over the servers that announced they run the cluster), opened on first use in
    the serving event loop and closed at shutdown. Tests pass their own backend (or
    ``backend_factory``: addresses -> backend) and clock.
    """

    def default_backend(addresses: Sequence[str]) -> Backend:
        return SdkBackend(list(addresses), timeout=settings.call_timeout_s)

    gateway = Gateway(settings, backend, backend_factory or default_backend, clock)

    async def relay_forever() -> None:
        import httpx  # the client library; only a gateway with peers needs it here

        async with httpx.AsyncClient(timeout=httpx.Timeout(1.0)) as http:
            while True:
                await gateway.relay(http)
                await asyncio.sleep(settings.relay_interval_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        log.info(
            "gateway_started",
            endpoints=",".join(settings.endpoints),
            auth="bearer" if settings.token else "off",
            max_body_bytes=settings.max_body_bytes,
            bootstrap_expect=settings.bootstrap_expect,
            peers=",".join(settings.peers),
        )
        relay = asyncio.ensure_future(relay_forever()) if gateway.formation and settings.peers else None
        try:
            yield
        finally:
            if relay is not None:
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay
            await gateway.close()

    app = FastAPI(
        title="controlplane gateway",
        version=__version__,
        description=(
            "Stateless HTTP discovery and bootstrap for a controlplane cluster. Errors are "
            '`{"code": ..., "message": ...}`; 503 answers carry Retry-After. POST and DELETE need '
            "`Authorization: Bearer <token>` when the gateway has a token."
        ),
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.include_router(router)
    app.include_router(v1)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    def openapi() -> dict[str, Any]:
        """FastAPI documents a 422 with its own error model on every route; ours answer 400 with
        :class:`ErrorOut`, so the document says that instead."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr, like the servers' logs."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(stream=sys.stderr, level=numeric, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
