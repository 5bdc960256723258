"""kill -9 of the leader while many clients write: no acknowledged write is lost, none is applied twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from controlplane.client import AsyncClient, Client, Consistency, ControlPlaneError, RetryPolicy
from controlplane.dev import LocalCluster

from .conftest import (
    assert_same_state,
    credentials_for,
    list_all,
    loop_stalls,
    node_client,
    running,
    wait_converged,
    wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

WRITERS = 16
PREFIX = "load/"


@dataclass(frozen=True)
class Ack:
    key: str
    value: bytes
    revision: int
    at: float  # time.monotonic() when the ack arrived


@dataclass
class Load:
    """16 writers, each with its own SDK client over every endpoint, each write to a fresh key."""

    endpoints: list[str]
    acks: list[Ack]
    failures: list[tuple[str, ControlPlaneError]]
    stop: threading.Event
    lock: threading.Lock

    def writer(self, index: int) -> None:
        with Client(self.endpoints, timeout=20.0, credentials=credentials_for(self.endpoints[0])) as client:
            sequence = 0
            while not self.stop.is_set():
                key = f"{PREFIX}{index:02d}/{sequence:06d}"
                value = f"{index}:{sequence}:{uuid.uuid4().hex}".encode()
                sequence += 1
                try:
                    result = client.put(key, value)
                except ControlPlaneError as exc:  # outcome unknown: may or may not exist afterwards
                    with self.lock:
                        self.failures.append((key, exc))
                    continue
                with self.lock:
                    self.acks.append(Ack(key, value, result.revision, time.monotonic()))

    def count(self, condition: Callable[[Ack], bool] = lambda ack: True) -> int:
        with self.lock:
            return sum(1 for ack in self.acks if condition(ack))


def test_acknowledged_writes_survive_leader_kill(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster()
    old_leader = cluster.wait_for_leader()
    load = Load(cluster.client_addresses, [], [], threading.Event(), threading.Lock())
    threads = [threading.Thread(target=load.writer, args=(i,), name=f"writer-{i}") for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: load.count() >= 20 * WRITERS, 30, "writes before the kill")
        cluster.kill(old_leader, signal.SIGKILL)
        killed_at = time.monotonic()
        # Writes resume under a new leader: every writer gets acks for writes sent after the kill.
        wait_until(
            lambda: all(
                load.count(lambda a, i=i: a.at > killed_at and a.key.startswith(f"{PREFIX}{i:02d}/"))
                for i in range(WRITERS)
            ),
            45,
            "every writer to get acks after the leader was killed",
        )
        wait_until(lambda: load.count(lambda a: a.at > killed_at) >= 200, 30, "200 acks after the kill")
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a writer hung"

    survivors = running(cluster)
    new_leader = cluster.wait_for_leader(among=[node.id for node in survivors])
    assert new_leader != old_leader
    acks = {ack.key: ack for ack in load.acks}
    assert len(acks) == len(load.acks), "two acks for one key"
    max_acked = max(ack.revision for ack in load.acks)
    assert not load.failures, f"writes failed although a majority stayed up: {load.failures[:3]}"

    # Every acknowledged write, with its value and revision, on each survivor asked on its own.
    for node in survivors:
        with node_client(node) as client:
            state = list_all(client, PREFIX, consistency=Consistency.STALE, min_revision=max_acked)
        missing = sorted(set(acks) - set(state))
        assert not missing, f"{node.id} lost {len(missing)} acknowledged writes, e.g. {missing[:5]}"
        for key, ack in acks.items():
            kv = state[key]
            assert (kv.value, kv.mod_revision) == (ack.value, ack.revision), f"{node.id}: {key}"
        # Each key was written once; a retry after an unknown outcome must have been deduplicated.
        rewritten = sorted(key for key, kv in state.items() if kv.version != 1)
        assert not rewritten, f"{node.id}: keys written more than once: {rewritten[:5]}"

    # The killed leader comes back, catches up, and all three hold the same log and state.
    cluster.restart(old_leader)
    cluster.wait_for_leader()
    revision = wait_converged(cluster)
    assert revision >= max_acked
    state = assert_same_state(running(cluster), revision, PREFIX)
    assert set(acks) <= set(state)
    assert len({kv.mod_revision for kv in state.values()}) == len(state), "two keys share a revision"


def test_writes_resume_while_the_old_leader_hangs(make_cluster: Callable[..., LocalCluster]) -> None:
    """A leader that stops answering without closing its connections (SIGSTOP: a frozen VM, a long GC
    pause, a partition) must not stall the clients once the others have elected a new leader.

    Unlike kill -9 nothing resets the TCP connections to the old leader, so a client notices only
    through its own deadlines. The clients' call deadline (30 s) is far longer than what failover
    needs, so progress is required well within it.
    """
    cluster = make_cluster()
    old_leader = cluster.wait_for_leader()
    frozen = cluster.nodes[old_leader]
    assert frozen.pid is not None
    load = Load(cluster.client_addresses, [], [], threading.Event(), threading.Lock())
    writers = 8
    threads = [threading.Thread(target=load.writer, args=(i,), name=f"writer-{i}") for i in range(writers)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: load.count() >= 20 * writers, 30, "writes before the pause")
        os.kill(frozen.pid, signal.SIGSTOP)
        others = [node_id for node_id in cluster.nodes if node_id != old_leader]
        new_leader = cluster.wait_for_leader(among=others)
        elected_at = time.monotonic()

        def stalled() -> list[int]:
            return [
                i
                for i in range(writers)
                if not load.count(lambda a, i=i: a.at > elected_at and a.key.startswith(f"{PREFIX}{i:02d}/"))
            ]

        wait_until(
            lambda: not stalled(),
            10,
            f"every writer to get acks from the new leader {new_leader} while {old_leader} hangs",
            detail=lambda: f"writers without an ack since the election: {stalled()}",
        )
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
        load.stop.set()
        for thread in threads:
            thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a writer hung"

    # The old leader wakes up, says it stalled, steps down, and every server holds every
    # acknowledged write once.
    assert cluster.wait_for_leader() != old_leader
    assert b'"raft_loop_stalled"' in frozen.log_path.read_bytes()
    revision = wait_converged(cluster)
    state = assert_same_state(running(cluster), revision, PREFIX)
    for ack in load.acks:
        kv = state.get(ack.key)
        assert kv is not None and (kv.value, kv.mod_revision, kv.version) == (ack.value, ack.revision, 1), ack.key
    assert all(kv.version == 1 for kv in state.values())


def test_compare_and_swap_counter_is_exact_across_leader_kill(make_cluster: Callable[..., LocalCluster]) -> None:
    """CAS is not idempotent, so a retry that applied twice, or a lost update, changes the count.

    Eight clients increment one counter with read + compare-and-swap while the leader is killed.
    Every acknowledged successful swap is one increment, exactly.
    """
    cluster = make_cluster()
    old_leader = cluster.wait_for_leader()
    key = "cas/counter"
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        client.put(key, b"0")
    successes: list[int] = []
    lost_races = [0]
    failures: list[ControlPlaneError] = []
    lock = threading.Lock()
    stop = threading.Event()

    def increment() -> None:
        with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=20.0) as client:
            while not stop.is_set():
                try:
                    current = client.get(key)
                    assert current is not None
                    result = client.compare_and_swap(key, str(int(current.value) + 1), current.mod_revision)
                except ControlPlaneError as exc:
                    with lock:
                        failures.append(exc)
                    continue
                with lock:
                    if result.succeeded:
                        successes.append(int(current.value) + 1)
                    else:
                        lost_races[0] += 1

    def count() -> int:
        with lock:
            return len(successes)

    threads = [threading.Thread(target=increment, name=f"cas-{i}") for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: count() >= 50, 30, "increments before the kill")
        cluster.kill(old_leader, signal.SIGKILL)
        at_kill = count()
        wait_until(lambda: count() >= at_kill + 50, 45, "increments after the kill")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert not failures, failures[:3]
    assert lost_races[0] > 0, "the clients never raced: the test would not detect a lost update"

    assert sorted(successes) == list(range(1, len(successes) + 1)), "each value is won by exactly one swap"
    revision = wait_converged(cluster)
    for node in running(cluster):
        with node_client(node) as client:
            kv = client.get(key, consistency=Consistency.STALE, min_revision=revision)
        assert kv is not None, node.id
        assert int(kv.value) == len(successes), f"{node.id}: counter {kv.value!r}, {len(successes)} acknowledged swaps"
        assert kv.version == len(successes) + 1, node.id


def test_linearizable_read_on_a_resumed_old_leader_is_not_stale(make_cluster: Callable[..., LocalCluster]) -> None:
    """An old leader that was frozen while the others moved on still believes it leads when it wakes
    up. A linearizable read it answers must nevertheless include the writes made meanwhile."""
    cluster = make_cluster()
    old_leader = cluster.wait_for_leader()
    frozen = cluster.nodes[old_leader]
    assert frozen.pid is not None
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        client.put("frozen/key", b"before")
    others = [node for node in running(cluster) if node.id != old_leader]
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        cluster.wait_for_leader(among=[node.id for node in others])
        with Client([node.client_address for node in others], timeout=20, credentials=cluster.credentials) as client:
            written = client.put("frozen/key", b"after").revision
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    with node_client(frozen, timeout=20) as on_old:
        kv = on_old.get("frozen/key")
    assert kv is not None and (kv.value, kv.mod_revision) == (b"after", written), "stale linearizable read"
    assert cluster.wait_for_leader() != old_leader


def test_a_follower_resumed_after_sigstop_does_not_depose_the_leader(cluster: LocalCluster) -> None:
    """A follower stopped for longer than an election timeout, then continued, finds its election
    deadline long past and the leader's appends still unread in its sockets. Campaigning at once
    (pysyncobj's behaviour) raised the term and deposed a healthy leader on every SIGCONT; it now
    takes a fresh timeout, reads the leader, and stays a follower."""
    leader_id = cluster.wait_for_leader()
    follower = next(node for node in running(cluster) if node.id != leader_id)
    assert follower.pid is not None
    log_offset = follower.log_path.stat().st_size
    stalls = loop_stalls(follower)
    os.kill(follower.pid, signal.SIGSTOP)
    try:
        # The fault itself: stopped for several election timeouts (0.4-0.8 s), while the leader writes.
        time.sleep(2.0)
        with node_client(cluster.nodes[leader_id]) as client:
            put = client.put("resume/after-stop", b"1")
    finally:
        os.kill(follower.pid, signal.SIGCONT)
    with node_client(follower) as client:
        wait_until(
            lambda: client.get("resume/after-stop", consistency=Consistency.STALE, min_revision=put.revision),
            30.0,
            "the resumed follower to catch up",
        )
    with open(follower.log_path, "rb") as log_file:
        log_file.seek(log_offset)
        events = [json.loads(line) for line in log_file if line.startswith(b"{")]
    # The stall is always seen. Whether its election deadline had to be postponed depends on what
    # the loop ran first after SIGCONT: the tick (deadline long past: postponed) or the reader of
    # the leader's appends (deadline already renewed: nothing to postpone). Either way, no campaign.
    assert any(event.get("event") == "raft_loop_stalled" for event in events)
    campaigns = [e for e in events if e.get("event") == "raft_role_changed" and e.get("new") == "candidate"]
    assert campaigns == [], f"{follower.id} campaigned after SIGCONT"
    assert loop_stalls(follower) > stalls, "the stop was not counted as a loop stall"


# An attempt that would outlast the call: without asking who leads, a write to a frozen leader
# could only end in DeadlineExceeded.
PATIENT = RetryPolicy(attempt_timeout=60.0)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_write_waiting_on_a_frozen_leader_moves_to_the_new_one(
    make_cluster: Callable[..., LocalCluster], kind: str
) -> None:
    """The client knows the leader and writes to it; the leader freezes (SIGSTOP: it keeps its
    connections and answers nothing). After RetryPolicy.leader_check_after the client asks another
    server who leads, learns of the new leader and retries there with the same request id, instead
    of waiting for its attempt to time out (3 s by default; 60 s here, longer than the call)."""
    cluster = make_cluster()
    old_leader = cluster.nodes[cluster.wait_for_leader()]
    pid = old_leader.pid
    assert pid is not None
    options: dict[str, Any] = {"credentials": cluster.credentials, "timeout": 20, "retry_policy": PATIENT}

    if kind == "sync":
        with Client(cluster.client_addresses, **options) as client:
            client.put("frozen-write/before", b"1")  # learns the leader from the answer
            assert client._core.router.leader == old_leader.client_address
            os.kill(pid, signal.SIGSTOP)
            try:
                revision = client.put("frozen-write/during", b"2").revision
            finally:
                os.kill(pid, signal.SIGCONT)
            assert client._core.router.leader not in ("", old_leader.client_address)
    else:

        async def write_async() -> int:
            async with AsyncClient(cluster.client_addresses, **options) as client:
                await client.put("frozen-write/before", b"1")
                assert client._core.router.leader == old_leader.client_address
                os.kill(pid, signal.SIGSTOP)
                try:
                    written = (await client.put("frozen-write/during", b"2")).revision
                finally:
                    os.kill(pid, signal.SIGCONT)
                assert client._core.router.leader not in ("", old_leader.client_address)
                return written

        revision = asyncio.run(write_async())
    assert cluster.wait_for_leader() != old_leader.id
    wait_converged(cluster)
    with node_client(cluster.nodes[cluster.wait_for_leader()]) as on_new:
        kv = on_new.get("frozen-write/during")
    assert kv is not None and (kv.value, kv.mod_revision) == (b"2", revision)


def test_a_read_waiting_on_a_frozen_server_moves_to_another(cluster: LocalCluster) -> None:
    """A read's server freezes (SIGSTOP: it keeps its connections and answers nothing). After
    RetryPolicy.leader_check_after the client asks that server for its status, gets no answer
    either, and reads from another endpoint, instead of waiting for its attempt to time out (3 s by
    default; 60 s here, longer than the call). Sync and async clients, linearizable and stale reads."""
    leader = cluster.wait_for_leader()
    frozen = next(node for node in cluster.nodes.values() if node.id != leader)
    others = [node.client_address for node in cluster.nodes.values() if node is not frozen]
    endpoints = [frozen.client_address, *others]  # reads go to the first endpoint until it fails
    options: dict[str, Any] = {"credentials": cluster.credentials, "timeout": 20, "retry_policy": PATIENT}
    with Client(endpoints, **options) as writer:
        written = writer.put("frozen-read/k", b"v").revision
    assert frozen.pid is not None
    stale: dict[str, Any] = {"consistency": Consistency.STALE, "min_revision": written}
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        # A fresh client per read: each one starts at the frozen server (a client that left it
        # once would not go back there).
        with Client(endpoints, **options) as client:
            linearizable = client.get("frozen-read/k")
        with Client(endpoints, **options) as client:
            stale_read = client.get("frozen-read/k", **stale)

        async def read_async(**read: Any) -> Any:
            async with AsyncClient(endpoints, **options) as client:
                return await client.get("frozen-read/k", **read)

        async_linearizable, async_stale = asyncio.run(read_async()), asyncio.run(read_async(**stale))
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    for kv in (linearizable, stale_read, async_linearizable, async_stale):
        assert kv is not None and (kv.value, kv.mod_revision) == (b"v", written)
