"""Health checks run by an agent for the service instances on its node (issue 21).

The agent of node ``N`` checks every instance registered with ``host = N``: it probes each on its
check's interval (http, tcp, grpc's standard health protocol, or exec when the agent opted in),
turns results into a status with the check's thresholds, and sends a status to the cluster *only
when it differs from the catalog's*: a thousand stable checks cost no log write. A ttl check is
not run here (the service reports itself through the SDK), and an instance without a check passes
while its agent is alive (the catalog marks it critical when the node dies or leaves, and the
agent, back, reports it passing again).

What the agent believes the catalog holds is refreshed from a stale read of its host's instances
(no log write) every ``refresh_s``, and from each report's answer; a report repeated because that
belief was out of date changes no revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from google.protobuf import json_format

from controlplane import agent_metrics
from controlplane.client import (
    AsyncClient,
    Consistency,
    ControlPlaneError,
    HealthStatus,
    NotFound,
    ServiceRecord,
)
from controlplane.state import health as rules
from controlplane.supervisor import Supervisor
from controlplane.v1 import ports_pb2

log = structlog.get_logger("controlplane.checks")

PASSING, WARNING, CRITICAL = HealthStatus.PASSING, HealthStatus.WARNING, HealthStatus.CRITICAL
Result = tuple[HealthStatus, str]


def _check_message(record: ServiceRecord) -> ports_pb2.ServiceManifest:
    manifest = ports_pb2.ServiceManifest()
    json_format.ParseDict(record.manifest, manifest, ignore_unknown_fields=True)
    return manifest


async def probe_http(address: str, port: int, path: str, timeout: float) -> Result:
    import httpx

    url = f"http://{address}:{port}{path or '/'}"
    try:
        async with httpx.AsyncClient(timeout=timeout) as http:
            response = await http.get(url)
    except httpx.HTTPError as exc:
        return CRITICAL, f"GET {url}: {type(exc).__name__}: {exc}"
    body = response.text[:512]
    status = PASSING if 200 <= response.status_code < 300 else WARNING if response.status_code == 429 else CRITICAL
    return status, f"HTTP GET {url}: {response.status_code} {response.reason_phrase}; {body}"


async def probe_tcp(address: str, port: int, timeout: float) -> Result:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    except (OSError, TimeoutError) as exc:
        return CRITICAL, f"TCP connect {address}:{port}: {type(exc).__name__}: {exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return PASSING, f"TCP connect {address}:{port}: success"


async def probe_grpc(address: str, port: int, service: str, timeout: float) -> Result:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"{address}:{port}"
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            return CRITICAL, f"gRPC health {target} {service!r}: {exc.code().name}: {exc.details()}"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return (PASSING if answer.status == health_pb2.HealthCheckResponse.SERVING else CRITICAL), (
        f"gRPC health {target} {service!r}: {name}"
    )


async def probe_exec(command: list[str], timeout: float) -> Result:
    try:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as exc:
        return CRITICAL, f"exec {command[0]}: {exc}"
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        return CRITICAL, f"exec {command[0]}: timed out after {timeout:g}s"
    text = out[: rules.MAX_OUTPUT_CHARS * 4].decode("utf-8", "replace")
    code = process.returncode
    return (PASSING if code == 0 else WARNING if code == 1 else CRITICAL), f"exit {code}: {text}"


@dataclass
class Thresholds:
    """Consecutive results needed before a status changes (against flapping)."""

    status: HealthStatus
    success: int = 1
    failure: int = 1
    _streak_status: HealthStatus | None = None
    _streak: int = 0

    def observe(self, result: HealthStatus) -> bool:
        """Count one result; whether the status changed."""
        if result == self.status:
            self._streak_status, self._streak = None, 0
            return False
        # Passes count towards passing; warnings and criticals alike towards failing (the newest
        # result names the status a change goes to).
        if self._streak_status is not None and (self._streak_status == PASSING) == (result == PASSING):
            self._streak += 1
        else:
            self._streak = 1
        self._streak_status = result
        if self._streak >= max(self.success if result == PASSING else self.failure, 1):
            self.status, self._streak_status, self._streak = result, None, 0
            return True
        return False


@dataclass
class CheckerStats:
    probes: int = 0
    reports: int = 0
    report_failures: int = 0
    #: Seconds per probe, newest last (bounded).
    probe_seconds: list[float] = field(default_factory=list)


class HealthChecker:
    """Runs the checks of one node's instances; ``start``/``stop`` inside a running event loop."""

    def __init__(
        self,
        client: AsyncClient,
        node_id: str,
        *,
        address: str = "127.0.0.1",
        allow_exec: bool = False,
        refresh_s: float = 2.0,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.client = client
        self.node_id = node_id
        self.address = address
        self.allow_exec = allow_exec
        self.refresh_s = refresh_s
        #: Runs the instances wanted running (``--allow-run``), following the same reads.
        self.supervisor = supervisor
        self.stats = CheckerStats()
        # name -> (the check's fingerprint, its task); the catalog's status as last known.
        self._tasks: dict[str, tuple[bytes, asyncio.Task[None]]] = {}
        self._catalog: dict[str, HealthStatus] = {}
        # The revision of the catalog status known: a stale read older than a report's answer is ignored.
        self._catalog_revision: dict[str, int] = {}
        self._local: dict[str, Thresholds] = {}
        self._records: dict[str, ServiceRecord] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._seen_revision = 0
        self._stopping = asyncio.Event()
        agent_metrics.track_checks(self)

    def running_checks(self) -> list[str]:
        """The instances whose checks run now."""
        return [name for name, (_, task) in list(self._tasks.items()) if not task.done()]

    async def start(self) -> None:
        """Read this node's instances, start their checks, and keep following the catalog."""
        await self.refresh()
        self.start_refreshing()

    def start_refreshing(self) -> None:
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_loop())

    async def stop(self) -> None:
        """Stop following the catalog (a refresh could start a service again), then the services
        this agent runs, while their checks still run: a service that takes its stop_timeout_s to
        end is seen going down (critical), not passing until the node leaves. Then the checks."""
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        if self.supervisor is not None:
            await self.supervisor.stop()
        self._stopping.set()
        tasks = [task for _, task in self._tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def _refresh_loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.refresh_s)
            if self._stopping.is_set():
                return
            try:
                await self.refresh()
            except ControlPlaneError as exc:
                log.warning("checks_refresh_failed", node=self.node_id, reason=exc.message)
            except Exception:  # a bug: keep checking what is known, and say so loudly
                log.exception("checks_refresh_error", node=self.node_id)

    async def refresh(self) -> None:
        """Read this node's instances (a stale read: no log write) and start, restart or stop checks."""
        try:
            # Stale (no log write) but never older than a view already acted on: two servers may lag
            # differently, and going back would stop a process just started, or re-report a status.
            records = await self.client.services.list(
                host=self.node_id, consistency=Consistency.STALE, min_revision=self._seen_revision
            )
        except NotFound:  # the host has no instance yet
            records = ()
        for record in records:
            self._seen_revision = max(
                self._seen_revision, record.mod_revision, record.health.revision, record.run.revision
            )
        seen = set()
        for record in records:
            seen.add(record.name)
            self._records[record.name] = record
            if record.health.revision >= self._catalog_revision.get(record.name, 0):
                self._catalog[record.name] = record.health.status
                self._catalog_revision[record.name] = record.health.revision
            manifest = _check_message(record)
            fingerprint = (
                manifest.health_check.SerializeToString(deterministic=True)
                + b"|"
                + repr(sorted((p.name, p.port) for p in record.ports)).encode()
            )
            running = self._tasks.get(record.name)
            if running is not None and running[0] == fingerprint and not running[1].done():
                continue
            if running is not None:
                running[1].cancel()
            check = manifest.health_check
            self._local[record.name] = Thresholds(
                record.health.status, check.success_threshold or 1, check.failure_threshold or 1
            )
            task = asyncio.create_task(self._run(record.name, manifest, {p.name: p.port for p in record.ports}))
            self._tasks[record.name] = (fingerprint, task)
        if self.supervisor is not None:
            self.supervisor.sync(records)
        for gone in [name for name in self._tasks if name not in seen]:
            self._tasks.pop(gone)[1].cancel()
            self._catalog.pop(gone, None)
            self._catalog_revision.pop(gone, None)
            self._local.pop(gone, None)
            self._records.pop(gone, None)

    async def _run(self, name: str, manifest: ports_pb2.ServiceManifest, ports: Mapping[str, int]) -> None:
        check = manifest.health_check
        if check.type == "ttl":
            return  # the service reports itself
        interval = rules.interval_s(check)
        timeout = float(rules.timeout_s(check))
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not self._stopping.is_set():
            started = time.perf_counter()
            status, output = await self._probe(check, manifest, ports, timeout)
            took = time.perf_counter() - started
            self.stats.probes += 1
            if len(self.stats.probe_seconds) >= 10_000:
                del self.stats.probe_seconds[:5_000]
            self.stats.probe_seconds.append(took)
            kind = check.type or "none"
            agent_metrics.CHECK_PROBES.labels(type=kind, result=status.name.lower()).inc()
            agent_metrics.CHECK_PROBE_SECONDS.labels(type=kind).observe(took)
            local = self._local[name]
            local.observe(status)
            if local.status != self._catalog.get(name):
                await self._report(name, local.status, output)
            if not rules.has_check(check):
                interval = int(self.refresh_s) or 1  # nothing to probe: follow the catalog
            due = max(due + interval, loop.time())
            await asyncio.sleep(due - loop.time())

    async def _probe(
        self,
        check: ports_pb2.HealthCheck,
        manifest: ports_pb2.ServiceManifest,
        ports: Mapping[str, int],
        timeout: float,
    ) -> Result:
        if not rules.has_check(check):
            return PASSING, f"agent {self.node_id} is alive (no health check)"
        if check.type == "exec":
            if not self.allow_exec:
                return CRITICAL, f"agent {self.node_id} does not run exec checks (start it with --allow-exec-checks)"
            return await probe_exec(list(check.command), timeout)
        port_name = rules.probed_port_name(manifest)
        port = ports.get(port_name)
        if not port:
            return CRITICAL, f"port {port_name!r} is not assigned"
        if check.type == "http":
            return await probe_http(self.address, port, check.path, timeout)
        if check.type == "tcp":
            return await probe_tcp(self.address, port, timeout)
        if check.type == "grpc":
            return await probe_grpc(self.address, port, check.grpc_service, timeout)
        return CRITICAL, f"unknown check type {check.type!r}"

    async def _report(self, name: str, status: HealthStatus, output: str) -> None:
        try:
            answer = await self.client.services.report_health(self.node_id, name, status, rules.truncate(output))
        except NotFound:
            return  # deregistered meanwhile: the next refresh stops the check
        except ControlPlaneError as exc:
            self.stats.report_failures += 1
            agent_metrics.HEALTH_REPORTS.labels(result="failed").inc()
            log.warning("health_report_failed", node=self.node_id, service=name, reason=exc.message)
            return  # the next probe tries again (the catalog still differs)
        self.stats.reports += 1
        agent_metrics.HEALTH_REPORTS.labels(result="ok").inc()
        self._catalog[name] = answer.status
        self._catalog_revision[name] = answer.revision
        log.info("health_changed", node=self.node_id, service=name, status=answer.status.name.lower())

    def status(self) -> dict[str, Any]:
        """What this agent last believed, per instance (for logs and tests)."""
        return {name: local.status.name.lower() for name, local in sorted(self._local.items())}
