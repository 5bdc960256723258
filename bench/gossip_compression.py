"""Compression on the digits example: ``python -m bench.gossip_compression [--seeds 10]``.

Runs the digits example (``gossip/examples/digits.py``, simulated mixer: the same SAPS matchings
and data for every variant of a seed) once per seed and variant, and prints one JSON line per
variant on stdout::

    {"variant": "int8", "seeds": 10, "bytes_per_round": 5456, "traffic_reduction": 0.869,
     "mean_accuracy": 0.9612, "accuracy_delta_points": {"mean": -0.01, "worst": -0.09},
     "gap_points": {"mean": 0.73, "worst": 1.53}}

Variants: ``none`` (full float64 models), ``int8`` (``gossip.mixing.int8_average``, what a group
with ``compression = "int8"`` does), ``mask-R`` (the shared random mask, ``sparsity_ratio = R``),
``topk-R`` (``gossip.mixing.topk_union_pair``: two-message top-k with error feedback, not on the
wire; its bytes count 4 per index and 8 per value of the union). ``bytes_per_round``: mean over
rounds of what all workers receive; ``traffic_reduction`` = 1 - bytes / none's bytes;
``accuracy_delta_points``: 100 x (variant - none) of the workers' mean accuracy, per seed, mean and
the seed furthest from 0; ``gap_points``: central minus workers' mean, mean and worst seed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics

from gossip.examples.digits import Config, MixRound, Params, SimulatedMixer, init_params, prepare, train
from gossip.mixing import Array, apply_matching, sparse_mask, topk_union_pair


class _Mixer(SimulatedMixer):
    """The example's simulated mixer with the pair rule swapped; bytes counted per variant."""

    def __init__(self, workers: int, seed: int, variant: str, start: Params) -> None:
        super().__init__(workers, seed, "int8" if variant == "int8" else "")
        self.variant = variant
        self.seed = seed
        self.ratio = float(variant.split("-")[1]) if "-" in variant else 1.0
        self.ref: dict[str, dict[str, Array]] = {p: dict(start) for p in self.peers}

    def _round(self, by_worker: dict[int, Params]) -> dict[int, Params]:
        if self.variant in ("none", "int8"):
            return super()._round(by_worker)
        number = len(self.matchings)
        matching = self.selector.select(self.bandwidth, self.peers, round=number, version=0)
        by_peer = {self.peers[w]: p for w, p in by_worker.items()}
        model = next(iter(by_peer.values()))
        if self.variant.startswith("mask-"):
            out = apply_matching(by_peer, matching, seed=self.seed, ratio=self.ratio)
            sent = sum(
                int(sparse_mask(self.seed, number, n, v.shape, self.ratio).sum()) * v.itemsize for n, v in model.items()
            )
            total = 2 * len(matching.pairs) * sent
        else:
            out = {p: dict(x) for p, x in by_peer.items()}
            k = sum(min(v.size, math.ceil(self.ratio * v.size)) for v in model.values())
            total = 0
            for a, b in matching.pairs:
                out[a], out[b], self.ref[a], self.ref[b], union = topk_union_pair(
                    by_peer[a], by_peer[b], self.ref[a], self.ref[b], self.ratio
                )
                total += 2 * (4 * k + 8 * union)
        self.matchings.append(matching)
        self.history.append(MixRound(number=number, bytes=total, pairs=len(matching.pairs), failed=0))
        return {w: out[self.peers[w]] for w in by_worker}


def run(variant: str, seed: int) -> tuple[float, float, float]:
    config = Config(seed=seed)
    data, shards = prepare(config)
    mixer = _Mixer(config.workers, seed, variant, init_params(data.x_train.shape[1], data.classes, seed))
    result = asyncio.run(train(config, data, shards, mixer))
    bytes_per_round = sum(m.bytes for m in mixer.history) / len(mixer.history)
    return result.final.mean_accuracy, 100 * result.gap, bytes_per_round


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gossip_compression")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--variants", default="none,int8,mask-0.6,topk-0.3,topk-0.4")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if variants[0] != "none":
        variants.insert(0, "none")
    results = {v: [run(v, s) for s in range(args.seeds)] for v in variants}
    base = results["none"]
    for v in variants:
        rows = results[v]
        deltas = [100 * (r[0] - b[0]) for r, b in zip(rows, base, strict=True)]
        bytes_per_round = statistics.mean(r[2] for r in rows)
        line = {
            "variant": v,
            "seeds": args.seeds,
            "bytes_per_round": round(bytes_per_round),
            "traffic_reduction": round(1 - bytes_per_round / statistics.mean(b[2] for b in base), 3),
            "mean_accuracy": round(statistics.mean(r[0] for r in rows), 4),
            "accuracy_delta_points": {
                "mean": round(statistics.mean(deltas), 2),
                "worst": round(max(deltas, key=abs), 2),
            },
            "gap_points": {
                "mean": round(statistics.mean(r[1] for r in rows), 2),
                "worst": round(max(r[1] for r in rows), 2),
            },
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
