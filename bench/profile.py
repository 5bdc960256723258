"""Where the servers' CPU goes under 64 writing clients: perf on the 3 servers, py-spy on the leader.

    .venv/bin/pip install py-spy          # a measuring tool, not a dependency of the project
    .venv/bin/python -m bench.profile --label after [--duration 10] [--durability none]

Starts a 3-server ``LocalCluster`` (data under ``bench/.work/profile/``) and drives it with the
``write_64_clients`` load of ``bench.load``. After the warm-up, two windows of ``--duration``
seconds under the same load:

1. ``perf record -e cpu-clock`` on the 3 servers (skipped when there is no ``perf``; it costs the
   servers next to nothing): on-CPU time by shared object, kernel included: the interpreter (all
   Python code), grpc's Cython and C-core, protobuf's upb, TLS, the kernel (syscalls), libc. The
   server and per-thread CPU of the JSON line come from ``/proc`` over this window.
2. ``py-spy record --native --gil --format raw`` on the leader (it pauses the leader at every
   sample, so this window's throughput is lower): the Python-level split. Each sample is charged
   to its innermost frame that belongs to a known layer (grpc, asyncio, protobuf, pysyncobj, our
   transport, codec, journal, state machine, the rest of our server); frames of the interpreter,
   libc and CPython's C modules (sockets, select) are skipped outwards, so a ``send()`` is charged
   to whoever called it. ``--gil`` keeps only the thread holding the GIL: work done without it
   (TLS encryption, fdatasync, the kernel) is in perf's split, not here.

The raw samples stay in ``bench/.work/profile/<label>.raw`` (and ``<label>.perf.data``). One JSON
line goes to stdout; progress and a readable table to stderr. ``--summarise RAW`` re-reads a raw
file.

To profile an older commit with the same tool, copy ``bench/`` into a worktree of it and run this
module from the worktree's root with the same virtualenv (the servers then run the worktree's code)::

    git worktree add /tmp/before c010219 && cp bench/*.py /tmp/before/bench/
    cd /tmp/before && /work/main/.venv/bin/python -m bench.profile --label before
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.common import WORK_DIR, emit, log, process_cpu_s, route_output, thread_cpu_s
from bench.load import Scenario, run_scenario

PROFILE_DIR = WORK_DIR / "profile"

# py-spy names the server's own modules by their bare file name (raft.py, journal.py ...) and
# other packages by their path under site-packages (pysyncobj/syncobj.py, asyncio/events.py).
_SERVER_MODULES = frozenset(p.name for p in (Path.cwd() / "controlplane" / "server").glob("*.py"))

# (layer, substrings of a frame's file) tried on each frame from the innermost outwards; a frame
# of no layer (libc, libpython, CPython's C modules) is skipped, charging its caller.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("grpc", ("grpc/", "cygrpc", "libgrpc", ".pyx", ".pxi")),
    ("protobuf", ("google/protobuf", "_message.", "upb")),
    # TLS now, Fernet (cryptography) on the peer plane before the transport of our own.
    ("encryption (TLS, Fernet)", ("ssl.py", "_ssl.c", "libssl", "libcrypto", "cryptography/")),
    ("pickle", ("_pickle.c", "pickle.py")),
    ("pysyncobj", ("pysyncobj/",)),
    ("our state machine", ("controlplane/state/",)),
    ("our server (other)", ("controlplane/",)),
    ("asyncio", ("asyncio/", "_asynciomodule.c")),
    ("logging", ("structlog/", "logging/")),
    ("python (other)", (".py", "<frozen")),
]
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _frame(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame)
    return (m.group("name"), m.group("file")) if m else (frame, "")


_OUR_LAYERS = {"peer_transport.py": "our transport", "raft_codec.py": "our codec", "journal.py": "our journal"}


def layer_of(file: str) -> str | None:
    if file in _SERVER_MODULES:
        return _OUR_LAYERS.get(file, "our server (other)")
    for layer, needles in LAYERS:
        if any(n in file for n in needles):
            return layer
    return None


def attribute(stack: list[str]) -> tuple[str, str]:
    """(layer, "function (file)") of the innermost frame of a known layer; stack is outermost first."""
    for frame in reversed(stack):
        name, file = _frame(frame)
        layer = layer_of(file)
        if layer is not None:
            # Stripped libraries (cygrpc) give bare addresses: one entry per library instead.
            return layer, f"{'<native>' if name.startswith('0x') else name} ({file})"
    return "interpreter / native (other)", _frame(stack[-1])[0] if stack else "?"


def summarise(raw: str) -> dict[str, Any]:
    """Self samples per layer and per function, and inclusive samples of our layers and pysyncobj."""
    layers: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    ours_inclusive: Counter[str] = Counter()  # our functions and pysyncobj's, wherever on the stack
    total = 0
    for line in raw.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        stack = stack_text.split(";")
        layer, function = attribute(stack)
        layers[layer] += count
        functions[f"{layer}: {function}"] += count
        for seen in {layer_of(_frame(f)[1]) for f in stack} - {None}:
            inclusive[str(seen)] += count
        for name, file in {_frame(f) for f in stack}:
            entry_point = file.startswith(("controlplane/cli/", "controlplane/__main__"))  # on every stack
            if str(layer_of(file)).startswith(("our ", "pysyncobj")) and not entry_point:
                ours_inclusive[f"{name} ({file})"] += count
        total += count

    def share(n: int) -> float:
        return round(n / total, 3) if total else 0.0

    return {
        "samples": total,
        "self_share": {k: share(v) for k, v in layers.most_common()},
        "inclusive_share": {
            k: share(inclusive[k])
            for k in ("pysyncobj", "our transport", "our codec", "our journal", "our state machine", "grpc")
        },
        "top_functions": [[k, share(v)] for k, v in functions.most_common(15)],
        "top_inclusive_ours": [[k, share(v)] for k, v in ours_inclusive.most_common(15)],
    }


# Shared objects, by what runs in them (perf sees native code only: Python code, ours and every
# library's, is the interpreter's time).
_LIBRARIES: list[tuple[str, tuple[str, ...]]] = [
    ("interpreter (all Python code)", ("libpython", "python3")),
    ("grpc (cygrpc: Cython + C-core)", ("cygrpc",)),
    ("protobuf (upb)", ("_message",)),
    # TLS now; Fernet (cryptography's _rust) on the peer plane before our own transport.
    ("encryption (libssl, libcrypto, cryptography)", ("libssl", "libcrypto", "_ssl.", "_rust.", "binascii.")),
    ("zlib (compression)", ("libz.", "zlib.")),
    ("kernel (syscalls: sockets, epoll, fdatasync)", ("[kernel",)),
    ("libc (malloc, memcpy ...)", ("libc.so", "ld-linux", "libm.so")),
    ("CPython C modules (_asyncio, _pickle ...)", ("cpython-311",)),
]


def perf_by_library(perf_data: Path, leader_pid: int) -> dict[str, dict[str, float]]:
    """Shares of on-CPU samples per library group: for the leader and for the 3 servers together."""
    import subprocess

    out = subprocess.run(
        ["perf", "report", "-i", str(perf_data), "--sort", "pid,dso", "--stdio", "-q"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    leader: dict[str, float] = defaultdict(float)
    servers: dict[str, float] = defaultdict(float)
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\d+):\S+\s+(.+?)\s*$", line)
        if not m:
            continue
        share, pid, dso = float(m.group(1)), int(m.group(2)), m.group(3)
        group = next((g for g, needles in _LIBRARIES if any(n in dso for n in needles)), "other")
        servers[group] += share
        if pid == leader_pid:
            leader[group] += share
    lead_total, all_total = sum(leader.values()) or 1.0, sum(servers.values()) or 1.0
    return {
        "leader": {g: round(v / lead_total, 3) for g, v in sorted(leader.items(), key=lambda kv: -kv[1])},
        "servers": {g: round(v / all_total, 3) for g, v in sorted(servers.items(), key=lambda kv: -kv[1])},
    }


def thread_table(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Cores per thread over the window ("<name>/<tid>"; Python threads are all named python)."""
    used = {name: (after.get(name, 0.0) - before.get(name, 0.0)) / wall for name in after}
    return {name: round(c, 3) for name, c in sorted(used.items(), key=lambda kv: -kv[1]) if c >= 0.005}


async def profile(args: argparse.Namespace) -> dict[str, Any]:
    from bench import ours

    LocalCluster, cluster_pb2, cluster_pb2_grpc, kv_pb2, kv_pb2_grpc = ours.import_ours()
    data = PROFILE_DIR / "cluster"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    extra = {"durability": args.durability} if args.durability else None
    cluster = LocalCluster(Path(data), servers=3, extra_config=extra)
    raw_path = PROFILE_DIR / f"{args.label}.raw"
    perf_path = PROFILE_DIR / f"{args.label}.perf.data"
    try:
        cluster.start()
        cluster.wait_for_leader(timeout=30.0)
        leader = await ours.wait_healthy(cluster, cluster_pb2, cluster_pb2_grpc)
        leader_pid = next(n.pid for n in cluster.nodes.values() if n.client_address == leader)
        pids = {n.id: n.pid for n in cluster.nodes.values()}
        log(f"profile {args.label}: leader {leader} pid {leader_pid}; servers {pids}")
        system = ours.ours_system(cluster, leader, kv_pb2, kv_pb2_grpc, name=f"ours-{args.label}")
        warmup = 3.0
        use_perf = args.perf and shutil.which("perf") is not None
        # Two windows under one load: first the unperturbed one (CPU from /proc, and perf, which
        # barely costs the servers anything), then py-spy's, which pauses the leader at every sample.
        windows = 2 if use_perf else 1
        scenario = Scenario("write_64_clients", 64, windows * (args.duration + 1.0) + 1.0, warmup, leader_only=False)
        load = asyncio.create_task(run_scenario(system, scenario))
        await asyncio.sleep(warmup + 1.0)
        loop = asyncio.get_running_loop()
        t0, threads0 = loop.time(), thread_cpu_s(leader_pid)
        cpu0 = {nid: process_cpu_s(pid) for nid, pid in pids.items() if pid}
        perf_rc = None
        if use_perf:
            # On-CPU samples of every thread of the 3 servers, kernel included, by shared object.
            perf = await asyncio.create_subprocess_exec(
                *["perf", "record", "-e", "cpu-clock", "-F", "499", "-o", str(perf_path)],
                *["-p", ",".join(str(p) for p in pids.values() if p), "--", "sleep", str(int(args.duration))],
                stdout=sys.stderr,
                stderr=sys.stderr,
            )
            perf_rc = await perf.wait()
        else:
            await asyncio.sleep(args.duration)
        t1, threads1 = loop.time(), thread_cpu_s(leader_pid)
        cpu1 = {nid: process_cpu_s(pid) for nid, pid in pids.items() if pid}
        spy = await asyncio.create_subprocess_exec(
            *[args.py_spy, "record", "--pid", str(leader_pid), "--duration", str(int(args.duration))],
            # --gil: only the thread holding the GIL, i.e. running Python (py-spy's idle detection
            # does not work with --native: threads asleep in poll() or fdatasync() were counted).
            *["--rate", str(args.rate), "--format", "raw", "--native", "--gil", "-o", str(raw_path)],
            stdout=sys.stderr,
            stderr=sys.stderr,
        )
        t2 = loop.time()
        await spy.wait()
        t3 = loop.time()
        line = await load
    finally:
        cluster.stop()
    if spy.returncode != 0 or not raw_path.exists():
        raise RuntimeError(f"py-spy failed (exit {spy.returncode})")
    wall = t1 - t0
    summary = summarise(raw_path.read_text())
    if perf_rc == 0:
        summary["on_cpu_by_library"] = perf_by_library(perf_path, leader_pid)
    return {
        "scenario": "profile_leader_64_clients",
        "label": args.label,
        "durability": args.durability or "default",
        "window_s": round(wall, 1),
        "rate_hz": args.rate,
        "server_cores": {nid: round((cpu1[nid] - cpu0[nid]) / wall, 2) for nid in cpu0},
        "leader": next(nid for nid, pid in pids.items() if pid == leader_pid),
        "leader_threads_cores": thread_table(threads0, threads1, wall),
        # Samples with a thread holding the GIL over the samples asked for: the share of the
        # window the leader ran Python (an estimate: py-spy may fall behind on a busy machine).
        "gil_held_fraction": round(summary["samples"] / (args.rate * (t3 - t2)), 2),
        **summary,
        "load": {
            k: line.get(k)
            for k in ("ops_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_write", "cpu_other_cores", "loadavg_1m")
        },
        "raw": str(raw_path),
    }


def print_table(result: dict[str, Any]) -> None:
    out = sys.stderr
    print(f"\n{result['label']}: {result['samples']} samples of the leader in {result['window_s']} s", file=out)
    print(f"  the load over both windows: {result['load']}", file=out)
    print(f"  server cores, first window: {result['server_cores']} (leader {result['leader']})", file=out)
    print(f"  GIL held {result['gil_held_fraction']:.0%} of the window", file=out)
    print(f"  leader threads (cores): {result['leader_threads_cores']}", file=out)
    print("  self share by layer:", file=out)
    for layer, share in result["self_share"].items():
        print(f"    {share:6.1%}  {layer}", file=out)
    print(f"  inclusive: {result['inclusive_share']}", file=out)
    for scope, shares in result.get("on_cpu_by_library", {}).items():
        print(f"  on-CPU by library (perf), {scope}:", file=out)
        for group, share in shares.items():
            print(f"    {share:6.1%}  {group}", file=out)
    for title, key in (("top functions (self)", "top_functions"), ("ours, inclusive", "top_inclusive_ours")):
        print(f"  {title}:", file=out)
        for name, share in result[key]:
            print(f"    {share:6.1%}  {name}", file=out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--label", default="after", help="names the raw file and the JSON line (default after)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each window (default 10)")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second (default 100)")
    p.add_argument("--durability", choices=["fsync", "none"], help="server setting (default: the server's)")
    p.add_argument("--py-spy", default=str(Path(sys.executable).with_name("py-spy")), help="the py-spy binary")
    p.add_argument("--summarise", metavar="RAW", help="only summarise an existing raw file")
    p.add_argument("--no-perf", dest="perf", action="store_false", help="skip perf's on-CPU split by library")
    args = p.parse_args(argv)
    if args.summarise:
        result = {"label": args.label, **summarise(Path(args.summarise).read_text())}
        emit(result)
        return 0
    if not os.path.exists(args.py_spy):
        log(f"no py-spy at {args.py_spy}: .venv/bin/pip install py-spy")
        return 2
    route_output(WORK_DIR / "bench-process.log")
    load1, load5, _ = os.getloadavg()
    log(f"load average {load1:.2f} (1 min) {load5:.2f} (5 min) on {os.cpu_count()} cores")
    result = asyncio.run(profile(args))
    print_table(result)
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
