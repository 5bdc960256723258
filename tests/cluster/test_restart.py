"""The whole cluster stops (SIGTERM) or dies (kill -9) and restarts from its data directories."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from controlplane.client import Client, KeyValue
from controlplane.dev import LocalCluster

from .conftest import assert_same_state, list_all, running, status, wait_converged, wait_ready

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def _populate(client: Client) -> None:
    """Creates, overwrites, deletes and compare-and-swaps, so versions and revisions vary."""
    for i in range(300):
        client.put(f"restart/{i:04d}", f"v0-{i}")
    for i in range(0, 300, 3):
        client.put(f"restart/{i:04d}", f"v1-{i}")
    for i in range(0, 300, 7):
        client.delete(f"restart/{i:04d}")
    current = client.get("restart/0001")
    assert current is not None
    assert client.compare_and_swap("restart/0001", b"swapped", current.mod_revision).succeeded
    client.put("restart/binary", bytes(range(256)))


def _snapshot_of(cluster: LocalCluster) -> tuple[int, dict[str, KeyValue], dict[str, set[str]]]:
    """(applied revision all servers agree on, the whole key space, each server's member view).

    A linearizable read first: it commits a barrier in the current leader's term, and with it every
    entry before (Raft commits earlier terms' entries only that way). Right after a full restart,
    the servers briefly agree on the commit index their journals recorded, which may stop short of
    the last acknowledged write: converging on that would compare a transient state.
    """
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        client.get("restart/0001")  # linearizable by default: a barrier of this term
    revision = wait_converged(cluster)
    state = assert_same_state(running(cluster), revision)
    members = {node.id: {m.id for m in status(node).members} for node in running(cluster)}
    return revision, state, members


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_state_survives_full_cluster_restart(make_cluster: Callable[..., LocalCluster], sig: int) -> None:
    cluster = make_cluster()
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        _populate(client)
    revision_before, state_before, members_before = _snapshot_of(cluster)
    assert len(state_before) == 300 - len(range(0, 300, 7)) + 1

    if sig == signal.SIGTERM:
        cluster.stop()
        codes = {node.id: node.process.returncode for node in cluster.nodes.values() if node.process}
        assert codes == dict.fromkeys(cluster.nodes, 0), f"a server did not stop cleanly on SIGTERM: {codes}"
    else:
        for node_id in cluster.nodes:
            cluster.kill(node_id, signal.SIGKILL)
    assert not running(cluster)

    cluster.start()
    wait_ready(cluster)
    revision_after, state_after, members_after = _snapshot_of(cluster)
    assert revision_after == revision_before, "a restart must replay exactly the applied log"
    for node in running(cluster):
        assert status(node).applied_revision == revision_before, node.id
    assert state_after == state_before
    assert members_after == members_before

    # Revisions continue where they stopped: none is reused after the restart.
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        put = client.put("restart/after", b"x")
        assert put.revision == revision_before + 1
        assert list_all(client, "restart/") == {**state_before, "restart/after": client.get("restart/after")}
