"""gossip.Worker against a real 3-server cluster: the leader's coordinator commits each round's pairs,
four workers in this process exchange over their own gossip ports and report, and a peer that dies
mid-round costs its partner nothing but the round: it keeps its own parameters, the failure is
recorded and penalised, and the rounds go on without the dead peer once its lease has expired.
The group's first rounds are a probe cycle, run inside the workers' first ``step``: every pair
measured once on disjoint pairs, the matrix filled (bandwidth and latency) before training starts."""

from __future__ import annotations

import asyncio
import itertools
import math
import secrets
import time
from functools import partial

import numpy as np
import pytest
from prometheus_client import REGISTRY

from controlplane.client import AsyncClient, Client, FailedPrecondition, NodeState, NotFound, RoundState
from controlplane.client._gossip import Round
from controlplane.dev import LocalCluster
from controlplane.v1 import watch_pb2
from gossip import Worker

from .conftest import collect_events, cpctl, cpctl_json, eventually

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

Params = dict[str, np.ndarray]

ROUND_TIMEOUT_S = 6.0
LEASE_TTL_S = 3.0
PROBE_BYTES = (4 * 1024, 256 * 1024)  # small, to keep the test fast; still two sizes
PROBE_ROUNDS = 3  # four workers: three slots of two disjoint pairs


def initial_params(k: int) -> Params:
    # Integer-valued float64: every average of the first rounds is exact, so "the mean is preserved" can
    # be checked with ==, not with a tolerance.
    return {
        "w": (np.arange(12, dtype=np.float64).reshape(4, 3) * (k + 1) + 8 * k),
        "b": np.full(3, 16.0 * k),
    }


def partner_in(round_: Round, node: str) -> str | None:
    for pair in round_.pairs:
        if node in (pair.a, pair.b):
            return pair.b if pair.a == node else pair.a
    return None


def assert_mixed(
    pairs: list[tuple[str, str]], idle: list[str], before: dict[str, Params], after: dict[str, Params]
) -> float:
    """Matched pairs hold exactly a * 0.5 + b * 0.5 (W = (I + P) / 2), idle ones their own; returns the
    mean squared distance between partners before the round (the consensus measure)."""
    distances = []
    for a, b in pairs:
        for name in before[a]:
            expected = before[a][name] * 0.5 + before[b][name] * 0.5
            assert np.array_equal(after[a][name], expected), (a, b, name)
            assert np.array_equal(after[b][name], expected), (a, b, name)
        distances.append(sum(float(np.sum((before[a][n] - before[b][n]) ** 2)) for n in before[a]))
    for node in idle:
        for name in before[node]:
            assert np.array_equal(after[node][name], before[node][name])
    return sum(distances) / len(distances)


def pairs_of(round_: Round) -> list[tuple[str, str]]:
    return [(pair.a, pair.b) for pair in round_.pairs]


def totals(params: dict[str, Params]) -> dict[str, np.ndarray]:
    return {name: sum(p[name] for p in params.values()) for name in ("w", "b")}


def _worker_counts() -> dict[str, float]:
    """This process's gossip worker metrics (gossip/worker.py), as Prometheus would scrape them."""

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    rounds = "gossip_worker_rounds_total"
    return {
        "train mixed": sample(rounds, kind="train", result="mixed"),
        "train failed": sample(rounds, kind="train", result="failed"),
        "train bytes": sample("gossip_worker_received_bytes_total", kind="train"),
        "probe rounds": sum(sample(rounds, kind="probe", result=r) for r in ("mixed", "idle", "failed")),
    }


async def test_workers_gossip_through_committed_rounds_and_survive_a_dead_peer(cluster: LocalCluster) -> None:
    group = f"gw-{secrets.token_hex(3)}"
    ids = [f"{group}-{k}" for k in "abcd"]
    client = AsyncClient(cluster.client_addresses, credentials=cluster.credentials, timeout=15)
    groups = client.gossip
    workers: dict[str, Worker] = {}
    try:
        # Created paused, so that round 1 waits until all four workers are up (min_participants stays 2:
        # the rounds must go on with three once one dies).
        created = await groups.configure_group(
            group, [("b", "float64", (3,)), ("w", "float64", (4, 3))], round_timeout_s=ROUND_TIMEOUT_S, paused=True
        )
        assert created.created and created.group.paused
        for node in ids:
            workers[node] = Worker(
                client,
                group,
                node,
                round_timeout_s=ROUND_TIMEOUT_S,
                lease_ttl_s=LEASE_TTL_S,
                probe_bytes=PROBE_BYTES,
            )
        await asyncio.gather(*(workers[node].start(initial_params(k)) for k, node in enumerate(ids)))
        assert all(w.config is not None and w.config.round_timeout_s == ROUND_TIMEOUT_S for w in workers.values())
        # A worker with another layout is turned away before it registers: a new layout, a new group.
        with pytest.raises(FailedPrecondition, match="new group name"):
            await Worker(client, group, f"{group}-x").start({"w": np.zeros((2, 2))})
        with pytest.raises(NotFound):
            await client.membership.get_node(f"{group}-x")
        first_revision = (await client.status()).applied_revision
        await groups.update_group(group, paused=False)

        params = {node: initial_params(k) for k, node in enumerate(ids)}
        start_totals = totals(params)
        counted = _worker_counts()
        # No link is known yet: the first rounds are a probe cycle, which the first step runs on the way
        # to the first training round (round 4). Every step returns after a training round only.
        for number in range(PROBE_ROUNDS + 1, PROBE_ROUNDS + 6):
            before = params
            mixed = await asyncio.gather(*(workers[node].step(before[node]) for node in ids))
            params = dict(zip(ids, mixed, strict=True))
            if number == PROBE_ROUNDS + 1:
                await check_probe_cycle(client, group, workers)
            committed = await client.gossip.round(group, number)
            assert committed.number == number and list(committed.participants) == ids
            assert committed.policy == "saps" and not committed.probe
            assert len(committed.pairs) == 2 and not committed.idle
            for node in ids:
                stats = workers[node].last_round
                assert stats is not None and stats.number == number and stats.ok, stats
                assert stats.partner == partner_in(committed, node)  # exchanged only with the committed partner
            distance = assert_mixed(pairs_of(committed), [], before, params)
            after_totals = totals(params)
            for name, total in start_totals.items():
                assert np.array_equal(after_totals[name], total), f"round {number} moved the mean of {name}"
            done = await eventually(partial(_ended, client, group, number), 10, f"round {number} to end")
            assert done.state is RoundState.DONE and not done.failures
            assert done.mixed == 4 and done.pair_distance_sq == pytest.approx(distance, rel=1e-9)
            assert done.bytes_total == 4 * (12 + 3) * 8  # each side receives the other's 15 float64
        # The process's worker metrics count the same: 4 workers x 5 mixed rounds, each receiving its
        # partner's 15 float64, and the probe cycle before them.
        now = _worker_counts()
        assert now["train mixed"] - counted["train mixed"] == 20
        assert now["train bytes"] - counted["train bytes"] == 20 * 15 * 8
        assert now["probe rounds"] > counted["probe rounds"]
        # The exchanges fed the matrix: the workers reported their measured links.
        matrix = await client.gossip.bandwidth(node_id=ids[0])
        assert any(link.bandwidth_bps > 0 and link.samples > 0 for link in matrix.links)

        # Round 9: a peer dies mid-round. It is in the committed round; it is killed (gossip port gone,
        # heartbeats stopped, no deregistration) before it exchanged.
        victim = ids[1]
        survivors = [node for node in ids if node != victim]
        steps = {node: asyncio.create_task(workers[node].step(params[node])) for node in survivors}
        dying = PROBE_ROUNDS + 6
        sixth = await eventually(partial(_round, client, group, dying), 15, f"round {dying} to be committed")
        assert victim in sixth.participants
        await workers.pop(victim).close(deregister=False)
        results = {node: await task for node, task in steps.items()}
        returned_at = time.time() * 1000
        assert returned_at <= sixth.deadline_unix_ms + 250, "the survivor waited past the round's deadline"
        orphan = partner_in(sixth, victim)
        assert orphan is not None
        stats = workers[orphan].last_round
        assert stats is not None and stats.number == dying and not stats.ok and stats.partner == victim and stats.error
        assert _worker_counts()["train failed"] > now["train failed"]
        for name in params[orphan]:
            assert np.array_equal(results[orphan][name], params[orphan][name])  # its own parameters, unchanged
        assert_mixed([p for p in pairs_of(sixth) if victim not in p], [], params, results)
        params = {node: results[node] for node in survivors}
        ended = await eventually(partial(_ended, client, group, dying), ROUND_TIMEOUT_S + 10, f"round {dying} to end")
        assert ended.state is RoundState.TIMED_OUT  # the dead peer never reported
        failures = {(f.node, f.peer) for f in ended.failures}
        assert (orphan, victim) in failures and (victim, "") in failures
        link = next(
            link
            for link in (await client.gossip.bandwidth(node_id=victim)).links
            if {link.a, link.b} == {orphan, victim}
        )
        assert link.failures >= 1  # penalised

        # The following rounds go on: the dead peer drops out once its lease expired (at most one round
        # may still list it, if the lease outlived round 9), and three peers make one pair and one idle.
        # Every link among them is known: no probe cycle.
        without: list[Round] = []
        number = dying
        while len(without) < 2:
            number += 1
            assert number <= dying + 3, "the dead peer was still listed two rounds after it died"
            before = params
            mixed = await asyncio.gather(*(workers[node].step(before[node]) for node in survivors))
            params = dict(zip(survivors, mixed, strict=True))
            committed = await eventually(partial(_ended, client, group, number), 15, f"round {number}")
            assert not committed.probe
            if victim in committed.participants:
                assert number == dying + 1 and not without
                continue
            assert list(committed.participants) == sorted(survivors)
            assert len(committed.pairs) == 1 and len(committed.idle) == 1
            assert committed.state is RoundState.DONE
            assert_mixed(pairs_of(committed), list(committed.idle), before, params)
            without.append(committed)
        view = await client.membership.get_node(victim)
        assert view.node.state is NodeState.DEAD

        # Through the log: every round was committed (pairs and all) before any report of it, its
        # pairs never changed, and it started only after the previous round had ended.
        last_revision = (await client.status()).applied_revision
        events = await asyncio.to_thread(
            collect_events,
            cluster.client_addresses[0],
            first_revision,
            last_revision,
            prefix=f"rounds/{group}/",
            domains=("gossip",),
        )
        by_number: dict[int, list[watch_pb2.Event]] = {}
        for event in events:
            by_number.setdefault(event.gossip.round.number, []).append(event)
        # Consecutive; the coordinator may already have started the round after the last one stepped.
        assert sorted(by_number) == list(range(1, max(by_number) + 1)) and max(by_number) in (number, number + 1)
        previous_end = 0
        for n in sorted(by_number):
            first, *rest = by_number[n]
            assert first.gossip.round.state == RoundState.RUNNING.value and not first.gossip.round.reported
            assert first.revision > previous_end
            assert all(list(e.gossip.round.pairs) == list(first.gossip.round.pairs) for e in rest)
            ends = [e.revision for e in rest if e.gossip.round.state != RoundState.RUNNING.value]
            if n > number:  # started after the workers stopped stepping: it may still be running
                assert len(ends) <= 1
                continue
            assert len(ends) == 1
            previous_end = ends[0]
    finally:
        await asyncio.gather(*(w.close() for w in workers.values()), return_exceptions=True)
        await client.close()


async def check_probe_cycle(client: AsyncClient, group: str, workers: dict[str, Worker]) -> None:
    """Rounds 1-3 were probe rounds covering every pair once on disjoint pairs; both ends of every
    link measured it at two sizes and reported, so the matrix holds every link with its latency fit."""
    ids = sorted(workers)
    probes = [await client.gossip.round(group, n) for n in range(1, PROBE_ROUNDS + 1)]
    probed: list[tuple[str, str]] = []
    for r in probes:
        assert r.probe and r.policy == "probe" and r.state is RoundState.DONE and not r.failures, r
        nodes = [node for pair in r.pairs for node in (pair.a, pair.b)]
        assert len(nodes) == len(set(nodes)) == 4 and list(r.participants) == sorted(nodes)  # disjoint pairs
        assert r.mixed == 0 and r.pair_distance_sq is None  # nothing mixed
        # each side received the warm-up (the smallest size) and both measured transfers
        assert r.bytes_total == 4 * (min(PROBE_BYTES) + sum(PROBE_BYTES))
        probed += pairs_of(r)
    assert sorted(probed) == sorted(itertools.combinations(ids, 2))  # every pair exactly once
    for node, worker in workers.items():
        assert worker.last_probe is not None and worker.last_probe.ok and worker.last_probe.number <= PROBE_ROUNDS
        for peer in ids:
            if peer == node:
                continue
            estimate = worker.bandwidth.estimate(peer)
            assert estimate is not None and estimate.bandwidth > 0, (node, peer)
            # Both sizes measured and fitted together into one observation (the slope of the probe's
            # own line; its transfers stay out of the passive samples' latency fit).
            assert estimate.samples >= len(PROBE_BYTES)
    links = {(link.a, link.b): link for link in (await client.gossip.bandwidth()).links}
    for a, b in itertools.combinations(ids, 2):
        link = links[(a, b)]
        assert link.bandwidth_bps > 0 and link.bandwidth_a_bps > 0 and link.bandwidth_b_bps > 0, link
        assert link.samples >= 2 and math.isfinite(link.latency_s) and link.latency_s >= 0.0 and not link.failures


async def _round(client: AsyncClient, group: str, number: int) -> Round | None:
    latest = await client.gossip.round(group)
    return latest if latest.number >= number else None


async def _ended(client: AsyncClient, group: str, number: int) -> Round | None:
    try:
        found = await client.gossip.round(group, number)
    except NotFound:  # not started yet
        return None
    return found if found.state is not RoundState.RUNNING else None


def test_cpctl_gossip_groups_and_the_consensus_measure(cluster: LocalCluster) -> None:
    group = f"gc-{secrets.token_hex(3)}"
    created = cpctl_json(
        cluster, "gossip", "groups", "configure", group, "--tensor", "w:float32:8x2", "--tensor", "b:float32:2",
        "--sparsity", "0.5", "--round-timeout", "4", "--pause",
    )  # fmt: skip
    assert created["created"] and created["group"]["paused"] and created["group"]["sparsity_ratio"] == 0.5
    assert [t["name"] for t in created["group"]["spec"]["tensors"]] == ["b", "w"]
    updated = cpctl_json(cluster, "gossip", "groups", "configure", group, "--policy", "random", "--resume")
    assert updated["changed"] and updated["group"]["policy"] == "random" and not updated["group"]["paused"]
    assert group in [g["group"] for g in cpctl_json(cluster, "gossip", "groups", "list")]
    refused = cpctl(cluster, "gossip", "groups", "configure", group, "--tensor", "w:float32:9")
    assert refused.returncode == 1 and "new group name" in refused.stderr

    # A round with a reported mix: the consensus measure shows in `rounds` and `status`.
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        groups = client.gossip
        groups.update_group(group, paused=True)  # no coordinator round: this test starts its own
        assert groups.group(group).paused
        round_ = client.gossip.start_round(
            group, 1, ["gc-a", "gc-b"], [("gc-a", "gc-b")], seed=1, policy="random", sparsity_ratio=0.5,
            deadline_unix_ms=int(time.time() * 1000) + 30_000,
            tensors=[("b", "float32", (2,)), ("w", "float32", (8, 2))],
        )  # fmt: skip
        for node in round_.participants:
            groups.report_round(group, 1, node, bytes=40, seconds=0.01, mix_delta_sq=0.75)
    shown = cpctl_json(cluster, "gossip", "groups", "show", group)
    assert shown["group"]["policy"] == "random" and shown["latest"]["number"] == 1
    assert shown["latest"]["pair_distance_sq"] == 3.0 and shown["latest"]["duration_s"] is not None
    assert shown["group"]["probe_every_rounds"] == 50  # the default
    # A probe round: recognisable, with no consensus measure and no bottleneck shown.
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        client.gossip.start_round(
            group, 2, ["gc-a", "gc-b"], [("gc-a", "gc-b")], seed=2, policy="probe", sparsity_ratio=0.5,
            deadline_unix_ms=int(time.time() * 1000) + 30_000,
            tensors=[("b", "float32", (2,)), ("w", "float32", (8, 2))],
        )  # fmt: skip
        for node in ("gc-a", "gc-b"):
            client.gossip.report_round(group, 2, node, bytes=4096, seconds=0.01)
    rounds = cpctl_json(cluster, "gossip", "rounds", group)
    assert [(r["number"], r["state"], r["pair_distance_sq"], r["probe"]) for r in rounds] == [
        (1, "DONE", 3.0, False),
        (2, "DONE", None, True),
    ]
    status_text = cpctl(cluster, "gossip", "status", group)
    assert status_text.returncode == 0, status_text.stderr
    text = status_text.stdout
    assert text.startswith(f"group {group}: paused, policy random") and "PAIR_DIST2" in text
    assert "bandwidth probes on disjoint pairs" in text and " probe " in text
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        assert client.gossip.delete_group(group)
        with pytest.raises(NotFound):
            client.gossip.group(group)


async def test_workers_gossip_over_mutual_tls_with_agent_certificates(cluster: LocalCluster) -> None:
    """Two workers whose gossip ports serve mutual TLS with ``agent:<id>`` certificates from the
    cluster CA exchange through committed rounds like plaintext ones (the impostor case is in
    tests/test_gossip_identity.py)."""
    from controlplane import tls

    group = f"gt-{secrets.token_hex(3)}"
    ids = [f"{group}-a", f"{group}-b"]
    client = AsyncClient(cluster.client_addresses, credentials=cluster.credentials, timeout=15)
    workers: list[Worker] = []
    try:
        for node in ids:
            identity = tls.Identity("agent", node)
            tls.issue(cluster.pki_dir, identity, sans=["127.0.0.1"])
            files = tls.TlsFiles.from_directory(cluster.pki_dir, identity)
            pem = (files.ca.read_bytes(), files.cert.read_bytes(), files.key.read_bytes())
            workers.append(
                Worker(
                    client,
                    group,
                    node,
                    round_timeout_s=ROUND_TIMEOUT_S,
                    lease_ttl_s=LEASE_TTL_S,
                    probe_bytes=PROBE_BYTES,
                    tls=pem,
                )
            )
        await asyncio.gather(*(worker.start(initial_params(k)) for k, worker in enumerate(workers)))
        before = [initial_params(k) for k in range(len(workers))]
        after = await asyncio.gather(*(worker.step(params) for worker, params in zip(workers, before, strict=True)))
        for worker in workers:
            assert worker.last_round is not None and worker.last_round.ok, worker.last_round
        for name in before[0]:
            expected = (before[0][name] + before[1][name]) / 2
            assert np.array_equal(after[0][name], expected) and np.array_equal(after[1][name], expected)
    finally:
        await asyncio.gather(*(worker.close() for worker in workers), return_exceptions=True)
        await client.close()


async def test_int8_compression_is_configured_by_cpctl_and_used_by_the_workers(cluster: LocalCluster) -> None:
    """Issue 19: a group created with ``--compression int8`` carries it in every round's spec, and its
    workers exchange one byte per value, each keeping ``gossip.mixing.compressed_pair``'s result."""
    from gossip.mixing import compressed_pair

    group = f"gz-{secrets.token_hex(3)}"
    bad = cpctl(cluster, "gossip", "groups", "configure", group, "--tensor", "w:float64:4x3", "--compression", "zip")
    assert bad.returncode == 2 and "compression 'zip' is not one of none, int8" in bad.stderr, bad.stderr
    created = cpctl_json(
        cluster, "gossip", "groups", "configure", group, "--tensor", "w:float64:4x3", "--tensor", "b:float64:3",
        "--compression", "int8", "--probe-every", "0", "--round-timeout", str(ROUND_TIMEOUT_S),
    )  # fmt: skip
    assert created["created"] and created["group"]["compression"] == created["group"]["spec"]["compression"] == "int8"
    refused = cpctl(cluster, "gossip", "groups", "configure", group, "--compression", "none")
    assert refused.returncode == 2 and "fixed when a group is created" in refused.stderr
    ids = [f"{group}-a", f"{group}-b"]
    client = AsyncClient(cluster.client_addresses, credentials=cluster.credentials, timeout=15)
    workers = [
        Worker(
            client,
            group,
            node,
            round_timeout_s=ROUND_TIMEOUT_S,
            lease_ttl_s=LEASE_TTL_S,
            probe_bytes=PROBE_BYTES,
            compression="int8",  # a worker asking for another compression is refused at start
        )
        for node in ids
    ]
    try:
        await asyncio.gather(*(worker.start(initial_params(k)) for k, worker in enumerate(workers)))
        before = [{name: v + 0.1 * k for name, v in initial_params(k).items()} for k in range(2)]  # not exact
        after = await asyncio.gather(*(worker.step(params) for worker, params in zip(workers, before, strict=True)))
        expected = compressed_pair(before[0], before[1], "int8")
        for k, worker in enumerate(workers):
            assert worker.last_round is not None and worker.last_round.ok, worker.last_round
            assert worker.last_round.bytes == 15 + 2 * 16  # 15 values of one byte, a range per tensor
            for name in before[k]:
                assert after[k][name].tobytes() == expected[k][name].tobytes()
        round_ = await client.gossip.round(group, workers[0].last_round.number)
        assert round_.spec is not None and round_.spec.compression == "int8"
    finally:
        await asyncio.gather(*(worker.close() for worker in workers), return_exceptions=True)
        await client.close()
