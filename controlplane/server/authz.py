"""Who is calling, and what each gRPC method of the client API needs (default deny).

``METHODS`` maps every full method name served on the client port to a function from its
request to the permissions it needs (``Need``; the resource is taken from the request). A method
missing from the table is refused for everyone but servers, and a test fails when a servicer
serves a method the table does not name, so a new RPC cannot be forgotten.

Open methods (no credential needed): gRPC health and reflection, so load balancers and
``grpcurl describe`` work. Authenticated-only (any identity, no permission): ``Cluster.Status``
(every client discovers the leader with it) and ``Auth.Status`` (tells a caller who it is).
Client-streaming methods (``Cluster.Restore``) are judged before their first message: their
needs do not depend on the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import structlog

from controlplane import errors, methods, tls
from controlplane.errors import ResourceExhausted, Unauthenticated
from controlplane.state.auth import ADMIN_USER, ANY_NODE, AuthTable, Caller, Need, allowed

log = structlog.get_logger(__name__)

#: Needs nothing: open to callers without credentials.
OPEN = "open"
#: Needs an identity, no permission.
AUTHENTICATED = "authenticated"

Rule = Callable[[Any], tuple[Need, ...]] | str


def _static(*needs: Need) -> Rule:
    return lambda _request: needs


def _kv(verb: str, field: str = "key") -> Rule:
    return lambda request: (Need("kv", verb, getattr(request, field)),)


def _model(verb: str) -> Rule:
    return lambda request: (Need("models", verb, request.model),)


def _host(verb: str, port_field: str = "") -> Rule:
    def needs(request: Any) -> tuple[Need, ...]:
        port = getattr(request, port_field) if port_field else 0
        return (Need("ports", verb, request.host, port),)

    return needs


def _node(domain: str, field: str = "node_id") -> Rule:
    """A change for one node: a write on ``domain``, or that node's own agent."""
    return lambda request: (Need(domain, "write", getattr(request, field), node=getattr(request, field)),)


def _check_permission(request: Any) -> tuple[Need, ...]:
    # Any agent may ask the artifact port's one question, whether a caller may read a model; every
    # other question is a cluster admin's (or a server's).
    port_question = (request.permission.domain, request.permission.verb) == ("models", "read")
    return (Need("cluster", "admin", node=ANY_NODE if port_question else ""),)


def _reserve(request: Any) -> tuple[Need, ...]:
    end = request.end_port or request.port
    return (Need("ports", "write", request.host, request.port), Need("ports", "write", request.host, end))


def _observed(request: Any) -> tuple[Need, ...]:
    # An agent reports the ports it observes on its own host (named by its node id).
    return (Need("ports", "write", request.host, node=request.host),)


def _parents_read(versions: Any) -> tuple[Need, ...]:
    """Naming a parent asks the registry about it (NOT_FOUND, "did you mean"): the caller must be
    allowed to read that model."""
    parents = {version.parent.model for version in versions if version.HasField("parent")}
    return tuple(Need("models", "read", name) for name in sorted(parents))


def _register(request: Any) -> tuple[Need, ...]:
    return (Need("models", "write", request.model), *_parents_read([request]))


def _bulk(request: Any) -> tuple[Need, ...]:
    written = sorted({version.model for version in request.versions})
    return (*(Need("models", "write", name) for name in written), *_parents_read(request.versions))


def _join(request: Any) -> tuple[Need, ...]:
    return (Need("membership", "write", request.network, node=request.node_id),)


def _watch(request: Any) -> tuple[Need, ...]:
    domains = list(request.filter.domains) or ["kv", "ports", "membership", "models", "gossip"]
    needs = []
    for domain in domains:
        if domain == "kv":
            needs.append(Need("kv", "read", request.filter.key_prefix))
        elif domain in ("ports", "models", "membership", "gossip"):
            needs.append(Need(domain, "read"))
        elif domain == "leases":
            needs.append(Need("membership", "read"))
        else:
            needs.append(Need("cluster", "admin"))
    return tuple(needs)


_ADMIN = _static(Need("cluster", "admin"))
_LEASE = _static(Need("membership", "write", node=ANY_NODE))
_PORTS_ALL_WRITE = _static(Need("ports", "write"))

METHODS: dict[str, Rule] = {
    "/grpc.health.v1.Health/Check": OPEN,
    "/grpc.health.v1.Health/Watch": OPEN,
    "/grpc.health.v1.Health/List": OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": OPEN,
    "/controlplane.v1.KV/Put": _kv("write"),
    "/controlplane.v1.KV/Get": _kv("read"),
    "/controlplane.v1.KV/Delete": _kv("write"),
    "/controlplane.v1.KV/List": _kv("read", "prefix"),
    "/controlplane.v1.KV/CompareAndSwap": _kv("write"),
    "/controlplane.v1.Watch/Watch": _watch,
    "/controlplane.v1.Cluster/Status": AUTHENTICATED,
    "/controlplane.v1.Cluster/AddMember": _ADMIN,
    "/controlplane.v1.Cluster/RemoveMember": _ADMIN,
    "/controlplane.v1.Cluster/TransferLeadership": _ADMIN,
    "/controlplane.v1.Cluster/Snapshot": _ADMIN,
    "/controlplane.v1.Cluster/Restore": _ADMIN,
    "/controlplane.v1.Ports/Allocate": _host("write"),
    "/controlplane.v1.Ports/Assign": _host("write", "port"),
    "/controlplane.v1.Ports/Release": _host("write", "port"),
    "/controlplane.v1.Ports/Reassign": _host("write", "port"),
    "/controlplane.v1.Ports/Reserve": _reserve,
    "/controlplane.v1.Ports/Unreserve": _reserve,
    "/controlplane.v1.Ports/SetRange": _PORTS_ALL_WRITE,
    "/controlplane.v1.Ports/DeleteRange": _PORTS_ALL_WRITE,
    "/controlplane.v1.Ports/ListRanges": _static(Need("ports", "read")),
    "/controlplane.v1.Ports/List": lambda request: (Need("ports", "read", request.host),),
    "/controlplane.v1.Ports/History": _static(Need("ports", "read")),
    "/controlplane.v1.Ports/ReportObserved": _observed,
    "/controlplane.v1.Ports/Conflicts": lambda request: (Need("ports", "read", request.host),),
    "/controlplane.v1.Ports/ResolveConflicts": _host("write"),
    "/controlplane.v1.Ports/Repair": _PORTS_ALL_WRITE,
    "/controlplane.v1.Ports/Stats": lambda request: (Need("ports", "read", request.host),),
    "/controlplane.v1.Ports/Export": _static(Need("ports", "read")),
    "/controlplane.v1.Ports/Import": _PORTS_ALL_WRITE,
    "/controlplane.v1.Services/Register": lambda request: (Need("ports", "write", request.manifest.host),),
    "/controlplane.v1.Services/Deregister": _host("write"),
    # An agent reads the instances on its own host (named by its node id) to check them.
    "/controlplane.v1.Services/List": lambda request: (Need("ports", "read", request.host, node=request.host),),
    # An agent reports the health of instances on its own host; a user needs a port write there.
    "/controlplane.v1.Services/ReportHealth": _observed,
    "/controlplane.v1.Services/Start": _host("write"),
    "/controlplane.v1.Services/Stop": _host("write"),
    # The agent of the instance's node reports the process it runs.
    "/controlplane.v1.Services/ReportRun": _observed,
    "/controlplane.v1.Leases/Grant": _LEASE,
    "/controlplane.v1.Leases/KeepAlive": _LEASE,
    "/controlplane.v1.Leases/Revoke": _LEASE,
    "/controlplane.v1.Leases/List": _static(Need("membership", "read")),
    "/controlplane.v1.Models/RegisterVersion": _register,
    "/controlplane.v1.Models/BulkRegister": _bulk,
    "/controlplane.v1.Models/UpdateModel": _model("write"),
    "/controlplane.v1.Models/SetVersionStatus": _model("write"),
    "/controlplane.v1.Models/UpdateVersion": _model("write"),
    "/controlplane.v1.Models/SetAlias": _model("alias"),
    "/controlplane.v1.Models/DeleteVersion": _model("write"),
    "/controlplane.v1.Models/DeleteModel": _model("write"),
    "/controlplane.v1.Models/AddReplica": lambda r: (Need("models", "write", r.model, node=r.node_id),),
    "/controlplane.v1.Models/RemoveReplica": lambda r: (Need("models", "write", r.model, node=r.node_id),),
    "/controlplane.v1.Models/GetModel": _model("read"),
    "/controlplane.v1.Models/GetVersion": _model("read"),
    "/controlplane.v1.Models/ListModels": lambda request: (Need("models", "read", request.prefix),),
    "/controlplane.v1.Models/Search": _static(Need("models", "read")),
    "/controlplane.v1.Membership/RegisterNode": lambda r: (Need("membership", "write", r.node.id, node=r.node.id),),
    "/controlplane.v1.Membership/Heartbeat": _node("membership"),
    "/controlplane.v1.Membership/DrainNode": _node("membership"),
    "/controlplane.v1.Membership/DeregisterNode": _node("membership"),
    "/controlplane.v1.Membership/ForgetNode": _static(Need("membership", "write")),
    "/controlplane.v1.Membership/GetNode": _static(Need("membership", "read")),
    "/controlplane.v1.Membership/ListNodes": _static(Need("membership", "read")),
    "/controlplane.v1.Membership/CreateNetwork": _static(Need("membership", "write")),
    "/controlplane.v1.Membership/UpdateNetwork": _static(Need("membership", "write")),
    "/controlplane.v1.Membership/DeleteNetwork": _static(Need("membership", "write")),
    "/controlplane.v1.Membership/GetNetwork": _static(Need("membership", "read")),
    "/controlplane.v1.Membership/ListNetworks": _static(Need("membership", "read")),
    "/controlplane.v1.Membership/JoinNetwork": _join,
    "/controlplane.v1.Membership/LeaveNetwork": _join,
    "/controlplane.v1.Membership/Assign": _static(Need("membership", "write")),
    "/controlplane.v1.Membership/ListPlacements": _static(Need("membership", "read")),
    "/controlplane.v1.Membership/SetFlag": _static(Need("membership", "write")),
    "/controlplane.v1.Membership/ListFlags": _static(Need("membership", "read")),
    "/controlplane.v1.Gossip/ReportBandwidth": _node("gossip"),
    "/controlplane.v1.Gossip/GetBandwidth": _static(Need("gossip", "read")),
    "/controlplane.v1.Gossip/StartRound": _static(Need("gossip", "write")),
    "/controlplane.v1.Gossip/ReportRound": _node("gossip"),
    "/controlplane.v1.Gossip/EndRound": _static(Need("gossip", "write")),
    "/controlplane.v1.Gossip/GetRound": _static(Need("gossip", "read")),
    "/controlplane.v1.Gossip/ListRounds": _static(Need("gossip", "read")),
    "/controlplane.v1.Gossip/ConfigureGroup": _static(Need("gossip", "write")),
    "/controlplane.v1.Gossip/GetGroup": _static(Need("gossip", "read")),
    "/controlplane.v1.Gossip/ListGroups": _static(Need("gossip", "read")),
    "/controlplane.v1.Gossip/DeleteGroup": _static(Need("gossip", "write")),
    "/controlplane.v1.Auth/Status": AUTHENTICATED,
    "/controlplane.v1.Auth/SetEnabled": _ADMIN,
    "/controlplane.v1.Auth/AddUser": _ADMIN,
    "/controlplane.v1.Auth/DeleteUser": _ADMIN,
    "/controlplane.v1.Auth/ListUsers": _ADMIN,
    "/controlplane.v1.Auth/GrantRole": _ADMIN,
    "/controlplane.v1.Auth/RevokeRole": _ADMIN,
    "/controlplane.v1.Auth/AddRole": _ADMIN,
    "/controlplane.v1.Auth/DeleteRole": _ADMIN,
    "/controlplane.v1.Auth/ListRoles": _ADMIN,
    "/controlplane.v1.Auth/GrantPermission": _ADMIN,
    "/controlplane.v1.Auth/RevokePermission": _ADMIN,
    "/controlplane.v1.Auth/CreateToken": _ADMIN,
    "/controlplane.v1.Auth/ListTokens": _ADMIN,
    "/controlplane.v1.Auth/RevokeToken": _ADMIN,
    # Asked by the agents guarding their artifact ports (about models:read only), servers and admins.
    "/controlplane.v1.Auth/Check": _check_permission,
    "/controlplane.v1.Auth/WatchAudit": _ADMIN,
}

#: Methods that only read: every other one is written to the audit log. Which change state is
#: declared once, next to each method in its proto (``option (controlplane.v1.write)``).
READ_ONLY = frozenset(
    method for method in METHODS if not method.startswith("/controlplane.") or not methods.is_write(method)
)


def caller_kind(role: str) -> str:
    """The caller kind a certificate role speaks for: a ``client`` certificate is a user's."""
    return "user" if role == "client" else role


def caller_from_certificate(uris: list[str]) -> Caller | None:
    """The caller a verified client certificate speaks for (its first controlplane URI SAN)."""
    for uri in uris:
        try:
            identity = tls.Identity.from_uri(uri)
        except tls.TlsError:
            continue
        return Caller(caller_kind(identity.role), identity.id)
    return None


def needs_of(method: str, request: Any) -> tuple[Need, ...] | str | None:
    """What ``method`` needs for ``request``: OPEN, AUTHENTICATED, a tuple of needs, or None for
    a method missing from the table (refused)."""
    rule = METHODS.get(method)
    if rule is None or isinstance(rule, str):
        return rule
    return rule(request)


class PermissionDenied(errors.PermissionDenied):
    """The client's error, plus who was refused and for what (for the audit log)."""

    def __init__(self, message: str, caller: Caller, resource: str = "") -> None:
        super().__init__(message)
        self.caller = caller
        self.resource = resource


class Authorizer:
    """Identifies the caller of each call and checks it against ``METHODS`` and the auth state.

    ``auth_state`` is read on every call (the machine can be replaced by a snapshot install), so a
    committed revocation or grant applies to the next call on this server.
    """

    def __init__(
        self, auth_state: Callable[[], AuthTable], insecure_dev: bool, limiter: RateLimiter | None = None
    ) -> None:
        self._auth_state = auth_state
        self._insecure_dev = insecure_dev
        self._limiter = limiter

    def identify(self, context: grpc.aio.ServicerContext) -> Caller | None:
        """The caller, or None (no credential). Raises Unauthenticated for a bad token."""
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                scheme, _, token = str(value).partition(" ")
                if scheme.lower() != "bearer" or not token:
                    raise Unauthenticated("the authorization metadata must be 'Bearer <token>'")
                break
        if token:
            user, problem = self._auth_state().authenticate(token.strip(), int(time.time() * 1000))
            if problem:
                raise Unauthenticated(problem)
            return Caller("user", user)
        auth_context = context.auth_context() or {}
        uris = [
            value.decode(errors="replace")
            for value in auth_context.get("x509_subject_alternative_name", ())
            if value.lower().startswith(tls.URI_PREFIX.encode())
        ]
        if len(uris) == 1:
            return caller_from_certificate(uris)
        if not auth_context.get("x509_pem_cert") and self._insecure_dev:
            # --insecure-dev: a caller without credentials is the admin (the server warned at start).
            return Caller("user", ADMIN_USER)
        return None

    def check(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> tuple[Caller | None, str]:
        """Raise Unauthenticated or PermissionDenied unless the caller may make this call; returns
        the caller and the resources the call names (for the audit log)."""
        rule = METHODS.get(method)
        if rule == OPEN:
            return None, ""
        caller = self.identify(context)
        if caller is None:
            raise Unauthenticated(
                f"{method} needs credentials: a client certificate from the cluster CA or "
                "'authorization: Bearer <token>' (cpctl --token, CP_TOKEN)"
            )
        if self._limiter is not None and caller.kind != "server":
            self._limiter.take(str(caller))
        if rule == AUTHENTICATED:
            return caller, ""
        state = self._auth_state()
        if rule is None:
            if caller.kind == "server":
                return caller, ""
            raise PermissionDenied(f"{method} is not open to clients; your identity is {caller}", caller)
        assert not isinstance(rule, str)
        needs = rule(request)
        for need in needs:
            if not allowed(state, caller, need):
                raise PermissionDenied(f"this call needs {need}; your identity is {caller}", caller, need.resource)
        return caller, ",".join(need.resource for need in needs if need.resource)


RETRY_AFTER_KEY = "cp-retry-after-ms"


class RateLimited(ResourceExhausted):
    """The caller's identity is over its request rate; the trailing metadata says when to retry."""

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (*super().metadata(), (RETRY_AFTER_KEY, str(self.retry_after_ms)))


class RateLimiter:
    """A token bucket per identity: ``rate`` requests a second on average, bursts of ``burst``.

    Per server (not replicated): a caller spreading its calls over N servers gets N times the rate.
    Identities are few (users, agents), so the table is a dict; it is cleared when it grows past
    ``max_identities`` (a flood of distinct tokens is refused by authentication first anyway).
    """

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic, max_identities: int = 100_000
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max = max_identities
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, identity: str) -> None:
        """Spend one request of ``identity``; raise RateLimited when its bucket is empty."""
        now = self._clock()
        tokens, stamp = self._buckets.get(identity, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens < 1:
            retry_ms = max(1, int((1 - tokens) / self.rate * 1000))
            self._buckets[identity] = (tokens, now)
            raise RateLimited(
                f"{identity} is over its rate of {self.rate:g} requests/s on this server; retry in {retry_ms} ms",
                retry_ms,
            )
        if len(self._buckets) >= self._max and identity not in self._buckets:
            self._buckets.clear()
        self._buckets[identity] = (tokens - 1, now)
