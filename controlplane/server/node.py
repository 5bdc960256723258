"""One server: the state machine, its Raft log and the transport-neutral request handlers.

Layering (docs/architecture.md): gRPC servicers (services/) parse and answer; the handlers here decide; the
state machine applies. Handlers raise ``controlplane.errors`` exceptions and never know about
gRPC status codes.

Threads: Raft ticks on the asyncio event loop too (raft.py), so applies and requests take turns
on one thread; ``state_lock`` still brackets every apply and every multi-table read, so a view
is consistent by construction.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf.message import DecodeError

from controlplane import __version__
from controlplane.errors import (
    ControlPlaneError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NoLeader,
    OutOfRange,
    Unavailable,
    UnknownOutcome,
    error_from_result,
)
from controlplane.grpc_options import CHANNEL_OPTIONS
from controlplane.server import metrics
from controlplane.server.client_listener import peer_channel_credentials
from controlplane.server.cluster_changes import ClusterChanges
from controlplane.server.config import ConfigError, ServerConfig
from controlplane.server.consensus import (
    ROLE_LEADER,
    ROLE_LEARNER,
    Consensus,
    ConsensusFactory,
    PeerAccess,
)
from controlplane.server.datadir import ensure_private_directory
from controlplane.server.housekeeping import Autopilot, Housekeeper
from controlplane.server.indexer import Indexer
from controlplane.server.leader_clock import LeaderClock
from controlplane.server.own_membership import OwnMembership
from controlplane.server.proposer import Proposer
from controlplane.server.renewals import LeaderRenewals
from controlplane.state import levels, limits
from controlplane.state.machine import CommandResult, SnapshotError, StateMachine, parse_snapshot
from controlplane.state.membership import ACTIVE as NODE_ACTIVE
from controlplane.state.membership import LEAVING as NODE_LEAVING
from controlplane.state.refusal import Refused
from controlplane.v1 import (
    cluster_pb2,
    command_pb2,
    common_pb2,
    kv_pb2,
    leases_pb2,
    membership_pb2,
    ports_pb2,
    watch_pb2,
)

log = structlog.get_logger("controlplane.node")
#: How far the leader's time may drift from its wall clock before it says so: a step, not NTP's slew
#: or a leap second.
CLOCK_STEP_WARNING_S = 2.0

DEFAULT_READ_TIMEOUT_S = 5.0
_STOPPING = "the server is shutting down; retry on another"
# Commands only the leader's own housekeeper proposes; Peer.Propose refuses them.
LEADER_ONLY_COMMANDS = frozenset({"lease_expire", "lease_checkpoint", "service_reap", "set_cluster_level"})
BACKUP_FORMAT_VERSION = 1

_ROLE_ENUM = {
    "follower": cluster_pb2.ROLE_FOLLOWER,
    "candidate": cluster_pb2.ROLE_CANDIDATE,
    "leader": cluster_pb2.ROLE_LEADER,
    "learner": cluster_pb2.ROLE_LEARNER,
}

# Why this process stopped on its own (it learned it was removed); `cpctl serve` turns it into a
# non-zero exit status. Module state because app.serve owns the process lifecycle and returns
# nothing; None while the server stops only when told to.


def _stop_process() -> None:
    """The default way a removed server stops: a graceful SIGTERM to itself, as an operator would.

    app.serve installs its SIGTERM handler after ``Node.start``; until then a SIGTERM would kill
    the process without the graceful stop, so wait (briefly) for the handler to be in place.
    """
    deadline = time.monotonic() + 10.0
    while signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None) and time.monotonic() < deadline:
        time.sleep(0.05)  # a blocking poll, run off the event loop; the handler has no notification
    os.kill(os.getpid(), signal.SIGTERM)


Request = TypeVar("Request")
Response = TypeVar("Response")
T = TypeVar("T")
TableT = TypeVar("TableT")


@dataclass(frozen=True)
class MemberAddress:
    id: str
    raft_address: str
    client_address: str


class Node:
    def __init__(
        self,
        config: ServerConfig,
        stop_process: Callable[[], None] = _stop_process,
        consensus: ConsensusFactory | None = None,
    ) -> None:
        """``consensus`` creates the Raft layer: ``raft.RaftNode`` by default; tests pass
        ``memraft.InMemoryNetwork.factory`` to run the node logic without processes."""
        self.config = config
        self._consensus_factory = consensus
        self._stop_process = stop_process
        self.node_id = config.node_id
        self.machine = StateMachine(history_limit=config.history_limit)
        self.state_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        # The waits of watch streams (wait_for_revision's ends_on_stop), which begin_stop ends.
        self._stream_waits: set[asyncio.Future[None]] = set()
        self._stopping = False
        self._waiter_seq = itertools.count()
        self._applied_pending = False
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._book: dict[str, MemberAddress] = {}
        self._book_version = -1
        self._background: set[asyncio.Task[None]] = set()
        self.raft: Consensus
        self.proposer: Proposer
        self.indexer: Indexer | None = None
        self.autopilot = Autopilot(self, config)
        #: Keepalives the leader answered from memory (renewals.py); empty on followers.
        self.renewals = LeaderRenewals()
        #: The time this server stamps and decides by while it leads (leader_clock.py).
        self.leader_clock = LeaderClock()
        self._clock_stepped = False
        #: Membership changes and leadership transfer (cluster_changes.py).
        self.changes = ClusterChanges(self)
        #: This server's own membership: removed? promoted? (own_membership.py).
        self.own = OwnMembership(self, stop_process)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start Raft (as a voter, or as a learner when joining and not yet promoted) and the loops.

        Raises StartupRefused when the data directory belongs to a server removed from its cluster.
        """
        self._loop = asyncio.get_running_loop()
        ensure_private_directory(self.config.data_dir)
        had_journal = self.config.journal_file.exists()
        # A joining server is a learner until promoted; the marker makes a promotion survive restarts.
        voter = not self.config.join or self.config.voter_marker_file.exists()
        factory = self._consensus_factory
        if factory is None:
            from controlplane.server.raft import RaftNode  # pysyncobj, the transport and the journal

            factory = RaftNode
        self.raft = factory(
            self.config,
            self.machine,
            self.state_lock,
            self._on_applied,
            self._on_role_change,
            voter=voter,
            peers=self._peer_access(),
        )
        if not voter:
            log.info("starting_as_learner", hint="admit it with `cpctl cluster members add`; promoted once caught up")
        if had_journal:
            await self.own.refuse_if_removed()
        self.proposer = Proposer(
            node_id=self.node_id,
            raft=self.raft,
            leader_address=self.raft.leader_address,
            leader_client_address=self._leader_client_address,
            forward=self.raft.propose,
            max_batch_commands=self.config.max_batch_commands,
            max_batch_bytes=self.config.max_batch_bytes,
            commit_timeout_s=self.config.commit_timeout_s,
            max_in_flight=self.config.max_in_flight,
            now_ms=self.leader_now_ms,
        )
        self._spawn(self._publish_self())
        self._spawn(self.own.watch())
        self.housekeeper = Housekeeper(self, self.config)
        self._spawn(self.housekeeper.run())
        self._spawn(self.autopilot.run())
        indexer = Indexer(self, self.config.data_dir / "search.sqlite")
        await indexer.start()
        self.indexer = indexer
        self._spawn(indexer.run())

    def begin_stop(self) -> None:
        """A stop's first step, before the client listener's grace period: the watch streams end
        with Unavailable (their clients resume on another server). A stream waits for the next
        revision between events: left alone, each held the grace to its end, and a server with a
        watcher took the whole grace to stop. Every other call in flight keeps its grace: a read
        waiting for a revision, a follower's token read back after its write (a retry elsewhere
        could not show the secret again)."""
        self._stopping = True
        for future in self._stream_waits:
            if not future.done():
                future.set_exception(Unavailable(_STOPPING))

    @property
    def stopping(self) -> bool:
        """``begin_stop`` has run: this server takes no new long-lived streams."""
        return self._stopping

    def until_stop_begins(self) -> asyncio.Future[None]:
        """A future that fails with Unavailable when ``begin_stop`` runs (at once if it ran): what a
        long-lived stream other than a watch (``Calls.Carry``) waits on beside its work, to end
        before the grace instead of holding it. The caller cancels it when its stream ends."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._stopping:
            future.set_exception(Unavailable(_STOPPING))
        else:
            self._stream_waits.add(future)
            future.add_done_callback(self._stream_waits.discard)
        return future

    async def stop(self) -> None:
        self.begin_stop()
        self.proposer.close()
        for task in self._background:
            task.cancel()
        for _, _, future in self._waiters:
            if not future.done():
                future.set_exception(Unavailable(_STOPPING))
        self._waiters.clear()
        await asyncio.gather(*(channel.close() for channel in self._channels.values()), return_exceptions=True)
        if self.indexer is not None:
            await self.indexer.close()
        self.raft.destroy()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Future[None]) -> None:
        """A loop that ends with an error (the indexer, the housekeeper, the membership watch) stops
        doing its job for good: say so loudly instead of letting asyncio drop the exception."""
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed", task=repr(task), exc_info=task.exception())

    # ------------------------------------------------------------------ raft callbacks

    def _on_applied(self) -> None:
        # Inside a Raft tick. Coalesce: one wake-up per loop turn however many entries were applied.
        if not self._applied_pending and self._loop is not None:
            self._applied_pending = True
            self._loop.call_soon(self._wake_waiters)  # on the loop already: no self-pipe wake-up

    def serve_machine(self, fresh: StateMachine) -> None:
        """Answer from ``fresh`` from now on (a restarted Raft node's machine, once it caught up)."""
        with self.state_lock:
            self.machine = fresh
        self._book_version = -1
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        self._applied_pending = False
        revision = self.machine.revision
        while self._waiters and self._waiters[0][0] <= revision:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)

    def _on_role_change(self, old: str, new: str) -> None:  # inside a Raft tick
        metrics.set_role(new)
        log.info("raft_role_changed", old=old, new=new)

    # ------------------------------------------------------------------ cluster view

    def role(self) -> str:
        if self.raft.is_leader():
            return "leader"
        return "follower" if self.raft.voter else ROLE_LEARNER

    def directory(self) -> dict[str, command_pb2.MemberRecord]:
        """The replicated member directory by raft address (copies: safe to keep)."""
        with self.state_lock:
            records = list(self.machine.directory.members.values())
        copies = {}
        for record in records:
            copy = command_pb2.MemberRecord()
            copy.CopyFrom(record)
            copies[copy.raft_address] = copy
        return copies

    def removed_ids(self) -> set[str]:
        with self.state_lock:
            return set(self.machine.directory.removed_members)

    def members(self) -> dict[str, MemberAddress]:
        """Known servers by raft address: the static peer list, overridden by the replicated directory,
        without removed ids (voters and learners alike).

        Cached per directory version: it is read on every response (the leader hint).
        """
        version = self.machine.directory.version
        if self._book_version == version:
            return self._book
        with self.state_lock:
            records = list(self.machine.directory.members.values())
            removed = set(self.machine.directory.removed_members)
        book = {
            peer.raft_address: MemberAddress(peer.id, peer.raft_address, peer.client_address)
            for peer in self.config.peers
            if peer.id not in removed
        }
        book[self.config.raft_address] = MemberAddress(
            self.node_id, self.config.raft_address, self.config.advertise_address
        )
        for record in records:
            book[record.raft_address] = MemberAddress(record.id, record.raft_address, record.client_address)
        self._book, self._book_version = book, version
        return book

    def leader(self) -> MemberAddress | None:
        address = self.raft.leader_address()
        if not address:
            return None
        return self.members().get(address) or MemberAddress("", address, "")

    def _leader_client_address(self) -> str:
        leader = self.leader()
        return leader.client_address if leader is not None else ""

    def header(self, revision: int | None = None) -> common_pb2.ResponseHeader:
        leader = self.leader()
        return common_pb2.ResponseHeader(
            node_id=self.node_id,
            revision=self.machine.revision if revision is None else revision,
            raft_term=self.raft.term(),
            leader_id=leader.id if leader else "",
            leader_address=leader.client_address if leader else "",
        )

    def require_level(self, needed: int) -> None:
        """Refuse what needs cluster level ``needed`` while the cluster applies below it (FAILED_PRECONDITION)."""
        if needed > self.machine.cluster_level:
            raise FailedPrecondition(
                f"this needs cluster level {needed} ({levels.DESCRIPTIONS[needed]}), and the cluster is at level "
                f"{self.machine.cluster_level}: the leader raises it once every server runs a release that applies "
                f"it (`cpctl cluster status --all` shows the level each server APPLIES)"
            )

    # ------------------------------------------------------------------ writes

    async def write(self, command: command_pb2.Command, timeout: float | None = None) -> CommandResult:
        """Replicate a command; an application error in its result is raised as its exception.

        gRPC handlers pass no timeout: the call's deadline cancels them, and the proposer's
        per-batch backstop bounds calls without one. Internal callers pass their own bound.
        """
        if command.request_id:
            problem = limits.check_request_id(command.request_id)
            if problem:
                raise InvalidArgument(problem)
        # Once the cluster applies all this release knows, nothing can need more: no walk per write.
        if self.machine.cluster_level < levels.APPLY_LEVEL:
            self.require_level(levels.required_level(command))
        if timeout is None:
            result = await self.proposer.propose(command)
        else:
            try:
                async with asyncio.timeout(timeout):
                    result = await self.proposer.propose(command)
            except TimeoutError:
                raise UnknownOutcome(
                    f"not confirmed within {timeout:.1f} s; it may still commit: retry with the same request id"
                ) from None
        if result.HasField("error"):
            raise error_from_result(result.error)
        return result

    async def propose_forwarded(self, from_node: str, commands: list[command_pb2.Command]) -> list[CommandResult]:
        """A follower's batch, from the peer plane (authenticated servers only, never the client port).
        Only the leader takes it; it is never forwarded again.

        A server that is not (or no longer) a member is refused: a removed server that keeps
        running still names the old leader and would keep feeding it its clients' writes.
        Unavailable, so those clients move on to a real member.
        """
        if not self.raft.is_leader():
            raise NoLeader(f"{self.node_id} is not the leader any more; the commands were not applied")
        if from_node and from_node not in {member.id for member in self.members().values()}:
            raise Unavailable(f"{from_node} is not a member of this cluster; send requests to a member")
        leader_only = [c.WhichOneof("body") for c in commands if c.WhichOneof("body") in LEADER_ONLY_COMMANDS]
        if leader_only:
            # Decisions only this leader's housekeeper makes (renewals.py): a forwarded one was made by
            # a server that no longer leads, on a view that may miss this leader's renewals.
            raise FailedPrecondition(f"{', '.join(sorted(set(leader_only)))} is proposed by the leader itself only")
        return await self.proposer.propose_many(commands)

    def _peer_access(self) -> PeerAccess:
        """Who may talk Raft to this server: servers with a certificate from the cluster CA naming a
        member at its Raft address (plain TCP and the peer's word only with --insecure-dev)."""
        server_tls = client_tls = None
        if not self.config.insecure_dev:
            from controlplane import tls

            assert self.config.tls_ca and self.config.tls_cert and self.config.tls_key  # validated
            files = tls.TlsFiles(ca=self.config.tls_ca, cert=self.config.tls_cert, key=self.config.tls_key)
            try:
                server_tls, client_tls = tls.server_ssl_context(files), tls.client_ssl_context(files)
            except tls.TlsError as exc:
                raise ConfigError(str(exc)) from None
        else:
            log.warning(
                "insecure_peer_plane",
                detail="--insecure-dev: the Raft peer port has no TLS and believes any server id it is told; "
                "anyone who reaches it can join this cluster's Raft. Never use this outside a throwaway cluster.",
            )
        return PeerAccess(
            authorize=self._authorize_peer,
            server_tls=server_tls,
            client_tls=client_tls,
            propose_handler=self.propose_forwarded,
        )

    def _authorize_peer(self, peer_id: str, raft_address: str, learner: bool) -> str | None:
        """Why ``peer_id`` at ``raft_address`` may not hold a Raft connection to this server, or None."""
        if peer_id == self.node_id:
            return f"{peer_id} is this server's own id"
        if peer_id in self.removed_ids():
            return f"{peer_id} was removed from this cluster and may not come back"
        known = {member.id: member.raft_address for member in self.members().values()}
        if peer_id not in known:
            if not self.raft.synced() and not learner:
                # Not caught up since it started: its directory can predate voters admitted since
                # (a learner that loaded an old snapshot, a server back from a long stop), and
                # refusing them could cut it off from its leader. Only voters, which are who a
                # server behind needs (a learner link would receive the log). Peers are still
                # authenticated by certificate, removed ids are still refused, and every open link
                # is checked again once this server has caught up (OwnMembership.watch).
                return None
            return f"{peer_id} is not a member of this cluster (admit it with `cpctl cluster members add`)"
        if known[peer_id] != raft_address:
            return f"{peer_id} is a member at {known[peer_id]}, not at {raft_address}"
        return None

    def peer_channel(self, address: str) -> grpc.aio.Channel:
        """A cached channel to another server's client address (the autopilot's health checks)."""
        return self._channel(address)

    def leader_channel(self) -> grpc.aio.Channel:
        """A channel to the leader's client address (for calls a follower hands on); NoLeader if unknown."""
        leader = self.leader()
        if leader is None or not leader.client_address:
            raise NoLeader("no leader is known (an election is running or quorum is lost); retry shortly")
        return self._channel(leader.client_address)

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            # Read when the channel is made, not at start: a renewed certificate serves new channels.
            credentials = peer_channel_credentials(self.config)
            if credentials is None:
                channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
            self._channels[address] = channel
        return channel

    # ------------------------------------------------------------------ reads

    async def wait_for_revision(self, revision: int, timeout: float | None, *, ends_on_stop: bool = False) -> None:
        """Until ``revision`` is applied here; DeadlineExceeded after ``timeout``. With
        ``ends_on_stop`` (a watch stream's wait), Unavailable once the server begins to stop."""
        if ends_on_stop and self._stopping:  # also with events still coming: a busy stream ends too
            raise Unavailable(_STOPPING)
        if self.machine.revision >= revision:
            return
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        heapq.heappush(self._waiters, (revision, next(self._waiter_seq), future))
        if ends_on_stop:
            self._stream_waits.add(future)
        try:
            async with asyncio.timeout(timeout or DEFAULT_READ_TIMEOUT_S):
                await future
        except TimeoutError:
            raise DeadlineExceeded(
                f"revision {revision} was not applied on {self.node_id} in time "
                f"(applied: {self.machine.revision}); is the revision from this cluster?"
            ) from None
        finally:
            if ends_on_stop:  # a read's wait (the request path) touches no set
                self._stream_waits.discard(future)

    async def prepare_read(self, read: common_pb2.ReadOptions, timeout: float | None) -> None:
        """Block until this replica may answer a read at the requested consistency."""
        if read.consistency not in (
            common_pb2.CONSISTENCY_UNSPECIFIED,
            common_pb2.CONSISTENCY_STALE,
            common_pb2.CONSISTENCY_LINEARIZABLE,
        ):
            raise InvalidArgument(f"unknown consistency {read.consistency}; use STALE or LINEARIZABLE")
        minimum = read.min_revision
        if read.consistency != common_pb2.CONSISTENCY_STALE:
            minimum = max(minimum, await self.proposer.barrier())
        elif not self.raft.is_ready() and minimum == 0:
            why = self.raft.unready_reason() or "it has not caught up with a leader since it started"
            raise Unavailable(f"{self.node_id} cannot answer a stale read: {why}; retry, or read from another server")
        await self.wait_for_revision(minimum, timeout)

    def get(self, key: str) -> tuple[kv_pb2.KeyValue | None, int]:
        """The key (validated by the servicer, before any read barrier) and the revision read at."""
        with self.state_lock:
            return self.machine.kv.get(key), self.machine.revision

    def list_keys(self, request: kv_pb2.ListRequest) -> tuple[list[kv_pb2.KeyValue], bool, int]:
        if request.limit > limits.MAX_LIST_LIMIT:
            raise InvalidArgument(f"limit {request.limit} is above the maximum {limits.MAX_LIST_LIMIT}")
        with self.state_lock:
            kvs, more = self.machine.kv.list_keys(
                request.prefix, request.start_after, request.limit or limits.MAX_LIST_LIMIT
            )
            return kvs, more, self.machine.revision

    @property
    def applied_revision(self) -> int:
        """The revision this server's state machine has applied up to."""
        return self.machine.revision

    def read_table(self, kind: type[TableT], read: Callable[[TableT], T]) -> tuple[T, int]:
        """Run a read of one domain table (``read(table)``) under the state lock: its answer and the
        revision it reflects. The servicers' way into the state: a table, never the machine.

        Reads refuse like commands do (``Refused``: an unknown host, a missing range); the
        refusal becomes the matching typed error.
        """
        return self.read_state(lambda: read(self.machine.table(kind)))

    def read_state(self, read: Callable[[], T]) -> tuple[T, int]:
        """Run a read of the domain tables under the state lock: its answer and the revision it reflects.

        Reads refuse like commands do (``Refused``: an unknown host, a missing range); the
        refusal becomes the matching typed error.
        """
        with self.state_lock:
            try:
                return read(), self.machine.revision
            except Refused as refused:
                raise error_from_result(common_pb2.Error(code=refused.code, message=refused.message)) from None

    def renew_from_memory(self, lease_id: int) -> leases_pb2.Lease | None:
        """Renew a lease without a log write (renewals.py); the lease as renewed.

        None when the renewal must go through the log instead: this server does not lead (or is
        not caught up), in-memory renewals are off, the lease is unknown here (the log answers
        NOT_FOUND), or an expiry naming it is in flight (the log's order decides).
        """
        if not self.config.lease_checkpoint_interval_s:
            return None
        reason = self._not_from_memory(lease_id)
        if reason:
            metrics.RENEWALS_VIA_LOG.labels(reason).inc()
            return None
        with self.state_lock:
            lease = self.machine.leases.leases.get(lease_id)
            if lease is None:
                metrics.RENEWALS_VIA_LOG.labels("unknown").inc()
                return None
            view = leases_pb2.Lease()
            view.CopyFrom(lease)
        now = self.leader_now_ms()
        self.renewals.renew(lease_id, now)
        view.renewed_unix_ms = now
        return view

    def _not_from_memory(self, lease_id: int) -> str:
        """Why a renewal of ``lease_id`` must go through the log ("" when it may be answered here)."""
        if not self.raft.is_leader():
            return "not_leader"
        # Not is_leader() alone: a leader thawed after a freeze says it leads until its next tick,
        # and the acks that waited in its sockets look fresh, while another may have expired the lease.
        if not self.raft.leads_with_recent_majority():
            return "stalled"
        if not self.renewals.ready or not self.raft.is_ready():
            return "not_ready"
        if lease_id in self.renewals.expiring:
            return "expiring"
        return ""

    def leader_now_ms(self) -> int:
        """The leader's time (``LeaderClock``): what it stamps on batches and decides deadlines by.
        Called on the event loop only."""
        now = self.leader_clock.now_ms(self.raft.term(), self.machine.time_unix_ms)
        offset_s = self.leader_clock.offset_ms() / 1000
        metrics.LEADER_CLOCK_OFFSET.set(offset_s)
        stepped = abs(offset_s) >= CLOCK_STEP_WARNING_S
        if stepped != self._clock_stepped:
            self._clock_stepped = stepped
            if stepped:
                log.warning(
                    "leader_wall_clock_stepped",
                    offset_s=round(offset_s, 3),
                    hint="the wall clock jumped; the cluster's time follows it only at 1 % (leader_clock.py)",
                )
        return now

    def leader_clock_idle(self) -> None:
        """This server stopped leading: its clock's offset is no longer the cluster's to show."""
        metrics.LEADER_CLOCK_OFFSET.set(0)
        self._clock_stepped = False

    def ttl_pass_from_memory(self, request: ports_pb2.ReportHealthRequest) -> ports_pb2.ServiceHealth | None:
        """A passing report of a ttl check that is passing already: its lease renewed from memory, no
        log write (``renew_from_memory``). None when the report needs the log (a change of status,
        another kind of check, an unknown instance: the log answers)."""
        if request.status != ports_pb2.HEALTH_STATUS_PASSING:
            return None
        with self.state_lock:
            record = self.machine.ports.services.get((request.host, request.name))
            if record is None or record.manifest.health_check.type != "ttl":
                return None
            current = ports_pb2.ServiceHealth()
            current.CopyFrom(record.health)
        if current.status != ports_pb2.HEALTH_STATUS_PASSING or not current.ttl_lease_id:
            return None
        return current if self.renew_from_memory(current.ttl_lease_id) is not None else None

    def heartbeat_from_memory(
        self, request: membership_pb2.HeartbeatRequest
    ) -> membership_pb2.HeartbeatResponse | None:
        """A node's heartbeat that brings no news, answered from memory; None when it needs the log
        (a joining node's first heartbeat, a new activity, or any reason ``renew_from_memory`` gives)."""
        with self.state_lock:
            record = self.machine.membership.nodes.get(request.node_id)
            if record is None or record.state not in (NODE_ACTIVE, NODE_LEAVING):
                return None
            if request.activity and request.activity != record.activity:
                return None
            if request.instance_id and request.instance_id != record.instance_id:
                return None  # another instance holds the node (or none is recorded): the log decides
            lease_id, state = record.lease_id, record.state
        lease = self.renew_from_memory(lease_id)
        if lease is None:
            return None
        return membership_pb2.HeartbeatResponse(header=self.header(), state=state, lease_ttl_ms=lease.ttl_ms)

    def lease_views(self) -> list[leases_pb2.Lease]:
        """Every lease with what it holds counted in."""
        with self.state_lock:
            views = []
            for lease_id in sorted(self.machine.leases.leases):
                view = leases_pb2.Lease()
                view.CopyFrom(self.machine.leases.leases[lease_id])
                view.attached_ports = len(self.machine.ports.by_lease.get(lease_id, {}))
                views.append(view)
            return views

    # ------------------------------------------------------------------ watch

    def watch_start(self, from_revision: int) -> int:
        """The first revision a new watch delivers; OutOfRange if it was compacted away."""
        with self.state_lock:
            if from_revision == 0:
                return self.machine.revision + 1
            if from_revision <= self.machine.compacted_revision:
                raise self._compacted(from_revision)
            return from_revision

    def watch_read(self, next_revision: int) -> tuple[list[watch_pb2.Event], int]:
        """Retained events from ``next_revision`` on, and the applied revision they were read at."""
        with self.state_lock:
            if next_revision <= self.machine.compacted_revision:
                raise self._compacted(next_revision)
            return self.machine.events_from(next_revision), self.machine.revision

    def _compacted(self, revision: int) -> OutOfRange:
        oldest = self.machine.oldest_revision
        return OutOfRange(
            f"revision {revision} has been compacted; the oldest revision still available is {oldest}. "
            "Re-read the current state and watch from its revision + 1.",
            oldest,
        )

    # ------------------------------------------------------------------ cluster

    @property
    def apply_level(self) -> int:
        """The highest cluster level this server reports: its release's, or the configured cap."""
        return self.config.apply_level or levels.APPLY_LEVEL

    def status(self) -> cluster_pb2.StatusResponse:
        """This server's view: Raft position, and every voter (its Raft configuration) and learner (the
        directory). The leader adds what its health checks saw (applied index, stable since, last contact)."""
        raft = self.raft.status()
        members = self.members()
        directory = self.directory()
        removed = self.removed_ids()
        leader = members.get(raft.leader_address) if raft.leader_address else None
        response = cluster_pb2.StatusResponse(
            node_id=self.node_id,
            role=_ROLE_ENUM.get(raft.role, cluster_pb2.ROLE_UNSPECIFIED),
            leader_id=leader.id if leader else "",
            leader_address=leader.client_address if leader else "",
            term=raft.term,
            commit_index=raft.commit_index,
            applied_index=raft.applied_index,
            applied_revision=self.machine.revision,
            has_quorum=raft.has_quorum,
            raft_log_size=raft.log_size,
            version=__version__,
            oldest_revision=self.machine.oldest_revision,
            removed_member_ids=sorted(removed),
            ready=self.raft.is_ready(),
            membership_change=self.membership_change_in_flight(),
            durability=self.config.durability,
            peer_security="insecure" if self.config.insecure_dev else "mtls",
            apply_level=self.apply_level,
            cluster_level=self.machine.cluster_level,
        )
        me = self.config.raft_address
        # pysyncobj's configuration (self included) is who votes; directory learners outside it do not.
        voters = {address for address in raft.connected if address != me or self.raft.voter}
        learners = {address for address, record in directory.items() if record.learner and address not in voters}
        if not self.raft.voter:
            learners.add(me)
        leading = raft.role == ROLE_LEADER
        for address in sorted(voters | learners, key=lambda a: members[a].id if a in members else a):
            member = members.get(address, MemberAddress("", address, ""))
            record = directory.get(address)
            voter = address in voters
            if address == raft.leader_address:
                role = cluster_pb2.ROLE_LEADER
            elif address == me:
                role = _ROLE_ENUM.get(raft.role, cluster_pb2.ROLE_UNSPECIFIED)
            else:
                role = cluster_pb2.ROLE_FOLLOWER if voter else cluster_pb2.ROLE_LEARNER
            health = self.autopilot.health(address) if leading and address != me else None
            if address == me:
                healthy = True
            elif voter:
                healthy = raft.connected.get(address, False)
            else:  # a learner: only the leader's health checks can tell
                healthy = health is not None and health.reachable
            entry = cluster_pb2.Member(
                id=member.id or (record.id if record else ""),
                raft_address=address,
                client_address=member.client_address or (record.client_address if record else ""),
                role=role,
                healthy=healthy,
                voter=voter,
                learner=record.learner if record is not None else address in learners,
                # pysyncobj tracks only the others; the leader holds its whole log.
                match_index=raft.match_index.get(address, raft.log_index if address == me and leading else 0),
            )
            if address == me:
                entry.applied_index, entry.commit_index = raft.applied_index, raft.commit_index
            elif health is not None:
                entry.applied_index, entry.commit_index = health.applied_index, health.commit_index
                entry.stable_since_unix_ms = health.stable_since_unix_ms
                entry.last_contact_unix_ms = health.last_contact_unix_ms
            response.members.append(entry)
        return response

    # ------------------------------------------------------------------ membership (cluster_changes.py)

    async def on_leader(
        self,
        method: str,
        request: Any,
        timeout: float | None,
        local: Callable[[], Awaitable[Response]],
    ) -> Response:
        return await self.changes.on_leader(method, request, timeout, local)

    async def add_member(
        self, request: cluster_pb2.AddMemberRequest, timeout: float | None
    ) -> list[cluster_pb2.Member]:
        return await self.changes.add_member(request, timeout)

    async def remove_member(
        self, request: cluster_pb2.RemoveMemberRequest, timeout: float | None
    ) -> list[cluster_pb2.Member]:
        return await self.changes.remove_member(request, timeout)

    async def promote(self, member_id: str) -> None:
        await self.changes.promote(member_id)

    async def remove_server(self, member_id: str, raft_address: str, why: str) -> None:
        await self.changes.remove_server(member_id, raft_address, why)

    def membership_change_in_flight(self) -> str:
        return self.changes.membership_change_in_flight()

    async def transfer_leadership(self, target_id: str, timeout: float | None) -> tuple[str, int]:
        return await self.changes.transfer_leadership(target_id, timeout)

    # ------------------------------------------------------------------ backup and restore

    def backup(self) -> tuple[bytes, int]:
        """A consistent backup of the replicated state: a serialized, self-checking Backup."""
        with self.state_lock:
            state, revision = self.machine.snapshot(), self.machine.revision
        envelope = cluster_pb2.Backup(
            format_version=BACKUP_FORMAT_VERSION,
            state=state,
            state_sha256=hashlib.sha256(state).hexdigest(),
            revision=revision,
            created_unix_ms=time.time_ns() // 1_000_000,
            node_id=self.node_id,
        )
        return envelope.SerializeToString(), revision

    async def restore(
        self,
        data: bytes,
        expected_sha256: str,
        timeout: float | None,
        include_auth: bool = False,
        request_id: str = "",
    ) -> CommandResult:
        """Check a Backup thoroughly, then replace the user data with it through the log (and the
        users, roles and tokens too with ``include_auth``)."""
        if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
            raise InvalidArgument("the upload does not match the sha256 the client sent: it was damaged in transit")
        if len(data) > limits.MAX_RESTORE_BYTES:
            raise InvalidArgument(
                f"the backup is {len(data)} bytes; a restore goes through the log as one entry and is limited "
                f"to {limits.MAX_RESTORE_BYTES} bytes"
            )
        try:
            envelope = cluster_pb2.Backup.FromString(data)
        except DecodeError:
            raise InvalidArgument("not a controlplane backup (or a damaged one): it does not parse") from None
        if envelope.format_version != BACKUP_FORMAT_VERSION:
            raise InvalidArgument(
                f"backup format version {envelope.format_version} is not supported (this server reads "
                f"version {BACKUP_FORMAT_VERSION}); not a controlplane backup, or from a newer release"
            )
        if hashlib.sha256(envelope.state).hexdigest() != envelope.state_sha256:
            raise InvalidArgument("the backup is damaged: its contents do not match its checksum")
        try:
            parse_snapshot(envelope.state)
        except SnapshotError as exc:
            raise InvalidArgument(str(exc)) from None
        # The client's request id (one per call) makes a retry apply once, while restoring the same
        # file again later is done again. Older clients send none: the file's hash stands in, so
        # their retries are deduplicated too (and so is a second restore of it within the dedupe
        # window, as before).
        kind = "restore-with-auth-" if include_auth else "restore-"
        if len(kind) + len(request_id) > limits.MAX_REQUEST_ID_CHARS:
            raise InvalidArgument(
                f"a restore's request_id may have {limits.MAX_REQUEST_ID_CHARS - len(kind)} characters; "
                f"it has {len(request_id)}"
            )
        command = command_pb2.Command(
            request_id=kind + (request_id or envelope.state_sha256[:32]),
            restore_state=command_pb2.RestoreState(snapshot=envelope.state, include_auth=include_auth),
        )
        return await self.write(command, timeout)

    # ------------------------------------------------------------------ self-registration

    async def _publish_self(self) -> None:
        """Record this voter's client address in the replicated directory once a leader exists.

        The directory is how every server (and the SDK, via response headers) finds the leader's
        gRPC address after membership changes; the static peer list only seeds it. A learner's
        record is the leader's to write (AddMember, then the promotion): a joining server that
        published itself would make itself look like a voter before anyone admitted it.
        """
        while True:
            await asyncio.sleep(0.25)  # retry pacing while no leader is reachable, or while a learner
            if not self.raft.voter:
                continue
            with self.state_lock:
                current = self.machine.directory.members.get(self.node_id)
                removed = self.node_id in self.machine.directory.removed_members
            if removed:
                return  # own.watch() stops the server
            if (
                current is not None
                and current.client_address == self.config.advertise_address
                and current.raft_address == self.config.raft_address
            ):
                return
            record = command_pb2.MemberRecord(
                id=self.node_id,
                raft_address=self.config.raft_address,
                client_address=self.config.advertise_address,
                # Never flip the flag from here: finishing a promotion is the leader's step.
                learner=current is not None and current.learner,
            )
            if self.raft.is_ready() and self.leader() is not None:
                try:
                    await self.write(command_pb2.Command(member_upsert=command_pb2.MemberUpsert(member=record)), 5.0)
                except ControlPlaneError as exc:
                    log.info("publish_self_retry", reason=exc.message)
