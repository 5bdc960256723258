"""Adding and removing voters at runtime, one change at a time."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

import grpc
import pytest

from controlplane.client import (
    AlreadyExists,
    Client,
    Consistency,
    ControlPlaneError,
    FailedPrecondition,
    NotFound,
    RetryPolicy,
)
from controlplane.dev import LocalCluster, NodeProcess, free_port
from controlplane.v1 import cluster_pb2

from .conftest import (
    assert_same_state,
    channel,
    cluster_stub,
    followers,
    list_all,
    node_client,
    published_members,
    running,
    status,
    wait_converged,
    wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def _member_ids(node: NodeProcess) -> set[str]:
    return {member.id for member in status(node).members}


def _wait_members(nodes: list[NodeProcess], expected: set[str], timeout: float = 20.0) -> None:
    for node in nodes:
        wait_until(lambda node=node: _member_ids(node) == expected, timeout, f"{node.id} to list members {expected}")


def _write(client: Client, prefix: str, count: int) -> dict[str, int]:
    return {f"{prefix}{i:03d}": client.put(f"{prefix}{i:03d}", f"{prefix}{i}").revision for i in range(count)}


def test_add_a_fourth_server_then_remove_another(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster()
    original = set(cluster.nodes)
    with Client(cluster.client_addresses, timeout=20) as client:
        before = _write(client, "members/before/", 50)

        new = cluster.add_server()
        members = client.add_member(new.id, new.raft_address, new.client_address)
        assert {m.id for m in members} == original | {new.id}
        added = {m.id: m for m in members}[new.id]
        assert (added.raft_address, added.client_address) == (new.raft_address, new.client_address)

        after_add = _write(client, "members/after-add/", 50)
        last = max(after_add.values())

        # The new server has everything: what was there before it joined and what came after.
        with node_client(new) as on_new:
            kv = on_new.get("members/before/000")
            assert kv is not None and kv.mod_revision == before["members/before/000"]
            new_state = list_all(on_new, "members/", consistency=Consistency.STALE, min_revision=last)
        assert {key: kv.mod_revision for key, kv in new_state.items()} == {**before, **after_add}
        _wait_members(running(cluster), original | {new.id})
        assert new.id in published_members(new)

        # Remove one of the original servers (not the leader), then keep writing.
        leader = cluster.wait_for_leader()
        victim = next(node for node in followers(cluster, leader) if node.id != new.id)
        members = client.remove_member(victim.id)
        expected = original - {victim.id} | {new.id}
        assert {m.id for m in members} == expected
        term = status(cluster.nodes[leader]).term
        # The removed server still runs. The others drop their connections to it (so it loses its
        # quorum); whatever it then does (campaign at higher terms, or wait as a follower that is
        # connected to no one) must not disturb them.
        after_remove = _write(client, "members/after-remove/", 50)
        wait_until(lambda: not status(victim).has_quorum, 20, f"the removed {victim.id} to be cut off")
        after_remove.update(_write(client, "members/after-remove/more-", 50))
        assert victim.id not in _member_ids(cluster.nodes[leader])
        cluster.kill(victim.id, signal.SIGTERM)  # the operator stops it afterwards
        after_stop = _write(client, "members/after-stop/", 50)

    remaining = running(cluster)
    assert {node.id for node in remaining} == expected
    _wait_members(remaining, expected)
    assert victim.id not in published_members(remaining[0])
    assert status(cluster.nodes[leader]).term == term, "the removed server disrupted the cluster"
    revision = wait_converged(cluster, remaining)
    state = assert_same_state(remaining, revision, "members/")
    assert {key: kv.mod_revision for key, kv in state.items()} == {**before, **after_add, **after_remove, **after_stop}


def test_membership_errors_are_clear(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster()
    existing = cluster.nodes["n2"]
    spare = f"127.0.0.1:{free_port()}"
    with Client(cluster.client_addresses) as client:
        with pytest.raises(AlreadyExists) as caught:
            client.add_member("n2", spare, spare)
        assert "n2" in caught.value.message
        with pytest.raises(AlreadyExists) as caught:
            client.add_member("n7", existing.raft_address, spare)
        assert existing.raft_address in caught.value.message
        # The very same member again is a retry, not an error: nothing changes.
        members = client.add_member("n2", existing.raft_address, existing.client_address)
        assert {m.id for m in members} == set(cluster.nodes)
        with pytest.raises(NotFound) as missing:
            client.remove_member("no-such-member")
        assert "no-such-member" in missing.value.message
        client.put("members/still-writable", b"1")
    _wait_members(running(cluster), set(cluster.nodes))


def test_second_membership_change_while_one_is_in_flight_is_refused(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """While an AddMember cannot commit, another AddMember is FAILED_PRECONDITION naming the first.

    To hold the first change in flight: pause one follower (SIGSTOP) and add a server that is not
    running. The new configuration (4 voters) needs 3 acks, and only the leader and one follower give
    them, so the change stays uncommitted until the follower is resumed.
    """
    cluster = make_cluster()
    leader_id = cluster.wait_for_leader()
    leader = cluster.nodes[leader_id]
    paused = followers(cluster, leader_id)[0]
    ghost_raft, ghost_client = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    first_outcome: list[object] = []

    def first_add() -> None:
        with channel(leader.client_address) as ch:
            try:
                first_outcome.append(
                    cluster_stub(ch).AddMember(
                        cluster_pb2.AddMemberRequest(
                            id="ghost", raft_address=ghost_raft, client_address=ghost_client, request_id="add-ghost"
                        ),
                        timeout=30,
                    )
                )
            except grpc.RpcError as exc:
                first_outcome.append(exc)

    assert paused.pid is not None
    os.kill(paused.pid, signal.SIGSTOP)
    adder = threading.Thread(target=first_add)
    try:
        adder.start()
        # In flight: the leader already runs the new configuration (it lists the ghost).
        wait_until(lambda: ghost_raft in {m.raft_address for m in status(leader).members}, 10, "the ghost add")
        with Client(leader.client_address) as client, pytest.raises(FailedPrecondition) as caught:
            client.add_member("n9", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
        assert "in flight" in caught.value.message and "ghost" in caught.value.message
    finally:
        os.kill(paused.pid, signal.SIGCONT)
        adder.join(60)
    assert not adder.is_alive()

    # Once the follower is back the first change commits; the cluster then takes the ghost out again.
    cluster.wait_for_leader()
    with Client(cluster.client_addresses, timeout=30) as client:
        assert isinstance(first_outcome[0], cluster_pb2.AddMemberResponse), first_outcome
        client.remove_member("ghost")
        put = client.put("members/after-ghost", b"1")
    _wait_members(running(cluster), set(cluster.nodes))
    assert wait_converged(cluster) >= put.revision


def test_remove_the_leader_itself(make_cluster: Callable[..., LocalCluster]) -> None:
    """The leader cannot remove itself in pysyncobj: it hands leadership over and the new leader does it."""
    cluster = make_cluster()
    old_leader = cluster.wait_for_leader()
    with Client(cluster.client_addresses, timeout=30) as client:
        before = _write(client, "members/leader-removal/before-", 20)
        # A handover plus a removal take well under a second on loopback; 10 s is generous.
        members = client.remove_member(old_leader, timeout=10)
        expected = set(cluster.nodes) - {old_leader}
        assert {m.id for m in members} == expected
        remaining = [cluster.nodes[node_id] for node_id in sorted(expected)]
        new_leader = cluster.wait_for_leader(among=[node.id for node in remaining])
        assert new_leader != old_leader
        after = _write(client, "members/leader-removal/after-", 20)
    cluster.kill(old_leader, signal.SIGTERM)
    _wait_members(remaining, expected)
    revision = wait_converged(cluster, remaining)
    state = assert_same_state(remaining, revision, "members/leader-removal/")
    assert {key: kv.mod_revision for key, kv in state.items()} == {**before, **after}


def test_add_member_slower_than_one_sdk_attempt_still_succeeds(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """An AddMember that takes longer than one SDK attempt (``RetryPolicy.attempt_timeout``): the SDK
    gives up on the attempt and retries with the same request id. The retry must end in the outcome of
    the one change, not in an error while the change goes on to commit behind the caller's back (and
    leaves a Raft voter the member directory does not know). The change is held up as in the test
    above, for one attempt timeout and a bit more."""
    cluster = make_cluster()
    leader_id = cluster.wait_for_leader()
    leader = cluster.nodes[leader_id]
    paused = followers(cluster, leader_id)[0]
    ghost_raft, ghost_client = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    hold_s = RetryPolicy().attempt_timeout + 2.0
    outcome: list[object] = []

    def add() -> None:
        with Client(cluster.client_addresses, timeout=60) as client:
            try:
                outcome.append(client.add_member("ghost", ghost_raft, ghost_client))
            except ControlPlaneError as exc:
                outcome.append(exc)

    assert paused.pid is not None
    os.kill(paused.pid, signal.SIGSTOP)
    adder = threading.Thread(target=add)
    try:
        adder.start()
        wait_until(lambda: ghost_raft in {m.raft_address for m in status(leader).members}, 10, "the ghost add")
        adder.join(hold_s)  # the fault: the follower stays frozen this long
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    adder.join(60)
    assert not adder.is_alive()
    assert isinstance(outcome[0], list), f"AddMember failed although it committed: {outcome[0]!r}"
    assert "ghost" in {m.id for m in outcome[0]}

    with Client(cluster.client_addresses, timeout=30) as client:
        client.remove_member("ghost")
        put = client.put("members/after-slow-add", b"1")
    _wait_members(running(cluster), set(cluster.nodes))
    assert wait_converged(cluster) >= put.revision
