"""The ``saps-adaptive`` policy (``gossip.matching.AdaptiveSelector``, issue 19): slow peers sit some
rounds out so they do not set every round's bottleneck, with bounded staleness (every peer paired at
least once in any ``max_staleness`` consecutive rounds), valid and deterministic matchings, mixing
that still reaches consensus, and SAPS's own rounds where sitting out gains nothing. No network."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.matching import AdaptiveSelector, Matching, SapsSelector, best_bottleneck, default_peer_ids
from gossip.mixing import consensus_distance, mixing_matrix
from gossip.simulate import initial_vectors, node_caps_bandwidth, uniform_bandwidth

Matrix = npt.NDArray[np.float64]


def caps_matrix(caps: list[float]) -> Matrix:
    bw = np.minimum.outer(np.array(caps), np.array(caps))
    np.fill_diagonal(bw, 0.0)
    return bw


def assert_valid(m: Matching, peers: list[str], bw: Matrix) -> None:
    index = {p: k for k, p in enumerate(peers)}
    seen: list[str] = []
    for a, b in m.pairs:
        assert a < b and bw[index[a], index[b]] > 0
        seen += [a, b]
    assert len(seen) == len(set(seen))
    assert list(m.idle) == sorted(set(peers) - set(seen))
    assert list(m.pairs) == sorted(m.pairs)
    assert m.bottleneck == min(bw[index[a], index[b]] for a, b in m.pairs)


def run(selector: AdaptiveSelector, bw: Matrix, peers: list[str], rounds: int, start: int = 0) -> list[Matching]:
    return [selector.select(bw, peers, round=r) for r in range(start, start + rounds)]


@settings(max_examples=40, deadline=None)
@given(
    caps=st.lists(st.floats(min_value=1.0, max_value=100.0), min_size=3, max_size=10),
    staleness=st.integers(min_value=2, max_value=5),
    gain=st.floats(min_value=1.0, max_value=3.0),
    seed=st.integers(min_value=0, max_value=2**32),
    pairwise=st.booleans(),
)
def test_every_peer_is_paired_at_least_once_in_any_max_staleness_rounds(
    caps: list[float], staleness: int, gain: float, seed: int, pairwise: bool
) -> None:
    peers = default_peer_ids(len(caps))
    # Per-node caps, or every link its own bandwidth (a complete graph either way).
    bw = uniform_bandwidth(len(caps), seed % 1000) if pairwise else caps_matrix(caps)
    selector = AdaptiveSelector(seed, max_staleness=staleness, skip_gain=gain)
    matchings = run(selector, bw, peers, 24)
    last: dict[str, int] = {}
    for r, m in enumerate(matchings):
        assert_valid(m, peers, bw)
        for a, b in m.pairs:
            last[a] = last[b] = r
        for peer in peers:
            if r >= 1:  # a peer is first paired in round 0 or 1 (odd N leaves one out of round 0)
                assert peer in last, (peer, r)
                assert r - last[peer] < staleness, f"{peer} not paired in rounds {last[peer] + 1}..{r}"
    # Deterministic: a second selector, and one continued from the state, choose the same.
    assert run(AdaptiveSelector(seed, max_staleness=staleness, skip_gain=gain), bw, peers, 24) == matchings
    again = AdaptiveSelector(seed, max_staleness=staleness, skip_gain=gain)
    run(again, bw, peers, 12)
    resumed = AdaptiveSelector.from_state(again.state(), seed, max_staleness=staleness, skip_gain=gain)
    assert run(resumed, bw, peers, 12, start=12) == matchings[12:]


@settings(max_examples=15, deadline=None)
@given(n=st.integers(min_value=4, max_value=12), seed=st.integers(min_value=0, max_value=2**32))
def test_mixing_keeps_the_mean_and_reaches_consensus_on_per_node_caps(n: int, seed: int) -> None:
    # Sitting out never strands a peer: W is doubly stochastic every round (the mean stays) and the
    # consensus distance still falls below 1e-2 of its start within 40 rounds.
    peers = default_peer_ids(n)
    bw = node_caps_bandwidth(n, seed % 1000)
    x = initial_vectors(n, 8, seed % 1000)
    mean = x.mean(axis=0)
    cd0 = consensus_distance(list(x))
    selector = AdaptiveSelector(seed)
    for r in range(40):
        x = mixing_matrix(selector.select(bw, peers, round=r), peers) @ x
    np.testing.assert_allclose(x.mean(axis=0), mean, atol=1e-12)
    assert consensus_distance(list(x)) <= 1e-2 * cd0


def test_on_per_node_caps_the_slow_peers_sit_out_and_the_rounds_beat_saps() -> None:
    # One node at 1 Mbit/s, one at 2, the rest at 50: every perfect matching holds the slowest, so
    # SAPS's bottleneck is 1 in every round. Adaptive: the two slow ones sit out 3 rounds in 4.
    caps = [1.0, 2.0] + [50.0] * 6
    peers = default_peer_ids(len(caps))
    bw = caps_matrix(caps)
    saps = SapsSelector(3)
    assert {saps.select(bw, peers, round=r).bottleneck for r in range(12)} == {1.0}
    assert best_bottleneck(bw, peers)[0] == 1.0
    matchings = run(AdaptiveSelector(3), bw, peers, 12)
    slow_rounds = [r for r, m in enumerate(matchings) if m.bottleneck < 50.0]
    assert slow_rounds == [0, 4, 8]  # the slow pair takes part every 4th round, the others run at 50
    assert all(set(m.idle) == {"p0", "p1"} for r, m in enumerate(matchings) if r not in slow_rounds)
    assert sum(1 / m.bottleneck for m in matchings) < sum(1 / 1.0 for _ in matchings) / 3


def test_where_sitting_out_gains_nothing_the_rounds_are_saps_own() -> None:
    # Equal links: b* does not rise when a peer sits out, so nobody does (even N), and the matchings
    # are exactly SAPS's.
    for n in (8, 10):
        peers = default_peer_ids(n)
        bw = np.ones((n, n))
        np.fill_diagonal(bw, 0.0)
        saps = SapsSelector(5)
        assert run(AdaptiveSelector(5), bw, peers, 20) == [saps.select(bw, peers, round=r) for r in range(20)]


def test_staleness_holds_while_peers_join_and_leave() -> None:
    caps = [1.0, 1.5, 3.0, 10.0, 20.0, 30.0, 40.0, 50.0, 2.0]
    everyone = default_peer_ids(len(caps))
    full = caps_matrix(caps)
    selector = AdaptiveSelector(11)
    last: dict[str, int] = {}  # the round each peer was last paired in, or (re)joined
    previous: list[str] = []
    sat_out = 0
    for r in range(40):
        # p8 (slow) joins at round 5; p2 leaves at round 12 and comes back at round 20.
        present = [p for p in everyone if not (p == "p8" and r < 5) and not (p == "p2" and 12 <= r < 20)]
        index = [everyone.index(p) for p in present]
        m = selector.select(full[np.ix_(index, index)], present, round=r)
        assert_valid(m, present, full[np.ix_(index, index)])
        sat_out += "p0" in m.idle
        for peer in present:
            if peer not in previous:
                last[peer] = r - 1  # a newcomer may wait one round (odd N at its start)
        for a, b in m.pairs:
            last[a] = last[b] = r
        for peer in present:
            assert r - last[peer] < 4, f"{peer} not paired in rounds {last[peer] + 1}..{r}"
        previous = present
    assert last["p8"] >= 36 and last["p2"] >= 36
    assert sat_out >= 20  # the slowest peer did sit out, most rounds
