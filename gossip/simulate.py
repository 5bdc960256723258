"""A CPU simulation of gossip averaging under a bandwidth matrix, to compare peer-selection policies.

Model: N peers each hold a vector; every round a policy picks a matching, matched peers average
(``X <- W @ X``, see ``gossip.mixing``) and the round lasts ``model_size / bottleneck`` because all
pairs transfer at once and the round ends with the slowest. No network, no clock: the "time" is
computed, in units of ``model_size / bandwidth unit``.

Policies:

- ``saps``: :class:`gossip.matching.SapsSelector`;
- ``random``: a fresh uniformly random perfect matching every round;
- ``saps-adaptive``: :class:`gossip.matching.AdaptiveSelector` (SAPS where slow peers sit some
  rounds out, each paired at least every 4 rounds);
- ``best_bottleneck_static``: the matching of :func:`gossip.matching.best_bottleneck` every round.
  Its ``W`` is idempotent (``W @ W = W``): after round 1 every pair agrees and nothing mixes further,
  so its consensus distance plateaus and it never reaches a consensus target.

The consensus distance is reported *normalised*: ``consensus_distance(round r) /
consensus_distance(round 0)``, and the target (1e-2) is checked on that same normalised value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gossip.matching import (
    ADAPTIVE_POLICY,
    DEFAULT_IDLE_BONUS,
    DEFAULT_MIX_BONUS,
    DEFAULT_THRESHOLD_FRACTION,
    DEFAULT_WINDOW,
    AdaptiveSelector,
    Matching,
    SapsSelector,
    best_bottleneck,
    default_peer_ids,
    random_matching,
)
from gossip.mixing import consensus_distance, mixing_matrix

__all__ = [
    "POLICIES",
    "TOPOLOGIES",
    "PolicyResult",
    "bandwidth_for",
    "initial_vectors",
    "node_caps_bandwidth",
    "run_policy",
    "uniform_bandwidth",
]

POLICIES = ("saps", ADAPTIVE_POLICY, "random", "best_bottleneck_static")
TOPOLOGIES = ("uniform", "node-caps")


def uniform_bandwidth(n: int, seed: int, high: float = 5.0) -> npt.NDArray[np.float64]:
    """A symmetric N x N matrix with off-diagonal entries uniform in (0, high], zero diagonal.

    ``high - U[0, high)`` gives the half-open interval (0, high]: no link is ever missing.
    """
    rng = np.random.default_rng(seed)
    upper = np.triu(high - rng.uniform(0.0, high, size=(n, n)), 1)
    return upper + upper.T


def node_caps_bandwidth(n: int, seed: int, low: float = 3.0, high: float = 100.0) -> npt.NDArray[np.float64]:
    """Per-node egress caps: each peer's cap log-uniform in [low, high], and a link runs at the lower
    of its two ends' caps (an exchange sends both ways at once and ends with the slower direction).
    Every perfect matching then contains the slowest peer, so no matching beats its cap."""
    rng = np.random.default_rng([seed, 0xCA9])
    caps = np.exp(rng.uniform(np.log(low), np.log(high), size=n))
    bw = np.minimum.outer(caps, caps)
    np.fill_diagonal(bw, 0.0)
    return bw


def bandwidth_for(topology: str, n: int, seed: int) -> npt.NDArray[np.float64]:
    """The matrix of one of ``TOPOLOGIES``: ``uniform`` (links uniform in (0, 5]) or ``node-caps``."""
    if topology == "uniform":
        return uniform_bandwidth(n, seed)
    if topology == "node-caps":
        return node_caps_bandwidth(n, seed)
    raise ValueError(f"unknown topology {topology!r}; known: {', '.join(TOPOLOGIES)}")


def initial_vectors(n: int, dim: int, seed: int) -> npt.NDArray[np.float64]:
    """One standard-normal vector per peer (row), a stand-in for locally trained models."""
    return np.random.default_rng([seed, 1]).standard_normal((n, dim))


@dataclass(frozen=True)
class PolicyResult:
    """What one policy did on one bandwidth matrix."""

    policy: str
    n: int
    seed: int
    b_star: float
    rounds: int
    """The reporting horizon: the ``*_at_rounds`` figures are after this many rounds."""
    bottleneck_fraction_of_best: float
    """Mean over rounds 0..rounds-1 of (the round's bottleneck / b*)."""
    consensus_distance_at_rounds: float
    """Normalised consensus distance after ``rounds`` rounds (1.0 = as far apart as at the start)."""
    rounds_to_target: int | None
    time_to_target: float | None
    """Sum of ``model_size / bottleneck`` over the rounds until the normalised consensus distance
    first reaches ``target``; None if it did not within ``max_rounds``."""
    rounds_run: int
    fallback_rounds: int
    """SAPS only: rounds within the horizon with a link below the threshold (connectivity repair)."""
    disconnected_windows: int
    """SAPS only: rounds within the horizon whose window union did not connect every peer."""


def _policy(
    name: str,
    bandwidth: npt.NDArray[np.float64],
    peers: list[str],
    seed: int,
    threshold_fraction: float,
    window: int,
    idle_bonus: float,
    mix_bonus: float,
) -> Callable[[int], Matching]:
    if name == "saps":
        selector = SapsSelector(
            seed, threshold_fraction=threshold_fraction, window=window, idle_bonus=idle_bonus, mix_bonus=mix_bonus
        )
        return lambda r: selector.select(bandwidth, peers, round=r, version=0)
    if name == ADAPTIVE_POLICY:
        adaptive = AdaptiveSelector(
            seed, threshold_fraction=threshold_fraction, window=window, idle_bonus=idle_bonus, mix_bonus=mix_bonus
        )
        return lambda r: adaptive.select(bandwidth, peers, round=r, version=0)
    if name == "random":
        return lambda r: random_matching(peers, seed, r, bandwidth)
    if name == "best_bottleneck_static":
        static = best_bottleneck(bandwidth, peers)[1]
        return lambda r: static
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")


def run_policy(
    policy: str,
    bandwidth: npt.NDArray[np.float64],
    x0: npt.NDArray[np.float64],
    *,
    seed: int,
    rounds: int = 40,
    target: float = 1e-2,
    max_rounds: int = 2000,
    model_size: float = 1.0,
    threshold_fraction: float = DEFAULT_THRESHOLD_FRACTION,
    window: int = DEFAULT_WINDOW,
    idle_bonus: float = DEFAULT_IDLE_BONUS,
    mix_bonus: float = DEFAULT_MIX_BONUS,
) -> PolicyResult:
    """Run ``policy`` for at least ``rounds`` rounds, and on until the target is reached (or
    ``max_rounds``), so that the time-to-target exists even for slow policies."""
    n = bandwidth.shape[0]
    peers = default_peer_ids(n)  # zero-padded: sorted order == row order, so W lines up with x
    b_star = best_bottleneck(bandwidth, peers)[0]
    choose = _policy(policy, bandwidth, peers, seed, threshold_fraction, window, idle_bonus, mix_bonus)
    x = np.array(x0, dtype=np.float64)
    cd0 = consensus_distance(list(x))
    fractions: list[float] = []
    elapsed = 0.0
    cd_at_rounds = 1.0
    rounds_to_target: int | None = None
    time_to_target: float | None = None
    fallback_rounds = disconnected = 0
    r = 0
    while r < max_rounds and (r < rounds or rounds_to_target is None):
        m = choose(r)
        previous, x = x, mixing_matrix(m, peers) @ x
        if policy == "best_bottleneck_static" and r >= rounds and np.array_equal(x, previous):
            break  # the same idempotent W every round: once x stops moving it never moves again
        elapsed += model_size / m.bottleneck
        cd = consensus_distance(list(x)) / cd0
        r += 1
        if r <= rounds:
            fractions.append(m.bottleneck / b_star)
            fallback_rounds += m.fallback
            disconnected += m.window_connected is False
            if r == rounds:
                cd_at_rounds = cd
        if rounds_to_target is None and cd <= target:
            rounds_to_target, time_to_target = r, elapsed
    return PolicyResult(
        policy=policy,
        n=n,
        seed=seed,
        b_star=b_star,
        rounds=rounds,
        bottleneck_fraction_of_best=float(np.mean(fractions)),
        consensus_distance_at_rounds=cd_at_rounds,
        rounds_to_target=rounds_to_target,
        time_to_target=time_to_target,
        rounds_run=r,
        fallback_rounds=fallback_rounds,
        disconnected_windows=disconnected,
    )
