"""The audit log never turns a decided call into an error (a full disk is counted, not raised), and
its watchers get every record from their start in order, a slow one skipping (and told) what overflows."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
from pathlib import Path
from typing import Any

from controlplane.server import metrics
from controlplane.server.audit import WATCH_BUFFER, AuditLog


def _fd_of(path: Path) -> int:
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                return int(name)
        except OSError:
            continue
    raise AssertionError(f"{path} is not open in this process")


def test_lines_are_json_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = AuditLog(path, "n1")
    audit(who="user:ann", method="/controlplane.v1.KV/Put", resource="kv:app/x", code="OK", peer="ipv4:1")
    audit(who="user:bob", method="/controlplane.v1.KV/Delete", resource='kv:"q"\n', code="NOT_FOUND", peer="ipv4:2")
    audit.close()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert {key: value for key, value in first.items() if key != "timestamp"} == {
        "node": "n1",
        "who": "user:ann",
        "method": "/controlplane.v1.KV/Put",
        "resource": "kv:app/x",
        "code": "OK",
        "peer": "ipv4:1",
        "event": "audit",
    }
    assert (second["resource"], second["code"]) == ('kv:"q"\n', "NOT_FOUND")
    # ISO 8601 UTC with microseconds, as every other log line of the server.
    stamp = datetime.datetime.strptime(first["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    assert abs((datetime.datetime.now(datetime.UTC) - stamp).total_seconds()) < 3600
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_full_disk_is_counted_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = AuditLog(path, "n1")
    full = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC
    try:
        os.dup2(full, _fd_of(path))
    finally:
        os.close(full)
    before = metrics.AUDIT_WRITE_FAILURES._value.get()
    audit(who="user:ann", method="/controlplane.v1.KV/Put", resource="kv:app/x", code="OK", peer="ipv4:1")
    audit(who="user:ann", method="/controlplane.v1.KV/Put", resource="kv:app/y", code="OK", peer="ipv4:1")
    assert metrics.AUDIT_WRITE_FAILURES._value.get() == before + 2


def _record(audit: AuditLog, key: str) -> None:
    audit(who="user:ann", method="/controlplane.v1.KV/Put", resource=key, code="OK", peer="ipv4:1")


def test_a_watcher_gets_the_records_from_its_start_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        audit = AuditLog(tmp_path / "audit.log", "n1")
        _record(audit, "before")
        with audit.watch() as watcher:
            for key in ("a", "b"):
                _record(audit, key)
            first, second = await watcher.next(), await watcher.next()
        _record(audit, "after")  # the watcher has gone: nothing is queued for it
        assert [(r.resource, r.node_id, r.who, r.code, r.missed) for r in (first, second)] == [
            ("a", "n1", "user:ann", "OK", 0),
            ("b", "n1", "user:ann", "OK", 0),
        ]
        assert first.time_unix_ms > 0

    asyncio.run(scenario())


def test_a_slow_watcher_skips_what_overflows_and_is_told_how_much(tmp_path: Path) -> None:
    async def scenario() -> None:
        audit = AuditLog(tmp_path / "audit.log", "n1")
        skipped_before = metrics.AUDIT_WATCH_SKIPPED._value.get()
        with audit.watch() as watcher:
            for i in range(WATCH_BUFFER + 5):
                _record(audit, f"k{i}")
            got = [await watcher.next() for _ in range(WATCH_BUFFER)]
            _record(audit, "next")  # room again: this one carries the count of the 5 skipped
            last = await watcher.next()
        assert [r.resource for r in got] == [f"k{i}" for i in range(WATCH_BUFFER)]
        assert all(r.missed == 0 for r in got)
        assert (last.resource, last.missed) == ("next", 5)
        assert metrics.AUDIT_WATCH_SKIPPED._value.get() == skipped_before + 5
        # The file has every record, the skipped ones included.
        assert len((tmp_path / "audit.log").read_text().splitlines()) == WATCH_BUFFER + 6

    asyncio.run(scenario())


def test_a_line_torn_by_a_failing_disk_does_not_swallow_the_next(tmp_path: Path, monkeypatch: Any) -> None:
    from controlplane.server import audit as audit_module

    path = tmp_path / "audit.log"
    audit = AuditLog(path, "n1")
    real_write = os.write
    calls = {"n": 0}

    def half_then_full(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, data[: len(data) // 2])  # the disk took half a line ...
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")  # ... then filled up
        return real_write(fd, data)

    monkeypatch.setattr(audit_module.os, "write", half_then_full)
    before = metrics.AUDIT_WRITE_FAILURES._value.get()
    _record(audit, "torn")
    _record(audit, "whole")
    assert metrics.AUDIT_WRITE_FAILURES._value.get() == before + 1
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["resource"] == "whole"  # its own line, parseable


def test_a_record_after_close_is_counted_not_raised(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log", "n1")
    audit.close()
    before = metrics.AUDIT_WRITE_FAILURES._value.get()
    _record(audit, "late")
    assert metrics.AUDIT_WRITE_FAILURES._value.get() == before + 1
    assert (tmp_path / "audit.log").read_text() == ""
