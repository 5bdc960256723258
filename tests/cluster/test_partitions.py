"""Servers in network namespaces of their own, cut apart with blackhole routes (``bench/netns.py``).

A server cut off from the leader while the rest of the cluster still hears from it (a partial
partition: the leader and one follower lose each other, the third server reaches both; or a
follower isolated from everyone) must not depose the leader, neither while cut off nor when the
cut heals: with Pre-Vote it asks first whether it could win, and servers that hear from the
leader say no. Without it, each cut-off follower's campaigns raised the term and every heal cost
an election (fault suite, partition-bridge: 4-5 elections per fault).

Needs root and iproute2: skipped otherwise, saying why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bench.netns import ShapedNet, netns_unavailable
from controlplane.dev import LocalCluster
from controlplane.v1 import kv_pb2

from .conftest import (
    ElectionWatch,
    channel,
    followers,
    kv_stub,
    scrape,
    started_cluster,
    status,
    value,
    wait_until,
)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.cluster,
    pytest.mark.timeout(180),
    pytest.mark.skipif(netns_unavailable() is not None, reason=f"network namespaces: {netns_unavailable()}"),
]


@pytest.fixture
def partitioned(tmp_path: Path) -> Iterator[tuple[LocalCluster, ShapedNet]]:
    """Three servers, each in a namespace of its own. A fixture, not a context manager in the
    test, so that a failing test's report still has the servers' logs (they stop after it)."""
    with ShapedNet(3, tag="p") as net:
        placement = lambda i: (net.address(i - 1), net.exec_prefix(i - 1))  # noqa: E731
        with started_cluster(tmp_path, 3, placement=placement) as cluster:
            try:
                yield cluster, net
            finally:
                net.heal()


def _index(node_id: str) -> int:
    return int(node_id[1:]) - 1


def _pre_votes(cluster: LocalCluster, node_id: str, result: str) -> float:
    return value(scrape(cluster.nodes[node_id]), "controlplane_raft_pre_votes_total", result=result)


def _hold_cut_and_heal(cluster: LocalCluster, net: ShapedNet, cut_off: str, cut_from: list[str]) -> None:
    """Cut; keep writing until the cut-off server's election deadline has passed twice (it
    started two pre-vote rounds, which nobody granted); heal; wait until it follows the leader
    again with everything applied. No server's term moves, unless a stall excuses it
    (:func:`assert_no_election`)."""
    leader_id = cluster.wait_for_leader()
    nodes = list(cluster.nodes.values())
    elections = ElectionWatch.start(cluster.nodes[leader_id])
    term = elections.term
    started, won = _pre_votes(cluster, cut_off, "started"), _pre_votes(cluster, cut_off, "won")
    for other in cut_from:
        net.cut(_index(cut_off), _index(other))
    host, port = cluster.nodes[cut_from[0]].raft_address.rsplit(":", 1)
    assert not net.can_connect(_index(cut_off), host, int(port), timeout=1.0), "the cut did not take"
    with cluster.client() as client:
        written = 0

        def two_rounds_while_writing() -> bool:
            nonlocal written
            client.put(f"partitions/{cut_off}/{written}", b"x")  # the majority keeps committing
            written += 1
            return _pre_votes(cluster, cut_off, "started") >= started + 2

        wait_until(two_rounds_while_writing, 60, f"{cut_off} to start two pre-vote rounds while cut off")
        if len(cut_from) == len(nodes) - 1:
            # Cut off from everyone, it cannot win a round whatever the timing: nobody hears it.
            assert _pre_votes(cluster, cut_off, "won") == won
            assert status(cluster.nodes[cut_off]).term == term, "the isolated server raised its term"
        net.heal()
        leader_id = cluster.wait_for_leader()
        committed = status(cluster.nodes[leader_id]).commit_index
        wait_until(
            lambda: (
                status(cluster.nodes[cut_off]).leader_id == leader_id
                and status(cluster.nodes[cut_off]).applied_index >= committed
            ),
            60,
            f"{cut_off} to follow {leader_id} again and catch up",
        )
        client.put(f"partitions/{cut_off}/after", b"x")
    elections.assert_no_election(nodes, f"{cut_off} cut from {cut_from}, then healed")


def test_a_follower_cut_from_the_leader_only_does_not_depose_it(partitioned: tuple[LocalCluster, ShapedNet]) -> None:
    cluster, net = partitioned
    leader_id = cluster.wait_for_leader()
    cut_off = followers(cluster, leader_id)[0].id
    _hold_cut_and_heal(cluster, net, cut_off, [leader_id])


def test_an_isolated_follower_rejoins_without_an_election(partitioned: tuple[LocalCluster, ShapedNet]) -> None:
    cluster, net = partitioned
    leader_id = cluster.wait_for_leader()
    cut_off = followers(cluster, leader_id)[0].id
    _hold_cut_and_heal(cluster, net, cut_off, [n for n in cluster.nodes if n != cut_off])


def test_a_write_waiting_on_a_cut_off_leader_is_answered_when_it_steps_down(
    partitioned: tuple[LocalCluster, ShapedNet],
) -> None:
    """A leader cut off from its majority steps down after leader_fallback_s; a write it had appended
    is then answered "the leader changed" (unknown outcome: retry with the same request id) at once,
    instead of when the commit backstop fires (commit_timeout_s) or the client gives up."""
    cluster, net = partitioned
    leader_id = cluster.wait_for_leader()
    leader = cluster.nodes[leader_id]
    for other in cluster.nodes:
        if other != leader_id:
            net.cut(_index(leader_id), _index(other))
    host, port = cluster.nodes[followers(cluster, leader_id)[0].id].raft_address.rsplit(":", 1)
    assert not net.can_connect(_index(leader_id), host, int(port), timeout=1.0), "the cut did not take"
    with channel(leader.client_address) as ch, pytest.raises(grpc.RpcError) as caught:
        kv_stub(ch).Put(kv_pb2.PutRequest(key="partitions/cut-leader", value=b"x", request_id="cut-1"), timeout=60)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    assert "the leader changed" in (caught.value.details() or ""), caught.value.details()
    net.heal()
    with cluster.client() as client:
        # The same request id, retried: applied at most once, whichever way the first one went.
        first = client.put("partitions/cut-leader", b"x", request_id="cut-1")
        again = client.put("partitions/cut-leader", b"x", request_id="cut-1")
        assert first.revision == again.revision
