"""Artifact replication on real grpc.aio servers on loopback, real stores on disk, no cluster.

The registry and membership the fetch consults are an in-memory stand-in for the narrow interface it
declares (``gossip.artifacts.ArtifactClient``); tests/cluster/test_artifacts.py runs the same fetch
against a real cluster through the SDK. Holders are real ``ArtifactServer`` instances serving real
files. Faults are real too: bytes changed on a holder's disk, a server stopped in the middle of a
Read, a fetch cancelled halfway. No sleeps: every wait is on an event or a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import random
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from controlplane.client import (
    BandwidthMatrix,
    Connectivity,
    Link,
    ModelFormat,
    ModelVersion,
    NodeRecord,
    NodeRole,
    NodeSpec,
    NodeState,
    NodeView,
    NotFound,
    Unavailable,
    VersionStatus,
)
from controlplane.v1 import artifacts_pb2 as pb
from controlplane.v1 import artifacts_pb2_grpc as pb_grpc
from gossip.artifacts import (
    ArtifactAccessUnknown,
    ArtifactBusy,
    ArtifactCorrupt,
    ArtifactServer,
    ArtifactStore,
    ArtifactUnavailable,
    ClusterAccess,
    InvalidArtifactName,
    Manifest,
    announce,
    compute_manifest,
    fetch,
    fetch_artifact,
    rank_holders,
)
from gossip.bandwidth import BandwidthTable

pytestmark = pytest.mark.timeout(60)

MODEL = "Llama-3-8B"
CHUNK = 16 * 1024
# 64 full chunks and a short last one: the odd size exercises the short chunk everywhere.
SIZE = 64 * CHUNK + 1234
CHUNKS = 65


def payload(seed: int = 7, size: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the stand-in registry ------------------------------------------------------------------------


@dataclass
class Registry:
    """Versions (sha256, size, replicas) and nodes (gossip addresses, state), as the SDK returns them."""

    versions: dict[tuple[str, int], ModelVersion] = field(default_factory=dict)
    nodes: dict[str, NodeView] = field(default_factory=dict)
    links: tuple[Link, ...] = ()
    replica_calls: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def models(self) -> Registry:
        return self

    @property
    def membership(self) -> Registry:
        return self

    @property
    def gossip(self) -> Registry:
        return self

    def register(self, model: str, data: bytes, replicas: tuple[str, ...] = ()) -> ModelVersion:
        number = 1 + sum(1 for m, _ in self.versions if m == model)
        self.versions[(model, number)] = ModelVersion(
            model=model, version=number, sha256=sha(data), size_bytes=len(data), format=ModelFormat.OTHER,
            source_uri="", metadata={}, status=VersionStatus.READY, created_unix_ms=0, create_revision=0,
            mod_revision=0, replicas=tuple(sorted(replicas)),
        )  # fmt: skip
        return self.versions[(model, number)]

    def node(self, node_id: str, address: str, state: NodeState = NodeState.ACTIVE) -> None:
        spec = NodeSpec(node_id, NodeRole.AGENT, {"gossip": address} if address else {}, (), None, {}, "")
        record = NodeRecord(spec, state, 0, 0, 0, 0, 0, "", "", 0)
        self.nodes[node_id] = NodeView(record, "", False, Connectivity.CONNECTED, 0, 0, (), 0)

    async def get_version(
        self, model: str, version: int | str = "latest", *, timeout: float | None = None
    ) -> ModelVersion:
        if version == "latest":
            version = max((v for m, v in self.versions if m == model), default=0)
        try:
            return self.versions[(model, int(version))]
        except (KeyError, ValueError):
            raise NotFound(f"no version {version} of {model}") from None

    async def add_replica(
        self, model: str, version: int, node_id: str, *, timeout: float | None = None
    ) -> ModelVersion:
        self.replica_calls.append((model, version, node_id))
        current = self.versions[(model, version)]
        updated = dataclasses.replace(current, replicas=tuple(sorted({*current.replicas, node_id})))
        self.versions[(model, version)] = updated
        return updated

    async def get_node(self, node_id: str, *, timeout: float | None = None) -> NodeView:
        if node_id not in self.nodes:
            raise NotFound(f"no node {node_id}")
        return self.nodes[node_id]

    async def bandwidth(self, *, node_id: str = "", timeout: float | None = None) -> BandwidthMatrix:
        return BandwidthMatrix(1, 0, self.links)


def replicas(registry: Registry, version: int = 1) -> tuple[str, ...]:
    return registry.versions[(MODEL, version)].replicas


# --- holders --------------------------------------------------------------------------------------


class UncheckedStore(ArtifactStore):
    """A holder whose bookkeeping vouches for whatever is on its disk (a buggy or tampered node): its
    manifest is computed from the current bytes and never checked against the sha256 it claims."""

    def manifest(self, model: str, version: int, chunk_size: int = CHUNK) -> Manifest:
        record = self.record(model, version)
        assert record is not None
        chunks, _ = compute_manifest(record.path, chunk_size)
        return Manifest(model, version, record.size, record.sha256, chunk_size, chunks)


class StallingStore(ArtifactStore):
    """A holder whose disk stops answering after ``after`` chunk reads: the read blocks until released.
    ``reached`` is set when a read blocks, so a test can act at that exact point."""

    def __init__(self, root: Path, after: int) -> None:
        super().__init__(root)
        self.after = after
        self.reads = 0
        self.reached = threading.Event()
        self.release = threading.Event()

    def read(self, model: str, version: int, offset: int, length: int) -> bytes:
        self.reads += 1
        if self.reads > self.after:
            self.reached.set()
            self.release.wait(30)
        return super().read(model, version, offset, length)


@dataclass
class Cluster:
    registry: Registry
    data: bytes
    tmp: Path
    servers: dict[str, ArtifactServer] = field(default_factory=dict)
    damaged: list[tuple[str, int, str]] = field(default_factory=list)

    async def holder(
        self, node_id: str, store: ArtifactStore | None = None, *, data: bytes | None = None
    ) -> ArtifactServer:
        """A node holding the artifact (published into its own store), served on loopback and registered."""
        store = store or ArtifactStore(self.tmp / node_id)
        source = self.tmp / f"{node_id}.src"
        source.write_bytes(self.data if data is None else data)
        store.put_file(MODEL, 1, source, chunk_size=CHUNK)
        server = ArtifactServer(store, node_id=node_id, on_damaged=lambda m, v, why: self.damaged.append((m, v, why)))
        await server.start()
        self.servers[node_id] = server
        self.registry.node(node_id, server.address)
        return server

    def served(self) -> int:
        return sum(s.stats.chunks_served for s in self.servers.values())


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    data = payload()
    registry = Registry()
    registry.register(MODEL, data, replicas=("h1", "h2", "h3"))
    c = Cluster(registry, data, tmp_path)
    try:
        yield c
    finally:
        for server in c.servers.values():
            store = server.store
            if isinstance(store, StallingStore):
                store.release.set()
            await server.stop(0)


async def three_holders(c: Cluster) -> None:
    for node_id in ("h1", "h2", "h3"):
        await c.holder(node_id)


def corrupt(path: Path, offset: int, *, keep_mtime: bool) -> None:
    """Flip one byte of a file on disk; with ``keep_mtime``, as bit rot does (the file's mtime stays)."""
    before = path.stat()
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def fastest(holder: str) -> BandwidthTable:
    """A local bandwidth table that knows one link, ``holder``'s: it is ranked first, the others
    (unknown) after it, and what the fetch measures of it keeps it first."""
    table = BandwidthTable("fetcher")
    table.observe(holder, 10**8, 0.1, 0.0)
    return table


# --- the store ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "version"),
    [("../etc", 1), ("a/b", 1), ("..", 1), (".", 1), ("", 1), (".hidden", 1), ("x\x00y", 1), ("a b", 1),
     ("m" * 129, 1), ("ok", 0), ("ok", -1), ("ok", 2**32), ("ok", True)],
)  # fmt: skip
def test_store_refuses_names_that_could_leave_its_root(tmp_path: Path, model: str, version: int) -> None:
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(InvalidArtifactName):
        store.path(model, version)
    assert not (tmp_path / "store").exists()


def test_store_refuses_a_model_directory_linked_outside(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "store" / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InvalidArtifactName, match="outside"):
        ArtifactStore(tmp_path / "store").path("linked", 1)
    assert ArtifactStore(tmp_path / "store").path("Café-7B", 3).parts[-3:] == ("Café-7B", "3", "artifact")


def test_a_partial_download_is_invisible_until_its_sha256_verifies(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = payload()
    partial = store.open_partial(MODEL, 1, size=SIZE, sha256=sha(data), chunk_size=CHUNK)
    try:
        with pytest.raises(ArtifactBusy, match="another fetch"):
            store.open_partial(MODEL, 1, size=SIZE, sha256=sha(data), chunk_size=CHUNK)
        wrong = bytearray(data)
        wrong[5] ^= 1
        for k in range(partial.chunk_count):
            chunk = bytes(wrong[k * CHUNK : (k + 1) * CHUNK])
            partial.write_chunk(k, chunk, hashlib.sha256(chunk).digest())
        assert store.record(MODEL, 1) is None and store.records() == []
        with pytest.raises(ArtifactCorrupt) as raised:
            partial.commit()
        assert raised.value.actual_sha256 == sha(bytes(wrong))
        assert store.record(MODEL, 1) is None and not store.path(MODEL, 1).exists()
        partial.write_chunk(0, data[:CHUNK], hashlib.sha256(data[:CHUNK]).digest())
        record = partial.commit()
    finally:
        partial.close()
    assert record.path.read_bytes() == data and store.record(MODEL, 1) == record
    assert sorted(p.name for p in record.path.parent.iterdir()) == [
        ".lock", "artifact", "artifact.json", f"manifest.{CHUNK}.json"
    ]  # fmt: skip
    # The manifest written at commit is the one computed from the verified bytes.
    assert store.manifest(MODEL, 1, CHUNK).chunks == compute_manifest(record.path, CHUNK)[0]


# --- the server -----------------------------------------------------------------------------------


async def test_the_server_answers_with_clear_status_codes(cluster: Cluster) -> None:
    server = await cluster.holder("h1")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ArtifactsStub(channel)
        stat = await stub.Stat(pb.StatArtifactRequest(model=MODEL, version=1, chunk_size=CHUNK))
        assert (stat.size, stat.sha256, stat.chunk_size, stat.node_id) == (SIZE, sha(cluster.data), CHUNK, "h1")
        assert list(stat.chunk_sha256) == [
            hashlib.sha256(cluster.data[k * CHUNK : (k + 1) * CHUNK]).digest() for k in range(CHUNKS)
        ]
        chunks = [c async for c in stub.Read(pb.ReadArtifactRequest(model=MODEL, version=1, chunk_size=CHUNK))]
        assert b"".join(c.data for c in chunks) == cluster.data and chunks[-1].offset == 64 * CHUNK
        assert all(hashlib.sha256(c.data).digest() == c.sha256 for c in chunks)
        tail = stub.Read(pb.ReadArtifactRequest(model=MODEL, version=1, chunk_size=CHUNK, offset=63 * CHUNK))
        assert [c.offset async for c in tail] == [63 * CHUNK, 64 * CHUNK]

        refused = {
            "INVALID_ARGUMENT": [
                stub.Stat(pb.StatArtifactRequest(model="../../etc", version=1)),
                stub.Stat(pb.StatArtifactRequest(model=MODEL, version=0)),
                stub.Stat(pb.StatArtifactRequest(model=MODEL, version=1, chunk_size=100)),
                stub.Stat(pb.StatArtifactRequest(model=MODEL, version=1, chunk_size=3 * 4096)),
                _drain(stub.Read(pb.ReadArtifactRequest(model=MODEL, version=1, chunk_size=CHUNK, offset=5))),
                _drain(
                    stub.Read(pb.ReadArtifactRequest(model=MODEL, version=1, chunk_size=CHUNK, offset=0, length=10))
                ),
            ],
            "NOT_FOUND": [
                stub.Stat(pb.StatArtifactRequest(model=MODEL, version=2)),
                stub.Stat(pb.StatArtifactRequest(model="Other", version=1)),
            ],
            "OUT_OF_RANGE": [
                _drain(
                    stub.Read(
                        pb.ReadArtifactRequest(model=MODEL, version=1, chunk_size=CHUNK, offset=0, length=SIZE + 1)
                    )
                ),
                _drain(stub.Read(pb.ReadArtifactRequest(model=MODEL, version=1, chunk_size=CHUNK, offset=66 * CHUNK))),
            ],
        }
        for code, calls in refused.items():
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call
                assert raised.value.code().name == code, raised.value.details()
                assert raised.value.details()
    assert server.stats.refused == 10


async def _drain(call: object) -> None:
    async for _ in call:  # type: ignore[attr-defined]
        pass


async def test_a_server_never_sends_a_chunk_that_rotted_on_its_disk(cluster: Cluster) -> None:
    server = await cluster.holder("h1")
    corrupt(server.store.path(MODEL, 1), 3 * CHUNK + 10, keep_mtime=True)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ArtifactsStub(channel)
        got = []
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for chunk in stub.Read(pb.ReadArtifactRequest(model=MODEL, version=1, chunk_size=CHUNK)):
                got.append(chunk.offset)
        assert raised.value.code() == grpc.StatusCode.DATA_LOSS and "chunk 3" in raised.value.details()
        assert got == [0, CHUNK, 2 * CHUNK]  # the good chunks before it were sent
        # Its other chunks are still served; a fresh file (new mtime) is checked whole and refused.
        after = stub.Read(pb.ReadArtifactRequest(model=MODEL, version=1, chunk_size=CHUNK, offset=4 * CHUNK))
        assert len([c async for c in after]) == CHUNKS - 4
        corrupt(server.store.path(MODEL, 1), 7 * CHUNK, keep_mtime=False)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Stat(pb.StatArtifactRequest(model=MODEL, version=1, chunk_size=2 * CHUNK))
        assert raised.value.code() == grpc.StatusCode.DATA_LOSS
    assert server.damaged == {(MODEL, 1)} and len(cluster.damaged) == 1  # reported once


# --- fetching -------------------------------------------------------------------------------------


async def test_fetch_from_three_holders_verifies_and_records_the_replica(cluster: Cluster) -> None:
    await three_holders(cluster)
    store = ArtifactStore(cluster.tmp / "f1")
    seen: list[tuple[int, int]] = []
    result = await fetch_artifact(
        cluster.registry,
        MODEL,
        "latest",
        store,
        node_id="f1",
        chunk_size=CHUNK,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert result.path.read_bytes() == cluster.data and result.path == store.path(MODEL, 1)
    assert (result.chunks, result.chunks_fetched, result.chunks_resumed) == (CHUNKS, CHUNKS, 0)
    assert sorted(result.by_holder) == ["h1", "h2", "h3"] and sum(result.by_holder.values()) == CHUNKS
    assert result.dropped == {} and result.rejected == () and result.replica_recorded
    assert replicas(cluster.registry) == ("f1", "h1", "h2", "h3")
    assert seen[0] == (0, SIZE) and seen[-1] == (SIZE, SIZE) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert cluster.served() == CHUNKS  # each chunk transferred once

    # The new replica serves it in turn, and a second fetch finds it already there.
    async with ArtifactServer(store, node_id="f1") as f1:
        cluster.registry.node("f1", f1.address)
        again = await fetch_artifact(cluster.registry, MODEL, 1, store, node_id="f1", chunk_size=CHUNK)
        assert again.already_present and again.chunks_fetched == 0
        other = await fetch(
            cluster.registry, MODEL, 1, ArtifactStore(cluster.tmp / "f2"), node_id="f2", chunk_size=CHUNK
        )
        assert other.read_bytes() == cluster.data
    assert cluster.registry.replica_calls.count((MODEL, 1, "f1")) == 2  # idempotent, asked again


async def test_a_copy_that_rotted_in_place_is_fetched_again_not_vouched_for(cluster: Cluster) -> None:
    await three_holders(cluster)
    store = ArtifactStore(cluster.tmp / "f1")
    first = await fetch_artifact(cluster.registry, MODEL, 1, store, node_id="f1", chunk_size=CHUNK)
    corrupt(first.path, CHUNK + 3, keep_mtime=True)  # same size, same mtime: only the bytes know
    again = await fetch_artifact(cluster.registry, MODEL, 1, store, node_id="f1", chunk_size=CHUNK)
    assert not again.already_present and again.chunks_fetched == CHUNKS
    assert again.path.read_bytes() == cluster.data


def test_holders_are_ranked_by_the_matrix_then_local_samples_then_at_random() -> None:
    table = BandwidthTable("me")
    table.observe("b", 5_000_000, 1.0, 0.0)
    table.observe("c", 9_000_000, 1.0, 0.0)
    ranked = rank_holders(["d", "c", "b", "a", "e"], matrix={"a": 1e6, "c": 2e6}, table=table, rng=random.Random(1))
    # c: matrix 2e6 (its local 9e6 is ignored: the matrix knows the link); b: local 5e6; a: matrix 1e6.
    assert ranked[:3] == [("b", 5e6), ("c", 2e6), ("a", 1e6)]
    assert {h for h, _ in ranked[3:]} == {"d", "e"} and all(s == 0.0 for _, s in ranked[3:])
    orders = {tuple(h for h, _ in rank_holders(["x", "y", "z"], rng=random.Random(seed))) for seed in range(20)}
    assert len(orders) > 1  # unknown holders are spread, not always asked in the same order


async def test_the_fastest_holder_serves_when_one_stream_is_allowed(cluster: Cluster) -> None:
    await three_holders(cluster)
    result = await fetch_artifact(
        cluster.registry, MODEL, 1, ArtifactStore(cluster.tmp / "f1"), parallel=1, chunk_size=CHUNK,
        bandwidth=fastest("h2"),
    )  # fmt: skip
    assert result.by_holder == {"h2": CHUNKS} and not result.replica_recorded  # no node id: nothing recorded
    # With a node id the cluster's matrix ranks the links it knows, ahead of the local table: here h2's
    # link is slow in the matrix (whatever the local table says) and h3's fast.
    cluster.registry.links = (
        Link("f1", "h3", 9e9, 0, 0, 1, 0, 0, 0, 0),
        Link("f1", "h2", 1.0, 0, 0, 1, 0, 0, 0, 0),
    )
    result = await fetch_artifact(
        cluster.registry, MODEL, 1, ArtifactStore(cluster.tmp / "f1b"), node_id="f1", parallel=1, chunk_size=CHUNK,
        bandwidth=fastest("h2"),
    )  # fmt: skip
    assert result.by_holder == {"h3": CHUNKS}


async def test_a_chunk_rotted_on_one_holder_is_taken_from_the_others(cluster: Cluster) -> None:
    await three_holders(cluster)
    corrupt(cluster.servers["h2"].store.path(MODEL, 1), 9 * CHUNK + 5, keep_mtime=True)
    store = ArtifactStore(cluster.tmp / "f1")
    # One stream, h2 first: h2 is asked for every chunk, chunk 9 included.
    result = await fetch_artifact(
        cluster.registry, MODEL, 1, store, node_id="f1", parallel=1, chunk_size=CHUNK, bandwidth=fastest("h2")
    )
    assert result.path.read_bytes() == cluster.data
    assert [(h, k) for h, k, _ in result.rejected] == [("h2", 9)] and "damaged" in result.rejected[0][2]
    assert result.by_holder["h2"] == CHUNKS - 1 and sum(result.by_holder.values()) == CHUNKS
    assert "h2" not in result.dropped  # its good chunks kept coming
    assert [(m, v) for m, v, _ in cluster.damaged] == [(MODEL, 1)] and replicas(cluster.registry)[0] == "f1"


async def test_a_holder_whose_file_changed_is_refused_at_stat_and_the_fetch_completes(cluster: Cluster) -> None:
    await three_holders(cluster)
    corrupt(cluster.servers["h1"].store.path(MODEL, 1), 100, keep_mtime=False)
    result = await fetch_artifact(cluster.registry, MODEL, 1, ArtifactStore(cluster.tmp / "f1"), chunk_size=CHUNK)
    assert result.path.read_bytes() == cluster.data
    assert "DATA_LOSS" in result.dropped["h1"] and "h1" not in result.by_holder


async def test_a_holder_vouching_for_bad_bytes_is_caught_by_the_whole_file_check(cluster: Cluster) -> None:
    bad = bytearray(cluster.data)
    bad[20 * CHUNK + 3] ^= 0x55
    await cluster.holder("h1", UncheckedStore(cluster.tmp / "h1"))
    corrupt(cluster.servers["h1"].store.path(MODEL, 1), 20 * CHUNK + 3, keep_mtime=False)
    await cluster.holder("h2")
    await cluster.holder("h3")
    store = ArtifactStore(cluster.tmp / "f1")
    # h1 first and alone at a time: it delivers every chunk, each matching its own (lying) manifest.
    result = await fetch_artifact(
        cluster.registry, MODEL, 1, store, node_id="f1", parallel=1, chunk_size=CHUNK, bandwidth=fastest("h1")
    )
    assert result.path.read_bytes() == cluster.data
    assert result.repaired == (20,) and result.chunks_fetched == CHUNKS + 1
    assert result.by_holder["h1"] == CHUNKS and sum(result.by_holder.values()) == CHUNKS + 1
    assert ("h1", 20) in {(h, k) for h, k, _ in result.rejected}


async def test_when_every_copy_is_bad_nothing_is_recorded(cluster: Cluster) -> None:
    for node_id in ("h1", "h2", "h3"):
        server = await cluster.holder(node_id)
        corrupt(server.store.path(MODEL, 1), 30 * CHUNK + 7, keep_mtime=True)
    store = ArtifactStore(cluster.tmp / "f1")
    with pytest.raises(ArtifactCorrupt, match=r"every holder's copy of chunk 30 .*cpctl models publish") as raised:
        await fetch_artifact(cluster.registry, MODEL, 1, store, node_id="f1", chunk_size=CHUNK)
    assert all(h in str(raised.value) for h in ("h1", "h2", "h3"))
    assert store.record(MODEL, 1) is None and not store.path(MODEL, 1).exists()
    assert replicas(cluster.registry) == ("h1", "h2", "h3") and cluster.registry.replica_calls == []


async def test_when_the_only_holder_vouches_for_bad_bytes_nothing_is_recorded(cluster: Cluster) -> None:
    await cluster.holder("h1", UncheckedStore(cluster.tmp / "h1"))
    corrupt(cluster.servers["h1"].store.path(MODEL, 1), 5, keep_mtime=False)
    registered = cluster.registry.versions[(MODEL, 1)]
    cluster.registry.versions[(MODEL, 1)] = dataclasses.replace(registered, replicas=("h1",))
    store = ArtifactStore(cluster.tmp / "f1")
    with pytest.raises(ArtifactCorrupt, match="not the registry's") as raised:
        await fetch_artifact(cluster.registry, MODEL, 1, store, node_id="f1", chunk_size=CHUNK)
    assert raised.value.actual_sha256 not in ("", sha(cluster.data))
    assert store.record(MODEL, 1) is None and cluster.registry.replica_calls == []


async def test_a_holder_killed_midway_leaves_the_rest_to_the_others(cluster: Cluster) -> None:
    victim_store = StallingStore(cluster.tmp / "h2", after=2)
    await cluster.holder("h1")
    victim = await cluster.holder("h2", victim_store)
    await cluster.holder("h3")
    victim_store.reads = 0  # publishing read nothing through the store; count serving reads only
    store = ArtifactStore(cluster.tmp / "f1")
    task = asyncio.create_task(fetch_artifact(cluster.registry, MODEL, 1, store, node_id="f1", chunk_size=CHUNK))
    # h2 served two chunks and is in the middle of reading the third: stop its server there.
    assert await asyncio.to_thread(victim_store.reached.wait, 30)
    await victim.stop(0)
    victim_store.release.set()
    result = await task
    assert result.path.read_bytes() == cluster.data and result.replica_recorded
    # h2 read two chunks from disk, but a reply still in flight when its server stopped never arrives: it
    # delivered at most those two, and every other chunk came once from the others.
    delivered_by_victim = result.by_holder.get("h2", 0)
    assert "h2" in result.dropped and delivered_by_victim <= 2
    assert result.by_holder["h1"] + result.by_holder["h3"] == CHUNKS - delivered_by_victim


async def test_a_hung_holder_is_dropped_after_the_stall_timeout(cluster: Cluster) -> None:
    hung = StallingStore(cluster.tmp / "h1", after=0)
    await cluster.holder("h1", hung)
    await cluster.holder("h2")
    result = await fetch_artifact(
        cluster.registry, MODEL, 1, ArtifactStore(cluster.tmp / "f1"), chunk_size=CHUNK, stall_timeout=2.0,
        bandwidth=fastest("h1"),
    )  # fmt: skip
    assert result.path.read_bytes() == cluster.data
    assert result.dropped["h1"].startswith("sent nothing for 2 s") and result.by_holder == {"h2": CHUNKS}


async def test_an_interrupted_fetch_resumes_and_fetches_only_the_missing_chunks(cluster: Cluster) -> None:
    await three_holders(cluster)
    store = ArtifactStore(cluster.tmp / "f1")
    task: asyncio.Task[object] | None = None

    def cancel_halfway(done: int, total: int) -> None:
        if done >= total // 2 and task is not None:
            task.cancel()

    task = asyncio.create_task(
        fetch_artifact(cluster.registry, MODEL, 1, store, node_id="f1", chunk_size=CHUNK, progress=cancel_halfway)
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.record(MODEL, 1) is None and cluster.registry.replica_calls == []
    partial = store.open_partial(MODEL, 1, size=SIZE, sha256=sha(cluster.data), chunk_size=4 * CHUNK)
    try:
        kept = set(partial.done)
        assert partial.chunk_size == CHUNK  # the partial download keeps its own chunk size
    finally:
        partial.close()
    assert CHUNKS // 2 <= len(kept) < CHUNKS
    # Damage one chunk of the partial file on the fetcher's disk: it is checked again and re-fetched.
    damaged = min(kept)
    corrupt(store.dir(MODEL, 1) / "artifact.part", damaged * CHUNK, keep_mtime=True)
    # A holder may still be reading a chunk the cancelled fetch asked for: count from when it is done.
    deadline = time.monotonic() + 30
    while any(server.stats.reads_open for server in cluster.servers.values()):
        assert time.monotonic() < deadline, "the cancelled fetch's streams never ended on the holders"
        await asyncio.sleep(0.01)  # the poll interval of a condition wait
    served_before = cluster.served()

    result = await fetch_artifact(cluster.registry, MODEL, 1, store, node_id="f1", chunk_size=4 * CHUNK)
    assert result.path.read_bytes() == cluster.data
    assert result.chunks_resumed == len(kept) - 1 and result.chunks_fetched == CHUNKS - len(kept) + 1
    assert cluster.served() - served_before == result.chunks_fetched
    assert replicas(cluster.registry)[0] == "f1"


async def test_unavailable_holders_are_named_in_the_error(cluster: Cluster) -> None:
    store = ArtifactStore(cluster.tmp / "f1")
    registry = cluster.registry
    registry.node("h1", "", NodeState.ACTIVE)  # no gossip address
    registry.node("h2", "127.0.0.1:1", NodeState.DEAD)
    # h3: not a registered node at all
    with pytest.raises(ArtifactUnavailable) as raised:
        await fetch_artifact(registry, MODEL, 1, store, node_id="f1", chunk_size=CHUNK)
    message = str(raised.value)
    assert "h1: registered no gossip address" in message and "h2: is dead" in message
    assert "h3: is not a registered node" in message

    registry.register(MODEL, b"other bytes")
    with pytest.raises(ArtifactUnavailable, match="no replica"):
        await fetch_artifact(registry, MODEL, 2, store, node_id="f1")
    with pytest.raises(NotFound):
        await fetch_artifact(registry, MODEL, 9, store)
    registry.register("../escape", b"x", replicas=("h1",))
    with pytest.raises(InvalidArtifactName):
        await fetch_artifact(registry, "../escape", 1, store)


async def test_a_holder_with_other_bytes_or_a_stale_address_is_not_used(cluster: Cluster) -> None:
    await cluster.holder("h1", data=payload(seed=99))  # registered as a replica, holds something else
    impostor = await cluster.holder("h4")  # h4's server, registered under h2's name below
    cluster.registry.node("h2", impostor.address)
    await cluster.holder("h3")
    result = await fetch_artifact(cluster.registry, MODEL, 1, ArtifactStore(cluster.tmp / "f1"), chunk_size=CHUNK)
    assert result.path.read_bytes() == cluster.data and result.by_holder == {"h3": CHUNKS}
    assert "holds other bytes" in result.dropped["h1"] and "stale address" in result.dropped["h2"]


async def test_announce_records_what_the_store_verifiably_holds(cluster: Cluster) -> None:
    server = await cluster.holder("h9")
    source = cluster.tmp / "stray"
    source.write_bytes(b"stray")
    server.store.put_file("Stray", 1, source)
    outcome = await announce(cluster.registry, server.store, "h9")
    assert outcome == {(MODEL, 1): "recorded", ("Stray", 1): "not registered"}
    assert await announce(cluster.registry, server.store, "h9") == {
        (MODEL, 1): "already recorded", ("Stray", 1): "not registered"
    }  # fmt: skip


@dataclass
class FakePermissions:
    """The cluster's ``Auth.Check`` as ``ClusterAccess`` sees it: who holds models:read, and the questions asked."""

    readers: set[str]
    asked: list[tuple[str, str, str, str]] = field(default_factory=list)
    down: bool = False

    async def check_permission(
        self, identity: str, domain: str, verb: str, resource: str = "", *, timeout: float | None = None
    ) -> str | None:
        self.asked.append((identity, domain, verb, resource))
        if self.down:
            raise Unavailable("no server answered")
        return None if identity in self.readers else f"this needs {domain}:{verb} on {resource!r}"


async def test_cluster_access_lets_agents_through_and_asks_about_everyone_else() -> None:
    cluster = FakePermissions(readers={"user:alice"})
    access = ClusterAccess(cluster)
    assert await access.check("agent:gpu-02", "m") is None  # agents replicate by certificate alone
    assert cluster.asked == []
    assert await access.check("user:alice", "m") is None
    assert await access.check("user:bob", "m") == "this needs models:read on 'm'"
    # A server is asked about too: the cluster refuses one it removed.
    assert await access.check("server:n1", "m") == "this needs models:read on 'm'"
    assert cluster.asked == [
        ("user:alice", "models", "read", "m"),
        ("user:bob", "models", "read", "m"),
        ("server:n1", "models", "read", "m"),
    ]
    cluster.down = True  # never a download the cluster could not vouch for
    with pytest.raises(ArtifactAccessUnknown, match="retry"):
        await access.check("user:alice", "m")


def test_access_checks_need_a_tls_port(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="need TLS"):
        ArtifactServer(ArtifactStore(tmp_path), access=ClusterAccess(FakePermissions(readers=set())))
