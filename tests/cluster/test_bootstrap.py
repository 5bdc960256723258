"""Race-free formation against real server processes: servers that know only a gateway URL and
``--bootstrap-expect N``, started at the same instant and split over two gateways, form exactly one
cluster, every time; a server started later joins it through a gateway, and an agent that found the
cluster through a gateway keeps its lease when that gateway dies.

The gateways run in this process (uvicorn in a thread each, the same app `cpctl gateway` serves) so
that twenty formations fit in the default suite; the servers are real `cpctl serve` processes."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from controlplane import tls
from controlplane.client import Client, NodeState
from controlplane.dev import PKI_DIR, LocalCluster, dev_admin_credentials, free_port
from gateway.app import GatewaySettings, create_app

from .conftest import _LIVE, credentials_env, status, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

# Formation races show up only now and then: make test repeats each size twice (about 5 s each:
# the suite's time is budgeted), make soak 20 times.
REPETITIONS = 2
SOAK_REPETITIONS = 20


class ThreadGateway:
    """One gateway app under uvicorn in a thread of its own (its own event loop)."""

    def __init__(self, settings: GatewaySettings, port: int, tls: tuple[Path, Path] | None = None) -> None:
        """``tls``: serve HTTPS with this (certificate, key), as `cpctl gateway --tls-cert --tls-key`."""
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            access_log=False,
            ssl_certfile=str(tls[0]) if tls else None,
            ssl_keyfile=str(tls[1]) if tls else None,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"gateway-{port}", daemon=True)

    def start(self) -> None:
        self.thread.start()
        wait_until(lambda: self.server.started, 20, f"the gateway at {self.url} to listen")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@contextlib.contextmanager
def gateway_pair(expect: int, data_dir: Path) -> Iterator[list[ThreadGateway]]:
    """Two gateways run with --bootstrap-expect, no endpoints, each relaying from the other; they
    reach the servers (once formed) as the dev admin of the cluster whose data dir is ``data_dir``."""
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    credentials = dev_admin_credentials(data_dir)
    gateways = [
        ThreadGateway(
            GatewaySettings(endpoints=(), bootstrap_expect=expect, peers=(urls[1 - i],), credentials=credentials),
            ports[i],
        )
        for i in range(2)
    ]
    try:
        for gateway in gateways:
            gateway.start()
        yield gateways
    finally:
        for gateway in gateways:
            gateway.stop()


@contextlib.contextmanager
def founders(data_dir: Path, expect: int, gateways: list[ThreadGateway], **options: object) -> Iterator[LocalCluster]:
    """N servers that know only a gateway (alternately the first and the second) and N."""
    cluster = LocalCluster(data_dir, servers=expect, **options)  # type: ignore[arg-type]
    for index, node in enumerate(cluster.nodes.values()):
        node.peers = []
        node.gateways = [gateways[index % 2].url]
        node.bootstrap_expect = expect
    _LIVE.append(cluster)
    try:
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            _LIVE.remove(cluster)


def start_at_once(cluster: LocalCluster) -> None:
    """Spawn every server back to back (well under a second apart: the race the design must survive)."""
    cluster.start()


def one_cluster(cluster: LocalCluster, voters: int) -> tuple[str, int] | None:
    """(leader, term) when every server names the same leader, term and member list of ``voters``
    voters: one cluster. None while they do not agree yet."""
    views = []
    for node in cluster.nodes.values():
        if not node.running:
            continue
        answer = status(node)
        views.append(
            (
                answer.leader_id,
                answer.term,
                tuple(sorted((m.id, m.voter) for m in answer.members)),
            )
        )
    if not views or not views[0][0] or len(set(views)) != 1:
        return None
    leader, term, members = views[0]
    if members != tuple((node_id, True) for node_id in sorted(cluster.nodes)) or len(members) != voters:
        return None
    return leader, term


def recorded(node_dir: Path) -> dict[str, object]:
    record: dict[str, object] = json.loads((node_dir / "bootstrap.json").read_text())
    return record


@pytest.mark.parametrize(
    ("expect", "repetitions"),
    [
        (3, REPETITIONS),
        (5, REPETITIONS),
        pytest.param(3, SOAK_REPETITIONS, marks=pytest.mark.soak),
        pytest.param(5, SOAK_REPETITIONS, marks=pytest.mark.soak),
    ],
)
def test_servers_started_together_through_two_gateways_form_exactly_one_cluster(
    tmp_path: Path, expect: int, repetitions: int
) -> None:
    """Again and again: N servers spawned back to back, half asking one gateway and half the other,
    end in one cluster of exactly those N voters, each having voted for the same founding set."""
    timings = []
    for repetition in range(repetitions):
        data_dir = tmp_path / f"rep{repetition}"
        with gateway_pair(expect, data_dir) as gateways, founders(data_dir, expect, gateways) as cluster:
            started = time.monotonic()
            start_at_once(cluster)
            wait_until(
                lambda cluster=cluster: one_cluster(cluster, expect),  # type: ignore[misc]
                60,
                f"repetition {repetition}: one cluster of {expect}",
                interval=0.2,
                detail=lambda cluster=cluster: [  # type: ignore[misc]
                    (n.id, n.running, (n.data_dir / "bootstrap.json").exists()) for n in cluster.nodes.values()
                ],
            )
            timings.append(time.monotonic() - started)
            records = [recorded(node.data_dir) for node in cluster.nodes.values()]
            assert {tuple(r["vote"]) for r in records} == {tuple(sorted(cluster.nodes))}  # type: ignore[arg-type]
            assert {r["outcome"] for r in records} == {"formed"}
            for node_id in cluster.nodes:  # nothing to keep: do not wait for graceful shutdowns
                cluster.kill(node_id, signal.SIGKILL)
    print(f"formed {repetitions} clusters of {expect}: {', '.join(f'{t:.1f}' for t in timings)} s")


def test_a_later_server_and_an_agent_join_through_the_gateway(tmp_path: Path) -> None:
    """After three founders formed: a fourth server given only a gateway joins as a learner, is
    admitted and promoted; an agent that found the servers through a gateway URL keeps its lease
    after that gateway is gone (it talks to the servers directly)."""
    options = {"extra_config": {"server_stabilization_s": 1.0}}
    with (
        gateway_pair(3, tmp_path / "cluster") as gateways,
        founders(tmp_path / "cluster", 3, gateways, **options) as cluster,
    ):
        start_at_once(cluster)
        wait_until(lambda: one_cluster(cluster, 3), 60, "the founders' cluster", interval=0.2)

        # The gateways learn the cluster from the founders' announcements (every 2 s) and then
        # answer join (until then: wait, or 503 while their status cache holds "no leader").
        def joinable() -> bool:
            answer = httpx.get(gateways[1].url + "/v1/bootstrap", timeout=5).json()
            return answer.get("action") == "join" and len(answer["members"]) == 3

        wait_until(joinable, 20, "the gateway to answer join with the three founders")

        late = cluster._new_node("n4", 4, None)
        late.gateways = [gateways[1].url]  # --gateway alone, as a later server is started
        cluster.nodes[late.id] = late
        cluster._spawn(late)
        wait_until(lambda: one_cluster(cluster, 4), 60, "the fourth server to join and be promoted", interval=0.2)
        assert recorded(late.data_dir)["outcome"] == "joined"
        # JSON from the first line, bootstrap included (it ran before the server's own logging).
        for node in cluster.nodes.values():
            lines = node.log_path.read_text().splitlines()
            assert any('"bootstrap_' in line for line in lines), node.id
            not_json = [line for line in lines if not line.startswith("{")]
            assert not_json == [], f"{node.id} logged lines that are not JSON: {not_json[:3]}"
            assert all(isinstance(json.loads(line), dict) for line in lines)

        agent_log = tmp_path / "agent.log"
        with open(agent_log, "wb") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "controlplane", "agent", "--id", "edge-1", "--ttl", "3",
                 "--endpoints", gateways[0].url],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**credentials_env(cluster), "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        try:
            # The SDK finds the servers through the other gateway, asked once.
            with Client.from_gateway(gateways[1].url, timeout=10, credentials=cluster.credentials) as client:

                def agent_lease() -> tuple[NodeState, int, int] | None:
                    views = [v for v in client.membership.nodes() if v.node.spec.id == "edge-1"]
                    record = views[0].node if views else None
                    return (record.state, record.incarnation, record.lease_id) if record else None

                wait_until(lambda: (agent_lease() or (None,))[0] == NodeState.ACTIVE, 30, "the agent to be active",
                           detail=lambda: agent_log.read_text()[-2000:])  # fmt: skip
                held = agent_lease()
                gateways[0].stop()
                # Three TTLs without the gateway that told it where the servers are: still alive, on the
                # same lease (a lost lease and a registration again between two looks would show here).
                deadline = time.monotonic() + 9
                while time.monotonic() < deadline:
                    assert agent_lease() == held, agent_log.read_text()[-2000:]
                    time.sleep(0.5)  # how often we look, over a fixed stretch of scenario time
                assert agent.poll() is None
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(20)


def test_the_founders_restart_without_any_gateway(tmp_path: Path) -> None:
    """A decided server starts from its bootstrap record: the gateways can be gone for good."""
    data_dir = tmp_path / "cluster"
    with gateway_pair(3, data_dir) as gateways, founders(data_dir, 3, gateways) as cluster:
        start_at_once(cluster)
        wait_until(lambda: one_cluster(cluster, 3), 60, "the founders' cluster", interval=0.2)
    # Both gateways stopped; the cluster context too. Start the same servers again.
    cluster.start()
    try:
        wait_until(lambda: one_cluster(cluster, 3), 60, "the cluster back without gateways", interval=0.2)
    finally:
        cluster.stop()


def test_servers_form_through_an_https_gateway_whose_certificate_the_cluster_ca_issued(tmp_path: Path) -> None:
    """deploy/compose/'s formation: the gateway serves HTTPS with a certificate from the cluster CA,
    which a server trusts for it (its --tls-ca) besides the system's CAs, so the gateway token never
    crosses the network in clear. The system's CAs alone would refuse that certificate."""
    data_dir = tmp_path / "cluster"
    credentials = dev_admin_credentials(data_dir)  # the cluster's dev CA, made before any server runs
    cert, key = tls.issue_web(data_dir / PKI_DIR, "gateway", sans=["127.0.0.1"], out_dir=tmp_path / "gateway")
    gateway = ThreadGateway(
        GatewaySettings(endpoints=(), bootstrap_expect=3, credentials=credentials), free_port(), tls=(cert, key)
    )
    gateway.start()
    try:
        with founders(data_dir, 3, [gateway, gateway]) as cluster:
            start_at_once(cluster)
            wait_until(
                lambda: one_cluster(cluster, 3),
                60,
                "one cluster formed through the https gateway",
                interval=0.2,
                detail=lambda: [node.log_path.read_text()[-600:] for node in cluster.nodes.values()],
            )
            assert {recorded(node.data_dir)["outcome"] for node in cluster.nodes.values()} == {"formed"}
    finally:
        gateway.stop()


def test_serve_refuses_bootstrap_expect_without_a_gateway(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "controlplane", "serve", "--node-id", "x", "--client-address", "127.0.0.1:1",
         "--raft-address", "127.0.0.1:2", "--data-dir", str(tmp_path), "--insecure-dev", "--bootstrap-expect", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "--bootstrap-expect needs --gateway" in result.stderr
