"""A follower keeps the entries it holds when an append repeats them (Raft: truncate only on a conflict).

pysyncobj 0.3.17 deletes every entry after an append's prevLogIdx before adding the message's
entries, even when they match and are applied, and logs "truncating already-applied log entries
... state machine may have diverged". A leader resends entries a follower holds after it restarts
or is promoted (the fault suite's member-replace nemesis showed the message on a promoted server).
``raft._install_log_matching_fix`` drops the repeated entries first.

Against a real pysyncobj ``SyncObj`` (never ticked, so no socket is opened), as in
``test_raft_snapshot_commit.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from pysyncobj import SyncObj, SyncObjConf

from controlplane.server.raft import _install_log_matching_fix

ENTRY = b"\x00entry"  # opaque to this test: never applied
OTHER = b"\x00other"
TERM = 5
TRUNCATION_WARNING = "truncating already-applied log entries"


@pytest.fixture
def sync() -> Iterator[Any]:
    """A follower at term 5 whose log ends with 5 entries of term 5, the last 3 applied."""
    follower = SyncObj("127.0.0.1:1", ["127.0.0.1:2", "127.0.0.1:3"], SyncObjConf(autoTick=False))
    raft_log = follower._SyncObj__raftLog
    follower._SyncObj__raftCurrentTerm = TERM
    for _ in range(5):
        raft_log.add(ENTRY, raft_log[-1][1] + 1, TERM)
    follower._SyncObj__raftLastApplied = raft_log[-1][1] - 2
    yield follower
    follower.destroy()


def _log(sync: Any) -> list[tuple[bytes, int, int]]:
    return [tuple(entry) for entry in sync._SyncObj__raftLog[0:]]


def _last_index(sync: Any) -> int:
    return int(sync._SyncObj__raftLog[-1][1])


def _append(prev_index: int, entries: list[tuple[bytes, int, int]], term: int = TERM) -> dict[str, Any]:
    return {
        "type": "append_entries",
        "term": term,
        "commit_index": 0,
        "prevLogIdx": prev_index,
        "prevLogTerm": TERM,
        "entries": entries,
    }


def _deliver(sync: Any, message: dict[str, Any]) -> list[dict[str, Any]]:
    """Hand ``message`` to the follower; what it sent back (its ack)."""
    transport = sync._SyncObj__transport
    node = next(iter(sync._SyncObj__otherNodes))
    sent: list[dict[str, Any]] = []
    transport.send = lambda _node, answer: sent.append(answer) or True
    transport._onMessageReceivedCallback(node, message)
    return sent


def _repeat_and_extend(sync: Any, new: int) -> list[tuple[bytes, int, int]]:
    """The follower's last 4 entries again, then ``new`` entries it does not have."""
    last = _last_index(sync)
    return [(ENTRY, index, TERM) for index in range(last - 3, last + 1)] + [
        (OTHER, last + i, TERM) for i in range(1, new + 1)
    ]


def test_pysyncobj_alone_truncates_applied_entries_that_match(sync: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The defect itself, so that this test notices if a pysyncobj upgrade changes it."""
    last = _last_index(sync)
    with caplog.at_level(logging.CRITICAL):
        sync._SyncObj__onMessageReceived(
            next(iter(sync._SyncObj__otherNodes)), _append(last - 4, _repeat_and_extend(sync, 2))
        )
    assert TRUNCATION_WARNING in caplog.text


def test_an_append_that_repeats_held_entries_appends_only_the_new_ones(
    sync: Any, caplog: pytest.LogCaptureFixture
) -> None:
    counters = _install_log_matching_fix(sync, lambda: 0)
    before = _log(sync)
    last = before[-1][1]
    with caplog.at_level(logging.CRITICAL):
        sent = _deliver(sync, _append(last - 4, _repeat_and_extend(sync, 2)))
    assert TRUNCATION_WARNING not in caplog.text
    assert _log(sync) == [*before, (OTHER, last + 1, TERM), (OTHER, last + 2, TERM)]
    assert counters.repeated_entries_dropped == 1
    assert [(m["type"], m["success"], m["next_node_idx"]) for m in sent] == [("next_node_idx", True, last + 3)]


def test_an_append_from_a_newer_term_that_repeats_and_extends_appends_only_the_new_ones(sync: Any) -> None:
    """Every entry the follower holds after prevLogIdx is checked against the message, so the
    sender's term does not matter; the follower takes the new term."""
    counters = _install_log_matching_fix(sync, lambda: 0)
    before = _log(sync)
    last = before[-1][1]
    extension = [*_repeat_and_extend(sync, 0), (OTHER, last + 1, TERM + 1)]
    sent = _deliver(sync, _append(last - 4, extension, term=TERM + 1))
    assert _log(sync) == [*before, (OTHER, last + 1, TERM + 1)]
    assert sync.raftCurrentTerm == TERM + 1
    assert counters.repeated_entries_dropped == 1
    assert [(m["success"], m["next_node_idx"]) for m in sent] == [(True, last + 2)]


def test_an_append_that_repeats_only_held_entries_is_a_heartbeat(sync: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Even when the follower's last entry is from an older term than the sender's: every entry
    after prevLogIdx was checked against the message."""
    counters = _install_log_matching_fix(sync, lambda: 0)
    before = _log(sync)
    with caplog.at_level(logging.CRITICAL):
        sent = _deliver(sync, _append(before[-1][1] - 4, _repeat_and_extend(sync, 0), term=TERM + 1))
    assert TRUNCATION_WARNING not in caplog.text
    assert _log(sync) == before
    assert counters.repeated_entries_dropped == 1
    assert [(m["success"], m["next_node_idx"]) for m in sent] == [(True, before[-1][1] + 1)]


def test_a_conflicting_entry_still_truncates(sync: Any) -> None:
    """An entry of another term at an index the follower holds: Raft truncates from there."""
    counters = _install_log_matching_fix(sync, lambda: 0)
    before = _log(sync)
    last = before[-1][1]
    sync._SyncObj__raftLastApplied = last - 4  # nothing the conflict replaces was applied
    conflicting = [(ENTRY, last - 3, TERM), (OTHER, last - 2, TERM + 1)]
    _deliver(sync, _append(last - 4, conflicting, term=TERM + 1))
    assert _log(sync) == [*before[:-3], (OTHER, last - 2, TERM + 1)]
    assert counters.repeated_entries_dropped == 0


def test_a_short_append_from_a_newer_term_leaves_older_entries_to_pysyncobj(sync: Any) -> None:
    """It ends before the follower's last entry, which is from an older term: whether those later
    entries match the new leader's log is unknown, so the append is not turned into a heartbeat."""
    counters = _install_log_matching_fix(sync, lambda: 0)
    last = _last_index(sync)
    sync._SyncObj__raftLastApplied = last - 4
    _deliver(sync, _append(last - 4, [(ENTRY, last - 3, TERM)], term=TERM + 1))
    assert _last_index(sync) == last - 3
    assert counters.repeated_entries_dropped == 0
