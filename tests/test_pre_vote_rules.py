"""Pre-Vote's rules on a real pysyncobj instance, without a network: a transport that records what
it is asked to send stands in for the peer plane, and the test delivers messages by hand.

The cluster tests (tests/cluster/test_prevote.py, test_partitions.py) show the outcome on real
servers; these pin down the two ways a server once campaigned without a pre-vote (CI: an isolated
follower raised its term): its election deadline passing between Pre-Vote's check and pysyncobj's,
and a lower-term leader heard long ago still excusing a campaign."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pysyncobj.syncobj
import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.monotonic import monotonic
from pysyncobj.transport import Transport

from controlplane.server.prevote import PreVote

ELECTION_MIN_S, ELECTION_MAX_S = 0.4, 0.8


class RecordingTransport(Transport):  # type: ignore[misc]
    """Connected to every partner; keeps what pysyncobj and Pre-Vote send."""

    def __init__(self, sync: Any, self_node: Any, other_nodes: Any) -> None:
        super().__init__(sync, self_node, other_nodes)
        self.other_nodes = list(other_nodes)
        self.sent: list[tuple[Any, dict[str, Any]]] = []

    def tryGetReady(self) -> bool:
        return True

    def waitReady(self) -> None:
        pass

    def addNode(self, node: Any) -> None:
        pass

    def dropNode(self, node: Any) -> None:
        pass

    def send(self, node: Any, message: dict[str, Any]) -> bool:
        self.sent.append((node, message))
        return True

    def destroy(self) -> None:
        pass

    def connect_all(self) -> None:
        for node in self.other_nodes:
            self._onNodeConnectedCallback(node)

    def take(self, kind: str) -> list[tuple[Any, dict[str, Any]]]:
        taken = [(node, message) for node, message in self.sent if message.get("type") == kind]
        self.sent.clear()
        return taken


class Follower:
    """A pysyncobj follower of a 3-voter cluster at ``term``, with Pre-Vote installed."""

    def __init__(self, term: int) -> None:
        conf = SyncObjConf(
            autoTick=False,
            dynamicMembershipChange=True,
            raftMinTimeout=ELECTION_MIN_S,
            raftMaxTimeout=ELECTION_MAX_S,
        )
        self.sync = SyncObj("127.0.0.1:1", ["127.0.0.1:2", "127.0.0.1:3"], conf, transportClass=RecordingTransport)
        self.transport: RecordingTransport = self.sync._SyncObj__transport
        self.transport.connect_all()
        self.sync._SyncObj__raftCurrentTerm = term
        self.ticks_asked = 0
        self.pre_vote = PreVote(self.sync, ELECTION_MIN_S, ELECTION_MAX_S, self._count_tick)
        self.pre_vote.install()
        self.partners = list(self.sync._SyncObj__otherNodes)

    def _count_tick(self) -> None:
        self.ticks_asked += 1

    @property
    def term(self) -> int:
        return int(self.sync.raftCurrentTerm)

    def deadline_passed(self) -> None:
        self.sync._SyncObj__raftElectionDeadline = monotonic() - 0.001

    def tick(self) -> None:
        self.pre_vote.tick(lambda: self.sync.doTick(0))

    def receive(self, node: Any, message: dict[str, Any]) -> None:
        self.transport._onMessageReceivedCallback(node, message)

    def close(self) -> None:
        self.sync.destroy()


@pytest.fixture
def follower() -> Iterator[Follower]:
    server = Follower(term=5)
    try:
        yield server
    finally:
        server.close()


def test_a_passed_deadline_starts_a_pre_vote_round_and_leaves_the_term_alone(follower: Follower) -> None:
    follower.deadline_passed()
    follower.tick()
    requests = follower.transport.take("request_vote")
    assert {message["term"] for _, message in requests} == {6}
    assert all(message.get("pre_vote") is True for _, message in requests)
    assert follower.term == 5


def test_the_deadline_passing_during_pysyncobjs_tick_does_not_start_a_campaign(
    follower: Follower, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pre-Vote saw the deadline ahead; by pysyncobj's own clock, read a moment later (a
    descheduled process), it had passed."""
    follower.sync._SyncObj__raftElectionDeadline = monotonic() + 1.0

    def tick_read_later() -> None:
        monkeypatch.setattr(pysyncobj.syncobj, "monotonicTime", lambda: monotonic() + 2.0)
        try:
            follower.sync.doTick(0)
        finally:
            monkeypatch.undo()

    follower.pre_vote.tick(tick_read_later)
    assert follower.term == 5
    assert follower.transport.take("request_vote") == []
    # The deadline is back as it was: the next tick that finds it passed runs a pre-vote round.
    follower.deadline_passed()
    follower.tick()
    assert [message.get("pre_vote") for _, message in follower.transport.take("request_vote")] == [True, True]
    assert follower.term == 5


def test_a_majority_of_grants_lets_pysyncobj_campaign(follower: Follower) -> None:
    follower.deadline_passed()
    follower.tick()
    follower.transport.take("request_vote")
    follower.receive(follower.partners[0], {"type": "response_vote", "term": 6, "pre_vote": True})
    assert follower.ticks_asked == 1  # won: a tick is asked for at once
    follower.tick()
    requests = follower.transport.take("request_vote")
    assert follower.term == 6
    assert [("pre_vote" in message, message["term"]) for _, message in requests] == [(False, 6), (False, 6)]


def test_a_lower_term_leader_excuses_a_campaign_until_a_current_leader_is_heard(follower: Follower) -> None:
    stale = {"type": "append_entries", "term": 4, "commit_index": 0, "entries": []}
    current = {"type": "append_entries", "term": 5, "commit_index": 0, "entries": []}
    # Hearing only a leader below our term: the terms must resynchronise, so it campaigns for real.
    follower.receive(follower.partners[0], stale)
    follower.deadline_passed()
    follower.tick()
    assert follower.term == 6
    assert all("pre_vote" not in message for _, message in follower.transport.take("request_vote"))

    # A new follower that heard the lower-term leader, then one at its own term: the excuse is gone.
    other = Follower(term=5)
    try:
        other.receive(other.partners[0], stale)
        other.receive(other.partners[1], current)
        other.transport.sent.clear()
        other.deadline_passed()
        other.tick()
        assert other.term == 5
        assert [message.get("pre_vote") for _, message in other.transport.take("request_vote")] == [True, True]
    finally:
        other.close()


def test_a_leader_answers_from_memory_only_while_a_majority_answered_it_recently() -> None:
    """pysyncobj steps a leader down at its next tick once no majority answered it within the
    fallback time; ``heard_from_majority`` applies that rule at the call, for what a leader answers
    without the log (lease renewals): a leader thawed after a long freeze still says it leads. And
    ``RaftNode.leads_with_recent_majority`` refuses around a stall its ticks saw."""
    from pysyncobj.syncobj import _RAFT_STATE

    from controlplane.server.raft import heard_from_majority

    node = Follower(term=3)
    try:
        sync = node.sync
        assert not heard_from_majority(sync, 1.6)  # a follower
        sync._SyncObj__raftState = _RAFT_STATE.LEADER
        last_response = sync._SyncObj__lastResponseTime
        now = monotonic()
        last_response[node.partners[0]] = now - 0.1
        last_response[node.partners[1]] = now - 5.0
        assert sync._isLeader() and heard_from_majority(sync, 1.6)  # itself and one of two
        last_response[node.partners[0]] = now - 2.0  # frozen for 2 s: nobody answered since
        assert sync._isLeader() and not heard_from_majority(sync, 1.6)

        # Acks read on waking are stamped then, so they pass for fresh: the node's stall rules
        # refuse before the first tick after a freeze, and for the fallback time after that tick.
        from types import SimpleNamespace

        from controlplane.server.config import RaftTuning
        from controlplane.server.raft import RaftNode

        last_response[node.partners[0]] = monotonic()
        leader = SimpleNamespace(
            _sync=sync,
            _config=SimpleNamespace(raft=RaftTuning()),
            _last_tick_at=monotonic(),
            _stalled_until=0.0,
            _ticked=False,
            replayed=lambda: False,  # start-up: the stall is not logged nor counted
            election_postponements=0,
        )
        assert RaftNode.leads_with_recent_majority(leader)  # type: ignore[arg-type]
        leader._last_tick_at = monotonic() - 3.0  # woke up; no tick yet
        assert not RaftNode.leads_with_recent_majority(leader)  # type: ignore[arg-type]
        # The first tick after it notes the stall; an ack read on waking (stamped now) does not count.
        RaftNode._postpone_election_after_a_stall(leader)  # type: ignore[arg-type]
        last_response[node.partners[0]] = monotonic()
        assert leader._stalled_until > monotonic() + 1.0
        assert not RaftNode.leads_with_recent_majority(leader)  # type: ignore[arg-type]
        leader._stalled_until = monotonic() - 0.001  # leader_fallback_s later, a fresh ack counts again
        assert RaftNode.leads_with_recent_majority(leader)  # type: ignore[arg-type]
    finally:
        node.close()
