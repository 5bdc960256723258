"""Membership for the SDK (``client.membership``): nodes, networks, places, flags.

Like ``_ports`` and ``_models``, no protobuf type reaches a caller: results are frozen dataclasses
whose fields carry the names of ``proto/controlplane/v1/membership.proto``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controlplane import errors
from controlplane.client._base import Rpc
from controlplane.client._ports import convert, revision_of
from controlplane.v1 import membership_pb2

__all__ = [
    "Connectivity",
    "Flag",
    "JoinResult",
    "MembershipEvent",
    "Moves",
    "Network",
    "NetworkDetail",
    "NodeRecord",
    "NodeRole",
    "NodeSpec",
    "NodeState",
    "NodeView",
    "Placement",
    "Registered",
    "Resources",
    "UnplacedClient",
]


class NodeRole(enum.Enum):
    UNSPECIFIED = membership_pb2.NODE_ROLE_UNSPECIFIED
    SERVER = membership_pb2.NODE_ROLE_SERVER
    AGENT = membership_pb2.NODE_ROLE_AGENT


class NodeState(enum.Enum):
    UNSPECIFIED = membership_pb2.NODE_STATE_UNSPECIFIED
    JOINING = membership_pb2.NODE_STATE_JOINING
    ACTIVE = membership_pb2.NODE_STATE_ACTIVE
    LEAVING = membership_pb2.NODE_STATE_LEAVING
    LEFT = membership_pb2.NODE_STATE_LEFT
    DEAD = membership_pb2.NODE_STATE_DEAD


class Connectivity(enum.Enum):
    UNSPECIFIED = membership_pb2.CONNECTIVITY_UNSPECIFIED
    CONNECTED = membership_pb2.CONNECTIVITY_CONNECTED
    UNREACHABLE = membership_pb2.CONNECTIVITY_UNREACHABLE
    GONE = membership_pb2.CONNECTIVITY_GONE


@dataclass(frozen=True, slots=True)
class Resources:
    gpus: int
    memory_bytes: int
    #: Thousandths of a core.
    cpu_millis: int


@dataclass(frozen=True, slots=True)
class NodeSpec:
    id: str
    role: NodeRole
    #: Purpose -> HOST:PORT ("grpc", "gossip", ...).
    addresses: dict[str, str]
    capabilities: tuple[str, ...]
    resources: Resources | None
    labels: dict[str, str]
    version: str


@dataclass(frozen=True, slots=True)
class NodeRecord:
    spec: NodeSpec
    state: NodeState
    lease_id: int
    registered_unix_ms: int
    state_changed_unix_ms: int
    create_revision: int
    mod_revision: int
    activity: str
    reason: str
    incarnation: int
    #: The agent process holding the node ("" when unknown).
    instance_id: str = ""


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node in the unified view: membership state, Raft role, gossip activity, connectivity."""

    node: NodeRecord
    #: "leader", "follower", "candidate", "learner" for servers; "" for agents.
    raft_role: str
    voter: bool
    connectivity: Connectivity
    last_heartbeat_unix_ms: int
    lease_ttl_ms: int
    networks: tuple[str, ...]
    clients_served: int


@dataclass(frozen=True, slots=True)
class Registered:
    revision: int
    node: NodeRecord
    lease_ttl_ms: int


@dataclass(frozen=True, slots=True)
class Network:
    name: str
    model: str
    max_clients: int
    priority: int
    labels: dict[str, str]
    required_capabilities: tuple[str, ...]
    description: str
    create_revision: int
    mod_revision: int
    members: tuple[str, ...]
    clients: int
    active_members: int


@dataclass(frozen=True, slots=True)
class Placement:
    client_id: str
    network: str
    #: The member serving the client.
    node_id: str
    lease_id: int
    model: str
    placed_unix_ms: int
    revision: int


@dataclass(frozen=True, slots=True)
class UnplacedClient:
    """A client the cluster took a place from and could not place again: its member or network went
    and no member or network had room (or ``auto_reassign`` is off). Kept until it is placed again
    or its lease ends (at most 1,000, the oldest forgotten first)."""

    client_id: str
    #: Where it was placed, and the member that served it.
    network: str
    node_id: str
    #: The model it was placed for by ``assign`` (empty for a join).
    model: str
    lease_id: int
    #: What took its place, and why nothing gave another.
    reason: str
    unplaced_unix_ms: int
    revision: int


@dataclass(frozen=True, slots=True)
class NetworkDetail:
    revision: int
    network: Network
    placements: tuple[Placement, ...]


@dataclass(frozen=True, slots=True)
class JoinResult:
    revision: int
    network: Network
    #: Set when a client took a place.
    placement: Placement | None
    existing: bool


@dataclass(frozen=True, slots=True)
class Moves:
    """What a drain, deregistration, leave or forced delete did to the clients involved."""

    revision: int
    #: Whether anything changed (False: already done, or nothing to do).
    changed: bool
    moved: tuple[Placement, ...]
    #: Clients left without a place (no network for their model had room).
    unplaced: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Flag:
    name: str
    enabled: bool
    description: str
    #: False for a known flag never set: it shows its default.
    set: bool
    mod_revision: int


@dataclass(frozen=True, slots=True)
class MembershipEvent:
    """What a watch on domain "membership" carries in ``Event.membership``."""

    node: NodeRecord | None
    network: Network | None
    placement: Placement | None
    flag: Flag | None
    previous: Placement | None
    reason: str


def role_value(value: NodeRole | str | int) -> int:
    if isinstance(value, NodeRole):
        return int(value.value)
    if isinstance(value, str):
        try:
            return int(NodeRole[value.upper()].value)
        except KeyError:
            raise errors.InvalidArgument(f"unknown role {value!r}; use server or agent") from None
    return int(value)


def state_value(value: NodeState | str | int | None) -> int:
    if value is None:
        return 0
    if isinstance(value, NodeState):
        return int(value.value)
    if isinstance(value, str):
        try:
            return int(NodeState[value.upper()].value)
        except KeyError:
            raise errors.InvalidArgument(
                f"unknown state {value!r}; use joining, active, leaving, left or dead"
            ) from None
    return int(value)


def register_request(
    node_id: str,
    *,
    role: NodeRole | str,
    addresses: Mapping[str, str] | None,
    capabilities: Iterable[str],
    gpus: int,
    memory_bytes: int,
    cpu_millis: int,
    labels: Mapping[str, str] | None,
    version: str,
    ttl_s: float,
    instance_id: str = "",
    request_id: str,
) -> membership_pb2.RegisterNodeRequest:
    return membership_pb2.RegisterNodeRequest(
        node=membership_pb2.NodeSpec(
            id=node_id,
            role=role_value(role),  # type: ignore[arg-type]
            addresses=dict(addresses or {}),
            capabilities=list(capabilities),
            resources=membership_pb2.Resources(gpus=gpus, memory_bytes=memory_bytes, cpu_millis=cpu_millis),
            labels=dict(labels or {}),
            version=version,
        ),
        lease_ttl_ms=int(ttl_s * 1000),
        request_id=request_id,
        instance_id=instance_id,
    )


def list_nodes_request(
    role: NodeRole | str | None,
    state: NodeState | str | None,
    labels: Mapping[str, str] | None,
    network: str,
    capability: str,
    include_gone: bool,
    read: object,
) -> membership_pb2.ListNodesRequest:
    return membership_pb2.ListNodesRequest(
        read=read,  # type: ignore[arg-type]
        role=role_value(role) if role is not None else 0,  # type: ignore[arg-type]
        state=state_value(state),  # type: ignore[arg-type]
        labels=dict(labels or {}),
        network=network,
        capability=capability,
        include_gone=include_gone,
    )


def network_message(
    name: str,
    model: str = "",
    max_clients: int = 0,
    priority: int = 0,
    labels: Mapping[str, str] | None = None,
    required_capabilities: Iterable[str] = (),
    description: str = "",
) -> membership_pb2.Network:
    return membership_pb2.Network(
        name=name,
        model=model,
        max_clients=max_clients,
        priority=priority,
        labels=dict(labels or {}),
        required_capabilities=list(required_capabilities),
        description=description,
    )


def update_request(
    name: str,
    model: str | None,
    max_clients: int | None,
    priority: int | None,
    labels: Mapping[str, str] | None,
    required_capabilities: Iterable[str] | None,
    description: str | None,
    request_id: str,
) -> membership_pb2.UpdateNetworkRequest:
    given = {
        "model": model,
        "max_clients": max_clients,
        "priority": priority,
        "labels": labels,
        "required_capabilities": required_capabilities,
        "description": description,
    }
    mask = [field for field, value in given.items() if value is not None]
    if not mask:
        raise errors.InvalidArgument("name at least one field to change")
    network = network_message(
        name,
        model or "",
        max_clients or 0,
        priority or 0,
        labels,
        required_capabilities or (),
        description or "",
    )
    return membership_pb2.UpdateNetworkRequest(network=network, update_mask=mask, request_id=request_id)


def moves(response: object, changed_field: str | None) -> Moves:
    """``changed_field`` names the response's bool saying whether anything changed (None: always)."""
    return Moves(
        revision=revision_of(response),  # type: ignore[arg-type]
        changed=bool(getattr(response, changed_field)) if changed_field else True,
        moved=tuple(convert(Placement, p) for p in response.moved),  # type: ignore[attr-defined]
        unplaced=tuple(response.unplaced),  # type: ignore[attr-defined]
    )


def join_result(response: membership_pb2.JoinNetworkResponse) -> JoinResult:
    return convert(JoinResult, response, revision=revision_of(response))


_B = "/controlplane.v1.Membership/"
REGISTER_NODE = Rpc(_B + "RegisterNode", membership_pb2.RegisterNodeResponse)
HEARTBEAT = Rpc(_B + "Heartbeat", membership_pb2.HeartbeatResponse)
DRAIN_NODE = Rpc(_B + "DrainNode", membership_pb2.DrainNodeResponse)
DEREGISTER_NODE = Rpc(_B + "DeregisterNode", membership_pb2.DeregisterNodeResponse)
FORGET_NODE = Rpc(_B + "ForgetNode", membership_pb2.ForgetNodeResponse)
GET_NODE = Rpc(_B + "GetNode", membership_pb2.GetNodeResponse)
LIST_NODES = Rpc(_B + "ListNodes", membership_pb2.ListNodesResponse)
CREATE_NETWORK = Rpc(_B + "CreateNetwork", membership_pb2.CreateNetworkResponse)
UPDATE_NETWORK = Rpc(_B + "UpdateNetwork", membership_pb2.UpdateNetworkResponse)
DELETE_NETWORK = Rpc(_B + "DeleteNetwork", membership_pb2.DeleteNetworkResponse)
GET_NETWORK = Rpc(_B + "GetNetwork", membership_pb2.GetNetworkResponse)
LIST_NETWORKS = Rpc(_B + "ListNetworks", membership_pb2.ListNetworksResponse)
JOIN_NETWORK = Rpc(_B + "JoinNetwork", membership_pb2.JoinNetworkResponse)
LEAVE_NETWORK = Rpc(_B + "LeaveNetwork", membership_pb2.LeaveNetworkResponse)
ASSIGN = Rpc(_B + "Assign", membership_pb2.AssignClientResponse)
LIST_PLACEMENTS = Rpc(_B + "ListPlacements", membership_pb2.ListPlacementsResponse)
LIST_UNPLACED = Rpc(_B + "ListUnplaced", membership_pb2.ListUnplacedResponse)
SET_FLAG = Rpc(_B + "SetFlag", membership_pb2.SetFlagResponse)
LIST_FLAGS = Rpc(_B + "ListFlags", membership_pb2.ListFlagsResponse)
