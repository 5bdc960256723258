"""The load generator: one grpc.aio implementation for every system under test.

The only thing that differs between systems is the ``put(stub, key, value)`` coroutine and the stub
class built on a channel (:class:`System`). Scenarios:

- ``write_1_client``: one client issuing sequential puts to the leader.
- ``write_64_clients``: 64 concurrent coroutines, assigned round-robin to one grpc.aio channel per
  endpoint (so writes also enter through followers, which forward them to the leader).

Each run warms up first (connections, caches, batching), then measures for a fixed duration. An op
counts when it completes inside the measured window; its latency is time.perf_counter() around the
awaited call. p50/p99 come from the full sample (nearest rank), not from a histogram.
Keys are distinct per op (``bench/<run>/<scenario>/<client>/<n>``); values are 128 bytes.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.common import CpuMeter, CpuSample, log

VALUE_SIZE = 128
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]

PutFn = Callable[[Any, str, bytes], Awaitable[None]]
StubFactory = Callable[[grpc.aio.Channel], Any]


@dataclass
class System:
    """A system under test, as the generator sees it."""

    name: str  # the JSON `system` label: "ours", "etcd", "etcd-nofsync"
    endpoints: list[str]  # client addresses "127.0.0.1:PORT", one per server
    leader: str  # the leader's client address
    stub_factory: StubFactory
    put: PutFn
    server_pids: list[int] = field(default_factory=list)  # for the CPU accounting of each line
    # How a client channel is made (TLS and a client certificate for ours with client TLS); None: plaintext.
    channel_factory: Callable[[str], grpc.aio.Channel] | None = None
    # Fields added to each of its JSON lines (ours: "client_calls", how its clients send calls).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scenario:
    name: str
    clients: int
    duration_s: float
    warmup_s: float
    leader_only: bool  # True: every client talks to the leader; False: spread over all endpoints


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sample (q in [0, 1])."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


async def run_scenario(system: System, sc: Scenario) -> dict[str, Any]:
    endpoints = [system.leader] if sc.leader_only else list(system.endpoints)
    if system.channel_factory is not None:
        channels = [system.channel_factory(a) for a in endpoints]
    else:
        channels = [grpc.aio.insecure_channel(a, options=CHANNEL_OPTIONS) for a in endpoints]
    try:
        async with asyncio.timeout(10.0):
            await asyncio.gather(*(ch.channel_ready() for ch in channels))
        stubs = [system.stub_factory(ch) for ch in channels]
        value = os.urandom(VALUE_SIZE)
        run = uuid.uuid4().hex[:8]
        put = system.put

        latencies: list[float] = []
        errors: dict[str, int] = {}
        start = time.perf_counter()
        window_start = start + sc.warmup_s
        window_end = window_start + sc.duration_s

        meter = CpuMeter(system.server_pids)
        cpu_marks: list[CpuSample] = []

        async def cpu_sampler() -> None:
            await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
            cpu_marks.append(meter.sample())
            await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
            cpu_marks.append(meter.sample())

        async def client(i: int) -> None:
            stub = stubs[i % len(stubs)]  # round-robin assignment of clients to channels
            prefix = f"bench/{run}/{sc.name}/{i}/"
            n = 0
            perf = time.perf_counter
            while True:
                t0 = perf()
                if t0 >= window_end:
                    return
                key = prefix + str(n)
                n += 1
                try:
                    await put(stub, key, value)
                except grpc.aio.AioRpcError as e:
                    t1 = perf()
                    if window_start <= t1 <= window_end:
                        errors[e.code().name] = errors.get(e.code().name, 0) + 1
                    await asyncio.sleep(0.01)  # no hot loop against a failing server
                    continue
                t1 = perf()
                if window_start <= t1 <= window_end:
                    latencies.append(t1 - t0)

        log(
            f"{system.name} {sc.name}: {sc.clients} client(s) over {len(endpoints)} endpoint(s), "
            f"{sc.warmup_s:g}s warm-up + {sc.duration_s:g}s"
        )
        async with asyncio.timeout(sc.warmup_s + sc.duration_s + 30):
            await asyncio.gather(cpu_sampler(), *(client(i) for i in range(sc.clients)))
    finally:
        for ch in channels:
            await ch.close()

    latencies.sort()
    n_ok = len(latencies)
    result: dict[str, Any] = {
        "scenario": sc.name,
        "system": system.name,
        "clients": sc.clients,
        "endpoints": len(endpoints),
        "value_bytes": VALUE_SIZE,
        "duration_s": sc.duration_s,
        "ops": n_ok,
        "errors": sum(errors.values()),
        "ops_per_s": round(n_ok / sc.duration_s, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1e3, 3) if n_ok else None,
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 3) if n_ok else None,
        "mean_ms": round(sum(latencies) / n_ok * 1e3, 3) if n_ok else None,
        "max_ms": round(latencies[-1] * 1e3, 3) if n_ok else None,
        # server_cpu_ms_per_write: CPU of all 3 servers per acknowledged write, steadier than ops/s
        # on a busy machine; generator_cpu_ms_per_write: this process's.
        **(
            CpuMeter.cores(cpu_marks[0], cpu_marks[-1], writes=n_ok)
            if len(cpu_marks) == 2 and system.server_pids
            else {}
        ),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        **system.extra,
    }
    if errors:
        result["error_codes"] = errors
    log(
        f"{system.name} {sc.name}: {result['ops_per_s']} ops/s, p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms, {result['errors']} errors; cores used: servers "
        f"{result.get('cpu_servers_cores')}, generator {result.get('cpu_generator_cores')}, "
        f"other {result.get('cpu_other_cores')}; server CPU {result.get('server_cpu_ms_per_write')} ms/write"
    )
    return result
