"""The auth domain of the state machine: users, roles, permissions and bearer tokens.

Replicated like every other domain, so a revocation committed on the leader is in force on every
server as soon as it is applied there. Pure: token secrets never enter the log (only their
SHA-256), and expiry is a wall-clock deadline carried in the command and judged by the server at
check time (``authenticate``), never in apply.

Built-ins: role ``root`` (every verb on every domain; cannot be deleted or changed) and user
``admin`` holding it (cannot be deleted nor lose root): a cluster can never lock its operator out.

``allowed`` is the one permission check; it runs on every gRPC call, so it is a dictionary
lookup per role of the caller and a short scan of that role's permissions.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from controlplane.state import limits
from controlplane.state.journal import Journal
from controlplane.state.refusal import invalid, not_found, precondition, refusing
from controlplane.state.tables import BackupSource
from controlplane.v1 import auth_pb2, command_pb2, watch_pb2

DOMAIN_AUTH = "auth"
ROOT_ROLE = "root"
ADMIN_USER = "admin"
TOKEN_PREFIX = "cp1"

DOMAINS = ("kv", "ports", "membership", "models", "gossip", "cluster")
VERBS = ("read", "write", "alias", "admin")
# A granted verb also grants these (write implies read; moving an alias is a models write).
_IMPLIED: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "write": frozenset({"read", "write", "alias"}),
    "alias": frozenset({"read", "alias"}),
    "admin": frozenset({"read", "admin"}),
    "*": frozenset(VERBS),
}
MAX_PERMISSIONS_PER_ROLE = 256
MAX_ROLES_PER_USER = 64

CommandResult = command_pb2.CommandResult


@dataclass(frozen=True)
class Need:
    """What one call needs: a verb on a domain, for a resource (key, model name, host) and port.

    ``node`` names the node the call acts for (a heartbeat's node id): an agent certificate for
    that node id may make the call without holding the permission (the node authorizer);
    ``ANY_NODE`` lets every agent (leases, which carry no owner).
    """

    domain: str
    verb: str
    resource: str = ""
    port: int = 0
    node: str = ""

    def __str__(self) -> str:
        where = f" on {self.resource!r}" if self.resource else ""
        if self.port:
            where += f" port {self.port}"
        return f"{self.domain}:{self.verb}{where}"


ANY_NODE = "*"


@dataclass(frozen=True)
class Caller:
    """Who is calling: ``kind`` is user, agent (a node id, under the node authorizer) or server."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


# What an agent identity may do besides acting for its own node (``Need.node``).
AGENT_GRANTS = frozenset({("membership", "read"), ("gossip", "read"), ("models", "read")})


def _root_role() -> auth_pb2.AuthRole:
    return auth_pb2.AuthRole(name=ROOT_ROLE, permissions=[auth_pb2.Permission(domain="*", verb="*", resource="")])


def check_permission(permission: auth_pb2.Permission) -> str | None:
    """Why a permission cannot be granted, or None."""
    if permission.domain not in (*DOMAINS, "*"):
        return f"permission domain {permission.domain!r} is not one of {', '.join(DOMAINS)} or *"
    if permission.verb not in (*VERBS, "*"):
        return f"permission verb {permission.verb!r} is not one of {', '.join(VERBS)} or *"
    if len(permission.resource) > limits.MAX_KEY_BYTES:
        return f"permission resource is longer than {limits.MAX_KEY_BYTES} characters"
    if permission.domain == "ports" and permission.resource and _port_range(permission.resource) is None:
        return f"ports resource {permission.resource!r} is not '<host>' nor '<host>:<lo>-<hi>' (1 <= lo <= hi <= 65535)"
    return None


def _port_range(resource: str) -> tuple[str, int, int] | None:
    """'<host>' -> (host, 1, 65535); '<host>:<lo>-<hi>' -> (host, lo, hi); None if malformed."""
    host, sep, span = resource.rpartition(":")
    if not sep:
        return (resource, 1, 65535) if resource else None
    lo_text, dash, hi_text = span.partition("-")
    if not dash or not lo_text.isdigit() or not hi_text.isdigit() or not host:
        return None
    lo, hi = int(lo_text), int(hi_text)
    if not 1 <= lo <= hi <= 65535:
        return None
    return host, lo, hi


def permits(permission: auth_pb2.Permission, need: Need) -> bool:
    """Whether one granted permission covers one need."""
    if permission.domain not in ("*", need.domain):
        return False
    if need.verb not in _IMPLIED.get(permission.verb, frozenset()):
        return False
    resource = permission.resource
    if not resource:
        return True
    if need.domain == "ports":
        span = _port_range(resource)
        if span is None:
            return False
        host, lo, hi = span
        # A call on a whole host (no port) needs a permission on the whole host.
        if need.port == 0:
            return host == need.resource and (lo, hi) == (1, 65535)
        return host == need.resource and lo <= need.port <= hi
    return need.resource.startswith(resource)


def allowed(state: AuthTable, caller: Caller, need: Need) -> bool:
    """The permission check: may ``caller`` do ``need``? Default deny.

    Auth disabled: everyone may do everything. Servers are the cluster itself. Agents act on their
    own node only (the node authorizer) and read membership, gossip and models. Users hold roles.
    """
    if not state.enabled or caller.kind == "server":
        return True
    if caller.kind == "agent":
        if need.node and need.node in (caller.name, ANY_NODE):
            return True
        return (need.domain, need.verb) in AGENT_GRANTS
    if caller.kind != "user":
        return False
    user = state.users.get(caller.name)
    if user is None:
        return False
    for role_name in user.roles:
        role = state.roles.get(role_name)
        if role is None:
            continue
        for permission in role.permissions:
            if permits(permission, need):
                return True
    return False


def split_token(token: str) -> tuple[str, str] | None:
    """``cp1.<token_id>.<secret>`` -> (token_id, secret); None if it is not of that shape."""
    prefix, sep, rest = token.partition(".")
    token_id, sep2, secret = rest.partition(".")
    if prefix != TOKEN_PREFIX or not sep or not sep2 or not token_id or not secret:
        return None
    return token_id, secret


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class AuthTable:
    name: ClassVar[str] = "auth"
    state_type: ClassVar[type[auth_pb2.AuthState]] = auth_pb2.AuthState
    backup_noun: ClassVar[str] = "a bad auth state"

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.reset()

    def reset(self) -> None:
        self.enabled = True
        self.users: dict[str, auth_pb2.AuthUser] = {ADMIN_USER: auth_pb2.AuthUser(name=ADMIN_USER, roles=[ROOT_ROLE])}
        self.roles: dict[str, auth_pb2.AuthRole] = {ROOT_ROLE: _root_role()}
        self.tokens: dict[str, auth_pb2.AuthToken] = {}

    def handlers(self) -> dict[str, Callable[[command_pb2.Command], CommandResult]]:
        return {"auth": refusing(lambda: self._journal.revision, self._apply)}

    # ------------------------------------------------------------------ reads

    def authenticate(self, token: str, now_unix_ms: int) -> tuple[str, str]:
        """(the user a bearer token speaks for, "") or ("", why not: UNAUTHENTICATED). O(1)."""
        parts = split_token(token)
        if parts is None:
            return "", "the bearer token is not of the form cp1.<token_id>.<secret>"
        token_id, secret = parts
        record = self.tokens.get(token_id)
        if record is None or not hmac.compare_digest(record.secret_sha256, secret_hash(secret)):
            return "", f"token {token_id} is not known to this cluster"
        if record.revoked:
            return "", f"token {token_id} was revoked; ask an admin for a new one"
        if record.expires_unix_ms and now_unix_ms >= record.expires_unix_ms:
            return "", f"token {token_id} has expired; ask an admin for a new one"
        if record.user not in self.users:
            return "", f"token {token_id} belongs to user {record.user!r}, who was deleted"
        return record.user, ""

    def to_state(self) -> auth_pb2.AuthState:
        return auth_pb2.AuthState(
            disabled=not self.enabled,
            users=[self.users[name] for name in sorted(self.users)],
            roles=[self.roles[name] for name in sorted(self.roles)],
            tokens=[self.tokens[token_id] for token_id in sorted(self.tokens)],
        )

    def load_state(self, state: auth_pb2.AuthState | None) -> None:
        self.load(state)

    def check_backup(self, state: auth_pb2.AuthState | None, backup: BackupSource) -> None:
        if backup.include_auth and state is not None:
            self.validate_state(state)

    def restore_backup(self, state: auth_pb2.AuthState | None, backup: BackupSource) -> None:
        """Only when the restore asked for the backup's users, roles and tokens (``restore``)."""
        if backup.include_auth:
            self.restore(state)

    def load(self, state: auth_pb2.AuthState | None) -> None:
        """Replace the auth state; None (a snapshot from before auth) gives the defaults."""
        self.reset()
        if state is None:
            return
        self.enabled = not state.disabled
        for user in state.users:
            self.users[user.name] = auth_pb2.AuthUser(name=user.name, roles=list(user.roles))
        for role in state.roles:
            if role.name != ROOT_ROLE:
                self.roles[role.name] = auth_pb2.AuthRole(name=role.name, permissions=list(role.permissions))
        for token in state.tokens:
            self.tokens[token.token_id] = auth_pb2.AuthToken()
            self.tokens[token.token_id].CopyFrom(token)
        admin = self.users.setdefault(ADMIN_USER, auth_pb2.AuthUser(name=ADMIN_USER))
        if ROOT_ROLE not in admin.roles:
            admin.roles.append(ROOT_ROLE)

    @staticmethod
    def validate_state(state: auth_pb2.AuthState) -> None:
        """Raise Refused (INVALID_ARGUMENT) unless ``state`` is one this table could have written:
        valid, unique names; grantable permissions, none twice in a role; every role a user holds
        defined, none twice; tokens with a SHA-256. A token may name a user who is gone: deleting a
        user keeps its tokens (refused at check time), so every backup may hold such tokens."""
        users = {user.name for user in state.users}
        role_names = [role.name for role in state.roles]
        if len(users) != len(state.users) or len(set(role_names)) != len(role_names):
            raise invalid("the auth state names a user or a role twice")
        roles = {*role_names, ROOT_ROLE}
        for role in state.roles:
            _check(limits.check_name(role.name, "role name"))
            if len(role.permissions) > MAX_PERMISSIONS_PER_ROLE:
                raise invalid(f"role {role.name!r} has more than {MAX_PERMISSIONS_PER_ROLE} permissions")
            for permission in role.permissions:
                _check(check_permission(permission))
            granted = {permission.SerializeToString(deterministic=True) for permission in role.permissions}
            if len(granted) != len(role.permissions):
                # Revoking removes one copy: a duplicate would survive a revoke that reports success.
                raise invalid(f"role {role.name!r} holds a permission twice")
        for user in state.users:
            _check(limits.check_name(user.name, "user name"))
            if len(user.roles) > MAX_ROLES_PER_USER:
                raise invalid(f"user {user.name!r} holds more than {MAX_ROLES_PER_USER} roles")
            if len(set(user.roles)) != len(user.roles):
                raise invalid(f"user {user.name!r} holds a role twice")
            for role_name in user.roles:
                if role_name not in roles:
                    raise invalid(f"user {user.name!r} holds role {role_name!r}, which is not defined")
        token_ids: set[str] = set()
        for token in state.tokens:
            _check(limits.check_name(token.token_id, "token id"))
            if token.token_id in token_ids:
                raise invalid(f"token id {token.token_id} appears twice")
            token_ids.add(token.token_id)
            if len(token.secret_sha256) != 32:
                raise invalid(f"token {token.token_id}'s secret hash is not 32 bytes (SHA-256)")
            _check(limits.check_text(token.description, "token description"))

    def restore(self, state: auth_pb2.AuthState | None) -> None:
        """Take users, roles and tokens from a backup's (validated) auth state, for a restore that
        asked for them. Two things stay this cluster's: whether auth is enabled (a restore never
        turns checks off), and every token this cluster made unusable - revoked, or of a user it
        deleted - which stays on record as revoked, whether the backup holds it or not (so no later
        restore brings it back either). Two things a restore does bring back, as the backup had
        them: a user deleted here since the backup was taken (its old tokens stay revoked; delete
        it again), and tokens revoked on another cluster, which this one never saw (disaster
        recovery: revoke them again). docs/operations.md, Backup and restore."""
        enabled = self.enabled
        unusable = {
            token_id: token for token_id, token in self.tokens.items() if token.revoked or token.user not in self.users
        }
        self.load(state)
        self.enabled = enabled
        for token_id, token in unusable.items():
            kept = self.tokens.setdefault(token_id, auth_pb2.AuthToken())
            if not kept.token_id:
                kept.CopyFrom(token)
            kept.revoked = True

    # ------------------------------------------------------------------ commands

    def _changed(
        self, key: str, changed: bool, event_type: watch_pb2.EventType = watch_pb2.EVENT_TYPE_PUT
    ) -> CommandResult:
        if changed:
            self._journal.record_detail(DOMAIN_AUTH, key, event_type, None)
        return CommandResult(revision=self._journal.revision, auth=auth_pb2.AuthChangeResult(changed=changed))

    def _user(self, name: str) -> auth_pb2.AuthUser:
        user = self.users.get(name)
        if user is None:
            raise not_found(f"user {name!r} does not exist; 'cpctl users add {name}' creates it")
        return user

    def _role(self, name: str) -> auth_pb2.AuthRole:
        role = self.roles.get(name)
        if role is None:
            raise not_found(f"role {name!r} does not exist; 'cpctl roles add {name}' creates it")
        return role

    def _apply(self, command: command_pb2.Command) -> CommandResult:
        change = command.auth
        kind = change.WhichOneof("change")
        if kind == "set_enabled":
            changed = self.enabled != change.set_enabled
            self.enabled = change.set_enabled
            return self._changed("enabled", changed)
        if kind == "user_add":
            name = change.user_add
            _check(limits.check_name(name, "user name"))
            if name in self.users:
                return self._changed(f"users/{name}", False)
            self.users[name] = auth_pb2.AuthUser(name=name)
            return self._changed(f"users/{name}", True)
        if kind == "user_delete":
            name = change.user_delete
            if name == ADMIN_USER:
                raise precondition("user 'admin' is built in and cannot be deleted")
            if self.users.pop(name, None) is None:
                return self._changed(f"users/{name}", False)
            return self._changed(f"users/{name}", True, watch_pb2.EVENT_TYPE_DELETE)
        if kind in ("user_grant_role", "user_revoke_role"):
            pair = change.user_grant_role if kind == "user_grant_role" else change.user_revoke_role
            user = self._user(pair.user)
            if kind == "user_grant_role":
                self._role(pair.role)
                if pair.role in user.roles:
                    return self._changed(f"users/{pair.user}", False)
                if len(user.roles) >= MAX_ROLES_PER_USER:
                    raise invalid(f"user {pair.user!r} already holds {MAX_ROLES_PER_USER} roles, the most allowed")
                user.roles.append(pair.role)
                return self._changed(f"users/{pair.user}", True)
            if pair.user == ADMIN_USER and pair.role == ROOT_ROLE:
                raise precondition("user 'admin' always holds role 'root'")
            if pair.role not in user.roles:
                return self._changed(f"users/{pair.user}", False)
            user.roles.remove(pair.role)
            return self._changed(f"users/{pair.user}", True)
        if kind == "role_add":
            name = change.role_add
            _check(limits.check_name(name, "role name"))
            if name in self.roles:
                return self._changed(f"roles/{name}", False)
            self.roles[name] = auth_pb2.AuthRole(name=name)
            return self._changed(f"roles/{name}", True)
        if kind == "role_delete":
            name = change.role_delete
            if name == ROOT_ROLE:
                raise precondition("role 'root' is built in and cannot be deleted")
            if self.roles.pop(name, None) is None:
                return self._changed(f"roles/{name}", False)
            for user in self.users.values():
                if name in user.roles:
                    user.roles.remove(name)
            return self._changed(f"roles/{name}", True, watch_pb2.EVENT_TYPE_DELETE)
        if kind in ("role_grant_permission", "role_revoke_permission"):
            grant = kind == "role_grant_permission"
            target = change.role_grant_permission if grant else change.role_revoke_permission
            if target.role == ROOT_ROLE:
                raise precondition("role 'root' is built in and cannot be changed")
            role = self._role(target.role)
            permission = target.permission
            present = permission in role.permissions
            if grant:
                _check(check_permission(permission))
                if present:
                    return self._changed(f"roles/{target.role}", False)
                if len(role.permissions) >= MAX_PERMISSIONS_PER_ROLE:
                    raise invalid(f"role {target.role!r} already has {MAX_PERMISSIONS_PER_ROLE} permissions")
                role.permissions.append(permission)
                return self._changed(f"roles/{target.role}", True)
            if not present:
                return self._changed(f"roles/{target.role}", False)
            role.permissions.remove(permission)
            return self._changed(f"roles/{target.role}", True)
        if kind == "token_create":
            token = change.token_create
            _check(limits.check_name(token.token_id, "token id"))
            self._user(token.user)
            if len(token.secret_sha256) != 32:
                raise invalid("a token's secret hash must be 32 bytes (SHA-256)")
            _check(limits.check_text(token.description, "token description"))
            if token.token_id in self.tokens:
                raise precondition(f"token id {token.token_id} is taken")
            record = auth_pb2.AuthToken()
            record.CopyFrom(token)
            record.revoked = False
            record.created_unix_ms = self._journal.time_unix_ms
            self.tokens[token.token_id] = record
            return self._changed(f"tokens/{token.token_id}", True)
        if kind == "token_revoke":
            revoked = self.tokens.get(change.token_revoke)
            if revoked is None:
                raise not_found(f"token {change.token_revoke!r} does not exist; 'cpctl tokens list' shows them")
            changed = not revoked.revoked
            revoked.revoked = True
            return self._changed(f"tokens/{revoked.token_id}", changed)
        raise invalid(f"unknown auth change {kind!r}: is this server older than the one that proposed it?")


def _check(problem: str | None) -> None:
    if problem:
        raise invalid(problem)
