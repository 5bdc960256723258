"""The rules of `cpctl cluster health` over hand-built views (no network)."""

from __future__ import annotations

import dataclasses

from controlplane.cli.health import judge
from controlplane.client import ClusterStatus, Member, Role

IDS = ("n1", "n2", "n3")


def member(node_id: str, *, healthy: bool = True) -> Member:
    return Member(
        id=node_id,
        raft_address=f"{node_id}:1",
        client_address=f"{node_id}:2",
        role=Role.LEADER if node_id == "n1" else Role.FOLLOWER,
        healthy=healthy,
        voter=True,
    )


def view(node_id: str, **changes: object) -> ClusterStatus:
    status = ClusterStatus(
        node_id=node_id,
        role=Role.LEADER if node_id == "n1" else Role.FOLLOWER,
        leader_id="n1",
        leader_address="n1:2",
        term=4,
        commit_index=500,
        applied_index=500,
        applied_revision=300,
        members=tuple(member(i) for i in IDS),
        has_quorum=True,
        oldest_revision=1,
        raft_log_size=100,
        version="0.1.0",
        durability="fsync",
        peer_security="mtls",
    )
    return dataclasses.replace(status, **changes)  # type: ignore[arg-type]


def healthy_views() -> dict[str, ClusterStatus | str]:
    return {node_id: view(node_id) for node_id in IDS}


def test_a_whole_cluster_is_healthy_without_warnings() -> None:
    verdict = judge(healthy_views())
    assert verdict.healthy and verdict.problems == [] and verdict.warnings == []


def test_a_server_that_does_not_answer_is_named() -> None:
    views = healthy_views()
    views["n3"] = "DeadlineExceeded: no answer within the 3 s deadline"
    views["n1"] = view("n1", members=(member("n1"), member("n2"), member("n3", healthy=False)))
    verdict = judge(views)
    assert not verdict.healthy
    assert any(p.startswith("n3 did not answer") for p in verdict.problems)
    assert any("sees n3 as unhealthy" in p for p in verdict.problems)


def test_disagreement_on_the_leader_and_no_leader_are_problems() -> None:
    views = healthy_views()
    views["n2"] = view("n2", leader_id="n2", term=5)
    assert any("disagree on the leader" in p for p in judge(views).problems)
    no_leader = {node_id: view(node_id, leader_id="", role=Role.FOLLOWER) for node_id in IDS}
    assert any(p.startswith("no leader") for p in judge(no_leader).problems)


def test_lost_quorum_and_a_lagging_or_unready_server_are_problems() -> None:
    views = healthy_views()
    views["n1"] = view("n1", has_quorum=False, commit_index=5000)
    views["n2"] = view("n2", applied_index=4900)
    views["n3"] = view("n3", applied_index=100, ready=False)
    problems = judge(views, max_apply_lag=1000).problems
    assert any("lost quorum" in p for p in problems)
    assert any(p.startswith("n3 has applied 100, 4900 entries behind") for p in problems)
    assert not any(p.startswith("n2 has applied") for p in problems)
    assert any(p.startswith("n3 is not ready") for p in problems)


def test_no_fsync_no_peer_tls_and_mixed_versions_warn_without_failing() -> None:
    views = healthy_views()
    views["n2"] = view("n2", durability="none", peer_security="insecure", version="0.2.0")
    verdict = judge(views)
    assert verdict.healthy
    assert len(verdict.warnings) == 3 and any("mixed versions" in w for w in verdict.warnings)


def test_nobody_answering_is_a_problem() -> None:
    verdict = judge({"n1": "Unavailable: refused", "n2": "Unavailable: refused"})
    assert not verdict.healthy and len(verdict.problems) == 2


def test_servers_on_different_cluster_levels_are_a_warning_and_one_too_old_a_problem() -> None:
    views: dict[str, ClusterStatus | str] = {node_id: view(node_id, apply_level=2) for node_id in IDS}
    views["n3"] = view("n3", apply_level=1)  # mid-upgrade: n3 still holds the cluster at level 1
    verdict = judge(views)
    assert verdict.healthy
    assert verdict.warnings == [
        "the servers apply different cluster levels, so the cluster stays at 1: n3 1 hold it back "
        "(fine during a rolling upgrade only)"
    ]
    views["n3"] = view("n3", apply_level=1, cluster_level=2)  # downgraded after the level rose
    verdict = judge(views)
    assert not verdict.healthy
    assert any(
        p.startswith("n3 runs a release that applies cluster level 1, but the cluster is at level 2")
        for p in verdict.problems
    )


def test_a_server_from_before_levels_in_a_raised_cluster_is_a_problem() -> None:
    # A release from before levels reports neither level (the SDK reads both as 1): the others say
    # where the cluster is.
    views: dict[str, ClusterStatus | str] = {node_id: view(node_id, apply_level=3, cluster_level=3) for node_id in IDS}
    views["n3"] = view("n3")
    verdict = judge(views)
    assert verdict.problems == [
        "n3 runs a release that applies cluster level 1, but the cluster is at level 3: upgrade it "
        "(it applies the log as an older release would)"
    ]
