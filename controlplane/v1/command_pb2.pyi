from controlplane.v1 import auth_pb2 as _auth_pb2
from controlplane.v1 import common_pb2 as _common_pb2
from controlplane.v1 import gossip_pb2 as _gossip_pb2
from controlplane.v1 import kv_pb2 as _kv_pb2
from controlplane.v1 import leases_pb2 as _leases_pb2
from controlplane.v1 import membership_pb2 as _membership_pb2
from controlplane.v1 import models_pb2 as _models_pb2
from controlplane.v1 import ports_pb2 as _ports_pb2
from controlplane.v1 import watch_pb2 as _watch_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CommandBatch(_message.Message):
    __slots__ = ("time_unix_ms", "leader_id", "commands")
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    time_unix_ms: int
    leader_id: str
    commands: _containers.RepeatedCompositeFieldContainer[Command]
    def __init__(self, time_unix_ms: _Optional[int] = ..., leader_id: _Optional[str] = ..., commands: _Optional[_Iterable[_Union[Command, _Mapping]]] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("request_id", "kv_put", "kv_delete", "kv_compare_and_swap", "barrier", "member_upsert", "member_remove", "restore_state", "set_cluster_level", "ports_allocate", "ports_assign", "ports_release", "ports_reassign", "ports_reserve", "ports_unreserve", "ports_set_range", "ports_delete_range", "ports_observe", "ports_resolve", "ports_repair", "ports_import", "service_register", "service_deregister", "service_health", "service_reap", "service_start", "service_stop", "service_run_report", "lease_grant", "lease_keepalive", "lease_revoke", "lease_expire", "lease_checkpoint", "model_register", "model_bulk_register", "model_update", "model_set_status", "model_set_alias", "model_delete_version", "model_delete", "model_add_replica", "model_remove_replica", "model_update_version", "node_register", "node_heartbeat", "node_drain", "node_deregister", "node_forget", "network_create", "network_update", "network_delete", "network_join", "network_leave", "network_assign", "flag_set", "gossip_report_bandwidth", "gossip_start_round", "gossip_report_round", "gossip_end_round", "gossip_configure_group", "gossip_delete_group", "auth")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KV_PUT_FIELD_NUMBER: _ClassVar[int]
    KV_DELETE_FIELD_NUMBER: _ClassVar[int]
    KV_COMPARE_AND_SWAP_FIELD_NUMBER: _ClassVar[int]
    BARRIER_FIELD_NUMBER: _ClassVar[int]
    MEMBER_UPSERT_FIELD_NUMBER: _ClassVar[int]
    MEMBER_REMOVE_FIELD_NUMBER: _ClassVar[int]
    RESTORE_STATE_FIELD_NUMBER: _ClassVar[int]
    SET_CLUSTER_LEVEL_FIELD_NUMBER: _ClassVar[int]
    PORTS_ALLOCATE_FIELD_NUMBER: _ClassVar[int]
    PORTS_ASSIGN_FIELD_NUMBER: _ClassVar[int]
    PORTS_RELEASE_FIELD_NUMBER: _ClassVar[int]
    PORTS_REASSIGN_FIELD_NUMBER: _ClassVar[int]
    PORTS_RESERVE_FIELD_NUMBER: _ClassVar[int]
    PORTS_UNRESERVE_FIELD_NUMBER: _ClassVar[int]
    PORTS_SET_RANGE_FIELD_NUMBER: _ClassVar[int]
    PORTS_DELETE_RANGE_FIELD_NUMBER: _ClassVar[int]
    PORTS_OBSERVE_FIELD_NUMBER: _ClassVar[int]
    PORTS_RESOLVE_FIELD_NUMBER: _ClassVar[int]
    PORTS_REPAIR_FIELD_NUMBER: _ClassVar[int]
    PORTS_IMPORT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_REGISTER_FIELD_NUMBER: _ClassVar[int]
    SERVICE_DEREGISTER_FIELD_NUMBER: _ClassVar[int]
    SERVICE_HEALTH_FIELD_NUMBER: _ClassVar[int]
    SERVICE_REAP_FIELD_NUMBER: _ClassVar[int]
    SERVICE_START_FIELD_NUMBER: _ClassVar[int]
    SERVICE_STOP_FIELD_NUMBER: _ClassVar[int]
    SERVICE_RUN_REPORT_FIELD_NUMBER: _ClassVar[int]
    LEASE_GRANT_FIELD_NUMBER: _ClassVar[int]
    LEASE_KEEPALIVE_FIELD_NUMBER: _ClassVar[int]
    LEASE_REVOKE_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_FIELD_NUMBER: _ClassVar[int]
    LEASE_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_REGISTER_FIELD_NUMBER: _ClassVar[int]
    MODEL_BULK_REGISTER_FIELD_NUMBER: _ClassVar[int]
    MODEL_UPDATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_SET_STATUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SET_ALIAS_FIELD_NUMBER: _ClassVar[int]
    MODEL_DELETE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_DELETE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ADD_REPLICA_FIELD_NUMBER: _ClassVar[int]
    MODEL_REMOVE_REPLICA_FIELD_NUMBER: _ClassVar[int]
    MODEL_UPDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_REGISTER_FIELD_NUMBER: _ClassVar[int]
    NODE_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    NODE_DRAIN_FIELD_NUMBER: _ClassVar[int]
    NODE_DEREGISTER_FIELD_NUMBER: _ClassVar[int]
    NODE_FORGET_FIELD_NUMBER: _ClassVar[int]
    NETWORK_CREATE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_UPDATE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_DELETE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_JOIN_FIELD_NUMBER: _ClassVar[int]
    NETWORK_LEAVE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ASSIGN_FIELD_NUMBER: _ClassVar[int]
    FLAG_SET_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_REPORT_BANDWIDTH_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_START_ROUND_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_REPORT_ROUND_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_END_ROUND_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_CONFIGURE_GROUP_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_DELETE_GROUP_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    kv_put: KvPut
    kv_delete: KvDelete
    kv_compare_and_swap: KvCompareAndSwap
    barrier: Barrier
    member_upsert: MemberUpsert
    member_remove: MemberRemove
    restore_state: RestoreState
    set_cluster_level: SetClusterLevel
    ports_allocate: _ports_pb2.AllocateRequest
    ports_assign: _ports_pb2.AssignRequest
    ports_release: _ports_pb2.ReleaseRequest
    ports_reassign: _ports_pb2.ReassignRequest
    ports_reserve: _ports_pb2.ReserveRequest
    ports_unreserve: _ports_pb2.UnreserveRequest
    ports_set_range: _ports_pb2.SetRangeRequest
    ports_delete_range: _ports_pb2.DeleteRangeRequest
    ports_observe: _ports_pb2.ReportObservedRequest
    ports_resolve: _ports_pb2.ResolveConflictsRequest
    ports_repair: _ports_pb2.RepairRequest
    ports_import: _ports_pb2.ImportPortsRequest
    service_register: _ports_pb2.RegisterServiceRequest
    service_deregister: _ports_pb2.DeregisterServiceRequest
    service_health: _ports_pb2.ReportHealthRequest
    service_reap: _ports_pb2.ReapCriticalRequest
    service_start: _ports_pb2.StartServiceRequest
    service_stop: _ports_pb2.StopServiceRequest
    service_run_report: _ports_pb2.ReportRunRequest
    lease_grant: _leases_pb2.GrantLeaseRequest
    lease_keepalive: _leases_pb2.KeepAliveRequest
    lease_revoke: _leases_pb2.RevokeLeaseRequest
    lease_expire: _leases_pb2.ExpireLeases
    lease_checkpoint: _leases_pb2.LeaseCheckpoint
    model_register: _models_pb2.RegisterVersionRequest
    model_bulk_register: _models_pb2.BulkRegisterRequest
    model_update: _models_pb2.UpdateModelRequest
    model_set_status: _models_pb2.SetVersionStatusRequest
    model_set_alias: _models_pb2.SetAliasRequest
    model_delete_version: _models_pb2.DeleteVersionRequest
    model_delete: _models_pb2.DeleteModelRequest
    model_add_replica: _models_pb2.ReplicaRequest
    model_remove_replica: _models_pb2.ReplicaRequest
    model_update_version: _models_pb2.UpdateVersionRequest
    node_register: _membership_pb2.RegisterNodeRequest
    node_heartbeat: _membership_pb2.HeartbeatRequest
    node_drain: _membership_pb2.DrainNodeRequest
    node_deregister: _membership_pb2.DeregisterNodeRequest
    node_forget: _membership_pb2.ForgetNodeRequest
    network_create: _membership_pb2.CreateNetworkRequest
    network_update: _membership_pb2.UpdateNetworkRequest
    network_delete: _membership_pb2.DeleteNetworkRequest
    network_join: _membership_pb2.JoinNetworkRequest
    network_leave: _membership_pb2.LeaveNetworkRequest
    network_assign: _membership_pb2.AssignClientRequest
    flag_set: _membership_pb2.SetFlagRequest
    gossip_report_bandwidth: _gossip_pb2.ReportBandwidthRequest
    gossip_start_round: _gossip_pb2.StartRoundRequest
    gossip_report_round: _gossip_pb2.ReportRoundRequest
    gossip_end_round: _gossip_pb2.EndRoundRequest
    gossip_configure_group: _gossip_pb2.ConfigureGroupRequest
    gossip_delete_group: _gossip_pb2.DeleteGroupRequest
    auth: _auth_pb2.AuthCommand
    def __init__(self, request_id: _Optional[str] = ..., kv_put: _Optional[_Union[KvPut, _Mapping]] = ..., kv_delete: _Optional[_Union[KvDelete, _Mapping]] = ..., kv_compare_and_swap: _Optional[_Union[KvCompareAndSwap, _Mapping]] = ..., barrier: _Optional[_Union[Barrier, _Mapping]] = ..., member_upsert: _Optional[_Union[MemberUpsert, _Mapping]] = ..., member_remove: _Optional[_Union[MemberRemove, _Mapping]] = ..., restore_state: _Optional[_Union[RestoreState, _Mapping]] = ..., set_cluster_level: _Optional[_Union[SetClusterLevel, _Mapping]] = ..., ports_allocate: _Optional[_Union[_ports_pb2.AllocateRequest, _Mapping]] = ..., ports_assign: _Optional[_Union[_ports_pb2.AssignRequest, _Mapping]] = ..., ports_release: _Optional[_Union[_ports_pb2.ReleaseRequest, _Mapping]] = ..., ports_reassign: _Optional[_Union[_ports_pb2.ReassignRequest, _Mapping]] = ..., ports_reserve: _Optional[_Union[_ports_pb2.ReserveRequest, _Mapping]] = ..., ports_unreserve: _Optional[_Union[_ports_pb2.UnreserveRequest, _Mapping]] = ..., ports_set_range: _Optional[_Union[_ports_pb2.SetRangeRequest, _Mapping]] = ..., ports_delete_range: _Optional[_Union[_ports_pb2.DeleteRangeRequest, _Mapping]] = ..., ports_observe: _Optional[_Union[_ports_pb2.ReportObservedRequest, _Mapping]] = ..., ports_resolve: _Optional[_Union[_ports_pb2.ResolveConflictsRequest, _Mapping]] = ..., ports_repair: _Optional[_Union[_ports_pb2.RepairRequest, _Mapping]] = ..., ports_import: _Optional[_Union[_ports_pb2.ImportPortsRequest, _Mapping]] = ..., service_register: _Optional[_Union[_ports_pb2.RegisterServiceRequest, _Mapping]] = ..., service_deregister: _Optional[_Union[_ports_pb2.DeregisterServiceRequest, _Mapping]] = ..., service_health: _Optional[_Union[_ports_pb2.ReportHealthRequest, _Mapping]] = ..., service_reap: _Optional[_Union[_ports_pb2.ReapCriticalRequest, _Mapping]] = ..., service_start: _Optional[_Union[_ports_pb2.StartServiceRequest, _Mapping]] = ..., service_stop: _Optional[_Union[_ports_pb2.StopServiceRequest, _Mapping]] = ..., service_run_report: _Optional[_Union[_ports_pb2.ReportRunRequest, _Mapping]] = ..., lease_grant: _Optional[_Union[_leases_pb2.GrantLeaseRequest, _Mapping]] = ..., lease_keepalive: _Optional[_Union[_leases_pb2.KeepAliveRequest, _Mapping]] = ..., lease_revoke: _Optional[_Union[_leases_pb2.RevokeLeaseRequest, _Mapping]] = ..., lease_expire: _Optional[_Union[_leases_pb2.ExpireLeases, _Mapping]] = ..., lease_checkpoint: _Optional[_Union[_leases_pb2.LeaseCheckpoint, _Mapping]] = ..., model_register: _Optional[_Union[_models_pb2.RegisterVersionRequest, _Mapping]] = ..., model_bulk_register: _Optional[_Union[_models_pb2.BulkRegisterRequest, _Mapping]] = ..., model_update: _Optional[_Union[_models_pb2.UpdateModelRequest, _Mapping]] = ..., model_set_status: _Optional[_Union[_models_pb2.SetVersionStatusRequest, _Mapping]] = ..., model_set_alias: _Optional[_Union[_models_pb2.SetAliasRequest, _Mapping]] = ..., model_delete_version: _Optional[_Union[_models_pb2.DeleteVersionRequest, _Mapping]] = ..., model_delete: _Optional[_Union[_models_pb2.DeleteModelRequest, _Mapping]] = ..., model_add_replica: _Optional[_Union[_models_pb2.ReplicaRequest, _Mapping]] = ..., model_remove_replica: _Optional[_Union[_models_pb2.ReplicaRequest, _Mapping]] = ..., model_update_version: _Optional[_Union[_models_pb2.UpdateVersionRequest, _Mapping]] = ..., node_register: _Optional[_Union[_membership_pb2.RegisterNodeRequest, _Mapping]] = ..., node_heartbeat: _Optional[_Union[_membership_pb2.HeartbeatRequest, _Mapping]] = ..., node_drain: _Optional[_Union[_membership_pb2.DrainNodeRequest, _Mapping]] = ..., node_deregister: _Optional[_Union[_membership_pb2.DeregisterNodeRequest, _Mapping]] = ..., node_forget: _Optional[_Union[_membership_pb2.ForgetNodeRequest, _Mapping]] = ..., network_create: _Optional[_Union[_membership_pb2.CreateNetworkRequest, _Mapping]] = ..., network_update: _Optional[_Union[_membership_pb2.UpdateNetworkRequest, _Mapping]] = ..., network_delete: _Optional[_Union[_membership_pb2.DeleteNetworkRequest, _Mapping]] = ..., network_join: _Optional[_Union[_membership_pb2.JoinNetworkRequest, _Mapping]] = ..., network_leave: _Optional[_Union[_membership_pb2.LeaveNetworkRequest, _Mapping]] = ..., network_assign: _Optional[_Union[_membership_pb2.AssignClientRequest, _Mapping]] = ..., flag_set: _Optional[_Union[_membership_pb2.SetFlagRequest, _Mapping]] = ..., gossip_report_bandwidth: _Optional[_Union[_gossip_pb2.ReportBandwidthRequest, _Mapping]] = ..., gossip_start_round: _Optional[_Union[_gossip_pb2.StartRoundRequest, _Mapping]] = ..., gossip_report_round: _Optional[_Union[_gossip_pb2.ReportRoundRequest, _Mapping]] = ..., gossip_end_round: _Optional[_Union[_gossip_pb2.EndRoundRequest, _Mapping]] = ..., gossip_configure_group: _Optional[_Union[_gossip_pb2.ConfigureGroupRequest, _Mapping]] = ..., gossip_delete_group: _Optional[_Union[_gossip_pb2.DeleteGroupRequest, _Mapping]] = ..., auth: _Optional[_Union[_auth_pb2.AuthCommand, _Mapping]] = ...) -> None: ...

class KvPut(_message.Message):
    __slots__ = ("key", "value", "prev_kv")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PREV_KV_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    prev_kv: bool
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., prev_kv: _Optional[bool] = ...) -> None: ...

class KvDelete(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class KvCompareAndSwap(_message.Message):
    __slots__ = ("key", "expected_mod_revision", "value", "delete")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    key: str
    expected_mod_revision: int
    value: bytes
    delete: bool
    def __init__(self, key: _Optional[str] = ..., expected_mod_revision: _Optional[int] = ..., value: _Optional[bytes] = ..., delete: _Optional[bool] = ...) -> None: ...

class Barrier(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetClusterLevel(_message.Message):
    __slots__ = ("level",)
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    level: int
    def __init__(self, level: _Optional[int] = ...) -> None: ...

class MemberUpsert(_message.Message):
    __slots__ = ("member",)
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    member: MemberRecord
    def __init__(self, member: _Optional[_Union[MemberRecord, _Mapping]] = ...) -> None: ...

class MemberRemove(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RestoreState(_message.Message):
    __slots__ = ("snapshot", "include_auth")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_AUTH_FIELD_NUMBER: _ClassVar[int]
    snapshot: bytes
    include_auth: bool
    def __init__(self, snapshot: _Optional[bytes] = ..., include_auth: _Optional[bool] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("revision", "error", "kv_put", "kv_delete", "kv_compare_and_swap", "barrier", "member", "restore", "cluster_level", "ports_allocate", "ports_assign", "ports_release", "ports_reassign", "ports_reserve", "ports_unreserve", "ports_set_range", "ports_delete_range", "ports_observe", "ports_resolve", "ports_repair", "ports_import", "service_register", "service_deregister", "service_health", "service_reap", "service_start", "service_stop", "service_run_report", "lease_grant", "lease_keepalive", "lease_revoke", "lease_expire", "lease_checkpoint", "model_register", "model_bulk_register", "model_update", "model_set_status", "model_set_alias", "model_delete_version", "model_delete", "model_add_replica", "model_remove_replica", "model_update_version", "node_register", "node_heartbeat", "node_drain", "node_deregister", "node_forget", "network_create", "network_update", "network_delete", "network_join", "network_leave", "network_assign", "flag_set", "gossip_report_bandwidth", "gossip_start_round", "gossip_report_round", "gossip_end_round", "gossip_configure_group", "gossip_delete_group", "auth")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    KV_PUT_FIELD_NUMBER: _ClassVar[int]
    KV_DELETE_FIELD_NUMBER: _ClassVar[int]
    KV_COMPARE_AND_SWAP_FIELD_NUMBER: _ClassVar[int]
    BARRIER_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_LEVEL_FIELD_NUMBER: _ClassVar[int]
    PORTS_ALLOCATE_FIELD_NUMBER: _ClassVar[int]
    PORTS_ASSIGN_FIELD_NUMBER: _ClassVar[int]
    PORTS_RELEASE_FIELD_NUMBER: _ClassVar[int]
    PORTS_REASSIGN_FIELD_NUMBER: _ClassVar[int]
    PORTS_RESERVE_FIELD_NUMBER: _ClassVar[int]
    PORTS_UNRESERVE_FIELD_NUMBER: _ClassVar[int]
    PORTS_SET_RANGE_FIELD_NUMBER: _ClassVar[int]
    PORTS_DELETE_RANGE_FIELD_NUMBER: _ClassVar[int]
    PORTS_OBSERVE_FIELD_NUMBER: _ClassVar[int]
    PORTS_RESOLVE_FIELD_NUMBER: _ClassVar[int]
    PORTS_REPAIR_FIELD_NUMBER: _ClassVar[int]
    PORTS_IMPORT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_REGISTER_FIELD_NUMBER: _ClassVar[int]
    SERVICE_DEREGISTER_FIELD_NUMBER: _ClassVar[int]
    SERVICE_HEALTH_FIELD_NUMBER: _ClassVar[int]
    SERVICE_REAP_FIELD_NUMBER: _ClassVar[int]
    SERVICE_START_FIELD_NUMBER: _ClassVar[int]
    SERVICE_STOP_FIELD_NUMBER: _ClassVar[int]
    SERVICE_RUN_REPORT_FIELD_NUMBER: _ClassVar[int]
    LEASE_GRANT_FIELD_NUMBER: _ClassVar[int]
    LEASE_KEEPALIVE_FIELD_NUMBER: _ClassVar[int]
    LEASE_REVOKE_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_FIELD_NUMBER: _ClassVar[int]
    LEASE_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_REGISTER_FIELD_NUMBER: _ClassVar[int]
    MODEL_BULK_REGISTER_FIELD_NUMBER: _ClassVar[int]
    MODEL_UPDATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_SET_STATUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SET_ALIAS_FIELD_NUMBER: _ClassVar[int]
    MODEL_DELETE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_DELETE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ADD_REPLICA_FIELD_NUMBER: _ClassVar[int]
    MODEL_REMOVE_REPLICA_FIELD_NUMBER: _ClassVar[int]
    MODEL_UPDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_REGISTER_FIELD_NUMBER: _ClassVar[int]
    NODE_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    NODE_DRAIN_FIELD_NUMBER: _ClassVar[int]
    NODE_DEREGISTER_FIELD_NUMBER: _ClassVar[int]
    NODE_FORGET_FIELD_NUMBER: _ClassVar[int]
    NETWORK_CREATE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_UPDATE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_DELETE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_JOIN_FIELD_NUMBER: _ClassVar[int]
    NETWORK_LEAVE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ASSIGN_FIELD_NUMBER: _ClassVar[int]
    FLAG_SET_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_REPORT_BANDWIDTH_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_START_ROUND_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_REPORT_ROUND_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_END_ROUND_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_CONFIGURE_GROUP_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_DELETE_GROUP_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    revision: int
    error: _common_pb2.Error
    kv_put: KvPutResult
    kv_delete: KvDeleteResult
    kv_compare_and_swap: KvCompareAndSwapResult
    barrier: BarrierResult
    member: MemberResult
    restore: RestoreResult
    cluster_level: ClusterLevelResult
    ports_allocate: _ports_pb2.AllocateResponse
    ports_assign: _ports_pb2.AssignResponse
    ports_release: _ports_pb2.ReleaseResponse
    ports_reassign: _ports_pb2.ReassignResponse
    ports_reserve: _ports_pb2.ReserveResponse
    ports_unreserve: _ports_pb2.UnreserveResponse
    ports_set_range: _ports_pb2.SetRangeResponse
    ports_delete_range: _ports_pb2.DeleteRangeResponse
    ports_observe: _ports_pb2.ReportObservedResponse
    ports_resolve: _ports_pb2.ResolveConflictsResponse
    ports_repair: _ports_pb2.RepairResponse
    ports_import: _ports_pb2.ImportPortsResponse
    service_register: _ports_pb2.RegisterServiceResponse
    service_deregister: _ports_pb2.DeregisterServiceResponse
    service_health: _ports_pb2.ReportHealthResponse
    service_reap: _ports_pb2.ReapCriticalResult
    service_start: _ports_pb2.StartServiceResponse
    service_stop: _ports_pb2.StopServiceResponse
    service_run_report: _ports_pb2.ReportRunResponse
    lease_grant: _leases_pb2.GrantLeaseResponse
    lease_keepalive: _leases_pb2.KeepAliveResponse
    lease_revoke: _leases_pb2.RevokeLeaseResponse
    lease_expire: _leases_pb2.ExpireLeasesResult
    lease_checkpoint: _leases_pb2.LeaseCheckpointResult
    model_register: _models_pb2.RegisterVersionResponse
    model_bulk_register: _models_pb2.BulkRegisterResponse
    model_update: _models_pb2.UpdateModelResponse
    model_set_status: _models_pb2.SetVersionStatusResponse
    model_set_alias: _models_pb2.SetAliasResponse
    model_delete_version: _models_pb2.DeleteVersionResponse
    model_delete: _models_pb2.DeleteModelResponse
    model_add_replica: _models_pb2.ReplicaResponse
    model_remove_replica: _models_pb2.ReplicaResponse
    model_update_version: _models_pb2.UpdateVersionResponse
    node_register: _membership_pb2.RegisterNodeResponse
    node_heartbeat: _membership_pb2.HeartbeatResponse
    node_drain: _membership_pb2.DrainNodeResponse
    node_deregister: _membership_pb2.DeregisterNodeResponse
    node_forget: _membership_pb2.ForgetNodeResponse
    network_create: _membership_pb2.CreateNetworkResponse
    network_update: _membership_pb2.UpdateNetworkResponse
    network_delete: _membership_pb2.DeleteNetworkResponse
    network_join: _membership_pb2.JoinNetworkResponse
    network_leave: _membership_pb2.LeaveNetworkResponse
    network_assign: _membership_pb2.AssignClientResponse
    flag_set: _membership_pb2.SetFlagResponse
    gossip_report_bandwidth: _gossip_pb2.ReportBandwidthResponse
    gossip_start_round: _gossip_pb2.StartRoundResponse
    gossip_report_round: _gossip_pb2.ReportRoundResponse
    gossip_end_round: _gossip_pb2.EndRoundResponse
    gossip_configure_group: _gossip_pb2.ConfigureGroupResponse
    gossip_delete_group: _gossip_pb2.DeleteGroupResponse
    auth: _auth_pb2.AuthChangeResult
    def __init__(self, revision: _Optional[int] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., kv_put: _Optional[_Union[KvPutResult, _Mapping]] = ..., kv_delete: _Optional[_Union[KvDeleteResult, _Mapping]] = ..., kv_compare_and_swap: _Optional[_Union[KvCompareAndSwapResult, _Mapping]] = ..., barrier: _Optional[_Union[BarrierResult, _Mapping]] = ..., member: _Optional[_Union[MemberResult, _Mapping]] = ..., restore: _Optional[_Union[RestoreResult, _Mapping]] = ..., cluster_level: _Optional[_Union[ClusterLevelResult, _Mapping]] = ..., ports_allocate: _Optional[_Union[_ports_pb2.AllocateResponse, _Mapping]] = ..., ports_assign: _Optional[_Union[_ports_pb2.AssignResponse, _Mapping]] = ..., ports_release: _Optional[_Union[_ports_pb2.ReleaseResponse, _Mapping]] = ..., ports_reassign: _Optional[_Union[_ports_pb2.ReassignResponse, _Mapping]] = ..., ports_reserve: _Optional[_Union[_ports_pb2.ReserveResponse, _Mapping]] = ..., ports_unreserve: _Optional[_Union[_ports_pb2.UnreserveResponse, _Mapping]] = ..., ports_set_range: _Optional[_Union[_ports_pb2.SetRangeResponse, _Mapping]] = ..., ports_delete_range: _Optional[_Union[_ports_pb2.DeleteRangeResponse, _Mapping]] = ..., ports_observe: _Optional[_Union[_ports_pb2.ReportObservedResponse, _Mapping]] = ..., ports_resolve: _Optional[_Union[_ports_pb2.ResolveConflictsResponse, _Mapping]] = ..., ports_repair: _Optional[_Union[_ports_pb2.RepairResponse, _Mapping]] = ..., ports_import: _Optional[_Union[_ports_pb2.ImportPortsResponse, _Mapping]] = ..., service_register: _Optional[_Union[_ports_pb2.RegisterServiceResponse, _Mapping]] = ..., service_deregister: _Optional[_Union[_ports_pb2.DeregisterServiceResponse, _Mapping]] = ..., service_health: _Optional[_Union[_ports_pb2.ReportHealthResponse, _Mapping]] = ..., service_reap: _Optional[_Union[_ports_pb2.ReapCriticalResult, _Mapping]] = ..., service_start: _Optional[_Union[_ports_pb2.StartServiceResponse, _Mapping]] = ..., service_stop: _Optional[_Union[_ports_pb2.StopServiceResponse, _Mapping]] = ..., service_run_report: _Optional[_Union[_ports_pb2.ReportRunResponse, _Mapping]] = ..., lease_grant: _Optional[_Union[_leases_pb2.GrantLeaseResponse, _Mapping]] = ..., lease_keepalive: _Optional[_Union[_leases_pb2.KeepAliveResponse, _Mapping]] = ..., lease_revoke: _Optional[_Union[_leases_pb2.RevokeLeaseResponse, _Mapping]] = ..., lease_expire: _Optional[_Union[_leases_pb2.ExpireLeasesResult, _Mapping]] = ..., lease_checkpoint: _Optional[_Union[_leases_pb2.LeaseCheckpointResult, _Mapping]] = ..., model_register: _Optional[_Union[_models_pb2.RegisterVersionResponse, _Mapping]] = ..., model_bulk_register: _Optional[_Union[_models_pb2.BulkRegisterResponse, _Mapping]] = ..., model_update: _Optional[_Union[_models_pb2.UpdateModelResponse, _Mapping]] = ..., model_set_status: _Optional[_Union[_models_pb2.SetVersionStatusResponse, _Mapping]] = ..., model_set_alias: _Optional[_Union[_models_pb2.SetAliasResponse, _Mapping]] = ..., model_delete_version: _Optional[_Union[_models_pb2.DeleteVersionResponse, _Mapping]] = ..., model_delete: _Optional[_Union[_models_pb2.DeleteModelResponse, _Mapping]] = ..., model_add_replica: _Optional[_Union[_models_pb2.ReplicaResponse, _Mapping]] = ..., model_remove_replica: _Optional[_Union[_models_pb2.ReplicaResponse, _Mapping]] = ..., model_update_version: _Optional[_Union[_models_pb2.UpdateVersionResponse, _Mapping]] = ..., node_register: _Optional[_Union[_membership_pb2.RegisterNodeResponse, _Mapping]] = ..., node_heartbeat: _Optional[_Union[_membership_pb2.HeartbeatResponse, _Mapping]] = ..., node_drain: _Optional[_Union[_membership_pb2.DrainNodeResponse, _Mapping]] = ..., node_deregister: _Optional[_Union[_membership_pb2.DeregisterNodeResponse, _Mapping]] = ..., node_forget: _Optional[_Union[_membership_pb2.ForgetNodeResponse, _Mapping]] = ..., network_create: _Optional[_Union[_membership_pb2.CreateNetworkResponse, _Mapping]] = ..., network_update: _Optional[_Union[_membership_pb2.UpdateNetworkResponse, _Mapping]] = ..., network_delete: _Optional[_Union[_membership_pb2.DeleteNetworkResponse, _Mapping]] = ..., network_join: _Optional[_Union[_membership_pb2.JoinNetworkResponse, _Mapping]] = ..., network_leave: _Optional[_Union[_membership_pb2.LeaveNetworkResponse, _Mapping]] = ..., network_assign: _Optional[_Union[_membership_pb2.AssignClientResponse, _Mapping]] = ..., flag_set: _Optional[_Union[_membership_pb2.SetFlagResponse, _Mapping]] = ..., gossip_report_bandwidth: _Optional[_Union[_gossip_pb2.ReportBandwidthResponse, _Mapping]] = ..., gossip_start_round: _Optional[_Union[_gossip_pb2.StartRoundResponse, _Mapping]] = ..., gossip_report_round: _Optional[_Union[_gossip_pb2.ReportRoundResponse, _Mapping]] = ..., gossip_end_round: _Optional[_Union[_gossip_pb2.EndRoundResponse, _Mapping]] = ..., gossip_configure_group: _Optional[_Union[_gossip_pb2.ConfigureGroupResponse, _Mapping]] = ..., gossip_delete_group: _Optional[_Union[_gossip_pb2.DeleteGroupResponse, _Mapping]] = ..., auth: _Optional[_Union[_auth_pb2.AuthChangeResult, _Mapping]] = ...) -> None: ...

class KvPutResult(_message.Message):
    __slots__ = ("kv", "prev_kv")
    KV_FIELD_NUMBER: _ClassVar[int]
    PREV_KV_FIELD_NUMBER: _ClassVar[int]
    kv: _kv_pb2.KeyValue
    prev_kv: _kv_pb2.KeyValue
    def __init__(self, kv: _Optional[_Union[_kv_pb2.KeyValue, _Mapping]] = ..., prev_kv: _Optional[_Union[_kv_pb2.KeyValue, _Mapping]] = ...) -> None: ...

class KvDeleteResult(_message.Message):
    __slots__ = ("deleted", "prev_kv")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    PREV_KV_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    prev_kv: _kv_pb2.KeyValue
    def __init__(self, deleted: _Optional[bool] = ..., prev_kv: _Optional[_Union[_kv_pb2.KeyValue, _Mapping]] = ...) -> None: ...

class KvCompareAndSwapResult(_message.Message):
    __slots__ = ("succeeded", "found", "kv")
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    KV_FIELD_NUMBER: _ClassVar[int]
    succeeded: bool
    found: bool
    kv: _kv_pb2.KeyValue
    def __init__(self, succeeded: _Optional[bool] = ..., found: _Optional[bool] = ..., kv: _Optional[_Union[_kv_pb2.KeyValue, _Mapping]] = ...) -> None: ...

class BarrierResult(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterLevelResult(_message.Message):
    __slots__ = ("level", "changed")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    level: int
    changed: bool
    def __init__(self, level: _Optional[int] = ..., changed: _Optional[bool] = ...) -> None: ...

class MemberResult(_message.Message):
    __slots__ = ("changed",)
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    def __init__(self, changed: _Optional[bool] = ...) -> None: ...

class RestoreResult(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: int
    def __init__(self, keys: _Optional[int] = ...) -> None: ...

class MemberRecord(_message.Message):
    __slots__ = ("id", "raft_address", "client_address", "added_revision", "learner")
    ID_FIELD_NUMBER: _ClassVar[int]
    RAFT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ADDED_REVISION_FIELD_NUMBER: _ClassVar[int]
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    id: str
    raft_address: str
    client_address: str
    added_revision: int
    learner: bool
    def __init__(self, id: _Optional[str] = ..., raft_address: _Optional[str] = ..., client_address: _Optional[str] = ..., added_revision: _Optional[int] = ..., learner: _Optional[bool] = ...) -> None: ...

class DedupeEntry(_message.Message):
    __slots__ = ("request_id", "time_unix_ms", "result")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    time_unix_ms: int
    result: CommandResult
    def __init__(self, request_id: _Optional[str] = ..., time_unix_ms: _Optional[int] = ..., result: _Optional[_Union[CommandResult, _Mapping]] = ...) -> None: ...

class KvState(_message.Message):
    __slots__ = ("kvs",)
    KVS_FIELD_NUMBER: _ClassVar[int]
    kvs: _containers.RepeatedCompositeFieldContainer[_kv_pb2.KeyValue]
    def __init__(self, kvs: _Optional[_Iterable[_Union[_kv_pb2.KeyValue, _Mapping]]] = ...) -> None: ...

class MemberDirectoryState(_message.Message):
    __slots__ = ("members", "removed_members")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[MemberRecord]
    removed_members: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, members: _Optional[_Iterable[_Union[MemberRecord, _Mapping]]] = ..., removed_members: _Optional[_Iterable[str]] = ...) -> None: ...

class TableState(_message.Message):
    __slots__ = ("name", "state")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: bytes
    def __init__(self, name: _Optional[str] = ..., state: _Optional[bytes] = ...) -> None: ...

class StateSnapshot(_message.Message):
    __slots__ = ("format_version", "revision", "time_unix_ms", "kvs", "history", "compacted_revision", "dedupe", "members", "removed_members", "ports", "leases", "next_lease_id", "models", "membership", "end_marker", "auth", "cluster_level", "tables")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    KVS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    COMPACTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    DEDUPE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    NEXT_LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    END_MARKER_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_LEVEL_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    revision: int
    time_unix_ms: int
    kvs: _containers.RepeatedCompositeFieldContainer[_kv_pb2.KeyValue]
    history: _containers.RepeatedCompositeFieldContainer[_watch_pb2.Event]
    compacted_revision: int
    dedupe: _containers.RepeatedCompositeFieldContainer[DedupeEntry]
    members: _containers.RepeatedCompositeFieldContainer[MemberRecord]
    removed_members: _containers.RepeatedScalarFieldContainer[str]
    ports: _ports_pb2.PortsState
    leases: _containers.RepeatedCompositeFieldContainer[_leases_pb2.Lease]
    next_lease_id: int
    models: _models_pb2.ModelsState
    membership: _membership_pb2.MembershipState
    end_marker: int
    auth: _auth_pb2.AuthState
    cluster_level: int
    tables: _containers.RepeatedCompositeFieldContainer[TableState]
    def __init__(self, format_version: _Optional[int] = ..., revision: _Optional[int] = ..., time_unix_ms: _Optional[int] = ..., kvs: _Optional[_Iterable[_Union[_kv_pb2.KeyValue, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[_watch_pb2.Event, _Mapping]]] = ..., compacted_revision: _Optional[int] = ..., dedupe: _Optional[_Iterable[_Union[DedupeEntry, _Mapping]]] = ..., members: _Optional[_Iterable[_Union[MemberRecord, _Mapping]]] = ..., removed_members: _Optional[_Iterable[str]] = ..., ports: _Optional[_Union[_ports_pb2.PortsState, _Mapping]] = ..., leases: _Optional[_Iterable[_Union[_leases_pb2.Lease, _Mapping]]] = ..., next_lease_id: _Optional[int] = ..., models: _Optional[_Union[_models_pb2.ModelsState, _Mapping]] = ..., membership: _Optional[_Union[_membership_pb2.MembershipState, _Mapping]] = ..., end_marker: _Optional[int] = ..., auth: _Optional[_Union[_auth_pb2.AuthState, _Mapping]] = ..., cluster_level: _Optional[int] = ..., tables: _Optional[_Iterable[_Union[TableState, _Mapping]]] = ...) -> None: ...
