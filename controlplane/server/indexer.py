"""Keeps this server's search index (server/search.py) in step with the replicated model registry.

The index is derived state, kept in a file across restarts. It follows the "models" events of the
watch history, one SQLite transaction per catch-up that changes a model (a catch-up over KV writes
alone commits at most every ``search.META_WRITE_INTERVAL_S``, and on close), each recording the
revision it reached and a *fingerprint* of the state there (a digest of the watch event at that
revision: its revision, key, leader time and typed change, values left out). A restarted server
opens the file and, once its state machine has applied that revision, compares the event it
holds at that revision with the fingerprint:

* equal: the file is this cluster's index at that revision (Raft gives every server the same
  event at the same revision; a different history would have to produce the identical event, to
  the leader's millisecond). It is *trusted* and caught up from the history, like any catch-up;
* different, or no longer checkable (the history no longer reaches back to it: compacted, or a
  backup restore, which always marks the history compacted), or the state machine is ready (it has
  caught up with a leader) and still behind the file's revision: the file holds some other state.
  It is rebuilt.

Rebuilding runs in the background: the documents are read from the state machine in slices, the
event loop running between them, and the models that changed meanwhile (the history since the
rebuild began says which) are read again at the end, under the state lock, so the whole is the
registry at exactly one revision; SQLite works in aiosqlite's thread. The same applies when the
history no longer reaches back to a trusted index's revision.

A search waits until the index is trusted and has reached the revision its read options require
(LINEARIZABLE: everything applied when the barrier returned; STALE: min_revision), and answers with
the revision it saw. So every server gives the same answer at the same revision, and no answer ever
comes from a file that was not checked. The index never feeds anything back into the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import structlog

from controlplane.errors import DeadlineExceeded
from controlplane.server.search import ModelDoc, SearchIndex, model_doc
from controlplane.state.machine import StateMachine
from controlplane.state.models import DOMAIN_MODELS
from controlplane.v1 import watch_pb2

log = structlog.get_logger("controlplane.indexer")

CATCH_UP_EVENTS = 5000
IDLE_CHECK_S = 1.0
# Models whose documents a rebuild reads per turn of the event loop.
REBUILD_SLICE = 1000
# A rebuild whose history ran out while it read (writes faster than it reads) tries again this
# often, then reads everything in one turn of the loop.
REBUILD_ATTEMPTS = 3


class _Readiness(Protocol):
    def is_ready(self) -> bool: ...


class IndexedNode(Protocol):
    """What the indexer needs of the server (node.Node is one)."""

    @property
    def node_id(self) -> str: ...

    @property
    def machine(self) -> StateMachine: ...

    @property
    def state_lock(self) -> AbstractContextManager[Any]: ...

    @property
    def raft(self) -> _Readiness: ...

    async def wait_for_revision(self, revision: int, timeout: float | None) -> None: ...


def fingerprint(event: watch_pb2.Event) -> str:
    """What a kept index records about the state at ``event``'s revision (see the module docstring)."""
    bare = watch_pb2.Event()
    bare.CopyFrom(event)
    return _digest(bare)


def _digest(event: watch_pb2.Event) -> str:
    # Values are left out (they are up to a mebibyte): the revisions, versions, key and leader
    # time that stay already tell one history from another. Clears them in ``event``.
    for kv in (event.kv, event.prev_kv):
        kv.ClearField("value")
    return hashlib.sha256(event.SerializeToString(deterministic=True)).hexdigest()


def state_fingerprint(machine: StateMachine, revision: int) -> str:
    """The fingerprint of ``machine``'s state at ``revision``; "" when its history cannot tell
    (revision 0, or an event no longer retained). Call under the state lock."""
    if revision <= machine.compacted_revision:
        return ""
    events = machine.events_from(revision, 1)  # a copy: _digest may clear it
    return _digest(events[0]) if events and events[0].revision == revision else ""


class Indexer:
    def __init__(self, node: IndexedNode, path: Path | str, use_fts5: bool = True) -> None:
        self._node = node
        self._path = path
        self._use_fts5 = use_fts5
        self._advanced = asyncio.Event()
        # The index's contents are the registry at index.revision: checked, or written by us.
        self._trusted = False
        self.index: SearchIndex | None = None
        #: Full rebuilds since start, and whether a kept index was checked and reused.
        self.rebuilds = 0
        self.reused = False

    async def start(self) -> None:
        """Open the kept index (or a new, empty one); quick: any rebuild is left to ``run``."""
        self.index = await SearchIndex.open(self._path, use_fts5=self._use_fts5)
        # Revision 0 is the empty registry in every history.
        self._trusted = self.index.revision == 0
        log.info("search_index_opened", revision=self.index.revision, engine=self.index.engine)

    async def close(self) -> None:
        index = self.index
        if index is None:
            return
        if self._trusted and index.fingerprint_revision < index.revision:
            # What advance moved past without a fingerprint gets one now, so the file keeps the
            # latest revision: a restart checks and catches up from there, not from a revision
            # the history may have compacted meanwhile (which would cost a rebuild).
            with self._node.state_lock:
                mark = state_fingerprint(self._node.machine, index.revision)
            if mark:
                # ValueError: a catch-up cancelled by the stop finished its apply meanwhile, at a
                # later revision, and committed it with its own fingerprint.
                with contextlib.suppress(ValueError):
                    await index.apply([], [], index.revision, mark)
        await index.close()

    @property
    def trusted(self) -> bool:
        """The index holds the registry at its revision (a kept one only once checked)."""
        return self._trusted

    async def run(self) -> None:
        while True:
            assert self.index is not None
            try:
                awaited = await self.catch_up()
            except Exception:  # never let the index die quietly: log, rebuild
                log.exception("search_index_update_failed")
                await self._rebuild()
                continue
            with contextlib.suppress(DeadlineExceeded):
                await self._node.wait_for_revision(awaited, IDLE_CHECK_S)

    async def catch_up(self) -> int:
        """Bring the index up to the applied revision (incrementally, or by a rebuild), as far as
        the state machine allows now; the revision worth waiting for before trying again."""
        index = self.index
        assert index is not None
        while True:
            if not self._trusted:
                verdict = self._check_kept()
                if verdict is None:  # the state machine has not applied the index's revision yet
                    return index.revision
                if not verdict:
                    await self._rebuild()
                    continue
                self._trusted = self.reused = True
                log.info("search_index_reused", revision=index.revision)
                self._signal()
            with self._node.state_lock:
                machine = self._node.machine
                target = machine.revision
                if target == index.revision:
                    return target + 1
                # Behind the compacted history (a restore), or ahead of a state that was replaced
                # wholesale: the events cannot say what changed, so start over.
                if index.revision < machine.compacted_revision or target < index.revision:
                    rebuild = True
                else:
                    rebuild = False
                    # Keys only: building every retained event (KV writes included) on each catch-up
                    # would put a protobuf copy per write on the event loop.
                    keys, target = machine.keys_from(index.revision + 1, DOMAIN_MODELS, CATCH_UP_EVENTS)
                    upserts, deleted = self._changed(machine, keys)
                    # Building and hashing the event at ``target`` is most of a KV write's cost
                    # here: only for a revision the index commits (search.py's module docstring).
                    mark = state_fingerprint(machine, target) if upserts or deleted or index.meta_due() else None
            if rebuild:
                await self._rebuild()
                continue
            if mark is None:
                index.advance(target)
            else:
                await index.apply(upserts, deleted, target, mark)
            self._signal()

    def _check_kept(self) -> bool | None:
        """Whether the kept index is this state's at its revision; None while that cannot be told yet."""
        index = self.index
        assert index is not None
        with self._node.state_lock:
            machine = self._node.machine
            if machine.revision < index.revision:
                # A ready server has caught up with a leader: the revision the file claims is not in
                # this cluster's history (or not yet: wait).
                return False if self._node.raft.is_ready() else None
            mark = state_fingerprint(machine, index.fingerprint_revision)
        return bool(mark) and mark == index.fingerprint

    @staticmethod
    def _changed(machine: StateMachine, keys: set[str]) -> tuple[list[ModelDoc], list[str]]:
        """The documents of the models behind ``keys`` (model or version keys), and those deleted."""
        names = {key.split("/", 1)[0] for key in keys}
        registry = machine.registry
        upserts = [_doc(machine, name) for name in sorted(names) if name in registry.models]
        deleted = sorted(name for name in names if name not in registry.models)
        return upserts, deleted

    async def _rebuild(self) -> None:
        """Replace the index with the registry at one revision, reading it in slices (see the module docstring)."""
        index = self.index
        assert index is not None
        for attempt in range(1, REBUILD_ATTEMPTS + 1):
            docs, revision, mark = await self._read_registry(sliced=attempt < REBUILD_ATTEMPTS)
            if docs is not None:
                break
        assert docs is not None
        await index.rebuild(docs.values(), revision, mark)
        self.rebuilds += 1
        self._trusted = True
        log.info("search_index_rebuilt", models=len(docs), revision=revision, engine=index.engine)
        self._signal()

    async def _read_registry(self, sliced: bool) -> tuple[dict[str, ModelDoc] | None, int, str]:
        """Every model's document at one revision, and that revision and its fingerprint; None for
        the documents when the history ran out before the slices were read (try again).

        ``sliced=False`` reads everything under one hold of the state lock: always succeeds, but
        keeps the event loop for the whole read.
        """
        if not sliced:
            with self._node.state_lock:
                machine = self._node.machine
                names = list(machine.registry.models)
                docs = {name: _doc(machine, name) for name in names}
                return docs, machine.revision, state_fingerprint(machine, machine.revision)
        with self._node.state_lock:
            machine = self._node.machine
            began = machine.revision
            names = list(machine.registry.models)
        docs = {}
        for start in range(0, len(names), REBUILD_SLICE):
            await asyncio.sleep(0)  # the loop's turn: Raft ticks, requests
            with self._node.state_lock:
                if self._node.machine is not machine:
                    return None, 0, ""
                models = machine.registry.models
                docs.update(
                    (name, _doc(machine, name)) for name in names[start : start + REBUILD_SLICE] if name in models
                )
        with self._node.state_lock:
            if self._node.machine is not machine or began < machine.compacted_revision:
                return None, 0, ""
            # What changed while the slices were read: read again now, all under this one hold.
            keys, _ = machine.keys_from(began + 1, DOMAIN_MODELS, machine.history_limit + 1)
            upserts, deleted = self._changed(machine, keys)
            docs.update((doc.name, doc) for doc in upserts)
            for name in deleted:
                docs.pop(name, None)
            return docs, machine.revision, state_fingerprint(machine, machine.revision)

    def _signal(self) -> None:
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()

    async def wait_indexed(self, revision: int, timeout: float | None) -> SearchIndex:
        """The index once it is trusted and reflects at least ``revision``; DeadlineExceeded if not in time."""
        index = self.index
        assert index is not None
        try:
            async with asyncio.timeout(timeout or 5.0):
                while not self._trusted or index.revision < revision:
                    await self._advanced.wait()
        except TimeoutError:
            state = "indexed" if self._trusted else "kept index not checked yet, at"
            raise DeadlineExceeded(
                f"the search index on {self._node.node_id} has not reached revision {revision} in time "
                f"({state}: {index.revision})"
            ) from None
        return index


def _doc(machine: StateMachine, name: str) -> ModelDoc:
    registry = machine.registry
    return model_doc(registry.models[name], registry.versions_of(name))
