"""What one unary gRPC call costs a Python server before any of our code runs (issue 14's floor).

    .venv/bin/python -m bench.grpc_floor [--server aio|threads] [--registered 0] [--clients 64]

Starts an echo server in a child process (grpcio's asyncio server under uvloop, as ``cpctl serve``
runs it, or grpcio's threaded server with ``--server threads``): one method that answers its
128-byte request, plus ``--registered`` more methods registered the way the generated
``add_*_to_server`` functions register them (grpcio's asyncio server waits on one pending request
per registered method after every call it accepts: bench/README.md, Round 10). ``--clients``
callers on one grpc.aio channel call it for ``--duration`` seconds after a 1 s warm-up. One JSON
line: calls/s, the mean latency, and per call the server's CPU (user + system, all threads, from
``/proc``), its ``read``/``write`` system calls (``/proc/PID/io``) and its context switches
(all threads). Plaintext, loopback; the load generator shares the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import subprocess
import sys
import time
from typing import Any

import grpc

from bench.common import emit, free_ports, process_cpu_s

SERVICE = "bench.Echo"
MESSAGE = b"x" * 128


async def _echo(request: bytes, context: Any) -> bytes:
    return request


def _registered(count: int) -> dict[str, grpc.RpcMethodHandler]:
    return {f"Idle{i}": grpc.unary_unary_rpc_method_handler(_echo) for i in range(count)}


def _serve_aio(port: int, registered: int) -> None:
    import uvloop

    async def main() -> None:
        server = grpc.aio.server()
        echo = {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, echo),))
        if registered:
            server.add_registered_method_handlers("bench.Idle", _registered(registered))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


def _serve_threads(port: int, registered: int) -> None:
    from concurrent import futures

    def echo(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if registered:
        server.add_registered_method_handlers("bench.Idle", _registered(registered))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def _io_calls(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["syscr"]) + int(fields["syscw"])


def _context_switches(pid: int) -> int:
    """Voluntary and involuntary, over every thread of ``pid``."""
    total = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(status) as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except OSError:  # a thread that ended meanwhile
            continue
    return total


async def _call(port: int, clients: int, seconds: float) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary(f"/{SERVICE}/Echo")
        await asyncio.wait_for(channel.channel_ready(), 10.0)
        calls = 0
        stop = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal calls
            while time.perf_counter() < stop:
                await echo(MESSAGE, timeout=10.0)
                calls += 1

        await asyncio.gather(*(caller() for _ in range(clients)))
        return calls


def measure(server: str, registered: int, clients: int, duration: float) -> dict[str, Any]:
    (port,) = free_ports(1)
    child = subprocess.Popen([sys.executable, "-m", "bench.grpc_floor", "--serve", server, str(port), str(registered)])
    try:
        asyncio.run(_call(port, clients, 1.0))  # warm-up; also waits until the server answers
        cpu, io_calls, switches = process_cpu_s(child.pid), _io_calls(child.pid), _context_switches(child.pid)
        started = time.perf_counter()
        calls = asyncio.run(_call(port, clients, duration))
        wall = time.perf_counter() - started
        cpu = process_cpu_s(child.pid) - cpu
        io_calls = _io_calls(child.pid) - io_calls
        switches = _context_switches(child.pid) - switches
    finally:
        child.kill()
        child.wait()
    return {
        "scenario": "grpc_floor",
        "server": server,
        "registered_methods": registered,
        "clients": clients,
        "duration_s": round(wall, 1),
        "calls_per_s": round(calls / wall),
        "mean_latency_ms": round(wall / calls * clients * 1000, 3),
        "server_cpu_ms_per_call": round(cpu * 1000 / calls, 3),
        "server_read_write_syscalls_per_call": round(io_calls / calls, 2),
        "server_context_switches_per_call": round(switches / calls, 2),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "grpcio": grpc.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=("aio", "threads"), default="aio")
    parser.add_argument("--registered", type=int, default=0, help="idle methods registered beside the echo")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)  # the child: server port registered
    args = parser.parse_args(argv)
    if args.serve:
        kind, port, registered = args.serve
        (_serve_aio if kind == "aio" else _serve_threads)(int(port), int(registered))
        return 0
    emit(measure(args.server, args.registered, args.clients, args.duration))
    return 0


if __name__ == "__main__":
    sys.exit(main())
