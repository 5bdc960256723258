from controlplane.v1 import common_pb2 as _common_pb2
from controlplane.v1 import gossip_pb2 as _gossip_pb2
from controlplane.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_ROLE_UNSPECIFIED: _ClassVar[NodeRole]
    NODE_ROLE_SERVER: _ClassVar[NodeRole]
    NODE_ROLE_AGENT: _ClassVar[NodeRole]

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNSPECIFIED: _ClassVar[NodeState]
    NODE_STATE_JOINING: _ClassVar[NodeState]
    NODE_STATE_ACTIVE: _ClassVar[NodeState]
    NODE_STATE_LEAVING: _ClassVar[NodeState]
    NODE_STATE_LEFT: _ClassVar[NodeState]
    NODE_STATE_DEAD: _ClassVar[NodeState]

class Connectivity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONNECTIVITY_UNSPECIFIED: _ClassVar[Connectivity]
    CONNECTIVITY_CONNECTED: _ClassVar[Connectivity]
    CONNECTIVITY_UNREACHABLE: _ClassVar[Connectivity]
    CONNECTIVITY_GONE: _ClassVar[Connectivity]
NODE_ROLE_UNSPECIFIED: NodeRole
NODE_ROLE_SERVER: NodeRole
NODE_ROLE_AGENT: NodeRole
NODE_STATE_UNSPECIFIED: NodeState
NODE_STATE_JOINING: NodeState
NODE_STATE_ACTIVE: NodeState
NODE_STATE_LEAVING: NodeState
NODE_STATE_LEFT: NodeState
NODE_STATE_DEAD: NodeState
CONNECTIVITY_UNSPECIFIED: Connectivity
CONNECTIVITY_CONNECTED: Connectivity
CONNECTIVITY_UNREACHABLE: Connectivity
CONNECTIVITY_GONE: Connectivity

class Resources(_message.Message):
    __slots__ = ("gpus", "memory_bytes", "cpu_millis")
    GPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    gpus: int
    memory_bytes: int
    cpu_millis: int
    def __init__(self, gpus: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., cpu_millis: _Optional[int] = ...) -> None: ...

class NodeSpec(_message.Message):
    __slots__ = ("id", "role", "addresses", "capabilities", "resources", "labels", "version")
    class AddressesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    role: NodeRole
    addresses: _containers.ScalarMap[str, str]
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    resources: Resources
    labels: _containers.ScalarMap[str, str]
    version: str
    def __init__(self, id: _Optional[str] = ..., role: _Optional[_Union[NodeRole, str]] = ..., addresses: _Optional[_Mapping[str, str]] = ..., capabilities: _Optional[_Iterable[str]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., version: _Optional[str] = ...) -> None: ...

class NodeRecord(_message.Message):
    __slots__ = ("spec", "state", "lease_id", "registered_unix_ms", "state_changed_unix_ms", "create_revision", "mod_revision", "activity", "reason", "incarnation", "instance_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
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
    instance_id: str
    def __init__(self, spec: _Optional[_Union[NodeSpec, _Mapping]] = ..., state: _Optional[_Union[NodeState, str]] = ..., lease_id: _Optional[int] = ..., registered_unix_ms: _Optional[int] = ..., state_changed_unix_ms: _Optional[int] = ..., create_revision: _Optional[int] = ..., mod_revision: _Optional[int] = ..., activity: _Optional[str] = ..., reason: _Optional[str] = ..., incarnation: _Optional[int] = ..., instance_id: _Optional[str] = ...) -> None: ...

class NodeView(_message.Message):
    __slots__ = ("node", "raft_role", "voter", "connectivity", "last_heartbeat_unix_ms", "lease_ttl_ms", "networks", "clients_served")
    NODE_FIELD_NUMBER: _ClassVar[int]
    RAFT_ROLE_FIELD_NUMBER: _ClassVar[int]
    VOTER_FIELD_NUMBER: _ClassVar[int]
    CONNECTIVITY_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_SERVED_FIELD_NUMBER: _ClassVar[int]
    node: NodeRecord
    raft_role: str
    voter: bool
    connectivity: Connectivity
    last_heartbeat_unix_ms: int
    lease_ttl_ms: int
    networks: _containers.RepeatedScalarFieldContainer[str]
    clients_served: int
    def __init__(self, node: _Optional[_Union[NodeRecord, _Mapping]] = ..., raft_role: _Optional[str] = ..., voter: _Optional[bool] = ..., connectivity: _Optional[_Union[Connectivity, str]] = ..., last_heartbeat_unix_ms: _Optional[int] = ..., lease_ttl_ms: _Optional[int] = ..., networks: _Optional[_Iterable[str]] = ..., clients_served: _Optional[int] = ...) -> None: ...

class Network(_message.Message):
    __slots__ = ("name", "model", "max_clients", "priority", "labels", "required_capabilities", "description", "create_revision", "mod_revision", "members", "clients", "active_members")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    max_clients: int
    priority: int
    labels: _containers.ScalarMap[str, str]
    required_capabilities: _containers.RepeatedScalarFieldContainer[str]
    description: str
    create_revision: int
    mod_revision: int
    members: _containers.RepeatedScalarFieldContainer[str]
    clients: int
    active_members: int
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., max_clients: _Optional[int] = ..., priority: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., required_capabilities: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., create_revision: _Optional[int] = ..., mod_revision: _Optional[int] = ..., members: _Optional[_Iterable[str]] = ..., clients: _Optional[int] = ..., active_members: _Optional[int] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("client_id", "network", "node_id", "lease_id", "model", "placed_unix_ms", "revision")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PLACED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    network: str
    node_id: str
    lease_id: int
    model: str
    placed_unix_ms: int
    revision: int
    def __init__(self, client_id: _Optional[str] = ..., network: _Optional[str] = ..., node_id: _Optional[str] = ..., lease_id: _Optional[int] = ..., model: _Optional[str] = ..., placed_unix_ms: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...

class UnplacedClient(_message.Message):
    __slots__ = ("client_id", "network", "node_id", "model", "lease_id", "reason", "unplaced_unix_ms", "revision")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    UNPLACED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    network: str
    node_id: str
    model: str
    lease_id: int
    reason: str
    unplaced_unix_ms: int
    revision: int
    def __init__(self, client_id: _Optional[str] = ..., network: _Optional[str] = ..., node_id: _Optional[str] = ..., model: _Optional[str] = ..., lease_id: _Optional[int] = ..., reason: _Optional[str] = ..., unplaced_unix_ms: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...

class Flag(_message.Message):
    __slots__ = ("name", "enabled", "description", "set", "mod_revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    enabled: bool
    description: str
    set: bool
    mod_revision: int
    def __init__(self, name: _Optional[str] = ..., enabled: _Optional[bool] = ..., description: _Optional[str] = ..., set: _Optional[bool] = ..., mod_revision: _Optional[int] = ...) -> None: ...

class MembershipEvent(_message.Message):
    __slots__ = ("node", "network", "placement", "flag", "previous", "reason")
    NODE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node: NodeRecord
    network: Network
    placement: Placement
    flag: Flag
    previous: Placement
    reason: str
    def __init__(self, node: _Optional[_Union[NodeRecord, _Mapping]] = ..., network: _Optional[_Union[Network, _Mapping]] = ..., placement: _Optional[_Union[Placement, _Mapping]] = ..., flag: _Optional[_Union[Flag, _Mapping]] = ..., previous: _Optional[_Union[Placement, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class MembershipState(_message.Message):
    __slots__ = ("nodes", "networks", "placements", "flags", "memberships", "gossip", "unplaced")
    NODES_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIPS_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_FIELD_NUMBER: _ClassVar[int]
    UNPLACED_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeRecord]
    networks: _containers.RepeatedCompositeFieldContainer[Network]
    placements: _containers.RepeatedCompositeFieldContainer[Placement]
    flags: _containers.RepeatedCompositeFieldContainer[Flag]
    memberships: _containers.RepeatedScalarFieldContainer[str]
    gossip: _gossip_pb2.GossipState
    unplaced: _containers.RepeatedCompositeFieldContainer[UnplacedClient]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeRecord, _Mapping]]] = ..., networks: _Optional[_Iterable[_Union[Network, _Mapping]]] = ..., placements: _Optional[_Iterable[_Union[Placement, _Mapping]]] = ..., flags: _Optional[_Iterable[_Union[Flag, _Mapping]]] = ..., memberships: _Optional[_Iterable[str]] = ..., gossip: _Optional[_Union[_gossip_pb2.GossipState, _Mapping]] = ..., unplaced: _Optional[_Iterable[_Union[UnplacedClient, _Mapping]]] = ...) -> None: ...

class RegisterNodeRequest(_message.Message):
    __slots__ = ("node", "lease_ttl_ms", "request_id", "instance_id")
    NODE_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    node: NodeSpec
    lease_ttl_ms: int
    request_id: str
    instance_id: str
    def __init__(self, node: _Optional[_Union[NodeSpec, _Mapping]] = ..., lease_ttl_ms: _Optional[int] = ..., request_id: _Optional[str] = ..., instance_id: _Optional[str] = ...) -> None: ...

class RegisterNodeResponse(_message.Message):
    __slots__ = ("header", "node", "lease_ttl_ms")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    node: NodeRecord
    lease_ttl_ms: int
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., node: _Optional[_Union[NodeRecord, _Mapping]] = ..., lease_ttl_ms: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "activity", "request_id", "instance_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    activity: str
    request_id: str
    instance_id: str
    def __init__(self, node_id: _Optional[str] = ..., activity: _Optional[str] = ..., request_id: _Optional[str] = ..., instance_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("header", "state", "lease_ttl_ms")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    state: NodeState
    lease_ttl_ms: int
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., state: _Optional[_Union[NodeState, str]] = ..., lease_ttl_ms: _Optional[int] = ...) -> None: ...

class DrainNodeRequest(_message.Message):
    __slots__ = ("node_id", "request_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    request_id: str
    def __init__(self, node_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DrainNodeResponse(_message.Message):
    __slots__ = ("header", "node", "moved", "unplaced")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    UNPLACED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    node: NodeRecord
    moved: _containers.RepeatedCompositeFieldContainer[Placement]
    unplaced: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., node: _Optional[_Union[NodeRecord, _Mapping]] = ..., moved: _Optional[_Iterable[_Union[Placement, _Mapping]]] = ..., unplaced: _Optional[_Iterable[str]] = ...) -> None: ...

class DeregisterNodeRequest(_message.Message):
    __slots__ = ("node_id", "request_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    request_id: str
    def __init__(self, node_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeregisterNodeResponse(_message.Message):
    __slots__ = ("header", "deregistered", "moved", "unplaced")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DEREGISTERED_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    UNPLACED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    deregistered: bool
    moved: _containers.RepeatedCompositeFieldContainer[Placement]
    unplaced: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., deregistered: _Optional[bool] = ..., moved: _Optional[_Iterable[_Union[Placement, _Mapping]]] = ..., unplaced: _Optional[_Iterable[str]] = ...) -> None: ...

class ForgetNodeRequest(_message.Message):
    __slots__ = ("node_id", "request_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    request_id: str
    def __init__(self, node_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ForgetNodeResponse(_message.Message):
    __slots__ = ("header", "forgotten")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    forgotten: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., forgotten: _Optional[bool] = ...) -> None: ...

class GetNodeRequest(_message.Message):
    __slots__ = ("node_id", "read")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    read: _common_pb2.ReadOptions
    def __init__(self, node_id: _Optional[str] = ..., read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ...) -> None: ...

class GetNodeResponse(_message.Message):
    __slots__ = ("header", "node")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    node: NodeView
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., node: _Optional[_Union[NodeView, _Mapping]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ("read", "role", "state", "labels", "network", "capability", "include_gone")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    READ_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_GONE_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    role: NodeRole
    state: NodeState
    labels: _containers.ScalarMap[str, str]
    network: str
    capability: str
    include_gone: bool
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., role: _Optional[_Union[NodeRole, str]] = ..., state: _Optional[_Union[NodeState, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., network: _Optional[str] = ..., capability: _Optional[str] = ..., include_gone: _Optional[bool] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("header", "nodes")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    nodes: _containers.RepeatedCompositeFieldContainer[NodeView]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., nodes: _Optional[_Iterable[_Union[NodeView, _Mapping]]] = ...) -> None: ...

class CreateNetworkRequest(_message.Message):
    __slots__ = ("network", "request_id")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    network: Network
    request_id: str
    def __init__(self, network: _Optional[_Union[Network, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateNetworkResponse(_message.Message):
    __slots__ = ("header", "network", "warnings")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    network: Network
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., network: _Optional[_Union[Network, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class UpdateNetworkRequest(_message.Message):
    __slots__ = ("network", "update_mask", "request_id")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    network: Network
    update_mask: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    def __init__(self, network: _Optional[_Union[Network, _Mapping]] = ..., update_mask: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateNetworkResponse(_message.Message):
    __slots__ = ("header", "network", "warnings")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    network: Network
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., network: _Optional[_Union[Network, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteNetworkRequest(_message.Message):
    __slots__ = ("name", "force", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    request_id: str
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteNetworkResponse(_message.Message):
    __slots__ = ("header", "deleted", "moved", "unplaced")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    UNPLACED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    deleted: bool
    moved: _containers.RepeatedCompositeFieldContainer[Placement]
    unplaced: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., deleted: _Optional[bool] = ..., moved: _Optional[_Iterable[_Union[Placement, _Mapping]]] = ..., unplaced: _Optional[_Iterable[str]] = ...) -> None: ...

class GetNetworkRequest(_message.Message):
    __slots__ = ("name", "read")
    NAME_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    name: str
    read: _common_pb2.ReadOptions
    def __init__(self, name: _Optional[str] = ..., read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ...) -> None: ...

class GetNetworkResponse(_message.Message):
    __slots__ = ("header", "network", "placements")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    network: Network
    placements: _containers.RepeatedCompositeFieldContainer[Placement]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., network: _Optional[_Union[Network, _Mapping]] = ..., placements: _Optional[_Iterable[_Union[Placement, _Mapping]]] = ...) -> None: ...

class ListNetworksRequest(_message.Message):
    __slots__ = ("read", "model")
    READ_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    model: str
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...

class ListNetworksResponse(_message.Message):
    __slots__ = ("header", "networks")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    networks: _containers.RepeatedCompositeFieldContainer[Network]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., networks: _Optional[_Iterable[_Union[Network, _Mapping]]] = ...) -> None: ...

class JoinNetworkRequest(_message.Message):
    __slots__ = ("network", "node_id", "client_id", "lease_id", "request_id")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    network: str
    node_id: str
    client_id: str
    lease_id: int
    request_id: str
    def __init__(self, network: _Optional[str] = ..., node_id: _Optional[str] = ..., client_id: _Optional[str] = ..., lease_id: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class JoinNetworkResponse(_message.Message):
    __slots__ = ("header", "network", "placement", "existing")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    network: Network
    placement: Placement
    existing: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., network: _Optional[_Union[Network, _Mapping]] = ..., placement: _Optional[_Union[Placement, _Mapping]] = ..., existing: _Optional[bool] = ...) -> None: ...

class LeaveNetworkRequest(_message.Message):
    __slots__ = ("network", "node_id", "client_id", "request_id")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    network: str
    node_id: str
    client_id: str
    request_id: str
    def __init__(self, network: _Optional[str] = ..., node_id: _Optional[str] = ..., client_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class LeaveNetworkResponse(_message.Message):
    __slots__ = ("header", "left", "moved", "unplaced")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    UNPLACED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    left: bool
    moved: _containers.RepeatedCompositeFieldContainer[Placement]
    unplaced: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., left: _Optional[bool] = ..., moved: _Optional[_Iterable[_Union[Placement, _Mapping]]] = ..., unplaced: _Optional[_Iterable[str]] = ...) -> None: ...

class AssignClientRequest(_message.Message):
    __slots__ = ("client_id", "model", "lease_id", "request_id")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    model: str
    lease_id: int
    request_id: str
    def __init__(self, client_id: _Optional[str] = ..., model: _Optional[str] = ..., lease_id: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class AssignClientResponse(_message.Message):
    __slots__ = ("header", "placement", "network", "existing")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    placement: Placement
    network: Network
    existing: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., placement: _Optional[_Union[Placement, _Mapping]] = ..., network: _Optional[_Union[Network, _Mapping]] = ..., existing: _Optional[bool] = ...) -> None: ...

class ListPlacementsRequest(_message.Message):
    __slots__ = ("read", "network", "node_id", "client_id")
    READ_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    network: str
    node_id: str
    client_id: str
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., network: _Optional[str] = ..., node_id: _Optional[str] = ..., client_id: _Optional[str] = ...) -> None: ...

class ListPlacementsResponse(_message.Message):
    __slots__ = ("header", "placements")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    placements: _containers.RepeatedCompositeFieldContainer[Placement]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., placements: _Optional[_Iterable[_Union[Placement, _Mapping]]] = ...) -> None: ...

class ListUnplacedRequest(_message.Message):
    __slots__ = ("read", "network")
    READ_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    network: str
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., network: _Optional[str] = ...) -> None: ...

class ListUnplacedResponse(_message.Message):
    __slots__ = ("header", "clients")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    clients: _containers.RepeatedCompositeFieldContainer[UnplacedClient]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., clients: _Optional[_Iterable[_Union[UnplacedClient, _Mapping]]] = ...) -> None: ...

class SetFlagRequest(_message.Message):
    __slots__ = ("name", "enabled", "description", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    enabled: bool
    description: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., enabled: _Optional[bool] = ..., description: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class SetFlagResponse(_message.Message):
    __slots__ = ("header", "flag")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    flag: Flag
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., flag: _Optional[_Union[Flag, _Mapping]] = ...) -> None: ...

class ListFlagsRequest(_message.Message):
    __slots__ = ("read",)
    READ_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ...) -> None: ...

class ListFlagsResponse(_message.Message):
    __slots__ = ("header", "flags")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    flags: _containers.RepeatedCompositeFieldContainer[Flag]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., flags: _Optional[_Iterable[_Union[Flag, _Mapping]]] = ...) -> None: ...
