"""What an agent process counts (``cpctl agent --metrics-address``): its lease, its health checks
and the services it runs, on prometheus_client's default registry.

Process-wide, not per node id: the benchmark runs a thousand agents in one process, and one series
per agent would be a thousand series. So the lease gauge is the *least* time left among the
process's agents: the one about to be lost is the one worth an alert.

The gauges are computed when scraped, in the metrics server's thread, from sets the event loop
changes: every read and change of those sets holds ``_lock``.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram, start_http_server

REGISTRATIONS = Counter(
    "controlplane_agent_registrations_total",
    "Node registrations by this process's agents: first ones (two for a gossip worker's start) and re-registrations",
)
HEARTBEATS = Counter("controlplane_agent_heartbeats_total", "Lease renewals sent, by outcome (ok, failed)", ["result"])
HEARTBEAT_SECONDS = Histogram(
    "controlplane_agent_heartbeat_seconds",
    "Round trip of a successful lease renewal",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LEASES_LOST = Counter(
    "controlplane_agent_leases_lost_total",
    "Times an agent found its lease expired (cut off too long) and registered again",
)
LEASE_REMAINING = Gauge(
    "controlplane_agent_lease_remaining_seconds",
    "Least time left on the lease of this process's agents, as last renewed: negative once past it "
    "(lost, being registered again); NaN before the first renewal",
)
CHECK_PROBES = Counter(
    "controlplane_agent_check_probes_total", "Health-check probes run, by check type and result", ["type", "result"]
)
CHECK_PROBE_SECONDS = Histogram(
    "controlplane_agent_check_probe_seconds",
    "Time one health-check probe took",
    ["type"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HEALTH_REPORTS = Counter(
    "controlplane_agent_health_reports_total",
    "Health status changes sent to the cluster, by outcome (ok, failed); a stable check sends none",
    ["result"],
)
CHECKS = Gauge("controlplane_agent_checks", "Service instances whose checks this process runs")
SERVICE_STARTS = Counter(
    "controlplane_agent_service_starts_total", "Processes started for services wanted running (--allow-run)"
)
SERVICE_RESTARTS = Counter(
    "controlplane_agent_service_restarts_total", "Service processes that exited and are restarted after a backoff"
)
SERVICES_RUNNING = Gauge("controlplane_agent_services_running", "Service processes this process supervises now")


class LeaseHolder(Protocol):
    def lease_deadline_monotonic(self) -> float | None: ...


_lock = threading.Lock()
# The process's agents, read when scraped (weak: a dropped agent drops out without being told).
_holders: weakref.WeakSet[LeaseHolder] = weakref.WeakSet()


def _snapshot(owners: weakref.WeakSet[Any]) -> list[Any]:
    with _lock:
        return list(owners)


def _least_lease_remaining() -> float:
    deadlines = [d for holder in _snapshot(_holders) if (d := holder.lease_deadline_monotonic()) is not None]
    return min(deadlines) - time.monotonic() if deadlines else math.nan


LEASE_REMAINING.set_function(_least_lease_remaining)


def track_lease(holder: LeaseHolder) -> None:
    """Count ``holder``'s lease in the gauge until :func:`untrack_lease` (or until it is dropped)."""
    with _lock:
        _holders.add(holder)


def untrack_lease(holder: LeaseHolder) -> None:
    with _lock:
        _holders.discard(holder)


# What the process runs now, summed when scraped: each checker's checks, each supervisor's processes.
_check_sets: weakref.WeakSet[Any] = weakref.WeakSet()
_process_sets: weakref.WeakSet[Any] = weakref.WeakSet()
CHECKS.set_function(lambda: sum(len(owner.running_checks()) for owner in _snapshot(_check_sets)))
SERVICES_RUNNING.set_function(lambda: sum(len(owner.processes) for owner in _snapshot(_process_sets)))


def track_checks(checker: Any) -> None:
    """Count ``checker.running_checks()`` in ``controlplane_agent_checks``."""
    with _lock:
        _check_sets.add(checker)


def track_processes(supervisor: Any) -> None:
    """Count ``supervisor.processes`` in ``controlplane_agent_services_running``."""
    with _lock:
        _process_sets.add(supervisor)


def serve(address: str) -> tuple[str, int]:
    """Serve /metrics on ``HOST:PORT`` (port 0: any free one) in a daemon thread; returns where."""
    host, _, port_text = address.rpartition(":")
    if not host or not port_text.isdigit():
        raise ValueError(f"--metrics-address must be HOST:PORT, got {address!r}")
    server, _thread = start_http_server(int(port_text), addr=host.strip("[]"))
    bound_host, bound_port = server.server_address[:2]
    bound = str(bound_host)
    return (f"[{bound}]" if ":" in bound else bound), int(bound_port)
