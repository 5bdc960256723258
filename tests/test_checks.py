"""The agent's health checks in-process: each probe against a loopback server or a child process,
the thresholds against flapping, and a HealthChecker over a fake catalog that must send only
changes (a stable check reports nothing)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.checks import (
    CRITICAL,
    PASSING,
    WARNING,
    HealthChecker,
    Thresholds,
    probe_exec,
    probe_grpc,
    probe_http,
    probe_tcp,
)
from controlplane.client import HealthStatus, NotFound, ServiceHealth, ServiceRecord
from controlplane.client import _ports as P
from controlplane.v1 import ports_pb2


async def serve_http(status_line: str) -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status_line}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def free_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


@pytest.mark.parametrize(("line", "status"), [("200 OK", PASSING), ("429 Too Many", WARNING), ("503 No", CRITICAL)])
async def test_http_probe(line: str, status: HealthStatus) -> None:
    server, port = await serve_http(line)
    async with server:
        got, output = await probe_http("127.0.0.1", port, "/healthz", 2.0)
    assert got is status and f"127.0.0.1:{port}/healthz" in output


async def test_tcp_and_http_probes_of_a_closed_port_are_critical() -> None:
    port = await free_port()
    assert (await probe_tcp("127.0.0.1", port, 1.0))[0] is CRITICAL
    assert (await probe_http("127.0.0.1", port, "/", 1.0))[0] is CRITICAL
    server, open_port = await serve_http("200 OK")
    async with server:
        assert (await probe_tcp("127.0.0.1", open_port, 1.0))[0] is PASSING


@pytest.mark.parametrize(("code", "status"), [(0, PASSING), (1, WARNING), (2, CRITICAL)])
async def test_exec_probe_by_exit_code(code: int, status: HealthStatus) -> None:
    got, output = await probe_exec([sys.executable, "-c", f"print('hi'); raise SystemExit({code})"], 10.0)
    assert got is status and output.startswith(f"exit {code}") and "hi" in output


async def test_exec_probe_times_out_and_a_missing_program_is_critical() -> None:
    got, output = await probe_exec([sys.executable, "-c", "import time; time.sleep(30)"], 0.5)
    assert got is CRITICAL and "timed out" in output
    assert (await probe_exec(["/nonexistent/check"], 1.0))[0] is CRITICAL


async def test_grpc_probe_follows_the_standard_health_protocol() -> None:
    server = grpc.aio.server()
    servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await servicer.set("api", health_pb2.HealthCheckResponse.SERVING)
        assert (await probe_grpc("127.0.0.1", port, "api", 2.0))[0] is PASSING
        await servicer.set("api", health_pb2.HealthCheckResponse.NOT_SERVING)
        got, output = await probe_grpc("127.0.0.1", port, "api", 2.0)
        assert got is CRITICAL and "NOT_SERVING" in output
        assert (await probe_grpc("127.0.0.1", port, "unknown", 2.0))[0] is CRITICAL  # NOT_FOUND
    finally:
        await server.stop(None)


def test_thresholds_ride_out_flapping() -> None:
    local = Thresholds(PASSING, success=2, failure=3)
    changes = [local.observe(s) for s in (CRITICAL, CRITICAL, PASSING, CRITICAL, WARNING, CRITICAL, CRITICAL)]
    assert changes == [False] * 5 + [True, False] and local.status is CRITICAL
    assert [local.observe(s) for s in (PASSING, CRITICAL, PASSING, PASSING)] == [False, False, False, True]
    assert local.status is PASSING


class FakeServices:
    """The catalog as the checker sees it: one host's instances, and the reports it receives."""

    def __init__(self) -> None:
        self.records: dict[str, ports_pb2.ServiceRecord] = {}
        self.reports: list[tuple[str, HealthStatus]] = []
        self.revision = 10

    def add(self, name: str, check: dict[str, Any], port: int) -> None:
        record = ports_pb2.ServiceRecord(
            manifest=ports_pb2.ServiceManifest(
                name=name, host="n1", ports=[ports_pb2.DeclaredPort(name="http")], health_check=check
            ),
            ports=[ports_pb2.PortAssignment(host="n1", service=name, name="http", port=port)],
            health=ports_pb2.ServiceHealth(status=ports_pb2.HEALTH_STATUS_CRITICAL, revision=1),
        )
        self.records[name] = record

    async def list(self, *, host: str, consistency: Any, min_revision: int = 0) -> tuple[ServiceRecord, ...]:
        return tuple(P.service_record(r) for _, r in sorted(self.records.items()))

    async def report_health(self, host: str, name: str, status: HealthStatus, output: str) -> ServiceHealth:
        if name not in self.records:
            raise NotFound("gone")
        self.reports.append((name, status))
        health = self.records[name].health
        if health.status != status.value:
            self.revision += 1
            health.CopyFrom(ports_pb2.ServiceHealth(status=status.value, output=output, revision=self.revision))
        return P.convert(ServiceHealth, health)


class FakeClient:
    def __init__(self) -> None:
        self.services = FakeServices()


@pytest.fixture
async def checker() -> AsyncIterator[tuple[HealthChecker, FakeServices]]:
    client = FakeClient()
    running = HealthChecker(client, "n1", refresh_s=0.05)  # type: ignore[arg-type]
    yield running, client.services
    await running.stop()


async def until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)  # the poll interval of a condition wait

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_the_checker_reports_only_changes(checker: tuple[HealthChecker, FakeServices]) -> None:
    running, catalog = checker
    server, port = await serve_http("200 OK")
    probes: list[int] = []
    async with server:
        catalog.add("web", {"type": "http", "interval_s": 1}, port)
        catalog.add("plain", {}, 0)
        await running.start()
        both = [("plain", PASSING), ("web", PASSING)]
        await until(lambda: sorted(catalog.reports) == both, "both passing")
        probes.append(running.stats.probes)
        await until(lambda: running.stats.probes >= probes[0] + 4, "more probes")
        assert sorted(catalog.reports) == both  # stable: nothing more
    # The service stops answering: one report, critical.
    await until(lambda: ("web", CRITICAL) in catalog.reports, "critical")
    assert catalog.reports.count(("web", CRITICAL)) == 1
    # The node died meanwhile (the catalog says critical): the agent, alive, reports its plain service again.
    catalog.records["plain"].health.CopyFrom(ports_pb2.ServiceHealth(status=CRITICAL.value, revision=99))
    await until(lambda: catalog.reports.count(("plain", PASSING)) == 2, "plain passing again")
    # Deregistered: its check stops.
    del catalog.records["web"]
    await until(lambda: "web" not in running.status(), "the check of a deregistered instance stopped")


async def test_exec_checks_do_not_run_unless_the_agent_allows_them(
    checker: tuple[HealthChecker, FakeServices],
) -> None:
    running, catalog = checker
    catalog.add("job", {"type": "exec", "command": [sys.executable, "-c", "pass"], "interval_s": 1}, 0)
    catalog.records["job"].health.status = ports_pb2.HEALTH_STATUS_PASSING
    await running.start()
    await until(lambda: ("job", CRITICAL) in catalog.reports, "exec refused by the agent")
    assert "--allow-exec-checks" in catalog.records["job"].health.output
