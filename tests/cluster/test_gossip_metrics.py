"""Per-round training metrics through real servers: three gossip.Workers report their loss,
accuracy and example count with each training round, the round keeps one record per participant
and their means, the SDK and `cpctl gossip rounds --output json` show them, `cpctl gossip plot`
draws them as a PNG, and metrics no training produces are refused (INVALID_ARGUMENT)."""

from __future__ import annotations

import asyncio
import secrets
import struct
from pathlib import Path

import numpy as np
import pytest

from controlplane.client import AsyncClient, InvalidArgument, RoundState
from controlplane.dev import LocalCluster
from gossip import Worker

from .conftest import cpctl, cpctl_json

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

ROUND_TIMEOUT_S = 6.0
PROBE_BYTES = (4 * 1024, 64 * 1024)
TRAINING_ROUNDS = 3


def params_of(k: int) -> dict[str, np.ndarray]:
    return {"w": np.full((4, 3), float(k)), "b": np.full(3, float(k))}


def metrics_of(k: int, t: int) -> dict[str, float]:
    # Exactly representable values: the means below are exact.
    return {"loss": 4.0 / (t + 1) + k, "accuracy": 0.25 * k + 0.125 * t, "examples": 10 * (k + 1)}


async def test_workers_report_metrics_that_the_sdk_cpctl_and_the_plot_show(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    group = f"gm-{secrets.token_hex(3)}"
    ids = [f"{group}-{k}" for k in "abc"]
    client = AsyncClient(cluster.client_addresses, credentials=cluster.credentials, timeout=15)
    workers = [
        Worker(client, group, node, round_timeout_s=ROUND_TIMEOUT_S, lease_ttl_s=5.0, probe_bytes=PROBE_BYTES)
        for node in ids
    ]
    numbers: list[int] = []
    try:
        # Paused until all three are up, so that every round lists all three.
        await client.gossip.configure_group(
            group, [("b", "float64", (3,)), ("w", "float64", (4, 3))], round_timeout_s=ROUND_TIMEOUT_S, paused=True
        )
        await asyncio.gather(*(worker.start(params_of(k)) for k, worker in enumerate(workers)))
        # Refused before waiting for a round: nothing would accept them.
        with pytest.raises(ValueError, match="accuracy"):
            await workers[0].step(params_of(0), metrics={"accuracy": 93.0})
        with pytest.raises(ValueError, match="unknown metrics"):
            await workers[0].step(params_of(0), metrics={"acc": 0.9})
        await client.gossip.update_group(group, paused=False)
        params = [params_of(k) for k in range(len(workers))]
        for t in range(TRAINING_ROUNDS):
            params = list(
                await asyncio.gather(
                    *(worker.step(params[k], metrics=metrics_of(k, t)) for k, worker in enumerate(workers))
                )
            )
            stats = [worker.last_round for worker in workers]
            assert all(s is not None for s in stats) and len({s.number for s in stats if s is not None}) == 1
            numbers.append(stats[0].number if stats[0] is not None else 0)
        # The cluster refuses what the worker refused, before the log (any round, any node).
        with pytest.raises(InvalidArgument, match="accuracy"):
            await client.gossip.report_round(group, numbers[-1], ids[0], accuracy=1.5)
        with pytest.raises(InvalidArgument, match="loss"):
            await client.gossip.report_round(group, numbers[-1], ids[0], loss=float("nan"))

        rounds = {r.number: r for r in await client.gossip.rounds(group)}
        for t, number in enumerate(numbers):
            r = rounds[number]
            assert r.state is RoundState.DONE and not r.probe
            assert [m.node for m in r.node_metrics] == ids
            for k, record in enumerate(r.node_metrics):
                expected = metrics_of(k, t)
                assert (record.metrics.loss, record.metrics.accuracy, record.metrics.examples) == (
                    expected["loss"],
                    expected["accuracy"],
                    expected["examples"],
                )
            assert r.loss == 4.0 / (t + 1) + 1.0  # the mean of k = 0, 1, 2
            assert r.accuracy == 0.25 + 0.125 * t
            assert r.metrics is not None and r.metrics.examples == 60
        probes = [r for r in rounds.values() if r.probe]
        assert probes and all(not r.node_metrics and r.metrics is None for r in probes)  # a probe trains nothing
    finally:
        await client.gossip.update_group(group, paused=True)
        await asyncio.gather(*(worker.close() for worker in workers), return_exceptions=True)
        await client.close()

    listed = {r["number"]: r for r in cpctl_json(cluster, "gossip", "rounds", group)}
    last = listed[numbers[-1]]
    assert last["loss"] == 4.0 / TRAINING_ROUNDS + 1.0 and last["accuracy"] == 0.25 + 0.125 * (TRAINING_ROUNDS - 1)
    assert [m["node"] for m in last["node_metrics"]] == ids
    assert last["node_metrics"][0]["metrics"] == {"loss": 4.0 / TRAINING_ROUNDS, "accuracy": 0.25, "examples": 10}
    assert last["metrics"]["examples"] == 60 and last["pair_distance_sq"] is not None and last["bytes_total"] > 0
    text = cpctl(cluster, "gossip", "rounds", group)
    assert text.returncode == 0, text.stderr
    assert "LOSS" in text.stdout and "ACCURACY" in text.stdout and "50.0%" in text.stdout

    out = tmp_path / "rounds.png"
    plotted = cpctl_json(cluster, "gossip", "plot", group, "--out", str(out))
    assert plotted["rounds"] >= TRAINING_ROUNDS and plotted["last"] >= numbers[-1]
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (800, 800) and len(data) > 10_000
    empty = cpctl(cluster, "gossip", "plot", f"{group}-none", "--out", str(tmp_path / "none.png"))
    assert empty.returncode == 1 and "no finished training round" in empty.stderr and "Traceback" not in empty.stderr


async def test_the_digits_example_reports_its_workers_metrics_live(cluster: LocalCluster) -> None:
    """`python -m gossip.examples.digits --live`'s workers report loss, accuracy and examples with
    every training round (a short run: 2 workers, 3 rounds)."""
    from controlplane.client import Client
    from gossip.examples.digits import Config, run_live

    config = Config(workers=2, rounds=3, local_steps=4)
    group = f"gd-{secrets.token_hex(3)}"
    result = await run_live(
        config, ",".join(cluster.client_addresses), group=group, round_timeout_s=10.0, credentials=cluster.credentials
    )
    assert len(result.rounds) == config.rounds
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        training = [r for r in client.gossip.rounds(group) if not r.probe]
        client.gossip.update_group(group, paused=True)
    assert len(training) >= config.rounds
    for r in training[: config.rounds]:
        assert [m.node for m in r.node_metrics] == [f"{group}-w0", f"{group}-w1"], r
        for record in r.node_metrics:
            m = record.metrics
            assert m.loss is not None and m.loss > 0 and m.accuracy is not None and 0 <= m.accuracy <= 1
            assert m.examples == config.local_steps * config.batch_size
    # The workers learn: the reported accuracy rises from the first round to the last.
    first, last = training[0].accuracy, training[config.rounds - 1].accuracy
    assert first is not None and last is not None and last > first
