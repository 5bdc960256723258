"""Race-free cluster formation (``--bootstrap-expect N``): the rules, and the gateway's soft table.

No cluster exists yet, so nothing replicated can decide who founds it. The decision is made by the
servers themselves, with single-use votes; the gateways only carry the votes around. The rules
(``gateway/DESIGN.md``, "Forming a cluster", has the argument in full):

1. A starting server posts its *candidacy* (id, addresses, its vote if it has one) to a gateway,
   again and again. Gateways keep candidacies for ``ttl_s`` after the last post and relay them to
   their peer gateways, so every gateway converges on the same list.
2. A server votes **once**: for a set of exactly N candidate ids that includes itself. It writes the
   vote to its data directory (fsync) before anyone can see it, and never changes it (a restart
   posts the same vote). :func:`choose_vote` picks the set: another candidate's vote that includes
   this server if there is one (so the group converges on the first vote cast), else the N
   smallest ids among the candidates still free to vote for it.
3. A server starts Raft with set S only when it has seen **every member of S vote exactly S**
   (:func:`unanimous`).

Why two clusters cannot form: two distinct formed sets S1 and S2 would need a server in both to
have voted twice; so they are disjoint, which takes 2N servers started with ``--bootstrap-expect N``.
With up to 2N-1 of them (and in particular exactly N, the intended use) at most one cluster forms,
whatever the timing, however many gateways, and whichever gateway each server asks. Gateways can be
slow, restart or disagree for a while: they only delay a decision, because what they relay is only
ever a server's own irrevocable vote.

Pure: no I/O, no clock of its own (callers pass ``now``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

#: Largest founding set a gateway forms (a Raft cluster of more voters only gets slower).
MAX_BOOTSTRAP_EXPECT = 9

#: A candidacy not posted again for this long is dropped (servers post every ~0.25 s).
DEFAULT_CANDIDATE_TTL_S = 10.0
#: Never more candidates than this in one table (each is a few hundred bytes).
MAX_CANDIDATES = 256


def vote_problem(voter: str, vote: Iterable[str], expect: int) -> str | None:
    """Why ``vote`` is not a valid founding-set vote of ``voter`` (None when it is, or when it is
    empty: not cast yet). Gateways check posted and relayed votes alike, so a broken peer cannot relay
    what a server could not post."""
    ids = list(vote)
    if not ids:
        return None
    if len(ids) != expect or voter not in ids:
        return f"a vote names exactly {expect} distinct ids, the voter's own among them"
    if sorted(set(ids)) != ids:
        return "a vote's ids must be sorted and distinct"
    return None


@dataclass(frozen=True)
class Candidate:
    """A starting server, as it announced itself."""

    id: str
    client_address: str
    raft_address: str
    #: The sorted ids it voted for; empty until it voted.
    vote: tuple[str, ...] = ()
    #: It runs Raft already (founded, or joined a cluster): it votes for nothing more, and its
    #: client address is where the cluster can be reached.
    started: bool = False


def choose_vote(me: str, expect: int, candidates: Mapping[str, Candidate]) -> tuple[str, ...] | None:
    """The set this server should vote for now, or None to wait.

    ``candidates`` is the current (fresh) list, this server included. Any answer is safe (safety
    comes from single-use votes and unanimity, not from this choice); the choice only decides how
    fast the group agrees, and whether a late or surplus server stays out of the way.
    """
    if expect < 1 or me not in candidates:
        return None
    # Adopt: a vote already cast for a set of the right size that includes me. The most supported
    # such set first, then the smallest ids: every server that adopts converges on the same one.
    support: dict[tuple[str, ...], int] = {}
    for candidate in candidates.values():
        if len(candidate.vote) == expect and me in candidate.vote:
            support[candidate.vote] = support.get(candidate.vote, 0) + 1
    if support:
        return min(support, key=lambda vote: (-support[vote], vote))
    # Otherwise the N smallest ids among those free to found a cluster with me: not started, not
    # voted, and not named in someone else's vote (which they would adopt). Fewer conflicting votes
    # when more servers start than expected; with exactly N servers every vote is the same set anyway.
    claimed = {member for c in candidates.values() for member in c.vote if c.id != me}
    free = sorted(c.id for c in candidates.values() if not c.started and not c.vote and c.id not in claimed)
    if me not in free or len(free) < expect:
        return None
    chosen = tuple(free[:expect])
    return chosen if me in chosen else None


@dataclass(frozen=True)
class Step:
    """What a forming server does next: ``form`` with ``members``, cast ``vote``, or ``wait``."""

    action: str
    members: tuple[str, ...] = ()


def next_step(
    me: str, expect: int, my_vote: tuple[str, ...], candidates: Mapping[str, Candidate], *, settled: bool
) -> Step:
    """One forming server's decision, given what a gateway shows it.

    ``settled``: the candidate list has not changed for a while (servers started together then see
    each other before anyone votes by the smallest-ids rule; adopting an existing vote needs no wait).
    The caller persists a ``vote`` before posting it, and never asks again with another vote.
    """
    if my_vote:
        return Step("form", my_vote) if unanimous(my_vote, candidates) else Step("wait")
    if any(c.started for c in candidates.values()):
        # A cluster runs: a server that has not voted joins it and never founds another.
        return Step("wait")
    choice = choose_vote(me, expect, candidates)
    if choice is None:
        return Step("wait")
    adopted = any(c.vote == choice for c in candidates.values())
    return Step("vote", choice) if adopted or settled else Step("wait")


def unanimous(vote: tuple[str, ...], candidates: Mapping[str, Candidate]) -> bool:
    """True when every member of ``vote`` is a candidate that voted exactly ``vote``."""
    return bool(vote) and all(member in candidates and candidates[member].vote == vote for member in vote)


def formed_sets(candidates: Mapping[str, Candidate], expect: int) -> list[tuple[str, ...]]:
    """Every set of size ``expect`` whose members all voted for it (at most one, by the argument above)."""
    votes = {c.vote for c in candidates.values() if len(c.vote) == expect}
    return sorted(v for v in votes if unanimous(v, candidates))


@dataclass
class _Entry:
    candidate: Candidate
    seen_at: float


class FormationTable:
    """A gateway's soft list of candidacies: posted by servers, merged from peer gateways, expiring.

    Losing it loses nothing: the servers post their candidacy (and their vote, from disk) again
    within a second, so a restarted gateway rebuilds it. A candidacy's vote is kept as posted, the
    newest post winning: a server never changes its vote, and one whose data directory was wiped is
    a new server as far as safety goes (the documented operator error).
    """

    def __init__(self, expect: int, ttl_s: float = DEFAULT_CANDIDATE_TTL_S) -> None:
        if expect < 1:
            raise ValueError(f"bootstrap_expect {expect} must be at least 1")
        self.expect = expect
        self.ttl_s = ttl_s
        self._entries: dict[str, _Entry] = {}

    def post(self, candidate: Candidate, now: float) -> None:
        self._expire(now)
        if candidate.id not in self._entries and len(self._entries) >= MAX_CANDIDATES:
            raise OverflowError(f"more than {MAX_CANDIDATES} servers are bootstrapping through this gateway")
        self._entries[candidate.id] = _Entry(candidate, now)

    def merge(self, relayed: Iterable[tuple[Candidate, float]], now: float) -> None:
        """Fold in a peer gateway's list: ``(candidate, age_s)``. A fresher sighting wins; a vote is
        never dropped for an older sighting without one (a vote, once cast, is permanent)."""
        self._expire(now)
        for candidate, age_s in relayed:
            seen_at = now - max(0.0, age_s)
            if now - seen_at >= self.ttl_s:
                continue
            current = self._entries.get(candidate.id)
            if current is None:
                if len(self._entries) >= MAX_CANDIDATES:
                    continue
                self._entries[candidate.id] = _Entry(candidate, seen_at)
                continue
            newer = seen_at > current.seen_at
            chosen = candidate if newer else current.candidate
            other = current.candidate if newer else candidate
            if not chosen.vote and other.vote:
                chosen = replace(chosen, vote=other.vote)
            if other.started and not chosen.started:
                chosen = replace(chosen, started=True)
            current.candidate = chosen
            current.seen_at = max(seen_at, current.seen_at)

    def candidates(self, now: float) -> dict[str, Candidate]:
        self._expire(now)
        return {cid: entry.candidate for cid, entry in sorted(self._entries.items())}

    def with_ages(self, now: float) -> list[tuple[Candidate, float]]:
        self._expire(now)
        return [(entry.candidate, now - entry.seen_at) for _, entry in sorted(self._entries.items())]

    def formed(self, now: float) -> tuple[Candidate, ...] | None:
        """The founding set every member voted for, with its members' addresses, or None."""
        candidates = self.candidates(now)
        sets = formed_sets(candidates, self.expect)
        if not sets:
            return None
        return tuple(candidates[member] for member in sets[0])

    def cluster_addresses(self, now: float) -> tuple[str, ...]:
        """Client addresses of servers that run Raft: where the cluster can be reached, if anywhere."""
        return tuple(c.client_address for c in self.candidates(now).values() if c.started)

    def _expire(self, now: float) -> None:
        stale = [cid for cid, entry in self._entries.items() if now - entry.seen_at >= self.ttl_s]
        for cid in stale:
            del self._entries[cid]
