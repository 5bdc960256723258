"""Cluster.TransferLeadership hands leadership to the named follower."""

from __future__ import annotations

import threading

import pytest

from controlplane.client import Client, NotFound, Role
from controlplane.dev import LocalCluster

from .conftest import followers, node_client, running, status, wait_converged, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def _assert_everyone_follows(cluster: LocalCluster, leader_id: str) -> None:
    assert cluster.wait_for_leader() == leader_id
    for node in running(cluster):
        view = status(node)
        assert view.leader_id == leader_id, node.id
        assert view.leader_address == cluster.nodes[leader_id].client_address, node.id
    assert status(cluster.nodes[leader_id]).role == Role.LEADER.value


def test_transfer_leadership_to_named_follower(cluster: LocalCluster) -> None:
    old_leader = cluster.wait_for_leader()
    target = followers(cluster, old_leader)[0].id
    term_before = status(cluster.nodes[old_leader]).term
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        leader_id, term = client.transfer_leadership(target)
        assert leader_id == target
        assert term > term_before
        _assert_everyone_follows(cluster, target)
        put = client.put("leadership/after-transfer", b"1")  # writes go on under the new leader
        kv = client.get("leadership/after-transfer")
        assert kv is not None and kv.mod_revision == put.revision
        assert client.leader_address == cluster.nodes[target].client_address
    wait_converged(cluster)


def test_transfer_requested_through_a_follower_is_forwarded(cluster: LocalCluster) -> None:
    """A client that knows only a follower: the follower forwards the call to the leader."""
    old_leader = cluster.wait_for_leader()
    entry, target = followers(cluster, old_leader)
    with node_client(entry) as client:
        leader_id, _ = client.transfer_leadership(target.id)
    assert leader_id == target.id
    _assert_everyone_follows(cluster, target.id)
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        client.put("leadership/after-forwarded-transfer", b"1")


def test_transfer_succeeds_while_writes_keep_arriving(cluster: LocalCluster) -> None:
    """The target is a few milliseconds behind for most of a steady write load; the leader waits
    for a moment it has caught up instead of refusing the transfer."""
    old_leader = cluster.wait_for_leader()
    target = followers(cluster, old_leader)[0].id
    stop = threading.Event()
    written: list[int] = []

    def write_steadily() -> None:
        with Client(cluster.client_addresses, credentials=cluster.credentials) as writer:
            while not stop.is_set():
                written.append(writer.put(f"leadership/steady-{len(written) % 50}", b"x").revision)

    thread = threading.Thread(target=write_steadily, daemon=True)
    thread.start()
    try:
        with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
            wait_until(lambda: len(written) >= 20, 30, "the steady writer to get going")
            leader_id, _ = client.transfer_leadership(target)
            assert leader_id == target
            during = len(written)
            wait_until(lambda: len(written) >= during + 20, 30, "writes to go on under the new leader")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    _assert_everyone_follows(cluster, target)
    wait_converged(cluster)


def test_transfer_to_the_leader_itself_changes_nothing(cluster: LocalCluster) -> None:
    leader = cluster.wait_for_leader()
    term = status(cluster.nodes[leader]).term
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        assert client.transfer_leadership(leader) == (leader, term)
    _assert_everyone_follows(cluster, leader)
    assert status(cluster.nodes[leader]).term == term


def test_transfer_to_an_unknown_member_is_not_found(cluster: LocalCluster) -> None:
    leader = cluster.wait_for_leader()
    with (
        Client(cluster.client_addresses, credentials=cluster.credentials) as client,
        pytest.raises(NotFound) as caught,
    ):
        client.transfer_leadership("no-such-node")
    assert "no-such-node" in caught.value.message
    _assert_everyone_follows(cluster, leader)
