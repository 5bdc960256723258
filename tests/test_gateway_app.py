"""The gateway app in-process (httpx.ASGITransport) over a minimal fake backend: the parts that do not
need a cluster. The error mapping, authentication, the body limit, validation, the OpenAPI document,
readiness without a leader and the status cache. tests/cluster/test_gateway.py runs the same app
against real servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from controlplane import errors
from controlplane.cli import app as cpctl
from controlplane.cli import gateway as _gateway_command  # noqa: F401  (registers `cpctl gateway`)
from controlplane.client import (
    ClusterStatus,
    Consistency,
    Member,
    Moves,
    NodeRecord,
    NodeRole,
    NodeSpec,
    NodeState,
    Registered,
    Role,
)
from gateway import errors as gw_errors
from gateway.app import GatewaySettings, create_app
from gateway.models import NodeFilters, RegisterNodeIn

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def status(leader: str = "n1", *, has_quorum: bool = True, answered_by: str = "n1") -> ClusterStatus:
    members = tuple(
        Member(
            id=f"n{i}",
            raft_address=f"127.0.0.1:720{i}",
            client_address=f"127.0.0.1:710{i}",
            role=Role.LEADER if f"n{i}" == leader else Role.FOLLOWER,
            healthy=True,
            voter=True,
        )
        for i in (1, 2, 3)
    )
    return ClusterStatus(
        node_id=answered_by,
        role=Role.LEADER if answered_by == leader else Role.FOLLOWER,
        leader_id=leader,
        leader_address=f"127.0.0.1:710{leader[1:]}" if leader else "",
        term=7,
        commit_index=10,
        applied_index=10,
        applied_revision=42,
        members=members,
        has_quorum=has_quorum,
        oldest_revision=1,
        raft_log_size=10,
        version="test",
    )


class FakeBackend:
    """Only what these tests call; every answer or error is set by the test."""

    def __init__(self) -> None:
        self.status: ClusterStatus | Exception = status()
        self.status_calls = 0
        self.status_gate: asyncio.Event | None = None
        self.failure: Exception | None = None
        self.registered: list[tuple[RegisterNodeIn, str | None]] = []
        self.closed = False

    async def cluster_status(self, timeout: float) -> ClusterStatus:
        self.status_calls += 1
        if self.status_gate is not None:
            await self.status_gate.wait()
        if isinstance(self.status, Exception):
            raise self.status
        return self.status

    async def register_node(self, node: RegisterNodeIn, request_id: str | None) -> Registered:
        if self.failure is not None:
            raise self.failure
        self.registered.append((node, request_id))
        spec = NodeSpec(node.id, NodeRole.AGENT, dict(node.addresses), tuple(node.capabilities), None, {}, "")
        record = NodeRecord(spec, NodeState.JOINING, 1, 0, 0, 5, 5, "", "registered", 1)
        return Registered(revision=5, node=record, lease_ttl_ms=int(node.ttl_s * 1000))

    async def heartbeat(self, node_id: str, activity: str, request_id: str | None) -> NodeState:
        if self.failure is not None:
            raise self.failure
        return NodeState.ACTIVE

    async def deregister(self, node_id: str, request_id: str | None) -> Moves:
        return Moves(revision=6, changed=True, moved=(), unplaced=())

    async def nodes(self, filters: NodeFilters, consistency: Consistency) -> tuple[Any, ...]:
        if self.failure is not None:
            raise self.failure
        return ()

    async def close(self) -> None:
        self.closed = True


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


Make = Callable[..., httpx.AsyncClient]


@pytest.fixture
async def make(backend: FakeBackend, clock: FakeClock) -> AsyncIterator[Make]:
    clients: list[httpx.AsyncClient] = []

    def factory(token: str | None = TOKEN, **settings: Any) -> httpx.AsyncClient:
        app = create_app(GatewaySettings(endpoints=("127.0.0.1:1",), token=token, **settings), backend, clock=clock)
        # raise_app_exceptions=False: an unexpected exception must become our 500, as under uvicorn.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        client = httpx.AsyncClient(transport=transport, base_url="http://gateway")
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()


@pytest.fixture
async def http(make: Make) -> httpx.AsyncClient:
    return make()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == code and body["message"], body
    return body


# --------------------------------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errors.InvalidArgument("bad label"), 400, "INVALID_ARGUMENT"),
        (errors.OutOfRange("too old", 3), 400, "OUT_OF_RANGE"),
        (errors.NotFound("no node x"), 404, "NOT_FOUND"),
        (errors.AlreadyExists("there"), 409, "ALREADY_EXISTS"),
        (errors.FailedPrecondition("draining"), 409, "FAILED_PRECONDITION"),
        (errors.ResourceExhausted("network full"), 409, "RESOURCE_EXHAUSTED"),
        (errors.NotLeader("not me", "n2", "127.0.0.1:7102"), 503, "NOT_LEADER"),
        (errors.Unavailable("try later"), 503, "UNAVAILABLE"),
        (errors.NoLeader("election"), 503, "NO_LEADER"),
        (errors.Shutdown("stopping"), 503, "SHUTDOWN"),
        (errors.UnknownOutcome("maybe"), 503, "UNKNOWN_OUTCOME"),
        (errors.DeadlineExceeded("slow"), 504, "DEADLINE_EXCEEDED"),
        (errors.Internal("bug in apply"), 500, "INTERNAL"),
    ],
)
async def test_cluster_errors_map_to_one_status_each(
    http: httpx.AsyncClient, backend: FakeBackend, error: errors.ControlPlaneError, status: int, code: str
) -> None:
    backend.failure = error
    response = await http.post("/v1/nodes", json={"id": "a1"}, headers=AUTH)
    body = assert_error(response, status, code)
    assert body["message"] == error.message
    assert ("retry-after" in response.headers) == (status == 503)
    # The client side reads the answer back as the same error class.
    assert type(gw_errors.error_from_answer(response.status_code, body)) is type(error)


async def test_an_unexpected_exception_is_a_500_without_a_traceback(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.failure = ZeroDivisionError("secret internals")
    body = assert_error(await http.get("/v1/nodes", headers=AUTH), 500, "INTERNAL")
    assert "secret" not in body["message"] and "Traceback" not in body["message"] and "error id" in body["message"]


async def test_unknown_paths_and_methods_answer_in_the_same_shape(http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/v1/nope"), 404, "NOT_FOUND")
    response = await http.put("/v1/nodes", json={})
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers["allow"]  # Starlette names the methods of the first route matching the path


# --------------------------------------------------------------------------------------- auth


async def test_changes_need_the_bearer_token(http: httpx.AsyncClient, backend: FakeBackend) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        for response in (
            await http.post("/v1/nodes", json={"id": "a1"}, headers=headers),
            await http.post("/v1/nodes/a1/heartbeat", headers=headers),
            await http.delete("/v1/nodes/a1", headers=headers),
        ):
            assert_error(response, 401, "UNAUTHENTICATED")
            assert response.headers["www-authenticate"] == "Bearer"
    assert backend.registered == []
    # Authentication comes before validation: an outsider learns nothing about valid bodies.
    assert_error(await http.post("/v1/nodes", json={"id": "x" * 500}), 401, "UNAUTHENTICATED")
    # Inventory reads need it too; discovery (what a machine asks before it holds anything) does not.
    for path in ("/v1/nodes", "/v1/nodes/a1", "/v1/networks", "/v1/ports", "/v1/models/search?q=x", "/v1/flags"):
        assert_error(await http.get(path), 401, "UNAUTHENTICATED")
    assert (await http.get("/v1/nodes", headers=AUTH)).status_code == 200
    assert (await http.get("/v1/bootstrap")).status_code == 200
    response = await http.post("/v1/nodes", json={"id": "a1"}, headers=AUTH)
    assert response.status_code == 200 and response.json()["node"]["id"] == "a1"


async def test_open_reads_serves_the_inventory_without_the_token(make: Make) -> None:
    http = make(open_reads=True)
    assert (await http.get("/v1/nodes")).status_code == 200
    assert_error(await http.post("/v1/nodes", json={"id": "a1"}), 401, "UNAUTHENTICATED")


async def test_without_a_token_changes_are_open(make: Make, backend: FakeBackend) -> None:
    http = make(token=None)
    assert (await http.post("/v1/nodes", json={"id": "a1"})).status_code == 200


async def test_the_idempotency_key_becomes_the_request_id(http: httpx.AsyncClient, backend: FakeBackend) -> None:
    await http.post("/v1/nodes", json={"id": "a1"}, headers={**AUTH, "Idempotency-Key": "k-123"})
    await http.post("/v1/nodes", json={"id": "a2"}, headers=AUTH)
    assert [rid for _, rid in backend.registered] == ["k-123", None]
    bad = await http.post("/v1/nodes", json={"id": "a3"}, headers={**AUTH, "Idempotency-Key": "x" * 200})
    assert_error(bad, 400, "INVALID_ARGUMENT")


# --------------------------------------------------------------------------------------- body limit


async def test_a_large_body_is_refused_before_parsing(make: Make, backend: FakeBackend) -> None:
    http = make(max_body_bytes=1024)
    declared = await http.post("/v1/nodes", content=b"{" + b" " * 2000 + b"}", headers=AUTH)
    assert_error(declared, 413, "PAYLOAD_TOO_LARGE")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 200  # no Content-Length: counted as it streams

    streamed = await http.post("/v1/nodes", content=chunks(), headers=AUTH)
    assert_error(streamed, 413, "PAYLOAD_TOO_LARGE")
    assert backend.registered == []
    small = await http.post("/v1/nodes", json={"id": "a1", "labels": {"k": "v"}}, headers=AUTH)
    assert small.status_code == 200


# --------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "body",
    [
        {"id": ""},
        {"id": "x" * 65},
        {"id": "a1", "ttl_s": 0.5},
        {"id": "a1", "ttl_s": 10**9},
        {"id": "a1", "role": "king"},
        {"id": "a1", "capabilities": [f"c{i}" for i in range(65)]},
        {"id": "a1", "labels": {f"k{i}": "v" for i in range(65)}},
        {"id": "a1", "resources": {"gpus": -1}},
        {"id": "a1", "colour": "blue"},  # a misspelt field is named, not ignored
        [1, 2, 3],
    ],
)
async def test_bad_input_is_a_400_naming_the_field(http: httpx.AsyncClient, body: Any) -> None:
    body_out = assert_error(await http.post("/v1/nodes", json=body, headers=AUTH), 400, "INVALID_ARGUMENT")
    assert "body" in body_out["message"]


async def test_malformed_json_and_query_parameters(http: httpx.AsyncClient) -> None:
    not_json = await http.post("/v1/nodes", content=b"{nope", headers={**AUTH, "Content-Type": "application/json"})
    assert "not valid JSON" in assert_error(not_json, 400, "INVALID_ARGUMENT")["message"]
    form = {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}  # what curl -d sends
    as_form = await http.post("/v1/nodes", content=b'{"id": "a1"}', headers=form)
    assert "Content-Type: application/json" in assert_error(as_form, 400, "INVALID_ARGUMENT")["message"]
    assert_error(await http.get("/v1/nodes", params={"role": "king"}, headers=AUTH), 400, "INVALID_ARGUMENT")
    assert_error(await http.get("/v1/models/search", params={"limit": 0}, headers=AUTH), 400, "INVALID_ARGUMENT")
    assert_error(await http.get("/v1/nodes", params={"label": "no-equals"}, headers=AUTH), 400, "INVALID_ARGUMENT")
    assert_error(await http.get("/v1/nodes", params={"consistency": "eventual"}, headers=AUTH), 400, "INVALID_ARGUMENT")


# --------------------------------------------------------------------------------------- OpenAPI


async def test_openapi_and_docs_are_served(http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    paths = document["paths"]
    for path in ("/v1/cluster", "/v1/leader", "/v1/bootstrap", "/v1/nodes", "/v1/nodes/{node_id}", "/readyz"):
        assert path in paths
    register = paths["/v1/nodes"]["post"]
    assert register["security"] == [{"HTTPBearer": []}]
    assert {"400", "401", "413", "503"} <= set(register["responses"])
    # Validation errors are documented as what they are: our 400, never FastAPI's 422.
    assert all("422" not in op["responses"] for path in paths.values() for op in path.values())
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert document["components"]["schemas"]["BootstrapOut"]["properties"]["action"]["enum"] == ["join", "form", "wait"]
    docs = await http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# --------------------------------------------------------------------------------------- readiness, cache


async def test_ready_only_while_a_leader_is_reachable(
    http: httpx.AsyncClient, backend: FakeBackend, clock: FakeClock
) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["leader"]["id"] == "n1"

    backend.status = status(leader="")  # an election
    clock.now += 1.5
    assert_error(await http.get("/readyz"), 503, "NO_LEADER")
    assert_error(await http.get("/v1/leader"), 503, "NO_LEADER")
    assert_error(await http.get("/v1/bootstrap"), 503, "NO_LEADER")
    cluster = await http.get("/v1/cluster")  # the cluster view still answers, naming no leader
    assert cluster.status_code == 200 and cluster.json()["leader"] is None

    backend.status = status(leader="n1", has_quorum=False)  # a leader cut off from its quorum
    clock.now += 1.5
    assert_error(await http.get("/readyz"), 503, "NO_LEADER")

    backend.status = gw_errors.ClusterUnreachable("no server answered")
    clock.now += 1.5
    response = await http.get("/v1/bootstrap")
    assert_error(response, 503, "UNAVAILABLE")
    assert response.headers["retry-after"] == "1"
    # The healthz of the process is independent of the cluster.
    assert (await http.get("/healthz")).status_code == 200


async def test_bootstrap_says_join_with_the_members(http: httpx.AsyncClient) -> None:
    body = (await http.get("/v1/bootstrap")).json()
    assert body["action"] == "join" and body["leader"]["id"] == "n1" and body["leader"]["raft_address"]
    assert [m["id"] for m in body["members"]] == ["n1", "n2", "n3"]
    assert all(m["client_address"] and m["raft_address"] for m in body["members"])


async def test_status_is_cached_briefly_and_fetched_once_for_concurrent_requests(
    http: httpx.AsyncClient, backend: FakeBackend, clock: FakeClock
) -> None:
    backend.status_gate = asyncio.Event()
    pending = [asyncio.create_task(http.get(path)) for path in ("/v1/cluster", "/v1/leader", "/v1/bootstrap") * 5]
    while backend.status_calls == 0:
        await asyncio.sleep(0)  # let the requests reach the cache
    backend.status_gate.set()
    assert all(r.status_code == 200 for r in await asyncio.gather(*pending))
    assert backend.status_calls == 1
    clock.now += 0.5
    await http.get("/v1/leader")
    assert backend.status_calls == 1
    clock.now += 1.0
    await http.get("/v1/leader")
    assert backend.status_calls == 2
    # Failures are kept as briefly: a dead cluster is not asked once per request.
    backend.status = errors.NoLeader("election")
    clock.now += 1.5
    for _ in range(3):
        assert_error(await http.get("/v1/leader"), 503, "NO_LEADER")
    assert backend.status_calls == 3


async def test_a_refresh_asks_the_cluster_within_the_ttl_and_readers_then_get_its_answer(
    backend: FakeBackend, clock: FakeClock
) -> None:
    """What the console's status loop relies on: a fresh answer each time it asks, shared with the
    readers of the cache."""
    app = create_app(GatewaySettings(endpoints=("127.0.0.1:1",), token=TOKEN), backend, clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
        assert (await http.get("/v1/leader")).json()["id"] == "n1"
        calls = backend.status_calls
        backend.status = status(leader="n2")
        assert (await app.state.gateway.cache.refresh()).leader_id == "n2"  # no clock moved
        assert backend.status_calls == calls + 1
        assert (await http.get("/v1/leader")).json()["id"] == "n2"  # the refreshed answer, kept
        assert backend.status_calls == calls + 1


# --------------------------------------------------------------------------------------- the command


def test_the_command_refuses_open_changes_on_a_public_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GW_TEST_TOKEN", raising=False)
    runner = CliRunner()
    args = ["gateway", "--endpoints", "127.0.0.1:1", "--token-env", "GW_TEST_TOKEN"]
    refused = runner.invoke(cpctl, [*args, "--listen", "0.0.0.0:18080"])
    assert refused.exit_code == 2 and "GW_TEST_TOKEN is not set" in refused.output
    bad = runner.invoke(cpctl, [*args, "--listen", "nowhere"])
    assert bad.exit_code == 2 and "HOST:PORT" in bad.output


# --------------------------------------------------------------------------------------- metrics


def scraped(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def test_requests_are_counted_and_timed_by_route_template_and_status(
    http: httpx.AsyncClient, backend: FakeBackend
) -> None:
    before = (await http.get("/metrics")).text
    assert (await http.delete("/v1/nodes/a1", headers=AUTH)).status_code == 200
    assert (await http.delete("/v1/nodes/b2", headers=AUTH)).status_code == 200
    assert (await http.delete("/v1/nodes/a1")).status_code == 401  # no token
    assert (await http.get("/v1/no/such/path")).status_code == 404
    backend.failure = ZeroDivisionError("a bug")
    assert (await http.get("/v1/nodes", headers=AUTH)).status_code == 500
    response = await http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    after = response.text

    def moved(name: str, **labels: str) -> float:
        return scraped(after, name, **labels) - scraped(before, name, **labels)

    requests = "controlplane_gateway_http_requests_total"
    node = {"route": "/v1/nodes/{node_id}", "method": "DELETE"}
    assert moved(requests, status="200", **node) == 2  # one series for both ids: the template, not the path
    assert moved(requests, status="401", **node) == 1
    assert moved(requests, route="unmatched", method="GET", status="404") == 1
    assert moved(requests, route="/v1/nodes", method="GET", status="500") == 1
    assert moved("controlplane_gateway_http_request_duration_seconds_count", status="200", **node) == 2
    assert 'route="/v1/nodes/a1"' not in after
