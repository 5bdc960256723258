"""The SDK (both clients, same scenarios) against in-process fake servers.

The servers are fakes (a dict-backed KV with revisions, request-id dedup and watch history, plus
scripted faults); the clients under test are the real ones. The fakes run on grpc's threaded sync
server so that one fake serves both clients: a sync client blocking the event loop in an async test
does not block the server.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import inspect
import queue
import random
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest

from controlplane import errors
from controlplane.client import (
    AsyncAuditWatch,
    AsyncClient,
    AsyncWatch,
    AuditRecord,
    AuditWatch,
    Client,
    Consistency,
    DeadlineExceeded,
    EventType,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    KeyValue,
    OutOfRange,
    PermissionDenied,
    RetryPolicy,
    Role,
    Unavailable,
    UnknownOutcome,
    Watch,
)
from controlplane.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    cluster_pb2,
    cluster_pb2_grpc,
    common_pb2,
    kv_pb2,
    kv_pb2_grpc,
    watch_pb2,
    watch_pb2_grpc,
)

pytestmark = pytest.mark.timeout(60)


# --- the fake cluster ----------------------------------------------------------------------------


class FakeState:
    """What the fake nodes share, as replicas share the state machine: a KV with revisions,
    the answer to every request id (so a retry returns the first answer), and the event history.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.kvs: dict[str, kv_pb2.KeyValue] = {}
        self.revision = 0
        self.oldest = 1
        self.history: list[watch_pb2.Event] = []
        self.answers: dict[str, Any] = {}

    def _record(self, kind: int, key: str, kv: kv_pb2.KeyValue | None, prev: kv_pb2.KeyValue | None) -> None:
        event = watch_pb2.Event(revision=self.revision, type=kind, domain="kv", key=key)  # type: ignore[arg-type]
        if kv is not None:
            event.kv.CopyFrom(kv)
        if prev is not None:
            event.prev_kv.CopyFrom(prev)
        self.history.append(event)
        self.cond.notify_all()

    def put(self, key: str, value: bytes) -> tuple[kv_pb2.KeyValue, kv_pb2.KeyValue | None]:
        with self.cond:
            self.revision += 1
            prev = self.kvs.get(key)
            kv = kv_pb2.KeyValue(
                key=key,
                value=value,
                create_revision=prev.create_revision if prev else self.revision,
                mod_revision=self.revision,
                version=prev.version + 1 if prev else 1,
            )
            self.kvs[key] = kv
            self._record(watch_pb2.EVENT_TYPE_PUT, key, kv, prev)
            return kv, prev

    def delete(self, key: str) -> kv_pb2.KeyValue | None:
        with self.cond:
            prev = self.kvs.pop(key, None)
            if prev is not None:
                self.revision += 1
                self._record(watch_pb2.EVENT_TYPE_DELETE, key, None, prev)
            return prev

    def once(self, request_id: str, apply: Callable[[], Any]) -> Any:
        """Apply at most once per request id, as the real state machine does."""
        with self.cond:
            if request_id not in self.answers:
                self.answers[request_id] = apply()
            return self.answers[request_id]


@dataclass
class Fault:
    error: errors.ControlPlaneError
    #: Apply the request, then fail: the "it did commit but the answer was lost" case.
    after_apply: bool = False


class FakeNode(
    kv_pb2_grpc.KVServicer, watch_pb2_grpc.WatchServicer, cluster_pb2_grpc.ClusterServicer, auth_pb2_grpc.AuthServicer
):
    """One fake server on 127.0.0.1, with a script of faults and a log of what it received."""

    def __init__(self, state: FakeState, node_id: str) -> None:
        self.state = state
        self.node_id = node_id
        self.leader_address = ""  # what its response headers advertise
        self.faults: deque[Fault] = deque()
        self.calls: list[tuple[str, Any]] = []
        self.hang = False  # handlers block until the test ends (a server that never answers)
        self.released = threading.Event()
        self.watch_cut_after: int | None = None  # abort each watch stream after this many messages
        self.watch_started = threading.Event()
        self.watch_ended = threading.Event()
        self.snapshot_data = b""
        self.snapshot_sha = ""  # override the announced sha256 (to send a damaged snapshot)
        self.restored: list[list[cluster_pb2.SnapshotChunk]] = []
        # One queue per WatchAudit stream subscribed: a record to send, or an error to end it with.
        self.audit_streams: list[queue.Queue[auth_pb2.AuditRecord | errors.ControlPlaneError]] = []
        self.audit_refusal: errors.ControlPlaneError | None = None  # answers WatchAudit instead of a stream
        # Named threads, so the clean-close test can tell the server's threads from the client's.
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="fake-server"))
        kv_pb2_grpc.add_KVServicer_to_server(self, self.server)
        watch_pb2_grpc.add_WatchServicer_to_server(self, self.server)
        cluster_pb2_grpc.add_ClusterServicer_to_server(self, self.server)
        auth_pb2_grpc.add_AuthServicer_to_server(self, self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def fail(self, error: errors.ControlPlaneError, times: int = 1, *, after_apply: bool = False) -> None:
        self.faults.extend(Fault(error, after_apply) for _ in range(times))

    def stop(self) -> None:
        self.released.set()
        self.server.stop(None).wait()

    def calls_to(self, method: str) -> list[Any]:
        return [request for name, request in self.calls if name == method]

    # helpers

    def _admit(self, method: str, request: Any, context: grpc.ServicerContext) -> Fault | None:
        self.calls.append((method, request))
        if self.hang:
            self.released.wait()
        fault = self.faults.popleft() if self.faults else None
        if fault is not None and not fault.after_apply:
            self._abort(context, fault.error)
        return fault

    @staticmethod
    def _abort(context: grpc.ServicerContext, error: errors.ControlPlaneError) -> None:
        # Exactly what a real server sends: the status of the error class plus its metadata.
        context.set_trailing_metadata(error.metadata())
        context.abort(error.code, error.message)

    def _header(self) -> common_pb2.ResponseHeader:
        return common_pb2.ResponseHeader(
            node_id=self.node_id, revision=self.state.revision, leader_address=self.leader_address
        )

    def _finish(self, response: Any, fault: Fault | None, context: grpc.ServicerContext) -> Any:
        if fault is not None:
            self._abort(context, fault.error)
        header = self._header()
        # A write's header names the revision it created (kept in the deduplicated answer).
        header.revision = response.header.revision or header.revision
        response.header.CopyFrom(header)
        return response

    # KV

    def Put(self, request: kv_pb2.PutRequest, context: grpc.ServicerContext) -> kv_pb2.PutResponse:
        fault = self._admit("Put", request, context)
        if request.key == "":
            self._abort(context, errors.InvalidArgument("key must not be empty"))

        def apply() -> kv_pb2.PutResponse:
            kv, prev = self.state.put(request.key, request.value)
            response = kv_pb2.PutResponse(kv=kv)
            if prev is not None and request.prev_kv:
                response.prev_kv.CopyFrom(prev)
            response.header.revision = kv.mod_revision
            return response

        response = kv_pb2.PutResponse()
        response.CopyFrom(self.state.once(request.request_id, apply))
        return self._finish(response, fault, context)

    def Get(self, request: kv_pb2.GetRequest, context: grpc.ServicerContext) -> kv_pb2.GetResponse:
        fault = self._admit("Get", request, context)
        kv = self.state.kvs.get(request.key)
        response = kv_pb2.GetResponse(found=kv is not None, kv=kv)
        return self._finish(response, fault, context)

    def Delete(self, request: kv_pb2.DeleteRequest, context: grpc.ServicerContext) -> kv_pb2.DeleteResponse:
        fault = self._admit("Delete", request, context)
        prev = self.state.once(request.request_id, lambda: self.state.delete(request.key))
        response = kv_pb2.DeleteResponse(deleted=prev is not None, prev_kv=prev)
        return self._finish(response, fault, context)

    def List(self, request: kv_pb2.ListRequest, context: grpc.ServicerContext) -> kv_pb2.ListResponse:
        fault = self._admit("List", request, context)
        keys = sorted(k for k in self.state.kvs if k.startswith(request.prefix) and k > request.start_after)
        page = keys[: request.limit] if request.limit else keys
        kvs = [self.state.kvs[k] for k in page]
        if request.keys_only:
            kvs = [kv_pb2.KeyValue(key=kv.key, mod_revision=kv.mod_revision) for kv in kvs]
        response = kv_pb2.ListResponse(kvs=kvs, more=len(page) < len(keys))
        return self._finish(response, fault, context)

    def CompareAndSwap(
        self, request: kv_pb2.CompareAndSwapRequest, context: grpc.ServicerContext
    ) -> kv_pb2.CompareAndSwapResponse:
        fault = self._admit("CompareAndSwap", request, context)

        def apply() -> kv_pb2.CompareAndSwapResponse:
            current = self.state.kvs.get(request.key)
            if (current.mod_revision if current else 0) != request.expected_mod_revision:
                return kv_pb2.CompareAndSwapResponse(succeeded=False, found=current is not None, kv=current)
            if request.delete:
                self.state.delete(request.key)
                return kv_pb2.CompareAndSwapResponse(succeeded=True, found=False)
            kv, _ = self.state.put(request.key, request.value)
            return kv_pb2.CompareAndSwapResponse(succeeded=True, found=True, kv=kv)

        response = kv_pb2.CompareAndSwapResponse()
        response.CopyFrom(self.state.once(request.request_id, apply))
        return self._finish(response, fault, context)

    # Watch

    def Watch(
        self, request: watch_pb2.WatchRequest, context: grpc.ServicerContext
    ) -> Iterator[watch_pb2.WatchResponse]:
        self._admit("Watch", request, context)
        state = self.state

        def wake() -> None:  # the stream ended (client cancel, server stop): stop waiting for writes
            self.watch_ended.set()
            with state.cond:
                state.cond.notify_all()

        context.add_callback(wake)
        with state.cond:
            if request.from_revision and request.from_revision < state.oldest:
                self._abort(context, errors.OutOfRange("compacted", state.oldest))
            after = request.from_revision - 1 if request.from_revision else state.revision
        self.watch_started.set()
        yield watch_pb2.WatchResponse(revision=after)  # the first message: where the stream starts
        sent = 0
        while True:
            with state.cond:
                while state.revision <= after and context.is_active():
                    state.cond.wait()
                if not context.is_active():
                    return
                pending = [e for e in state.history if e.revision > after]
            for event in pending:
                if self.watch_cut_after is not None and sent >= self.watch_cut_after:
                    self._abort(context, errors.Unavailable("stream cut by the test"))
                # One revision per message; a non-matching one is sent as progress only.
                matching = event.key.startswith(request.filter.key_prefix)
                yield watch_pb2.WatchResponse(events=[event] if matching else [], revision=event.revision)
                sent += 1
                after = event.revision

    # Auth

    def audit(self, item: auth_pb2.AuditRecord | errors.ControlPlaneError) -> None:
        """Send a record (or end with an error) on the newest audit stream."""
        self.audit_streams[-1].put(item)

    def WatchAudit(
        self, request: auth_pb2.WatchAuditRequest, context: grpc.ServicerContext
    ) -> Iterator[auth_pb2.AuditRecord]:
        self._admit("WatchAudit", request, context)
        if self.audit_refusal is not None:
            self._abort(context, self.audit_refusal)
        stream: queue.Queue[auth_pb2.AuditRecord | errors.ControlPlaneError] = queue.Queue()
        self.audit_streams.append(stream)  # before the client learns it subscribed
        context.send_initial_metadata(((errors.AUDIT_SUBSCRIBED_KEY, "1"),))
        while context.is_active() and not self.released.is_set():
            try:
                item = stream.get(timeout=0.05)  # and look again whether the client is still there
            except queue.Empty:
                continue
            if isinstance(item, errors.ControlPlaneError):
                self._abort(context, item)
            yield item

    # Cluster

    def Status(self, request: cluster_pb2.StatusRequest, context: grpc.ServicerContext) -> Any:
        self._admit("Status", request, context)
        return cluster_pb2.StatusResponse(
            node_id=self.node_id,
            role=cluster_pb2.ROLE_FOLLOWER,
            leader_id="b",
            leader_address=self.leader_address,
            term=3,
            applied_revision=self.state.revision,
            members=[cluster_pb2.Member(id=self.node_id, role=cluster_pb2.ROLE_FOLLOWER, healthy=True, voter=True)],
            has_quorum=True,
            oldest_revision=self.state.oldest,
        )

    def AddMember(self, request: cluster_pb2.AddMemberRequest, context: grpc.ServicerContext) -> Any:
        self._admit("AddMember", request, context)
        return cluster_pb2.AddMemberResponse(
            members=[cluster_pb2.Member(id=request.id, client_address=request.client_address, voter=True)]
        )

    def RemoveMember(self, request: cluster_pb2.RemoveMemberRequest, context: grpc.ServicerContext) -> Any:
        self._admit("RemoveMember", request, context)
        return cluster_pb2.RemoveMemberResponse(members=[])

    def TransferLeadership(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._admit("TransferLeadership", request, context)
        return cluster_pb2.TransferLeadershipResponse(leader_id=request.target_id or "c", term=4)

    def Snapshot(self, request: Any, context: grpc.ServicerContext) -> Iterator[cluster_pb2.SnapshotChunk]:
        self._admit("Snapshot", request, context)
        data = self.snapshot_data
        sha = self.snapshot_sha or hashlib.sha256(data).hexdigest()
        yield cluster_pb2.SnapshotChunk(data=data[:1000], revision=7, total_bytes=len(data), sha256=sha)
        for offset in range(1000, len(data), 1000):
            yield cluster_pb2.SnapshotChunk(data=data[offset : offset + 1000])

    def Restore(self, request_iterator: Iterator[cluster_pb2.SnapshotChunk], context: Any) -> Any:
        self._admit("Restore", None, context)
        chunks = list(request_iterator)
        self.restored.append(chunks)
        data = b"".join(c.data for c in chunks)
        if hashlib.sha256(data).hexdigest() != chunks[0].sha256 or len(data) != chunks[0].total_bytes:
            self._abort(context, errors.InvalidArgument("damaged upload"))
        return cluster_pb2.RestoreResponse(revision=self.state.revision + 1)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def state() -> FakeState:
    return FakeState()


@pytest.fixture
def nodes(state: FakeState) -> Iterator[Callable[[str], FakeNode]]:
    started: list[FakeNode] = []

    def start(node_id: str) -> FakeNode:
        node = FakeNode(state, node_id)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def dead_address() -> str:
    """An address with nothing listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


AnyClient = Client | AsyncClient


@pytest.fixture(params=["sync", "async"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., AnyClient]]:
    """Builds the client under test (each test runs once per client kind); closes it afterwards."""
    made: list[AnyClient] = []

    def make(*endpoints: FakeNode | str, **kwargs: Any) -> AnyClient:
        addresses = [e.address if isinstance(e, FakeNode) else e for e in endpoints]
        kwargs.setdefault("retry_policy", RetryPolicy(rng=random.Random(3)))
        client: AnyClient = (Client if request.param == "sync" else AsyncClient)(addresses, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await run(client.close())


async def run(result: Any) -> Any:
    """The value of a client call, whichever kind of client made it."""
    return await result if inspect.isawaitable(result) else result


class Ended(Exception):
    """The watch iteration ended (StopIteration cannot cross a coroutine, so take() raises this)."""


async def take(watch: Watch | AsyncWatch | AuditWatch | AsyncAuditWatch, count: int) -> list[Any]:
    """The next ``count`` items of a watch (events, or audit records), whichever client made it."""
    events: list[Any] = []
    try:
        while len(events) < count:
            events.append(await anext(watch) if isinstance(watch, AsyncWatch | AsyncAuditWatch) else next(watch))
    except (StopIteration, StopAsyncIteration):
        raise Ended from None
    return events


# --- KV round trip -------------------------------------------------------------------------------


async def test_kv_round_trip(connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode]) -> None:
    node = nodes("a")
    client = connect(node)
    put = await run(client.put("cfg/a", "one"))
    assert put.revision == 1 and put.kv == KeyValue("cfg/a", b"one", 1, 1, 1) and put.prev_kv is None
    again = await run(client.put("cfg/a", b"two", prev_kv=True))
    assert again.prev_kv.value == b"one" and again.kv.version == 2
    await run(client.put("cfg/b", b"three"))
    assert (await run(client.get("cfg/a"))).value == b"two"
    assert await run(client.get("missing")) is None
    page = await run(client.list("cfg/", limit=1))
    assert [kv.key for kv in page.kvs] == ["cfg/a"] and page.more
    rest = await run(client.list("cfg/", start_after="cfg/a", keys_only=True))
    assert [kv.key for kv in rest.kvs] == ["cfg/b"] and not rest.more and rest.kvs[0].value == b""
    lost = await run(client.compare_and_swap("cfg/a", b"x", expected_mod_revision=1))
    assert not lost.succeeded and lost.kv.mod_revision == 2
    won = await run(client.compare_and_swap("cfg/a", b"x", expected_mod_revision=2))
    assert won.succeeded and won.kv.value == b"x"
    gone = await run(client.compare_and_swap("cfg/a", b"", expected_mod_revision=won.kv.mod_revision, delete=True))
    assert gone.succeeded and gone.kv is None
    deleted = await run(client.delete("cfg/b"))
    assert deleted.deleted and deleted.prev_kv.value == b"three"
    assert not (await run(client.delete("cfg/b"))).deleted


async def test_the_async_client_sends_each_call_alone_to_a_server_without_call_streams(
    nodes: Callable[[str], FakeNode],
) -> None:
    """These fakes serve no ``Calls.Carry`` (as a server of the previous release): the stream is
    refused before it carries anything, and every call goes as a call of its own."""
    node = nodes("a")
    async with AsyncClient([node.address], retry_policy=RetryPolicy(rng=random.Random(3))) as client:
        results = await asyncio.gather(*(client.put(f"alone/{i}", b"v") for i in range(5)))
        assert sorted(r.revision for r in results) == [1, 2, 3, 4, 5]  # each applied once
        assert (await client.get("alone/3")).value == b"v"
        (carrier,) = client._carriers.values()  # white-box: the fallback was taken, not a retry
        assert carrier.refused


async def test_reads_send_their_consistency(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode]
) -> None:
    node = nodes("a")
    client = connect(node)
    await run(client.get("k"))
    await run(client.get("k", consistency=Consistency.STALE, min_revision=5))
    await run(client.list("k", consistency=Consistency.STALE))
    default, stale = node.calls_to("Get")
    assert default.read.consistency == common_pb2.CONSISTENCY_LINEARIZABLE
    assert (stale.read.consistency, stale.read.min_revision) == (common_pb2.CONSISTENCY_STALE, 5)
    assert node.calls_to("List")[0].read.consistency == common_pb2.CONSISTENCY_STALE


# --- finding a server ----------------------------------------------------------------------------


async def test_rotates_past_a_refused_endpoint(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode], dead_address: str
) -> None:
    node = nodes("a")
    client = connect(dead_address, node)
    await run(client.put("k", b"v"))
    assert (await run(client.get("k"))).value == b"v"
    assert len(node.calls) == 2


async def test_rotates_past_an_unavailable_server(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode]
) -> None:
    a, b = nodes("a"), nodes("b")
    a.fail(errors.NoLeader("election running"))
    client = connect(a, b)
    assert await run(client.get("k")) is None
    assert len(a.calls) == 1 and len(b.calls) == 1
    await run(client.get("k"))  # the client stays on the endpoint that works
    assert len(a.calls) == 1 and len(b.calls) == 2


async def test_a_mutation_keeps_its_request_id_across_retries(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode], state: FakeState
) -> None:
    a, b = nodes("a"), nodes("b")
    # The first attempt commits but its answer is lost; the second finds no server; the third works.
    a.fail(errors.UnknownOutcome("leader changed"), after_apply=True)
    b.fail(errors.Unavailable("restarting"))
    client = connect(a, b)
    result = await run(client.put("k", b"v"))
    ids = [r.request_id for r in a.calls_to("Put") + b.calls_to("Put")]
    assert len(ids) == 3 and len(set(ids)) == 1 and ids[0]
    # Written once: the retry got the first answer back.
    assert state.revision == 1 and result.revision == 1 and result.kv.version == 1


async def test_a_given_request_id_is_used(connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode]) -> None:
    node = nodes("a")
    client = connect(node)
    await run(client.delete("k", request_id="mine"))
    await run(client.compare_and_swap("k", b"v", 0, request_id="cas-1"))
    assert node.calls_to("Delete")[0].request_id == "mine"
    assert node.calls_to("CompareAndSwap")[0].request_id == "cas-1"


@pytest.mark.parametrize(
    "error",
    [
        errors.InvalidArgument("key too long"),
        errors.NotFound("no such key"),
        errors.FailedPrecondition("a membership change is in flight"),
        errors.ResourceExhausted("too many keys"),
    ],
)
async def test_answers_are_not_retried(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode], error: errors.ControlPlaneError
) -> None:
    a, b = nodes("a"), nodes("b")
    a.fail(error)
    client = connect(a, b)
    with pytest.raises(type(error), match=error.message):
        await run(client.put("k", b"v"))
    assert len(a.calls) == 1 and b.calls == []


async def test_a_real_invalid_argument_is_raised(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode]
) -> None:
    node = nodes("a")
    client = connect(node)
    with pytest.raises(InvalidArgument, match="must not be empty"):
        await run(client.put("", b"v"))
    assert len(node.calls) == 1


async def test_the_deadline_bounds_retries(connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode]) -> None:
    node = nodes("a")
    node.fail(errors.NoLeader("no quorum"), times=10_000)
    client = connect(node, timeout=0.4)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as raised:
        await run(client.put("k", b"v"))
    assert time.monotonic() - started < 2.0
    assert isinstance(raised.value.__cause__, errors.NoLeader)
    assert len(node.calls) > 2  # it did retry, with backoff, rather than give up or spin
    assert len(node.calls) < 200


async def test_every_attempt_gets_only_the_time_left(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode]
) -> None:
    node = nodes("a")
    node.hang = True  # never answers
    client = connect(node)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await run(client.get("k", timeout=0.3))
    assert time.monotonic() - started < 2.0


async def test_unknown_outcome_is_not_retried_when_a_retry_could_act_twice(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode]
) -> None:
    node = nodes("a")
    node.fail(errors.UnknownOutcome("timed out"))
    client = connect(node)
    with pytest.raises(UnknownOutcome):
        await run(client.transfer_leadership())
    node.fail(errors.UnknownOutcome("timed out"))
    assert await run(client.transfer_leadership("b")) == ("b", 4)


# --- leader hints --------------------------------------------------------------------------------


async def test_writes_follow_the_leader_hint_and_fall_back_when_it_fails(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode]
) -> None:
    follower, leader = nodes("a"), nodes("b")
    follower.leader_address = leader.address
    leader.leader_address = leader.address
    client = connect(follower)  # the leader is not in the endpoint list
    await run(client.put("k", b"1"))
    assert client.leader_address == leader.address
    await run(client.put("k", b"2"))
    await run(client.get("k"))  # reads stay on the endpoint list
    assert len(follower.calls_to("Put")) == 1 and len(leader.calls_to("Put")) == 1
    assert len(follower.calls_to("Get")) == 1
    leader.stop()
    # The follower still names the dead leader (no election yet): the client must not loop on it.
    result = await run(client.put("k", b"3"))
    assert result.kv.value == b"3"
    assert len(follower.calls_to("Put")) == 2
    await run(client.put("k", b"4"))
    assert len(follower.calls_to("Put")) == 3


async def test_not_leader_redirects_to_the_named_leader(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode]
) -> None:
    follower, leader = nodes("a"), nodes("b")
    follower.fail(errors.NotLeader("not the leader", "b", leader.address))
    client = connect(follower)
    await run(client.add_member("d", "10.0.0.4:7001", "10.0.0.4:7000"))
    (first,) = follower.calls_to("AddMember")
    (second,) = leader.calls_to("AddMember")
    assert first.request_id == second.request_id
    assert client.leader_address == leader.address


async def test_status_reports_the_answering_node(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode]
) -> None:
    node, leader = nodes("a"), nodes("b")
    node.leader_address = leader.address
    client = connect(node)
    status = await run(client.status())
    assert status.node_id == "a" and status.role is Role.FOLLOWER and status.has_quorum
    assert status.members[0].voter and client.leader_address == leader.address
    node = leader  # membership changes are writes: they go to the leader now
    members = await run(client.add_member("d", "r:1", "c:1"))
    assert isinstance(members, list) and members[0].client_address == "c:1"
    assert await run(client.remove_member("d")) == []
    add, remove = node.calls_to("AddMember")[0], node.calls_to("RemoveMember")[0]
    assert add.request_id and remove.request_id and add.request_id != remove.request_id


async def test_failed_precondition_on_membership_is_raised(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode]
) -> None:
    node = nodes("a")
    node.fail(errors.FailedPrecondition("adding n4 is in flight"))
    client = connect(node)
    with pytest.raises(FailedPrecondition, match="n4"):
        await run(client.add_member("n5", "r:1", "c:1"))


# --- watch ---------------------------------------------------------------------------------------


async def test_watch_resumes_after_cut_streams_without_gap_or_duplicate(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode], state: FakeState
) -> None:
    a, b = nodes("a"), nodes("b")
    a.watch_cut_after = b.watch_cut_after = 2
    for i in range(7):
        state.put(f"k{i}", b"v")
    client = connect(a, b)
    watch = client.watch(from_revision=1)
    events = await take(watch, 7)
    assert [e.revision for e in events] == [1, 2, 3, 4, 5, 6, 7]
    assert events[0].type is EventType.PUT and events[0].kv.key == "k0"
    starts = sorted(r.from_revision for r in a.calls_to("Watch") + b.calls_to("Watch"))
    assert starts == [1, 3, 5, 7]  # each stream resumed right after the last revision delivered
    if isinstance(watch, AsyncWatch):
        await watch.aclose()
    else:
        watch.close()


async def test_watch_from_now_survives_a_server_dying(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode], state: FakeState
) -> None:
    a, b = nodes("a"), nodes("b")
    state.put("old", b"before the watch")
    client = connect(a, b)
    watch = client.watch("x/", from_revision=2)
    state.put("x/1", b"")
    state.put("y/skip", b"")  # filtered out; its progress still moves the resume point
    state.put("x/2", b"")
    first = await take(watch, 2)
    assert [(e.key, e.revision) for e in first] == [("x/1", 2), ("x/2", 4)]
    a.stop()  # the stream breaks with UNAVAILABLE; the watch moves to b
    state.put("x/3", b"")
    state.delete("x/1")
    rest = await take(watch, 2)
    assert [(e.key, e.revision, e.type) for e in rest] == [("x/3", 5, EventType.PUT), ("x/1", 6, EventType.DELETE)]
    assert rest[1].kv is None and rest[1].prev_kv.key == "x/1"
    assert [r.from_revision for r in b.calls_to("Watch")] == [5]
    assert watch.revision == 6


async def test_watch_out_of_range_carries_the_oldest_revision(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode], state: FakeState
) -> None:
    node = nodes("a")
    state.oldest = 50
    client = connect(node)
    watch = client.watch(from_revision=10)
    with pytest.raises(OutOfRange) as raised:
        await take(watch, 1)
    assert raised.value.oldest_revision == 50
    assert len(node.calls_to("Watch")) == 1  # not retried
    with pytest.raises(Ended):
        await take(watch, 1)  # the watch is finished


async def test_async_watch_task_cancellation_cancels_the_stream(nodes: Callable[[str], FakeNode]) -> None:
    node = nodes("a")
    async with AsyncClient([node.address]) as client:
        watch = client.watch()
        task = asyncio.create_task(take(watch, 1))
        assert await asyncio.to_thread(node.watch_started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(node.watch_ended.wait, 10)  # the server saw the stream end


async def test_async_watch_aclose_ends_a_pending_iteration(nodes: Callable[[str], FakeNode]) -> None:
    node = nodes("a")
    async with AsyncClient([node.address]) as client:
        watch = client.watch()
        pending = asyncio.create_task(take(watch, 1))
        assert await asyncio.to_thread(node.watch_started.wait, 10)
        await watch.aclose()
        with pytest.raises(Ended):
            await pending
        assert await asyncio.to_thread(node.watch_ended.wait, 10)


def test_sync_watch_close_from_another_thread_ends_a_blocked_next(nodes: Callable[[str], FakeNode]) -> None:
    node = nodes("a")
    with Client([node.address]) as client:
        watch = client.watch()
        outcome: list[Any] = []
        reader = threading.Thread(target=lambda: outcome.append(list(watch)))
        reader.start()
        assert node.watch_started.wait(10)
        watch.close()
        reader.join(10)
        assert not reader.is_alive() and outcome == [[]]
        assert node.watch_ended.wait(10)


# --- snapshot and restore ------------------------------------------------------------------------


async def test_snapshot_is_verified_and_written_atomically(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode], tmp_path: Any
) -> None:
    node = nodes("a")
    node.snapshot_data = bytes(range(256)) * 20
    node.fail(errors.Unavailable("restarting"))  # the first attempt breaks: restarted from scratch
    client = connect(node)
    info = await run(client.snapshot(tmp_path / "backup.bin"))
    assert (tmp_path / "backup.bin").read_bytes() == node.snapshot_data
    assert (info.revision, info.size, info.sha256) == (7, 5120, hashlib.sha256(node.snapshot_data).hexdigest())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.bin"]


async def test_snapshot_sha_mismatch_is_detected(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode], tmp_path: Any
) -> None:
    node = nodes("a")
    node.snapshot_data = b"state" * 1000
    node.snapshot_sha = hashlib.sha256(b"something else").hexdigest()
    (tmp_path / "backup.bin").write_bytes(b"previous backup")
    client = connect(node)
    with pytest.raises(Internal, match="sha256"):
        await run(client.snapshot(tmp_path / "backup.bin"))
    assert (tmp_path / "backup.bin").read_bytes() == b"previous backup"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.bin"]
    assert len(node.calls_to("Snapshot")) == 1


async def test_restore_streams_the_file_in_chunks(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode], tmp_path: Any
) -> None:
    node = nodes("a")
    data = random.Random(1).randbytes(2_500_000)
    (tmp_path / "backup.bin").write_bytes(data)
    client = connect(node)
    assert await run(client.restore(tmp_path / "backup.bin")) == 1
    (chunks,) = node.restored
    assert [len(c.data) for c in chunks] == [1 << 20, 1 << 20, 2_500_000 - (2 << 20)]
    assert chunks[0].sha256 == hashlib.sha256(data).hexdigest() and chunks[0].total_bytes == len(data)


# --- closing -------------------------------------------------------------------------------------


async def test_async_close_closes_every_channel_and_leaves_no_task(
    nodes: Callable[[str], FakeNode], state: FakeState
) -> None:
    follower, leader = nodes("a"), nodes("b")
    follower.leader_address = leader.address
    channels: list[grpc.aio.Channel] = []

    def factory(address: str) -> grpc.aio.Channel:
        channels.append(grpc.aio.insecure_channel(address))
        return channels[-1]

    tasks_before = asyncio.all_tasks()
    client = AsyncClient([follower.address], channel_factory=factory)
    await client.put("k", b"1")
    await client.put("k", b"2")  # opens a channel to the leader too
    watch = client.watch()
    reader = asyncio.create_task(take(watch, 1))
    assert await asyncio.to_thread(follower.watch_started.wait, 10)
    await client.close()
    with pytest.raises(Ended):
        await reader  # an open watch ends when its client closes
    assert len(channels) == 2
    assert all(c.get_state() == grpc.ChannelConnectivity.SHUTDOWN for c in channels)
    # grpc.aio may keep its own bookkeeping tasks for a moment; none may run SDK code.
    left = [getattr(t.get_coro(), "cr_code", None) for t in asyncio.all_tasks() - tasks_before]
    assert [c for c in left if c is not None and "controlplane/client" in c.co_filename] == []
    with pytest.raises(RuntimeError, match="closed"):
        await client.get("k")


def test_sync_close_closes_every_channel_and_leaves_no_thread(nodes: Callable[[str], FakeNode], tmp_path: Any) -> None:
    follower, leader = nodes("a"), nodes("b")
    follower.leader_address = leader.address
    (tmp_path / "up").write_bytes(b"y" * 3000)
    channels: list[grpc.Channel] = []

    def factory(address: str) -> grpc.Channel:
        channels.append(grpc.insecure_channel(address))
        return channels[-1]

    threads_before = set(threading.enumerate())
    client = Client([follower.address], channel_factory=factory)
    client.put("k", b"1")
    client.put("k", b"2")
    client.restore(tmp_path / "up")  # a client-streaming call (grpc feeds it from a helper thread)
    watch = client.watch()
    outcome: list[Any] = []
    reader = threading.Thread(target=lambda: outcome.append(list(watch)))
    reader.start()
    assert follower.watch_started.wait(10)
    client.close()
    reader.join(10)
    assert outcome == [[]]  # the watch ended with the client
    assert len(channels) == 2
    for channel in channels:
        with pytest.raises(ValueError, match="closed"):
            channel.unary_unary("/controlplane.v1.KV/Get")(b"")
    for thread in set(threading.enumerate()) - threads_before:
        if thread.name.startswith("fake-server"):
            continue
        thread.join(10)
        assert not thread.is_alive(), thread
    with pytest.raises(RuntimeError, match="closed"):
        client.get("k")


async def test_unavailable_is_what_a_dead_cluster_looks_like_within_the_deadline(
    connect: Callable[..., AnyClient], dead_address: str
) -> None:
    client = connect(dead_address, timeout=0.3)
    with pytest.raises(DeadlineExceeded) as raised:
        await run(client.status())
    assert isinstance(raised.value.__cause__, Unavailable)


async def test_a_call_cancelled_while_asking_who_leads_leaves_no_unretrieved_error(
    nodes: Callable[[str], FakeNode],
) -> None:
    """A write whose caller is cancelled while it asks another server who leads, and whose own call
    failed meanwhile: the failure is nobody's answer any more, and must not surface at exit as
    "Task exception was never retrieved" with a traceback (a thawed agent printed one)."""
    slow, asked = nodes("a"), nodes("b")
    slow.hang, asked.hang = True, True  # the write waits, and so does the question who leads
    slow.fail(errors.FailedPrecondition("not yours any more"))
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(str(context.get("message"))))
    client = AsyncClient([slow.address, asked.address], retry_policy=RetryPolicy(leader_check_after=0.05))
    try:
        writing = asyncio.ensure_future(client.put("k", b"v"))

        async def asking() -> bool:
            return bool(asked.calls_to("Status"))

        await _until(asking, "the write to ask who leads")
        slow.released.set()  # the write's own call fails now, while the question is still open

        def wrapped_calls() -> list[asyncio.Task[Any]]:
            return [t for t in asyncio.all_tasks() if "_wrap_awaitable" in repr(t.get_coro())]

        async def failed() -> bool:
            return all(task.done() for task in wrapped_calls())

        await _until(failed, "the write's call to fail")
        writing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writing
    finally:
        asked.released.set()
        await client.close()
    del writing
    gc.collect()
    await asyncio.sleep(0)  # the loop runs the handler calls gc queued
    assert not [message for message in reported if "never retrieved" in message], reported


async def _until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)  # the poll interval of a condition wait


# --- the audit stream ----------------------------------------------------------------------------


def audit_record(node: FakeNode, resource: str) -> auth_pb2.AuditRecord:
    return auth_pb2.AuditRecord(node_id=node.node_id, who="user:admin", method="/x", resource=resource, code="OK")


async def test_an_audit_watch_follows_every_server_and_again_after_a_stream_breaks(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode]
) -> None:
    """Subscribed to both servers on return (the fakes list no members: the endpoints are
    followed); a stream cut by its server is followed again and said so, and records keep coming."""
    a, b = nodes("a"), nodes("b")
    changes: list[tuple[str, str, str]] = []
    client = connect(a, b)
    watch = await run(client.watch_audit(on_change=lambda *change: changes.append(change), timeout=10))
    assert watch.following == tuple(sorted((a.address, b.address))) and len(a.audit_streams) == 1
    a.audit(audit_record(a, "r1"))
    b.audit(audit_record(b, "r2"))
    assert {record.resource for record in await take(watch, 2)} == {"r1", "r2"}
    a.audit(errors.Unavailable("restarting"))

    async def followed_again() -> bool:
        return len(a.audit_streams) == 2 and a.address in watch.following

    await _until(followed_again, "the broken stream followed again")
    a.audit(audit_record(a, "r3"))
    assert await take(watch, 1) == [AuditRecord(0, "a", "user:admin", "/x", "r3", "OK", "", 0)]
    assert (a.address, a.address, "UNAVAILABLE: restarting") in changes
    assert changes.count((a.address, a.address, "following")) == 2
    await run(client.close())  # closes the watch too
    with pytest.raises(Ended):
        await take(watch, 1)
    assert not watch.following


async def test_an_audit_watch_refused_is_an_error_at_once_or_at_the_next_record(
    connect: Callable[..., AnyClient], nodes: Callable[[str], FakeNode]
) -> None:
    """An answer about the caller ends the watch: raised by watch_audit() before it subscribed,
    by the iteration after; nothing is left following."""
    a = nodes("a")
    client = connect(a)
    a.audit_refusal = PermissionDenied("this call needs the cluster:admin permission")
    with pytest.raises(PermissionDenied, match="cluster:admin"):
        await run(client.watch_audit(timeout=10))
    assert len(a.calls_to("WatchAudit")) == 1 and not a.audit_streams  # refused by the stream, once
    a.audit_refusal = None
    watch = await run(client.watch_audit(timeout=10))
    a.audit(PermissionDenied("your role was revoked"))
    with pytest.raises(PermissionDenied, match="revoked"):
        await take(watch, 1)
    with pytest.raises(Ended):
        await take(watch, 1)
    assert not watch.following and len(a.audit_streams) == 1  # not followed again


def test_closing_an_audit_watch_from_another_thread_ends_a_blocked_next(nodes: Callable[[str], FakeNode]) -> None:
    a = nodes("a")
    with Client([a.address], timeout=10) as client:
        watch = client.watch_audit()
        # Most likely while next() below waits for a record; if the close comes first, next() ends
        # at once all the same, so the test cannot flake, only sometimes test less.
        closer = threading.Timer(0.2, watch.close)
        closer.start()
        with pytest.raises(StopIteration):
            next(watch)
        closer.join()
        assert not [t for t in threading.enumerate() if t.name.startswith("audit-")]
