"""`python -m bench.gateway`: discovery requests through one HTTP gateway in front of a 3-server cluster.

Starts a fresh 3-server ``LocalCluster`` (bench/.work/gateway) and one ``cpctl gateway`` process,
waits until the gateway answers ``/readyz`` 200, then runs 64 concurrent clients, each its own
``httpx.AsyncClient`` (one keep-alive connection), each sending ``GET /v1/bootstrap`` (what every
starting node asks) back to back: a warm-up, then a measured window. Prints one JSON line on stdout
(progress on stderr)::

    {"scenario": "gateway_discovery", "system": "ours", "path": "/v1/bootstrap", "clients": 64,
     "requests_per_s": ..., "p50_ms": ..., "p99_ms": ..., "errors": 0, "non_200": 0,
     "cpu_gateway_cores": ..., "cpu_servers_cores": ..., "cpu_generator_cores": ..., "cpu_other_cores": ...}

A request counts when it completes inside the window; its latency is ``time.perf_counter()`` around
the awaited call; p50/p99 are nearest-rank over every request of the window. The gateway caches the
cluster's status for one second, so this measures the gateway itself (HTTP, validation, JSON) more
than the cluster; ``--path /v1/nodes?consistency=stale`` measures a read that reaches a server every
time. The generator shares the machine's cores with the gateway: read ``cpu_*_cores`` with the
numbers (on 2 cores the generator's share bounds the rate).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import httpx

from bench.common import WORK_DIR, CpuMeter, CpuSample, emit, log, process_cpu_s, stop_process, tail, track
from bench.load import percentile

DATA = WORK_DIR / "gateway"


async def _wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                response = await client.get(url + "/readyz")
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code} {response.text[:200]}"
            except httpx.TransportError as exc:
                last = type(exc).__name__
            await asyncio.sleep(0.1)  # polling a process we cannot be notified by
    raise RuntimeError(f"the gateway was not ready within {timeout:g} s ({last})")


async def measure(
    url: str, path: str, clients: int, warmup_s: float, duration_s: float, gateway_pid: int, server_pids: list[int]
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    non_200 = 0
    start = time.perf_counter()
    window_start = start + warmup_s
    window_end = window_start + duration_s
    meter = CpuMeter(server_pids)
    marks: list[tuple[CpuSample, float]] = []

    async def sampler() -> None:
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        marks.append((meter.sample(), process_cpu_s(gateway_pid)))
        await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
        marks.append((meter.sample(), process_cpu_s(gateway_pid)))

    async def client() -> None:
        nonlocal non_200
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=10.0, limits=limits) as http:
            perf = time.perf_counter
            while (t0 := perf()) < window_end:
                try:
                    response = await http.get(path)
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                t1 = perf()
                if t0 >= window_start and t1 <= window_end:
                    if response.status_code == 200:
                        latencies.append(t1 - t0)
                    else:
                        non_200 += 1

    await asyncio.gather(sampler(), *(client() for _ in range(clients)))
    (before, gateway_before), (after, gateway_after) = marks
    latencies.sort()
    wall = after.wall - before.wall
    cores = CpuMeter.cores(before, after)
    gateway_cores = (gateway_after - gateway_before) / wall
    return {
        "scenario": "gateway_discovery",
        "system": "ours",
        "path": path,
        "clients": clients,
        "seconds": round(duration_s, 1),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / duration_s, 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "non_200": non_200,
        "cpu_gateway_cores": round(gateway_cores, 2),
        "cpu_servers_cores": cores["cpu_servers_cores"],
        "cpu_generator_cores": cores["cpu_generator_cores"],
        # CpuMeter's "other" includes the gateway: take it out.
        "cpu_other_cores": round(max(0.0, cores["cpu_other_cores"] - gateway_cores), 2),
    }


def _credentials_env(cluster: Any) -> dict[str, str]:
    """CP_CACERT/CP_CERT/CP_KEY: the gateway reaches the cluster's TLS client ports as its dev admin."""
    creds = cluster.credentials
    files = (("CP_CACERT", creds.ca), ("CP_CERT", creds.cert), ("CP_KEY", creds.key))
    return {name: str(path) for name, path in files if path}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--clients", type=int, default=64, help="concurrent HTTP clients (default 64)")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds (default 2)")
    parser.add_argument("--path", default="/v1/bootstrap", help="the GET request each client repeats")
    args = parser.parse_args(argv)

    from controlplane.dev import LocalCluster, free_port

    if DATA.exists():
        shutil.rmtree(DATA)
    DATA.mkdir(parents=True)
    cluster = LocalCluster(DATA / "cluster", servers=3)
    gateway: subprocess.Popen[bytes] | None = None
    log_path = DATA / "gateway.log"
    try:
        cluster.start()
        leader = cluster.wait_for_leader(60)
        log(f"gateway bench: cluster up, leader {leader}")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log_path, "wb") as out:
            gateway = track(
                subprocess.Popen(
                    [sys.executable, "-m", "controlplane", "gateway", "--listen", f"127.0.0.1:{port}",
                     "--endpoints", ",".join(cluster.client_addresses), "--log-level", "warning"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **_credentials_env(cluster), "CP_GATEWAY_TOKEN": os.urandom(16).hex()},
                )
            )  # fmt: skip
        try:
            asyncio.run(_wait_ready(url, 60))
        except RuntimeError:
            log(f"gateway log:\n{tail(log_path)}")
            raise
        log(
            f"gateway bench: {url} ready; {args.clients} clients GET {args.path}, "
            f"{args.warmup:g} s warm-up + {args.duration:g} s measured"
        )
        server_pids = [n.pid for n in cluster.nodes.values() if n.pid is not None]
        line = asyncio.run(measure(url, args.path, args.clients, args.warmup, args.duration, gateway.pid, server_pids))
        emit(line)
        return 0 if line["requests"] and not line["errors"] and not line["non_200"] else 1
    finally:
        if gateway is not None:
            stop_process(gateway)
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
