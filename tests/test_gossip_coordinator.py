"""The leader's round planning (``gossip.coordinator``) against the real state machine, and the
replicated group configuration it plans from: deterministic plans, a planner rebuilt from committed
rounds continuing exactly like the one that planned all along, probe cycles (every pair probed
once on disjoint pairs, on a join, periodically, invisible to SAPS's history), no plan while a round
runs, who takes part, the default bandwidth, group validation and the snapshot round trip. No
network."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest

from controlplane.state import gossip as state_gossip
from controlplane.state.gossip import DONE, RUNNING, TIMED_OUT
from controlplane.state.machine import StateMachine, batch_entry
from controlplane.v1 import command_pb2, common_pb2, gossip_pb2, membership_pb2
from gossip.bandwidth import probe_schedule
from gossip.coordinator import (
    DEFAULT_BANDWIDTH_BPS,
    HISTORY_ROUNDS,
    MAX_PROBE_CYCLE_ROUNDS,
    MAX_PROBE_PEERS,
    PROBE_POLICY,
    SILENT_BACKOFF_ROUNDS,
    Coordinator,
    History,
    Plan,
    available,
    bandwidth_matrix,
    eligible,
    exploration_pairs,
    probe_pairs,
    request_id,
    round_seed,
    rounds_to_read,
    suspended,
)
from gossip.matching import SapsSelector, SapsState

from machine_driver import MachineDriver

SPEC = gossip_pb2.TensorSpec(
    tensors=[
        gossip_pb2.TensorInfo(name="w", dtype="float32", shape=[4, 3]),
        gossip_pb2.TensorInfo(name="b", dtype="float32", shape=[3]),
    ]
)


class Cluster(MachineDriver):
    """One replica of the state machine, fed commands the way the log would."""

    def __init__(self) -> None:
        super().__init__(now=1_000_000)

    def configure(self, mask: tuple[str, ...] = (), **fields: object) -> command_pb2.CommandResult:
        config = gossip_pb2.GroupConfig(group="g", **fields)  # type: ignore[arg-type]
        return self.run(gossip_configure_group=gossip_pb2.ConfigureGroupRequest(group=config, update_mask=list(mask)))

    def report_links(self, node: str, **bandwidths: float) -> None:
        links = [gossip_pb2.LinkReport(peer=peer, bandwidth_bps=bps, samples=2) for peer, bps in bandwidths.items()]
        ok(self.run(gossip_report_bandwidth=gossip_pb2.ReportBandwidthRequest(node_id=node, links=links)))

    def plan(
        self,
        coordinator: Coordinator,
        participants: list[str],
        group: str = "g",
        revisions: dict[str, int] | None = None,
    ) -> Plan | None:
        table = self.machine.gossip
        config = table.group(group)
        return coordinator.plan(
            config,
            table.recent_rounds(group, rounds_to_read(config)),
            participants,
            list(table.links.values()),
            table.matrix_version,
            self.now,
            revisions,
        )

    def start(self, plan: Plan) -> gossip_pb2.Round:
        result = ok(self.run(request_id=plan.request.request_id, gossip_start_round=plan.request))
        return result.gossip_start_round.round

    def step(
        self,
        coordinator: Coordinator,
        participants: list[str],
        silent: tuple[str, ...] = (),
        revisions: dict[str, int] | None = None,
    ) -> gossip_pb2.Round:
        """Plan, commit and finish the next round (every participant reports, but the ``silent``)."""
        planned = self.plan(coordinator, participants, revisions=revisions)
        assert planned is not None
        committed = self.start(planned)
        self.finish(committed, silent=tuple(n for n in silent if n in committed.participants))
        return self.machine.gossip.round(committed.group, committed.number)  # as it ended

    def report_all_links(self, names: list[str], bps: float = 1e7) -> None:
        for i, node in enumerate(names[:-1]):
            self.report_links(node, **{p: bps for p in names[i + 1 :]})

    def finish(self, round_: gossip_pb2.Round, silent: tuple[str, ...] = ()) -> None:
        for node in round_.participants:
            if node not in silent:
                request = gossip_pb2.ReportRoundRequest(group=round_.group, number=round_.number, node_id=node)
                ok(self.run(gossip_report_round=request))
        if silent:
            self.now = round_.deadline_unix_ms
            ok(self.run(gossip_end_round=gossip_pb2.EndRoundRequest(group=round_.group, number=round_.number)))


def ok(result: command_pb2.CommandResult) -> command_pb2.CommandResult:
    assert not result.HasField("error"), result.error.message
    return result


def error(result: command_pb2.CommandResult) -> tuple[int, str]:
    assert result.HasField("error"), "expected a refusal"
    return result.error.code, result.error.message


def peers(n: int) -> list[str]:
    return [f"n{i:02d}" for i in range(n)]


def pairs_of(round_: gossip_pb2.Round) -> list[tuple[str, str]]:
    return [(pair.a, pair.b) for pair in round_.pairs]


# ----------------------------------------------------------------------------------- planning


def test_plans_are_deterministic_whatever_the_peer_order() -> None:
    a, b = Cluster(), Cluster()
    for cluster in (a, b):
        ok(cluster.configure(spec=SPEC, seed=11))
        cluster.report_all_links(peers(6), 2e6)  # every link measured: no probe cycle first
        cluster.report_links("n00", n01=5e6, n02=1e6)
    first = a.plan(Coordinator(), peers(6))
    second = b.plan(Coordinator(), list(reversed(peers(6))))
    assert first is not None and second is not None
    assert first.request.SerializeToString(deterministic=True) == second.request.SerializeToString(deterministic=True)
    proposed = first.request.round
    assert first.request.request_id == request_id("g", 1) == "coordinator/g/1"
    assert proposed.number == 1 and list(proposed.participants) == peers(6)
    assert proposed.seed == round_seed(11, 1) != round_seed(11, 2)
    assert proposed.deadline_unix_ms == a.now + 30_000  # the default round timeout
    assert proposed.spec.tensors[0].name == "b"  # the group's canonical spec: tensors by name
    assert len(proposed.pairs) == 3 and not proposed.idle


@pytest.mark.parametrize("policy", ["saps", "saps-adaptive", "random", "best_bottleneck"])
def test_a_planner_rebuilt_from_committed_rounds_continues_identically(policy: str) -> None:
    """Coordinator A plans every round (its history cached and advanced); B takes over at round 6 with
    only the committed state, in the middle of a probe cycle; C starts from scratch every round. They
    propose the same rounds, through probe cycles (the first one joined and left mid-cycle, then
    periodic ones), while nodes join and leave, links are measured and exchanges fail."""
    cluster = Cluster()
    ok(cluster.configure(spec=SPEC, seed=3, policy=policy, probe_every_rounds=6))
    rng = np.random.default_rng(5)
    everyone = peers(9)
    a, b = Coordinator(), Coordinator()
    policies = []
    for number in range(1, 36):
        members = [p for k, p in enumerate(everyone) if not (number < 4 and k == 8) and not (number >= 9 and k == 2)]
        if number % 3 == 0:  # fresh estimates: the matrix moves between rounds
            node = str(rng.choice(members))
            cluster.report_links(node, **{p: float(rng.uniform(1e6, 5e7)) for p in members if p != node})
        before = cluster.machine.gossip.recent_rounds("g", 100)
        planned = cluster.plan(a, members)
        assert planned is not None and planned.number == number
        expected = planned.request.SerializeToString(deterministic=True)
        rebuilt = cluster.plan(Coordinator(), members)
        assert rebuilt is not None and rebuilt.request.SerializeToString(deterministic=True) == expected
        if number >= 6:
            taken_over = cluster.plan(b, members)
            assert taken_over is not None and taken_over.request.SerializeToString(deterministic=True) == expected
        committed = cluster.start(planned)
        policies.append(committed.policy)
        if planned.probe:  # only the probed pairs take part
            assert committed.policy == PROBE_POLICY and planned.matching is None and not committed.idle
            assert list(committed.participants) == sorted(n for pair in pairs_of(committed) for n in pair)
            assert set(committed.participants) <= set(members)
        else:
            # The silent nodes of the last rounds sit out (tested below).
            config = cluster.machine.gossip.group("g")
            assert committed.policy == policy and list(committed.participants) == available(config, before, members)
        assert committed.state == RUNNING
        # A retry of the same plan (a lost answer, or a second leader's duplicate) applies once.
        again = cluster.run(request_id=planned.request.request_id, gossip_start_round=planned.request)
        assert again.gossip_start_round.round == committed
        silent = (committed.pairs[0].a,) if number % 4 == 0 else ()
        cluster.finish(committed, silent)
        assert cluster.machine.gossip.round("g").state == (TIMED_OUT if silent else DONE)
    # B took over mid-cycle (rounds 5 and 6 are probe rounds), and there were periodic cycles later.
    assert policies[4] == policies[5] == PROBE_POLICY
    cycles = sum(1 for k, p in enumerate(policies) if p == PROBE_POLICY and (k == 0 or policies[k - 1] != p))
    assert cycles >= 3 and policies.count(policy) >= 12


def test_saps_plans_are_the_selector_s_own_matchings() -> None:
    """Through committed rounds, the coordinator's SAPS rounds are exactly what one SapsSelector fed the
    same matrix would pick round after round (repairs of the window included)."""
    cluster = Cluster()
    ok(cluster.configure(spec=SPEC, seed=21))
    names = peers(7)
    rng = np.random.default_rng(2)
    for i, node in enumerate(names):  # every link measured and fewer than 50 rounds: no probe round
        cluster.report_links(node, **{p: float(rng.uniform(1.0, 5.0)) for p in names[i + 1 :]})
    bw = bandwidth_matrix(names, cluster.machine.gossip.links.values())
    reference = SapsSelector(21)
    coordinator = Coordinator()
    for number in range(1, 31):
        planned = cluster.plan(coordinator, names)
        assert planned is not None
        expected = reference.select(bw, names, round=number)
        assert planned.matching.pairs == expected.pairs and planned.matching.idle == expected.idle
        cluster.finish(cluster.start(planned))
    assert reference.state() == coordinator.history("g", cluster.machine.gossip.recent_rounds("g", 100)).saps_state()


def _random_rounds(count: int, probes: Sequence[int] = (), seed: int = 1) -> list[gossip_pb2.Round]:
    """Rounds 1..count of 8 peers with random perfect matchings; the numbers in ``probes`` are probe rounds."""
    rng = np.random.default_rng(seed)
    nodes = peers(8)
    rounds = []
    for number in range(1, count + 1):
        order = [str(p) for p in rng.permutation(nodes)]
        pairs = sorted(tuple(sorted(order[k : k + 2])) for k in range(0, 8, 2))
        rounds.append(
            gossip_pb2.Round(
                group="g",
                number=number,
                create_revision=number * 7,
                policy=PROBE_POLICY if number in probes else "saps",
                pairs=[gossip_pb2.Pair(a=x, b=y) for x, y in pairs],
            )
        )
    return rounds


def test_cached_and_rebuilt_histories_agree_beyond_the_history_horizon() -> None:
    count = HISTORY_ROUNDS * 3 + 20
    probes = {n for n in range(1, count + 1) if n % 17 in (3, 4, 5)}  # probe cycles now and then
    # And one long cycle (a big group's): the horizon then holds fewer training rounds than the
    # mix bonus remembers, so matchings must leave ``recent`` as their rounds leave the horizon.
    probes |= set(range(HISTORY_ROUNDS * 2, HISTORY_ROUNDS * 2 + 96))
    rounds = _random_rounds(count, probes)
    cached: History | None = None
    for k in range(count):
        cached = History.from_rounds(rounds[:1]) if cached is None else cached.advance(rounds[k])
        assert cached == History.from_rounds(rounds[max(0, k + 1 - HISTORY_ROUNDS) : k + 1])
    horizon = rounds[-HISTORY_ROUNDS:]
    assert cached is not None and cached.rounds_seen == sum(1 for r in horizon if r.policy != PROBE_POLICY)
    assert cached.trained == tuple(r.number for r in horizon if r.policy != PROBE_POLICY)
    with pytest.raises(ValueError, match="does not follow"):
        cached.advance(rounds[5])


def test_probe_rounds_are_invisible_to_the_saps_history() -> None:
    """What the SAPS selector is given after any prefix of rounds is the state of the training rounds
    alone, renumbered to be consecutive and to end at the latest round: the window and the idleness
    count training rounds, probe pairs never count as used, and the next round keeps its number."""
    rounds = _random_rounds(30, probes={1, 2, 3, 9, 10, 11, 12, 13, 14, 15, 22, 30})
    for k in range(len(rounds)):
        prefix = rounds[: k + 1]
        training = [r for r in prefix if r.policy != PROBE_POLICY]
        with_probes = History.from_rounds(prefix)
        assert with_probes is not None
        if not training:
            assert with_probes.saps_state() == SapsState(last_round=prefix[-1].number, rounds_seen=0, last_used=())
            continue
        renumbered = []
        for offset, r in enumerate(reversed(training)):
            copy = gossip_pb2.Round()
            copy.CopyFrom(r)
            copy.number = prefix[-1].number - offset
            renumbered.append(copy)
        alone = History.from_rounds(renumbered[::-1])
        assert alone is not None and with_probes.saps_state() == alone.saps_state(), k
    # Concretely: after training rounds 4-8 and the probe rounds 9-15, the links of round 8 read as
    # used one round before round 16 (not eight), and no probed pair reads as used at all.
    after_cycle = History.from_rounds(rounds[:15])
    assert after_cycle is not None
    state = after_cycle.saps_state()
    assert state.last_round == 15 and state.rounds_seen == 5
    assert {(a, b) for a, b, used in state.last_used if used == 15} == set(pairs_of(rounds[7]))
    assert {(a, b) for a, b, _ in state.last_used} == {pair for r in rounds[3:8] for pair in pairs_of(r)}


def test_a_fresh_group_probes_every_pair_once_on_disjoint_pairs_then_trains() -> None:
    for n in (6, 5):
        cluster = Cluster()
        ok(cluster.configure(spec=SPEC, seed=8))
        names = peers(n)
        coordinator = Coordinator()
        schedule = probe_schedule(names, 1, 8)
        assert len(schedule) == (n - 1 if n % 2 == 0 else n)
        probed: list[tuple[str, str]] = []
        for number, slot in enumerate(schedule, start=1):
            planned = cluster.plan(coordinator, names)
            assert planned is not None and planned.probe and planned.matching is None
            committed = cluster.start(planned)
            assert committed.number == number and committed.policy == PROBE_POLICY
            assert tuple(pairs_of(committed)) == slot
            nodes = [node for pair in pairs_of(committed) for node in pair]
            assert len(nodes) == len(set(nodes)) == 2 * (n // 2)  # disjoint: no uplink is shared in a probe
            assert list(committed.participants) == sorted(nodes) and not committed.idle
            probed += pairs_of(committed)
            cluster.finish(committed)
            assert cluster.machine.gossip.round("g").mixed == 0  # a probe mixes nothing
        assert sorted(probed) == sorted(itertools.combinations(names, 2))  # every pair, exactly once
        for number in range(len(schedule) + 1, len(schedule) + 4):
            committed = cluster.step(coordinator, names)
            assert committed.number == number and committed.policy == "saps" and list(committed.participants) == names


def test_a_join_costs_no_probe_round_its_links_ride_in_the_training_rounds() -> None:
    # Issue 19, cheap joins: a node that joins a group that knows its links starts no probe cycle.
    # Every round from the next one on trains, and pairs the newcomer with a partner whose link
    # nobody knows yet (the exchange measures it), until all its links are known: N - 1 rounds.
    cluster = Cluster()
    ok(cluster.configure(spec=SPEC, seed=2))
    names = peers(4)
    cluster.report_all_links(names)
    coordinator = Coordinator()
    assert [cluster.step(coordinator, names).policy for _ in range(2)] == ["saps", "saps"]  # all links known
    joined = peers(5)
    explored = []
    for _ in range(len(names)):
        committed = cluster.step(coordinator, joined)
        assert committed.policy == "saps" and list(committed.participants) == joined  # training, everyone
        assert len(committed.pairs) == 2 and len(committed.idle) == 1  # still a maximum matching
        (partner,) = [a for a, b in pairs_of(committed) if b == "n04"]
        explored.append(partner)
    assert sorted(explored) == names  # each of its links once, one per round
    config = cluster.machine.gossip.group("g")
    rounds = cluster.machine.gossip.recent_rounds("g", 100)
    assert exploration_pairs(config, rounds[-1].number + 1, rounds, joined, cluster.machine.gossip.links.values()) == ()
    assert [cluster.step(coordinator, joined).policy for _ in range(5)] == ["saps"] * 5


def test_joiners_explore_disjoint_unknown_pairs_and_a_fresh_group_still_probes() -> None:
    config = gossip_pb2.GroupConfig(group="g", seed=9, policy="saps")
    old = peers(6)
    links = [gossip_pb2.Link(a=a, b=b, bandwidth_bps=1e7) for a, b in itertools.combinations(old, 2)]
    everyone = peers(8)  # n06 and n07 join together
    seen: set[tuple[str, str]] = set()
    for number in range(1, 40):
        explore = exploration_pairs(config, number, [], everyone, links)
        nodes = [node for pair in explore for node in pair]
        assert len(nodes) == len(set(nodes))  # disjoint
        assert all("n06" in pair or "n07" in pair for pair in explore)  # only unknown links
        assert {"n06", "n07"} <= set(nodes)  # both joiners explore in every round
        seen.update(explore)
    assert {pair for pair in itertools.combinations(everyone, 2) if "n06" in pair or "n07" in pair} == seen
    # Nothing known at all: a probe cycle, not exploration in training rounds.
    assert probe_pairs(config, [], everyone, [])
    assert probe_pairs(config, [], everyone, links) == ()
    assert exploration_pairs(config, 1, [], peers(MAX_PROBE_PEERS + 1), []) == ()


def test_a_cycle_follows_participants_that_join_or_leave_mid_cycle() -> None:
    cluster = Cluster()
    ok(cluster.configure(spec=SPEC, seed=6))
    coordinator = Coordinator()
    first = cluster.step(coordinator, peers(4))
    assert first.policy == PROBE_POLICY
    cycle = [first]
    members = peers(6)  # two join after the first probe round
    while (round_ := cluster.step(coordinator, members)).policy == PROBE_POLICY:
        cycle.append(round_)
        if len(cycle) == 3:
            members = [p for p in members if p != "n01"]  # one leaves
    probed = [pair for r in cycle for pair in pairs_of(r)]
    assert len(probed) == len(set(probed))  # no pair probed twice in a cycle
    assert set(itertools.combinations(members, 2)) <= set(probed)  # every pair of who is left
    assert len(cycle) < MAX_PROBE_CYCLE_ROUNDS and round_.policy == "saps"
    assert [cluster.step(coordinator, members).policy for _ in range(3)] == ["saps"] * 3


def test_probe_cycles_recur_every_probe_every_rounds_training_rounds() -> None:
    cluster = Cluster()
    created = ok(cluster.configure(spec=SPEC, seed=4, probe_every_rounds=3)).gossip_configure_group.group
    assert created.probe_every_rounds == 3
    coordinator = Coordinator()
    names = peers(4)
    kinds = "".join("p" if cluster.step(coordinator, names).policy == PROBE_POLICY else "t" for _ in range(15))
    assert kinds == "ppptttppptttppp"
    # 0: probe cycles only for unknown links.
    ok(cluster.configure(mask=("probe_every_rounds",), probe_every_rounds=0))
    assert cluster.machine.gossip.group("g").probe_every_rounds == 0
    assert [cluster.step(coordinator, names).policy for _ in range(8)] == ["saps"] * 8
    # A group beyond MAX_PROBE_PEERS learns its links from the exchanges alone.
    config = cluster.machine.gossip.group("g")
    assert probe_pairs(config, [], peers(MAX_PROBE_PEERS), [])
    assert probe_pairs(config, [], peers(MAX_PROBE_PEERS + 1), []) == ()
    # A cycle that cannot finish (here: rounds that keep probing one pair) stops at its cap.
    stuck = [
        gossip_pb2.Round(group="g", number=n, policy=PROBE_POLICY, pairs=[gossip_pb2.Pair(a="n00", b="n01")])
        for n in range(1, MAX_PROBE_CYCLE_ROUNDS + 1)
    ]
    assert probe_pairs(config, stuck[:-1], names, [])
    assert probe_pairs(config, stuck, names, []) == ()
    assert MAX_PROBE_CYCLE_ROUNDS < HISTORY_ROUNDS  # the coordinator always reads the whole cycle


def test_never_plans_while_a_round_runs() -> None:
    cluster = Cluster()
    ok(cluster.configure(spec=SPEC, round_timeout_s=5.0))
    coordinator = Coordinator()
    first = cluster.plan(coordinator, peers(4))
    assert first is not None
    committed = cluster.start(first)
    assert cluster.plan(coordinator, peers(4)) is None
    ok(cluster.run(gossip_report_round=gossip_pb2.ReportRoundRequest(group="g", number=1, node_id="n00")))
    assert cluster.plan(coordinator, peers(4)) is None  # one report does not end it
    # Proposing round 2 anyway is refused by the state machine: the rule holds in the log too.
    code, message = error(
        cluster.run(
            gossip_start_round=gossip_pb2.StartRoundRequest(
                round=gossip_pb2.Round(
                    group="g",
                    number=2,
                    participants=["n00", "n01"],
                    pairs=[gossip_pb2.Pair(a="n00", b="n01")],
                    policy="saps",
                    spec=first.request.round.spec,
                    deadline_unix_ms=cluster.now + 5_000,
                )
            )
        )
    )
    assert code == common_pb2.ERROR_CODE_FAILED_PRECONDITION and "still running" in message
    cluster.finish(committed, silent=("n01",))  # n00 already reported; n01 is silent past the deadline
    second = cluster.plan(coordinator, peers(4))
    assert second is not None and second.number == 2


def test_no_round_while_paused_or_short_of_participants() -> None:
    cluster = Cluster()
    ok(cluster.configure(spec=SPEC, min_participants=3, paused=True))
    cluster.report_all_links(peers(5))
    coordinator = Coordinator()
    assert cluster.plan(coordinator, peers(5)) is None
    ok(cluster.configure(mask=("paused",), paused=False))
    assert cluster.plan(coordinator, peers(2)) is None
    planned = cluster.plan(coordinator, peers(3))
    assert planned is not None and list(planned.request.round.idle) and len(planned.request.round.pairs) == 1


def test_a_silent_node_sits_out_with_a_backoff_and_the_rest_train_on() -> None:
    # Issue 19, crash tolerance: a node that was silent in its round (crashed: no report by the
    # deadline) is not listed in the next rounds while its lease still runs, so they commit without
    # waiting for their deadline; it is tried again after SILENT_BACKOFF_ROUNDS rounds, then after
    # twice as many.
    cluster = Cluster()
    ok(cluster.configure(spec=SPEC, seed=3, round_timeout_s=5.0, min_participants=3))
    names = peers(4)
    cluster.report_all_links(names)
    coordinator = Coordinator()
    first = cluster.step(coordinator, names, silent=("n01",))
    assert first.state == TIMED_OUT and "n01" in first.participants
    listed = []
    for _ in range(3 * SILENT_BACKOFF_ROUNDS + 3):
        committed = cluster.step(coordinator, names, silent=("n01",))
        listed.append("n01" in committed.participants)
        assert committed.state == (TIMED_OUT if listed[-1] else DONE)
        assert len(committed.participants) == (4 if listed[-1] else 3)
    sits_out = [False] * SILENT_BACKOFF_ROUNDS
    assert listed == [*sits_out, True, *sits_out, *sits_out, True, False]
    # A rebuilt planner suspends the same nodes (committed data only).
    again = Coordinator().plan(
        cluster.machine.gossip.group("g"),
        cluster.machine.gossip.recent_rounds("g", 100),
        names,
        list(cluster.machine.gossip.links.values()),
        cluster.machine.gossip.matrix_version,
        cluster.now,
    )
    planned = cluster.plan(coordinator, names)
    assert again is not None and planned is not None
    assert again.request.round.participants == planned.request.round.participants == ["n00", "n02", "n03"]


def test_a_sign_of_life_brings_a_silent_node_back_at_once() -> None:
    cluster = Cluster()
    ok(cluster.configure(spec=SPEC, seed=3, round_timeout_s=5.0))
    names = peers(4)
    cluster.report_all_links(names)
    coordinator = Coordinator()
    missed = cluster.step(coordinator, names, silent=("n02",))
    assert missed.state == TIMED_OUT
    quiet = dict.fromkeys(names, missed.mod_revision)  # no record changed since the round ended
    assert suspended(cluster.machine.gossip.recent_rounds("g", 100), names, quiet) == {"n02"}
    planned = cluster.plan(coordinator, names, revisions=quiet)
    assert planned is not None and list(planned.request.round.participants) == ["n00", "n01", "n03"]
    # Its record changed after the round ended (a heartbeat with a new activity, a re-registration).
    alive = quiet | {"n02": missed.mod_revision + 1}
    planned = cluster.plan(coordinator, names, revisions=alive)
    assert planned is not None and list(planned.request.round.participants) == names
    # A node that reported is never suspended, whatever its record.
    assert suspended(cluster.machine.gossip.recent_rounds("g", 100), ["n00"], {}) == set()


def test_min_participants_is_a_floor_and_suspended_nodes_are_retried_to_reach_it() -> None:
    cluster = Cluster()
    ok(cluster.configure(spec=SPEC, seed=5, round_timeout_s=5.0, min_participants=3))
    names = peers(3)
    cluster.report_all_links(names)
    coordinator = Coordinator()
    cluster.step(coordinator, names, silent=("n00",))
    # Without the silent node only two are left, below the floor of three: it is tried again.
    planned = cluster.plan(coordinator, names)
    assert planned is not None and list(planned.request.round.participants) == names
    # Once its lease expired (no longer eligible), the group is below its floor: no round.
    assert cluster.plan(coordinator, ["n01", "n02"]) is None
    assert available(cluster.machine.gossip.group("g"), [], ["n02", "n01"]) == ["n01", "n02"]


def _node(node_id: str, state: int, *, gossip: bool = True, group: str = "") -> membership_pb2.NodeRecord:
    spec = membership_pb2.NodeSpec(id=node_id)
    if gossip:
        spec.addresses["gossip"] = f"127.0.0.1:{7300 + len(node_id)}"
    if group:
        spec.labels["gossip-group"] = group
    return membership_pb2.NodeRecord(spec=spec, state=state)  # type: ignore[arg-type]


def test_who_takes_part_the_network_of_the_groups_name_or_the_label() -> None:
    active, joining = membership_pb2.NODE_STATE_ACTIVE, membership_pb2.NODE_STATE_JOINING
    leaving, dead = membership_pb2.NODE_STATE_LEAVING, membership_pb2.NODE_STATE_DEAD
    nodes = [
        _node("e", active, group="g"),
        _node("a", active, group="g"),
        _node("b", joining, group="g"),  # not heard from yet
        _node("c", leaving, group="g"),  # draining
        _node("d", dead, group="g"),
        _node("f", active, gossip=False, group="g"),  # nowhere to dial
        _node("h", active, group="other"),
        _node("i", active),
    ]
    # No network named "g": the label decides.
    assert eligible("g", nodes, None) == ["a", "e"]
    # A network named "g" exists: its active members with a gossip address, labels aside.
    assert eligible("g", nodes, {"a", "b", "f", "h", "i"}) == ["a", "h", "i"]
    assert eligible("g", nodes, set()) == []


def test_unmeasured_links_take_the_median_of_measured_ones() -> None:
    names = ["a", "b", "c", "d"]
    assert np.array_equal(bandwidth_matrix(names, []), DEFAULT_BANDWIDTH_BPS * (1 - np.eye(4)))
    links = [
        gossip_pb2.Link(a="a", b="b", bandwidth_bps=10.0),
        gossip_pb2.Link(a="a", b="c", bandwidth_bps=30.0),
        gossip_pb2.Link(a="b", b="c", bandwidth_bps=20.0),
        gossip_pb2.Link(a="c", b="d", bandwidth_bps=0.0, failures=2),  # failed, never measured
        gossip_pb2.Link(a="a", b="z", bandwidth_bps=1e9),  # not a participant: ignored
    ]
    bw = bandwidth_matrix(names, links)
    assert bw[0, 1] == bw[1, 0] == 10.0 and bw[0, 2] == 30.0
    assert bw[0, 3] == bw[1, 3] == 20.0  # the median of 10, 20, 30
    assert bw[2, 3] == bw[3, 2] == 20.0 / 4  # halved once per recorded failure
    assert np.all(np.diag(bw) == 0.0)


# ----------------------------------------------------------------------------------- groups


def test_group_configuration_is_validated_with_clear_messages() -> None:
    cluster = Cluster()
    bad = [
        (
            {"spec": SPEC, "policy": "fastest"},
            "policy 'fastest' is not one of saps, saps-adaptive, random, best_bottleneck",
        ),
        ({}, "needs a tensor spec"),
        ({"spec": SPEC, "round_timeout_s": -1.0}, "round_timeout_s"),
        ({"spec": SPEC, "round_timeout_s": float("nan")}, "round_timeout_s"),
        ({"spec": SPEC, "min_participants": 1}, "min_participants 1 must be between 2"),
        ({"spec": SPEC, "policy": "probe"}, "policy 'probe' is not one of"),  # a round's policy only
        ({"spec": SPEC, "probe_every_rounds": 1001}, "probe_every_rounds 1001 must be at most 1000"),
        ({"spec": SPEC, "sparsity_ratio": 1.5}, "sparsity_ratio 1.5 must be in (0, 1]"),
        (
            {"spec": gossip_pb2.TensorSpec(tensors=[gossip_pb2.TensorInfo(name="w", dtype="int64", shape=[2])])},
            "gossip averages parameters",
        ),
        (
            {"spec": gossip_pb2.TensorSpec(tensors=[SPEC.tensors[0], SPEC.tensors[0]])},
            "tensor names must be non-empty and unique",
        ),
    ]
    for fields, message in bad:
        code, text = error(cluster.configure(**fields))
        assert code == common_pb2.ERROR_CODE_INVALID_ARGUMENT and message in text, text
    long_name = gossip_pb2.GroupConfig(group="x" * 65, spec=SPEC)
    code, text = error(cluster.run(gossip_configure_group=gossip_pb2.ConfigureGroupRequest(group=long_name)))
    assert code == common_pb2.ERROR_CODE_INVALID_ARGUMENT and "at most 64" in text
    code, text = error(cluster.configure(mask=("paused",), paused=True))
    assert code == common_pb2.ERROR_CODE_NOT_FOUND and "create it first" in text
    assert cluster.machine.revision == 0  # refusals change nothing


def test_create_update_and_the_fixed_spec() -> None:
    cluster = Cluster()
    created = ok(cluster.configure(spec=SPEC, sparsity_ratio=0.5, seed=9)).gossip_configure_group
    assert created.created and created.changed
    group = created.group
    assert (group.policy, group.round_timeout_s, group.min_participants) == ("saps", 30.0, 2)  # defaults
    assert group.probe_every_rounds == state_gossip.DEFAULT_PROBE_EVERY_ROUNDS == 50
    assert state_gossip.PROBE_POLICY == PROBE_POLICY
    assert group.spec.sparsity_ratio == group.sparsity_ratio == 0.5
    # The same spec again (another worker starting): the group comes back as it is, other settings aside.
    same = ok(cluster.configure(spec=SPEC, sparsity_ratio=0.5, policy="random")).gossip_configure_group
    assert not same.created and not same.changed and same.group == group
    # Another layout or sparsity: refused, pointing to a new group name.
    other = gossip_pb2.TensorSpec(tensors=[gossip_pb2.TensorInfo(name="w", dtype="float32", shape=[5, 3])])
    for fields in ({"spec": other, "sparsity_ratio": 0.5}, {"spec": SPEC, "sparsity_ratio": 1.0}):
        code, text = error(cluster.configure(**fields))
        assert code == common_pb2.ERROR_CODE_FAILED_PRECONDITION and "new group name" in text
    for mask in (("spec",), ("seed",), ("sparsity_ratio", "paused")):
        code, text = error(cluster.configure(mask=mask, spec=other))
        assert code == common_pb2.ERROR_CODE_FAILED_PRECONDITION and "new group name" in text
    code, text = error(cluster.configure(mask=("colour",)))
    assert code == common_pb2.ERROR_CODE_INVALID_ARGUMENT and "unknown: colour" in text
    updated = ok(
        cluster.configure(
            mask=("policy", "round_timeout_s", "paused"), policy="best_bottleneck", round_timeout_s=2.5, paused=True
        )
    ).gossip_configure_group
    assert updated.changed and not updated.created
    assert (updated.group.policy, updated.group.round_timeout_s, updated.group.paused) == ("best_bottleneck", 2.5, True)
    assert updated.group.spec == group.spec and updated.group.seed == 9 and updated.group.min_participants == 2
    assert updated.group.probe_every_rounds == 50
    revision = cluster.machine.revision
    again = ok(cluster.configure(mask=("paused",), paused=True)).gossip_configure_group
    assert not again.changed and cluster.machine.revision == revision  # no change, no revision
    # A round of a configured group must carry its spec.
    code, text = error(
        cluster.run(
            gossip_start_round=gossip_pb2.StartRoundRequest(
                round=gossip_pb2.Round(
                    group="g",
                    number=1,
                    participants=["a", "b"],
                    pairs=[gossip_pb2.Pair(a="a", b="b")],
                    policy="saps",
                    spec=other,
                    deadline_unix_ms=cluster.now + 5_000,
                )
            )
        )
    )
    assert code == common_pb2.ERROR_CODE_FAILED_PRECONDITION and "configured with" in text
    deleted = ok(cluster.run(gossip_delete_group=gossip_pb2.DeleteGroupRequest(group="g")))
    assert deleted.gossip_delete_group.deleted and "g" not in cluster.machine.gossip.groups
    assert not ok(cluster.run(gossip_delete_group=gossip_pb2.DeleteGroupRequest(group="g"))).gossip_delete_group.deleted


def test_groups_rounds_and_the_consensus_measure_survive_a_snapshot() -> None:
    cluster = Cluster()
    ok(cluster.configure(spec=SPEC, seed=4))
    config = gossip_pb2.GroupConfig(group="h", spec=SPEC, policy="random", paused=True, round_timeout_s=3.0)
    ok(cluster.run(gossip_configure_group=gossip_pb2.ConfigureGroupRequest(group=config)))
    cluster.report_all_links(peers(4))
    planned = cluster.plan(Coordinator(), peers(4))
    assert planned is not None
    committed = cluster.start(planned)
    a, b = committed.pairs[0].a, committed.pairs[0].b
    nan = gossip_pb2.ReportRoundRequest(group="g", number=1, node_id=a, mix_delta_sq=float("nan"))
    assert error(cluster.run(gossip_report_round=nan))[0] == common_pb2.ERROR_CODE_INVALID_ARGUMENT
    for node, delta in ((a, 0.25), (b, 0.25)):
        request = gossip_pb2.ReportRoundRequest(group="g", number=1, node_id=node, mix_delta_sq=delta, bytes=96)
        ok(cluster.run(gossip_report_round=request))
    failed = committed.pairs[1]
    request = gossip_pb2.ReportRoundRequest(
        group="g", number=1, node_id=failed.a, failed_peer=failed.b, mix_delta_sq=9.0
    )
    ok(cluster.run(gossip_report_round=request))
    current = cluster.machine.gossip.round("g")
    # Only the successful mixes count: the pair's squared distance is 4 x 0.25 = 1.
    assert current.mixed == 2 and current.mix_delta_sq == 0.5 and 4 * current.mix_delta_sq / current.mixed == 1.0
    data = cluster.machine.snapshot()
    restored = StateMachine()
    restored.restore(data)
    assert restored.snapshot() == data
    assert restored.gossip.list_groups() == cluster.machine.gossip.list_groups()
    assert [g.group for g in restored.gossip.list_groups()] == ["g", "h"]
    assert restored.gossip.round("g") == current
    # The restored replica plans the same next round once this one ends.
    for replica in (cluster.machine, restored):
        for node in current.participants:
            if node not in current.reported:
                command = command_pb2.Command(
                    gossip_report_round=gossip_pb2.ReportRoundRequest(group="g", number=1, node_id=node)
                )
                ok(replica.apply_entry(batch_entry(cluster.now + 10, "n1", [command]))[0])
    plans = []
    for replica in (cluster.machine, restored):
        table = replica.gossip
        plans.append(
            Coordinator().plan(
                table.group("g"),
                table.recent_rounds("g", HISTORY_ROUNDS),
                peers(4),
                list(table.links.values()),
                table.matrix_version,
                cluster.now + 20,
            )
        )
    assert plans[0] is not None and plans[1] is not None
    assert plans[0].request == plans[1].request and plans[0].number == 2


def test_round_seeds_are_uint64_and_distinct() -> None:
    seeds = {round_seed(s, n) for s, n in itertools.product(range(5), range(1, 50))}
    assert len(seeds) == 5 * 49 and all(0 <= s < 2**64 for s in seeds)


def test_a_link_combines_both_ends_views() -> None:
    """Issue 19: both ends time the link; views that agree are averaged (each has its own noise),
    views far apart give the lower one (a late clock overstates, contention never speeds a link up);
    one view alone is taken as it is."""
    names = ["a", "b", "c", "d"]
    links = [
        gossip_pb2.Link(a="a", b="b", bandwidth_bps=9.0, bandwidth_a_bps=9.0, bandwidth_b_bps=11.0),
        gossip_pb2.Link(a="a", b="c", bandwidth_bps=2.0, bandwidth_a_bps=2.0, bandwidth_b_bps=3.7),
        gossip_pb2.Link(a="b", b="c", bandwidth_bps=5.0, bandwidth_a_bps=0.0, bandwidth_b_bps=5.0),
    ]
    bw = bandwidth_matrix(names, links)
    assert bw[0, 1] == bw[1, 0] == 10.0
    assert bw[0, 2] == 2.0
    assert bw[1, 2] == 5.0


def test_compression_is_validated_fixed_and_carried_by_every_round() -> None:
    cluster = Cluster()
    for fields, message in (
        ({"spec": SPEC, "compression": "gzip"}, "compression 'gzip' is not one of none, int8"),
        ({"spec": gossip_pb2.TensorSpec(tensors=SPEC.tensors, compression="int4")}, "'int4' is not one of"),
        (
            {"spec": gossip_pb2.TensorSpec(tensors=SPEC.tensors, compression="none"), "compression": "int8"},
            "differ; give one of them",
        ),
    ):
        code, text = error(cluster.configure(**fields))
        assert code == common_pb2.ERROR_CODE_INVALID_ARGUMENT and message in text, text
    assert cluster.machine.revision == 0
    group = ok(cluster.configure(spec=SPEC, compression="int8")).gossip_configure_group.group
    assert group.compression == group.spec.compression == "int8"
    # The same again comes back unchanged; another compression is another spec: a new group name.
    assert not ok(cluster.configure(spec=SPEC, compression="int8")).gossip_configure_group.created
    for fields in ({"spec": SPEC}, {"spec": SPEC, "compression": "none"}):
        code, text = error(cluster.configure(**fields))
        assert code == common_pb2.ERROR_CODE_FAILED_PRECONDITION and "compression int8" in text, text
    code, text = error(cluster.configure(mask=("compression",), compression="none"))
    assert code == common_pb2.ERROR_CODE_FAILED_PRECONDITION and "compression" in text
    # Every round the coordinator plans carries the group's compression, so both ends agree.
    cluster.report_all_links(peers(4))
    round_ = cluster.step(Coordinator(), peers(4))
    assert round_.policy == "saps" and round_.spec.compression == "int8"
    # "none" is stored as "" (what groups created before compression existed hold).
    plain = gossip_pb2.GroupConfig(group="h", spec=SPEC, compression="none")
    created = ok(cluster.run(gossip_configure_group=gossip_pb2.ConfigureGroupRequest(group=plain)))
    assert created.gossip_configure_group.group.spec.compression == ""
