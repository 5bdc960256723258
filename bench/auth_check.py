"""What the artifact port's permission check costs (issue 15): ``Auth.Check`` asked by an agent.

An agent serving artifacts asks the cluster, for every Stat and Read call by a user's certificate,
whether that user holds models:read on the model (``gossip.artifacts.ClusterAccess``; nothing is
cached, so a revoked role stops the next call). This measures one such question as the agent asks
it: ``python -m bench.auth_check [--calls 2000]`` starts a 3-server LocalCluster with TLS, issues an
agent certificate, asks ``--calls`` questions one after another through the SDK, and prints one
JSON line: latency p50/p99 at the agent, and the servers' CPU per question (all three servers'
user+system time over the run, divided by the calls; only the asked server works on one).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.health import cpu_seconds
from bench.load import percentile
from controlplane import tls
from controlplane.client import Client, Credentials
from controlplane.dev import LocalCluster


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp), servers=3)
        cluster.start()
        try:
            leader = cluster.nodes[cluster.wait_for_leader(60)]
            cert, key = tls.issue(cluster.pki_dir, tls.Identity("agent", "bench-agent"))
            as_agent = Credentials(ca=cluster.credentials.ca, cert=cert, key=key)
            # The agent's own client, pinned to one server as its first endpoint would be.
            with Client(leader.client_address, credentials=as_agent, timeout=10) as agent:
                for _ in range(50):  # warm: channel, TLS session, the server's code paths
                    agent.check_permission("user:alice", "models", "read", "llama")
                pids = [node.pid for node in cluster.nodes.values() if node.pid is not None]
                cpu_before = sum(cpu_seconds(pid) for pid in pids)
                latencies = []
                started = time.perf_counter()
                for _ in range(args.calls):
                    sent = time.perf_counter()
                    agent.check_permission("user:alice", "models", "read", "llama")
                    latencies.append(time.perf_counter() - sent)
                elapsed = time.perf_counter() - started
                cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
        finally:
            cluster.stop()
    latencies.sort()
    print(
        json.dumps(
            {
                "scenario": "auth_check_per_artifact_call",
                "calls": args.calls,
                "checks_per_s": round(args.calls / elapsed, 1),
                "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
                "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
                "server_cpu_ms_per_check": round(cpu / args.calls * 1000, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
