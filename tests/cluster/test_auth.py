"""Authentication and authorization on real servers: tokens, roles, the node authorizer, revocation
on every server, and the audit log.

An ``insecure=True`` cluster (plaintext client port) treats a caller without credentials as the
admin and a caller with a token as that token's user, so token-based RBAC is exercised without
TLS; one test runs with TLS client certificates (``client:admin``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane import tls
from controlplane.client import (
    AsyncClient,
    AuthRole,
    AuthUser,
    Client,
    Credentials,
    FailedPrecondition,
    InvalidArgument,
    Permission,
    PermissionDenied,
    Unauthenticated,
)
from controlplane.dev import LocalCluster
from controlplane.errors import ERROR_KIND_KEY
from controlplane.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    cluster_pb2,
    cluster_pb2_grpc,
    gossip_pb2,
    gossip_pb2_grpc,
    kv_pb2,
    kv_pb2_grpc,
    membership_pb2,
    membership_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    ports_pb2,
    ports_pb2_grpc,
)

from .conftest import cpctl, credentials_env, followers, node_client, scrape, value, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

DENIED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _leader_channel(cluster: LocalCluster) -> grpc.Channel:
    leader = cluster.wait_for_leader(60)
    return grpc.insecure_channel(cluster.nodes[leader].client_address)


def _admin(channel: grpc.Channel) -> auth_pb2_grpc.AuthStub:
    return auth_pb2_grpc.AuthStub(channel)


def _token_for(
    auth: auth_pb2_grpc.AuthStub, user: str, *permissions: auth_pb2.Permission
) -> auth_pb2.CreateTokenResponse:
    auth.AddUser(auth_pb2.AddUserRequest(name=user), timeout=10)
    if permissions:
        auth.AddRole(auth_pb2.AddRoleRequest(name=f"{user}-role"), timeout=10)
        for permission in permissions:
            auth.GrantPermission(
                auth_pb2.GrantPermissionRequest(role=f"{user}-role", permission=permission), timeout=10
            )
        auth.GrantRole(auth_pb2.GrantRoleRequest(user=user, role=f"{user}-role"), timeout=10)
    token: auth_pb2.CreateTokenResponse = auth.CreateToken(auth_pb2.CreateTokenRequest(user=user), timeout=10)
    return token


def _changing_calls(channel: grpc.Channel) -> dict[str, Callable[[tuple[tuple[str, str], ...]], Any]]:
    """The issue's 13 changing calls, each with a plausible request."""
    kv = kv_pb2_grpc.KVStub(channel)
    cluster = cluster_pb2_grpc.ClusterStub(channel)
    ports = ports_pb2_grpc.PortsStub(channel)
    membership = membership_pb2_grpc.MembershipStub(channel)
    models = models_pb2_grpc.ModelsStub(channel)
    gossip = gossip_pb2_grpc.GossipStub(channel)

    def snapshot(md: Any) -> Any:
        return list(cluster.Snapshot(cluster_pb2.SnapshotRequest(), metadata=md, timeout=10))

    return {
        "put": lambda md: kv.Put(kv_pb2.PutRequest(key="app/x", value=b"1"), metadata=md, timeout=10),
        "snapshot": snapshot,
        "restore": lambda md: cluster.Restore(iter([cluster_pb2.SnapshotChunk(data=b"x")]), metadata=md, timeout=10),
        "add_member": lambda md: cluster.AddMember(
            cluster_pb2.AddMemberRequest(id="evil", raft_address="127.0.0.1:1"), metadata=md, timeout=10
        ),
        "remove_member": lambda md: cluster.RemoveMember(
            cluster_pb2.RemoveMemberRequest(id="n2"), metadata=md, timeout=10
        ),
        "transfer_leadership": lambda md: cluster.TransferLeadership(
            cluster_pb2.TransferLeadershipRequest(), metadata=md, timeout=10
        ),
        "set_range": lambda md: ports.SetRange(
            ports_pb2.SetRangeRequest(range=ports_pb2.PortRange(name="evil", start=1000, end=2000)),
            metadata=md,
            timeout=10,
        ),
        "allocate": lambda md: ports.Allocate(
            ports_pb2.AllocateRequest(host="h1", service="s"), metadata=md, timeout=10
        ),
        "register_node": lambda md: membership.RegisterNode(
            membership_pb2.RegisterNodeRequest(node=membership_pb2.NodeSpec(id="evil")), metadata=md, timeout=10
        ),
        "deregister_node": lambda md: membership.DeregisterNode(
            membership_pb2.DeregisterNodeRequest(node_id="a"), metadata=md, timeout=10
        ),
        "register_model": lambda md: models.RegisterVersion(
            models_pb2.RegisterVersionRequest(model="resnet"), metadata=md, timeout=10
        ),
        "alias_prod": lambda md: models.SetAlias(
            models_pb2.SetAliasRequest(model="resnet", alias="prod", version=1), metadata=md, timeout=10
        ),
        "bandwidth": lambda md: gossip.ReportBandwidth(
            gossip_pb2.ReportBandwidthRequest(node_id="a"), metadata=md, timeout=10
        ),
    }


def test_rbac_with_tokens_and_revocation_on_every_server(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(servers=3, insecure=True)
    with _leader_channel(cluster) as channel:
        auth = _admin(channel)
        assert auth.Status(auth_pb2.AuthStatusRequest(), timeout=10).enabled
        nobody = _token_for(auth, "nobody").token
        reader = _token_for(auth, "reader", auth_pb2.Permission(domain="kv", verb="read", resource="app/")).token
        kv = kv_pb2_grpc.KVStub(channel)
        kv.Put(kv_pb2.PutRequest(key="app/x", value=b"1"), timeout=10)  # the admin (no credentials)

        # Every changing call of the issue is refused to a caller without the permission, and to a
        # bad token; the message names the permission and the identity.
        for name, call in _changing_calls(channel).items():
            for md in (_metadata(nobody), _metadata("cp1.nope.nope")):
                with pytest.raises(grpc.RpcError) as refused:
                    call(md)
                assert refused.value.code() in DENIED, (name, refused.value.code(), refused.value.details())
        with pytest.raises(grpc.RpcError) as refused:
            kv.Put(kv_pb2.PutRequest(key="app/x", value=b"2"), metadata=_metadata(nobody), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "kv:write on 'app/x'" in refused.value.details() and "user:nobody" in refused.value.details()
        # The SDK raises the same refusals as typed errors (not Internal), and does not retry them.
        as_nobody = Client(cluster.client_addresses, credentials=Credentials(token=nobody), timeout=10)
        with as_nobody, pytest.raises(PermissionDenied, match="kv:write"):
            as_nobody.put("app/x", b"2")
        bad_token = Client(cluster.client_addresses, credentials=Credentials(token="cp1.nope.nope"), timeout=10)
        with bad_token, pytest.raises(Unauthenticated):
            bad_token.get("app/x")

        # kv read on app/: reads app/, neither writes it nor reads other/.
        got = kv.Get(kv_pb2.GetRequest(key="app/x"), metadata=_metadata(reader), timeout=10)
        assert got.kv.value == b"1"
        reader_calls: list[Callable[[], Any]] = [
            lambda: kv.Put(kv_pb2.PutRequest(key="app/x", value=b"2"), metadata=_metadata(reader), timeout=10),
            lambda: kv.Get(kv_pb2.GetRequest(key="other/x"), metadata=_metadata(reader), timeout=10),
        ]
        for reader_call in reader_calls:
            with pytest.raises(grpc.RpcError) as refused:
                reader_call()
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

        # Revocation reaches every server within a second or so of its commit (it is replicated).
        token_id = reader.split(".")[1]
        auth.RevokeToken(auth_pb2.RevokeTokenRequest(token_id=token_id), timeout=10)
        revoked_at = time.monotonic()
    pending = set(cluster.nodes)
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for node_id in sorted(pending):
            with grpc.insecure_channel(cluster.nodes[node_id].client_address) as channel:
                try:
                    kv_pb2_grpc.KVStub(channel).Get(
                        kv_pb2.GetRequest(key="app/x"), metadata=_metadata(reader), timeout=5
                    )
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                        pending.discard(node_id)
        time.sleep(0.02)
    assert not pending, f"the revoked token still works on {sorted(pending)}"
    print(f"revocation in force on every server after {time.monotonic() - revoked_at:.3f} s")

    # The audit log holds the changing calls: who, method, resource, code.
    leader = cluster.wait_for_leader(60)
    lines = [json.loads(line) for line in (cluster.nodes[leader].data_dir / "audit.log").read_text().splitlines()]
    assert any(
        line["who"] == "user:nobody"
        and line["method"] == "/controlplane.v1.KV/Put"
        and line["code"] == "PERMISSION_DENIED"
        for line in lines
    )
    assert any(line["method"] == "/controlplane.v1.Auth/RevokeToken" and line["code"] == "OK" for line in lines)
    assert (cluster.nodes[leader].data_dir / "audit.log").stat().st_mode & 0o777 == 0o600


def test_an_agent_acts_only_for_its_own_node(tmp_path: Path) -> None:
    """The node authorizer, with agent certificates on a TLS client port."""
    cluster = LocalCluster(tmp_path / "cluster", servers=1, client_tls=True)
    cluster.start()
    try:
        _agents_and_admin(cluster)
    finally:
        cluster.stop()


def _agents_and_admin(cluster: LocalCluster) -> None:
    leader = cluster.nodes[cluster.wait_for_leader(60)]
    admin = cluster.credentials
    assert admin.ca is not None
    channels = {}
    for agent in ("a", "b"):
        cert, key = tls.issue(cluster.pki_dir, tls.Identity("agent", agent))
        creds = Credentials(ca=admin.ca, cert=cert, key=key)
        channels[agent] = creds.sync_channel_factory()(leader.client_address)
    try:
        for agent, channel in channels.items():
            membership = membership_pb2_grpc.MembershipStub(channel)
            spec = membership_pb2.NodeSpec(id=agent, role=membership_pb2.NODE_ROLE_AGENT)
            membership.RegisterNode(membership_pb2.RegisterNodeRequest(node=spec), timeout=10)
        membership = membership_pb2_grpc.MembershipStub(channels["a"])
        membership.Heartbeat(membership_pb2.HeartbeatRequest(node_id="a"), timeout=10)
        membership.ListNodes(membership_pb2.ListNodesRequest(), timeout=10)  # membership read
        agent_calls: list[Callable[[], Any]] = [
            lambda: membership.Heartbeat(membership_pb2.HeartbeatRequest(node_id="b"), timeout=10),
            lambda: membership.DeregisterNode(membership_pb2.DeregisterNodeRequest(node_id="b"), timeout=10),
            lambda: gossip_pb2_grpc.GossipStub(channels["a"]).ReportBandwidth(
                gossip_pb2.ReportBandwidthRequest(node_id="b"), timeout=10
            ),
            lambda: kv_pb2_grpc.KVStub(channels["a"]).Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=10),
        ]
        for agent_call in agent_calls:
            with pytest.raises(grpc.RpcError) as refused:
                agent_call()
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "your identity is agent:a" in refused.value.details()
        # The admin certificate may do everything.
        with admin.sync_channel_factory()(leader.client_address) as channel:
            status = auth_pb2_grpc.AuthStub(channel).Status(auth_pb2.AuthStatusRequest(), timeout=10)
            assert status.identity == "user:admin"
            membership_pb2_grpc.MembershipStub(channel).DeregisterNode(
                membership_pb2.DeregisterNodeRequest(node_id="b"), timeout=10
            )
    finally:
        for channel in channels.values():
            channel.close()


def test_cli_users_roles_tokens(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(servers=1, insecure=True)
    cluster.wait_for_leader(60)
    for args in (
        ("users", "add", "carol"),
        ("roles", "add", "models-writer"),
        ("roles", "grant-permission", "models-writer", "models", "write", "res"),
        ("users", "grant", "carol", "models-writer"),
    ):
        done = cpctl(cluster, *args)
        assert done.returncode == 0, done.stderr
    users = json.loads(cpctl(cluster, "users", "list", "--output", "json").stdout)
    assert {"name": "carol", "roles": ["models-writer"]} in users
    created = cpctl(cluster, "tokens", "create", "carol", "--ttl", "600", "--output", "json")
    token = json.loads(created.stdout)
    assert token["token"].startswith(f"cp1.{token['token_id']}.")
    listed = json.loads(cpctl(cluster, "tokens", "list", "--output", "json").stdout)
    assert [t["user"] for t in listed if t["token_id"] == token["token_id"]] == ["carol"]
    refused = cpctl(cluster, "users", "delete", "admin")
    assert refused.returncode == 1 and "built in" in refused.stderr
    status = json.loads(cpctl(cluster, "auth", "status", "--output", "json").stdout)
    assert status == {"enabled": True, "identity": "user:admin", "revision": status["revision"]}


def test_health_and_reflection_are_open_and_every_other_call_is_checked(cluster: LocalCluster) -> None:
    """The client port serves every method through the one handler that checks it
    (interceptor.ErrorsAndMetrics): to a certificate naming a user with no role, gRPC health and
    reflection answer (load balancers, ``grpcurl describe``, gRPC's client-side health checking
    through Watch) and are counted there, a KV read is PERMISSION_DENIED, and a method no service
    has, or one a servicer leaves unwritten (health's List), is UNIMPLEMENTED."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    cert, key = tls.issue(cluster.pki_dir, tls.Identity("client", "open-nobody"))
    nobody = Credentials(ca=cluster.credentials.ca, cert=cert, key=key)
    server = next(node for node in cluster.nodes.values() if node.client_address == cluster.client_addresses[0])
    counted = {
        "/grpc.health.v1.Health/Check": "OK",
        "/grpc.health.v1.Health/List": "UNIMPLEMENTED",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "OK",
    }
    before = scrape(server)
    with nobody.sync_channel_factory()(server.client_address) as ch:
        health_stub = health_pb2_grpc.HealthStub(ch)
        answers_a_status = (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)
        checked = health_stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert checked.status in answers_a_status
        # Watch (gRPC's client-side health checking) writes with context.write instead of yielding.
        watched = health_stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watched).status in answers_a_status
        watched.cancel()
        with pytest.raises(grpc.RpcError) as unlisted:  # health's List is not implemented by grpcio 1.85
            health_stub.List(health_pb2.HealthListRequest(), timeout=10)
        assert unlisted.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert (ERROR_KIND_KEY, "Unimplemented") in unlisted.value.trailing_metadata()  # the SDK's class
        answers = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        listed = {service.name for answer in answers for service in answer.list_services_response.service}
        assert {"controlplane.v1.KV", "controlplane.v1.Cluster", "grpc.health.v1.Health"} <= listed
        with pytest.raises(grpc.RpcError) as refused:
            kv_pb2_grpc.KVStub(ch).Get(kv_pb2.GetRequest(key="anything"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        unknown = ch.unary_unary("/controlplane.v1.KV/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as missing:
            unknown(b"", timeout=10)
        assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
    after = scrape(server)
    for method, code in counted.items():  # the wrapper measured them: it is in their path
        series = {"method": method, "code": code}
        assert value(after, "controlplane_grpc_requests_total", **series) > value(
            before, "controlplane_grpc_requests_total", **series
        ), method


def test_check_permission_answers_agents_and_admins_only(cluster: LocalCluster) -> None:
    """``Auth.Check``: what an agent's artifact port asks before serving a user (any agent may ask
    about models:read, and only that: the rule is the authorization table's; other users need
    cluster admin); a malformed question is INVALID_ARGUMENT."""
    admin = cluster.credentials
    agent_cert, agent_key = tls.issue(cluster.pki_dir, tls.Identity("agent", "chk-a"))
    user_cert, user_key = tls.issue(cluster.pki_dir, tls.Identity("client", "chk-nobody"))
    with Client(
        cluster.client_addresses, credentials=Credentials(ca=admin.ca, cert=agent_cert, key=agent_key)
    ) as agent:
        assert agent.check_permission("user:admin", "models", "read", "any-model") is None
        assert agent.check_permission("agent:chk-b", "models", "read", "any-model") is None
        why = agent.check_permission("user:chk-nobody", "models", "read", "any-model")
        assert why is not None and "models:read" in why and "user:chk-nobody" in why
        with pytest.raises(InvalidArgument, match="user:<name>"):
            agent.check_permission("chk-nobody", "models", "read")
        # models:read is the artifact port's question; an agent has no business asking others.
        for domain, verb in (("kv", "write"), ("cluster", "admin"), ("models", "write"), ("*", "read")):
            with pytest.raises(PermissionDenied, match="cluster:admin") as refused:
                agent.check_permission("user:chk-nobody", domain, verb)
            assert "agent:chk-a" in str(refused.value)
    with (
        Client(cluster.client_addresses, credentials=admin) as as_admin,
        pytest.raises(InvalidArgument, match="one domain"),
    ):
        as_admin.check_permission("user:admin", "*", "read")
    user_credentials = Credentials(ca=admin.ca, cert=user_cert, key=user_key)
    with Client(cluster.client_addresses, credentials=user_credentials) as user, pytest.raises(PermissionDenied) as no:
        user.check_permission("user:admin", "models", "read")
    assert "cluster:admin" in str(no.value) and "user:chk-nobody" in str(no.value)


def test_an_admin_follows_every_servers_audit_live(cluster: LocalCluster) -> None:
    """`cpctl audit watch` follows all three servers: a put answered by each one shows up, judged
    there, with who made it and the outcome; a refused call is audited too. Non-admins may not watch.
    The cluster is the shared one, so other changing calls may show up in between: only this
    test's own keys are looked for."""
    env = credentials_env(cluster)
    endpoints = ",".join(cluster.client_addresses)
    command = [sys.executable, "-m", "controlplane", "audit", "watch", "--output", "json", "--endpoints", endpoints]
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    prefix = f"audit-{uuid.uuid4().hex[:6]}/"
    lines: queue.Queue[str] = queue.Queue()
    try:
        assert watcher.stderr is not None and watcher.stdout is not None
        following: list[str] = []
        while len(following) < len(cluster.nodes):  # subscribed to every server: now act
            line = watcher.stderr.readline()
            assert line, f"audit watch ended early: {watcher.stderr.read()}"
            if line.startswith("following "):
                following.append(line.split()[1])
        assert sorted(following) == sorted(cluster.nodes)
        threading.Thread(target=lambda: [lines.put(out) for out in watcher.stdout], daemon=True).start()  # type: ignore[union-attr]
        for node_id, node in sorted(cluster.nodes.items()):
            with node_client(node) as client:
                client.put(f"{prefix}{node_id}", b"x")
        agent_cert, agent_key = tls.issue(cluster.pki_dir, tls.Identity("agent", "audit-a"))
        as_agent = Credentials(ca=cluster.credentials.ca, cert=agent_cert, key=agent_key)
        with Client(cluster.client_addresses, credentials=as_agent, timeout=10) as agent:
            with pytest.raises(PermissionDenied):
                agent.put(f"{prefix}by-agent", b"x")
            # The stream itself is for cluster admins.
            with as_agent.sync_channel_factory()(cluster.client_addresses[0]) as channel:
                with pytest.raises(grpc.RpcError) as refused:
                    next(iter(auth_pb2_grpc.AuthStub(channel).WatchAudit(auth_pb2.WatchAuditRequest(), timeout=10)))
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        records: list[dict[str, Any]] = []

        def all_four() -> bool:
            while not lines.empty():
                record = json.loads(lines.get())
                if record["resource"].startswith(prefix):
                    records.append(record)
            return len(records) >= 4

        wait_until(all_four, 30, "the four calls in the audit stream", detail=lambda: records)
    finally:
        watcher.terminate()
        watcher.wait(30)
    puts = {(r["node"], r["resource"], r["who"], r["code"]) for r in records if not r["resource"].endswith("by-agent")}
    assert puts == {(node_id, f"{prefix}{node_id}", "user:admin", "OK") for node_id in cluster.nodes}
    refused_put = [r for r in records if r["resource"].endswith("by-agent")]
    assert [(r["who"], r["method"], r["code"]) for r in refused_put] == [
        ("agent:audit-a", "/controlplane.v1.KV/Put", "PERMISSION_DENIED")
    ]


def test_the_sdk_follows_every_servers_audit_and_refuses_a_non_admin(cluster: LocalCluster) -> None:
    """``client.watch_audit()`` returns once every server's stream is subscribed, so a put answered by
    each server right after it is delivered, judged there; an agent may not watch, and is told so at
    once. Shared cluster: only this test's keys are looked for."""
    prefix = f"sdk-audit-{uuid.uuid4().hex[:6]}/"
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=30) as admin:
        with admin.watch_audit() as audit:
            assert sorted(audit.following) == sorted(cluster.nodes) == sorted(audit.servers)
            for node_id, node in sorted(cluster.nodes.items()):
                with node_client(node) as client:
                    client.put(f"{prefix}{node_id}", b"x")
            seen: set[tuple[str, str, str, str]] = set()
            give_up = threading.Timer(30, audit.close)  # ends the loop below if a record never comes
            give_up.start()
            for record in audit:
                if record.resource.startswith(prefix):
                    seen.add((record.node_id, record.resource, record.method, record.code))
                if len(seen) == len(cluster.nodes):
                    break
            give_up.cancel()
        assert seen == {(node_id, f"{prefix}{node_id}", "/controlplane.v1.KV/Put", "OK") for node_id in cluster.nodes}
        assert not audit.following and next(iter(audit), None) is None  # closed: no stream, no record
    agent_cert, agent_key = tls.issue(cluster.pki_dir, tls.Identity("agent", "audit-sdk"))
    as_agent = Credentials(ca=cluster.credentials.ca, cert=agent_cert, key=agent_key)
    with (
        Client(cluster.client_addresses, credentials=as_agent, timeout=30) as agent,
        pytest.raises(PermissionDenied, match="cluster:admin"),
    ):
        agent.watch_audit()


async def test_the_async_sdk_follows_every_servers_audit(cluster: LocalCluster) -> None:
    """The asyncio twin: subscribed to every server on return, and a put through each is delivered."""
    prefix = f"async-audit-{uuid.uuid4().hex[:6]}/"
    async with AsyncClient(cluster.client_addresses, credentials=cluster.credentials, timeout=30) as admin:
        audit = await admin.watch_audit()
        async with audit:
            assert sorted(audit.following) == sorted(cluster.nodes)
            for node_id, node in sorted(cluster.nodes.items()):
                async with AsyncClient(node.client_address, credentials=node.credentials, timeout=10) as one:
                    await one.put(f"{prefix}{node_id}", b"x")
            seen = set()
            with contextlib.suppress(TimeoutError):  # the assertions below then name what is missing
                async with asyncio.timeout(30):
                    async for record in audit:
                        if record.resource.startswith(prefix):
                            seen.add((record.node_id, record.who, record.code))
                        if len(seen) == len(cluster.nodes):
                            break
        assert {node_id for node_id, _, _ in seen} == set(cluster.nodes)
        assert {(who, code) for _, who, code in seen} == {("user:admin", "OK")}
        assert not audit.following


def test_the_sdk_provisions_users_roles_and_tokens(cluster: LocalCluster) -> None:
    """etcd's Auth API in the SDK (``client.auth``): a program makes a role, a user and a token, the
    token works for exactly what the role grants, and revoking it ends it."""
    suffix = uuid.uuid4().hex[:6]
    user, role, prefix = f"sdk-u-{suffix}", f"sdk-r-{suffix}", f"sdk/{suffix}/"
    admin_credentials = cluster.credentials
    with Client(cluster.client_addresses, credentials=admin_credentials, timeout=10) as admin:
        status = admin.auth.status()
        assert status.enabled and status.identity.startswith("user:") and status.revision > 0
        assert admin.auth.add_role(role).changed
        assert admin.auth.grant_permission(role, ("kv", "read", prefix)).changed
        assert admin.auth.add_user(user).changed
        assert admin.auth.grant_role(user, role).changed
        assert AuthUser(user, (role,)) in admin.auth.users()
        assert AuthRole(role, (Permission("kv", "read", prefix),)) in admin.auth.roles()
        created = admin.auth.create_token(user, ttl=3600, description="sdk test")
        assert created.token.startswith("cp1.") and created.token_id in created.token
        (listed,) = admin.auth.tokens(user)
        assert listed.token_id == created.token_id and listed.description == "sdk test" and not listed.revoked
        assert listed.expires_unix_ms > 0
        admin.put(f"{prefix}k", b"v")
        with pytest.raises(InvalidArgument, match="grant_permission"):
            admin.auth.grant_permission(role, ("kv",))  # type: ignore[arg-type]
        # Half a second is a second, never "no expiry"; a negative ttl is refused before sending.
        short = admin.auth.create_token(user, ttl=0.5)
        # Set (not "never"), and at most a second after the server made it: before now + 1 s. (No
        # lower bound: on a busy machine the call itself may take longer than the token lives.)
        assert 0 < short.expires_unix_ms <= time.time() * 1000 + 1_000
        with pytest.raises(InvalidArgument, match="ttl"):
            admin.auth.create_token(user, ttl=-1)
        # A retry of a creation that applied (same request id) cannot show the secret again: it
        # says so, rather than answering with a secret that was never stored.
        rid = f"sdk-token-{suffix}"
        admin.auth.create_token(user, request_id=rid)
        with pytest.raises(FailedPrecondition, match="secret cannot be shown again"):
            admin.auth.create_token(user, request_id=rid)
    # Asked of a follower (as `cpctl tokens create` may), which answers once the leader has: the
    # token it returns is the one stored, and it works there.
    leader = cluster.wait_for_leader(60)
    follower = followers(cluster, leader)[0]
    with admin_credentials.sync_channel_factory()(follower.client_address) as channel:
        from_follower = auth_pb2_grpc.AuthStub(channel).CreateToken(
            auth_pb2.CreateTokenRequest(user=user, request_id=f"follower-{suffix}"), timeout=10
        )
        status = auth_pb2_grpc.AuthStub(channel).Status(
            auth_pb2.AuthStatusRequest(), metadata=_metadata(from_follower.token), timeout=10
        )
        assert status.identity == f"user:{user}"
    # The client port asks every caller for a certificate; the token says who it is.
    cert, key = tls.issue(cluster.pki_dir, tls.Identity("client", f"sdk-cert-{suffix}"))
    with Client(
        cluster.client_addresses,
        credentials=Credentials(ca=admin_credentials.ca, cert=cert, key=key, token=created.token),
        timeout=10,
    ) as reader:
        got = reader.get(f"{prefix}k")
        assert got is not None and got.value == b"v"
        assert reader.auth.status().identity == f"user:{user}"
        with pytest.raises(PermissionDenied, match="kv:write"):
            reader.put(f"{prefix}k", b"w")
        with pytest.raises(PermissionDenied, match="cluster:admin"):
            reader.auth.users()
    with Client(cluster.client_addresses, credentials=admin_credentials, timeout=10) as admin:
        assert admin.auth.revoke_token(created.token_id).changed
        revoked = {token.token_id: token.revoked for token in admin.auth.tokens(user)}
        assert revoked[created.token_id] and len(revoked) == 4
        assert admin.auth.revoke_permission(role, Permission("kv", "read", prefix)).changed
        assert admin.auth.revoke_role(user, role).changed
        assert admin.auth.delete_user(user).changed and admin.auth.delete_role(role).changed
        assert user not in {found.name for found in admin.auth.users()}


def test_a_resolution_dry_run_needs_only_read_and_leaves_no_audit_record(cluster: LocalCluster) -> None:
    """The console shows a reader what `cpctl ports resolve --dry-run` would move: the plan needs
    ports:read and is not audited (it changes nothing); the moves need ports:write and are."""
    suffix = uuid.uuid4().hex[:6]
    host, user, role = f"plan-host-{suffix}", f"plan-u-{suffix}", f"plan-r-{suffix}"
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=30) as admin:
        held = admin.ports.allocate(host, "web", "http").assignment.port
        admin.ports.report_observed(host, [(held, "nginx")])
        admin.auth.add_role(role)
        admin.auth.grant_permission(role, ("ports", "read"))
        admin.auth.add_user(user)
        admin.auth.grant_role(user, role)
        token = admin.auth.create_token(user).token
        cert, key = tls.issue(cluster.pki_dir, tls.Identity("client", f"plan-cert-{suffix}"))
        as_reader = Credentials(ca=cluster.credentials.ca, cert=cert, key=key, token=token)
        # Every call below to the leader alone, whose audit records arrive in order: once the applied
        # one is here, a record of the dry run would have been too.
        at_leader = [cluster.nodes[cluster.wait_for_leader(60)].client_address]
        with (
            admin.watch_audit() as audit,
            Client(at_leader, credentials=as_reader, timeout=30) as reader,
            Client(at_leader, credentials=cluster.credentials, timeout=30) as admin_at_leader,
        ):
            plan = reader.ports.resolve_conflicts(host=host, dry_run=True)
            assert [(m.service, m.old_port) for m in plan.moves] == [("web", held)]
            with pytest.raises(PermissionDenied, match="ports:write"):
                reader.ports.resolve_conflicts(host=host)
            applied = admin_at_leader.ports.resolve_conflicts(host=host)
            assert [(m.service, m.old_port, m.new_port) for m in applied.moves] == [
                (m.service, m.old_port, m.new_port) for m in plan.moves
            ]
            seen = []
            give_up = threading.Timer(30, audit.close)
            give_up.start()
            for record in audit:
                if record.method == "/controlplane.v1.Ports/ResolveConflicts" and record.resource == host:
                    seen.append((record.who, record.code))
                    if record.code == "OK":
                        break
            give_up.cancel()
    assert seen == [(f"user:{user}", "PERMISSION_DENIED"), ("user:admin", "OK")]
