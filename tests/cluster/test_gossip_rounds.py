"""Gossip coordination through real servers: bandwidth reports folded into the versioned matrix,
rounds committed in order, reports, a round ended at its deadline, and the CLI's views."""

from __future__ import annotations

import time

import pytest

from controlplane.client import Client, FailedPrecondition, InvalidArgument, RoundState
from controlplane.dev import LocalCluster

from .conftest import collect_events, cpctl_json, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def test_rounds_commit_in_order_and_the_deadline_ends_them(cluster: LocalCluster) -> None:
    peers = ["gr-a", "gr-b", "gr-c", "gr-d"]
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        start = client.status().applied_revision + 1
        for i, node in enumerate(peers):
            version = client.gossip.report_bandwidth(
                node, {p: 1e6 * (1 + i + j) for j, p in enumerate(peers) if p != node}
            )
        matrix = client.gossip.bandwidth(node_id="gr-a")
        assert matrix.version == version and {(link.a, link.b) for link in matrix.links} == {
            ("gr-a", "gr-b"),
            ("gr-a", "gr-c"),
            ("gr-a", "gr-d"),
        }
        deadline = int(time.time() * 1000) + 60_000
        first = client.gossip.start_round(
            "gr", 1, peers, [("gr-a", "gr-b"), ("gr-c", "gr-d")], seed=1, matrix_version=version,
            deadline_unix_ms=deadline, tensors=[("w", "float32", (10, 3))], sparsity_ratio=0.5,
        )  # fmt: skip
        assert first.state is RoundState.RUNNING and first.spec is not None and first.spec.tensors[0].shape == (10, 3)
        with pytest.raises(FailedPrecondition, match="still running"):
            client.gossip.start_round(
                "gr", 2, peers, [("gr-a", "gr-c")], ["gr-b", "gr-d"], seed=2, deadline_unix_ms=deadline
            )
        with pytest.raises(InvalidArgument, match="partner"):
            client.gossip.report_round("gr", 1, "gr-a", failed_peer="gr-c")
        for node in peers:
            client.gossip.report_round("gr", 1, node, bytes=1000, seconds=0.2)
        assert client.gossip.round("gr").state is RoundState.DONE

        # Round 2 with a short deadline: only two report; the leader's EndRound blames the silent.
        short = int(time.time() * 1000) + 1_500
        client.gossip.start_round("gr", 2, peers, [("gr-a", "gr-c"), ("gr-b", "gr-d")], seed=2, deadline_unix_ms=short)
        client.gossip.report_round("gr", 2, "gr-a")
        client.gossip.report_round("gr", 2, "gr-c")

        # The leader ends it on its own once the deadline passed: a round never waits for the silent.
        wait_until(lambda: client.gossip.round("gr", 2).state is RoundState.TIMED_OUT, 15, "round 2 to time out")
        assert client.gossip.end_round("gr", 2).state is RoundState.TIMED_OUT  # ending again changes nothing
        second = client.gossip.round("gr", 2)
        assert sorted(f.node for f in second.failures) == ["gr-b", "gr-d"]
        until = client.status().applied_revision

    listed = cpctl_json(cluster, "gossip", "rounds", "gr")
    assert [(r["number"], r["state"]) for r in listed] == [(1, "DONE"), (2, "TIMED_OUT")]  # type: ignore[index]
    shown = cpctl_json(cluster, "gossip", "bandwidth", "--node", "gr-b")
    assert all("gr-b" in (link["a"], link["b"]) for link in shown["links"])  # type: ignore[index]
    events = collect_events(cluster.client_addresses[1], start, until, domains=("gossip",))
    round_events = [e.gossip.round for e in events if e.key.startswith("rounds/gr/")]
    # A node that sees round 2 committed never sees round 1 after it: events come in order.
    numbers = [r.number for r in round_events]
    assert numbers[0] == 1 and numbers[-1] == 2 and numbers == sorted(numbers)
