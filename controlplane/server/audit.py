"""The audit log: every changing call a server judges (who, what, when, the outcome), as a JSON line
in a private file, and live to the cluster admins watching it (``Auth.WatchAudit``).

Each server audits the calls it answers itself, as Consul's agents do: a call is recorded where it
was judged, whichever server then committed it, so an admin follows the whole cluster by watching
every server (``cpctl audit watch``). Nothing here is replicated.

It must never do two things: turn a call whose outcome is decided into an error (a full disk is
counted and logged, not raised), and let a slow watcher hold anything up (each watcher has a
bounded buffer; what overflows is skipped for that watcher and counted on its next record).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from controlplane.server import metrics
from controlplane.v1 import auth_pb2

log = structlog.get_logger(__name__)

#: Records one watcher may have waiting before the next are skipped for it.
WATCH_BUFFER = 1024


class AuditWatcher:
    """One ``WatchAudit`` stream's view of the log: the records since it started, in order."""

    def __init__(self, capacity: int = WATCH_BUFFER) -> None:
        self._queue: asyncio.Queue[auth_pb2.AuditRecord] = asyncio.Queue(capacity)
        self._missed = 0

    def offer(self, record: auth_pb2.AuditRecord) -> None:
        """Queue ``record`` (on the event loop), or skip it when the reader is this far behind."""
        if self._queue.full():
            self._missed += 1
            metrics.AUDIT_WATCH_SKIPPED.inc()
            return
        if self._missed:
            # The skipped records came between what is queued and this one: this one says so.
            copy = auth_pb2.AuditRecord()
            copy.CopyFrom(record)
            copy.missed, self._missed = self._missed, 0
            record = copy
        self._queue.put_nowait(record)

    async def next(self) -> auth_pb2.AuditRecord:
        return await self._queue.get()


class AuditLog:
    """The audit log of server ``node_id``, appending to ``path`` (created 0600). Call it with one
    call's fields (``who``, ``method``, ``resource``, ``code``, ``peer``) once the call's outcome is
    decided; the interceptor does, for every changing call. On the event loop only (the watchers'
    queues are asyncio queues), as the interceptor runs."""

    def __init__(self, path: Path, node_id: str) -> None:
        self.path = path
        self.node_id = node_id
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.chmod(path, 0o600)
        self._stamp_second = -1
        self._stamp_prefix = ""
        # A write that failed partway left a line without its newline: the next record starts
        # with one, so it is not glued onto the torn one.
        self._torn = False
        self._last_warned = -math.inf
        self._watchers: set[AuditWatcher] = set()

    def __call__(self, **fields: Any) -> None:
        # Called after the call's outcome is decided (a write may already be committed): a full or
        # failing disk must not turn that outcome into an error the client would believe. Counted
        # and logged (at most every 10 s) instead.
        try:
            self._append({"node": self.node_id, **fields, "event": "audit", "timestamp": self._timestamp()})
        except (OSError, ValueError) as exc:
            metrics.AUDIT_WRITE_FAILURES.inc()
            now = time.monotonic()
            if now - self._last_warned >= 10.0:
                self._last_warned = now
                log.warning("audit_write_failed", path=str(self.path), error=str(exc))
        if self._watchers:
            record = auth_pb2.AuditRecord(
                time_unix_ms=time.time_ns() // 1_000_000,
                node_id=self.node_id,
                who=str(fields.get("who", "")),
                method=str(fields.get("method", "")),
                resource=str(fields.get("resource", "")),
                code=str(fields.get("code", "")),
                peer=str(fields.get("peer", "")),
            )
            for watcher in self._watchers:
                watcher.offer(record)

    def _append(self, record: dict[str, Any]) -> None:
        """One JSON line, written at once (no buffer to lose at a kill): every changing call comes
        through here, so this is a plain write, not a logging pipeline (structlog's cost a follower
        6 % of its time under 64 writing clients)."""
        if self._fd < 0:
            raise ValueError("the audit log is closed")  # never a write to whatever reuses the fd number
        line = (("\n" if self._torn else "") + json.dumps(record, default=str) + "\n").encode()
        written = 0
        try:
            while written < len(line):
                written += os.write(self._fd, line[written:])
        except OSError:
            self._torn = self._torn or written > 0
            raise
        self._torn = False

    def _timestamp(self) -> str:
        """Now, as ISO 8601 UTC with microseconds (``2026-12-06T04:53:18.059772Z``); the part up
        to the second is formatted once per second."""
        now = time.time()
        second = int(now)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp_prefix}.{int((now - second) * 1_000_000):06d}Z"

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    @contextlib.contextmanager
    def watch(self) -> Iterator[AuditWatcher]:
        """A watcher of the records from now on, for as long as the block runs."""
        watcher = AuditWatcher()
        self._watchers.add(watcher)
        metrics.AUDIT_WATCHERS.inc()
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)
            metrics.AUDIT_WATCHERS.dec()
