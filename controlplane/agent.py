"""An agent's membership life: register, keep the liveness lease alive, deregister on a clean stop.

``cpctl agent`` runs one; the benchmark runs a thousand in one process (each with its own client
and lease). The loop is asyncio so many share a thread cheaply.

The renewal schedule is what keeps the lease, so it is measured against the lease, not against the
last answer:

* a heartbeat goes out every third of the TTL *from the previous one's send time* (a slow answer
  does not stretch the period);
* each heartbeat may take until the lease runs out (the time the last renewal was sent plus the
  TTL: the server renewed it no earlier). An answer that is slow but arrives is still a renewal,
  and the client itself abandons an attempt that hangs (``RetryPolicy.attempt_timeout``) and tries
  another server within the same call;
* a heartbeat that fails is retried soon, never a whole interval later: half an interval after
  it was sent, or at once if it took longer than that to fail (plus a little jitter). A fleet of
  agents so never sends more than twice its normal heartbeat rate, and no more than its normal rate
  while answers are merely slow (a slow heartbeat delays the next one): retries cannot pile onto a
  busy leader.

So a lease survives any stall shorter than two thirds of the TTL - of the server's answers (less
the time it needs to catch up) or of the agent's own event loop - and elections (a new leader waits
one TTL before expiring anything).

Issue 13 item 2 (all 1,000 steady agents of ``make bench`` lost their leases at once at the end of
the churn, with no election) was the schedule this replaced: the next heartbeat waited a third of
the TTL *after the previous answer was read*, and a heartbeat was abandoned after a third of the TTL.
The leader may expire a lease as soon as it has heard nothing for a TTL (``server/renewals.py``), so
any delay of about TTL/3, in the server's answer or in the agent reading it, cost the lease:

* an answer later than TTL/3 (a busy leader, Raft still beating): the heartbeat timed out and the
  next went out a third of the TTL after that, a whole TTL after the last renewal;
* the bench's end-of-churn check turned ~4,000 node views per server into SDK objects in the process
  running the agents, blocking their event loop for 4-5 s at a time (measured) with short network
  waits in between. All the agents' heartbeats went out in those short windows, the burst's answers
  came back during the next blocked stretch, and each agent renewed once per *two* stretches: about
  a TTL between renewals, for every agent at once.

A heartbeat that finds the node dead (its lease expired while it was cut off) registers it again as
a new incarnation rather than giving up: an agent's job is to be a member.

``cpctl agent`` registers with a random instance id (``instance_id``), and the cluster refuses
(FAILED_PRECONDITION) a registration of a live node by another instance (``state/membership.py``).
Two agents started with the same ``--id`` used to share one lease, and the first to stop ended it for
both; now the second one's :meth:`Agent.start` raises, naming when the first one's lease expires, and
never retries. Without an instance id nothing is checked: a gossip worker restarted under its node id
while its lease lives takes the node back, as it always did (a sign of life, gossip/DESIGN.md). A
registration refused that way later (the id was taken over while this agent was cut off and its
lease expired) ends the heartbeat loop, and so does a heartbeat refused because the node now belongs
to another instance (the partition healed after the take-over): :attr:`Agent.displaced` says why,
and the agent does not deregister the other one's node.

An agent may also hold model artifacts (``cpctl agent --artifact-dir``): it then serves them on its
gossip port (``gossip.artifacts.ArtifactServer``) and, when its server finds a copy damaged on disk,
stops claiming that replica (:meth:`Agent.artifact_damaged`), so fetchers stop asking it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import structlog

from controlplane import agent_metrics
from controlplane.client import (
    AsyncClient,
    ControlPlaneError,
    FailedPrecondition,
    InvalidArgument,
    NodeState,
    NotFound,
    PermissionDenied,
    Registered,
    Unauthenticated,
)

# Registration answers that asking again cannot change (Agent.start raises them at once).
FINAL_REGISTRATION_ERRORS = (FailedPrecondition, InvalidArgument, PermissionDenied, Unauthenticated)

log = structlog.get_logger("controlplane.agent")


@dataclass
class AgentStats:
    registrations: int = 0
    heartbeats: int = 0
    failures: int = 0
    #: Seconds per heartbeat round trip, newest last (bounded).
    latencies: list[float] = field(default_factory=list)
    #: Times the node had to register again because its lease was gone.
    lease_lost: int = 0


class Agent:
    MAX_LATENCIES = 10_000
    #: Longest jitter added to a retry (and at most a tenth of the interval): see ``_retry_at``.
    RETRY_JITTER_S = 1.0

    def __init__(
        self,
        client: AsyncClient,
        node_id: str,
        *,
        ttl_s: float = 10.0,
        addresses: Mapping[str, str] | None = None,
        capabilities: Iterable[str] = (),
        gpus: int = 0,
        memory_bytes: int = 0,
        cpu_millis: int = 0,
        labels: Mapping[str, str] | None = None,
        version: str = "",
        activity: Callable[[], str] | None = None,
        instance_id: str = "",
    ) -> None:
        self.client = client
        self.node_id = node_id
        self.ttl_s = ttl_s
        self.addresses = dict(addresses or {})
        self.capabilities = tuple(capabilities)
        self.resources = (gpus, memory_bytes, cpu_millis)
        self.labels = dict(labels or {})
        self.version = version
        self._activity = activity
        #: This process's claim on the node id ("" claims nothing): see the module docstring.
        self.instance_id = instance_id
        #: Set when a registration was refused because another instance holds the id: the loop ended.
        self.displaced: FailedPrecondition | None = None
        self.stats = AgentStats()
        self.state = NodeState.UNSPECIFIED
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # Event-loop time at which the last successful renewal (registration or heartbeat) was sent:
        # the server renewed the lease no earlier, so it lives at least until this plus the TTL.
        self._renewed_at: float | None = None
        # The same instant on time.monotonic(), for the metrics thread (agent_metrics).
        self._renewed_monotonic: float | None = None
        agent_metrics.track_lease(self)
        # The node was found dead or gone: the next step is registering it again, not a heartbeat.
        self._lost = False
        # The next successful renewal schedules the one after it at a random point of the interval
        # (see _renew).
        self._spread_pending = True
        # Replica removals in flight (kept referenced: the loop holds tasks only weakly).
        self._background: set[asyncio.Task[None]] = set()

    @property
    def interval_s(self) -> float:
        """Seconds between heartbeats (a third of the TTL)."""
        return self.ttl_s / 3

    @property
    def registered(self) -> bool:
        """This instance registered the node, and no other instance has taken it over since."""
        return self._renewed_at is not None and self.displaced is None

    def lease_deadline_monotonic(self) -> float | None:
        """``lease_deadline`` on time.monotonic() (for the metrics thread)."""
        return None if self._renewed_monotonic is None else self._renewed_monotonic + self.ttl_s

    def lease_deadline(self) -> float | None:
        """Event-loop time until which the lease surely lives (None before the first registration)."""
        return None if self._renewed_at is None else self._renewed_at + self.ttl_s

    async def register(self) -> Registered:
        sent, sent_monotonic = asyncio.get_running_loop().time(), time.monotonic()
        gpus, memory_bytes, cpu_millis = self.resources
        registered = await self.client.membership.register_node(
            self.node_id,
            role="agent",
            ttl_s=self.ttl_s,
            addresses=self.addresses,
            capabilities=self.capabilities,
            gpus=gpus,
            memory_bytes=memory_bytes,
            cpu_millis=cpu_millis,
            labels=self.labels,
            version=self.version,
            instance_id=self.instance_id,
        )
        self.stats.registrations += 1
        agent_metrics.REGISTRATIONS.inc()
        self.state = registered.node.state
        self._renewed_at, self._renewed_monotonic, self._lost = sent, sent_monotonic, False
        return registered

    async def heartbeat(self, timeout: float | None = None) -> NodeState:
        """Renew the lease once. The call may take ``timeout`` seconds; by default as long as the lease
        surely lives (at least a third of the TTL): abandoning a slow renewal that could still land
        only to send the next one later is how leases were lost (see the module docstring)."""
        loop = asyncio.get_running_loop()
        sent, sent_monotonic = loop.time(), time.monotonic()
        if timeout is None:
            deadline = self.lease_deadline()
            timeout = max(self.interval_s, deadline - sent if deadline is not None else 0.0)
        started = time.perf_counter()
        activity = self._activity() if self._activity is not None else ""
        try:
            self.state = await self.client.membership.heartbeat(
                self.node_id, activity=activity, instance_id=self.instance_id, timeout=timeout
            )
        except ControlPlaneError:
            agent_metrics.HEARTBEATS.labels(result="failed").inc()
            raise
        self._renewed_at, self._renewed_monotonic = sent, sent_monotonic
        latency = time.perf_counter() - started
        agent_metrics.HEARTBEATS.labels(result="ok").inc()
        agent_metrics.HEARTBEAT_SECONDS.observe(latency)
        self.stats.heartbeats += 1
        if len(self.stats.latencies) >= self.MAX_LATENCIES:
            del self.stats.latencies[: self.MAX_LATENCIES // 2]
        self.stats.latencies.append(latency)
        return self.state

    async def start(self) -> None:
        """Register (retrying until the cluster answers), renew once, and start the heartbeat loop.

        An answer that asking again cannot change is raised at once (``FINAL_REGISTRATION_ERRORS``):
        another running agent holds the id, the registration would break a network's requirements,
        the request is invalid, or this identity may not register. Before, all but the first two
        were retried for ever, with a warning a second.

        The first renewal (which turns the node ACTIVE) is handled like every later one: a failure
        is retried by the loop, never raised. An agent frozen (SIGSTOP, a paused VM) while that
        renewal was in flight used to find, when it thawed, its deadline passed, and exit with a
        traceback instead of renewing or finding itself :attr:`displaced`."""
        while True:
            try:
                await self.register()
                break
            except FINAL_REGISTRATION_ERRORS:
                raise
            except ControlPlaneError as exc:
                self.stats.failures += 1
                log.warning("agent_register_retry", node=self.node_id, reason=exc.message)
                await asyncio.sleep(min(self.ttl_s / 3, 1.0))  # retry pacing while the cluster is away
        due = await self._renew()
        if due is not None:  # None: displaced already; wait_ended returns at once
            self._task = asyncio.create_task(self._run(due))

    async def _run(self, due: float) -> None:
        while await self._wait_until(due):
            next_due = await self._renew()
            if next_due is None:
                return
            due = next_due

    async def _renew(self) -> float | None:
        """One renewal (registering the node again first if it was found lost), every answer handled:
        the event-loop time of the next one, or None once :attr:`displaced`."""
        loop = asyncio.get_running_loop()
        sent = loop.time()
        # The first renewal, and the first after a failure, schedules the next at a random point of
        # the interval: agents that start or fail together (an election, a leader that lost their
        # leases) would otherwise beat in step. Armed until a renewal succeeds.
        spread, self._spread_pending = self._spread_pending, True
        try:
            if self._lost:
                await self.register()
            await self.heartbeat()
        except NotFound:
            if self._lost:  # registering it again was answered NOT_FOUND too: never spin
                return self._retry_at(sent)
            self.stats.lease_lost += 1
            agent_metrics.LEASES_LOST.inc()
            log.warning("agent_lease_lost", node=self.node_id, hint="registering again")
            self._lost = True
            return loop.time()  # register again at once
        except FailedPrecondition as exc:
            # Another instance registered the id after this one's lease expired (this one was cut
            # off): the node is theirs. Asking again cannot change that, and deregistering would
            # end their lease.
            self.displaced = exc
            agent_metrics.untrack_lease(self)  # the lease is the other instance's now
            log.error("agent_displaced", node=self.node_id, reason=exc.message)
            return None
        except ControlPlaneError as exc:
            self.stats.failures += 1
            log.warning("agent_heartbeat_failed", node=self.node_id, reason=exc.message)
            return self._retry_at(sent)
        except Exception:  # a bug (ours or the client's): keep the node a member, and say so loudly
            self.stats.failures += 1
            log.exception("agent_heartbeat_error", node=self.node_id)
            return self._retry_at(sent)
        assert self._renewed_at is not None  # set by the heartbeat that just succeeded
        self._spread_pending = False
        if spread:
            # Spread a thousand agents started together (or failed together) over the interval
            # instead of beating in lockstep; within one interval of the last renewal, so the beat
            # is never late.
            return self._renewed_at + random.uniform(0, self.interval_s)
        return self._renewed_at + self.interval_s

    async def wait_ended(self) -> None:
        """Until the heartbeat loop ends: stopped, or :attr:`displaced`."""
        if self._task is not None:
            await asyncio.shield(self._task)

    def _retry_at(self, sent: float) -> float:
        """When to try again after a try sent at ``sent`` failed: half an interval after it was sent,
        or at once if it took longer than that to fail - jittered, so a fleet that failed together
        does not come back in lockstep. Soon enough to land before the lease runs out, and never more
        than twice the normal heartbeat rate whatever the errors."""
        jitter = random.uniform(0, min(self.RETRY_JITTER_S, self.interval_s / 10))
        return max(sent + self.interval_s / 2, asyncio.get_running_loop().time()) + jitter

    async def _wait_until(self, when: float) -> bool:
        """Sleep until event-loop time ``when``, or until stopped; False once stopped."""
        delay = when - asyncio.get_running_loop().time()
        if delay > 0:
            await self._wait(delay)
        return not self._stopping.is_set()

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def artifact_damaged(self, model: str, version: int, reason: str) -> None:
        """The local copy of a version's artifact no longer verifies (``ArtifactServer.on_damaged``): stop
        claiming it as a replica, in the background, so that fetchers stop asking this node for it. The
        damaged file stays on disk for inspection; fetching the version again replaces it."""
        task = asyncio.get_running_loop().create_task(self._drop_replica(model, version, reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _drop_replica(self, model: str, version: int, reason: str) -> None:
        try:
            await self.client.models.remove_replica(model, version, self.node_id)
        except ControlPlaneError as exc:
            # The registry keeps listing this node; fetchers still verify every chunk and skip it.
            log.warning(
                "agent_replica_not_removed", node=self.node_id, model=model, version=version, reason=exc.message
            )
        else:
            log.warning("agent_replica_removed", node=self.node_id, model=model, version=version, reason=reason)

    async def stop(self, deregister: bool = True) -> None:
        """Stop heartbeating; with ``deregister``, leave cleanly (networks left, lease ended), unless
        :attr:`displaced`."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        agent_metrics.untrack_lease(self)
        # Only a node this instance registered, and never once displaced: the node, and its lease,
        # may be another instance's (deregistering names no instance, so it would end theirs).
        if deregister and self.registered:
            await self.client.membership.deregister(self.node_id)
            self.state = NodeState.LEFT
