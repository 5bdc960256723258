"""The watch history is bounded in bytes as well as in events (state/machine.py).

Pure state-machine tests, plus one through a real ``Node`` on the in-memory consensus layer to
show that a watch older than what the byte bound kept still gets OUT_OF_RANGE. The reference for
the property test is a twin machine that keeps everything: the capped machine must retain exactly
the longest suffix of the twin's events that fits both bounds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.errors import OutOfRange
from controlplane.server.config import ServerConfig
from controlplane.server.memraft import InMemoryNetwork
from controlplane.server.node import Node
from controlplane.state.machine import DEFAULT_HISTORY_LIMIT_BYTES, StateMachine, batch_entry, event_size
from controlplane.v1 import command_pb2, watch_pb2

KIB = 1024


def put(machine: StateMachine, key: str, size: int, clock: list[int]) -> int:
    clock[0] += 1
    command = command_pb2.Command(kv_put=command_pb2.KvPut(key=key, value=bytes([clock[0] % 251]) * size))
    result = machine.apply_entry(batch_entry(clock[0], "n1", [command]))[0]
    assert not result.HasField("error"), result.error
    return result.revision


def delete(machine: StateMachine, key: str, clock: list[int]) -> None:
    clock[0] += 1
    machine.apply_entry(batch_entry(clock[0], "n1", [command_pb2.Command(kv_delete=command_pb2.KvDelete(key=key))]))


def retained(machine: StateMachine) -> list[watch_pb2.Event]:
    return machine.events_from(machine.oldest_revision, max_events=10**9)


def assert_well_formed(machine: StateMachine) -> None:
    events = retained(machine)
    assert [e.revision for e in events] == list(range(machine.compacted_revision + 1, machine.revision + 1))
    assert machine.history_events == len(events) <= machine.history_limit
    assert machine.history_bytes == sum(event_size(e) for e in events) <= machine.history_limit_bytes


def test_the_default_bound_is_64_mib() -> None:
    assert StateMachine().history_limit_bytes == DEFAULT_HISTORY_LIMIT_BYTES == 64 * 1024 * KIB


def test_large_values_compact_the_oldest_events_past_the_byte_bound() -> None:
    machine = StateMachine(history_limit_bytes=1024 * KIB)
    clock = [0]
    revisions = [put(machine, "big", 100 * KIB, clock) for _ in range(20)]
    assert_well_formed(machine)
    # Each overwrite carries the new value and the previous one: ~200 KiB, so five fit, not six.
    assert machine.history_events == 5
    assert machine.compacted_revision == revisions[-6]
    assert machine.oldest_revision == revisions[-5]
    assert [e.kv.value for e in retained(machine)][-1] == bytes([20 % 251]) * 100 * KIB
    # Small events after them push the large ones out one at a time, oldest first.
    for i in range(200):
        put(machine, f"small/{i}", 10, clock)
        assert_well_formed(machine)
    assert all(e.key.startswith("small/") for e in retained(machine)[-190:])


def test_the_event_count_still_bounds_small_events() -> None:
    machine = StateMachine(history_limit=50)
    clock = [0]
    for i in range(200):
        put(machine, f"k/{i % 7}", 100, clock)
    assert_well_formed(machine)
    assert machine.history_events == 50
    assert machine.compacted_revision == machine.revision - 50


def test_an_event_larger_than_the_bound_is_not_retained() -> None:
    machine = StateMachine(history_limit_bytes=64 * KIB)
    clock = [0]
    put(machine, "small", 10, clock)
    revision = put(machine, "huge", 100 * KIB, clock)
    assert_well_formed(machine)
    assert (machine.history_events, machine.history_bytes) == (0, 0)
    assert machine.compacted_revision == machine.revision == revision
    assert machine.events_from(revision + 1) == []  # a watch from the next revision is fine
    put(machine, "small", 10, clock)
    assert [e.revision for e in retained(machine)] == [revision + 1]


def test_snapshots_keep_the_history_and_a_smaller_bound_trims_it_on_restore() -> None:
    machine = StateMachine(history_limit_bytes=1024 * KIB)
    clock = [0]
    for i in range(30):
        put(machine, f"k/{i % 4}", 20 * KIB, clock)
    assert_well_formed(machine)
    same = StateMachine(history_limit_bytes=1024 * KIB)
    same.restore(machine.snapshot())
    assert same.snapshot() == machine.snapshot()
    assert (same.history_bytes, same.compacted_revision) == (machine.history_bytes, machine.compacted_revision)
    smaller = StateMachine(history_limit_bytes=256 * KIB)
    smaller.restore(machine.snapshot())
    assert_well_formed(smaller)
    assert smaller.compacted_revision > machine.compacted_revision
    assert retained(smaller) == retained(machine)[-smaller.history_events :]


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(1, 30),
    limit_kib=st.integers(1, 64),
    ops=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 40 * KIB), st.booleans()), max_size=60),
)
def test_the_history_is_the_longest_suffix_within_both_bounds(
    limit: int, limit_kib: int, ops: list[tuple[int, int, bool]]
) -> None:
    capped = StateMachine(history_limit=limit, history_limit_bytes=limit_kib * KIB)
    twin = StateMachine(history_limit=10**9, history_limit_bytes=2**60)
    clock = [0]
    for key, size, remove in ops:
        for machine in (capped, twin):
            now = [clock[0]]
            if remove:
                delete(machine, f"k{key}", now)
            else:
                put(machine, f"k{key}", size, now)
        clock[0] += 1
        everything = twin.events_from(1, max_events=10**9)
        assert capped.revision == twin.revision
        start, total = len(everything), 0
        while (
            start > 0
            and len(everything) - start < limit
            and total + event_size(everything[start - 1]) <= limit_kib * KIB
        ):
            start -= 1
            total += event_size(everything[start])
        expected = everything[start:]
        assert retained(capped) == expected
        assert capped.compacted_revision == (expected[0].revision - 1 if expected else capped.revision)
        assert_well_formed(capped)


async def test_a_watch_older_than_the_bytes_kept_is_out_of_range(tmp_path: Path) -> None:
    network = InMemoryNetwork()
    config = ServerConfig(
        node_id="n1",
        client_address="127.0.0.1:1",
        raft_address="127.0.0.1:2",
        metrics_address="",
        data_dir=tmp_path / "n1",
        insecure_dev=True,
        commit_timeout_s=5.0,
    )
    node = Node(config, stop_process=lambda: None, consensus=network.factory)
    await node.start()
    try:
        network.elect(config.raft_address)
        node.machine.history_limit_bytes = 512 * KIB  # the server's history_limit_bytes
        first = await node.write(_put("watched", 10), timeout=10)
        assert node.watch_start(first.revision) == first.revision
        for _ in range(8):
            await node.write(_put("big", 100 * KIB), timeout=10)
        assert node.machine.compacted_revision >= first.revision
        with pytest.raises(OutOfRange) as caught:
            node.watch_start(first.revision)
        assert caught.value.oldest_revision == node.machine.oldest_revision > first.revision
        with pytest.raises(OutOfRange):
            node.watch_read(first.revision)
        events, _ = node.watch_read(node.machine.oldest_revision)
        assert [e.key for e in events] == ["big"] * node.machine.history_events
    finally:
        await node.stop()


def _put(key: str, size: int) -> command_pb2.Command:
    return command_pb2.Command(kv_put=command_pb2.KvPut(key=key, value=b"v" * size))
