"""A snapshot chunk must not commit a follower's own entries (found by the fault suite).

pysyncobj raises a follower's commit index to min(leader's commit, its own last index) on every
snapshot chunk, before the snapshot is installed and without log matching. A deposed leader that
had appended writes while it led a minority thereby committed and applied them when the new
leader started sending it a snapshot. ``raft._install_log_matching_fix`` undoes that advance.

Against a real pysyncobj ``SyncObj`` (never ticked, so no socket is opened): its log holds entries
only it has, then a first snapshot chunk arrives from a leader whose commit index is far ahead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pysyncobj import SyncObj, SyncObjConf

from controlplane.server.raft import _install_log_matching_fix

ENTRY = b"\x00entry"  # opaque to this test: never applied


@pytest.fixture
def sync() -> Iterator[Any]:
    """A follower whose log ends with 5 entries of its own (term 5), never ticked."""
    follower = SyncObj("127.0.0.1:1", ["127.0.0.1:2", "127.0.0.1:3"], SyncObjConf(autoTick=False))
    raft_log = follower._SyncObj__raftLog
    follower._SyncObj__raftCurrentTerm = 5
    for _ in range(5):
        raft_log.add(ENTRY, raft_log[-1][1] + 1, 5)
    yield follower
    follower.destroy()


def _chunk(term: int, commit_index: int, last: bool) -> dict[str, Any]:
    return {"type": "append_entries", "term": term, "commit_index": commit_index, "serialized": (b"part", True, last)}


def _deliver(sync: Any, message: dict[str, Any]) -> None:
    transport = sync._SyncObj__transport
    node = next(iter(sync._SyncObj__otherNodes))
    transport._onMessageReceivedCallback(node, message)


def test_pysyncobj_alone_commits_the_followers_own_entries_on_a_chunk(sync: Any) -> None:
    """The defect itself, so that this test notices if a pysyncobj upgrade changes it."""
    before = sync.raftCommitIndex
    sync._SyncObj__onMessageReceived(next(iter(sync._SyncObj__otherNodes)), _chunk(6, 1000, last=False))
    assert sync.raftCommitIndex > before


def test_a_chunk_does_not_commit_entries_the_leader_never_matched(sync: Any) -> None:
    counters = _install_log_matching_fix(sync, lambda: 0)
    before = sync.raftCommitIndex
    _deliver(sync, _chunk(6, 1000, last=False))
    assert sync.raftCommitIndex == before
    assert counters.snapshot_commits_undone == 1
    assert sync.raftCurrentTerm == 6  # the rest of the message took effect: this server follows the new term
