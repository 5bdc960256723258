"""Membership scenarios of `make bench`, run against our cluster after the registry scenarios.

- ``membership_agents``: N agents (default 1,000) in this one process, each with its own client and
  lease (TTL 10 s, a heartbeat every 3.3 s, the `cpctl agent` loop), held for a while. Reports the
  registration rate, keepalive latency p50/p99, leases lost (must be 0), elections during the run
  (must be 0) and the CPU the servers and this generator used.
- ``membership_churn``: with those agents still beating, 50 new nodes join (register + first
  heartbeat, every fifth also joining a network as a member) and 50 earlier ones leave
  (deregister) per second for a while. Afterwards every server, asked on its own at the same
  revision, must list the same nodes, the live set must be exactly the steady agents plus the
  churned nodes still in, and no steady agent may have lost its lease.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from typing import Any

from bench.common import CpuMeter, log
from bench.load import percentile
from controlplane.agent import Agent
from controlplane.client import AsyncClient, Consistency, ControlPlaneError, NodeState

TTL_S = 10.0


async def _leader_term(client: AsyncClient) -> int:
    return (await client.status()).term


def renewals_via_log(cluster: Any) -> Counter[str]:
    """Every server's ``controlplane_lease_renewals_via_log_total``, summed by reason: the renewals
    the leader could not answer from memory (a follower's own count is its fallbacks)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    total: Counter[str] = Counter()
    for node in cluster.nodes.values():
        if not node.running:
            continue
        text = httpx.get(f"http://{node.metrics_address}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            if family.name == "controlplane_lease_renewals_via_log":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        total[sample.labels["reason"]] += int(sample.value)
    return total


def _since(before: Counter[str], after: Counter[str]) -> dict[str, int]:
    return {reason: after[reason] - before[reason] for reason in sorted(after) if after[reason] > before[reason]}


async def bench_membership(
    cluster: Any, agents: int, hold_s: float, churn_s: float, churn_rate: int
) -> list[dict[str, Any]]:
    run = uuid.uuid4().hex[:6]
    endpoints = list(cluster.client_addresses)
    server_pids = [n.pid for n in cluster.nodes.values() if n.pid is not None]
    meter = CpuMeter(server_pids)
    lines: list[dict[str, Any]] = []
    async with AsyncClient(endpoints, timeout=10) as admin:
        await admin.membership.set_flag("multi_network", True)
        network = f"bench-{run}"
        await admin.membership.create_network(network, "bench-model", 100_000)
        term_before = await _leader_term(admin)

        # Each agent its own client (its own channels) and lease; spread over the servers.
        fleet = [
            Agent(AsyncClient(endpoints[i % len(endpoints)], timeout=10), f"agent-{run}-{i:04d}", ttl_s=TTL_S)
            for i in range(agents)
        ]
        started = time.perf_counter()
        # Registering a thousand at once is a thundering herd no fleet produces; 64 at a time still
        # measures the write path with plenty of concurrency.
        gate = asyncio.Semaphore(64)
        register_failures = 0

        async def bring_up(agent: Agent) -> None:
            nonlocal register_failures
            async with gate:
                try:
                    await agent.start()
                except ControlPlaneError as exc:  # reported in the line, not fatal to the whole run
                    register_failures += 1
                    log(f"membership: {agent.node_id} did not start: {exc!r}")

        await asyncio.gather(*(bring_up(agent) for agent in fleet))
        register_s = time.perf_counter() - started
        log(f"membership: {agents - register_failures} of {agents} agents registered in {register_s:.1f} s")
        for agent in fleet:
            agent.stats.latencies.clear()
        before = meter.sample()
        via_log_before = await asyncio.to_thread(renewals_via_log, cluster)
        await asyncio.sleep(hold_s)  # the measured window: the agents beat on their own meanwhile
        after = meter.sample()
        via_log_after = await asyncio.to_thread(renewals_via_log, cluster)
        latencies = sorted(x for agent in fleet for x in agent.stats.latencies)
        beats = len(latencies)
        term_after = await _leader_term(admin)
        live = await admin.membership.nodes(state="active")
        fleet_ids = {agent.node_id for agent in fleet}
        line = {
            "scenario": "membership_agents",
            "system": "ours",
            "agents": agents,
            "ttl_s": TTL_S,
            "hold_s": hold_s,
            "register_per_s": round((agents - register_failures) / register_s, 1),
            "register_failures": register_failures,
            "heartbeats_per_s": round(beats / hold_s, 1),
            "keepalive_p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
            "keepalive_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "keepalive_max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
            "leases_lost": sum(agent.stats.lease_lost for agent in fleet),
            "heartbeat_failures": sum(agent.stats.failures for agent in fleet),
            "agents_active": len(fleet_ids & {v.node.spec.id for v in live}),
            "elections": term_after - term_before,
            # Renewals the servers sent through the log instead of answering from memory, by reason.
            "renewals_via_log": _since(via_log_before, via_log_after),
            **CpuMeter.cores(before, after),
        }
        lines.append(line)
        log(f"membership_agents: {line}")

        if churn_s > 0:
            churn = await _churn(admin, fleet, network, run, churn_s, churn_rate, meter, endpoints)
            churn["renewals_via_log"] = _since(via_log_after, await asyncio.to_thread(renewals_via_log, cluster))
        # Stop the fleet first (in-flight heartbeats finish), then count what was lost: a heartbeat
        # stuck during the run reports its lost lease only when it returns.
        await asyncio.gather(*(agent.stop(deregister=False) for agent in fleet), return_exceptions=True)
        await asyncio.gather(*(agent.client.close() for agent in fleet), return_exceptions=True)
        if churn_s > 0:
            dead = {v.node.spec.id for v in await admin.membership.nodes(state="dead")}
            churn["steady_leases_lost"] = sum(agent.stats.lease_lost for agent in fleet) - line["leases_lost"]
            churn["steady_agents_died"] = len(fleet_ids & dead)
            lines.append(churn)
            log(f"membership_churn: {churn}")
    return lines


async def _churn(
    admin: AsyncClient,
    fleet: list[Agent],
    network: str,
    run: str,
    churn_s: float,
    rate: int,
    meter: CpuMeter,
    endpoints: list[str],
) -> dict[str, Any]:
    joined: list[str] = []  # churned nodes currently in, oldest first
    counter = itertools.count()
    errors = 0
    latencies: list[float] = []
    term_before = await _leader_term(admin)

    async def join_one() -> None:
        nonlocal errors
        node_id = f"churn-{run}-{next(counter):05d}"
        t0 = time.perf_counter()
        try:
            await admin.membership.register_node(node_id, ttl_s=TTL_S * 6)
            await admin.membership.heartbeat(node_id)
            if len(joined) % 5 == 0:
                await admin.membership.join(network, node_id=node_id)
            joined.append(node_id)
            latencies.append(time.perf_counter() - t0)
        except Exception as exc:  # counted and reported: the scenario measures failures too
            errors += 1
            log(f"churn join failed: {exc!r}")

    async def leave_one() -> None:
        nonlocal errors
        if not joined:
            return
        node_id = joined.pop(0)
        t0 = time.perf_counter()
        try:
            await admin.membership.deregister(node_id)
            latencies.append(time.perf_counter() - t0)
        except Exception as exc:
            errors += 1
            log(f"churn leave failed: {exc!r}")

    before = meter.sample()
    started = time.perf_counter()
    pending: set[asyncio.Task[None]] = set()
    ticks = int(churn_s * 10)
    for tick in range(ticks):
        # Every 100 ms a tenth of a second's joins and leaves, paced against the wall clock.
        for _ in range(rate // 10):
            for work in (join_one(), leave_one()):
                task = asyncio.create_task(work)
                pending.add(task)
                task.add_done_callback(pending.discard)
        await asyncio.sleep(max(0.0, started + (tick + 1) / 10 - time.perf_counter()))
    await asyncio.gather(*pending)
    elapsed = time.perf_counter() - started
    after = meter.sample()

    # Consistency: every server, asked on its own at the same revision, lists the same nodes.
    revision = (await admin.status()).applied_revision
    answers = []
    for address in endpoints:
        async with AsyncClient(address, timeout=20) as pinned:
            views = await pinned.membership.nodes(
                include_gone=True, consistency=Consistency.STALE, min_revision=revision
            )
        answers.append(
            sorted(
                (v.node.spec.id, v.node.state.name, v.node.mod_revision)
                for v in views
                if v.node.spec.role.name == "AGENT"
            )
        )
    same_everywhere = all(answer == answers[0] for answer in answers)
    live = {v.node.spec.id for v in await admin.membership.nodes(state=NodeState.ACTIVE)}
    expected = {agent.node_id for agent in fleet} | set(joined)
    churned_live = {node_id for node_id in live if node_id.startswith(f"churn-{run}-")}
    latencies.sort()
    line = {
        "scenario": "membership_churn",
        "system": "ours",
        "rate_joins_per_s": rate,
        "rate_leaves_per_s": rate,
        "seconds": round(elapsed, 1),
        "ops": len(latencies),
        "errors": errors,
        "op_p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "op_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "consistent_across_servers": same_everywhere,
        "live_set_as_expected": expected <= live and churned_live == set(joined),
        "elections": (await _leader_term(admin)) - term_before,
        **CpuMeter.cores(before, after),
    }
    return line
