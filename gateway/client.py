"""The resilient client a node uses to reach the gateway, and the cluster without it.

A node must keep working while its gateway is down: it must still find the leader, renew its lease
and learn the members. :class:`GatewayClient` gets there in three steps, each used only when the one
before could not answer:

1. **The gateway over HTTP** (httpx), with a timeout per attempt and retries on connect errors and
   5xx answers (exponential backoff with full jitter, at least ``Retry-After`` when the gateway sends
   one). Mutations carry one ``Idempotency-Key`` across every retry, so the cluster applies them once.
   A :class:`CircuitBreaker` stops calling a gateway that failed ``failure_threshold`` times in a row
   for ``open_s`` seconds, then lets one probe through (half-open) to see whether it is back.
2. **The servers themselves over gRPC**, through the SDK (:class:`gateway.models.SdkBackend`, the
   same code and converters the gateway uses, so the answer has the same shape): at the members
   last learned from the gateway, and the ``seeds`` given. Same idempotency key, so a mutation whose
   gateway attempt did commit is not applied twice.
3. **The last known answer** (``cluster``, ``leader``, ``bootstrap`` only), kept in memory and, with
   ``cache_path``, in a JSON file that survives a restart of the node. Used only when nobody could
   be asked: an answer ("no leader right now") is never replaced by an older one.

``last_source`` says which step answered the last call: ``"gateway"``, ``"members"`` or ``"cache"``.

Errors are those of :mod:`controlplane.errors` (plus :class:`gateway.errors.Unauthenticated`): a
4xx from the gateway is the cluster's (or the gateway's) answer and is raised at once, never retried
and never sent around the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import random
import ssl
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import certifi
import httpx
import structlog
from pydantic import BaseModel, ValidationError

from controlplane import __version__, errors
from controlplane.client._base import full_jitter
from controlplane.client._credentials import Credentials, CredentialsError
from controlplane.client._discovery import retry_after_seconds
from gateway import errors as gw_errors
from gateway.models import (
    Backend,
    BootstrapMember,
    BootstrapOut,
    CandidateIn,
    ClusterOut,
    HeartbeatOut,
    LeaderOut,
    MovesOut,
    NodeFilters,
    NodesOut,
    NodeViewOut,
    RegisteredOut,
    RegisterNodeIn,
    Resources,
    SdkBackend,
    bootstrap_out,
    cluster_out,
    consistency_of,
    moves_out,
    node_view_out,
    registered_out,
    require_leader,
)

__all__ = [
    "BreakerPolicy",
    "BreakerState",
    "CircuitBreaker",
    "GatewayClient",
    "MemberCache",
    "RetryPolicy",
]

log = structlog.get_logger("gateway.client")

M = TypeVar("M", bound=BaseModel)
Source = Literal["gateway", "members", "cache"]


# --------------------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries the gateway before going around it."""

    #: Tries per call against the gateway (1 = no retry).
    attempts: int = 3
    #: Upper bound of the first delay; it doubles per retry up to ``max_backoff_s``.
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    #: A ``Retry-After`` longer than this is cut to it: past that, asking the members is better.
    max_retry_after_s: float = 10.0

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Delay before retry ``retry`` (0-based): uniform in [0, min(max, initial * 2**retry)].

        Full jitter: a thousand nodes whose gateway failed at once must not come back at once.
        """
        return full_jitter(retry, self.initial_backoff_s, self.max_backoff_s, rng)


@dataclass(frozen=True)
class BreakerPolicy:
    #: Consecutive failed attempts (connect errors, timeouts, 5xx) that open the breaker.
    failure_threshold: int = 3
    #: Seconds it stays open before one probe is let through.
    open_s: float = 60.0


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed -> (``failure_threshold`` consecutive failures) -> open for ``open_s`` -> half-open:
    exactly one probe may go; its success closes the breaker, its failure opens it again.

    ``clock`` is injectable (monotonic seconds) so tests can move time instead of waiting for it.
    Not thread-safe; one event loop uses it (asyncio needs no lock between awaits).
    """

    def __init__(self, policy: BreakerPolicy | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """May an attempt go to the gateway now? In half-open, True for the one probe only."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.policy.open_s:
                return False
            self._state = BreakerState.HALF_OPEN
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def succeeded(self) -> None:
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._probing = False

    def failed(self) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.policy.failure_threshold:
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
            self._probing = False

    def abandoned(self) -> None:
        """An allowed attempt ended with neither outcome (cancelled): free the probe slot."""
        self._probing = False


# --------------------------------------------------------------------------------------- member cache


class _CacheFile(BaseModel):
    version: Literal[1] = 1
    members: list[BootstrapMember] = []
    leader: LeaderOut | None = None
    cluster: ClusterOut | None = None
    updated_unix_ms: int = 0


class MemberCache:
    """The last known members and leader, in memory and (with ``path``) in a JSON file.

    The file is written only when the members or the leader change, atomically (a temporary file
    renamed over it), so a crash never leaves half a file; an unreadable file is ignored, never fatal:
    the cache is an optimisation and the seeds still work.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._data = _CacheFile()
        if self.path is not None and self.path.exists():
            try:
                self._data = _CacheFile.model_validate_json(self.path.read_bytes())
            except (OSError, ValidationError) as exc:
                log.warning("gateway_cache_unreadable", path=str(self.path), error=str(exc)[:200])

    @property
    def members(self) -> list[BootstrapMember]:
        return list(self._data.members)

    @property
    def leader(self) -> LeaderOut | None:
        return self._data.leader

    @property
    def cluster(self) -> ClusterOut | None:
        return self._data.cluster

    def addresses(self) -> list[str]:
        """Client addresses to try, the last known leader first."""
        out = [self._data.leader.client_address] if self._data.leader else []
        out += [m.client_address for m in self._data.members]
        return [a for a in dict.fromkeys(out) if a]

    def remember_cluster(self, cluster: ClusterOut) -> None:
        members = [
            BootstrapMember(id=m.id, client_address=m.client_address, raft_address=m.raft_address, voter=m.voter)
            for m in cluster.members
        ]
        self._update(members, cluster.leader, cluster)

    def remember_bootstrap(self, bootstrap: BootstrapOut) -> None:
        if bootstrap.action != "join":
            return  # "form" and "wait" name no running cluster: nothing to fall back to
        self._update(bootstrap.members, bootstrap.leader, self._data.cluster)

    def remember_leader(self, leader: LeaderOut) -> None:
        self._update(self._data.members, leader, self._data.cluster)

    def _update(self, members: list[BootstrapMember], leader: LeaderOut | None, cluster: ClusterOut | None) -> None:
        if not members and not self._data.members:
            return
        changed = members != self._data.members or leader != self._data.leader
        self._data = _CacheFile(
            members=members or self._data.members,
            leader=leader,
            cluster=cluster,
            updated_unix_ms=int(time.time() * 1000),
        )
        if changed:
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            with os.fdopen(fd, "w") as out:
                out.write(self._data.model_dump_json(indent=2))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("gateway_cache_not_saved", path=str(self.path), error=str(exc))


# --------------------------------------------------------------------------------------- the client


@dataclass
class _Attempted:
    """What the gateway step ended with, for the next steps to decide."""

    #: The gateway (or the cluster behind it) answered with an error (e.g. NO_LEADER): not "nobody".
    answered: errors.ControlPlaneError | None = None
    last_error: str = ""


#: What a gateway answers without its token (gateway/app.py: everything else needs it when it has one).
_DISCOVERY_PATHS = ("/v1/cluster", "/v1/leader", "/v1/bootstrap", "/healthz", "/readyz")


def _verify(cafile: str | os.PathLike[str] | None) -> ssl.SSLContext | bool:
    """What an ``https`` gateway's certificate is checked against: what httpx trusts by default
    (certifi's CAs), the system's, and ``cafile``."""
    if cafile is None:
        return True
    context = ssl.create_default_context(cafile=certifi.where())
    context.load_default_certs()
    try:
        context.load_verify_locations(cafile=os.fspath(cafile))
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: a file that holds no PEM certificate
        raise CredentialsError(f"cannot use {os.fspath(cafile)} to verify the gateway: {exc}") from None
    return context


class GatewayClient:
    """Talks to one gateway (``base_url``, e.g. ``http://10.0.0.9:8080``), and around it when it is down.

    ``seeds`` are server client addresses (``HOST:PORT``) to ask directly when the gateway cannot
    answer and no member is cached yet. ``token`` is sent as ``Authorization: Bearer`` on changes.

    Injectable for tests: ``transport`` (an httpx transport such as ``httpx.MockTransport``), ``clock``
    (monotonic seconds, for the breaker), ``sleep`` (the backoff's wait), ``rng`` (the jitter) and
    ``backend_factory`` (addresses -> :class:`gateway.models.Backend`, default the SDK).
    ``credentials``: what the SDK presents when it goes to the servers directly (their CA, a client
    certificate, a token); without them only a cluster on plaintext client ports answers.
    ``cafile``: a CA an ``https`` gateway's certificate may chain to, besides the system's (a server
    passes its cluster CA, which issues the gateway's certificate in deploy/compose/).
    Use it from one event loop; close it with :meth:`aclose` or ``async with``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        seeds: Sequence[str] = (),
        cache_path: str | os.PathLike[str] | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 1.0,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        backend_factory: Callable[[Sequence[str]], Backend] | None = None,
        credentials: Credentials | None = None,
        cafile: str | os.PathLike[str] | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            transport=transport,
            verify=_verify(cafile),
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            headers={"User-Agent": f"controlplane-gateway-client/{__version__}"},
        )
        self._token = token
        self._seeds = [s.strip() for s in seeds if s.strip()]
        self._timeout = timeout
        self.retry = retry or RetryPolicy()
        self.breaker = CircuitBreaker(breaker, clock)
        self.cache = MemberCache(cache_path)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._backend_factory = backend_factory or (
            lambda addresses: SdkBackend(list(addresses), timeout=timeout, credentials=credentials)
        )
        self._backend: Backend | None = None
        self._backend_addresses: tuple[str, ...] = ()
        #: Which step answered the last call: "gateway", "members" or "cache".
        self.last_source: Source = "gateway"

    # --- discovery -----------------------------------------------------------------------------

    async def cluster(self) -> ClusterOut:
        """Leader, term and members (``GET /v1/cluster``)."""

        async def direct(backend: Backend) -> ClusterOut:
            return cluster_out(await backend.cluster_status(self._timeout))

        result = await self._call("GET", "/v1/cluster", ClusterOut, direct, cached=lambda: self.cache.cluster)
        self.cache.remember_cluster(result)
        return result

    async def leader(self) -> LeaderOut:
        """The current leader (``GET /v1/leader``); ``NoLeader`` while none is reachable."""

        async def direct(backend: Backend) -> LeaderOut:
            return require_leader(await backend.cluster_status(self._timeout))

        result = await self._call("GET", "/v1/leader", LeaderOut, direct, cached=lambda: self.cache.leader)
        self.cache.remember_leader(result)
        return result

    async def bootstrap(self) -> BootstrapOut:
        """What a starting node must do (``GET /v1/bootstrap``): today, join the members listed."""

        async def direct(backend: Backend) -> BootstrapOut:
            return bootstrap_out(await backend.cluster_status(self._timeout))

        def cached() -> BootstrapOut | None:
            members = self.cache.members
            return BootstrapOut(action="join", members=members, leader=self.cache.leader) if members else None

        result = await self._call("GET", "/v1/bootstrap", BootstrapOut, direct, cached=cached)
        self.cache.remember_bootstrap(result)
        return result

    async def post_candidacy(
        self, node_id: str, client_address: str, raft_address: str, *, vote: Sequence[str] = (), started: bool = False
    ) -> BootstrapOut:
        """Announce a server forming a cluster (``POST /v1/bootstrap/candidates``) and learn what to do.

        Only a gateway can answer: while no cluster exists there are no servers to go around it to,
        so ``Unavailable`` is raised when the gateway does not answer (ask the next gateway).
        """
        try:
            body = CandidateIn(
                id=node_id, client_address=client_address, raft_address=raft_address, vote=list(vote), started=started
            )
        except ValidationError as exc:
            raise errors.InvalidArgument(str(exc)) from None
        attempted = _Attempted()
        result = await self._via_gateway(
            "POST", "/v1/bootstrap/candidates", BootstrapOut, None, body.model_dump(mode="json"), None, attempted
        )
        if result is None:
            raise attempted.answered or errors.Unavailable(
                f"the gateway did not answer ({attempted.last_error or 'circuit open'})"
            )
        self.last_source = "gateway"
        return result

    def known_members(self) -> list[BootstrapMember]:
        """The members last learned (from the gateway or the servers), possibly from the cache file."""
        return self.cache.members

    # --- nodes ---------------------------------------------------------------------------------

    async def register_node(
        self,
        node_id: str,
        *,
        role: Literal["agent", "server"] = "agent",
        addresses: Mapping[str, str] | None = None,
        capabilities: Sequence[str] = (),
        gpus: int = 0,
        memory_bytes: int = 0,
        cpu_millis: int = 0,
        labels: Mapping[str, str] | None = None,
        version: str = "",
        ttl_s: float = 10.0,
        request_id: str | None = None,
    ) -> RegisteredOut:
        """Register a node and grant its lease (``POST /v1/nodes``). Bad input raises ``InvalidArgument``
        before anything is sent."""
        try:
            body = RegisterNodeIn(
                id=node_id,
                role=role,
                addresses=dict(addresses or {}),
                capabilities=list(capabilities),
                resources=Resources(gpus=gpus, memory_bytes=memory_bytes, cpu_millis=cpu_millis),
                labels=dict(labels or {}),
                version=version,
                ttl_s=ttl_s,
            )
        except ValidationError as exc:
            raise errors.InvalidArgument(str(exc)) from None
        rid = request_id or uuid.uuid4().hex

        async def direct(backend: Backend) -> RegisteredOut:
            return registered_out(await backend.register_node(body, rid))

        return await self._call(
            "POST", "/v1/nodes", RegisteredOut, direct, json_body=body.model_dump(mode="json"), request_id=rid
        )

    async def heartbeat(self, node_id: str, *, activity: str = "", request_id: str | None = None) -> HeartbeatOut:
        """Renew the node's lease (``POST /v1/nodes/{id}/heartbeat``); ``NotFound`` once it is dead or
        left: register again."""
        rid = request_id or uuid.uuid4().hex

        async def direct(backend: Backend) -> HeartbeatOut:
            state = await backend.heartbeat(node_id, activity, rid)
            return HeartbeatOut(node_id=node_id, state=state.name.lower())  # type: ignore[arg-type]

        return await self._call(
            "POST",
            f"/v1/nodes/{_segment(node_id)}/heartbeat",
            HeartbeatOut,
            direct,
            json_body={"activity": activity},
            request_id=rid,
        )

    async def deregister(self, node_id: str, *, request_id: str | None = None) -> MovesOut:
        """A clean stop (``DELETE /v1/nodes/{id}``)."""
        rid = request_id or uuid.uuid4().hex

        async def direct(backend: Backend) -> MovesOut:
            return moves_out(await backend.deregister(node_id, rid))

        return await self._call("DELETE", f"/v1/nodes/{_segment(node_id)}", MovesOut, direct, request_id=rid)

    async def nodes(
        self,
        *,
        role: Literal["agent", "server"] | None = None,
        state: Literal["joining", "active", "leaving", "left", "dead"] | None = None,
        labels: Mapping[str, str] | None = None,
        network: str = "",
        capability: str = "",
        include_gone: bool = False,
        consistency: Literal["linearizable", "stale"] = "linearizable",
    ) -> list[NodeViewOut]:
        """Nodes in the unified view (``GET /v1/nodes``), filtered."""
        params: list[tuple[str, str]] = [(k, v) for k, v in (("role", role), ("state", state)) if v]
        params += [("label", f"{k}={v}") for k, v in (labels or {}).items()]
        params += [(k, v) for k, v in (("network", network), ("capability", capability)) if v]
        params += [("include_gone", "true")] if include_gone else []
        params += [("consistency", consistency)]

        async def direct(backend: Backend) -> NodesOut:
            filters = NodeFilters(role, state, tuple((labels or {}).items()), network, capability, include_gone)
            views = await backend.nodes(filters, consistency_of(consistency))
            return NodesOut(nodes=[node_view_out(v) for v in views])

        return (await self._call("GET", "/v1/nodes", NodesOut, direct, params=params)).nodes

    # --- lifecycle -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._backend is not None:
            backend, self._backend = self._backend, None
            await backend.close()

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- the three steps -----------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        model: type[M],
        direct: Callable[[Backend], Awaitable[M]],
        *,
        params: list[tuple[str, str]] | None = None,
        json_body: Any = None,
        request_id: str | None = None,
        cached: Callable[[], M | None] | None = None,
    ) -> M:
        attempted = _Attempted()
        result = await self._via_gateway(method, path, model, params, json_body, request_id, attempted)
        if result is not None:
            self.last_source = "gateway"
            return result
        try:
            answer = await self._via_members(direct, attempted)
        except errors.ControlPlaneError as exc:
            # NoLeader is an answer ("none right now"); the other Unavailable kinds and a deadline
            # mean nobody answered.
            unreachable = isinstance(exc, errors.DeadlineExceeded) or (
                isinstance(exc, errors.Unavailable) and not isinstance(exc, errors.NoLeader)
            )
            if not unreachable:
                raise  # the servers answered (NotFound, NoLeader, ...): that is the answer
            if attempted.answered is not None:
                raise attempted.answered from exc  # the gateway answered; an old cache entry would not be better
            stale = cached() if cached is not None else None
            if stale is None:
                raise errors.Unavailable(
                    f"neither the gateway ({attempted.last_error or 'circuit open'}) nor the servers "
                    f"({exc.message}) answered"
                ) from exc
            log.warning("gateway_answer_from_cache", path=path, gateway=attempted.last_error, servers=exc.message)
            self.last_source = "cache"
            return stale
        self.last_source = "members"
        return answer

    async def _via_gateway(
        self,
        method: str,
        path: str,
        model: type[M],
        params: list[tuple[str, str]] | None,
        json_body: Any,
        request_id: str | None,
        attempted: _Attempted,
    ) -> M | None:
        """The answer from the gateway, or None to go around it. Raises the gateway's 4xx answers."""
        headers: dict[str, str] = {}
        if request_id is not None:
            headers["Idempotency-Key"] = request_id
        if self._token and (method != "GET" or not path.startswith(_DISCOVERY_PATHS)):
            # Changes and inventory reads need it; discovery does not, and a token not sent cannot
            # leak through a logging proxy.
            headers["Authorization"] = f"Bearer {self._token}"
        for attempt in range(self.retry.attempts):
            if not self.breaker.allow():
                return None
            retry_after = 0.0
            outcome_recorded = False
            try:
                response = await self._http.request(
                    method, path, params=tuple(params or ()), json=json_body, headers=headers
                )
            except httpx.TransportError as exc:
                self.breaker.failed()
                outcome_recorded = True
                attempted.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                status = response.status_code
                if status < 500 and status != 429:
                    self.breaker.succeeded()
                    outcome_recorded = True
                    if status < 300:
                        return self._parse(model, response)
                    # The cluster's (or the gateway's) considered answer: not retried, not sent around.
                    raise gw_errors.error_from_answer(status, _json_or_none(response))
                if status >= 500:
                    self.breaker.failed()
                else:
                    self.breaker.succeeded()  # 429: the gateway is up and asks us to slow down
                outcome_recorded = True
                attempted.answered = gw_errors.error_from_answer(status, _json_or_none(response))
                attempted.last_error = f"HTTP {status} {attempted.answered.message}"
                retry_after = min(
                    retry_after_seconds(response.headers.get("Retry-After"), time.time()), self.retry.max_retry_after_s
                )
            finally:
                if not outcome_recorded:
                    self.breaker.abandoned()
            if attempt + 1 < self.retry.attempts:
                await self._sleep(max(retry_after, self.retry.backoff(attempt, self._rng)))
        return None

    async def _via_members(self, direct: Callable[[Backend], Awaitable[M]], attempted: _Attempted) -> M:
        addresses = tuple(self.cache.addresses() + [s for s in self._seeds if s not in self.cache.addresses()])
        if not addresses:
            raise gw_errors.ClusterUnreachable("no server address is known (no seeds, nothing cached)")
        if self._backend is None or addresses != self._backend_addresses:
            if self._backend is not None:
                await self._backend.close()
            self._backend = self._backend_factory(addresses)
            self._backend_addresses = addresses
        log.info(
            "gateway_bypassed",
            breaker=self.breaker.state.value,
            gateway=attempted.last_error or "circuit open",
            servers=",".join(addresses),
        )
        return await direct(self._backend)

    @staticmethod
    def _parse(model: type[M], response: httpx.Response) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            # A 2xx we cannot read is a broken or foreign gateway, not the cluster's answer.
            raise errors.Internal(f"the gateway's answer does not match its schema: {str(exc)[:300]}") from None


def _json_or_none(response: httpx.Response) -> Any:
    with contextlib.suppress(ValueError):
        return response.json()
    return None


def _segment(node_id: str) -> str:
    """A node id as one URL path segment (ids are plain, but never let one add a path)."""
    return quote(node_id, safe="")
