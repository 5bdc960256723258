"""Health checks at scale (issue 21): N stable tcp checks on one agent, their log cost and agent CPU.

``python -m bench.health [--checks 1000] [--interval 10] [--window 60]`` starts a 3-server
LocalCluster, binds N ports in one listener process, registers N services on one host (each a tcp
check of its own port), starts a real ``cpctl agent`` and waits until all N are passing.
Then, for ``--window`` seconds of nothing changing, it counts revisions, Raft log entries and
``Services/ReportHealth`` requests, and the agent's CPU time. Last, it kills the listener, so that
every check fails, and times each service's turn to critical from the kill: in the catalog (the
leader's time stamped on the change) and at a watcher of the ports domain (when the event reached
it). One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from controlplane.client import Client, Consistency, HealthStatus, PortAction
from controlplane.dev import LocalCluster

LISTENER = """
import asyncio, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def main():
    servers = [await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0) for _ in range(int(sys.argv[1]))]
    print(" ".join(str(s.sockets[0].getsockname()[1]) for s in servers), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reports(cluster: LocalCluster) -> int:
    total = 0.0
    for node in cluster.nodes.values():
        for line in httpx.get(f"http://{node.metrics_address}/metrics", timeout=5).text.splitlines():
            if line.startswith("controlplane_grpc_requests_total{") and "Services/ReportHealth" in line:
                total += float(line.rsplit(" ", 1)[1])
    return int(total)


def failure_to_critical(
    client: Client, listener: subprocess.Popen[str], checks: int, interval: int
) -> tuple[list[float], list[float]]:
    """Kill the listener (every check fails at its next probe) and follow the ports domain until
    every service turned critical: for each, milliseconds from the kill to the change's leader time
    stamp (the catalog) and to its arrival here (a watcher)."""
    watch = client.watch("", domains=("ports",), from_revision=client.status().applied_revision + 1)
    # Ends the watch if some service never turns critical: the lists then come back short.
    give_up = threading.Timer(3 * interval + 60, watch.close)
    give_up.start()
    to_catalog: list[float] = []
    to_watcher: list[float] = []
    turned: set[tuple[str, str]] = set()  # (host, service): each counted once
    killed_ms = time.time() * 1000
    listener.kill()
    try:
        for event in watch:
            port = event.port
            if port is None or port.action is not PortAction.HEALTH_CHANGED or port.health is None:
                continue
            if port.health.status is HealthStatus.CRITICAL and (port.host, port.service) not in turned:
                turned.add((port.host, port.service))
                to_catalog.append(event.time_unix_ms - killed_ms)
                to_watcher.append(time.time() * 1000 - killed_ms)
                if len(to_catalog) == checks:
                    break
    finally:
        give_up.cancel()
        watch.close()
    return to_catalog, to_watcher


def spread(samples: list[float]) -> dict[str, float]:
    """How many, and the fastest, median and slowest, in milliseconds."""
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)
    return {
        "count": len(ordered),
        "min": round(ordered[0]),
        "p50": round(ordered[len(ordered) // 2]),
        "max": round(ordered[-1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checks", type=int, default=1000)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    host = "bench-agent"
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp), servers=3)
        cluster.start()
        processes: list[subprocess.Popen[str]] = []
        try:
            cluster.wait_for_leader(30)
            env = {k: v for k, v in os.environ.items() if not k.startswith("CP_")}
            creds = cluster.credentials
            env.update(
                {n: str(p) for n, p in (("CP_CACERT", creds.ca), ("CP_CERT", creds.cert), ("CP_KEY", creds.key)) if p}
            )
            with Client(cluster.client_addresses, credentials=creds, timeout=30) as client:
                # The service ports: bound first by one listener process (the OS picks them), then
                # declared as fixed ports, so nothing else on this machine can hold them.
                listener = subprocess.Popen(
                    [sys.executable, "-c", LISTENER, str(args.checks)], stdout=subprocess.PIPE, text=True
                )
                processes.append(listener)
                assert listener.stdout is not None
                ports = [int(p) for p in listener.stdout.readline().split()]
                assert len(ports) == args.checks
                timeout_s = min(2, args.interval)  # a check's timeout may not exceed its interval
                for i, port in enumerate(ports):
                    client.services.register(
                        {"name": f"svc-{i}", "host": host, "ports": [{"name": "main", "port": port}],
                         "health_check": {"type": "tcp", "interval_s": args.interval, "timeout_s": timeout_s}}
                    )  # fmt: skip
                started = time.monotonic()
                agent = subprocess.Popen(
                    [sys.executable, "-m", "controlplane", "agent", "--id", host, "--ttl", "10",
                     "--endpoints", ",".join(cluster.client_addresses)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                )  # fmt: skip
                processes.append(agent)  # type: ignore[arg-type]
                deadline = time.monotonic() + 300
                while len(client.services.list(host=host, healthy=True, consistency=Consistency.STALE)) < args.checks:
                    if time.monotonic() > deadline:
                        raise SystemExit("not all checks passed within 300 s")
                    time.sleep(0.5)  # the poll interval of a condition wait
                all_passing_s = time.monotonic() - started
                time.sleep(args.interval)  # let the first round's reports settle before the window opens
                before = (client.status(), reports(cluster), cpu_seconds(agent.pid), time.monotonic())
                time.sleep(args.window)  # the measurement window
                after = (client.status(), reports(cluster), cpu_seconds(agent.pid), time.monotonic())
                to_catalog_ms, to_watcher_ms = failure_to_critical(client, listener, args.checks, args.interval)
            elapsed = after[3] - before[3]

            def per_min(count: int) -> float:
                return round(count * 60 / elapsed, 2)

            print(
                json.dumps(
                    {
                        "scenario": "health-stable-checks",
                        "checks": args.checks,
                        "interval_s": args.interval,
                        "window_s": round(elapsed, 1),
                        "agent_start_to_all_passing_s": round(all_passing_s, 2),
                        "revisions_per_min": per_min(after[0].applied_revision - before[0].applied_revision),
                        "raft_entries_per_min": per_min(after[0].commit_index - before[0].commit_index),
                        "health_reports_per_min": per_min(after[1] - before[1]),
                        "agent_cpu_cores": round((after[2] - before[2]) / elapsed, 4),
                        "failed_checks": args.checks,
                        "failure_to_critical_in_catalog_ms": spread(to_catalog_ms),
                        "failure_to_event_at_watcher_ms": spread(to_watcher_ms),
                    }
                )
            )  # fmt: skip
        finally:
            for process in processes:
                process.kill()
                process.wait(10)
            cluster.stop()


if __name__ == "__main__":
    main()
