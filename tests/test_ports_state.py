"""The port and lease domains of the replicated state machine, with no network.

A Hypothesis stateful test drives a ``StateMachine`` (plus a twin fed the same entries and, after a
snapshot/restore, a restored copy) through allocations, assignments, releases, moves, reservations,
range changes, leases, host reports, conflict resolution, leak repair and service registrations, in
a universe small enough that ranges fill up: three hosts, ranges ``a`` (8000-8009) and ``b``
(8010-8014) beside the default ``dynamic``, three services and three port names. A naive model
(dicts and sets) says what each command must do; after every step the allocator's invariants are
checked and the machine must agree with the model.

The focused tests below it pin down what a random walk reaches only by luck: exact lease deadlines,
the three conflict kinds, repair freshness, stats, export/import, services and cluster restores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from controlplane.state import levels
from controlplane.state.machine import DEFAULT_DEDUPE_TTL_MS, StateMachine, batch_entry
from controlplane.state.ports import DEFAULT_RANGE, PORT_HISTORY_LIMIT, PORT_MAP_FORMAT, TCP, UDP, PortTable, describe
from controlplane.v1 import command_pb2, common_pb2, leases_pb2, ports_pb2, watch_pb2

from machine_driver import MachineDriver, command, expect_error, expect_ok, state_bytes

CommandResult = command_pb2.CommandResult
Command = command_pb2.Command
Key = tuple[str, str, str]  # (host, service, port name)

INVALID = common_pb2.ERROR_CODE_INVALID_ARGUMENT
NOT_FOUND = common_pb2.ERROR_CODE_NOT_FOUND
FAILED_PRECONDITION = common_pb2.ERROR_CODE_FAILED_PRECONDITION
RESOURCE_EXHAUSTED = common_pb2.ERROR_CODE_RESOURCE_EXHAUSTED
PUT = watch_pb2.EVENT_TYPE_PUT
DELETE = watch_pb2.EVENT_TYPE_DELETE

ALLOCATED = ports_pb2.PORT_ACTION_ALLOCATED
ASSIGNED = ports_pb2.PORT_ACTION_ASSIGNED
RELEASED = ports_pb2.PORT_ACTION_RELEASED
REASSIGNED = ports_pb2.PORT_ACTION_REASSIGNED
EXPIRED = ports_pb2.PORT_ACTION_EXPIRED
RESOLVED = ports_pb2.PORT_ACTION_RESOLVED
REPAIRED = ports_pb2.PORT_ACTION_REPAIRED

WRONG_HOLDER = ports_pb2.CONFLICT_KIND_WRONG_HOLDER
UNASSIGNED_BOUND = ports_pb2.CONFLICT_KIND_UNASSIGNED_BOUND
MISPLACED = ports_pb2.CONFLICT_KIND_MISPLACED

HOSTS = ["h1", "h2", "h3"]
SERVICES = ["web", "db", "cache"]
PORT_NAMES = ["main", "http", "admin"]
# Who a host report says holds a port: a managed service, a stranger, or nobody knows.
HOLDERS = [*SERVICES, "nginx", ""]
# Around and inside the small ranges, one port outside every range, two in "dynamic".
PORTS = [7999, *range(8000, 8017), 9000, 20000, 20001]


# ------------------------------------------------------------------- commands


def allocate(
    host: str,
    service: str,
    name: str = "",
    range_: str = "",
    preferred: int = 0,
    lease_id: int = 0,
    protocol: int = TCP,
) -> Command:
    return command(
        ports_allocate=ports_pb2.AllocateRequest(
            host=host,
            service=service,
            name=name,
            range=range_,
            preferred_port=preferred,
            lease_id=lease_id,
            protocol=protocol,  # type: ignore[arg-type]
        )
    )


def assign(
    host: str, service: str, port: int, name: str = "", lease_id: int = 0, force: bool = False, protocol: int = TCP
) -> Command:
    return command(
        ports_assign=ports_pb2.AssignRequest(
            host=host,
            service=service,
            name=name,
            port=port,
            lease_id=lease_id,
            force=force,
            protocol=protocol,  # type: ignore[arg-type]
        )
    )


def release(host: str, service: str = "", name: str = "", port: int = 0, protocol: int = TCP) -> Command:
    return command(
        ports_release=ports_pb2.ReleaseRequest(
            host=host,
            service=service,
            name=name,
            port=port,
            protocol=protocol,  # type: ignore[arg-type]
        )
    )


def reassign(host: str, service: str, name: str = "", port: int = 0, range_: str = "", reason: str = "") -> Command:
    return command(
        ports_reassign=ports_pb2.ReassignRequest(
            host=host, service=service, name=name, port=port, range=range_, reason=reason
        )
    )


def reserve(port: int, end_port: int = 0, host: str = "", reason: str = "") -> Command:
    return command(ports_reserve=ports_pb2.ReserveRequest(host=host, port=port, end_port=end_port, reason=reason))


def unreserve(port: int, end_port: int = 0, host: str = "") -> Command:
    return command(ports_unreserve=ports_pb2.UnreserveRequest(host=host, port=port, end_port=end_port))


def set_range(name: str, start: int, end: int) -> Command:
    return command(
        ports_set_range=ports_pb2.SetRangeRequest(range=ports_pb2.PortRange(name=name, start=start, end=end))
    )


def observe(host: str, *bound: tuple[int, str] | tuple[int, str, int], complete_for: tuple[int, ...] = ()) -> Command:
    """A host report: (port, holder) for a bound TCP port, (port, holder, protocol) for either;
    complete for ``complete_for`` (default: TCP)."""
    ports = [
        ports_pb2.ObservedPort(port=item[0], holder=item[1], protocol=item[2] if len(item) > 2 else TCP)  # type: ignore[misc, arg-type]
        for item in bound
    ]
    return command(
        ports_observe=ports_pb2.ReportObservedRequest(
            host=host,
            ports=ports,
            complete_for=complete_for,  # type: ignore[arg-type]
        )
    )


def resolve(host: str = "") -> Command:
    return command(ports_resolve=ports_pb2.ResolveConflictsRequest(host=host))


def repair(passes: int = 0) -> Command:
    return command(ports_repair=ports_pb2.RepairRequest(passes_before_release=passes))


def import_map(port_map: ports_pb2.PortMap) -> Command:
    return command(ports_import=ports_pb2.ImportPortsRequest(map=port_map))


def declared(name: str, port: int = 0, range_: str = "", protocol: str = "") -> ports_pb2.DeclaredPort:
    return ports_pb2.DeclaredPort(name=name, port=port, range=range_, protocol=protocol)


def register(host: str, service: str, *ports: ports_pb2.DeclaredPort, lease_id: int = 0) -> Command:
    manifest = ports_pb2.ServiceManifest(name=service, host=host, ports=ports, lease_id=lease_id)
    return command(service_register=ports_pb2.RegisterServiceRequest(manifest=manifest))


def deregister(host: str, service: str) -> Command:
    return command(service_deregister=ports_pb2.DeregisterServiceRequest(host=host, name=service))


def grant(ttl_ms: int) -> Command:
    return command(lease_grant=leases_pb2.GrantLeaseRequest(ttl_ms=ttl_ms))


def keepalive(lease_id: int) -> Command:
    return command(lease_keepalive=leases_pb2.KeepAliveRequest(lease_id=lease_id))


def revoke(lease_id: int) -> Command:
    return command(lease_revoke=leases_pb2.RevokeLeaseRequest(lease_id=lease_id))


def expire(*lease_ids: int) -> Command:
    return command(lease_expire=leases_pb2.ExpireLeases(lease_ids=lease_ids))


def restore_state(snapshot: bytes) -> Command:
    return command(restore_state=command_pb2.RestoreState(snapshot=snapshot))


# ------------------------------------------------------------------- the reference model


@dataclass
class Held:
    port: int
    range: str
    lease_id: int
    # The revision after the command that last changed it: only a newer host report is evidence
    # for the leak repair.
    changed: int


class PortModel:
    """What the port and lease tables must do, written the obvious way."""

    def __init__(self) -> None:
        self.ranges: dict[str, tuple[int, int]] = {DEFAULT_RANGE: (20000, 32000)}
        self.assignments: dict[Key, Held] = {}
        self.reserved_global: set[int] = set()
        self.reserved_host: dict[str, set[int]] = {}
        self.observed: dict[str, dict[int, str]] = {}  # host -> port -> holder
        self.reports: dict[str, int] = {}  # host -> revision of its last report
        self.leaks: dict[Key, tuple[int, int]] = {}  # key -> (passes, report revision last counted)
        self.leases: dict[int, tuple[int, int]] = {}  # id -> (ttl, renewed)
        self.next_lease = 1
        self.services: set[tuple[str, str]] = set()
        self.hosts: set[str] = set()
        self.time = 0

    def range_of(self, port: int) -> str:
        return next((name for name, (low, high) in self.ranges.items() if low <= port <= high), "")

    def holder(self, host: str, port: int) -> Key | None:
        return next((key for key, held in self.assignments.items() if key[0] == host and held.port == port), None)

    def held_ports(self, host: str) -> dict[int, Key]:
        return {held.port: key for key, held in self.assignments.items() if key[0] == host}

    def reserved(self, host: str, port: int) -> bool:
        return port in self.reserved_global or port in self.reserved_host.get(host, set())

    def observed_by_other(self, host: str, port: int, service: str) -> bool:
        holder = self.observed.get(host, {}).get(port)
        return holder is not None and holder != service

    def is_free(self, host: str, port: int) -> bool:
        return (
            self.holder(host, port) is None
            and not self.reserved(host, port)
            and port not in self.observed.get(host, {})
        )

    def free_count(self, host: str, range_name: str, exclude: set[int] | None = None) -> int:
        low, high = self.ranges[range_name]
        blocked = (
            set(self.held_ports(host))
            | self.reserved_global
            | self.reserved_host.get(host, set())
            | set(self.observed.get(host, {}))
            | (exclude or set())
        )
        return high - low + 1 - sum(1 for port in blocked if low <= port <= high)

    def lease_live(self, lease_id: int) -> bool:
        return lease_id == 0 or lease_id in self.leases

    def put(self, key: Key, port: int, range_name: str, lease_id: int, revision: int) -> None:
        self.assignments[key] = Held(port, range_name, lease_id, revision)
        self.leaks.pop(key, None)
        self.hosts.add(key[0])

    def drop(self, key: Key) -> None:
        del self.assignments[key]
        self.leaks.pop(key, None)

    def end_lease(self, lease_id: int) -> int:
        held = [key for key, h in self.assignments.items() if h.lease_id == lease_id]
        for key in held:
            self.drop(key)
        del self.leases[lease_id]
        return len(held)

    def conflicts(self) -> set[tuple[int, str, int]]:
        """(kind, host, port) of every conflict between the assignments and the host reports."""
        found: set[tuple[int, str, int]] = set()
        for host, bound in self.observed.items():
            mine = {key: held for key, held in self.assignments.items() if key[0] == host}
            for port, holder in bound.items():
                key = self.holder(host, port)
                if key is not None and holder and holder != key[1]:
                    found.add((WRONG_HOLDER, host, port))
                # A service is misplaced only if one of its ports here is not bound by it: a
                # service bound to its own port and to another one is not, and moving it would not help.
                astray = [k for k, held in mine.items() if k[1] == holder and bound.get(held.port) not in (holder, "")]
                if astray and (key is None or key[1] != holder):
                    found.add((MISPLACED, host, port))
                elif key is None and self.range_of(port) and not self.reserved(host, port):
                    found.add((UNASSIGNED_BOUND, host, port))
        return found


# ------------------------------------------------------------------- the stateful test


class PortsVsModel(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.model = PortModel()
        self.primary = StateMachine()
        self.twin = StateMachine()  # fed the same entries: determinism
        self.restored: StateMachine | None = None  # restored from a snapshot mid-run, then fed on
        self.clock = 1_000  # the leader's clock
        self.next_id = 0
        self.before_revision = 0
        self.recorded: dict[str, tuple[Command, CommandResult, int]] = {}  # id -> (command, result, time)
        self.history_seen: dict[str, dict[int, bytes]] = {}
        self.totals_seen: dict[str, int] = {}
        entry = batch_entry(self.clock, "leader-1", [set_range("a", 8000, 8009), set_range("b", 8010, 8014)])
        for machine in self.machines:
            for result in machine.apply_entry(entry):
                expect_ok(result)
        self.model.ranges.update(a=(8000, 8009), b=(8010, 8014))
        self.model.time = self.clock

    @property
    def machines(self) -> list[StateMachine]:
        return [m for m in (self.primary, self.twin, self.restored) if m is not None]

    # --------------------------------------------------------------- helpers

    def _run(self, data: st.DataObject, cmd: Command, max_step: int = 1_200) -> CommandResult | None:
        """Apply one command everywhere; None when its request id was seen (the recorded answer came back).

        Checks what holds for every command: replicas agree, one event per revision, and a refused
        command (or a retry) changes nothing.
        """
        # Leader clocks disagree: a later entry may carry an earlier time.
        self.clock += data.draw(st.integers(-300, max_step), label="clock step")
        # The machine forgets request ids after DEFAULT_DEDUPE_TTL_MS of leader time.
        horizon = max(self.model.time, self.clock) - DEFAULT_DEDUPE_TTL_MS
        self.recorded = {rid: seen for rid, seen in self.recorded.items() if seen[2] >= horizon}
        self.before_revision, before = self.primary.revision, state_bytes(self.primary)
        entry = batch_entry(self.clock, "leader-1", [cmd])
        results = [machine.apply_entry(entry) for machine in self.machines]
        for other in results[1:]:
            assert other == results[0], "replicas diverged on the same entry"
        (result,) = results[0]
        self.model.time = max(self.model.time, self.clock)
        events = self.primary.events_from(self.before_revision + 1)
        assert [e.revision for e in events] == list(range(self.before_revision + 1, self.primary.revision + 1))
        if cmd.request_id in self.recorded:
            assert result == self.recorded[cmd.request_id][1], "a retry must return the recorded result"
            assert self.primary.revision == self.before_revision
            assert state_bytes(self.primary) == before, "a retry answered from the dedupe table changed state"
            return None
        if cmd.request_id:
            self.recorded[cmd.request_id] = (cmd, result, self.model.time)
        if result.HasField("error"):
            assert result.error.message, "an error result must say what is wrong"
            assert result.revision == self.before_revision == self.primary.revision
            assert state_bytes(self.primary) == before, "a refused command changed the state"
        else:
            assert result.revision == self.primary.revision
        return result

    def _unchanged(self) -> None:
        assert self.primary.revision == self.before_revision

    def _rid(self, data: st.DataObject) -> str:
        how = data.draw(st.sampled_from(["none", "none", "none", "fresh", "fresh", "fresh", "fresh", "reuse"]))
        if how == "reuse" and self.recorded:
            return data.draw(st.sampled_from(sorted(self.recorded)), label="reused id")
        if how == "none":
            return ""
        self.next_id += 1
        return f"req-{self.next_id}"

    def _host(self, data: st.DataObject) -> str:
        # Mostly one host, so its ranges fill up; h3 is rare, so it stays unknown for a while.
        return data.draw(st.sampled_from(["h1", "h1", "h1", "h2", "h2", "h3"]), label="host")

    def _key(self, data: st.DataObject) -> Key:
        held = sorted(self.model.assignments)
        if held and data.draw(st.integers(0, 3), label="existing assignment if > 0") > 0:
            return data.draw(st.sampled_from(held), label="assignment")
        return (
            self._host(data),
            data.draw(st.sampled_from(SERVICES), label="service"),
            data.draw(st.sampled_from(PORT_NAMES), label="port name"),
        )

    def _port(self, data: st.DataObject, host: str) -> int:
        held = sorted(self.model.held_ports(host))
        if bool(held) and data.draw(st.booleans(), label="a held port"):
            return data.draw(st.sampled_from(held), label="held port")
        return data.draw(st.sampled_from(PORTS), label="port")

    def _lease(self, data: st.DataObject) -> int:
        how = data.draw(st.sampled_from(["none", "none", "none", "live", "live", "dead"]), label="lease")
        if how == "live" and self.model.leases:
            return data.draw(st.sampled_from(sorted(self.model.leases)), label="live lease")
        if how == "dead":
            return data.draw(st.integers(1, self.model.next_lease + 1), label="maybe dead lease")
        return 0

    # --------------------------------------------------------------- allocate / assign / release / move

    @rule(data=st.data(), count=st.integers(1, 3))
    def allocate(self, data: st.DataObject, count: int) -> None:
        for _ in range(count):
            self._allocate(data)

    @rule(data=st.data(), range_name=st.sampled_from(["a", "b"]))
    def fill_range(self, data: st.DataObject, range_name: str) -> None:
        """Allocate in one small range on one host until it is full (or every name has a port)."""
        host = self._host(data)
        for service in SERVICES:
            for name in PORT_NAMES:
                if not self._allocate(data, (host, service, name), range_name, 0):
                    return

    def _allocate(
        self, data: st.DataObject, key: Key | None = None, range_name: str | None = None, preferred: int | None = None
    ) -> bool:
        """One allocation checked against the model; False once the range was exhausted."""
        host, service, name = key = key or self._key(data)
        if range_name is None:
            range_name = data.draw(st.sampled_from(["", "a", "b", "b", DEFAULT_RANGE]), label="range")
        if preferred is None:
            preferred = data.draw(st.sampled_from(PORTS), label="preferred") if data.draw(st.integers(0, 3)) == 0 else 0
        lease_id = self._lease(data)
        request = ports_pb2.AllocateRequest(
            host=host, service=service, name=name, range=range_name, preferred_port=preferred, lease_id=lease_id
        )
        result = self._run(data, Command(request_id=self._rid(data), ports_allocate=request))
        if result is None:
            return True
        model = self.model
        effective = range_name or (model.range_of(preferred) if preferred else DEFAULT_RANGE)
        if not effective:
            expect_error(result, INVALID, "no range")
            return True
        low, high = model.ranges[effective]
        if preferred and not low <= preferred <= high:
            expect_error(result, INVALID, "outside range")
        elif not model.lease_live(lease_id):
            expect_error(result, NOT_FOUND, f"lease {lease_id}")
        elif key in model.assignments:
            expect_ok(result)
            assert result.ports_allocate.existing
            assert result.ports_allocate.assignment.port == model.assignments[key].port
            self._unchanged()
        elif model.free_count(host, effective) == 0:
            expect_error(result, RESOURCE_EXHAUSTED, f"{effective!r}", host)
            return False
        else:
            expect_ok(result)
            got = result.ports_allocate.assignment
            assert not result.ports_allocate.existing
            assert low <= got.port <= high and got.range == effective
            assert model.is_free(host, got.port), f"allocated {got.port} on {host}, which is not free"
            if preferred and model.is_free(host, preferred):
                assert got.port == preferred
            model.put(key, got.port, effective, lease_id, self.primary.revision)
        return True

    @rule(data=st.data(), force=st.booleans())
    def assign(self, data: st.DataObject, force: bool) -> None:
        host, service, name = key = self._key(data)
        port = self._port(data, self._host(data))
        lease_id = self._lease(data)
        request = ports_pb2.AssignRequest(
            host=host, service=service, name=name, port=port, lease_id=lease_id, force=force
        )
        result = self._run(data, Command(request_id=self._rid(data), ports_assign=request))
        if result is None:
            return
        model = self.model
        if not model.lease_live(lease_id):
            return expect_error(result, NOT_FOUND)
        current = model.assignments.get(key)
        if current is not None:
            if current.port != port:
                return expect_error(result, FAILED_PRECONDITION, "reassign")
            expect_ok(result)
            assert result.ports_assign.existing
            return self._unchanged()
        holder = model.holder(host, port)
        if holder is not None:
            return expect_error(result, FAILED_PRECONDITION, f"{holder[1]}/{holder[2]}")
        if model.reserved(host, port):
            return expect_error(result, FAILED_PRECONDITION, "reserved")
        if not force and model.observed_by_other(host, port, service):
            return expect_error(result, FAILED_PRECONDITION, "observed")
        expect_ok(result)
        assert result.ports_assign.assignment.range == model.range_of(port)
        model.put(key, port, model.range_of(port), lease_id, self.primary.revision)

    @rule(data=st.data(), how=st.sampled_from(["service", "port", "both"]))
    def release(self, data: st.DataObject, how: str) -> None:
        host, service, name = key = self._key(data)
        port = self._port(data, host)
        request = ports_pb2.ReleaseRequest(
            host=host,
            service=service if how != "port" else "",
            name=name if how != "port" else "",
            port=port if how != "service" else 0,
        )
        result = self._run(data, Command(request_id=self._rid(data), ports_release=request))
        if result is None:
            return
        model = self.model
        if host not in model.hosts:
            return expect_error(result, NOT_FOUND, "unknown")
        target: Key | None = key
        if how == "port":
            target = model.holder(host, port)
        elif how == "both" and key in model.assignments and model.assignments[key].port != port:
            return expect_error(result, FAILED_PRECONDITION, f"holds port {model.assignments[key].port}")
        expect_ok(result)
        if target is None or target not in model.assignments:
            assert not result.ports_release.released
            self._unchanged()
        else:
            assert (
                result.ports_release.released and result.ports_release.assignment.port == model.assignments[target].port
            )
            model.drop(target)
        # Releasing again says released=False and changes nothing.
        again = self._run(data, Command(ports_release=request))
        assert again is not None
        expect_ok(again)
        assert not again.ports_release.released
        self._unchanged()

    @rule(data=st.data())
    def reassign(self, data: st.DataObject) -> None:
        host, service, name = key = self._key(data)
        port = 0 if data.draw(st.booleans(), label="any free port") else self._port(data, host)
        range_name = data.draw(st.sampled_from(["", "", "a", "b"]), label="to range")
        request = ports_pb2.ReassignRequest(host=host, service=service, name=name, port=port, range=range_name)
        result = self._run(data, Command(request_id=self._rid(data), ports_reassign=request))
        if result is None:
            return
        model = self.model
        if host not in model.hosts:
            return expect_error(result, NOT_FOUND, "unknown")
        current = model.assignments.get(key)
        if current is None:
            return expect_error(result, NOT_FOUND, "allocate one first")
        target_range = range_name or current.range
        if port:
            if port == current.port:
                expect_ok(result)
                assert result.ports_reassign.assignment.port == port
                return self._unchanged()
            low, high = model.ranges[range_name] if range_name else (1, 65535)
            if not low <= port <= high:
                return expect_error(result, INVALID, "outside range")
            if (
                model.holder(host, port) is not None
                or model.reserved(host, port)
                or model.observed_by_other(host, port, service)
            ):
                return expect_error(result, FAILED_PRECONDITION, f"port {port}")
        elif not target_range:
            return expect_error(result, INVALID, "lies in no range")
        elif model.free_count(host, target_range) == 0:
            return expect_error(result, RESOURCE_EXHAUSTED, f"{target_range!r}")
        expect_ok(result)
        moved = result.ports_reassign
        assert moved.old_port == current.port
        if not port:
            low, high = model.ranges[target_range]
            assert low <= moved.assignment.port <= high and model.is_free(host, moved.assignment.port)
        else:
            assert moved.assignment.port == port
        new_port = moved.assignment.port
        model.put(key, new_port, model.range_of(new_port), current.lease_id, self.primary.revision)
        history, _ = self.primary.ports.service_history(service)
        assert (history[-1].action, history[-1].old_port, history[-1].new_port) == (
            REASSIGNED,
            current.port,
            new_port,
        )

    # --------------------------------------------------------------- reservations and ranges

    @rule(
        data=st.data(),
        host=st.sampled_from(["", "", *HOSTS]),
        span=st.integers(0, 2),
        remove=st.booleans(),
    )
    def reserve(self, data: st.DataObject, host: str, span: int, remove: bool) -> None:
        first = self._port(data, host or "h1")
        last = first + span
        body: dict[str, Any]
        if remove:
            body = {"ports_unreserve": ports_pb2.UnreserveRequest(host=host, port=first, end_port=last)}
        else:
            body = {"ports_reserve": ports_pb2.ReserveRequest(host=host, port=first, end_port=last, reason="test")}
        result = self._run(data, Command(request_id=self._rid(data), **body))
        if result is None:
            return
        model = self.model
        span_ports = set(range(first, last + 1))
        table = model.reserved_global if not host else model.reserved_host.setdefault(host, set())
        if remove:
            expect_ok(result)
            assert result.ports_unreserve.removed == len(table & span_ports)
            table -= span_ports
            return
        hosts = [host] if host else sorted({key[0] for key in model.assignments})
        in_use = [(h, p) for p in sorted(span_ports) for h in hosts if model.holder(h, p) is not None]
        if in_use:
            h, p = in_use[0]
            holder = model.holder(h, p)
            assert holder is not None
            return expect_error(result, FAILED_PRECONDITION, f"in use by {holder[1]}/{holder[2]}")
        expect_ok(result)
        assert [r.port for r in result.ports_reserve.reservations] == sorted(span_ports)
        if host and not span_ports <= table:
            model.hosts.add(host)
        table |= span_ports

    @rule(
        data=st.data(),
        bounds=st.sampled_from(
            [
                ("b", 8010, 8014),
                ("b", 8010, 8016),
                ("b", 8011, 8013),
                ("a", 8000, 8009),
                ("a", 8000, 8005),
                ("c", 8009, 8012),  # overlaps both
                ("c", 0, 5),
                ("b", 8014, 8010),
            ]
        ),
    )
    def set_range(self, data: st.DataObject, bounds: tuple[str, int, int]) -> None:
        name, start, end = bounds
        result = self._run(data, set_range(name, start, end))
        assert result is not None
        model = self.model
        if not (1 <= start <= 65535 and 1 <= end <= 65535) or end < start:
            return expect_error(result, INVALID)
        for other, (low, high) in model.ranges.items():
            if other != name and low <= end and start <= high:
                return expect_error(result, INVALID, f"overlaps range {other!r}")
        if model.ranges.get(name) == (start, end):
            expect_ok(result)
            return self._unchanged()
        outside = [k for k, held in model.assignments.items() if held.range == name and not start <= held.port <= end]
        if outside:
            return expect_error(result, FAILED_PRECONDITION, "reassign them first")
        expect_ok(result)
        model.ranges[name] = (start, end)
        # Explicitly assigned ports inside the new bounds join the range.
        for held in model.assignments.values():
            if not held.range and start <= held.port <= end:
                held.range, held.changed = name, self.primary.revision

    # --------------------------------------------------------------- leases

    @rule(data=st.data(), ttl_ms=st.sampled_from([1_000, 2_000, 4_000]))
    def grant(self, data: st.DataObject, ttl_ms: int) -> None:
        result = self._run(
            data, Command(request_id=self._rid(data), lease_grant=leases_pb2.GrantLeaseRequest(ttl_ms=ttl_ms))
        )
        if result is None:
            return
        expect_ok(result)
        lease = result.lease_grant.lease
        model = self.model
        assert (lease.id, lease.ttl_ms, lease.renewed_unix_ms) == (model.next_lease, ttl_ms, model.time)
        model.leases[lease.id] = (ttl_ms, model.time)
        model.next_lease += 1

    @rule(data=st.data())
    def keepalive(self, data: st.DataObject) -> None:
        lease_id = self._lease(data) or 1
        result = self._run(data, keepalive(lease_id))
        assert result is not None
        model = self.model
        if lease_id not in model.leases:
            return expect_error(result, NOT_FOUND, "grant a new lease")
        expect_ok(result)
        assert result.lease_keepalive.lease.renewed_unix_ms == model.time
        model.leases[lease_id] = (model.leases[lease_id][0], model.time)
        self._unchanged()  # a renewal is not a revision

    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        lease_id = self._lease(data) or 1
        result = self._run(
            data, Command(request_id=self._rid(data), lease_revoke=leases_pb2.RevokeLeaseRequest(lease_id=lease_id))
        )
        if result is None:
            return
        expect_ok(result)
        if lease_id not in self.model.leases:
            assert not result.lease_revoke.revoked
            return self._unchanged()
        assert result.lease_revoke.revoked
        assert result.lease_revoke.released_ports == self.model.end_lease(lease_id)

    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        """The leader's expiry decision, re-checked against the entry's time (which may come late or early)."""
        candidates = [*sorted(self.model.leases), self.model.next_lease]
        lease_ids = data.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3), label="expire")
        result = self._run(data, expire(*lease_ids), max_step=4_000)
        assert result is not None
        expect_ok(result)
        model, expired = self.model, []
        for lease_id in lease_ids:
            if lease_id in model.leases and sum(model.leases[lease_id]) <= model.time:
                model.end_lease(lease_id)
                expired.append(lease_id)
        assert list(result.lease_expire.expired) == expired

    # --------------------------------------------------------------- host reports, conflicts, repair

    @rule(data=st.data(), then_resolve=st.booleans())
    def observe(self, data: st.DataObject, then_resolve: bool) -> None:
        host = self._host(data)
        # Held ports bound by someone (a stranger first: the simplest draw is a conflict), and a few
        # other ports bound by a managed service (misplaced) or by anyone.
        held = sorted(self.model.held_ports(host))
        bound = [p for p in held if data.draw(st.booleans(), label="held port bound")]
        holders = [data.draw(st.sampled_from(["nginx", *SERVICES, ""]), label="holder") for _ in bound]
        others = [p for p in PORTS if p not in bound]
        extra = data.draw(st.lists(st.sampled_from(others), max_size=3, unique=True), label="other bound ports")
        bound += extra
        holders += [data.draw(st.sampled_from(HOLDERS), label="holder") for _ in extra]
        result = self._run(data, observe(host, *zip(bound, holders, strict=True)))
        assert result is not None
        expect_ok(result)
        model = self.model
        model.observed[host] = dict(zip(bound, holders, strict=True))
        model.reports[host] = self.primary.revision
        model.hosts.add(host)
        got = {(c.kind, c.host, c.port) for c in result.ports_observe.conflicts}
        assert got == {c for c in model.conflicts() if c[1] == host}
        if then_resolve:
            self.resolve(data, data.draw(st.sampled_from(["", host]), label="resolve on"), until_stable=True)

    def _check_moves(self, moves: list[ports_pb2.PortMove]) -> None:
        """Each planned move is allowed by the model; then the model makes them."""
        model = self.model
        moving = {(m.host, m.service, m.name) for m in moves}
        assert len(moving) == len(moves), "an assignment moves twice in one resolution"
        targets = [(m.host, m.new_port) for m in moves]
        assert len(set(targets)) == len(targets), "two moves to one port"
        for move in moves:
            key = (move.host, move.service, move.name)
            held = model.assignments[key]
            assert held.port == move.old_port != move.new_port
            holder = model.holder(move.host, move.new_port)
            assert holder is None or holder in moving, f"moved onto {move.new_port}, held by {holder}"
            assert not model.reserved(move.host, move.new_port)
            bound = model.observed.get(move.host, {})
            if bound.get(move.new_port) != move.service:
                # Not an adoption: a wrong holder moved to a free port of its range.
                assert bound.get(move.old_port) not in (None, "", move.service)
                assert move.new_port not in bound and model.range_of(move.new_port) == held.range
        for move in moves:
            key = (move.host, move.service, move.name)
            lease_id = model.assignments[key].lease_id
            model.put(key, move.new_port, model.range_of(move.new_port), lease_id, self.primary.revision)

    @rule(data=st.data(), host=st.sampled_from(["", "", *HOSTS]), until_stable=st.booleans())
    def resolve(self, data: st.DataObject, host: str, until_stable: bool) -> None:
        passes = len(self.model.assignments) + 2 if until_stable else 1
        for _ in range(passes):
            planned = self.primary.ports.plan_resolution(host) if host in self.model.hosts or not host else None
            result = self._run(data, resolve(host))
            assert result is not None
            if planned is None:
                return expect_error(result, NOT_FOUND, "unknown")
            expect_ok(result)
            moves, unresolved = planned
            assert list(result.ports_resolve.moves) == moves, "the dry run differs from what resolve did"
            assert list(result.ports_resolve.unresolved) == unresolved
            self._check_moves(moves)
            if not moves or not until_stable:
                return
        raise AssertionError(f"resolve still moves assignments after {passes} passes: {moves}")

    @rule(data=st.data(), rounds=st.integers(1, 4), passes=st.sampled_from([0, 2, 3]))
    def report_and_repair(self, data: st.DataObject, rounds: int, passes: int) -> None:
        """What an agent and the leader do: a fresh host report, then a repair pass; a few times."""
        host = self._host(data)
        for _ in range(rounds):
            held = sorted(self.model.held_ports(host))
            bound = [p for p in held if data.draw(st.booleans(), label="still bound")]
            owners = [self.model.held_ports(host)[p][1] for p in bound]
            result = self._run(data, observe(host, *zip(bound, owners, strict=True)))
            assert result is not None
            expect_ok(result)
            self.model.observed[host] = dict(zip(bound, owners, strict=True))
            self.model.reports[host] = self.primary.revision
            self.model.hosts.add(host)
            for _ in range(data.draw(st.integers(1, 2), label="repair passes over one report")):
                self._repair(data, passes)

    @rule(data=st.data(), passes=st.sampled_from([0, 1, 2, 3]))
    def repair(self, data: st.DataObject, passes: int) -> None:
        self._repair(data, passes)

    def _repair(self, data: st.DataObject, passes: int) -> None:
        result = self._run(
            data,
            Command(request_id=self._rid(data), ports_repair=ports_pb2.RepairRequest(passes_before_release=passes)),
        )
        if result is None:
            return
        expect_ok(result)
        model, threshold = self.model, passes or 3
        suspected: list[Key] = []
        freed: list[Key] = []
        for host in sorted(model.reports):
            report, bound = model.reports[host], model.observed[host]
            for port, key in sorted(model.held_ports(host).items()):
                if port in bound or report <= model.assignments[key].changed:
                    model.leaks.pop(key, None)
                    continue
                suspected.append(key)
                count = model.leaks.get(key)
                if count is not None and count[1] == report:
                    continue  # the same report again: no new evidence
                model.leaks[key] = ((count[0] if count else 0) + 1, report)
                if model.leaks[key][0] >= threshold:
                    freed.append(key)
        got = result.ports_repair
        assert [(a.host, a.service, a.name) for a in got.suspected] == suspected
        assert [(a.host, a.service, a.name) for a in got.released] == freed
        for key in freed:
            model.drop(key)

    # --------------------------------------------------------------- services

    @rule(data=st.data())
    def register(self, data: st.DataObject) -> None:
        host = self._host(data)
        service = data.draw(st.sampled_from(SERVICES), label="service")
        names = data.draw(st.lists(st.sampled_from(PORT_NAMES), min_size=1, max_size=3, unique=True))
        ports = []
        for name in names:
            if data.draw(st.integers(0, 2), label="fixed if 0") == 0:
                ports.append(declared(name, port=self._port(data, host)))
            else:
                ports.append(declared(name, range_=data.draw(st.sampled_from(["", "a", "b"]), label="range")))
        lease_id = self._lease(data)
        manifest = ports_pb2.ServiceManifest(name=service, host=host, ports=ports, lease_id=lease_id)
        result = self._run(
            data,
            Command(request_id=self._rid(data), service_register=ports_pb2.RegisterServiceRequest(manifest=manifest)),
        )
        if result is None:
            return
        model = self.model
        fixed = {(host, service, d.name): d.port for d in ports if d.port}
        dynamic = {(host, service, d.name): d.range or DEFAULT_RANGE for d in ports if not d.port}
        if len(set(fixed.values())) < len(fixed):
            return expect_error(result, INVALID, "declared twice")
        if not model.lease_live(lease_id):
            return expect_error(result, NOT_FOUND, f"lease {lease_id}")
        own = {key for key in model.assignments if key[:2] == (host, service)}
        for key, port in fixed.items():
            current = model.assignments.get(key)
            if current is not None and current.port == port:
                continue
            holder = model.holder(host, port)
            if (holder is not None and holder not in own) or model.reserved(host, port):
                return expect_error(result, FAILED_PRECONDITION, f"cannot register {service}")
            if model.observed_by_other(host, port, service):
                return expect_error(result, FAILED_PRECONDITION, "observed")
        kept = {
            key: model.assignments[key].port
            for key, r in dynamic.items()
            if key in own and model.assignments[key].range == r
        }
        left = {r: model.free_count(host, r, exclude=set(fixed.values())) for r in dynamic.values()}
        for key, range_name in dynamic.items():
            if key not in kept:
                if not left[range_name]:
                    return expect_error(result, RESOURCE_EXHAUSTED, f"{range_name!r}")
                left[range_name] -= 1
        staying = list(fixed.values()) + list(kept.values())
        if len(set(staying)) < len(staying):
            # A fixed port held by one of the service's own ports that is declared to stay where it is.
            return expect_error(result, FAILED_PRECONDITION, "stays with")
        expect_ok(result)
        revision = self.primary.revision
        after = {(a.host, a.service, a.name): a for a in result.service_register.service.ports}
        assert set(after) == set(fixed) | set(dynamic)
        chosen: set[int] = set()
        for key, range_name in dynamic.items():
            if key not in kept:
                port = after[key].port
                low, high = model.ranges[range_name]
                assert low <= port <= high and model.is_free(host, port) and port not in fixed.values()
                assert port not in chosen
                chosen.add(port)
        for key in own - set(after):
            model.drop(key)
        for key, assignment in after.items():
            current = model.assignments.get(key)
            if current is None or current.port != assignment.port or current.lease_id != lease_id:
                model.put(key, assignment.port, model.range_of(assignment.port), lease_id, revision)
        model.services.add((host, service))
        model.hosts.add(host)

    @rule(data=st.data(), host=st.sampled_from(HOSTS), service=st.sampled_from(SERVICES))
    def deregister(self, data: st.DataObject, host: str, service: str) -> None:
        result = self._run(data, deregister(host, service))
        assert result is not None
        model = self.model
        if host not in model.hosts:
            return expect_error(result, NOT_FOUND, "unknown")
        expect_ok(result)
        if (host, service) not in model.services:
            assert not result.service_deregister.deregistered
            return self._unchanged()
        own = sorted(key for key in model.assignments if key[:2] == (host, service))
        assert [(a.host, a.service, a.name) for a in result.service_deregister.released] == own
        for key in own:
            model.drop(key)
        model.services.discard((host, service))

    # --------------------------------------------------------------- retries and snapshots

    @precondition(lambda self: self.recorded)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """A client retries after an unknown outcome: the recorded answer, and nothing changes."""
        rid = data.draw(st.sampled_from(sorted(self.recorded)), label="retried id")
        assert self._run(data, self.recorded[rid][0], max_step=0) is None

    @rule()
    def snapshot_and_restore(self) -> None:
        snapshot = self.primary.snapshot()
        fresh = StateMachine()
        fresh.restore(snapshot)
        assert fresh.snapshot() == snapshot
        self.restored = fresh
        # The same snapshot as a cluster restore (a backup): it passes the import checks and carries
        # the whole port map; the leases restart their TTLs.
        other = StateMachine()
        (result,) = other.apply_entry(batch_entry(self.clock + 10, "leader-1", [restore_state(snapshot)]))
        expect_ok(result)
        assert other.ports.to_state() == self.primary.ports.to_state()
        assert {i: lease.ttl_ms for i, lease in other.leases.leases.items()} == {
            i: ttl for i, (ttl, _) in self.model.leases.items()
        }
        assert all(lease.renewed_unix_ms == other.time_unix_ms for lease in other.leases.leases.values())

    # --------------------------------------------------------------- invariants

    @invariant()
    def replicas_agree(self) -> None:
        snapshots = {machine.snapshot() for machine in self.machines}
        assert len(snapshots) == 1, "replicas that applied the same log hold different snapshots"

    @invariant()
    def allocator_invariants(self) -> None:
        ports = self.primary.ports
        on_port: dict[tuple[str, int, int], Key] = {}
        for key, a in ports.assignments.items():
            assert key == (a.host, a.service, a.name)
            slot = (a.host, a.port, a.protocol)
            assert slot not in on_port, f"{describe(a)} shares its port with {on_port[slot]}"
            on_port[slot] = key
            assert ports.reservation(a.host, a.port) is None, f"{describe(a)} sits on a reserved port"
            assert a.range == ports.range_of(a.port)
            if a.range:
                assert ports.ranges[a.range].start <= a.port <= ports.ranges[a.range].end
            assert a.lease_id == 0 or self.primary.leases.exists(a.lease_id), f"{describe(a)} hangs on a dead lease"
        by_port: dict[str, dict[tuple[int, int], Key]] = {}
        by_lease: dict[int, set[Key]] = {}
        for key, a in ports.assignments.items():
            by_port.setdefault(a.host, {})[(a.port, a.protocol)] = key
            if a.lease_id:
                by_lease.setdefault(a.lease_id, set()).add(key)
        assert ports.by_port == by_port
        assert {lease_id: set(keys) for lease_id, keys in ports.by_lease.items()} == by_lease
        assert set(ports.leaks) <= set(on_port), "a leak count outlived its assignment"

    @invariant()
    def agrees_with_model(self) -> None:
        model, ports = self.model, self.primary.ports
        assert {k: (a.port, a.range, a.lease_id) for k, a in ports.assignments.items()} == {
            k: (h.port, h.range, h.lease_id) for k, h in model.assignments.items()
        }
        assert set(ports.reserved_global) == model.reserved_global
        assert {h: set(t) for h, t in ports.reserved_host.items()} == {
            h: s for h, s in model.reserved_host.items() if s
        }
        assert {name: (r.start, r.end) for name, r in ports.ranges.items()} == model.ranges
        assert {
            i: (lease.ttl_ms, lease.renewed_unix_ms) for i, lease in self.primary.leases.leases.items()
        } == model.leases
        assert set(ports.services) == model.services
        assert set(ports.hosts) == model.hosts
        # The model knows TCP only (UDP's separate slots have tests of their own).
        assert {
            h: {p: o.holder for (p, _), o in bound.items()} for h, bound in ports.observed.items()
        } == model.observed
        assert {hp: count.passes for hp, count in ports.leaks.items()} == {
            (key[0], model.assignments[key].port, TCP): passes for key, (passes, _) in model.leaks.items()
        }
        assert {(c.kind, c.host, c.port) for c in ports.conflicts()} == model.conflicts()
        for row in ports.stats().ranges:
            if not row.host:
                continue
            low, high = model.ranges[row.range]
            used = sum(1 for k, h in model.assignments.items() if k[0] == row.host and low <= h.port <= high)
            reserved_here = model.reserved_global | model.reserved_host.get(row.host, set())
            reserved = sum(1 for p in reserved_here if low <= p <= high)
            size = high - low + 1
            assert (row.size, row.used, row.reserved, row.free) == (size, used, reserved, size - used - reserved)

    @invariant()
    def history_only_grows(self) -> None:
        ports = self.primary.ports
        assert set(self.totals_seen) <= set(ports.history_totals)
        for service, total in ports.history_totals.items():
            assert total >= self.totals_seen.get(service, 0), f"{service}'s history total went down"
            entries = ports.history[service]
            assert len(entries) == min(total, PORT_HISTORY_LIMIT)
            assert [e.revision for e in entries] == sorted({e.revision for e in entries})
            seen = self.history_seen.setdefault(service, {})
            for entry in entries:
                data = entry.SerializeToString(deterministic=True)
                assert seen.setdefault(entry.revision, data) == data, f"{service}'s history entry changed"
            assert set(seen) == {e.revision for e in entries}, f"{service}'s history lost entries"
        self.totals_seen = dict(ports.history_totals)


PortsVsModel.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestPortsVsModel = PortsVsModel.TestCase


# ------------------------------------------------------------------- focused examples


class Driver(MachineDriver):
    """One machine and the leader's clock: one millisecond per entry unless told otherwise."""

    def __init__(self, level: int = levels.APPLY_LEVEL) -> None:
        super().__init__(level=level, now=1_000, tick_ms=1, leader_id="leader-1")

    @property
    def ports(self) -> PortTable:
        return self.machine.ports

    def port_of(self, host: str, service: str, name: str = "main") -> int | None:
        assignment = self.ports.assignments.get((host, service, name))
        return assignment.port if assignment is not None else None

    def history(self, service: str) -> list[tuple[int, int, int]]:
        entries, _ = self.ports.service_history(service)
        return [(e.action, e.old_port, e.new_port) for e in entries]


@pytest.fixture
def d() -> Driver:
    """A machine with ranges a (8000-8009) and b (8010-8014) beside the default dynamic one."""
    driver = Driver()
    driver.ok(set_range("a", 8000, 8009))
    driver.ok(set_range("b", 8010, 8014))
    return driver


def test_allocate_is_idempotent_by_host_service_and_name(d: Driver) -> None:
    first = d.ok(allocate("h1", "web", "http", range_="a")).ports_allocate
    assert not first.existing and first.assignment.port == 8000 and first.assignment.range == "a"
    revision = d.machine.revision
    again = d.ok(allocate("h1", "web", "http", range_="a")).ports_allocate
    assert again.existing and again.assignment == first.assignment
    assert d.machine.revision == revision, "an allocation that already exists is not a change"
    # Another name, service or host is another assignment; a preferred port is honoured when free.
    assert d.ok(allocate("h1", "web", "grpc", range_="a")).ports_allocate.assignment.port == 8001
    assert d.ok(allocate("h2", "web", "http", range_="a")).ports_allocate.assignment.port == 8000
    assert d.ok(allocate("h1", "db", preferred=8007)).ports_allocate.assignment.port == 8007
    assert d.ok(allocate("h1", "cache", preferred=8007)).ports_allocate.assignment.port == 8008


def test_allocate_is_idempotent_by_request_id(d: Driver) -> None:
    cmd = allocate("h1", "web", range_="a")
    cmd.request_id = "alloc-1"
    first = d.ok(cmd)
    d.ok(release("h1", "web"))
    before, revision = state_bytes(d.machine), d.machine.revision
    (retried,) = d.apply(cmd)
    assert retried == first, "a retry returns the recorded result"
    assert d.machine.revision == revision and state_bytes(d.machine) == before
    assert d.port_of("h1", "web") is None


def test_full_range_is_resource_exhausted_naming_the_range(d: Driver) -> None:
    d.ok(reserve(8010, host="h1"))
    d.ok(observe("h1", (8011, "nginx")))
    ports = [d.ok(allocate("h1", f"s{i}", range_="b")).ports_allocate.assignment.port for i in range(3)]
    assert ports == [8012, 8013, 8014], "reserved and observed-bound ports are skipped"
    d.refused(allocate("h1", "s9", range_="b"), RESOURCE_EXHAUSTED, "range 'b'", "8010-8014", "h1", "3 assigned")
    d.refused(reassign("h1", "s0", range_="b"), RESOURCE_EXHAUSTED, "range 'b'")
    # Another host has its own ports; freeing one makes room again.
    assert d.ok(allocate("h2", "s9", range_="b")).ports_allocate.assignment.port == 8010
    d.ok(release("h1", port=8013))
    assert d.ok(allocate("h1", "s9", range_="b")).ports_allocate.assignment.port == 8013


def test_assign_of_a_taken_port_names_the_holder(d: Driver) -> None:
    d.ok(assign("h1", "db", 8005, name="sql"))
    d.refused(assign("h1", "web", 8005), FAILED_PRECONDITION, "assigned to db/sql")
    assert d.ok(assign("h2", "web", 8005)).ports_assign.assignment.range == "a", "other hosts are separate"
    d.refused(assign("h1", "db", 8006, name="sql"), FAILED_PRECONDITION, "db/sql", "holds port 8005", "reassign")
    again = d.ok(assign("h1", "db", 8005, name="sql")).ports_assign
    assert again.existing and again.assignment.port == 8005
    # A port outside every range is fine and belongs to none; a bound one needs force.
    assert d.ok(assign("h1", "web", 9000)).ports_assign.assignment.range == ""
    d.ok(observe("h1", (9001, "nginx")))
    d.refused(assign("h1", "cache", 9001), FAILED_PRECONDITION, "observed bound by nginx", "force")
    assert d.ok(assign("h1", "cache", 9001, force=True)).ports_assign.assignment.port == 9001


def test_reservations_refuse_ports_in_use_and_are_never_handed_out(d: Driver) -> None:
    d.ok(allocate("h1", "web", range_="a"))  # 8000
    d.refused(reserve(8000), FAILED_PRECONDITION, "in use by web/main")
    d.refused(reserve(7998, end_port=8001, host="h1"), FAILED_PRECONDITION, "port 8000 on h1", "web/main")
    d.ok(reserve(8000, host="h2", reason="ssh tunnel"))  # in use on h1 only
    d.ok(reserve(8001, end_port=8002, reason="legacy"))
    d.refused(assign("h1", "db", 8001), FAILED_PRECONDITION, "reserved on every host", "legacy")
    d.refused(assign("h2", "db", 8000), FAILED_PRECONDITION, "reserved on h2", "ssh tunnel")
    assert d.ok(allocate("h1", "db", range_="a")).ports_allocate.assignment.port == 8003
    assert d.ok(allocate("h2", "db", range_="a")).ports_allocate.assignment.port == 8003
    d.refused(reassign("h1", "web", port=8002), FAILED_PRECONDITION, "reserved")
    assert d.ok(unreserve(8001, end_port=8002)).ports_unreserve.removed == 2
    assert d.ok(assign("h1", "cache", 8001)).ports_assign.assignment.port == 8001


def test_reassign_records_history_and_a_watch_event(d: Driver) -> None:
    assert d.ok(allocate("h1", "web", range_="a")).ports_allocate.assignment.port == 8000
    revision = d.machine.revision
    moved = d.ok(reassign("h1", "web", port=8005, reason="maintenance")).ports_reassign
    assert moved.old_port == 8000 and moved.assignment.port == 8005 and moved.assignment.range == "a"
    assert d.history("web") == [(ALLOCATED, 0, 8000), (REASSIGNED, 8000, 8005)]
    entries, total = d.ports.service_history("web")
    assert entries[-1].reason == "maintenance" and entries[-1].revision == d.machine.revision and total == 2
    (event,) = d.machine.events_from(revision + 1)
    assert (event.domain, event.key, event.type) == ("ports", "assignments/h1/web/main", PUT)
    assert event.port.action == REASSIGNED
    assert (event.port.old_port, event.port.new_port) == (8000, 8005)
    assert (event.port.prev_assignment.port, event.port.assignment.port) == (8000, 8005)
    # Any free port: next-fit from the cursor, never the port it leaves; another range on request.
    assert d.ok(reassign("h1", "web")).ports_reassign.assignment.port == 8006
    assert d.ok(reassign("h1", "web", range_="b")).ports_reassign.assignment.range == "b"
    assert d.history("web")[-1][0] == REASSIGNED
    revision = d.machine.revision
    assert d.ok(reassign("h1", "web", port=d.port_of("h1", "web") or 0)).revision == revision, "no move, no change"


@pytest.mark.parametrize(
    ("cmd", "fragment"),
    [
        (set_range("c", 8005, 8012), "overlaps range 'a'"),
        (set_range("a", 8000, 8010), "overlaps range 'b'"),
        (set_range("c", 0, 10), "range start 0 is outside 1-65535"),
        (set_range("c", 60000, 65536), "range end 65536 is outside 1-65535"),
        (set_range("c", 9010, 9000), "ends (9000) before it starts (9010)"),
        (assign("h1", "web", 0), "port 0 is outside 1-65535"),
        (assign("h1", "web", 65536), "port 65536 is outside 1-65535"),
        (allocate("h1", "web", preferred=70000), "preferred port 70000 is outside 1-65535"),
        (allocate("h1", "web", preferred=9500), "lies in no range"),
        (allocate("h1", "web", range_="a", preferred=8012), "outside range 'a'"),
        (reserve(0), "port 0 is outside 1-65535"),
        (reserve(65535, end_port=65536), "end port 65536 is outside 1-65535"),
        (reserve(9000, end_port=8999), "below port 9000"),
        (observe("h1", (0, "web")), "observed port 0"),
        (observe("h1", (8000, "web"), (8000, "db")), "appears twice"),
        (release("h1"), "a service (and port name), or a port"),
        (register("h1", "web", declared("http", port=8001), declared("grpc", port=8001)), "declared twice"),
        (register("h1", "web", declared("http", port=8011, range_="a")), "outside its declared range"),
    ],
)
def test_bad_input_is_invalid_and_changes_nothing(d: Driver, cmd: Command, fragment: str) -> None:
    d.ok(allocate("h1", "db", range_="a"))
    d.refused(cmd, INVALID, fragment)


def test_unknown_hosts_are_not_found_and_change_nothing(d: Driver) -> None:
    d.refused(release("h9", "web"), NOT_FOUND, "host 'h9' is unknown")
    d.refused(release("h9", port=8000), NOT_FOUND, "host 'h9' is unknown")
    d.refused(reassign("h9", "web"), NOT_FOUND, "host 'h9' is unknown")
    d.refused(deregister("h9", "web"), NOT_FOUND, "host 'h9' is unknown")
    d.refused(resolve("h9"), NOT_FOUND, "host 'h9' is unknown")
    d.ok(allocate("h1", "web"))
    d.refused(release("h2", "web"), NOT_FOUND, "known hosts: h1")
    # A known host with nothing to release is not an error.
    assert not d.ok(release("h1", "db")).ports_release.released
    d.refused(reassign("h1", "db"), NOT_FOUND, "db/main has no port on h1")


def test_release_is_idempotent(d: Driver) -> None:
    d.ok(allocate("h1", "web", range_="a"))
    d.ok(allocate("h1", "db", range_="a"))
    gone = d.ok(release("h1", "web")).ports_release
    assert gone.released and gone.assignment.port == 8000
    revision = d.machine.revision
    for cmd in (release("h1", "web"), release("h1", port=8000)):
        result = d.ok(cmd)
        assert not result.ports_release.released and result.revision == revision == d.machine.revision
    d.refused(release("h1", "db", port=8005), FAILED_PRECONDITION, "holds port 8001, not 8005")
    assert d.ok(release("h1", port=8001)).ports_release.assignment.service == "db"
    assert d.history("web") == [(ALLOCATED, 0, 8000), (RELEASED, 8000, 0)]


# ------------------------------------------------------------------- leases


def test_lease_expiry_waits_for_the_deadline() -> None:
    d = Driver()
    lease = d.ok(grant(5_000), at=10_000).lease_grant.lease
    assert (lease.ttl_ms, lease.granted_unix_ms, lease.renewed_unix_ms) == (5_000, 10_000, 10_000)
    d.ok(allocate("h1", "web", lease_id=lease.id), at=10_001)
    d.ok(allocate("h1", "db"), at=10_002)  # not on the lease
    revision = d.machine.revision
    early = d.ok(expire(lease.id), at=14_999)
    assert list(early.lease_expire.expired) == [] and d.machine.revision == revision
    assert d.port_of("h1", "web") is not None
    due = d.ok(expire(lease.id, lease.id, 999), at=15_000)  # renewed + ttl: the deadline itself
    assert list(due.lease_expire.expired) == [lease.id]
    assert d.port_of("h1", "web") is None and d.port_of("h1", "db") is not None
    entries, _ = d.ports.service_history("web")
    assert entries[-1].action == EXPIRED and "expired" in entries[-1].reason
    released, ended = d.machine.events_from(revision + 1)
    assert (released.domain, released.type, released.port.action) == ("ports", DELETE, EXPIRED)
    assert (ended.domain, ended.key, ended.type) == ("leases", str(lease.id), DELETE)
    d.refused(keepalive(lease.id), NOT_FOUND, "grant a new lease")
    d.refused(allocate("h1", "cache", lease_id=lease.id), NOT_FOUND, f"lease {lease.id} does not exist")


def test_a_keepalive_committed_before_the_expiry_wins() -> None:
    d = Driver()
    lease_id = d.ok(grant(5_000), at=10_000).lease_grant.lease.id
    d.ok(allocate("h1", "web", lease_id=lease_id), at=10_001)
    # The leader saw the lease due, but a keepalive was committed first (in an earlier entry, or
    # earlier in the same one).
    revision = d.machine.revision
    renewed = d.ok(keepalive(lease_id), at=14_000).lease_keepalive.lease
    assert renewed.renewed_unix_ms == 14_000 and d.machine.revision == revision, "a renewal is not a revision"
    assert list(d.ok(expire(lease_id), at=15_500).lease_expire.expired) == []
    kept, late = d.apply(keepalive(lease_id), expire(lease_id), at=19_000)
    assert kept.lease_keepalive.lease.renewed_unix_ms == 19_000 and list(late.lease_expire.expired) == []
    assert d.port_of("h1", "web") is not None
    assert list(d.ok(expire(lease_id), at=24_000).lease_expire.expired) == [lease_id]
    assert d.port_of("h1", "web") is None


def test_revoking_a_lease_releases_what_hangs_on_it(d: Driver) -> None:
    lease_id = d.ok(grant(60_000)).lease_grant.lease.id
    d.ok(allocate("h1", "web", lease_id=lease_id))
    d.ok(assign("h2", "web", 9000, name="admin", lease_id=lease_id))
    d.ok(register("h1", "db", declared("sql", range_="a"), lease_id=lease_id))
    assert len(d.ports.by_lease[lease_id]) == 3
    revoked = d.ok(revoke(lease_id)).lease_revoke
    assert revoked.revoked and revoked.released_ports == 3
    assert d.ports.assignments == {} and lease_id not in d.ports.by_lease
    assert [e.action for e in d.ports.service_history("web")[0]][-2:] == [EXPIRED, EXPIRED]
    revision = d.machine.revision
    again = d.ok(revoke(lease_id))
    assert not again.lease_revoke.revoked and again.revision == revision


# ------------------------------------------------------------------- observed ports and conflicts


def conflict_kinds(d: Driver, host: str = "") -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for conflict in d.ports.conflicts(host):
        found.setdefault(conflict.port, []).append(conflict.kind)
    return found


def test_observed_ports_show_the_three_conflict_kinds(d: Driver) -> None:
    for service in ("web", "db", "cache"):
        d.ok(allocate("h1", service, range_="a"))  # 8000, 8001, 8002
    report = d.ok(
        observe("h1", (8000, "nginx"), (8001, "db"), (8005, "cache"), (8007, ""), (8003, "db"), (9000, "sshd"))
    ).ports_observe
    assert conflict_kinds(d) == {
        8000: [WRONG_HOLDER],  # web's port, bound by someone else
        8005: [MISPLACED],  # cache is bound here, not on its 8002
        8007: [UNASSIGNED_BOUND],  # in a range, bound, assigned to nobody
        8003: [UNASSIGNED_BOUND],  # db is bound here too, but also on its own port: not misplaced
    }
    assert list(report.conflicts) == d.ports.conflicts("h1")
    (wrong,) = [c for c in report.conflicts if c.kind == WRONG_HOLDER]
    assert wrong.assignment.service == "web" and wrong.observed_holder == "nginx"
    assert "assigned to web/main but bound by nginx" in wrong.description
    (misplaced,) = [c for c in report.conflicts if c.kind == MISPLACED]
    assert misplaced.assignment.port == 8002 and "its assigned port is 8002" in misplaced.description


def test_resolve_moves_the_wrong_holder_and_lets_a_misplaced_service_adopt_its_port(d: Driver) -> None:
    for service in ("web", "db", "cache"):
        d.ok(allocate("h1", service, range_="a"))  # 8000, 8001, 8002
    d.ok(observe("h1", (8000, "nginx"), (8005, "cache"), (8007, "")))
    before = state_bytes(d.machine)
    moves, unresolved = d.ports.plan_resolution()
    assert state_bytes(d.machine) == before, "a dry run changes nothing"
    plan = [(m.service, m.old_port, m.new_port) for m in moves]
    result = d.ok(resolve()).ports_resolve
    assert list(result.moves) == moves and list(result.unresolved) == unresolved, "dry run == what applied"
    assert sorted(plan) == [("cache", 8002, 8005), ("web", 8000, 8003)]
    assert (d.port_of("h1", "web"), d.port_of("h1", "cache")) == (8003, 8005)
    assert [c.port for c in unresolved] == [8007] and "not resolved" in unresolved[0].description
    assert d.history("web")[-1] == (RESOLVED, 8000, 8003)
    assert d.history("cache")[-1] == (RESOLVED, 8002, 8005)
    # Resolved: what is left is the unmanaged processes on 8000 and 8007, which no move can fix.
    assert conflict_kinds(d) == {8000: [UNASSIGNED_BOUND], 8007: [UNASSIGNED_BOUND]}
    revision = d.machine.revision
    assert not d.ok(resolve()).ports_resolve.moves and d.machine.revision == revision


def test_a_misplaced_service_adopts_the_port_the_wrong_holder_vacates(d: Driver) -> None:
    d.ok(allocate("h1", "web", range_="a"))  # 8000, but db is bound there
    d.ok(allocate("h1", "db", range_="a"))  # 8001, not bound
    d.ok(observe("h1", (8000, "db")))
    assert conflict_kinds(d) == {8000: [WRONG_HOLDER, MISPLACED]}
    moves, _ = d.ports.plan_resolution()
    assert list(d.ok(resolve()).ports_resolve.moves) == moves
    assert (d.port_of("h1", "db"), d.port_of("h1", "web")) == (8000, 8002)
    assert conflict_kinds(d) == {}


def test_a_wrong_holder_with_nowhere_to_go_keeps_its_port(d: Driver) -> None:
    for index in range(5):
        d.ok(allocate("h1", f"s{index}", range_="b"))  # b is full: 8010-8014
    d.ok(allocate("h1", "db", range_="a"))  # 8000
    d.ok(observe("h1", (8010, "db")))  # s0's port, bound by db
    moves, unresolved = d.ports.plan_resolution()
    assert moves == [], "db may adopt 8010 only if s0 can leave it, and b is full"
    assert {c.kind for c in unresolved} == {WRONG_HOLDER, MISPLACED}
    d.ok(resolve())
    assert (d.port_of("h1", "s0"), d.port_of("h1", "db")) == (8010, 8000)


def test_resolve_leaves_a_service_bound_to_its_own_port_alone(d: Driver) -> None:
    d.ok(allocate("h1", "db", range_="a"))  # 8000
    d.ok(observe("h1", (8000, "db"), (8001, "db")))
    assert conflict_kinds(d) == {8001: [UNASSIGNED_BOUND]}
    for _ in range(2):
        assert not d.ok(resolve()).ports_resolve.moves
    assert d.port_of("h1", "db") == 8000


# ------------------------------------------------------------------- leak repair


def test_repair_frees_only_after_fresh_reports_in_a_row(d: Driver) -> None:
    d.ok(observe("h1"))  # a report older than the assignment is no evidence
    d.ok(allocate("h1", "web", range_="a"))
    d.ok(allocate("h1", "db", range_="a"))
    assert not d.ok(repair()).ports_repair.suspected
    d.ok(observe("h1", (8001, "db")))
    first = d.ok(repair()).ports_repair
    assert [a.service for a in first.suspected] == ["web"] and not first.released
    assert d.ports.leaks[("h1", 8000, TCP)].passes == 1
    revision = d.machine.revision
    for _ in range(3):  # more passes over the same report count nothing
        assert not d.ok(repair()).ports_repair.released
    assert d.ports.leaks[("h1", 8000, TCP)].passes == 1 and d.machine.revision == revision
    d.ok(observe("h1", (8001, "db")))
    d.ok(repair())
    assert d.ports.leaks[("h1", 8000, TCP)].passes == 2
    d.ok(observe("h1", (8000, "web"), (8001, "db")))  # bound again: the count starts over
    d.ok(repair())
    assert ("h1", 8000, TCP) not in d.ports.leaks
    for expected in (1, 2):
        d.ok(observe("h1"))
        assert not d.ok(repair()).ports_repair.released
        assert d.ports.leaks[("h1", 8000, TCP)].passes == expected
    d.ok(observe("h1"))
    freed = d.ok(repair()).ports_repair
    assert [(a.service, a.port) for a in freed.released] == [("web", 8000), ("db", 8001)]
    assert d.ports.assignments == {} and d.ports.leaks == {}
    entries, _ = d.ports.service_history("web")
    assert entries[-1].action == REPAIRED and "leaked" in entries[-1].reason
    d.refused(repair(101), INVALID, "above 100")


def test_repair_threshold_is_per_request(d: Driver) -> None:
    d.ok(allocate("h1", "web"))
    d.ok(observe("h1"))
    assert [a.service for a in d.ok(repair(1)).ports_repair.released] == ["web"]


# ------------------------------------------------------------------- tcp and udp (issue 18)


def test_tcp_and_udp_hold_the_same_port_number_separately(d: Driver) -> None:
    tcp = d.ok(assign("h1", "dns", 53, name="tcp")).ports_assign.assignment
    udp = d.ok(assign("h1", "dns", 53, name="udp", protocol=UDP)).ports_assign.assignment
    assert (tcp.port, tcp.protocol, udp.port, udp.protocol) == (53, TCP, 53, UDP)
    d.refused(assign("h1", "other", 53, protocol=UDP), FAILED_PRECONDITION, "port 53/udp on h1", "dns/udp")
    d.refused(assign("h1", "other", 53), FAILED_PRECONDITION, "port 53 on h1 is assigned to dns/tcp")
    # An allocation is free in its own protocol: 8000/tcp is taken, 8000/udp is not.
    assert d.ok(allocate("h1", "web", range_="a")).ports_allocate.assignment.port == 8000
    stats = d.ok(allocate("h1", "stats", range_="a", preferred=8000, protocol=UDP)).ports_allocate.assignment
    assert (stats.port, stats.protocol) == (8000, UDP)
    # Asked again in another protocol, an assignment is not silently the one it holds.
    d.refused(allocate("h1", "web", range_="a", protocol=UDP), FAILED_PRECONDITION, "already holds a tcp port")
    d.refused(assign("h1", "dns", 53, name="udp"), FAILED_PRECONDITION, "already holds a udp port")
    d.refused(allocate("h1", "x", protocol=7), INVALID, "protocol 7 is neither tcp")
    # Releasing by port names the protocol (TCP unless told): the other one stays.
    released = d.ok(release("h1", port=53)).ports_release
    assert released.released and released.assignment.name == "tcp"
    assert d.ports.holder("h1", 53, UDP) is not None
    d.refused(release("h1", "dns", "udp", port=53), FAILED_PRECONDITION, "it holds port 53/udp, not 53")
    assert d.ok(release("h1", port=53, protocol=UDP)).ports_release.released
    # A reservation keeps the number out of both protocols, and is refused while either holds it.
    d.refused(reserve(8000), FAILED_PRECONDITION, "port 8000 on h1 is in use by web/main")
    d.ok(release("h1", "web"))
    d.refused(reserve(8000), FAILED_PRECONDITION, "port 8000/udp on h1 is in use by stats/main")
    d.ok(reserve(8009))
    d.refused(assign("h1", "late", 8009, protocol=UDP), FAILED_PRECONDITION, "port 8009 is reserved")
    # The history says which protocol a change was in.
    assert [e.protocol for e in d.ports.service_history("dns")[0]] == [TCP, UDP, TCP, UDP]


def test_a_manifest_declares_one_port_number_for_tcp_and_udp(d: Driver) -> None:
    dns = (declared("dns-tcp", 53, protocol="tcp"), declared("dns-udp", 53, protocol="UDP"))
    record = d.ok(register("h1", "dns", *dns)).service_register.service
    assert sorted((a.name, a.port, a.protocol) for a in record.ports) == [("dns-tcp", 53, TCP), ("dns-udp", 53, UDP)]
    d.refused(
        register("h1", "dns2", declared("a", 5353, protocol="udp"), declared("b", 5353, protocol="udp")),
        INVALID,
        "port 5353/udp is declared twice",
    )
    # Any other text is an application protocol over TCP, as it was before UDP ports existed.
    d.refused(register("h1", "web", declared("http", 53, protocol="http")), FAILED_PRECONDITION, "dns/dns-tcp")
    # Allocated ports follow their protocol too: a UDP one may take a number TCP holds.
    d.ok(assign("h1", "web", 8000))
    metrics = d.ok(register("h1", "statsd", declared("m", range_="a", protocol="udp"))).service_register.service
    assert [(a.port, a.protocol) for a in metrics.ports] == [(8001, UDP)]  # next-fit; 8000/udp was free too
    # A declared port that changes protocol moves to the other slot in the same registration.
    moved = d.ok(register("h1", "dns", declared("dns-tcp", 53), declared("dns-udp", 54, protocol="tcp")))
    assert sorted((a.name, a.port, a.protocol) for a in moved.service_register.service.ports) == [
        ("dns-tcp", 53, TCP),
        ("dns-udp", 54, TCP),
    ]
    assert d.ports.holder("h1", 53, UDP) is None


def test_observed_udp_sockets_conflict_only_with_udp_assignments(d: Driver) -> None:
    d.ok(assign("h1", "web", 8000))
    d.ok(assign("h1", "stats", 8001, protocol=UDP))
    report = d.ok(observe("h1", (8000, "web"), (8000, "nginx", UDP), (8001, "collectd", UDP))).ports_observe
    found = {(c.kind, c.port, c.protocol, c.observed_holder) for c in report.conflicts}
    assert found == {
        (UNASSIGNED_BOUND, 8000, UDP, "nginx"),  # 8000/tcp is web's and web holds it
        (WRONG_HOLDER, 8001, UDP, "collectd"),
    }
    assert any("8001/udp" in c.description for c in report.conflicts)
    # Resolving moves stats to a UDP port nobody is bound to; it stays a UDP assignment.
    (move,) = d.ok(resolve("h1")).ports_resolve.moves
    assert (move.service, move.old_port, move.protocol) == ("stats", 8001, UDP)
    assert d.ports.assignments[("h1", "stats", "main")].protocol == UDP
    # An allocation skips a port observed bound in its own protocol only.
    d.ok(observe("h1", (8005, "x", UDP)))
    assert d.ok(allocate("h1", "u", range_="a", preferred=8005, protocol=UDP)).ports_allocate.assignment.port != 8005
    assert d.ok(allocate("h1", "t", range_="a", preferred=8005)).ports_allocate.assignment.port == 8005
    d.refused(observe("h1", (8000, "a", UDP), (8000, "b", UDP)), INVALID, "port 8000/udp appears twice")


def test_repair_frees_udp_ports_only_on_reports_complete_for_udp(d: Driver) -> None:
    d.ok(assign("h1", "stats", 8001, protocol=UDP))
    d.ok(assign("h1", "web", 8001))
    # Reports complete for TCP only (the default, every reporter from before UDP) say nothing about
    # UDP sockets, even one that lists some: 8001/udp is never suspected on their word, nor is its
    # count reset by them.
    d.ok(observe("h1", (8001, "web"), (9000, "ssh", UDP)))
    assert not d.ok(repair(2)).ports_repair.suspected
    d.ok(observe("h1", (8001, "web"), complete_for=(TCP, UDP)))
    assert [(a.service, a.protocol) for a in d.ok(repair(2)).ports_repair.suspected] == [("stats", UDP)]
    d.ok(observe("h1", (8001, "web")))
    assert not d.ok(repair(2)).ports_repair.released
    assert d.ports.leaks[("h1", 8001, UDP)].passes == 1, "a TCP-only report neither adds to nor resets it"
    d.ok(observe("h1", (8001, "web"), (8001, "stats", UDP)))  # but one that lists it bound does
    d.ok(repair(2))
    assert ("h1", 8001, UDP) not in d.ports.leaks
    d.ok(observe("h1", (8001, "web"), complete_for=(TCP, UDP)))
    d.ok(repair(2))
    # Bound in the other protocol is not bound: 8001/tcp is web's, 8001/udp is still missing.
    d.ok(observe("h1", (8001, "web"), complete_for=(UDP, TCP)))
    freed = d.ok(repair(2)).ports_repair.released
    assert [(a.service, a.port, a.protocol) for a in freed] == [("stats", 8001, UDP)]
    assert d.ports.holder("h1", 8001, TCP) is not None
    assert list(d.ports.observations["h1"].complete_for) == [TCP, UDP]


def test_bad_protocols_are_invalid_and_change_nothing(d: Driver) -> None:
    d.ok(assign("h1", "web", 8000))
    d.refused(assign("h1", "x", 8001, protocol=9), INVALID, "protocol 9 is neither tcp")
    d.refused(release("h1", port=8000, protocol=9), INVALID, "protocol 9")
    d.refused(observe("h1", (8000, "web", 9)), INVALID, "protocol 9")
    d.refused(observe("h1", complete_for=(9,)), INVALID, "protocol 9")
    port_map = d.ports.export_map(d.machine.revision)
    port_map.assignments[0].protocol = 9  # type: ignore[assignment]
    d.refused(import_map(port_map), INVALID, "protocol 9")


def test_a_declared_port_changes_protocol_in_place_or_by_swapping_names(d: Driver) -> None:
    d.ok(register("h1", "dns", declared("a", 53), declared("b", 53, protocol="udp")))
    swapped = d.ok(register("h1", "dns", declared("a", 53, protocol="udp"), declared("b", 53)))
    assert sorted((p.name, p.port, p.protocol) for p in swapped.service_register.service.ports) == [
        ("a", 53, UDP),
        ("b", 53, TCP),
    ]
    d.ok(register("h1", "dns", declared("a", 53), declared("b", 54)))
    assert (d.ports.holder("h1", 53, TCP).name, d.ports.holder("h1", 53, UDP)) == ("a", None)  # type: ignore[union-attr]
    reasons = [e.reason for e in d.ports.service_history("dns")[0] if e.name == "a"]
    assert reasons == ["service manifest", "service manifest: tcp -> udp", "service manifest: udp -> tcp"]


def test_udp_assignments_survive_export_import_and_snapshots(d: Driver) -> None:
    d.ok(assign("h1", "dns", 53, name="tcp"))
    d.ok(assign("h1", "dns", 53, name="udp", protocol=UDP))
    d.ok(observe("h1", (53, "dns", UDP)))
    port_map = json_format.Parse(json_format.MessageToJson(d.ports.export_map(d.machine.revision)), ports_pb2.PortMap())
    dst = Driver()
    dst.ok(import_map(port_map))
    assert {k: (a.port, a.protocol) for k, a in dst.ports.assignments.items()} == {
        ("h1", "dns", "tcp"): (53, TCP),
        ("h1", "dns", "udp"): (53, UDP),
    }
    dst.refused(assign("h1", "x", 53, protocol=UDP), FAILED_PRECONDITION, "dns/udp")
    clash = ports_pb2.PortMap()
    clash.CopyFrom(port_map)
    clash.assignments[0].protocol = clash.assignments[1].protocol  # type: ignore[assignment]
    dst.refused(import_map(clash), INVALID, "share port 53")
    replica = StateMachine()
    replica.restore(d.machine.snapshot())
    assert replica.ports.by_port == d.ports.by_port and replica.ports.observed == d.ports.observed


# ------------------------------------------------------------------- stats


def test_stats_per_range_and_host(d: Driver) -> None:
    for service in ("web", "db", "cache"):
        d.ok(allocate("h1", service, range_="a"))
    d.ok(allocate("h2", "web", range_="a"))
    d.ok(reserve(8009))
    d.ok(reserve(8008, host="h1"))
    rows = {(r.range, r.host): r for r in d.ports.stats().ranges}
    h1 = rows[("a", "h1")]
    assert (h1.size, h1.used, h1.reserved, h1.free, h1.utilisation) == (10, 3, 2, 5, round(3 / 8, 4))
    h2 = rows[("a", "h2")]
    assert (h2.size, h2.used, h2.reserved, h2.free) == (10, 1, 1, 8)
    total = rows[("a", "")]
    assert (total.size, total.used, total.reserved, total.free) == (20, 4, 3, 13)
    assert total.utilisation == round(4 / 17, 4)
    b = rows[("b", "h1")]
    assert (b.size, b.used, b.reserved, b.free, b.utilisation) == (5, 0, 0, 5, 0.0)
    only_h1 = d.ports.stats("h1")
    assert {(r.range, r.host) for r in only_h1.ranges} == {("dynamic", "h1"), ("a", "h1"), ("b", "h1")}
    assert (only_h1.assignments, only_h1.reservations, only_h1.hosts) == (3, 2, 1)


# ------------------------------------------------------------------- export and import


def populated() -> Driver:
    d = Driver()
    d.ok(set_range("a", 8000, 8009))
    d.ok(set_range("b", 8010, 8014))
    lease_id = d.ok(grant(60_000)).lease_grant.lease.id
    d.ok(allocate("h1", "web", range_="a"))
    d.ok(allocate("h1", "web", "grpc", range_="b", lease_id=lease_id))
    d.ok(assign("h2", "db", 9000))
    d.ok(reserve(8005, reason="legacy"))
    d.ok(reserve(8006, end_port=8007, host="h2"))
    d.ok(register("h1", "api", declared("http", range_="a"), declared("admin", port=9100)))
    d.ok(register("h3", "idle"))  # a service with no ports
    d.ok(observe("h1", (8000, "web"), (8003, "nginx")))
    return d


def test_export_then_import_reproduces_the_port_map() -> None:
    src = populated()
    port_map = src.ports.export_map(src.machine.revision)
    assert port_map.format == PORT_MAP_FORMAT
    # The backup file is the proto3 JSON form: it must survive the trip.
    port_map = json_format.Parse(json_format.MessageToJson(port_map), ports_pb2.PortMap())
    dst = Driver()
    dst.ok(allocate("h9", "old"))  # replaced wholesale
    imported = dst.ok(import_map(port_map))
    done = imported.ports_import
    assert (done.assignments, done.reservations, done.ranges, done.services, done.leases_dropped) == (5, 3, 3, 2, 1)
    for assignment in src.ports.list_assignments():
        got = dst.ports.assignments[(assignment.host, assignment.service, assignment.name)]
        assert got.port == assignment.port and got.range == assignment.range and got.lease_id == 0
    assert len(dst.ports.assignments) == len(src.ports.assignments)

    def without_revisions(records: Any) -> list[Any]:
        copies = [type(record)() for record in records]
        for copy, record in zip(copies, records, strict=True):
            copy.CopyFrom(record)
            copy.ClearField("revision")
        return copies

    assert without_revisions(dst.ports.list_reservations()) == without_revisions(src.ports.list_reservations())
    assert dst.ports.ranges == src.ports.ranges
    assert [s.manifest for s in dst.ports.list_services()] == [s.manifest for s in src.ports.list_services()]
    assert dst.ports.conflicts() == src.ports.conflicts()
    dst_history, dst_total = dst.ports.service_history("web")
    src_history, src_total = src.ports.service_history("web")
    assert (without_revisions(dst_history), dst_total) == (without_revisions(src_history), src_total)
    # Everything imported carries the import's revision, never the source cluster's (issue 18).
    stamped = {a.create_revision for a in dst.ports.assignments.values()}
    stamped |= {a.mod_revision for a in dst.ports.assignments.values()}
    stamped |= {r.revision for r in dst.ports.list_reservations()} | {e.revision for e in dst_history}
    services = dst.ports.list_services()
    stamped |= {s.create_revision for s in services} | {s.mod_revision for s in services}
    assert stamped == {imported.revision}
    # Every host the map mentions is known, including one with a service and no port.
    assert dst.ok(deregister("h3", "idle")).service_deregister.deregistered
    dst.refused(release("h9", "old"), NOT_FOUND, "host 'h9' is unknown")
    (event,) = dst.machine.events_from(imported.revision, max_events=1)
    assert (event.domain, event.key, event.port.action) == ("ports", "import", ports_pb2.PORT_ACTION_IMPORTED)


def test_a_change_after_an_import_is_seen_by_a_history_poller() -> None:
    """The source cluster's revisions ran ahead of this one's: kept, a poller asking for changes after
    the import's entries would never see a new one (issue 18)."""
    src = populated()  # its revisions run ahead of a fresh cluster's
    port_map = src.ports.export_map(src.machine.revision)
    dst = Driver()
    imported = dst.ok(import_map(port_map))
    seen_up_to = max(entry.revision for entry in dst.ports.service_history("web")[0])
    assert seen_up_to == imported.revision
    dst.ok(release("h1", "web"))
    after, _ = dst.ports.service_history("web", after_revision=seen_up_to)
    assert [entry.action for entry in after] == [ports_pb2.PORT_ACTION_RELEASED]


def test_an_imported_report_is_no_evidence_for_the_leak_repair() -> None:
    src = populated()
    port_map = src.ports.export_map(src.machine.revision)
    dst = Driver()
    dst.ok(import_map(port_map))
    # A port allocated after the import, on a host whose (imported) report predates it.
    dst.ok(allocate("h1", "late", range_="a"))
    assert not dst.ok(repair(1)).ports_repair.suspected
    dst.ok(observe("h1", (8000, "web")))
    assert ("h1", "late", "main") in {(a.host, a.service, a.name) for a in dst.ok(repair(1)).ports_repair.released}


def bad_maps() -> list[tuple[str, ports_pb2.PortMap, str]]:
    good = populated().ports.export_map(1)
    cases = []

    wrong_format = ports_pb2.PortMap()
    wrong_format.CopyFrom(good)
    wrong_format.format = "controlplane.ports/v0"
    cases.append(("wrong format", wrong_format, "controlplane.ports/v1"))

    overlapping = ports_pb2.PortMap()
    overlapping.CopyFrom(good)
    overlapping.ranges.add(name="c", start=8008, end=8012)
    cases.append(("overlapping ranges", overlapping, "overlaps range"))

    duplicate_port = ports_pb2.PortMap()
    duplicate_port.CopyFrom(good)
    twin = duplicate_port.assignments.add()
    twin.CopyFrom(good.assignments[0])
    twin.service = "impostor"
    cases.append(("duplicate port", duplicate_port, "share port 8000"))

    on_reserved = ports_pb2.PortMap()
    on_reserved.CopyFrom(good)
    on_reserved.reservations.add(host="h1", port=good.assignments[0].port)
    cases.append(("assignment on a reserved port", on_reserved, "holds reserved port 8000"))

    wrong_range = ports_pb2.PortMap()
    wrong_range.CopyFrom(good)
    wrong_range.assignments[0].range = "b"
    cases.append(("assignment outside its range", wrong_range, "lies in 'a'"))
    return cases


@pytest.mark.parametrize(("port_map", "fragment"), [case[1:] for case in bad_maps()], ids=[c[0] for c in bad_maps()])
def test_an_invalid_port_map_is_refused_and_changes_nothing(port_map: ports_pb2.PortMap, fragment: str) -> None:
    d = Driver()
    d.ok(allocate("h1", "web"))
    d.refused(import_map(port_map), INVALID, fragment)


# ------------------------------------------------------------------- services


def service_ports(d: Driver, host: str, service: str) -> dict[str, int]:
    return {key[2]: a.port for key, a in d.ports.assignments.items() if key[:2] == (host, service)}


def test_register_allocates_every_declared_port_or_none(d: Driver) -> None:
    d.ok(assign("h1", "db", 8003))
    manifest = (declared("http", range_="a"), declared("admin", port=8003), declared("metrics", port=9100))
    d.refused(register("h1", "web", *manifest), FAILED_PRECONDITION, "cannot register web on h1", "db/main")
    assert service_ports(d, "h1", "web") == {} and ("h1", "web") not in d.ports.services
    d.ok(release("h1", "db"))
    record = d.ok(register("h1", "web", *manifest)).service_register.service
    # Next-fit: the cursor of range a stands after 8003, the last port handed out there.
    assert {a.name: a.port for a in record.ports} == {"http": 8004, "admin": 8003, "metrics": 9100}
    assert service_ports(d, "h1", "web") == {"http": 8004, "admin": 8003, "metrics": 9100}
    assert record.manifest.name == "web" and record.create_revision == record.mod_revision
    # All or nothing also when a range is full.
    for index in range(5):
        d.ok(allocate("h2", f"s{index}", range_="b"))
    d.refused(
        register("h2", "web", declared("http", range_="a"), declared("grpc", range_="b")),
        RESOURCE_EXHAUSTED,
        "range 'b'",
    )
    assert service_ports(d, "h2", "web") == {}


def test_register_fixes_ports_before_allocating_others(d: Driver) -> None:
    # The allocation would take 8000 (the cursor's port) if it were planned first.
    record = d.ok(register("h1", "web", declared("http", range_="a"), declared("admin", port=8000)))
    assert {a.name: a.port for a in record.service_register.service.ports} == {"admin": 8000, "http": 8001}


def test_reregister_keeps_ports_and_releases_undeclared_ones(d: Driver) -> None:
    first = d.ok(
        register("h1", "web", declared("http", range_="a"), declared("admin", range_="a"), declared("m", port=9100))
    )
    created = first.service_register.service.create_revision
    before = service_ports(d, "h1", "web")
    again = d.ok(register("h1", "web", declared("http", range_="a"), declared("grpc", range_="b"))).service_register
    after = service_ports(d, "h1", "web")
    assert after["http"] == before["http"] and after["grpc"] == 8010 and set(after) == {"http", "grpc"}
    assert again.service.create_revision == created < again.service.mod_revision
    released = sorted((e.name, e.reason) for e in d.ports.service_history("web")[0] if e.action == RELEASED)
    assert released == [(name, "no longer declared by the service manifest") for name in ("admin", "m")]


def test_reregister_never_puts_two_ports_on_one(d: Driver) -> None:
    d.ok(register("h1", "web", declared("http", range_="a")))  # http: 8000
    lease_id = d.ok(grant(60_000)).lease_grant.lease.id
    # http stays on 8000 (only its lease changes), so admin cannot have 8000.
    d.refused(
        register("h1", "web", declared("http", range_="a"), declared("admin", port=8000), lease_id=lease_id),
        FAILED_PRECONDITION,
        "port 8000 stays with web/http",
    )
    d.ok(register("h1", "web", declared("http", range_="a"), lease_id=lease_id))
    assert service_ports(d, "h1", "web") == {"http": 8000}
    assert d.ports.by_lease[lease_id] == {("h1", "web", "http"): None}
    # A port that does move away may be taken by another declared name in the same step.
    d.ok(register("h1", "web", declared("http", range_="b"), declared("admin", port=8000), lease_id=lease_id))
    assert service_ports(d, "h1", "web") == {"http": 8010, "admin": 8000}


def test_deregister_releases_the_service_ports(d: Driver) -> None:
    d.ok(register("h1", "web", declared("http", range_="a"), declared("admin", port=9100)))
    gone = d.ok(deregister("h1", "web")).service_deregister
    assert gone.deregistered and sorted(a.name for a in gone.released) == ["admin", "http"]
    assert service_ports(d, "h1", "web") == {} and ("h1", "web") not in d.ports.services
    revision = d.machine.revision
    again = d.ok(deregister("h1", "web"))
    assert not again.service_deregister.deregistered and again.revision == revision


def test_a_service_lease_expiring_releases_its_ports() -> None:
    d = Driver()
    lease_id = d.ok(grant(2_000), at=1_000).lease_grant.lease.id
    d.ok(register("h1", "web", declared("http"), declared("admin", port=9100), lease_id=lease_id), at=1_001)
    assert list(d.ok(expire(lease_id), at=3_000).lease_expire.expired) == [lease_id]
    assert service_ports(d, "h1", "web") == {}


# ------------------------------------------------------------------- cluster restore


def test_a_cluster_restore_carries_the_port_map_and_restarts_lease_ttls() -> None:
    src = populated()
    lease_id = next(iter(src.machine.leases.leases))
    backup = src.machine.snapshot()
    dst = Driver()
    dst.ok(allocate("h9", "old"))
    restored = dst.ok(restore_state(backup), at=500_000)
    assert restored.revision == dst.machine.revision > src.machine.revision
    assert dst.ports.to_state() == src.ports.to_state()
    assert dst.ports.by_lease == src.ports.by_lease
    lease = dst.machine.leases.leases[lease_id]
    assert lease.renewed_unix_ms == 500_000, "every restored lease gets a full TTL from the restore"
    assert list(dst.ok(expire(lease_id), at=559_999).lease_expire.expired) == []
    assert dst.port_of("h1", "web", "grpc") == 8010
    assert list(dst.ok(expire(lease_id), at=560_000).lease_expire.expired) == [lease_id]
    assert dst.port_of("h1", "web", "grpc") is None
    # A backup whose port map is inconsistent is refused whole.
    bad = command_pb2.StateSnapshot.FromString(backup)
    (entry,) = [entry for entry in bad.tables if entry.name == "ports"]
    port_map = ports_pb2.PortsState.FromString(entry.state)
    port_map.ranges.add(name="c", start=8008, end=8012)
    entry.state = port_map.SerializeToString(deterministic=True)
    dst.refused(restore_state(bad.SerializeToString(deterministic=True)), INVALID, "bad port map", "overlaps")


def test_a_restored_replica_answers_like_the_original(d: Driver) -> None:
    """The lookup indexes are rebuilt by restore in another order than they grew; nothing may show it."""
    lease_id = d.ok(grant(5_000), at=10_000).lease_grant.lease.id
    d.ok(allocate("h1", "web", "http", range_="a", lease_id=lease_id), at=10_001)  # 8000
    d.ok(allocate("h1", "web", "admin", range_="a", lease_id=lease_id), at=10_002)  # 8001
    d.ok(reassign("h1", "web", "http", port=8005), at=10_003)  # re-indexed last, stored first
    replica = StateMachine()
    replica.restore(d.machine.snapshot())
    for cmd in (observe("h1", (8007, "web")), expire(lease_id)):
        entry = batch_entry(20_000, "leader-1", [cmd])
        assert d.machine.apply_entry(entry) == replica.apply_entry(entry)
        assert d.machine.snapshot() == replica.snapshot()
    assert d.ports.assignments == {}
