"""Every gRPC method the client port serves declares what it needs in its proto (default deny),
and the needs come from the request."""

from __future__ import annotations

import importlib
import pkgutil

import grpc
import pytest
from google.protobuf import text_format
from grpc.aio import AioRpcError, Metadata
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from controlplane import errors, methods
from controlplane.server import authz
from controlplane.state.auth import Need
from controlplane.state.machine import StateMachine
from controlplane.v1 import cluster_pb2, kv_pb2, membership_pb2, models_pb2, options_pb2, ports_pb2

SERVED = methods.CLIENT_PORT_FILES


# Served on their own ports (the artifact port, the gossip exchange, the Raft peer plane).
NOT_ON_THE_CLIENT_PORT = {"controlplane.v1.Artifacts", "controlplane.v1.GossipPeer", "controlplane.v1.RaftPeer"}


def test_every_service_in_the_protos_is_known() -> None:
    """A new .proto service is either on the client port (then in methods.CLIENT_PORT_FILES, and in
    the table) or not."""
    import controlplane.v1

    services: set[str] = set()
    for info in pkgutil.iter_modules(controlplane.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"controlplane.v1.{info.name}")
            services.update(service.full_name for service in module.DESCRIPTOR.services_by_name.values())
    served = {service.full_name for module in SERVED for service in module.DESCRIPTOR.services_by_name.values()}
    assert services - NOT_ON_THE_CLIENT_PORT == served


def _served_methods() -> set[str]:
    methods: set[str] = set()
    for module in (*SERVED, health_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            methods.update(f"/{service.full_name}/{method.name}" for method in service.methods)
    methods.add(f"/{reflection.SERVICE_NAME}/ServerReflectionInfo")
    return methods


def test_every_served_method_is_in_the_table() -> None:
    missing = sorted(_served_methods() - set(authz.METHODS))
    assert not missing, f"declare option (controlplane.v1.access) on these methods in their protos: {missing}"
    stale = sorted(set(authz.METHODS) - _served_methods())
    assert not stale, f"METHODS names methods no servicer serves: {stale}"


@pytest.mark.parametrize(
    ("access", "problem"),
    [
        (options_pb2.Access(rule="nope"), "authz.RULES does not have"),
        (options_pb2.Access(domain="kv", verb="delete"), "not a permission"),
        (options_pb2.Access(domain="quotas", verb="read"), "not a permission"),
    ],
)
def test_a_declaration_naming_nothing_known_stops_the_table_being_built(
    access: options_pb2.Access, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        authz._declared("/controlplane.v1.KV/Put", access)


def test_declared_fields_reach_the_need() -> None:
    """A nested resource path, a port and the node the call acts for, as the protos declare them."""
    manifest = ports_pb2.RegisterServiceRequest(manifest=ports_pb2.ServiceManifest(host="h1", name="api"))
    assert authz.needs_of("/controlplane.v1.Services/Register", manifest) == (Need("ports", "write", "h1"),)
    assign = ports_pb2.AssignRequest(host="h1", service="web", port=8080)
    assert authz.needs_of("/controlplane.v1.Ports/Assign", assign) == (Need("ports", "write", "h1", 8080),)
    register = membership_pb2.RegisterNodeRequest(node=membership_pb2.NodeSpec(id="n7"))
    assert authz.needs_of("/controlplane.v1.Membership/RegisterNode", register) == (
        Need("membership", "write", "n7", node="n7"),
    )
    assert authz.needs_of("/controlplane.v1.Leases/Grant", None) == (Need("membership", "write", node="*"),)
    assert authz.needs_of("/controlplane.v1.Cluster/Status", None) == authz.AUTHENTICATED
    assert authz.needs_of("/grpc.health.v1.Health/Check", None) == authz.OPEN


def test_every_rule_runs_on_an_empty_request() -> None:
    for method, rule in authz.METHODS.items():
        if isinstance(rule, str):
            continue
        service, name = method.strip("/").split("/")
        module = next(m for m in (*SERVED,) if service.split(".")[-1] in m.DESCRIPTOR.services_by_name)
        descriptor = module.DESCRIPTOR.services_by_name[service.split(".")[-1]].methods_by_name[name]
        request_class = getattr(module, descriptor.input_type.name, None)
        if request_class is None:  # a request type defined in another file
            from google.protobuf import message_factory

            request_class = message_factory.GetMessageClass(descriptor.input_type)
        needs = rule(request_class())
        assert isinstance(needs, tuple) and all(isinstance(need, Need) for need in needs), method


def test_needs_take_their_resource_from_the_request() -> None:
    assert authz.needs_of("/controlplane.v1.KV/Put", kv_pb2.PutRequest(key="app/x")) == (Need("kv", "write", "app/x"),)
    assert authz.needs_of("/controlplane.v1.Models/SetAlias", models_pb2.SetAliasRequest(model="resnet")) == (
        Need("models", "alias", "resnet"),
    )
    heartbeat = membership_pb2.HeartbeatRequest(node_id="n7")
    assert authz.needs_of("/controlplane.v1.Membership/Heartbeat", heartbeat) == (
        Need("membership", "write", "n7", node="n7"),
    )
    report = ports_pb2.ReportHealthRequest(host="n7", name="api")
    assert authz.needs_of("/controlplane.v1.Services/ReportHealth", report) == (
        Need("ports", "write", "n7", node="n7"),
    )
    assert authz.needs_of("/controlplane.v1.Nope/Nope", None) is None


def test_a_dry_run_of_the_conflict_resolution_needs_only_read() -> None:
    """The plan is computed from the state and changes nothing (the console shows it to readers);
    the moves themselves need write on the host."""
    path = "/controlplane.v1.Ports/ResolveConflicts"
    plan = ports_pb2.ResolveConflictsRequest(host="gpu-01", dry_run=True)
    assert authz.needs_of(path, plan) == (Need("ports", "read", "gpu-01"),)
    assert authz.needs_of(path, ports_pb2.ResolveConflictsRequest(host="gpu-01")) == (Need("ports", "write", "gpu-01"),)


def test_the_dry_run_methods_are_every_one_whose_request_has_a_dry_run() -> None:
    """The audit skips a dry run only of these: each must be unary (its request is one message)."""
    with_dry_run = set()
    for module in SERVED:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                field = method.input_type.fields_by_name.get("dry_run")
                if field is not None:
                    assert field.type == field.TYPE_BOOL and not method.client_streaming, method.full_name
                    with_dry_run.add(f"/{service.full_name}/{method.name}")
    assert with_dry_run == authz.DRY_RUN_METHODS


def test_naming_a_parent_needs_read_on_its_model() -> None:
    """The registry answers whether a parent exists (NOT_FOUND, "did you mean"): only to whoever may read it."""
    derived = models_pb2.RegisterVersionRequest(model="ft", parent=models_pb2.VersionRef(model="base", version=1))
    assert authz.needs_of("/controlplane.v1.Models/RegisterVersion", derived) == (
        Need("models", "write", "ft"),
        Need("models", "read", "base"),
    )
    bulk = models_pb2.BulkRegisterRequest(versions=[derived, models_pb2.RegisterVersionRequest(model="ft")])
    assert authz.needs_of("/controlplane.v1.Models/BulkRegister", bulk) == (
        Need("models", "write", "ft"),
        Need("models", "read", "base"),
    )


def test_rate_limiter_refuses_over_the_rate_with_a_retry_hint() -> None:
    now = [0.0]
    limiter = authz.RateLimiter(rate=10, burst=2, clock=lambda: now[0])
    limiter.take("user:bob")
    limiter.take("user:bob")
    try:
        limiter.take("user:bob")
    except authz.RateLimited as exc:
        assert dict(exc.metadata())[authz.RETRY_AFTER_KEY] == "100"
        assert exc.code.name == "RESOURCE_EXHAUSTED"
    else:
        raise AssertionError("the third call within the burst was allowed")
    limiter.take("user:alice")  # another identity has its own bucket
    now[0] = 0.1
    limiter.take("user:bob")  # refilled one


# Who may call what (by /controlplane.v1.<Service>/<Method>), as data: the protos declare it, and
# this copy is kept by hand on purpose, so that opening a method (a node field, any_node, "open") is
# a change in two places and a review.
# Checked equal to the hand-written table the declarations replaced (28eb132) on every method.
DECLARED_ACCESS = {
    "Auth/AddRole": 'domain: "cluster" verb: "admin"',
    "Auth/AddUser": 'domain: "cluster" verb: "admin"',
    "Auth/Check": 'rule: "check_permission"',
    "Auth/CreateToken": 'domain: "cluster" verb: "admin"',
    "Auth/DeleteRole": 'domain: "cluster" verb: "admin"',
    "Auth/DeleteUser": 'domain: "cluster" verb: "admin"',
    "Auth/GrantPermission": 'domain: "cluster" verb: "admin"',
    "Auth/GrantRole": 'domain: "cluster" verb: "admin"',
    "Auth/ListRoles": 'domain: "cluster" verb: "admin"',
    "Auth/ListTokens": 'domain: "cluster" verb: "admin"',
    "Auth/ListUsers": 'domain: "cluster" verb: "admin"',
    "Auth/RevokePermission": 'domain: "cluster" verb: "admin"',
    "Auth/RevokeRole": 'domain: "cluster" verb: "admin"',
    "Auth/RevokeToken": 'domain: "cluster" verb: "admin"',
    "Auth/SetEnabled": 'domain: "cluster" verb: "admin"',
    "Auth/Status": 'domain: "authenticated"',
    "Auth/WatchAudit": 'domain: "cluster" verb: "admin"',
    # Opening the stream needs an identity; each call it carries is judged as that call (server/calls.py).
    "Calls/Carry": 'domain: "authenticated"',
    "Cluster/AddMember": 'domain: "cluster" verb: "admin"',
    "Cluster/RemoveMember": 'domain: "cluster" verb: "admin"',
    "Cluster/Restore": 'domain: "cluster" verb: "admin"',
    "Cluster/Snapshot": 'domain: "cluster" verb: "admin"',
    "Cluster/Status": 'domain: "authenticated"',
    "Cluster/TransferLeadership": 'domain: "cluster" verb: "admin"',
    "Gossip/ConfigureGroup": 'domain: "gossip" verb: "write"',
    "Gossip/DeleteGroup": 'domain: "gossip" verb: "write"',
    "Gossip/EndRound": 'domain: "gossip" verb: "write"',
    "Gossip/GetBandwidth": 'domain: "gossip" verb: "read"',
    "Gossip/GetGroup": 'domain: "gossip" verb: "read"',
    "Gossip/GetRound": 'domain: "gossip" verb: "read"',
    "Gossip/ListGroups": 'domain: "gossip" verb: "read"',
    "Gossip/ListRounds": 'domain: "gossip" verb: "read"',
    "Gossip/ReportBandwidth": 'domain: "gossip" verb: "write" resource: "node_id" node: "node_id"',
    "Gossip/ReportRound": 'domain: "gossip" verb: "write" resource: "node_id" node: "node_id"',
    "Gossip/StartRound": 'domain: "gossip" verb: "write"',
    "KV/CompareAndSwap": 'domain: "kv" verb: "write" resource: "key"',
    "KV/Delete": 'domain: "kv" verb: "write" resource: "key"',
    "KV/Get": 'domain: "kv" verb: "read" resource: "key"',
    "KV/List": 'domain: "kv" verb: "read" resource: "prefix"',
    "KV/Put": 'domain: "kv" verb: "write" resource: "key"',
    "Leases/Grant": 'domain: "membership" verb: "write" any_node: true',
    "Leases/KeepAlive": 'domain: "membership" verb: "write" any_node: true',
    "Leases/List": 'domain: "membership" verb: "read"',
    "Leases/Revoke": 'domain: "membership" verb: "write" any_node: true',
    "Membership/Assign": 'domain: "membership" verb: "write"',
    "Membership/CreateNetwork": 'domain: "membership" verb: "write"',
    "Membership/DeleteNetwork": 'domain: "membership" verb: "write"',
    "Membership/DeregisterNode": 'domain: "membership" verb: "write" resource: "node_id" node: "node_id"',
    "Membership/DrainNode": 'domain: "membership" verb: "write" resource: "node_id" node: "node_id"',
    "Membership/ForgetNode": 'domain: "membership" verb: "write"',
    "Membership/GetNetwork": 'domain: "membership" verb: "read"',
    "Membership/GetNode": 'domain: "membership" verb: "read"',
    "Membership/Heartbeat": 'domain: "membership" verb: "write" resource: "node_id" node: "node_id"',
    "Membership/JoinNetwork": 'domain: "membership" verb: "write" resource: "network" node: "node_id"',
    "Membership/LeaveNetwork": 'domain: "membership" verb: "write" resource: "network" node: "node_id"',
    "Membership/ListFlags": 'domain: "membership" verb: "read"',
    "Membership/ListNetworks": 'domain: "membership" verb: "read"',
    "Membership/ListNodes": 'domain: "membership" verb: "read"',
    "Membership/ListPlacements": 'domain: "membership" verb: "read"',
    "Membership/ListUnplaced": 'domain: "membership" verb: "read"',
    "Membership/RegisterNode": 'domain: "membership" verb: "write" resource: "node.id" node: "node.id"',
    "Membership/SetFlag": 'domain: "membership" verb: "write"',
    "Membership/UpdateNetwork": 'domain: "membership" verb: "write"',
    "Models/AddReplica": 'domain: "models" verb: "write" resource: "model" node: "node_id"',
    "Models/BulkRegister": 'rule: "bulk_register"',
    "Models/DeleteModel": 'domain: "models" verb: "write" resource: "model"',
    "Models/DeleteVersion": 'domain: "models" verb: "write" resource: "model"',
    "Models/GetModel": 'domain: "models" verb: "read" resource: "model"',
    "Models/GetVersion": 'domain: "models" verb: "read" resource: "model"',
    "Models/ListModels": 'domain: "models" verb: "read" resource: "prefix"',
    "Models/RegisterVersion": 'rule: "register_version"',
    "Models/RemoveReplica": 'domain: "models" verb: "write" resource: "model" node: "node_id"',
    "Models/Search": 'domain: "models" verb: "read"',
    "Models/SetAlias": 'domain: "models" verb: "alias" resource: "model"',
    "Models/SetVersionStatus": 'domain: "models" verb: "write" resource: "model"',
    "Models/UpdateModel": 'domain: "models" verb: "write" resource: "model"',
    "Models/UpdateVersion": 'domain: "models" verb: "write" resource: "model"',
    "Ports/Allocate": 'domain: "ports" verb: "write" resource: "host"',
    "Ports/Assign": 'domain: "ports" verb: "write" resource: "host" port: "port"',
    "Ports/Conflicts": 'domain: "ports" verb: "read" resource: "host"',
    "Ports/DeleteRange": 'domain: "ports" verb: "write"',
    "Ports/Export": 'domain: "ports" verb: "read"',
    "Ports/History": 'domain: "ports" verb: "read"',
    "Ports/Import": 'domain: "ports" verb: "write"',
    "Ports/List": 'domain: "ports" verb: "read" resource: "host"',
    "Ports/ListRanges": 'domain: "ports" verb: "read"',
    "Ports/Reassign": 'domain: "ports" verb: "write" resource: "host" port: "port"',
    "Ports/Release": 'domain: "ports" verb: "write" resource: "host" port: "port"',
    "Ports/Repair": 'domain: "ports" verb: "write"',
    "Ports/ReportObserved": 'domain: "ports" verb: "write" resource: "host" node: "host"',
    "Ports/Reserve": 'rule: "port_range"',
    "Ports/ResolveConflicts": 'rule: "resolve_conflicts"',
    "Ports/SetRange": 'domain: "ports" verb: "write"',
    "Ports/Stats": 'domain: "ports" verb: "read" resource: "host"',
    "Ports/Unreserve": 'rule: "port_range"',
    "Services/Deregister": 'domain: "ports" verb: "write" resource: "host"',
    "Services/List": 'domain: "ports" verb: "read" resource: "host" node: "host"',
    "Services/Register": 'domain: "ports" verb: "write" resource: "manifest.host"',
    "Services/ReportHealth": 'domain: "ports" verb: "write" resource: "host" node: "host"',
    "Services/ReportRun": 'domain: "ports" verb: "write" resource: "host" node: "host"',
    "Services/Start": 'domain: "ports" verb: "write" resource: "host"',
    "Services/Stop": 'domain: "ports" verb: "write" resource: "host"',
    "Watch/Watch": 'rule: "watch"',
}


def test_the_declared_access_is_exactly_the_reviewed_table() -> None:
    declared = {
        path.removeprefix("/controlplane.v1."): text_format.MessageToString(access, as_one_line=True)
        for path, access in methods.declared_access().items()
    }
    changed = {path: (DECLARED_ACCESS.get(path), declared.get(path)) for path in {*declared, *DECLARED_ACCESS}}
    assert not {path: pair for path, pair in changed.items() if pair[0] != pair[1]}


@pytest.mark.parametrize(
    ("path", "access", "problem"),
    [
        ("/controlplane.v1.KV/Put", options_pb2.Access(rule="watch", domain="kv"), "together with"),
        ("/controlplane.v1.KV/Put", options_pb2.Access(domain="open", verb="read"), "together with"),
        ("/controlplane.v1.KV/Put", options_pb2.Access(domain="kv", verb="write", port="key"), "port on the kv domain"),
        (
            "/controlplane.v1.Leases/Grant",
            options_pb2.Access(domain="membership", verb="write", node="lease_id", any_node=True),
            "both any_node",
        ),
        ("/controlplane.v1.KV/Put", options_pb2.Access(domain="kv", verb="write", resource="nope"), "no single field"),
        ("/controlplane.v1.KV/Put", options_pb2.Access(domain="kv", verb="write", resource="value"), "wrong type"),
        (
            "/controlplane.v1.Services/Register",
            options_pb2.Access(domain="ports", verb="write", resource="manifest"),
            "wrong type",
        ),
    ],
)
def test_a_declaration_saying_two_things_or_naming_a_wrong_field_is_refused(
    path: str, access: options_pb2.Access, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        authz._declared(path, access, methods.descriptor(path).input_type)


class _PeerContext:
    """What ``Authorizer.identify`` reads of a call: its metadata and gRPC's view of the peer."""

    def __init__(self, key: str | None, identities: list[bytes] | None, pem: bytes = b"") -> None:
        self._key, self._identities, self._pem = key, identities, pem

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def peer_identity_key(self) -> str | None:
        return self._key

    def peer_identities(self) -> list[bytes] | None:
        return self._identities

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]} if self._pem else {}


def test_a_caller_is_named_by_its_certificates_one_controlplane_uri_san_and_never_by_its_cn() -> None:
    identify = authz.Authorizer(lambda: None, insecure_dev=False).identify  # type: ignore[arg-type,return-value]
    san = "x509_subject_alternative_name"
    named = _PeerContext(san, [b"DNS-or-IP-name", b"urn:controlplane:agent:n7"])
    assert identify(named) == authz.Caller("agent", "n7")  # type: ignore[arg-type]
    assert identify(named) is identify(named)  # type: ignore[arg-type]  # kept per certificate
    assert identify(_PeerContext(san, [b"urn:controlplane:client:alice"])) == authz.Caller("user", "alice")  # type: ignore[arg-type]
    two = _PeerContext(san, [b"urn:controlplane:server:a", b"URN:ControlPlane:server:b"])
    assert identify(two) is None  # type: ignore[arg-type]  # ambiguous
    # gRPC names the subject CN as the identity of a certificate without SANs: not an identity here.
    cn = _PeerContext("x509_common_name", [b"urn:controlplane:server:n1"], pem=b"-----BEGIN CERTIFICATE-----")
    assert identify(cn) is None  # type: ignore[arg-type]
    assert identify(_PeerContext(None, None)) is None  # type: ignore[arg-type]


def test_only_a_caller_without_any_certificate_is_the_admin_under_insecure_dev() -> None:
    identify = authz.Authorizer(lambda: None, insecure_dev=True).identify  # type: ignore[arg-type,return-value]
    assert identify(_PeerContext(None, None)) == authz.Caller("user", "admin")  # type: ignore[arg-type]
    cn_only = _PeerContext("x509_common_name", [b"someone"], pem=b"-----BEGIN CERTIFICATE-----")
    assert identify(cn_only) is None  # type: ignore[arg-type]


def test_a_removed_servers_certificate_may_only_ask_what_every_identity_may() -> None:
    """A server identity may do anything; once its id is removed from the cluster (barred for ever),
    its certificate may still read the cluster's status (how a removed server learns it was removed)
    and nothing else, so a decommissioned server's key opens nothing."""
    machine = StateMachine()
    removed: set[str] = set()
    authorizer = authz.Authorizer(lambda: machine.auth, insecure_dev=False, removed_servers=lambda: removed)
    san = "x509_subject_alternative_name"
    n3 = _PeerContext(san, [b"urn:controlplane:server:n3"])
    n1 = _PeerContext(san, [b"urn:controlplane:server:n1"])
    put, status = "/controlplane.v1.KV/Put", "/controlplane.v1.Cluster/Status"
    add_member = "/controlplane.v1.Cluster/AddMember"
    assert authorizer.check(put, kv_pb2.PutRequest(key="k"), n3)[0] == authz.Caller("server", "n3")  # type: ignore[arg-type]
    removed.add("n3")
    for method, request in ((put, kv_pb2.PutRequest(key="k")), (add_member, cluster_pb2.AddMemberRequest(id="n3"))):
        with pytest.raises(authz.PermissionDenied, match="server n3 was removed from this cluster"):
            authorizer.check(method, request, n3)  # type: ignore[arg-type]
    assert authorizer.check(status, cluster_pb2.StatusRequest(), n3)[0] == authz.Caller("server", "n3")  # type: ignore[arg-type]
    assert authorizer.check(put, kv_pb2.PutRequest(key="k"), n1)[0] == authz.Caller("server", "n1")  # type: ignore[arg-type]

    # With a rate limit: refused as removed however many calls it makes (never RESOURCE_EXHAUSTED,
    # which a forwarding server would pass on as is); its status reads are limited as anyone's.
    limited = authz.Authorizer(
        lambda: machine.auth,
        insecure_dev=False,
        limiter=authz.RateLimiter(1, 1, clock=lambda: 0.0),  # a stopped clock: no refill between calls
        removed_servers=lambda: removed,
    )
    for _ in range(5):
        with pytest.raises(authz.PermissionDenied, match="was removed"):
            limited.check(put, kv_pb2.PutRequest(key="k"), n3)  # type: ignore[arg-type]
    limited.check(status, cluster_pb2.StatusRequest(), n3)  # type: ignore[arg-type]
    with pytest.raises(authz.RateLimited):
        limited.check(status, cluster_pb2.StatusRequest(), n3)  # type: ignore[arg-type]


def test_a_forwarded_call_refused_for_the_forwarding_servers_identity_is_unavailable_to_its_caller() -> None:
    """A removed server that has not learnt it yet hands a caller's write to the leader as itself and
    is refused: its caller, authorised where it called, is told to ask another server."""

    def refused(code: grpc.StatusCode, details: str) -> AioRpcError:
        return AioRpcError(code, Metadata(), Metadata(), details=details)

    denied = refused(grpc.StatusCode.PERMISSION_DENIED, "server n3 was removed from this cluster")
    error = authz.forwarded_error(denied, "n3")
    assert isinstance(error, errors.Unavailable)
    assert "n3 cannot hand this call to the leader (server n3 was removed" in error.message
    # Every other answer is the caller's as it came.
    exists = authz.forwarded_error(refused(grpc.StatusCode.ALREADY_EXISTS, "n4 is a member"), "n3")
    assert isinstance(exists, errors.AlreadyExists) and exists.message == "n4 is a member"
