"""The autopilot's decisions (``housekeeping.next_action``): a pure function of what the leader observed."""

from __future__ import annotations

from controlplane.server.housekeeping import Action, Policy, ServerHealth, ServerView, next_action

POLICY = Policy(server_stabilization_s=10.0, dead_server_cleanup_s=60.0, min_quorum=3)
NOW = 1000.0


def server(
    name: str,
    *,
    voter: bool = True,
    learner: bool | None = False,
    connected: bool = True,
    stable_for: float | None = None,
    down_for: float | None = None,
    apply_level: int = 1,
) -> ServerView:
    health = ServerHealth(
        raft_address=f"10.0.0.{name[1:]}:7200",
        reachable=down_for is None,
        apply_level=apply_level,
        stable_since=None if stable_for is None else NOW - stable_for,
        unreachable_since=None if down_for is None else NOW - down_for,
    )
    return ServerView(name, health.raft_address, voter, learner, voter and connected and down_for is None, health)


def decide(*servers: ServerView, policy: Policy = POLICY, cluster_level: int = 1) -> Action | None:
    # The leader is the one voter not in the list.
    return next_action(servers, 1 + sum(s.voter for s in servers), NOW, policy, cluster_level)


def test_a_learner_is_promoted_only_after_it_was_stable_for_the_whole_stabilization_period() -> None:
    assert decide(server("n2"), server("n4", voter=False, learner=True, stable_for=9.9)) is None
    assert decide(server("n2"), server("n4", voter=False, learner=True)) is None
    action = decide(server("n2"), server("n4", voter=False, learner=True, stable_for=10.0))
    assert action is not None and (action.kind, action.member_id) == ("promote", "n4")


def test_a_learner_whose_release_is_below_the_cluster_level_is_never_promoted() -> None:
    old = server("n4", voter=False, learner=True, stable_for=99, apply_level=1)
    assert decide(server("n2"), old, cluster_level=2) is None
    current = server("n4", voter=False, learner=True, stable_for=99, apply_level=2)
    action = decide(server("n2"), current, cluster_level=2)
    assert action is not None and (action.kind, action.member_id) == ("promote", "n4")


def test_half_done_changes_are_finished_first() -> None:
    promotion = decide(server("n2", learner=True), server("n5", voter=False, learner=True, stable_for=99))
    assert promotion is not None and (promotion.kind, promotion.member_id) == ("promote", "n2")
    assert "interrupted promotion" in promotion.reason
    removal = decide(server("n2"), server("n3", voter=False, learner=False))
    assert removal is not None and (removal.kind, removal.member_id) == ("remove", "n3")
    # A static peer that has not published itself yet (no record) is left alone.
    assert decide(server("n2", learner=None), server("n3", learner=None)) is None


def test_a_dead_voter_is_removed_after_the_cleanup_period_when_enough_voters_remain() -> None:
    five = [server("n2"), server("n3"), server("n4")]
    assert decide(*five, server("n5", connected=False, down_for=59)) is None
    action = decide(*five, server("n5", connected=False, down_for=60))
    assert action is not None and (action.kind, action.member_id) == ("remove", "n5")


def test_never_below_min_quorum() -> None:
    # Three voters, one dead: removing it would leave 2 < min_quorum 3.
    assert decide(server("n2"), server("n3", connected=False, down_for=3600)) is None
    # The same with min_quorum 2 removes it (2 remain, both reachable).
    action = decide(
        server("n2"),
        server("n3", connected=False, down_for=3600),
        policy=Policy(server_stabilization_s=10, dead_server_cleanup_s=60, min_quorum=2),
    )
    assert action is not None and action.member_id == "n3"


def test_never_without_a_healthy_majority_of_the_remaining_voters() -> None:
    # Five voters, two dead: removing one leaves four of which only the leader and n2 are reachable.
    dead = [server("n4", connected=False, down_for=3600), server("n5", connected=False, down_for=3600)]
    assert decide(server("n2"), server("n3", connected=False, down_for=1), *dead) is None
    # With n3 reachable, the four that remain have three reachable: a majority.
    action = decide(server("n2"), server("n3"), *dead)
    assert action is not None and action.member_id == "n4"


def test_a_voter_reachable_over_raft_is_never_dead() -> None:
    alive_over_raft = ServerView("n5", "10.0.0.5:7200", True, False, True, ServerHealth("10.0.0.5:7200"))
    assert decide(server("n2"), server("n3"), server("n4"), alive_over_raft) is None


def test_an_unreachable_learner_is_dropped_after_the_cleanup_period() -> None:
    assert decide(server("n2"), server("n4", voter=False, learner=True, down_for=30)) is None
    action = decide(server("n2"), server("n4", voter=False, learner=True, down_for=61))
    assert action is not None and (action.kind, action.member_id) == ("remove", "n4")


def test_cleanup_off_removes_nothing() -> None:
    off = Policy(server_stabilization_s=10, dead_server_cleanup_s=0, min_quorum=1)
    dead = server("n5", connected=False, down_for=10**6)
    assert decide(server("n2"), server("n3"), server("n4"), dead, policy=off) is None
    assert decide(server("n2"), server("n4", voter=False, learner=True, down_for=10**6), policy=off) is None
