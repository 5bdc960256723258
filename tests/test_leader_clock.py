"""The leader's clock (controlplane/server/leader_clock.py) with a wall clock and a monotonic clock
the test moves: steps of the wall clock are not followed, small corrections are, readings never go
back within a term, and a new term starts from the wall clock, no earlier than the state's time."""

from __future__ import annotations

import pytest

from controlplane.server.leader_clock import SLEW, LeaderClock

START_MS = 1_800_000_000_000
HOUR_MS = 3_600_000


class Clocks:
    def __init__(self) -> None:
        self.wall_ms = float(START_MS)
        self.monotonic = 100.0

    def wall_ns(self) -> int:
        return int(self.wall_ms * 1_000_000)

    def advance(self, seconds: float) -> None:
        """Real time passing: both clocks move."""
        self.wall_ms += seconds * 1000
        self.monotonic += seconds

    def clock(self) -> LeaderClock:
        return LeaderClock(wall_ns=self.wall_ns, monotonic=lambda: self.monotonic)


def test_it_reads_the_wall_clock_while_the_wall_clock_behaves() -> None:
    clocks = Clocks()
    clock = clocks.clock()
    assert clock.now_ms(term=1) == START_MS
    clocks.advance(2.5)
    assert clock.now_ms(term=1) == START_MS + 2_500


@pytest.mark.parametrize("step_ms", [HOUR_MS, -HOUR_MS, 60_000, -60_000])
def test_a_step_of_the_wall_clock_is_not_followed_either_way(step_ms: int) -> None:
    clocks = Clocks()
    clock = clocks.clock()
    clock.now_ms(term=1)
    clocks.wall_ms += step_ms  # NTP steps, a VM resumes, someone runs date
    clocks.advance(10)
    reading = clock.now_ms(term=1)
    # Ten seconds passed: the reading moved ten seconds, within the slew towards the stepped clock.
    assert abs(reading - (START_MS + 10_000)) <= 10_000 * SLEW + 1
    clocks.wall_ms -= step_ms  # the clock is put right
    clocks.advance(10)
    assert abs(clock.now_ms(term=1) - (START_MS + 20_000)) <= 20_000 * SLEW + 1


def test_a_small_correction_is_caught_up_at_the_slew_rate() -> None:
    clocks = Clocks()
    clock = clocks.clock()
    clock.now_ms(term=1)
    clocks.wall_ms += 200  # NTP corrects the clock by 200 ms
    for _ in range(30):
        clocks.advance(1)
        reading = clock.now_ms(term=1)
    assert reading == int(clocks.wall_ms)  # caught up within 20 s at 1 %


def test_readings_never_go_back_within_a_term_and_never_behind_the_state() -> None:
    clocks = Clocks()
    clock = clocks.clock()
    first = clock.now_ms(term=1)
    clocks.monotonic -= 5  # a monotonic clock cannot go back; the reading would not either
    assert clock.now_ms(term=1) >= first
    assert clock.now_ms(term=1, floor_ms=START_MS + 7_000) == START_MS + 7_000


def test_a_new_term_starts_from_the_wall_clock_no_earlier_than_the_state() -> None:
    clocks = Clocks()
    clock = clocks.clock()
    clock.now_ms(term=1)
    clocks.wall_ms += HOUR_MS
    clocks.advance(1)
    assert clock.now_ms(term=1) < START_MS + 2_000  # not followed while leading
    # Elected again later: it has no reading of its own in this term, so it takes the wall clock
    # (a leader whose clock is wrong when it is elected is no better than that clock).
    assert clock.now_ms(term=2) == int(clocks.wall_ms)
    clocks.wall_ms = START_MS  # and behind the state: the state's time is the floor
    assert clock.now_ms(term=3, floor_ms=START_MS + 5_000) == START_MS + 5_000
