"""Selection policies on per-node egress caps, in simulation: ``python -m bench.gossip_caps``.

Issue 19: where each node's uplink is capped (3 to 100 Mbit/s) a link runs at the lower of its two
ends' caps, so every perfect matching contains the slowest node and SAPS cannot beat its cap. This
bench compares ``saps``, ``saps-adaptive`` (slow nodes sit some rounds out, each paired at least
every 4 rounds; ``gossip.matching.AdaptiveSelector``) and ``random`` on the digits example
(``gossip/examples/digits.py``: 8 workers, 30 rounds, Dirichlet(0.5) shards), each round's gossip
step computed in-process by the policy on a per-node-caps matrix
(``gossip.simulate.node_caps_bandwidth``: caps log-uniform in [3, 100] Mbit/s, seeded).

**Simulated wall-clock, not measured**: a round lasts ``--compute-s`` (local training, default 0.2 s)
plus ``--model-bytes`` (default 614 KB, the model of the issue's shaped-network runs) divided by the
round's bottleneck (a pair's exchange runs at the lower cap; the round ends with its slowest pair).
Accuracy is the digits model's, trained for real. One JSON line per policy on stdout (medians over
seeds, per-seed values alongside); progress on stderr.

- ``round_s_mean``: mean simulated round time; ``time_s``: the whole run;
- ``time_to_target_s``: until the workers' mean test accuracy first reaches ``--target`` (null if
  never); ``speedup_vs_saps`` / ``speedup_vs_random``: per seed, their time to target / this
  policy's, median over seeds;
- ``mean_accuracy`` / ``gap_points``: after the last round, and the gap to the central model.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from typing import Any

import numpy as np

from bench.common import emit, log
from gossip.matching import (
    ADAPTIVE_POLICY,
    DEFAULT_MAX_STALENESS,
    DEFAULT_SKIP_GAIN,
    AdaptiveSelector,
    Matching,
    SapsSelector,
    random_matching,
)
from gossip.simulate import node_caps_bandwidth

POLICIES = ("saps", ADAPTIVE_POLICY, "random")
MBIT = 1e6 / 8  # bytes per second in one Mbit/s


class _Random:
    def __init__(self, seed: int) -> None:
        self.seed = seed

    def select(self, bandwidth: Any, peers: list[str], *, round: int, version: int | None = None) -> Matching:
        return random_matching(peers, self.seed, round, bandwidth)


def _selector(policy: str, seed: int, args: argparse.Namespace) -> Any:
    if policy == "saps":
        return SapsSelector(seed)
    if policy == ADAPTIVE_POLICY:
        return AdaptiveSelector(seed, max_staleness=args.max_staleness, skip_gain=args.skip_gain)
    return _Random(seed)


def run(policy: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from gossip.examples.digits import Config, SimulatedMixer, prepare, train

    config = Config(workers=args.workers, rounds=args.rounds, seed=seed)
    data, shards = prepare(config)
    mixer = SimulatedMixer(config.workers, seed)
    mixer.bandwidth = node_caps_bandwidth(config.workers, seed) * MBIT  # bytes/s
    mixer.selector = _selector(policy, seed, args)
    result = asyncio.run(train(config, data, shards, mixer))
    times = [args.compute_s + args.model_bytes / m.bottleneck for m in mixer.matchings]
    elapsed = np.cumsum(times)
    reached = next(
        (float(t) for t, s in zip(elapsed, result.rounds, strict=True) if s.mean_accuracy >= args.target), None
    )
    return {
        "round_s_mean": float(np.mean(times)),
        "time_s": float(elapsed[-1]),
        "time_to_target_s": reached,
        "mean_accuracy": result.final.mean_accuracy,
        "gap_points": 100 * result.gap,
        "idle_per_round": float(np.mean([len(m.idle) for m in mixer.matchings])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gossip_caps", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (caps, shards, matchings)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--compute-s", type=float, default=0.2, help="local training per round, seconds")
    parser.add_argument("--model-bytes", type=float, default=614e3)
    parser.add_argument("--target", type=float, default=0.95, help="mean worker test accuracy")
    parser.add_argument("--max-staleness", type=int, default=DEFAULT_MAX_STALENESS, help="saps-adaptive")
    parser.add_argument("--skip-gain", type=float, default=DEFAULT_SKIP_GAIN, help="saps-adaptive")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in POLICIES}
    for seed in range(args.seeds):
        for policy in POLICIES:
            runs[policy].append(run(policy, seed, args))
        log(f"seed {seed}: " + ", ".join(f"{p} {runs[p][-1]['time_to_target_s']}" for p in POLICIES))

    def speedups(base: str, policy: str) -> list[float | None]:
        return [
            None
            if b["time_to_target_s"] is None or r["time_to_target_s"] is None
            else b["time_to_target_s"] / r["time_to_target_s"]
            for b, r in zip(runs[base], runs[policy], strict=True)
        ]

    for policy in POLICIES:
        rs = runs[policy]
        line: dict[str, Any] = {"scenario": "gossip_caps", "policy": policy, "workers": args.workers}
        for key in ("round_s_mean", "time_s", "mean_accuracy", "gap_points", "idle_per_round"):
            line[key] = round(statistics.median(r[key] for r in rs), 4)
        reached = [r["time_to_target_s"] for r in rs]
        line["time_to_target_s"] = (
            round(statistics.median(t for t in reached if t is not None), 3)
            if all(t is not None for t in reached)
            else None
        )
        line["time_to_target_s_per_seed"] = [None if t is None else round(t, 2) for t in reached]
        for base in ("saps", "random"):
            known = [s for s in speedups(base, policy) if s is not None]
            line[f"speedup_vs_{base}"] = round(statistics.median(known), 3) if known else None
        line |= {
            "seeds": args.seeds,
            "rounds": args.rounds,
            "compute_s": args.compute_s,
            "model_bytes": args.model_bytes,
            "target_accuracy": args.target,
            "max_staleness": args.max_staleness,
            "skip_gain": args.skip_gain,
            "time": "simulated: compute_s + model_bytes / bottleneck per round",
        }
        emit(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
