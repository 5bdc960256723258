"""TCP and UDP slots under random walks: a Hypothesis stateful test mixes allocations, assignments,
releases and reservations in both protocols on two hosts and a five-port range, and checks every
answer against what the slots held (who holds which (host, port, protocol), what is reserved):

* a granted port was free in its own protocol and not reserved; a refusal names a real reason;
* a reservation is refused exactly when either protocol holds the port;
* the table's index is the assignments', and a restored replica holds the same state.

The reference is a dict of slots, not an allocator: which free port an allocation picks is the
allocator's business (next-fit, tested in test_ports_state.py); that it was free is checked here.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from test_ports_state import (
    Driver,
    allocate,
    assign,
    expect_ok,
    release,
    reserve,
    set_range,
    state_bytes,
)

from controlplane.state.machine import StateMachine
from controlplane.state.ports import TCP, UDP
from controlplane.v1 import common_pb2

Key = tuple[str, str, str]
SlotKey = tuple[str, int, int]  # (host, port, protocol)

HOSTS = ("h1", "h2")
SERVICES = ("dns", "ntp")
NAMES = ("main", "alt")
PORTS = tuple(range(8000, 8005))
PROTOCOLS = (TCP, UDP)
FAILED_PRECONDITION = common_pb2.ERROR_CODE_FAILED_PRECONDITION
RESOURCE_EXHAUSTED = common_pb2.ERROR_CODE_RESOURCE_EXHAUSTED


class TcpUdpSlots(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.d = Driver()
        expect_ok(self.d.apply(set_range("small", PORTS[0], PORTS[-1]))[0])
        self.slots: dict[SlotKey, Key] = {}
        self.reserved: set[tuple[str, int]] = set()  # ("", port): on every host
        for host in HOSTS:  # known hosts, holding nothing in the small range
            expect_ok(self.d.apply(assign(host, "seed", 9000))[0])
            self.slots[(host, 9000, TCP)] = (host, "seed", "main")

    def held_by(self, key: Key) -> SlotKey | None:
        return next((slot for slot, holder in self.slots.items() if holder == key), None)

    def is_reserved(self, host: str, port: int) -> bool:
        return ("", port) in self.reserved or (host, port) in self.reserved

    @rule(
        host=st.sampled_from(HOSTS),
        service=st.sampled_from(SERVICES),
        name=st.sampled_from(NAMES),
        protocol=st.sampled_from(PROTOCOLS),
    )
    def allocate(self, host: str, service: str, name: str, protocol: int) -> None:
        key = (host, service, name)
        (result,) = self.d.apply(allocate(host, service, name, range_="small", protocol=protocol))
        current = self.held_by(key)
        if current is not None:
            if current[2] == protocol:
                expect_ok(result)
                assert result.ports_allocate.existing and result.ports_allocate.assignment.port == current[1]
            else:
                assert result.error.code == FAILED_PRECONDITION, result
            return
        if result.HasField("error"):
            assert result.error.code == RESOURCE_EXHAUSTED, result
            assert all((host, p, protocol) in self.slots or self.is_reserved(host, p) for p in PORTS)
            return
        port = result.ports_allocate.assignment.port
        assert port in PORTS and (host, port, protocol) not in self.slots and not self.is_reserved(host, port)
        assert result.ports_allocate.assignment.protocol == protocol
        self.slots[(host, port, protocol)] = key

    @rule(
        host=st.sampled_from(HOSTS),
        service=st.sampled_from(SERVICES),
        name=st.sampled_from(NAMES),
        port=st.sampled_from(PORTS),
        protocol=st.sampled_from(PROTOCOLS),
    )
    def assign(self, host: str, service: str, name: str, port: int, protocol: int) -> None:
        key = (host, service, name)
        (result,) = self.d.apply(assign(host, service, port, name, protocol=protocol))
        current = self.held_by(key)
        if current == (host, port, protocol):
            expect_ok(result)
            assert result.ports_assign.existing
            return
        if current is not None or (host, port, protocol) in self.slots or self.is_reserved(host, port):
            assert result.error.code == FAILED_PRECONDITION, result
            return
        expect_ok(result)
        self.slots[(host, port, protocol)] = key

    @rule(host=st.sampled_from(HOSTS), port=st.sampled_from(PORTS), protocol=st.sampled_from(PROTOCOLS))
    def release_port(self, host: str, port: int, protocol: int) -> None:
        (result,) = self.d.apply(release(host, port=port, protocol=protocol))
        expect_ok(result)
        holder = self.slots.pop((host, port, protocol), None)
        assert result.ports_release.released == (holder is not None)
        if holder is not None:
            assigned = result.ports_release.assignment
            assert (assigned.service, assigned.name, assigned.protocol) == (holder[1], holder[2], protocol)

    @rule(port=st.sampled_from(PORTS), host=st.sampled_from(("", *HOSTS)))
    def reserve(self, port: int, host: str) -> None:
        (result,) = self.d.apply(reserve(port, host=host))
        in_use = any(h in ((host,) if host else HOSTS) and p == port for h, p, _ in self.slots)
        if in_use:
            assert result.error.code == FAILED_PRECONDITION, result
            return
        expect_ok(result)
        self.reserved.add((host, port))

    @invariant()
    def the_index_is_the_slots(self) -> None:
        ports = self.d.ports
        by_slot = {(a.host, a.port, a.protocol): key for key, a in ports.assignments.items()}
        assert by_slot == self.slots
        assert {(host, *slot): key for host, table in ports.by_port.items() for slot, key in table.items()} == (
            self.slots
        )

    @invariant()
    def a_restored_replica_agrees(self) -> None:
        replica = StateMachine()
        replica.restore(self.d.machine.snapshot())
        assert state_bytes(replica) == state_bytes(self.d.machine)
        assert replica.ports.by_port == self.d.ports.by_port


TcpUdpSlots.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestTcpUdpSlots = TcpUdpSlots.TestCase
