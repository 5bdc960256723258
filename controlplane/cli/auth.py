"""`cpctl auth`, `cpctl users`, `cpctl roles`, `cpctl tokens`: who may do what (etcdctl's shape);
`cpctl audit watch`: every changing call on every server, live.

A thin stub over the Auth service on a channel built from the command's credentials (flags, CP_*,
the client context or the `cpctl dev` manifest, as every command). Each call tries the endpoints
in order until one answers; any server accepts a change (it reaches the leader).
"""

from __future__ import annotations

import contextlib
import datetime
import uuid
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

import typer

from controlplane.cli import app
from controlplane.cli.common import (
    EndpointsOption,
    OutputOption,
    TimeoutOption,
    client_credentials,
    connect,
    resolve_endpoints,
)
from controlplane.cli.output import EXIT_ERROR, EXIT_UNAVAILABLE, EXIT_USAGE, Output, emit, fail, table
from controlplane.client import AuditRecord

auth_app = typer.Typer(help="Turn authorization on or off, and see who you are.", no_args_is_help=True)
users_app = typer.Typer(help="Users: add, delete, list, grant and revoke roles.", no_args_is_help=True)
roles_app = typer.Typer(help="Roles and their permissions (domain, verb, resource).", no_args_is_help=True)
tokens_app = typer.Typer(help="Bearer tokens: create (shown once), list, revoke.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log: every changing call, who made it and its outcome.", no_args_is_help=True)
app.add_typer(auth_app, name="auth")
app.add_typer(audit_app, name="audit")
app.add_typer(users_app, name="users")
app.add_typer(roles_app, name="roles")
app.add_typer(tokens_app, name="tokens")

T = TypeVar("T")


@contextlib.contextmanager
def _auth(endpoints: str | None, timeout: float) -> Iterator[Callable[[str, Any], Any]]:
    """``call(method_name, request)`` on the Auth service of the first endpoint that answers."""
    import grpc

    from controlplane.v1 import auth_pb2_grpc

    servers = resolve_endpoints(endpoints)
    addresses = [address for address in servers.split(",") if address]
    factory = client_credentials(endpoints, servers=servers).sync_channel_factory()
    channels: list[Any] = []

    def call(method: str, request: Any) -> Any:
        last: grpc.RpcError | None = None
        for address in addresses:
            channel = factory(address)
            channels.append(channel)
            try:
                return getattr(auth_pb2_grpc.AuthStub(channel), method)(request, timeout=timeout)
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    code = EXIT_USAGE if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else EXIT_ERROR
                    fail(f"{exc.code().name}: {exc.details()}", code=code)
                last = exc
        fail(f"no server answered ({', '.join(addresses)}): {last.details() if last else ''}", code=EXIT_UNAVAILABLE)

    try:
        yield call
    finally:
        for channel in channels:
            channel.close()


def _rid() -> str:
    return uuid.uuid4().hex


def _changed(output: Output, response: Any, what: str) -> None:
    emit(
        output,
        {"changed": response.changed, "revision": response.revision},
        what if response.changed else f"{what} (already so)",
    )


def _permission(domain: str, verb: str, resource: str) -> Any:
    from controlplane.v1 import auth_pb2

    return auth_pb2.Permission(domain=domain, verb=verb, resource=resource)


# ------------------------------------------------------------------ auth


@auth_app.command("status")
def auth_status(
    endpoints: EndpointsOption = None, output: OutputOption = Output.text, timeout: TimeoutOption = 5.0
) -> None:
    """Whether authorization is enabled, and who the server thinks you are."""
    from controlplane.v1 import auth_pb2

    with _auth(endpoints, timeout) as call:
        response = call("Status", auth_pb2.AuthStatusRequest())
    text = f"authorization {'enabled' if response.enabled else 'DISABLED'}; you are {response.identity or 'anonymous'}"
    emit(output, {"enabled": response.enabled, "identity": response.identity, "revision": response.revision}, text)


@auth_app.command("enable")
def auth_enable(
    endpoints: EndpointsOption = None, output: OutputOption = Output.text, timeout: TimeoutOption = 5.0
) -> None:
    """Enforce roles and permissions (the default of a new cluster)."""
    from controlplane.v1 import auth_pb2

    with _auth(endpoints, timeout) as call:
        response = call("SetEnabled", auth_pb2.SetEnabledRequest(enabled=True, request_id=_rid()))
    _changed(output, response, "authorization enabled")


@auth_app.command("disable")
def auth_disable(
    endpoints: EndpointsOption = None, output: OutputOption = Output.text, timeout: TimeoutOption = 5.0
) -> None:
    """Let every authenticated caller do everything (credentials are still required)."""
    from controlplane.v1 import auth_pb2

    with _auth(endpoints, timeout) as call:
        response = call("SetEnabled", auth_pb2.SetEnabledRequest(enabled=False, request_id=_rid()))
    _changed(output, response, "authorization DISABLED: every authenticated caller may do everything")


# ------------------------------------------------------------------ users


@users_app.command("add")
def users_add(
    name: str, endpoints: EndpointsOption = None, output: OutputOption = Output.text, timeout: TimeoutOption = 5.0
) -> None:
    """Add a user (no roles yet). A client certificate `client:NAME` or a token speaks for it."""
    from controlplane.v1 import auth_pb2

    with _auth(endpoints, timeout) as call:
        _changed(output, call("AddUser", auth_pb2.AddUserRequest(name=name, request_id=_rid())), f"user {name} added")


@users_app.command("delete")
def users_delete(
    name: str, endpoints: EndpointsOption = None, output: OutputOption = Output.text, timeout: TimeoutOption = 5.0
) -> None:
    """Delete a user: its tokens stop working at once."""
    from controlplane.v1 import auth_pb2

    with _auth(endpoints, timeout) as call:
        _changed(
            output, call("DeleteUser", auth_pb2.DeleteUserRequest(name=name, request_id=_rid())), f"user {name} deleted"
        )


@users_app.command("list")
def users_list(
    endpoints: EndpointsOption = None, output: OutputOption = Output.text, timeout: TimeoutOption = 5.0
) -> None:
    """Every user and its roles."""
    from controlplane.v1 import auth_pb2

    with _auth(endpoints, timeout) as call:
        users = call("ListUsers", auth_pb2.ListUsersRequest()).users
    value = [{"name": user.name, "roles": list(user.roles)} for user in users]
    emit(output, value, table([[user.name, ",".join(user.roles)] for user in users], ["USER", "ROLES"]))


@users_app.command("grant")
def users_grant(
    user: str,
    role: str,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 5.0,
) -> None:
    """Give USER the ROLE."""
    from controlplane.v1 import auth_pb2

    with _auth(endpoints, timeout) as call:
        response = call("GrantRole", auth_pb2.GrantRoleRequest(user=user, role=role, request_id=_rid()))
    _changed(output, response, f"user {user} holds role {role}")


@users_app.command("revoke")
def users_revoke(
    user: str,
    role: str,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 5.0,
) -> None:
    """Take ROLE from USER."""
    from controlplane.v1 import auth_pb2

    with _auth(endpoints, timeout) as call:
        response = call("RevokeRole", auth_pb2.RevokeRoleRequest(user=user, role=role, request_id=_rid()))
    _changed(output, response, f"user {user} no longer holds role {role}")


# ------------------------------------------------------------------ roles

DomainArg = Annotated[str, typer.Argument(help="kv, ports, membership, models, gossip, cluster or *")]
VerbArg = Annotated[str, typer.Argument(help="read, write (implies read), alias (models), admin (cluster) or *")]
ResourceArg = Annotated[
    str,
    typer.Argument(help="kv/models: key or name prefix; ports: HOST or HOST:LO-HI; empty: everything"),
]


@roles_app.command("add")
def roles_add(
    name: str, endpoints: EndpointsOption = None, output: OutputOption = Output.text, timeout: TimeoutOption = 5.0
) -> None:
    """Add a role without permissions."""
    from controlplane.v1 import auth_pb2

    with _auth(endpoints, timeout) as call:
        _changed(output, call("AddRole", auth_pb2.AddRoleRequest(name=name, request_id=_rid())), f"role {name} added")


@roles_app.command("delete")
def roles_delete(
    name: str, endpoints: EndpointsOption = None, output: OutputOption = Output.text, timeout: TimeoutOption = 5.0
) -> None:
    """Delete a role; its users lose it."""
    from controlplane.v1 import auth_pb2

    with _auth(endpoints, timeout) as call:
        _changed(
            output, call("DeleteRole", auth_pb2.DeleteRoleRequest(name=name, request_id=_rid())), f"role {name} deleted"
        )


@roles_app.command("list")
def roles_list(
    endpoints: EndpointsOption = None, output: OutputOption = Output.text, timeout: TimeoutOption = 5.0
) -> None:
    """Every role and its permissions."""
    from controlplane.v1 import auth_pb2

    with _auth(endpoints, timeout) as call:
        roles = call("ListRoles", auth_pb2.ListRolesRequest()).roles
    value = [
        {
            "name": role.name,
            "permissions": [{"domain": p.domain, "verb": p.verb, "resource": p.resource} for p in role.permissions],
        }
        for role in roles
    ]
    rows = [[role.name, p.domain, p.verb, p.resource or "*"] for role in roles for p in role.permissions]
    emit(output, value, table(rows, ["ROLE", "DOMAIN", "VERB", "RESOURCE"]))


@roles_app.command("grant-permission")
def roles_grant(
    role: str,
    domain: DomainArg,
    verb: VerbArg,
    resource: ResourceArg = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 5.0,
) -> None:
    """Give ROLE a permission, e.g. `cpctl roles grant-permission app-reader kv read app/`."""
    from controlplane.v1 import auth_pb2

    request = auth_pb2.GrantPermissionRequest(
        role=role, permission=_permission(domain, verb, resource), request_id=_rid()
    )
    with _auth(endpoints, timeout) as call:
        _changed(output, call("GrantPermission", request), f"role {role} may {domain}:{verb} {resource or '*'}")


@roles_app.command("revoke-permission")
def roles_revoke(
    role: str,
    domain: DomainArg,
    verb: VerbArg,
    resource: ResourceArg = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 5.0,
) -> None:
    """Take a permission from ROLE (the exact triple it was granted with)."""
    from controlplane.v1 import auth_pb2

    request = auth_pb2.RevokePermissionRequest(
        role=role, permission=_permission(domain, verb, resource), request_id=_rid()
    )
    with _auth(endpoints, timeout) as call:
        _changed(
            output, call("RevokePermission", request), f"role {role} no longer may {domain}:{verb} {resource or '*'}"
        )


# ------------------------------------------------------------------ tokens


def _when(unix_ms: int) -> str:
    if not unix_ms:
        return "never"
    return datetime.datetime.fromtimestamp(unix_ms / 1000, datetime.UTC).isoformat(timespec="seconds")


@tokens_app.command("create")
def tokens_create(
    user: str,
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds; 0: never expires.")] = 0,
    description: Annotated[str, typer.Option(help="What it is for (shown by `tokens list`).")] = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 5.0,
) -> None:
    """Mint a token for USER. It is printed once; the cluster keeps only its hash."""
    from controlplane.v1 import auth_pb2

    request = auth_pb2.CreateTokenRequest(user=user, ttl_s=ttl, description=description, request_id=_rid())
    with _auth(endpoints, timeout) as call:
        response = call("CreateToken", request)
    value = {"token": response.token, "token_id": response.token_id, "expires": _when(response.expires_unix_ms)}
    emit(
        output,
        value,
        f"{response.token}\n(token id {response.token_id}, expires {_when(response.expires_unix_ms)}; "
        "shown once: pass it as --token or CP_TOKEN)",
    )


@tokens_app.command("list")
def tokens_list(
    user: Annotated[str, typer.Option(help="Only this user's tokens.")] = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 5.0,
) -> None:
    """Every token (never its secret): id, user, expiry, revoked."""
    from controlplane.v1 import auth_pb2

    with _auth(endpoints, timeout) as call:
        tokens = call("ListTokens", auth_pb2.ListTokensRequest(user=user)).tokens
    value = [
        {
            "token_id": t.token_id,
            "user": t.user,
            "expires": _when(t.expires_unix_ms),
            "revoked": t.revoked,
            "created": _when(t.created_unix_ms),
            "description": t.description,
        }
        for t in tokens
    ]
    rows = [[t.token_id, t.user, _when(t.expires_unix_ms), "yes" if t.revoked else "no", t.description] for t in tokens]
    emit(output, value, table(rows, ["TOKEN ID", "USER", "EXPIRES", "REVOKED", "DESCRIPTION"]))


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: str, endpoints: EndpointsOption = None, output: OutputOption = Output.text, timeout: TimeoutOption = 5.0
) -> None:
    """Revoke a token: refused on every server as soon as the revocation is applied there."""
    from controlplane.v1 import auth_pb2

    with _auth(endpoints, timeout) as call:
        response = call("RevokeToken", auth_pb2.RevokeTokenRequest(token_id=token_id, request_id=_rid()))
    _changed(output, response, f"token {token_id} revoked")


# ------------------------------------------------------------------ audit


@audit_app.command("watch")
def audit_watch(
    count: Annotated[int, typer.Option(help="Stop after this many records (0: until Ctrl-C).")] = 0,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 5.0,
) -> None:
    """Follow every changing call on every server, live: when, which server judged it, who, the
    method, what it named and the outcome (cluster admins). JSON: one object per line.

    Each server audits the calls it answers, so this follows all of them (the members the cluster
    lists), and follows a server again when its stream breaks. What came before is in each server's
    data_dir/audit.log. The SDK's ``client.watch_audit()`` does the same for a program."""

    def tell(name: str, address: str, state: str) -> None:
        # On stderr, so a script knows when every server is followed and it may start.
        if state == "following":
            typer.echo(f"following {name} at {address}", err=True)
        else:
            typer.echo(f"{name} at {address}: {state}; following it again", err=True)

    shown = 0
    try:
        with connect(endpoints, timeout) as client, client.watch_audit(on_change=tell, timeout=timeout) as watch:
            for record in watch:
                _print_audit(record, output)
                shown += 1
                if count and shown >= count:
                    break
    except KeyboardInterrupt:
        pass


def _print_audit(record: AuditRecord, output: Output) -> None:
    import json
    import sys

    when = datetime.datetime.fromtimestamp(record.time_unix_ms / 1000, datetime.UTC).isoformat(timespec="milliseconds")
    if output is Output.json:
        line = {
            "time": when,
            "node": record.node_id,
            "who": record.who,
            "method": record.method,
            "resource": record.resource,
            "code": record.code,
            "peer": record.peer,
            "missed": record.missed,
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        return
    if record.missed:
        typer.echo(f"({record.missed} records skipped: this reader fell behind; {record.node_id}'s audit.log has them)")
    who = record.who or "(no credential)"
    typer.echo(f"{when}  {record.node_id}  {who}  {record.method}  {record.resource or '-'}  {record.code}")
