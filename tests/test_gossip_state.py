"""The gossip domain of the pure state machine: the versioned bandwidth matrix, round commit ordering,
matching validation, reports, deadlines and failure penalties; rounds computed with the real SAPS
selector from ``gossip.matching`` are accepted as committed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.state.gossip import DONE, PROBE_POLICY, RUNNING, TIMED_OUT
from controlplane.state.machine import StateMachine, batch_entry
from controlplane.v1 import command_pb2, common_pb2, gossip_pb2
from gossip.matching import SapsSelector

from machine_driver import MachineDriver


class Cluster(MachineDriver):
    def report(self, node: str, **bandwidths: float) -> command_pb2.CommandResult:
        links = [gossip_pb2.LinkReport(peer=peer, bandwidth_bps=bps, samples=3) for peer, bps in bandwidths.items()]
        return self.run(gossip_report_bandwidth=gossip_pb2.ReportBandwidthRequest(node_id=node, links=links))

    def start(
        self, number: int, participants: list[str], pairs: list[tuple[str, str]], **fields: object
    ) -> command_pb2.CommandResult:
        matched = {p for pair in pairs for p in pair}
        round_ = gossip_pb2.Round(
            group="g",
            number=number,
            participants=participants,
            pairs=[gossip_pb2.Pair(a=a, b=b) for a, b in pairs],
            idle=sorted(set(participants) - matched),
            policy="saps",
            seed=7,
            matrix_version=self.machine.gossip.matrix_version,
            deadline_unix_ms=self.now + 5_000,
        )
        for key, value in fields.items():
            if isinstance(value, list):
                getattr(round_, key)[:] = value
            else:
                setattr(round_, key, value)
        return self.run(gossip_start_round=gossip_pb2.StartRoundRequest(round=round_))

    def report_round(self, number: int, node: str, failed_peer: str = "") -> command_pb2.CommandResult:
        return self.run(
            gossip_report_round=gossip_pb2.ReportRoundRequest(
                group="g", number=number, node_id=node, bytes=100, seconds=0.5, failed_peer=failed_peer
            )
        )


def ok(result: command_pb2.CommandResult) -> command_pb2.CommandResult:
    assert not result.HasField("error"), result.error.message
    return result


def code(result: command_pb2.CommandResult) -> int:
    return result.error.code if result.HasField("error") else 0


def test_the_matrix_folds_both_views_and_versions_only_on_change() -> None:
    cluster = Cluster()
    assert ok(cluster.report("a", b=5.0, c=2.0)).gossip_report_bandwidth.matrix_version == 1
    assert ok(cluster.report("b", a=3.0)).gossip_report_bandwidth.matrix_version == 2
    links = {(link.a, link.b): link for link in cluster.machine.gossip.matrix().links}
    # The slower direction wins; each end's own view is kept.
    assert (links["a", "b"].bandwidth_bps, links["a", "b"].bandwidth_a_bps, links["a", "b"].bandwidth_b_bps) == (
        3.0,
        5.0,
        3.0,
    )
    assert links["a", "c"].bandwidth_bps == 2.0
    same = ok(cluster.report("b", a=3.0)).gossip_report_bandwidth
    assert (same.matrix_version, same.links_changed) == (2, 0)
    bad = [
        cluster.report("a", a=1.0),
        cluster.report("a", b=math.nan),
        cluster.report("a", b=-1.0),
    ]
    assert [code(r) for r in bad] == [common_pb2.ERROR_CODE_INVALID_ARGUMENT] * 3
    assert cluster.machine.gossip.matrix_version == 2


def test_rounds_are_consecutive_and_never_overlap() -> None:
    cluster = Cluster()
    cluster.report("a", b=1.0, c=1.0, d=1.0)
    cluster.report("c", d=2.0)
    people = ["a", "b", "c", "d"]
    assert code(cluster.start(2, people, [("a", "b"), ("c", "d")])) == common_pb2.ERROR_CODE_FAILED_PRECONDITION
    first = ok(cluster.start(1, people, [("a", "b"), ("c", "d")])).gossip_start_round.round
    assert first.state == RUNNING and first.bottleneck_bps == 1.0
    # Round 2 cannot start while round 1 runs.
    running = cluster.start(2, people, [("a", "c"), ("b", "d")])
    assert code(running) == common_pb2.ERROR_CODE_FAILED_PRECONDITION and "still running" in running.error.message
    for node in people:
        ok(cluster.report_round(1, node))
    assert cluster.machine.gossip.round("g", 1).state == DONE
    second = ok(cluster.start(2, people, [("a", "c"), ("b", "d")])).gossip_start_round.round
    assert second.number == 2
    # A retried start of the committed round answers it again instead of refusing.
    again = ok(cluster.start(2, people, [("a", "c"), ("b", "d")])).gossip_start_round.round
    assert again == second
    assert [r.number for r in cluster.machine.gossip.list_rounds("g", 0, 10)] == [1, 2]


def test_a_committed_matching_must_be_valid() -> None:
    cluster = Cluster()
    people = ["a", "b", "c"]
    cases = {
        "reuses a participant": cluster.start(1, people, [("a", "b"), ("a", "c")]),
        "not a participant": cluster.start(1, people, [("a", "z")]),
        "unordered pair": cluster.start(1, people, [("b", "a")]),
        "unsorted participants": cluster.start(1, ["b", "a", "c"], [("a", "b")]),
        "wrong idle": cluster.start(1, people, [("a", "b")], idle=["a"]),
        "unknown policy": cluster.start(1, people, [("a", "b")], policy="best"),
        "future matrix": cluster.start(1, people, [("a", "b")], matrix_version=99),
        "past deadline": cluster.start(1, people, [("a", "b")], deadline_unix_ms=1),
    }
    for name, result in cases.items():
        assert code(result) == common_pb2.ERROR_CODE_INVALID_ARGUMENT, name
    assert not cluster.machine.gossip.rounds


def test_a_failed_exchange_is_recorded_and_penalises_the_link() -> None:
    cluster = Cluster()
    cluster.report("a", b=4.0)
    cluster.report("b", a=4.0)
    ok(cluster.start(1, ["a", "b"], [("a", "b")]))
    version = cluster.machine.gossip.matrix_version
    done = ok(cluster.report_round(1, "a", failed_peer="b")).gossip_report_round.round
    assert [(f.node, f.peer) for f in done.failures] == [("a", "b")]
    link = cluster.machine.gossip.matrix().links[0]
    assert (link.bandwidth_bps, link.failures) == (2.0, 1)
    assert cluster.machine.gossip.matrix_version == version + 1
    # Only the partner can be blamed; a second report from the same node changes nothing.
    assert code(cluster.report_round(1, "b", failed_peer="z")) == common_pb2.ERROR_CODE_INVALID_ARGUMENT
    assert ok(cluster.report_round(1, "a")).gossip_report_round.round == done


def test_reported_bytes_never_overflow_the_total() -> None:
    cluster = Cluster()
    ok(cluster.start(1, ["a", "b"], [("a", "b")]))
    huge = gossip_pb2.ReportRoundRequest(group="g", number=1, node_id="a", bytes=2**64 - 1, seconds=1.0)
    ok(cluster.run(gossip_report_round=huge))
    done = ok(cluster.report_round(1, "b")).gossip_report_round.round
    assert done.state == DONE and done.bytes_total == 2**64 - 1


def test_the_deadline_ends_a_round_and_blames_the_silent() -> None:
    cluster = Cluster()
    cluster.report("a", b=4.0, c=1.0, d=1.0)
    ok(cluster.start(1, ["a", "b", "c", "d"], [("a", "b"), ("c", "d")]))
    ok(cluster.report_round(1, "a"))
    ok(cluster.report_round(1, "b"))
    early = cluster.run(gossip_end_round=gossip_pb2.EndRoundRequest(group="g", number=1))
    assert code(early) == common_pb2.ERROR_CODE_FAILED_PRECONDITION
    cluster.now += 10_000
    ended = ok(cluster.run(gossip_end_round=gossip_pb2.EndRoundRequest(group="g", number=1))).gossip_end_round
    assert ended.ended and ended.round.state == TIMED_OUT
    assert sorted(f.node for f in ended.round.failures) == ["c", "d"]
    # A late report is refused; ending again is a no-op.
    assert code(cluster.report_round(1, "c")) == common_pb2.ERROR_CODE_FAILED_PRECONDITION
    assert not ok(cluster.run(gossip_end_round=gossip_pb2.EndRoundRequest(group="g", number=1))).gossip_end_round.ended
    # The next round may now start.
    ok(cluster.start(2, ["a", "b"], [("a", "b")]))


def test_a_probe_round_is_validated_like_any_round_and_mixes_nothing() -> None:
    cluster = Cluster()
    cluster.report("a", b=4.0)
    # Its pairs are checked as any round's: disjoint, within the participants, idle the rest.
    bad = cluster.start(1, ["a", "b", "c"], [("a", "b"), ("b", "c")], policy=PROBE_POLICY)
    assert code(bad) == common_pb2.ERROR_CODE_INVALID_ARGUMENT
    probe = ok(cluster.start(1, ["a", "b", "c", "d"], [("a", "b"), ("c", "d")], policy=PROBE_POLICY))
    assert probe.gossip_start_round.round.policy == PROBE_POLICY
    ok(cluster.report_round(1, "a"))
    ok(cluster.report_round(1, "b"))
    ok(cluster.report_round(1, "c", failed_peer="d"))  # a failed probe is recorded and penalised
    done = ok(cluster.report_round(1, "d")).gossip_report_round.round
    assert done.state == DONE and done.mixed == 0 and done.mix_delta_sq == 0.0  # no consensus measure
    assert [(f.node, f.peer) for f in done.failures] == [("c", "d")]
    assert {(link.a, link.b): link.failures for link in cluster.machine.gossip.matrix().links}[("c", "d")] == 1
    # A training round after it counts its mixes again.
    ok(cluster.start(2, ["a", "b"], [("a", "b")]))
    ok(cluster.report_round(2, "a"))
    assert cluster.machine.gossip.round("g", 2).mixed == 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 12))
def test_saps_rounds_commit_and_replicas_agree(seed: int, n: int) -> None:
    """The leader computes each round with the real selector; every committed round is accepted, and
    a replica fed the same entries (or restored from a snapshot midway) ends byte-identical."""
    rng = np.random.default_rng(seed)
    peers = [f"p{i:02d}" for i in range(n)]
    bandwidth = np.triu(rng.uniform(0.1, 5.0, size=(n, n)), 1)
    bandwidth = bandwidth + bandwidth.T
    leader, replica = Cluster(), StateMachine()
    entries: list[bytes] = []

    def run(**body: object) -> command_pb2.CommandResult:
        leader.now += 10
        entry = batch_entry(leader.now, "n1", [command_pb2.Command(**body)])  # type: ignore[arg-type]
        entries.append(entry)
        return leader.machine.apply_entry(entry)[0]

    for i, node in enumerate(peers):
        links = [gossip_pb2.LinkReport(peer=peers[j], bandwidth_bps=float(bandwidth[i, j])) for j in range(n) if j != i]
        ok(run(gossip_report_bandwidth=gossip_pb2.ReportBandwidthRequest(node_id=node, links=links)))
    selector = SapsSelector(seed=seed)
    version = leader.machine.gossip.matrix_version
    for number in range(1, 6):
        matching = selector.select(bandwidth, peers, round=number, version=version)
        round_ = gossip_pb2.Round(
            group="g",
            number=number,
            participants=peers,
            pairs=[gossip_pb2.Pair(a=a, b=b) for a, b in matching.pairs],
            idle=list(matching.idle),
            policy="saps",
            seed=seed,
            matrix_version=version,
            deadline_unix_ms=leader.now + 60_000,
        )
        ok(run(gossip_start_round=gossip_pb2.StartRoundRequest(round=round_)))
        for node in peers:
            ok(
                run(
                    gossip_report_round=gossip_pb2.ReportRoundRequest(
                        group="g", number=number, node_id=node, seconds=1.0
                    )
                )
            )
        assert leader.machine.gossip.round("g", number).state == DONE
    for entry in entries:
        replica.apply_entry(entry)
    assert replica.snapshot() == leader.machine.snapshot()
    restored = StateMachine()
    restored.restore(leader.machine.snapshot())
    assert restored.snapshot() == leader.machine.snapshot()


# --------------------------------------------------------------------------------------- training metrics


def report_metrics(
    cluster: Cluster, number: int, node: str, failed_peer: str = "", **metrics: float
) -> command_pb2.CommandResult:
    return cluster.run(
        gossip_report_round=gossip_pb2.ReportRoundRequest(
            group="g",
            number=number,
            node_id=node,
            bytes=100,
            failed_peer=failed_peer,
            metrics=gossip_pb2.TrainingMetrics(**metrics),  # type: ignore[arg-type]
        )
    )


def test_a_round_keeps_each_participants_metrics_and_their_means() -> None:
    cluster = Cluster()
    ok(cluster.start(1, ["a", "b", "c", "d", "e"], [("a", "b"), ("c", "d")]))
    ok(report_metrics(cluster, 1, "d", failed_peer="c", loss=1.0, accuracy=0.25, examples=30))
    ok(report_metrics(cluster, 1, "b", accuracy=0.75))
    ok(cluster.report_round(1, "c"))  # no metrics: no record
    ok(report_metrics(cluster, 1, "a", loss=2.0, accuracy=0.5, examples=10))
    done = ok(report_metrics(cluster, 1, "e", loss=0.0, accuracy=0.0)).gossip_report_round.round  # idle trains too
    assert done.state == DONE
    # One record per participant that sent any, by node; a failed exchange keeps its node's metrics.
    assert [r.node for r in done.node_metrics] == ["a", "b", "d", "e"]
    b = done.node_metrics[1].metrics
    assert b.accuracy == 0.75 and not b.HasField("loss") and not b.HasField("examples")  # absent is not 0
    e = done.node_metrics[3].metrics
    assert e.HasField("loss") and e.loss == 0.0 and e.accuracy == 0.0  # 0 is a value
    # Means over the records carrying each field; examples summed.
    assert done.metrics.loss == 1.0  # (2 + 1 + 0) / 3
    assert done.metrics.accuracy == 0.375  # (0.5 + 0.75 + 0.25 + 0) / 4
    assert done.metrics.examples == 40
    # A retried report (already reported) changes nothing, its metrics included.
    assert ok(report_metrics(cluster, 1, "a", loss=9.0)).gossip_report_round.round == done


def test_a_round_without_metrics_has_none() -> None:
    cluster = Cluster()
    ok(cluster.start(1, ["a", "b"], [("a", "b")]))
    ok(cluster.report_round(1, "a"))
    done = ok(report_metrics(cluster, 1, "b")).gossip_report_round.round  # an empty message: nothing measured
    assert not done.node_metrics and not done.HasField("metrics")


def test_the_means_do_not_depend_on_the_order_of_the_reports() -> None:
    values = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 1e-17, "e": 0.7, "f": 1.0 / 3}
    rounds = []
    for order in (sorted(values), sorted(values, reverse=True), ["c", "f", "a", "e", "b", "d"]):
        cluster = Cluster()
        ok(cluster.start(1, sorted(values), [("a", "b"), ("c", "d"), ("e", "f")]))
        for node in order:
            ok(report_metrics(cluster, 1, node, loss=values[node] * 7, accuracy=values[node]))
        rounds.append(cluster.machine.gossip.round("g", 1))
    assert rounds[0].node_metrics == rounds[1].node_metrics == rounds[2].node_metrics
    assert rounds[0].metrics.SerializeToString() == rounds[1].metrics.SerializeToString()
    assert rounds[0].metrics.SerializeToString() == rounds[2].metrics.SerializeToString()
    # Huge finite losses average to a finite mean (their sum would overflow).
    cluster = Cluster()
    ok(cluster.start(1, ["a", "b"], [("a", "b")]))
    ok(report_metrics(cluster, 1, "a", loss=1.5e308))
    done = ok(report_metrics(cluster, 1, "b", loss=1.5e308)).gossip_report_round.round
    assert math.isfinite(done.metrics.loss) and done.metrics.loss == pytest.approx(1.5e308)


def test_metrics_no_training_produces_are_refused() -> None:
    cluster = Cluster()
    ok(cluster.start(1, ["a", "b"], [("a", "b")]))
    cases = {
        "nan loss": {"loss": math.nan},
        "infinite loss": {"loss": -math.inf},
        "percent accuracy": {"accuracy": 93.0},
        "negative accuracy": {"accuracy": -0.01},
        "nan accuracy": {"accuracy": math.nan},
    }
    for name, metrics in cases.items():
        refused = report_metrics(cluster, 1, "a", **metrics)
        assert code(refused) == common_pb2.ERROR_CODE_INVALID_ARGUMENT, name
        assert ("loss" if "loss" in metrics else "accuracy") in refused.error.message, name
    untouched = cluster.machine.gossip.round("g", 1)
    assert not untouched.reported and not untouched.node_metrics
    ok(report_metrics(cluster, 1, "a", loss=-3.5, accuracy=1.0))  # any finite loss; accuracy 1 is fine


def test_a_probe_round_keeps_no_training_metrics() -> None:
    cluster = Cluster()
    ok(cluster.start(1, ["a", "b"], [("a", "b")], policy=PROBE_POLICY))
    ok(report_metrics(cluster, 1, "a", loss=1.0, accuracy=0.5))
    done = ok(report_metrics(cluster, 1, "b", loss=1.0)).gossip_report_round.round
    assert done.state == DONE and not done.node_metrics and not done.HasField("metrics")


def test_metrics_survive_a_snapshot_and_an_old_snapshot_loads() -> None:
    cluster = Cluster()
    ok(cluster.start(1, ["a", "b", "c"], [("a", "b")]))
    ok(report_metrics(cluster, 1, "a", loss=0.5, accuracy=0.9, examples=4))
    restored = StateMachine()
    restored.restore(cluster.machine.snapshot())
    assert restored.gossip.round("g", 1) == cluster.machine.gossip.round("g", 1)
    # A snapshot from before metrics: its rounds carry neither field; they load, and reports go on.
    old = cluster.machine.gossip.to_state()
    for round_ in old.rounds:
        round_.ClearField("node_metrics")
        round_.ClearField("metrics")
    cluster.machine.gossip.load(gossip_pb2.GossipState.FromString(old.SerializeToString()))
    assert not cluster.machine.gossip.round("g", 1).HasField("metrics")
    done = ok(report_metrics(cluster, 1, "b", accuracy=0.7)).gossip_report_round.round
    assert [r.node for r in done.node_metrics] == ["b"] and done.metrics.accuracy == 0.7
    ok(cluster.report_round(1, "c"))
