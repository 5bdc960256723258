from controlplane.v1 import common_pb2 as _common_pb2
from controlplane.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Lease(_message.Message):
    __slots__ = ("id", "ttl_ms", "granted_unix_ms", "renewed_unix_ms", "attached_ports")
    ID_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    GRANTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RENEWED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_PORTS_FIELD_NUMBER: _ClassVar[int]
    id: int
    ttl_ms: int
    granted_unix_ms: int
    renewed_unix_ms: int
    attached_ports: int
    def __init__(self, id: _Optional[int] = ..., ttl_ms: _Optional[int] = ..., granted_unix_ms: _Optional[int] = ..., renewed_unix_ms: _Optional[int] = ..., attached_ports: _Optional[int] = ...) -> None: ...

class LeasesState(_message.Message):
    __slots__ = ("leases", "next_lease_id")
    LEASES_FIELD_NUMBER: _ClassVar[int]
    NEXT_LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    next_lease_id: int
    def __init__(self, leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ..., next_lease_id: _Optional[int] = ...) -> None: ...

class GrantLeaseRequest(_message.Message):
    __slots__ = ("ttl_ms", "request_id")
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ttl_ms: int
    request_id: str
    def __init__(self, ttl_ms: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class GrantLeaseResponse(_message.Message):
    __slots__ = ("header", "lease")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    lease: Lease
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., lease: _Optional[_Union[Lease, _Mapping]] = ...) -> None: ...

class KeepAliveRequest(_message.Message):
    __slots__ = ("lease_id", "request_id")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    request_id: str
    def __init__(self, lease_id: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class KeepAliveResponse(_message.Message):
    __slots__ = ("header", "lease")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    lease: Lease
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., lease: _Optional[_Union[Lease, _Mapping]] = ...) -> None: ...

class RevokeLeaseRequest(_message.Message):
    __slots__ = ("lease_id", "request_id")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    request_id: str
    def __init__(self, lease_id: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class RevokeLeaseResponse(_message.Message):
    __slots__ = ("header", "revoked", "released_ports")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_PORTS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    revoked: bool
    released_ports: int
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., revoked: _Optional[bool] = ..., released_ports: _Optional[int] = ...) -> None: ...

class ListLeasesRequest(_message.Message):
    __slots__ = ("read",)
    READ_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ...) -> None: ...

class ListLeasesResponse(_message.Message):
    __slots__ = ("header", "leases")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ...) -> None: ...

class ExpireLeases(_message.Message):
    __slots__ = ("lease_ids",)
    LEASE_IDS_FIELD_NUMBER: _ClassVar[int]
    lease_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, lease_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ExpireLeasesResult(_message.Message):
    __slots__ = ("expired",)
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    expired: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, expired: _Optional[_Iterable[int]] = ...) -> None: ...

class LeaseCheckpoint(_message.Message):
    __slots__ = ("renewals",)
    RENEWALS_FIELD_NUMBER: _ClassVar[int]
    renewals: _containers.RepeatedCompositeFieldContainer[LeaseRenewal]
    def __init__(self, renewals: _Optional[_Iterable[_Union[LeaseRenewal, _Mapping]]] = ...) -> None: ...

class LeaseRenewal(_message.Message):
    __slots__ = ("lease_id", "renewed_unix_ms")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    RENEWED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    renewed_unix_ms: int
    def __init__(self, lease_id: _Optional[int] = ..., renewed_unix_ms: _Optional[int] = ...) -> None: ...

class LeaseCheckpointResult(_message.Message):
    __slots__ = ("updated",)
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    updated: int
    def __init__(self, updated: _Optional[int] = ...) -> None: ...
