"""Cluster.Snapshot to a file and Cluster.Restore from it; damaged files change nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest

from controlplane.client import Client, InvalidArgument, KeyValue, OutOfRange
from controlplane.dev import LocalCluster
from controlplane.v1 import cluster_pb2

from .conftest import assert_same_state, channel, cluster_stub, list_all, running, wait_converged

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

PREFIX = "backup/"
# A word the INVALID_ARGUMENT message must contain for each kind of damage.
EXPECTED_WORD = {
    "garbage": "backup",
    "empty": "backup",
    "truncated": "backup",
    "wrong-format-version": "version",
    "checksummed-garbage-state": "snapshot",
    "bit-flip-in-a-value": "checksum",
}


def _write_keys(client: Client) -> None:
    for i in range(50):
        client.put(f"{PREFIX}{i:03d}", f"original-{i}")
    client.put(f"{PREFIX}blob", bytes(range(256)) * 64)


def _damaged_variants(data: bytes) -> dict[str, bytes]:
    backup = cluster_pb2.Backup.FromString(data)
    wrong_version = cluster_pb2.Backup()
    wrong_version.CopyFrom(backup)
    wrong_version.format_version = 99
    # A checksum that matches, over a state that is not a snapshot: the checksum alone is not trusted.
    unparsable = cluster_pb2.Backup()
    unparsable.CopyFrom(backup)
    unparsable.state = b"\xff\xff not a state snapshot"
    unparsable.state_sha256 = hashlib.sha256(unparsable.state).hexdigest()
    # Flip one byte inside a stored value: the file still parses as protobuf.
    at = data.index(b"original-17") + len(b"original-")
    flipped = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
    return {
        "garbage": b"\xff\x00 this is not a backup \x00\xff" * 10,
        "empty": b"",
        "truncated": data[: len(data) // 2 + 3],
        "wrong-format-version": wrong_version.SerializeToString(),
        "checksummed-garbage-state": unparsable.SerializeToString(),
        "bit-flip-in-a-value": flipped,
    }


def _state(client: Client) -> dict[str, KeyValue]:
    return list_all(client, PREFIX)


def test_snapshot_then_restore_brings_keys_back(cluster: LocalCluster, tmp_path: Path) -> None:
    backup = tmp_path / "backup.cpsnap"
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        _write_keys(client)
        before = _state(client)
        info = client.snapshot(backup)
        assert info.size == backup.stat().st_size
        assert info.sha256 == hashlib.sha256(backup.read_bytes()).hexdigest()
        assert info.revision >= max(kv.mod_revision for kv in before.values())

        # Change, delete and add keys after the backup.
        for i in range(0, 50, 2):
            client.put(f"{PREFIX}{i:03d}", b"changed")
        for i in range(1, 50, 5):
            client.delete(f"{PREFIX}{i:03d}")
        client.put(f"{PREFIX}added-later", b"new")
        last_write = client.delete(f"{PREFIX}blob").revision
        assert _state(client) != before

        restored_at = client.restore(backup)
        assert restored_at > last_write, "a restore is a new revision, never a step back"
        assert _state(client) == before, "the restored keys must be exactly those of the backup"

    # Invariant: every server applied the restore and holds the same state.
    revision = wait_converged(cluster)
    assert revision >= restored_at
    assert {k: v for k, v in assert_same_state(running(cluster), revision).items() if k.startswith(PREFIX)} == before


@pytest.mark.parametrize(
    "damage",
    ["garbage", "empty", "truncated", "wrong-format-version", "checksummed-garbage-state", "bit-flip-in-a-value"],
)
def test_damaged_backup_is_invalid_argument_and_changes_nothing(
    cluster: LocalCluster, tmp_path: Path, damage: str
) -> None:
    good = tmp_path / "good.cpsnap"
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        _write_keys(client)
        client.snapshot(good)
        bad = tmp_path / f"{damage}.cpsnap"
        bad.write_bytes(_damaged_variants(good.read_bytes())[damage])
        client.put(f"{PREFIX}after-backup", b"kept")
        fence = client.put(f"{PREFIX}fence", b"1").revision
        before = _state(client)

        with pytest.raises(InvalidArgument) as caught:
            client.restore(bad)
        assert EXPECTED_WORD[damage] in caught.value.message.lower(), caught.value.message

        # Nothing reached the log: the next write is the very next revision; every key is as it was.
        assert client.put(f"{PREFIX}fence", b"2").revision == fence + 1, "the failed restore wrote something"
        after = _state(client)
        assert after.pop(f"{PREFIX}fence").version == before.pop(f"{PREFIX}fence").version + 1
        assert after == before


def test_restore_with_a_checksum_mismatch_is_invalid_argument(cluster: LocalCluster, tmp_path: Path) -> None:
    """The sha256 announced in the first chunk guards the transfer: a stream whose bytes do not match it
    (sent by a raw client; the SDK always computes it) is refused."""
    backup = tmp_path / "backup.cpsnap"
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        client.put(f"{PREFIX}sha", b"1")
        client.snapshot(backup)
        fence = client.put(f"{PREFIX}sha", b"2").revision
    data = backup.read_bytes()
    chunks = [cluster_pb2.SnapshotChunk(data=data, total_bytes=len(data), sha256="0" * 64)]
    with channel(cluster.client_addresses[0]) as ch, pytest.raises(grpc.RpcError) as caught:
        cluster_stub(ch).Restore(iter(chunks), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sha256" in caught.value.details()
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        kv = client.get(f"{PREFIX}sha")
        assert kv is not None and kv.value == b"2" and kv.mod_revision == fence


def test_restore_ends_open_watches_with_out_of_range(cluster: LocalCluster, tmp_path: Path) -> None:
    """A restore swaps the whole key space in one revision; a watcher must learn it has to re-read
    (OUT_OF_RANGE) rather than miss the swap silently."""
    backup = tmp_path / "backup.cpsnap"
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        client.put(f"{PREFIX}watched", b"1")
        client.snapshot(backup)
        start = client.put(f"{PREFIX}watched", b"2").revision
        with client.watch(PREFIX, from_revision=start) as watch:
            first = next(watch)
            assert first.revision == start
            restored_at = client.restore(backup)
            with pytest.raises(OutOfRange) as caught:
                next(watch)
        assert caught.value.oldest_revision > restored_at
        kv = client.get(f"{PREFIX}watched")
        assert kv is not None and kv.value == b"1"
        # Watching again from the restore's revision + 1 works.
        put = client.put(f"{PREFIX}watched", b"3")
        with client.watch(PREFIX, from_revision=restored_at + 1) as watch:
            event = next(watch)
        assert (event.revision, event.kv and event.kv.value) == (put.revision, b"3")
