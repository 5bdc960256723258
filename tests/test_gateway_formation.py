"""Race-free formation (gateway/formation.py): the rules, the gateway's soft table, and a model of
servers and gateways under arbitrary interleavings that must never form two clusters."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.formation import Candidate, FormationTable, choose_vote, formed_sets, next_step, unanimous


def cand(cid: str, vote: tuple[str, ...] = (), started: bool = False) -> Candidate:
    return Candidate(cid, f"{cid}:1", f"{cid}:2", vote, started)


def table_of(*candidates: Candidate) -> dict[str, Candidate]:
    return {c.id: c for c in candidates}


# --------------------------------------------------------------------------------------- the rules


def test_the_smallest_ids_win_when_nobody_voted() -> None:
    candidates = table_of(cand("c"), cand("a"), cand("b"), cand("d"))
    assert choose_vote("a", 3, candidates) == ("a", "b", "c")
    assert choose_vote("c", 3, candidates) == ("a", "b", "c")
    # d is not among the three smallest: it waits (and joins once the cluster runs).
    assert choose_vote("d", 3, candidates) is None
    # Too few candidates: nobody votes.
    assert choose_vote("a", 5, candidates) is None


def test_an_existing_vote_that_includes_me_is_adopted() -> None:
    # b voted {b, c, d} (it had not seen a yet); c adopts that rather than {a, b, c}.
    candidates = table_of(cand("a"), cand("b", ("b", "c", "d")), cand("c"), cand("d"))
    assert choose_vote("c", 3, candidates) == ("b", "c", "d")
    assert choose_vote("d", 3, candidates) == ("b", "c", "d")
    # a is outside it, and only c and d are still free: a waits.
    assert choose_vote("a", 3, candidates) is None


def test_started_servers_and_servers_committed_elsewhere_are_not_counted() -> None:
    candidates = table_of(cand("a", started=True), cand("b"), cand("c"), cand("d", ("d", "e", "f")))
    assert choose_vote("b", 2, candidates) == ("b", "c")
    assert choose_vote("b", 3, candidates) is None


def test_unanimity_needs_every_member_voting_the_same_set() -> None:
    vote = ("a", "b", "c")
    assert not unanimous(vote, table_of(cand("a", vote), cand("b", vote)))
    assert not unanimous(vote, table_of(cand("a", vote), cand("b", vote), cand("c", ("c", "d", "e"))))
    assert unanimous(vote, table_of(cand("a", vote), cand("b", vote), cand("c", vote), cand("d")))
    assert not unanimous((), table_of(cand("a")))


def test_next_step_waits_to_settle_but_adopts_at_once() -> None:
    candidates = table_of(cand("a"), cand("b"), cand("c"))
    assert next_step("a", 3, (), candidates, settled=False).action == "wait"
    assert next_step("a", 3, (), candidates, settled=True).members == ("a", "b", "c")
    voted = table_of(cand("a", ("a", "b", "c")), cand("b"), cand("c"))
    assert next_step("b", 3, (), voted, settled=False).action == "vote"
    everyone = table_of(*(cand(x, ("a", "b", "c")) for x in "abc"))
    assert next_step("c", 3, ("a", "b", "c"), everyone, settled=False).action == "form"


def test_nobody_votes_once_a_cluster_runs() -> None:
    """A server started later, even with --bootstrap-expect, joins a running cluster: it never votes."""
    running = table_of(*(cand(x, ("a", "b", "c"), started=True) for x in "abc"), cand("d"), cand("e"), cand("f"))
    assert next_step("d", 3, (), running, settled=True).action == "wait"


def test_a_single_server_cluster_forms_alone() -> None:
    assert next_step("only", 1, (), table_of(cand("only")), settled=True).members == ("only",)
    assert next_step("only", 1, ("only",), table_of(cand("only", ("only",))), settled=False).action == "form"


# --------------------------------------------------------------------------------------- the table


def test_candidacies_expire_and_votes_survive_a_relay_of_an_older_sighting() -> None:
    table = FormationTable(expect=2, ttl_s=5)
    table.post(cand("a", ("a", "b")), now=0)
    table.post(cand("b"), now=1)
    # A peer saw b more recently, but before b voted; and b voted here: the vote is kept.
    table.post(cand("b", ("a", "b")), now=2)
    table.merge([(cand("b"), 0.0)], now=3)
    assert table.candidates(3)["b"].vote == ("a", "b")
    assert [c.id for c in table.formed(3) or ()] == ["a", "b"]
    # a stops posting: after the TTL it is gone, and with it the formed set.
    table.post(cand("b", ("a", "b"), started=True), now=6)
    assert set(table.candidates(6)) == {"b"}
    assert table.formed(6) is None
    assert table.cluster_addresses(6) == ("b:1",)


def test_relayed_sightings_older_than_the_ttl_are_ignored() -> None:
    table = FormationTable(expect=3, ttl_s=5)
    table.merge([(cand("x"), 7.0), (cand("y"), 1.0)], now=10)
    assert set(table.candidates(10)) == {"y"}


def test_the_table_is_bounded() -> None:
    table = FormationTable(expect=1)
    for index in range(256):
        table.post(cand(f"s{index:03d}"), now=0)
    with pytest.raises(OverflowError):
        table.post(cand("one-too-many"), now=0)
    table.post(cand("s000", ("s000",)), now=0)  # an existing candidate can always post again


# --------------------------------------------------------------------------------------- the model


@dataclass
class Server:
    id: str
    gateway: int
    vote: tuple[str, ...] = ()
    members: tuple[str, ...] | None = None  # set once it started Raft

    def candidate(self) -> Candidate:
        return cand(self.id, self.vote, started=self.members is not None)


@dataclass
class World:
    expect: int
    servers: list[Server]
    gateways: list[FormationTable]
    now: float = 0.0
    formed: set[tuple[str, ...]] = field(default_factory=set)

    def post(self, server: Server, settled: bool) -> None:
        """One round of the server loop in controlplane/server/bootstrap.py, against its gateway."""
        table = self.gateways[server.gateway]
        table.post(server.candidate(), self.now)
        if server.members is not None:
            return
        step = next_step(server.id, self.expect, server.vote, table.candidates(self.now), settled=settled)
        if step.action == "vote":
            assert not server.vote, "a server voted twice"
            server.vote = step.members
        elif step.action == "form":
            assert server.id in step.members and len(step.members) == self.expect
            server.members = step.members
            self.formed.add(step.members)

    def vote_anything(self, server: Server, pick: int) -> None:
        """A server whose choice is arbitrary (any N ids, itself included): safety must not depend on
        ``choose_vote`` choosing well, only on votes being single-use and unanimity."""
        if server.vote or server.members is not None:
            return
        others = sorted(s.id for s in self.servers if s is not server)
        chosen = {server.id}
        while len(chosen) < self.expect:
            chosen.add(others[pick % len(others)])
            pick = pick // len(others) + 1 + pick
        server.vote = tuple(sorted(chosen))

    def relay(self, source: int, target: int) -> None:
        if source != target:
            self.gateways[target].merge(self.gateways[source].with_ages(self.now), self.now)

    def check(self) -> None:
        # The safety property: every server that started Raft started with the same founding set.
        assert len(self.formed) <= 1, f"two clusters formed: {sorted(self.formed)}"
        for table in self.gateways:
            assert len(formed_sets(table.candidates(self.now), self.expect)) <= 1


actions = st.one_of(
    st.tuples(st.just("post"), st.integers(0, 20), st.booleans()),
    st.tuples(st.just("relay"), st.integers(0, 2), st.integers(0, 2)),
    st.tuples(st.just("tick"), st.floats(0.1, 6.0), st.just(False)),
    st.tuples(st.just("switch"), st.integers(0, 20), st.integers(0, 2)),
    st.tuples(st.just("vote_anything"), st.integers(0, 20), st.integers(0, 10_000)),
)


@settings(max_examples=400, deadline=None)
@given(
    expect=st.integers(1, 5),
    surplus=st.integers(0, 4),
    gateway_count=st.integers(1, 3),
    ids=st.permutations([f"s{i}" for i in range(9)]),
    placement=st.lists(st.integers(0, 2), min_size=9, max_size=9),
    script=st.lists(actions, max_size=150),
)
def test_never_two_clusters_and_exactly_n_servers_always_form_one(
    expect: int,
    surplus: int,
    gateway_count: int,
    ids: list[str],
    placement: list[int],
    script: list[tuple[str, float, object]],
) -> None:
    """Servers posting to any of up to three gateways, relays in any order or not at all, candidacies
    expiring, servers switching gateways, votes cast settled or not: with up to 2N-1 servers never
    two founding sets; and once the gateways relay, exactly N servers always form one cluster."""
    count = expect + min(surplus, expect - 1)  # at most 2N - 1 servers
    world = World(
        expect=expect,
        servers=[Server(ids[i], placement[i] % gateway_count) for i in range(count)],
        gateways=[FormationTable(expect, ttl_s=5.0) for _ in range(gateway_count)],
    )
    for kind, a, b in script:
        if kind == "post":
            world.post(world.servers[int(a) % count], settled=bool(b))
        elif kind == "relay":
            world.relay(int(a) % gateway_count, int(b) % gateway_count)
        elif kind == "tick":
            world.now += float(a)
        elif kind == "vote_anything":
            world.vote_anything(world.servers[int(a) % count], int(b))
        else:
            world.servers[int(a) % count].gateway = int(b) % gateway_count
        world.check()
    if count != expect or any(kind == "vote_anything" for kind, _, _ in script):
        return
    # Liveness with exactly N servers: everyone keeps posting and the gateways keep relaying.
    for _ in range(3 * expect + 3):
        for server in world.servers:
            world.post(server, settled=True)
        for source in range(gateway_count):
            for target in range(gateway_count):
                world.relay(source, target)
        world.check()
    assert all(server.members == tuple(sorted(s.id for s in world.servers)) for server in world.servers), [
        (s.id, s.vote, s.members) for s in world.servers
    ]


def test_two_camps_of_votes_form_no_cluster_at_all() -> None:
    """Five servers for a cluster of three, split into camps by two gateways that never relay:
    {a, b} vote {a, b, c} at one, {d, e} vote {c, d, e} at the other, c never votes. A majority of
    each set voted for it, and still neither forms: only unanimity starts Raft."""
    world = World(
        expect=3,
        servers=[Server("a", 0), Server("b", 0), Server("c", 0), Server("d", 1), Server("e", 1)],
        gateways=[FormationTable(3), FormationTable(3)],
    )
    world.servers[0].vote = world.servers[1].vote = ("a", "b", "c")
    world.servers[3].vote = world.servers[4].vote = ("c", "d", "e")
    for _ in range(3):
        for server in world.servers:
            if server.id != "c":
                world.post(server, settled=True)
        world.check()
    assert not world.formed
    # c is free to choose (it sees both camps once the gateways relay), and whichever set it joins forms.
    world.relay(0, 1)
    world.relay(1, 0)
    world.post(world.servers[2], settled=True)
    assert world.servers[2].vote in {("a", "b", "c"), ("c", "d", "e")}
    for _ in range(2):
        for server in world.servers:
            world.post(server, settled=True)
        world.relay(0, 1)
        world.relay(1, 0)
        world.check()
    assert world.formed == {world.servers[2].vote}
