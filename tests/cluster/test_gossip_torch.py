"""Two ``gossip.torch.TorchWorker``s (the synchronous API: each Worker's event loop on a background
thread) against a real 3-server cluster: torch state_dicts in and out through a committed round, the
float tensors averaged by example counts, bit-identical at both ends, BatchNorm's counter kept, and
the leases held while the caller's thread is busy for longer than a lease."""

from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from controlplane.client import Client, NodeState, RoundState
from controlplane.dev import LocalCluster
from gossip.mixing import weighted_average

from .conftest import wait_until

torch = pytest.importorskip("torch")

from gossip.torch import TorchWorker, averaged, from_params, to_params  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

ROUND_TIMEOUT_S = 6.0
LEASE_TTL_S = 2.0
PROBE_BYTES = (4 * 1024, 64 * 1024)


def net(seed: int) -> Any:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 3).to(torch.bfloat16)
    )
    for _ in range(seed + 2):  # BatchNorm's running statistics and counter move: 2 and 3 batches
        model[1](model[0](torch.randn(16, 8)))
    return model


def same_bits(x: Any, y: Any) -> bool:
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    return bool(torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)))


def test_sync_torch_workers_average_state_dicts_by_example_counts(cluster: LocalCluster) -> None:
    group = f"gt-{secrets.token_hex(3)}"
    a, b = f"{group}-a", f"{group}-b"
    state = {a: net(0).state_dict(), b: net(1).state_dict()}
    counts = {a: 300, b: 100}
    client = Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15)
    workers: dict[str, TorchWorker] = {}
    try:
        wire = to_params(state[a])
        # Paused, so that the first round waits for both workers.
        client.gossip.configure_group(
            group,
            [(name, wire[name].dtype.name, wire[name].shape) for name in sorted(wire)],
            round_timeout_s=ROUND_TIMEOUT_S,
            paused=True,
        )
        for node in (a, b):
            workers[node] = TorchWorker(
                cluster.client_addresses,
                group,
                node,
                credentials=cluster.credentials,
                round_timeout_s=ROUND_TIMEOUT_S,
                lease_ttl_s=LEASE_TTL_S,
                probe_bytes=PROBE_BYTES,
            )
            workers[node].start(state[node])
        # The caller's thread trains (here: is blocked) for twice the lease: the heartbeats run on the
        # workers' own loop, so both nodes stay ACTIVE. (Training inside the async Worker's loop would
        # let the leases expire.)
        time.sleep(2 * LEASE_TTL_S)
        for node in (a, b):
            assert client.membership.get_node(node).node.state is NodeState.ACTIVE
        with pytest.raises(ValueError, match="examples must be a positive integer"):
            workers[a].step(state[a], examples=0)
        client.gossip.update_group(group, paused=False)

        with ThreadPoolExecutor(2) as pool:
            futures = {node: pool.submit(workers[node].step, state[node], examples=counts[node]) for node in (a, b)}
            mixed = {node: future.result(timeout=60) for node, future in futures.items()}

        # Two peers: round 1 probed their link, round 2 trained.
        stats = {node: workers[node].last_round for node in (a, b)}
        assert stats[a] is not None and stats[b] is not None
        assert stats[a].number == stats[b].number == 2 and stats[a].ok and stats[b].ok, stats
        assert stats[a].partner == b and stats[b].partner == a
        oracle = from_params(weighted_average(to_params(state[a]), to_params(state[b]), 300, 100), state[a])
        names = averaged(state[a])
        assert "1.num_batches_tracked" not in names
        for name in names:
            assert same_bits(mixed[a][name], mixed[b][name]), name
            assert same_bits(mixed[a][name], oracle[name]), name
        assert mixed[a]["3.weight"].dtype == torch.bfloat16
        # The counters stay each node's own; the model loads the result.
        assert mixed[a]["1.num_batches_tracked"].item() == 2 and mixed[b]["1.num_batches_tracked"].item() == 3
        net(0).load_state_dict(mixed[a])

        # The consensus measure stays "mean squared distance between partners before the round" when
        # the pair is weighted (each end scales its move back to the plain rule's).
        distance = sum(
            float(np.sum((wire_a - wire_b) ** 2))
            for wire_a, wire_b in zip(
                (v.astype(np.float64) for _, v in sorted(to_params(state[a]).items())),
                (v.astype(np.float64) for _, v in sorted(to_params(state[b]).items())),
                strict=True,
            )
        )
        done = wait_until(lambda: _ended(client, group, 2), 15, "round 2 to end")
        assert done.state is RoundState.DONE and done.mixed == 2 and not done.failures
        assert done.pair_distance_sq == pytest.approx(distance, rel=1e-4)
    finally:
        for worker in workers.values():
            worker.close()
        client.close()
    # The last close stopped the workers' shared loop thread.
    assert not [t for t in threading.enumerate() if t.name == "gossip-sync-loop"]


def _ended(client: Client, group: str, number: int) -> Any:
    found = client.gossip.round(group, number)
    return found if found.state is not RoundState.RUNNING else None


def test_the_torch_example_trains_through_the_cluster(cluster: LocalCluster) -> None:
    """``python -m gossip.examples.torch_digits`` in small: three TorchWorkers on their own threads,
    every round committed and exchanged without a failure, and the models learn; the group it
    creates has the tolerant floor of 2 participants, yet every round had all three."""
    pytest.importorskip("sklearn")
    from gossip.examples.torch_digits import Config, run

    with Client(cluster.endpoints, credentials=cluster.credentials, timeout=15) as client:
        before = {g.group for g in client.gossip.groups()}
        history, summary = run(Config(workers=3, rounds=3), cluster.endpoints, credentials=cluster.credentials)
        assert [stat.round for stat in history] == [1, 2, 3]
        assert all(stat.failed == 0 and stat.bytes > 0 for stat in history), history
        assert summary.mean_accuracy > 0.5, summary  # ten classes: chance is 0.1
        # The tolerant setting: the floor of 2, so a crashed worker would cost a round, not the run;
        # created paused and run once all three were up, so every round still had all three.
        (group,) = [g for g in client.gossip.groups() if g.group not in before]
        assert group.min_participants == 2 and not group.paused, group
        # The example's three rounds (one more may start as its workers leave, with fewer).
        training = [r for r in client.gossip.rounds(group.group) if r.policy != "probe"][:3]
        assert len(training) == 3 and all(len(r.participants) == 3 for r in training), training
