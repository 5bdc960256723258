"""The only module that touches pysyncobj.

One ``SyncObj`` subclass whose replicated method hands the entry bytes to the pure state
machine, and nothing else (rqlite's fsm.go -> command_processor.go). pysyncobj facts this
module is built around (measured; see the brief):

* Its peer protocol is pickle, so a password is always set (refused otherwise upstream of here).
* Journal *and* full dump are always set: a journal without a dump lost all state after
  compaction plus restart.
* The full dump goes through the serializer hooks in our own format (``RaftDump``), written on
  the tick thread: no fork in a process that has gRPC threads, and no pickle of domain state.
* Everything - Raft, sockets, applying, callbacks - runs on its one tick thread, so the
  apply path only applies and hands results back; all other work happens on the event loop.
* Attributes set *before* ``SyncObj.__init__`` are excluded from pysyncobj's own dump and are
  in place before journal replay starts (state set afterwards races with replay).

Learners are pysyncobj *read-only nodes* (``selfNode=None``). Measured on 0.3.17 (see DESIGN.md,
"Membership"): every leader sends them append_entries and snapshots like any follower, they apply
entries, write the journal and - through our hooks - the full dump, and they forward commands; they
never vote, never campaign and never count for commit or quorum. The leader knows them only by an
anonymous connection counter ("0", "1", ...), so their progress is read from their own
``Cluster.Status``, not from the leader's match index. Two upstream defects matter here and are
handled below: the dump's member list contains ``None`` for a read-only node, and a member list
loaded from *our* dump (plain address strings) is never filtered against ``selfNode`` (a Node), so
a voter restarted from a dump counted itself as an unreachable partner.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.monotonic import monotonic
from pysyncobj.node import TCPNode
from pysyncobj.syncobj import _RAFT_STATE
from pysyncobj.version import VERSION as pysyncobj_version

from controlplane.server.config import ServerConfig
from controlplane.state import limits
from controlplane.state.machine import CommandResult, StateMachine
from controlplane.v1 import storage_pb2

log = structlog.get_logger("controlplane.raft")

ROLE_FOLLOWER = "follower"
ROLE_CANDIDATE = "candidate"
ROLE_LEADER = "leader"
# A read-only node: receives the log, never votes (pysyncobj keeps it in its FOLLOWER state).
ROLE_LEARNER = "learner"
_ROLES = {
    _RAFT_STATE.FOLLOWER: ROLE_FOLLOWER,
    _RAFT_STATE.CANDIDATE: ROLE_CANDIDATE,
    _RAFT_STATE.LEADER: ROLE_LEADER,
}

# (results or None, pysyncobj FAIL_REASON); called on the tick thread.
ApplyCallback = Callable[[list[CommandResult] | None, int], None]
DoneCallback = Callable[[int], None]

SUCCESS = FAIL_REASON.SUCCESS


@dataclass(frozen=True)
class RaftStatus:
    role: str
    leader_address: str
    term: int
    commit_index: int
    applied_index: int
    # Index of the last entry in this node's log.
    log_index: int
    log_size: int
    has_quorum: bool
    # Raft address -> connected (from this node's point of view).
    connected: dict[str, bool]
    # Raft address -> match index (only meaningful on the leader).
    match_index: dict[str, int]


class _ReplicatedLog(SyncObj):  # type: ignore[misc]
    def __init__(
        self,
        self_address: str | None,
        partners: Sequence[str],
        conf: SyncObjConf,
        apply: Callable[[bytes], list[CommandResult]],
    ) -> None:
        self._apply = apply  # before super().__init__: see the module docstring
        super().__init__(self_address, list(partners), conf)

    @replicated  # type: ignore[misc]
    def apply_entry(self, entry: bytes) -> list[CommandResult]:
        return self._apply(entry)


class RaftNode:
    """The pysyncobj instance behind a small, typed surface.

    ``state_lock`` serialises the tick thread's applies against readers on the event loop.
    ``on_applied`` runs on the tick thread after every entry and after a dump is loaded; it must
    be cheap (it only schedules work on the event loop).

    ``voter=False`` runs a learner (a pysyncobj read-only node). ``restart(voter=True, ...)`` turns
    it into a voter by restarting pysyncobj as a full node on the same journal and dump: pysyncobj
    cannot change a node's kind in place.
    """

    def __init__(
        self,
        config: ServerConfig,
        machine: StateMachine,
        state_lock: threading.Lock,
        on_applied: Callable[[], None],
        on_role_change: Callable[[str, str], None],
        voter: bool = True,
    ) -> None:
        self._config = config
        self._machine = machine
        self._lock = state_lock
        self._on_applied = on_applied
        self._on_role_change = on_role_change
        self.self_address = config.raft_address
        self._self_node = TCPNode(config.raft_address)
        self._voter = voter
        # Why this server must not count as ready whatever pysyncobj says (a learner switching to
        # voter, a removed server stopping); None when pysyncobj's readiness is the answer.
        self._unready_reason: str | None = None
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self._sync = self._start([peer.raft_address for peer in config.peers])

    def _start(self, partners: Sequence[str]) -> _ReplicatedLog:
        tuning = self._config.raft
        conf = SyncObjConf(
            password=self._config.raft_password or None,
            journalFile=str(self._config.journal_file),
            fullDumpFile=str(self._config.dump_file),
            serializer=self._write_dump,
            deserializer=self._read_dump,
            useFork=False,
            dynamicMembershipChange=True,
            # Our group commit already batches; send each batch at once (0.5 ms instead of a period).
            appendEntriesUseBatch=not tuning.pipeline_appends,
            # Above our largest entry, so pysyncobj never takes its broken chunked path (limits.py).
            appendEntriesBatchSizeBytes=limits.RAFT_MAX_ENTRY_BYTES,
            appendEntriesPeriod=tuning.heartbeat_s,
            raftMinTimeout=tuning.election_min_s,
            raftMaxTimeout=tuning.election_max_s,
            leaderFallbackTimeout=tuning.leader_fallback_s,
            autoTickPeriod=tuning.tick_s,
            connectionRetryTime=tuning.connection_retry_s,
            logCompactionMinEntries=tuning.compaction_min_entries,
            logCompactionMinTime=tuning.compaction_min_s,
            onStateChanged=lambda old, new: self._on_role_change(_ROLES.get(old, "?"), _ROLES.get(new, "?")),
        )
        sync = _ReplicatedLog(self.self_address if self._voter else None, partners, conf, self._apply)
        # What the journal says was committed when it was opened: replaying up to it is local work.
        self._opened_commit_index = int(sync.raftCommitIndex)
        self.log_repairs = _install_log_matching_fix(sync)
        return sync

    # ------------------------------------------------------------ tick thread

    def _apply(self, entry: bytes) -> list[CommandResult]:
        with self._lock:
            results = self._machine.apply_entry(entry)
        self._on_applied()
        return results

    def _write_dump(self, filename: str, raft_data: tuple[Any, Any, Any]) -> None:
        """pysyncobj's serializer hook: (last applied entry, the one before, cluster nodes).

        A read-only node passes itself as ``None`` in the cluster: skipped (otherwise every dump
        attempt fails and pysyncobj retries it on every tick).
        """
        last, previous, cluster = raft_data
        with self._lock:
            state = self._machine.snapshot()
        dump = storage_pb2.RaftDump(
            state=state,
            last_applied=storage_pb2.RaftEntry(data=last[0], index=last[1], term=last[2]),
            previous=storage_pb2.RaftEntry(data=previous[0], index=previous[1], term=previous[2]),
            cluster=sorted(node.id for node in cluster if node is not None),
        )
        with open(filename, "wb") as out:
            out.write(dump.SerializeToString())
            out.flush()
            os.fsync(out.fileno())
        log.info("raft_dump_written", index=last[1], term=last[2], bytes=len(state))

    def _read_dump(self, filename: str) -> tuple[Any, Any, list[str]]:
        """pysyncobj's deserializer hook; restores the machine as a side effect."""
        with open(filename, "rb") as dump_file:
            dump = storage_pb2.RaftDump.FromString(dump_file.read())
        with self._lock:
            self._machine.restore(dump.state)
        self._on_applied()
        log.info("raft_dump_loaded", index=dump.last_applied.index, revision=self._machine.revision)
        last, previous = dump.last_applied, dump.previous
        # pysyncobj filters the list with `node != selfNode`, which never matches a plain address:
        # a voter must drop itself, or it counts itself as a partner it can never reach. A learner
        # keeps its own address: it is how it sees that its promotion is in the log (listed_as_voter).
        cluster = [address for address in dump.cluster if address != self.self_address or not self._voter]
        return (
            (last.data, last.index, last.term),
            (previous.data, previous.index, previous.term),
            cluster,
        )

    # ------------------------------------------------------------ any thread

    def submit(self, entry: bytes, callback: ApplyCallback) -> None:
        """Append an entry; ``callback(results, reason)`` runs on the tick thread once applied."""
        self._sync.apply_entry(entry, callback=callback)

    def is_leader(self) -> bool:
        return bool(self._sync._isLeader())

    def leader_address(self) -> str:
        leader = self._sync._getLeader()
        return leader.address if leader is not None else ""

    def term(self) -> int:
        return int(self._sync.raftCurrentTerm)

    def has_quorum(self) -> bool:
        """Connected to a majority of the voters (a learner: of the voters it knows)."""
        return bool(self._sync.hasQuorum)

    def is_ready(self) -> bool:
        """Caught up with a leader at least once since start (its journal and dump are replayed),
        and not held unready (a learner restarting as a voter, a removed server stopping)."""
        return self._unready_reason is None and bool(self._sync.isReady())

    def synced(self) -> bool:
        """pysyncobj's own readiness, whatever hold is in place (used to end the hold)."""
        return bool(self._sync.isReady())

    def unready_reason(self) -> str | None:
        return self._unready_reason

    def hold_unready(self, reason: str | None) -> None:
        """Report not ready for ``reason`` until called again with None."""
        self._unready_reason = reason

    def replayed(self) -> bool:
        """Everything the journal held as committed when it was opened has been applied again."""
        return int(self._sync.raftLastApplied) >= self._opened_commit_index

    @property
    def voter(self) -> bool:
        """Runs as a voting node (False: a learner, a pysyncobj read-only node)."""
        return self._voter

    def listed_as_voter(self) -> bool:
        """A learner whose own log now holds a configuration that includes it: it was promoted.

        pysyncobj applies a configuration entry when it is appended (Raft's rule), so this turns
        true as soon as the leader has sent the promotion, before it commits. In a one-voter
        cluster the promotion cannot commit without this server's ack, so the learner switches now
        rather than at commit.
        """
        # Only once caught up: replaying an old log, a learner re-using a removed server's address
        # passes that server's own "add" entry before its "remove".
        return not self._voter and bool(self._sync.isReady()) and self._self_node in self._sync.otherNodes

    def restart(self, voter: bool, machine: StateMachine, discard_log: bool = False) -> None:
        """Restart pysyncobj as a voter or as a learner, applying into ``machine``.

        Learner -> voter (promotion): on the same journal and dump, so nothing is fetched again.
        Voter -> learner (only for a server outside the configuration): with ``discard_log`` the
        journal and dump are moved aside first - they are not part of the cluster's log (nothing
        counted them towards a commit) and may name this server as a voter - and the learner
        catches up from the leader like a new one.

        Blocking (joins the old tick thread): call it off the event loop. ``machine`` must be fresh:
        the new node replays the dump and journal into it from the start, as on any restart. The
        caller keeps serving its old machine, held unready, until ``synced()``.
        """
        old = self._sync
        partners = sorted(node.id for node in old.otherNodes if node != self._self_node)
        self._unready_reason = "it is restarting its Raft node as a " + ("voter" if voter else "learner")
        old.destroy_synchronous()
        if discard_log:
            journal = self._config.journal_file
            # pysyncobj keeps currentTerm, votedFor and the commit index beside the journal, in
            # JOURNAL.meta: left behind, a term this server inflated while cut off would make it
            # ignore the leader's (lower-term) appends for ever.
            for path in (journal, journal.with_name(journal.name + ".meta"), self._config.dump_file):
                if path.exists():
                    path.replace(path.with_name(path.name + ".discarded"))
        with self._lock:
            self._machine = machine
        self._voter = voter
        sync = self._start(partners or [peer.raft_address for peer in self._config.peers])
        if voter:
            # A freshly promoted voter is as up to date as anyone, so an election it starts before the
            # leader's connection reaches it (pysyncobj retries connections every connection_retry_s)
            # would win and depose a healthy leader. Hold its first election off until the leader has
            # had time to connect; its heartbeats then keep pushing the deadline as for any follower.
            # The tick thread sleeps 0.1 s before its first tick, so this lands before any check.
            tuning = self._config.raft
            grace = 2 * tuning.connection_retry_s + 2 * tuning.election_max_s
            sync._SyncObj__raftElectionDeadline = monotonic() + grace
        self._sync = sync

    def status(self) -> RaftStatus:
        # getStatus reads the tick thread's structures; a membership change can resize a set
        # mid-read. The read is cheap, so retry instead of adding a lock to pysyncobj's hot path.
        for _ in range(5):
            try:
                raw = self._sync.getStatus()
                break
            except RuntimeError:
                continue
        else:
            raw = self._sync.getStatus()
        connected = {self.self_address: True}
        match_index: dict[str, int] = {}
        for key, value in raw.items():
            if key.startswith("partner_node_status_server_"):
                address = key.removeprefix("partner_node_status_server_")
                if address != self.self_address:  # a promoted learner lists itself until it restarts as a voter
                    connected[address] = value == 2
            elif key.startswith("match_idx_server_"):
                match_index[key.removeprefix("match_idx_server_")] = int(value)
        leader = raw.get("leader")
        return RaftStatus(
            role=_ROLES.get(raw["state"], "?") if self._voter else ROLE_LEARNER,
            leader_address=leader.address if leader is not None else "",
            term=int(raw["raft_term"]),
            commit_index=int(raw["commit_idx"]),
            applied_index=int(raw["last_applied"]),
            log_index=self._last_log_index(),
            log_size=int(raw["log_len"]),
            has_quorum=bool(raw["has_quorum"]),
            connected=connected,
            match_index=match_index,
        )

    def _last_log_index(self) -> int:
        # Not in getStatus(); the journal is a list whose entries are (data, index, term).
        raft_log = self._sync._SyncObj__raftLog
        return int(raft_log[-1][1]) if len(raft_log) else 0

    def add_node(self, raft_address: str, done: DoneCallback) -> None:
        self._sync.addNodeToCluster(raft_address, callback=lambda _result, reason: done(reason))

    def remove_node(self, raft_address: str, done: DoneCallback) -> None:
        self._sync.removeNodeFromCluster(raft_address, callback=lambda _result, reason: done(reason))

    def transfer_leadership(self, raft_address: str | None, done: DoneCallback) -> None:
        self._sync.transferLeadership(raft_address, callback=lambda _result, reason: done(reason))

    def destroy(self) -> None:
        self._sync.destroy()

    def destroy_synchronous(self) -> None:
        """Stop pysyncobj and wait for its tick thread (blocking: call it off the event loop)."""
        self._sync.destroy_synchronous()


class LogRepairCounters:
    """How often the pysyncobj fixes below changed a message (exported for tests and metrics)."""

    def __init__(self) -> None:
        self.next_index_kept = 0
        self.duplicate_appends_acked = 0


def _install_log_matching_fix(sync: SyncObj) -> LogRepairCounters:
    """Work around a pysyncobj 0.3.17 bug that makes followers truncate matching, applied entries.

    Leader side: on a successful ack pysyncobj sets ``nextIndex = ack + 1`` unconditionally. With
    pipelined appends (we send every batch at once) an older ack moves nextIndex *backwards*, and
    the leader resends entries the follower already holds.

    Follower side: on any append whose prevLogIdx is behind its last entry, pysyncobj deletes every
    entry after prevLogIdx before adding the new ones - even when they match and are applied. Raft
    forbids that (Figure 2: truncate only on a conflict): a follower that drops entries the leader
    counted as replicated can lose a committed write if the leader then fails.

    The fix wraps the transport's message callback: the leader never lets an ack move nextIndex
    back, and a follower turns an append whose entries it already holds - when its last entry is
    from the sender's term, so by Log Matching its whole log equals the leader's prefix - into a
    heartbeat at its last index, which acks that index without touching the log. Conflicting
    appends (different terms) go through untouched and truncate as Raft requires.
    """
    counters = LogRepairCounters()
    if pysyncobj_version != "0.3.17":  # the patch reads private fields; re-check it on upgrade
        raise RuntimeError(f"controlplane pins pysyncobj 0.3.17 (found {pysyncobj_version}); re-verify raft.py")
    transport = sync._SyncObj__transport
    deliver = sync._SyncObj__onMessageReceived

    def on_message(node: Any, message: Any) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "next_node_idx" and message.get("success") and not message.get("reset"):
            next_index = sync._SyncObj__raftNextIndex
            before = next_index.get(node)
            deliver(node, message)
            if before is not None and next_index.get(node, before) < before:
                next_index[node] = before
                counters.next_index_kept += 1
            return
        if kind == "append_entries" and "prevLogIdx" in message and not message.get("transmission"):
            rewritten = _ack_held_entries(sync, message)
            if rewritten is not None:
                counters.duplicate_appends_acked += 1
                message = rewritten
        deliver(node, message)

    transport.setOnMessageReceivedCallback(on_message)
    return counters


def _ack_held_entries(sync: SyncObj, message: dict[str, Any]) -> dict[str, Any] | None:
    """The append rewritten as a heartbeat at our last index, or None to deliver it unchanged."""
    raft_log = sync._SyncObj__raftLog
    if message["term"] < sync._SyncObj__raftCurrentTerm or len(raft_log) == 0:
        return None
    first_index = raft_log[0][1]
    last_entry = raft_log[-1]
    last_index, last_term = last_entry[1], last_entry[2]
    prev_index = message["prevLogIdx"]
    if prev_index >= last_index or prev_index < first_index or last_term != message["term"]:
        return None
    if raft_log[prev_index - first_index][2] != message["prevLogTerm"]:
        return None
    expected_index = prev_index + 1
    for entry in message.get("entries") or ():
        index, term = entry[1], entry[2]
        if index != expected_index or index > last_index or raft_log[index - first_index][2] != term:
            return None
        expected_index += 1
    return {**message, "prevLogIdx": last_index, "prevLogTerm": last_term, "entries": []}


def describe_failure(reason: int) -> str:
    names = {
        FAIL_REASON.QUEUE_FULL: "the Raft queue is full",
        FAIL_REASON.MISSING_LEADER: "no leader is known",
        FAIL_REASON.DISCARDED: "the entry was discarded by a new leader",
        FAIL_REASON.NOT_LEADER: "this server is not the leader",
        FAIL_REASON.LEADER_CHANGED: "the leader changed",
        FAIL_REASON.REQUEST_DENIED: "the request was denied (another membership change is still committing?)",
    }
    return names.get(reason, f"pysyncobj failure {reason}")
