"""Pre-Vote on loopback (no namespaces needed): a restarted follower asks before campaigning.

A server restarted after kill -9 may find its election deadline passed before the leader's
heartbeats reach it; it then runs a pre-vote round, which the servers that hear from the leader
refuse, and must still rejoin and catch up under the same leader and term. The partition cases,
where Pre-Vote is what keeps the leader, are in test_partitions.py (root only).
"""

from __future__ import annotations

import pytest

from controlplane.dev import LocalCluster

from .conftest import ElectionWatch, followers, status, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def test_restarted_followers_do_not_depose_the_leader(make_cluster: object) -> None:
    cluster: LocalCluster = make_cluster()  # type: ignore[operator]
    leader_id = cluster.wait_for_leader()
    leader = cluster.nodes[leader_id]
    elections = ElectionWatch.start(leader)
    with cluster.client() as client:
        for round_ in range(4):
            follower = followers(cluster, leader_id)[round_ % 2]
            cluster.kill(follower.id)
            for i in range(20):
                client.put(f"prevote/{round_}/{i}", b"x")
            cluster.restart(follower.id)
            committed = status(leader).commit_index
            wait_until(
                lambda f=follower, c=committed: status(f).leader_id == leader_id and status(f).applied_index >= c,
                60,
                f"{follower.id} to follow {leader_id} again and catch up",
            )
            elections.assert_no_election(list(cluster.nodes.values()), f"restart {round_ + 1} of {follower.id}")
        client.put("prevote/after", b"x")
