"""The gateway against real servers: the app in-process over the SDK, a real `cpctl gateway` process
fuzzed through its own OpenAPI document (schemathesis: no 5xx for any operation), and that process
killed (SIGKILL) while a GatewayClient goes around it to the servers and agents keep their leases."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from controlplane.agent import Agent
from controlplane.client import (
    AsyncClient,
    Client,
    DiscoveryPolicy,
    NodeState,
    NotFound,
    Unavailable,
    discover_endpoints,
)
from controlplane.dev import LocalCluster, free_port
from gateway.app import GatewaySettings, create_app
from gateway.client import BreakerState, GatewayClient, RetryPolicy

from .conftest import credentials_env, eventually, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

TOKEN = "cluster-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Node ids schemathesis registers get this prefix (see the map hooks), so they can be cleaned up.
FUZZ_PREFIX = "st-"


# --------------------------------------------------------------------------------------- in-process


@pytest.fixture
async def http(cluster: LocalCluster) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        GatewaySettings(endpoints=tuple(cluster.client_addresses), token=TOKEN, credentials=cluster.credentials)
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        yield client
    await app.state.gateway.close()  # ASGITransport runs no lifespan: close the SDK client ourselves


async def test_every_endpoint_against_real_servers(cluster: LocalCluster, http: httpx.AsyncClient) -> None:
    leader_id = cluster.wait_for_leader()
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as admin:
        admin.membership.set_flag("multi_network", True)
        admin.membership.create_network("gw-net", "gw-model", 4, priority=3)
        admin.ports.allocate("gw-host", "gw-svc", "http")
        admin.ports.assign("gw-host", "gw-svc", 5353, "mdns", protocol="udp")
        admin.models.register("GatewayLlama-7B", "ab" * 32, 1024, "gguf", family="llama", tags=["gwtag"])

    ready = await http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["leader"]["id"] == leader_id
    cluster_view = (await http.get("/v1/cluster")).json()
    assert cluster_view["leader"]["id"] == leader_id and cluster_view["answered_by"] == leader_id
    assert sorted(m["id"] for m in cluster_view["members"]) == sorted(cluster.nodes)
    roles = {m["id"]: m["role"] for m in cluster_view["members"]}
    assert roles.pop(leader_id) == "leader" and set(roles.values()) == {"follower"}
    assert all(m["healthy"] and m["voter"] for m in cluster_view["members"])
    leader = (await http.get("/v1/leader")).json()
    assert leader["client_address"] == cluster.nodes[leader_id].client_address
    assert leader["raft_address"] == cluster.nodes[leader_id].raft_address
    bootstrap = (await http.get("/v1/bootstrap")).json()
    assert bootstrap["action"] == "join" and bootstrap["leader"]["id"] == leader_id
    assert {m["client_address"] for m in bootstrap["members"]} == set(cluster.client_addresses)

    # Nodes: register, heartbeat, list with filters, the unified view, deregister.
    body = {
        "id": "gw-a1",
        "addresses": {"gossip": "127.0.0.1:7400"},
        "capabilities": ["gpu"],
        "resources": {"gpus": 2, "memory_bytes": 2**34, "cpu_millis": 8000},
        "labels": {"zone": "gw-eu"},
        "version": "1.2.3",
        "ttl_s": 30,
    }
    assert (await http.post("/v1/nodes", json=body)).status_code == 401
    headers = {**AUTH, "Idempotency-Key": "gw-a1-register-1"}
    registered = await http.post("/v1/nodes", json=body, headers=headers)
    assert registered.status_code == 200, registered.text
    assert registered.json()["node"]["state"] == "joining" and registered.json()["lease_ttl_ms"] == 30_000
    # A retry with the same key is the same write, not a second one.
    again = await http.post("/v1/nodes", json=body, headers=headers)
    assert again.json()["revision"] == registered.json()["revision"]
    beat = await http.post("/v1/nodes/gw-a1/heartbeat", json={"activity": "training"}, headers=AUTH)
    assert beat.json() == {"node_id": "gw-a1", "state": "active"}
    listed = (await http.get("/v1/nodes", params={"label": "zone=gw-eu", "role": "agent"}, headers=AUTH)).json()[
        "nodes"
    ]
    assert [n["id"] for n in listed] == ["gw-a1"]
    assert listed[0]["activity"] == "training" and listed[0]["connectivity"] == "connected"
    assert listed[0]["resources"] == body["resources"] and listed[0]["capabilities"] == ["gpu"]
    servers = (await http.get("/v1/nodes", params={"role": "server", "consistency": "stale"}, headers=AUTH)).json()[
        "nodes"
    ]
    assert sorted(n["id"] for n in servers) == sorted(cluster.nodes)
    assert (await http.get("/v1/nodes", params={"capability": "gpu", "state": "active"}, headers=AUTH)).json()["nodes"]

    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as admin:
        admin.membership.join("gw-net", node_id="gw-a1")
        admin.membership.join("gw-net", client_id="gw-c1")
    view = (await http.get("/v1/nodes/gw-a1", headers=AUTH)).json()
    assert view["networks"] == ["gw-net"] and view["clients_served"] == 1 and view["lease_ttl_ms"] == 30_000

    # Read views.
    networks = (await http.get("/v1/networks", params={"model": "gw-model"}, headers=AUTH)).json()["networks"]
    assert [n["name"] for n in networks] == ["gw-net"] and networks[0]["members"] == ["gw-a1"]
    detail = (await http.get("/v1/networks/gw-net", headers=AUTH)).json()
    assert [p["client_id"] for p in detail["placements"]] == ["gw-c1"]
    assert detail["placements"][0]["node_id"] == "gw-a1"
    ports = (await http.get("/v1/ports", params={"host": "gw-host"}, headers=AUTH)).json()
    assert sorted((a["service"], a["name"], a["protocol"]) for a in ports["assignments"]) == [
        ("gw-svc", "http", "tcp"),
        ("gw-svc", "mdns", "udp"),
    ]
    flags = {f["name"]: f["enabled"] for f in (await http.get("/v1/flags", headers=AUTH)).json()["flags"]}
    assert flags["multi_network"] is True

    async def found() -> list[str]:
        result = (await http.get("/v1/models/search", params={"q": "gatewayll", "tag": "gwtag"}, headers=AUTH)).json()
        return [hit["model"]["name"] for hit in result["hits"]]

    assert await eventually(found, 10, "the model in the search index") == ["GatewayLlama-7B"]
    # Sorted pages: the token of one page brings the next; a bad sort or token is a 400.
    first = await http.get("/v1/models/search", params={"tag": "gwtag", "sort": "name", "limit": 1}, headers=AUTH)
    assert first.status_code == 200 and first.json()["hits"][0]["model"]["name"] == "GatewayLlama-7B"
    bad_sort = await http.get("/v1/models/search", params={"q": "x", "sort": "popular"}, headers=AUTH)
    assert bad_sort.status_code == 400
    stray = {"q": "gatewayll", "page_token": "p1.nonsense"}
    assert (await http.get("/v1/models/search", params=stray, headers=AUTH)).status_code == 400

    # The cluster's refusals, in the gateway's shape.
    missing = await http.get("/v1/networks/gw-nowhere", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
    bad = await http.post("/v1/nodes", json={"id": "bad id!"}, headers=AUTH)
    assert bad.status_code == 400 and "node id" in bad.json()["message"]

    moves = await http.delete("/v1/nodes/gw-a1", headers=AUTH)
    assert moves.status_code == 200 and moves.json()["changed"] is True
    assert [p["client_id"] for p in moves.json()["moved"]] + moves.json()["unplaced"] == ["gw-c1"]
    gone = await http.post("/v1/nodes/gw-a1/heartbeat", headers=AUTH)
    assert gone.status_code == 404 and "register it again" in gone.json()["message"]
    assert (await http.get("/v1/nodes", params={"label": "zone=gw-eu"}, headers=AUTH)).json()["nodes"] == []
    left = (await http.get("/v1/nodes", params={"label": "zone=gw-eu", "include_gone": True}, headers=AUTH)).json()[
        "nodes"
    ]
    assert [(n["id"], n["state"]) for n in left] == [("gw-a1", "left")]
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as admin:
        admin.membership.forget("gw-a1")
        admin.membership.delete_network("gw-net", force=True)


# --------------------------------------------------------------------------------------- a real process


@dataclass
class GatewayProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _ready(url: str, path: str = "/readyz") -> bool:
    try:
        return httpx.get(url + path, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def running_gateway(cluster: LocalCluster, log_dir: Path) -> Iterator[GatewayProcess]:
    port = free_port()
    log_path = log_dir / "gateway.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "gateway", "--listen", f"127.0.0.1:{port}",
             "--endpoints", ",".join(cluster.client_addresses)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**credentials_env(cluster), "CP_GATEWAY_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    gateway = GatewayProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_until(
            lambda: process.poll() is None and _ready(gateway.url),
            30,
            "the gateway to answer /readyz 200",
            detail=gateway.log_tail,
        )
        yield gateway
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_the_gateway_reads_its_settings_from_the_file_the_environment_and_the_flags(tmp_path: Path) -> None:
    """--config < CP_GATEWAY_* < flags given (a formation gateway: it needs no cluster to serve)."""
    in_file, in_env, in_flag = free_port(), free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f'listen = "127.0.0.1:{in_file}"\nbootstrap_expect = 3\nlog_level = "warning"\n')

    def answers(port: int) -> bool:
        return _ready(f"http://127.0.0.1:{port}", "/healthz")  # /readyz waits for a cluster

    def serving(*flags: str, env: dict[str, str]) -> int:
        """The port the gateway started this way serves on."""
        log_path = tmp_path / f"gateway-{len(flags)}-{len(env)}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "controlplane", "gateway", "--config", str(config), *flags],
                stdout=log, stderr=subprocess.STDOUT, env={**env, "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        try:
            candidates = (in_file, in_env, in_flag)
            wait_until(
                lambda: process.poll() is None and any(answers(port) for port in candidates),
                30,
                "the gateway to answer /healthz",
                detail=lambda: log_path.read_text(errors="replace")[-2000:],
            )
            up = [port for port in candidates if answers(port)]
            assert len(up) == 1, up
            return up[0]
        finally:
            process.terminate()
            process.wait(10)

    assert serving(env={}) == in_file
    assert serving(env={"CP_GATEWAY_LISTEN": f"127.0.0.1:{in_env}"}) == in_env
    assert serving("--listen", f"127.0.0.1:{in_flag}", env={"CP_GATEWAY_LISTEN": f"127.0.0.1:{in_env}"}) == in_flag


@pytest.fixture
def gateway(cluster: LocalCluster, tmp_path: Path) -> Iterator[GatewayProcess]:
    with running_gateway(cluster, tmp_path) as process:
        yield process


@pytest.fixture
def fuzzed_schema(gateway: GatewayProcess, cluster: LocalCluster) -> Iterator[Any]:
    """The live gateway's OpenAPI document, with hooks that keep the fuzzing to nodes of its own."""
    schema = schemathesis.openapi.from_url(gateway.url + "/openapi.json")

    @schema.hook
    def map_body(context: Any, body: Any) -> Any:
        # Registrations get a recognisable id and the agent role: the session's servers and other
        # tests' nodes stay untouched.
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            body = {**body, "id": (FUZZ_PREFIX + body["id"])[:64]}
            if body.get("role") == "server":
                body["role"] = "agent"
        return body

    @schema.hook
    def map_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> dict[str, Any] | None:
        if isinstance(path_parameters, dict) and isinstance(path_parameters.get("node_id"), str):
            return {**path_parameters, "node_id": (FUZZ_PREFIX + path_parameters["node_id"])[:64]}
        return path_parameters

    yield schema
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as admin:
        for view in admin.membership.nodes(include_gone=True):
            node_id = view.node.spec.id
            if node_id.startswith(FUZZ_PREFIX):
                with contextlib.suppress(NotFound):
                    admin.membership.deregister(node_id)
                    admin.membership.forget(node_id)


#: Examples per operation and generation mode (about 20 s for the whole document here).
FUZZ_EXAMPLES = 25


def test_no_operation_answers_a_server_error(fuzzed_schema: Any) -> None:
    """Every operation of the live OpenAPI document, with valid and invalid input, answers below 500.

    (One test looping over the operations rather than schemathesis' pytest parametrization, whose
    fixture-backed form does not run under this pytest.)
    """
    operations = [result.ok() for result in fuzzed_schema.get_all_operations()]
    assert len(operations) >= 13, [op.label for op in operations]
    failures: list[str] = []
    answers: Counter[tuple[str, int]] = Counter()
    for operation in operations:
        raw = operation.definition.raw
        has_input = bool(raw.get("parameters") or raw.get("requestBody"))
        # Nothing can be made invalid about an operation without input.
        modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if has_input else [GenerationMode.POSITIVE]
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def exercise(case: Any) -> None:
                response = case.call_and_validate(headers=AUTH, checks=[not_a_server_error], timeout=15)
                answers[(case.operation.label, response.status_code // 100)] += 1

            try:
                exercise()
            except Exception as exc:  # collected: one report naming every operation that failed
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    # The fuzzing reached the cluster: valid registrations were accepted, invalid input refused.
    assert answers[("POST /v1/nodes", 2)] > 0 and answers[("POST /v1/nodes", 4)] > 0, answers
    assert answers[("GET /v1/models/search", 2)] > 0, answers


async def test_nodes_keep_working_when_the_gateway_is_killed(
    cluster: LocalCluster, gateway: GatewayProcess, tmp_path: Path
) -> None:
    leader_id = cluster.wait_for_leader()
    cache = tmp_path / "members.json"
    node = GatewayClient(
        gateway.url,
        token=TOKEN,
        cache_path=cache,
        retry=RetryPolicy(initial_backoff_s=0.02),
        credentials=cluster.credentials,
    )
    agent = Agent(
        AsyncClient(cluster.client_addresses, credentials=cluster.credentials, timeout=5), "gw-kill-agent", ttl_s=2.0
    )
    try:
        # Through the gateway: discovery, then a node's life over HTTP.
        assert (await node.cluster()).leader.id == leader_id  # type: ignore[union-attr]
        assert node.last_source == "gateway" and cache.exists()
        registered = await node.register_node("gw-kill-n1", labels={"zone": "gw-kill"}, ttl_s=30)
        assert registered.node.state == "joining"
        assert (await node.heartbeat("gw-kill-n1", activity="idle")).state == "active"
        listed = await node.nodes(labels={"zone": "gw-kill"})
        assert [(v.id, v.state, v.activity) for v in listed] == [("gw-kill-n1", "active", "idle")]
        await agent.start()
        assert agent.state is NodeState.ACTIVE
        # The SDK's discovery (from_gateway, --endpoints http://...) learns every server from it.
        everyone = sorted(cluster.client_addresses)
        assert sorted(await discover_endpoints(gateway.url, credentials=cluster.credentials)) == everyone

        gateway.process.send_signal(signal.SIGKILL)
        gateway.process.wait(10)

        # With the gateway gone, the SDK's discovery asks a seed instead, and learns every server
        # from it; without seeds it says the gateway did not answer.
        once = DiscoveryPolicy(attempts=1)
        seed = cluster.client_addresses[-1:]
        found = await discover_endpoints(gateway.url, seeds=seed, credentials=cluster.credentials, policy=once)
        assert sorted(found) == everyone
        with pytest.raises(Unavailable, match="did not answer"):
            await discover_endpoints(gateway.url, credentials=cluster.credentials, policy=once)

        # The node still finds the leader: three refused connections open the breaker and the
        # servers it learned from the gateway answer instead.
        leader = await node.leader()
        assert leader.id == leader_id and node.last_source == "members"
        assert node.breaker.state is BreakerState.OPEN
        assert (await node.heartbeat("gw-kill-n1")).state == "active" and node.last_source == "members"
        assert (await node.bootstrap()).action == "join"

        # A node restarting now, with nothing but the cache file, finds the leader too.
        async with GatewayClient(
            gateway.url, cache_path=cache, retry=RetryPolicy(attempts=1), credentials=cluster.credentials
        ) as restarted:
            assert (await restarted.leader()).id == leader_id and restarted.last_source == "members"

        # Agents talk to the servers over gRPC: the gateway's death costs them nothing. Wait for more
        # than a TTL's worth of heartbeats after the kill, then check the lease was never lost.
        beats = agent.stats.heartbeats

        async def beaten_past_a_ttl() -> bool:
            return agent.stats.heartbeats >= beats + 4  # every TTL/3: four beats span more than a TTL

        await eventually(beaten_past_a_ttl, 20, "four agent heartbeats after the gateway died")
        assert agent.stats.lease_lost == 0
        view = await agent.client.membership.get_node("gw-kill-agent")
        assert view.node.state is NodeState.ACTIVE and view.node.incarnation == 1
        assert (await node.deregister("gw-kill-n1")).changed
    finally:
        await node.aclose()
        with contextlib.suppress(Exception):
            await agent.stop(deregister=True)
        await agent.client.close()
