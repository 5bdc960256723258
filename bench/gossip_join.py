"""What a join costs: ``python -m bench.gossip_join [--seeds 20]``.

Issue 19 (cheap joins). Eight peers whose links are measured train with SAPS; a ninth joins. The
leader's coordinator (``gossip.coordinator``) plans every round against the real state machine, in
this process (no network); each round's pairs are timed on the *true* matrix: a round lasts
``1 / bottleneck`` (model-size / bandwidth units), and the joiner's exchanges report their links'
true bandwidths as its worker would. Two matrices: links uniform in [1, 5], and per-node caps
(``gossip.simulate.node_caps_bandwidth``). One JSON line per matrix on stdout:

- ``probe_rounds_per_join``: probe rounds the join caused (the most over seeds);
- ``round_time_before`` / ``round_time_joining`` / ``round_time_after``: the mean round time of the
  10 rounds before the join (8 peers), of the 8 rounds after it (the joiner explores one unknown link
  per round), and of the 10 after those (9 peers, every link known); means over seeds;
- ``extra_time``: ``8 * (joining - after)``, the join's cost in time units (a round is ~0.2-0.3).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import numpy as np

from bench.common import emit
from controlplane.state.machine import StateMachine, batch_entry
from controlplane.v1 import command_pb2, gossip_pb2
from gossip.coordinator import PROBE_POLICY, Coordinator, rounds_to_read
from gossip.simulate import node_caps_bandwidth

SPEC = gossip_pb2.TensorSpec(tensors=[gossip_pb2.TensorInfo(name="w", dtype="float32", shape=[4])])


class _Replica:
    def __init__(self) -> None:
        self.machine = StateMachine()
        self.now = 1_000_000

    def run(self, **body: Any) -> command_pb2.CommandResult:
        self.now += 10
        result = self.machine.apply_entry(batch_entry(self.now, "n1", [command_pb2.Command(**body)]))[0]
        if result.HasField("error"):
            raise RuntimeError(result.error.message)
        return result

    def report(self, node: str, links: dict[str, float]) -> None:
        reports = [gossip_pb2.LinkReport(peer=p, bandwidth_bps=bps, samples=2) for p, bps in links.items()]
        self.run(gossip_report_bandwidth=gossip_pb2.ReportBandwidthRequest(node_id=node, links=reports))

    def step(self, coordinator: Coordinator, participants: list[str]) -> gossip_pb2.Round:
        gossip = self.machine.gossip
        config = gossip.group("g")
        plan = coordinator.plan(
            config,
            gossip.recent_rounds("g", rounds_to_read(config)),
            participants,
            list(gossip.links.values()),
            gossip.matrix_version,
            self.now,
        )
        assert plan is not None
        started = self.run(request_id=plan.request.request_id, gossip_start_round=plan.request).gossip_start_round.round
        for node in started.participants:
            self.run(gossip_report_round=gossip_pb2.ReportRoundRequest(group="g", number=started.number, node_id=node))
        return started


def join(seed: int, matrix: str) -> tuple[int, float, float, float]:
    n = 9
    if matrix == "uniform":
        upper = np.triu(np.random.default_rng(seed).uniform(1.0, 5.0, (n, n)), 1)
        true = upper + upper.T
    else:
        true = node_caps_bandwidth(n, seed)
    names = [f"n{k}" for k in range(n)]
    index = {p: k for k, p in enumerate(names)}
    replica = _Replica()
    replica.run(
        gossip_configure_group=gossip_pb2.ConfigureGroupRequest(
            group=gossip_pb2.GroupConfig(group="g", spec=SPEC, seed=seed, probe_every_rounds=0)
        )
    )
    for i in range(7):
        replica.report(names[i], {names[j]: float(true[i, j]) for j in range(i + 1, 8)})
    coordinator = Coordinator()

    def seconds(round_: gossip_pb2.Round) -> float:
        return max(1.0 / true[index[p.a], index[p.b]] for p in round_.pairs)

    before = [seconds(replica.step(coordinator, names[:8])) for _ in range(10)]
    joining, probes = [], 0
    for _ in range(8):
        round_ = replica.step(coordinator, names)
        probes += round_.policy == PROBE_POLICY
        joining.append(seconds(round_))
        for p in round_.pairs:  # what the joiner's worker reports after its exchange
            if "n8" in (p.a, p.b):
                other = p.a if p.b == "n8" else p.b
                replica.report("n8", {other: float(true[8, index[other]])})
    after = [seconds(replica.step(coordinator, names)) for _ in range(10)]
    return probes, statistics.fmean(before), statistics.fmean(joining), statistics.fmean(after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gossip_join", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args(argv)
    for matrix in ("uniform", "node-caps"):
        runs = [join(seed, matrix) for seed in range(args.seeds)]
        joining = statistics.fmean(r[2] for r in runs)
        after = statistics.fmean(r[3] for r in runs)
        emit(
            {
                "scenario": "gossip_join",
                "matrix": matrix,
                "seeds": args.seeds,
                "probe_rounds_per_join": max(r[0] for r in runs),
                "round_time_before": round(statistics.fmean(r[1] for r in runs), 4),
                "round_time_joining": round(joining, 4),
                "round_time_after": round(after, 4),
                "extra_time": round(8 * (joining - after), 4),
                "time_unit": "model_size / bandwidth unit",
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
