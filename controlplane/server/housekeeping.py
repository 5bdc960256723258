"""Work only the leader does on a timer: expiring leases and the port leak-repair pass.

Both are *decisions recorded in the log*: the leader proposes a command and the state machine
re-checks it against the entry's time and state, so a keepalive or a fresh report that committed
first always wins, and every replica changes the same things at the same revision.

Lease expiry never cuts a live lease short across an election: a lease is proposed for expiry only
when its deadline (renewal + TTL, in leader-stamped time) has passed *and* this server has itself
been leader for at least that lease's TTL (etcd's rule). A holder that was renewing against the old
leader therefore always gets one full TTL to find the new one, whatever the clocks say.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

import structlog

from controlplane.errors import ControlPlaneError
from controlplane.server.config import ServerConfig
from controlplane.v1 import command_pb2, leases_pb2, ports_pb2

if TYPE_CHECKING:
    from controlplane.server.node import Node

log = structlog.get_logger("controlplane.housekeeping")

# One expiry command names at most this many leases (keeps a log entry small after an outage).
MAX_EXPIRE_PER_COMMAND = 1000
PROPOSE_TIMEOUT_S = 5.0


class Housekeeper:
    def __init__(self, node: Node, config: ServerConfig) -> None:
        self._node = node
        self._config = config
        self._leader_since: float | None = None
        self._next_repair = 0.0

    def leader_for_s(self) -> float:
        """Seconds this server has led without interruption (0 when it does not lead)."""
        return 0.0 if self._leader_since is None else time.monotonic() - self._leader_since

    async def run(self) -> None:
        node = self._node
        while True:
            await asyncio.sleep(self._config.lease_check_interval_s)  # a timer: this is periodic work
            if not node.raft.is_leader() or not node.raft.is_ready():
                self._leader_since = None
                continue
            if self._leader_since is None:
                self._leader_since = time.monotonic()
                self._next_repair = self._leader_since + self._config.ports_repair_interval_s
            try:
                await self._expire_leases()
                if self._config.ports_repair_interval_s and time.monotonic() >= self._next_repair:
                    self._next_repair = time.monotonic() + self._config.ports_repair_interval_s
                    await self._repair()
            except ControlPlaneError as exc:
                # Lost leadership or quorum mid-proposal: the next leader takes over the job.
                log.info("housekeeping_retry", reason=exc.message)
            except Exception:  # a bug: keep the timer alive, and say so loudly
                log.exception("housekeeping_failed")

    def due_leases(self, now_unix_ms: int) -> list[int]:
        node = self._node
        led_ms = self.leader_for_s() * 1000
        with node.state_lock:
            due = node.machine.leases.expired_by(now_unix_ms)
        return [lease.id for lease in due if lease.ttl_ms <= led_ms][:MAX_EXPIRE_PER_COMMAND]

    async def _expire_leases(self) -> None:
        due = self.due_leases(time.time_ns() // 1_000_000)
        if not due:
            return
        result = await self._node.write(
            command_pb2.Command(
                request_id=f"expire-{uuid.uuid4().hex}", lease_expire=leases_pb2.ExpireLeases(lease_ids=due)
            ),
            PROPOSE_TIMEOUT_S,
        )
        if result.lease_expire.expired:
            log.info("leases_expired", leases=list(result.lease_expire.expired))

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
            log.warning("leaked_ports_released", ports=[f"{a.service}/{a.name}@{a.host}:{a.port}" for a in released])
