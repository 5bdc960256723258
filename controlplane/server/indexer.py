"""Keeps this server's search index (server/search.py) in step with the replicated model registry.

The index is derived state: it is rebuilt from the state machine when the server starts, when the
watch history no longer reaches back to the index's revision (a backup restore marks the history
compacted, so a restore always lands here), and otherwise follows the "models" events of the
history incrementally, one SQLite transaction per catch-up, tagged with the revision it reaches.
A search waits until the index has reached the revision its read options require and reports the
revision it answered at, so every server gives the same answer at the same revision.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from controlplane.errors import DeadlineExceeded
from controlplane.server.search import ModelDoc, SearchIndex, model_doc
from controlplane.state.models import DOMAIN_MODELS

if TYPE_CHECKING:
    from controlplane.server.node import Node

log = structlog.get_logger("controlplane.indexer")

CATCH_UP_EVENTS = 5000
IDLE_CHECK_S = 1.0


class Indexer:
    def __init__(self, node: Node, path: Path | str, use_fts5: bool = True) -> None:
        self._node = node
        self._path = path
        self._use_fts5 = use_fts5
        self._advanced = asyncio.Event()
        self.index: SearchIndex | None = None

    async def start(self) -> None:
        if isinstance(self._path, Path):
            # Derived state: whatever an earlier run left is rebuilt anyway.
            for stale in (self._path, self._path.with_name(self._path.name + "-journal")):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        self.index = await SearchIndex.open(self._path, use_fts5=self._use_fts5)
        await self._rebuild()

    async def close(self) -> None:
        if self.index is not None:
            await self.index.close()

    async def run(self) -> None:
        while True:
            assert self.index is not None
            with contextlib.suppress(DeadlineExceeded):
                await self._node.wait_for_revision(self.index.revision + 1, IDLE_CHECK_S)
            try:
                await self.catch_up()
            except Exception:  # never let the index die quietly: log, rebuild on the next turn
                log.exception("search_index_update_failed")
                await self._rebuild()

    async def catch_up(self) -> None:
        """Bring the index up to the applied revision (incrementally, or by a rebuild)."""
        index = self.index
        assert index is not None
        machine = self._node.machine
        while True:
            with self._node.state_lock:
                target = machine.revision
                if target == index.revision:
                    return
                # Behind the compacted history (a restore), or ahead of a state that was replaced
                # wholesale: the events cannot say what changed, so start over.
                if index.revision < machine.compacted_revision or target < index.revision:
                    rebuild = True
                else:
                    rebuild = False
                    # Keys only: building every retained event (KV writes included) on each catch-up
                    # would put a protobuf copy per write on the event loop.
                    keys, target = machine.keys_from(index.revision + 1, DOMAIN_MODELS, CATCH_UP_EVENTS)
                    names = {key.split("/", 1)[0] for key in keys}
                    upserts = [self._doc(name) for name in sorted(names) if name in machine.registry.models]
                    deleted = sorted(name for name in names if name not in machine.registry.models)
            if rebuild:
                await self._rebuild()
                continue
            await index.apply(upserts, deleted, target)
            self._signal()

    def _doc(self, name: str) -> ModelDoc:
        registry = self._node.machine.registry
        return model_doc(registry.models[name], registry.versions_of(name))

    async def _rebuild(self) -> None:
        index = self.index
        assert index is not None
        with self._node.state_lock:
            revision = self._node.machine.revision
            docs = [self._doc(name) for name in self._node.machine.registry.models]
        await index.rebuild(docs, revision)
        log.info("search_index_rebuilt", models=len(docs), revision=revision, engine=index.engine)
        self._signal()

    def _signal(self) -> None:
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()

    async def wait_indexed(self, revision: int, timeout: float | None) -> SearchIndex:
        """The index once it reflects at least ``revision``; DeadlineExceeded if it does not in time."""
        index = self.index
        assert index is not None
        try:
            async with asyncio.timeout(timeout or 5.0):
                while index.revision < revision:
                    await self._advanced.wait()
        except TimeoutError:
            raise DeadlineExceeded(
                f"the search index on {self._node.node_id} has not reached revision {revision} in time "
                f"(indexed: {index.revision})"
            ) from None
        return index
