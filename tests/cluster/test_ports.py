"""Port assignments through real server processes: concurrency with a leader kill, leases across a
leader change, conflicts and repair, services, export/import and bad input, over gRPC and the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from controlplane.client import (
    Client,
    ConflictKind,
    Consistency,
    ControlPlaneError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PortAction,
    PortProtocol,
    ResourceExhausted,
)
from controlplane.dev import LocalCluster
from controlplane.v1 import ports_pb2, ports_pb2_grpc

from .conftest import channel, credentials_env, node_client, running, wait_converged, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

ALLOCATORS = 64
PER_ALLOCATOR = 8
SHARED_RANGE = ("contended", 10000, 10999)


@dataclass(frozen=True)
class Allocation:
    service: str
    port: int
    revision: int
    existing: bool
    at: float


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_64_allocators_with_leader_kill_never_double_allocate(make_cluster: Callable[..., LocalCluster]) -> None:
    """64 clients spread over all three servers allocate from one range on one host while the
    leader is killed with kill -9: every acknowledged port is distinct and survives, and no retried
    request allocated a second time (a retry that re-ran would answer ``existing=True``)."""
    cluster = make_cluster()
    old_leader = cluster.wait_for_leader()
    addresses = cluster.client_addresses
    host = "shared-host"
    with Client(addresses, credentials=cluster.credentials) as admin:
        admin.ports.set_range(*SHARED_RANGE)
    acks: list[Allocation] = []
    failures: list[tuple[str, ControlPlaneError]] = []
    lock = threading.Lock()

    def allocator(index: int) -> None:
        # Each client starts on a different server, so writes arrive through all three.
        rotated = addresses[index % 3 :] + addresses[: index % 3]
        with Client(rotated, timeout=30.0, credentials=cluster.credentials) as client:
            for sequence in range(PER_ALLOCATOR):
                service = f"svc-{index:02d}-{sequence}"
                try:
                    result = client.ports.allocate(host, service, range=SHARED_RANGE[0])
                except ControlPlaneError as exc:  # outcome unknown after the deadline
                    with lock:
                        failures.append((service, exc))
                    continue
                with lock:
                    acks.append(
                        Allocation(service, result.assignment.port, result.revision, result.existing, time.monotonic())
                    )

    threads = [threading.Thread(target=allocator, args=(i,), name=f"allocator-{i}") for i in range(ALLOCATORS)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(acks) >= ALLOCATORS * PER_ALLOCATOR // 2, 60, "half the allocations")
        cluster.kill(old_leader, signal.SIGKILL)
        killed_at = time.monotonic()
    finally:
        for thread in threads:
            thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "an allocator hung"
    assert not failures, f"allocations failed although a majority stayed up: {failures[:3]}"
    assert any(ack.at > killed_at for ack in acks), "no allocation was acknowledged after the kill"
    assert len(acks) == ALLOCATORS * PER_ALLOCATOR

    ports = [ack.port for ack in acks]
    assert len(set(ports)) == len(ports), "two acknowledged allocations share a port"
    assert all(SHARED_RANGE[1] <= port <= SHARED_RANGE[2] for port in ports)
    assert not [ack for ack in acks if ack.existing], "a retried request ran twice (answered existing=True)"

    survivors = running(cluster)
    max_acked = max(ack.revision for ack in acks)
    expected = {ack.service: ack.port for ack in acks}
    for node in survivors:
        with node_client(node) as client:
            listed = client.ports.list(host=host, consistency=Consistency.STALE, min_revision=max_acked)
        state = {a.service: a.port for a in listed.assignments}
        assert state == expected, f"{node.id} disagrees with the acknowledged allocations"

    # The killed leader comes back and converges on the same port map.
    cluster.restart(old_leader)
    cluster.wait_for_leader()
    revision = wait_converged(cluster)
    for node in running(cluster):
        with node_client(node) as client:
            listed = client.ports.list(host=host, consistency=Consistency.STALE, min_revision=revision)
        assert {a.service: a.port for a in listed.assignments} == expected, node.id


def test_a_leader_change_does_not_expire_a_live_lease_early(make_cluster: Callable[..., LocalCluster]) -> None:
    """A lease renewed just before an election gets a full TTL under the new leader (etcd's rule),
    and is expired, releasing its port, once its holder stops renewing."""
    cluster = make_cluster()
    cluster.wait_for_leader()
    ttl = 3.0
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        lease = client.leases.grant(ttl)
        held = client.ports.allocate("lease-host", "leased", lease_id=lease.id)
        renewed = client.leases.keep_alive(lease.id)
        renewed_at = time.monotonic()
        assert renewed.renewed_unix_ms >= lease.renewed_unix_ms
        # Let two thirds of the TTL pass with no renewal (the scenario itself, not a wait for a condition).
        time.sleep(ttl * 2 / 3)
        new_leader, _ = client.transfer_leadership()
        changed_at = time.monotonic()

        def released() -> bool:
            listed = client.ports.list(host="lease-host", service="leased")
            return not listed.assignments

        wait_until(released, 4 * ttl, "the lease to expire and release its port", interval=0.05)
        expired_at = time.monotonic()
        history = client.ports.history("leased")
    # Without the rule the lease would have expired ttl after renewal: about ttl/3 after the change.
    assert expired_at - changed_at >= ttl - 0.3, (
        f"expired {expired_at - changed_at:.2f} s after the leader changed to {new_leader}; the TTL is {ttl} s"
    )
    assert expired_at - renewed_at >= ttl
    assert [e.action for e in history.entries] == [PortAction.ALLOCATED, PortAction.EXPIRED]
    assert history.entries[-1].old_port == held.assignment.port


def test_conflicts_resolution_history_and_events(cluster: LocalCluster) -> None:
    host = _unique("conflict-host")
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        base = client.ports.set_range(_unique("r"), 41000, 41009)
        api = client.ports.assign(host, "api", 41000, "http")
        db = client.ports.assign(host, "db", 41001)
        watch = client.watch(domains=["ports"], prefix=f"assignments/{host}/", from_revision=db.revision + 1)
        # nginx sits on api's port; api itself runs on db's port; something unmanaged holds 41004.
        found = client.ports.report_observed(host, [(41000, "nginx"), (41001, "api"), 41004])
        kinds = sorted(c.kind.name for c in found)
        assert kinds == ["MISPLACED", "UNASSIGNED_BOUND", "WRONG_HOLDER", "WRONG_HOLDER"]
        plan = client.ports.resolve_conflicts(host=host, dry_run=True)
        applied = client.ports.resolve_conflicts(host=host)
        assert [(m.service, m.old_port, m.new_port) for m in applied.moves] == [
            (m.service, m.old_port, m.new_port) for m in plan.moves
        ]
        moved = {m.service: m.new_port for m in applied.moves}
        assert moved["api"] == 41001, "api adopts the port it is really bound to"
        assert moved["db"] not in (41000, 41001, 41004), "db moves to a free port, skipping observed ones"
        # What is left is not ours to move: nginx (now on a port nobody holds) and the unknown process.
        remaining = client.ports.conflicts(host=host)
        assert [(c.kind, c.port) for c in remaining] == [
            (ConflictKind.UNASSIGNED_BOUND, 41000),
            (ConflictKind.UNASSIGNED_BOUND, 41004),
        ]
        assert [c.kind for c in applied.unresolved] == [ConflictKind.UNASSIGNED_BOUND]
        history = client.ports.history("api")
        assert [(e.action, e.old_port, e.new_port) for e in history.entries if e.host == host] == [
            (PortAction.ASSIGNED, 0, 41000),
            (PortAction.RESOLVED, 41000, 41001),
        ]
        seen = {}
        for event in watch:
            assert event.port is not None
            seen[event.port.service] = (event.port.old_port, event.port.new_port)
            if len(seen) == 2:
                break
        watch.close()
        assert seen == {"api": (41000, 41001), "db": (41001, moved["db"])}
        assert base.name and api.assignment.port == 41000


def test_repair_frees_a_leak_only_after_consecutive_fresh_reports(cluster: LocalCluster) -> None:
    host = _unique("leak-host")
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        kept = client.ports.allocate(host, "alive")
        leaked = client.ports.allocate(host, "gone")
        for report in range(3):
            client.ports.report_observed(host, [(kept.assignment.port, "alive")])
            # Passes over the same report count once, however many run.
            first = client.ports.repair(passes_before_release=3)
            second = client.ports.repair(passes_before_release=3)
            still_there = client.ports.list(host=host, service="gone").assignments
            if report < 2:
                assert still_there, f"freed after {report + 1} report(s)"
                assert not first.released and not second.released
        assert not still_there, "the leak survived three fresh reports in a row"
        assert [a.service for a in client.ports.list(host=host).assignments] == ["alive"]
        history = client.ports.history("gone")
        assert history.entries[-1].action is PortAction.REPAIRED
        assert history.entries[-1].old_port == leaked.assignment.port


def test_bad_input_is_refused_and_changes_nothing(cluster: LocalCluster) -> None:
    host = _unique("bad-host")
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        name = _unique("tight")
        client.ports.set_range(name, 42000, 42001)
        before = client.ports.export()
        with pytest.raises(InvalidArgument, match="outside 1-65535"):
            client.ports.assign(host, "svc", 70000)
        with pytest.raises(InvalidArgument, match="overlaps"):
            client.ports.set_range(_unique("other"), 42001, 42005)
        with pytest.raises(NotFound, match="unknown"):
            client.ports.release(_unique("never-seen"), "svc")
        with pytest.raises(NotFound, match="no port range"):
            client.ports.allocate(host, "svc", range="no-such-range")
        with pytest.raises(InvalidArgument, match="malformed"):
            client.services.register({"name": "web", "host": host, "portz": []})
        with pytest.raises(InvalidArgument, match="declared twice"):
            client.services.register({"name": "web", "host": host, "ports": [{"name": "a"}, {"name": "a"}]})
        client.ports.allocate(host, "one", range=name)
        client.ports.allocate(host, "two", range=name)
        with pytest.raises(ResourceExhausted, match=name):
            client.ports.allocate(host, "three", range=name)
        with pytest.raises(FailedPrecondition, match="one/main"):
            client.ports.reserve(42000)
        # A service whose fixed port is taken allocates none of its ports.
        with pytest.raises(FailedPrecondition, match="assigned to one"):
            client.services.register(
                {"name": "web", "host": host, "ports": [{"name": "http"}, {"name": "admin", "port": 42000}]}
            )
        assert client.ports.list(host=host, service="web").assignments == ()
        bad = dict(before, assignments=[*before.get("assignments", []), *before.get("assignments", [])[:1]])
        if before.get("assignments"):
            with pytest.raises(InvalidArgument, match="appears twice"):
                client.ports.import_(bad)
        with pytest.raises(InvalidArgument, match="format"):
            client.ports.import_(dict(before, format="something/v9"))
    # Raw gRPC: the status codes a non-Python client sees.
    with channel(cluster.client_addresses[0]) as ch:
        stub = ports_pb2_grpc.PortsStub(ch)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Allocate(ports_pb2.AllocateRequest(host=host, service="x", preferred_port=0, range="nope"))
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as caught:
            stub.Reserve(ports_pb2.ReserveRequest(port=0))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_services_export_import_and_cli(cluster: LocalCluster, tmp_path: Path) -> None:
    host = _unique("svc-host")
    manifest = tmp_path / "web.yaml"
    manifest.write_text(
        f"""
name: web
version: "1.2"
host: {host}
ports:
  - name: http
  - name: grpc
health_check: {{type: http, port_name: http, path: /healthz}}
capabilities: [inference]
requirements: {{gpus: 1, memory_mb: 16384, cpu_millis: 4000}}
"""
    )
    env = dict(credentials_env(cluster), CP_ENDPOINTS=",".join(cluster.client_addresses))

    def cpctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controlplane", *args], env=env, capture_output=True, text=True, timeout=60
        )

    registered = cpctl("services", "register", str(manifest), "--output", "json")
    assert registered.returncode == 0, registered.stderr
    record = json.loads(registered.stdout)
    assert sorted(p["name"] for p in record["ports"]) == ["grpc", "http"]
    assert record["manifest"]["requirements"]["gpus"] == 1
    again = json.loads(cpctl("services", "register", str(manifest), "--output", "json").stdout)
    assert {p["name"]: p["port"] for p in again["ports"]} == {p["name"]: p["port"] for p in record["ports"]}

    listed = json.loads(cpctl("ports", "list", "--host", host, "--output", "json").stdout)
    assert len(listed["assignments"]) == 2
    stats = json.loads(cpctl("ports", "stats", "--host", host, "--output", "json").stdout)
    dynamic = next(r for r in stats["ranges"] if r["range"] == "dynamic")
    assert (dynamic["used"], dynamic["free"]) == (2, dynamic["size"] - 2 - dynamic["reserved"])

    backup = tmp_path / "ports.json"
    assert cpctl("ports", "export", str(backup)).returncode == 0
    deregistered = cpctl("services", "deregister", "web", "--host", host, "--output", "json")
    assert deregistered.returncode == 0 and len(json.loads(deregistered.stdout)) == 2
    assert json.loads(cpctl("ports", "list", "--host", host, "--output", "json").stdout)["assignments"] == []
    restored = cpctl("ports", "import", str(backup), "--output", "json")
    assert restored.returncode == 0, restored.stderr
    after = json.loads(cpctl("ports", "list", "--host", host, "--output", "json").stdout)
    assert {a["port"] for a in after["assignments"]} == {p["port"] for p in record["ports"]}

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed")
    result = cpctl("services", "register", str(broken))
    assert result.returncode == 2 and "not valid YAML" in result.stderr
    unknown = cpctl("ports", "history", _unique("nobody"))
    assert unknown.returncode == 1 and "no history" in unknown.stderr


def test_tcp_and_udp_hold_one_port_number_separately_over_the_sdk_and_the_cli(cluster: LocalCluster) -> None:
    host = _unique("dns-host")
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        tcp = client.ports.assign(host, "dns", 53, "tcp").assignment
        udp = client.ports.assign(host, "dns", 53, "udp", protocol="udp").assignment
        assert (tcp.protocol, udp.protocol) == (PortProtocol.TCP, PortProtocol.UDP)
        with pytest.raises(FailedPrecondition, match=r"port 53/udp on .* is assigned to dns/udp"):
            client.ports.assign(host, "rogue", 53, protocol=PortProtocol.UDP)
        with pytest.raises(InvalidArgument, match="neither 'tcp' nor 'udp'"):
            client.ports.allocate(host, "x", protocol="sctp")
        (conflict,) = client.ports.report_observed(host, [(53, "dns"), (53, "dnsmasq", "udp")])
        assert (conflict.kind, conflict.port, conflict.protocol) == (ConflictKind.WRONG_HOLDER, 53, PortProtocol.UDP)
    env = dict(credentials_env(cluster), CP_ENDPOINTS=",".join(cluster.client_addresses))

    def cpctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controlplane", *args], env=env, capture_output=True, text=True, timeout=60
        )

    listed = cpctl("ports", "list", "--host", host)
    assert listed.returncode == 0 and " 53/udp " in listed.stdout, listed.stdout
    as_json = json.loads(cpctl("ports", "list", "--host", host, "--output", "json").stdout)
    assert sorted((a["name"], a["port"], a["protocol"]) for a in as_json["assignments"]) == [
        ("tcp", 53, "TCP"),
        ("udp", 53, "UDP"),
    ]
    assert cpctl("ports", "assign", "x", "54", "-H", host, "--protocol", "sctp").returncode == 2
    observed = cpctl("ports", "observe", "-H", host, "53=dns", "53/udp=dnsmasq", "--udp")
    assert observed.returncode == 0 and "WRONG_HOLDER  " in observed.stdout and " 53/udp " in observed.stdout, (
        observed.stdout
    )
    released = cpctl("ports", "release", "-H", host, "--port", "53", "--protocol", "udp")
    assert released.returncode == 0 and "released port 53/udp" in released.stdout, released.stdout
    allocated = cpctl("ports", "allocate", "stats", "-H", host, "--preferred", "20053", "-p", "udp")
    assert allocated.returncode == 0 and "port 20053/udp" in allocated.stdout, allocated.stdout
