"""Crash tolerance (issue 19): a worker process SIGKILLed mid-training never stops the group. Three
workers in this process and one in a process of its own, against a real 3-server cluster. The dead
worker's lease is long (60 s), so it stays ACTIVE, and eligible, for the whole test: the round it
missed times out at its deadline, and the rounds after it commit without it (all three survivors
reporting) because the coordinator suspends a node that was silent in its last round, not because
its lease ran out. A new process under the same node id is taken back at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from controlplane.client import AsyncClient, NodeState, RoundState
from controlplane.client._gossip import Round
from controlplane.dev import LocalCluster
from gossip import Worker

from .conftest import credentials_env, eventually
from .test_gossip_worker import _ended

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

ROUND_TIMEOUT_S = 3.0
VICTIM_LEASE_TTL_S = 60.0
PROCESS = Path(__file__).with_name("gossip_worker_process.py")
PROBE_BYTES = (4 * 1024, 256 * 1024)


async def test_a_sigkilled_worker_process_never_stops_the_rounds(cluster: LocalCluster) -> None:
    group = f"gc-{secrets.token_hex(3)}"
    survivors = [f"{group}-{k}" for k in "acd"]
    victim = f"{group}-b"
    client = AsyncClient(cluster.client_addresses, credentials=cluster.credentials, timeout=15)
    workers: dict[str, Worker] = {}
    env = credentials_env(cluster) | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [sys.executable, str(PROCESS), ",".join(cluster.client_addresses), group, victim, str(VICTIM_LEASE_TTL_S)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        # The tolerant setting: created paused so that round 1 waits for all four, with a floor of 2.
        await client.gossip.configure_group(
            group,
            [("b", "float64", (3,)), ("w", "float64", (4, 3))],
            round_timeout_s=ROUND_TIMEOUT_S,
            min_participants=2,
            paused=True,
        )
        for node in survivors:
            workers[node] = Worker(
                client, group, node, round_timeout_s=ROUND_TIMEOUT_S, lease_ttl_s=3.0, probe_bytes=PROBE_BYTES
            )
        params = {node: {"b": np.full(3, float(k)), "w": np.full((4, 3), float(k))} for k, node in enumerate(survivors)}
        await asyncio.gather(*(workers[node].start(params[node]) for node in survivors))
        assert process.stdout is not None
        assert await asyncio.to_thread(process.stdout.readline) == "started\n", process.stderr and process.stderr.read()
        await client.gossip.update_group(group, paused=False)

        async def step_all() -> int:
            nonlocal params
            mixed = await asyncio.gather(*(workers[node].step(params[node]) for node in survivors))
            params = dict(zip(survivors, mixed, strict=True))
            numbers = {workers[node].last_round.number for node in survivors}  # type: ignore[union-attr]
            assert len(numbers) == 1
            return numbers.pop()

        # Two training rounds with all four (the victim's process steps in its own loop).
        with_victim = 0
        while with_victim < 2:
            number = await step_all()
            committed = await eventually(partial(_ended, client, group, number), 20, f"round {number} to end")
            if victim in committed.participants and committed.state is RoundState.DONE:
                with_victim += 1

        # SIGKILL mid-training: no deregistration, no last report; its lease keeps it ACTIVE.
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        missed: Round | None = None
        after: list[Round] = []
        while len(after) < 3:
            number = await step_all()
            assert number <= committed.number + 8, "the rounds did not go on without the dead worker"
            ended = await eventually(partial(_ended, client, group, number), 20, f"round {number} to end")
            if missed is None:
                if victim in ended.participants and victim not in ended.reported:
                    assert ended.state is RoundState.TIMED_OUT  # the deadline holds
                    missed = ended
                continue
            # The next rounds do not list the dead worker, and all three survivors report in each.
            assert victim not in ended.participants, f"round {number} listed the dead worker again"
            assert list(ended.participants) == sorted(survivors) and ended.state is RoundState.DONE, ended
            after.append(ended)
        view = await client.membership.get_node(victim)
        assert view.node.state is NodeState.ACTIVE  # still leased: it was suspended, not expired
        for node in survivors:
            stats = workers[node].last_round
            assert stats is not None and stats.ok

        # It comes back (a new process under the same node id registers again, a sign of life): the
        # next rounds list it again, and all four report.
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert process.stdout is not None
        assert await asyncio.to_thread(process.stdout.readline) == "started\n", process.stderr and process.stderr.read()
        while True:
            number = await step_all()
            assert number <= after[-1].number + 6, "the restarted worker was not taken back"
            ended = await eventually(partial(_ended, client, group, number), 20, f"round {number} to end")
            if victim in ended.participants:
                assert ended.state is RoundState.DONE and len(ended.reported) == 4, ended
                break
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        await asyncio.gather(*(w.close() for w in workers.values()), return_exceptions=True)
        with contextlib.suppress(Exception):  # never registered, or gone already
            await client.membership.deregister(victim)
        await client.close()
