"""The durable Raft journal (controlplane/server/journal.py).

The model test drives it and pysyncobj's ``MemoryJournal`` (the reference semantics) with the same
random operations, reopening from disk - cleanly, or after a kill -9 plus a simulated power cut -
along the way: after a clean reopen the state is the model's, after a power cut it is the model's
as of the last sync. The rest pin down what a random walk reaches only by luck: torn tails,
corruption in the middle, compaction, migration from pysyncobj's ``FileJournal``, and the
fdatasync count that group commit promises.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from pysyncobj.journal import FileJournal, MemoryJournal
from structlog.testing import capture_logs

from controlplane.server.config import ConfigError
from controlplane.server.journal import (
    FILE_HEADER_SIZE,
    DurableJournal,
    JournalCorrupt,
    migrate_legacy_journal,
    simulate_power_cut,
    synced_size_path,
    write_file_atomically,
)

UINT64 = st.integers(0, 2**64 - 1)
# Record sizes, from the format in journal.py's docstring: header 9 bytes, APPEND adds index + term.
RECORD_HEADER = 9
APPEND_OVERHEAD = RECORD_HEADER + 16


def clamp_commit(commit: int, entries: list[tuple[bytes, int, int]]) -> int:
    """What a reopened journal reports: the commit index never beyond the last entry present."""
    return min(commit, entries[-1][1] if entries else 1)


class JournalVsMemoryJournal(RuleBasedStateMachine):
    """Random operations on both journals; reopen from disk now and then, with or without a power cut."""

    @initialize(
        write_buffer_bytes=st.sampled_from([0, 100, 1 << 20]),
        compact_min_bytes=st.sampled_from([0, 300, 1 << 30]),
    )
    def open_journal(self, write_buffer_bytes: int, compact_min_bytes: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="journal-test-"))
        self.path = self.dir / "raft.wal"
        self.options = {
            "record_synced_size": True,
            "write_buffer_bytes": write_buffer_bytes,
            "compact_min_bytes": compact_min_bytes,
        }
        self.journal = DurableJournal(self.path, **self.options)  # type: ignore[arg-type]
        self.model = MemoryJournal()
        self.commit = 1
        self.durable = self.snapshot()

    def teardown(self) -> None:
        if not hasattr(self, "journal"):
            return
        try:
            # Every sequence ends with a clean reopen: all that was synced must come back.
            self.reopen()
            self.check_state()
        finally:
            self.journal.close(sync=False)
            shutil.rmtree(self.dir, ignore_errors=True)

    def snapshot(self) -> tuple[list[tuple[bytes, int, int]], int, str | None, int]:
        return list(self.model[:]), self.model.getCurrentTerm(), self.model.getVotedForNodeId(), self.commit

    def restore_model(self, state: tuple[list[tuple[bytes, int, int]], int, str | None, int]) -> None:
        entries, term, voted_for, commit = state
        self.model = MemoryJournal()
        for entry in entries:
            self.model.add(*entry)
        self.model.setCurrentTerm(term, voted_for)
        self.commit = clamp_commit(commit, entries)
        self.durable = self.snapshot()

    def reopen(self) -> None:
        self.journal._destroy()
        self.journal = DurableJournal(self.path, **self.options)  # type: ignore[arg-type]
        self.restore_model(self.snapshot())

    # ---------------------------------------------------------------- operations

    @rule(command=st.binary(max_size=40), idx=UINT64, term=UINT64)
    def add(self, command: bytes, idx: int, term: int) -> None:
        self.journal.add(command, idx, term)
        self.model.add(command, idx, term)

    @rule()
    def clear(self) -> None:
        self.journal.clear()
        self.model.clear()

    @rule(position=st.integers(-8, 30))
    def delete_entries_from(self, position: int) -> None:
        self.journal.deleteEntriesFrom(position)
        self.model.deleteEntriesFrom(position)

    @rule(position=st.integers(-8, 30))
    def delete_entries_to(self, position: int) -> None:
        self.journal.deleteEntriesTo(position)
        self.model.deleteEntriesTo(position)

    @rule(term=UINT64, voted_for=st.none() | st.text(max_size=12))
    def set_current_term(self, term: int, voted_for: str | None) -> None:
        self.journal.setCurrentTerm(term, voted_for)
        self.model.setCurrentTerm(term, voted_for)
        # setCurrentTerm syncs: everything so far is durable.
        assert not self.journal.dirty
        self.durable = self.snapshot()

    @rule(index=UINT64)
    def set_commit_index(self, index: int) -> None:
        self.journal.setRaftCommitIndex(index)
        self.commit = index

    @rule()
    def sync(self) -> None:
        # A sync with no record to write is a no-op: a commit index set since rides along with the
        # next record only (it saves replay work, and must not cost an fdatasync of its own).
        wrote = self.journal.dirty
        self.journal.sync()
        assert not self.journal.dirty
        if wrote:
            self.durable = self.snapshot()

    @rule(start=st.none() | st.integers(-30, 30), stop=st.none() | st.integers(-30, 30))
    def read_slice(self, start: int | None, stop: int | None) -> None:
        assert self.journal[start:stop] == self.model[start:stop]

    @rule()
    def clean_reopen(self) -> None:
        self.reopen()

    @rule()
    def kill_and_power_cut(self) -> None:
        self.journal.close(sync=False)
        simulate_power_cut(self.path)
        self.journal = DurableJournal(self.path, **self.options)  # type: ignore[arg-type]
        self.restore_model(self.durable)

    # ---------------------------------------------------------------- the comparison

    @invariant()
    def check_state(self) -> None:
        assert len(self.journal) == len(self.model)
        assert self.journal[:] == self.model[:]
        if len(self.model):
            assert self.journal[0] == self.model[0]
            assert self.journal[-1] == self.model[-1]
        assert self.journal.getCurrentTerm() == self.model.getCurrentTerm()
        assert self.journal.getVotedForNodeId() == self.model.getVotedForNodeId()
        assert self.journal.getRaftCommitIndex() == self.commit


JournalVsMemoryJournal.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
TestJournalVsMemoryJournal = JournalVsMemoryJournal.TestCase


# -------------------------------------------------------------------- durability


def test_term_and_vote_survive_a_power_cut_without_any_other_sync(tmp_path: Path) -> None:
    path = tmp_path / "raft.wal"
    journal = DurableJournal(path, record_synced_size=True, write_buffer_bytes=0)
    journal.add(b"before", 1, 1)
    journal.setCurrentTerm(7, "n2")
    # Written to the file (write_buffer_bytes=0) but never synced: a power cut takes it.
    journal.add(b"after", 2, 7)
    journal.close(sync=False)

    assert simulate_power_cut(path) == APPEND_OVERHEAD + len(b"after")
    reopened = DurableJournal(path)
    assert reopened.getCurrentTerm() == 7
    assert reopened.getVotedForNodeId() == "n2"
    # The term's sync covered the append buffered before it.
    assert reopened[:] == [(b"before", 1, 1)]
    reopened.close()


@pytest.mark.parametrize("write_buffer_bytes", [0, 1 << 20])
def test_unsynced_appends_are_lost_in_a_power_cut_and_synced_ones_kept(tmp_path: Path, write_buffer_bytes: int) -> None:
    path = tmp_path / "raft.wal"
    journal = DurableJournal(path, record_synced_size=True, write_buffer_bytes=write_buffer_bytes)
    journal.add(b"a" * 10, 1, 1)
    journal.add(b"b" * 10, 2, 1)
    journal.setRaftCommitIndex(2)
    journal.sync()
    journal.add(b"c" * 10, 3, 1)
    journal.add(b"d" * 10, 4, 1)
    journal.setRaftCommitIndex(4)
    assert journal.dirty
    journal.close(sync=False)

    dropped = simulate_power_cut(path)
    # Written but unsynced bytes are dropped from the file; buffered ones never reached it (nor
    # did the commit index 4: it is written with the next records or sync, never on its own).
    assert dropped == (2 * (APPEND_OVERHEAD + 10) if write_buffer_bytes == 0 else 0)
    reopened = DurableJournal(path)
    assert reopened[:] == [(b"a" * 10, 1, 1), (b"b" * 10, 2, 1)]
    assert reopened.getRaftCommitIndex() == 2
    reopened.close()


def test_power_cut_inside_a_record_is_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "raft.wal"
    journal = DurableJournal(path, record_synced_size=True, write_buffer_bytes=0)
    journal.add(b"kept", 1, 1)
    journal.sync()
    synced = path.stat().st_size
    journal.add(b"torn", 2, 1)
    journal.close(sync=False)
    # As if the disk had persisted half of the second record's sectors.
    synced_size_path(path).write_bytes((synced + 5).to_bytes(8, "little"))

    assert simulate_power_cut(path) == APPEND_OVERHEAD + 4 - 5
    with capture_logs() as logs:
        reopened = DurableJournal(path)
    assert reopened[:] == [(b"kept", 1, 1)]
    assert path.stat().st_size == synced
    assert [entry["event"] for entry in logs] == ["journal_torn_tail_dropped"]
    reopened.close()


def test_one_fdatasync_per_batch_and_none_when_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = DurableJournal(tmp_path / "raft.wal")
    calls: list[int] = []
    real_fdatasync = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", counting)

    assert not journal.dirty
    for i in range(1000):
        journal.add(b"x" * 200, i + 1, 1)
    journal.setRaftCommitIndex(1000)
    assert journal.dirty
    journal.sync()
    assert len(calls) == 1
    journal.sync()
    journal.setRaftCommitIndex(1000)  # unchanged: nothing to write
    journal.sync()
    assert len(calls) == 1
    assert not journal.dirty
    journal.close()


def test_an_advancing_commit_index_alone_never_costs_a_sync(tmp_path: Path) -> None:
    """Every write moves every server's commit index: were it a record of its own, each write would
    cost each server a second fdatasync. It is written with the next records, or by sync()."""
    path = tmp_path / "raft.wal"
    journal = DurableJournal(path)
    journal.add(b"a", 1, 1)
    journal.sync()
    journal.setRaftCommitIndex(1)  # the same: nothing changes
    journal.setRaftCommitIndex(2)
    assert not journal.dirty
    assert journal.begin_sync() is None  # what the pipelined group commit asks
    journal.add(b"b", 2, 1)
    started = journal.begin_sync()
    assert started is not None
    fd, size = started
    os.fdatasync(fd)
    os.close(fd)
    journal.finish_sync(size)
    journal.close(sync=False)
    reopened = DurableJournal(path)
    assert reopened.getRaftCommitIndex() == 2  # rode along with entry 2
    reopened.close()


def test_fsync_off_writes_without_fdatasync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "raft.wal"
    calls: list[int] = []
    monkeypatch.setattr(os, "fdatasync", calls.append)
    journal = DurableJournal(path, fsync=False)
    journal.add(b"x", 1, 1)
    journal.setCurrentTerm(2, None)
    journal.sync()
    assert not journal.dirty
    journal.close()
    assert calls == []
    reopened = DurableJournal(path, fsync=False)
    assert reopened[:] == [(b"x", 1, 1)]
    assert reopened.getCurrentTerm() == 2
    reopened.close()


def test_a_failed_fdatasync_fails_every_later_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = DurableJournal(tmp_path / "raft.wal")
    journal.add(b"x", 1, 1)

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(OSError, match="Input/output error"):
        journal.sync()
    monkeypatch.undo()
    # A retried fsync can report success for pages the kernel already dropped: never trust it.
    with pytest.raises(OSError, match="restart the server"):
        journal.sync()
    journal.close()


# -------------------------------------------------------------------- recovery


def write_three(path: Path) -> list[int]:
    """Three synced entries; returns the byte offset of each record."""
    journal = DurableJournal(path)
    offsets = []
    for i in range(3):
        offsets.append(path.stat().st_size)
        journal.add(bytes([65 + i]) * 20, i + 1, 1)
        journal.sync()
    journal.close()
    return offsets


@pytest.mark.parametrize("cut", [1, 5, RECORD_HEADER, APPEND_OVERHEAD + 19])
def test_torn_tail_is_dropped_and_the_journal_carries_on(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "raft.wal"
    offsets = write_three(path)
    os.truncate(path, path.stat().st_size - cut)

    with capture_logs() as logs:
        journal = DurableJournal(path)
    assert journal[:] == [(b"A" * 20, 1, 1), (b"B" * 20, 2, 1)]
    assert path.stat().st_size == offsets[2]
    assert logs[0]["event"] == "journal_torn_tail_dropped"
    assert logs[0]["offset"] == offsets[2]
    journal.add(b"D", 3, 2)
    journal.close()
    assert DurableJournal(path)[-1] == (b"D", 3, 2)


def test_last_record_with_a_bad_checksum_is_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "raft.wal"
    offsets = write_three(path)
    with path.open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0x01]))

    journal = DurableJournal(path)
    assert len(journal) == 2
    assert path.stat().st_size == offsets[2]
    journal.close()


def test_zero_filled_tail_is_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "raft.wal"
    write_three(path)
    size = path.stat().st_size
    with path.open("ab") as f:
        f.write(b"\0" * 4096)  # blocks a filesystem allocated but never wrote

    journal = DurableJournal(path)
    assert len(journal) == 3
    assert path.stat().st_size == size
    journal.close()


@pytest.mark.parametrize(
    ("record", "byte", "what"),
    [
        (0, RECORD_HEADER + 16 + 3, "checksum"),  # inside the first command
        (1, 4, "checksum"),  # the second record's CRC field
        (1, 8, "impossible"),  # the second record's type
        (0, 3, "impossible"),  # the first record's length, high byte: > MAX_RECORD_PAYLOAD
    ],
)
def test_corruption_in_the_middle_refuses_to_start(tmp_path: Path, record: int, byte: int, what: str) -> None:
    path = tmp_path / "raft.wal"
    offsets = write_three(path)
    before = path.read_bytes()
    damaged = bytearray(before)
    damaged[offsets[record] + byte] ^= 0x80
    path.write_bytes(bytes(damaged))

    with pytest.raises(JournalCorrupt) as caught:
        DurableJournal(path)
    message = str(caught.value)
    assert isinstance(caught.value, ConfigError)  # the server's clean start failure
    assert str(path) in message
    assert f"byte offset {offsets[record]}" in message
    assert what in message
    assert "cpctl cluster members add" in message
    # Nothing is "repaired" away: the operator gets the file as it was.
    assert path.read_bytes() == bytes(damaged)


def test_a_file_that_is_not_a_journal_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "raft.wal"
    path.write_bytes(b"something else entirely")
    with pytest.raises(JournalCorrupt, match="byte offset 0"):
        DurableJournal(path)


def test_a_legacy_journal_at_the_new_path_names_the_migration(tmp_path: Path) -> None:
    path = tmp_path / "raft.wal"
    legacy = FileJournal(str(path))
    legacy.add(b"x", 1, 1)
    legacy._destroy()
    with pytest.raises(JournalCorrupt, match="migrate_legacy_journal"):
        DurableJournal(path)


# -------------------------------------------------------------------- compaction


def test_compaction_rewrite_keeps_the_state_and_shrinks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "raft.wal"
    journal = DurableJournal(path, record_synced_size=True, compact_min_bytes=1024)
    for i in range(100):
        journal.add(bytes([i]) * 100, i + 1, 3)
    journal.setCurrentTerm(3, "n1")
    journal.setRaftCommitIndex(100)
    journal.sync()
    grown = path.stat().st_size

    with capture_logs() as logs:
        journal.deleteEntriesTo(95)  # pysyncobj wrote a dump up to index 95
        journal.sync()
    assert [entry["event"] for entry in logs] == ["journal_compacted"]
    live = [(bytes([i]) * 100, i + 1, 3) for i in range(95, 100)]
    assert journal[:] == live
    shrunk = path.stat().st_size
    assert shrunk < grown / 10
    assert not journal.dirty
    assert not path.with_name("raft.wal.tmp").exists()
    # The side file follows the new file: a power cut now drops nothing.
    assert int.from_bytes(synced_size_path(path).read_bytes(), "little") == shrunk

    journal.add(b"after", 101, 3)  # appends go to the rewritten file
    journal.close()
    assert simulate_power_cut(path) == 0
    reopened = DurableJournal(path)
    assert reopened[:] == [*live, (b"after", 101, 3)]
    assert (reopened.getCurrentTerm(), reopened.getVotedForNodeId(), reopened.getRaftCommitIndex()) == (3, "n1", 100)
    reopened.close()


def test_no_rewrite_while_the_file_is_mostly_live(tmp_path: Path) -> None:
    path = tmp_path / "raft.wal"
    journal = DurableJournal(path, compact_min_bytes=1024)
    for i in range(100):
        journal.add(b"x" * 100, i + 1, 1)
    with capture_logs() as logs:
        journal.deleteEntriesTo(10)
        journal.sync()
    assert logs == []
    journal.close()


def test_write_file_atomically_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "raft.dump"
    write_file_atomically(path, b"first")
    write_file_atomically(path, b"second")
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raft.dump"]


# -------------------------------------------------------------------- migration


def test_migration_from_a_pysyncobj_file_journal(tmp_path: Path) -> None:
    legacy_path = tmp_path / "raft.journal"
    new_path = tmp_path / "raft.wal"
    legacy = FileJournal(str(legacy_path))
    entries = [(bytes([i]) * (i + 1), i + 1, 1 + i // 3) for i in range(10)]
    for entry in entries:
        legacy.add(*entry)
    legacy.deleteEntriesTo(2)
    legacy.setCurrentTerm(4, "10.0.0.2:7202")
    legacy.setRaftCommitIndex(8)
    legacy.onOneSecondTimer()  # pysyncobj stores the commit index in .meta only here
    legacy._destroy()

    assert migrate_legacy_journal(legacy_path, new_path) == 8
    journal = DurableJournal(new_path)
    assert journal[:] == entries[2:]
    assert journal.getCurrentTerm() == 4
    assert journal.getVotedForNodeId() == "10.0.0.2:7202"
    assert journal.getRaftCommitIndex() == 8
    journal.close()
    assert not legacy_path.exists()
    assert legacy_path.with_name("raft.journal.migrated").exists()
    assert legacy_path.with_name("raft.journal.meta.migrated").exists()
    # Done once: nothing left to migrate.
    assert migrate_legacy_journal(legacy_path, new_path) is None


def test_migration_never_overwrites_a_durable_journal(tmp_path: Path) -> None:
    legacy_path = tmp_path / "raft.journal"
    new_path = tmp_path / "raft.wal"
    assert migrate_legacy_journal(legacy_path, new_path) is None  # nothing at all
    legacy = FileJournal(str(legacy_path))
    legacy.add(b"old", 1, 1)
    legacy._destroy()
    journal = DurableJournal(new_path)
    journal.add(b"new", 1, 1)
    journal.close()

    assert migrate_legacy_journal(legacy_path, new_path) is None
    assert legacy_path.exists()
    assert DurableJournal(new_path)[:] == [(b"new", 1, 1)]


def test_new_journal_starts_empty_with_pysyncobj_defaults(tmp_path: Path) -> None:
    path = tmp_path / "raft.wal"
    journal = DurableJournal(path)
    assert len(journal) == 0
    assert (journal.getCurrentTerm(), journal.getVotedForNodeId(), journal.getRaftCommitIndex()) == (0, None, 1)
    assert path.stat().st_size == FILE_HEADER_SIZE
    assert not journal.dirty
    journal.close()


def test_a_torn_record_followed_by_zeros_is_a_torn_tail_not_corruption(tmp_path: Path) -> None:
    """A power cut can leave a file longer than what reached the disk: the tail reads as zeros."""
    path = tmp_path / "raft.wal"
    journal = DurableJournal(path)
    journal.add(b"kept", 1, 1)
    journal.sync()
    kept_size = path.stat().st_size
    journal.add(b"x" * 200, 2, 1)
    journal.sync()
    journal.close()
    with open(path, "r+b") as damaged:
        damaged.seek(kept_size + 12)  # the second record's header survives, its payload does not
        damaged.write(b"\0" * (path.stat().st_size - kept_size - 12 + 4096))
    reopened = DurableJournal(path)
    assert reopened[:] == [(b"kept", 1, 1)]
    reopened.close()


def test_a_failed_compaction_loses_nothing_and_keeps_the_journal_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "raft.wal"
    journal = DurableJournal(path, compact_min_bytes=1024)
    for i in range(100):
        journal.add(bytes([i]) * 100, i + 1, 3)
    journal.sync()
    real_replace = os.replace

    def disk_full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    journal.deleteEntriesTo(95)
    journal.sync()  # the rewrite fails: logged, not raised, and the journal keeps working
    assert not path.with_name("raft.wal.tmp").exists()
    journal.add(b"after", 101, 3)
    journal.sync()
    monkeypatch.setattr(os, "replace", real_replace)
    journal.close()
    reopened = DurableJournal(path)
    assert reopened[:] == [*((bytes([i]) * 100, i + 1, 3) for i in range(95, 100)), (b"after", 101, 3)]
    reopened.close()
