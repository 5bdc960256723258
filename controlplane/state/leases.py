"""The lease domain of the state machine: TTLs that holders keep alive, and what hangs on them.

Expiry is a *recorded* decision: the leader proposes ``lease_expire`` for leases it considers
dead (see ``server/leases.py`` for when), and the machine re-checks each one against the entry's
leader-stamped time, so a keepalive that committed first always wins and every replica releases
the same things at the same revision.

Renewals, as in etcd, change a lease's deadline without a new revision or watch event: a
thousand agents renewing every few seconds would otherwise flood the watch history. Everything a
lease *holds* changes with revisions as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from controlplane.state import limits
from controlplane.state.journal import Journal
from controlplane.state.tables import BackupSource
from controlplane.v1 import command_pb2, common_pb2, leases_pb2, watch_pb2

DOMAIN_LEASES = "leases"

CommandResult = command_pb2.CommandResult


class LeaseTable:
    name: ClassVar[str] = "leases"
    state_type: ClassVar[type[leases_pb2.LeasesState]] = leases_pb2.LeasesState
    backup_noun: ClassVar[str] = "a bad lease table"

    def __init__(self, journal: Journal, release: Callable[[int, str, bool], int]) -> None:
        # release(lease_id, reason, expired) frees what the lease holds and says how many port
        # assignments that was; expired tells a death (a node becomes DEAD) from a clean end.
        self._journal = journal
        self._release = release
        self.reset()

    def reset(self) -> None:
        self.leases: dict[int, leases_pb2.Lease] = {}
        self.next_id = 1

    def handlers(self) -> dict[str, Callable[[command_pb2.Command], CommandResult]]:
        return {
            "lease_grant": self._grant,
            "lease_keepalive": self._keepalive,
            "lease_revoke": self._revoke,
            "lease_expire": self._expire,
            "lease_checkpoint": self._checkpoint,
        }

    def exists(self, lease_id: int) -> bool:
        return lease_id in self.leases

    def deadline_ms(self, lease: leases_pb2.Lease) -> int:
        return lease.renewed_unix_ms + lease.ttl_ms

    def expired_by(self, now_unix_ms: int) -> list[leases_pb2.Lease]:
        """Leases whose deadline has passed at ``now_unix_ms``, oldest deadline first."""
        due = [lease for lease in self.leases.values() if self.deadline_ms(lease) <= now_unix_ms]
        return sorted(due, key=lambda lease: (self.deadline_ms(lease), lease.id))

    # ------------------------------------------------------------------ commands

    @property
    def _revision(self) -> int:
        return self._journal.revision

    @property
    def _now(self) -> int:
        return self._journal.time_unix_ms

    def _error(self, code: common_pb2.ErrorCode, message: str) -> CommandResult:
        return CommandResult(revision=self._revision, error=common_pb2.Error(code=code, message=message))

    def grant(self, ttl_ms: int) -> leases_pb2.Lease:
        """A new lease (one revision). The caller has checked the TTL."""
        lease = leases_pb2.Lease(id=self.next_id, ttl_ms=ttl_ms, granted_unix_ms=self._now, renewed_unix_ms=self._now)
        self.next_id += 1
        self.leases[lease.id] = lease
        self._journal.record_detail(DOMAIN_LEASES, str(lease.id), watch_pb2.EVENT_TYPE_PUT, None)
        return lease

    def renew(self, lease_id: int) -> leases_pb2.Lease | None:
        """Restart a lease's TTL (no revision); None if it is gone."""
        lease = self.leases.get(lease_id)
        if lease is not None:
            # A lease past its deadline that the leader has not yet expired is still alive: renewing
            # it is safe, since nothing it holds has been released.
            lease.renewed_unix_ms = self._now
        return lease

    def _grant(self, command: command_pb2.Command) -> CommandResult:
        ttl_ms = command.lease_grant.ttl_ms
        problem = limits.check_lease_ttl(ttl_ms)
        if problem:
            return self._error(common_pb2.ERROR_CODE_INVALID_ARGUMENT, problem)
        lease = self.grant(ttl_ms)
        return CommandResult(revision=self._revision, lease_grant=leases_pb2.GrantLeaseResponse(lease=lease))

    def _keepalive(self, command: command_pb2.Command) -> CommandResult:
        lease = self.renew(command.lease_keepalive.lease_id)
        if lease is None:
            return self._error(
                common_pb2.ERROR_CODE_NOT_FOUND,
                f"lease {command.lease_keepalive.lease_id} has expired or never existed; grant a new lease "
                "and attach again",
            )
        return CommandResult(revision=self._revision, lease_keepalive=leases_pb2.KeepAliveResponse(lease=lease))

    def end(self, lease_id: int, reason: str, expired: bool = False) -> int:
        """End a lease now, releasing what it holds; how many port assignments that freed.

        The lease leaves the table before what it holds is released, so a holder that ends the lease
        again while being released (a node deregistering ends its own lease) finds it gone: 0.
        """
        if self.leases.pop(lease_id, None) is None:
            return 0
        released = self._release(lease_id, reason, expired)
        self._journal.record_detail(DOMAIN_LEASES, str(lease_id), watch_pb2.EVENT_TYPE_DELETE, None)
        return released

    def _revoke(self, command: command_pb2.Command) -> CommandResult:
        lease_id = command.lease_revoke.lease_id
        if lease_id not in self.leases:
            return CommandResult(revision=self._revision, lease_revoke=leases_pb2.RevokeLeaseResponse(revoked=False))
        released = self.end(lease_id, f"lease {lease_id} revoked")
        return CommandResult(
            revision=self._revision,
            lease_revoke=leases_pb2.RevokeLeaseResponse(revoked=True, released_ports=released),
        )

    def _expire(self, command: command_pb2.Command) -> CommandResult:
        expired = []
        for lease_id in command.lease_expire.lease_ids:
            lease = self.leases.get(lease_id)
            # Re-checked against this entry's time: a keepalive committed since the leader decided wins.
            if lease is not None and self.deadline_ms(lease) <= self._now:
                self.end(lease_id, f"lease {lease_id} expired (TTL {lease.ttl_ms} ms)", expired=True)
                expired.append(lease_id)
        return CommandResult(revision=self._revision, lease_expire=leases_pb2.ExpireLeasesResult(expired=expired))

    def _checkpoint(self, command: command_pb2.Command) -> CommandResult:
        updated = 0
        for renewal in command.lease_checkpoint.renewals:
            lease = self.leases.get(renewal.lease_id)
            # Forward only, and never past this entry's own time (a leader clock ahead of the log's
            # would otherwise keep a lease alive beyond its TTL in leader-stamped time).
            renewed = min(renewal.renewed_unix_ms, self._now)
            if lease is not None and renewed > lease.renewed_unix_ms:
                lease.renewed_unix_ms = renewed
                updated += 1
        return CommandResult(
            revision=self._revision, lease_checkpoint=leases_pb2.LeaseCheckpointResult(updated=updated)
        )

    def to_state(self) -> leases_pb2.LeasesState:
        return leases_pb2.LeasesState(leases=self.leases.values(), next_lease_id=self.next_id)

    def load_state(self, state: leases_pb2.LeasesState | None) -> None:
        if state is None:
            self.reset()
        else:
            self.load(list(state.leases), state.next_lease_id)

    def check_backup(self, state: leases_pb2.LeasesState | None, backup: BackupSource) -> None:
        """Nothing to refuse: a lease's TTL restarts on restore, and ids only move forward."""

    def restore_backup(self, state: leases_pb2.LeasesState | None, backup: BackupSource) -> None:
        """Every restored lease gets a full TTL from now: its holder needs time to find the new
        state. No lease id is reused: holders of leases granted after the backup may still send it."""
        leases = list(state.leases) if state is not None else []
        next_id = max(self.next_id, state.next_lease_id if state is not None else 0)
        self.load(leases, next_id, renewed_unix_ms=self._journal.time_unix_ms)

    def load(self, leases: list[leases_pb2.Lease], next_id: int, renewed_unix_ms: int | None = None) -> None:
        """Replace every lease; ``renewed_unix_ms`` restarts their TTLs (a restore from a backup)."""
        self.reset()
        for lease in leases:
            copy = leases_pb2.Lease()
            copy.CopyFrom(lease)
            if renewed_unix_ms is not None:
                copy.renewed_unix_ms = renewed_unix_ms
            self.leases[copy.id] = copy
        self.next_id = max([next_id, 1, *(lease.id + 1 for lease in leases)])
