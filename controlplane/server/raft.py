"""The only module that touches pysyncobj.

One ``SyncObj`` subclass whose replicated method hands the entry bytes to the pure state
machine, and nothing else (rqlite's fsm.go -> command_processor.go). pysyncobj facts this
module is built around (measured against pysyncobj 0.3.17):

* Its own peer protocol is pickle on every interface: we replace the transport
  (``peer_transport.py``: protobuf frames over mutual TLS, bound to the configured address).
* Its journal is a memory-mapped file that is never flushed: we replace it
  (``journal.py``: append-only, checksummed, one fdatasync per group-committed batch, term and
  vote synced before they are used). Every Raft frame but the leader's appends waits, in order,
  for the fdatasync that covers the records appended before it (run in a worker thread: group
  commit across batches); the leader's appends leave at once and the acks they draw wait for the
  leader's own sync instead. So nothing is acknowledged, voted or counted towards a commit
  before it is on disk, and the leader's and followers' fdatasyncs overlap.
* Journal *and* full dump are always set: a journal without a dump lost all state after
  compaction plus restart.
* The full dump goes through the serializer hooks in our own format (``RaftDump``), written
  atomically (temp file, fsync, rename, directory fsync): no fork in a process that has gRPC
  threads, and no pickle of domain state.
* Raft runs on the server's event loop (``autoTick`` off): a driver task ticks every
  ``tick_s``, and a tick is scheduled at once after a submit or a received message, so a write
  does not wait for the next period. No second thread contends for the GIL, and the apply path,
  callbacks and socket I/O all run on the loop, one at a time.
* Attributes set *before* ``SyncObj.__init__`` are excluded from pysyncobj's own dump and are
  in place before journal replay starts (state set afterwards races with replay).

Learners are pysyncobj *read-only nodes* (``selfNode=None``). Measured on 0.3.17 (see DESIGN.md,
"Membership"): every leader sends them append_entries and snapshots like any follower, they apply
entries, write the journal and - through our hooks - the full dump, and they forward commands; they
never vote, never campaign and never count for commit or quorum. The peer transport names a
learner's connection ``learner:<id>``, but pysyncobj keeps no match index for read-only nodes, so
their progress is read from their own ``Cluster.Status``. Two upstream defects matter here and are
handled below: the dump's member list contains ``None`` for a read-only node, and a member list
loaded from *our* dump (plain address strings) is never filtered against ``selfNode`` (a Node), so
a voter restarted from a dump counted itself as an unreachable partner.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from time import perf_counter
from typing import Any, NoReturn

import pysyncobj.syncobj
import structlog
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.monotonic import monotonic
from pysyncobj.node import TCPNode
from pysyncobj.syncobj import _RAFT_STATE
from pysyncobj.version import VERSION as pysyncobj_version

from controlplane.server import metrics
from controlplane.server.config import ServerConfig
from controlplane.server.consensus import (
    ROLE_CANDIDATE,
    ROLE_FOLLOWER,
    ROLE_LEADER,
    ROLE_LEARNER,
    SUCCESS,
    ApplyCallback,
    DoneCallback,
    Outcome,
    PeerAccess,
    RaftStatus,
)
from controlplane.server.datadir import ensure_private_directory
from controlplane.server.journal import DurableJournal, fsync_directory, migrate_legacy_journal, write_file_atomically
from controlplane.server.peer_transport import PeerSettings, PeerTransport, transport_factory
from controlplane.server.prevote import PreVote
from controlplane.server.raft_codec import MAX_RAFT_MESSAGE_BYTES
from controlplane.server.recovery import configured_partners
from controlplane.state import limits
from controlplane.state.machine import CommandResult, StateMachine
from controlplane.v1 import storage_pb2

log = structlog.get_logger("controlplane.raft")

_ROLES = {
    _RAFT_STATE.FOLLOWER: ROLE_FOLLOWER,
    _RAFT_STATE.CANDIDATE: ROLE_CANDIDATE,
    _RAFT_STATE.LEADER: ROLE_LEADER,
}
# The node reads outcomes as consensus.Outcome: they must be pysyncobj's numbers.
assert {o.name: int(o) for o in Outcome} == {k: v for k, v in vars(FAIL_REASON).items() if k.isupper()}

# A sync after this long without one runs on the loop, not in a worker thread (_pipeline_sync).
INLINE_SYNC_AFTER_IDLE_S = 0.002

# Exit status of a server that stopped because its journal could not be written or its dump loaded.
EXIT_STORAGE_FAILED = 3
# Exit status of a server whose Raft tick kept failing (a bug; see RaftNode._tick).
EXIT_RAFT_FAILED = 4
# Consecutive failed ticks before the server stops (ticks run every tick_s, 10 ms by default).
TICK_FAILURES_BEFORE_EXIT = 500


# pysyncobj creates its journal inside SyncObj.__init__ from a module-level factory; the one way
# to hand it ours is to replace that factory for the duration of the constructor.
_journal_lock = threading.Lock()


@contextlib.contextmanager
def _journal_for_construction(journal: DurableJournal) -> Iterator[None]:
    with _journal_lock:
        original = pysyncobj.syncobj.createJournal
        pysyncobj.syncobj.createJournal = lambda _path=None: journal
        try:
            yield
        finally:
            pysyncobj.syncobj.createJournal = original


class _ReplicatedLog(SyncObj):  # type: ignore[misc]
    def __init__(
        self,
        self_address: str | None,
        partners: Sequence[str],
        conf: SyncObjConf,
        apply: Callable[[bytes], list[CommandResult]],
        transport: Callable[[Any, Any, Any], PeerTransport],
    ) -> None:
        self._apply = apply  # before super().__init__: see the module docstring
        super().__init__(self_address, list(partners), conf, transportClass=transport)

    @replicated  # type: ignore[misc]
    def apply_entry(self, entry: bytes) -> list[CommandResult]:
        return self._apply(entry)


class RaftNode:  # implements consensus.Consensus
    """The pysyncobj instance behind a small, typed surface, ticked on the running event loop.

    Create it on the loop. ``state_lock`` serialises applies against readers (both on the loop
    now; kept so that a read of several tables is one consistent view by construction).
    ``on_applied`` runs after every entry and after a dump is loaded; it must be cheap.

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
        *,
        peers: PeerAccess,
    ) -> None:
        self._config = config
        self._peers = peers
        self._loop = asyncio.get_running_loop()
        self._tick_scheduled = False
        self._tick_failures = 0  # consecutive ticks that raised (see _tick)
        self._driver: asyncio.Task[None] | None = None
        self._destroyed = False
        self._dump_renamed_unsynced = False
        # Frames waiting for the fdatasync that covers them: (journal size they need, write).
        self._held: collections.deque[tuple[int, Callable[[], bool]]] = collections.deque()
        # Acks a leader received before its own copy of what they acknowledge was durable:
        # (journal size they need, delivery), delivered in order once the fdatasync covers it.
        self._acks_held: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()
        self._sync_in_flight = False
        self._last_sync_done = 0.0  # loop time the last fdatasync returned
        self._announced = (0, 0)  # (last log index, commit index) of the last append round we sent
        self._last_tick_at = monotonic()
        # Until when a stall the ticks found keeps answers from memory off (leads_with_recent_majority).
        self._stalled_until = 0.0
        self.election_postponements = 0  # _postpone_election_after_a_stall (tests, logs)
        self._journal: DurableJournal
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
        ensure_private_directory(config.data_dir)
        # A data dir from before the durable journal: its pysyncobj journal is copied into ours (logged there).
        migrate_legacy_journal(config.legacy_journal_file, config.journal_file)
        self._sync = self._start(configured_partners(self._config))
        self._driver = self._loop.create_task(self._drive())

    def _start(self, partners: Sequence[str]) -> _ReplicatedLog:
        tuning = self._config.raft
        self._journal = DurableJournal(
            self._config.journal_file,
            fsync=self._config.durability == "fsync",
            record_synced_size=os.environ.get("CP_TEST_POWER_CUT") == "1",
        )
        conf = SyncObjConf(
            journalFile=str(self._config.journal_file),
            fullDumpFile=str(self._config.dump_file),
            serializer=self._write_dump,
            deserializer=self._read_dump,
            useFork=False,
            autoTick=False,
            dynamicMembershipChange=True,
            # Our group commit already batches: with pipeline_appends the tick sends each batch at once
            # (_announce_progress; 0.5 ms instead of a period), else pysyncobj's heartbeat does.
            appendEntriesUseBatch=True,
            # Above our largest entry, so pysyncobj never takes its broken chunked path (limits.py).
            appendEntriesBatchSizeBytes=limits.RAFT_MAX_ENTRY_BYTES,
            appendEntriesPeriod=tuning.heartbeat_s,
            raftMinTimeout=tuning.election_min_s,
            raftMaxTimeout=tuning.election_max_s,
            leaderFallbackTimeout=tuning.leader_fallback_s,
            connectionRetryTime=tuning.connection_retry_s,
            logCompactionMinEntries=tuning.compaction_min_entries,
            logCompactionMinTime=tuning.compaction_min_s,
            onStateChanged=self._role_changed,
        )
        settings = PeerSettings(
            node_id=self._config.node_id,
            raft_address=self._config.raft_address,
            authorize=self._peers.authorize,
            server_tls=self._peers.server_tls,
            client_tls=self._peers.client_tls,
            max_frame_bytes=MAX_RAFT_MESSAGE_BYTES,
            when_durable=self._when_durable,
            on_activity=self.schedule_tick,
            propose_handler=self._peers.propose_handler,
            connect_retry_s=tuning.connection_retry_s,
        )
        with _journal_for_construction(self._journal):
            sync = _ReplicatedLog(
                self.self_address if self._voter else None, partners, conf, self._apply, transport_factory(settings)
            )
        # pysyncobj writes a snapshot it receives itself and swallows a failed write, so a follower on a
        # full disk neither stops nor catches up (found by the fault suite): receive it ourselves.
        sync._SyncObj__serializer.setTransmissionData = self._receive_snapshot_chunk
        self._incoming_snapshot: Any = None
        self._snapshots_installed = 0
        # What the journal says was committed when it was opened: replaying up to it is local work.
        self._opened_commit_index = int(sync.raftCommitIndex)
        # A gap in the ticks counts as a stall only once this pysyncobj instance has ticked and
        # replayed its journal (pysyncobj applies the replay inside its first ticks).
        self._ticked = False
        self.log_repairs = _install_log_matching_fix(sync, lambda: self._snapshots_installed)
        self._install_ack_hold(sync)
        self._pre_vote: PreVote | None = None
        if tuning.pre_vote:
            self._pre_vote = PreVote(sync, tuning.election_min_s, tuning.election_max_s, self.schedule_tick)
            self._pre_vote.install()  # outermost: pre-votes never reach the wrappers above or pysyncobj
        return sync

    def _role_changed(self, old: int, new: int) -> None:
        """pysyncobj's state callback (inside a tick, on the loop)."""
        old_role, new_role = _ROLES.get(old, "?"), _ROLES.get(new, "?")
        if old_role == ROLE_LEADER and new_role != ROLE_LEADER:
            self._release_waiting_commits()
        self._on_role_change(old_role, new_role)

    def _release_waiting_commits(self) -> None:
        """Answer every entry this server appended as leader and still waits on: LEADER_CHANGED.

        pysyncobj answers them only once it applies their index, which for a leader cut off from
        its majority is after the partition heals: its clients waited for their own timeouts (3 s
        per SDK attempt, the longest no-write windows of the fault suite's partition-leader). The
        outcome is unknown (an entry may still commit under the next leader), which is exactly what
        the proposer reports (UnknownOutcome): the client retries at once, elsewhere, with the same
        request id, and the state machine's dedupe answers if the first one did commit.
        """
        waiting = self._sync._SyncObj__commandsWaitingCommit
        released = [callback for subscribers in waiting.values() for _term, callback in subscribers]
        waiting.clear()
        for callback in released:
            callback(None, Outcome.LEADER_CHANGED)
        if released:
            log.info("raft_waiting_commits_released", entries=len(released))

    def _install_ack_hold(self, sync: _ReplicatedLog) -> None:
        """Route a leader's incoming acks through ``_deliver_ack``. pysyncobj's ack carries no term,
        so one held across a change of leadership is dropped: it speaks of a log that may no longer
        be this leader's (a fresh one arrives with the next append). So is one from a peer the
        leader no longer tracks: a learner's link, held while the learner was promoted (it is
        tracked under its voter identity from then on), or a server removed meanwhile. pysyncobj
        reads its match index unguarded: a KeyError out of the tick."""
        transport = sync._SyncObj__transport
        on_message = transport._onMessageReceivedCallback

        def hold_acks(node: Any, message: Any) -> None:
            if not (isinstance(message, dict) and message.get("type") == "next_node_idx" and sync._isLeader()):
                on_message(node, message)
                return
            term = sync.raftCurrentTerm

            def deliver() -> None:
                tracked = node in sync._SyncObj__raftMatchIndex
                if sync._isLeader() and sync.raftCurrentTerm == term and tracked:
                    on_message(node, message)

            self._deliver_ack(deliver)

        transport.setOnMessageReceivedCallback(hold_acks)

    # ------------------------------------------------------------ the tick, on the loop

    async def _drive(self) -> None:
        """The periodic tick (heartbeats, elections, commits)."""
        period = self._config.raft.tick_s
        while not self._destroyed:
            self._tick()
            await asyncio.sleep(period)

    def schedule_tick(self) -> None:
        """Tick at the next loop turn (coalesced): a submitted command or a received ack is acted on
        now, not at the next period."""
        if not self._tick_scheduled and not self._destroyed:
            self._tick_scheduled = True
            self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        """One tick; it never raises. An exception is a bug: one is logged and the ticks go on, as
        pysyncobj's own thread did (an exception out of ``_drive`` ended the periodic ticks: the
        server still acked appends but never applied, campaigned or led again). A tick failing
        ``TICK_FAILURES_BEFORE_EXIT`` times in a row stops the process instead: an entry whose
        apply keeps raising must not be half-applied again and again."""
        self._tick_scheduled = False
        if self._destroyed:
            return
        try:
            self._tick_once()
        except Exception:
            self._tick_failures += 1
            if self._tick_failures == 1 or self._tick_failures % 100 == 0:
                log.exception("raft_tick_failed", in_a_row=self._tick_failures)
            if self._tick_failures >= TICK_FAILURES_BEFORE_EXIT:
                log.critical(
                    "raft_tick_failing",
                    in_a_row=self._tick_failures,
                    hint="a bug: this server stops rather than go on half-ticking; report the log, then restart it",
                )
                sys.stderr.flush()
                os._exit(EXIT_RAFT_FAILED)
        else:
            self._tick_failures = 0

    def _tick_once(self) -> None:
        self._postpone_election_after_a_stall()
        if self._pre_vote is not None:
            self._pre_vote.tick(self._do_tick)
        else:
            self._do_tick()
        if self._config.raft.pipeline_appends and self._sync._isLeader():
            self._announce_progress()
        if self._voter and not self._sync.otherNodes:
            # A lone voter counts only itself: what this tick appended is durable before the next
            # tick can commit it.
            self._sync_journal()
            self._release_held(self._journal.appended_size)
        else:
            self._pipeline_sync()

    def _do_tick(self) -> None:
        self._sync.doTick(0)

    def _postpone_election_after_a_stall(self) -> None:
        """A server that did not run for longer than the shortest election timeout (SIGSTOP, a
        paused VM, a stalled loop) cannot judge the leader's silence: what the leader sent
        meanwhile is still unread in its sockets, and the tick runs before the readers do. It
        gets a fresh election timeout instead of campaigning at once with a higher term, which
        would depose a healthy leader (measured: every SIGSTOP/SIGCONT of a follower cost an
        election). If the leader really is gone, it campaigns one timeout later."""
        now = monotonic()
        gap = now - self._last_tick_at
        self._last_tick_at = now
        ticked, self._ticked = self._ticked, self.replayed()
        if gap <= self._config.raft.election_min_s:
            return
        self._stalled_until = now + self._config.raft.leader_fallback_s  # see leads_with_recent_majority
        sync = self._sync
        postpone = sync._SyncObj__raftElectionDeadline < now and not sync._isLeader()
        if postpone:
            sync._SyncObj__raftElectionDeadline = now + sync._SyncObj__generateRaftTimeout()
            self.election_postponements += 1
        if ticked:  # not start-up: a tick since the replay, then this gap
            # A leader's followers heard nothing for as long and may have campaigned (a leader
            # resumed reads their higher term before this tick and is already a follower here).
            metrics.LOOP_STALLS.inc()
            log.warning("raft_loop_stalled", stalled_s=round(gap, 3), election_postponed=postpone)

    def _announce_progress(self) -> None:
        """One append round per tick in which the log grew or the commit index moved.

        pysyncobj's own pipelining (``appendEntriesUseBatch=False``) sends a round for every
        command it appends and another after every apply: two rounds, and two acks per follower,
        for each batch, where one carries both the new entries and the new commit index. Rounds
        for heartbeats stay pysyncobj's (every ``heartbeat_s``).
        """
        progress = (self._last_log_index(), self._sync.raftCommitIndex)
        if progress != self._announced:
            self._announced = progress
            self._sync._SyncObj__sendAppendEntries()

    # ------------------------------------------------------------ durability

    def _when_durable(self, write: Callable[[], bool], kind: str | None) -> bool:
        """Run ``write`` (a frame to a peer) once every record appended so far is on disk.

        Nothing leaves before the records it may acknowledge or vote on are durable: a follower's
        ack and a vote wait, in order, for the fdatasync covering what was appended before them;
        it runs in a worker thread while the loop goes on, and covers every record appended
        before it started (group commit across batches and ticks).

        The leader's appends are the exception: they leave at once, so the leader's fdatasync
        and its followers' run at the same time (the Raft thesis, 10.2.1; etcd does the same).
        What keeps the leader from counting an entry it has not synced is on the other side:
        an ack reaching the leader waits for the leader's own sync (``_deliver_ack``).
        """
        if not self._held and (kind == "append_entries" or not self._journal.dirty):
            return write()
        self._held.append((self._journal.appended_size, write))
        self._pipeline_sync()
        return True

    def _deliver_ack(self, deliver: Callable[[], None]) -> None:
        """Hand a follower's ack to pysyncobj once this leader's journal holds, durably, every
        record appended so far - which includes every entry the ack can acknowledge, since a
        follower only holds entries this leader sent after appending them. pysyncobj counts
        the leader itself towards every commit, so an ack delivered earlier could commit an
        entry that only the follower has on disk."""
        if not self._acks_held and not self._journal.dirty:
            deliver()
            return
        self._acks_held.append((self._journal.appended_size, deliver))
        self._pipeline_sync()

    def _pipeline_sync(self) -> None:
        """Start one fdatasync off the loop unless one is running; release what it covers when done.

        After an idle gap (no sync for ``INLINE_SYNC_AFTER_IDLE_S``) the sync runs on the loop
        instead: nothing else is waiting for the loop then, and the hand-off to a worker thread
        and back (two wake-ups and a GIL switch: 0.3-0.5 ms measured, twice a 0.18 ms fdatasync)
        would be most of a lone writer's latency. Under load syncs follow one another with no
        gap, so they stay off the loop and group-commit.
        """
        if self._sync_in_flight:
            return
        if not self._journal.dirty:
            self._release_held(self._journal.appended_size)
            return
        if self._config.durability != "fsync":
            self._sync_journal()  # writes, never fdatasyncs: cheap enough for the loop
            self._release_held(self._journal.appended_size)
            return
        if self._loop.time() - self._last_sync_done >= INLINE_SYNC_AFTER_IDLE_S:
            self._sync_journal()
            self._last_sync_done = self._loop.time()
            self._release_held(self._journal.appended_size)
            return
        journal = self._journal
        try:
            if self._dump_renamed_unsynced:
                fsync_directory(self._config.dump_file.parent)
                self._dump_renamed_unsynced = False
            started = journal.begin_sync()
        except OSError as exc:
            self._storage_failed(exc)
        if started is None:
            self._release_held(journal.appended_size)
            return
        fd, size = started
        self._sync_in_flight = True
        future = self._loop.run_in_executor(None, _fdatasync_and_close, fd)
        future.add_done_callback(lambda done: self._pipelined_sync_done(journal, size, done))

    def _pipelined_sync_done(self, journal: DurableJournal, size: int, done: asyncio.Future[None]) -> None:
        self._sync_in_flight = False
        self._last_sync_done = self._loop.time()
        if journal is not self._journal or self._destroyed:
            return  # a restart or a stop synced and dropped everything meanwhile
        failure = done.exception()
        if failure is not None:
            journal.fail(failure if isinstance(failure, OSError) else OSError(str(failure)))
            self._storage_failed(failure)
        try:
            journal.finish_sync(size)
        except OSError as exc:
            self._storage_failed(exc)
        self._release_held(size)
        if self._held or self._acks_held or journal.dirty:
            self._pipeline_sync()
        self.schedule_tick()

    def _release_held(self, durable_size: int) -> None:
        held = self._held
        while held and held[0][0] <= durable_size:
            held.popleft()[1]()
        acks = self._acks_held
        if acks and acks[0][0] <= durable_size:
            while acks and acks[0][0] <= durable_size:
                acks.popleft()[1]()
            self.schedule_tick()  # the commit they allow is computed in the tick

    def _sync_journal(self) -> None:
        """Make the journal durable now, on the loop (stopping, restarting, a lone voter, votes)."""
        try:
            if self._dump_renamed_unsynced:
                fsync_directory(self._config.dump_file.parent)
                self._dump_renamed_unsynced = False
            self._journal.sync()
        except OSError as exc:
            self._storage_failed(exc)

    def _storage_failed(self, exc: BaseException) -> NoReturn:
        """Stop the process: after a failed write or fdatasync nobody knows what is on disk, and a
        server that went on would acknowledge, vote and count towards commits on a log it may not
        have (etcd panics on a failed WAL sync for the same reason)."""
        log.critical(
            "journal_write_failed",
            path=str(self._config.journal_file),
            error=str(exc),
            hint="fix the disk (full? read-only?), then restart this server; its peers carry on without it",
        )
        sys.stderr.flush()
        os._exit(EXIT_STORAGE_FAILED)

    # ------------------------------------------------------------ applying and dumps

    def _apply(self, entry: bytes) -> list[CommandResult]:
        with self._lock:
            results = self._machine.apply_entry(entry)
        self._on_applied()
        committed_at = self._journal.committed_at
        if committed_at:  # not an entry replayed from the journal at start
            metrics.APPLY_LATENCY.observe(perf_counter() - committed_at)
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
        write_file_atomically(Path(filename), dump.SerializeToString())
        # pysyncobj renames this temp file over the dump after we return, without syncing the
        # directory; the journal compaction it records next must not be durable before that rename.
        self._dump_renamed_unsynced = True
        log.info("raft_dump_written", index=last[1], term=last[2], bytes=len(state))

    def _read_dump(self, filename: str) -> tuple[Any, Any, list[str]]:
        """pysyncobj's deserializer hook; restores the machine as a side effect.

        Called at start (our own dump) and when a leader installs a snapshot (a file pysyncobj
        wrote from the leader's chunks without syncing it). Either way the file is made durable
        first: pysyncobj clears the journal after an install and acknowledges it, so a dump that
        is not on disk could leave a power-cut server with neither. A dump that cannot be loaded
        stops the server: pysyncobj would swallow the error and acknowledge the install anyway.
        """
        try:
            path = Path(filename)
            with open(path, "rb") as dump_file:
                os.fsync(dump_file.fileno())
                data = dump_file.read()
            os.chmod(path, 0o600)
            fsync_directory(path.parent)
            dump = storage_pb2.RaftDump.FromString(data)
            with self._lock:
                self._machine.restore(dump.state)
        except Exception as exc:
            log.critical(
                "raft_dump_unloadable",
                path=filename,
                error=str(exc) or type(exc).__name__,
                hint="this server cannot load the state its log starts from; move its data dir aside and "
                "re-add it as a new member, or restore it from a backup",
            )
            sys.stderr.flush()
            os._exit(EXIT_STORAGE_FAILED)
        self._on_applied()
        log.info("raft_dump_loaded", index=dump.last_applied.index, revision=self._machine.revision)
        last, previous = dump.last_applied, dump.previous
        self._drop_entries_before((previous.data, previous.index, previous.term), (last.data, last.index, last.term))
        # pysyncobj filters the list with `node != selfNode`, which never matches a plain address:
        # a voter must drop itself, or it counts itself as a partner it can never reach. A learner
        # keeps its own address: it is how it sees that its promotion is in the log (listed_as_voter).
        cluster = [address for address in dump.cluster if address != self.self_address or not self._voter]
        leader = self._sync._getLeader() if not self._voter else None
        if leader is not None and leader.address not in cluster:
            # A learner dials only the voters its configuration lists, and pysyncobj drops every
            # link the new list lacks. A snapshot can predate the voter that sends it (a server
            # that joined since, at an address the snapshot does not list): the learner would hang
            # up on its leader and wait for ever. The sender stays; the log after the snapshot
            # adds it, or removes it, as it happened.
            cluster.append(leader.address)
        return (
            (last.data, last.index, last.term),
            (previous.data, previous.index, previous.term),
            cluster,
        )

    def _receive_snapshot_chunk(self, chunk: tuple[bytes, bool, bool] | None) -> bool:
        """pysyncobj's ``Serializer.setTransmissionData``: one chunk of a snapshot the leader sends.

        True once the whole file is in place as the full dump (pysyncobj then loads it through
        ``_read_dump``, which makes it durable). A chunk out of order is ignored, as pysyncobj does
        (the leader starts over). A failed write stops the server like a failed journal write.
        """
        if chunk is None:
            return False
        data, first, last = chunk
        incoming = self._config.dump_file.with_name(self._config.dump_file.name + ".incoming")
        try:
            if first:
                if self._incoming_snapshot is not None:
                    self._incoming_snapshot.close()
                self._incoming_snapshot = open(incoming, "wb")  # noqa: SIM115 - spans many chunks
            elif self._incoming_snapshot is None:
                return False
            self._incoming_snapshot.write(data)
            if not last:
                return False
            self._incoming_snapshot.close()
            self._incoming_snapshot = None
            os.replace(incoming, self._config.dump_file)
        except OSError as exc:
            self._storage_failed(exc)
        self._snapshots_installed += 1
        return True

    def _drop_entries_before(self, previous: tuple[bytes, int, int], last: tuple[bytes, int, int]) -> None:
        """Finish a compaction that a crash cut short: the dump was written but the journal still
        holds the entries before it.

        pysyncobj keeps the journal only if it starts exactly with the dump's last two entries, and
        otherwise clears it, dropping every entry after the dump too: entries this server may have
        acknowledged. When the journal holds those two entries further in, drop what precedes them.
        """
        journal = self._journal
        for position in range(len(journal) - 1):
            if journal[position] == previous and journal[position + 1] == last:
                if position:
                    journal.deleteEntriesTo(position)
                    log.info("journal_compaction_finished", dropped_entries=position, index=previous[1])
                return

    # ------------------------------------------------------------ the node's surface (on the loop)

    def submit(self, entry: bytes, callback: ApplyCallback) -> None:
        """Append an entry; ``callback(results, reason)`` runs on the loop once applied."""
        submitted = perf_counter()

        def applied(results: list[CommandResult] | None, reason: int) -> None:
            if reason == SUCCESS:  # the commit index moved past the entry just before its apply
                metrics.COMMIT_LATENCY.observe(max(0.0, self._journal.committed_at - submitted))
            callback(results, reason)

        self._sync.apply_entry(entry, callback=applied)
        self.schedule_tick()

    async def propose(self, leader_address: str, commands: list[Any], timeout: float) -> list[CommandResult]:
        """Forward commands to the leader at Raft address ``leader_address`` over the peer plane."""
        return await self._transport().propose(leader_address, commands, timeout)

    def revalidate_peers(self) -> None:
        """Close peer links whose server may no longer connect (after a member directory change)."""
        self._transport().revalidate()

    def _transport(self) -> PeerTransport:
        transport: PeerTransport = self._sync._SyncObj__transport
        return transport

    def is_leader(self) -> bool:
        return bool(self._sync._isLeader())

    def leads_with_recent_majority(self) -> bool:
        """Leads, heard from a majority of the voters within ``leader_fallback_s`` (the rule by which
        pysyncobj's tick steps a leader down, applied now: ``heard_from_majority``), and was not
        frozen lately. A leader frozen past an election timeout (SIGSTOP, a stalled loop) wakes up with
        acks that waited in its sockets: pysyncobj stamps them with the time it reads them, so they
        would pass for fresh answers. So: nothing while no tick ran for the shortest election timeout
        (a wake-up before its first tick), and nothing for ``leader_fallback_s`` after a tick found
        such a stall, by when those stamps are too old to count. A shorter freeze needs neither: with
        Pre-Vote, a follower that acked grants no vote for an election timeout after that ack, so no
        other leader can have been elected while every ack read was sent before the freeze."""
        now = monotonic()
        tuning = self._config.raft
        if now - self._last_tick_at > tuning.election_min_s or now < self._stalled_until:
            return False
        return heard_from_majority(self._sync, tuning.leader_fallback_s)

    def leader_state_is_current(self) -> bool:
        """Leads, has committed an entry of its own term and applied up to its commit index.

        By Raft's Leader Completeness, every entry an earlier leader committed precedes that entry
        in this leader's log, so its state machine then holds every committed decision. Until a
        new leader commits in its own term, an entry committed under the last leader can still be
        unapplied here, or not yet known to be committed.
        """
        sync = self._sync
        if not sync._isLeader():
            return False
        commit = sync.raftCommitIndex
        raft_log = sync._SyncObj__raftLog
        first_index = raft_log[0][1]
        if commit < first_index or sync._SyncObj__raftLastApplied < commit:
            return False
        return bool(raft_log[commit - first_index][2] == sync.raftCurrentTerm)

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

        Call it on the loop (the old transport's sockets are the loop's). ``machine`` must be fresh:
        the new node replays the dump and journal into it from the start, as on any restart. The
        caller keeps serving its old machine, held unready, until ``synced()``.
        """
        old = self._sync
        partners = sorted(node.id for node in old.otherNodes if node != self._self_node)
        self._unready_reason = "it is restarting its Raft node as a " + ("voter" if voter else "learner")
        self._sync_journal()
        self._release_held(self._journal.appended_size)  # their links close with the old transport
        old.destroy()
        _close_pipe_notifier(old)
        if discard_log:
            # The journal holds currentTerm and votedFor too: left behind, a term this server inflated
            # while cut off would make it ignore the leader's (lower-term) appends for ever.
            for path in (self._config.journal_file, self._config.dump_file):
                if path.exists():
                    path.replace(path.with_name(path.name + ".discarded"))
        with self._lock:
            self._machine = machine
        self._voter = voter
        sync = self._start(partners or configured_partners(self._config))
        if voter:
            # A freshly promoted voter is as up to date as anyone, so an election it starts before the
            # leader's connection reaches it (pysyncobj retries connections every connection_retry_s)
            # would win and depose a healthy leader. Hold its first election off until the leader has
            # had time to connect; its heartbeats then keep pushing the deadline as for any follower.
            # Set before the next tick runs, so this lands before any election check.
            tuning = self._config.raft
            grace = 2 * tuning.connection_retry_s + 2 * tuning.election_max_s
            sync._SyncObj__raftElectionDeadline = monotonic() + grace
        self._sync = sync

    def status(self) -> RaftStatus:
        raw = self._sync.getStatus()  # on the loop, like every tick: never read mid-change
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
        """Stop ticking, sync the journal, close every peer connection and the listener (on the loop)."""
        if self._destroyed:
            return
        self._destroyed = True
        if self._driver is not None:
            self._driver.cancel()
        self._sync_journal()
        self._release_held(self._journal.appended_size)
        self._sync.destroy()
        _close_pipe_notifier(self._sync)


def heard_from_majority(sync: SyncObj, within_s: float) -> bool:
    """``sync`` leads and a majority of the voters (itself included) answered it within
    ``within_s``. pysyncobj's tick steps a leader down by this rule, but only when it ticks: a
    leader frozen for longer (SIGSTOP) wakes up still leading and may serve calls that waited in
    its sockets before its next tick, although another leader may have been elected and have judged
    its leases meanwhile. What a leader answers from memory asks this first (with the stall rules of
    ``RaftNode.leads_with_recent_majority``: an answer is stamped when it is read, not when sent)."""
    if not sync._isLeader():
        return False
    deadline = monotonic() - within_s
    others = sync._SyncObj__otherNodes
    last_response = sync._SyncObj__lastResponseTime
    heard = 1 + sum(1 for node in others if last_response.get(node, 0.0) > deadline)
    return heard > (len(others) + 1) / 2


def _fdatasync_and_close(fd: int) -> None:
    """In a worker thread: make the journal's written bytes durable through its own descriptor."""
    try:
        started = perf_counter()
        os.fdatasync(fd)
        metrics.FSYNC_DURATION.observe(perf_counter() - started)
    finally:
        os.close(fd)


def _close_pipe_notifier(sync: SyncObj) -> None:
    """pysyncobj's destroy leaves the wake-up pipe it opens with pipelined appends open (two fds)."""
    notifier = getattr(sync, "_SyncObj__pipeNotifier", None)
    for name in ("_PipeNotifier__pipeR", "_PipeNotifier__pipeW"):
        fd = getattr(notifier, name, None)
        if isinstance(fd, int):
            with contextlib.suppress(OSError):
                os.close(fd)


class LogRepairCounters:
    """How often the pysyncobj fixes below changed a message (exported for tests and metrics)."""

    def __init__(self) -> None:
        self.next_index_kept = 0
        self.repeated_entries_dropped = 0
        self.forwarded_commands_refused = 0
        self.snapshot_commits_undone = 0


def _install_log_matching_fix(sync: SyncObj, snapshots_installed: Callable[[], int]) -> LogRepairCounters:
    """Work around a pysyncobj 0.3.17 bug that makes followers truncate matching, applied entries.

    Leader side: on a successful ack pysyncobj sets ``nextIndex = ack + 1`` unconditionally. With
    pipelined appends (we send every batch at once) an older ack moves nextIndex *backwards*, and
    the leader resends entries the follower already holds.

    Follower side: on any append whose prevLogIdx is behind its last entry, pysyncobj deletes every
    entry after prevLogIdx before adding the new ones - even when they match and are applied. Raft
    forbids that (Figure 2: truncate only on a conflict): a follower that drops entries the leader
    counted as replicated can lose a committed write if the leader then fails.

    The fix wraps the transport's message callback: the leader never lets an ack move nextIndex
    back, and a follower drops from an append the entries it already holds (``_ack_held_entries``):
    what is left appends after its last entry, or acks it as a heartbeat, without touching the log.
    Conflicting appends (different terms) go through untouched and truncate as Raft requires.
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
        if kind == "apply_command":
            # pysyncobj's own forwarding (a follower's queued entry, sent on when it lost the lead):
            # it would append a batch stamped by a server that no longer leads, bypassing the checks
            # Node.propose_forwarded makes (leader-only commands). Writes travel as ProposeCall.
            if message.get("request_id") is not None:
                transport.send(
                    node,
                    {
                        "type": "apply_command_response",
                        "request_id": message["request_id"],
                        "error": FAIL_REASON.NOT_LEADER,
                    },
                )
            counters.forwarded_commands_refused += 1
            return
        if kind == "append_entries" and "serialized" in message:
            committed, installed = sync._SyncObj__raftCommitIndex, snapshots_installed()
            deliver(node, message)
            if snapshots_installed() == installed and sync._SyncObj__raftCommitIndex > committed:
                sync._SyncObj__raftCommitIndex = committed
                sync._SyncObj__raftLog.setRaftCommitIndex(committed)
                counters.snapshot_commits_undone += 1
            return
        if kind == "append_entries" and "prevLogIdx" in message and not message.get("transmission"):
            rewritten = _ack_held_entries(sync, message)
            if rewritten is not None:
                counters.repeated_entries_dropped += 1
                message = rewritten
        deliver(node, message)

    transport.setOnMessageReceivedCallback(on_message)
    return counters


def _ack_held_entries(sync: SyncObj, message: dict[str, Any]) -> dict[str, Any] | None:
    """The append without the entries this follower already holds, or None to deliver it unchanged.

    Every entry of the message up to our last index must match ours (same index and term, so by
    Log Matching the same entry). When the message reaches past our last index, it becomes an
    append of only the entries after it. When it ends before, it becomes a heartbeat at our last
    index, which claims that our later entries match the leader's too: true only when our last
    entry is from the sender's term (a leader's log holds every entry of its own term it sent).
    """
    raft_log = sync._SyncObj__raftLog
    if message["term"] < sync._SyncObj__raftCurrentTerm or len(raft_log) == 0:
        return None
    first_index = raft_log[0][1]
    last_entry = raft_log[-1]
    last_index, last_term = last_entry[1], last_entry[2]
    prev_index = message["prevLogIdx"]
    if prev_index is None:  # pysyncobj sends None when the follower's next index is past the log
        return None
    if prev_index >= last_index or prev_index < first_index:
        return None
    if raft_log[prev_index - first_index][2] != message["prevLogTerm"]:
        return None
    entries = list(message.get("entries") or ())
    matched_through = prev_index
    for position, entry in enumerate(entries):
        index, term = entry[1], entry[2]
        if index != matched_through + 1:
            return None
        if index > last_index:  # the rest is new to us: append only that
            return {**message, "prevLogIdx": last_index, "prevLogTerm": last_term, "entries": entries[position:]}
        if raft_log[index - first_index][2] != term:
            return None  # a conflict: pysyncobj truncates, as Raft requires
        matched_through = index
    if matched_through == last_index or last_term == message["term"]:
        return {**message, "prevLogIdx": last_index, "prevLogTerm": last_term, "entries": []}
    return None
