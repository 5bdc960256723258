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
  out of the next one; at least the group's ``min_participants``, else no round;
* **the same plan from any leader**: the matching is a function of committed data only. SAPS's
  history (which link was last used when) is rebuilt from the group's committed rounds
  (:class:`History`), the bandwidth is the committed matrix (links never measured take a default,
  :func:`bandwidth_matrix`), the randomness is seeded from the group's seed and the round number.
  A new leader therefore proposes exactly the round the old one would have; and since the request
  id is ``coordinator/GROUP/NUMBER``, a retry or a second leader's duplicate applies once.

:class:`Coordinator` caches each group's history keyed by its latest committed round and advances
it by one committed round at a time, rebuilding from the committed rounds whenever the cache does
not match (a new leader, a restore, a round started by someone else). Both paths give the same
history by construction: the history only ever looks at the newest ``HISTORY_ROUNDS`` rounds.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from controlplane.v1 import gossip_pb2, membership_pb2
from gossip.matching import Matching, SapsSelector, SapsState, best_bottleneck, random_matching

__all__ = [
    "DEFAULT_BANDWIDTH_BPS",
    "GOSSIP_ADDRESS",
    "GROUP_LABEL",
    "HISTORY_ROUNDS",
    "MAX_PARTICIPANTS",
    "Coordinator",
    "History",
    "Plan",
    "bandwidth_matrix",
    "eligible",
    "plan_round",
    "request_id",
    "round_seed",
]

DEFAULT_BANDWIDTH_BPS = 125e6
"""What a link counts as when no link among the participants was ever measured: 1 Gbit/s. When
some were, an unmeasured link counts as their median (see :func:`bandwidth_matrix`)."""

HISTORY_ROUNDS = 100
"""The rounds SAPS's history is rebuilt from. The selector only enforces connectivity over its
window (5 rounds) and caps a link's idleness bonus at the window; beyond that, "last used 100+
rounds ago" and "never used" are the same to it except as a tie-break between very old links. A
bounded history keeps the rebuild cheap and makes the cached and the rebuilt history identical."""

GOSSIP_ADDRESS = "gossip"
"""The address purpose under which a node advertises its gossip port (``NodeSpec.addresses``)."""

GROUP_LABEL = "gossip-group"
"""The node label that puts a node in a group that has no network of its name."""

MAX_PARTICIPANTS = 4096
"""The state machine's limit per round; beyond it the first ones by id take part."""

_Pair = tuple[str, str]
_ACTIVE = membership_pb2.NODE_STATE_ACTIVE
_RUNNING = gossip_pb2.ROUND_STATE_RUNNING
_FAILURE_PENALTY = 0.5  # the state machine's (and gossip.bandwidth's) halving per failure


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


def bandwidth_matrix(participants: Sequence[str], links: Iterable[gossip_pb2.Link]) -> npt.NDArray[np.float64]:
    """The participants' bandwidth matrix (rows in ``participants`` order) from the committed links.

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
            bw[i, j] = bw[j, i] = link.bandwidth_bps
        else:
            failures[i, j] = failures[j, i] = link.failures
    iu = np.triu_indices(n, 1)
    measured = bw[iu][~np.isnan(bw[iu])]
    default = float(np.median(measured)) if measured.size else DEFAULT_BANDWIDTH_BPS
    unmeasured = np.isnan(bw)
    bw[unmeasured] = default * _FAILURE_PENALTY ** failures[unmeasured]
    np.fill_diagonal(bw, 0.0)
    return bw


@dataclass(frozen=True)
class History:
    """SAPS's history as committed rounds define it: the newest ``HISTORY_ROUNDS`` of one group."""

    last_round: int
    #: The latest round's create_revision: a round of the same number committed anew (after a
    #: restore) is a different round.
    last_revision: int
    rounds_seen: int
    last_used: Mapping[_Pair, int] = field(default_factory=dict)

    @classmethod
    def from_rounds(cls, rounds: Sequence[gossip_pb2.Round]) -> History | None:
        """The history of the group whose committed rounds (oldest first) end with ``rounds``."""
        if not rounds:
            return None
        latest = rounds[-1]
        window = [r for r in rounds if r.number + HISTORY_ROUNDS > latest.number]
        last_used: dict[_Pair, int] = {}
        for committed in window:
            for pair in committed.pairs:
                last_used[(pair.a, pair.b)] = committed.number
        return cls(latest.number, latest.create_revision, len(window), last_used)

    def advance(self, committed: gossip_pb2.Round) -> History:
        """This history with the next committed round folded in (``committed.number == last_round + 1``)."""
        if committed.number != self.last_round + 1:
            raise ValueError(f"round {committed.number} does not follow round {self.last_round}")
        horizon = committed.number - HISTORY_ROUNDS
        last_used = {pair: used for pair, used in self.last_used.items() if used > horizon}
        for pair in committed.pairs:
            last_used[(pair.a, pair.b)] = committed.number
        return History(
            committed.number, committed.create_revision, min(self.rounds_seen + 1, HISTORY_ROUNDS), last_used
        )

    def matches(self, committed: gossip_pb2.Round) -> bool:
        return self.last_round == committed.number and self.last_revision == committed.create_revision

    def saps_state(self) -> SapsState:
        return SapsState(
            last_round=self.last_round,
            rounds_seen=self.rounds_seen,
            last_used=tuple(sorted((a, b, used) for (a, b), used in self.last_used.items())),
        )


@dataclass(frozen=True)
class Plan:
    """What to propose, and the matching behind it (for logs and tests)."""

    request: gossip_pb2.StartRoundRequest
    matching: Matching

    @property
    def number(self) -> int:
        return int(self.request.round.number)


def _matching(
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
    selector = (
        SapsSelector.from_state(history.saps_state(), config.seed) if history is not None else SapsSelector(config.seed)
    )
    return selector.select(bw, participants, round=number)


def plan_round(
    config: gossip_pb2.GroupConfig,
    latest: gossip_pb2.Round | None,
    history: History | None,
    participants: Sequence[str],
    links: Iterable[gossip_pb2.Link],
    matrix_version: int,
    now_unix_ms: int,
) -> Plan | None:
    """The group's next round, or None when none is due: the group is paused, its latest round is
    still running, or fewer than ``min_participants`` nodes are eligible. ``history`` must be the
    history up to ``latest`` (see :class:`History`); ``participants`` the eligible ids, sorted."""
    if config.paused or (latest is not None and latest.state == _RUNNING):
        return None
    if len(participants) < max(config.min_participants, 2):
        return None
    number = (latest.number if latest is not None else 0) + 1
    if (history.last_round if history is not None else 0) != number - 1:
        raise ValueError(f"the history ends at round {history and history.last_round}, not {number - 1}")
    peers = sorted(participants)
    bw = bandwidth_matrix(peers, links)
    matching = _matching(config, number, peers, bw, history)
    spec = gossip_pb2.TensorSpec()
    spec.CopyFrom(config.spec)
    round_ = gossip_pb2.Round(
        group=config.group,
        number=number,
        participants=peers,
        matrix_version=matrix_version,
        seed=round_seed(config.seed, number),
        policy=config.policy,
        pairs=[gossip_pb2.Pair(a=a, b=b) for a, b in matching.pairs],
        idle=list(matching.idle),
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
        """The history up to the group's latest committed round; ``rounds`` are the newest
        ``HISTORY_ROUNDS`` committed rounds, oldest first. Cached; rebuilt when the cache is not the
        round before (or the same round as) the latest one."""
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
    ) -> Plan | None:
        """:func:`plan_round` for ``config.group`` given its newest committed rounds (oldest first)."""
        latest = rounds[-1] if rounds else None
        if config.paused or (latest is not None and latest.state == _RUNNING):
            return None
        return plan_round(
            config,
            latest,
            self.history(config.group, rounds),
            participants,
            links,
            matrix_version,
            now_unix_ms,
        )

    def forget(self, keep: Collection[str] = ()) -> None:
        """Drop the cached histories of groups not in ``keep`` (deleted groups, lost leadership)."""
        for group in [g for g in self._histories if g not in keep]:
            del self._histories[group]
