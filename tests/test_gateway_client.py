"""GatewayClient without a network: the gateway side is an httpx.MockTransport (a transport, not the
thing under test), the servers' side a fake Backend, and time an injected clock whose sleep only moves
it. The retries, the backoff and its jitter, Retry-After, the circuit breaker (open, half-open probe),
idempotency keys, going around the gateway, and the member cache used while everything is down."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane import errors
from controlplane.client import ClusterStatus, Consistency, Member, NodeRecord, NodeRole, NodeSpec, NodeState, Role
from controlplane.client import Registered as SdkRegistered
from gateway import errors as gw_errors
from gateway.client import BreakerPolicy, BreakerState, CircuitBreaker, GatewayClient, RetryPolicy
from gateway.models import NodeFilters, RegisterNodeIn, bootstrap_out, cluster_out, require_leader

Handler = Callable[[httpx.Request], Any]


def status(leader: str = "n1") -> ClusterStatus:
    def role(node_id: str) -> Role:
        return Role.LEADER if node_id == leader else Role.FOLLOWER

    members = tuple(
        Member(f"n{i}", f"10.0.0.{i}:7201", f"10.0.0.{i}:7101", role(f"n{i}"), True, True) for i in (1, 2, 3)
    )
    address = f"10.0.0.{leader[1:]}:7101" if leader else ""
    return ClusterStatus("n1", role("n1"), leader, address, 4, 9, 9, 20, members, True, 1, 9, "test")


class Clock:
    """Monotonic time for the breaker; ``sleep`` records the delay and moves time, never waits."""

    def __init__(self) -> None:
        self.now = 500.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Servers:
    """The servers' side of the fallback: a Backend that answers ``status`` or raises ``error``."""

    def __init__(self) -> None:
        self.status: ClusterStatus = status()
        self.error: errors.ControlPlaneError | None = None
        self.calls: list[tuple[str, Any]] = []

    async def cluster_status(self, timeout: float) -> ClusterStatus:
        self.calls.append(("status", None))
        if self.error is not None:
            raise self.error
        return self.status

    async def register_node(self, node: RegisterNodeIn, request_id: str | None) -> SdkRegistered:
        self.calls.append(("register", request_id))
        if self.error is not None:
            raise self.error
        spec = NodeSpec(node.id, NodeRole.AGENT, {}, (), None, {}, "")
        return SdkRegistered(3, NodeRecord(spec, NodeState.JOINING, 1, 0, 0, 3, 3, "", "", 1), 10_000)

    async def heartbeat(self, node_id: str, activity: str, request_id: str | None) -> NodeState:
        self.calls.append(("heartbeat", request_id))
        if self.error is not None:
            raise self.error
        return NodeState.ACTIVE

    async def nodes(self, filters: NodeFilters, consistency: Consistency) -> tuple[Any, ...]:
        self.calls.append(("nodes", filters))
        return ()

    async def close(self) -> None:
        pass


class Gateway:
    """The gateway's side: a script of answers (or exceptions) and the requests received."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.answers: list[httpx.Response | Exception] = []
        self.default: httpx.Response | Exception = httpx.ConnectError("connection refused")
        self.gate: asyncio.Event | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.pop(0) if self.answers else self.default
        if isinstance(answer, Exception):
            raise answer
        return answer


def ok(body: Any) -> httpx.Response:
    return httpx.Response(200, json=body)


def error(status_code: int, code: str, message: str = "no", headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status_code, json={"code": code, "message": message}, headers=headers)


CLUSTER = cluster_out(status()).model_dump(mode="json")
LEADER = require_leader(status()).model_dump(mode="json")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def servers() -> Servers:
    return Servers()


@pytest.fixture
def gateway() -> Gateway:
    return Gateway()


@pytest.fixture
async def make(clock: Clock, servers: Servers, gateway: Gateway) -> AsyncIterator[Callable[..., GatewayClient]]:
    made: list[GatewayClient] = []
    factory_calls: list[Sequence[str]] = []

    def factory(**options: Any) -> GatewayClient:
        def backend(addresses: Sequence[str]) -> Servers:
            factory_calls.append(tuple(addresses))
            return servers

        options.setdefault("seeds", ["10.0.0.1:7101"])
        client = GatewayClient(
            "http://gateway.test",
            transport=httpx.MockTransport(gateway),
            clock=clock,
            sleep=clock.sleep,
            rng=random.Random(7),
            backend_factory=backend,
            **options,
        )
        client.factory_calls = factory_calls  # type: ignore[attr-defined]
        made.append(client)
        return client

    yield factory
    for client in made:
        await client.aclose()


# --------------------------------------------------------------------------------------- the breaker


def test_breaker_state_machine() -> None:
    now = [0.0]
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=3, open_s=60), clock=lambda: now[0])
    breaker.failed()
    breaker.failed()
    breaker.succeeded()  # a success resets the count: failures must be consecutive
    breaker.failed()
    breaker.failed()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.failed()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    now[0] = 59.9
    assert not breaker.allow()
    now[0] = 60.0
    assert breaker.allow() and breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # one probe at a time
    breaker.failed()  # the probe failed: open again for a full period
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    now[0] = 120.0
    assert breaker.allow()
    breaker.abandoned()  # a cancelled probe frees its slot
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state is BreakerState.CLOSED and breaker.allow() and breaker.allow()


async def test_three_failures_open_the_breaker_and_the_members_answer(
    make: Callable[..., GatewayClient], gateway: Gateway, servers: Servers
) -> None:
    client = make()
    leader = await client.leader()
    assert leader.id == "n1" and client.last_source == "members"
    assert len(gateway.requests) == 3  # three attempts, then around the gateway
    assert client.breaker.state is BreakerState.OPEN
    # While open the gateway is not even tried.
    assert (await client.leader()).id == "n1" and len(gateway.requests) == 3
    assert client.last_source == "members"
    assert client.factory_calls[0] == ("10.0.0.1:7101",)  # type: ignore[attr-defined]


async def test_half_open_sends_one_probe(
    make: Callable[..., GatewayClient], gateway: Gateway, servers: Servers, clock: Clock
) -> None:
    client = make()
    await client.leader()
    assert client.breaker.state is BreakerState.OPEN and len(gateway.requests) == 3
    clock.now += 59
    await client.leader()
    assert len(gateway.requests) == 3

    clock.now += 1  # 60 s after opening: one probe; it fails, so the breaker opens again at once
    await client.leader()
    assert len(gateway.requests) == 4 and client.breaker.state is BreakerState.OPEN
    assert client.last_source == "members"

    clock.now += 60  # the gateway is back: concurrent calls send one probe, the others go around
    gateway.default = ok(LEADER)
    gateway.gate = asyncio.Event()
    answered_around = len(servers.calls)
    calls = [asyncio.create_task(client.leader()) for _ in range(3)]
    for _ in range(1000):  # yield until the probe waits at the gateway and the others went around
        if len(gateway.requests) == 5 and len(servers.calls) == answered_around + 2:
            break
        await asyncio.sleep(0)
    assert len(gateway.requests) == 5 and len(servers.calls) == answered_around + 2
    gateway.gate.set()
    assert [leader.id for leader in await asyncio.gather(*calls)] == ["n1"] * 3
    assert client.breaker.state is BreakerState.CLOSED
    await client.leader()
    assert client.last_source == "gateway" and len(gateway.requests) == 6


# --------------------------------------------------------------------------------------- retries


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0)
    rng = random.Random(1)
    for retry, ceiling in enumerate([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]):
        draws = [policy.backoff(retry, rng) for _ in range(300)]
        assert all(0.0 <= d <= ceiling for d in draws)
        # Full jitter: spread over the whole interval, not clustered at the ceiling.
        assert min(draws) < 0.1 * ceiling and max(draws) > 0.9 * ceiling
    assert policy.backoff(10_000, rng) <= 1.0  # no overflow for absurd retry counts


async def test_retries_back_off_within_bounds(
    make: Callable[..., GatewayClient], gateway: Gateway, clock: Clock
) -> None:
    client = make(
        retry=RetryPolicy(attempts=6, initial_backoff_s=0.1, max_backoff_s=0.5),
        breaker=BreakerPolicy(failure_threshold=100),
    )
    gateway.default = error(502, "BAD_GATEWAY")
    gateway.answers = [error(500, "INTERNAL")] * 5 + [ok(CLUSTER)]
    assert (await client.cluster()).leader is not None
    assert client.last_source == "gateway" and len(gateway.requests) == 6
    assert len(clock.sleeps) == 5
    for retry, slept in enumerate(clock.sleeps):
        assert 0.0 <= slept <= min(0.5, 0.1 * 2**retry)


async def test_retry_after_is_honoured_and_capped(
    make: Callable[..., GatewayClient], gateway: Gateway, clock: Clock
) -> None:
    client = make(retry=RetryPolicy(attempts=3, max_retry_after_s=10), breaker=BreakerPolicy(failure_threshold=100))
    gateway.answers = [error(503, "NO_LEADER", headers={"Retry-After": "7"}), ok(LEADER)]
    assert (await client.leader()).id == "n1"
    assert clock.sleeps == [7.0]
    gateway.answers = [error(503, "NO_LEADER", headers={"Retry-After": "3600"}), ok(LEADER)]
    await client.leader()
    assert clock.sleeps[-1] == 10.0
    gateway.answers = [httpx.Response(429, headers={"Retry-After": "2"}), ok(LEADER)]
    await client.leader()
    assert clock.sleeps[-1] == 2.0


async def test_answers_are_raised_not_retried_nor_sent_around(
    make: Callable[..., GatewayClient], gateway: Gateway, servers: Servers
) -> None:
    client = make(token="t0k")
    gateway.answers = [error(404, "NOT_FOUND", "node a1 is dead; register it again")]
    with pytest.raises(errors.NotFound, match="register it again"):
        await client.heartbeat("a1")
    gateway.answers = [error(401, "UNAUTHENTICATED")]
    with pytest.raises(gw_errors.Unauthenticated):
        await client.deregister("a1")
    gateway.answers = [error(409, "RESOURCE_EXHAUSTED")]
    with pytest.raises(errors.ResourceExhausted):
        await client.register_node("a1")
    assert len(gateway.requests) == 3 and servers.calls == []
    assert client.breaker.state is BreakerState.CLOSED  # the gateway answered: it is healthy
    with pytest.raises(errors.InvalidArgument):
        await client.register_node("a1", ttl_s=0)  # refused before anything is sent
    assert len(gateway.requests) == 3


async def test_a_change_keeps_one_idempotency_key_everywhere(
    make: Callable[..., GatewayClient], gateway: Gateway, servers: Servers
) -> None:
    client = make(token="t0k")
    gateway.default = error(503, "UNKNOWN_OUTCOME")
    registered = await client.register_node("a1", labels={"zone": "eu"}, ttl_s=5)
    assert registered.node.id == "a1" and client.last_source == "members"
    keys = {r.headers["Idempotency-Key"] for r in gateway.requests}
    assert len(gateway.requests) == 3 and len(keys) == 1
    assert all(r.headers["Authorization"] == "Bearer t0k" for r in gateway.requests)
    assert json.loads(gateway.requests[0].content)["labels"] == {"zone": "eu"}
    # The servers receive the same request id, so an attempt that did commit is not applied twice.
    assert servers.calls == [("register", keys.pop())]
    # Inventory reads carry it too (a gateway with a token asks for it); discovery reads do not.
    gateway.default = ok({"nodes": []})
    client.breaker.succeeded()
    await client.nodes(role="agent", labels={"zone": "eu"})
    read = gateway.requests[-1]
    assert read.headers["Authorization"] == "Bearer t0k"
    assert read.url.params.get_list("label") == ["zone=eu"] and read.url.params["role"] == "agent"


# --------------------------------------------------------------------------------------- the cache


async def test_the_cache_answers_while_everything_is_down(
    make: Callable[..., GatewayClient], gateway: Gateway, servers: Servers, tmp_path: Path
) -> None:
    cache = tmp_path / "members.json"
    first = make(cache_path=cache, seeds=[])
    gateway.answers = [ok(CLUSTER)]
    assert (await first.cluster()).leader is not None and first.last_source == "gateway"
    saved = json.loads(cache.read_text())
    assert [m["id"] for m in saved["members"]] == ["n1", "n2", "n3"] and saved["leader"]["id"] == "n1"

    # A restarted node: no seeds, the gateway down, the servers unreachable.
    restarted = make(cache_path=cache, seeds=[])
    servers.error = errors.DeadlineExceeded("no server answered")
    cluster = await restarted.cluster()
    assert restarted.last_source == "cache" and cluster == first.cache.cluster
    bootstrap = await restarted.bootstrap()
    assert restarted.last_source == "cache" and bootstrap.action == "join"
    assert [m.client_address for m in bootstrap.members] == ["10.0.0.1:7101", "10.0.0.2:7101", "10.0.0.3:7101"]
    assert (await restarted.leader()).id == "n1" and restarted.last_source == "cache"
    # The servers were asked first, at the cached addresses (the last known leader first).
    assert restarted.factory_calls[-1] == ("10.0.0.1:7101", "10.0.0.2:7101", "10.0.0.3:7101")  # type: ignore[attr-defined]

    # Once the servers answer, their answer wins over the cache, and a new leader is remembered.
    servers.error = None
    servers.status = status(leader="n2")
    assert (await restarted.leader()).id == "n2" and restarted.last_source == "members"
    assert json.loads(cache.read_text())["leader"]["id"] == "n2"
    # An answer ("no leader now") is never replaced by an older cached one.
    servers.status = status(leader="")
    with pytest.raises(errors.NoLeader):
        await restarted.leader()


async def test_nothing_known_and_nothing_reachable_is_unavailable(
    make: Callable[..., GatewayClient], servers: Servers, tmp_path: Path
) -> None:
    bad = tmp_path / "members.json"
    bad.write_text("{not json")  # an unreadable cache is ignored, never fatal
    client = make(cache_path=bad)
    servers.error = errors.Unavailable("connection refused")
    with pytest.raises(errors.Unavailable, match="neither the gateway"):
        await client.cluster()
    client = make(seeds=[])
    with pytest.raises(errors.Unavailable, match="no server address is known"):
        await client.leader()


async def test_the_servers_answer_in_the_gateways_shape(make: Callable[..., GatewayClient], gateway: Gateway) -> None:
    via_gateway = make()
    gateway.answers = [ok(CLUSTER), ok(bootstrap_out(status()).model_dump(mode="json"))]
    around = make()
    for _ in range(3):
        around.breaker.failed()  # open: straight to the servers
    assert await via_gateway.cluster() == await around.cluster()
    assert await via_gateway.bootstrap() == await around.bootstrap()
    assert via_gateway.last_source == "gateway" and around.last_source == "members"


def test_a_ca_file_that_holds_no_certificate_is_refused_naming_it(tmp_path: Path) -> None:
    """A server's --tls-ca verifies an https gateway; a file it cannot use is a clear error at start."""
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    for cafile in (not_pem, tmp_path / "missing.pem"):
        with pytest.raises(errors.InvalidArgument, match=f"cannot use {cafile} to verify the gateway"):
            GatewayClient("https://gateway.example:8080", cafile=cafile)
