"""Group commit: every command proposed during one turn of the event loop goes into one log entry.

Why: a Raft round trip costs the same for one command or a thousand, so throughput comes from
putting many concurrent commands in one entry, while a lone command still goes out at once (no
timer). At most ``max_in_flight`` batches are outstanding; while they are, new commands queue up
and leave together as the next batch when one completes, so batches grow with load by
themselves (the classic group-commit shape; gRPC hands each call to its own loop turn, so
"whatever arrived this turn" alone batches almost nothing). On the leader the batch is
stamped with the leader's clock and appended; on a follower the batch is forwarded to the leader
in one ``ProposeCall`` over the authenticated peer plane, where it joins the leader's next batch.

Outcome rules (what the SDK relies on):
* a command the leader never accepted fails with ``NoLeader``/``Unavailable`` (not applied);
* a command handed to Raft whose fate is unknown (timeout, leader change, lost connection to
  the leader mid-call) fails with ``UnknownOutcome``: it may still commit, so the client retries
  with the same request id and the state machine's dedupe answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from controlplane.errors import ControlPlaneError, NoLeader, Shutdown, Unavailable, UnknownOutcome
from controlplane.server import metrics
from controlplane.server.consensus import SUCCESS, Consensus, describe_failure
from controlplane.state.machine import CommandResult, batch_entry
from controlplane.v1 import command_pb2

log = structlog.get_logger("controlplane.proposer")

FORWARD_TIMEOUT_S = 3.0
# How often a follower with forwards in flight checks that their leader still leads. A forward to a
# leader that was deposed (frozen, partitioned: its connection stays open) is abandoned at once,
# not after FORWARD_TIMEOUT_S, so the client retries at the new leader within an election.
LEADER_CHECK_S = 0.1

# Sends commands to the leader at a Raft address and returns their results (the peer plane's
# ProposeCall); raises Unavailable (not sent: nothing applied) or UnknownOutcome (sent, no answer).
Forwarder = Callable[[str, list[command_pb2.Command], float], Awaitable[list[CommandResult]]]


@dataclass
class _Pending:
    command: command_pb2.Command
    future: asyncio.Future[CommandResult]
    size: int = field(default=0)


class Proposer:
    def __init__(
        self,
        node_id: str,
        raft: Consensus,
        leader_address: Callable[[], str],
        forward: Forwarder,
        max_batch_commands: int,
        max_batch_bytes: int,
        commit_timeout_s: float,
        max_in_flight: int = 2,
        leader_client_address: Callable[[], str] = lambda: "",
        now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._node_id = node_id
        #: The time stamped on each batch: the leader's (leader_clock.py), the wall clock in tests.
        self._now_ms = now_ms
        self._raft = raft
        self._leader_address = leader_address  # its Raft address, where forwards go
        self._leader_client_address = leader_client_address  # where its clients should go
        self._forward = forward
        self._max_commands = max_batch_commands
        self._max_bytes = max_batch_bytes
        self._commit_timeout_s = commit_timeout_s
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._queue: list[_Pending] = []
        # Created on the event loop it serves (asking for the running loop per command cost 2%).
        self._loop = asyncio.get_running_loop()
        self._flush_scheduled = False
        # The barrier command still waiting in ``_queue``, which new readers may share; None once
        # it has left in a batch (see barrier()).
        self._queued_barrier: _Pending | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Forwards in flight and the leader each went to; those abandoned on a change of leader.
        self._forwarding: dict[asyncio.Task[None], str] = {}
        self._abandoned: set[asyncio.Task[None]] = set()
        self._leader_watch: asyncio.Task[None] | None = None
        self._closed = False
        self._pauses = 0  # holders of pause(): no batch leaves while any is held

    async def propose(self, command: command_pb2.Command) -> CommandResult:
        """Replicate one command and return its result (which may carry an application error).

        No per-call timer: a gRPC deadline cancels the waiting handler, and every batch has a
        backstop that answers UnknownOutcome after ``commit_timeout_s`` (one timer per batch,
        not per command: this is the hot path).
        """
        return await self._enqueue(command)

    async def propose_many(self, commands: list[command_pb2.Command]) -> list[CommandResult]:
        return list(await asyncio.gather(*(self._enqueue(command) for command in commands)))

    async def barrier(self) -> int:
        """The revision a linearizable read must wait for: every write acknowledged before now.

        Concurrent readers share one barrier command only while it is still queued here, so a
        burst of reads costs one log entry. Once it has left in a batch, a new reader gets a new
        barrier: the one in flight may already hold its place in the leader's log ahead of a write
        that was acknowledged after it left, and a read joining it would miss that write (the stale
        follower reads of issue 13).
        """
        if self._queued_barrier is None or self._queued_barrier.future.done():
            self._queued_barrier = self._enqueue_pending(command_pb2.Command(barrier=command_pb2.Barrier()))
        # shield: one reader giving up must not cancel the barrier the others share.
        try:
            result = await asyncio.shield(self._queued_barrier.future)
        except UnknownOutcome:
            # A barrier changes nothing: for a read, an unknown outcome only means "not ordered".
            raise Unavailable(
                "the read could not be ordered through the leader (it changed or did not answer in time); retry"
            ) from None
        return result.revision

    def pause(self) -> Callable[[], None]:
        """Send no new batch until the returned ``resume`` is called (it is idempotent).

        For a leadership transfer: the target can win its election only if the leader's log stops
        growing, so that the target catches up and no entry lands behind the TimeoutNow (etcd
        drops proposals during a transfer for the same reason). Commands queue meanwhile and leave,
        to whoever leads by then, on resume; batches already sent go on to their outcome.
        """
        self._pauses += 1
        resumed = False

        def resume() -> None:
            nonlocal resumed
            if resumed:
                return
            resumed = True
            self._pauses -= 1
            if self._queue and not self._closed:
                self._schedule_flush(self._loop)

        return resume

    @property
    def in_flight(self) -> int:
        """Batches sent (appended here or forwarded) whose outcome is not known yet."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Commands waiting for a batch slot (sampled for ``controlplane_proposals_queued``)."""
        return len(self._queue)

    def close(self) -> None:
        self._closed = True
        _fail(self._queue, Shutdown("the server is shutting down; retry on another"))
        self._queue.clear()
        for task in self._tasks:
            task.cancel()

    # ------------------------------------------------------------------ internals

    def _enqueue(self, command: command_pb2.Command) -> asyncio.Future[CommandResult]:
        return self._enqueue_pending(command).future

    def _enqueue_pending(self, command: command_pb2.Command) -> _Pending:
        loop = self._loop
        pending = _Pending(command, loop.create_future(), command.ByteSize())
        if self._closed:
            _fail([pending], Shutdown("the server is shutting down; retry on another"))
            return pending
        self._queue.append(pending)
        self._schedule_flush(loop)
        return pending

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._flush_scheduled and self._in_flight < self._max_in_flight:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _take_slot(self, batch: list[_Pending]) -> Callable[[], None]:
        """Occupy an in-flight slot for ``batch``; returns its release, which is idempotent.

        The backstop fires after the commit timeout if the batch is still unresolved (pysyncobj
        never called back, e.g. this node was cut off mid-commit, or the leader never answered):
        it answers UnknownOutcome and frees the slot, since a leaked slot would wedge every write.
        """
        loop = self._loop
        self._in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            backstop.cancel()
            self._in_flight -= 1
            if self._queue and not self._closed:
                self._schedule_flush(loop)

        def expire() -> None:
            _fail(
                batch,
                UnknownOutcome(
                    f"the write was proposed but not confirmed within {self._commit_timeout_s:.0f} s; "
                    "it may still commit. Retry with the same request id."
                ),
            )
            release()

        backstop = loop.call_later(self._commit_timeout_s, expire)
        return release

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pauses:
            return  # resume() schedules the next flush
        while self._queue and self._in_flight < self._max_in_flight:
            size = count = 0
            for pending in self._queue:
                if count and (count >= self._max_commands or size + pending.size > self._max_bytes):
                    break
                count += 1
                size += pending.size
            batch, self._queue = self._queue[:count], self._queue[count:]
            if self._queued_barrier is not None and any(p is self._queued_barrier for p in batch):
                self._queued_barrier = None  # it has left: no reader may join it any more
            batch = [p for p in batch if not p.future.done()]
            if batch:
                self._dispatch(batch)

    def _dispatch(self, batch: list[_Pending]) -> None:
        metrics.BATCH_COMMANDS.observe(len(batch))
        if self._raft.is_leader():
            self._append(batch)
            return
        leader = self._leader_address()
        if not leader:
            _fail(batch, NoLeader("no leader is known (an election is running or quorum is lost); retry shortly"))
            return
        release = self._take_slot(batch)
        task = self._loop.create_task(self._forward_batch(leader, batch))
        self._tasks.add(task)
        self._forwarding[task] = leader
        task.add_done_callback(self._forward_done)
        task.add_done_callback(lambda _task: release())
        if self._leader_watch is None:
            self._leader_watch = self._loop.create_task(self._watch_leader())
            self._tasks.add(self._leader_watch)
            self._leader_watch.add_done_callback(self._tasks.discard)

    def _forward_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._forwarding.pop(task, None)
        self._abandoned.discard(task)

    async def _watch_leader(self) -> None:
        """Abandon the forwards whose leader no longer leads (one watcher for all of them)."""
        try:
            while self._forwarding:
                await asyncio.sleep(LEADER_CHECK_S)
                current = self._leader_address()
                for task, leader in list(self._forwarding.items()):
                    if leader != current and not task.done() and task not in self._abandoned:
                        self._abandoned.add(task)
                        task.cancel()
        finally:
            self._leader_watch = None

    def _append(self, batch: list[_Pending]) -> None:
        loop = self._loop
        entry = batch_entry(self._now_ms(), self._node_id, (p.command for p in batch))

        release = self._take_slot(batch)

        def on_applied(results: list[CommandResult] | None, reason: int) -> None:  # inside a Raft tick
            loop.call_soon(self._resolve, release, batch, results, reason)

        self._raft.submit(entry, on_applied)

    @staticmethod
    def _resolve(
        release: Callable[[], None], batch: list[_Pending], results: list[CommandResult] | None, reason: int
    ) -> None:
        release()
        if reason == SUCCESS and results is not None and len(results) == len(batch):
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
            return
        error: ControlPlaneError
        if reason == SUCCESS:
            error = UnknownOutcome("the batch was applied but its results were lost; retry with the same id")
        else:
            error = UnknownOutcome(f"{describe_failure(reason)}; retry with the same request id")
        _fail(batch, error)

    async def _forward_batch(self, leader: str, batch: list[_Pending]) -> None:
        commands = [p.command for p in batch]
        try:
            # Bounded well below the commit timeout: a leader that hangs without closing its
            # connection must not hold this batch slot (and the writes queued behind it) for long.
            results = await self._forward(leader, commands, min(self._commit_timeout_s, FORWARD_TIMEOUT_S))
        except asyncio.CancelledError:
            if asyncio.current_task() not in self._abandoned:
                raise
            now = self._leader_address() or "none known yet"
            _fail(
                batch,
                UnknownOutcome(
                    f"the leader {leader} lost the leadership (now: {now}) while this write was forwarded to it; "
                    "it may have been applied: retry with the same request id",
                    # The client retries at the new leader at once, rather than here or elsewhere.
                    leader_address=self._leader_client_address(),
                ),
            )
            return
        except ControlPlaneError as exc:
            # Unavailable/NoLeader: nothing was sent or the leader decided (not applied);
            # UnknownOutcome: the call broke in transit and the leader may have appended the batch.
            _fail(batch, exc)
            return
        except Exception as exc:  # never leave a caller hanging on a bug
            log.exception("forward_failed", leader=leader)
            _fail(batch, UnknownOutcome(f"forwarding failed: {exc}"))
            return
        if len(results) != len(batch):
            # A leader answering with fewer results than commands is a bug; never leave a caller waiting.
            log.error("forward_answer_mismatch", leader=leader, commands=len(batch), results=len(results))
            _fail(batch, UnknownOutcome("the leader's answer did not match the commands sent; retry with the same id"))
            return
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)


def _fail(batch: list[_Pending], error: ControlPlaneError) -> None:
    failed = 0
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(error)
            failed += 1
    if failed:
        metrics.count_failure(error, failed)
