"""Work only the leader does on a timer: expiring leases, checkpointing the renewals it answered from
memory (renewals.py), ending gossip rounds past their deadline, starting each gossip group's next
round (``gossip.coordinator``), and the port leak-repair pass.

Both are *decisions recorded in the log*: the leader proposes a command and the state machine
re-checks it against the entry's time and state, so a keepalive or a fresh report that committed
first always wins, and every replica changes the same things at the same revision.

Reaping critical services and ending gossip rounds are held to this leader's monotonic clock as well
(``LocalDeadlines``), so a step of its wall clock reaps nothing and ends no round early.

Lease expiry never cuts a live lease short across an election: a lease is proposed for expiry only
when its deadline (renewal + TTL, in leader-stamped time) has passed *and* this server has itself
been leader for at least that lease's TTL (etcd's rule). A holder that was renewing against the old
leader therefore always gets one full TTL to find the new one, whatever the clocks say.

The membership autopilot (``Autopilot``, after Consul's) is the leader's other timer: it health-checks
every other server over gRPC, promotes learners that have stayed caught up for
``server_stabilization_s``, finishes membership changes a failed leader left half done, and - when
``dead_server_cleanup_s`` is set - removes servers that stayed unreachable, never leaving fewer than
``min_quorum`` voters or a voter set without a healthy majority. Every change goes through the node's
one-membership-change slot. Its decisions are a pure function (``next_action``) of what it observed.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import itertools
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import grpc
import structlog

from controlplane.errors import ControlPlaneError, NotLeader, Unavailable
from controlplane.server import metrics
from controlplane.server.config import ServerConfig
from controlplane.state import levels
from controlplane.state import ports as port_table
from controlplane.v1 import (
    cluster_pb2,
    cluster_pb2_grpc,
    command_pb2,
    gossip_pb2,
    leases_pb2,
    membership_pb2,
    ports_pb2,
)

#: Imported once a gossip group exists (see Housekeeper.__init__).
COORDINATOR_MODULE = "gossip.coordinator"
#: How soon after a gossip round ended the leader notices and plans the next one.
ROUND_PROMPT_S = 0.02

if TYPE_CHECKING:
    from controlplane.server.node import Node
    from gossip.coordinator import Coordinator, Plan

log = structlog.get_logger("controlplane.housekeeping")

K = TypeVar("K")

# One expiry command names at most this many leases (keeps a log entry small after an outage).
MAX_EXPIRE_PER_COMMAND = 1000
PROPOSE_TIMEOUT_S = 5.0
# The autopilot's health-check period (Consul's ServerHealthInterval is 2 s; ours is cheaper than a
# stabilization period's quarter at the 1-2 s the tests use) and the bound on one check.
AUTOPILOT_INTERVAL_S = 0.5
PROBE_TIMEOUT_S = 1.0


class LocalDeadlines(Generic[K]):
    """Wall-clock deadlines held to this leader's monotonic clock from the moment it first sees each.

    Reaping a critical service and ending a gossip round are decided against deadlines in
    leader-stamped wall-clock time. Alone, a step of the leader's wall clock (NTP, a resumed VM)
    would make every one of them due at once. So each deadline also gets a local twin when first
    seen - the time it had left then, on the monotonic clock - and is due only once both have
    passed. A step after that moves nothing; a leader that first sees a deadline with a wrong clock
    is no better than the clock (as the state machine's own re-check). A new leader starts over.
    """

    def __init__(self) -> None:
        self._local: dict[K, float] = {}

    def clear(self) -> None:
        self._local.clear()

    def due(self, deadlines: Mapping[K, int], now_unix_ms: int, now_monotonic: float) -> list[K]:
        """The keys of ``deadlines`` (key -> unix ms) that are due by both clocks, in their order.
        Keys no longer given are forgotten."""
        local: dict[K, float] = {}
        due = []
        for key, deadline_ms in deadlines.items():
            at = self._local.get(key)
            if at is None:
                at = now_monotonic + max(0, deadline_ms - now_unix_ms) / 1000
            local[key] = at
            if deadline_ms <= now_unix_ms and at <= now_monotonic:
                due.append(key)
        self._local = local
        return due


class Housekeeper:
    def __init__(self, node: Node, config: ServerConfig) -> None:
        self._node = node
        self._config = config
        self._leader_since: float | None = None
        self._leader_term = -1
        self._next_repair = 0.0
        self._next_checkpoint = 0.0
        # Made by the first planning pass with a group to plan: gossip.coordinator brings numpy,
        # a tenth of a second of every server's start, which a cluster without gossip never needs.
        self._coordinator: Coordinator | None = None
        self._coordinator_term = -1
        # The gossip planning pass in flight, if any: planning a large group (b* is a few dozen
        # matchings) runs in a worker thread and must not hold up lease expiry in this loop. One pass
        # at a time, so the coordinator's cache is only ever touched by one thread.
        self._planning: asyncio.Task[None] | None = None
        # Reap deadlines by (host, name, critical since); round deadlines by (group, number).
        self._reap_deadlines: LocalDeadlines[tuple[str, str, int]] = LocalDeadlines()
        self._round_deadlines: LocalDeadlines[tuple[str, int]] = LocalDeadlines()

    def leader_for_s(self) -> float:
        """Seconds this server has led without interruption (0 when it does not lead)."""
        return 0.0 if self._leader_since is None else time.monotonic() - self._leader_since

    async def run(self) -> None:
        prompt = asyncio.ensure_future(self._prompt_rounds())
        try:
            await self._run()
        finally:
            prompt.cancel()
            if self._planning is not None:
                self._planning.cancel()  # the server is stopping: no planning pass outlives this loop

    async def _run(self) -> None:
        node = self._node
        while True:
            await asyncio.sleep(self._config.lease_check_interval_s)  # a timer: this is periodic work
            term = node.raft.term()
            if not node.raft.is_leader() or not node.raft.is_ready() or term != self._leader_term:
                # Not leading, or leading in a new term this loop has not seen start: either way the
                # countdown and the in-memory renewals start over (a term change between two ticks
                # is a new leadership, however it looked at the moments we sampled).
                if self._leader_since is not None:
                    node.renewals.clear()
                    node.leader_clock_idle()
                self._leader_since = None
                self._leader_term = term if node.raft.is_leader() and node.raft.is_ready() else -1
                if self._leader_term == -1:
                    continue
            if self._leader_since is None:
                node.renewals.clear()  # whatever an earlier term left is not this term's
                self._reap_deadlines.clear()
                self._round_deadlines.clear()
                self._leader_since = time.monotonic()
                self._next_repair = self._leader_since + self._config.ports_repair_interval_s
                self._next_checkpoint = self._leader_since + self._config.lease_checkpoint_interval_s
            try:
                if not node.renewals.ready:
                    # Answer renewals from memory only once a barrier of this term has applied: any
                    # expiry an earlier leader appended is then applied too, and cannot commit later
                    # over a renewal this leader confirmed from memory.
                    await node.proposer.barrier()
                    if node.raft.term() == term and node.raft.is_leader():
                        node.renewals.ready = True
                await self._expire_leases()
                await self._reap_critical()
                await self._end_overdue_rounds()
                self._start_due_rounds()
                if self._config.lease_checkpoint_interval_s and time.monotonic() >= self._next_checkpoint:
                    self._next_checkpoint = time.monotonic() + self._config.lease_checkpoint_interval_s
                    await self._checkpoint()
                if self._config.ports_repair_interval_s and time.monotonic() >= self._next_repair:
                    self._next_repair = time.monotonic() + self._config.ports_repair_interval_s
                    await self._repair()
            except ControlPlaneError as exc:
                # Lost leadership or quorum mid-proposal: the next leader takes over the job.
                log.info("housekeeping_retry", reason=exc.message)
            except Exception:  # a bug: keep the timer alive, and say so loudly
                log.exception("housekeeping_failed")

    def due_leases(self, now_unix_ms: int, now_monotonic: float | None = None) -> list[int]:
        """Leases past their TTL by both the replicated renewal (wall clock) and this leader's
        in-memory one (monotonic clock, so that a step of the wall clock expires nobody who renews)."""
        node = self._node
        now_monotonic = time.monotonic() if now_monotonic is None else now_monotonic
        led_ms = self.leader_for_s() * 1000
        with node.state_lock:
            # The replicated renewal time is never later than the in-memory one: these are candidates.
            candidates = node.machine.leases.expired_by(now_unix_ms)
        # A deposed leader keeps answering renewals from memory until it notices it lost its
        # majority (leader_fallback_s): wait that long on top of the TTL before expiring anything, so
        # a renewal it confirmed is never cut short here.
        wait_ms = self._config.raft.leader_fallback_s * 1000
        due = []
        for lease in candidates:
            local = node.renewals.renewed_monotonic(lease.id)
            if lease.ttl_ms + wait_ms <= led_ms and (local is None or local + lease.ttl_ms / 1000 <= now_monotonic):
                due.append(lease.id)
        return due[:MAX_EXPIRE_PER_COMMAND]

    async def _expire_leases(self) -> None:
        due = self.due_leases(self._node.leader_now_ms())
        if not due:
            return
        renewals = self._node.renewals
        # From here until the expiry commits, a renewal of these leases goes through the log, so the
        # log's order decides between it and the expiry (the state machine re-checks each lease).
        renewals.expiring.update(due)
        try:
            result = await self._node.write(
                command_pb2.Command(
                    request_id=f"expire-{uuid.uuid4().hex}", lease_expire=leases_pb2.ExpireLeases(lease_ids=due)
                ),
                PROPOSE_TIMEOUT_S,
            )
        except ControlPlaneError:
            # The expiry may still commit (an unknown outcome): keep these leases' renewals on the log
            # path until a barrier behind it has applied. If that fails too, leadership is in doubt,
            # and losing it clears everything.
            await self._node.proposer.barrier()
            renewals.expiring.difference_update(due)
            raise
        renewals.expiring.difference_update(due)
        if result.lease_expire.expired:
            metrics.LEASES_EXPIRED.inc(len(result.lease_expire.expired))
            renewals.forget(list(result.lease_expire.expired))
            log.info("leases_expired", leases=list(result.lease_expire.expired))

    def due_reaps(self, now_unix_ms: int, now_monotonic: float | None = None) -> list[ports_pb2.ServiceKey]:
        """Instances critical for their check's deregister_critical_after_s by the replicated
        'critical since' (wall clock) and by this leader's own count (``LocalDeadlines``)."""
        now_monotonic = time.monotonic() if now_monotonic is None else now_monotonic
        with self._node.state_lock:
            deadlines = self._node.machine.ports.critical_deadlines()
        due = self._reap_deadlines.due(deadlines, now_unix_ms, now_monotonic)
        return [ports_pb2.ServiceKey(host=host, name=name) for host, name, _since in due]

    def overdue_rounds(self, now_unix_ms: int, now_monotonic: float | None = None) -> list[tuple[str, int]]:
        """Running gossip rounds past their deadline by the replicated deadline (wall clock) and by
        this leader's own count (``LocalDeadlines``)."""
        now_monotonic = time.monotonic() if now_monotonic is None else now_monotonic
        with self._node.state_lock:
            deadlines = {(r.group, r.number): r.deadline_unix_ms for r in self._node.machine.gossip.running()}
        return self._round_deadlines.due(deadlines, now_unix_ms, now_monotonic)

    async def _reap_critical(self) -> None:
        """Deregister instances critical for their check's deregister_critical_after_s (their ports
        go through the normal release path). The state machine re-checks each against the entry's
        time, so a passing report that commits first keeps its instance."""
        due = self.due_reaps(self._node.leader_now_ms())
        if not due:
            return
        result = await self._node.write(
            command_pb2.Command(
                request_id=f"reap-{uuid.uuid4().hex}",
                service_reap=ports_pb2.ReapCriticalRequest(services=due[:MAX_EXPIRE_PER_COMMAND]),
            ),
            PROPOSE_TIMEOUT_S,
        )
        if result.service_reap.deregistered:
            log.warning(
                "critical_services_deregistered",
                services=[f"{key.name}@{key.host}" for key in result.service_reap.deregistered],
            )

    async def _end_overdue_rounds(self) -> None:
        """End every gossip round past its deadline: a round never waits for a dead peer. The state
        machine re-checks the deadline against the entry's time and blames the silent participants."""
        for group, number in self.overdue_rounds(self._node.leader_now_ms()):
            result = await self._node.write(
                command_pb2.Command(
                    # One id per round: two leaders ending the same round apply it once.
                    request_id=f"end-round-{hashlib.sha256(group.encode()).hexdigest()[:32]}-{number}",
                    gossip_end_round=gossip_pb2.EndRoundRequest(group=group, number=number),
                ),
                PROPOSE_TIMEOUT_S,
            )
            if result.gossip_end_round.ended:
                failures = [f"{f.node}" for f in result.gossip_end_round.round.failures]
                log.warning("gossip_round_timed_out", group=group, round=number, silent=failures)

    async def _prompt_rounds(self) -> None:
        """Start a group's next round within ``ROUND_PROMPT_S`` of its last report, rather than at the
        next housekeeping tick (which cost a training loop ~half a tick per round, measured).

        Cheap: it looks only at each group's newest round, and starts a planning pass only when one
        of them ended since it last looked. Everything else (too few participants, a paused group)
        stays with the regular tick.
        """
        last_seen: tuple[tuple[str, int, int], ...] = ()
        while True:
            await asyncio.sleep(ROUND_PROMPT_S)  # a poll of local memory, not a wait for a condition elsewhere
            try:
                last_seen = self._prompt_once(last_seen)
            except Exception:  # a bug: keep the loop alive (the tick still starts rounds), and say so loudly
                log.exception("gossip_prompt_failed")

    def _prompt_once(self, last_seen: tuple[tuple[str, int, int], ...]) -> tuple[tuple[str, int, int], ...]:
        """One look; returns what it has handled (unchanged while a planning pass runs, so a round
        that ended meanwhile is picked up on the next look rather than at the tick)."""
        node = self._node
        if self._leader_since is None or not node.renewals.ready:
            return last_seen
        with node.state_lock:
            gossip = node.machine.gossip
            newest = tuple(
                (config.group, rounds[-1].number, rounds[-1].state)
                for config in gossip.list_groups()
                if not config.paused and (rounds := gossip.recent_rounds(config.group, 1))
            )
        if newest == last_seen or (self._planning is not None and not self._planning.done()):
            return last_seen
        if any(state != gossip_pb2.ROUND_STATE_RUNNING for _, _, state in newest):
            self._start_due_rounds()
        return newest

    def _start_due_rounds(self) -> None:
        """Start the planning pass for every gossip group whose next round is due, unless one runs."""
        if self._planning is not None and not self._planning.done():
            return
        self._planning = asyncio.ensure_future(self._plan_and_start(self._node.raft.term()))

    def _gather_due(
        self,
    ) -> list[
        tuple[gossip_pb2.GroupConfig, list[gossip_pb2.Round], list[str], list[gossip_pb2.Link], int, dict[str, int]]
    ]:
        """Under the state lock: each group that is not paused, has no running round and has enough
        eligible nodes, with its newest committed rounds, its eligible nodes and the committed links
        among them (references: the state replaces records, never edits them). One pass over the nodes
        however many groups there are; the links looked up pair by pair when that is fewer."""
        machine = self._node.machine
        gossip, membership = machine.gossip, machine.membership
        groups = gossip.list_groups()
        if not groups:
            return []
        from gossip.coordinator import GROUP_LABEL, eligible, rounds_to_read  # loaded by _plan_and_start

        configs = []
        for config in groups:
            rounds = gossip.recent_rounds(config.group, rounds_to_read(config))
            if not config.paused and not (rounds and rounds[-1].state == gossip_pb2.ROUND_STATE_RUNNING):
                configs.append((config, rounds))
        labelled: dict[str, list[membership_pb2.NodeRecord]] = {}
        if any(config.group not in membership.networks for config, _ in configs):
            for record in membership.nodes.values():
                label = record.spec.labels.get(GROUP_LABEL)
                if label:
                    labelled.setdefault(label, []).append(record)
        due = []
        for config, rounds in configs:
            if config.group in membership.networks:
                members = membership.members.get(config.group, set())
                records = (membership.nodes[n] for n in members if n in membership.nodes)
                participants = eligible(config.group, records, members)
            else:
                participants = eligible(config.group, labelled.get(config.group, ()), None)
            if len(participants) < config.min_participants:
                continue
            table = gossip.links
            if len(participants) * (len(participants) - 1) // 2 < len(table):
                pairs = itertools.combinations(participants, 2)  # sorted ids, so each (a, b) has a < b
                links = [table[pair] for pair in pairs if pair in table]
            else:
                links = list(table.values())
            # The node records' revisions: a node silent in its last round sits out until its record
            # changes (a sign of life) or its backoff runs out (gossip.coordinator.suspended).
            revisions = {node: membership.nodes[node].mod_revision for node in participants}
            due.append((config, rounds, participants, links, gossip.matrix_version, revisions))
        return due

    async def _plan_and_start(self, term: int) -> None:
        """One planning pass: plan each due group's next round off the event loop, and propose it.

        ``coordinator/GROUP/NUMBER`` is the request id, so a retry after an unknown outcome, or the
        same round proposed by a leader that took over meanwhile, applies once; the state machine
        refuses anything that no longer fits (another round started, a round still running).
        """
        node = self._node
        try:
            if COORDINATOR_MODULE not in sys.modules:
                with node.state_lock:
                    if not node.machine.gossip.groups:
                        return
                # The first group: numpy's import (a tenth of a second) in a worker thread, not on
                # the loop that ticks Raft, nor under the state lock that _gather_due imports it in.
                await asyncio.to_thread(importlib.import_module, COORDINATOR_MODULE)
            with node.state_lock:
                due = self._gather_due()
                configured = list(node.machine.gossip.groups)
            if not due and self._coordinator is None:
                return
            if self._coordinator is None or term != self._coordinator_term:
                from gossip.coordinator import Coordinator  # loaded above

                # A new leadership starts from the log alone (the cache would be checked against the
                # committed rounds anyway; this keeps what an old term cached from lingering).
                self._coordinator, self._coordinator_term = Coordinator(), term
            coordinator = self._coordinator
            coordinator.forget(keep=configured)
            for config, rounds, participants, links, version, revisions in due:
                if node.raft.term() != term or not node.raft.is_leader():
                    return  # no longer this leadership's job (and its clock is not this server's to read)
                now = node.leader_now_ms()
                plan: Plan | None = await asyncio.to_thread(
                    coordinator.plan, config, rounds, participants, links, version, now, revisions
                )
                if plan is None:
                    continue
                if node.raft.term() != term or not node.raft.is_leader():
                    return  # no longer this leadership's job
                try:
                    result = await node.write(
                        command_pb2.Command(request_id=plan.request.request_id, gossip_start_round=plan.request),
                        PROPOSE_TIMEOUT_S,
                    )
                except (Unavailable, NotLeader):
                    raise
                except ControlPlaneError as exc:
                    # The state refused the plan (e.g. someone else started a round meanwhile): the
                    # next pass plans from what did commit.
                    log.warning("gossip_round_refused", group=config.group, round=plan.number, reason=exc.message)
                    continue
                started = result.gossip_start_round.round
                log.info(
                    "gossip_round_started",
                    group=config.group,
                    round=started.number,
                    policy=started.policy,
                    participants=len(started.participants),
                    pairs=[f"{p.a}-{p.b}" for p in started.pairs],
                    bottleneck_bps=started.bottleneck_bps,
                )
        except ControlPlaneError as exc:
            # Lost leadership or quorum mid-proposal: the next leader plans the same round again.
            log.info("gossip_planning_retry", reason=exc.message)
        except Exception:  # a bug: the next tick tries again; say so loudly
            log.exception("gossip_planning_failed")

    async def _checkpoint(self) -> None:
        """Write the renewals answered from memory since the last checkpoint into the log, in one entry."""
        renewals = self._node.renewals
        with self._node.state_lock:
            ended = [lease_id for lease_id in renewals.known() if lease_id not in self._node.machine.leases.leases]
        renewals.forget(ended)  # revoked or expired meanwhile: nothing to keep for them
        taken = renewals.take_checkpoint()
        if not taken:
            return
        command = command_pb2.Command(
            lease_checkpoint=leases_pb2.LeaseCheckpoint(
                renewals=[
                    leases_pb2.LeaseRenewal(lease_id=lease_id, renewed_unix_ms=renewed)
                    for lease_id, renewed in sorted(taken.items())
                ]
            )
        )
        try:
            await self._node.write(command, PROPOSE_TIMEOUT_S)
        except ControlPlaneError:
            renewals.restore_checkpoint(taken)
            raise

    async def _repair(self) -> None:
        result = await self._node.write(
            command_pb2.Command(
                request_id=f"repair-{uuid.uuid4().hex}",
                ports_repair=ports_pb2.RepairRequest(passes_before_release=self._config.ports_repair_passes),
            ),
            PROPOSE_TIMEOUT_S,
        )
        released = result.ports_repair.released
        if released:
            log.warning("leaked_ports_released", ports=[port_table.describe(a) for a in released])


# --------------------------------------------------------------------------------------- autopilot


@dataclass
class ServerHealth:
    """What this leader's health checks saw of one other server (Consul autopilot's ServerHealth).

    Times are monotonic (decisions) with a wall-clock twin for Cluster.Status; all of it is reset
    when leadership is lost: a new leader observes for itself before it promotes or removes anyone.
    """

    raft_address: str
    #: The last Cluster.Status check answered.
    reachable: bool = False
    applied_index: int = 0
    commit_index: int = 0
    #: The highest cluster level its release applies (levels.py), from its last answer; 0 unknown.
    apply_level: int = 0
    last_contact_unix_ms: int = 0
    #: Healthy without interruption since (None: not healthy at the last check).
    stable_since: float | None = None
    stable_since_unix_ms: int = 0
    #: Unreachable without interruption since (for a voter: Raft link down *and* the check failing).
    unreachable_since: float | None = None


@dataclass(frozen=True)
class ServerView:
    """One other server as the leader sees it now: the input of ``next_action``."""

    id: str
    raft_address: str
    #: In the leader's Raft configuration.
    voter: bool
    #: The directory's flag; None when the directory has no record (a static peer not yet published).
    learner: bool | None
    #: The leader's Raft connection to it is up (voters only).
    raft_connected: bool
    health: ServerHealth


@dataclass(frozen=True)
class Policy:
    server_stabilization_s: float
    dead_server_cleanup_s: float
    min_quorum: int


@dataclass(frozen=True)
class Action:
    """One membership change the autopilot decided on."""

    kind: str  # "promote" or "remove"
    member_id: str
    raft_address: str
    reason: str


def next_action(
    servers: Sequence[ServerView], voters: int, now: float, policy: Policy, cluster_level: int = 1
) -> Action | None:
    """The one membership change to make now, if any, in order of urgency.

    ``voters`` counts the leader's whole configuration, the leader included. Rules:

    1. Finish a promotion: a directory learner already in the configuration.
    2. Finish a removal: a directory voter outside the configuration. A voter's record says
       learner=false only after its promotion committed, so only a removal takes it out again.
    3. Dead voter (cleanup on): unreachable for dead_server_cleanup_s, removed only if at least
       min_quorum voters remain and the remaining reachable voters are a majority of them.
    4. Dead learner (cleanup on): unreachable for dead_server_cleanup_s.
    5. Promote a learner healthy for server_stabilization_s. Health includes "caught up since it
       started" (Status.ready), which a server running outside the configuration never is, and a
       release that applies ``cluster_level``: an older one would apply the log differently.
    """
    ordered = sorted(servers, key=lambda server: (server.id, server.raft_address))
    for server in ordered:
        if server.learner is True and server.voter:
            return Action("promote", server.id, server.raft_address, "finishing an interrupted promotion")
    for server in ordered:
        if server.learner is False and not server.voter:
            return Action("remove", server.id, server.raft_address, "finishing an interrupted removal")
    cleanup = policy.dead_server_cleanup_s
    if cleanup > 0:
        for server in ordered:
            if server.voter and _down_for(server, now) >= cleanup:
                remaining = voters - 1
                reachable = 1 + sum(1 for o in ordered if o.voter and o is not server and o.raft_connected)
                if remaining >= policy.min_quorum and reachable > remaining / 2:
                    return Action("remove", server.id, server.raft_address, f"unreachable for over {cleanup:g} s")
        for server in ordered:
            if not server.voter and _down_for(server, now) >= cleanup:
                return Action("remove", server.id, server.raft_address, f"learner unreachable for over {cleanup:g} s")
    for server in ordered:
        if server.voter or server.learner is not True:
            continue
        health = server.health
        if health.apply_level < cluster_level:
            continue  # too old a release for this cluster (or not heard from yet): never a voter
        if health.stable_since is not None and now - health.stable_since >= policy.server_stabilization_s:
            return Action("promote", server.id, server.raft_address, "caught up and stable")
    return None


def _down_for(server: ServerView, now: float) -> float:
    since = server.health.unreachable_since
    return 0.0 if since is None else now - since


class Autopilot:
    """The leader's membership timer: health checks, promotions, cleanup (see the module docstring)."""

    def __init__(self, node: Node, config: ServerConfig) -> None:
        self._node = node
        self._config = config
        self._policy = Policy(config.server_stabilization_s, config.dead_server_cleanup_s, config.min_quorum)
        self._servers: dict[str, ServerHealth] = {}
        # Dead voters already reported as kept (min_quorum): say so once per leadership, not every round.
        self._kept: set[str] = set()
        # Learners already reported as too old a release to promote: likewise once per leadership.
        self._too_old: set[str] = set()

    def health(self, raft_address: str) -> ServerHealth | None:
        """The last health observation of a server (leader only; None elsewhere)."""
        return self._servers.get(raft_address)

    async def run(self) -> None:
        node = self._node
        while True:
            await asyncio.sleep(AUTOPILOT_INTERVAL_S)  # a timer: this is periodic work
            if not node.raft.is_leader() or not node.raft.is_ready():
                self._servers.clear()
                self._kept.clear()
                self._too_old.clear()
                continue
            try:
                await self.round()
            except ControlPlaneError as exc:
                # Lost leadership or quorum mid-change, or another change in flight: next round.
                log.info("autopilot_retry", reason=exc.message)
            except Exception:  # a bug: keep the timer alive, and say so loudly
                log.exception("autopilot_failed")

    async def round(self) -> None:
        """Check every other server once, then make at most one membership change."""
        node = self._node
        me = node.config.raft_address
        raft = node.raft.status()
        targets = self._targets(raft.connected, me)
        answers = await asyncio.gather(*(self._probe(client) for _, client in targets.values()))
        now, now_ms = time.monotonic(), time.time_ns() // 1_000_000
        for address, answer in zip(targets, answers, strict=True):
            health = self._servers.setdefault(address, ServerHealth(address))
            raft_connected = raft.connected.get(address, False)
            self._observe(health, answer, raft_connected, raft.term, raft.commit_index, now, now_ms)
        for gone in set(self._servers) - set(targets):
            del self._servers[gone]
        await self._raise_cluster_level(targets, answers)

        # Decide on a fresh view: a change (an operator's RemoveMember) may have completed while the
        # checks ran. No await from here to the decision, so nothing else changes membership meanwhile.
        # A new leader decides only once its directory holds every committed change (as admin calls).
        if node.membership_change_in_flight() or not node.raft.leader_state_is_current():
            return
        raft = node.raft.status()
        directory = node.directory()
        views = []
        for address, (member_id, _) in self._targets(raft.connected, me).items():
            record = directory.get(address)
            voter = address in raft.connected
            views.append(
                ServerView(
                    id=member_id,
                    raft_address=address,
                    voter=voter,
                    learner=record.learner if record is not None else None,
                    raft_connected=voter and raft.connected[address],
                    # Not checked yet (it appeared during the checks): unknown, so neither healthy nor dead.
                    health=self._servers.get(address) or ServerHealth(address),
                )
            )
        action = next_action(views, len(raft.connected), now, self._policy, node.machine.cluster_level)
        if action is None:
            self._report_kept(views, len(raft.connected), now)
            self._report_too_old(views, node.machine.cluster_level)
            return
        log.info("autopilot_action", action=action.kind, member=action.member_id, reason=action.reason)
        if action.kind == "promote":
            await node.promote(action.member_id)
        else:
            await node.remove_server(action.member_id, action.raft_address, action.reason)

    async def _raise_cluster_level(
        self, probed: dict[str, tuple[str, str]], answers: list[cluster_pb2.StatusResponse | None]
    ) -> None:
        """Raise the cluster level to the lowest level any server applies (levels.py), once every
        other server answered this round: one that did not may run an older release. Not while the
        membership changes, nor if a server appeared while the checks ran (it was not asked)."""
        node = self._node
        answered = [answer for answer in answers if answer is not None]
        if len(answered) < len(answers) or node.membership_change_in_flight():
            return
        if set(self._targets(node.raft.status().connected, node.config.raft_address)) != set(probed):
            return
        level = min([node.apply_level, *(levels.stored_level(answer.apply_level) for answer in answered)])
        current = node.machine.cluster_level
        if level <= current:
            return
        log.info("cluster_level_raise", level=level, was=current, meaning=levels.DESCRIPTIONS.get(level, ""))
        command = command_pb2.Command(set_cluster_level=command_pb2.SetClusterLevel(level=level))
        try:
            await node.write(command, timeout=PROBE_TIMEOUT_S * 5)
        except ControlPlaneError as exc:  # lost leadership or quorum meanwhile: the next round tries again
            log.info("cluster_level_retry", level=level, reason=exc.message)

    def _targets(self, configuration: dict[str, bool], me: str) -> dict[str, tuple[str, str]]:
        """Every other server - in the Raft configuration or in the directory - as (id, client address)."""
        node = self._node
        book = node.members()  # static peers and the directory, without removed ids
        directory = node.directory()
        targets = {}
        for address in sorted((set(configuration) | set(directory)) - {me}):
            known = directory.get(address) or book.get(address)
            targets[address] = (known.id, known.client_address) if known is not None else ("", "")
        return targets

    def _observe(
        self,
        health: ServerHealth,
        answer: cluster_pb2.StatusResponse | None,
        raft_connected: bool,
        term: int,
        commit_index: int,
        now: float,
        now_ms: int,
    ) -> None:
        healthy = False
        if answer is not None:
            health.reachable = True
            health.last_contact_unix_ms = now_ms
            health.applied_index, health.commit_index = answer.applied_index, answer.commit_index
            health.apply_level = levels.stored_level(answer.apply_level)
            # Consul's definition, with pysyncobj's numbers: it follows this leader in this term, has
            # caught up since it started, and trails the commit index by at most max_trailing_logs.
            healthy = (
                answer.ready
                and answer.term == term
                and answer.leader_id == self._node.node_id
                and commit_index - answer.applied_index <= self._config.max_trailing_logs
            )
        else:
            health.reachable = False
        if answer is not None or raft_connected:
            health.unreachable_since = None
        elif health.unreachable_since is None:
            health.unreachable_since = now
        if healthy and health.stable_since is None:
            health.stable_since, health.stable_since_unix_ms = now, now_ms
        elif not healthy:
            health.stable_since, health.stable_since_unix_ms = None, 0

    async def _probe(self, client_address: str) -> cluster_pb2.StatusResponse | None:
        if not client_address:
            return None
        stub = cluster_pb2_grpc.ClusterStub(self._node.peer_channel(client_address))
        try:
            answer: cluster_pb2.StatusResponse = await stub.Status(cluster_pb2.StatusRequest(), timeout=PROBE_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            return None
        return answer

    def _report_too_old(self, views: list[ServerView], cluster_level: int) -> None:
        """Say once per leadership that a learner stays one because its release is below the cluster level."""
        for view in views:
            level = view.health.apply_level
            if view.learner and not view.voter and 0 < level < cluster_level and view.raft_address not in self._too_old:
                self._too_old.add(view.raft_address)
                log.warning(
                    "learner_too_old",
                    member=view.id,
                    applies=level,
                    cluster_level=cluster_level,
                    hint="its release applies an older cluster level: upgrade it; it is not promoted until then",
                )

    def _report_kept(self, views: list[ServerView], voters: int, now: float) -> None:
        """Say once why a dead voter stays: removing it would go below min_quorum or a healthy majority."""
        cleanup = self._policy.dead_server_cleanup_s
        if cleanup <= 0:
            return
        for view in views:
            if view.voter and _down_for(view, now) >= cleanup and view.raft_address not in self._kept:
                self._kept.add(view.raft_address)
                log.warning(
                    "dead_server_kept",
                    member=view.id,
                    voters=voters,
                    min_quorum=self._policy.min_quorum,
                    hint="removing it would leave fewer than min_quorum voters or no healthy majority; "
                    "replace it (add a server, then remove this one) or lower min_quorum",
                )
