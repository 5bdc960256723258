"""What one unary gRPC call costs a Python server before any of our code runs (issue 14's floor).

    .venv/bin/python -m bench.grpc_floor [--server aio|threads|threads-to-loop|mux] [--registered 0]
        [--clients 64] [--streams 1]

Starts an echo server in a child process and measures what one call costs it. The servers:

- ``aio``: grpcio's asyncio server under uvloop, as ``cpctl serve`` runs it, one unary method.
- ``threads``: grpcio's threaded server answering in its worker threads.
- ``threads-to-loop``: the threaded server handing every request to one uvloop loop in another
  thread and waiting for the answer (a client port whose servicers stay on the Raft node's loop).
- ``mux``: the asyncio server with one bidirectional-streaming method; every call is one message
  on a stream the callers share (``--streams`` of them), tagged with a request id, answered by a
  task of its own and written back in completion order. What a client port would cost that carries
  unary calls as messages on a few long-lived streams.

Each answers its 128-byte request; ``--registered`` more unary methods can be registered the way
the generated ``add_*_to_server`` functions register them (grpcio's asyncio server waits on one
pending request per registered method after every call it accepts: bench/README.md, Round 10).
``--clients`` callers on one grpc.aio channel call it for ``--duration`` seconds after a 1 s
warm-up. One JSON line: calls/s, the mean latency, and per call the server's CPU (user + system,
all threads, from ``/proc``), its ``read``/``write`` system calls (``/proc/PID/io``) and its
context switches (all threads). Plaintext, loopback; the load generator shares the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import struct
import subprocess
import sys
import time
from typing import Any

import grpc

from bench.common import emit, free_ports, process_cpu_s

SERVICE = "bench.Echo"
MESSAGE = b"x" * 128
REQUEST_ID = struct.Struct(">Q")  # the mux server's tag in front of each message


async def _echo(request: bytes, context: Any) -> bytes:
    return request


def _registered(count: int) -> dict[str, grpc.RpcMethodHandler]:
    return {f"Idle{i}": grpc.unary_unary_rpc_method_handler(_echo) for i in range(count)}


def _run_aio(port: int, registered: int, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
    """grpcio's asyncio server under uvloop (as ``cpctl serve`` runs it) serving ``handlers``, until killed."""
    import uvloop

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        if registered:
            server.add_registered_method_handlers("bench.Idle", _registered(registered))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


def _serve_aio(port: int, registered: int) -> None:
    _run_aio(port, registered, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)})


def _run_threaded(port: int, registered: int, echo: Any, workers: int) -> None:
    """grpcio's threaded server answering ``Echo`` with ``echo`` in ``workers`` threads, until killed."""
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    handlers = {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if registered:
        server.add_registered_method_handlers("bench.Idle", _registered(registered))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def _serve_threads(port: int, registered: int) -> None:
    def echo(request: bytes, context: Any) -> bytes:
        return request

    _run_threaded(port, registered, echo, workers=4)


def _serve_threads_to_loop(port: int, registered: int) -> None:
    """grpcio's threaded server, each call answered by a coroutine on one uvloop loop in its own thread.

    What a client port would cost if grpc.aio's poller were replaced by the threaded server handing
    every request to the server's event loop, where the Raft node and the servicers live.
    """
    import threading

    import uvloop

    loop = uvloop.new_event_loop()
    threading.Thread(target=loop.run_forever, name="event-loop", daemon=True).start()

    def echo(request: bytes, context: Any) -> bytes:
        return asyncio.run_coroutine_threadsafe(_echo(request, context), loop).result()

    _run_threaded(port, registered, echo, workers=16)


def _serve_mux(port: int, registered: int) -> None:
    async def mux(requests: Any, context: Any) -> None:
        answers: asyncio.Queue[bytes | None] = asyncio.Queue()
        in_flight: set[asyncio.Task[None]] = set()

        async def answer(message: bytes) -> None:
            tag, request = message[: REQUEST_ID.size], message[REQUEST_ID.size :]
            answers.put_nowait(tag + await _echo(request, context))

        async def read_all() -> None:
            async for message in requests:
                task = asyncio.ensure_future(answer(message))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.gather(*in_flight)
            answers.put_nowait(None)

        reader = asyncio.ensure_future(read_all())
        while (reply := await answers.get()) is not None:
            await context.write(reply)  # one write at a time: grpc.aio allows no more on a stream
        await reader

    _run_aio(port, registered, {"Mux": grpc.stream_stream_rpc_method_handler(mux)})


SERVERS = {"aio": _serve_aio, "threads": _serve_threads, "threads-to-loop": _serve_threads_to_loop, "mux": _serve_mux}


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


class _MuxStream:
    """One shared stream of the mux server: callers queue tagged messages, one writer sends them."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._call = channel.stream_stream(f"/{SERVICE}/Mux")()
        self._outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._waiting: dict[bytes, asyncio.Future[bytes]] = {}
        self._next_id = 0
        self._tasks = [asyncio.ensure_future(self._write_all()), asyncio.ensure_future(self._read_all())]

    async def call(self, request: bytes) -> bytes:
        self._next_id += 1
        tag = REQUEST_ID.pack(self._next_id)
        answer = self._waiting[tag] = asyncio.get_running_loop().create_future()
        self._outgoing.put_nowait(tag + request)
        return await answer

    async def close(self) -> None:
        self._outgoing.put_nowait(None)
        await asyncio.gather(*self._tasks)

    async def _write_all(self) -> None:
        while (message := await self._outgoing.get()) is not None:
            await self._call.write(message)
        await self._call.done_writing()

    async def _read_all(self) -> None:
        while (reply := await self._call.read()) is not grpc.aio.EOF:
            self._waiting.pop(reply[: REQUEST_ID.size]).set_result(reply[REQUEST_ID.size :])


async def _call_mux(port: int, clients: int, seconds: float, streams: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 10.0)
        shared = [_MuxStream(channel) for _ in range(streams)]
        calls = 0
        stop = time.perf_counter() + seconds

        async def caller(stream: _MuxStream) -> None:
            nonlocal calls
            while time.perf_counter() < stop:
                await asyncio.wait_for(stream.call(MESSAGE), 10.0)
                calls += 1

        await asyncio.gather(*(caller(shared[i % streams]) for i in range(clients)))
        await asyncio.gather(*(stream.close() for stream in shared))
        return calls


def measure(server: str, registered: int, clients: int, duration: float, streams: int = 1) -> dict[str, Any]:
    (port,) = free_ports(1)
    child = subprocess.Popen([sys.executable, "-m", "bench.grpc_floor", "--serve", server, str(port), str(registered)])

    def run_callers(seconds: float) -> int:
        if server == "mux":
            return asyncio.run(_call_mux(port, clients, seconds, streams))
        return asyncio.run(_call(port, clients, seconds))

    try:
        run_callers(1.0)  # warm-up; also waits until the server answers
        cpu, io_calls, switches = process_cpu_s(child.pid), _io_calls(child.pid), _context_switches(child.pid)
        started = time.perf_counter()
        calls = run_callers(duration)
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
        **({"streams": streams} if server == "mux" else {}),
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
    parser.add_argument("--server", choices=tuple(SERVERS), default="aio")
    parser.add_argument("--registered", type=int, default=0, help="idle methods registered beside the echo")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--streams", type=int, default=1, help="streams the callers share (--server mux)")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)  # the child: server port registered
    args = parser.parse_args(argv)
    if args.serve:
        kind, port, registered = args.serve
        SERVERS[kind](int(port), int(registered))
        return 0
    emit(measure(args.server, args.registered, args.clients, args.duration, args.streams))
    return 0


if __name__ == "__main__":
    sys.exit(main())
