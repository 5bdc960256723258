"""What `cpctl cluster health` and `cluster status --all` decide from every server's own view.

Pure: the views come in (a ``ClusterStatus`` per member, or why it did not answer) and a verdict
goes out, so the rules are tested without a cluster (tests/test_cluster_health.py).

A cluster is healthy when every member answers, all agree on one leader and term, that leader has
quorum and sees every member healthy, every server is ready, and no server's applied index trails
the leader's commit index by more than ``max_apply_lag``. Running without fsync or without peer
TLS is reported as a warning: a choice someone made, not a fault, but one an operator must see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controlplane.client import ClusterStatus, Role

#: Entries a server may trail the leader's commit index and still count as caught up: a busy
#: follower applies a few group-committed batches behind; thousands behind is a server in trouble.
DEFAULT_MAX_APPLY_LAG = 1000


@dataclass(frozen=True)
class Verdict:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems


def judge(views: dict[str, ClusterStatus | str], max_apply_lag: int = DEFAULT_MAX_APPLY_LAG) -> Verdict:
    """``views``: member id -> its status, or the error that kept it from answering."""
    problems: list[str] = []
    warnings: list[str] = []
    answered = {member: view for member, view in views.items() if isinstance(view, ClusterStatus)}
    for member, view in sorted(views.items()):
        if not isinstance(view, ClusterStatus):
            problems.append(f"{member} did not answer: {view}")
    if not answered:
        return Verdict(problems or ["no server answered"], warnings)

    leaders = {(view.leader_id, view.term) for view in answered.values()}
    if len(leaders) > 1:
        views_of_leader = ", ".join(
            f"{m}: {v.leader_id or 'none'} (term {v.term})" for m, v in sorted(answered.items())
        )
        problems.append(f"the servers disagree on the leader: {views_of_leader}")
    leader_id = max(leaders, key=lambda pair: pair[1])[0]
    leader = answered.get(leader_id) if leader_id else None
    if not leader_id:
        problems.append("no leader: an election is running or quorum is lost")
    elif leader is None:
        problems.append(f"the leader {leader_id} did not answer")
    else:
        if leader.role is not Role.LEADER:
            problems.append(f"{leader_id} is named leader but answers as {leader.role.name.lower()}")
        if not leader.has_quorum:
            problems.append(f"the leader {leader_id} has lost quorum")
        for seen in leader.members:
            if not seen.healthy:
                problems.append(f"the leader sees {seen.id} as unhealthy (not answering or far behind)")
        if leader.membership_change:
            warnings.append(f"a membership change is in flight: {leader.membership_change}")
        for member, view in sorted(answered.items()):
            lag = leader.commit_index - view.applied_index
            if lag > max_apply_lag:
                problems.append(f"{member} has applied {view.applied_index}, {lag} entries behind the commit index")

    for member, view in sorted(answered.items()):
        if not view.ready:
            problems.append(f"{member} is not ready (starting, catching up or stopping)")
        if view.durability == "none":
            warnings.append(f"{member} never fsyncs its journal (durability none): a power cut can lose writes")
        if view.peer_security == "insecure":
            warnings.append(f"{member} runs its Raft peer port without TLS (--insecure-dev)")
    # The level the cluster is at is the highest any server reports: one from before levels reports
    # none (it cannot know), so its own view never says it is too old.
    cluster_level = max(view.cluster_level for view in answered.values())
    for member, view in sorted(answered.items()):
        if view.apply_level < cluster_level:
            problems.append(
                f"{member} runs a release that applies cluster level {view.apply_level}, but the cluster is at "
                f"level {cluster_level}: upgrade it (it applies the log as an older release would)"
            )
    levels = {view.apply_level for view in answered.values()}
    if len(levels) > 1 and min(levels) >= cluster_level:
        held = min(levels)
        warnings.append(
            f"the servers apply different cluster levels, so the cluster stays at {held}: "
            + ", ".join(f"{m} {v.apply_level}" for m, v in sorted(answered.items()) if v.apply_level == held)
            + " hold it back (fine during a rolling upgrade only)"
        )
    versions = {view.version for view in answered.values()}
    if len(versions) > 1:
        warnings.append(
            "mixed versions: "
            + ", ".join(f"{m} {v.version}" for m, v in sorted(answered.items()))
            + " (fine during a rolling upgrade only)"
        )
    return Verdict(problems, warnings)
