from controlplane.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_FOLLOWER: _ClassVar[Role]
    ROLE_CANDIDATE: _ClassVar[Role]
    ROLE_LEADER: _ClassVar[Role]
    ROLE_LEARNER: _ClassVar[Role]
ROLE_UNSPECIFIED: Role
ROLE_FOLLOWER: Role
ROLE_CANDIDATE: Role
ROLE_LEADER: Role
ROLE_LEARNER: Role

class Member(_message.Message):
    __slots__ = ("id", "raft_address", "client_address", "role", "healthy", "voter", "match_index", "learner", "applied_index", "stable_since_unix_ms", "last_contact_unix_ms", "commit_index")
    ID_FIELD_NUMBER: _ClassVar[int]
    RAFT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    VOTER_FIELD_NUMBER: _ClassVar[int]
    MATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    STABLE_SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_CONTACT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    id: str
    raft_address: str
    client_address: str
    role: Role
    healthy: bool
    voter: bool
    match_index: int
    learner: bool
    applied_index: int
    stable_since_unix_ms: int
    last_contact_unix_ms: int
    commit_index: int
    def __init__(self, id: _Optional[str] = ..., raft_address: _Optional[str] = ..., client_address: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., healthy: _Optional[bool] = ..., voter: _Optional[bool] = ..., match_index: _Optional[int] = ..., learner: _Optional[bool] = ..., applied_index: _Optional[int] = ..., stable_since_unix_ms: _Optional[int] = ..., last_contact_unix_ms: _Optional[int] = ..., commit_index: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("node_id", "role", "leader_id", "leader_address", "term", "commit_index", "applied_index", "applied_revision", "members", "has_quorum", "raft_log_size", "version", "oldest_revision", "removed_member_ids", "ready", "membership_change", "durability", "peer_security", "apply_level", "cluster_level")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_REVISION_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    HAS_QUORUM_FIELD_NUMBER: _ClassVar[int]
    RAFT_LOG_SIZE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OLDEST_REVISION_FIELD_NUMBER: _ClassVar[int]
    REMOVED_MEMBER_IDS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_CHANGE_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    PEER_SECURITY_FIELD_NUMBER: _ClassVar[int]
    APPLY_LEVEL_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_LEVEL_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: Role
    leader_id: str
    leader_address: str
    term: int
    commit_index: int
    applied_index: int
    applied_revision: int
    members: _containers.RepeatedCompositeFieldContainer[Member]
    has_quorum: bool
    raft_log_size: int
    version: str
    oldest_revision: int
    removed_member_ids: _containers.RepeatedScalarFieldContainer[str]
    ready: bool
    membership_change: str
    durability: str
    peer_security: str
    apply_level: int
    cluster_level: int
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., leader_id: _Optional[str] = ..., leader_address: _Optional[str] = ..., term: _Optional[int] = ..., commit_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., applied_revision: _Optional[int] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., has_quorum: _Optional[bool] = ..., raft_log_size: _Optional[int] = ..., version: _Optional[str] = ..., oldest_revision: _Optional[int] = ..., removed_member_ids: _Optional[_Iterable[str]] = ..., ready: _Optional[bool] = ..., membership_change: _Optional[str] = ..., durability: _Optional[str] = ..., peer_security: _Optional[str] = ..., apply_level: _Optional[int] = ..., cluster_level: _Optional[int] = ...) -> None: ...

class AddMemberRequest(_message.Message):
    __slots__ = ("id", "raft_address", "client_address", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    RAFT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    raft_address: str
    client_address: str
    request_id: str
    def __init__(self, id: _Optional[str] = ..., raft_address: _Optional[str] = ..., client_address: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class AddMemberResponse(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    def __init__(self, members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ...) -> None: ...

class RemoveMemberRequest(_message.Message):
    __slots__ = ("id", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RemoveMemberResponse(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    def __init__(self, members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ...) -> None: ...

class TransferLeadershipRequest(_message.Message):
    __slots__ = ("target_id",)
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    target_id: str
    def __init__(self, target_id: _Optional[str] = ...) -> None: ...

class TransferLeadershipResponse(_message.Message):
    __slots__ = ("leader_id", "term")
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    leader_id: str
    term: int
    def __init__(self, leader_id: _Optional[str] = ..., term: _Optional[int] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("data", "revision", "total_bytes", "sha256", "include_auth", "request_id")
    DATA_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_AUTH_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    revision: int
    total_bytes: int
    sha256: str
    include_auth: bool
    request_id: str
    def __init__(self, data: _Optional[bytes] = ..., revision: _Optional[int] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., include_auth: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class RestoreResponse(_message.Message):
    __slots__ = ("revision", "keys", "auth_restored")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    AUTH_RESTORED_FIELD_NUMBER: _ClassVar[int]
    revision: int
    keys: int
    auth_restored: bool
    def __init__(self, revision: _Optional[int] = ..., keys: _Optional[int] = ..., auth_restored: _Optional[bool] = ...) -> None: ...

class Backup(_message.Message):
    __slots__ = ("format_version", "state", "state_sha256", "revision", "created_unix_ms", "node_id")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    state: bytes
    state_sha256: str
    revision: int
    created_unix_ms: int
    node_id: str
    def __init__(self, format_version: _Optional[int] = ..., state: _Optional[bytes] = ..., state_sha256: _Optional[str] = ..., revision: _Optional[int] = ..., created_unix_ms: _Optional[int] = ..., node_id: _Optional[str] = ...) -> None: ...
