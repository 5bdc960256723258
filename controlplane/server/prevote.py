"""Pre-Vote (Raft thesis section 9.6) on top of pysyncobj 0.3.17, which has none.

Why: pysyncobj campaigns as soon as a follower's election deadline passes, and a vote request
with a higher term makes every receiver, the healthy leader included, step down. So a server
that merely lost touch with the leader deposed it: a follower cut off from the leader alone (a
partial partition: the third server still hears both) campaigned again and again, and an
isolated follower came back from a partition with a term above everyone's and forced an election
(the fault suite's partition nemeses: 4-5 elections per fault).

How: when the deadline passes, the server first asks the others whether they would vote for it
at the next term (``request_vote`` with ``pre_vote``). A server grants that only if it has not
heard from a leader for the shortest election timeout, is not the leader itself, and the asker's
log is at least as up to date as its own; a pre-vote changes nothing at the receiver (no term,
no vote recorded). Only with a majority of grants does the asker let pysyncobj campaign, at its
next tick. Pre-votes are answered and counted here and never reach pysyncobj.

Exceptions, so that liveness never depends on Pre-Vote:

* A leadership transfer (TimeoutNow): the target campaigns at once; the leader asked for it.
* A server that hears appends from a leader at a term below its own: its term got ahead (a
  campaign whose vote requests were lost), pysyncobj ignores those appends, and nothing a leader
  sends would ever bring it back, so it campaigns for real, which resynchronises the terms (etcd
  answers such a leader with its higher term for the same reason).
* A single-voter cluster, and a learner (it never campaigns).

Invariants: a pre-vote never changes a term, a vote or the log, here or at the receiver; it
only decides whether pysyncobj's own, unchanged election runs now or one election timeout later.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from time import monotonic
from typing import Any

import structlog

from controlplane.server import metrics

log = structlog.get_logger("controlplane.raft")


class PreVote:
    """Pre-Vote for one pysyncobj instance: run every tick through :meth:`tick`, and call
    :meth:`install` once to see its incoming messages first."""

    def __init__(
        self,
        sync: Any,
        election_min_s: float,
        election_max_s: float,
        schedule_tick: Callable[[], None],
    ) -> None:
        self._sync = sync
        self._election_min_s = election_min_s
        self._election_max_s = election_max_s
        self._schedule_tick = schedule_tick
        # The term of the round in progress (None: none) and the servers that granted it.
        self._round_term: int | None = None
        self._grants: set[Any] = set()
        # A round won: pysyncobj campaigns at the next tick.
        self._won = False
        self._leader_heard_at = float("-inf")
        self._stale_leader_at = float("-inf")

    def install(self) -> None:
        transport = self._sync._SyncObj__transport
        deliver = transport._onMessageReceivedCallback

        def on_message(node: Any, message: Any) -> None:
            if isinstance(message, dict) and self.on_message(node, message):
                return
            deliver(node, message)

        transport.setOnMessageReceivedCallback(on_message)

    # ------------------------------------------------------------------ asking

    def tick(self, do_tick: Callable[[], None]) -> None:
        """Run pysyncobj's tick (``do_tick``), letting it campaign only where this allows.

        pysyncobj campaigns inside its tick when its election deadline has passed by the clock it
        reads there. Checking the deadline here first is not enough: it can pass between that check
        and pysyncobj's (a descheduled process on a busy machine), and pysyncobj would campaign
        without a pre-vote. So unless a campaign is allowed now, pysyncobj's deadline is hidden
        (infinite) for the length of its tick and put back afterwards."""
        if self._campaign_allowed():
            do_tick()
            return
        sync = self._sync
        deadline = sync._SyncObj__raftElectionDeadline
        sync._SyncObj__raftElectionDeadline = math.inf
        try:
            do_tick()
        finally:
            if sync._SyncObj__raftElectionDeadline == math.inf:  # pysyncobj did not set a new one
                sync._SyncObj__raftElectionDeadline = deadline

    def _campaign_allowed(self) -> bool:
        """Whether pysyncobj may campaign at this tick; when the deadline passed and no exception
        applies, starts a pre-vote round instead (False)."""
        sync = self._sync
        if sync._SyncObj__selfNode is None or sync._isLeader() or not sync._SyncObj__otherNodes:
            self._round_term, self._won = None, False
            return True  # nothing to guard: a leader, a learner, a lone voter
        if sync._SyncObj__transferInProgress:
            return True  # TimeoutNow: the leader asked this server to campaign at once
        now = monotonic()
        if sync._SyncObj__raftElectionDeadline >= now:
            return False
        if self._won:
            self._won = False  # this tick, pysyncobj campaigns
            return True
        if now - self._stale_leader_at < 2 * self._election_max_s:
            log.info("raft_pre_vote_skipped", reason="a leader at a lower term than ours is sending appends")
            return True
        if not sync._SyncObj__connectedToAnyone():
            return False  # pysyncobj would not campaign either
        self._start_round(now)
        return False

    def _start_round(self, now: float) -> None:
        sync = self._sync
        sync._SyncObj__raftElectionDeadline = now + sync._SyncObj__generateRaftTimeout()
        if sync._SyncObj__raftLeader is not None:
            # As a campaign would: this server no longer believes in a leader it cannot hear, so
            # its clients are told "no leader" rather than forwarded into the void.
            sync._SyncObj__raftLeader = None
            sync._SyncObj__onLeaderChanged()
        term = int(sync.raftCurrentTerm) + 1
        self._round_term, self._grants = term, set()
        metrics.PRE_VOTES.labels(result="started").inc()
        request = {
            "type": "request_vote",
            "term": term,
            "last_log_index": sync._SyncObj__getCurrentLogIndex(),
            "last_log_term": sync._SyncObj__getCurrentLogTerm(),
            "pre_vote": True,
        }
        for node in list(sync._SyncObj__otherNodes):
            sync._SyncObj__transport.send(node, dict(request))

    # ------------------------------------------------------------------ messages

    def on_message(self, node: Any, message: dict[str, Any]) -> bool:
        """Handle ``message`` if it is a pre-vote or its answer (True: consumed); note leader contact."""
        kind = message.get("type")
        if kind == "append_entries":
            term = int(message.get("term", 0))
            if term >= self._sync.raftCurrentTerm:
                self._leader_heard_at = monotonic()
                self._won = False  # a leader is back: a round won earlier no longer counts
                # and so is a leader at our term: a lower-term one heard before (a start-up race,
                # a deposed leader's last appends) no longer excuses a campaign without a pre-vote
                self._stale_leader_at = float("-inf")
            else:
                self._stale_leader_at = monotonic()
            return False
        if not message.get("pre_vote"):  # the codec sets it on vote requests and answers only
            return False
        if kind == "request_vote":
            if self._grants_pre_vote(message):
                self._sync._SyncObj__transport.send(
                    node, {"type": "response_vote", "term": message["term"], "pre_vote": True}
                )
        else:
            self._count_grant(node, int(message["term"]))
        return True

    def _grants_pre_vote(self, message: dict[str, Any]) -> bool:
        sync = self._sync
        if sync._SyncObj__selfNode is None or sync._isLeader():
            return False
        if monotonic() - self._leader_heard_at < self._election_min_s:
            return False  # the leader is alive as far as this server can tell
        if int(message["term"]) < sync.raftCurrentTerm:
            return False
        our_term, our_index = sync._SyncObj__getCurrentLogTerm(), sync._SyncObj__getCurrentLogIndex()
        their_term, their_index = int(message["last_log_term"]), int(message["last_log_index"])
        return their_term > our_term or (their_term == our_term and their_index >= our_index)

    def _count_grant(self, node: Any, term: int) -> None:
        sync = self._sync
        if term != self._round_term or sync._isLeader():
            return  # an answer to an older round
        self._grants.add(node)
        voters = len(sync._SyncObj__otherNodes) + 1
        if len(self._grants) + 1 > voters / 2:
            self._round_term, self._won = None, True
            metrics.PRE_VOTES.labels(result="won").inc()
            sync._SyncObj__raftElectionDeadline = 0  # campaign at the next tick
            self._schedule_tick()
