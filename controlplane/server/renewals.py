"""Lease renewals held by the leader in memory, as etcd's lessor does: a keepalive costs no log entry.

A thousand agents renewing every few seconds through the log cost hundreds of writes per second and,
on a busy machine, queued their renewals behind other writes until leases expired (measured: 949
lost leases during a minute of churn on a shared 2-core machine). Here the leader answers a renewal
from memory, and only the leader decides expiry, so its memory is the authority:

* the leader records each renewal's time (``renew``) on two clocks: the wall clock, which goes into
  checkpoints and views, and the monotonic clock, which decides expiry. The housekeeper expires a
  lease only when the replicated renewal time is older than the TTL by the wall clock *and* this
  leader's own renewal is by the monotonic one, so a step of the leader's wall clock (NTP, a VM
  resumed) cannot expire a lease whose holder keeps renewing: before, a jump of a minute expired
  every lease at once;
* a renewal that arrives while an expiry naming the lease is being proposed (``expiring``) goes
  through the log instead, so the log's order decides between them, as before;
* every ``checkpoint_interval_s`` the leader writes the renewals since the last checkpoint into the
  log in one command (``lease_checkpoint``, no revision): followers' views of liveness stay within
  that interval, and a new leader starts from them;
* a new leader starts with an empty table, answers from memory only once a barrier of its term has
  applied (an expiry an earlier leader appended can no longer commit later), and expires nothing
  before it has led for the lease's TTL plus ``leader_fallback_s`` (the time a deposed leader may go
  on answering from memory before it notices): every holder gets a full TTL to find it;
* ``Peer.Propose`` refuses ``lease_expire`` and ``lease_checkpoint``: only the leader's own
  housekeeper proposes them, never a forwarded batch.

Nothing here survives a leadership change, and nothing needs to.

The holder's side of the contract: the leader may expire a lease as soon as a TTL has passed since
the renewal it last *processed* - a renewal still waiting in its queue does not count, nor one the
holder meant to send - so a holder must schedule renewals from the lease (every TTL/3 from the last
one *sent*), keep one in flight until the lease's deadline, and retry a failed one soon
(``controlplane/agent.py``). Issue 13 item 2 (every steady agent's lease lost at once at the end of
the bench's churn, no election, this table and the expiry pass working as designed) was a holder
that waited TTL/3 after *reading* each answer and gave up on a renewal after TTL/3: a delay of about
TTL/3 anywhere between the two left a whole TTL between renewals.
"""

from __future__ import annotations

import time


class LeaderRenewals:
    def __init__(self) -> None:
        self._renewed: dict[int, int] = {}
        self._renewed_monotonic: dict[int, float] = {}
        self._since_checkpoint: dict[int, int] = {}
        #: Leases named by an expiry proposal in flight: their renewals must go through the log.
        self.expiring: set[int] = set()
        #: Set by the housekeeper once a barrier of this leadership applied (nothing an earlier
        #: leader proposed can commit after it); until then every renewal goes through the log.
        self.ready = False

    def renew(self, lease_id: int, now_unix_ms: int, now_monotonic: float | None = None) -> None:
        self._renewed[lease_id] = now_unix_ms
        self._renewed_monotonic[lease_id] = time.monotonic() if now_monotonic is None else now_monotonic
        self._since_checkpoint[lease_id] = now_unix_ms

    def renewed(self, lease_id: int) -> int | None:
        """The wall-clock time (ms) of this leader's last renewal of the lease, for views and checkpoints."""
        return self._renewed.get(lease_id)

    def renewed_monotonic(self, lease_id: int) -> float | None:
        """The monotonic time (s) of that renewal: what expiry is decided on."""
        return self._renewed_monotonic.get(lease_id)

    def known(self) -> list[int]:
        return list(self._renewed)

    def take_checkpoint(self) -> dict[int, int]:
        """The renewals since the last checkpoint (and start the next interval)."""
        taken, self._since_checkpoint = self._since_checkpoint, {}
        return taken

    def restore_checkpoint(self, taken: dict[int, int]) -> None:
        """A checkpoint that could not be written: keep its renewals for the next one."""
        for lease_id, renewed in taken.items():
            self._since_checkpoint[lease_id] = max(renewed, self._since_checkpoint.get(lease_id, 0))

    def forget(self, lease_ids: list[int]) -> None:
        for lease_id in lease_ids:
            self._renewed.pop(lease_id, None)
            self._renewed_monotonic.pop(lease_id, None)
            self._since_checkpoint.pop(lease_id, None)

    def clear(self) -> None:
        """Leadership lost (or not yet held): none of this is authoritative any more."""
        self._renewed.clear()
        self._renewed_monotonic.clear()
        self._since_checkpoint.clear()
        self.expiring.clear()
        self.ready = False
