"""Gossip peer-selection simulation: ``python -m bench.gossip_sim [--seeds 0,1,2] [--n 16,32,64]``.

For each N and each seed (default 0..29: at N = 16 a median over 10 seeds moves by 15% from one set
of seeds to the next): a symmetric bandwidth matrix uniform in (0, 5] (``--topology node-caps``:
per-node caps log-uniform in [3, 100], a link at the lower of its ends' caps; no targets are judged
there), one standard-normal vector (dimension 100) per peer, then each policy (saps, saps-adaptive,
random, best_bottleneck_static; on uniform links saps-adaptive only with ``--policies``) runs for 40 rounds
and on until the normalised consensus distance reaches 1e-2 (at most 2000 rounds; the static
matching stops once it stops mixing, i.e. after round 1).
A round lasts ``model_size / bottleneck`` (model_size = 1: times are in model-size / bandwidth units).

stdout: one JSON line per (N, policy), aggregated over the seeds (per-seed values alongside), then one
``gossip_sim_targets`` line saying whether each target was met, with the numbers. Progress on stderr.
Exit status 1 if a target is missed (the lines are printed either way).

Definitions (the same ones the target check uses):

- ``bottleneck_fraction_of_best``: per seed, the mean over rounds 0..39 of (bottleneck / b*), b* exact
  (``gossip.matching.best_bottleneck``); the line's value is the mean over seeds.
- ``consensus_distance_40``: consensus distance after 40 rounds divided by the initial one.
- ``time_to_1e-2``: summed round times until the normalised consensus distance is <= 1e-2; null if
  never reached (the static matching: after round 1 nothing mixes further).
- ``speedup_vs_random``: per seed, random's time_to_1e-2 / this policy's; the line's value is the median
  over seeds (random's round time is 1 / min of N/2 uniform links, heavy-tailed, so a mean over seeds
  is dominated by the one seed where random drew a tiny link).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from bench.common import emit
from gossip.matching import (
    ADAPTIVE_POLICY,
    DEFAULT_IDLE_BONUS,
    DEFAULT_MIX_BONUS,
    DEFAULT_THRESHOLD_FRACTION,
    DEFAULT_WINDOW,
)
from gossip.simulate import POLICIES, TOPOLOGIES, PolicyResult, bandwidth_for, initial_vectors, run_policy

TARGET_FRACTION = 0.9
TARGET_CONSENSUS = 1e-2
TARGET_SPEEDUP = 10.0

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[gossip_sim {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _mean(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else statistics.fmean(v for v in values if v is not None)


def scenario_lines(n: int, seeds: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every policy on every seed for one N; one aggregated line per policy."""
    policies = args.policies or (
        [p for p in POLICIES if p != ADAPTIVE_POLICY] if args.topology == "uniform" else list(POLICIES)
    )
    if "random" not in policies:
        policies.append("random")  # the speedups are against it
    results: dict[str, list[PolicyResult]] = {p: [] for p in policies}
    for seed in seeds:
        bandwidth = bandwidth_for(args.topology, n, seed)
        x0 = initial_vectors(n, args.dim, seed)
        for policy in policies:
            t = time.monotonic()
            results[policy].append(
                run_policy(
                    policy,
                    bandwidth,
                    x0,
                    seed=seed,
                    rounds=args.rounds,
                    target=TARGET_CONSENSUS,
                    max_rounds=args.max_rounds,
                    threshold_fraction=args.threshold_fraction,
                    window=args.window,
                    idle_bonus=args.idle_bonus,
                    mix_bonus=args.mix_bonus,
                )
            )
            log(f"n={n} seed={seed} {policy}: {time.monotonic() - t:.2f}s")
    lines = []
    random_times = [r.time_to_target for r in results["random"]]
    for policy in policies:
        rs = results[policy]
        speedups = [
            None if (rt is None or r.time_to_target is None) else rt / r.time_to_target
            for rt, r in zip(random_times, rs, strict=True)
        ]
        known = [s for s in speedups if s is not None]
        line: dict[str, Any] = {
            "scenario": "gossip_sim",
            "topology": args.topology,
            "n": n,
            "policy": policy,
            "seeds": seeds,
            "rounds": args.rounds,
            "b_star": statistics.fmean(r.b_star for r in rs),
            "bottleneck_fraction_of_best": statistics.fmean(r.bottleneck_fraction_of_best for r in rs),
            "bottleneck_fraction_of_best_per_seed": [round(r.bottleneck_fraction_of_best, 4) for r in rs],
            "consensus_distance_40": statistics.fmean(r.consensus_distance_at_rounds for r in rs),
            "consensus_distance_40_per_seed": [float(f"{r.consensus_distance_at_rounds:.3g}") for r in rs],
            "rounds_to_1e-2": _mean([r.rounds_to_target for r in rs]),
            "rounds_to_1e-2_per_seed": [r.rounds_to_target for r in rs],
            "time_to_1e-2": _mean([r.time_to_target for r in rs]),
            "time_to_1e-2_per_seed": [None if r.time_to_target is None else round(r.time_to_target, 3) for r in rs],
            "speedup_vs_random": statistics.median(known) if len(known) == len(rs) else None,
            "speedup_vs_random_per_seed": [None if s is None else round(s, 2) for s in speedups],
            "rounds_run_per_seed": [r.rounds_run for r in rs],
        }
        if policy == "saps":
            line |= {
                "threshold_fraction": args.threshold_fraction,
                "window": args.window,
                "idle_bonus": args.idle_bonus,
                "mix_bonus": args.mix_bonus,
                "fallback_rounds_per_seed": [r.fallback_rounds for r in rs],
                "disconnected_windows": sum(r.disconnected_windows for r in rs),
            }
        line["time_unit"] = "model_size / bandwidth unit"
        line["consensus_normalisation"] = "cd(round) / cd(0)"
        lines.append(line)
    return lines


def targets(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The SAPS targets per N, judged on the same numbers the lines print."""
    verdict: dict[str, Any] = {"scenario": "gossip_sim_targets"}
    all_met = True
    for line in lines:
        if line["policy"] != "saps":
            continue
        worst_cd = max(line["consensus_distance_40_per_seed"])
        speedup = line["speedup_vs_random"]
        met = {
            "bottleneck_fraction_of_best": line["bottleneck_fraction_of_best"],
            "bottleneck_fraction_met": line["bottleneck_fraction_of_best"] >= TARGET_FRACTION,
            "consensus_distance_40_worst_seed": worst_cd,
            "consensus_met": worst_cd <= TARGET_CONSENSUS,
            "speedup_vs_random_median": speedup,
            "speedup_met": speedup is not None and speedup >= TARGET_SPEEDUP,
        }
        all_met = all_met and met["bottleneck_fraction_met"] and met["consensus_met"] and met["speedup_met"]
        verdict[f"n{line['n']}"] = met
    verdict["targets"] = {
        "bottleneck_fraction_of_best": f">= {TARGET_FRACTION} (mean over rounds and seeds)",
        "consensus_distance_40": f"<= {TARGET_CONSENSUS} (normalised, every seed)",
        "speedup_vs_random": f">= {TARGET_SPEEDUP} (median over seeds)",
    }
    verdict["all_met"] = all_met
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gossip_sim", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=_ints, default=[16, 32, 64], help="peer counts, comma-separated")
    parser.add_argument("--seeds", type=_ints, default=list(range(30)), help="seeds, comma-separated")
    parser.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        default="uniform",
        help="uniform: links uniform in (0, 5]; node-caps: per-node caps log-uniform in [3, 100], a link at the lower",
    )
    parser.add_argument(
        "--policies",
        type=lambda text: [p for p in text.split(",") if p],
        default=None,
        help=f"comma-separated among {', '.join(POLICIES)} (default: all; on uniform without {ADAPTIVE_POLICY})",
    )
    parser.add_argument("--rounds", type=int, default=40, help="reporting horizon")
    parser.add_argument("--max-rounds", type=int, default=2000, help="cap for the time-to-consensus run")
    parser.add_argument("--dim", type=int, default=100, help="vector dimension per peer")
    parser.add_argument("--threshold-fraction", type=float, default=DEFAULT_THRESHOLD_FRACTION)
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    parser.add_argument("--idle-bonus", type=float, default=DEFAULT_IDLE_BONUS)
    parser.add_argument(
        "--mix-bonus", type=float, default=DEFAULT_MIX_BONUS, help="with --idle-bonus 0: 0 = unbiased random matching"
    )
    args = parser.parse_args(argv)
    all_lines: list[dict[str, Any]] = []
    for n in args.n:
        for line in scenario_lines(n, args.seeds, args):
            emit(line)
            all_lines.append(line)
    if args.topology != "uniform":  # the targets are the SAPS paper's, on uniform links
        log("done (no targets on this topology)")
        return 0
    verdict = targets(all_lines)
    emit(verdict)
    log(f"done; all targets met: {verdict['all_met']}")
    return 0 if verdict["all_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
