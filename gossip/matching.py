"""Peer selection for one gossip round: which peers exchange models with which.

Every round the peers are paired up by a *maximum matching* of the link graph (perfect for an even
number of peers on a complete graph, one idle peer for an odd number): each peer talks to at most one
other, so no uplink is shared and a round lasts as long as its slowest pair, the *bottleneck*.

Four selectors, all pure functions of their inputs (no clock, no global random state, no network):

- :func:`random_matching`: a uniformly random perfect matching of the complete graph (the baseline;
  it ignores bandwidth, so its bottleneck is the minimum of N/2 random links).
- :func:`best_bottleneck`: the exact best bottleneck ``b*`` over all maximum matchings, and one
  matching that reaches it.
- :class:`SapsSelector`: the SAPS policy (Tang et al., ICDCS 2020): a maximum matching among links
  of bandwidth >= ``threshold_fraction * b*``, drawn at random but tilted towards pairs whose models
  the recent matchings have left furthest apart, and repaired with long-idle links whenever the
  links used within the last ``window`` rounds would not connect every peer.
- :class:`AdaptiveSelector` (policy ``saps-adaptive``): SAPS where slow peers sit some rounds out,
  each paired at least once in any ``max_staleness`` rounds: for per-node egress caps, where every
  perfect matching contains the slowest peer.

Determinism is the point: every node runs the same selector on the same replicated bandwidth matrix
and round number and must arrive at the same topology without talking. Hence: peers are sorted and
the matrix permuted to match before anything else, edges are handed to networkx in sorted order,
randomness comes from ``numpy.random.Generator`` seeded from a SHA-256 of (seed, round), and every
result is canonical (each pair ``(a, b)`` with ``a < b``, pairs sorted).
"""

from __future__ import annotations

import collections
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

__all__ = [
    "ADAPTIVE_POLICY",
    "DEFAULT_IDLE_BONUS",
    "DEFAULT_MAX_STALENESS",
    "DEFAULT_MIX_BONUS",
    "DEFAULT_MIX_HISTORY",
    "DEFAULT_SKIP_GAIN",
    "DEFAULT_THRESHOLD_FRACTION",
    "DEFAULT_WINDOW",
    "MAX_SKIP_FRACTION",
    "AdaptiveSelector",
    "Matching",
    "SapsSelector",
    "SapsState",
    "best_bottleneck",
    "default_peer_ids",
    "random_matching",
    "round_rng",
]

FloatArray = npt.NDArray[np.float64]
Pair = tuple[str, str]
_IdxPair = tuple[int, int]

DEFAULT_THRESHOLD_FRACTION = 0.9
"""SAPS uses links of bandwidth >= 0.9 * b*: see DESIGN.md ("Threshold rule") for the measurements."""

DEFAULT_WINDOW = 4
"""Links used within the last 4 rounds must connect every peer: see DESIGN.md ("Window")."""

DEFAULT_IDLE_BONUS = 1.0
"""Weight of a link's idleness against its uniform random weight: see DESIGN.md ("Idle bonus")."""

DEFAULT_MIX_BONUS = 16.0
"""Weight of a pair's expected disagreement against the random weight: see DESIGN.md ("Mix bonus")."""

DEFAULT_MIX_HISTORY = 20
"""The disagreement is tracked over the last 20 rounds' matchings: see DESIGN.md ("Mix bonus")."""

ADAPTIVE_POLICY = "saps-adaptive"
"""The policy name of :class:`AdaptiveSelector` (``GroupConfig.policy``)."""

DEFAULT_MAX_STALENESS = 4
"""saps-adaptive: every peer is paired at least once in any 4 consecutive rounds (it sits out at
most 3 in a row): see DESIGN.md ("Adaptive participation")."""

DEFAULT_SKIP_GAIN = 1.5
"""saps-adaptive: slow peers sit a round out only when that raises (pairs x bottleneck) 1.5-fold."""

MAX_SKIP_FRACTION = 0.25
"""saps-adaptive: at most a quarter of the peers sit out one round."""

MAX_MIX_HISTORY = 24
"""``_disagreement`` is exact while its squared distances (at most 2 * 4^rounds) stay below 2^53,
the integers a float64 holds exactly: up to 26 rounds, whatever the group's size. 24 keeps a margin."""

_WEIGHT_SCALE = 1 << 20  # random matching weights are integers in [0, _WEIGHT_SCALE)

# "Never used" sorts as older than any real age.
_NEVER_USED_AGE = 1 << 62


@dataclass(frozen=True)
class Matching:
    """The pairs of one gossip round.

    Invariants (checked by the tests, relied upon by the exchange layer):
    every peer is in at most one pair or in ``idle``, never both; no self pairs; each pair is
    ``(a, b)`` with ``a < b`` and ``pairs`` is sorted; ``len(pairs)`` is the maximum matching size of
    the link graph, so on a complete graph there are ``N // 2`` pairs and ``N % 2`` idle peers
    (:class:`AdaptiveSelector`: of the peers that take part; the ones sitting out are idle too).
    """

    round: int
    pairs: tuple[Pair, ...]
    idle: tuple[str, ...]
    """Peers in no pair, sorted. One peer for odd N on a complete graph; more only when missing links
    (bandwidth 0 or nan) make a near-perfect matching impossible."""
    bottleneck: float
    """The smallest bandwidth among ``pairs`` (nan when the selector was given no bandwidth, 0.0 when
    there are no pairs): the round lasts ``model_size / bottleneck``."""
    threshold: float | None = None
    """SAPS only: the bandwidth threshold of this round (``threshold_fraction * b*``)."""
    fallback: bool = False
    """SAPS only: True when some pair is below ``threshold`` because no matching above it kept the
    window connected. False means every pair is at or above the threshold."""
    window_connected: bool | None = None
    """SAPS only: whether the links used in the window ending with this round connect every peer;
    None while the selector has seen fewer than ``window - 1`` earlier rounds (not yet enforced)."""
    matrix_version: int | None = None

    @property
    def idle_peer(self) -> str | None:
        """The single idle peer (odd N), or None when every peer is paired."""
        if len(self.idle) > 1:
            raise ValueError(f"round {self.round} has {len(self.idle)} idle peers: {list(self.idle)}")
        return self.idle[0] if self.idle else None

    def partner(self, peer: str) -> str | None:
        """Who ``peer`` exchanges with this round, or None if it is idle (or unknown)."""
        for a, b in self.pairs:
            if a == peer:
                return b
            if b == peer:
                return a
        return None


def round_rng(seed: int, round: int, tag: str) -> np.random.Generator:
    """A generator every node derives identically from (tag, seed, round).

    SHA-256 rather than Python's ``hash`` (salted per process for str) or ``SeedSequence([seed,
    round])`` alone: the tag keeps the streams of different uses (matching weights, sparsification
    masks, probe order) independent even with the same seed and round.
    """
    digest = hashlib.sha256(f"{tag}\x00{seed}\x00{round}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def default_peer_ids(n: int) -> list[str]:
    """``p0``, ``p1``, ... zero-padded so that sorting the ids keeps index order."""
    width = max(1, len(str(max(n - 1, 0))))
    return [f"p{i:0{width}d}" for i in range(n)]


@dataclass(frozen=True)
class _Graph:
    """A validated bandwidth matrix in canonical form: peers sorted, matrix permuted to match."""

    peers: tuple[str, ...]
    bw: FloatArray  # n x n, symmetric, 0.0 where there is no link (diagonal, 0, nan)
    edges: tuple[_IdxPair, ...]  # (i, j) with i < j and bw > 0, sorted
    weights: FloatArray  # bandwidth of each edge, same order as ``edges``
    digest: str

    @property
    def n(self) -> int:
        return len(self.peers)


def _canonical(bandwidth: npt.ArrayLike, peers: Sequence[str] | None) -> _Graph:
    bw = np.array(bandwidth, dtype=np.float64)  # a copy: the caller's array is never modified
    if bw.ndim != 2 or bw.shape[0] != bw.shape[1]:
        raise ValueError(f"bandwidth must be a square N x N matrix, got shape {bw.shape}")
    n = bw.shape[0]
    ids = list(peers) if peers is not None else default_peer_ids(n)
    if len(ids) != n:
        raise ValueError(f"bandwidth is {n} x {n} but {len(ids)} peer ids were given")
    if len(set(ids)) != n:
        raise ValueError("peer ids must be unique")
    np.fill_diagonal(bw, 0.0)  # the diagonal is ignored, whatever it holds
    off = bw[~np.isnan(bw)]
    if np.any(np.isinf(off)) or np.any(off < 0):
        raise ValueError("bandwidth entries must be finite and >= 0 (0 or nan = no link)")
    if not np.array_equal(bw, bw.T, equal_nan=True):
        raise ValueError("bandwidth matrix must be symmetric (a link has one bandwidth)")
    bw = np.nan_to_num(bw, nan=0.0)  # unknown = no link
    order = sorted(range(n), key=lambda k: ids[k])
    bw = np.ascontiguousarray(bw[np.ix_(order, order)])
    sorted_ids = tuple(ids[k] for k in order)
    iu, ju = np.triu_indices(n, 1)  # row-major, so edges come out sorted
    keep = bw[iu, ju] > 0
    edges = tuple((int(i), int(j)) for i, j in zip(iu[keep], ju[keep], strict=True))
    weights = np.ascontiguousarray(bw[iu[keep], ju[keep]])
    h = hashlib.sha256()
    h.update("\x00".join(sorted_ids).encode())
    h.update(bw.tobytes())
    return _Graph(sorted_ids, bw, edges, weights, h.hexdigest())


def _max_matching(n: int, edges: Iterable[_IdxPair], weights: Iterable[int] | None = None) -> list[_IdxPair]:
    """A maximum-cardinality matching (of maximum weight among those, when weights are given).

    Nodes and edges are inserted in sorted order so networkx's traversal order is the same on every
    node; the result is canonicalised. Weights are integers because networkx then computes in
    integers only: with floats its blossom algorithm may stop at a slightly suboptimal matching
    depending on rounding, which is one more thing two nodes would have to agree on.
    """
    import networkx as nx  # here, not at the top: a server loads this module and rarely plans a round

    g: nx.Graph[int] = nx.Graph()
    g.add_nodes_from(range(n))
    if weights is None:
        g.add_edges_from(edges)  # unit weights: networkx then only maximises cardinality (and is faster)
    else:
        g.add_weighted_edges_from((i, j, int(w)) for (i, j), w in zip(edges, weights, strict=True))
    mate = nx.max_weight_matching(g, maxcardinality=True)
    return sorted((min(a, b), max(a, b)) for a, b in mate)


def _bottleneck(graph: _Graph, pairs: Iterable[_IdxPair]) -> float:
    values = [float(graph.bw[i, j]) for i, j in pairs]
    return min(values) if values else 0.0


def _to_matching(
    graph: _Graph,
    round: int,
    pairs: Sequence[_IdxPair],
    *,
    threshold: float | None = None,
    fallback: bool = False,
    window_connected: bool | None = None,
    matrix_version: int | None = None,
) -> Matching:
    ids = graph.peers  # sorted, so i < j gives ids[i] < ids[j]
    used = {k for pair in pairs for k in pair}
    named = tuple(sorted((ids[min(i, j)], ids[max(i, j)]) for i, j in pairs))
    idle = tuple(ids[k] for k in range(graph.n) if k not in used)
    return Matching(
        round,
        named,
        idle,
        _bottleneck(graph, pairs),
        threshold=threshold,
        fallback=fallback,
        window_connected=window_connected,
        matrix_version=matrix_version,
    )


def random_matching(
    peers: Sequence[str] | int, seed: int, round: int = 0, bandwidth: npt.ArrayLike | None = None
) -> Matching:
    """A uniformly random perfect matching of the complete graph (one idle peer for odd N).

    The baseline policy: shuffle the sorted peers with the round's generator and pair neighbours.
    Links are ignored (even missing ones), as in the SAPS paper's "random" baseline; ``bandwidth``
    only serves to report the bottleneck (nan without it). ``peers`` may be a count, meaning
    :func:`default_peer_ids`.
    """
    ids = default_peer_ids(peers) if isinstance(peers, int) else list(peers)
    if len(set(ids)) != len(ids):
        raise ValueError("peer ids must be unique")
    ordered = sorted(ids)  # shuffle the sorted ids: the caller's order must not matter
    perm = round_rng(seed, round, "random-matching").permutation(len(ordered))
    pairs = sorted(
        (min(int(perm[k]), int(perm[k + 1])), max(int(perm[k]), int(perm[k + 1])))
        for k in range(0, len(ordered) - 1, 2)
    )
    if bandwidth is None:
        used = {k for pair in pairs for k in pair}
        named = tuple((ordered[i], ordered[j]) for i, j in pairs)
        idle = tuple(ordered[k] for k in range(len(ordered)) if k not in used)
        return Matching(round, named, idle, math.nan)
    graph = _canonical(bandwidth, ids)  # rows follow the caller's order; graph.peers == ordered
    return _to_matching(graph, round, pairs)


def _best(graph: _Graph) -> tuple[float, list[_IdxPair]]:
    """Exact b* by binary search over the distinct edge weights.

    The predicate "links of bandwidth >= w still admit a matching as large as the whole graph's" is
    monotone in w (raising w only removes links), so the largest w where it holds is found with
    log2(#distinct weights) maximum-cardinality matchings, and it is b* exactly: b* is the weight of
    some edge, and no maximum matching has all its edges at or above the next distinct weight.
    """
    full = _max_matching(graph.n, graph.edges)
    if not full:
        return 0.0, []
    target = len(full)
    distinct = np.unique(graph.weights)  # sorted ascending
    lo, hi = 0, len(distinct) - 1  # invariant: the predicate holds at distinct[lo]
    best_pairs = full
    while lo < hi:
        mid = (lo + hi + 1) // 2
        keep = [e for e, w in zip(graph.edges, graph.weights, strict=True) if w >= distinct[mid]]
        m = _max_matching(graph.n, keep)
        if len(m) == target:
            lo, best_pairs = mid, m
        else:
            hi = mid - 1
    return float(distinct[lo]), best_pairs


def best_bottleneck(bandwidth: npt.ArrayLike, peers: Sequence[str] | None = None) -> tuple[float, Matching]:
    """The exact best bottleneck b* and a maximum matching that reaches it.

    b* = max over maximum-cardinality matchings M of min over (i, j) in M of bandwidth[i, j]. It is
    0.0 when there is no link at all. The matching returned is the one the binary search found, so
    it is deterministic but not random: using it every round never mixes beyond pairs.
    """
    graph = _canonical(bandwidth, peers)
    b_star, pairs = _best(graph)
    return b_star, _to_matching(graph, 0, pairs)


class _DSU:
    """Union-find over 0..n-1; ``count`` is the number of components."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.count = n

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
            self.count -= 1


def _components(n: int, *edge_sets: Iterable[_IdxPair]) -> _DSU:
    dsu = _DSU(n)
    for edges in edge_sets:
        for a, b in edges:
            dsu.union(a, b)
    return dsu


@dataclass(frozen=True)
class SapsState:
    """A SapsSelector's history in plain, sorted data (for snapshots and late joiners)."""

    last_round: int | None
    rounds_seen: int
    last_used: tuple[tuple[str, str, int], ...]
    """(a, b, round) with a < b: the round in which link a-b was last used, sorted."""
    recent: tuple[tuple[Pair, ...], ...] = ()
    """The pairs of the newest rounds (at most ``mix_history`` of them), oldest first."""


class SapsSelector:
    """The SAPS peer-selection policy, as a small state machine over rounds.

    State: the round each link was last used, and the pairs of the last ``mix_history`` rounds.
    Input per round: the bandwidth matrix (and its version), the peer ids and the round number.
    Two selectors built with the same arguments and fed the same inputs in the same order return
    identical matchings: that is how every node computes the same topology without coordination.

    Per round ``r``:

    1. ``b*`` is computed exactly for the matrix (cached per matrix version) and the threshold is
       ``threshold_fraction * b*``. Because the threshold is at most ``b*``, the links at or above it
       always admit a maximum matching of the full size: no threshold lowering is ever needed for
       that.
    2. A random maximum matching among those links: networkx's maximum-weight maximum-cardinality
       matching under weights drawn from the round's generator, plus ``idle_bonus`` times how long
       each link has been idle (capped at the window), plus ``mix_bonus`` times how far apart the
       two peers' models are expected to be after the last ``mix_history`` matchings
       (:func:`_disagreement`; ``idle_bonus=mix_bonus=0`` gives the unbiased draw).
    3. Once ``window - 1`` earlier rounds exist: if the links used in rounds ``r - window + 1 .. r``
       do not connect every peer, the matching is repaired by swapping pairs for links that join
       different components: longest-idle links at or above the threshold first; only if no such
       swap merges anything, the swap whose new links have the highest bandwidth
       (``fallback=True``).
    """

    def __init__(
        self,
        seed: int,
        *,
        threshold_fraction: float = DEFAULT_THRESHOLD_FRACTION,
        window: int = DEFAULT_WINDOW,
        idle_bonus: float = DEFAULT_IDLE_BONUS,
        mix_bonus: float = DEFAULT_MIX_BONUS,
        mix_history: int = DEFAULT_MIX_HISTORY,
    ) -> None:
        if not 0.0 < threshold_fraction <= 1.0:
            raise ValueError(f"threshold_fraction must be in (0, 1], got {threshold_fraction}")
        if window < 1:
            raise ValueError(f"window must be >= 1 round, got {window}")
        if not (idle_bonus >= 0.0 and math.isfinite(idle_bonus)):
            raise ValueError(f"idle_bonus must be finite and >= 0, got {idle_bonus}")
        if not (mix_bonus >= 0.0 and math.isfinite(mix_bonus)):
            raise ValueError(f"mix_bonus must be finite and >= 0, got {mix_bonus}")
        if not 1 <= mix_history <= MAX_MIX_HISTORY:
            raise ValueError(f"mix_history must be 1..{MAX_MIX_HISTORY} rounds, got {mix_history}")
        self.seed = seed
        self.threshold_fraction = threshold_fraction
        self.window = window
        self.idle_bonus = idle_bonus
        self.mix_bonus = mix_bonus
        self.mix_history = mix_history
        self._last_used: dict[Pair, int] = {}
        self._recent: collections.deque[tuple[Pair, ...]] = collections.deque(maxlen=mix_history)
        self._last_round: int | None = None
        self._rounds_seen = 0
        # (version, digest, b*, matching size) of the last matrix: b* costs ~log2(N^2) matchings and
        # the matrix changes rarely.
        self._cache: tuple[int | None, str, float, int] | None = None

    def state(self) -> SapsState:
        """The history, for a node that joins late or restarts: restore it with ``from_state``."""
        return SapsState(
            last_round=self._last_round,
            rounds_seen=self._rounds_seen,
            last_used=tuple(sorted((a, b, r) for (a, b), r in self._last_used.items())),
            recent=tuple(self._recent),
        )

    @classmethod
    def from_state(
        cls,
        state: SapsState,
        seed: int,
        *,
        threshold_fraction: float = DEFAULT_THRESHOLD_FRACTION,
        window: int = DEFAULT_WINDOW,
        idle_bonus: float = DEFAULT_IDLE_BONUS,
        mix_bonus: float = DEFAULT_MIX_BONUS,
        mix_history: int = DEFAULT_MIX_HISTORY,
    ) -> SapsSelector:
        """A selector that continues exactly where the one that produced ``state`` stands."""
        selector = cls(
            seed,
            threshold_fraction=threshold_fraction,
            window=window,
            idle_bonus=idle_bonus,
            mix_bonus=mix_bonus,
            mix_history=mix_history,
        )
        selector._last_round = state.last_round
        selector._rounds_seen = state.rounds_seen
        selector._last_used = {(a, b): r for a, b, r in state.last_used}
        selector._recent.extend(_checked_round(pairs) for pairs in state.recent)
        return selector

    @property
    def last_used(self) -> Mapping[Pair, int]:
        """Round in which each link was last used (read-only view)."""
        return MappingProxyType(self._last_used)

    @property
    def last_round(self) -> int | None:
        return self._last_round

    def _b_star(self, graph: _Graph, version: int | None) -> tuple[float, int]:
        """(b*, maximum matching size) of the matrix, computed once per matrix."""
        if self._cache is not None and version is not None and self._cache[0] == version:
            if self._cache[1] != graph.digest:
                # Two nodes disagreeing about what version N holds would silently build different
                # topologies: refuse instead.
                raise ValueError(f"matrix version {version} was seen before with different contents")
            return self._cache[2], self._cache[3]
        if self._cache is not None and self._cache[1] == graph.digest:
            b_star, size = self._cache[2], self._cache[3]
        else:
            b_star, best_pairs = _best(graph)
            size = len(best_pairs)
        self._cache = (version, graph.digest, b_star, size)
        return b_star, size

    def select(
        self, bandwidth: npt.ArrayLike, peers: Sequence[str] | None = None, *, round: int, version: int | None = None
    ) -> Matching:
        """The matching of ``round``, and record it in the history.

        Rounds must be consecutive (each call ``round == last_round + 1``): the history is part of
        the input, and a node that skipped a round would diverge from the others.
        """
        if self._last_round is not None and round != self._last_round + 1:
            raise ValueError(f"rounds must be consecutive: last round was {self._last_round}, got {round}")
        graph = _canonical(bandwidth, peers)
        b_star, size = self._b_star(graph, version)
        threshold = self.threshold_fraction * b_star
        rng = round_rng(self.seed, round, "saps-matching")
        # One random weight per link of the whole graph, drawn in canonical edge order, so a link's
        # weight does not depend on which other links pass the threshold. Integers in [0, 2^20):
        # see _max_matching for why not floats.
        random_w = rng.integers(0, _WEIGHT_SCALE, size=len(graph.edges), dtype=np.int64)
        above = graph.weights >= threshold
        allowed = [e for e, ok in zip(graph.edges, above, strict=True) if ok]
        ids = graph.peers
        index = {p: k for k, p in enumerate(ids)}
        age: dict[_IdxPair, int] = {}
        prev: list[_IdxPair] = []  # links used in rounds round-window+1 .. round-1 among current peers
        for (a, b), last in self._last_used.items():
            if a in index and b in index:
                e = (index[a], index[b]) if index[a] < index[b] else (index[b], index[a])
                age[e] = round - last
                if last > round - self.window:
                    prev.append(e)
        prev.sort()
        # Weight = uniform random + idle_bonus * (rounds idle, capped at the window) / window: still a
        # random maximum matching, tilted towards links the window lacks. Re-pairing last round's
        # partners averages two models that are already equal; a long-idle link brings news.
        idleness = [min(age.get(e, self.window), self.window) / self.window for e in allowed]
        # And towards pairs whose models the recent matchings left furthest apart: where a random
        # draw wastes rounds re-averaging peers that already agree, this spreads news like a
        # hypercube exchange would, within the links above the threshold.
        disagreement = _disagreement(ids, self._recent, allowed)
        bonus = [
            int(self.idle_bonus * x * _WEIGHT_SCALE) + int(self.mix_bonus * d * _WEIGHT_SCALE)
            for x, d in zip(idleness, disagreement, strict=True)
        ]
        pairs = _max_matching(graph.n, allowed, [int(w) + b for w, b in zip(random_w[above], bonus, strict=True)])
        if len(pairs) != size:  # cannot happen (maxcardinality=True, threshold <= b*); never trade size away
            pairs = _max_matching(graph.n, allowed)

        window_connected: bool | None = None
        if self._rounds_seen >= self.window - 1:
            if _components(graph.n, prev, pairs).count > 1:
                pairs = _repair(graph, pairs, prev, age, threshold)
            window_connected = _components(graph.n, prev, pairs).count <= 1
        fallback = any(graph.bw[i, j] < threshold for i, j in pairs)

        for i, j in pairs:
            self._last_used[(ids[i], ids[j])] = round  # ids are sorted, so (ids[i], ids[j]) is canonical
        self._recent.append(tuple((ids[i], ids[j]) for i, j in pairs))
        self._last_round = round
        self._rounds_seen += 1
        return _to_matching(
            graph,
            round,
            pairs,
            threshold=threshold,
            fallback=fallback,
            window_connected=window_connected,
            matrix_version=version,
        )


def _checked_round(pairs: Iterable[Sequence[str]]) -> tuple[Pair, ...]:
    """One remembered round's pairs in canonical form; a peer in two pairs would make the mixing rows
    of :func:`_disagreement` inexact, so it is refused."""
    seen: set[str] = set()
    canonical = []
    for a, b in pairs:
        if a == b or a in seen or b in seen:
            raise ValueError(f"a remembered round pairs {a!r} or {b!r} twice: {list(pairs)!r}")
        seen.update((a, b))
        canonical.append((min(a, b), max(a, b)))
    return tuple(sorted(canonical))


def _disagreement(ids: Sequence[str], recent: Iterable[Sequence[Pair]], edges: Sequence[_IdxPair]) -> list[float]:
    """For each edge (i, j), how far apart peers i and j are expected to be after ``recent``, in [0, 1].

    Averaging is linear: after matchings W_1..W_k every peer's model is a known mix of the models
    the peers held k rounds ago, row i of M = W_k ... W_1. For independent starting models of equal
    spread, the expected squared distance between peers i and j is proportional to
    ||M_i - M_j||^2, which is 2 for peers that have not mixed at all and 0 for peers that hold the
    same mix; the result is that divided by 2. Peers that left still count (a peer that averaged with
    one of them holds part of its model); newcomers start unmixed.

    It is a model, not a measurement: it ignores local training between rounds, sparsified
    exchanges (which mix only part of the coordinates) and exchanges that timed out. What matters is
    that it is exact, so every node computes the same weights: M is kept in integers scaled by 2^k
    (each averaging halves at most once per round, so k rounds never leave the integers), the squared
    distances are integer sums (order-independent), and the one division is by a power of two.
    """
    rounds = list(recent)
    if not edges:
        return []
    if not rounds:
        return [1.0] * len(edges)
    departed = sorted({p for pairs in rounds for pair in pairs for p in pair} - set(ids))
    index = {p: k for k, p in enumerate([*ids, *departed])}
    n = len(index)
    mix = np.eye(n, dtype=np.int64) << len(rounds)
    for pairs in rounds:
        for a, b in pairs:
            i, j = index[a], index[b]
            mix[i] = mix[j] = (mix[i] + mix[j]) >> 1
    gram = mix @ mix.T  # integer matmul: exact, no BLAS
    norms = np.diag(gram)
    rows = np.array([i for i, _ in edges])
    cols = np.array([j for _, j in edges])
    squared = norms[rows] + norms[cols] - 2 * gram[rows, cols]
    scale = 2.0 * float(1 << (2 * len(rounds)))
    return [float(v) / scale for v in squared]


def _repair(
    graph: _Graph, pairs: list[_IdxPair], prev: list[_IdxPair], age: Mapping[_IdxPair, int], threshold: float
) -> list[_IdxPair]:
    """Swap pairs until the window (``prev`` plus the matching) is connected, or no swap helps.

    Moves keep the matching's size: two pairs (a, b), (c, d) in different components become (a, c),
    (b, d) or (a, d), (b, c); an idle peer z and a pair (c, d) become (z, c) with d idle, or (z, d)
    with c idle. A move is kept only if it lowers the number of components, so the loop ends. On a
    complete graph with an even number of peers a merging move always exists: each component holds
    a pair whose removal leaves it connected (it holds at least two nodes per component of ``prev``,
    more than the ``2(k - 1)`` endpoints of a tree of k - 1 bridging pairs).

    Order of preference: moves whose new links are all at or above the threshold, longest-idle
    first (SAPS's rule); only when none of those merges, moves with a link below the threshold,
    highest bandwidth first. That is "lower the threshold until it works", lowered exactly as far
    as the best merging move needs and no further.
    """
    n = graph.n
    bw = graph.bw
    current = set(pairs)

    def key(added: tuple[_IdxPair, ...]) -> tuple[int, float, float, tuple[_IdxPair, ...]]:
        oldest = -min(age.get(e, _NEVER_USED_AGE) for e in added)
        weakest = -min(float(bw[e]) for e in added)
        if -weakest >= threshold:
            return (0, oldest, weakest, added)
        return (1, weakest, oldest, added)

    while True:
        dsu = _components(n, prev, current)
        if dsu.count <= 1:
            break
        label = [dsu.find(k) for k in range(n)]
        ordered = sorted(current)
        matched = {k for e in ordered for k in e}
        idle = [k for k in range(n) if k not in matched]
        candidates: list[tuple[tuple[int, float, float, tuple[_IdxPair, ...]], tuple[_IdxPair, ...]]] = []
        for x, (a, b) in enumerate(ordered):
            for c, d in ordered[x + 1 :]:
                if label[a] == label[c]:
                    continue
                for new in (((a, c), (b, d)), ((a, d), (b, c))):
                    added = tuple(sorted((min(p), max(p)) for p in new))
                    if all(bw[e] > 0 for e in added):
                        candidates.append((key(added), ((a, b), (c, d))))
        for z in idle:
            for c, d in ordered:
                if label[z] == label[c]:
                    continue
                for partner in (c, d):
                    e = (min(z, partner), max(z, partner))
                    if bw[e] > 0:
                        candidates.append((key((e,)), ((c, d),)))
        candidates.sort()
        for k, removed in candidates:
            trial = (current - set(removed)) | set(k[-1])
            if _components(n, prev, trial).count < dsu.count:
                current = trial
                break
        else:
            break  # no move merges anything: best effort, the caller reports window_connected=False
    return sorted(current)


class AdaptiveSelector:
    """SAPS with adaptive participation (policy ``saps-adaptive``): slow peers sit some rounds out,
    with bounded staleness, so that they do not set every round's bottleneck.

    Where every perfect matching contains the slowest peer (per-node egress caps: a link runs at the
    lower of its two ends' caps), SAPS cannot beat that peer's cap in any round. Per round ``r``:

    1. **Due peers**: a peer not paired in rounds ``r - max_staleness + 1 .. r - 1`` (or never) must
       take part in round ``r``.
    2. **Who sits out**: the other peers, slowest first (a peer's speed is its fastest link; ties by
       id), are candidates. For k = 0 and k = 1, 2, 4, 8, ... up to ``MAX_SKIP_FRACTION`` of the peers
       (each raised by one where needed so that an even number of peers stays), the score is
       (maximum matching size) x (b* of the peers left). The k with the best score sits out if its
       score is at least ``skip_gain`` times k = 0's; otherwise nobody does (for an odd number of
       peers, the slowest candidate then takes the idle place instead of a peer SAPS would choose).
       So on matrices where skipping gains little (uniform links, two sites) the round is SAPS's
       own, on the same peers.
    3. **SAPS** matches the peers that take part (:class:`SapsSelector`, whose history this selector
       carries); the others are idle.

    **Bounded staleness**: the peers that take part are an even number on a complete link graph, so
    SAPS's maximum matching pairs every one of them; due peers always take part. Hence a peer paired
    in round t is paired again by round ``t + max_staleness`` (tested with hypothesis), and it first
    takes part in its first or second round. With missing links a maximum matching may leave a peer
    out, and the bound does not hold. Deterministic like SAPS: a function of the matrix, the round,
    the seed and the history.
    """

    def __init__(
        self,
        seed: int,
        *,
        max_staleness: int = DEFAULT_MAX_STALENESS,
        skip_gain: float = DEFAULT_SKIP_GAIN,
        **saps: float,
    ) -> None:
        if max_staleness < 2:
            # 1 would mean "paired in every round", which an odd number of peers cannot be.
            raise ValueError(f"max_staleness must be >= 2 rounds, got {max_staleness}")
        if not (skip_gain >= 1.0 and math.isfinite(skip_gain)):
            raise ValueError(f"skip_gain must be finite and >= 1, got {skip_gain}")
        self.max_staleness = max_staleness
        self.skip_gain = skip_gain
        self.saps = SapsSelector(seed, **saps)  # type: ignore[arg-type]

    @classmethod
    def from_state(
        cls,
        state: SapsState,
        seed: int,
        *,
        max_staleness: int = DEFAULT_MAX_STALENESS,
        skip_gain: float = DEFAULT_SKIP_GAIN,
        **saps: float,
    ) -> AdaptiveSelector:
        """A selector that continues where the one with this (SAPS) state stands."""
        selector = cls(seed, max_staleness=max_staleness, skip_gain=skip_gain, **saps)
        selector.saps = SapsSelector.from_state(state, seed, **saps)  # type: ignore[arg-type]
        return selector

    def state(self) -> SapsState:
        return self.saps.state()

    def last_paired(self) -> dict[str, int]:
        """The round in which each peer was last paired."""
        last: dict[str, int] = {}
        for (a, b), used in self.saps.last_used.items():
            for peer in (a, b):
                last[peer] = max(last.get(peer, used), used)
        return last

    def sitting_out(
        self, bandwidth: npt.ArrayLike, peers: Sequence[str] | None = None, *, round: int
    ) -> tuple[str, ...]:
        """The peers that sit round ``round`` out (sorted); step 1 and 2 of the class docstring."""
        graph = _canonical(bandwidth, peers)
        ids, n = graph.peers, graph.n
        if n < 3:
            return ()
        last = self.last_paired()
        due = {p for p in ids if p not in last or round - last[p] >= self.max_staleness}
        speed = graph.bw.max(axis=1)
        candidates = sorted((k for k, p in enumerate(ids) if p not in due), key=lambda k: (float(speed[k]), ids[k]))
        if not candidates:
            return ()

        def score(k: int) -> float:
            keep = [i for i in range(n) if i not in set(candidates[:k])]
            sub = _canonical(graph.bw[np.ix_(keep, keep)], [ids[i] for i in keep])
            b_star, pairs = _best(sub)
            return len(pairs) * b_star

        # k = 1, 2, 4, 8, ... (each made even-leaving): log2(N) b* computations, not N / 4.
        most = min(len(candidates), int(n * MAX_SKIP_FRACTION))
        ks = sorted({k + (n - k) % 2 for k in (1 << j for j in range(most.bit_length())) if k + (n - k) % 2 <= most})
        scores = {k: score(k) for k in ks}
        base = score(0)
        best = max(ks, key=lambda k: (scores[k], -k), default=0)
        # Not worth it: nobody sits out, but for an odd number of peers the idle place goes to the
        # slowest peer that is not due (never to a due one, as SAPS's own choice could).
        fallback = 1 if n % 2 else 0
        chosen = best if best and scores[best] >= self.skip_gain * base else fallback
        return tuple(sorted(ids[k] for k in candidates[:chosen]))

    def select(
        self, bandwidth: npt.ArrayLike, peers: Sequence[str] | None = None, *, round: int, version: int | None = None
    ) -> Matching:
        """The matching of ``round`` (the peers sitting out are idle), recorded in the history."""
        graph = _canonical(bandwidth, peers)
        out = set(self.sitting_out(graph.bw, graph.peers, round=round))
        keep = [k for k, p in enumerate(graph.peers) if p not in out]
        m = self.saps.select(graph.bw[np.ix_(keep, keep)], [graph.peers[k] for k in keep], round=round)
        return Matching(
            round=round,
            pairs=m.pairs,
            idle=tuple(sorted((*m.idle, *out))),
            bottleneck=m.bottleneck,
            threshold=m.threshold,
            fallback=m.fallback,
            window_connected=m.window_connected,
            matrix_version=version,
        )
