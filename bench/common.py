"""Paths, output streams, CPU accounting and process bookkeeping shared by the bench modules.

Output: stdout carries only the JSON result lines (:func:`emit`); progress goes to stderr
(:func:`log`); the logs of the libraries running inside the bench process (the agents of the
membership scenarios, the gossip workers) go to a file (:func:`route_output`).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / ".work"  # git-ignored scratch: data dirs, generated code, logs

_T0 = time.monotonic()


def log(msg: str) -> None:
    """Progress goes to stderr; stdout carries only the JSON result lines."""
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


_results: TextIO | None = None  # the real stdout once route_output() has run


def emit(line: dict[str, Any]) -> None:
    """One JSON result line on stdout."""
    out = _results or sys.stdout
    out.write(json.dumps(line) + "\n")
    out.flush()


def route_output(library_log: Path) -> None:
    """Keep stdout for :func:`emit` alone, whoever else writes to it.

    Unconfigured structlog prints to stdout: during ``membership_churn`` the in-process agents'
    warnings (``agent_heartbeat_failed`` ...) once put 1,000 lines among the results. From here on
    the results go to a duplicate of the original stdout; file descriptor 1 and ``sys.stdout`` point
    at stderr (so a stray ``print``, a C library or a child process cannot reach the results), and
    structlog and the standard ``logging`` write JSON lines to ``library_log``.
    """
    import logging

    import structlog

    global _results
    if _results is None:
        sys.stdout.flush()
        _results = os.fdopen(os.dup(1), "w", buffering=1)  # os.dup: not inherited by children
        os.dup2(2, 1)
        sys.stdout = sys.stderr
    library_log.parent.mkdir(parents=True, exist_ok=True)
    stream = open(library_log, "a", buffering=1)  # noqa: SIM115 - open for the life of the process
    logging.basicConfig(stream=stream, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ------------------------------------------------------------------ CPU accounting, from /proc

CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds spent busy by the whole machine since boot (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / CLK_TCK


def _stat_fields(path: str) -> list[str]:
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()  # after "(comm)", which may contain spaces


def process_cpu_s(pid: int) -> float:
    """CPU seconds (utime + stime, all threads) used by one process; 0 when it is gone."""
    try:
        fields = _stat_fields(f"/proc/{pid}/stat")
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_rss_bytes(pid: int) -> int | None:
    """Resident memory of one process (``VmRSS``); None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # in kB
    except OSError:
        pass
    return None


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds per thread of one process, keyed ``"<name>/<tid>"`` (the name is ``comm``)."""
    threads: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return threads
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            fields = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
        except OSError:
            continue  # the thread ended meanwhile
        threads[f"{name}/{tid}"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return threads


@dataclass(frozen=True)
class CpuSample:
    wall: float  # time.perf_counter()
    machine_s: float  # busy CPU seconds of the whole machine
    servers_s: float  # CPU seconds of the server processes
    generator_s: float  # CPU seconds of this process (the load generator and its gRPC threads)


class CpuMeter:
    """CPU used during a window by the servers, by the generator (this process) and by the rest.

    The rest is anything else on the machine: when it is well above 0, another workload shared the
    CPUs and the line's absolute numbers (and, less so, the ratios) are suspect.
    """

    def __init__(self, server_pids: list[int]) -> None:
        self.server_pids = list(server_pids)

    def sample(self) -> CpuSample:
        return CpuSample(
            time.perf_counter(),
            machine_busy_s(),
            sum(process_cpu_s(p) for p in self.server_pids),
            process_cpu_s(os.getpid()),
        )

    @staticmethod
    def cores(a: CpuSample, b: CpuSample, writes: int | None = None) -> dict[str, float]:
        """Cores used between a and b; with ``writes`` (acknowledged in the window) also CPU ms per write."""
        wall = b.wall - a.wall
        busy, servers, gen = b.machine_s - a.machine_s, b.servers_s - a.servers_s, b.generator_s - a.generator_s
        out = {
            "cpu_servers_cores": round(servers / wall, 2),
            "cpu_generator_cores": round(gen / wall, 2),
            "cpu_other_cores": round(max(0.0, busy - servers - gen) / wall, 2),
        }
        if writes:
            # /proc counts in clock ticks (10 ms): over a window of thousands of writes that is noise.
            out["server_cpu_ms_per_write"] = round(servers * 1e3 / writes, 3)
            out["generator_cpu_ms_per_write"] = round(gen * 1e3 / writes, 3)
        return out


# Every child process the bench starts itself, so that an exit by any path (exception, Ctrl-C,
# SIGTERM) kills them. Our own cluster's processes belong to LocalCluster, stopped by run.py.
_CHILDREN: list[subprocess.Popen[bytes]] = []


def track(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    _CHILDREN.append(proc)
    return proc


def untrack(proc: subprocess.Popen[bytes]) -> None:
    if proc in _CHILDREN:
        _CHILDREN.remove(proc)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within timeout."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass
    untrack(proc)


def kill_all_children() -> None:
    for proc in list(_CHILDREN):
        if proc.poll() is None:
            try:
                proc.kill()
                proc.wait(timeout=5)
            except Exception:
                pass
        untrack(proc)


atexit.register(kill_all_children)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
