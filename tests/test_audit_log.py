"""The audit log never turns a decided call into an error: a full disk is counted, not raised."""

from __future__ import annotations

import json
import os
from pathlib import Path

from controlplane.server import metrics
from controlplane.server.authz import open_audit_log


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
    audit = open_audit_log(path, "n1")
    audit(who="user:ann", method="/controlplane.v1.KV/Put", resource="kv:app/x", code="OK", peer="ipv4:1")
    line = json.loads(path.read_text().splitlines()[-1])
    assert (line["who"], line["code"], line["node"]) == ("user:ann", "OK", "n1")
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_full_disk_is_counted_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = open_audit_log(path, "n1")
    full = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC
    try:
        os.dup2(full, _fd_of(path))
    finally:
        os.close(full)
    before = metrics.AUDIT_WRITE_FAILURES._value.get()
    audit(who="user:ann", method="/controlplane.v1.KV/Put", resource="kv:app/x", code="OK", peer="ipv4:1")
    audit(who="user:ann", method="/controlplane.v1.KV/Put", resource="kv:app/y", code="OK", peer="ipv4:1")
    assert metrics.AUDIT_WRITE_FAILURES._value.get() == before + 2
