"""Watches survive the loss of their server, and say OUT_OF_RANGE when history is gone."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable

import grpc
import pytest

from controlplane.client import AsyncClient, Client, ControlPlaneError, Event, OutOfRange
from controlplane.dev import LocalCluster, NodeProcess
from controlplane.errors import OLDEST_REVISION_KEY
from controlplane.v1 import watch_pb2

from .conftest import (
    READY_TIMEOUT_S,
    channel,
    collect_events,
    credentials_for,
    followers,
    running,
    status,
    wait_converged,
    wait_until,
    watch_stub,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

PREFIX = "watched/"


class Writer:
    """One client writing fresh keys in a loop; every ack recorded as key -> (value, revision)."""

    def __init__(self, endpoints: list[str]) -> None:
        self.acked: dict[str, tuple[bytes, int]] = {}
        self.failures: list[ControlPlaneError] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(endpoints,), name="writer")

    def _run(self, endpoints: list[str]) -> None:
        with Client(endpoints, timeout=20, credentials=credentials_for(endpoints[0])) as client:
            sequence = 0
            while not self.stop.is_set():
                key, value = f"{PREFIX}{sequence:06d}", f"value-{sequence}".encode()
                sequence += 1
                try:
                    revision = client.put(key, value).revision
                except ControlPlaneError as exc:
                    self.failures.append(exc)
                    continue
                with self._lock:
                    self.acked[key] = (value, revision)

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the writer hung"


def _check_stream(
    delivered: list[Event], acked: dict[str, tuple[bytes, int]], reference: list[watch_pb2.Event]
) -> None:
    """Exactly once, in order, no gap: the resumed stream equals one unbroken stream of the same history."""
    revisions = [event.revision for event in delivered]
    assert revisions == sorted(set(revisions)), "events out of order or duplicated"
    assert [(e.revision, e.key, e.kv.value if e.kv else None) for e in delivered] == [
        (e.revision, e.key, e.kv.value) for e in reference
    ], "the resumed watch differs from an unbroken watch of the same history"
    by_key = {event.key: event for event in delivered}
    for key, (value, revision) in acked.items():
        event = by_key.get(key)
        assert event is not None, f"acknowledged write {key}@{revision} never delivered"
        assert event.revision == revision and event.kv is not None and event.kv.value == value


def _pick(cluster: LocalCluster, role: str) -> NodeProcess:
    leader = cluster.wait_for_leader()
    return cluster.nodes[leader] if role == "leader" else followers(cluster, leader)[0]


@pytest.mark.parametrize(
    ("role", "how"),
    [("follower", "kill-9"), ("leader", "kill-9"), ("follower", "restart")],
    ids=["kill-9-follower", "kill-9-leader", "restart-follower"],
)
def test_sdk_watch_resumes_exactly_once_across_server_loss(
    make_cluster: Callable[..., LocalCluster], role: str, how: str
) -> None:
    cluster = make_cluster()
    victim = _pick(cluster, role)
    others = [node.client_address for node in running(cluster) if node is not victim]
    delivered: list[Event] = []
    watch_error: list[BaseException] = []

    with Client(cluster.client_addresses, credentials=cluster.credentials) as setup:
        start = setup.put(f"{PREFIX}start", b"0").revision
    # The watch client lists the victim first, so that is where its stream goes.
    with Client([victim.client_address, *others], timeout=20, credentials=cluster.credentials) as watcher:
        watch = watcher.watch(PREFIX, from_revision=start)

        def consume() -> None:
            try:
                delivered.extend(watch)
            except BaseException as exc:
                watch_error.append(exc)

        consumer = threading.Thread(target=consume, name="watch-consumer")
        consumer.start()
        try:
            with Writer(cluster.client_addresses) as writer:
                wait_until(lambda: len(delivered) >= 50, 30, "50 events before the fault")
                if how == "restart":
                    cluster.restart(victim.id)
                else:
                    cluster.kill(victim.id, signal.SIGKILL)
                acked_at_fault = writer.count()
                wait_until(lambda: writer.count() >= acked_at_fault + 100, 45, "100 more writes after the fault")
            assert not writer.failures, writer.failures[:3]
            last = max(revision for _, revision in writer.acked.values())
            wait_until(lambda: watch.revision >= last, 30, f"the watch to deliver up to revision {last}")
        finally:
            watch.close()
            consumer.join(30)
    assert not consumer.is_alive() and not watch_error, watch_error

    assert delivered[0].revision == start
    survivor = next(node for node in running(cluster) if node is not victim)
    reference = collect_events(survivor.client_address, start, last, prefix=PREFIX)
    _check_stream([e for e in delivered if e.revision <= last], writer.acked, reference)
    # The stream really crossed the fault: events from before and after it were delivered.
    assert sum(1 for e in delivered if e.revision <= last) > acked_at_fault


async def test_async_watch_resumes_after_its_server_restarts(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster()
    victim = _pick(cluster, "follower")
    others = [node.client_address for node in running(cluster) if node is not victim]
    acked: dict[str, tuple[bytes, int]] = {}
    async with (
        AsyncClient(cluster.client_addresses, credentials=cluster.credentials, timeout=20) as writer,
        AsyncClient([victim.client_address, *others], timeout=20, credentials=cluster.credentials) as watcher,
    ):
        start = (await writer.put(f"{PREFIX}start", b"0")).revision
        watch = watcher.watch(PREFIX, from_revision=start)
        delivered: list[Event] = []

        async def consume() -> None:
            async for event in watch:
                delivered.append(event)

        consumer = asyncio.create_task(consume())

        async def write(first: int, count: int) -> None:
            for i in range(first, first + count):
                key, value = f"{PREFIX}{i:06d}", f"async-{i}".encode()
                acked[key] = (value, (await writer.put(key, value)).revision)

        await write(0, 50)
        restart = asyncio.create_task(asyncio.to_thread(cluster.restart, victim.id))
        await write(50, 50)
        await restart
        await write(100, 50)
        last = max(revision for _, revision in acked.values())
        async with asyncio.timeout(30):
            while watch.revision < last:
                await asyncio.sleep(0.05)  # polls the watch's progress, with the deadline above
        await watch.aclose()
        await asyncio.wait_for(consumer, 10)

    reference = await asyncio.to_thread(collect_events, others[0], start, last, PREFIX)
    _check_stream([e for e in delivered if e.revision <= last], acked, reference)


async def test_watch_from_compacted_revision_is_out_of_range(make_cluster: Callable[..., LocalCluster]) -> None:
    """History is kept for the configured number of revisions: 200 here. The default, 10,000, is the
    same path with another number (tests/test_config.py checks the default)."""
    limit = 200
    cluster = make_cluster(extra_config={"history_limit": limit})
    total = limit + 500
    async with AsyncClient(cluster.client_addresses, credentials=cluster.credentials, timeout=30) as client:
        gate = asyncio.Semaphore(256)

        async def put(i: int) -> None:
            async with gate:
                await client.put(f"history/{i:06d}", b"x")

        await asyncio.gather(*(put(i) for i in range(total)))
    revision = await asyncio.to_thread(wait_converged, cluster)
    assert revision > total
    oldest = revision - limit + 1
    for node in running(cluster):
        assert status(node).oldest_revision == oldest, node.id

    node = running(cluster)[0]
    with channel(node.client_address) as ch:
        stream = watch_stub(ch).Watch(watch_pb2.WatchRequest(from_revision=1), timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            next(stream)
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert str(oldest) in caught.value.details()
    assert dict(caught.value.trailing_metadata())[OLDEST_REVISION_KEY] == str(oldest)

    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        with pytest.raises(OutOfRange) as sdk_caught:
            next(iter(client.watch("history/", from_revision=oldest - 1)))
        assert sdk_caught.value.oldest_revision == oldest
        # The oldest retained revision still works, and starts exactly there.
        with client.watch("", from_revision=oldest) as watch:
            first = next(watch)
        assert first.revision == oldest


def test_sdk_watch_moves_on_when_its_server_freezes(make_cluster: Callable[..., LocalCluster]) -> None:
    """A server that stops answering without closing the stream (SIGSTOP: a frozen VM, a partition).

    Servers send a progress message at least every second on an idle stream, so a watch that hears
    nothing for several seconds knows its stream is dead and can resume elsewhere. Required here:
    writes made through the other servers reach the watcher while the frozen one stays frozen.
    """
    cluster = make_cluster()
    victim = _pick(cluster, "follower")
    others = [node.client_address for node in running(cluster) if node is not victim]
    assert victim.pid is not None
    delivered: list[Event] = []
    with (
        Client(others, timeout=20, credentials=cluster.credentials) as writer,
        Client([victim.client_address, *others], timeout=20, credentials=cluster.credentials) as watcher,
    ):
        start = writer.put(f"{PREFIX}start", b"0").revision
        watch = watcher.watch(PREFIX, from_revision=start)
        consumer = threading.Thread(target=lambda: delivered.extend(watch), name="watch-consumer")
        consumer.start()
        try:
            wait_until(lambda: len(delivered) >= 1, 10, "the first event")
            os.kill(victim.pid, signal.SIGSTOP)
            try:
                acked = {f"{PREFIX}{i:03d}": writer.put(f"{PREFIX}{i:03d}", str(i)).revision for i in range(20)}
                last = max(acked.values())
                wait_until(
                    lambda: watch.revision >= last,
                    15,
                    f"the watch to leave the frozen {victim.id} and deliver up to revision {last}",
                    detail=lambda: f"delivered up to {watch.revision}",
                )
            finally:
                os.kill(victim.pid, signal.SIGCONT)
        finally:
            watch.close()
            consumer.join(30)
    reference = collect_events(others[0], start, last, prefix=PREFIX)
    _check_stream(
        [e for e in delivered if e.revision <= last],
        {key: (str(int(key.rsplit("/", 1)[1])).encode(), revision) for key, revision in acked.items()},
        reference,
    )


def test_a_stopping_server_ends_its_watch_streams_first_with_unavailable(cluster: LocalCluster) -> None:
    """SIGTERM: a server's watch streams end as its stop begins, with UNAVAILABLE saying it is
    shutting down (their clients resume on another server), rather than holding the client
    listener's grace period to its end and being cut off then."""
    node = followers(cluster, cluster.wait_for_leader())[0]
    try:
        with channel(node.client_address) as ch:
            stream = watch_stub(ch).Watch(watch_pb2.WatchRequest(), timeout=60)
            next(stream)  # subscribed: the first message says where the stream starts
            cluster.kill(node.id, signal.SIGTERM)
            with pytest.raises(grpc.RpcError) as caught:
                for _ in stream:
                    pass
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
        assert "shutting down" in (caught.value.details() or "")
    finally:
        cluster.restart(node.id)
        # The shared cluster whole again before the next test: every server names the leader.
        # (Not wait_ready: it reads the directory from revision 1, compacted in a long session.)
        cluster.wait_for_leader(READY_TIMEOUT_S)
