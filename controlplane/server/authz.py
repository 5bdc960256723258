"""Who is calling, and what each gRPC method of the client API needs (default deny).

What a method needs is declared next to it in its proto (``option (controlplane.v1.access)``,
``proto/controlplane/v1/options.proto``): a permission on a domain's resource, named by a field
of the request, or one of the few ``RULES`` below by name. ``METHODS`` is built from those
declarations: it maps every full method name served on the client port to a function from its
request to the permissions it needs (``Need``). A method without a declaration is refused for
everyone but servers, and a test fails when a servicer serves a method that declares nothing, so a
new RPC cannot be forgotten.

Open methods (no credential needed): gRPC health and reflection, so load balancers and
``grpcurl describe`` work. Authenticated-only (any identity, no permission): ``Cluster.Status``
(every client discovers the leader with it) and ``Auth.Status`` (tells a caller who it is).
Client-streaming methods (``Cluster.Restore``) are judged before their first message: their
needs do not depend on the request.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection
from typing import Any

import grpc
import structlog
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from controlplane import errors, methods, tls
from controlplane.errors import ResourceExhausted, Unauthenticated
from controlplane.state.auth import ADMIN_USER, ANY_NODE, DOMAINS, VERBS, AuthTable, Caller, Need, allowed
from controlplane.v1 import options_pb2

log = structlog.get_logger(__name__)

#: Needs nothing: open to callers without credentials.
OPEN = "open"
#: Needs an identity, no permission.
AUTHENTICATED = "authenticated"

Rule = Callable[[Any], tuple[Need, ...]] | str


def _check_permission(request: Any) -> tuple[Need, ...]:
    # Any agent may ask the artifact port's one question, whether a caller may read a model; every
    # other question is a cluster admin's (or a server's).
    port_question = (request.permission.domain, request.permission.verb) == ("models", "read")
    return (Need("cluster", "admin", node=ANY_NODE if port_question else ""),)


def _reserve(request: Any) -> tuple[Need, ...]:
    end = request.end_port or request.port
    return (Need("ports", "write", request.host, request.port), Need("ports", "write", request.host, end))


def _resolve(request: Any) -> tuple[Need, ...]:
    # A dry run only computes the moves from the state (the console shows them to readers); the
    # moves themselves are a write.
    return (Need("ports", "read" if request.dry_run else "write", request.host),)


#: Writes whose request's ``dry_run`` makes them a read (their rule above needs a read for it, and
#: their servicer answers it without the log): the interceptor does not audit a dry run of these.
#: tests/test_authz_table.py checks it names every unary method whose request has ``dry_run``.
DRY_RUN_METHODS = frozenset({"/controlplane.v1.Ports/ResolveConflicts"})


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


#: The rules too particular to declare in a proto (``Access.rule`` names them).
RULES: dict[str, Callable[[Any], tuple[Need, ...]]] = {
    "watch": _watch,
    "port_range": _reserve,
    "resolve_conflicts": _resolve,
    "register_version": _register,
    "bulk_register": _bulk,
    "check_permission": _check_permission,
}

#: Served next to the client API by grpcio itself: open to everyone.
_OPEN_METHODS = (
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.health.v1.Health/List",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)


_TEXT = (FieldDescriptor.TYPE_STRING,)
_NUMBERS = (
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_INT64,
)


def _field(request: Any, path: tuple[str, ...]) -> Any:
    """The value at a field path of ``request`` (("manifest", "host")), split once when the table is built."""
    value = request
    for name in path:
        value = getattr(value, name)
    return value


def _check_field(method: str, request: Descriptor | None, what: str, path: str, kinds: tuple[int, ...]) -> None:
    """A declared field path must name a field of the request of one of ``kinds``."""
    if request is None:
        return
    message: Descriptor | None = request
    field = None
    for name in path.split("."):
        field = message.fields_by_name.get(name) if message is not None else None
        if field is None or field.is_repeated:
            raise ValueError(f"{method} declares its {what} as {path!r}, which is no single field of its request")
        message = field.message_type
    if field is None or field.type not in kinds:
        raise ValueError(f"{method} declares its {what} as {path!r}, a field of the wrong type")


def _declared(method: str, access: options_pb2.Access, request: Descriptor | None = None) -> Rule:
    """The rule an ``access`` option declares. ValueError for one that names nothing known or says
    two things at once (the server then refuses to start rather than guess): a table that only
    grows stricter or wider on purpose."""
    fields = {field.name for field, _ in access.ListFields()}
    if access.rule:
        if fields != {"rule"}:
            raise ValueError(f"{method} declares access rule {access.rule!r} together with {sorted(fields - {'rule'})}")
        if access.rule not in RULES:
            raise ValueError(f"{method} declares access rule {access.rule!r}, which authz.RULES does not have")
        return RULES[access.rule]
    if access.domain in (OPEN, AUTHENTICATED):
        if fields != {"domain"}:
            raise ValueError(f"{method} declares access {access.domain!r} together with {sorted(fields - {'domain'})}")
        return access.domain
    if access.domain not in DOMAINS or access.verb not in VERBS:
        raise ValueError(f"{method} declares access {access.domain}:{access.verb}, not a permission (state/auth.py)")
    if access.port and access.domain != "ports":
        raise ValueError(f"{method} declares a port on the {access.domain} domain, which has none")
    if access.any_node and access.node:
        raise ValueError(f"{method} declares both any_node and a node field")
    for what, path, kinds in (
        ("resource", access.resource, _TEXT),
        ("port", access.port, _NUMBERS),
        ("node", access.node, _TEXT),
    ):
        if path:
            _check_field(method, request, what, path, kinds)
    domain, verb = access.domain, access.verb
    # Split once here: the rule runs on every call of the client port.
    resource, port, node = (
        tuple(path.split(".")) if path else () for path in (access.resource, access.port, access.node)
    )
    any_node = access.any_node

    def needs(request: Any) -> tuple[Need, ...]:
        return (
            Need(
                domain,
                verb,
                _field(request, resource) if resource else "",
                _field(request, port) if port else 0,
                ANY_NODE if any_node else _field(request, node) if node else "",
            ),
        )

    return needs


def _methods() -> dict[str, Rule]:
    table: dict[str, Rule] = dict.fromkeys(_OPEN_METHODS, OPEN)
    for path, access in methods.declared_access().items():
        table[path] = _declared(path, access, methods.descriptor(path).input_type)
    return table


METHODS: dict[str, Rule] = _methods()

#: Methods that only read: every other one is written to the audit log. Which change state is
#: declared once, next to each method in its proto (``option (controlplane.v1.write)``).
READ_ONLY = frozenset(
    method for method in METHODS if not method.startswith("/controlplane.") or not methods.is_write(method)
)


def caller_kind(role: str) -> str:
    """The caller kind a certificate role speaks for: a ``client`` certificate is a user's."""
    return "user" if role == "client" else role


_SAN_PROPERTY = "x509_subject_alternative_name"
_INSECURE_DEV_ADMIN = Caller("user", ADMIN_USER)


@functools.lru_cache(maxsize=4096)
def _caller_from_sans(sans: tuple[bytes, ...]) -> Caller | None:
    """The caller a verified client certificate speaks for: its one ``urn:controlplane:`` URI SAN
    (``tls.identity_from_uris``), from the SANs as gRPC gives them. Kept per certificate: the same
    few call again and again, and a Caller is immutable."""
    identity = tls.identity_from_uris([san.decode(errors="replace") for san in sans])
    return None if identity is None else Caller(caller_kind(identity.role), identity.id)


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
    committed revocation or grant applies to the next call on this server. ``removed_servers`` too:
    the ids removed from the cluster, barred for ever. A server identity may do anything (servers
    call each other, and a new server asks to be admitted with its own certificate); a removed
    server's certificate may only ask what every identity may (the cluster's status, which is how
    a removed server learns it was removed), so its key opens nothing once its server is gone.
    """

    def __init__(
        self,
        auth_state: Callable[[], AuthTable],
        insecure_dev: bool,
        limiter: RateLimiter | None = None,
        removed_servers: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        self._auth_state = auth_state
        self._insecure_dev = insecure_dev
        self._limiter = limiter
        self._removed_servers = removed_servers

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
        # The certificate's subject alternative names, read as gRPC's peer identities: not the
        # whole auth context, which copies the certificate's PEM into a new dict on every call.
        # gRPC names the subject CN as the identity of a certificate without SANs: never taken.
        if context.peer_identity_key() == _SAN_PROPERTY:
            return _caller_from_sans(tuple(context.peer_identities() or ()))
        if self._insecure_dev and not (context.auth_context() or {}).get("x509_pem_cert"):
            # --insecure-dev: a caller without credentials is the admin (the server warned at start).
            return _INSECURE_DEV_ADMIN
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
        removed = caller.kind == "server" and caller.name in self._removed_servers()
        if removed and rule != AUTHENTICATED:
            # Before the rate limit: a call it forwards must be refused as such (forwarded_error),
            # never answered RESOURCE_EXHAUSTED, which its caller's SDK would not take elsewhere.
            raise PermissionDenied(
                f"{method} is refused: server {caller.name} was removed from this cluster, and its "
                "certificate no longer speaks for a server (a server joins again only under a new id, "
                "with a certificate for that id)",
                caller,
            )
        if self._limiter is not None and (caller.kind != "server" or removed):
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


def forwarded_error(exc: grpc.aio.AioRpcError, server_id: str) -> errors.ControlPlaneError:
    """The error for a caller whose call this server forwarded (to the leader, as itself), and the
    other end refused. The caller was authorised here, so a PERMISSION_DENIED there is about this
    server's own identity: removed from the cluster, its certificate no longer a server's. That is
    Unavailable to the caller, whose SDK then asks another server (writes carry a request id)."""
    error = errors.error_from_rpc(exc)
    if isinstance(error, errors.PermissionDenied):
        return errors.Unavailable(
            f"{server_id} cannot hand this call to the leader ({error.message}); ask another server"
        )
    return error


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
