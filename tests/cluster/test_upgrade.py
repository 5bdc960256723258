"""Upgrades: a data directory written by the previous release starts on this one, its state
intact; and in a rolling upgrade the cluster level rises only once every server applies it.

The previous release kept pysyncobj's own journal (``raft.journal`` + ``raft.journal.meta``,
memory-mapped). A server started on such a directory migrates it into the durable journal
(``raft.wal``) before Raft starts, and renames the old files aside. The legacy directory is
made here the way the previous release made it: a pysyncobj node with its own file journal
applying our command batches.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pysyncobj import SyncObj, SyncObjConf, replicated

from controlplane.client import Client, FailedPrecondition, PortProtocol
from controlplane.dev import LocalCluster, free_port
from controlplane.state import levels
from controlplane.state.machine import batch_entry
from controlplane.v1 import command_pb2

from .conftest import _LIVE, cpctl, running, status, wait_for_level, wait_ready, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

KEYS = 50


class _PreviousRelease(SyncObj):
    """The previous release's replicated log: one replicated method taking a command batch."""

    @replicated
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


def test_a_rolling_upgrade_raises_the_cluster_level_after_the_last_server(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    # Three servers held at the base level: the releases from before UDP ports, as far as the
    # replicated state can tell.
    cluster = make_cluster(servers=3, extra_config={"apply_level": levels.BASE_LEVEL})
    host = "upgrade-host"
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        client.ports.assign(host, "dns", 53, "tcp")
        with pytest.raises(FailedPrecondition, match=r"needs cluster level 2 \(UDP ports"):
            client.ports.assign(host, "dns", 53, "udp", protocol="udp")
        # Below its level no server keeps unplaced clients: "none" would be a wrong answer.
        with pytest.raises(FailedPrecondition, match=r"needs cluster level 5 \(unplaced clients"):
            client.membership.unplaced()
        health = cpctl(cluster, "cluster", "health")
        assert health.returncode == 0, health.stdout + health.stderr

        # One server at a time onto the new release: the level waits for the last one.
        cluster.extra_config = {}
        upgraded = sorted(cluster.nodes)
        for node_id in upgraded[:-1]:
            cluster.restart(node_id)
            wait_ready(cluster)
            wait_until(
                lambda node_id=node_id: status(cluster.nodes[node_id]).apply_level == levels.APPLY_LEVEL,
                60,
                f"{node_id} on the new release",
            )
        # Leadership on an upgraded server (the old one's own level would hold the cluster back
        # whatever the gate did), then two of its health-check rounds that reached the old server:
        # a gate that ignored it would have raised the level by then.
        old = upgraded[-1]
        if cluster.wait_for_leader() == old:
            client.transfer_leadership(upgraded[0])
            wait_until(lambda: cluster.wait_for_leader() != old, 60, "leadership off the old server")
        leader = cluster.nodes[cluster.wait_for_leader()]

        def last_contact() -> int:
            return next((m.last_contact_unix_ms for m in status(leader).members if m.id == old), 0)

        for _ in range(2):
            seen = last_contact()
            wait_until(lambda seen=seen: last_contact() > seen, 60, f"a health check of {old}")
        assert {status(node).cluster_level for node in running(cluster)} == {levels.BASE_LEVEL}
        with pytest.raises(FailedPrecondition, match="needs cluster level 2"):
            client.ports.assign(host, "dns", 53, "udp", protocol="udp")
        mixed = cpctl(cluster, "cluster", "health")
        assert "so the cluster stays at 1" in mixed.stdout + mixed.stderr, mixed.stdout + mixed.stderr

        cluster.restart(upgraded[-1])
        wait_ready(cluster)
        wait_for_level(cluster, levels.UDP_PORTS)
        udp = client.ports.assign(host, "dns", 53, "udp", protocol="udp").assignment
        assert (udp.port, udp.protocol) == (53, PortProtocol.UDP)
        assert client.ports.list(host=host).assignments[0].protocol is PortProtocol.TCP
