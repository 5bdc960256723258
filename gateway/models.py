"""The gateway's schema and its way to the cluster, without the HTTP server.

Here: the request/response models (Pydantic; string lengths and list sizes follow the cluster's own
limits), the ``*_out`` converters from SDK results to response models, and the :class:`Backend`
protocol with :class:`SdkBackend`, its implementation over the async SDK. ``gateway/app.py`` serves
them over HTTP; :class:`gateway.client.GatewayClient` returns the same models, also when it goes
around the gateway and asks the servers through :class:`SdkBackend`: one schema for both.

Kept apart from ``gateway/app.py`` so that it imports without FastAPI or Starlette: a server started
with ``--gateway`` or an agent that only needs the client does not pay for the web framework's import.
Nothing here may import them, directly or indirectly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from controlplane import errors
from controlplane.client import (
    AsyncClient,
    ClusterStatus,
    Consistency,
    Credentials,
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
    PortProtocol,
    Registered,
    Reservation,
    Role,
    SearchResult,
    ServiceRecord,
)
from controlplane.state import limits
from controlplane.state import membership as membership_limits
from gateway.formation import MAX_BOOTSTRAP_EXPECT

__all__ = [
    "Backend",
    "BootstrapOut",
    "ClusterOut",
    "ErrorOut",
    "LeaderOut",
    "NodeViewOut",
    "RegisterNodeIn",
    "SdkBackend",
]

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
# A page token the server made is far shorter (server/search.py, _MAX_TOKEN_CHARS).
PAGE_TOKEN_CHARS = 256
REQUEST_ID_CHARS = limits.MAX_REQUEST_ID_CHARS
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
    protocol: Literal["tcp", "udp"] = Field(description="TCP and UDP hold the same port number separately")


class ReservationOut(_Out):
    host: str = Field(description="Empty: reserved on every host")
    port: int
    reason: str
    revision: int


class PortsOut(_Out):
    revision: int
    assignments: list[PortAssignmentOut]
    reservations: list[ReservationOut]


class ServiceHealthOut(_Out):
    status: Literal["passing", "warning", "critical", "unknown"]
    output: str = Field(description="The check's last output (at most 1024 characters)")
    since_unix_ms: int
    revision: int


class ServiceInstanceOut(_Out):
    name: str
    version: str
    host: str
    ports: list[PortAssignmentOut]
    health: ServiceHealthOut
    check: dict[str, Any] = Field(description="The manifest's health_check, as registered")
    labels: dict[str, str]


class ServicesOut(_Out):
    instances: list[ServiceInstanceOut]


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
    score: float = Field(
        description="bm25 (lower is better) of a model whose name does not hold every word; 0 for one whose "
        "name does and from the LIKE fallback. The order of the hits, not the score, is the ranking"
    )


class SearchOut(_Out):
    revision: int
    total: int
    engine: str
    query_ms: float
    hits: list[SearchHitOut]
    suggestions: list[str] = Field(
        default_factory=list, description="Did you mean: corrected queries that find models, when this one found none"
    )
    next_page_token: str = Field(
        default="", description="Pass it as page_token (same q, filters and sort) for the next page; empty on the last"
    )


@dataclass(frozen=True)
class SearchPageQuery:
    """Which page of a search, in which order."""

    limit: int = 20
    offset: int = 0
    sort: str = "relevance"
    page_token: str = ""


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


def lower_name(enum_value: Any) -> Any:
    """An SDK enum as the API spells it: ``NodeState.ACTIVE`` -> ``"active"``."""
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
        role=lower_name(spec.role),
        state=lower_name(record.state),
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
        connectivity=lower_name(view.connectivity),
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
        protocol="udp" if a.protocol is PortProtocol.UDP else "tcp",
    )


def _reservation_out(r: Reservation) -> ReservationOut:
    return ReservationOut(host=r.host, port=r.port, reason=r.reason, revision=r.revision)


def ports_out(ports: PortList) -> PortsOut:
    return PortsOut(
        revision=ports.revision,
        assignments=[_assignment_out(a) for a in ports.assignments],
        reservations=[_reservation_out(r) for r in ports.reservations],
    )


def services_out(records: Sequence[ServiceRecord]) -> ServicesOut:
    return ServicesOut(
        instances=[
            ServiceInstanceOut(
                name=r.name,
                version=r.version,
                host=r.host,
                ports=[_assignment_out(a) for a in r.ports],
                health=ServiceHealthOut(
                    status=r.health.status.name.lower() if r.health.status.value else "unknown",  # type: ignore[arg-type]
                    output=r.health.output,
                    since_unix_ms=r.health.since_unix_ms,
                    revision=r.health.revision,
                ),
                check=dict(r.manifest.get("health_check") or {}),
                labels=dict(r.manifest.get("labels") or {}),
            )
            for r in records
        ],
    )


def search_out(result: SearchResult) -> SearchOut:
    return SearchOut(
        revision=result.revision,
        total=result.total,
        engine=result.engine,
        query_ms=result.query_ms,
        suggestions=list(result.suggestions),
        next_page_token=result.next_page_token,
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

    async def services(self, name: str, healthy: bool, consistency: Consistency) -> tuple[ServiceRecord, ...]: ...

    async def search_models(
        self, query: str, tag: str, family: str, page: SearchPageQuery, consistency: Consistency
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
        credentials: Credentials | None = None,
    ) -> None:
        self._factory = client_factory or (lambda e, t: AsyncClient(e, timeout=t, credentials=credentials))
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

    async def services(self, name: str, healthy: bool, consistency: Consistency) -> tuple[ServiceRecord, ...]:
        return await self.client.services.list(name=name, healthy=healthy, consistency=consistency)

    async def search_models(
        self, query: str, tag: str, family: str, page: SearchPageQuery, consistency: Consistency
    ) -> SearchResult:
        return await self.client.models.search(
            query,
            tag=tag,
            family=family,
            limit=page.limit,
            offset=page.offset,
            sort=page.sort,
            page_token=page.page_token,
            consistency=consistency,
        )

    async def flags(self, consistency: Consistency) -> tuple[Flag, ...]:
        return await self.client.membership.flags(consistency=consistency)

    async def close(self) -> None:
        pinned, self._pinned = list(self._pinned.values()), {}
        for client in [self.client, *pinned]:
            await client.close()
