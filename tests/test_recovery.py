"""``recovery.force_new_cluster`` on a data directory, without Raft running (the processes:
tests/cluster/test_recovery.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from controlplane.dev import free_port
from controlplane.server.config import ConfigError, Peer, ServerConfig
from controlplane.server.journal import DurableJournal, write_file_atomically
from controlplane.server.raft_codec import NO_OP_COMMAND, _membership_command
from controlplane.server.recovery import configuration, force_new_cluster, forced_cluster
from controlplane.v1 import storage_pb2

ME = "127.0.0.1:7201"


def _config(tmp_path: Path, peers: tuple[Peer, ...]) -> ServerConfig:
    return ServerConfig(
        node_id="n1",
        client_address="127.0.0.1:7101",
        raft_address=ME,
        metrics_address="",
        data_dir=tmp_path / "n1",
        insecure_dev=True,
        peers=peers,
    )


def _peer(node_id: str, port: int) -> Peer:
    return Peer(node_id, f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}")


def _journal(config: ServerConfig, entries: list[tuple[bytes, int, int]], commit: int) -> None:
    config.data_dir.mkdir(parents=True)
    journal = DurableJournal(config.journal_file)
    for entry in entries:
        journal.add(*entry)
    journal.setRaftCommitIndex(commit)
    journal.close()


def _entries(config: ServerConfig) -> tuple[list[tuple[bytes, int, int]], int]:
    journal = DurableJournal(config.journal_file)
    try:
        return list(journal[:]), journal.getRaftCommitIndex()
    finally:
        journal.close()


def test_the_survivor_becomes_the_only_voter_with_its_whole_log(tmp_path: Path) -> None:
    n2, n3, n4 = (_peer(f"n{i}", free_port()) for i in (2, 3, 4))
    config = _config(tmp_path, (n2, n3))
    add_n4 = _membership_command("add", n4.raft_address)
    remove_n3 = _membership_command("rem", n3.raft_address)
    entries = [
        (NO_OP_COMMAND, 1, 1),
        (b"\x00a call", 2, 1),
        (add_n4, 3, 1),
        (b"\x00another", 4, 2),
        (remove_n3, 5, 2),
        (b"\x00uncommitted here", 6, 2),
    ]
    _journal(config, entries, commit=4)
    journal = DurableJournal(config.journal_file)
    try:
        assert configuration(config, journal) == {ME, n2.raft_address, n4.raft_address}
    finally:
        journal.close()

    forced = force_new_cluster(config, probe_timeout=0.2)

    assert sorted(forced.old_voters) == sorted([n2.raft_address, n4.raft_address])
    assert (forced.last_index, forced.membership_entries) == (6, 2)
    kept, commit = _entries(config)
    assert commit == 6, "every entry of the survivor's log is applied"
    assert [(index, term) for _, index, term in kept] == [(index, term) for _, index, term in entries]
    assert [command for command, _, _ in kept] == [
        NO_OP_COMMAND,
        b"\x00a call",
        NO_OP_COMMAND,
        b"\x00another",
        NO_OP_COMMAND,
        b"\x00uncommitted here",
    ]
    assert forced_cluster(config) and config.voter_marker_file.exists()
    assert json.loads((config.data_dir / "raft.forced").read_text())["old_voters"] == list(forced.old_voters)
    journal = DurableJournal(config.journal_file)
    try:
        assert configuration(config, journal) == {ME}, "the old --peer flags no longer count"
    finally:
        journal.close()


def test_the_dump_member_list_becomes_the_survivor_alone(tmp_path: Path) -> None:
    n2, n3, n4 = (_peer(f"n{i}", free_port()) for i in (2, 3, 4))
    config = _config(tmp_path, ())
    add_n4 = _membership_command("add", n4.raft_address)
    _journal(config, [(add_n4, 7, 1), (b"\x00x", 8, 1), (b"\x00y", 9, 1)], commit=8)
    dump = storage_pb2.RaftDump(
        state=b"state",
        last_applied=storage_pb2.RaftEntry(data=b"\x00x", index=8, term=1),
        previous=storage_pb2.RaftEntry(data=add_n4, index=7, term=1),
        cluster=sorted([ME, n2.raft_address, n3.raft_address]),
    )
    write_file_atomically(config.dump_file, dump.SerializeToString())

    forced = force_new_cluster(config, probe_timeout=0.2)

    assert sorted(forced.old_voters) == sorted([n2.raft_address, n3.raft_address])
    rewritten = storage_pb2.RaftDump.FromString(config.dump_file.read_bytes())
    assert list(rewritten.cluster) == [ME]
    assert rewritten.state == b"state" and rewritten.last_applied.index == 8
    # The journal still starts with the dump's two entries, byte for byte: pysyncobj keeps it.
    kept, commit = _entries(config)
    assert kept[:2] == [
        (rewritten.previous.data, rewritten.previous.index, rewritten.previous.term),
        (rewritten.last_applied.data, rewritten.last_applied.index, rewritten.last_applied.term),
    ]
    assert kept[2] == (b"\x00y", 9, 1) and commit == 9


@pytest.mark.parametrize("listening", [1, 2])
def test_refused_while_another_voter_listens_and_nothing_changes(tmp_path: Path, listening: int) -> None:
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(listening)]
    try:
        peers = [_peer(f"n{i + 2}", s.getsockname()[1]) for i, s in enumerate(sockets)]
        peers += [_peer(f"n{i + 2}", free_port()) for i in range(len(peers), 4)]  # five voters
        config = _config(tmp_path, tuple(peers))
        entries = [(NO_OP_COMMAND, 1, 1), (b"\x00a call", 2, 1)]
        _journal(config, entries, commit=1)
        with pytest.raises(ConfigError, match="still listens at") as refused:
            force_new_cluster(config, probe_timeout=0.5)
        # 1 + 1 of 5 is no majority: stop the other one first; 1 + 2 of 5 is: the quorum is there.
        assert ("has its" in str(refused.value)) == (listening == 2)
    finally:
        for s in sockets:
            s.close()
    assert _entries(config) == (entries, 1)
    assert not forced_cluster(config) and not config.voter_marker_file.exists()


def test_refused_without_a_journal(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no Raft journal"):
        force_new_cluster(_config(tmp_path, ()))
