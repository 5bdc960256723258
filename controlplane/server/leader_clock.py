"""The time a leader stamps on the log and measures deadlines by: its wall clock, held to its
monotonic clock while it leads.

Every batch carries the leader's time, which becomes the cluster's (``state.time_unix_ms``, which
never moves backwards); lease, reap and round deadlines and the dedupe window are measured in it,
and the leader decides expiry by comparing them with its own readings. A step of the leader's wall
clock (NTP stepping, a hypervisor setting the guest's time, someone running ``date``) would move
all of that with it, and a
forward step would stay after the clock is put right: the state's time never goes back, so every
deadline set during the step would stand that much in the future (a lease renewed during a +1 h
step kept a dead holder's ports for an hour), and the new readings would be behind the state's.

So while a server leads, its readings move with its boot-time clock (monotonic, and counting a
suspend, so a machine waking up is not mistaken for a step) and follow the wall clock only within
``SLEW`` of it (1 %, twenty times NTP's own 500 ppm limit): a small correction is caught up within
seconds, a step is not followed. The first reading of a leadership is the wall clock, but no
earlier than the state's time (a new leader whose clock is behind does not read the past). So a
leader whose wall clock is ahead when it is elected, an election during a step included, moves
the cluster's time with it, as before: no server can tell a step from a catch-up after a long
partition or restart there (docs/faults.md).

Only the leader's decisions use it; time shown to people (views, backups) stays the wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["SLEW", "LeaderClock"]

#: How much faster or slower than the monotonic clock the readings may move to catch up with the
#: wall clock.
SLEW = 0.01


class LeaderClock:
    """Readings in Unix milliseconds that never go back within a term and move at the monotonic
    clock's rate, within ``SLEW``, towards the wall clock. Use from one thread (the event loop)."""

    def __init__(
        self,
        wall_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] | None = None,
        slew: float = SLEW,
    ) -> None:
        self._wall_ns = wall_ns
        self._monotonic = monotonic or _boot_clock()
        self._slew = slew
        self._term = -1
        #: (the last reading, the monotonic time it was taken), within ``_term``.
        self._last: tuple[float, float] | None = None
        #: The last reading less the wall clock read with it (ms).
        self._offset_ms = 0.0

    def now_ms(self, term: int, floor_ms: int = 0) -> int:
        """This leadership's reading. ``term``: the current term (a new one starts afresh);
        ``floor_ms``: the state's time, which a reading never falls behind."""
        wall = self._wall_ns() / 1_000_000
        monotonic = self._monotonic()
        if term != self._term or self._last is None:
            self._term = term
            reading = wall
        else:
            last, last_monotonic = self._last
            elapsed = max(0.0, monotonic - last_monotonic) * 1000
            lowest, highest = last + elapsed * (1 - self._slew), last + elapsed * (1 + self._slew)
            reading = max(min(max(wall, lowest), highest), last)
        reading = max(reading, float(floor_ms))
        self._last = (reading, monotonic)
        self._offset_ms = reading - wall
        return int(reading)

    def offset_ms(self) -> float:
        """How far the last reading was ahead of the wall clock (negative: behind); 0 before any."""
        return self._offset_ms


def _boot_clock() -> Callable[[], float]:
    """Linux's boot-time clock: monotonic, and counting a suspend (CLOCK_MONOTONIC stops during
    one, so a resumed machine's correct wall clock would look like a step). Elsewhere, monotonic."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return time.monotonic
    return lambda: time.clock_gettime(boottime)
