"""The SDK against a real 3-server cluster on loopback (controlplane.dev.LocalCluster).

The fake-server tests pin each SDK behaviour down; this one checks that the SDK and the real servers
agree on the contract, across a leader being killed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.client import (
    AsyncClient,
    Client,
    Consistency,
    EventType,
    InvalidArgument,
    OutOfRange,
    Role,
)
from controlplane.dev import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster"), servers=3) as local:
        local.start()
        local.wait_for_leader()
        yield local


def test_kv_and_status_against_real_servers(cluster: LocalCluster) -> None:
    with Client(cluster.endpoints, credentials=cluster.credentials, timeout=10) as client:
        status = client.status()
        assert status.has_quorum and len(status.members) == 3
        assert status.role in (Role.LEADER, Role.FOLLOWER)
        put = client.put("sdk/a", "one", prev_kv=True)
        assert put.kv.value == b"one" and put.prev_kv is None
        assert client.leader_address == cluster.leader().client_address
        stale = client.get("sdk/a", consistency=Consistency.STALE, min_revision=put.revision)
        assert stale is not None and stale.value == b"one"
        lost = client.compare_and_swap("sdk/a", b"x", expected_mod_revision=put.revision - 1)
        assert not lost.succeeded and lost.kv is not None and lost.kv.value == b"one"
        won = client.compare_and_swap("sdk/a", b"two", expected_mod_revision=put.revision)
        assert won.succeeded and won.kv is not None and won.kv.value == b"two"
        assert [kv.key for kv in client.list("sdk/").kvs] == ["sdk/a"]
        assert client.delete("sdk/a").deleted
        with pytest.raises(InvalidArgument):
            client.put("", b"x")


def test_writes_and_a_watch_survive_killing_the_leader(cluster: LocalCluster) -> None:
    with Client(cluster.endpoints, credentials=cluster.credentials, timeout=15) as client:
        watch = client.watch("kill/", from_revision=client.status().applied_revision + 1)
        seen: list[tuple[str, int, EventType]] = []

        def read() -> None:
            for event in watch:
                seen.append((event.key, event.revision, event.type))
                if event.type is EventType.DELETE:  # the test's last write
                    return

        reader = threading.Thread(target=read)
        reader.start()
        revisions = [client.put(f"kill/{i}", b"v").revision for i in range(5)]
        old_leader = cluster.leader()
        cluster.kill(old_leader.id)
        try:
            # The client finds the new leader by itself: only failures and response headers tell it.
            revisions += [client.put(f"kill/{i}", b"v").revision for i in range(5, 10)]
            assert client.leader_address not in ("", old_leader.client_address)
            last = client.delete("kill/0").revision
            reader.join(30)
        finally:
            watch.close()
            cluster.restart(old_leader.id)
        assert not reader.is_alive()
        # Every write exactly once, in order, none missing, across the failover.
        assert [revision for _, revision, _ in seen] == [*revisions, last]
        assert seen[-1] == ("kill/0", last, EventType.DELETE)


async def test_async_client_snapshot_and_restore(cluster: LocalCluster, tmp_path: Path) -> None:
    async with AsyncClient(cluster.endpoints, credentials=cluster.credentials, timeout=15) as client:
        await client.put("snap/k", b"before")
        info = await client.snapshot(tmp_path / "backup.bin")
        assert info.size == (tmp_path / "backup.bin").stat().st_size > 0
        await client.put("snap/k", b"after")
        restored_at = await client.restore(tmp_path / "backup.bin")
        got = await client.get("snap/k")
        assert got is not None and got.value == b"before"
        # History before a restore is gone: a watch from there says so, with the oldest revision.
        with pytest.raises(OutOfRange) as raised:
            await anext(client.watch(from_revision=1))
        assert 1 < raised.value.oldest_revision <= restored_at + 1
        # The same backup restored again later is restored again (each call has its own request id;
        # only a retry of one call is deduplicated).
        await client.put("snap/k", b"after again")
        again_at = await client.restore(tmp_path / "backup.bin")
        assert again_at > restored_at
        got = await client.get("snap/k")
        assert got is not None and got.value == b"before"
