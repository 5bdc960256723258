"""The Auth gRPC service: a thin servicer over the replicated auth domain (state/auth.py).

Every change is one ``Command.auth`` through the log. A token's secret is minted here (32 random
bytes), returned once, and never replicated: the log carries only its SHA-256. Reads are
linearizable: an admin who just revoked a token and lists them sees it revoked.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from controlplane.errors import AUDIT_SUBSCRIBED_KEY, FailedPrecondition, InvalidArgument
from controlplane.server.audit import AuditLog
from controlplane.server.authz import Authorizer, caller_kind
from controlplane.state.auth import DOMAINS, TOKEN_PREFIX, VERBS, AuthTable, Caller, Need, allowed, secret_hash
from controlplane.v1 import auth_pb2, auth_pb2_grpc, command_pb2, common_pb2

if TYPE_CHECKING:
    from controlplane.server.node import Node

_LINEARIZABLE = common_pb2.ReadOptions(consistency=common_pb2.CONSISTENCY_LINEARIZABLE)
MAX_TOKEN_TTL_S = 10 * 365 * 24 * 3600


class AuthService(auth_pb2_grpc.AuthServicer):
    def __init__(self, node: Node, authorizer: Authorizer, audit: AuditLog | None = None) -> None:
        self._node = node
        self._authorizer = authorizer
        self._audit = audit

    async def _change(self, request_id: str, change: auth_pb2.AuthCommand) -> auth_pb2.AuthChangeResponse:
        result = await self._node.write(command_pb2.Command(request_id=request_id, auth=change))
        return auth_pb2.AuthChangeResponse(changed=result.auth.changed, revision=result.revision)

    async def _read(self, context: grpc.aio.ServicerContext) -> None:
        remaining = context.time_remaining()
        await self._node.prepare_read(_LINEARIZABLE, remaining if remaining and remaining > 0 else None)

    async def Status(
        self, request: auth_pb2.AuthStatusRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.AuthStatusResponse:
        caller = self._authorizer.identify(context)
        enabled, revision = self._node.read_table(AuthTable, lambda auth: auth.enabled)
        return auth_pb2.AuthStatusResponse(enabled=enabled, identity=str(caller) if caller else "", revision=revision)

    async def SetEnabled(
        self, request: auth_pb2.SetEnabledRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.AuthChangeResponse:
        return await self._change(request.request_id, auth_pb2.AuthCommand(set_enabled=request.enabled))

    async def AddUser(
        self, request: auth_pb2.AddUserRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.AuthChangeResponse:
        return await self._change(request.request_id, auth_pb2.AuthCommand(user_add=request.name))

    async def DeleteUser(
        self, request: auth_pb2.DeleteUserRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.AuthChangeResponse:
        return await self._change(request.request_id, auth_pb2.AuthCommand(user_delete=request.name))

    async def ListUsers(
        self, request: auth_pb2.ListUsersRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListUsersResponse:
        await self._read(context)
        state, _ = self._node.read_table(AuthTable, lambda auth: auth.to_state())
        return auth_pb2.ListUsersResponse(users=state.users)

    async def GrantRole(
        self, request: auth_pb2.GrantRoleRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.AuthChangeResponse:
        pair = auth_pb2.UserRole(user=request.user, role=request.role)
        return await self._change(request.request_id, auth_pb2.AuthCommand(user_grant_role=pair))

    async def RevokeRole(
        self, request: auth_pb2.RevokeRoleRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.AuthChangeResponse:
        pair = auth_pb2.UserRole(user=request.user, role=request.role)
        return await self._change(request.request_id, auth_pb2.AuthCommand(user_revoke_role=pair))

    async def AddRole(
        self, request: auth_pb2.AddRoleRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.AuthChangeResponse:
        return await self._change(request.request_id, auth_pb2.AuthCommand(role_add=request.name))

    async def DeleteRole(
        self, request: auth_pb2.DeleteRoleRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.AuthChangeResponse:
        return await self._change(request.request_id, auth_pb2.AuthCommand(role_delete=request.name))

    async def ListRoles(
        self, request: auth_pb2.ListRolesRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListRolesResponse:
        await self._read(context)
        state, _ = self._node.read_table(AuthTable, lambda auth: auth.to_state())
        return auth_pb2.ListRolesResponse(roles=state.roles)

    async def GrantPermission(
        self, request: auth_pb2.GrantPermissionRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.AuthChangeResponse:
        target = auth_pb2.RolePermission(role=request.role, permission=request.permission)
        return await self._change(request.request_id, auth_pb2.AuthCommand(role_grant_permission=target))

    async def RevokePermission(
        self, request: auth_pb2.RevokePermissionRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.AuthChangeResponse:
        target = auth_pb2.RolePermission(role=request.role, permission=request.permission)
        return await self._change(request.request_id, auth_pb2.AuthCommand(role_revoke_permission=target))

    async def CreateToken(
        self, request: auth_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreateTokenResponse:
        if not 0 <= request.ttl_s <= MAX_TOKEN_TTL_S:
            raise InvalidArgument(f"ttl_s must be within 0 (never expires) and {MAX_TOKEN_TTL_S} (10 years)")
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        # The deadline is this server's wall clock: expiry is judged against wall clocks at check time.
        expires = int(time.time() * 1000) + request.ttl_s * 1000 if request.ttl_s else 0
        record = auth_pb2.AuthToken(
            token_id=token_id,
            user=request.user,
            secret_sha256=secret_hash(secret),
            expires_unix_ms=expires,
            description=request.description,
        )
        result = await self._node.write(
            command_pb2.Command(request_id=request.request_id, auth=auth_pb2.AuthCommand(token_create=record))
        )
        # A retry of a creation that already applied gets the first attempt's result (dedupe by
        # request id), and that attempt's secret, which only it knew: this attempt's was never
        # stored. Answering with it would hand out a token that does not work. A follower answers
        # as soon as the leader has, and applies the entry a moment later: read once it has.
        remaining = context.time_remaining()
        await self._node.wait_for_revision(result.revision, remaining if remaining and remaining > 0 else None)
        stored, _ = self._node.read_table(AuthTable, lambda auth: auth.tokens.get(token_id))
        if stored is None or stored.secret_sha256 != record.secret_sha256:
            raise FailedPrecondition(
                f"request {request.request_id!r} already created a token for {request.user!r} in an earlier "
                "attempt whose answer was lost, and its secret cannot be shown again: revoke the user's newest "
                "token (list them with `cpctl tokens list`) and create another with a new request id"
            )
        return auth_pb2.CreateTokenResponse(
            token=f"{TOKEN_PREFIX}.{token_id}.{secret}",
            token_id=token_id,
            expires_unix_ms=expires,
            revision=result.revision,
        )

    async def ListTokens(
        self, request: auth_pb2.ListTokensRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListTokensResponse:
        await self._read(context)
        response = auth_pb2.ListTokensResponse()
        state, _ = self._node.read_table(AuthTable, lambda auth: auth.to_state())
        for token in state.tokens:
            if request.user and token.user != request.user:
                continue
            shown = response.tokens.add()
            shown.CopyFrom(token)
            shown.ClearField("secret_sha256")
        return response

    async def RevokeToken(
        self, request: auth_pb2.RevokeTokenRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.AuthChangeResponse:
        return await self._change(request.request_id, auth_pb2.AuthCommand(token_revoke=request.token_id))

    async def Check(self, request: auth_pb2.CheckRequest, context: grpc.aio.ServicerContext) -> auth_pb2.CheckResponse:
        # This server's state, as the interceptor judges every call here: no linearizable read, so
        # a port guarded with it sees a revocation as soon as this server applied it.
        caller = _caller(request.identity)
        permission = request.permission
        if permission.domain not in DOMAINS or permission.verb not in VERBS:
            raise InvalidArgument(
                f"check a permission of one domain ({', '.join(DOMAINS)}) and one verb ({', '.join(VERBS)}); "
                f"got {permission.domain!r}:{permission.verb!r}"
            )
        need = Need(permission.domain, permission.verb, permission.resource)
        if caller.kind == "server" and caller.name in self._node.removed_ids():
            # As the client port judges it (authz.Authorizer): a removed server's certificate speaks for nobody.
            return auth_pb2.CheckResponse(allowed=False, reason=f"server {caller.name} was removed from this cluster")
        held, _ = self._node.read_table(AuthTable, lambda auth: allowed(auth, caller, need))
        if held:
            return auth_pb2.CheckResponse(allowed=True)
        return auth_pb2.CheckResponse(allowed=False, reason=f"this needs {need}; {caller} does not hold it")

    async def WatchAudit(
        self, request: auth_pb2.WatchAuditRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[auth_pb2.AuditRecord]:
        if self._audit is None:
            raise FailedPrecondition("this server keeps no audit log")
        with self._audit.watch() as watcher:
            # Headers go out at once, so the watcher knows it is subscribed before any record; a
            # refused call has none, which the key tells apart from an empty header block.
            await context.send_initial_metadata(((AUDIT_SUBSCRIBED_KEY, "1"),))
            while True:
                yield await watcher.next()


def _caller(identity: str) -> Caller:
    """``user:alice`` (or ``client:alice``, as a certificate names it), ``agent:n1``, ``server:s1``."""
    kind, _, name = identity.partition(":")
    kind = caller_kind(kind)
    if kind not in ("user", "agent", "server") or not name:
        raise InvalidArgument(f"identity {identity!r} is not user:<name>, agent:<node id> or server:<id>")
    return Caller(kind, name)
