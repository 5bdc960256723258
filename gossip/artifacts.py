"""Model artifact replication: a node's local store, the server on its gossip port, and the fetch.

A registered model version names its artifact by sha256 and size (``models.proto``); the registry's
``replicas`` list says which nodes hold it, and membership says where each node's gossip port is.
A node that has the file puts it in its store and records itself as a replica (:func:`publish`,
what ``cpctl models publish`` runs). A node that needs the artifact (:func:`fetch`) reads it in
chunks from several of those holders at once over the ``Artifacts`` service
(``proto/controlplane/v1/artifacts.proto``), fastest first, checks every chunk against the holder's
manifest and the whole file against the registry's sha256, keeps a resumable partial download on
disk, and finally records itself as a replica. See
``docs/artifacts.md`` for the user guide and the design.

The store (:class:`ArtifactStore`) keeps, per version, under ``ROOT/<model>/<version>/``::

    artifact                the complete file; it exists only once its sha256 verified
    artifact.json           what it was verified against (model, version, size, sha256)
    manifest.<N>.json       cached sha256 of each N-byte chunk, keyed by the file's size and mtime
    artifact.part           a download in progress (written in place, chunk by chunk)
    artifact.part.jsonl     its progress: a header (size, sha256, chunk size), then one line per
                            chunk written with that chunk's sha256; the latest line for a chunk wins
    .lock                   held (flock) by the one fetch writing the partial download

Errors (all :class:`ArtifactError`)::

    ArtifactError
    ├── InvalidArtifactName   a model name or version that cannot name a directory (also a ValueError)
    ├── ArtifactNotFound      the store holds no complete copy                          -> NOT_FOUND
    ├── ArtifactDamaged       a stored copy no longer matches its sha256 or manifest    -> DATA_LOSS
    ├── ArtifactBusy          another fetch is writing the same partial download
    ├── ArtifactMismatch      publish: the registry has the file's sha256 with another size
    ├── ArtifactUnauthenticated  a TLS port's caller names no identity                  -> UNAUTHENTICATED
    ├── ArtifactForbidden     the caller may not read that model (models:read)          -> PERMISSION_DENIED
    ├── ArtifactAccessUnknown the cluster could not say whether it may                  -> UNAVAILABLE
    ├── ArtifactUnavailable   no holder could deliver it: none registered, all gone, unreachable or
    │                         timed out (retry later, or publish it somewhere)
    └── ArtifactCorrupt       the bytes do not verify and no holder has good ones: every holder's copy
                              of some chunk is bad, or the assembled file differs from the registry's
                              sha256 and the holders' manifests cannot say which chunk is wrong

This module and ``gossip.exchange`` are the package's only modules that open sockets, read clocks
or touch files; the rest stays pure (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
import structlog
from sortedcontainers import SortedSet

from controlplane.client import (
    AlreadyExists,
    BandwidthMatrix,
    ControlPlaneError,
    Credentials,
    ModelVersion,
    NodeState,
    NodeView,
    NotFound,
)
from controlplane.grpc_options import GOSSIP_CHANNEL_OPTIONS, GOSSIP_SERVER_OPTIONS
from controlplane.state import limits
from controlplane.v1 import artifacts_pb2 as pb
from controlplane.v1 import artifacts_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from controlplane.client import AsyncClient

    # numpy and networkx come with it: loaded by a fetch only, not by every `cpctl` command.
    from gossip.bandwidth import BandwidthTable

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_BY_SUFFIX",
    "MAX_CHUNK_SIZE",
    "MAX_MANIFEST_CHUNKS",
    "MIN_CHUNK_SIZE",
    "ArtifactAccess",
    "ArtifactAccessUnknown",
    "ArtifactBusy",
    "ArtifactClient",
    "ArtifactCorrupt",
    "ArtifactDamaged",
    "ArtifactError",
    "ArtifactForbidden",
    "ArtifactMismatch",
    "ArtifactNotFound",
    "ArtifactRecord",
    "ArtifactServer",
    "ArtifactStore",
    "ArtifactUnauthenticated",
    "ArtifactUnavailable",
    "ClusterAccess",
    "FetchResult",
    "InvalidArtifactName",
    "Manifest",
    "PartialArtifact",
    "PublishResult",
    "ServerStats",
    "announce",
    "certified_identity",
    "chunk_count",
    "chunk_size_for",
    "compute_manifest",
    "fetch",
    "fetch_artifact",
    "publish",
    "rank_holders",
    "tls_credentials",
]

log = structlog.get_logger("gossip.artifacts")

T = TypeVar("T")

MIN_CHUNK_SIZE = 4 * 1024
MAX_CHUNK_SIZE = 4 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 1024 * 1024
"""1 MiB: small enough that a lost chunk costs little and several holders share even a small file,
large enough that per-chunk overhead (one digest, one progress line) stays negligible."""
MAX_MANIFEST_CHUNKS = 65_536
"""Bounds a Stat answer to ~2.3 MB of digests. Larger artifacts use larger chunks (chunk_size_for):
256 GiB at 4 MiB."""
READ_RUN_BYTES = 4 * 1024 * 1024
"""At most this much (and at least one chunk) per Read call: a holder streams a run of consecutive
chunks, so small chunks do not cost one call each, and a failed call re-queues little."""
MAX_HOLDERS = 16
"""Holders asked for a manifest, best ranked first. More add load on the cluster, not speed."""
MAX_BAD_CHUNKS_PER_HOLDER = 8
"""A holder that delivered this many chunks failing verification is dropped altogether."""
MAX_REPAIR_ROUNDS = 2
"""Rounds of "whole file failed; re-fetch the chunks the manifests disagree on" before giving up."""
DEFAULT_STALL_TIMEOUT_S = 30.0
"""A holder that sends nothing for this long (Stat answer, or next chunk of a Read) is dropped."""


_ARTIFACT = "artifact"
_RECORD = "artifact.json"
_PART = "artifact.part"
_PROGRESS = "artifact.part.jsonl"
_LOCK = ".lock"
_PROGRESS_FORMAT = 1
_HASH_BLOCK = 1024 * 1024


# --- errors ---------------------------------------------------------------------------------------


class ArtifactError(ControlPlaneError):
    """Something about a model artifact went wrong; the message says what to do about it."""


class InvalidArtifactName(ArtifactError, ValueError):
    """A model name or version that cannot safely name a directory (path traversal, empty, too long,
    version 0). Refused before touching the disk or the network."""


class ArtifactNotFound(ArtifactError):
    """The store holds no complete copy of that version (a partial download does not count)."""


class ArtifactDamaged(ArtifactError):
    """A stored copy no longer matches the sha256 it was verified against, or a chunk read from disk
    no longer matches the manifest computed from the verified bytes: the disk changed under it."""


class ArtifactBusy(ArtifactError):
    """Another fetch (another process, or this one) is writing the same partial download."""


class ArtifactUnavailable(ArtifactError):
    """No holder could deliver the artifact: none is registered, every one is gone, unreachable,
    timed out or no longer has it. Retry later, or publish the artifact on a node."""


class ArtifactCorrupt(ArtifactError):
    """Bytes that do not verify, with no good copy to take instead: every holder's copy of some chunk
    is bad, or the assembled file's sha256 differs from the registry's and the holders' manifests do
    not show which chunks are wrong. ``actual_sha256`` is set when a whole file was hashed."""

    def __init__(self, message: str, *, actual_sha256: str = "") -> None:
        super().__init__(message)
        self.actual_sha256 = actual_sha256


class ArtifactUnauthenticated(ArtifactError):
    """A caller of a TLS artifact port whose certificate names no controlplane identity."""


class ArtifactForbidden(ArtifactError):
    """A caller whose identity may not read that model (it lacks models:read on it)."""


class ArtifactMismatch(ArtifactError):
    """A file to publish whose sha256 the registry already has for a version of another size."""


class ArtifactAccessUnknown(ArtifactError):
    """The cluster could not be asked whether the caller may read the model (retry)."""


class _OutOfRange(ArtifactError):
    """A Read past the end of the artifact (OUT_OF_RANGE)."""


class _BadRequest(ArtifactError, ValueError):
    """A request the server cannot answer as asked (INVALID_ARGUMENT): a chunk size out of bounds, a
    range off chunk boundaries."""


# The one place errors meet gRPC status codes on the serving side (the fetcher reads them back in
# _Fetch._rpc_failure and _stat). Anything else is INTERNAL.
_STATUS_OF: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidArtifactName, grpc.StatusCode.INVALID_ARGUMENT),
    (_BadRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (_OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (ArtifactNotFound, grpc.StatusCode.NOT_FOUND),
    (FileNotFoundError, grpc.StatusCode.NOT_FOUND),  # removed while being served
    (ArtifactDamaged, grpc.StatusCode.DATA_LOSS),
    (ArtifactUnauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (ArtifactForbidden, grpc.StatusCode.PERMISSION_DENIED),
    (ArtifactAccessUnknown, grpc.StatusCode.UNAVAILABLE),
)


def _status_of(exc: Exception) -> grpc.StatusCode:
    for cls, code in _STATUS_OF:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


# --- names, sizes, manifests ----------------------------------------------------------------------


def _check_name(model: str, version: int) -> None:
    problem = limits.check_model_name(model) if isinstance(model, str) else "model name must be a string"
    if problem:
        raise InvalidArtifactName(problem)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**32:
        raise InvalidArtifactName(f"version must be a registered version number (1 to 2^32 - 1), got {version!r}")


def _check_chunk_size(chunk_size: int) -> None:
    # Powers of two only: a holder caches one manifest per chunk size asked for, so at most 11 of them
    # (each a full read of the file to compute), whatever its fetchers ask.
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or chunk_size & (chunk_size - 1):
        raise _BadRequest(
            f"chunk size {chunk_size} is not a power of two in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}] bytes"
        )


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def chunk_size_for(size: int, preferred: int = DEFAULT_CHUNK_SIZE) -> int:
    """``preferred``, or the smallest power of two above it that keeps a manifest of ``size`` bytes
    within MAX_MANIFEST_CHUNKS (up to MAX_CHUNK_SIZE; beyond that the artifact is too large)."""
    _check_chunk_size(preferred)
    chunk = preferred
    while chunk_count(size, chunk) > MAX_MANIFEST_CHUNKS and chunk < MAX_CHUNK_SIZE:
        chunk = min(chunk * 2, MAX_CHUNK_SIZE)
    if chunk_count(size, chunk) > MAX_MANIFEST_CHUNKS:
        raise _BadRequest(
            f"an artifact of {size} bytes needs more than {MAX_MANIFEST_CHUNKS} chunks of {MAX_CHUNK_SIZE} bytes"
        )
    return chunk


def _span(size: int, chunk_size: int, index: int) -> tuple[int, int]:
    offset = index * chunk_size
    return offset, min(chunk_size, size - offset)


@dataclass(frozen=True)
class ArtifactRecord:
    """A complete, verified artifact in a store."""

    model: str
    version: int
    size: int
    sha256: str
    path: Path


@dataclass(frozen=True)
class Manifest:
    """An artifact's size, sha256, and the sha256 of each ``chunk_size`` chunk (the last may be short)."""

    model: str
    version: int
    size: int
    sha256: str
    chunk_size: int
    chunks: tuple[bytes, ...]

    def span(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk ``index``."""
        return _span(self.size, self.chunk_size, index)


def compute_manifest(path: Path, chunk_size: int) -> tuple[tuple[bytes, ...], str]:
    """The sha256 of each chunk of a file, and of the whole file, in one read."""
    _check_chunk_size(chunk_size)
    whole = hashlib.sha256()
    chunks = []
    with path.open("rb") as f:
        while block := f.read(chunk_size):
            chunks.append(hashlib.sha256(block).digest())
            whole.update(block)
    return tuple(chunks), whole.hexdigest()


def _write_json(path: Path, value: Any) -> None:
    """Replace ``path`` atomically: a reader sees the old or the new document, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(value, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- the store ------------------------------------------------------------------------------------


class ArtifactStore:
    """Artifacts on this node's disk under ``root``. Synchronous (file I/O): async callers run its
    methods in worker threads. Safe to share between threads and between a server and a fetch."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._manifests: dict[tuple[str, int, int], tuple[tuple[int, int], Manifest]] = {}
        # One computation per (model, version, chunk size) at a time: concurrent Stats of a large
        # artifact on a cold cache would otherwise each read the whole file.
        self._computing: dict[tuple[str, int, int], threading.Lock] = {}
        # Copies found damaged, by the (size, mtime) they had: asked again, they are refused without
        # reading the whole file again, until the file changes.
        self._damaged: dict[tuple[str, int], tuple[tuple[int, int], str]] = {}

    def dir(self, model: str, version: int) -> Path:
        """``root/<model>/<version>``; InvalidArtifactName for anything that could leave ``root``."""
        _check_name(model, version)
        path = self.root / model / str(version)
        # The name rules already exclude separators, "." and "..": this is the belt to those braces
        # (a symlinked model directory pointing elsewhere is refused too).
        root = self.root.resolve()
        if not path.resolve().is_relative_to(root) or path.resolve() == root:
            raise InvalidArtifactName(f"{model!r} version {version} would be stored outside {self.root}")
        return path

    def path(self, model: str, version: int) -> Path:
        """Where the complete artifact lives (whether or not it is there yet)."""
        return self.dir(model, version) / _ARTIFACT

    def record(self, model: str, version: int) -> ArtifactRecord | None:
        """The complete, verified copy of (model, version), or None (absent, partial, or a record
        that does not describe the file next to it)."""
        directory = self.dir(model, version)
        data = _read_json(directory / _RECORD)
        path = directory / _ARTIFACT
        try:
            size = path.stat().st_size
        except OSError:
            return None
        if (
            not isinstance(data, dict)
            or data.get("model") != model
            or data.get("version") != version
            or data.get("size") != size
            or not isinstance(data.get("sha256"), str)
        ):
            return None
        return ArtifactRecord(model, version, size, data["sha256"], path)

    def records(self) -> list[ArtifactRecord]:
        """Every complete artifact in the store, by model and version."""
        out = []
        for record_path in sorted(self.root.glob(f"*/*/{_RECORD}")):
            data = _read_json(record_path)
            if not isinstance(data, dict):
                continue
            try:
                found = self.record(str(data.get("model")), int(data.get("version", 0)))
            except (InvalidArtifactName, TypeError, ValueError):
                continue
            if found is not None and found.path.parent == record_path.parent:
                out.append(found)
        return sorted(out, key=lambda r: (r.model, r.version))

    def manifest(self, model: str, version: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Manifest:
        """The manifest of a complete artifact at ``chunk_size``: from memory or its sidecar while the
        file's size and mtime are unchanged, else recomputed, and then the whole file is checked
        against its record first (ArtifactDamaged when it no longer matches: never vouch for bytes
        that changed since they were verified)."""
        _check_chunk_size(chunk_size)
        with self._computing.setdefault((model, version, chunk_size), threading.Lock()):
            return self._manifest(model, version, chunk_size)

    def _manifest(self, model: str, version: int, chunk_size: int) -> Manifest:
        record = self.record(model, version)
        if record is None:
            raise ArtifactNotFound(f"no complete copy of {model} version {version} in {self.root}")
        if chunk_count(record.size, chunk_size) > MAX_MANIFEST_CHUNKS:
            raise _BadRequest(
                f"chunk size {chunk_size} is too small for {record.size} bytes: use at least "
                f"{chunk_size_for(record.size, chunk_size)}"
            )
        stat = record.path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        damaged = self._damaged.get((model, version))
        if damaged is not None and damaged[0] == key:
            raise ArtifactDamaged(damaged[1])
        cached = self._manifests.get((model, version, chunk_size))
        if cached is not None and cached[0] == key and cached[1].sha256 == record.sha256:
            return cached[1]
        sidecar = record.path.parent / f"manifest.{chunk_size}.json"
        data = _read_json(sidecar)
        if (
            isinstance(data, dict)
            and data.get("size") == key[0]
            and data.get("mtime_ns") == key[1]
            and data.get("sha256") == record.sha256
            and isinstance(data.get("chunks"), list)
            and len(data["chunks"]) == chunk_count(record.size, chunk_size)
        ):
            manifest = Manifest(
                model, version, record.size, record.sha256, chunk_size, tuple(bytes.fromhex(c) for c in data["chunks"])
            )
        else:
            chunks, whole = compute_manifest(record.path, chunk_size)
            if whole != record.sha256:
                reason = (
                    f"{record.path} has sha256 {whole}, not the {record.sha256} it was verified against: "
                    "the copy on disk is damaged; remove it and fetch it again"
                )
                self._damaged[(model, version)] = (key, reason)
                raise ArtifactDamaged(reason)
            manifest = Manifest(model, version, record.size, record.sha256, chunk_size, chunks)
            self._save_manifest(manifest, record.path)
        self._manifests[(model, version, chunk_size)] = (key, manifest)
        return manifest

    def _save_manifest(self, manifest: Manifest, path: Path) -> None:
        stat = path.stat()
        _write_json(
            path.parent / f"manifest.{manifest.chunk_size}.json",
            {
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": manifest.sha256,
                "chunk_size": manifest.chunk_size,
                "chunks": [c.hex() for c in manifest.chunks],
            },
        )
        self._manifests[(manifest.model, manifest.version, manifest.chunk_size)] = (
            (stat.st_size, stat.st_mtime_ns),
            manifest,
        )

    def read(self, model: str, version: int, offset: int, length: int) -> bytes:
        """``length`` bytes of the complete artifact from ``offset`` (fewer at its end)."""
        record = self.record(model, version)
        if record is None:
            raise ArtifactNotFound(f"no complete copy of {model} version {version} in {self.root}")
        fd = os.open(record.path, os.O_RDONLY)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def open_partial(self, model: str, version: int, *, size: int, sha256: str, chunk_size: int) -> PartialArtifact:
        """The download of (model, version) in this store, resumed when a partial one for the same
        size and sha256 exists (keeping *its* chunk size: progress is worth more than a preferred
        chunk size), started afresh otherwise. ArtifactBusy while another fetch holds it."""
        return PartialArtifact(self, model, version, size=size, sha256=sha256, chunk_size=chunk_size)

    def put_file(
        self, model: str, version: int, source: Path | str, *, sha256: str | None = None, chunk_size: int = 0
    ) -> ArtifactRecord:
        """Copy a local file into the store as (model, version), verified against ``sha256`` (computed
        from the file when None). Already present with the same sha256: nothing to do."""
        source = Path(source)
        size = source.stat().st_size
        expected = sha256.lower() if sha256 else compute_manifest(source, DEFAULT_CHUNK_SIZE)[1]
        existing = self.record(model, version)
        if existing is not None:
            if existing.sha256 != expected:
                raise ArtifactCorrupt(
                    f"{existing.path} already holds {model} version {version} with sha256 {existing.sha256}, "
                    f"not {expected}: remove {existing.path.parent} first"
                )
            return existing
        chunk = chunk_size or chunk_size_for(size)
        partial = self.open_partial(model, version, size=size, sha256=expected, chunk_size=chunk)
        try:
            with source.open("rb") as f:
                for index in range(partial.chunk_count):
                    data = f.read(partial.chunk_size)
                    partial.write_chunk(index, data, hashlib.sha256(data).digest())
            return partial.commit()
        finally:
            partial.close()

    def remove(self, model: str, version: int) -> bool:
        """Delete everything stored for (model, version), partial download included."""
        directory = self.dir(model, version)
        if not directory.exists():
            return False
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()
        for key in [k for k in self._manifests if k[:2] == (model, version)]:
            self._manifests.pop(key, None)
        self._damaged.pop((model, version), None)
        return True


class PartialArtifact:
    """A download in progress: a file written chunk by chunk in place, and a progress record.

    Invariants: ``done`` holds exactly the chunks whose bytes in the file hash to the recorded sha256
    (checked again on every open, so a crash between writing data and recording it, or a damaged
    partial file, costs a re-fetch of those chunks, never a wrong file); the file becomes the visible
    artifact only through :meth:`commit`, after its whole sha256 matched.
    """

    def __init__(self, store: ArtifactStore, model: str, version: int, *, size: int, sha256: str, chunk_size: int):
        directory = store.dir(model, version)
        sha256 = sha256.lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        _check_chunk_size(chunk_size)
        self.store, self.model, self.version, self.size, self.sha256 = store, model, version, size, sha256
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise ArtifactBusy(
                f"another fetch is writing {model} version {version} in {store.root}; wait for it or stop it"
            ) from None
        self._data_path = directory / _PART
        self._progress_path = directory / _PROGRESS
        self._data_fd = -1
        self._progress_fd = -1
        try:
            self.chunk_size, self.done = self._resume(chunk_size)
            self._data_fd = os.open(self._data_path, os.O_RDWR | os.O_CREAT, 0o644)
            if os.fstat(self._data_fd).st_size != size:
                os.ftruncate(self._data_fd, size)  # sparse: space is taken as chunks arrive
            self._progress_fd = os.open(self._progress_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except BaseException:
            self.close()
            raise
        self.chunk_count = chunk_count(size, self.chunk_size)
        self._append = functools.partial(os.write, self._progress_fd)

    def _header(self, chunk_size: int) -> dict[str, Any]:
        return {
            "format": _PROGRESS_FORMAT,
            "model": self.model,
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
            "chunk_size": chunk_size,
        }

    def _resume(self, chunk_size: int) -> tuple[int, dict[int, bytes]]:
        """(chunk size, verified chunks) of an existing partial download for the same bytes, or a fresh
        one (progress rewritten with only a header)."""
        try:
            lines = self._progress_path.read_text().splitlines()
        except OSError:
            lines = []
        header = _loads(lines[0]) if lines else None
        if (
            isinstance(header, dict)
            and {k: header.get(k) for k in ("format", "model", "version", "size", "sha256")}
            == {k: v for k, v in self._header(0).items() if k != "chunk_size"}
            and isinstance(header.get("chunk_size"), int)
            and MIN_CHUNK_SIZE <= header["chunk_size"] <= MAX_CHUNK_SIZE
            and self._data_path.exists()
        ):
            existing = int(header["chunk_size"])
            recorded: dict[int, bytes] = {}
            for line in lines[1:]:
                entry = _loads(line)  # a torn last line (crash mid-append) is simply not there
                if (
                    isinstance(entry, dict)
                    and isinstance(entry.get("chunk"), int)
                    and isinstance(entry.get("sha256"), str)
                ):
                    with contextlib.suppress(ValueError):
                        recorded[entry["chunk"]] = bytes.fromhex(entry["sha256"])
            return existing, self._verify(recorded, existing)
        with contextlib.suppress(FileNotFoundError):
            self._data_path.unlink()
        _write_json_lines(self._progress_path, [self._header(chunk_size)])
        return chunk_size, {}

    def _verify(self, recorded: dict[int, bytes], chunk_size: int) -> dict[int, bytes]:
        count = chunk_count(self.size, chunk_size)
        done: dict[int, bytes] = {}
        with self._data_path.open("rb") as f:
            for index in sorted(k for k in recorded if 0 <= k < count):
                offset, length = _span(self.size, chunk_size, index)
                f.seek(offset)
                data = f.read(length)
                if len(data) == length and hashlib.sha256(data).digest() == recorded[index]:
                    done[index] = recorded[index]
        return done

    def missing(self) -> list[int]:
        return [k for k in range(self.chunk_count) if k not in self.done]

    def span(self, index: int) -> tuple[int, int]:
        return _span(self.size, self.chunk_size, index)

    def done_bytes(self) -> int:
        return sum(self.span(k)[1] for k in self.done)

    def write_chunk(self, index: int, data: bytes, digest: bytes) -> None:
        """Write chunk ``index`` (whose sha256 the caller verified is ``digest``) and record it. Safe
        from several threads at once: distinct chunks never overlap, and each progress line is one
        O_APPEND write."""
        offset, length = self.span(index)
        if len(data) != length:
            raise ValueError(f"chunk {index} must be {length} bytes, got {len(data)}")
        written = os.pwrite(self._data_fd, data, offset)
        if written != length:
            raise OSError(f"short write of chunk {index} to {self._data_path}: {written} of {length} bytes")
        self._append((json.dumps({"chunk": index, "sha256": digest.hex()}) + "\n").encode())
        self.done[index] = digest

    def whole_sha256(self) -> str:
        digest = hashlib.sha256()
        with self._data_path.open("rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
        return digest.hexdigest()

    def commit(self) -> ArtifactRecord:
        """Hash the whole file; if it is the expected sha256, make it the visible artifact (data synced,
        record written, then one rename), with its manifest at this chunk size. Otherwise raise
        ArtifactCorrupt and keep the partial download for repair."""
        missing = self.missing()
        if missing:
            raise ValueError(f"{len(missing)} chunk(s) still missing, e.g. {missing[:5]}")
        actual = self.whole_sha256()
        if actual != self.sha256:
            raise ArtifactCorrupt(
                f"the assembled {self.model} version {self.version} has sha256 {actual}, not {self.sha256}",
                actual_sha256=actual,
            )
        os.fsync(self._data_fd)
        directory = self._data_path.parent
        _write_json(
            directory / _RECORD, {"model": self.model, "version": self.version, "size": self.size, "sha256": actual}
        )
        final = directory / _ARTIFACT
        os.replace(self._data_path, final)
        _fsync_dir(directory)
        for stale in directory.glob("manifest.*.json"):
            stale.unlink()  # a previous copy's manifests (same size and mtime is unlikely, not impossible)
        manifest = Manifest(
            self.model,
            self.version,
            self.size,
            actual,
            self.chunk_size,
            tuple(self.done[k] for k in range(self.chunk_count)),
        )
        self.store._save_manifest(manifest, final)
        with contextlib.suppress(FileNotFoundError):
            self._progress_path.unlink()
        return ArtifactRecord(self.model, self.version, self.size, actual, final)

    def close(self) -> None:
        """Close the files and release the lock (the partial download stays for a later resume)."""
        for name in ("_data_fd", "_progress_fd", "_lock_fd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                os.close(fd)  # closing the lock's descriptor releases the flock
                setattr(self, name, -1)


def _loads(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _write_json_lines(path: Path, values: Iterable[Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for value in values:
            f.write(json.dumps(value, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the server -----------------------------------------------------------------------------------


@dataclass
class ServerStats:
    stats: int = 0
    reads: int = 0
    chunks_served: int = 0
    bytes_served: int = 0
    #: Read streams whose handler is still running (a cancelled client's stream ends later).
    reads_open: int = 0
    #: Calls answered with an error status.
    refused: int = 0


class _Servicer(pb_grpc.ArtifactsServicer):
    """Thin: each handler hands the request to the server and maps store errors to status codes."""

    def __init__(self, owner: ArtifactServer) -> None:
        self._owner = owner

    async def Stat(self, request: pb.StatArtifactRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            await self._owner._authorize(context, request.model)
            return await self._owner._stat(request)
        except (ArtifactError, OSError) as exc:
            self._owner.stats.refused += 1
            await context.abort(_status_of(exc), str(exc))

    async def Read(
        self, request: pb.ReadArtifactRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ArtifactChunk]:
        try:
            await self._owner._authorize(context, request.model)
            async for chunk in self._owner._read(request):
                yield chunk
        except (ArtifactError, OSError) as exc:
            self._owner.stats.refused += 1
            await context.abort(_status_of(exc), str(exc))


class ArtifactServer:
    """Serves the complete artifacts of ``store`` (the ``Artifacts`` service) on the node's gossip port.

    Either on a grpc.aio server of its own (:meth:`start`, ``async with``), or on one shared with the
    other gossip services (:meth:`add_to_server`). ``node_id`` is reported in Stat answers so a fetcher
    notices a stale address. ``on_damaged(model, version, reason)`` is called once per artifact found
    damaged on disk (the agent stops claiming it as a replica); chunks that still verify keep being
    served, and a damaged chunk is never sent.

    ``server_credentials`` (:func:`tls_credentials`) make the port mutual TLS: a caller must present
    a certificate from the cluster CA naming a controlplane identity, else UNAUTHENTICATED.
    ``access`` then decides per call whether that identity may read the model (PERMISSION_DENIED
    otherwise); :class:`ClusterAccess` asks the cluster's RBAC. Without credentials the port is
    plaintext and open to anyone who can reach it (``--insecure-dev`` agents only).
    """

    def __init__(
        self,
        store: ArtifactStore,
        *,
        node_id: str = "",
        on_damaged: Callable[[str, int, str], None] | None = None,
        server_credentials: grpc.ServerCredentials | None = None,
        access: ArtifactAccess | None = None,
    ) -> None:
        if access is not None and server_credentials is None:
            raise ValueError("access checks need TLS: pass server_credentials that require client certificates")
        self.store = store
        self.access = access
        self.node_id = node_id
        self.on_damaged = on_damaged
        self.stats = ServerStats()
        #: (model, version) whose copy on disk was found damaged.
        self.damaged: set[tuple[str, int]] = set()
        self._server_credentials = server_credentials
        self._server: grpc.aio.Server | None = None
        self._address: str | None = None

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Serve on ``server`` (created with message limits of at least 8 MiB)."""
        pb_grpc.add_ArtifactsServicer_to_server(_Servicer(self), server)  # type: ignore[no-untyped-call]

    @property
    def address(self) -> str:
        """``host:port`` actually bound by :meth:`start` (the OS picks the port when given 0)."""
        if self._address is None:
            raise RuntimeError("the artifact server is not started")
        return self._address

    async def start(self, address: str = "127.0.0.1:0") -> None:
        """Serve standalone on ``address``."""
        if self._server is not None:
            raise RuntimeError("the artifact server is already started")
        server = grpc.aio.server(options=GOSSIP_SERVER_OPTIONS)
        self.add_to_server(server)
        if self._server_credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, self._server_credentials)
        if port == 0:
            raise OSError(f"cannot bind the artifact server to {address}")
        await server.start()
        self._server, self._address = server, f"{address.rpartition(':')[0]}:{port}"

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving; calls in flight are cancelled (after ``grace`` seconds, if given)."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def __aenter__(self) -> ArtifactServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(0)

    async def _authorize(self, context: grpc.aio.ServicerContext[Any, Any], model: str) -> None:
        if self._server_credentials is None:
            return
        identity = certified_identity(context.auth_context() or {})
        if identity is None:
            raise ArtifactUnauthenticated(
                "this artifact port needs a client certificate from the cluster CA naming a controlplane "
                "identity (cpctl certs issue NAME --role client)"
            )
        if self.access is not None and (why := await self.access.check(identity, model)):
            raise ArtifactForbidden(
                f"downloading {model!r} from {self.node_id or 'this node'} needs models:read: {why}"
            )

    def _validate(self, model: str, version: int, chunk_size: int) -> int:
        _check_name(model, version)
        chunk = chunk_size or DEFAULT_CHUNK_SIZE
        _check_chunk_size(chunk)
        return chunk

    async def _manifest(self, model: str, version: int, chunk_size: int) -> Manifest:
        try:
            return await asyncio.to_thread(self.store.manifest, model, version, chunk_size)
        except ArtifactDamaged as exc:
            self._damaged(model, version, str(exc))
            raise

    def _damaged(self, model: str, version: int, reason: str) -> None:
        if (model, version) in self.damaged:
            return
        self.damaged.add((model, version))
        log.error("artifact_damaged", model=model, version=version, node=self.node_id, reason=reason)
        if self.on_damaged is not None:
            try:
                self.on_damaged(model, version, reason)
            except Exception:  # the callback's failure must not break serving the good chunks
                log.exception("artifact_damaged_callback_failed", model=model, version=version)

    async def _stat(self, request: pb.StatArtifactRequest) -> pb.StatArtifactResponse:
        self.stats.stats += 1
        chunk = self._validate(request.model, request.version, request.chunk_size)
        m = await self._manifest(request.model, request.version, chunk)
        return pb.StatArtifactResponse(
            model=m.model,
            version=m.version,
            size=m.size,
            sha256=m.sha256,
            chunk_size=m.chunk_size,
            chunk_sha256=list(m.chunks),
            node_id=self.node_id,
        )

    async def _read(self, request: pb.ReadArtifactRequest) -> AsyncIterator[pb.ArtifactChunk]:
        self.stats.reads += 1
        self.stats.reads_open += 1
        try:
            async for chunk in self._read_chunks(request):
                yield chunk
        finally:
            self.stats.reads_open -= 1

    async def _read_chunks(self, request: pb.ReadArtifactRequest) -> AsyncIterator[pb.ArtifactChunk]:
        chunk = self._validate(request.model, request.version, request.chunk_size)
        if request.offset % chunk:
            raise _BadRequest(f"offset {request.offset} is not a multiple of the chunk size {chunk}")
        m = await self._manifest(request.model, request.version, chunk)
        end = m.size if request.length == 0 else request.offset + request.length
        if request.offset > m.size or end > m.size:
            raise _OutOfRange(
                f"bytes [{request.offset}, {end}) are past the end of {m.model} version {m.version} ({m.size} bytes)"
            )
        if end % chunk and end != m.size:
            # Whole chunks only: each one sent is checked against the manifest first.
            raise _BadRequest(f"length {request.length} does not end on a chunk boundary (chunk size {chunk})")
        for index in range(request.offset // chunk, chunk_count(end, chunk)):
            offset, length = m.span(index)
            try:
                data, digest = await asyncio.to_thread(self._read_checked, m, index, offset, length)
            except ArtifactDamaged as exc:
                self._damaged(m.model, m.version, str(exc))
                raise
            self.stats.chunks_served += 1
            self.stats.bytes_served += len(data)
            yield pb.ArtifactChunk(offset=offset, data=data, sha256=digest)

    def _read_checked(self, m: Manifest, index: int, offset: int, length: int) -> tuple[bytes, bytes]:
        data = self.store.read(m.model, m.version, offset, length)
        digest = hashlib.sha256(data).digest()
        if digest != m.chunks[index]:
            reason = (
                f"chunk {index} (bytes {offset}-{offset + length}) of {m.model} version {m.version} on "
                f"{self.node_id or 'this node'} no longer matches its manifest: the copy on disk is damaged"
            )
            raise ArtifactDamaged(reason)  # never send it: the fetcher takes this chunk elsewhere
        return data, digest


def certified_identity(auth_context: Mapping[str, Any]) -> str | None:
    """The identity a verified client certificate names (``agent:n1``, ``server:s1``, ``user:alice``
    for a ``client:alice`` certificate), from its one controlplane URI SAN; None without one."""
    from controlplane.tls import URI_PREFIX, Identity, TlsError  # TLS ports only (cryptography)

    uris = [
        value.decode(errors="replace")
        for value in auth_context.get("x509_subject_alternative_name", ())
        if value.lower().startswith(URI_PREFIX.encode())
    ]
    if len(uris) != 1:
        return None  # none, or several: ambiguous, as the client port judges it
    try:
        identity = Identity.from_uri(uris[0])
    except TlsError:
        return None
    return f"{'user' if identity.role == 'client' else identity.role}:{identity.id}"


def tls_credentials(ca: bytes, cert: bytes, key: bytes) -> tuple[grpc.ServerCredentials, grpc.ChannelCredentials]:
    """Mutual TLS for a node's ports (artifacts, gossip) from its certificate (``agent:<node id>``, from
    ``cpctl certs issue ID --role agent``), its key and the cluster CA: what a port presents and
    requires of callers, and what the node presents when it fetches or dials."""
    server = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
    return server, grpc.ssl_channel_credentials(ca, key, cert)


class ArtifactAccess(Protocol):
    """Decides whether a certified identity may read a model's artifacts from this port."""

    async def check(self, identity: str, model: str) -> str | None:
        """None when ``identity`` may read ``model``; else why not (the caller reads it)."""
        ...


class _Permissions(Protocol):
    async def check_permission(
        self, identity: str, domain: str, verb: str, resource: str = "", *, timeout: float | None = ...
    ) -> str | None: ...


class ClusterAccess:
    """The artifact port's rule: agents by their certificate alone (they replicate artifacts
    between them, and the cluster grants every agent models:read); any other identity must hold
    models:read on the model in the cluster's RBAC, asked of the cluster on every call
    (``Auth.Check``, answered from the asked server's state), so a revoked role stops downloads at
    once. Servers are asked about too: one removed from the cluster holds nothing any more, and
    servers themselves never download. A cluster that cannot answer refuses the call with
    UNAVAILABLE, never lets it through."""

    def __init__(self, client: _Permissions, *, timeout: float = 5.0) -> None:
        self._client = client
        self._timeout = timeout

    async def check(self, identity: str, model: str) -> str | None:
        if identity.partition(":")[0] == "agent":
            return None
        try:
            return await self._client.check_permission(identity, "models", "read", model, timeout=self._timeout)
        except ControlPlaneError as exc:
            raise ArtifactAccessUnknown(
                f"cannot ask the cluster whether {identity} may read {model!r}; retry ({exc.message})"
            ) from None


# --- fetching -------------------------------------------------------------------------------------


class _Models(Protocol):
    async def get_version(
        self, model: str, version: int | str = ..., *, timeout: float | None = ...
    ) -> ModelVersion: ...

    async def add_replica(
        self, model: str, version: int, node_id: str, *, timeout: float | None = ...
    ) -> ModelVersion: ...


class _Membership(Protocol):
    async def get_node(self, node_id: str, *, timeout: float | None = ...) -> NodeView: ...


class _Gossip(Protocol):
    async def bandwidth(self, *, node_id: str = ..., timeout: float | None = ...) -> BandwidthMatrix: ...


class ArtifactClient(Protocol):
    """What a fetch needs of the SDK: :class:`controlplane.client.AsyncClient` provides it."""

    @property
    def models(self) -> _Models: ...

    @property
    def membership(self) -> _Membership: ...

    @property
    def gossip(self) -> _Gossip: ...


def rank_holders(
    holders: Iterable[str],
    *,
    matrix: Mapping[str, float] | None = None,
    table: BandwidthTable | None = None,
    rng: random.Random | None = None,
) -> list[tuple[str, float]]:
    """Holders best first, each with the bandwidth (bytes/s) believed for the link to it, 0.0 if unknown.

    The cluster's matrix (the slower of both ends' views, what gossip rounds match on) comes first; a
    link it does not know takes the local table's estimate; holders known to neither come last.
    Equal bandwidths (unknown ones included) are ordered at random, so that fetchers without
    measurements spread over the holders instead of all starting with the same one.
    """
    rng = rng or random.Random()
    scored = []
    for holder in sorted(set(holders)):
        score = float((matrix or {}).get(holder, 0.0))
        if not (math.isfinite(score) and score > 0.0):
            estimate = table.estimate(holder) if table is not None else None
            score = estimate.bandwidth if estimate is not None and estimate.samples else 0.0
        scored.append((holder, max(score, 0.0), rng.random()))
    scored.sort(key=lambda item: (-item[1], item[2]))
    return [(holder, score) for holder, score, _ in scored]


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch_artifact` did. Chunk counts are in chunks of ``chunk_size`` bytes."""

    path: Path
    model: str
    version: int
    size: int
    sha256: str
    chunk_size: int
    chunks: int
    #: Chunks downloaded and written by this call (re-fetches after a failed whole-file check included).
    chunks_fetched: int
    #: Chunks taken from an earlier, interrupted fetch (verified again before use).
    chunks_resumed: int
    bytes_fetched: int
    seconds: float
    #: Chunks each holder delivered that verified.
    by_holder: dict[str, int]
    #: Holders not used or given up on, and why.
    dropped: dict[str, str]
    #: (holder, chunk, why) for every chunk a holder refused or that failed verification.
    rejected: tuple[tuple[str, int, str], ...]
    #: Chunks fetched again because the whole file failed its sha256 and the manifests disagreed on them.
    repaired: tuple[int, ...]
    #: The store already held the verified artifact: nothing was transferred.
    already_present: bool
    replica_recorded: bool


@dataclass(eq=False)
class _Holder:
    id: str
    address: str
    score: float
    tiebreak: float
    channel: grpc.aio.Channel
    stub: pb_grpc.ArtifactsStub
    manifest: Manifest | None = None
    live: bool = True
    active: int = 0
    delivered: int = 0
    bad_chunks: int = 0


async def _settled(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread. If the caller is cancelled meanwhile, the thread is waited
    for before the cancellation goes on: no write to a partial download outlives the fetch that
    started it, so the next fetch opens a consistent file."""
    future = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


class _Fetch:
    """The transfer of a set of chunks from the holders, by ``parallel`` workers sharing one queue.

    Each worker repeatedly takes the holder with the fewest streams open (fastest first among equals:
    measured during this fetch, else the initial ranking) and the run of queued chunks it may serve,
    and streams that run. A faster holder frees its stream sooner and so takes more chunks. A chunk
    that fails verification or that the holder reports damaged goes back to the queue, barred from
    that holder; a holder whose stream fails, stalls or misbehaves is dropped and its chunks go back
    to the queue for the others. A chunk no live holder may serve ends the fetch at once.
    """

    def __init__(
        self,
        partial: PartialArtifact,
        holders: list[_Holder],
        *,
        lost: dict[str, str],
        bad: dict[str, str],
        parallel: int,
        stall_timeout: float,
        table: BandwidthTable | None,
        local_id: str,
        progress: Callable[[int, int], None] | None,
        have: set[int],
    ) -> None:
        self.partial = partial
        self.holders = holders
        self.lost = lost  # holders that never answered usefully: unreachable, gone, no address
        self.bad = bad  # holders whose copy is known bad or different before any transfer
        self.parallel = parallel
        self.stall_timeout = stall_timeout
        self.table = table
        try:
            from gossip.bandwidth import BandwidthTable  # numpy and networkx
        except ImportError as exc:  # an install with the client only (pip install controlplane)
            raise ImportError(f"fetching an artifact needs {exc.name}: pip install 'controlplane[gossip]'") from exc

        self.measured = BandwidthTable(local_id)
        self.progress = progress
        self.have = have
        self.have_bytes = sum(partial.span(k)[1] for k in have)
        # Runs amortise a call over small chunks, but stay short enough that every worker (and so
        # every fast holder) gets a share of a small artifact.
        self.run_chunks = max(1, min(READ_RUN_BYTES // partial.chunk_size, partial.chunk_count // (4 * parallel)))
        self.pending: SortedSet = SortedSet()
        self.inflight = 0
        self.changed = asyncio.Event()
        self.excluded: dict[int, dict[str, str]] = {}
        self.rejected: list[tuple[str, int, str]] = []
        self.dropped: dict[str, str] = {}
        # Holders dropped for their bytes (too many bad chunks), not for their reachability.
        self.untrusted: set[str] = set()
        self.fetched = 0
        self.bytes_fetched = 0

    # -- scheduling

    async def run(self, chunks: Iterable[int]) -> None:
        self.pending.update(chunks)
        if not self.pending:
            return
        workers = [asyncio.create_task(self._worker()) for _ in range(min(self.parallel, len(self.pending)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise

    async def _worker(self) -> None:
        while True:
            if not self.pending and self.inflight == 0:
                return
            assignment = self._assign()
            if assignment is None:
                if self.pending:
                    raise self._stuck()
                # Chunks are in flight elsewhere; one may fail and come back to the queue.
                self.changed.clear()
                await self.changed.wait()
                continue
            await self._transfer(*assignment)

    def _score(self, holder: _Holder) -> float:
        measured = self.measured.estimate(holder.id)
        return measured.bandwidth if measured is not None and measured.samples else holder.score

    def _assign(self) -> tuple[_Holder, list[int]] | None:
        """The next (holder, run of consecutive queued chunks it may serve), taken off the queue.
        Synchronous: no other worker runs between choosing and taking."""
        live = sorted((h for h in self.holders if h.live), key=lambda h: (h.active, -self._score(h), h.tiebreak))
        for holder in live:
            run: list[int] = []
            for index in self.pending:
                if holder.id in self.excluded.get(index, ()):
                    if run:
                        break
                    continue
                if run and index != run[-1] + 1:
                    break
                run.append(index)
                if len(run) >= self.run_chunks:
                    break
            if run:
                for index in run:
                    self.pending.discard(index)
                holder.active += 1
                self.inflight += len(run)
                return holder, run
        return None

    def _stuck(self) -> ArtifactError:
        """Every queued chunk is barred from every live holder: the fetch cannot finish."""
        index = self.pending[0]
        offset, length = self.partial.span(index)
        barred = self.excluded.get(index, {})
        reasons = [f"{h}: {why}" for h, why in sorted(barred.items())]
        reasons += [f"{h}: {why}" for h, why in sorted(self.dropped.items()) if h not in barred]
        reasons += [f"{h}: {why}" for h, why in sorted({**self.bad, **self.lost}.items())]
        where = (
            f"chunk {index} (bytes {offset}-{offset + length}) of {self.partial.model} version {self.partial.version}"
        )
        detail = "; ".join(reasons) or "no holder"
        # Corrupt only when every holder that could be asked gave bad bytes for it (or so many bad
        # chunks that it was dropped); one unreachable or lost midway might still have a good copy.
        if not self.lost and all(h.id in barred or h.id in self.untrusted for h in self.holders):
            return ArtifactCorrupt(
                f"every holder's copy of {where} is bad ({detail}). Publish the artifact again from a good "
                "copy (cpctl models publish); the good chunks fetched so far are kept for the next attempt"
            )
        return ArtifactUnavailable(
            f"no holder left that can deliver {where} ({detail}). Retry when holders are back; the "
            "chunks fetched so far are kept and the next fetch resumes"
        )

    def _exclude(self, holder: _Holder, index: int, why: str) -> None:
        self.excluded.setdefault(index, {})[holder.id] = why
        self.rejected.append((holder.id, index, why))

    def _drop(self, holder: _Holder, why: str) -> None:
        if holder.live:
            holder.live = False
            self.dropped[holder.id] = why
            log.warning("artifact_holder_dropped", holder=holder.id, address=holder.address, reason=why)
            if self.table is not None:
                with contextlib.suppress(ValueError):  # a table kept on another clock: skip the sample
                    self.table.penalise(holder.id, time.monotonic())

    # -- one run of chunks from one holder

    async def _transfer(self, holder: _Holder, run: list[int]) -> None:
        assert holder.manifest is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        received: list[int] = []
        accepted: set[int] = set()
        nbytes = 0
        failure: str | None = None
        offset = self.partial.span(run[0])[0]
        last_offset, last_length = self.partial.span(run[-1])
        request = pb.ReadArtifactRequest(
            model=self.partial.model,
            version=self.partial.version,
            chunk_size=self.partial.chunk_size,
            offset=offset,
            length=last_offset + last_length - offset,
        )
        call = holder.stub.Read(request)
        try:
            async with asyncio.timeout(self.stall_timeout) as stall:
                async for message in call:
                    if len(received) == len(run) or message.offset != self.partial.span(run[len(received)])[0]:
                        failure = f"sent a chunk at offset {message.offset} it was not asked for"
                        break
                    index = run[len(received)]
                    received.append(index)
                    why = await _settled(self._verify_and_write, holder.manifest, index, message.data, message.sha256)
                    if why is None:
                        accepted.add(index)
                        nbytes += len(message.data)
                        self._delivered(holder, index)
                    else:
                        failure = self._reject(holder, index, why)
                        if failure is not None:
                            break
                    stall.reschedule(loop.time() + self.stall_timeout)
            if failure is None and len(received) < len(run):
                failure = "ended its stream before the last chunk asked for"
        except TimeoutError:
            failure = f"sent nothing for {self.stall_timeout:g} s"
        except grpc.aio.AioRpcError as exc:
            failure = self._rpc_failure(holder, exc, run[len(received)] if len(received) < len(run) else None)
        finally:
            call.cancel()
            holder.active -= 1
            self.inflight -= len(run)
            self.pending.update(index for index in run if index not in accepted)
            if failure is not None:
                self._drop(holder, failure)
            self.changed.set()
        seconds = loop.time() - started
        if nbytes and seconds > 0:
            now = time.monotonic()
            self.measured.observe(holder.id, nbytes, seconds, now)
            if self.table is not None:
                with contextlib.suppress(ValueError):
                    self.table.observe(holder.id, nbytes, seconds, now)

    def _verify_and_write(self, manifest: Manifest, index: int, data: bytes, sent_digest: bytes) -> str | None:
        """In a worker thread: None when chunk ``index`` verified and was written, else why not."""
        length = self.partial.span(index)[1]
        if len(data) != length:
            return f"chunk {index} is {len(data)} bytes, not {length}"
        digest = hashlib.sha256(data).digest()
        if digest != sent_digest:
            return f"chunk {index} was damaged in transit (its sha256 differs from the one sent with it)"
        if digest != manifest.chunks[index]:
            return f"chunk {index} does not match the holder's own manifest"
        self.partial.write_chunk(index, data, digest)
        return None

    def _delivered(self, holder: _Holder, index: int) -> None:
        holder.delivered += 1
        self.fetched += 1
        length = self.partial.span(index)[1]
        self.bytes_fetched += length
        if index not in self.have:
            self.have.add(index)
            self.have_bytes += length
        if self.progress is not None:
            self.progress(self.have_bytes, self.partial.size)

    def _reject(self, holder: _Holder, index: int, why: str) -> str | None:
        """Bar ``holder`` from chunk ``index``; the reason to drop it altogether, if it is now one."""
        self._exclude(holder, index, why)
        holder.bad_chunks += 1
        if self.table is not None:
            with contextlib.suppress(ValueError):
                self.table.penalise(holder.id, time.monotonic())
        if holder.bad_chunks >= MAX_BAD_CHUNKS_PER_HOLDER:
            self.untrusted.add(holder.id)
            return f"delivered {holder.bad_chunks} chunks that failed verification"
        return None

    def _rpc_failure(self, holder: _Holder, exc: grpc.aio.AioRpcError, index: int | None) -> str | None:
        """Why ``holder`` is dropped after a failed Read, or None when only chunk ``index`` is barred
        (the holder reported its copy of that chunk damaged; its other chunks are still good)."""
        code, details = exc.code(), exc.details()
        if code == grpc.StatusCode.DATA_LOSS and index is not None:
            return self._reject(holder, index, f"reports its copy damaged ({details})")
        if code == grpc.StatusCode.NOT_FOUND:
            return f"no longer holds it ({details})"
        return f"{code.name}: {details}"

    # -- after a failed whole-file check

    def suspects(self, actual_sha256: str) -> list[int]:
        """Chunks on which some holder's manifest disagrees with what was written, each barred from
        the holders whose manifest vouches for the written bytes; raises ArtifactCorrupt when there is
        no such chunk (nothing says which chunk is wrong)."""
        done = self.partial.done
        manifests = [(h, h.manifest) for h in self.holders if h.manifest is not None]
        out = [k for k in range(self.partial.chunk_count) if any(m.chunks[k] != done.get(k) for _, m in manifests)]
        if not out and self.lost:
            raise ArtifactUnavailable(
                f"the assembled {self.partial.model} version {self.partial.version} has sha256 {actual_sha256}, "
                f"not the registry's {self.partial.sha256}; the reachable holders' manifests agree with every chunk "
                f"written, and a good copy may be on the holders that could not be asked ("
                + "; ".join(f"{h}: {why}" for h, why in sorted(self.lost.items()))
                + "). Retry when they are back"
            )
        if not out:
            raise ArtifactCorrupt(
                f"the assembled {self.partial.model} version {self.partial.version} has sha256 {actual_sha256}, "
                f"not the registry's {self.partial.sha256}, and the manifests of all {len(manifests)} holder(s) "
                "agree with every chunk written: the holders share the same wrong bytes, or the registered "
                "sha256 is wrong. Check the version (cpctl models show) and publish a good copy",
                actual_sha256=actual_sha256,
            )
        for index in out:
            for holder, manifest in manifests:
                if manifest.chunks[index] == done.get(index):
                    self._exclude(
                        holder, index, "vouched for this chunk of a file whose whole sha256 did not match the registry"
                    )
        return out


def _manifest_from(response: pb.StatArtifactResponse) -> Manifest:
    return Manifest(
        response.model,
        response.version,
        response.size,
        response.sha256,
        response.chunk_size,
        tuple(response.chunk_sha256),
    )


async def _resolve(client: ArtifactClient, holder: str, timeout: float) -> tuple[str, str]:
    """(gossip address, "") of a holder, or ("", why it cannot be asked)."""
    try:
        view = await client.membership.get_node(holder, timeout=timeout)
    except NotFound:
        return "", "is not a registered node"
    except ControlPlaneError as exc:
        return "", f"could not be looked up ({type(exc).__name__}: {exc})"
    if view.node.state in (NodeState.LEFT, NodeState.DEAD):
        return "", f"is {view.node.state.name.lower()}"
    address = view.node.spec.addresses.get("gossip", "")
    if not address:
        return "", "registered no gossip address (run its agent with --artifact-dir and --gossip-listen)"
    return address, ""


async def _stat(holder: _Holder, partial: PartialArtifact, timeout: float) -> tuple[str, bool]:
    """Ask ``holder`` for its manifest (set on the holder). Returns ("", _) when usable, else (why not,
    whether the reason is about its bytes rather than its reachability)."""
    request = pb.StatArtifactRequest(model=partial.model, version=partial.version, chunk_size=partial.chunk_size)
    try:
        response = await holder.stub.Stat(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        return f"{code.name}: {exc.details()}", code == grpc.StatusCode.DATA_LOSS
    if response.node_id and response.node_id != holder.id:
        return f"its address {holder.address} answers as node {response.node_id!r} (a stale address)", False
    if response.sha256 != partial.sha256 or response.size != partial.size:
        return (
            f"holds other bytes (sha256 {response.sha256[:16]}..., {response.size} bytes) than the registry's "
            f"(sha256 {partial.sha256[:16]}..., {partial.size} bytes)",
            True,
        )
    if (
        response.chunk_size != partial.chunk_size
        or len(response.chunk_sha256) != partial.chunk_count
        or any(len(digest) != 32 for digest in response.chunk_sha256)
    ):
        return "sent a malformed manifest", False
    holder.manifest = _manifest_from(response)
    return "", False


async def _matrix(client: ArtifactClient, node_id: str | None, timeout: float) -> dict[str, float]:
    """The cluster's bandwidth estimates for the links from ``node_id``; empty when unknown."""
    if not node_id:
        return {}
    try:
        matrix = await client.gossip.bandwidth(node_id=node_id, timeout=timeout)
    except ControlPlaneError:
        return {}  # an older server, or the gossip layer not in use: rank by local samples instead
    out: dict[str, float] = {}
    for link in matrix.links:
        if node_id in (link.a, link.b):
            out[link.b if link.a == node_id else link.a] = link.bandwidth_bps
    return out


def _client_tls(client: object) -> grpc.ChannelCredentials | None:
    """TLS to the holders with the SDK client's own credentials (``AsyncClient.credentials``) when it
    talks TLS to the cluster: the holders of a TLS cluster serve mutual TLS only."""
    credentials = getattr(client, "credentials", None)
    if isinstance(credentials, Credentials) and credentials.secure:
        return credentials.channel_credentials()
    return None


async def fetch_artifact(
    client: ArtifactClient,
    model: str,
    version: int | str,
    store: ArtifactStore,
    *,
    node_id: str | None = None,
    parallel: int = 4,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    bandwidth: BandwidthTable | None = None,
    progress: Callable[[int, int], None] | None = None,
    record_replica: bool = True,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT_S,
    channel_credentials: grpc.ChannelCredentials | None = None,
    rng: random.Random | None = None,
) -> FetchResult:
    """Fetch a registered version's artifact into ``store`` from the nodes that hold it; see :func:`fetch`.

    Returns what was done. ``stall_timeout`` bounds every wait on a holder (its Stat answer, each next
    chunk). ``rng`` orders holders of equal (or unknown) bandwidth. Bandwidth samples and penalties
    are fed into ``bandwidth`` with ``time.monotonic()`` as their time.
    """
    if parallel < 1:
        raise ValueError(f"parallel must be at least 1, got {parallel}")
    _check_chunk_size(chunk_size)
    if not (math.isfinite(stall_timeout) and stall_timeout > 0):
        raise ValueError(f"stall_timeout must be positive, got {stall_timeout}")
    if node_id is not None and (problem := limits.check_member_id(node_id, "node id")):
        raise ValueError(problem)
    started = time.monotonic()
    found = await client.models.get_version(model, version)
    number, expected, size = found.version, found.sha256.lower(), found.size_bytes
    store.dir(model, number)  # InvalidArtifactName before anything else happens

    async def record() -> bool:
        if record_replica and node_id:
            await client.models.add_replica(model, number, node_id)  # idempotent
            return True
        return False

    existing = await asyncio.to_thread(store.record, model, number)
    if existing is not None:
        # The record says the copy was verified once; bytes rot in place (same size). Hash it again
        # before vouching for it as a replica, and fetch afresh if it no longer matches.
        _, actual = await asyncio.to_thread(compute_manifest, existing.path, MAX_CHUNK_SIZE)
        if actual != existing.sha256:
            log.warning("artifact_copy_damaged", model=model, version=number, path=str(existing.path))
            await asyncio.to_thread(store.remove, model, number)
            existing = None
    if existing is not None:
        if existing.sha256 != expected or existing.size != size:
            raise ArtifactCorrupt(
                f"{existing.path} holds sha256 {existing.sha256} ({existing.size} bytes), but the registry's "
                f"{model} version {number} is {expected} ({size} bytes): remove {existing.path.parent} and fetch again"
            )
        if progress is not None:
            progress(size, size)
        return FetchResult(
            path=existing.path,
            model=model,
            version=number,
            size=size,
            sha256=expected,
            chunk_size=0,
            chunks=0,
            chunks_fetched=0,
            chunks_resumed=0,
            bytes_fetched=0,
            seconds=time.monotonic() - started,
            by_holder={},
            dropped={},
            rejected=(),
            repaired=(),
            already_present=True,
            replica_recorded=await record(),
        )

    candidates = [r for r in found.replicas if r != node_id]
    if not candidates:
        others = " other than this node" if node_id in found.replicas else ""
        raise ArtifactUnavailable(
            f"no node holds {model} version {number}: the registry lists no replica{others}. Publish it on a "
            "node that has the file (cpctl models publish) and serve it (cpctl agent --artifact-dir)"
        )
    matrix = await _matrix(client, node_id, stall_timeout)
    ranked = rank_holders(candidates, matrix=matrix, table=bandwidth, rng=rng)[:MAX_HOLDERS]
    partial = await asyncio.to_thread(
        store.open_partial, model, number, size=size, sha256=expected, chunk_size=chunk_size_for(size, chunk_size)
    )
    if channel_credentials is None:
        channel_credentials = _client_tls(client)
    holders: list[_Holder] = []
    try:
        lost: dict[str, str] = {}
        bad: dict[str, str] = {}
        addresses = await asyncio.gather(*(_resolve(client, h, stall_timeout) for h, _ in ranked))
        tiebreak = rng or random.Random()
        for (holder_id, score), (address, why) in zip(ranked, addresses, strict=True):
            if not address:
                lost[holder_id] = why
                continue
            if channel_credentials is None:
                channel = grpc.aio.insecure_channel(address, options=GOSSIP_CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.secure_channel(address, channel_credentials, options=GOSSIP_CHANNEL_OPTIONS)
            holders.append(
                _Holder(holder_id, address, score, tiebreak.random(), channel, pb_grpc.ArtifactsStub(channel))
            )
        stats = await asyncio.gather(*(_stat(h, partial, stall_timeout) for h in holders))
        for holder, (why, about_bytes) in zip(list(holders), stats, strict=True):
            if why:
                (bad if about_bytes else lost)[holder.id] = why
        usable = [h for h in holders if h.manifest is not None]
        resumed_digests = dict(partial.done)
        # A resumed chunk no holder's manifest vouches for is stale (an earlier fetch from a holder whose
        # copy was bad): fetch it again now rather than after a failed whole-file check.
        stale = [
            k
            for k, d in resumed_digests.items()
            if usable and all(h.manifest.chunks[k] != d for h in usable if h.manifest)
        ]
        todo = sorted(set(partial.missing()) | set(stale))
        resumed = set(resumed_digests) - set(stale)
        if todo and not usable:
            reasons = "; ".join(f"{h}: {why}" for h, why in sorted({**lost, **bad}.items()))
            kind = ArtifactCorrupt if bad and not lost else ArtifactUnavailable
            raise kind(
                f"none of the {len(candidates)} holder(s) of {model} version {number} can deliver it ({reasons})"
            )
        fetch_ = _Fetch(
            partial,
            usable,
            lost=lost,
            bad=bad,
            parallel=parallel,
            stall_timeout=stall_timeout,
            table=bandwidth,
            local_id=node_id or "",
            progress=progress,
            have=set(resumed),
        )
        if progress is not None:
            progress(fetch_.have_bytes, size)
        repaired: list[int] = []
        for attempt in range(MAX_REPAIR_ROUNDS + 1):
            await fetch_.run(todo)
            try:
                artifact = await _settled(partial.commit)
                break
            except ArtifactCorrupt as exc:
                if attempt == MAX_REPAIR_ROUNDS:
                    raise ArtifactCorrupt(
                        f"{exc}; still wrong after re-fetching {len(repaired)} chunk(s) the holders disagreed on",
                        actual_sha256=exc.actual_sha256,
                    ) from None
                todo = fetch_.suspects(exc.actual_sha256)
                repaired.extend(todo)
                log.warning("artifact_whole_file_mismatch", model=model, version=number, refetching=todo)
    finally:
        partial.close()
        await asyncio.gather(*(h.channel.close() for h in holders), return_exceptions=True)

    dropped = {**lost, **bad, **fetch_.dropped}
    return FetchResult(
        path=artifact.path,
        model=model,
        version=number,
        size=size,
        sha256=expected,
        chunk_size=partial.chunk_size,
        chunks=partial.chunk_count,
        chunks_fetched=fetch_.fetched,
        chunks_resumed=len(resumed - set(repaired)),
        bytes_fetched=fetch_.bytes_fetched,
        seconds=time.monotonic() - started,
        by_holder={h.id: h.delivered for h in usable if h.delivered},
        dropped=dropped,
        rejected=tuple(fetch_.rejected),
        repaired=tuple(sorted(set(repaired))),
        already_present=False,
        replica_recorded=await record(),
    )


async def fetch(
    client: ArtifactClient,
    model: str,
    version: int | str,
    store: ArtifactStore,
    *,
    node_id: str | None = None,
    parallel: int = 4,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    bandwidth: BandwidthTable | None = None,
    progress: Callable[[int, int], None] | None = None,
    record_replica: bool = True,
    channel_credentials: grpc.ChannelCredentials | None = None,
) -> Path:
    """Fetch a registered version's artifact into ``store`` and return the path of the verified file.

    ``version`` is a number, an alias or "latest". The registry gives the sha256, size and holders;
    membership gives each holder's "gossip" address. Up to ``parallel`` chunk streams run at once over
    the holders, fastest first (see :func:`rank_holders`); every chunk is checked against the holder's
    manifest and the whole file against the registry's sha256 before it becomes visible. An
    interrupted fetch resumes from what it had written. ``progress(done_bytes, total_bytes)`` is
    called as chunks land. On success ``node_id`` (when given and ``record_replica``) is recorded as a
    replica. Raises ArtifactUnavailable, ArtifactCorrupt, ArtifactBusy, InvalidArtifactName, or the
    SDK's errors (``NotFound`` for an unknown model or version). ``channel_credentials``: TLS to the
    holders' artifact ports, which every holder of a TLS cluster requires with a client certificate
    from the cluster CA; by default those of ``client`` (an ``AsyncClient`` with TLS credentials).
    """
    result = await fetch_artifact(
        client,
        model,
        version,
        store,
        node_id=node_id,
        parallel=parallel,
        chunk_size=chunk_size,
        bandwidth=bandwidth,
        progress=progress,
        record_replica=record_replica,
        channel_credentials=channel_credentials,
    )
    return result.path


# --- publishing -----------------------------------------------------------------------------------

#: The model format a file's extension names (``publish``'s default format).
FORMAT_BY_SUFFIX = {".safetensors": "safetensors", ".gguf": "gguf", ".onnx": "onnx", ".pt": "pt", ".pth": "pt"}


@dataclass(frozen=True)
class PublishResult:
    model: str
    version: int
    sha256: str
    size: int
    #: The verified copy in the store.
    path: Path
    #: True when this call registered the version; False when one with the file's sha256 existed.
    registered: bool
    #: The version's replicas once this node was recorded.
    replicas: tuple[str, ...]


def _file_sha256(file: Path) -> tuple[str, int]:
    with file.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest(), os.fstat(f.fileno()).st_size


async def _version_with(client: AsyncClient, model: str, sha256: str) -> ModelVersion | None:
    try:
        detail = await client.models.get(model)
    except NotFound:
        return None
    return next((v for v in detail.versions if v.sha256 == sha256), None)


async def publish(
    client: AsyncClient,
    store: ArtifactStore,
    model: str,
    file: Path | str,
    *,
    node_id: str,
    format: str | None = None,
    status: str = "ready",
    source_uri: str = "",
    description: str = "",
    family: str = "",
    tags: Iterable[str] = (),
) -> PublishResult:
    """Put ``file`` into ``store`` as a version of ``model`` and record ``node_id`` (the node whose
    agent serves ``store``) as a replica, so that other nodes can :func:`fetch` it.

    The version is the one whose sha256 is the file's; without one, the next version is registered
    with the file's sha256 and size (and ``format``, by default from the file's extension, then
    ``status``, ``source_uri``, and for a new model ``description``, ``family`` and ``tags``).
    Publishing the same file again, here or on another node, registers nothing more. Raises
    InvalidArtifactName before anything else for a name that cannot name a directory, OSError for a
    file it cannot read, ArtifactMismatch when the registry has the sha256 with another size, and
    the SDK's errors.
    """
    _check_name(model, 1)
    file = Path(file)
    sha256, size = await asyncio.to_thread(_file_sha256, file)
    registered = False
    version = await _version_with(client, model, sha256)
    if version is None:
        try:
            found = await client.models.register(
                model,
                sha256,
                size,
                format or FORMAT_BY_SUFFIX.get(file.suffix.lower(), "other"),
                source_uri=source_uri,
                status=status,
                description=description,
                family=family,
                tags=tags,
            )
            version, registered = found.version, True
        except AlreadyExists:
            # Another publisher of the same bytes registered it first: use that version.
            version = await _version_with(client, model, sha256)
            if version is None:
                raise
    if version.size_bytes != size:
        raise ArtifactMismatch(
            f"{model} version {version.version} has sha256 {sha256} but {version.size_bytes} bytes, not {size}"
        )
    record = await asyncio.to_thread(store.put_file, model, version.version, file, sha256=sha256)
    replicated = await client.models.add_replica(model, version.version, node_id)
    return PublishResult(model, version.version, sha256, size, record.path, registered, tuple(replicated.replicas))


async def announce(client: ArtifactClient, store: ArtifactStore, node_id: str) -> dict[tuple[str, int], str]:
    """Record ``node_id`` as a replica of every complete artifact in ``store`` that the registry knows
    with the same sha256 and size (an agent does this when it starts: its disk is the truth of what it
    holds). Returns, per (model, version), "recorded", "already recorded", "not registered" or
    "differs from the registry" (never recorded)."""
    out: dict[tuple[str, int], str] = {}
    for record in await asyncio.to_thread(store.records):
        key = (record.model, record.version)
        try:
            found = await client.models.get_version(record.model, record.version)
        except NotFound:
            out[key] = "not registered"
            continue
        if found.sha256.lower() != record.sha256 or found.size_bytes != record.size:
            out[key] = "differs from the registry"
            log.warning("artifact_not_announced", model=record.model, version=record.version, reason=out[key])
            continue
        if node_id in found.replicas:
            out[key] = "already recorded"
            continue
        await client.models.add_replica(record.model, record.version, node_id)
        out[key] = "recorded"
    return out
