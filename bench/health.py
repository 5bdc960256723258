"""Health checks at scale (issue 21): N stable tcp checks on one agent, their log cost and agent CPU.

``python -m bench.health [--checks 1000] [--interval 10] [--window 60]`` starts a 3-server
LocalCluster, binds N ports in one listener process, registers N services on one host (each a tcp
check of its own port), starts a real ``cpctl agent`` and waits until all N are passing.
Then, for ``--window`` seconds of nothing changing, it counts revisions, Raft log entries and
``Services/ReportHealth`` requests, and the agent's CPU time. One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from controlplane.client import Client, Consistency
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
                for i, port in enumerate(ports):
                    client.services.register(
                        {"name": f"svc-{i}", "host": host, "ports": [{"name": "main", "port": port}],
                         "health_check": {"type": "tcp", "interval_s": args.interval, "timeout_s": 2}}
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
