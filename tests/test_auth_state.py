"""The auth domain without a network: its commands, snapshots, tokens and the permission check.

``allowed`` is checked by Hypothesis against a deliberately naive implementation that states the
rules as plainly as possible (string comparisons, no implied-verb table, no parsing shortcuts).
"""

from __future__ import annotations

import hashlib
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.state.auth import AuthTable, Caller, Need, allowed
from controlplane.state.machine import SNAPSHOT_END_MARKER, StateMachine, batch_entry
from controlplane.v1 import auth_pb2, command_pb2, common_pb2

NOW = 1_700_000_000_000


def _apply(machine: StateMachine, change: auth_pb2.AuthCommand, request_id: str = "") -> command_pb2.CommandResult:
    entry = batch_entry(NOW, "n1", [command_pb2.Command(request_id=request_id, auth=change)])
    return machine.apply_entry(entry)[0]


def _perm(domain: str, verb: str, resource: str = "") -> auth_pb2.Permission:
    return auth_pb2.Permission(domain=domain, verb=verb, resource=resource)


def _grant(machine: StateMachine, role: str, permission: auth_pb2.Permission) -> command_pb2.CommandResult:
    change = auth_pb2.AuthCommand(role_grant_permission=auth_pb2.RolePermission(role=role, permission=permission))
    return _apply(machine, change)


def _user_with(machine: StateMachine, user: str, role: str, *permissions: auth_pb2.Permission) -> None:
    _apply(machine, auth_pb2.AuthCommand(user_add=user))
    _apply(machine, auth_pb2.AuthCommand(role_add=role))
    for permission in permissions:
        assert not _grant(machine, role, permission).HasField("error")
    _apply(machine, auth_pb2.AuthCommand(user_grant_role=auth_pb2.UserRole(user=user, role=role)))


def _token(machine: StateMachine, token_id: str, user: str, secret: str, expires: int = 0) -> command_pb2.CommandResult:
    record = auth_pb2.AuthToken(
        token_id=token_id, user=user, secret_sha256=hashlib.sha256(secret.encode()).digest(), expires_unix_ms=expires
    )
    return _apply(machine, auth_pb2.AuthCommand(token_create=record))


def test_defaults_enabled_and_admin_holds_root() -> None:
    machine = StateMachine()
    assert machine.auth.enabled
    assert allowed(machine.auth, Caller("user", "admin"), Need("cluster", "admin"))
    assert not allowed(machine.auth, Caller("user", "bob"), Need("kv", "read", "a"))


def test_kv_read_on_prefix_neither_writes_nor_reads_elsewhere() -> None:
    machine = StateMachine()
    _user_with(machine, "bob", "app-reader", _perm("kv", "read", "app/"))
    bob = Caller("user", "bob")
    assert allowed(machine.auth, bob, Need("kv", "read", "app/x"))
    assert not allowed(machine.auth, bob, Need("kv", "write", "app/x"))
    assert not allowed(machine.auth, bob, Need("kv", "read", "other/x"))


def test_write_implies_read_and_ports_ranges() -> None:
    machine = StateMachine()
    _user_with(machine, "ops", "ops", _perm("models", "write", "res"), _perm("ports", "write", "h1:8000-8099"))
    ops = Caller("user", "ops")
    assert allowed(machine.auth, ops, Need("models", "read", "resnet"))
    assert allowed(machine.auth, ops, Need("models", "alias", "resnet"))
    assert allowed(machine.auth, ops, Need("ports", "write", "h1", 8050))
    assert not allowed(machine.auth, ops, Need("ports", "write", "h1", 9000))
    assert not allowed(machine.auth, ops, Need("ports", "write", "h2", 8050))
    # A call on a whole host needs the whole host.
    assert not allowed(machine.auth, ops, Need("ports", "write", "h1"))


def test_node_authorizer_acts_on_its_own_node_only() -> None:
    machine = StateMachine()
    agent = Caller("agent", "a")
    assert allowed(machine.auth, agent, Need("membership", "write", "a", node="a"))
    assert not allowed(machine.auth, agent, Need("membership", "write", "b", node="b"))
    assert not allowed(machine.auth, Caller("user", "bob"), Need("membership", "write", "a", node="a"))
    assert allowed(machine.auth, agent, Need("membership", "read"))
    assert not allowed(machine.auth, agent, Need("membership", "write"))
    assert not allowed(machine.auth, agent, Need("kv", "read", "x"))


def test_disabled_allows_everyone() -> None:
    machine = StateMachine()
    _apply(machine, auth_pb2.AuthCommand(set_enabled=False))
    assert allowed(machine.auth, Caller("user", "nobody"), Need("cluster", "admin"))


def test_builtins_cannot_be_removed_or_changed() -> None:
    machine = StateMachine()
    for change in (
        auth_pb2.AuthCommand(user_delete="admin"),
        auth_pb2.AuthCommand(role_delete="root"),
        auth_pb2.AuthCommand(user_revoke_role=auth_pb2.UserRole(user="admin", role="root")),
        auth_pb2.AuthCommand(
            role_grant_permission=auth_pb2.RolePermission(role="root", permission=_perm("kv", "read"))
        ),
    ):
        result = _apply(machine, change)
        assert result.error.code == common_pb2.ERROR_CODE_FAILED_PRECONDITION, change
    assert allowed(machine.auth, Caller("user", "admin"), Need("cluster", "admin"))


def test_bad_permissions_are_refused() -> None:
    machine = StateMachine()
    _apply(machine, auth_pb2.AuthCommand(role_add="r"))
    for permission in (_perm("nope", "read"), _perm("kv", "fly"), _perm("ports", "write", "h:9-1")):
        assert _grant(machine, "r", permission).error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT
    assert _grant(machine, "missing", _perm("kv", "read")).error.code == common_pb2.ERROR_CODE_NOT_FOUND


def test_tokens_authenticate_until_revoked_or_expired() -> None:
    machine = StateMachine()
    _user_with(machine, "bob", "r", _perm("kv", "read"))
    assert not _token(machine, "t1", "bob", "s3cret").HasField("error")
    assert not _token(machine, "t2", "bob", "other", expires=NOW + 1000).HasField("error")
    assert machine.auth.authenticate("cp1.t1.s3cret", NOW) == ("bob", "")
    assert machine.auth.authenticate("cp1.t1.wrong", NOW)[0] == ""
    assert machine.auth.authenticate("garbage", NOW)[0] == ""
    assert machine.auth.authenticate("cp1.t2.other", NOW + 999) == ("bob", "")
    assert "expired" in machine.auth.authenticate("cp1.t2.other", NOW + 1000)[1]
    _apply(machine, auth_pb2.AuthCommand(token_revoke="t1"))
    assert "revoked" in machine.auth.authenticate("cp1.t1.s3cret", NOW)[1]
    # A token for a missing user, and a taken id, are refused.
    assert _token(machine, "t3", "ghost", "x").error.code == common_pb2.ERROR_CODE_NOT_FOUND
    assert _token(machine, "t2", "bob", "x").error.code == common_pb2.ERROR_CODE_FAILED_PRECONDITION


def test_deleting_a_role_takes_it_from_its_users() -> None:
    machine = StateMachine()
    _user_with(machine, "bob", "r", _perm("kv", "read"))
    _apply(machine, auth_pb2.AuthCommand(role_delete="r"))
    assert list(machine.auth.users["bob"].roles) == []


def test_snapshot_round_trip_and_end_marker_last() -> None:
    machine = StateMachine()
    _user_with(machine, "bob", "r", _perm("kv", "read", "app/"))
    _token(machine, "t1", "bob", "s")
    _apply(machine, auth_pb2.AuthCommand(set_enabled=False))
    data = machine.snapshot()
    # The end marker is the last field on the wire (tag 15, fixed32): a truncated snapshot lacks it.
    assert data.endswith((15 << 3 | 5).to_bytes(1, "little") + SNAPSHOT_END_MARKER.to_bytes(4, "little"))
    copy = StateMachine()
    copy.restore(data)
    assert copy.snapshot() == data
    assert not copy.auth.enabled
    assert copy.auth.authenticate("cp1.t1.s", NOW) == ("bob", "")


def test_snapshot_from_before_auth_loads_with_defaults() -> None:
    machine = StateMachine()
    _apply(machine, auth_pb2.AuthCommand(set_enabled=False))
    snap = command_pb2.StateSnapshot.FromString(machine.snapshot())
    snap.ClearField("auth")
    copy = StateMachine()
    copy.restore(snap.SerializeToString())
    assert copy.auth.enabled
    assert list(copy.auth.users) == ["admin"]


def test_retried_change_is_deduplicated() -> None:
    machine = StateMachine()
    first = _apply(machine, auth_pb2.AuthCommand(user_add="bob"), request_id="r1")
    again = _apply(machine, auth_pb2.AuthCommand(user_add="bob"), request_id="r1")
    assert first == again and first.auth.changed


# ------------------------------------------------------------------ allowed vs a naive reading

DOMAINS = ["kv", "ports", "membership", "models", "gossip", "cluster", "*"]
VERBS = ["read", "write", "alias", "admin", "*"]
RESOURCES = ["", "a", "a/", "a/b", "b", "h1", "h2", "h1:10-20", "h1:15-15", "h2:1-65535"]


def _naive_allowed(
    enabled: bool, roles: dict[str, list[auth_pb2.Permission]], users: dict[str, list[str]], caller: Caller, need: Need
) -> bool:
    if not enabled:
        return True
    if caller.kind == "server":
        return True
    if caller.kind == "agent":
        if need.node == caller.name or need.node == "*":
            return True
        return need.verb == "read" and need.domain in ("membership", "gossip", "models")
    if caller.kind != "user" or caller.name not in users:
        return False
    domain, verb = need.domain, need.verb
    for role in users[caller.name]:
        for p in roles.get(role, []):
            if p.domain != "*" and p.domain != domain:
                continue
            verb_ok = (
                p.verb == "*"
                or p.verb == verb
                or (verb == "read" and p.verb in ("write", "alias", "admin"))
                or (verb == "alias" and p.verb == "write")
            )
            if not verb_ok:
                continue
            if p.resource == "":
                return True
            if domain == "ports":
                if ":" in p.resource:
                    host, span = p.resource.split(":")
                    lo, hi = (int(x) for x in span.split("-"))
                else:
                    host, lo, hi = p.resource, 1, 65535
                if host != need.resource:
                    continue
                if need.port == 0:
                    if lo == 1 and hi == 65535:
                        return True
                    continue
                if lo <= need.port <= hi:
                    return True
                continue
            if need.resource[: len(p.resource)] == p.resource:
                return True
    return False


permissions = st.builds(_perm, st.sampled_from(DOMAINS), st.sampled_from(VERBS), st.sampled_from(RESOURCES))
needs = st.builds(
    Need,
    st.sampled_from(DOMAINS[:-1]),
    st.sampled_from(VERBS[:-1]),
    st.sampled_from(["", "a", "a/b", "ab", "b", "h1", "h2", "n1"]),
    st.sampled_from([0, 10, 15, 21, 80]),
    st.sampled_from(["", "n1", "u1", "*"]),
)
callers = st.builds(Caller, st.sampled_from(["user", "agent", "server", "other"]), st.sampled_from(["u1", "u2", "n1"]))


@settings(max_examples=400, deadline=None)
@given(
    enabled=st.booleans(),
    role_perms=st.dictionaries(st.sampled_from(["r1", "r2", "r3"]), st.lists(permissions, max_size=4), max_size=3),
    user_roles=st.dictionaries(
        st.sampled_from(["u1", "u2"]), st.lists(st.sampled_from(["r1", "r2", "r3"]), max_size=3), max_size=2
    ),
    caller=callers,
    need=needs,
)
def test_allowed_matches_a_naive_reading(
    enabled: bool,
    role_perms: dict[str, list[auth_pb2.Permission]],
    user_roles: dict[str, list[str]],
    caller: Caller,
    need: Need,
) -> None:
    table = AuthTable(StateMachine())
    table.enabled = enabled
    table.users = {name: auth_pb2.AuthUser(name=name, roles=roles) for name, roles in user_roles.items()}
    table.roles = {name: auth_pb2.AuthRole(name=name, permissions=perms) for name, perms in role_perms.items()}
    assert allowed(table, caller, need) == _naive_allowed(enabled, role_perms, user_roles, caller, need)


def _restore(machine: StateMachine, backup: bytes, include_auth: bool) -> command_pb2.CommandResult:
    restore = command_pb2.RestoreState(snapshot=backup, include_auth=include_auth)
    command = command_pb2.Command(request_id=f"restore-{uuid.uuid4().hex}", restore_state=restore)
    return machine.apply_entry(batch_entry(NOW, "n1", [command]))[0]


def _backup_with_bob() -> bytes:
    """A backup holding user bob (kv read on app/), his tokens t1 and t2, and auth disabled."""
    source = StateMachine()
    _user_with(source, "bob", "app-reader", _perm("kv", "read", "app/"))
    _token(source, "t1", "bob", "s1")
    _token(source, "t2", "bob", "s2")
    _apply(source, auth_pb2.AuthCommand(set_enabled=False))
    return source.snapshot()


def test_a_restore_leaves_the_auth_state_unless_asked_for_it() -> None:
    target = StateMachine()
    _user_with(target, "carol", "ops", _perm("cluster", "admin"))
    assert not _restore(target, _backup_with_bob(), include_auth=False).HasField("error")
    assert set(target.auth.users) == {"admin", "carol"}
    assert target.auth.authenticate("cp1.t1.s1", NOW)[0] == ""


def test_a_restore_with_auth_brings_back_users_roles_and_tokens_but_no_revoked_token_nor_auth_off() -> None:
    backup = _backup_with_bob()
    target = StateMachine()
    _token(target, "t2", "admin", "other")  # the same token id, revoked here: it stays revoked
    _apply(target, auth_pb2.AuthCommand(token_revoke="t2"))
    _user_with(target, "carol", "ops", _perm("cluster", "admin"))
    assert not _restore(target, backup, include_auth=True).HasField("error")
    assert set(target.auth.users) == {"admin", "bob"}  # the backup's users, admin always
    assert target.auth.enabled, "a restore must never turn auth off"
    assert target.auth.authenticate("cp1.t1.s1", NOW) == ("bob", "")
    assert "revoked" in target.auth.authenticate("cp1.t2.s2", NOW)[1]
    bob = Caller("user", "bob")
    assert allowed(target.auth, bob, Need("kv", "read", "app/x"))
    assert not allowed(target.auth, bob, Need("kv", "write", "app/x"))
    assert allowed(target.auth, Caller("user", "admin"), Need("cluster", "admin"))


def test_a_restore_with_a_bad_auth_state_changes_nothing() -> None:
    snap = command_pb2.StateSnapshot.FromString(_backup_with_bob())
    snap.auth.users.add(name="eve", roles=["no-such-role"])
    target = StateMachine()
    _apply(target, auth_pb2.AuthCommand(user_add="carol"))
    before, revision = target.auth.to_state(), target.revision
    result = _restore(target, snap.SerializeToString(), include_auth=True)
    assert result.error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT
    assert "bad auth state" in result.error.message and "no-such-role" in result.error.message
    assert (target.auth.to_state(), target.revision) == (before, revision)


def test_a_restore_never_revives_a_token_this_cluster_revoked_or_cut_off() -> None:
    """The same cluster, restoring its own backups: a token revoked since, a token of a user deleted
    since, and a revoked token the next backup does not even hold all stay unusable."""
    machine = StateMachine()
    _user_with(machine, "bob", "reader", _perm("kv", "read", "app/"))
    _user_with(machine, "eve", "writer", _perm("kv", "write", "app/"))
    _token(machine, "t-bob", "bob", "sb")
    _token(machine, "t-eve", "eve", "se")
    backup = machine.snapshot()  # both tokens good here
    without_tokens = command_pb2.StateSnapshot.FromString(backup)
    without_tokens.auth.ClearField("tokens")
    _apply(machine, auth_pb2.AuthCommand(token_revoke="t-bob"))
    _apply(machine, auth_pb2.AuthCommand(user_delete="eve"))
    assert machine.auth.authenticate("cp1.t-eve.se", NOW)[0] == ""

    # A backup that does not hold the revoked token: its record stays, revoked.
    assert not _restore(machine, without_tokens.SerializeToString(), include_auth=True).HasField("error")
    assert machine.auth.tokens["t-bob"].revoked
    # Then the backup that holds both, good: still unusable. Eve is back as the backup had her.
    assert not _restore(machine, backup, include_auth=True).HasField("error")
    assert "revoked" in machine.auth.authenticate("cp1.t-bob.sb", NOW)[1]
    assert "revoked" in machine.auth.authenticate("cp1.t-eve.se", NOW)[1]
    assert "eve" in machine.auth.users


def test_a_backup_with_a_deleted_users_token_restores_and_duplicates_are_refused() -> None:
    source = StateMachine()
    _user_with(source, "bob", "reader", _perm("kv", "read", "app/"))
    _token(source, "t1", "bob", "s")
    _apply(source, auth_pb2.AuthCommand(user_delete="bob"))  # keeps t1, which names nobody now
    target = StateMachine()
    assert not _restore(target, source.snapshot(), include_auth=True).HasField("error")
    assert target.auth.authenticate("cp1.t1.s", NOW)[0] == ""
    # A role or a permission held twice would survive a revoke that reports success: refused.
    for damage in ("role twice", "permission twice"):
        snap = command_pb2.StateSnapshot.FromString(_backup_with_bob())
        if damage == "role twice":
            next(u for u in snap.auth.users if u.name == "bob").roles.append("app-reader")
        else:
            role = next(r for r in snap.auth.roles if r.name == "app-reader")
            role.permissions.append(role.permissions[0])
        result = _restore(StateMachine(), snap.SerializeToString(), include_auth=True)
        assert result.error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT and damage in result.error.message
