"""A data directory written by the previous release starts on this one, its state intact.

The previous release kept pysyncobj's own journal (``raft.journal`` + ``raft.journal.meta``,
memory-mapped). A server started on such a directory migrates it into the durable journal
(``raft.wal``) before Raft starts, and renames the old files aside. The legacy directory is
made here the way the previous release made it: a pysyncobj node with its own file journal
applying our command batches.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from pysyncobj import SyncObj, SyncObjConf, replicated

from controlplane.client import Client
from controlplane.dev import LocalCluster, free_port
from controlplane.state.machine import batch_entry
from controlplane.v1 import command_pb2

from .conftest import _LIVE, wait_ready

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

KEYS = 50


class _PreviousRelease(SyncObj):  # type: ignore[misc]
    """The previous release's replicated log: one replicated method taking a command batch."""

    @replicated  # type: ignore[misc]
    def apply_entry(self, entry: bytes) -> None:
        return None


def _write_legacy_data_dir(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    conf = SyncObjConf(journalFile=str(data_dir / "raft.journal"), autoTick=False, dynamicMembershipChange=True)
    node = _PreviousRelease(f"127.0.0.1:{free_port()}", [], conf)
    try:
        deadline = time.monotonic() + 30
        while not node._isLeader():
            assert time.monotonic() < deadline, "a one-node pysyncobj cluster did not elect itself"
            node.doTick(0.01)
        applied: list[int] = []
        for i in range(KEYS):
            command = command_pb2.Command(
                request_id=f"legacy-{i}", kv_put=command_pb2.KvPut(key=f"legacy/{i:03d}", value=f"v{i}".encode())
            )
            node.apply_entry(
                batch_entry(1_700_000_000_000 + i, "n1", [command]), callback=lambda _r, e: applied.append(e)
            )
        while len(applied) < KEYS:
            assert time.monotonic() < deadline, f"only {len(applied)} legacy entries applied"
            node.doTick(0.01)
        assert set(applied) == {0}
    finally:
        node.destroy()


def test_a_previous_release_data_dir_is_migrated_on_start(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster", servers=1)
    server = cluster.nodes["n1"]
    _write_legacy_data_dir(server.data_dir)
    _LIVE.append(cluster)
    try:
        cluster.start()
        wait_ready(cluster)
        with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
            values = {kv.key: kv.value for kv in client.list("legacy/", limit=1000).kvs}
            assert values == {f"legacy/{i:03d}": f"v{i}".encode() for i in range(KEYS)}
            assert client.put("legacy/after-upgrade", b"ok").revision > KEYS
        assert (server.data_dir / "raft.wal").exists()
        assert not (server.data_dir / "raft.journal").exists(), "the legacy journal was left in place"
        assert (server.data_dir / "raft.journal.migrated").exists()
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
        _LIVE.remove(cluster)
