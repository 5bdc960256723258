from controlplane.v1 import common_pb2 as _common_pb2
from controlplane.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PortProtocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PORT_PROTOCOL_TCP: _ClassVar[PortProtocol]
    PORT_PROTOCOL_UDP: _ClassVar[PortProtocol]

class PortAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PORT_ACTION_UNSPECIFIED: _ClassVar[PortAction]
    PORT_ACTION_ALLOCATED: _ClassVar[PortAction]
    PORT_ACTION_ASSIGNED: _ClassVar[PortAction]
    PORT_ACTION_RELEASED: _ClassVar[PortAction]
    PORT_ACTION_REASSIGNED: _ClassVar[PortAction]
    PORT_ACTION_EXPIRED: _ClassVar[PortAction]
    PORT_ACTION_RESOLVED: _ClassVar[PortAction]
    PORT_ACTION_REPAIRED: _ClassVar[PortAction]
    PORT_ACTION_IMPORTED: _ClassVar[PortAction]
    PORT_ACTION_RESERVED: _ClassVar[PortAction]
    PORT_ACTION_UNRESERVED: _ClassVar[PortAction]
    PORT_ACTION_RANGE_SET: _ClassVar[PortAction]
    PORT_ACTION_RANGE_DELETED: _ClassVar[PortAction]
    PORT_ACTION_OBSERVED: _ClassVar[PortAction]
    PORT_ACTION_SERVICE_REGISTERED: _ClassVar[PortAction]
    PORT_ACTION_SERVICE_DEREGISTERED: _ClassVar[PortAction]
    PORT_ACTION_HEALTH_CHANGED: _ClassVar[PortAction]
    PORT_ACTION_SERVICE_STARTED: _ClassVar[PortAction]
    PORT_ACTION_SERVICE_STOPPED: _ClassVar[PortAction]
    PORT_ACTION_RUN_CHANGED: _ClassVar[PortAction]

class ConflictKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONFLICT_KIND_UNSPECIFIED: _ClassVar[ConflictKind]
    CONFLICT_KIND_WRONG_HOLDER: _ClassVar[ConflictKind]
    CONFLICT_KIND_UNASSIGNED_BOUND: _ClassVar[ConflictKind]
    CONFLICT_KIND_MISPLACED: _ClassVar[ConflictKind]

class HealthStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_STATUS_UNSPECIFIED: _ClassVar[HealthStatus]
    HEALTH_STATUS_PASSING: _ClassVar[HealthStatus]
    HEALTH_STATUS_WARNING: _ClassVar[HealthStatus]
    HEALTH_STATUS_CRITICAL: _ClassVar[HealthStatus]
PORT_PROTOCOL_TCP: PortProtocol
PORT_PROTOCOL_UDP: PortProtocol
PORT_ACTION_UNSPECIFIED: PortAction
PORT_ACTION_ALLOCATED: PortAction
PORT_ACTION_ASSIGNED: PortAction
PORT_ACTION_RELEASED: PortAction
PORT_ACTION_REASSIGNED: PortAction
PORT_ACTION_EXPIRED: PortAction
PORT_ACTION_RESOLVED: PortAction
PORT_ACTION_REPAIRED: PortAction
PORT_ACTION_IMPORTED: PortAction
PORT_ACTION_RESERVED: PortAction
PORT_ACTION_UNRESERVED: PortAction
PORT_ACTION_RANGE_SET: PortAction
PORT_ACTION_RANGE_DELETED: PortAction
PORT_ACTION_OBSERVED: PortAction
PORT_ACTION_SERVICE_REGISTERED: PortAction
PORT_ACTION_SERVICE_DEREGISTERED: PortAction
PORT_ACTION_HEALTH_CHANGED: PortAction
PORT_ACTION_SERVICE_STARTED: PortAction
PORT_ACTION_SERVICE_STOPPED: PortAction
PORT_ACTION_RUN_CHANGED: PortAction
CONFLICT_KIND_UNSPECIFIED: ConflictKind
CONFLICT_KIND_WRONG_HOLDER: ConflictKind
CONFLICT_KIND_UNASSIGNED_BOUND: ConflictKind
CONFLICT_KIND_MISPLACED: ConflictKind
HEALTH_STATUS_UNSPECIFIED: HealthStatus
HEALTH_STATUS_PASSING: HealthStatus
HEALTH_STATUS_WARNING: HealthStatus
HEALTH_STATUS_CRITICAL: HealthStatus

class PortRange(_message.Message):
    __slots__ = ("name", "start", "end", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    start: int
    end: int
    description: str
    def __init__(self, name: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class PortAssignment(_message.Message):
    __slots__ = ("host", "service", "name", "port", "range", "lease_id", "create_revision", "mod_revision", "created_unix_ms", "updated_unix_ms", "protocol")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
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
    protocol: PortProtocol
    def __init__(self, host: _Optional[str] = ..., service: _Optional[str] = ..., name: _Optional[str] = ..., port: _Optional[int] = ..., range: _Optional[str] = ..., lease_id: _Optional[int] = ..., create_revision: _Optional[int] = ..., mod_revision: _Optional[int] = ..., created_unix_ms: _Optional[int] = ..., updated_unix_ms: _Optional[int] = ..., protocol: _Optional[_Union[PortProtocol, str]] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("host", "port", "reason", "revision")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    reason: str
    revision: int
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ..., reason: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class PortHistoryEntry(_message.Message):
    __slots__ = ("revision", "time_unix_ms", "action", "host", "service", "name", "old_port", "new_port", "reason", "protocol")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OLD_PORT_FIELD_NUMBER: _ClassVar[int]
    NEW_PORT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    revision: int
    time_unix_ms: int
    action: PortAction
    host: str
    service: str
    name: str
    old_port: int
    new_port: int
    reason: str
    protocol: PortProtocol
    def __init__(self, revision: _Optional[int] = ..., time_unix_ms: _Optional[int] = ..., action: _Optional[_Union[PortAction, str]] = ..., host: _Optional[str] = ..., service: _Optional[str] = ..., name: _Optional[str] = ..., old_port: _Optional[int] = ..., new_port: _Optional[int] = ..., reason: _Optional[str] = ..., protocol: _Optional[_Union[PortProtocol, str]] = ...) -> None: ...

class PortEvent(_message.Message):
    __slots__ = ("action", "host", "service", "name", "old_port", "new_port", "reason", "assignment", "prev_assignment", "health")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OLD_PORT_FIELD_NUMBER: _ClassVar[int]
    NEW_PORT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    PREV_ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    action: PortAction
    host: str
    service: str
    name: str
    old_port: int
    new_port: int
    reason: str
    assignment: PortAssignment
    prev_assignment: PortAssignment
    health: ServiceHealth
    def __init__(self, action: _Optional[_Union[PortAction, str]] = ..., host: _Optional[str] = ..., service: _Optional[str] = ..., name: _Optional[str] = ..., old_port: _Optional[int] = ..., new_port: _Optional[int] = ..., reason: _Optional[str] = ..., assignment: _Optional[_Union[PortAssignment, _Mapping]] = ..., prev_assignment: _Optional[_Union[PortAssignment, _Mapping]] = ..., health: _Optional[_Union[ServiceHealth, _Mapping]] = ...) -> None: ...

class ObservedPort(_message.Message):
    __slots__ = ("port", "holder", "pid", "protocol")
    PORT_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    port: int
    holder: str
    pid: int
    protocol: PortProtocol
    def __init__(self, port: _Optional[int] = ..., holder: _Optional[str] = ..., pid: _Optional[int] = ..., protocol: _Optional[_Union[PortProtocol, str]] = ...) -> None: ...

class HostObservation(_message.Message):
    __slots__ = ("host", "ports", "reported_unix_ms", "revision", "complete_for")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    REPORTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FOR_FIELD_NUMBER: _ClassVar[int]
    host: str
    ports: _containers.RepeatedCompositeFieldContainer[ObservedPort]
    reported_unix_ms: int
    revision: int
    complete_for: _containers.RepeatedScalarFieldContainer[PortProtocol]
    def __init__(self, host: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[ObservedPort, _Mapping]]] = ..., reported_unix_ms: _Optional[int] = ..., revision: _Optional[int] = ..., complete_for: _Optional[_Iterable[_Union[PortProtocol, str]]] = ...) -> None: ...

class Conflict(_message.Message):
    __slots__ = ("kind", "host", "port", "assignment", "observed_holder", "description", "protocol")
    KIND_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_HOLDER_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    kind: ConflictKind
    host: str
    port: int
    assignment: PortAssignment
    observed_holder: str
    description: str
    protocol: PortProtocol
    def __init__(self, kind: _Optional[_Union[ConflictKind, str]] = ..., host: _Optional[str] = ..., port: _Optional[int] = ..., assignment: _Optional[_Union[PortAssignment, _Mapping]] = ..., observed_holder: _Optional[str] = ..., description: _Optional[str] = ..., protocol: _Optional[_Union[PortProtocol, str]] = ...) -> None: ...

class PortMove(_message.Message):
    __slots__ = ("host", "service", "name", "old_port", "new_port", "reason", "protocol")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OLD_PORT_FIELD_NUMBER: _ClassVar[int]
    NEW_PORT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    host: str
    service: str
    name: str
    old_port: int
    new_port: int
    reason: str
    protocol: PortProtocol
    def __init__(self, host: _Optional[str] = ..., service: _Optional[str] = ..., name: _Optional[str] = ..., old_port: _Optional[int] = ..., new_port: _Optional[int] = ..., reason: _Optional[str] = ..., protocol: _Optional[_Union[PortProtocol, str]] = ...) -> None: ...

class DeclaredPort(_message.Message):
    __slots__ = ("name", "port", "range", "protocol")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    name: str
    port: int
    range: str
    protocol: str
    def __init__(self, name: _Optional[str] = ..., port: _Optional[int] = ..., range: _Optional[str] = ..., protocol: _Optional[str] = ...) -> None: ...

class HealthCheck(_message.Message):
    __slots__ = ("type", "port_name", "path", "interval_s", "timeout_s", "success_threshold", "failure_threshold", "command", "grpc_service", "ttl_s", "deregister_critical_after_s")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PORT_NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FAILURE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    GRPC_SERVICE_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    DEREGISTER_CRITICAL_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    type: str
    port_name: str
    path: str
    interval_s: int
    timeout_s: int
    success_threshold: int
    failure_threshold: int
    command: _containers.RepeatedScalarFieldContainer[str]
    grpc_service: str
    ttl_s: int
    deregister_critical_after_s: int
    def __init__(self, type: _Optional[str] = ..., port_name: _Optional[str] = ..., path: _Optional[str] = ..., interval_s: _Optional[int] = ..., timeout_s: _Optional[int] = ..., success_threshold: _Optional[int] = ..., failure_threshold: _Optional[int] = ..., command: _Optional[_Iterable[str]] = ..., grpc_service: _Optional[str] = ..., ttl_s: _Optional[int] = ..., deregister_critical_after_s: _Optional[int] = ...) -> None: ...

class ServiceHealth(_message.Message):
    __slots__ = ("status", "output", "since_unix_ms", "revision", "ttl_lease_id")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TTL_LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    status: HealthStatus
    output: str
    since_unix_ms: int
    revision: int
    ttl_lease_id: int
    def __init__(self, status: _Optional[_Union[HealthStatus, str]] = ..., output: _Optional[str] = ..., since_unix_ms: _Optional[int] = ..., revision: _Optional[int] = ..., ttl_lease_id: _Optional[int] = ...) -> None: ...

class Requirements(_message.Message):
    __slots__ = ("gpus", "memory_mb", "cpu_millis")
    GPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    gpus: int
    memory_mb: int
    cpu_millis: int
    def __init__(self, gpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., cpu_millis: _Optional[int] = ...) -> None: ...

class ServiceManifest(_message.Message):
    __slots__ = ("name", "version", "host", "ports", "health_check", "capabilities", "requirements", "labels", "lease_id", "run")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHECK_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    host: str
    ports: _containers.RepeatedCompositeFieldContainer[DeclaredPort]
    health_check: HealthCheck
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    requirements: Requirements
    labels: _containers.ScalarMap[str, str]
    lease_id: int
    run: RunSpec
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., host: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[DeclaredPort, _Mapping]]] = ..., health_check: _Optional[_Union[HealthCheck, _Mapping]] = ..., capabilities: _Optional[_Iterable[str]] = ..., requirements: _Optional[_Union[Requirements, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., lease_id: _Optional[int] = ..., run: _Optional[_Union[RunSpec, _Mapping]] = ...) -> None: ...

class RunSpec(_message.Message):
    __slots__ = ("command", "env", "stop_timeout_s")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    STOP_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    stop_timeout_s: int
    def __init__(self, command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., stop_timeout_s: _Optional[int] = ...) -> None: ...

class RunStatus(_message.Message):
    __slots__ = ("wanted", "state", "restarts", "last_exit_code", "pid", "since_unix_ms", "message", "revision")
    WANTED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    LAST_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    wanted: bool
    state: str
    restarts: int
    last_exit_code: int
    pid: int
    since_unix_ms: int
    message: str
    revision: int
    def __init__(self, wanted: _Optional[bool] = ..., state: _Optional[str] = ..., restarts: _Optional[int] = ..., last_exit_code: _Optional[int] = ..., pid: _Optional[int] = ..., since_unix_ms: _Optional[int] = ..., message: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class ServiceRecord(_message.Message):
    __slots__ = ("manifest", "ports", "create_revision", "mod_revision", "registered_unix_ms", "health", "run")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    manifest: ServiceManifest
    ports: _containers.RepeatedCompositeFieldContainer[PortAssignment]
    create_revision: int
    mod_revision: int
    registered_unix_ms: int
    health: ServiceHealth
    run: RunStatus
    def __init__(self, manifest: _Optional[_Union[ServiceManifest, _Mapping]] = ..., ports: _Optional[_Iterable[_Union[PortAssignment, _Mapping]]] = ..., create_revision: _Optional[int] = ..., mod_revision: _Optional[int] = ..., registered_unix_ms: _Optional[int] = ..., health: _Optional[_Union[ServiceHealth, _Mapping]] = ..., run: _Optional[_Union[RunStatus, _Mapping]] = ...) -> None: ...

class AllocateRequest(_message.Message):
    __slots__ = ("host", "service", "name", "range", "preferred_port", "lease_id", "request_id", "protocol")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_PORT_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    host: str
    service: str
    name: str
    range: str
    preferred_port: int
    lease_id: int
    request_id: str
    protocol: PortProtocol
    def __init__(self, host: _Optional[str] = ..., service: _Optional[str] = ..., name: _Optional[str] = ..., range: _Optional[str] = ..., preferred_port: _Optional[int] = ..., lease_id: _Optional[int] = ..., request_id: _Optional[str] = ..., protocol: _Optional[_Union[PortProtocol, str]] = ...) -> None: ...

class AllocateResponse(_message.Message):
    __slots__ = ("header", "assignment", "existing")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    assignment: PortAssignment
    existing: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., assignment: _Optional[_Union[PortAssignment, _Mapping]] = ..., existing: _Optional[bool] = ...) -> None: ...

class AssignRequest(_message.Message):
    __slots__ = ("host", "service", "name", "port", "lease_id", "force", "request_id", "protocol")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    host: str
    service: str
    name: str
    port: int
    lease_id: int
    force: bool
    request_id: str
    protocol: PortProtocol
    def __init__(self, host: _Optional[str] = ..., service: _Optional[str] = ..., name: _Optional[str] = ..., port: _Optional[int] = ..., lease_id: _Optional[int] = ..., force: _Optional[bool] = ..., request_id: _Optional[str] = ..., protocol: _Optional[_Union[PortProtocol, str]] = ...) -> None: ...

class AssignResponse(_message.Message):
    __slots__ = ("header", "assignment", "existing")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    assignment: PortAssignment
    existing: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., assignment: _Optional[_Union[PortAssignment, _Mapping]] = ..., existing: _Optional[bool] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("host", "service", "name", "port", "request_id", "protocol")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    host: str
    service: str
    name: str
    port: int
    request_id: str
    protocol: PortProtocol
    def __init__(self, host: _Optional[str] = ..., service: _Optional[str] = ..., name: _Optional[str] = ..., port: _Optional[int] = ..., request_id: _Optional[str] = ..., protocol: _Optional[_Union[PortProtocol, str]] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("header", "released", "assignment")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    released: bool
    assignment: PortAssignment
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., released: _Optional[bool] = ..., assignment: _Optional[_Union[PortAssignment, _Mapping]] = ...) -> None: ...

class ReassignRequest(_message.Message):
    __slots__ = ("host", "service", "name", "port", "range", "reason", "request_id")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    host: str
    service: str
    name: str
    port: int
    range: str
    reason: str
    request_id: str
    def __init__(self, host: _Optional[str] = ..., service: _Optional[str] = ..., name: _Optional[str] = ..., port: _Optional[int] = ..., range: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ReassignResponse(_message.Message):
    __slots__ = ("header", "assignment", "old_port")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    OLD_PORT_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    assignment: PortAssignment
    old_port: int
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., assignment: _Optional[_Union[PortAssignment, _Mapping]] = ..., old_port: _Optional[int] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("host", "port", "end_port", "reason", "request_id")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    END_PORT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    end_port: int
    reason: str
    request_id: str
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ..., end_port: _Optional[int] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("header", "reservations")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    reservations: _containers.RepeatedCompositeFieldContainer[Reservation]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., reservations: _Optional[_Iterable[_Union[Reservation, _Mapping]]] = ...) -> None: ...

class UnreserveRequest(_message.Message):
    __slots__ = ("host", "port", "end_port", "request_id")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    END_PORT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    end_port: int
    request_id: str
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ..., end_port: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class UnreserveResponse(_message.Message):
    __slots__ = ("header", "removed")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    removed: int
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., removed: _Optional[int] = ...) -> None: ...

class SetRangeRequest(_message.Message):
    __slots__ = ("range", "request_id")
    RANGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    range: PortRange
    request_id: str
    def __init__(self, range: _Optional[_Union[PortRange, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SetRangeResponse(_message.Message):
    __slots__ = ("header", "range")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    range: PortRange
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., range: _Optional[_Union[PortRange, _Mapping]] = ...) -> None: ...

class DeleteRangeRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteRangeResponse(_message.Message):
    __slots__ = ("header", "deleted")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    deleted: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., deleted: _Optional[bool] = ...) -> None: ...

class ListRangesRequest(_message.Message):
    __slots__ = ("read",)
    READ_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ...) -> None: ...

class ListRangesResponse(_message.Message):
    __slots__ = ("header", "ranges")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    ranges: _containers.RepeatedCompositeFieldContainer[PortRange]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., ranges: _Optional[_Iterable[_Union[PortRange, _Mapping]]] = ...) -> None: ...

class ListPortsRequest(_message.Message):
    __slots__ = ("read", "host", "service", "range")
    READ_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    host: str
    service: str
    range: str
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., host: _Optional[str] = ..., service: _Optional[str] = ..., range: _Optional[str] = ...) -> None: ...

class ListPortsResponse(_message.Message):
    __slots__ = ("header", "assignments", "reservations")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    assignments: _containers.RepeatedCompositeFieldContainer[PortAssignment]
    reservations: _containers.RepeatedCompositeFieldContainer[Reservation]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., assignments: _Optional[_Iterable[_Union[PortAssignment, _Mapping]]] = ..., reservations: _Optional[_Iterable[_Union[Reservation, _Mapping]]] = ...) -> None: ...

class PortHistoryRequest(_message.Message):
    __slots__ = ("read", "service", "after_revision")
    READ_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    AFTER_REVISION_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    service: str
    after_revision: int
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., service: _Optional[str] = ..., after_revision: _Optional[int] = ...) -> None: ...

class PortHistoryResponse(_message.Message):
    __slots__ = ("header", "entries", "total")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    entries: _containers.RepeatedCompositeFieldContainer[PortHistoryEntry]
    total: int
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., entries: _Optional[_Iterable[_Union[PortHistoryEntry, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class ReportObservedRequest(_message.Message):
    __slots__ = ("host", "ports", "request_id", "complete_for")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FOR_FIELD_NUMBER: _ClassVar[int]
    host: str
    ports: _containers.RepeatedCompositeFieldContainer[ObservedPort]
    request_id: str
    complete_for: _containers.RepeatedScalarFieldContainer[PortProtocol]
    def __init__(self, host: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[ObservedPort, _Mapping]]] = ..., request_id: _Optional[str] = ..., complete_for: _Optional[_Iterable[_Union[PortProtocol, str]]] = ...) -> None: ...

class ReportObservedResponse(_message.Message):
    __slots__ = ("header", "conflicts")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    conflicts: _containers.RepeatedCompositeFieldContainer[Conflict]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., conflicts: _Optional[_Iterable[_Union[Conflict, _Mapping]]] = ...) -> None: ...

class ConflictsRequest(_message.Message):
    __slots__ = ("read", "host")
    READ_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    host: str
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., host: _Optional[str] = ...) -> None: ...

class ConflictsResponse(_message.Message):
    __slots__ = ("header", "conflicts")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    conflicts: _containers.RepeatedCompositeFieldContainer[Conflict]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., conflicts: _Optional[_Iterable[_Union[Conflict, _Mapping]]] = ...) -> None: ...

class ResolveConflictsRequest(_message.Message):
    __slots__ = ("host", "dry_run", "request_id")
    HOST_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    host: str
    dry_run: bool
    request_id: str
    def __init__(self, host: _Optional[str] = ..., dry_run: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class ResolveConflictsResponse(_message.Message):
    __slots__ = ("header", "moves", "unresolved")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MOVES_FIELD_NUMBER: _ClassVar[int]
    UNRESOLVED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    moves: _containers.RepeatedCompositeFieldContainer[PortMove]
    unresolved: _containers.RepeatedCompositeFieldContainer[Conflict]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., moves: _Optional[_Iterable[_Union[PortMove, _Mapping]]] = ..., unresolved: _Optional[_Iterable[_Union[Conflict, _Mapping]]] = ...) -> None: ...

class RepairRequest(_message.Message):
    __slots__ = ("passes_before_release", "request_id")
    PASSES_BEFORE_RELEASE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    passes_before_release: int
    request_id: str
    def __init__(self, passes_before_release: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class RepairResponse(_message.Message):
    __slots__ = ("header", "suspected", "released")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SUSPECTED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    suspected: _containers.RepeatedCompositeFieldContainer[PortAssignment]
    released: _containers.RepeatedCompositeFieldContainer[PortAssignment]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., suspected: _Optional[_Iterable[_Union[PortAssignment, _Mapping]]] = ..., released: _Optional[_Iterable[_Union[PortAssignment, _Mapping]]] = ...) -> None: ...

class PortStatsRequest(_message.Message):
    __slots__ = ("read", "host")
    READ_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    host: str
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., host: _Optional[str] = ...) -> None: ...

class RangeStats(_message.Message):
    __slots__ = ("range", "host", "size", "used", "reserved", "free", "utilisation")
    RANGE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    UTILISATION_FIELD_NUMBER: _ClassVar[int]
    range: str
    host: str
    size: int
    used: int
    reserved: int
    free: int
    utilisation: float
    def __init__(self, range: _Optional[str] = ..., host: _Optional[str] = ..., size: _Optional[int] = ..., used: _Optional[int] = ..., reserved: _Optional[int] = ..., free: _Optional[int] = ..., utilisation: _Optional[float] = ...) -> None: ...

class PortStatsResponse(_message.Message):
    __slots__ = ("header", "ranges", "assignments", "reservations", "hosts")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    ranges: _containers.RepeatedCompositeFieldContainer[RangeStats]
    assignments: int
    reservations: int
    hosts: int
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., ranges: _Optional[_Iterable[_Union[RangeStats, _Mapping]]] = ..., assignments: _Optional[int] = ..., reservations: _Optional[int] = ..., hosts: _Optional[int] = ...) -> None: ...

class PortMap(_message.Message):
    __slots__ = ("format", "revision", "ranges", "reservations", "assignments", "services", "history", "observations")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    format: str
    revision: int
    ranges: _containers.RepeatedCompositeFieldContainer[PortRange]
    reservations: _containers.RepeatedCompositeFieldContainer[Reservation]
    assignments: _containers.RepeatedCompositeFieldContainer[PortAssignment]
    services: _containers.RepeatedCompositeFieldContainer[ServiceRecord]
    history: _containers.RepeatedCompositeFieldContainer[PortHistoryEntry]
    observations: _containers.RepeatedCompositeFieldContainer[HostObservation]
    def __init__(self, format: _Optional[str] = ..., revision: _Optional[int] = ..., ranges: _Optional[_Iterable[_Union[PortRange, _Mapping]]] = ..., reservations: _Optional[_Iterable[_Union[Reservation, _Mapping]]] = ..., assignments: _Optional[_Iterable[_Union[PortAssignment, _Mapping]]] = ..., services: _Optional[_Iterable[_Union[ServiceRecord, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[PortHistoryEntry, _Mapping]]] = ..., observations: _Optional[_Iterable[_Union[HostObservation, _Mapping]]] = ...) -> None: ...

class ExportPortsRequest(_message.Message):
    __slots__ = ("read",)
    READ_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ...) -> None: ...

class ExportPortsResponse(_message.Message):
    __slots__ = ("header", "map")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    map: PortMap
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., map: _Optional[_Union[PortMap, _Mapping]] = ...) -> None: ...

class ImportPortsRequest(_message.Message):
    __slots__ = ("map", "request_id")
    MAP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    map: PortMap
    request_id: str
    def __init__(self, map: _Optional[_Union[PortMap, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ImportPortsResponse(_message.Message):
    __slots__ = ("header", "assignments", "reservations", "ranges", "services", "leases_dropped")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    LEASES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    assignments: int
    reservations: int
    ranges: int
    services: int
    leases_dropped: int
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., assignments: _Optional[int] = ..., reservations: _Optional[int] = ..., ranges: _Optional[int] = ..., services: _Optional[int] = ..., leases_dropped: _Optional[int] = ...) -> None: ...

class RegisterServiceRequest(_message.Message):
    __slots__ = ("manifest", "request_id")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    manifest: ServiceManifest
    request_id: str
    def __init__(self, manifest: _Optional[_Union[ServiceManifest, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class RegisterServiceResponse(_message.Message):
    __slots__ = ("header", "service")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    service: ServiceRecord
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., service: _Optional[_Union[ServiceRecord, _Mapping]] = ...) -> None: ...

class DeregisterServiceRequest(_message.Message):
    __slots__ = ("host", "name", "request_id")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    host: str
    name: str
    request_id: str
    def __init__(self, host: _Optional[str] = ..., name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeregisterServiceResponse(_message.Message):
    __slots__ = ("header", "deregistered", "released")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DEREGISTERED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    deregistered: bool
    released: _containers.RepeatedCompositeFieldContainer[PortAssignment]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., deregistered: _Optional[bool] = ..., released: _Optional[_Iterable[_Union[PortAssignment, _Mapping]]] = ...) -> None: ...

class ListServicesRequest(_message.Message):
    __slots__ = ("read", "host", "name", "healthy")
    READ_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    host: str
    name: str
    healthy: bool
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., host: _Optional[str] = ..., name: _Optional[str] = ..., healthy: _Optional[bool] = ...) -> None: ...

class ReportHealthRequest(_message.Message):
    __slots__ = ("host", "name", "status", "output", "request_id")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    host: str
    name: str
    status: HealthStatus
    output: str
    request_id: str
    def __init__(self, host: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[_Union[HealthStatus, str]] = ..., output: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ReportHealthResponse(_message.Message):
    __slots__ = ("header", "health", "changed")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    health: ServiceHealth
    changed: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., health: _Optional[_Union[ServiceHealth, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class StartServiceRequest(_message.Message):
    __slots__ = ("host", "name", "request_id", "manifest")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    host: str
    name: str
    request_id: str
    manifest: ServiceManifest
    def __init__(self, host: _Optional[str] = ..., name: _Optional[str] = ..., request_id: _Optional[str] = ..., manifest: _Optional[_Union[ServiceManifest, _Mapping]] = ...) -> None: ...

class StartServiceResponse(_message.Message):
    __slots__ = ("header", "service", "existing", "placement")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    service: ServiceRecord
    existing: bool
    placement: str
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., service: _Optional[_Union[ServiceRecord, _Mapping]] = ..., existing: _Optional[bool] = ..., placement: _Optional[str] = ...) -> None: ...

class StopServiceRequest(_message.Message):
    __slots__ = ("host", "name", "request_id")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    host: str
    name: str
    request_id: str
    def __init__(self, host: _Optional[str] = ..., name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class StopServiceResponse(_message.Message):
    __slots__ = ("header", "service", "changed")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    service: ServiceRecord
    changed: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., service: _Optional[_Union[ServiceRecord, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class ReportRunRequest(_message.Message):
    __slots__ = ("host", "name", "state", "restarts", "last_exit_code", "pid", "message", "request_id")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    LAST_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    host: str
    name: str
    state: str
    restarts: int
    last_exit_code: int
    pid: int
    message: str
    request_id: str
    def __init__(self, host: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ..., restarts: _Optional[int] = ..., last_exit_code: _Optional[int] = ..., pid: _Optional[int] = ..., message: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ReportRunResponse(_message.Message):
    __slots__ = ("header", "run", "changed")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    run: RunStatus
    changed: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., run: _Optional[_Union[RunStatus, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class ServiceKey(_message.Message):
    __slots__ = ("host", "name")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    host: str
    name: str
    def __init__(self, host: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ReapCriticalRequest(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceKey]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceKey, _Mapping]]] = ...) -> None: ...

class ReapCriticalResult(_message.Message):
    __slots__ = ("deregistered",)
    DEREGISTERED_FIELD_NUMBER: _ClassVar[int]
    deregistered: _containers.RepeatedCompositeFieldContainer[ServiceKey]
    def __init__(self, deregistered: _Optional[_Iterable[_Union[ServiceKey, _Mapping]]] = ...) -> None: ...

class ListServicesResponse(_message.Message):
    __slots__ = ("header", "services")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    services: _containers.RepeatedCompositeFieldContainer[ServiceRecord]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., services: _Optional[_Iterable[_Union[ServiceRecord, _Mapping]]] = ...) -> None: ...

class PortsState(_message.Message):
    __slots__ = ("ranges", "reservations", "assignments", "services", "history", "history_totals", "observations", "leaks", "cursors", "hosts")
    RANGES_FIELD_NUMBER: _ClassVar[int]
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    HISTORY_TOTALS_FIELD_NUMBER: _ClassVar[int]
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    LEAKS_FIELD_NUMBER: _ClassVar[int]
    CURSORS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedCompositeFieldContainer[PortRange]
    reservations: _containers.RepeatedCompositeFieldContainer[Reservation]
    assignments: _containers.RepeatedCompositeFieldContainer[PortAssignment]
    services: _containers.RepeatedCompositeFieldContainer[ServiceRecord]
    history: _containers.RepeatedCompositeFieldContainer[PortHistoryEntry]
    history_totals: _containers.RepeatedCompositeFieldContainer[HistoryTotal]
    observations: _containers.RepeatedCompositeFieldContainer[HostObservation]
    leaks: _containers.RepeatedCompositeFieldContainer[LeakCount]
    cursors: _containers.RepeatedCompositeFieldContainer[AllocationCursor]
    hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ranges: _Optional[_Iterable[_Union[PortRange, _Mapping]]] = ..., reservations: _Optional[_Iterable[_Union[Reservation, _Mapping]]] = ..., assignments: _Optional[_Iterable[_Union[PortAssignment, _Mapping]]] = ..., services: _Optional[_Iterable[_Union[ServiceRecord, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[PortHistoryEntry, _Mapping]]] = ..., history_totals: _Optional[_Iterable[_Union[HistoryTotal, _Mapping]]] = ..., observations: _Optional[_Iterable[_Union[HostObservation, _Mapping]]] = ..., leaks: _Optional[_Iterable[_Union[LeakCount, _Mapping]]] = ..., cursors: _Optional[_Iterable[_Union[AllocationCursor, _Mapping]]] = ..., hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class HistoryTotal(_message.Message):
    __slots__ = ("service", "total")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    service: str
    total: int
    def __init__(self, service: _Optional[str] = ..., total: _Optional[int] = ...) -> None: ...

class LeakCount(_message.Message):
    __slots__ = ("host", "port", "passes", "observation_revision", "protocol")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PASSES_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_REVISION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    passes: int
    observation_revision: int
    protocol: PortProtocol
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ..., passes: _Optional[int] = ..., observation_revision: _Optional[int] = ..., protocol: _Optional[_Union[PortProtocol, str]] = ...) -> None: ...

class AllocationCursor(_message.Message):
    __slots__ = ("host", "range", "next")
    HOST_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    host: str
    range: str
    next: int
    def __init__(self, host: _Optional[str] = ..., range: _Optional[str] = ..., next: _Optional[int] = ...) -> None: ...
