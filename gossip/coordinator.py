"""Planning each gossip group's next round: what the leader proposes as ``StartRound``.

Pure, like the rest of the package apart from the exchange: the inputs are the replicated state's
records (the group's configuration, its committed rounds, the nodes, the bandwidth matrix) and the
leader's clock reading; the output is the ``StartRoundRequest`` to propose, or None. The server's
housekeeping (``controlplane/server/housekeeping.py``) gathers the inputs under the state lock on
the leader and proposes the result; the state machine re-checks every rule (consecutive numbers, no
overlap, a valid matching, the group's spec), so a wrong plan is refused, never applied.

The rules, each tested in ``tests/test_gossip_coordinator.py``:

* **never overlap**: nothing is planned while the group's latest round is running, so round t + 1
  is never proposed before round t ended (the state machine refuses it anyway);
* **who takes part**: ACTIVE nodes with a ``gossip`` address that are members of the membership
  network named like the group when such a network exists, else those labelled
  ``gossip-group=GROUP`` (:func:`eligible`); nodes that come or go between rounds are simply in or
  out of the next one; a node that was silent in the last round that listed it (no report by the
  deadline: crashed, hung, cut off) sits out the next rounds until it shows a sign of life or its
  backoff runs out (:func:`suspended`); ``min_participants`` is the floor: fewer available nodes,
  no round;
* **the same plan from any leader**: the matching is a function of committed data only. SAPS's
  history (which link was last used when) is rebuilt from the group's committed rounds
  (:class:`History`), the bandwidth is the committed matrix (links never measured take a default,
  :func:`bandwidth_matrix`), the randomness is seeded from the group's seed and the round number.
  A new leader therefore proposes the same participants, pairs, seed and spec as the old one would
  have (only the deadline, taken from the proposing leader's clock, differs); and since the request
  id is ``coordinator/GROUP/NUMBER``, a retry or a second leader's duplicate applies once;
* **cheap joins** (:func:`exploration_pairs`): the links of a node that joins a group that knows
  its links ride in the training rounds, one per round, each the joiner's training exchange;
* **probe rounds** (:func:`probe_pairs`): when the group knows none of its links (a fresh group),
  and again every ``probe_every_rounds`` training rounds, the group runs a *probe cycle*:
  consecutive rounds with policy ``probe`` whose pairs are the slots of
  :func:`gossip.bandwidth.probe_schedule` (disjoint, so no uplink is shared during a probe) until
  every pair of participants was probed once. Which cycle, which slot and whether one is due are
  read off the committed rounds and the committed matrix like everything else, and SAPS's history
  skips probe rounds: the selector sees the training rounds as if they were consecutive.

:class:`Coordinator` caches each group's history keyed by its latest committed round and advances
it by one committed round at a time, rebuilding from the committed rounds whenever the cache does
not match (a new leader, a restore, a round started by someone else). Both paths give the same
history by construction: the history only ever looks at the newest ``HISTORY_ROUNDS`` rounds.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from controlplane.state.gossip import FAILURE_PENALTY, MAX_PARTICIPANTS, PROBE_POLICY
from controlplane.v1 import gossip_pb2, membership_pb2
from gossip.bandwidth import probe_schedule
from gossip.matching import (
    ADAPTIVE_POLICY,
    DEFAULT_MIX_HISTORY,
    AdaptiveSelector,
    Matching,
    SapsSelector,
    SapsState,
    best_bottleneck,
    random_matching,
    round_rng,
)

__all__ = [
    "DEFAULT_BANDWIDTH_BPS",
    "GOSSIP_ADDRESS",
    "GROUP_LABEL",
    "HISTORY_ROUNDS",
    "MAX_PARTICIPANTS",
    "MAX_PROBE_CYCLE_ROUNDS",
    "MAX_PROBE_PEERS",
    "MAX_SILENT_BACKOFF_ROUNDS",
    "PROBE_POLICY",
    "SILENT_BACKOFF_ROUNDS",
    "Coordinator",
    "History",
    "Plan",
    "available",
    "bandwidth_matrix",
    "eligible",
    "exploration_pairs",
    "plan_round",
    "probe_pairs",
    "request_id",
    "round_seed",
    "rounds_to_read",
    "suspended",
]

DEFAULT_BANDWIDTH_BPS = 125e6
"""What a link counts as when no link among the participants was ever measured: 1 Gbit/s. When
some were, an unmeasured link counts as their median (see :func:`bandwidth_matrix`)."""

HISTORY_ROUNDS = 100
"""The rounds SAPS's history is rebuilt from. The selector only enforces connectivity over its
window (4 rounds), caps a link's idleness bonus at the window and remembers the matchings of 20
training rounds for its mix bonus; beyond that, "last used 100+ rounds ago" and "never used" are the
same to it except as a tie-break between very old links. A bounded history keeps the rebuild cheap
and makes the cached and the rebuilt history identical."""

GOSSIP_ADDRESS = "gossip"
"""The address purpose under which a node advertises its gossip port (``NodeSpec.addresses``)."""

GROUP_LABEL = "gossip-group"
"""The node label that puts a node in a group that has no network of its name."""

MAX_PROBE_PEERS = 64
"""Groups with more participants run no probe cycles. A cycle takes N - 1 rounds (every node probes
its N - 1 peers one at a time), so beyond this the cycle costs more rounds than the training between
two cycles; such groups learn their links from the exchanges alone (unmeasured links count as the
median, see :func:`bandwidth_matrix`)."""

MAX_PROBE_CYCLE_ROUNDS = 96
"""A probe cycle ends after this many rounds even if pairs remain (participants that keep changing
could otherwise keep it going); a training round follows, and the unknown links start a new cycle.
Below ``HISTORY_ROUNDS``, so the rounds the coordinator reads always hold the whole current cycle."""

SILENT_BACKOFF_ROUNDS = 4
"""Rounds a node sits out after the first round it was silent in (no report by the deadline), unless it
shows a sign of life first; doubled after each further silent round it is tried in, up to
``MAX_SILENT_BACKOFF_ROUNDS``. Each try of a dead node costs a round's deadline, so the tries thin out
while its lease runs out; a live node that only missed a report is back after a few rounds at most."""

MAX_SILENT_BACKOFF_ROUNDS = 64

_Pair = tuple[str, str]
_ACTIVE = membership_pb2.NODE_STATE_ACTIVE
_RUNNING = gossip_pb2.ROUND_STATE_RUNNING


def round_seed(group_seed: int, number: int) -> int:
    """Round ``number``'s seed (sparsification masks), a uint64 from SHA-256 of (group seed, number)."""
    digest = hashlib.sha256(f"gossip-round\x00{group_seed}\x00{number}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def request_id(group: str, number: int) -> str:
    """The StartRound request id: the same for every leader that plans this round."""
    return f"coordinator/{group}/{number}"


def eligible(
    group: str, nodes: Iterable[membership_pb2.NodeRecord], network_members: Collection[str] | None
) -> list[str]:
    """The ids (sorted) of the nodes that take part in ``group``'s next round.

    ``network_members`` are the members of the network named ``group``, or None when no such network
    exists; then the nodes labelled ``gossip-group=GROUP`` take part instead. Either way a node must
    be ACTIVE (JOINING has not heartbeated yet; LEAVING is draining) and advertise a gossip address.
    """
    out = []
    for record in nodes:
        spec = record.spec
        if record.state != _ACTIVE or not spec.addresses.get(GOSSIP_ADDRESS):
            continue
        if network_members is not None:
            if spec.id in network_members:
                out.append(spec.id)
        elif spec.labels.get(GROUP_LABEL) == group:
            out.append(spec.id)
    return sorted(out)[:MAX_PARTICIPANTS]


def suspended(
    rounds: Sequence[gossip_pb2.Round], participants: Iterable[str], revisions: Mapping[str, int] | None = None
) -> set[str]:
    """The eligible nodes that sit out the next round because they were silent (listed, no report by
    the deadline) in the last round that listed them.

    ``rounds`` are the group's newest committed rounds, oldest first; ``revisions`` each node's
    ``NodeRecord.mod_revision``. A node silent in its last k listed rounds (consecutively), the last
    of them round L, sits out while fewer than ``SILENT_BACKOFF_ROUNDS * 2 ** (k - 1)`` rounds (at most
    ``MAX_SILENT_BACKOFF_ROUNDS``) followed L, **unless its node record changed after L ended**: a
    re-registration or a heartbeat with a new activity (a worker that comes back into ``step`` says
    "waiting") is a sign of life, committed like everything else. A crashed worker shows none, so
    it is not tried again before the backoff runs out, and by then its lease has usually expired and
    it is no longer eligible at all. Committed data only: every leader suspends the same nodes."""
    revisions = revisions or {}
    latest = rounds[-1].number if rounds else 0
    # One pass from the newest round back (O(rounds x participants), not per node): a node's streak
    # of silent rounds ends at the first round, going back, that listed it and got its report.
    undecided = set(participants)
    silent: dict[str, int] = {}
    last: dict[str, gossip_pb2.Round] = {}
    for committed in reversed(rounds):
        if not undecided:
            break
        listed = undecided.intersection(committed.participants)
        if not listed:
            continue
        reported = set(committed.reported) if committed.state == gossip_pb2.ROUND_STATE_TIMED_OUT else listed
        for node in listed:
            if node in reported:
                undecided.discard(node)
            else:
                silent[node] = silent.get(node, 0) + 1
                last.setdefault(node, committed)
    out = set()
    for node, missed in last.items():
        if revisions.get(node, 0) > missed.mod_revision:
            continue  # a sign of life since
        if latest - missed.number < min(SILENT_BACKOFF_ROUNDS * 2 ** (silent[node] - 1), MAX_SILENT_BACKOFF_ROUNDS):
            out.add(node)
    return out


def available(
    config: gossip_pb2.GroupConfig,
    rounds: Sequence[gossip_pb2.Round],
    participants: Sequence[str],
    revisions: Mapping[str, int] | None = None,
) -> list[str]:
    """Who takes part in the next round (sorted): the eligible ``participants`` minus the
    :func:`suspended` ones. When that would leave fewer than the group's floor (``min_participants``)
    but the eligible nodes reach it, the suspended are tried again: the group's only way on, and the
    round's deadline bounds what a dead one costs."""
    peers = sorted(participants)
    sitting_out = suspended(rounds, peers, revisions)
    out = [peer for peer in peers if peer not in sitting_out]
    return out if len(out) >= max(config.min_participants, 2) else peers


def rounds_to_read(config: gossip_pb2.GroupConfig) -> int:
    """How many of the group's newest committed rounds :meth:`Coordinator.plan` needs: SAPS's history,
    the current probe cycle, and enough rounds to see the last probe round when one is due."""
    return max(HISTORY_ROUNDS, config.probe_every_rounds)


def _is_probe(committed: gossip_pb2.Round) -> bool:
    return committed.policy == PROBE_POLICY


def _current_cycle(rounds: Sequence[gossip_pb2.Round]) -> list[gossip_pb2.Round]:
    """The probe rounds at the end of ``rounds``: the cycle the latest round belongs to (no cycle
    starts right after a probe round, so consecutive probe rounds are always one cycle)."""
    cycle: list[gossip_pb2.Round] = []
    for committed in reversed(rounds):
        if not _is_probe(committed) or (cycle and committed.number != cycle[-1].number - 1):
            break
        cycle.append(committed)
    cycle.reverse()
    return cycle


def _next_probes(peers: Sequence[str], cycle: int, seed: int, due: Collection[_Pair]) -> tuple[_Pair, ...]:
    """The next probe round's pairs: the slot of cycle ``cycle``'s schedule with the most due pairs
    (the earliest of those), filled up with further due pairs between nodes it leaves free.

    Without changes of participants the cycle's k-th round finds slots 0..k-1 probed and slot k
    wholly due, a perfect matching (or one node short, for odd N) with nothing to add: exactly
    ``probe_schedule``. After a change the schedule of the new participants no longer lines up with
    what was probed, and the filling keeps the remaining rounds few and full."""
    if not due:
        return ()
    slot = max(probe_schedule(peers, cycle, seed), key=lambda pairs: sum(pair in due for pair in pairs))
    chosen = [pair for pair in slot if pair in due]
    busy = {node for pair in chosen for node in pair}
    for a, b in sorted(due):
        if a not in busy and b not in busy:
            chosen.append((a, b))
            busy.update((a, b))
    return tuple(sorted(chosen))


def probe_pairs(
    config: gossip_pb2.GroupConfig,
    rounds: Sequence[gossip_pb2.Round],
    participants: Sequence[str],
    links: Iterable[gossip_pb2.Link],
) -> tuple[tuple[str, str], ...]:
    """The pairs of the group's next round when it is a probe round; () when it is a training round.

    ``rounds`` are the group's newest committed rounds, oldest first (at least
    :func:`rounds_to_read` of them when the group has that many); ``links`` the committed matrix.

    * **In a cycle** (the latest round is a probe round): the pairs of the participants that the
      cycle has not probed yet, one slot of ``probe_schedule(participants, first round of the cycle,
      group seed)`` at a time (see :func:`_next_probes` for participants that change mid-cycle);
      none left (or ``MAX_PROBE_CYCLE_ROUNDS`` reached): training.
    * **A cycle starts** after a training round (or before the first round) when the group knows
      none of its links (a fresh group: no pair of participants has an estimate or a failure in the
      matrix, or is in a retained round), or when ``probe_every_rounds`` (> 0) training rounds
      passed since the last probe round. A node that joins a group that knows its links starts no
      cycle: its links ride in the training rounds (:func:`exploration_pairs`).
    """
    peers = sorted(participants)
    if not 2 <= len(peers) <= MAX_PROBE_PEERS:
        return ()
    every = set(itertools.combinations(peers, 2))  # sorted ids: each (a, b) has a < b
    cycle = _current_cycle(rounds)
    if cycle:
        if len(cycle) >= MAX_PROBE_CYCLE_ROUNDS:
            return ()
        probed = {(pair.a, pair.b) for committed in cycle for pair in committed.pairs}
        return _next_probes(peers, cycle[0].number, config.seed, every - probed)
    number = rounds[-1].number + 1 if rounds else 1
    if not (every & _known_links(rounds, links)) or _probe_interval_passed(config, rounds):
        return _next_probes(peers, number, config.seed, every)
    return ()


def _known_links(rounds: Sequence[gossip_pb2.Round], links: Iterable[gossip_pb2.Link]) -> set[_Pair]:
    """The pairs whose bandwidth is known or on its way: an estimate or a failure in the matrix, or
    a pair of a retained round (probed, or exchanged in training: each end feeds the exchange into
    its table and reports it within ``REPORT_BANDWIDTH_EVERY`` rounds). A failure counts as known: a
    dead link must not be tried after every training round. A pair whose estimate was never
    reported is not tried again until its round is older than the rounds the coordinator reads."""
    known = {(link.a, link.b) for link in links if link.bandwidth_bps > 0 or link.failures > 0}
    known.update((pair.a, pair.b) for committed in rounds for pair in committed.pairs)
    return known


def exploration_pairs(
    config: gossip_pb2.GroupConfig,
    number: int,
    rounds: Sequence[gossip_pb2.Round],
    participants: Sequence[str],
    links: Iterable[gossip_pb2.Link],
) -> tuple[_Pair, ...]:
    """The pairs training round ``number`` uses to learn links nobody knows (a joiner's): disjoint
    unknown pairs (see :func:`_known_links`), drawn greedily in the order of ``round_rng(seed,
    number, "explore")``. The policy matches the other participants as usual.

    A join thus costs no probe round and no round without training: a newcomer to a group that
    knows its links trains from the next round on, each round with a partner it has not measured
    yet, and the exchange itself measures the link (the same sample a probe gives, at the model's
    size). Its N - 1 links are known after N - 1 training rounds, one per round; the other pairs of
    those rounds are the policy's. Groups beyond ``MAX_PROBE_PEERS`` explore nothing (they learn
    from the policy's exchanges alone, as before), and a fresh group probes instead
    (:func:`probe_pairs`)."""
    peers = sorted(participants)
    if not 2 <= len(peers) <= MAX_PROBE_PEERS:
        return ()
    known = _known_links(rounds, links)
    unknown = [pair for pair in itertools.combinations(peers, 2) if pair not in known]
    if not unknown:
        return ()
    busy: set[str] = set()
    chosen = []
    for k in round_rng(config.seed, number, "explore").permutation(len(unknown)):
        a, b = unknown[int(k)]
        if a not in busy and b not in busy:
            chosen.append((a, b))
            busy.update((a, b))
    return tuple(sorted(chosen))


def _probe_interval_passed(config: gossip_pb2.GroupConfig, rounds: Sequence[gossip_pb2.Round]) -> bool:
    if config.probe_every_rounds == 0 or not rounds:
        return False
    # No probe round among them: at least that many training rounds passed (all of them, when the
    # group has no older rounds).
    last_probe = next((r.number for r in reversed(rounds) if _is_probe(r)), rounds[0].number - 1)
    return rounds[-1].number - last_probe >= config.probe_every_rounds


def bandwidth_matrix(
    participants: Sequence[str], links: Iterable[gossip_pb2.Link], *, views_agree: float = 1.5
) -> npt.NDArray[np.float64]:
    """The participants' bandwidth matrix (rows in ``participants`` order) from the committed links.

    A measured link is the mean of its two ends' views when they agree within a factor ``views_agree``, else
    the lower view (issue 19: timed by both ends, a 2 Mbit/s link read 0.83x at one end and up to
    1.85x at the other; the lower view is the safe one when they disagree).

    A link never measured (no estimate above 0) counts as the median of the measured links among
    these participants, or ``DEFAULT_BANDWIDTH_BPS`` when none is measured, halved once per failure
    the state recorded on it. Neither optimistic nor pessimistic: a new link competes as a typical
    one, so SAPS tries it without preferring it, and the matrix fills from the exchanges themselves.
    A default of 0 would make the link missing and could strand a newcomer; a high one would make
    every unmeasured link look best and put the 0.9 b* threshold above all measured links.
    """
    index = {peer: k for k, peer in enumerate(participants)}
    n = len(participants)
    bw = np.full((n, n), np.nan)
    failures = np.zeros((n, n))
    for link in links:
        i, j = index.get(link.a), index.get(link.b)
        if i is None or j is None:
            continue
        if link.bandwidth_bps > 0 and math.isfinite(link.bandwidth_bps):
            # Both ends' views: their mean when they agree within views_agree (two timings of the same
            # exchanges, each with its own noise), else the lower one (the state's ``bandwidth_bps``):
            # a view far above the other is a clock that started late, and no end sees a link faster
            # than it is by contention.
            a, b = link.bandwidth_a_bps, link.bandwidth_b_bps
            agree = a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b) and max(a, b) <= views_agree * min(a, b)
            bw[i, j] = bw[j, i] = (a + b) / 2 if agree else link.bandwidth_bps
        else:
            failures[i, j] = failures[j, i] = link.failures
    iu = np.triu_indices(n, 1)
    measured = bw[iu][~np.isnan(bw[iu])]
    default = float(np.median(measured)) if measured.size else DEFAULT_BANDWIDTH_BPS
    unmeasured = np.isnan(bw)
    bw[unmeasured] = default * FAILURE_PENALTY ** failures[unmeasured]
    np.fill_diagonal(bw, 0.0)
    return bw


@dataclass(frozen=True)
class History:
    """SAPS's history as committed rounds define it: the training rounds among the newest
    ``HISTORY_ROUNDS`` rounds of one group. Probe rounds are skipped: they measure links and mix
    nothing, so to the selector they never happened (:meth:`saps_state`)."""

    last_round: int
    #: The latest round's create_revision: a round of the same number committed anew (after a
    #: restore) is a different round.
    last_revision: int
    #: The numbers of the training rounds in the horizon, ascending.
    trained: tuple[int, ...] = ()
    #: The training round in which each link was last used (its number).
    last_used: Mapping[_Pair, int] = field(default_factory=dict)
    #: The pairs of the newest ``DEFAULT_MIX_HISTORY`` training rounds in the horizon, oldest first.
    recent: tuple[tuple[_Pair, ...], ...] = ()

    @property
    def rounds_seen(self) -> int:
        return len(self.trained)

    @classmethod
    def from_rounds(cls, rounds: Sequence[gossip_pb2.Round]) -> History | None:
        """The history of the group whose committed rounds (oldest first) end with ``rounds``."""
        if not rounds:
            return None
        latest = rounds[-1]
        window = [r for r in rounds if r.number + HISTORY_ROUNDS > latest.number and not _is_probe(r)]
        last_used: dict[_Pair, int] = {}
        for committed in window:
            for pair in committed.pairs:
                last_used[(pair.a, pair.b)] = committed.number
        recent = tuple(_pairs(r) for r in window[-DEFAULT_MIX_HISTORY:])
        return cls(latest.number, latest.create_revision, tuple(r.number for r in window), last_used, recent)

    def advance(self, committed: gossip_pb2.Round) -> History:
        """This history with the next committed round folded in (``committed.number == last_round + 1``)."""
        if committed.number != self.last_round + 1:
            raise ValueError(f"round {committed.number} does not follow round {self.last_round}")
        horizon = committed.number - HISTORY_ROUNDS
        trained = tuple(number for number in self.trained if number > horizon)
        last_used = {pair: used for pair, used in self.last_used.items() if used > horizon}
        # ``recent`` holds the pairs of the newest entries of ``trained``: it loses what left the horizon.
        recent = self.recent[len(self.recent) - min(len(self.recent), len(trained)) :]
        if not _is_probe(committed):
            trained += (committed.number,)
            for pair in committed.pairs:
                last_used[(pair.a, pair.b)] = committed.number
            recent = (*recent, _pairs(committed))[-DEFAULT_MIX_HISTORY:]
        return History(committed.number, committed.create_revision, trained, last_used, recent)

    def matches(self, committed: gossip_pb2.Round) -> bool:
        return self.last_round == committed.number and self.last_revision == committed.create_revision

    def saps_state(self) -> SapsState:
        """The selector's state, with the training rounds renumbered to end at ``last_round`` without
        gaps: a link used k training rounds ago reads as used in round ``last_round - k``. Ages and the
        window then count training rounds only, while the next round keeps its own number (its
        random draws are seeded by it). Without probe rounds this is the identity."""
        newest = len(self.trained) - 1
        return SapsState(
            last_round=self.last_round,
            rounds_seen=self.rounds_seen,
            last_used=tuple(
                sorted(
                    (a, b, self.last_round - (newest - bisect.bisect_left(self.trained, used)))
                    for (a, b), used in self.last_used.items()
                )
            ),
            recent=self.recent,
        )


@dataclass(frozen=True)
class Plan:
    """What to propose, and the matching behind it (for logs and tests; None for a probe round)."""

    request: gossip_pb2.StartRoundRequest
    matching: Matching | None

    @property
    def number(self) -> int:
        return int(self.request.round.number)

    @property
    def probe(self) -> bool:
        return _is_probe(self.request.round)


def _pairs(committed: gossip_pb2.Round) -> tuple[_Pair, ...]:
    return tuple((pair.a, pair.b) for pair in committed.pairs)


def _matching(
    config: gossip_pb2.GroupConfig,
    number: int,
    participants: Sequence[str],
    bw: npt.NDArray[np.float64],
    history: History | None,
    explore: Sequence[_Pair] = (),
) -> Matching:
    """The policy's matching of ``participants`` (sorted; ``bw`` in their order), with the
    ``explore`` pairs fixed and the policy matching the others."""
    if not explore:
        return _policy_matching(config, number, participants, bw, history)
    busy = {node for pair in explore for node in pair}
    rest = [k for k, peer in enumerate(participants) if peer not in busy]
    index = {peer: k for k, peer in enumerate(participants)}
    rest_peers = [participants[k] for k in rest]
    sub = _policy_matching(config, number, rest_peers, bw[np.ix_(rest, rest)], history) if len(rest) >= 2 else None
    pairs = tuple(sorted((*explore, *(sub.pairs if sub is not None else ()))))
    return Matching(
        round=number,
        pairs=pairs,
        idle=sub.idle if sub is not None else tuple(rest_peers),
        bottleneck=min(float(bw[index[a], index[b]]) for a, b in pairs),
        threshold=sub.threshold if sub is not None else None,
        fallback=sub.fallback if sub is not None else False,
        window_connected=sub.window_connected if sub is not None else None,
    )


def _policy_matching(
    config: gossip_pb2.GroupConfig,
    number: int,
    participants: Sequence[str],
    bw: npt.NDArray[np.float64],
    history: History | None,
) -> Matching:
    if config.policy == "random":
        return random_matching(participants, config.seed, number, bandwidth=bw)
    if config.policy == "best_bottleneck":
        return best_bottleneck(bw, participants)[1]
    if config.policy == ADAPTIVE_POLICY:
        adaptive = (
            AdaptiveSelector.from_state(history.saps_state(), config.seed)
            if history is not None
            else AdaptiveSelector(config.seed)
        )
        return adaptive.select(bw, participants, round=number)
    selector = (
        SapsSelector.from_state(history.saps_state(), config.seed) if history is not None else SapsSelector(config.seed)
    )
    return selector.select(bw, participants, round=number)


def plan_round(
    config: gossip_pb2.GroupConfig,
    rounds: Sequence[gossip_pb2.Round],
    history: History | None,
    participants: Sequence[str],
    links: Iterable[gossip_pb2.Link],
    matrix_version: int,
    now_unix_ms: int,
    revisions: Mapping[str, int] | None = None,
) -> Plan | None:
    """The group's next round, or None when none is due: the group is paused, its latest round is
    still running, or fewer than ``min_participants`` nodes are eligible. ``rounds`` are the group's
    newest committed rounds, oldest first (:func:`rounds_to_read` of them); ``history`` must be the
    history up to the latest (see :class:`History`); ``participants`` the eligible ids and
    ``revisions`` their node records' ``mod_revision`` (see :func:`available`: nodes silent in their
    last round sit out).

    A probe round (:func:`probe_pairs`) lists only the nodes it pairs: the others have nothing to
    do in it and keep waiting for the next training round."""
    latest = rounds[-1] if rounds else None
    if config.paused or (latest is not None and latest.state == _RUNNING):
        return None
    if len(participants) < max(config.min_participants, 2):
        return None
    number = (latest.number if latest is not None else 0) + 1
    if (history.last_round if history is not None else 0) != number - 1:
        raise ValueError(f"the history ends at round {history and history.last_round}, not {number - 1}")
    peers = available(config, rounds, participants, revisions)
    links = list(links)
    probes = probe_pairs(config, rounds, peers, links)
    matching: Matching | None = None
    idle: Sequence[str] = ()
    if probes:
        members, pairs, policy = sorted({node for pair in probes for node in pair}), probes, PROBE_POLICY
    else:
        explore = exploration_pairs(config, number, rounds, peers, links)
        matching = _matching(config, number, peers, bandwidth_matrix(peers, links), history, explore)
        members, pairs, idle, policy = peers, matching.pairs, matching.idle, config.policy
    spec = gossip_pb2.TensorSpec()
    spec.CopyFrom(config.spec)
    round_ = gossip_pb2.Round(
        group=config.group,
        number=number,
        participants=members,
        matrix_version=matrix_version,
        seed=round_seed(config.seed, number),
        policy=policy,
        pairs=[gossip_pb2.Pair(a=a, b=b) for a, b in pairs],
        idle=list(idle),
        spec=spec,
        deadline_unix_ms=now_unix_ms + max(1, math.ceil(config.round_timeout_s * 1000)),
    )
    return Plan(gossip_pb2.StartRoundRequest(round=round_, request_id=request_id(config.group, number)), matching)


class Coordinator:
    """The leader's planner for every group, with each group's SAPS history cached between rounds.

    Not thread-safe: one caller at a time (the housekeeping runs one planning pass at a time).
    """

    def __init__(self) -> None:
        self._histories: dict[str, History] = {}

    def history(self, group: str, rounds: Sequence[gossip_pb2.Round]) -> History | None:
        """The history up to the group's latest committed round; ``rounds`` are the newest committed
        rounds (at least ``HISTORY_ROUNDS`` when there are that many), oldest first. Cached; rebuilt
        when the cache is not the round before (or the same round as) the latest one."""
        if not rounds:
            self._histories.pop(group, None)
            return None
        latest = rounds[-1]
        cached = self._histories.get(group)
        if cached is not None and cached.matches(latest):
            return cached
        rebuilt = (
            cached.advance(latest)
            if cached is not None and len(rounds) >= 2 and cached.matches(rounds[-2])
            else History.from_rounds(rounds)
        )
        assert rebuilt is not None
        self._histories[group] = history = rebuilt
        return history

    def plan(
        self,
        config: gossip_pb2.GroupConfig,
        rounds: Sequence[gossip_pb2.Round],
        participants: Sequence[str],
        links: Iterable[gossip_pb2.Link],
        matrix_version: int,
        now_unix_ms: int,
        revisions: Mapping[str, int] | None = None,
    ) -> Plan | None:
        """:func:`plan_round` for ``config.group`` given its newest committed rounds (oldest first;
        :func:`rounds_to_read` of them)."""
        latest = rounds[-1] if rounds else None
        if config.paused or (latest is not None and latest.state == _RUNNING):
            return None
        return plan_round(
            config,
            rounds,
            self.history(config.group, rounds),
            participants,
            links,
            matrix_version,
            now_unix_ms,
            revisions,
        )

    def forget(self, keep: Collection[str] = ()) -> None:
        """Drop the cached histories of groups not in ``keep`` (deleted groups, lost leadership)."""
        for group in [g for g in self._histories if g not in keep]:
            del self._histories[group]
