from controlplane.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Permission(_message.Message):
    __slots__ = ("domain", "verb", "resource")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    VERB_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    domain: str
    verb: str
    resource: str
    def __init__(self, domain: _Optional[str] = ..., verb: _Optional[str] = ..., resource: _Optional[str] = ...) -> None: ...

class AuthRole(_message.Message):
    __slots__ = ("name", "permissions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    permissions: _containers.RepeatedCompositeFieldContainer[Permission]
    def __init__(self, name: _Optional[str] = ..., permissions: _Optional[_Iterable[_Union[Permission, _Mapping]]] = ...) -> None: ...

class AuthUser(_message.Message):
    __slots__ = ("name", "roles")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    name: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ...) -> None: ...

class AuthToken(_message.Message):
    __slots__ = ("token_id", "user", "secret_sha256", "expires_unix_ms", "revoked", "created_unix_ms", "description")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    SECRET_SHA256_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    user: str
    secret_sha256: bytes
    expires_unix_ms: int
    revoked: bool
    created_unix_ms: int
    description: str
    def __init__(self, token_id: _Optional[str] = ..., user: _Optional[str] = ..., secret_sha256: _Optional[bytes] = ..., expires_unix_ms: _Optional[int] = ..., revoked: _Optional[bool] = ..., created_unix_ms: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class AuthState(_message.Message):
    __slots__ = ("disabled", "users", "roles", "tokens")
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    disabled: bool
    users: _containers.RepeatedCompositeFieldContainer[AuthUser]
    roles: _containers.RepeatedCompositeFieldContainer[AuthRole]
    tokens: _containers.RepeatedCompositeFieldContainer[AuthToken]
    def __init__(self, disabled: _Optional[bool] = ..., users: _Optional[_Iterable[_Union[AuthUser, _Mapping]]] = ..., roles: _Optional[_Iterable[_Union[AuthRole, _Mapping]]] = ..., tokens: _Optional[_Iterable[_Union[AuthToken, _Mapping]]] = ...) -> None: ...

class AuthCommand(_message.Message):
    __slots__ = ("set_enabled", "user_add", "user_delete", "user_grant_role", "user_revoke_role", "role_add", "role_delete", "role_grant_permission", "role_revoke_permission", "token_create", "token_revoke")
    SET_ENABLED_FIELD_NUMBER: _ClassVar[int]
    USER_ADD_FIELD_NUMBER: _ClassVar[int]
    USER_DELETE_FIELD_NUMBER: _ClassVar[int]
    USER_GRANT_ROLE_FIELD_NUMBER: _ClassVar[int]
    USER_REVOKE_ROLE_FIELD_NUMBER: _ClassVar[int]
    ROLE_ADD_FIELD_NUMBER: _ClassVar[int]
    ROLE_DELETE_FIELD_NUMBER: _ClassVar[int]
    ROLE_GRANT_PERMISSION_FIELD_NUMBER: _ClassVar[int]
    ROLE_REVOKE_PERMISSION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_CREATE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_REVOKE_FIELD_NUMBER: _ClassVar[int]
    set_enabled: bool
    user_add: str
    user_delete: str
    user_grant_role: UserRole
    user_revoke_role: UserRole
    role_add: str
    role_delete: str
    role_grant_permission: RolePermission
    role_revoke_permission: RolePermission
    token_create: AuthToken
    token_revoke: str
    def __init__(self, set_enabled: _Optional[bool] = ..., user_add: _Optional[str] = ..., user_delete: _Optional[str] = ..., user_grant_role: _Optional[_Union[UserRole, _Mapping]] = ..., user_revoke_role: _Optional[_Union[UserRole, _Mapping]] = ..., role_add: _Optional[str] = ..., role_delete: _Optional[str] = ..., role_grant_permission: _Optional[_Union[RolePermission, _Mapping]] = ..., role_revoke_permission: _Optional[_Union[RolePermission, _Mapping]] = ..., token_create: _Optional[_Union[AuthToken, _Mapping]] = ..., token_revoke: _Optional[str] = ...) -> None: ...

class UserRole(_message.Message):
    __slots__ = ("user", "role")
    USER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    user: str
    role: str
    def __init__(self, user: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class RolePermission(_message.Message):
    __slots__ = ("role", "permission")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_FIELD_NUMBER: _ClassVar[int]
    role: str
    permission: Permission
    def __init__(self, role: _Optional[str] = ..., permission: _Optional[_Union[Permission, _Mapping]] = ...) -> None: ...

class AuthChangeResult(_message.Message):
    __slots__ = ("changed",)
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    def __init__(self, changed: _Optional[bool] = ...) -> None: ...

class AuthStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AuthStatusResponse(_message.Message):
    __slots__ = ("enabled", "identity", "revision")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    identity: str
    revision: int
    def __init__(self, enabled: _Optional[bool] = ..., identity: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class SetEnabledRequest(_message.Message):
    __slots__ = ("enabled", "request_id")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    request_id: str
    def __init__(self, enabled: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class AuthChangeResponse(_message.Message):
    __slots__ = ("changed", "revision")
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    revision: int
    def __init__(self, changed: _Optional[bool] = ..., revision: _Optional[int] = ...) -> None: ...

class AddUserRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteUserRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ListUsersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListUsersResponse(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[AuthUser]
    def __init__(self, users: _Optional[_Iterable[_Union[AuthUser, _Mapping]]] = ...) -> None: ...

class GrantRoleRequest(_message.Message):
    __slots__ = ("user", "role", "request_id")
    USER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user: str
    role: str
    request_id: str
    def __init__(self, user: _Optional[str] = ..., role: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RevokeRoleRequest(_message.Message):
    __slots__ = ("user", "role", "request_id")
    USER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user: str
    role: str
    request_id: str
    def __init__(self, user: _Optional[str] = ..., role: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class AddRoleRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteRoleRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ListRolesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRolesResponse(_message.Message):
    __slots__ = ("roles",)
    ROLES_FIELD_NUMBER: _ClassVar[int]
    roles: _containers.RepeatedCompositeFieldContainer[AuthRole]
    def __init__(self, roles: _Optional[_Iterable[_Union[AuthRole, _Mapping]]] = ...) -> None: ...

class GrantPermissionRequest(_message.Message):
    __slots__ = ("role", "permission", "request_id")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    role: str
    permission: Permission
    request_id: str
    def __init__(self, role: _Optional[str] = ..., permission: _Optional[_Union[Permission, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class RevokePermissionRequest(_message.Message):
    __slots__ = ("role", "permission", "request_id")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    role: str
    permission: Permission
    request_id: str
    def __init__(self, role: _Optional[str] = ..., permission: _Optional[_Union[Permission, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("user", "ttl_s", "description", "request_id")
    USER_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user: str
    ttl_s: int
    description: str
    request_id: str
    def __init__(self, user: _Optional[str] = ..., ttl_s: _Optional[int] = ..., description: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "token_id", "expires_unix_ms", "revision")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    token: str
    token_id: str
    expires_unix_ms: int
    revision: int
    def __init__(self, token: _Optional[str] = ..., token_id: _Optional[str] = ..., expires_unix_ms: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: str
    def __init__(self, user: _Optional[str] = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[AuthToken]
    def __init__(self, tokens: _Optional[_Iterable[_Union[AuthToken, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("token_id", "request_id")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    request_id: str
    def __init__(self, token_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("identity", "permission")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_FIELD_NUMBER: _ClassVar[int]
    identity: str
    permission: Permission
    def __init__(self, identity: _Optional[str] = ..., permission: _Optional[_Union[Permission, _Mapping]] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("allowed", "reason")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    reason: str
    def __init__(self, allowed: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class WatchAuditRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("time_unix_ms", "node_id", "who", "method", "resource", "code", "peer", "missed")
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    time_unix_ms: int
    node_id: str
    who: str
    method: str
    resource: str
    code: str
    peer: str
    missed: int
    def __init__(self, time_unix_ms: _Optional[int] = ..., node_id: _Optional[str] = ..., who: _Optional[str] = ..., method: _Optional[str] = ..., resource: _Optional[str] = ..., code: _Optional[str] = ..., peer: _Optional[str] = ..., missed: _Optional[int] = ...) -> None: ...
