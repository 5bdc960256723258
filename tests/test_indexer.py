"""The search indexer (server/indexer.py) against a real state machine, with no server around it.

What is pinned: a kept index is reused (checked, then caught up from the history) and not rebuilt;
an index of another state, one the history can no longer vouch for, or one ahead of a caught-up
server is rebuilt; no search is answered from a kept index before it was checked; a rebuild read in
slices while the state changes is still the registry at exactly one revision; and a server killed in
the middle of writing the index leaves the index it had, never a mixture.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterable
from pathlib import Path

import pytest

from controlplane.errors import DeadlineExceeded
from controlplane.server import indexer as indexer_module
from controlplane.server import search
from controlplane.server.indexer import Indexer, state_fingerprint
from controlplane.server.search import ModelDoc, SearchIndex, model_doc
from controlplane.state.machine import StateMachine
from controlplane.v1 import command_pb2, models_pb2

from machine_driver import MachineDriver

QUERIES = ["model", "llama", "qwen", "chat", "base", "number", "gguf", "m1"]


class FakeRaft:
    def __init__(self) -> None:
        self.ready = False

    def is_ready(self) -> bool:
        return self.ready


class FakeNode:
    """The part of node.Node the indexer uses (IndexedNode)."""

    node_id = "test"

    def __init__(self, machine: StateMachine) -> None:
        self.machine = machine
        self.state_lock = threading.Lock()
        self.raft = FakeRaft()

    async def wait_for_revision(self, revision: int, timeout: float | None) -> None:
        if self.machine.revision < revision:
            raise DeadlineExceeded(f"revision {revision} not applied")


class Writer(MachineDriver):
    """Applies registry commands to a machine, one per log entry, with a leader clock it moves."""

    def register(self, model: str, content: str, family: str = "", tags: Iterable[str] = ()) -> None:
        self.ok(
            model_register=models_pb2.RegisterVersionRequest(
                model=model,
                sha256=hashlib.sha256(content.encode()).hexdigest(),
                size_bytes=len(content),
                format=models_pb2.MODEL_FORMAT_GGUF,
                draft=models_pb2.ModelDraft(family=family, tags=list(tags), description=f"model number {content}"),
            )
        )

    def populate(self, prefix: str, count: int) -> None:
        for i in range(count):
            family = ("llama", "qwen")[i % 2]
            self.register(f"{prefix}{i}", f"{prefix}{i}/1", family, ["chat"] if i % 3 else ["base"])
            if i % 4 == 0:
                self.register(f"{prefix}{i}", f"{prefix}{i}/2", family)

    def churn(self, prefix: str) -> None:
        """A few changes of every kind the index sees."""
        self.register(f"{prefix}new", f"{prefix}new/1", "qwen", ["chat"])
        self.ok(
            model_update=models_pb2.UpdateModelRequest(
                model=f"{prefix}1",
                fields=models_pb2.ModelDraft(description="renamed base"),
                update_mask=["description"],
            )
        )
        self.ok(
            model_set_status=models_pb2.SetVersionStatusRequest(
                model=f"{prefix}2", version=1, status=models_pb2.VERSION_STATUS_READY
            )
        )
        self.ok(model_delete=models_pb2.DeleteModelRequest(model=f"{prefix}3", force=True))
        self.ok(kv_put=command_pb2.KvPut(key="unrelated", value=b"x"))


def docs_of(machine: StateMachine) -> dict[str, ModelDoc]:
    registry = machine.registry
    return {name: model_doc(registry.models[name], registry.versions_of(name)) for name in registry.models}


async def answers(index: SearchIndex) -> dict[str, tuple[int, list[str]]]:
    out = {}
    for query in QUERIES:
        page = await index.search(query, limit=1000)
        out[query] = (page.total, [name for name, _ in page.hits])
    return out


async def assert_matches(index: SearchIndex, machine: StateMachine) -> None:
    """The index answers exactly as a fresh rebuild from ``machine`` would, at its revision."""
    assert index.revision == machine.revision
    fresh = await SearchIndex.open(use_fts5=index.engine == "fts5")
    await fresh.rebuild(docs_of(machine).values(), machine.revision)
    try:
        assert await answers(index) == await answers(fresh)
    finally:
        await fresh.close()


async def indexed(path: Path, machine: StateMachine) -> Indexer:
    """An indexer on ``path`` that has caught up with ``machine`` and been closed (a server that stopped)."""
    indexer = Indexer(FakeNode(machine), path)
    await indexer.start()
    await indexer.catch_up()
    await assert_matches(indexer.index, machine)  # type: ignore[arg-type]
    await indexer.close()
    return indexer


async def test_a_new_index_follows_the_history_without_rebuilding(tmp_path: Path) -> None:
    writer = Writer()
    writer.populate("m", 12)
    indexer = Indexer(FakeNode(writer.machine), tmp_path / "search.sqlite")
    await indexer.start()
    assert indexer.trusted  # revision 0 is the empty registry in every history
    await indexer.catch_up()
    writer.churn("m")
    await indexer.catch_up()
    assert indexer.index is not None
    await assert_matches(indexer.index, writer.machine)
    assert indexer.rebuilds == 0
    assert indexer.index.fingerprint == state_fingerprint(writer.machine, writer.machine.revision) != ""
    await indexer.close()


async def test_a_restarted_server_reuses_its_index_and_catches_up(tmp_path: Path) -> None:
    path = tmp_path / "search.sqlite"
    writer = Writer()
    writer.populate("m", 12)
    early, early_clock = writer.machine.snapshot(), writer.now  # a dump taken before the index's revision
    writer.register("m0", "m0/3")
    await indexed(path, writer.machine)
    kept_revision = writer.machine.revision

    # The restart: the dump is loaded, then the journal replays the same entries, then new ones come.
    restarted = Writer(now=early_clock)
    restarted.machine.restore(early)
    node = FakeNode(restarted.machine)
    indexer = Indexer(node, path)
    await indexer.start()
    assert indexer.index is not None and indexer.index.revision == kept_revision
    assert not indexer.trusted
    # Not checked yet, so no search is answered from it, whatever revision it asks for.
    with pytest.raises(DeadlineExceeded, match="not checked"):
        await indexer.wait_indexed(0, 0.01)
    assert await indexer.catch_up() == kept_revision  # wait for the replay to reach it
    assert not indexer.trusted
    restarted.register("m0", "m0/3")  # the replay
    assert restarted.machine.revision == kept_revision
    restarted.churn("m")
    await indexer.catch_up()
    assert indexer.trusted and indexer.reused
    assert indexer.rebuilds == 0
    assert await indexer.wait_indexed(restarted.machine.revision, 1.0) is indexer.index
    await assert_matches(indexer.index, restarted.machine)
    await indexer.close()


async def test_kv_writes_move_the_index_without_a_fingerprint_and_close_keeps_the_latest_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KV writes change no model: the index follows their revisions without a fingerprint (a built
    and hashed event each). Closing fingerprints the latest revision, so a restart whose history
    no longer reaches back to the last committed one still reuses the file, caught up from there."""
    monkeypatch.setattr(search, "META_WRITE_INTERVAL_S", 3600.0)
    path = tmp_path / "search.sqlite"
    writer = Writer(make_machine=lambda: StateMachine(history_limit=20))
    writer.populate("m", 6)
    indexer = Indexer(FakeNode(writer.machine), path)
    await indexer.start()
    await indexer.catch_up()
    index = indexer.index
    assert index is not None
    fingerprinted = index.fingerprint_revision
    for i in range(30):  # past the history's 20 events: the fingerprinted revision is compacted
        writer.ok(kv_put=command_pb2.KvPut(key=f"k{i}", value=b"x"))
        await indexer.catch_up()  # as the running indexer does, a few revisions at a time
    assert (index.revision, index.fingerprint_revision) == (writer.machine.revision, fingerprinted)
    assert fingerprinted <= writer.machine.compacted_revision
    assert await indexer.wait_indexed(writer.machine.revision, 1.0) is index
    await indexer.close()

    again = Indexer(FakeNode(writer.machine), path)
    await again.start()
    await again.catch_up()
    assert again.trusted and again.reused and again.rebuilds == 0
    assert again.index is not None and again.index.revision == writer.machine.revision
    await assert_matches(again.index, writer.machine)
    await again.close()


@pytest.mark.parametrize("difference", ["other models", "same commands at another time"])
async def test_an_index_of_another_state_is_rebuilt(tmp_path: Path, difference: str) -> None:
    path = tmp_path / "search.sqlite"
    writer = Writer()
    writer.populate("m", 12)
    await indexed(path, writer.machine)

    other = Writer(now=5_000 if difference != "other models" else 1_000)
    other.populate("m" if difference != "other models" else "x", 12)
    assert other.machine.revision == writer.machine.revision  # the same revision, another state
    other.churn("m" if difference != "other models" else "x")
    indexer = Indexer(FakeNode(other.machine), path)
    await indexer.start()
    await indexer.catch_up()
    assert (indexer.rebuilds, indexer.reused) == (1, False)
    assert indexer.index is not None
    await assert_matches(indexer.index, other.machine)
    await indexer.close()


async def test_an_index_ahead_of_a_caught_up_server_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "search.sqlite"
    writer = Writer()
    writer.populate("m", 12)
    await indexed(path, writer.machine)

    behind = Writer()
    behind.populate("m", 3)
    node = FakeNode(behind.machine)
    indexer = Indexer(node, path)
    await indexer.start()
    await indexer.catch_up()
    assert (indexer.rebuilds, indexer.trusted) == (0, False)  # still replaying, perhaps: wait
    node.raft.ready = True  # caught up with a leader, and still behind: not this history
    await indexer.catch_up()
    assert (indexer.rebuilds, indexer.trusted) == (1, True)
    assert indexer.index is not None
    await assert_matches(indexer.index, behind.machine)
    await indexer.close()


@pytest.mark.parametrize("how", ["history compacted", "backup restored"])
async def test_an_index_the_history_no_longer_reaches_is_rebuilt(tmp_path: Path, how: str) -> None:
    path = tmp_path / "search.sqlite"
    writer = Writer(make_machine=lambda: StateMachine(history_limit=20))
    writer.populate("m", 6)
    backup = writer.machine.snapshot()
    await indexed(path, writer.machine)
    if how == "history compacted":
        writer.populate("late", 15)  # more events than the history keeps
    else:
        writer.register("gone-after-restore", "x")
        writer.ok(restore_state=command_pb2.RestoreState(snapshot=backup))
    assert writer.machine.compacted_revision > 0
    indexer = Indexer(FakeNode(writer.machine), path)
    await indexer.start()
    await indexer.catch_up()
    assert (indexer.rebuilds, indexer.reused) == (1, False)
    assert indexer.index is not None
    await assert_matches(indexer.index, writer.machine)
    await indexer.close()


@pytest.mark.parametrize("writes", [4, 200], ids=["few-writes", "history-outrun"])
async def test_a_sliced_rebuild_is_the_registry_at_one_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writes: int
) -> None:
    """Writes land between the slices; the rebuild still holds exactly the registry at the revision it
    records (with many writes the history runs out and it reads everything at once)."""
    monkeypatch.setattr(indexer_module, "REBUILD_SLICE", 2)
    writer = Writer(make_machine=lambda: StateMachine(history_limit=40))
    writer.populate("m", 40)  # compacts: the new index must be rebuilt
    expected: dict[int, dict[str, ModelDoc]] = {writer.machine.revision: docs_of(writer.machine)}
    indexer = Indexer(FakeNode(writer.machine), tmp_path / "search.sqlite")
    await indexer.start()
    assert indexer.index is not None
    rebuilt: list[tuple[dict[str, ModelDoc], int]] = []
    original = indexer.index.rebuild

    async def recording(docs: Iterable[ModelDoc], revision: int, mark: str = "") -> None:
        docs = list(docs)
        rebuilt.append(({doc.name: doc for doc in docs}, revision))
        await original(docs, revision, mark)

    monkeypatch.setattr(indexer.index, "rebuild", recording)

    async def write() -> None:
        for i in range(writes):
            writer.register(f"m{i % 40}", f"again/{i}", "qwen", ["chat"])
            if i % 5 == 0:
                writer.ok(model_delete=models_pb2.DeleteModelRequest(model=f"m{(i + 7) % 40}", force=True))
            expected[writer.machine.revision] = docs_of(writer.machine)
            await asyncio.sleep(0)

    await asyncio.gather(indexer.catch_up(), write())
    assert len(rebuilt) >= 1
    for docs, revision in rebuilt:
        assert docs == expected[revision]
    await indexer.catch_up()
    await assert_matches(indexer.index, writer.machine)
    await indexer.close()


# ---------------------------------------------------------------------------------------- crashes

_CHILD = textwrap.dedent(
    """
    import asyncio, os, sys
    from controlplane.server.search import ModelDoc, SearchIndex

    def doc(name):
        return ModelDoc(name=name, description="a model", family="f", tags=("t",), owner="",
                        formats=frozenset({2}), statuses=frozenset({1}))

    async def main(path, where):
        index = await SearchIndex.open(path)
        await index.rebuild([doc(f"old-{i}") for i in range(50)], 5, "five")
        await index.apply([doc("old-extra")], [], 6, "six")
        # A small page cache, so the transaction below spills its pages to the WAL before COMMIT.
        await index._conn.execute("PRAGMA cache_size = 8")
        if where == "after-commit":
            os._exit(0)  # no close: the WAL holds the last transactions, not yet checkpointed
        original = SearchIndex._insert

        async def dying(self, docs, first_id):
            await original(self, docs, first_id)
            os._exit(9)  # rows written, transaction open

        SearchIndex._insert = dying
        if where == "rebuild":
            await index.rebuild([doc(f"new-{i}") for i in range(6000)], 9, "nine")
        else:
            await index.apply([doc(f"new-{i}") for i in range(6000)], ["old-1"], 9, "nine")

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def _crash_child(path: Path, where: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-c", _CHILD, str(path), where], env=env, timeout=120).returncode


@pytest.mark.parametrize("where", ["rebuild", "apply"])
async def test_a_crash_in_the_middle_of_a_write_leaves_the_previous_index(tmp_path: Path, where: str) -> None:
    path = tmp_path / "search.sqlite"
    assert _crash_child(path, where) == 9
    assert Path(str(path) + "-wal").exists()
    index = await SearchIndex.open(path)
    try:
        assert (index.revision, index.fingerprint) == (6, "six")
        assert (await index.search("old")).total == 51
        assert (await index.search("new")).total == 0
    finally:
        await index.close()


async def test_a_torn_last_transaction_is_dropped_whole(tmp_path: Path) -> None:
    """A power cut that tore the WAL's last frames: the index is the one before that transaction."""
    path = tmp_path / "search.sqlite"
    assert _crash_child(path, "after-commit") == 0
    wal = Path(str(path) + "-wal")
    size = wal.stat().st_size
    with open(wal, "r+b") as torn:
        torn.truncate(size - 100)
    index = await SearchIndex.open(path)
    try:
        assert (index.revision, index.fingerprint) == (5, "five")
        assert (await index.search("old")).total == 50
    finally:
        await index.close()


async def test_a_file_that_is_not_an_index_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "search.sqlite"
    path.write_bytes(b"not a database at all" * 1000)
    index = await SearchIndex.open(path)
    try:
        assert (index.revision, index.fingerprint) == (0, "")
        await index.rebuild([model_doc(models_pb2.Model(name="m1"), [])], 3, "three")
    finally:
        await index.close()
    index = await SearchIndex.open(path)
    try:
        assert (index.revision, index.fingerprint) == (3, "three")
        assert (await index.search("m1")).total == 1
    finally:
        await index.close()
