"""Log compaction: the full dump (our RaftDump format, written through pysyncobj's serializer hook)
must carry the whole state, both across a restart and to a follower that fell behind the log."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

import pytest

from controlplane.client import Client
from controlplane.dev import LocalCluster

from .conftest import assert_same_state, followers, running, status, wait_converged, wait_ready, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

# Small enough that a few hundred writes compact the log several times.
COMPACTING = {"raft": {"compaction_min_entries": 40}}


def _write(client: Client, prefix: str, count: int) -> None:
    for i in range(count):
        client.put(f"{prefix}/{i:04d}", f"{prefix}-{i}")
    for i in range(0, count, 5):
        client.delete(f"{prefix}/{i:04d}")


def _dumped(cluster: LocalCluster) -> bool:
    return all((node.data_dir / "raft.dump").exists() for node in running(cluster))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_state_survives_restart_after_log_compaction(make_cluster: Callable[..., LocalCluster], sig: int) -> None:
    cluster = make_cluster(extra_config=COMPACTING)
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        _write(client, "compacted", 300)
    wait_until(lambda: _dumped(cluster), 30, "every server to write a full dump")
    revision = wait_converged(cluster)
    before = assert_same_state(running(cluster), revision)
    assert all(status(node).raft_log_size < 300 for node in running(cluster)), "the log was never compacted"

    for node_id in cluster.nodes:
        cluster.kill(node_id, sig)
    cluster.start()
    wait_ready(cluster)
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        # A barrier of the new leader's term commits every entry before it; until then the servers
        # may agree on the shorter commit index their journals recorded (test_restart.py).
        client.get("compacted/0")
    assert wait_converged(cluster) == revision
    assert assert_same_state(running(cluster), revision) == before
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        assert client.put("compacted/after", b"x").revision == revision + 1
        # The watch history travelled in the dump too: a watch from before the restart resumes.
        events = client.watch("compacted/", from_revision=revision - 5)
        seen = [next(events).revision for _ in range(5)]
        events.close()
    assert seen == list(range(revision - 5, revision))


def test_lagging_follower_catches_up_from_a_transmitted_dump(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(extra_config=COMPACTING)
    leader = cluster.wait_for_leader()
    lagging = followers(cluster, leader)[0]
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        _write(client, "before", 50)
        wait_converged(cluster)
        stopped_at = status(lagging).applied_index
        cluster.kill(lagging.id, signal.SIGTERM)
        # Far more entries than the compaction threshold: the leader's log no longer reaches back
        # to where the stopped follower left off, so only a dump can bring it up to date.
        _write(client, "while-down", 300)
    wait_until(lambda: _dumped(cluster), 30, "the running servers to write a full dump")
    first_kept = min(status(node).applied_index - status(node).raft_log_size for node in running(cluster))
    assert first_kept > stopped_at + 1, "the leader's log still holds the follower's next entry: proves nothing"

    cluster.restart(lagging.id)
    wait_ready(cluster)
    revision = wait_converged(cluster)
    state = assert_same_state(running(cluster), revision)
    assert len([key for key in state if key.startswith("while-down/")]) == 300 - len(range(0, 300, 5))
    loaded = [
        json.loads(line)["index"] for line in lagging.log_path.read_text().splitlines() if '"raft_dump_loaded"' in line
    ]
    assert any(index > stopped_at for index in loaded), f"caught up without a transmitted dump: {loaded}"
