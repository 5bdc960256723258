"""The clock-step nemesis's hook inside a server process (tests/fault/nemesis.py, ``ClockStepLeader``).

The fault suite puts this directory on the servers' ``PYTHONPATH`` and sets
``CP_TEST_CLOCK_STEP_DIR``; Python imports ``sitecustomize`` at start-up, before the server's own
modules, so every wall-clock read of the server's Python code (``time.time``, ``time.time_ns``,
default arguments bound at import included) goes through the step below. The nemesis writes the
step in nanoseconds to ``<dir>/<node-id>.step``; a thread of the server reads it every 20 ms and
writes what it applied to ``<dir>/<node-id>.applied``, which the nemesis waits for.

Why not the kernel's clock: ``CLOCK_REALTIME`` is one per machine (stepping it would step the
suite's own clients and every other server), and libfaketime with the monotonic clocks left alone
(a real step moves only the wall clock) breaks Python 3.11's ``time.sleep`` (libfaketime issue
426, unfixed in Debian 12's 0.9.10). What this leaves unstepped reads the clock some other way:
``datetime.now()`` and ``time.gmtime()``/``localtime()`` without an argument (certificate dates,
backup names, log timestamps), gRPC's C core and OpenSSL's certificate validity checks. The
server's decisions (leases, deadlines, the time stamped on the log, token expiry) read
``time.time_ns`` or ``time.time``.

Nothing happens in a process without ``--node-id`` on its command line (only servers get it).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path


def _install(step_dir: Path, node_id: str) -> None:
    step_file, applied_file = step_dir / f"{node_id}.step", step_dir / f"{node_id}.applied"
    real_time, real_time_ns = time.time, time.time_ns
    step_ns = 0

    def stepped_time() -> float:
        return real_time() + step_ns / 1e9

    def stepped_time_ns() -> int:
        return real_time_ns() + step_ns

    def follow() -> None:
        nonlocal step_ns
        applied: int | None = None
        while True:
            try:
                wanted = int(step_file.read_text().strip() or 0)
            except (OSError, ValueError):
                wanted = applied if applied is not None else 0  # gone or unreadable: keep the step
            if wanted != applied:
                step_ns = wanted
                applied = wanted
                temporary = applied_file.with_suffix(".tmp")
                temporary.write_text(f"{wanted}\n")
                temporary.replace(applied_file)  # whole, never half-written
            time.sleep(0.02)  # a polling thread's pace, not a wait for a condition

    time.time, time.time_ns = stepped_time, stepped_time_ns
    threading.Thread(target=follow, name="clock-step", daemon=True).start()


def _node_id(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--node-id" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--node-id="):
            return arg.split("=", 1)[1]
    return ""


_dir, _node = os.environ.get("CP_TEST_CLOCK_STEP_DIR", ""), _node_id(sys.argv)
if _dir and _node:
    _install(Path(_dir), _node)
