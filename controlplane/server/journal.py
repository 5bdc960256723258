"""A durable, append-only Raft journal for pysyncobj (replaces its ``FileJournal``).

Why: pysyncobj's ``FileJournal`` is a memory-mapped file that is never flushed, and its
term/vote meta file is renamed into place without an fsync. An entry this server acknowledged
can vanish in a power cut, and so can its vote - after which it may vote twice in one term and
elect two leaders. ``DurableJournal`` implements exactly the interface ``SyncObj`` uses from a
journal (``pysyncobj.journal.Journal``; ``MemoryJournal`` is the reference semantics) on one
append-only file whose every record is checksummed and that reaches the disk with
``os.fdatasync`` at points the caller chooses.

File format (all integers little-endian)::

    file header   magic b"CPRAFTWL" (8 bytes) | format version u32 (= 1)
    record        payload length u32 | CRC32 of (type + payload) u32 | type u8 | payload
      APPEND         1   index u64 | term u64 | command bytes
      TRUNCATE_FROM  2   position u64     keep the first `position` entries (deleteEntriesFrom)
      COMPACT_TO     3   position u64     drop the first `position` entries (deleteEntriesTo)
      CLEAR          4   (empty)
      TERM_VOTE      5   term u64 | has_vote u8 | voted-for node id, UTF-8 (only if has_vote)
      COMMIT_INDEX   6   index u64

Positions are places in the live entry list, exactly as pysyncobj passes them (never negative
in the file: a negative argument is resolved against the length first), so replaying the
records in order rebuilds the same list whatever the entries' Raft indexes are.

Durability rules (group commit):

* Mutations only append the record to an in-memory buffer (above ``write_buffer_bytes`` it is
  written to the file, still without a sync). ``sync()`` writes what is buffered and calls
  ``os.fdatasync`` once, and only when ``dirty``. The caller syncs before any Raft message
  leaves the server and at the end of every tick, so one fdatasync covers a whole batch of
  appends, and nothing another server can observe depends on a write that is not durable.
* ``setCurrentTerm`` syncs at once, whatever the caller does: a vote must be on disk before
  the grant is sent, and terms change rarely enough for this to cost nothing.
* ``setRaftCommitIndex`` never forces a sync. The commit index only saves local replay work
  on restart, and because all records share one ordered file a durable COMMIT_INDEX is never
  ahead of the durable entries it was written after. On open it is clamped to the last entry
  present anyway (a truncated log; the clamp is recorded too), and unchanged values are not
  written (followers report the same value on every append_entries).
* On open (after dropping any torn tail) the file is fdatasync'ed before the journal is used:
  bytes a crashed process left in the page cache must not be acted on (acknowledged, voted on)
  until they are durable.

Invariants:

* The in-memory entries, term, vote and commit index always equal a replay of every record in
  the file followed by the buffer; reads never touch the disk.
* Records are whole: the buffer holds only complete records, and the file is extended only by
  whole buffered records, so the synced size is always a record boundary.
* A rewrite (compaction, below) replaces the file only with a complete, fsynced image of the
  current state, so it is also a sync point.

Recovery on open: records are replayed in order. A torn last record - the file ends inside its
header or payload, its CRC fails and it ends exactly at end of file, or the rest of the file is
zeros (space the filesystem allocated but never wrote) - is what a crash mid-write leaves: it is
dropped, the file truncated to the last good record, and a warning logged. Anything else that
fails - a CRC mismatch or an impossible type or length with more bytes after it - means bytes
that were once durable have changed, and the journal refuses to start (``JournalCorrupt``,
naming the file, the offset and what the operator should do). Known limit, shared with etcd's
WAL and LevelDB's log: a bit flip in a record's length that points past end of file looks like
a torn tail and drops the records after it; lengths above ``MAX_RECORD_PAYLOAD`` are rejected
as impossible, which catches a flip in the high bits.

Compaction: ``deleteEntriesTo`` (after pysyncobj wrote a full dump) only records the cut, so
the file grows. When it exceeds ``compact_min_bytes`` and ``compact_ratio`` times the live
bytes, ``sync()`` rewrites it: term/vote, commit index and the live entries into ``<file>.tmp``
in the same directory, fsync, rename over the file, fsync the directory. Its cost is the live
bytes only, which pysyncobj's own log compaction keeps small.

Power-cut simulation (tests only, ``record_synced_size``): after every fdatasync the synced
size is written to ``<file>.synced``; ``simulate_power_cut`` truncates the file to it after a
``kill -9``, discarding what was written but never synced.

``fsync=False`` (``durability = "none"``, throwaway clusters only): ``sync()`` writes but never
calls fdatasync, and a rewrite skips its fsyncs; the journal then survives a process crash but
not a power cut.

Threading: not thread-safe. pysyncobj calls its journal from one thread (its tick thread, or
the event loop when ``autoTick`` is off), and ``sync()`` must be called from that same thread.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from time import perf_counter
from typing import Final, overload

import structlog
from pysyncobj.journal import FileJournal, Journal

from controlplane.server import metrics
from controlplane.server.config import ConfigError

__all__ = [
    "FILE_HEADER_SIZE",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_RECORD_PAYLOAD",
    "DurableJournal",
    "JournalCorrupt",
    "migrate_legacy_journal",
    "simulate_power_cut",
    "synced_size_path",
    "write_file_atomically",
]

log = structlog.get_logger("controlplane.journal")

MAGIC: Final = b"CPRAFTWL"
FORMAT_VERSION: Final = 1
# Far above any entry (limits.RAFT_MAX_ENTRY_BYTES is 32 MiB), far below what a flipped high
# bit in a length produces: a larger length is impossible, not a torn tail.
MAX_RECORD_PAYLOAD: Final = 1 << 30

_MIB: Final = 1024 * 1024
_FILE_MODE: Final = 0o600  # the log holds the cluster's data

_FILE_HEADER = struct.Struct("<8sI")
FILE_HEADER_SIZE: Final = _FILE_HEADER.size
_RECORD_HEADER = struct.Struct("<IIB")  # payload length, crc32(type + payload), type
_LEN_CRC = struct.Struct("<II")
_HEADER_SIZE: Final = _RECORD_HEADER.size
_APPEND_FIXED = struct.Struct("<BQQ")  # type, index, term: the CRC'd bytes before the command
_U64 = struct.Struct("<Q")
_U64_U64 = struct.Struct("<QQ")
_TERM_FLAG = struct.Struct("<QB")

_APPEND: Final = 1
_TRUNCATE_FROM: Final = 2
_COMPACT_TO: Final = 3
_CLEAR: Final = 4
_TERM_VOTE: Final = 5
_COMMIT_INDEX: Final = 6
_APPEND_OVERHEAD: Final = _HEADER_SIZE + _U64_U64.size
_COMMIT_RECORD_SIZE: Final = _HEADER_SIZE + _U64.size

# Allowed payload lengths per type: (minimum, exact?). Anything else is an impossible record.
_PAYLOAD_SHAPE: Final = {
    _APPEND: (_U64_U64.size, False),
    _TRUNCATE_FROM: (_U64.size, True),
    _COMPACT_TO: (_U64.size, True),
    _CLEAR: (0, True),
    _TERM_VOTE: (_TERM_FLAG.size, False),
    _COMMIT_INDEX: (_U64.size, True),
}

_OPERATOR_ADVICE: Final = (
    "this server's log is damaged: stop it, move its data dir aside, and re-add it to the cluster "
    "as a new member (cpctl cluster members add); or restore it from a backup"
)

Entry = tuple[bytes, int, int]  # (command, Raft index, term), as pysyncobj reads them


class JournalCorrupt(ConfigError):
    """The journal holds a damaged record that a crash cannot explain; the server must not start.

    A ``ConfigError`` so that the server reports it as a clean start failure, with the message
    (file, byte offset, what to do) as the reason.
    """


class _RewriteFailed(Exception):
    """A compaction rewrite failed before it replaced anything: the journal is as it was."""


def synced_size_path(journal_path: Path) -> Path:
    """The side file ``record_synced_size`` writes: ``<journal>.synced``."""
    return journal_path.with_name(journal_path.name + ".synced")


def _record(rtype: int, payload: bytes) -> bytes:
    body = bytes((rtype,)) + payload
    return _LEN_CRC.pack(len(payload), zlib.crc32(body)) + body


def _append_record(command: bytes, idx: int, term: int) -> bytes:
    fixed = _APPEND_FIXED.pack(_APPEND, idx, term)
    return _LEN_CRC.pack(_U64_U64.size + len(command), zlib.crc32(command, zlib.crc32(fixed))) + fixed + command


def _term_vote_record(term: int, voted_for: str | None) -> bytes:
    if voted_for is None:
        return _record(_TERM_VOTE, _TERM_FLAG.pack(term, 0))
    if not isinstance(voted_for, str):
        raise TypeError(f"votedForNodeId must be a node id (str) or None, not {type(voted_for).__name__}")
    return _record(_TERM_VOTE, _TERM_FLAG.pack(term, 1) + voted_for.encode())


def _as_bytes(command: object) -> bytes:
    # pysyncobj's own journal accepts str (its to_bytes); entries read back are always bytes.
    if isinstance(command, str):
        return command.encode()
    return bytes(command)  # type: ignore[call-overload]


def _encode_state(term: int, voted_for: str | None, commit_index: int, entries: Iterable[Entry]) -> bytes:
    """A whole journal file holding exactly this state (compaction rewrite, migration)."""
    parts = [
        _FILE_HEADER.pack(MAGIC, FORMAT_VERSION),
        _term_vote_record(term, voted_for),
        _record(_COMMIT_INDEX, _U64.pack(commit_index)),
    ]
    parts.extend(_append_record(command, idx, entry_term) for command, idx, entry_term in entries)
    return b"".join(parts)


def _write_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def fsync_directory(directory: Path) -> None:
    # A rename is durable only once the directory entry is.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tmp(path: Path, data: bytes, *, durable: bool = True) -> tuple[Path, int]:
    """Write ``data`` to ``<path>.tmp`` and fsync it (if ``durable``); return the temp path and its open fd.

    A fixed temp name (not mkstemp) so that a copy left by a crash is overwritten next time
    rather than accumulating; only the Raft tick's one thread writes these files.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
    try:
        _write_all(fd, data, 0)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return tmp, fd


def write_file_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file, whole.

    Temp file in the same directory, write, fsync, rename over ``path``, fsync the directory.
    """
    target = Path(path)
    tmp, fd = _write_tmp(target, data)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    fsync_directory(target.parent)


class DurableJournal(Journal):  # type: ignore[misc]
    """pysyncobj's journal interface on one append-only, checksummed, fdatasync'ed file.

    ``compact_min_bytes`` / ``compact_ratio``: rewrite the file when it is larger than both
    this size and this multiple of its live bytes. ``write_buffer_bytes``: buffered records are
    written to the file (not synced) once they exceed this, bounding the buffer; 0 writes every
    record at once. ``fsync=False``: never fdatasync (``durability = "none"``, see above).
    ``record_synced_size``: tests only, see ``simulate_power_cut``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = True,
        record_synced_size: bool = False,
        compact_min_bytes: int = 64 * _MIB,
        compact_ratio: float = 2.0,
        write_buffer_bytes: int = 1 * _MIB,
    ) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._record_synced_size = record_synced_size
        self._compact_min_bytes = self._base_compact_min_bytes = compact_min_bytes
        self._compact_ratio = compact_ratio
        self._write_buffer_bytes = write_buffer_bytes
        self._entries: list[Entry] = []
        self._term = 0
        self._voted_for: str | None = None
        # pysyncobj's journals answer 1 until told otherwise; index 1 is the NO_OP it adds to an
        # empty journal, committed by definition.
        self._commit_index = 1
        # A commit index not yet in the file: it rides along with the next write of other records
        # (or an explicit sync), so advancing it never costs an fdatasync of its own.
        self._commit_index_unwritten = False
        # perf_counter() when the commit index last moved (0.0: not since open), for the apply latency.
        self.committed_at = 0.0
        # Encoded size of the live APPEND records: what a rewrite would write for them.
        self._live_bytes = 0
        self._buffer = bytearray()
        self._size = 0  # bytes in the file, excluding the buffer
        self._synced_size = 0  # bytes written by the last sync() (fdatasync'ed unless fsync is off)
        # Bytes known to be on disk: what the power-cut simulation keeps. With fsync off only the
        # header is, so the simulation loses what a real cut could lose.
        self._durable_size = FILE_HEADER_SIZE
        # The first failed write or fdatasync: after it nothing is known about what reached the
        # disk (a retried fsync can report success for lost pages), so every later sync fails.
        self._failure: OSError | None = None
        self._fd = -1
        self._synced_fd = -1
        self._open()

    # ------------------------------------------------------------------ pysyncobj's interface

    def add(self, command: bytes, idx: int, term: int) -> None:
        if type(command) is not bytes:
            command = _as_bytes(command)
        if len(command) > MAX_RECORD_PAYLOAD - _U64_U64.size:
            raise ValueError(f"a journal entry is limited to {MAX_RECORD_PAYLOAD} bytes, not {len(command)}")
        # Packed before anything changes: a bad index or term leaves the journal as it was.
        fixed = _APPEND_FIXED.pack(_APPEND, idx, term)
        buffer = self._buffer
        buffer += _LEN_CRC.pack(_U64_U64.size + len(command), zlib.crc32(command, zlib.crc32(fixed)))
        buffer += fixed
        buffer += command
        self._entries.append((command, idx, term))
        self._live_bytes += _APPEND_OVERHEAD + len(command)
        if len(buffer) > self._write_buffer_bytes:
            self._write_buffer()

    def clear(self) -> None:
        if not self._entries:
            return
        self._entries.clear()
        self._live_bytes = 0
        self._buffer_record(_record(_CLEAR, b""))

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        position = slice(entryFrom, None).indices(len(self._entries))[0]
        if position >= len(self._entries):
            return
        self._live_bytes -= sum(_APPEND_OVERHEAD + len(entry[0]) for entry in self._entries[position:])
        del self._entries[position:]
        self._buffer_record(_record(_TRUNCATE_FROM, _U64.pack(position)))

    def deleteEntriesTo(self, entryTo: int) -> None:
        position = slice(entryTo, None).indices(len(self._entries))[0]
        if position == 0:
            return
        self._live_bytes -= sum(_APPEND_OVERHEAD + len(entry[0]) for entry in self._entries[:position])
        del self._entries[:position]
        self._buffer_record(_record(_COMPACT_TO, _U64.pack(position)))

    @overload
    def __getitem__(self, item: int) -> Entry: ...
    @overload
    def __getitem__(self, item: slice) -> list[Entry]: ...
    def __getitem__(self, item: int | slice) -> Entry | list[Entry]:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        self.close(sync=True)

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        # Only saves replay work (on open it is clamped to the last entry present), so it is
        # written lazily: a commit must not cost every server a second fdatasync per write.
        if raftCommitIndex != self._commit_index:
            self._commit_index = raftCommitIndex
            self._commit_index_unwritten = True
            self.committed_at = perf_counter()

    def getRaftCommitIndex(self) -> int:
        return self._commit_index

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        record = _term_vote_record(term, votedForNodeId)
        self._term = term
        self._voted_for = votedForNodeId
        self._buffer_record(record)
        # Raft: currentTerm and votedFor are durable before any message reflecting them is sent.
        self.sync()

    def getCurrentTerm(self) -> int:
        return self._term

    def getVotedForNodeId(self) -> str | None:
        return self._voted_for

    def onOneSecondTimer(self) -> None:
        # A backstop only: the caller syncs before every message and at the end of every tick.
        # Also bounds how far the commit index in the file lags when no records are written.
        if self._commit_index_unwritten:
            self._buffer_commit_index()
        self.sync()

    def flush(self) -> None:
        self.sync()

    # ------------------------------------------------------------------ durability

    @property
    def dirty(self) -> bool:
        """True while some record is not yet durable, i.e. while ``sync()`` has work to do."""
        return bool(self._buffer) or self._size != self._synced_size

    def sync(self) -> None:
        """Make every record so far durable: write the buffer, one ``os.fdatasync``. No-op when clean.

        Also where compaction happens (a rewrite is itself a sync point).

        Raises the ``OSError`` of a failed write or fdatasync, and again on every later call: the
        journal cannot tell what reached the disk, so the server must stop (and replay on restart).
        """
        if self._failure is not None:
            raise OSError(
                self._failure.errno,
                f"journal {self.path}: an earlier write or fdatasync failed ({self._failure}); "
                "what it held may not be on disk, so it accepts no more syncs: restart the server",
            )
        if not self.dirty:
            return
        if self._commit_index_unwritten:
            self._buffer_commit_index()  # a sync happens anyway: the commit index rides along
        try:
            self._write_buffer()
            if self._fsync:
                started = perf_counter()
                os.fdatasync(self._fd)
                metrics.FSYNC_DURATION.observe(perf_counter() - started)
                self._durable_size = self._size
            self._synced_size = self._size
            self._note_synced_size()
        except OSError as exc:
            self._failure = exc
            raise
        if self._size > self._compact_min_bytes and self._size > self._compact_ratio * self._live_estimate():
            self._compact()

    def _compact(self) -> None:
        """Rewrite the file smaller, after a successful sync. A rewrite that fails before its rename
        loses nothing (the old file is whole and synced): log it and try again after the file has
        grown by another ``compact_min_bytes``. Only a failure after the rename poisons the journal."""
        try:
            self._rewrite()
        except _RewriteFailed as exc:
            self._compact_min_bytes = self._size + self._base_compact_min_bytes
            log.warning("journal_compaction_failed", path=str(self.path), error=str(exc.__cause__ or exc))
        except OSError as exc:
            self._failure = exc
            raise

    # ------------------------------------------------------------------ pipelined syncs

    @property
    def appended_size(self) -> int:
        """Bytes of records so far, written or buffered: a sync that reaches this covers them all."""
        return self._size + len(self._buffer)

    def begin_sync(self) -> tuple[int, int] | None:
        """Start a sync to run off the event loop: write the buffer (cheap), and return what to
        ``fdatasync`` in another thread - a duplicate of the file descriptor, so a compaction
        swapping files meanwhile cannot pull it away - and the size it will cover; None when
        nothing is waiting. Finish with :meth:`finish_sync` (on the loop) once the fdatasync
        returned; close the descriptor either way.
        """
        if self._failure is not None:
            self.sync()  # raises the recorded failure
        if self._commit_index_unwritten and self.dirty:
            self._buffer_commit_index()  # a sync happens anyway: the commit index rides along
        try:
            self._write_buffer()
        except OSError as exc:
            self._failure = exc
            raise
        if self._size == self._synced_size:
            return None
        return os.dup(self._fd), self._size

    def finish_sync(self, size: int) -> None:
        """Record that everything up to ``size`` is durable (its fdatasync returned); maybe compact."""
        if size > self._synced_size:
            self._synced_size = size
            if self._fsync:
                self._durable_size = max(self._durable_size, size)
            self._note_synced_size()
        settled = self._synced_size == self._size and not self._buffer
        if settled and self._compact_min_bytes < self._size > self._compact_ratio * self._live_estimate():
            self._compact()

    def fail(self, exc: OSError) -> None:
        """A pipelined fdatasync failed: nothing is known about what reached the disk."""
        self._failure = exc

    def close(self, *, sync: bool = True) -> None:
        """Release the files. ``sync=False`` drops what is not yet synced, as a crash would (tests)."""
        try:
            if sync and self._fd >= 0 and self._failure is None:
                if self._commit_index_unwritten:
                    self._buffer_commit_index()
                self.sync()
        finally:
            for fd in (self._fd, self._synced_fd):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._synced_fd = -1
            self._buffer.clear()

    # ------------------------------------------------------------------ internals

    def _buffer_record(self, record: bytes) -> None:
        self._buffer += record
        if len(self._buffer) > self._write_buffer_bytes:
            self._write_buffer()

    def _buffer_commit_index(self) -> None:
        self._commit_index_unwritten = False
        self._buffer += _record(_COMMIT_INDEX, _U64.pack(self._commit_index))

    def _write_buffer(self) -> None:
        if not self._buffer:
            return
        if self._commit_index_unwritten:
            self._buffer_commit_index()
        try:
            _write_all(self._fd, self._buffer, self._size)
        except OSError as exc:
            self._failure = exc
            raise
        self._size += len(self._buffer)
        self._buffer.clear()

    def _live_estimate(self) -> int:
        """The size of the file a rewrite would produce now."""
        vote = 0 if self._voted_for is None else len(self._voted_for.encode())
        return FILE_HEADER_SIZE + _HEADER_SIZE + _TERM_FLAG.size + vote + _COMMIT_RECORD_SIZE + self._live_bytes

    def _rewrite(self) -> None:
        """Replace the file with a fresh, fsynced image of the current state (compaction).

        Called only right after a successful fdatasync, so every byte of the old file is durable.
        Raises ``_RewriteFailed`` for a failure before the rename (nothing changed), ``OSError``
        after it (the open file is the old, unlinked one: the journal must stop).
        """
        old_size = self._size
        image = _encode_state(self._term, self._voted_for, self._commit_index, self._entries)
        try:
            tmp, fd = _write_tmp(self.path, image, durable=self._fsync)
        except OSError as exc:
            self.path.with_name(self.path.name + ".tmp").unlink(missing_ok=True)
            raise _RewriteFailed("writing the compacted copy failed") from exc
        try:
            if self._record_synced_size:
                # Whichever file a crash leaves in place is whole and durable: a power cut must not
                # cut either one, so the recorded size covers both until the rename is durable.
                os.pwrite(self._synced_fd, _U64.pack(max(old_size, len(image))), 0)
            os.replace(tmp, self.path)
        except OSError as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise _RewriteFailed("replacing the journal with its compacted copy failed") from exc
        os.close(self._fd)
        self._fd = fd
        self._size = self._synced_size = len(image)
        if self._fsync:
            fsync_directory(self.path.parent)
            self._durable_size = len(image)
        self._note_synced_size()
        log.info("journal_compacted", path=str(self.path), old_bytes=old_size, new_bytes=len(image))

    def _note_synced_size(self) -> None:
        if self._record_synced_size:
            os.pwrite(self._synced_fd, _U64.pack(self._durable_size), 0)

    def _open(self) -> None:
        self.path.with_name(self.path.name + ".tmp").unlink(missing_ok=True)  # an interrupted rewrite
        if self._record_synced_size:
            self._synced_fd = os.open(synced_size_path(self.path), os.O_RDWR | os.O_CREAT, _FILE_MODE)
        if not self.path.exists():
            if self._record_synced_size:
                # Before the file exists: a side file never names a size the file does not have durably.
                os.pwrite(self._synced_fd, _U64.pack(FILE_HEADER_SIZE), 0)
            write_file_atomically(self.path, _FILE_HEADER.pack(MAGIC, FORMAT_VERSION))
        try:
            self._fd = os.open(self.path, os.O_RDWR)
            with open(self.path, "rb") as f:
                data = f.read()
            end = self._replay(data)
            if end < len(data):
                os.ftruncate(self._fd, end)
            last_index = self._entries[-1][1] if self._entries else 1
            if self._commit_index > last_index:
                # Recorded too, so that the file still replays to exactly this state when entries
                # are appended behind the clamped index.
                self._commit_index = last_index
                record = _record(_COMMIT_INDEX, _U64.pack(last_index))
                _write_all(self._fd, record, end)
                end += len(record)
            # Also covers bytes a crashed predecessor wrote but never synced: durable before used.
            if self._fsync:
                os.fdatasync(self._fd)
        except BaseException:
            self.close(sync=False)
            raise
        self._size = self._synced_size = end
        if self._fsync:
            self._durable_size = end
        self._live_bytes = sum(_APPEND_OVERHEAD + len(entry[0]) for entry in self._entries)
        self._note_synced_size()

    def _corrupt(self, offset: int, what: str) -> JournalCorrupt:
        return JournalCorrupt(f"Raft journal {self.path}: {what} at byte offset {offset}; {_OPERATOR_ADVICE}")

    def _torn(self, data: bytes, offset: int, what: str) -> int:
        log.warning(
            "journal_torn_tail_dropped",
            path=str(self.path),
            offset=offset,
            dropped_bytes=len(data) - offset,
            reason=what,
        )
        return offset

    def _replay(self, data: bytes) -> int:
        """Rebuild the state from the file's bytes; return where the good records end."""
        if data.startswith(b"PYSYNCOBJ"):
            raise JournalCorrupt(
                f"{self.path} is a pysyncobj FileJournal, not a {MAGIC.decode()} journal: "
                "convert it with migrate_legacy_journal (the server does this for raft.journal)"
            )
        if len(data) < FILE_HEADER_SIZE:
            raise self._corrupt(0, f"the {FILE_HEADER_SIZE}-byte file header is cut short ({len(data)} bytes)")
        magic, version = _FILE_HEADER.unpack_from(data, 0)
        if magic != MAGIC:
            raise self._corrupt(0, f"the file does not start with {MAGIC!r} (found {magic!r})")
        if version != FORMAT_VERSION:
            raise JournalCorrupt(
                f"Raft journal {self.path} has format version {version}; this build reads version "
                f"{FORMAT_VERSION}: run a build that reads it"
            )
        view = memoryview(data)
        entries = self._entries
        end = len(data)
        offset = FILE_HEADER_SIZE
        while offset < end:
            if end - offset < _HEADER_SIZE:
                return self._torn(data, offset, "the file ends inside a record header")
            length, crc, rtype = _RECORD_HEADER.unpack_from(data, offset)
            shape = _PAYLOAD_SHAPE.get(rtype)
            record_end = offset + _HEADER_SIZE + length
            if shape is None or length > MAX_RECORD_PAYLOAD or length < shape[0] or (shape[1] and length != shape[0]):
                if data.count(0, offset) == end - offset:
                    return self._torn(data, offset, "the rest of the file is zeros (never written)")
                if offset + _HEADER_SIZE == end:
                    return self._torn(data, offset, "the last record header is impossible")
                raise self._corrupt(offset, f"a record header is impossible (type {rtype}, length {length})")
            if record_end > end:
                return self._torn(data, offset, "the file ends inside a record")
            payload = offset + _HEADER_SIZE
            if zlib.crc32(view[payload - 1 : record_end]) != crc:
                if record_end == end:
                    return self._torn(data, offset, "the last record fails its checksum")
                if data.count(0, record_end) == end - record_end:
                    # A power cut can leave the file longer than what reached the disk: zeros.
                    return self._torn(data, offset, "a record fails its checksum and only zeros follow")
                raise self._corrupt(offset, f"a record fails its checksum (type {rtype}, length {length})")
            if rtype == _APPEND:
                idx, term = _U64_U64.unpack_from(data, payload)
                entries.append((data[payload + _U64_U64.size : record_end], idx, term))
            elif rtype == _TRUNCATE_FROM:
                del entries[_U64.unpack_from(data, payload)[0] :]
            elif rtype == _COMPACT_TO:
                del entries[: _U64.unpack_from(data, payload)[0]]
            elif rtype == _CLEAR:
                entries.clear()
            elif rtype == _TERM_VOTE:
                term, has_vote = _TERM_FLAG.unpack_from(data, payload)
                vote = data[payload + _TERM_FLAG.size : record_end]
                if has_vote not in (0, 1) or (not has_vote and vote):
                    raise self._corrupt(offset, "a term/vote record is malformed")
                try:
                    self._voted_for = vote.decode() if has_vote else None
                except UnicodeDecodeError:
                    raise self._corrupt(offset, "a term/vote record names a node id that is not UTF-8") from None
                self._term = term
            else:  # _COMMIT_INDEX (the shape check admitted no other type)
                self._commit_index = _U64.unpack_from(data, payload)[0]
            offset = record_end
        return end


def simulate_power_cut(journal_path: Path) -> int:
    """After a ``kill -9``: truncate the journal to its last fdatasync'ed size (tests only).

    Needs the journal to have been opened with ``record_synced_size``; returns the number of
    bytes dropped (0 when no journal exists yet). A cut inside a record is a torn tail, which the
    next open drops.
    """
    if not journal_path.exists():
        return 0
    side = synced_size_path(journal_path)
    try:
        recorded = side.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{side} does not exist: open the journal with record_synced_size (CP_TEST_POWER_CUT=1)"
        ) from None
    if len(recorded) != _U64.size:
        raise ValueError(f"{side} holds {len(recorded)} bytes, not {_U64.size}")
    synced = _U64.unpack(recorded)[0]
    size = journal_path.stat().st_size
    if size <= synced:
        return 0
    os.truncate(journal_path, synced)
    return size - synced


def migrate_legacy_journal(legacy_path: Path, new_path: Path) -> int | None:
    """Convert pysyncobj's ``FileJournal`` (``legacy_path`` and its ``.meta``) into ``new_path``.

    Only when the legacy journal exists and the new one does not. The new file is written
    whole and fsynced before the legacy files are renamed aside (``.migrated``), so a crash at
    any point leaves a journal the next start can use. Returns the number of entries migrated,
    or None when there was nothing to migrate.
    """
    if not legacy_path.exists() or new_path.exists():
        return None
    meta_path = legacy_path.with_name(legacy_path.name + ".meta")
    try:
        legacy = FileJournal(str(legacy_path))
    except Exception as exc:
        raise JournalCorrupt(
            f"legacy pysyncobj journal {legacy_path} cannot be read ({exc!r}); {_OPERATOR_ADVICE}"
        ) from exc
    try:
        entries = [(_as_bytes(command), idx, term) for command, idx, term in legacy[:]]
        term = legacy.getCurrentTerm()
        voted_for = legacy.getVotedForNodeId()
        commit_index = legacy.getRaftCommitIndex()
    finally:
        legacy._destroy()
    write_file_atomically(new_path, _encode_state(term, voted_for, commit_index, entries))
    for path in (legacy_path, meta_path):
        if path.exists():
            path.replace(path.with_name(path.name + ".migrated"))
    fsync_directory(legacy_path.parent)
    log.info(
        "journal_migrated",
        legacy=str(legacy_path),
        path=str(new_path),
        entries=len(entries),
        term=term,
        commit_index=commit_index,
    )
    return len(entries)
