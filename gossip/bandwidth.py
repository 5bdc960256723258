"""Bandwidth estimation for the local node's links, and the schedule of active probes.

Each link has a :class:`LinkEstimate`: an EWMA of throughput and an EWMA of its mean absolute
deviation, exactly as TCP smooths round-trip times (RFC 6298: ``srtt``/``rttvar``, gains 1/8 and
1/4), plus the link's latency. Latency and bandwidth are separated by transfer size: a transfer of
``b`` bytes takes ``latency + b / bandwidth`` seconds, so with samples at two sizes a least-squares
line through (bytes, seconds) gives the latency as its intercept. Throughput observations are then
corrected for that latency before they enter the EWMA, so a 1 KiB probe and a 100 MiB model exchange
measure the same quantity; a probe so small that latency dominates it contributes the fitted bandwidth
rather than its own noisy throughput. Active probes and passive samples from real exchanges feed the
same estimator.

Pure: the time of a sample is an argument, never read from a clock here; nothing does I/O.
Units are the caller's (bytes and seconds give bytes/s); 0.0 bandwidth means "unknown", as in the
matrices ``gossip.matching`` consumes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from gossip.matching import round_rng

__all__ = [
    "ALPHA",
    "BETA",
    "LATENCY_DOMINATED",
    "MAX_LATENCY_SHARE",
    "OUTLIER_SPREADS",
    "RECENT_SAMPLES",
    "BandwidthTable",
    "LinkEstimate",
    "fit_latency_bandwidth",
    "link_matrix",
    "probe_schedule",
]

ALPHA = 1 / 8
"""EWMA gain of the throughput estimate (RFC 6298's alpha): a new sample moves it by 1/8."""
BETA = 1 / 4
"""EWMA gain of the spread (RFC 6298's beta): deviation reacts faster than the mean."""
RECENT_SAMPLES = 16
"""Samples kept per link for the latency fit: enough to average noise, few enough to follow a route change."""
LATENCY_DOMINATED = 0.5
"""A sample whose duration is more than half latency (a small probe) feeds the EWMA with the fitted
bandwidth instead of its own throughput."""
OUTLIER_SPREADS = 3.0
"""An observation further than this many spreads from the estimate enters the EWMA clipped to that
distance (a Huber-style EWMA): one exchange slowed by a busy CPU or sped up by a late clock moves the
estimate by at most ALPHA x 3 spreads, while the spread itself takes the full deviation, so a real
change widens the window within a few samples and the estimate follows."""
MAX_LATENCY_SHARE = 0.9
"""Without a fit of the current samples, the correction by a previously known latency removes at most
90% of a sample's duration, so a stale latency can inflate one observation at most 10x instead of
dividing by ~0."""


def fit_latency_bandwidth(samples: Sequence[tuple[int, float]]) -> tuple[float, float] | None:
    """Least-squares ``seconds = latency + bytes / bandwidth`` over (bytes, seconds) samples.

    Returns (latency, bandwidth), or None when the samples cannot separate the two: fewer than two
    distinct sizes, or a non-positive slope (noise larger than the size effect). A negative intercept
    (noise) is clamped: latency 0.0 and the line refitted through the origin.
    """
    if len({b for b, _ in samples}) < 2:
        return None
    x = np.array([float(b) for b, _ in samples])
    y = np.array([s for _, s in samples], dtype=np.float64)
    x_mean, y_mean = x.mean(), y.mean()
    sxx = float(np.sum((x - x_mean) ** 2))
    slope = float(np.sum((x - x_mean) * (y - y_mean))) / sxx
    if slope <= 0.0:
        return None
    intercept = float(y_mean - slope * x_mean)
    if intercept < 0.0:
        slope = float(np.dot(x, y) / np.dot(x, x))  # through the origin: no latency at all
        return 0.0, 1.0 / slope
    return intercept, 1.0 / slope


@dataclass(frozen=True)
class LinkEstimate:
    """What the local node believes about its link to ``peer``. Immutable: updates return a new one."""

    peer: str
    bandwidth: float = 0.0
    """Smoothed throughput, latency removed (bytes/s). 0.0 until the first sample."""
    spread: float = 0.0
    """Smoothed mean absolute deviation of throughput observations around ``bandwidth``."""
    latency: float = 0.0
    """Seconds, from the least-squares fit over ``recent``; 0.0 until two transfer sizes were seen."""
    samples: int = 0
    failures: int = 0
    updated_at: float | None = None
    recent: tuple[tuple[int, float], ...] = ()
    """The last RECENT_SAMPLES (bytes, seconds) samples, oldest first."""

    def observe(self, nbytes: int, seconds: float, now: float) -> LinkEstimate:
        """Fold in one transfer of ``nbytes`` that took ``seconds`` (a probe or a real exchange).

        The first sample sets ``bandwidth`` and ``spread = bandwidth / 2`` (RFC 6298's first-sample
        rule); later ones move them by ALPHA and BETA, the bandwidth by the observation clipped to
        OUTLIER_SPREADS spreads of the estimate, the spread by the whole deviation.
        """
        if isinstance(nbytes, bool) or not isinstance(nbytes, int | np.integer) or nbytes <= 0:
            raise ValueError(f"a sample needs a positive integer byte count, got {nbytes!r}")
        nbytes = int(nbytes)
        if not (math.isfinite(seconds) and seconds > 0.0):
            raise ValueError(f"a sample needs a positive, finite duration, got {seconds!r}")
        self._check_time(now)
        recent = (*self.recent, (nbytes, seconds))[-RECENT_SAMPLES:]
        fit = fit_latency_bandwidth(recent)
        latency = fit[0] if fit is not None else self.latency  # one size only: keep what we knew
        transfer = seconds - latency
        if fit is not None and transfer < seconds * LATENCY_DOMINATED:
            # Mostly latency: its own throughput is noise divided by a tiny transfer time. The fit
            # across sizes is the better witness of bandwidth, so that is what this sample reports.
            observed = fit[1]
        else:
            observed = nbytes / max(transfer, seconds * (1.0 - MAX_LATENCY_SHARE))
        return self._fold(observed, latency, recent, 1, now)

    def observe_probe(self, transfers: Sequence[tuple[int, float]], now: float) -> LinkEstimate:
        """Fold in one probe: ``(bytes, seconds)`` transfers of at least two sizes over the same warm
        connection, timed alike. Their own least-squares line is the observation: its slope the
        bandwidth, so neither the order of the sizes nor a latency learnt from differently timed
        samples can bias it. One observation per probe, however many transfers. Its intercept (the
        fixed cost of a whole exchange) and its transfers stay out of ``latency`` and ``recent``:
        those correct the passive samples, timed by the receive clock alone, and a whole exchange's
        fixed cost subtracted from them read a link 25% fast within a dozen exchanges. Transfers
        that cannot be fitted (one size, or the larger one faster) are folded in one by one, as
        ``observe`` would."""
        for nbytes, seconds in transfers:
            if isinstance(nbytes, bool) or not isinstance(nbytes, int | np.integer) or nbytes <= 0:
                raise ValueError(f"a sample needs a positive integer byte count, got {nbytes!r}")
            if not (math.isfinite(seconds) and seconds > 0.0):
                raise ValueError(f"a sample needs a positive, finite duration, got {seconds!r}")
        self._check_time(now)
        fit = fit_latency_bandwidth(transfers)
        if fit is None:
            est = self
            for nbytes, seconds in transfers:
                est = est.observe(nbytes, seconds, now)
            return est
        return self._fold(fit[1], self.latency, self.recent, len(transfers), now)

    def _fold(
        self, observed: float, latency: float, recent: tuple[tuple[int, float], ...], count: int, now: float
    ) -> LinkEstimate:
        if self.samples == 0:
            bandwidth, spread = observed, observed / 2
        else:
            window = OUTLIER_SPREADS * self.spread
            clipped = min(max(observed, self.bandwidth - window), self.bandwidth + window)
            spread = (1 - BETA) * self.spread + BETA * abs(self.bandwidth - observed)
            bandwidth = (1 - ALPHA) * self.bandwidth + ALPHA * clipped
        return replace(
            self,
            bandwidth=bandwidth,
            spread=spread,
            latency=latency,
            samples=self.samples + count,
            updated_at=now,
            recent=recent,
        )

    def penalise(self, now: float) -> LinkEstimate:
        """A failed exchange: halve the bandwidth estimate (TCP's multiplicative decrease).

        One failure takes a link at b* down to b*/2, below SAPS's threshold (0.9 b*), so the next
        matchings avoid it; repeated failures decay it geometrically towards 0 (= no link). A link
        that recovers earns its estimate back through ordinary samples (from 0.5 to 0.9 of its
        throughput in about 12 samples at ALPHA = 1/8). The spread grows by the amount removed: the
        estimate is now less certain.
        """
        self._check_time(now)
        drop = self.bandwidth / 2
        return replace(
            self,
            bandwidth=self.bandwidth - drop,
            spread=self.spread + drop,
            failures=self.failures + 1,
            updated_at=now,
        )

    def _check_time(self, now: float) -> None:
        if not math.isfinite(now):
            raise ValueError(f"time must be finite, got {now!r}")
        if self.updated_at is not None and now < self.updated_at:
            raise ValueError(f"time went backwards for link to {self.peer}: {now} < {self.updated_at}")


class BandwidthTable:
    """The local node's estimates for each of its links, and what still has to be reported.

    ``report_batch`` returns the estimates that changed since the previous call, so the node sends
    (through Raft, later) only what moved; with ``min_relative_change`` > 0, estimates whose
    bandwidth and latency both stayed within that fraction of the last reported values are held
    back, so a steady link does not cost a log entry per sample.
    """

    def __init__(self, local: str, *, min_relative_change: float = 0.0) -> None:
        if not (0.0 <= min_relative_change < 1.0):
            raise ValueError(f"min_relative_change must be in [0, 1), got {min_relative_change}")
        self.local = local
        self.min_relative_change = min_relative_change
        self._links: dict[str, LinkEstimate] = {}
        self._reported: dict[str, LinkEstimate] = {}
        self._dirty: set[str] = set()

    def _link(self, peer: str) -> LinkEstimate:
        if peer == self.local:
            raise ValueError(f"{peer} is the local node: there is no link to itself")
        return self._links.get(peer) or LinkEstimate(peer)

    def observe(self, peer: str, nbytes: int, seconds: float, now: float) -> LinkEstimate:
        """Record a transfer to or from ``peer`` (active probe or passive exchange)."""
        est = self._link(peer).observe(nbytes, seconds, now)
        self._links[peer] = est
        self._dirty.add(peer)
        return est

    def observe_probe(self, peer: str, transfers: Sequence[tuple[int, float]], now: float) -> LinkEstimate:
        """Record one probe of the link to ``peer`` (see LinkEstimate.observe_probe)."""
        est = self._link(peer).observe_probe(transfers, now)
        self._links[peer] = est
        self._dirty.add(peer)
        return est

    def penalise(self, peer: str, now: float) -> LinkEstimate:
        """Record a failed exchange with ``peer`` (see LinkEstimate.penalise)."""
        est = self._link(peer).penalise(now)
        self._links[peer] = est
        self._dirty.add(peer)
        return est

    def forget(self, peer: str) -> None:
        """Drop a peer that left; it is not reported again."""
        self._links.pop(peer, None)
        self._reported.pop(peer, None)
        self._dirty.discard(peer)

    def estimate(self, peer: str) -> LinkEstimate | None:
        return self._links.get(peer)

    def estimates(self) -> dict[str, LinkEstimate]:
        """Every link's current estimate, by peer id in sorted order."""
        return {peer: self._links[peer] for peer in sorted(self._links)}

    def report_batch(self) -> dict[str, LinkEstimate]:
        """Estimates changed since the last report, by peer id in sorted order; marks them reported."""
        batch: dict[str, LinkEstimate] = {}
        for peer in sorted(self._dirty):
            est = self._links[peer]
            last = self._reported.get(peer)
            if last is not None and not self._moved(last, est):
                continue
            batch[peer] = est
            self._reported[peer] = est
        self._dirty.clear()
        return batch

    def _moved(self, last: LinkEstimate, est: LinkEstimate) -> bool:
        if est.failures != last.failures:
            return True  # a failure is news even when the estimate barely moves (e.g. from 0)

        def differs(old: float, new: float) -> bool:
            return abs(new - old) > self.min_relative_change * abs(old) if old else new != old

        return differs(last.bandwidth, est.bandwidth) or differs(last.latency, est.latency)


def link_matrix(peers: Sequence[str], reports: Mapping[str, Mapping[str, float]]) -> npt.NDArray[np.float64]:
    """The symmetric bandwidth matrix ``gossip.matching`` wants, from each node's reported estimates.

    ``reports[a][b]`` is a's estimate of its link to b. A link is as fast as the slower of the two
    views, so the matrix holds the minimum when both ends reported and the one value when only one
    did; nan (unknown = no link) when neither did, and on the diagonal. Rows follow ``peers``.
    """
    index = {p: k for k, p in enumerate(peers)}
    if len(index) != len(peers):
        raise ValueError("peer ids must be unique")
    n = len(peers)
    m = np.full((n, n), np.nan)
    for a in sorted(reports):
        if a not in index:
            continue
        for b in sorted(reports[a]):
            value = float(reports[a][b])
            if b not in index or a == b:
                continue
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"bandwidth {a} -> {b} must be finite and >= 0, got {value}")
            i, j = index[a], index[b]
            m[i, j] = m[j, i] = value if np.isnan(m[i, j]) else min(m[i, j], value)
    return m


def probe_schedule(peers: Sequence[str], round: int, seed: int = 0) -> list[tuple[tuple[str, str], ...]]:
    """Slots of disjoint pairs that together probe every pair exactly once (round-robin tournament).

    Within a slot each peer is in at most one pair, so no uplink is shared and a probe measures the
    link, not the contention. Circle method: fix the first peer, rotate the others one step per slot.
    N - 1 slots for even N; for odd N a phantom peer gives N slots, each with one peer sitting out.
    The peers are shuffled first with the (seed, round) generator, so which pairs share a slot
    changes from one probe cycle to the next while every node derives the same schedule.
    """
    ids = sorted(peers)
    if len(set(ids)) != len(ids):
        raise ValueError("peer ids must be unique")
    if len(ids) < 2:
        return []
    order: list[str | None] = [ids[k] for k in round_rng(seed, round, "probe-schedule").permutation(len(ids))]
    if len(order) % 2:
        order.append(None)  # the phantom: whoever meets it sits the slot out
    n = len(order)
    slots: list[tuple[tuple[str, str], ...]] = []
    for _ in range(n - 1):
        pairs = []
        for k in range(n // 2):
            a, b = order[k], order[n - 1 - k]
            if a is not None and b is not None:
                pairs.append((a, b) if a < b else (b, a))
        slots.append(tuple(sorted(pairs)))
        order = [order[0], order[-1], *order[1:-1]]  # rotate all but the first
    return slots
