"""The gateway's ASGI app: HTTP JSON for discovery and bootstrap, in front of the gRPC cluster.

``create_app(settings)`` builds it; ``cpctl gateway`` runs it under uvicorn. Every answer comes from
the cluster through the async SDK (:class:`controlplane.client.AsyncClient`), wrapped in
:class:`gateway.models.SdkBackend`: the gateway holds no state of its own that matters after a
restart (see ``gateway/DESIGN.md``). The only memory is a one-second cache of the cluster's status,
shared by ``/v1/cluster``, ``/v1/leader``, ``/v1/bootstrap`` and ``/readyz``.

The pieces, in the order a request meets them:

1. :class:`BodyLimit` (ASGI middleware): a body over ``max_body_bytes`` is refused with 413 before
   anything parses it, by its Content-Length or by counting the streamed bytes.
2. FastAPI routing and validation against the Pydantic models of :mod:`gateway.models` (every
   request and response has one; string lengths and list sizes follow the cluster's own limits, so
   bad input is a 400 here rather than a round trip).
3. :func:`require_token` on every POST/DELETE when a token is configured (constant-time compare).
4. The handler calls the :class:`gateway.models.Backend`; errors are mapped to HTTP in
   ``gateway.errors`` only.

The response models and the ``*_out`` converters live in :mod:`gateway.models`, which imports
without FastAPI: they are also what :class:`gateway.client.GatewayClient` returns, including when it
bypasses the gateway and asks the servers itself: one schema for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controlplane import __version__, errors
from controlplane.client import ClusterStatus, Credentials
from gateway import errors as gw_errors
from gateway.console import router as console_router
from gateway.formation import DEFAULT_CANDIDATE_TTL_S, Candidate, FormationTable, vote_problem
from gateway.metrics import RequestMetrics
from gateway.models import (
    DEFAULT_CACHE_TTL_S,
    DEFAULT_CALL_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_RELAY_INTERVAL_S,
    DEFAULT_STATUS_TIMEOUT_S,
    HOST_CHARS,
    ID_CHARS,
    LABEL_VALUE_CHARS,
    MAX_LABELS,
    MAX_SEARCH_LIMIT,
    MAX_SEARCH_OFFSET,
    NAME_CHARS,
    PAGE_TOKEN_CHARS,
    QUERY_CHARS,
    REQUEST_ID_CHARS,
    Backend,
    BootstrapMember,
    BootstrapOut,
    CandidateIn,
    CandidateOut,
    CandidatesOut,
    ClusterOut,
    ConsistencyName,
    ErrorOut,
    FlagsOut,
    HealthOut,
    HeartbeatIn,
    HeartbeatOut,
    LeaderOut,
    MovesOut,
    NetworkDetailOut,
    NetworksOut,
    NodeFilters,
    NodesOut,
    NodeViewOut,
    PortsOut,
    ReadyOut,
    RegisteredOut,
    RegisterNodeIn,
    SdkBackend,
    SearchOut,
    SearchPageQuery,
    ServicesOut,
    bootstrap_out,
    cluster_out,
    consistency_of,
    flag_out,
    lower_name,
    moves_out,
    network_detail_out,
    network_out,
    node_view_out,
    ports_out,
    registered_out,
    require_leader,
    search_out,
    services_out,
)

__all__ = [
    "BodyLimit",
    "GatewaySettings",
    "configure_logging",
    "create_app",
]

log = structlog.get_logger("gateway")

# --------------------------------------------------------------------------------------- the gateway


@dataclass(frozen=True)
class GatewaySettings:
    """Everything a gateway is configured with. Two gateways with equal settings are interchangeable."""

    #: The cluster's servers (client addresses). Empty with ``bootstrap_expect``: the cluster is then
    #: found through the candidacies of the servers that formed or joined it.
    endpoints: tuple[str, ...]
    #: Bearer token for POST/DELETE; None leaves them open (loopback / development only).
    token: str | None = None
    #: Form a cluster of this many servers when none exists (``/v1/bootstrap`` answers ``form``).
    bootstrap_expect: int | None = None
    #: Other gateways' base URLs (``http://HOST:PORT``): candidacies are relayed between them.
    peers: tuple[str, ...] = ()
    candidate_ttl_s: float = DEFAULT_CANDIDATE_TTL_S
    relay_interval_s: float = DEFAULT_RELAY_INTERVAL_S
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    cache_ttl_s: float = DEFAULT_CACHE_TTL_S
    status_timeout_s: float = DEFAULT_STATUS_TIMEOUT_S
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S
    #: With a token: serve the inventory reads (nodes, networks, ports, models, flags) without it.
    open_reads: bool = False
    #: What the gateway presents to the cluster's client ports (their CA, a client certificate, a
    #: token); the default is plaintext, for a cluster started with ``--insecure-dev``.
    credentials: Credentials = field(default_factory=Credentials)

    def __repr__(self) -> str:  # the token must never reach a log line or a traceback
        return (
            f"GatewaySettings(endpoints={self.endpoints!r}, token={'<set>' if self.token else None}, "
            f"max_body_bytes={self.max_body_bytes}, cache_ttl_s={self.cache_ttl_s}, "
            f"bootstrap_expect={self.bootstrap_expect}, peers={self.peers!r})"
        )


class StatusCache:
    """One cluster status, shared for ``ttl_s`` by every request, fetched by one call at a time.

    Failures are kept for the same time: a gateway in front of a dead cluster answers 503 at once
    instead of sending every request into a timeout. This is the gateway's only memory, and losing
    it loses nothing: the next request asks the cluster.
    """

    def __init__(self, fetch: Callable[[], Awaitable[ClusterStatus]], ttl_s: float, clock: Callable[[], float]) -> None:
        self._fetch = fetch
        self._ttl = ttl_s
        self._clock = clock
        self._value: ClusterStatus | BaseException | None = None
        self._at = 0.0
        self._pending: asyncio.Future[ClusterStatus] | None = None

    async def get(self) -> ClusterStatus:
        if self._value is not None and self._clock() - self._at < self._ttl:
            if isinstance(self._value, BaseException):
                # with_traceback(None): re-raising one object would grow its traceback each time.
                raise self._value.with_traceback(None)
            return self._value
        return await self.refresh()

    async def refresh(self) -> ClusterStatus:
        """Ask the cluster now, however fresh the kept answer (joining a fetch already under way),
        and keep the answer: the console's status loop, which must see a change within its own
        interval rather than the cache's, and leaves every reader a fresher status."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._refresh())
        # Shielded: a caller that goes away (client disconnect) must not cancel the others' fetch.
        return await asyncio.shield(self._pending)

    async def _refresh(self) -> ClusterStatus:
        try:
            value = await self._fetch()
        except errors.ControlPlaneError as exc:
            self._value, self._at = exc, self._clock()
            raise
        finally:
            self._pending = None
        self._value, self._at = value, self._clock()
        return value

    def clear(self) -> None:
        self._value = None


class Gateway:
    """The per-app state: settings, the backend (created on first use, in the serving event loop),
    the status cache and, with ``bootstrap_expect``, the soft list of candidacies."""

    def __init__(
        self,
        settings: GatewaySettings,
        backend: Backend | None,
        backend_factory: Callable[[Sequence[str]], Backend],
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self._backend = backend
        self._backend_addresses: tuple[str, ...] = settings.endpoints
        self._factory = backend_factory
        self._retired: set[asyncio.Task[None]] = set()
        self._retired_backends: list[Backend] = []
        self.clock = clock
        self.cache = StatusCache(self._fetch_status, settings.cache_ttl_s, clock)
        self.formation = (
            FormationTable(settings.bootstrap_expect, settings.candidate_ttl_s) if settings.bootstrap_expect else None
        )

    def cluster_addresses(self) -> tuple[str, ...]:
        """Where the cluster is: the configured endpoints, else the servers that announced they run it."""
        if self.settings.endpoints or self.formation is None:
            return self.settings.endpoints
        return tuple(sorted(self.formation.cluster_addresses(self.clock())))

    @property
    def backend(self) -> Backend:
        # grpc.aio channels belong to the event loop that opened them: open them lazily, inside
        # the server's loop, not when the app object is built.
        addresses = self.cluster_addresses()
        if self._backend is not None and addresses and addresses != self._backend_addresses:
            # A server joined or left the announced set: follow it. The old backend may still carry
            # requests, so it is closed a little later rather than under them.
            self._retire(self._backend)
            self._backend = None
            self.cache.clear()
        if self._backend is None:
            if not addresses:
                raise errors.NoLeader(
                    "no cluster has formed yet: start the servers with --bootstrap-expect "
                    f"{self.settings.bootstrap_expect} and this gateway's URL (GET /v1/bootstrap shows the votes)"
                )
            self._backend = self._factory(addresses)
            self._backend_addresses = addresses
        return self._backend

    def _retire(self, backend: Backend) -> None:
        async def close_later() -> None:
            await asyncio.sleep(self.settings.call_timeout_s * 2)
            self._retired_backends.remove(backend)
            await backend.close()

        self._retired_backends.append(backend)
        task = asyncio.ensure_future(close_later())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _fetch_status(self) -> ClusterStatus:
        timeout = self.settings.status_timeout_s
        try:
            return await self.backend.cluster_status(timeout)
        except errors.DeadlineExceeded as exc:
            raise gw_errors.ClusterUnreachable(
                f"no server answered within {timeout:g} s (endpoints: {','.join(self._backend_addresses)})"
            ) from exc

    def candidates_out(self) -> list[CandidateOut]:
        if self.formation is None:
            return []
        return [
            CandidateOut(
                id=c.id,
                client_address=c.client_address,
                raft_address=c.raft_address,
                vote=list(c.vote),
                started=c.started,
                age_s=round(age, 3),
            )
            for c, age in self.formation.with_ages(self.clock())
        ]

    async def bootstrap(self, *, answer_wait: bool) -> BootstrapOut:
        """``/v1/bootstrap``: join the cluster if one is reachable; with ``bootstrap_expect`` and no
        cluster, form (every founder voted the same set) or wait. ``answer_wait``: answer ``wait``
        instead of 503 while a cluster exists but has no leader (candidacy posts always get an answer)."""
        if self.formation is None:
            return bootstrap_out(await self.cache.get())
        expect = self.settings.bootstrap_expect
        candidates = self.candidates_out()
        if self.cluster_addresses():
            try:
                joined = bootstrap_out(await self.cache.get())
            except errors.Unavailable:
                if not answer_wait:
                    raise
                # A cluster runs but has no leader right now: nothing is to be formed.
                return BootstrapOut(action="wait", members=[], leader=None, expect=expect, candidates=candidates)
            return joined.model_copy(update={"expect": expect, "candidates": candidates})
        formed = self.formation.formed(self.clock())
        if formed is None:
            return BootstrapOut(action="wait", members=[], leader=None, expect=expect, candidates=candidates)
        members = [
            BootstrapMember(id=c.id, client_address=c.client_address, raft_address=c.raft_address) for c in formed
        ]
        return BootstrapOut(action="form", members=members, leader=None, expect=expect, candidates=candidates)

    async def relay(self, http: Any) -> None:
        """Pull every peer gateway's candidate list once and merge it (unreachable peers are skipped:
        they only delay agreement, never change it)."""
        assert self.formation is not None
        for peer in self.settings.peers:
            try:
                response = await http.get(f"{peer.rstrip('/')}/v1/bootstrap/candidates")
                if response.status_code != 200:
                    continue
                listed = CandidatesOut.model_validate_json(response.content)
            except Exception as exc:  # any failure of one peer: skip it this time
                log.debug("relay_failed", peer=peer, error=f"{type(exc).__name__}: {exc}")
                continue
            if listed.expect != self.formation.expect:
                log.error("relay_expect_mismatch", peer=peer, theirs=listed.expect, ours=self.formation.expect)
                continue
            expect = self.formation.expect
            self.formation.merge(
                (
                    (Candidate(c.id, c.client_address, c.raft_address, tuple(c.vote), c.started), c.age_s)
                    for c in listed.candidates
                    if vote_problem(c.id, c.vote, expect) is None
                ),
                self.clock(),
            )

    async def close(self) -> None:
        for task in list(self._retired):
            task.cancel()
        retired, self._retired_backends = self._retired_backends, []
        for backend in retired:  # their delayed close was just cancelled: close them now
            await backend.close()
        if self._backend is not None:
            backend, self._backend = self._backend, None
            await backend.close()


async def get_gateway(request: Request) -> Gateway:
    # async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a hop per request.
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
_bearer = HTTPBearer(auto_error=False, description="Required on POST and DELETE when the gateway has a token")


async def require_token(
    gateway: GatewayDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Mutations need ``Authorization: Bearer <token>`` when a token is configured.

    Compared in constant time (``hmac.compare_digest``) so the answer's timing says nothing about
    how much of a guess was right. Route dependencies run before the body is validated, so an
    unauthenticated caller learns nothing about what a valid body looks like.
    """
    expected = gateway.settings.token
    if not expected:
        return
    presented = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8")):
        raise gw_errors.Unauthenticated("this gateway requires Authorization: Bearer <token> for changes")


async def require_read_token(
    gateway: GatewayDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Inventory reads (nodes, networks, ports, models, flags) need the token too when one is
    configured, unless the gateway runs with ``open_reads``. Discovery (cluster, leader, bootstrap)
    stays open: it is what a machine asks before it holds anything, and it names only the servers."""
    expected = gateway.settings.token
    if not expected or gateway.settings.open_reads:
        return
    presented = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8")):
        raise gw_errors.Unauthenticated(
            "this gateway requires Authorization: Bearer <token> for reads of the inventory "
            "(cpctl gateway --open-reads serves them to anyone)"
        )


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=REQUEST_ID_CHARS,
        pattern=r"^[\x21-\x7e]+$",
        description="Reuse it when retrying a change: the cluster applies it once (it becomes the request id)",
    ),
]
ConsistencyQuery = Annotated[
    ConsistencyName,
    Query(description="linearizable (default): ordered through the Raft log; stale: the answering server's state"),
]
NodeIdPath = Annotated[str, Path(min_length=1, max_length=ID_CHARS, description="The node's id")]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": description}
    for status, description in {
        400: "Invalid input (INVALID_ARGUMENT)",
        500: "A bug (INTERNAL); the body never holds a stack trace",
        503: "No leader reachable or the cluster is unavailable; see Retry-After",
        504: "The cluster did not answer in time",
    }.items()
}
MUTATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    401: {"model": ErrorOut, "description": "Missing or wrong bearer token"},
    409: {"model": ErrorOut, "description": "The cluster's state forbids it now"},
    413: {"model": ErrorOut, "description": "Body over the size limit"},
}
READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    401: {
        "model": ErrorOut,
        "description": "Missing or wrong bearer token (a gateway with a token, without --open-reads)",
    },
    404: {"model": ErrorOut},
}

router = APIRouter()
v1 = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)
mutation = [Depends(require_token)]
inventory = [Depends(require_read_token)]


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    """Prometheus text format: this gateway's request counts and latencies (gateway/metrics.py)."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", response_model=HealthOut, tags=["health"])
async def healthz() -> HealthOut:
    """The process is alive (says nothing about the cluster)."""
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyOut,
    tags=["health"],
    responses={503: {"model": ErrorOut, "description": "No leader reachable"}},
)
async def readyz(gateway: GatewayDep) -> ReadyOut:
    """200 only while a leader is reachable: take this gateway out of rotation otherwise."""
    return ReadyOut(status="ready", leader=require_leader(await gateway.cache.get()))


@v1.get("/cluster", response_model=ClusterOut, tags=["discovery"])
async def get_cluster(gateway: GatewayDep) -> ClusterOut:
    """Leader, term and every member with its role and health (the leader's view when it answers).
    Cached for up to a second."""
    return cluster_out(await gateway.cache.get())


@v1.get("/leader", response_model=LeaderOut, tags=["discovery"])
async def get_leader(gateway: GatewayDep) -> LeaderOut:
    """The current leader, or 503 NO_LEADER. Cached for up to a second."""
    return require_leader(await gateway.cache.get())


@v1.get("/bootstrap", response_model=BootstrapOut, tags=["discovery"])
async def get_bootstrap(gateway: GatewayDep) -> BootstrapOut:
    """What a starting server or agent must do: ``join`` the members listed (503 while no leader is
    reachable); with ``--bootstrap-expect`` and no cluster yet, ``form`` (the founding set) or ``wait``."""
    return await gateway.bootstrap(answer_wait=False)


@v1.post(
    "/bootstrap/candidates",
    response_model=BootstrapOut,
    tags=["discovery"],
    dependencies=mutation,
    responses={**MUTATION_RESPONSES, 409: {"model": ErrorOut, "description": "This gateway forms no cluster"}},
)
async def post_candidacy(gateway: GatewayDep, candidate: CandidateIn) -> BootstrapOut:
    """A server started with ``--bootstrap-expect`` announces itself (and its vote, once cast); the
    answer is what it must do now. Servers post again every quarter second; a candidacy not posted for
    ``candidate_ttl_s`` is dropped. Relayed to the peer gateways."""
    if gateway.formation is None:
        raise errors.FailedPrecondition("this gateway was not started with --bootstrap-expect: it forms no cluster")
    expect = gateway.formation.expect
    problem = vote_problem(candidate.id, candidate.vote, expect)
    if problem is not None:
        raise errors.InvalidArgument(problem)
    try:
        gateway.formation.post(
            Candidate(
                candidate.id, candidate.client_address, candidate.raft_address, tuple(candidate.vote), candidate.started
            ),
            gateway.clock(),
        )
    except OverflowError as exc:
        raise errors.ResourceExhausted(str(exc)) from None
    return await gateway.bootstrap(answer_wait=True)


@v1.get("/bootstrap/candidates", response_model=CandidatesOut, tags=["discovery"])
async def list_candidates(gateway: GatewayDep) -> CandidatesOut:
    """This gateway's candidacies (what its peer gateways pull); 404 unless run with ``--bootstrap-expect``."""
    if gateway.formation is None:
        raise errors.NotFound("this gateway was not started with --bootstrap-expect")
    return CandidatesOut(expect=gateway.formation.expect, candidates=gateway.candidates_out())


@v1.post("/nodes", response_model=RegisteredOut, tags=["nodes"], dependencies=mutation, responses=MUTATION_RESPONSES)
async def register_node(
    gateway: GatewayDep, node: RegisterNodeIn, idempotency_key: IdempotencyKey = None
) -> RegisteredOut:
    """Register a node and grant its liveness lease. Registering again updates it and keeps a live
    lease; after it left or died it comes back as a new incarnation."""
    return registered_out(await gateway.backend.register_node(node, idempotency_key))


@v1.post(
    "/nodes/{node_id}/heartbeat",
    response_model=HeartbeatOut,
    tags=["nodes"],
    dependencies=mutation,
    responses={**MUTATION_RESPONSES, 404: {"model": ErrorOut, "description": "Dead or left: register again"}},
)
async def heartbeat(
    gateway: GatewayDep,
    node_id: NodeIdPath,
    body: HeartbeatIn | None = None,
    idempotency_key: IdempotencyKey = None,
) -> HeartbeatOut:
    """Renew the node's lease (the first heartbeat makes a joining node active)."""
    state = await gateway.backend.heartbeat(node_id, body.activity if body else "", idempotency_key)
    return HeartbeatOut(node_id=node_id, state=lower_name(state))


@v1.delete(
    "/nodes/{node_id}", response_model=MovesOut, tags=["nodes"], dependencies=mutation, responses=MUTATION_RESPONSES
)
async def deregister_node(gateway: GatewayDep, node_id: NodeIdPath, idempotency_key: IdempotencyKey = None) -> MovesOut:
    """A clean stop: the node leaves its networks, its clients move, its lease ends."""
    return moves_out(await gateway.backend.deregister(node_id, idempotency_key))


@v1.get("/nodes", response_model=NodesOut, tags=["nodes"], responses=READ_RESPONSES, dependencies=inventory)
async def list_nodes(
    gateway: GatewayDep,
    role: Literal["agent", "server"] | None = None,
    state: Literal["joining", "active", "leaving", "left", "dead"] | None = None,
    label: Annotated[
        list[Annotated[str, StringConstraints(max_length=NAME_CHARS + 1 + LABEL_VALUE_CHARS)]],
        Query(max_length=MAX_LABELS, description="KEY=VALUE; every one must match (repeat)"),
    ] = [],  # noqa: B006 - FastAPI copies defaults per request
    network: Annotated[str, Query(max_length=NAME_CHARS)] = "",
    capability: Annotated[str, Query(max_length=NAME_CHARS)] = "",
    include_gone: bool = False,
    consistency: ConsistencyQuery = "linearizable",
) -> NodesOut:
    """Servers and agents in the unified view; left and dead ones only with include_gone (or a state)."""
    pairs = []
    for item in label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise errors.InvalidArgument(f"label takes KEY=VALUE, not {item!r}")
        pairs.append((key, value))
    filters = NodeFilters(role, state, tuple(pairs), network, capability, include_gone)
    views = await gateway.backend.nodes(filters, consistency_of(consistency))
    return NodesOut(nodes=[node_view_out(v) for v in views])


@v1.get(
    "/nodes/{node_id}", response_model=NodeViewOut, tags=["nodes"], responses=READ_RESPONSES, dependencies=inventory
)
async def get_node(
    gateway: GatewayDep, node_id: NodeIdPath, consistency: ConsistencyQuery = "linearizable"
) -> NodeViewOut:
    """One node in the unified view (servers appear even if they never registered)."""
    return node_view_out(await gateway.backend.get_node(node_id, consistency_of(consistency)))


@v1.get("/networks", response_model=NetworksOut, tags=["networks"], responses=READ_RESPONSES, dependencies=inventory)
async def list_networks(
    gateway: GatewayDep,
    model: Annotated[str, Query(max_length=2 * NAME_CHARS + 1, description="Only networks serving it")] = "",
    consistency: ConsistencyQuery = "linearizable",
) -> NetworksOut:
    """Every network with its capacity and members."""
    return NetworksOut(
        networks=[network_out(n) for n in await gateway.backend.networks(model, consistency_of(consistency))]
    )


@v1.get(
    "/networks/{name}",
    response_model=NetworkDetailOut,
    tags=["networks"],
    responses=READ_RESPONSES,
    dependencies=inventory,
)
async def get_network(
    gateway: GatewayDep,
    name: Annotated[str, Path(min_length=1, max_length=NAME_CHARS)],
    consistency: ConsistencyQuery = "linearizable",
) -> NetworkDetailOut:
    """A network with its members and every client placed in it."""
    return network_detail_out(await gateway.backend.get_network(name, consistency_of(consistency)))


@v1.get("/ports", response_model=PortsOut, tags=["ports"], responses=READ_RESPONSES, dependencies=inventory)
async def list_ports(
    gateway: GatewayDep,
    host: Annotated[str, Query(max_length=HOST_CHARS)] = "",
    service: Annotated[str, Query(max_length=NAME_CHARS)] = "",
    consistency: ConsistencyQuery = "linearizable",
) -> PortsOut:
    """Port assignments (and reservations, unless filtered by service), by host and port."""
    return ports_out(await gateway.backend.ports(host, service, consistency_of(consistency)))


@v1.get(
    "/services/{name}", response_model=ServicesOut, tags=["services"], responses=READ_RESPONSES, dependencies=inventory
)
async def get_service(
    gateway: GatewayDep,
    name: Annotated[str, Path(min_length=1, max_length=NAME_CHARS)],
    healthy: Annotated[bool, Query(description="Only instances passing or warning, never a critical one")] = False,
    consistency: ConsistencyQuery = "linearizable",
) -> ServicesOut:
    """The instances of a service with their ports and health (an empty list when none matches)."""
    return services_out(await gateway.backend.services(name, healthy, consistency_of(consistency)))


@v1.get("/models/search", response_model=SearchOut, tags=["models"], responses=READ_RESPONSES, dependencies=inventory)
async def search_models(
    gateway: GatewayDep,
    q: Annotated[str, Query(max_length=QUERY_CHARS, description="Every term a prefix, all required")] = "",
    tag: Annotated[str, Query(max_length=NAME_CHARS)] = "",
    family: Annotated[str, Query(max_length=NAME_CHARS)] = "",
    limit: Annotated[int, Query(ge=1, le=MAX_SEARCH_LIMIT)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_SEARCH_OFFSET, description="Prefer page_token (not both)")] = 0,
    sort: Annotated[
        Literal["relevance", "name", "updated", "created"],
        Query(description="relevance (an exact name first, then name prefixes, then bm25), name, or the newest first"),
    ] = "relevance",
    page_token: Annotated[
        str, Query(max_length=PAGE_TOKEN_CHARS, description="The last page's next_page_token (same q, filters, sort)")
    ] = "",
    consistency: ConsistencyQuery = "linearizable",
) -> SearchOut:
    """Full-text search over the model registry; pages follow next_page_token."""
    page = SearchPageQuery(limit=limit, offset=offset, sort=sort, page_token=page_token)
    return search_out(await gateway.backend.search_models(q, tag, family, page, consistency_of(consistency)))


@v1.get("/flags", response_model=FlagsOut, tags=["flags"], responses=READ_RESPONSES, dependencies=inventory)
async def list_flags(gateway: GatewayDep, consistency: ConsistencyQuery = "linearizable") -> FlagsOut:
    """Cluster-wide feature flags, with their defaults when never set."""
    return FlagsOut(flags=[flag_out(f) for f in await gateway.backend.flags(consistency_of(consistency))])


# --------------------------------------------------------------------------------------- errors


def _answer(answer: gw_errors.ErrorAnswer) -> JSONResponse:
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors()[:5]:
        if error.get("type") == "json_invalid":
            problems.append(f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'decode error')})")
            continue
        where = ".".join(str(part) for part in error.get("loc", ()))
        problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    more = len(exc.errors()) - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def install_error_handlers(app: FastAPI) -> None:
    """Every failure leaves through here, mapped by ``gateway.errors`` (the one place)."""

    async def control_plane(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, errors.ControlPlaneError)
        answer = gw_errors.from_control_plane(exc)
        if answer.status >= 500:
            # 503s are routine during an election (and readiness probes repeat them): info, not warning.
            level = logging.INFO if answer.status == 503 else logging.WARNING
            log.log(level, "cluster_error", status=answer.status, code=answer.body["code"], message=exc.message)
        return _answer(answer)

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message = _validation_message(exc)
        content_type = request.headers.get("content-type", "")
        if any(tuple(e.get("loc", ())) == ("body",) for e in exc.errors()) and "json" not in content_type:
            # curl -d sends a form content type: say what to change rather than "not a dictionary".
            message = f"send the body as JSON with Content-Type: application/json (got {content_type or 'none'})"
        return _answer(gw_errors.ErrorAnswer(400, "INVALID_ARGUMENT", message))

    async def http(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else None
        answer = gw_errors.from_http_status(exc.status_code, detail)
        answer.headers.update(exc.headers or {})
        return _answer(answer)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        # The traceback as plain text: cheap under any renderer (a pretty one can take seconds).
        trace = "".join(traceback.format_exception(exc))
        log.error("unexpected_error", error_id=error_id, path=request.url.path, traceback=trace)
        return _answer(gw_errors.internal(error_id))

    app.add_exception_handler(errors.ControlPlaneError, control_plane)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(Exception, unexpected)


# --------------------------------------------------------------------------------------- body limit


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with 413 before anything parses it.

    A declared Content-Length over the limit is refused without reading a byte. Otherwise the body
    is read here, counting (chunked uploads declare no length), and handed on whole; the limit is
    small, so holding it costs nothing, and the app never sees a body that was cut short.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await self._refuse(scope, receive, send, errors.InvalidArgument("Content-Length is not a number"))
                return
            if length > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away before sending its body: nobody to answer
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            nonlocal whole
            if whole is not None:
                message, whole = whole, None
                return message
            return await receive()  # after the body: wait for the disconnect, as a server would

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = gw_errors.PayloadTooLarge(f"request body is larger than {self.max_bytes} bytes")
        await self._refuse(scope, receive, send, error)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, error: errors.ControlPlaneError) -> None:
        answer = gw_errors.from_control_plane(error)
        # Connection: close, because the rest of the body may still be on its way.
        response = JSONResponse(
            answer.body, status_code=answer.status, headers={**answer.headers, "Connection": "close"}
        )
        await response(scope, receive, send)


# --------------------------------------------------------------------------------------- the app


def create_app(
    settings: GatewaySettings,
    backend: Backend | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    backend_factory: Callable[[Sequence[str]], Backend] | None = None,
) -> FastAPI:
    """The gateway's ASGI app.

    ``backend`` defaults to :class:`SdkBackend` over ``settings.endpoints`` (with ``bootstrap_expect``
    and no endpoints: over the servers that announced they run the cluster), opened on first use in
    the serving event loop and closed at shutdown. Tests pass their own backend (or
    ``backend_factory``: addresses -> backend) and clock.
    """

    def default_backend(addresses: Sequence[str]) -> Backend:
        return SdkBackend(list(addresses), timeout=settings.call_timeout_s, credentials=settings.credentials)

    gateway = Gateway(settings, backend, backend_factory or default_backend, clock)

    async def relay_forever() -> None:
        import httpx  # the client library; only a gateway with peers needs it here

        async with httpx.AsyncClient(timeout=httpx.Timeout(1.0)) as http:
            while True:
                await gateway.relay(http)
                await asyncio.sleep(settings.relay_interval_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        log.info(
            "gateway_started",
            endpoints=",".join(settings.endpoints),
            auth="bearer" if settings.token else "off",
            max_body_bytes=settings.max_body_bytes,
            bootstrap_expect=settings.bootstrap_expect,
            peers=",".join(settings.peers),
        )
        relay = asyncio.ensure_future(relay_forever()) if gateway.formation and settings.peers else None
        try:
            yield
        finally:
            if relay is not None:
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay
            await gateway.close()

    app = FastAPI(
        title="controlplane gateway",
        version=__version__,
        description=(
            "Stateless HTTP discovery and bootstrap for a controlplane cluster. Errors are "
            '`{"code": ..., "message": ...}`; 503 answers carry Retry-After. POST and DELETE need '
            "`Authorization: Bearer <token>` when the gateway has a token."
        ),
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.include_router(router)
    app.include_router(v1)
    app.include_router(console_router)  # the web console at /ui (gateway/console)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics)  # added last: outside BodyLimit, so its 413s are counted too

    def openapi() -> dict[str, Any]:
        """FastAPI documents a 422 with its own error model on every route; ours answer 400 with
        :class:`ErrorOut`, so the document says that instead."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr, like the servers' logs."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(stream=sys.stderr, level=numeric, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
