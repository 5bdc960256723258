"""Health checks against real processes (issue 21): a tiny HTTP service and a real `cpctl agent`.

The agent turns the service passing within an interval; 200 stable checks cost no log write (the
revision stands and no health report reaches a server while the service answers probe after
probe); `kill -9` of the service turns it critical, and of the agent turns it critical when the
lease expires, in the command that marks the node dead; health changes are Watch events; the
gateway's `?healthy=true` never lists a critical instance while instances flap; a ttl check
expires; deregister_critical_after_s releases the ports; bad checks change nothing.

Times from a failure to critical are printed (``-s``), never asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.health import LISTENER as TCP_LISTENER
from controlplane.client import (
    Client,
    FailedPrecondition,
    HealthStatus,
    InvalidArgument,
    NodeState,
    NotFound,
    PortAction,
)
from controlplane.dev import LocalCluster, free_port
from controlplane.v1 import membership_pb2, ports_pb2
from gateway.app import GatewaySettings, create_app

from .conftest import (
    collect_events,
    cpctl,
    cpctl_json,
    credentials_env,
    started_cluster,
    wait_converged,
    wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

TTL_S = 2.0
REPORT_METHOD = "/controlplane.v1.Services/ReportHealth"


@pytest.fixture(scope="module")
def quiet_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster of this module's own, for the tests that count revisions: the shared one carries
    other tests' leftovers (a gossip group whose rounds keep timing out moves the revision)."""
    with started_cluster(tmp_path_factory.mktemp("health-quiet")) as cluster:
        yield cluster


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes the test starts, stopped and reaped whatever happened: SIGTERM first, so that an
    agent stops the services it started (they run in their own sessions), then SIGKILL."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.terminate()
    for process in started:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def start_agent(cluster: LocalCluster, processes: list[subprocess.Popen[str]], node_id: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "controlplane", "agent", "--id", node_id, "--ttl", str(TTL_S),
         "--endpoints", ",".join(cluster.client_addresses)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**credentials_env(cluster), "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    processes.append(process)
    return process


def start_http_service(port: int, log: Path, processes: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    """The tiny service: Python's http.server, which logs every request it answers (to ``log``)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(log.parent)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("a"),
        text=True,
    )
    processes.append(process)
    return process


def agent_metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """An agent's /metrics: (sample name, sorted labels) -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def serving(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=2).is_success
    except httpx.HTTPError:
        return False


def probes_answered(log: Path) -> int:
    return log.read_text().count('"GET /') if log.exists() else 0


def health_reports(cluster: LocalCluster) -> int:
    """ReportHealth requests answered by every server (a forwarded one counts on both)."""
    total = 0.0
    for node in cluster.nodes.values():
        text = httpx.get(f"http://{node.metrics_address}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith("controlplane_grpc_requests_total{") and f'method="{REPORT_METHOD}"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return int(total)


def node_state(client: Client, node_id: str) -> NodeState | None:
    try:
        return client.membership.get_node(node_id).node.state
    except NotFound:
        return None


def instance(client: Client, host: str, name: str) -> object | None:
    found = client.services.list(host=host, name=name)
    return found[0] if found else None


def status_of(client: Client, host: str, name: str) -> HealthStatus | None:
    found = client.services.list(host=host, name=name)
    return found[0].health.status if found else None


def http_manifest(name: str, host: str, interval_s: int = 1, **check: object) -> dict[str, object]:
    return {
        "name": name,
        "host": host,
        "ports": [{"name": "http"}],
        "health_check": {"type": "http", "path": "/", "interval_s": interval_s, "timeout_s": 1, **check},
    }


#: Services with a tcp check added beside the http one, for 200 checks on one agent (the issue's count).
MORE_SERVICES = 199


def tcp_manifest(name: str, host: str, port: int) -> dict[str, object]:
    """A service on ``port`` checked by tcp every second; three failures in a row to turn critical,
    since this is about what stable checks write, and a loaded machine can stall one probe."""
    return {
        "name": name,
        "host": host,
        "ports": [{"name": "tcp", "port": port}],
        "health_check": {"type": "tcp", "interval_s": 1, "timeout_s": 1, "failure_threshold": 3},
    }


def start_tcp_listener(count: int, processes: list[subprocess.Popen[str]]) -> tuple[subprocess.Popen[str], list[int]]:
    """bench.health's listener: ``count`` ports the OS picks (nothing else can hold them), each
    accepting and closing connections, which is what a tcp check needs to pass."""
    process = subprocess.Popen([sys.executable, "-c", TCP_LISTENER, str(count)], stdout=subprocess.PIPE, text=True)
    processes.append(process)
    assert process.stdout is not None
    ports = [int(port) for port in process.stdout.readline().split()]
    assert len(ports) == count, f"the listener bound {len(ports)} ports of {count} (exit {process.poll()})"
    return process, ports


def test_an_agent_checks_a_service_kill_9_turns_it_critical_and_stable_checks_write_nothing(
    make_cluster: Callable[..., LocalCluster], processes: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    # Its own cluster: it counts revisions, and the shared one carries other tests' leftovers (a
    # gossip group whose rounds keep timing out moved it by 2 in a full run).
    cluster = make_cluster(servers=3)
    host, name = "hc-a1", "hc-web"
    log = tmp_path / "requests.log"
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        record = client.services.register(http_manifest(name, host))
        port = record.ports[0].port
        assert record.health.status is HealthStatus.CRITICAL  # not checked yet
        service = start_http_service(port, log, processes)
        wait_until(lambda: serving(port), 20, "service up")
        started = time.monotonic()
        agent = start_agent(cluster, processes, host)
        wait_until(lambda: status_of(client, host, name) is HealthStatus.PASSING, 30, "passing")
        print(f"\nagent start -> passing: {time.monotonic() - started:.2f}s")
        assert [r.host for r in client.services.healthy(name)] == [host]

        # 199 more services on the same agent, each with a tcp check every second, answered by one
        # listener process: 200 checks in all.
        listener, ports = start_tcp_listener(MORE_SERVICES, processes)
        for index, tcp_port in enumerate(ports):
            client.services.register(tcp_manifest(f"hc-bulk-{index:03d}", host, tcp_port))

        def all_passing() -> bool:
            assert listener.poll() is None, f"the tcp listener exited ({listener.returncode})"
            passing = sum(r.health.status is HealthStatus.PASSING for r in client.services.list(host=host))
            return passing == MORE_SERVICES + 1

        wait_until(all_passing, 60, f"all {MORE_SERVICES + 1} services passing")

        # Stable: every service answers probe after probe, and nothing reaches the log.
        wait_until(lambda: node_state(client, host) is NodeState.ACTIVE, 20, "agent active")
        revision, reports, raft = wait_converged(cluster), health_reports(cluster), client.status()
        probes = probes_answered(log)
        wait_until(lambda: probes_answered(log) >= probes + 5, 30, "five more probes")
        after = client.status()
        assert wait_converged(cluster) == revision, "stable checks moved the revision"
        assert health_reports(cluster) == reports, "stable checks sent reports"
        print(
            f"5 stable probes of {MORE_SERVICES + 1} checks: 0 revisions, 0 health reports; raft entries "
            "meanwhile (lease checkpoints): "
            f"{after.commit_index - raft.commit_index}"
        )

        # kill -9 the service: critical within about interval x threshold.
        killed_at = time.monotonic()
        service.send_signal(signal.SIGKILL)
        service.wait(10)
        wait_until(lambda: status_of(client, host, name) is HealthStatus.CRITICAL, 30, "critical after kill -9")
        print(f"service kill -9 -> critical in the catalog: {time.monotonic() - killed_at:.2f}s")
        assert client.services.healthy(name) == ()
        critical = client.services.list(host=host, name=name)[0].health
        assert "127.0.0.1" in critical.output and len(critical.output) <= 1024

        # Back: passing again.
        start_http_service(port, log, processes)
        wait_until(lambda: status_of(client, host, name) is HealthStatus.PASSING, 30, "passing again")

        # kill -9 the agent: critical when its lease expires, in the command that marks the node dead.
        start = client.status().applied_revision + 1
        killed_at = time.monotonic()
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        wait_until(lambda: status_of(client, host, name) is HealthStatus.CRITICAL, 30, "critical after the agent died")
        print(f"agent kill -9 -> critical (TTL {TTL_S:g}s): {time.monotonic() - killed_at:.2f}s")
        assert client.membership.get_node(host).node.state is NodeState.DEAD
        until = client.status().applied_revision
        assert client.services.healthy(name) == ()

    events = collect_events(cluster.client_addresses[0], start, until, domains=("ports", "membership"))
    dead_state, health_changed = membership_pb2.NODE_STATE_DEAD, ports_pb2.PORT_ACTION_HEALTH_CHANGED
    dead = next(e for e in events if e.key == f"nodes/{host}" and e.membership.node.state == dead_state)
    changed = next(e for e in events if e.key == f"services/{host}/{name}" and e.port.action == health_changed)
    assert changed.port.health.status == ports_pb2.HEALTH_STATUS_CRITICAL and "dead" in changed.port.health.output
    # The same command: the health change follows the node's death with nothing of another command
    # between them (every event between belongs to the node's end).
    between = [e for e in events if dead.revision < e.revision < changed.revision]
    assert all(e.domain == "membership" or e.key.startswith(f"services/{host}/") for e in between)


async def test_healthy_true_never_lists_a_critical_instance_while_instances_flap(cluster: LocalCluster) -> None:
    name = "hc-flap"
    hosts = [f"hc-flap-{i}" for i in range(4)]
    app = create_app(GatewaySettings(endpoints=tuple(cluster.client_addresses), credentials=cluster.credentials))
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        for host in hosts:
            client.services.register({"name": name, "host": host, "ports": [{"name": "main"}],
                                      "health_check": {"type": "tcp", "interval_s": 5}})  # fmt: skip
        stop = asyncio.Event()
        flips = 0

        async def flap() -> None:
            nonlocal flips
            rng = random.Random(21)
            while not stop.is_set():
                status = rng.choice(["passing", "warning", "critical"])
                await asyncio.to_thread(client.services.report_health, rng.choice(hosts), name, status)
                flips += 1

        flapper = asyncio.create_task(flap())
        seen = {"passing": 0, "warning": 0}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
            for _ in range(60):
                answer = await http.get(f"/v1/services/{name}", params={"healthy": "true"})
                assert answer.status_code == 200, answer.text
                for listed in answer.json()["instances"]:
                    assert listed["health"]["status"] in ("passing", "warning"), listed
                    seen[listed["health"]["status"]] += 1
            every = (await http.get(f"/v1/services/{name}")).json()["instances"]
        stop.set()
        await flapper
        await app.state.gateway.close()
        assert len(every) == len(hosts) and flips > 10 and seen["passing"] + seen["warning"] > 0


def test_a_ttl_check_renews_without_revisions_and_expires_when_the_service_stops_reporting(
    quiet_cluster: LocalCluster,
) -> None:
    cluster = quiet_cluster
    host, name = "hc-ttl", "hc-job"
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        client.services.register({"name": name, "host": host, "health_check": {"type": "ttl", "ttl_s": 2}})
        first = client.services.report_health(host, name, "passing", "started")
        assert first.status is HealthStatus.PASSING and first.ttl_lease_id
        revision = wait_converged(cluster)
        renewed = 0
        deadline = time.monotonic() + 4  # two ttls of reports every 0.5 s: the pace of the reporter
        while time.monotonic() < deadline:
            assert client.services.report_health(host, name, "passing").status is HealthStatus.PASSING
            renewed += 1
            time.sleep(0.5)  # the reporting period of this service, not a wait for a condition
        assert status_of(client, host, name) is HealthStatus.PASSING
        assert wait_converged(cluster) == revision, "ttl renewals moved the revision"
        stopped = time.monotonic()
        wait_until(lambda: status_of(client, host, name) is HealthStatus.CRITICAL, 30, "ttl expired")
        took = time.monotonic() - stopped
        print(f"\n{renewed} ttl renewals: 0 revisions; last report -> critical (ttl 2s): {took:.2f}s")
        assert "ttl expired" in client.services.list(host=host, name=name)[0].health.output
        assert client.services.report_health(host, name, "passing").status is HealthStatus.PASSING


def test_deregister_critical_after_releases_the_ports_into_history(cluster: LocalCluster) -> None:
    host, name = "hc-reap", "hc-reaped"
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        record = client.services.register(http_manifest(name, host, deregister_critical_after_s=1))
        client.services.report_health(host, name, "passing", "ok")
        client.services.report_health(host, name, "critical", "refused")
        wait_until(lambda: instance(client, host, name) is None, 30, "the critical instance deregistered")
        assert client.ports.list(host=host, service=name).assignments == ()
        history = client.ports.history(name).entries
        released = [e for e in history if e.action is PortAction.RELEASED and e.new_port == 0]
        assert released and released[-1].old_port == record.ports[0].port
        assert "deregister_critical_after_s" in released[-1].reason
        assert any(e.action is PortAction.HEALTH_CHANGED for e in history)


def test_bad_checks_and_reports_are_refused_and_change_nothing(quiet_cluster: LocalCluster) -> None:
    cluster = quiet_cluster
    host = "hc-bad"
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        revision = wait_converged(cluster)
        with pytest.raises(InvalidArgument, match="does not declare"):
            client.services.register(http_manifest("hc-bad1", host, port_name="admin"))
        with pytest.raises(FailedPrecondition, match="allows exec checks"):
            client.services.register(
                {"name": "hc-bad2", "host": host, "health_check": {"type": "exec", "command": ["true"]}}
            )
        with pytest.raises(InvalidArgument, match="not passing, warning or critical"):
            client.services.report_health(host, "hc-bad1", "sideways")
        with pytest.raises(NotFound):
            client.services.report_health(host, "hc-missing", "passing")
        assert wait_converged(cluster) == revision
        with pytest.raises(NotFound):
            client.services.list(host=host)
    shown = cpctl_json(cluster, "services", "list", "--healthy")
    assert all(r["health"]["status"] in ("PASSING", "WARNING") for r in shown), shown


SERVE = (
    "import http.server, os; http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), "
    "http.server.SimpleHTTPRequestHandler).serve_forever()"
)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_an_agent_starts_a_service_on_demand_restarts_it_after_kill_9_and_stops_it(
    cluster: LocalCluster, processes: list[subprocess.Popen[str]]
) -> None:
    host, name = "hc-run", "hc-started"
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        manifest = {**http_manifest(name, host), "run": {"command": [sys.executable, "-c", SERVE]}}
        client.services.register(manifest)
        # No agent allows runs there yet: refused, nothing changed.
        with pytest.raises(FailedPrecondition, match="no live agent"):
            client.services.start(host, name)
        metrics_port = free_port()
        agent = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "agent", "--id", host, "--ttl", str(TTL_S), "--allow-run",
             "--metrics-address", f"127.0.0.1:{metrics_port}", "--endpoints", ",".join(cluster.client_addresses)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
            env={**credentials_env(cluster), "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        processes.append(agent)
        wait_until(lambda: node_state(client, host) is NodeState.ACTIVE, 20, "agent active")

        started = time.monotonic()
        shown = cpctl_json(cluster, "services", "start", name, "--node", host, "--wait", "60")
        print(f"\ncpctl services start -> passing: {time.monotonic() - started:.2f}s")
        assert shown["health"]["status"] == "PASSING" and shown["run"]["wanted"]
        record = wait_until(
            lambda: (r := instance(client, host, name)) is not None and r.run.state == "running" and r, 20, "running"
        )
        pid = record.run.pid
        assert pid and pid_alive(pid)
        # A second start reuses the running instance.
        assert client.services.start(host, name).run.pid == pid

        # kill -9 the service: critical, restarted (counted), passing again.
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: status_of(client, host, name) is HealthStatus.CRITICAL, 30, "critical after kill -9")
        print(f"started service kill -9 -> critical: {time.monotonic() - killed_at:.2f}s")
        again = wait_until(
            lambda: (r := instance(client, host, name)) and r.run.restarts == 1 and r.run.state == "running" and r,
            30,
            "restarted",
        )
        assert again.run.pid != pid and again.run.last_exit_code == -signal.SIGKILL
        wait_until(lambda: status_of(client, host, name) is HealthStatus.PASSING, 30, "passing after the restart")
        print(f"kill -9 -> restarted and passing again: {time.monotonic() - killed_at:.2f}s")

        # `cpctl services show`: the instance, its ports, check, run state with the restart, and history.
        shown = cpctl_json(cluster, "services", "show", name, "--host", host)
        (shown_instance,) = shown["instances"]
        assert shown_instance["health"]["status"] == "PASSING" and shown_instance["run"]["restarts"] == 1
        assert shown_instance["ports"][0]["port"] == record.ports[0].port
        assert any(entry["action"] == "HEALTH_CHANGED" for entry in shown["history"])
        text = cpctl(cluster, "services", "show", name, "--host", host)
        assert text.returncode == 0, text.stderr
        assert f"{name} " in text.stdout and "restarts 1" in text.stdout and "check: " in text.stdout
        missing = cpctl(cluster, "services", "show", "hc-no-such-service")
        assert missing.returncode != 0 and "no service 'hc-no-such-service'" in missing.stderr

        # The agent's metrics tell the same story: its lease, its probes both ways, the two status
        # changes it reported, the start and the restart of the service it runs.
        metrics = agent_metrics(metrics_port)
        assert metrics[("controlplane_agent_heartbeats_total", (("result", "ok"),))] >= 1
        assert 0 < metrics[("controlplane_agent_lease_remaining_seconds", ())] <= TTL_S
        assert metrics[("controlplane_agent_check_probes_total", (("result", "passing"), ("type", "http")))] >= 2
        assert metrics[("controlplane_agent_check_probes_total", (("result", "critical"), ("type", "http")))] >= 1
        assert metrics[("controlplane_agent_health_reports_total", (("result", "ok"),))] >= 3
        assert metrics[("controlplane_agent_service_starts_total", ())] == 2
        assert metrics[("controlplane_agent_service_restarts_total", ())] == 1
        assert metrics[("controlplane_agent_services_running", ())] == 1
        assert metrics[("controlplane_agent_checks", ())] == 1

        # Stop ends the process; the registration and its ports stay.
        client.services.stop(host, name)
        wait_until(lambda: not pid_alive(again.run.pid), 20, "the process stopped")
        wait_until(lambda: instance(client, host, name).run.state == "stopped", 20, "stopped reported")
        assert instance(client, host, name).ports
        # Deregistering ends it too.
        client.services.start(host, name)
        restarted = wait_until(
            lambda: (r := instance(client, host, name)) and r.run.state == "running" and r.run.pid, 30, "running again"
        )
        client.services.deregister(host, name)
        wait_until(lambda: not pid_alive(restarted), 20, "the process of a deregistered instance stopped")


# Serves until SIGTERM, then stops listening and drains until the file DRAINED names exists
# (10 minutes at most).
SERVE_THEN_DRAIN = (
    "import http.server, os, signal, threading, time\n"
    "server = http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])),"
    " http.server.SimpleHTTPRequestHandler)\n"
    "signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())\n"
    "server.serve_forever()\n"
    "server.server_close()\n"
    "give_up = time.monotonic() + 600\n"  # never outlives a test run cut short
    "while not os.path.exists(os.environ['DRAINED']) and time.monotonic() < give_up:\n"
    "    time.sleep(0.1)\n"
)


def test_a_stopping_agent_stops_its_services_while_their_checks_still_run(
    cluster: LocalCluster, processes: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    """An agent told to stop ends the services it runs first, each given its stop_timeout_s, and
    keeps checking them meanwhile: a service that drains is critical in the catalog while its node
    is still there, not passing until the node leaves."""
    host, name = "hc-drain", "hc-draining"
    drained = tmp_path / "drained"
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        run = {"command": [sys.executable, "-c", SERVE_THEN_DRAIN], "env": {"DRAINED": str(drained)}}
        client.services.register({**http_manifest(name, host), "run": {**run, "stop_timeout_s": 300}})
        agent = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "agent", "--id", host, "--ttl", str(TTL_S), "--allow-run",
             "--endpoints", ",".join(cluster.client_addresses)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
            env={**credentials_env(cluster), "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        processes.append(agent)
        wait_until(lambda: node_state(client, host) is NodeState.ACTIVE, 20, "agent active")
        client.services.start(host, name)
        wait_until(lambda: status_of(client, host, name) is HealthStatus.PASSING, 30, "passing")
        pid = instance(client, host, name).run.pid  # type: ignore[attr-defined]

        agent.terminate()

        def critical_while_there() -> bool:
            critical = status_of(client, host, name) is HealthStatus.CRITICAL
            return critical and node_state(client, host) is NodeState.ACTIVE

        try:
            wait_until(critical_while_there, 120, "the draining service critical while its node is still active")
            assert pid_alive(pid) and agent.poll() is None  # it drains, and the agent waits for it
        finally:
            drained.touch()  # whatever happened: the service ends (it runs in a session of its own)
        assert agent.wait(120) == 0
        assert not pid_alive(pid)
        assert node_state(client, host) is NodeState.LEFT


def test_the_cluster_places_a_service_on_an_agent_that_can_run_it(
    quiet_cluster: LocalCluster, processes: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    cluster = quiet_cluster  # every live node is this test's: the refusal lists all of them
    token = f"pl{random.randrange(10**6)}"  # a capability only this test's agents have (the cluster is shared)
    for node_id, extra in ((f"{token}-a", []), (f"{token}-b", ["--allow-run"]), (f"{token}-c", ["--allow-run"])):
        gpus = ["--gpus", "1"] if node_id.endswith("-c") else []
        command = [sys.executable, "-m", "controlplane", "agent", "--id", node_id, "--ttl", str(TTL_S)]
        command += ["--capability", token, *gpus, *extra, "--endpoints", ",".join(cluster.client_addresses)]
        environment = {**credentials_env(cluster), "PYTHONUNBUFFERED": "1"}
        processes.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, env=environment)
        )
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        for suffix in "abc":
            wait_until(lambda s=suffix: node_state(client, f"{token}-{s}") is NodeState.ACTIVE, 20, f"agent {suffix}")
        manifest = {k: v for k, v in http_manifest(f"{token}-web", "").items() if k != "host"}
        manifest |= {"run": {"command": [sys.executable, "-c", SERVE]}, "capabilities": [token]}
        path = tmp_path / "web.yaml"
        path.write_text(json.dumps({**manifest, "requirements": {"gpus": 1}}))

        shown = cpctl_json(cluster, "services", "start", f"{token}-web", "--manifest", str(path), "--wait", "60")
        # -a does not allow runs, -b has no GPU: -c, the one agent that fits.
        assert shown["host"] == f"{token}-c" and shown["health"]["status"] == "PASSING"
        assert f"{token}-b: has gpus 0 < 1" in shown["placement"], shown["placement"]
        record = wait_until(
            lambda: (r := instance(client, f"{token}-c", f"{token}-web")) and r.run.state == "running" and r,
            30,
            "running on the node chosen",
        )
        assert pid_alive(record.run.pid)
        again = client.services.place(f"{token}-web")
        assert again.existing and again.service.host == f"{token}-c"
        # Without GPUs in its requirements, a second service goes where fewer run: -b.
        other = client.services.place(f"{token}-api", {**manifest, "name": f"{token}-api"})
        assert other.service.host == f"{token}-b" and not other.existing
        with pytest.raises(FailedPrecondition, match=f"{token}-a: lacks run-services"):
            client.services.place(f"{token}-big", {**manifest, "name": f"{token}-big", "requirements": {"gpus": 9}})
        for host, name in ((f"{token}-c", f"{token}-web"), (f"{token}-b", f"{token}-api")):
            client.services.deregister(host, name)
