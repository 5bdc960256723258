"""Users, roles, permissions and tokens for the SDK (``client.auth``): result types and the RPCs.

etcd's clientv3 shape: a program can provision who may do what without shelling out to ``cpctl``.
Like ``_ports``, no protobuf type reaches a caller: results are frozen dataclasses whose fields
carry the names of ``proto/controlplane/v1/auth.proto``. A token's secret never comes back after
it was created (``AuthToken.secret_sha256`` is left empty by the server and not a field here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from controlplane import errors
from controlplane.client._base import Rpc, serialize
from controlplane.client._kv import Member
from controlplane.v1 import auth_pb2


@dataclass(frozen=True, slots=True)
class Permission:
    """A verb ("read", "write", "alias", "admin", or "*") on a domain ("kv", "ports", "membership",
    "models", "gossip", "cluster", or "*"), for the resources ``resource`` names: a KV key prefix,
    a model name, a host and port range ("h1:8000-8099"); empty for all of the domain."""

    domain: str
    verb: str
    resource: str = ""


@dataclass(frozen=True, slots=True)
class AuthUser:
    name: str
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuthRole:
    name: str
    permissions: tuple[Permission, ...]


@dataclass(frozen=True, slots=True)
class AuthToken:
    """A bearer token as listed: never its secret."""

    token_id: str
    user: str
    expires_unix_ms: int
    revoked: bool
    created_unix_ms: int
    description: str


@dataclass(frozen=True, slots=True)
class CreatedToken:
    """A new bearer token. ``token`` (``cp1.<token_id>.<secret>``) is shown this once: the cluster
    keeps only its hash."""

    token: str
    token_id: str
    expires_unix_ms: int
    revision: int


@dataclass(frozen=True, slots=True)
class AuthStatus:
    enabled: bool
    #: Who the cluster takes the caller for ("user:alice", "agent:n1"); empty without a credential.
    identity: str
    revision: int


@dataclass(frozen=True, slots=True)
class AuthChange:
    #: False when the state already was as asked (adding a user who exists is refused instead).
    changed: bool
    revision: int


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One changing call as the server that judged it wrote it to its audit log."""

    time_unix_ms: int
    #: The server that judged the call.
    node_id: str
    #: The caller ("user:alice", "agent:n1"); empty when it sent no credential.
    who: str
    #: The full gRPC method, "/controlplane.v1.KV/Put".
    method: str
    #: What the call named (keys, model names, hosts), comma-separated; may be empty.
    resource: str
    #: The outcome: "OK", "PERMISSION_DENIED", "INVALID_ARGUMENT", ...
    code: str
    #: The caller's address as gRPC reports it.
    peer: str
    #: Records of this server skipped just before this one because the reader fell behind (its
    #: audit.log still has them).
    missed: int


#: Records an audit watch holds for its reader. A reader that falls further behind stops reading
#: the streams, and each server then skips records for it and says how many (``missed``).
AUDIT_BUFFER = 1024


def audit_servers(members: Sequence[Member], endpoints: Sequence[str]) -> dict[str, str]:
    """Whom an audit watch follows, node id -> client address: every member the cluster lists
    with a client address, or the endpoints themselves (named by address) when it lists none."""
    servers = {member.id: member.client_address for member in members if member.client_address}
    return servers or {address: address for address in endpoints}


#: Called by an audit watch with (node id, address, what happened): ``"following"`` once that
#: server's stream subscribed, or why it broke (``"UNAVAILABLE: ..."``) before it is followed again.
AuditStreamChange = Callable[[str, str, str], None]


def audit_subscribed(initial_metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
    """Whether a stream's headers say the server subscribed it (it sends them only then; a refused
    call carries none, and its status may arrive after its empty headers)."""
    return any(key == errors.AUDIT_SUBSCRIBED_KEY for key, _ in initial_metadata or ())


def audit_stream_error(exc: grpc.RpcError) -> errors.ControlPlaneError | None:
    """The error that ends an audit watch: an answer about the caller (``PermissionDenied``,
    ``Unauthenticated``). None for anything else, which concerns that one server for now (it is
    restarting, cut off, stopping with CANCELLED, rate-limiting, keeps no audit log, or failed):
    follow it again, with backoff."""
    error = errors.error_from_rpc(exc)
    return error if isinstance(error, errors.PermissionDenied | errors.Unauthenticated) else None


def open_audit_stream(channel: grpc.Channel | grpc.aio.Channel) -> Any:
    """An ``Auth.WatchAudit`` stream on ``channel`` (sync or asyncio: the call is the same)."""
    read = channel.unary_stream(
        WATCH_AUDIT.path, request_serializer=serialize, response_deserializer=auth_pb2.AuditRecord.FromString
    )
    return read(auth_pb2.WatchAuditRequest())


def follow_failure(name: str, address: str, exc: Exception) -> errors.ControlPlaneError:
    """The error that ends an audit watch when following ``name`` failed with ``exc``."""
    if isinstance(exc, errors.ControlPlaneError):
        return exc  # an answer about the caller, or credentials that cannot work
    return errors.Internal(f"following {name} at {address} failed: {type(exc).__name__}: {exc}")


def describe_rpc_error(exc: grpc.RpcError) -> str:
    """``"UNAVAILABLE: connection refused"``: why a stream broke, for an ``AuditStreamChange``."""
    details = exc.details()
    return f"{exc.code().name}: {details}" if details else exc.code().name


def permission_message(permission: Permission | tuple[str, str] | tuple[str, str, str]) -> auth_pb2.Permission:
    """A permission as the wire carries it; a tuple is (domain, verb[, resource])."""
    if isinstance(permission, Permission):
        return auth_pb2.Permission(domain=permission.domain, verb=permission.verb, resource=permission.resource)
    if not isinstance(permission, tuple) or len(permission) not in (2, 3):
        raise ValueError(f"a permission is a Permission or a (domain, verb[, resource]) tuple, not {permission!r}")
    return auth_pb2.Permission(**dict(zip(("domain", "verb", "resource"), permission, strict=False)))


def ttl_seconds(ttl: float) -> int:
    """A token's lifetime in whole seconds: 0 (never expires), or a positive time rounded up. A
    fraction of a second must not round down to 0, which would mean "never"."""
    if not math.isfinite(ttl) or ttl < 0:
        raise ValueError(f"ttl must be 0 (never expires) or a positive number of seconds, not {ttl!r}")
    return math.ceil(ttl)


STATUS = Rpc("/controlplane.v1.Auth/Status", auth_pb2.AuthStatusResponse)
SET_ENABLED = Rpc("/controlplane.v1.Auth/SetEnabled", auth_pb2.AuthChangeResponse)
ADD_USER = Rpc("/controlplane.v1.Auth/AddUser", auth_pb2.AuthChangeResponse)
DELETE_USER = Rpc("/controlplane.v1.Auth/DeleteUser", auth_pb2.AuthChangeResponse)
LIST_USERS = Rpc("/controlplane.v1.Auth/ListUsers", auth_pb2.ListUsersResponse)
GRANT_ROLE = Rpc("/controlplane.v1.Auth/GrantRole", auth_pb2.AuthChangeResponse)
REVOKE_ROLE = Rpc("/controlplane.v1.Auth/RevokeRole", auth_pb2.AuthChangeResponse)
ADD_ROLE = Rpc("/controlplane.v1.Auth/AddRole", auth_pb2.AuthChangeResponse)
DELETE_ROLE = Rpc("/controlplane.v1.Auth/DeleteRole", auth_pb2.AuthChangeResponse)
LIST_ROLES = Rpc("/controlplane.v1.Auth/ListRoles", auth_pb2.ListRolesResponse)
GRANT_PERMISSION = Rpc("/controlplane.v1.Auth/GrantPermission", auth_pb2.AuthChangeResponse)
REVOKE_PERMISSION = Rpc("/controlplane.v1.Auth/RevokePermission", auth_pb2.AuthChangeResponse)
CREATE_TOKEN = Rpc("/controlplane.v1.Auth/CreateToken", auth_pb2.CreateTokenResponse)
LIST_TOKENS = Rpc("/controlplane.v1.Auth/ListTokens", auth_pb2.ListTokensResponse)
REVOKE_TOKEN = Rpc("/controlplane.v1.Auth/RevokeToken", auth_pb2.AuthChangeResponse)
WATCH_AUDIT = Rpc("/controlplane.v1.Auth/WatchAudit", auth_pb2.AuditRecord)
