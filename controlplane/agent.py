"""An agent's membership life: register, keep the liveness lease alive, deregister on a clean stop.

``cpctl agent`` runs one; the benchmark runs a thousand in one process (each with its own client
and lease). The loop is asyncio so many share a thread cheaply.

Heartbeats go out every third of the TTL, so two can be lost (or one election can pass, since a
new leader waits one TTL before expiring anything) before the lease is at risk. A heartbeat that
finds the node dead (its lease expired while it was cut off) registers it again as a new
incarnation rather than giving up: an agent's job is to be a member.

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

from controlplane.client import AsyncClient, ControlPlaneError, NodeState, NotFound, Registered

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
        self.stats = AgentStats()
        self.state = NodeState.UNSPECIFIED
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # Replica removals in flight (kept referenced: the loop holds tasks only weakly).
        self._background: set[asyncio.Task[None]] = set()

    async def register(self) -> Registered:
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
        )
        self.stats.registrations += 1
        self.state = registered.node.state
        return registered

    async def heartbeat(self) -> NodeState:
        started = time.perf_counter()
        activity = self._activity() if self._activity is not None else ""
        # Bounded by the heartbeat interval: a call stuck behind an overloaded leader is abandoned and
        # the next one sent, instead of one slow call eating the whole TTL.
        self.state = await self.client.membership.heartbeat(self.node_id, activity=activity, timeout=self.ttl_s / 3)
        latency = time.perf_counter() - started
        self.stats.heartbeats += 1
        if len(self.stats.latencies) >= self.MAX_LATENCIES:
            del self.stats.latencies[: self.MAX_LATENCIES // 2]
        self.stats.latencies.append(latency)
        return self.state

    async def start(self) -> None:
        """Register (retrying until the cluster answers) and start the heartbeat loop."""
        while True:
            try:
                await self.register()
                break
            except ControlPlaneError as exc:
                self.stats.failures += 1
                log.warning("agent_register_retry", node=self.node_id, reason=exc.message)
                await asyncio.sleep(min(self.ttl_s / 3, 1.0))  # retry pacing while the cluster is away
        await self.heartbeat()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        interval = self.ttl_s / 3
        # Spread a thousand agents started together over the interval instead of beating in lockstep.
        await self._wait(random.uniform(0, interval))
        while not self._stopping.is_set():
            try:
                await self.heartbeat()
            except NotFound:
                self.stats.lease_lost += 1
                log.warning("agent_lease_lost", node=self.node_id, hint="registering again")
                with contextlib.suppress(ControlPlaneError):
                    await self.register()
                    await self.heartbeat()
            except ControlPlaneError as exc:
                self.stats.failures += 1
                log.warning("agent_heartbeat_failed", node=self.node_id, reason=exc.message)
            await self._wait(interval)

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
        """Stop heartbeating; with ``deregister``, leave cleanly (networks left, lease ended)."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if deregister:
            await self.client.membership.deregister(self.node_id)
            self.state = NodeState.LEFT
