"""Power cuts, simulated on real servers: every acknowledged write survives losing every unsynced byte.

``CP_TEST_POWER_CUT=1`` makes each server's journal record, after every fdatasync, how much of
the file was synced. After ``kill -9`` of all three servers mid-load, ``simulate_power_cut``
truncates each journal to that size: what a machine that lost power would find on its disk
(the page cache gone, the synced bytes kept). Full dumps are written atomically (temp file,
fsync, rename), so a cut never leaves half a dump. Then the cluster restarts and every write
any client saw acknowledged must be there, on every server.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import pytest

from controlplane.client import AsyncClient, Client, ControlPlaneError
from controlplane.dev import LocalCluster
from controlplane.server.journal import simulate_power_cut

from .conftest import assert_same_state, cpctl, credentials_for, running, wait_converged, wait_ready

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

WRITERS = 8


async def _write_until_stopped(endpoints: list[str], writer: int, acked: dict[str, bytes], stop: asyncio.Event) -> None:
    async with AsyncClient(endpoints, timeout=5, credentials=credentials_for(endpoints[0])) as client:
        sequence = 0
        while not stop.is_set():
            key, value = f"cut/{writer}/{sequence:06d}", f"{writer}-{sequence}".encode()
            try:
                await client.put(key, value)
            except ControlPlaneError:
                return  # the servers are gone: only what was acknowledged before counts
            acked[key] = value
            sequence += 1


async def _load_then_cut(cluster: LocalCluster) -> tuple[dict[str, bytes], dict[str, int]]:
    """Writers running, kill -9 of every server at once, every journal cut to its synced size.
    Returns the acknowledged writes and the bytes each cut dropped."""
    acked: dict[str, bytes] = {}
    stop = asyncio.Event()
    writers = [
        asyncio.ensure_future(_write_until_stopped(cluster.client_addresses, i, acked, stop)) for i in range(WRITERS)
    ]
    while len(acked) < 400:  # the load is running: cut in the middle of it
        await asyncio.sleep(0.05)
    for node in running(cluster):  # all at once, mid-write: no server gets to sync on the way out
        assert node.pid is not None
        os.kill(node.pid, signal.SIGKILL)
    stop.set()
    await asyncio.gather(*writers, return_exceptions=True)
    for node in cluster.nodes.values():
        cluster.kill(node.id)
    dropped = {node.id: simulate_power_cut(node.data_dir / "raft.wal") for node in cluster.nodes.values()}
    return acked, dropped


async def test_acknowledged_writes_survive_a_power_cut_of_every_server(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(extra_env={"CP_TEST_POWER_CUT": "1"})
    acked, dropped = await _load_then_cut(cluster)
    for node in cluster.nodes.values():
        cluster.restart(node.id)
    wait_ready(cluster, timeout=60)

    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=30) as client:
        missing = [key for key, value in acked.items() if (kv := client.get(key)) is None or kv.value != value]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged writes lost (bytes cut: {dropped}): {missing[:5]}"
    revision = wait_converged(cluster, timeout=30)
    state = assert_same_state(running(cluster), revision, prefix="cut/")
    assert set(acked) <= set(state)
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=30) as client:
        assert client.put("cut/after", b"ok").revision > revision


async def test_the_simulated_cut_does_lose_what_was_never_synced(make_cluster: Callable[..., LocalCluster]) -> None:
    """The control: with durability = "none" the same cut drops acknowledged entries from every
    journal, so the test above would see a journal that syncs too late."""
    cluster = make_cluster(extra_env={"CP_TEST_POWER_CUT": "1"}, extra_config={"durability": "none"})
    shown = cpctl(cluster, "cluster", "status")
    assert shown.returncode == 0, shown.stderr
    assert "durability none" in shown.stdout and "WARNING" in shown.stderr and "power cut" in shown.stderr
    acked, dropped = await _load_then_cut(cluster)
    assert len(acked) >= 400
    assert all(size > 0 for size in dropped.values()), dropped
