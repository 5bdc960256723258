"""The port domain of the state machine: ranges, reservations, assignments, services, history,
observed ports, conflicts and leak repair.

Pure and deterministic like the rest of the machine (see machine.py): no clock, no I/O, no
iteration over unordered containers where order shows. Every handler validates fully and
*plans* before it changes anything, so a refused command changes nothing, and a multi-step
command (a service registration allocating five ports, a conflict resolution moving three
services) is all or nothing.

The allocator's rules, in priority order:

* a (host, port, protocol) is held by at most one assignment, and (host, service, name) names at
  most one: TCP and UDP are separate, so 53/tcp and 53/udp may go to different assignments;
* a reserved port (on the host, or on every host) is never allocated or assigned, in either protocol;
* an allocation lies inside its range; a port observed bound on the host is skipped;
* within a range, allocation is next-fit from a per-(host, range) cursor, so a port just
  released is not handed straight to someone else while its old holder may still be draining;
* leaks are freed only after several repair passes in a row saw them on fresh host reports
  (the Kubernetes allocator's rule: better to leak than to double-allocate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from controlplane.state import health, levels, limits
from controlplane.state.journal import Journal
from controlplane.state.refusal import Handler, Refused, refusing
from controlplane.state.refusal import check as _check
from controlplane.state.refusal import invalid as _invalid
from controlplane.state.refusal import not_found as _not_found
from controlplane.state.refusal import precondition as _precondition
from controlplane.state.tables import BackupSource
from controlplane.v1 import command_pb2, common_pb2, ports_pb2, watch_pb2

DOMAIN_PORTS = "ports"
DEFAULT_RANGE = "dynamic"
DEFAULT_RANGE_START = 20000
DEFAULT_RANGE_END = 32000
DEFAULT_PORT_NAME = "main"
PORT_HISTORY_LIMIT = 1000
DEFAULT_REPAIR_PASSES = 3
PORT_MAP_FORMAT = "controlplane.ports/v1"

Action = ports_pb2.PortAction
CommandResult = command_pb2.CommandResult
AssignmentKey = tuple[str, str, str]  # (host, service, name)
TCP = ports_pb2.PORT_PROTOCOL_TCP
UDP = ports_pb2.PORT_PROTOCOL_UDP
#: (port, protocol): what one assignment holds on its host, and what an observation saw bound.
Slot = tuple[int, int]
LeakKey = tuple[str, int, int]  # (host, port, protocol)
#: (assignment, (port, protocol), range, action, reason) per declared port
PlannedPort = tuple[AssignmentKey, Slot, str, ports_pb2.PortAction, str]


class ServicePlan(NamedTuple):
    """What a registration will do: the declared ports' moves, and the ports no longer declared."""

    ports: list[PlannedPort]
    stale: list[AssignmentKey]


@dataclass(frozen=True)
class NodeOffer:
    """A live node as placement sees it: what its agent consents to, and what it has."""

    node_id: str
    #: "active", or why placement passes it over: "joining", "leaving".
    state: str
    capabilities: tuple[str, ...]
    gpus: int
    memory_mb: int
    cpu_millis: int


def protocol_name(protocol: int) -> str:
    return "udp" if protocol == UDP else "tcp"


def port_label(port: int, protocol: int) -> str:
    """A port as messages name it: ``53`` for TCP (as before UDP ports existed), ``53/udp`` for UDP."""
    return f"{port}/udp" if protocol == UDP else str(port)


def manifest_protocol(text: str, level: int) -> int:
    """A declared port's protocol at cluster ``level``: UDP for "udp" in any case, TCP for anything
    else (manifests name application protocols there: "http", "grpc"), and TCP for everything
    below levels.UDP_PORTS, where the text had no meaning."""
    return UDP if level >= levels.UDP_PORTS and text.strip().lower() == "udp" else TCP


def check_protocol(protocol: int) -> None:
    if protocol not in (TCP, UDP):
        raise _invalid(f"protocol {protocol} is neither tcp ({TCP}) nor udp ({UDP})")


def default_ranges() -> dict[str, ports_pb2.PortRange]:
    return {
        DEFAULT_RANGE: ports_pb2.PortRange(
            name=DEFAULT_RANGE,
            start=DEFAULT_RANGE_START,
            end=DEFAULT_RANGE_END,
            description="default range for allocations that name none",
        )
    }


def describe(assignment: ports_pb2.PortAssignment) -> str:
    where = port_label(assignment.port, assignment.protocol)
    return f"{assignment.service}/{assignment.name} on {assignment.host}:{where}"


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


class ServiceHooks:
    """What service health and runs need from the other tables: ttl checks are leases (renewed
    without a log write, expired by the leader like any other); an exec check and a run need the
    consent of the host's live agent (its capabilities)."""

    def __init__(
        self,
        grant: Callable[[int], int],
        renew: Callable[[int], object],
        end: Callable[[int, str], object],
        capabilities: Callable[[str], tuple[str, ...] | None],
        node_gone: Callable[[str], bool] = lambda host: False,
        live_nodes: Callable[[], list[NodeOffer]] = list,
    ) -> None:
        self.grant = grant  # ttl in ms -> a new lease's id
        self.renew = renew
        self.end = end
        self.capabilities = capabilities  # host -> its live node's capabilities (None: no live node)
        self.node_gone = node_gone  # host -> whether it names a node that is dead or left
        self.live_nodes = live_nodes  # every live node, by id (placement's candidates)

    def exec_allowed(self, host: str) -> bool:
        return health.EXEC_CAPABILITY in (self.capabilities(host) or ())


def _port_map(state: ports_pb2.PortsState, revision: int = 0) -> ports_pb2.PortMap:
    """The port-map document (export, import) of a table's state: what a user may hand-edit."""
    return ports_pb2.PortMap(
        format=PORT_MAP_FORMAT,
        revision=revision,
        ranges=state.ranges,
        reservations=state.reservations,
        assignments=state.assignments,
        services=state.services,
        history=state.history,
        observations=state.observations,
    )


class PortTable:
    name: ClassVar[str] = "ports"
    state_type: ClassVar[type[ports_pb2.PortsState]] = ports_pb2.PortsState
    backup_noun: ClassVar[str] = "a bad port map"

    def __init__(
        self,
        journal: Journal,
        lease_exists: Callable[[int], bool],
        hooks: ServiceHooks | None = None,
    ) -> None:
        self._journal = journal
        self._lease_exists = lease_exists
        self._hooks = hooks
        self.reset()

    def reset(self) -> None:
        self.ranges: dict[str, ports_pb2.PortRange] = default_ranges()
        self.assignments: dict[AssignmentKey, ports_pb2.PortAssignment] = {}
        self.by_port: dict[str, dict[Slot, AssignmentKey]] = {}
        self.by_lease: dict[int, dict[AssignmentKey, None]] = {}
        self.reserved_global: dict[int, ports_pb2.Reservation] = {}
        self.reserved_host: dict[str, dict[int, ports_pb2.Reservation]] = {}
        self.services: dict[tuple[str, str], ports_pb2.ServiceRecord] = {}
        self.history: dict[str, list[ports_pb2.PortHistoryEntry]] = {}
        self.history_totals: dict[str, int] = {}
        self.observations: dict[str, ports_pb2.HostObservation] = {}
        self.observed: dict[str, dict[Slot, ports_pb2.ObservedPort]] = {}
        self.leaks: dict[LeakKey, ports_pb2.LeakCount] = {}
        self.cursors: dict[tuple[str, str], int] = {}
        self.hosts: dict[str, None] = {}
        # ttl lease id -> the instance whose passing ttl report it holds (derived from the records).
        self.ttl_leases: dict[int, tuple[str, str]] = {}

    # ------------------------------------------------------------------ dispatch

    def handlers(self) -> dict[str, Callable[[command_pb2.Command], CommandResult]]:
        def wrap(handler: Handler) -> Handler:
            def at_level(command: command_pb2.Command) -> CommandResult:
                # Below UDP_PORTS, as the releases before it: without its PortProtocol fields.
                return handler(levels.as_applied_at(command, self._journal.cluster_level))

            return refusing(lambda: self._journal.revision, at_level)

        return {
            "ports_allocate": wrap(lambda c: self.allocate(c.ports_allocate)),
            "ports_assign": wrap(lambda c: self.assign(c.ports_assign)),
            "ports_release": wrap(lambda c: self.release(c.ports_release)),
            "ports_reassign": wrap(lambda c: self.reassign(c.ports_reassign)),
            "ports_reserve": wrap(lambda c: self.reserve(c.ports_reserve)),
            "ports_unreserve": wrap(lambda c: self.unreserve(c.ports_unreserve)),
            "ports_set_range": wrap(lambda c: self.set_range(c.ports_set_range)),
            "ports_delete_range": wrap(lambda c: self.delete_range(c.ports_delete_range)),
            "ports_observe": wrap(lambda c: self.observe(c.ports_observe)),
            "ports_resolve": wrap(lambda c: self.resolve(c.ports_resolve)),
            "ports_repair": wrap(lambda c: self.repair(c.ports_repair)),
            "ports_import": wrap(lambda c: self.import_map(c.ports_import)),
            "service_register": wrap(lambda c: self.register_service(c.service_register)),
            "service_deregister": wrap(lambda c: self.deregister_service(c.service_deregister)),
            "service_health": wrap(lambda c: self.report_health(c.service_health)),
            "service_reap": wrap(lambda c: self.reap_critical(c.service_reap)),
            "service_start": wrap(lambda c: self.start_service(c.service_start)),
            "service_stop": wrap(lambda c: self.stop_service(c.service_stop)),
            "service_run_report": wrap(lambda c: self.report_run(c.service_run_report)),
        }

    # ------------------------------------------------------------------ lookups

    def known_host(self, host: str) -> None:
        _check(limits.check_host(host))
        if host not in self.hosts:
            raise _not_found(
                f"host {host!r} is unknown: no port was ever assigned, reserved or observed there"
                + (f" (known hosts: {', '.join(sorted(self.hosts)[:10])})" if self.hosts else "")
            )

    def range_named(self, name: str) -> ports_pb2.PortRange:
        _check(limits.check_name(name, "range"))
        found = self.ranges.get(name)
        if found is None:
            raise _not_found(f"no port range {name!r}; ranges: {', '.join(self._range_names()) or 'none'}")
        return found

    def _range_names(self) -> list[str]:
        return [f"{r.name} {r.start}-{r.end}" for r in sorted(self.ranges.values(), key=lambda r: r.start)]

    def range_of(self, port: int) -> str:
        for candidate in self.ranges.values():
            if candidate.start <= port <= candidate.end:
                return candidate.name
        return ""

    def holder(self, host: str, port: int, protocol: int = TCP) -> ports_pb2.PortAssignment | None:
        key = self.by_port.get(host, {}).get((port, protocol))
        return self.assignments[key] if key is not None else None

    def reservation(self, host: str, port: int) -> ports_pb2.Reservation | None:
        return self.reserved_global.get(port) or self.reserved_host.get(host, {}).get(port)

    def _why_taken(
        self, host: str, port: int, service: str, taken: dict[Slot, str] | None = None, protocol: int = TCP
    ) -> str | None:
        """Why (host, port, protocol) cannot go to ``service``, or None if it can."""
        label = port_label(port, protocol)
        if taken and (port, protocol) in taken:
            return f"port {label} on {host} is planned for {taken[(port, protocol)]} in the same request"
        held = self.holder(host, port, protocol)
        if held is not None:
            return f"port {label} on {host} is assigned to {held.service}/{held.name}"
        reserved = self.reservation(host, port)
        if reserved is not None:
            where = "on every host" if not reserved.host else f"on {host}"
            return f"port {port} is reserved {where}" + (f" ({reserved.reason})" if reserved.reason else "")
        return None

    def _observed_by_other(self, host: str, port: int, service: str, protocol: int = TCP) -> str | None:
        seen = self.observed.get(host, {}).get((port, protocol))
        if seen is not None and seen.holder != service:
            who = seen.holder or "an unknown process"
            return f"port {port_label(port, protocol)} on {host} was observed bound by {who}"
        return None

    def find_free(
        self,
        host: str,
        range_: ports_pb2.PortRange,
        start_at: int = 0,
        taken: dict[Slot, str] | None = None,
        avoid: int = 0,
        protocol: int = TCP,
    ) -> int | None:
        """The first port free for ``protocol`` at or after ``start_at`` (default: the next-fit
        cursor, which the two protocols share), wrapping."""
        start = start_at or self.cursors.get((host, range_.name), range_.start)
        if not range_.start <= start <= range_.end:
            start = range_.start
        used = self.by_port.get(host, {})
        reserved = self.reserved_host.get(host, {})
        observed = self.observed.get(host, {})
        for port in _wrapping(start, range_.start, range_.end):
            if (
                (port, protocol) not in used
                and port not in self.reserved_global
                and port not in reserved
                and (port, protocol) not in observed
                and port != avoid
                and (not taken or (port, protocol) not in taken)
            ):
                return port
        return None

    def _exhausted(self, host: str, range_: ports_pb2.PortRange, protocol: int = TCP) -> Refused:
        used = sum(
            1 for port, held in self.by_port.get(host, {}) if held == protocol and range_.start <= port <= range_.end
        )
        return Refused(
            common_pb2.ERROR_CODE_RESOURCE_EXHAUSTED,
            f"port range {range_.name!r} ({range_.start}-{range_.end}) has no free "
            f"{'udp ' if protocol == UDP else ''}port on {host}: "
            f"{used} assigned, the rest reserved or observed in use; release ports or widen the range",
        )

    def _check_lease(self, lease_id: int) -> None:
        if lease_id < 0:
            raise _invalid(f"lease id {lease_id} is negative")
        if lease_id and not self._lease_exists(lease_id):
            raise _not_found(f"lease {lease_id} does not exist (expired or revoked?); grant a new one")

    # ------------------------------------------------------------------ changing assignments

    def _put(
        self,
        key: AssignmentKey,
        port: int,
        range_name: str,
        lease_id: int,
        action: ports_pb2.PortAction,
        reason: str = "",
        *,
        protocol: int,
    ) -> ports_pb2.PortAssignment:
        """Create or move one assignment: the only place ``assignments`` gains or changes an entry."""
        host, service, name = key
        prev = self.assignments.get(key)
        revision = self._journal.revision + 1
        now = self._journal.time_unix_ms
        assignment = ports_pb2.PortAssignment(
            host=host,
            service=service,
            name=name,
            port=port,
            range=range_name,
            lease_id=lease_id,
            create_revision=prev.create_revision if prev is not None else revision,
            mod_revision=revision,
            created_unix_ms=prev.created_unix_ms if prev is not None else now,
            updated_unix_ms=now,
            protocol=protocol,  # type: ignore[arg-type]
        )
        if prev is not None:
            self._unindex(prev)
        self.assignments[key] = assignment
        self.by_port.setdefault(host, {})[(port, protocol)] = key
        if lease_id:
            self.by_lease.setdefault(lease_id, {})[key] = None
        self.hosts.setdefault(host, None)
        self.leaks.pop((host, port, protocol), None)
        if range_name:
            next_port = port + 1
            bounds = self.ranges[range_name]
            self.cursors[(host, range_name)] = next_port if next_port <= bounds.end else bounds.start
        self._event(action, assignment, prev, reason)
        return assignment

    def _drop(self, key: AssignmentKey, action: ports_pb2.PortAction, reason: str = "") -> ports_pb2.PortAssignment:
        prev = self.assignments.pop(key)
        self._unindex(prev)
        self._event(action, None, prev, reason)
        return prev

    def _unindex(self, assignment: ports_pb2.PortAssignment) -> None:
        """Take an assignment out of the indexes. Safe to repeat: during a multi-move command its
        old port may already belong to another assignment, which must keep it."""
        key = (assignment.host, assignment.service, assignment.name)
        slot = (assignment.port, assignment.protocol)
        host_ports = self.by_port.get(assignment.host)
        if host_ports is not None and host_ports.get(slot) == key:
            del host_ports[slot]
            self.leaks.pop((assignment.host, *slot), None)
            if not host_ports:
                del self.by_port[assignment.host]
        if assignment.lease_id:
            held = self.by_lease.get(assignment.lease_id)
            if held is not None:
                held.pop(key, None)
                if not held:
                    del self.by_lease[assignment.lease_id]

    def _event(
        self,
        action: ports_pb2.PortAction,
        assignment: ports_pb2.PortAssignment | None,
        prev: ports_pb2.PortAssignment | None,
        reason: str,
    ) -> None:
        some = assignment if assignment is not None else prev
        assert some is not None
        event = ports_pb2.PortEvent(
            action=action,
            host=some.host,
            service=some.service,
            name=some.name,
            old_port=prev.port if prev is not None else 0,
            new_port=assignment.port if assignment is not None else 0,
            reason=reason,
        )
        if assignment is not None:
            event.assignment.CopyFrom(assignment)
        if prev is not None:
            event.prev_assignment.CopyFrom(prev)
        event_type = watch_pb2.EVENT_TYPE_PUT if assignment is not None else watch_pb2.EVENT_TYPE_DELETE
        revision = self._journal.record_detail(
            DOMAIN_PORTS, f"assignments/{some.host}/{some.service}/{some.name}", event_type, event
        )
        self._remember(
            some.service,
            ports_pb2.PortHistoryEntry(
                revision=revision,
                time_unix_ms=self._journal.time_unix_ms,
                action=action,
                host=some.host,
                service=some.service,
                name=some.name,
                old_port=event.old_port,
                new_port=event.new_port,
                reason=reason,
                protocol=some.protocol,
            ),
        )

    def _remember(self, service: str, entry: ports_pb2.PortHistoryEntry) -> None:
        entries = self.history.setdefault(service, [])
        entries.append(entry)
        if len(entries) > PORT_HISTORY_LIMIT:
            del entries[: len(entries) - PORT_HISTORY_LIMIT]
        self.history_totals[service] = self.history_totals.get(service, 0) + 1

    def _note(self, action: ports_pb2.PortAction, key: str, event_type: watch_pb2.EventType, **fields: object) -> int:
        """An event for a change that is not an assignment (ranges, reservations, reports)."""
        return self._journal.record_detail(
            DOMAIN_PORTS,
            key,
            event_type,
            ports_pb2.PortEvent(action=action, **fields),  # type: ignore[arg-type]
        )

    def release_lease(self, lease_id: int, reason: str) -> int:
        """Free every assignment held by a lease (it expired or was revoked); how many. A ttl check's
        lease ending turns its instance critical."""
        instance = self.ttl_leases.pop(lease_id, None)
        if instance is not None and instance in self.services:
            check = self.services[instance].manifest.health_check
            self._set_health(
                *instance, health.CRITICAL, f"ttl expired: no passing report within {check.ttl_s}s", ttl_lease_id=0
            )
        # Sorted: the index's order is not part of the snapshot, and the revisions must not depend on it.
        held = sorted(self.by_lease.get(lease_id, {}))
        for key in held:
            self._drop(key, Action.PORT_ACTION_EXPIRED, reason)
        return len(held)

    # ------------------------------------------------------------------ allocate / assign / release

    def _assignment_key(self, host: str, service: str, name: str) -> AssignmentKey:
        _check(limits.check_host(host) or limits.check_name(service, "service"))
        name = name or DEFAULT_PORT_NAME
        _check(limits.check_name(name, "port name"))
        return host, service, name

    def _result(self, **body: object) -> CommandResult:
        return CommandResult(revision=self._journal.revision, **body)  # type: ignore[arg-type]

    def allocate(self, request: ports_pb2.AllocateRequest) -> CommandResult:
        key = self._assignment_key(request.host, request.service, request.name)
        host = key[0]
        check_protocol(request.protocol)
        if request.preferred_port:
            _check(limits.check_port(request.preferred_port, "preferred port"))
        range_name = request.range
        if not range_name and request.preferred_port:
            range_name = self.range_of(request.preferred_port)
            if not range_name:
                raise _invalid(f"preferred port {request.preferred_port} lies in no range; use assign for a fixed port")
        range_ = self.range_named(range_name or DEFAULT_RANGE)
        if request.preferred_port and not range_.start <= request.preferred_port <= range_.end:
            raise _invalid(
                f"preferred port {request.preferred_port} is outside range {range_.name!r} "
                f"({range_.start}-{range_.end})"
            )
        self._check_lease(request.lease_id)
        existing = self.assignments.get(key)
        if existing is not None:
            self._same_protocol(existing, request.protocol)
            return self._result(ports_allocate=ports_pb2.AllocateResponse(assignment=existing, existing=True))
        port = self.find_free(host, range_, request.preferred_port, protocol=request.protocol)
        if port is None:
            raise self._exhausted(host, range_, request.protocol)
        assignment = self._put(
            key, port, range_.name, request.lease_id, Action.PORT_ACTION_ALLOCATED, protocol=request.protocol
        )
        return self._result(ports_allocate=ports_pb2.AllocateResponse(assignment=assignment))

    @staticmethod
    def _same_protocol(existing: ports_pb2.PortAssignment, protocol: int) -> None:
        """An assignment asked for again must be asked for in its own protocol (a retry is)."""
        if existing.protocol != protocol:
            raise _precondition(
                f"{describe(existing)} already holds a {protocol_name(existing.protocol)} port; release it first "
                f"to give {existing.service}/{existing.name} a {protocol_name(protocol)} one, or use another name"
            )

    def assign(self, request: ports_pb2.AssignRequest) -> CommandResult:
        key = self._assignment_key(request.host, request.service, request.name)
        _check(limits.check_port(request.port))
        check_protocol(request.protocol)
        self._check_lease(request.lease_id)
        existing = self.assignments.get(key)
        if existing is not None:
            self._same_protocol(existing, request.protocol)
            if existing.port == request.port:
                return self._result(ports_assign=ports_pb2.AssignResponse(assignment=existing, existing=True))
            raise _precondition(f"{describe(existing)} already holds port {existing.port}; use reassign to move it")
        problem = self._why_taken(key[0], request.port, key[1], protocol=request.protocol)
        if problem is None and not request.force:
            problem = self._observed_by_other(key[0], request.port, key[1], request.protocol)
            if problem:
                problem += " (pass force to assign it anyway)"
        if problem:
            raise _precondition(problem)
        assignment = self._put(
            key,
            request.port,
            self.range_of(request.port),
            request.lease_id,
            Action.PORT_ACTION_ASSIGNED,
            protocol=request.protocol,
        )
        return self._result(ports_assign=ports_pb2.AssignResponse(assignment=assignment))

    def release(self, request: ports_pb2.ReleaseRequest) -> CommandResult:
        self.known_host(request.host)
        if request.port:
            _check(limits.check_port(request.port))
        check_protocol(request.protocol)
        key: AssignmentKey | None
        if request.service:
            key = self._assignment_key(request.host, request.service, request.name)
            current = self.assignments.get(key)
            if (
                current is not None
                and request.port
                and (current.port, current.protocol)
                != (
                    request.port,
                    request.protocol,
                )
            ):
                raise _precondition(
                    f"{describe(current)}: it holds port {port_label(current.port, current.protocol)}, "
                    f"not {port_label(request.port, request.protocol)}"
                )
        elif request.port:
            key = self.by_port.get(request.host, {}).get((request.port, request.protocol))
        else:
            raise _invalid("name the assignment to release: a service (and port name), or a port")
        if key is None or key not in self.assignments:
            return self._result(ports_release=ports_pb2.ReleaseResponse(released=False))
        prev = self._drop(key, Action.PORT_ACTION_RELEASED)
        return self._result(ports_release=ports_pb2.ReleaseResponse(released=True, assignment=prev))

    def reassign(self, request: ports_pb2.ReassignRequest) -> CommandResult:
        self.known_host(request.host)
        key = self._assignment_key(request.host, request.service, request.name)
        _check(limits.check_text(request.reason, "reason"))
        current = self.assignments.get(key)
        if current is None:
            raise _not_found(f"{key[1]}/{key[2]} has no port on {key[0]}; allocate one first")
        if request.range:
            range_: ports_pb2.PortRange | None = self.range_named(request.range)
        elif current.range:
            range_ = self.ranges[current.range]
        else:
            range_ = None
        if request.port:
            _check(limits.check_port(request.port))
            if request.port == current.port:
                return self._result(
                    ports_reassign=ports_pb2.ReassignResponse(assignment=current, old_port=current.port)
                )
            if range_ is not None and request.range and not range_.start <= request.port <= range_.end:
                raise _invalid(f"port {request.port} is outside range {range_.name!r} ({range_.start}-{range_.end})")
            problem = self._why_taken(key[0], request.port, key[1], protocol=current.protocol) or (
                self._observed_by_other(key[0], request.port, key[1], current.protocol)
            )
            if problem:
                raise _precondition(problem)
            port = request.port
        else:
            if range_ is None:
                raise _invalid(f"{describe(current)} lies in no range: give a port or a range to move it to")
            found = self.find_free(key[0], range_, avoid=current.port, protocol=current.protocol)
            if found is None:
                raise self._exhausted(key[0], range_, current.protocol)
            port = found
        moved = self._put(
            key,
            port,
            self.range_of(port),
            current.lease_id,
            Action.PORT_ACTION_REASSIGNED,
            request.reason,
            protocol=current.protocol,
        )
        return self._result(ports_reassign=ports_pb2.ReassignResponse(assignment=moved, old_port=current.port))

    # ------------------------------------------------------------------ reservations

    def _reserve_span(self, port: int, end_port: int) -> tuple[int, int]:
        _check(limits.check_port(port))
        last = end_port or port
        _check(limits.check_port(last, "end port"))
        if last < port:
            raise _invalid(f"end port {last} is below port {port}")
        if last - port + 1 > limits.MAX_RESERVE_SPAN:
            raise _invalid(f"at most {limits.MAX_RESERVE_SPAN} ports per call; {port}-{last} is {last - port + 1}")
        return port, last

    def reserve(self, request: ports_pb2.ReserveRequest) -> CommandResult:
        if request.host:
            _check(limits.check_host(request.host))
        _check(limits.check_text(request.reason, "reason"))
        first, last = self._reserve_span(request.port, request.end_port)
        hosts = [request.host] if request.host else sorted(self.by_port)
        for port in range(first, last + 1):
            for host in hosts:
                held = self.holder(host, port, TCP) or self.holder(host, port, UDP)  # a reservation keeps both
                if held is not None:
                    raise _precondition(
                        f"port {port_label(port, held.protocol)} on {host} is in use by {held.service}/{held.name}; "
                        "release or reassign it first"
                    )
        table = self.reserved_host.setdefault(request.host, {}) if request.host else self.reserved_global
        fresh = [port for port in range(first, last + 1) if port not in table]
        if not fresh:
            return self._result(
                ports_reserve=ports_pb2.ReserveResponse(reservations=[table[p] for p in range(first, last + 1)])
            )
        revision = self._note(
            Action.PORT_ACTION_RESERVED,
            f"reservations/{request.host or '*'}/{_span(first, last)}",
            watch_pb2.EVENT_TYPE_PUT,
            host=request.host,
            new_port=first,
            reason=request.reason,
        )
        for port in fresh:
            table[port] = ports_pb2.Reservation(host=request.host, port=port, reason=request.reason, revision=revision)
        if request.host:
            self.hosts.setdefault(request.host, None)
        return CommandResult(
            revision=revision,
            ports_reserve=ports_pb2.ReserveResponse(reservations=[table[p] for p in range(first, last + 1)]),
        )

    def unreserve(self, request: ports_pb2.UnreserveRequest) -> CommandResult:
        if request.host:
            _check(limits.check_host(request.host))
        first, last = self._reserve_span(request.port, request.end_port)
        table = self.reserved_host.get(request.host, {}) if request.host else self.reserved_global
        gone = [port for port in range(first, last + 1) if port in table]
        if not gone:
            return self._result(ports_unreserve=ports_pb2.UnreserveResponse(removed=0))
        for port in gone:
            del table[port]
        if request.host and not table:
            self.reserved_host.pop(request.host, None)
        revision = self._note(
            Action.PORT_ACTION_UNRESERVED,
            f"reservations/{request.host or '*'}/{_span(first, last)}",
            watch_pb2.EVENT_TYPE_DELETE,
            host=request.host,
            old_port=first,
        )
        return CommandResult(revision=revision, ports_unreserve=ports_pb2.UnreserveResponse(removed=len(gone)))

    # ------------------------------------------------------------------ ranges

    def check_range(self, range_: ports_pb2.PortRange, others: Iterable[ports_pb2.PortRange]) -> None:
        _check(
            limits.check_name(range_.name, "range name")
            or limits.check_port(range_.start, "range start")
            or limits.check_port(range_.end, "range end")
            or limits.check_text(range_.description, "description")
        )
        if range_.end < range_.start:
            raise _invalid(f"range {range_.name!r} ends ({range_.end}) before it starts ({range_.start})")
        for other in others:
            if other.name != range_.name and other.start <= range_.end and range_.start <= other.end:
                raise _invalid(
                    f"range {range_.name!r} ({range_.start}-{range_.end}) overlaps range {other.name!r} "
                    f"({other.start}-{other.end}); ranges may not overlap"
                )

    def set_range(self, request: ports_pb2.SetRangeRequest) -> CommandResult:
        new = request.range
        self.check_range(new, self.ranges.values())
        prev = self.ranges.get(new.name)
        if prev is not None and prev == new:
            return self._result(ports_set_range=ports_pb2.SetRangeResponse(range=prev))
        outside = [a for a in self.assignments.values() if a.range == new.name and not new.start <= a.port <= new.end]
        if outside:
            names = ", ".join(describe(a) for a in outside[:5])
            raise _precondition(
                f"{len(outside)} assignment(s) of range {new.name!r} would fall outside {new.start}-{new.end} "
                f"({names}); reassign them first"
            )
        revision = self._note(
            Action.PORT_ACTION_RANGE_SET,
            f"ranges/{new.name}",
            watch_pb2.EVENT_TYPE_PUT,
            new_port=new.start,
            reason=f"{new.start}-{new.end}",
        )
        stored = ports_pb2.PortRange()
        stored.CopyFrom(new)
        self.ranges[new.name] = stored
        # Explicit assignments that now fall inside the range become part of it (this revision's change).
        for key, assignment in list(self.assignments.items()):
            if not assignment.range and new.start <= assignment.port <= new.end:
                adopted = ports_pb2.PortAssignment()
                adopted.CopyFrom(assignment)
                adopted.range, adopted.mod_revision = new.name, revision
                self.assignments[key] = adopted
        return CommandResult(revision=revision, ports_set_range=ports_pb2.SetRangeResponse(range=stored))

    def delete_range(self, request: ports_pb2.DeleteRangeRequest) -> CommandResult:
        _check(limits.check_name(request.name, "range name"))
        if request.name not in self.ranges:
            return self._result(ports_delete_range=ports_pb2.DeleteRangeResponse(deleted=False))
        inside = [a for a in self.assignments.values() if a.range == request.name]
        if inside:
            names = ", ".join(describe(a) for a in inside[:5])
            raise _precondition(
                f"range {request.name!r} still has {len(inside)} assignment(s) ({names}); release or reassign them"
            )
        del self.ranges[request.name]
        for cursor in [c for c in self.cursors if c[1] == request.name]:
            del self.cursors[cursor]
        revision = self._note(Action.PORT_ACTION_RANGE_DELETED, f"ranges/{request.name}", watch_pb2.EVENT_TYPE_DELETE)
        return CommandResult(revision=revision, ports_delete_range=ports_pb2.DeleteRangeResponse(deleted=True))

    # ------------------------------------------------------------------ observed ports and conflicts

    def observe(self, request: ports_pb2.ReportObservedRequest) -> CommandResult:
        _check(limits.check_host(request.host))
        if len(request.ports) > limits.MAX_OBSERVED_PORTS:
            raise _invalid(f"at most {limits.MAX_OBSERVED_PORTS} observed ports per report")
        seen: dict[Slot, ports_pb2.ObservedPort] = {}
        for observed in request.ports:
            _check(limits.check_port(observed.port, "observed port") or limits.check_text(observed.holder, "holder"))
            check_protocol(observed.protocol)
            slot = (observed.port, observed.protocol)
            if slot in seen:
                raise _invalid(f"port {port_label(*slot)} appears twice in the report")
            seen[slot] = observed
        revision = self._journal.revision + 1
        for protocol in request.complete_for:
            check_protocol(protocol)
        report = ports_pb2.HostObservation(
            host=request.host,
            reported_unix_ms=self._journal.time_unix_ms,
            revision=revision,
            complete_for=sorted(set(request.complete_for)),
        )
        report.ports.extend(seen[slot] for slot in sorted(seen))
        self.observations[request.host] = report
        self.observed[request.host] = {(o.port, o.protocol): o for o in report.ports}
        self.hosts.setdefault(request.host, None)
        self._note(
            Action.PORT_ACTION_OBSERVED,
            f"observed/{request.host}",
            watch_pb2.EVENT_TYPE_PUT,
            host=request.host,
            reason=f"{len(report.ports)} ports bound",
        )
        return CommandResult(
            revision=revision,
            ports_observe=ports_pb2.ReportObservedResponse(conflicts=self.conflicts(request.host)),
        )

    def conflicts(self, host: str = "") -> list[ports_pb2.Conflict]:
        found: list[ports_pb2.Conflict] = []
        hosts = [host] if host else sorted(self.observed)
        for name in hosts:
            bound = self.observed.get(name, {})
            services_here: dict[str, list[ports_pb2.PortAssignment]] = {}
            for key in self.by_port.get(name, {}).values():
                assignment = self.assignments[key]
                services_here.setdefault(assignment.service, []).append(assignment)
            for port, protocol in sorted(bound):
                label = port_label(port, protocol)
                holder = bound[(port, protocol)].holder
                assigned = self.holder(name, port, protocol)
                if assigned is not None and holder and holder != assigned.service:
                    found.append(
                        ports_pb2.Conflict(
                            kind=ports_pb2.CONFLICT_KIND_WRONG_HOLDER,
                            host=name,
                            port=port,
                            assignment=assigned,
                            observed_holder=holder,
                            description=f"port {label} on {name} is assigned to {assigned.service}/{assigned.name} "
                            f"but bound by {holder}",
                            protocol=protocol,  # type: ignore[arg-type]
                        )
                    )
                # Misplaced only if one of its ports here (of the same protocol: a move never
                # changes one) is not bound by it: a service bound to its own port and to another one
                # gains nothing from a move (and resolving would swap its assignment between the two
                # ports for ever).
                astray = [
                    a
                    for a in services_here.get(holder, [])
                    if a.protocol == protocol
                    and ((a.port, protocol) not in bound or bound[(a.port, protocol)].holder not in (holder, ""))
                ]
                if astray and (assigned is None or assigned.service != holder):
                    own = sorted(astray, key=lambda a: ((a.port, protocol) in bound, a.name))[0]
                    held = sorted((a.port, a.protocol) for a in services_here[holder])
                    found.append(
                        ports_pb2.Conflict(
                            kind=ports_pb2.CONFLICT_KIND_MISPLACED,
                            host=name,
                            port=port,
                            assignment=own,
                            observed_holder=holder,
                            description=f"{holder} is bound to port {label} on {name}, but its assigned "
                            f"port{'s are' if len(held) > 1 else ' is'} "
                            f"{', '.join(port_label(*slot) for slot in held)}",
                            protocol=protocol,  # type: ignore[arg-type]
                        )
                    )
                elif assigned is None and self.range_of(port) and self.reservation(name, port) is None:
                    who = holder or "an unknown process"
                    found.append(
                        ports_pb2.Conflict(
                            kind=ports_pb2.CONFLICT_KIND_UNASSIGNED_BOUND,
                            host=name,
                            port=port,
                            observed_holder=holder,
                            description=f"port {label} on {name} lies in range {self.range_of(port)!r} and is "
                            f"bound by {who}, but nobody was assigned it",
                            protocol=protocol,  # type: ignore[arg-type]
                        )
                    )
        return found

    def plan_resolution(self, host: str = "") -> tuple[list[ports_pb2.PortMove], list[ports_pb2.Conflict]]:
        """The moves ResolveConflicts would make now, and the conflicts no move can fix.

        Pure: it reads the state and changes nothing (a dry run shows exactly what would apply).
        An assignment whose port is bound by someone else must leave it. A service observed bound
        to a port other than its own adopts that port when it is free or being vacated (reality
        wins); every other assignment that must leave goes to the next free port of its range.
        """
        conflicts = self.conflicts(host)
        must_leave: dict[AssignmentKey, ports_pb2.Conflict] = {}
        for conflict in conflicts:
            if conflict.kind == ports_pb2.CONFLICT_KIND_WRONG_HOLDER:
                a = conflict.assignment
                must_leave.setdefault((a.host, a.service, a.name), conflict)
        moves: list[ports_pb2.PortMove] = []
        unresolved: list[ports_pb2.Conflict] = []
        planned: dict[str, dict[Slot, str]] = {}  # per host: ports this plan hands out
        moved: set[AssignmentKey] = set()

        def plan(a: ports_pb2.PortAssignment, port: int, reason: str) -> None:
            planned.setdefault(a.host, {})[(port, a.protocol)] = f"{a.service}/{a.name}"
            moved.add((a.host, a.service, a.name))
            moves.append(
                ports_pb2.PortMove(
                    host=a.host,
                    service=a.service,
                    name=a.name,
                    old_port=a.port,
                    new_port=port,
                    reason=reason,
                    protocol=a.protocol,
                )
            )

        for conflict in conflicts:
            if conflict.kind == ports_pb2.CONFLICT_KIND_UNASSIGNED_BOUND:
                unresolved.append(
                    _with_reason(
                        conflict, "not managed here: reserve the port or stop the process (allocations skip it)"
                    )
                )
            if conflict.kind != ports_pb2.CONFLICT_KIND_MISPLACED:
                continue
            a, port = conflict.assignment, conflict.port
            label = port_label(port, a.protocol)  # a misplaced conflict's port is of its assignment's protocol
            holder = self.by_port.get(a.host, {}).get((port, a.protocol))
            leaving = must_leave.get(holder) if holder is not None and holder not in moved else None
            if leaving is not None and leaving.assignment.range in self.ranges:
                # The holder must leave anyway, but its port is vacated only once it has somewhere to
                # go: otherwise it stays, and adopting the port would put two assignments on it.
                range_ = self.ranges[leaving.assignment.range]
                free = self.find_free(
                    a.host, range_, taken=planned.get(a.host), avoid=port, protocol=leaving.assignment.protocol
                )
                if free is not None:
                    plan(leaving.assignment, free, f"port {label} is bound by {leaving.observed_holder}")
            vacated = holder is None or holder in moved
            if (
                (a.host, a.service, a.name) in moved
                or not vacated
                or (port, a.protocol) in planned.get(a.host, {})
                or self.reservation(a.host, port) is not None
            ):
                unresolved.append(_with_reason(conflict, f"port {label} is held by another assignment that stays"))
                continue
            plan(a, port, f"{a.service} is bound to {label}: adopting the observed port")
        for key, conflict in must_leave.items():
            if key in moved:
                continue
            a = conflict.assignment
            if not a.range or a.range not in self.ranges:
                unresolved.append(_with_reason(conflict, "it lies in no range: reassign it to a port by hand"))
                continue
            free = self.find_free(
                a.host, self.ranges[a.range], taken=planned.get(a.host), avoid=a.port, protocol=a.protocol
            )
            if free is None:
                unresolved.append(_with_reason(conflict, f"range {a.range!r} has no free port on {a.host}"))
                continue
            plan(a, free, f"port {port_label(a.port, a.protocol)} is bound by {conflict.observed_holder}")
        return moves, unresolved

    def resolve(self, request: ports_pb2.ResolveConflictsRequest) -> CommandResult:
        if request.host:
            self.known_host(request.host)
        moves, unresolved = self.plan_resolution(request.host)
        if request.dry_run:  # servers answer dry runs without the log; should one get here, it changes nothing
            return self._result(ports_resolve=ports_pb2.ResolveConflictsResponse(moves=moves, unresolved=unresolved))
        # Vacate every moving assignment first, so a chain of moves never passes through a
        # moment where two assignments share a port.
        current = {(m.host, m.service, m.name): self.assignments[(m.host, m.service, m.name)] for m in moves}
        for assignment in current.values():
            self._unindex(assignment)
        for move in moves:
            key = (move.host, move.service, move.name)
            self._put(
                key,
                move.new_port,
                self.range_of(move.new_port),
                current[key].lease_id,
                Action.PORT_ACTION_RESOLVED,
                move.reason,
                protocol=current[key].protocol,
            )
        return self._result(ports_resolve=ports_pb2.ResolveConflictsResponse(moves=moves, unresolved=unresolved))

    # ------------------------------------------------------------------ leak repair

    def repair(self, request: ports_pb2.RepairRequest) -> CommandResult:
        """One repair pass: count assignments unbound on a fresh host report; free them at the threshold.

        A pass counts for an assignment only if its host reported since the last counted pass and
        since the assignment last changed, so repeated passes over one stale report free nothing.
        """
        threshold = request.passes_before_release or DEFAULT_REPAIR_PASSES
        if threshold > 100:
            raise _invalid(f"passes_before_release {threshold} is above 100")
        suspected: list[ports_pb2.PortAssignment] = []
        to_release: list[AssignmentKey] = []
        changed = False
        for host in sorted(self.observations):
            report = self.observations[host]
            bound = self.observed.get(host, {})
            complete_for = set(report.complete_for) or {TCP}
            for slot in sorted(self.by_port.get(host, {})):
                key = self.by_port[host][slot]
                assignment = self.assignments[key]
                leak_key = (host, *slot)
                if slot in bound or report.revision <= assignment.mod_revision:  # bound, whatever else it lists
                    if self.leaks.pop(leak_key, None) is not None:
                        changed = True
                    continue
                if slot[1] not in complete_for:
                    continue  # the report says nothing about this protocol's missing ports
                suspected.append(assignment)
                count = self.leaks.get(leak_key)
                if count is not None and count.observation_revision == report.revision:
                    continue  # no fresh evidence since the last pass
                passes = (count.passes if count is not None else 0) + 1
                self.leaks[leak_key] = ports_pb2.LeakCount(
                    host=host,
                    port=slot[0],
                    passes=passes,
                    observation_revision=report.revision,
                    protocol=slot[1],  # type: ignore[arg-type]
                )
                changed = True
                if passes >= threshold:
                    to_release.append(key)
        released = [
            self._drop(key, Action.PORT_ACTION_REPAIRED, f"not bound on {threshold} host reports in a row: leaked")
            for key in to_release
        ]
        if changed and not released:
            self._note(
                Action.PORT_ACTION_REPAIRED,
                "repair",
                watch_pb2.EVENT_TYPE_PUT,
                reason=f"{len(suspected)} suspected leaks",
            )
        return self._result(ports_repair=ports_pb2.RepairResponse(suspected=suspected, released=released))

    # ------------------------------------------------------------------ services

    def check_manifest(self, manifest: ports_pb2.ServiceManifest, on_host: bool = True) -> None:
        """Everything a registration of ``manifest`` must satisfy; ``on_host=False`` leaves out what
        depends on its host (the host itself, the agent's consent to exec checks), for placement."""
        _check(
            limits.check_name(manifest.name, "service name")
            or (limits.check_host(manifest.host) if on_host else None)
            or limits.check_text(manifest.version, "version", 64)
        )
        if len(manifest.ports) > limits.MAX_DECLARED_PORTS:
            raise _invalid(f"a service declares at most {limits.MAX_DECLARED_PORTS} ports")
        names: set[str] = set()
        fixed: set[Slot] = set()
        for declared in manifest.ports:
            _check(
                limits.check_name(declared.name, "port name") or limits.check_text(declared.protocol, "protocol", 16)
            )
            if declared.name in names:
                raise _invalid(f"port name {declared.name!r} is declared twice")
            names.add(declared.name)
            if declared.port:
                _check(limits.check_port(declared.port, f"port {declared.name!r}"))
                slot = (declared.port, manifest_protocol(declared.protocol, self._journal.cluster_level))
                if slot in fixed:
                    raise _invalid(f"port {port_label(*slot)} is declared twice")
                fixed.add(slot)
                if declared.range:
                    range_ = self.range_named(declared.range)
                    if not range_.start <= declared.port <= range_.end:
                        raise _invalid(f"port {declared.port} is outside its declared range {declared.range!r}")
            elif declared.range:
                self.range_named(declared.range)
        _check(health.check_problem(manifest))
        if (
            on_host
            and manifest.health_check.type == "exec"
            and (self._hooks is None or not self._hooks.exec_allowed(manifest.host))
        ):
            raise _precondition(
                f"cannot register {manifest.name} on {manifest.host} with an exec health check: no live agent "
                f"on {manifest.host} allows exec checks (start it with --allow-exec-checks, which registers the "
                f"capability {health.EXEC_CAPABILITY!r}), or use an http, tcp, grpc or ttl check"
            )
        if len(manifest.capabilities) > 64 or len(manifest.labels) > 64:
            raise _invalid("at most 64 capabilities and 64 labels")
        for capability in manifest.capabilities:
            _check(limits.check_name(capability, "capability"))
        for label, value in sorted(manifest.labels.items()):  # key order, alike on every server
            _check(limits.check_name(label, "label") or limits.check_text(value, f"label {label!r}", 256))
        self._check_lease(manifest.lease_id)

    def register_service(self, request: ports_pb2.RegisterServiceRequest) -> CommandResult:
        manifest = request.manifest
        self._store_service(manifest, self._plan_service(manifest))
        return self._result(
            service_register=ports_pb2.RegisterServiceResponse(service=self.service_view(manifest.host, manifest.name))
        )

    def _plan_service(self, manifest: ports_pb2.ServiceManifest) -> ServicePlan:
        """What registering ``manifest`` would do to its host's ports; raises Refused if it cannot.
        Changes nothing (placement plans every candidate node)."""
        self.check_manifest(manifest)
        host, service = manifest.host, manifest.name
        own = set(self._service_keys(host, service))
        declared_names = {declared.name for declared in manifest.ports}
        stale = sorted(key for key in own if key[2] not in declared_names)
        # Plan every declared port before changing anything: all or nothing. Fixed ports first, so
        # an allocation never takes a port that a later declaration fixes (stable: the manifest's
        # order otherwise).
        taken: dict[Slot, str] = {}
        plan: list[PlannedPort] = []
        for declared in sorted(manifest.ports, key=lambda d: not d.port):
            key = (host, service, declared.name)
            protocol = manifest_protocol(declared.protocol, self._journal.cluster_level)
            current = self.assignments.get(key)
            reason = "service manifest"
            if current is not None and current.protocol != protocol:
                # A port changing protocol is a new port, planned like one; its history says so.
                reason = f"service manifest: {protocol_name(current.protocol)} -> {protocol_name(protocol)}"
                current = None
            if declared.port:
                if current is not None and current.port == declared.port:
                    if current.lease_id != manifest.lease_id:
                        plan.append(
                            (key, (current.port, protocol), current.range, Action.PORT_ACTION_ASSIGNED, "lease changed")
                        )
                    continue
                held = self.by_port.get(host, {}).get((declared.port, protocol))
                problem = (
                    self._why_taken(host, declared.port, service, taken, protocol)
                    if held is None or held not in own
                    else None
                ) or self._observed_by_other(host, declared.port, service, protocol)
                if problem:
                    raise _precondition(f"cannot register {service} on {host}: {problem}")
                taken[(declared.port, protocol)] = f"{service}/{declared.name}"
                plan.append(
                    (key, (declared.port, protocol), self.range_of(declared.port), Action.PORT_ACTION_ASSIGNED, reason)
                )
                continue
            range_name = declared.range or DEFAULT_RANGE
            range_ = self.ranges.get(range_name)
            if range_ is None:
                raise _not_found(f"no port range {range_name!r} to allocate port {declared.name!r} from")
            if current is not None and current.range == range_name:
                if current.lease_id != manifest.lease_id:
                    plan.append(
                        (key, (current.port, protocol), current.range, Action.PORT_ACTION_ASSIGNED, "lease changed")
                    )
                continue
            port = self.find_free(host, range_, taken=taken, protocol=protocol)
            if port is None:
                raise self._exhausted(host, range_, protocol)
            taken[(port, protocol)] = f"{service}/{declared.name}"
            plan.append((key, (port, protocol), range_name, Action.PORT_ACTION_ALLOCATED, reason))
        # A fixed port may be one this service holds under another name: fine only if that one moves
        # away (a port kept where it is, only its lease changing, does not).
        vacating = {
            key
            for key, slot, *_ in plan
            if key not in self.assignments or (self.assignments[key].port, self.assignments[key].protocol) != slot
        } | set(stale)
        for key, slot, *_ in plan:
            held = self.by_port.get(host, {}).get(slot)
            if held is not None and held != key and held not in vacating:
                raise _precondition(
                    f"cannot register {service} on {host}: port {port_label(*slot)} stays with {held[1]}/{held[2]}"
                )
        return ServicePlan(plan, stale)

    def _store_service(self, manifest: ports_pb2.ServiceManifest, planned: ServicePlan) -> None:
        """Register ``manifest`` as ``_plan_service`` planned it (nothing changed in between)."""
        host, service = manifest.host, manifest.name
        plan, stale = planned
        prev_record = self.services.get((host, service))
        revision = self._note(
            Action.PORT_ACTION_SERVICE_REGISTERED,
            f"services/{host}/{service}",
            watch_pb2.EVENT_TYPE_PUT,
            host=host,
            service=service,
            reason=manifest.version,
        )
        record = ports_pb2.ServiceRecord(
            create_revision=prev_record.create_revision if prev_record is not None else revision,
            mod_revision=revision,
            registered_unix_ms=self._journal.time_unix_ms,
        )
        record.manifest.CopyFrom(manifest)
        if prev_record is not None:
            record.run.CopyFrom(prev_record.run)  # a wanted process stays wanted across updates
        if prev_record is not None and prev_record.manifest.health_check == manifest.health_check:
            record.health.CopyFrom(prev_record.health)  # the same check: its status stands
        else:
            if prev_record is not None:
                self._end_ttl_lease(prev_record, "its health check changed")
            record.health.CopyFrom(self._initial_health(manifest, revision))
        self.services[(host, service)] = record
        self.hosts.setdefault(host, None)
        for key in stale:
            self._drop(key, Action.PORT_ACTION_RELEASED, "no longer declared by the service manifest")
        # Vacate moving assignments first so new positions never collide with old ones.
        for key, *_ in plan:
            if key in self.assignments:
                self._unindex(self.assignments[key])
        for key, (port, protocol), range_name, action, reason in plan:
            self._put(key, port, range_name, manifest.lease_id, action, reason, protocol=protocol)

    def _service_keys(self, host: str, service: str) -> list[AssignmentKey]:
        return sorted(key for key in self.by_port.get(host, {}).values() if key[1] == service)

    def service_view(self, host: str, service: str) -> ports_pb2.ServiceRecord:
        view = ports_pb2.ServiceRecord()
        view.CopyFrom(self.services[(host, service)])
        view.ports.extend(self.assignments[key] for key in self._service_keys(host, service))
        return view

    def deregister_service(self, request: ports_pb2.DeregisterServiceRequest) -> CommandResult:
        self.known_host(request.host)
        _check(limits.check_name(request.name, "service name"))
        if (request.host, request.name) not in self.services:
            return self._result(service_deregister=ports_pb2.DeregisterServiceResponse(deregistered=False))
        released = self._deregister(request.host, request.name, "service deregistered")
        return self._result(
            service_deregister=ports_pb2.DeregisterServiceResponse(deregistered=True, released=released)
        )

    def _deregister(self, host: str, name: str, reason: str) -> list[ports_pb2.PortAssignment]:
        """Remove an instance and release its ports (the one release path, into history and onto Watch)."""
        record = self.services.pop((host, name))
        self._note(
            Action.PORT_ACTION_SERVICE_DEREGISTERED,
            f"services/{host}/{name}",
            watch_pb2.EVENT_TYPE_DELETE,
            host=host,
            service=name,
            reason=reason,
        )
        released = [self._drop(key, Action.PORT_ACTION_RELEASED, reason) for key in self._service_keys(host, name)]
        self._end_ttl_lease(record, reason)
        return released

    # ------------------------------------------------------------------ health

    def _initial_health(self, manifest: ports_pb2.ServiceManifest, revision: int) -> ports_pb2.ServiceHealth:
        """A service without a check passes; one with a check is critical until its first result
        (Consul's rule: nothing is sent traffic before it has shown it can take it)."""
        if self._hooks is not None and self._hooks.node_gone(manifest.host):
            status, output = health.CRITICAL, f"node {manifest.host} is dead or left"
        elif health.has_check(manifest.health_check):
            status, output = health.CRITICAL, "not checked yet"
        else:
            status, output = health.PASSING, "no health check"
        return ports_pb2.ServiceHealth(
            status=status, output=output, since_unix_ms=self._journal.time_unix_ms, revision=revision
        )

    def _end_ttl_lease(self, record: ports_pb2.ServiceRecord, reason: str) -> None:
        lease_id = record.health.ttl_lease_id
        # Out of the index first: the lease's end must not turn the instance critical on its way out.
        if lease_id and self.ttl_leases.pop(lease_id, None) is not None and self._hooks is not None:
            self._hooks.end(lease_id, reason)

    def _set_health(
        self, host: str, name: str, status: ports_pb2.HealthStatus, output: str, ttl_lease_id: int = 0
    ) -> ports_pb2.ServiceHealth:
        """One health change: a new revision, a watch event and a history entry."""
        old = self.services[(host, name)]
        record = ports_pb2.ServiceRecord()
        record.CopyFrom(old)  # replaced, never changed in place: readers may hold the old one
        revision = self._journal.revision + 1
        record.health.CopyFrom(
            ports_pb2.ServiceHealth(
                status=status,
                output=health.truncate(output),
                since_unix_ms=self._journal.time_unix_ms,
                revision=revision,
                ttl_lease_id=ttl_lease_id,
            )
        )
        self.services[(host, name)] = record
        reason = health.status_name(status) + (f": {output[:200]}" if output else "")
        noted = self._note(
            Action.PORT_ACTION_HEALTH_CHANGED,
            f"services/{host}/{name}",
            watch_pb2.EVENT_TYPE_PUT,
            host=host,
            service=name,
            reason=reason,
            health=record.health,
        )
        self._remember(
            name,
            ports_pb2.PortHistoryEntry(
                revision=noted,
                time_unix_ms=self._journal.time_unix_ms,
                action=Action.PORT_ACTION_HEALTH_CHANGED,
                host=host,
                service=name,
                reason=reason,
            ),
        )
        return record.health

    def report_health(self, request: ports_pb2.ReportHealthRequest) -> CommandResult:
        _check(limits.check_host(request.host) or limits.check_name(request.name, "service name"))
        if request.status not in health.STATUSES:
            raise _invalid(f"health status {request.status} is not passing, warning or critical")
        record = self.services.get((request.host, request.name))
        if record is None:
            raise _not_found(f"no service {request.name!r} on {request.host!r}; register it first")
        if self._hooks is not None and self._hooks.node_gone(request.host):
            # A late report of a dying agent must not undo its node's death: critical stands until
            # the node registers again.
            raise _precondition(
                f"node {request.host} is dead or left: its instances stay critical until it registers again"
            )
        check = record.manifest.health_check
        current = record.health
        if check.type == "ttl" and request.status == health.PASSING:
            if current.status == health.PASSING and self._lease_exists(current.ttl_lease_id):
                # The normal ttl renewal through the log (the leader usually renews from memory).
                assert self._hooks is not None
                self._hooks.renew(current.ttl_lease_id)
                return self._result(service_health=ports_pb2.ReportHealthResponse(health=current))
            if self._hooks is None:
                raise _precondition("ttl checks are not available here")
            self._end_ttl_lease(record, "replaced by a new passing report")
            lease_id = self._hooks.grant(check.ttl_s * 1000)
            self.ttl_leases[lease_id] = (request.host, request.name)
            changed = self._set_health(request.host, request.name, health.PASSING, request.output, lease_id)
            return self._result(service_health=ports_pb2.ReportHealthResponse(health=changed, changed=True))
        if request.status == current.status:
            # Unchanged: no revision (an agent repeating itself after a lost answer, say).
            return self._result(service_health=ports_pb2.ReportHealthResponse(health=current))
        self._end_ttl_lease(record, f"reported {health.status_name(request.status)}")
        changed = self._set_health(request.host, request.name, request.status, request.output)
        return self._result(service_health=ports_pb2.ReportHealthResponse(health=changed, changed=True))

    def node_ended(self, node_id: str, reason: str) -> None:
        """A node died or left: every instance on it is critical, in the same command. Its ttl leases
        end too, so the next passing report starts a fresh one."""
        for host, name in sorted(key for key in self.services if key[0] == node_id):
            record = self.services[(host, name)]
            if record.health.status != health.CRITICAL:
                self._end_ttl_lease(record, reason)
                self._set_health(host, name, health.CRITICAL, f"node {node_id}: {reason}")

    # ------------------------------------------------------------------ runs (agents start services)

    def _instance(self, host: str, name: str) -> ports_pb2.ServiceRecord:
        _check(limits.check_host(host) or limits.check_name(name, "service name"))
        record = self.services.get((host, name))
        if record is None:
            raise _not_found(f"no service {name!r} on {host!r}; register it first (its manifest says how to run it)")
        return record

    def _set_run(
        self, host: str, name: str, run: ports_pb2.RunStatus, action: ports_pb2.PortAction, reason: str
    ) -> None:
        record = ports_pb2.ServiceRecord()
        record.CopyFrom(self.services[(host, name)])
        record.run.CopyFrom(run)
        record.run.since_unix_ms = self._journal.time_unix_ms
        record.run.revision = self._journal.revision + 1  # the revision _note gives the change
        self.services[(host, name)] = record
        noted = self._note(
            action, f"services/{host}/{name}", watch_pb2.EVENT_TYPE_PUT, host=host, service=name, reason=reason
        )
        self._remember(
            name,
            ports_pb2.PortHistoryEntry(
                revision=noted,
                time_unix_ms=self._journal.time_unix_ms,
                action=action,
                host=host,
                service=name,
                reason=reason,
            ),
        )

    def start_service(self, request: ports_pb2.StartServiceRequest) -> CommandResult:
        if levels.places(request) and self._journal.cluster_level >= levels.PLACEMENT:
            return self._place(request)
        record = self._instance(request.host, request.name)
        manifest = record.manifest
        if not manifest.run.command:
            raise _precondition(
                f"service {request.name} on {request.host} has no run in its manifest: add run: {{command: [...]}} "
                "and register it again"
            )
        capabilities = self._hooks.capabilities(request.host) if self._hooks is not None else None
        if capabilities is None:
            raise _precondition(f"no live agent on node {request.host} to start {request.name} (is it registered?)")
        missing = sorted(set(manifest.capabilities) - set(capabilities))
        if health.RUN_CAPABILITY not in capabilities:
            missing.insert(0, health.RUN_CAPABILITY)
        if missing:
            raise _precondition(
                f"node {request.host} cannot start {request.name}: it lacks the capabilities {', '.join(missing)}"
                + (" (start its agent with --allow-run)" if health.RUN_CAPABILITY in missing else "")
            )
        if record.run.wanted:
            return self._result(
                service_start=ports_pb2.StartServiceResponse(
                    service=self.service_view(*request_key(request)), existing=True
                )
            )
        self._set_run(
            request.host,
            request.name,
            ports_pb2.RunStatus(wanted=True, state="starting"),
            Action.PORT_ACTION_SERVICE_STARTED,
            "start",
        )
        return self._result(
            service_start=ports_pb2.StartServiceResponse(service=self.service_view(*request_key(request)))
        )

    def _place(self, request: ports_pb2.StartServiceRequest) -> CommandResult:
        """Start ``request.name`` on a node the cluster chooses (see StartServiceRequest): one
        command, so the choice, the registration and the start are one atomic step."""
        name = request.name
        _check(limits.check_name(name, "service name"))
        if request.host:
            raise _invalid(f"give the node to start {name} on, or a manifest to place, not both")
        given: ports_pb2.ServiceManifest | None = None
        if request.HasField("manifest"):
            given = ports_pb2.ServiceManifest()
            given.CopyFrom(request.manifest)
            if given.name not in ("", name):
                raise _invalid(f"the manifest is for service {given.name!r}, not {name!r}")
            if given.host:
                raise _invalid(f"leave the manifest's host empty (it is {given.host!r}): placement chooses the node")
            given.name = name
            self.check_manifest(given, on_host=False)  # what no node can fix: INVALID_ARGUMENT, NOT_FOUND
            if not given.run.command:
                raise _precondition(f"the manifest of {name} has no run: add run: {{command: [...]}} to place it")
        live = {offer.node_id: offer for offer in (self._hooks.live_nodes() if self._hooks is not None else [])}
        registered = sorted(host for host, service in self.services if service == name)
        wanted = [host for host in registered if self.services[(host, name)].run.wanted]
        for host in wanted:
            if host not in live:
                continue
            if given is not None and not _same_manifest(given, self.services[(host, name)].manifest):
                raise _precondition(
                    f"{name} runs on {host} with another manifest: register the new one there "
                    f"(cpctl services register FILE --host {host}), or stop it first to place it afresh"
                )
            # A second start reuses the running instance, wherever it runs.
            return self._result(
                service_start=ports_pb2.StartServiceResponse(
                    service=self.service_view(host, name), existing=True, placement=f"already runs on {host}"
                )
            )
        if given is None and not registered:
            raise _not_found(
                f"no service {name!r} is registered: register it on a node, or give its manifest to place it"
            )
        running: dict[str, int] = {}
        for (host, _), record in sorted(self.services.items()):
            if record.run.wanted and host in live:
                running[host] = running.get(host, 0) + 1
        # Rank every node placement may use by what costs nothing to know, then plan the ports in
        # that order until one fits: the first whose plan succeeds is the best that can run it.
        passed_over: list[str] = []
        ranked: list[tuple[int, int, str]] = []
        for node_id in registered if given is None else sorted(live):
            offer = live.get(node_id)
            problem = f"is {offer.state}" if offer is not None and offer.state != "active" else None
            if offer is None:
                problem = "has no live agent"
            elif problem is None:
                problem = _offer_problem(offer, given or self.services[(node_id, name)].manifest)
            if problem is not None:
                passed_over.append(f"{node_id}: {problem}")
                continue
            ranked.append((0 if node_id in registered else 1, running.get(node_id, 0), node_id))
        for here, count, node_id in sorted(ranked):
            manifest = ports_pb2.ServiceManifest()
            manifest.CopyFrom(given if given is not None else self.services[(node_id, name)].manifest)
            manifest.host = node_id
            try:
                plan = self._plan_service(manifest)
            except Refused as refusal:
                passed_over.append(f"{node_id}: {refusal.message}")
                continue
            return self._start_placed(
                name,
                manifest,
                plan if given is not None else None,
                wanted,
                live,
                why=(
                    f"{node_id}: {'registered there, ' if here == 0 else ''}{count} services running there"
                    + (f"; passed over {_listed(passed_over)}" if passed_over else "")
                ),
            )
        where = "the nodes it is registered on" if given is None else "every live node"
        raise _precondition(
            f"no node can run {name} (placement looked at {where}): {_listed(passed_over) or 'none is live'}"
        )

    def _start_placed(
        self,
        name: str,
        manifest: ports_pb2.ServiceManifest,
        plan: ServicePlan | None,
        wanted: list[str],
        live: Mapping[str, NodeOffer],
        why: str,
    ) -> CommandResult:
        """Register (with a plan) and start ``manifest`` on its host, and stop wanting it on nodes
        that are gone: their agents, back, must not run a second instance."""
        node_id = manifest.host
        for host in wanted:
            if host not in live:
                stopped = ports_pb2.RunStatus()
                stopped.CopyFrom(self.services[(host, name)].run)
                stopped.wanted, stopped.state = False, "stopped"
                self._set_run(
                    host, name, stopped, Action.PORT_ACTION_SERVICE_STOPPED, f"placed on {node_id}: {host} is gone"
                )
        if plan is not None:
            self._store_service(manifest, plan)
        self._set_run(
            node_id,
            name,
            ports_pb2.RunStatus(wanted=True, state="starting"),
            Action.PORT_ACTION_SERVICE_STARTED,
            "placed",
        )
        return self._result(
            service_start=ports_pb2.StartServiceResponse(service=self.service_view(node_id, name), placement=why)
        )

    def stop_service(self, request: ports_pb2.StopServiceRequest) -> CommandResult:
        record = self._instance(request.host, request.name)
        if not record.run.wanted:
            return self._result(
                service_stop=ports_pb2.StopServiceResponse(service=self.service_view(*request_key(request)))
            )
        run = ports_pb2.RunStatus()
        run.CopyFrom(record.run)
        run.wanted, run.state = False, "stopping"
        self._set_run(request.host, request.name, run, Action.PORT_ACTION_SERVICE_STOPPED, "stop")
        return self._result(
            service_stop=ports_pb2.StopServiceResponse(service=self.service_view(*request_key(request)), changed=True)
        )

    def report_run(self, request: ports_pb2.ReportRunRequest) -> CommandResult:
        record = self._instance(request.host, request.name)
        if request.state not in health.RUN_STATES:
            raise _invalid(f"run state {request.state!r} is not one of {', '.join(health.RUN_STATES)}")
        _check(limits.check_text(request.message, "run message"))
        run = ports_pb2.RunStatus(
            wanted=record.run.wanted,
            state=request.state,
            restarts=request.restarts,
            last_exit_code=request.last_exit_code,
            pid=request.pid,
            message=request.message,
            since_unix_ms=record.run.since_unix_ms,
            revision=record.run.revision,
        )
        if run == record.run:
            return self._result(service_run_report=ports_pb2.ReportRunResponse(run=record.run))
        reason = f"{request.state}" + (f" (restarts {request.restarts})" if request.restarts else "")
        self._set_run(request.host, request.name, run, Action.PORT_ACTION_RUN_CHANGED, reason)
        return self._result(
            service_run_report=ports_pb2.ReportRunResponse(run=self.services[request_key(request)].run, changed=True)
        )

    def critical_deadlines(self) -> dict[tuple[str, str, int], int]:
        """(host, name, critical since) -> when that instance may be reaped (unix ms), for every
        critical instance whose check has a deregister_critical_after_s (the leader times them)."""
        deadlines = {}
        for (host, name), record in sorted(self.services.items()):
            reap_at = self._reap_at(record)
            if reap_at is not None:
                deadlines[(host, name, record.health.since_unix_ms)] = reap_at
        return deadlines

    @staticmethod
    def _reap_at(record: ports_pb2.ServiceRecord) -> int | None:
        """When a critical instance may be reaped (unix ms); None if it is not critical or never reaped."""
        after_s = record.manifest.health_check.deregister_critical_after_s
        if not after_s or record.health.status != health.CRITICAL:
            return None
        return int(record.health.since_unix_ms + after_s * 1000)

    @classmethod
    def _reapable(cls, record: ports_pb2.ServiceRecord, now_unix_ms: int) -> bool:
        reap_at = cls._reap_at(record)
        return reap_at is not None and reap_at <= now_unix_ms

    def reap_critical(self, request: ports_pb2.ReapCriticalRequest) -> CommandResult:
        deregistered = []
        for key in request.services:
            record = self.services.get((key.host, key.name))
            # Re-checked against this entry's time: a passing report committed first wins.
            if record is not None and self._reapable(record, self._journal.time_unix_ms):
                after_s = record.manifest.health_check.deregister_critical_after_s
                self._deregister(key.host, key.name, f"critical for {after_s}s (deregister_critical_after_s)")
                deregistered.append(key)
        return self._result(service_reap=ports_pb2.ReapCriticalResult(deregistered=deregistered))

    # ------------------------------------------------------------------ statistics

    def stats(self, host: str = "") -> ports_pb2.PortStatsResponse:
        hosts = [host] if host else sorted(self.hosts)
        response = ports_pb2.PortStatsResponse(
            assignments=sum(len(self.by_port.get(h, {})) for h in hosts),
            reservations=len(self.reserved_global) + sum(len(self.reserved_host.get(h, {})) for h in hosts),
            hosts=len(hosts),
        )
        for range_ in sorted(self.ranges.values(), key=lambda r: r.start):
            size = range_.end - range_.start + 1
            global_reserved = sum(1 for p in self.reserved_global if range_.start <= p <= range_.end)
            rows = []
            for name in hosts:
                # Port numbers in use, by either protocol (a reservation keeps both, too).
                used = len({p for p, _ in self.by_port.get(name, {}) if range_.start <= p <= range_.end})
                reserved = global_reserved + sum(
                    1
                    for p in self.reserved_host.get(name, {})
                    if range_.start <= p <= range_.end and p not in self.reserved_global
                )
                rows.append(_stats_row(range_.name, name, size, used, reserved))
            if host:
                response.ranges.extend(rows)
                continue
            total = _stats_row(
                range_.name,
                "",
                size * max(len(rows), 1),
                sum(r.used for r in rows),
                sum(r.reserved for r in rows) if rows else global_reserved,
            )
            response.ranges.append(total)
            response.ranges.extend(rows)
        return response

    # ------------------------------------------------------------------ export / import / snapshot

    def export_map(self, revision: int) -> ports_pb2.PortMap:
        return _port_map(self.to_state(), revision)

    def validate_map(self, port_map: ports_pb2.PortMap) -> None:
        """Everything an import must satisfy; raises Refused naming the first problem."""
        if port_map.format != PORT_MAP_FORMAT:
            raise _invalid(f"format is {port_map.format!r}; this server imports {PORT_MAP_FORMAT!r} documents")
        ranges: dict[str, ports_pb2.PortRange] = {}
        for range_ in port_map.ranges:
            if range_.name in ranges:
                raise _invalid(f"range {range_.name!r} appears twice")
            self.check_range(range_, ranges.values())
            ranges[range_.name] = range_
        reserved: set[tuple[str, int]] = set()
        for reservation in port_map.reservations:
            if reservation.host:
                _check(limits.check_host(reservation.host))
            _check(
                limits.check_port(reservation.port, "reserved port") or limits.check_text(reservation.reason, "reason")
            )
            if (reservation.host, reservation.port) in reserved:
                raise _invalid(
                    f"reservation of port {reservation.port} on {reservation.host or 'every host'} appears twice"
                )
            reserved.add((reservation.host, reservation.port))
        keys: set[AssignmentKey] = set()
        ports: dict[LeakKey, str] = {}  # (host, port, protocol) -> its holder
        for a in port_map.assignments:
            _check(
                limits.check_host(a.host)
                or limits.check_name(a.service, "service")
                or limits.check_name(a.name, "port name")
                or limits.check_port(a.port)
            )
            check_protocol(a.protocol)
            where = f"assignment {a.service}/{a.name} on {a.host}"
            if (a.host, a.service, a.name) in keys:
                raise _invalid(f"{where} appears twice")
            keys.add((a.host, a.service, a.name))
            if (a.host, a.port, a.protocol) in ports:
                raise _invalid(
                    f"{where} and {ports[(a.host, a.port, a.protocol)]} share port {port_label(a.port, a.protocol)}"
                )
            ports[(a.host, a.port, a.protocol)] = f"{a.service}/{a.name}"
            if (a.host, a.port) in reserved or ("", a.port) in reserved:
                raise _invalid(f"{where} holds reserved port {a.port}")
            containing = next((r.name for r in ranges.values() if r.start <= a.port <= r.end), "")
            if a.range != containing:
                raise _invalid(f"{where} says range {a.range!r} but port {a.port} lies in {containing or 'no range'!r}")
        services: set[tuple[str, str]] = set()
        for record in port_map.services:
            _check(limits.check_name(record.manifest.name, "service name") or limits.check_host(record.manifest.host))
            if (record.manifest.host, record.manifest.name) in services:
                raise _invalid(f"service {record.manifest.name} on {record.manifest.host} appears twice")
            services.add((record.manifest.host, record.manifest.name))
        for entry in port_map.history:
            _check(limits.check_name(entry.service, "history service"))
        for report in port_map.observations:
            _check(limits.check_host(report.host))
            slots: set[Slot] = set()
            for protocol in report.complete_for:
                check_protocol(protocol)
            for observed in report.ports:
                _check(limits.check_port(observed.port, "observed port"))
                check_protocol(observed.protocol)
                if (observed.port, observed.protocol) in slots:
                    raise _invalid(
                        f"port {port_label(observed.port, observed.protocol)} observed twice on {report.host}"
                    )
                slots.add((observed.port, observed.protocol))

    def import_map(self, request: ports_pb2.ImportPortsRequest) -> CommandResult:
        port_map = request.map
        self.validate_map(port_map)
        dropped = sum(1 for a in port_map.assignments if a.lease_id) + sum(
            1 for s in port_map.services if s.manifest.lease_id
        )
        state = ports_pb2.PortsState(
            ranges=port_map.ranges,
            reservations=port_map.reservations,
            assignments=port_map.assignments,
            services=[
                ports_pb2.ServiceRecord(
                    manifest=s.manifest,
                    create_revision=s.create_revision,
                    mod_revision=s.mod_revision,
                    registered_unix_ms=s.registered_unix_ms,
                )
                for s in port_map.services
            ],
            history=port_map.history,
            observations=port_map.observations,
        )
        # Another cluster's revisions mean nothing here, and kept as they are they would run ahead
        # of this cluster's (a poller of `history --after-revision` would miss every change made
        # after the import): everything imported carries the import's own revision. An imported
        # report is then no evidence for the leak repair against any assignment made after it.
        revision = self._journal.revision + 1  # the revision _note gives the import event below
        for assignment in state.assignments:
            assignment.lease_id = 0
            assignment.create_revision = assignment.mod_revision = revision
        for record in state.services:
            record.manifest.lease_id = 0
            record.create_revision = record.mod_revision = revision
        for reservation in state.reservations:
            reservation.revision = revision
        for entry in state.history:
            entry.revision = revision
        for report in state.observations:
            report.revision = revision
        totals: dict[str, int] = {}
        for entry in state.history:
            totals[entry.service] = totals.get(entry.service, 0) + 1
        state.history_totals.extend(ports_pb2.HistoryTotal(service=s, total=n) for s, n in totals.items())
        self.load(state)
        noted = self._note(
            Action.PORT_ACTION_IMPORTED,
            "import",
            watch_pb2.EVENT_TYPE_PUT,
            reason=f"{len(state.assignments)} assignments, {len(state.reservations)} reservations, "
            f"{len(state.ranges)} ranges",
        )
        return CommandResult(
            revision=noted,  # == revision: each event bumps the revision by one
            ports_import=ports_pb2.ImportPortsResponse(
                assignments=len(state.assignments),
                reservations=len(state.reservations),
                ranges=len(state.ranges),
                services=len(state.services),
                leases_dropped=dropped,
            ),
        )

    def to_state(self) -> ports_pb2.PortsState:
        state = ports_pb2.PortsState(
            ranges=list(self.ranges.values()),
            reservations=list(self.reserved_global.values()),
            assignments=list(self.assignments.values()),
            services=list(self.services.values()),
            observations=list(self.observations.values()),
            leaks=list(self.leaks.values()),
            cursors=[ports_pb2.AllocationCursor(host=h, range=r, next=n) for (h, r), n in self.cursors.items()],
            hosts=list(self.hosts),
        )
        for host_table in self.reserved_host.values():
            state.reservations.extend(host_table.values())
        for entries in self.history.values():
            state.history.extend(entries)
        state.history_totals.extend(ports_pb2.HistoryTotal(service=s, total=n) for s, n in self.history_totals.items())
        return state

    def load_state(self, state: ports_pb2.PortsState | None) -> None:
        """A snapshot's table (None: one from before ports existed, the defaults), as this
        cluster's level holds it (the machine loads the level first)."""
        if state is None:
            self.reset()
            return
        levels.ports_state_at(state, self._journal.cluster_level)  # a dump an older release wrote
        self.load(state)

    def check_backup(self, state: ports_pb2.PortsState | None, backup: BackupSource) -> None:
        if state is None:
            return
        # As this cluster's releases read it, and as the backup's cluster held it: a backup from
        # below UDP_PORTS may carry protocols an older release kept unread.
        levels.ports_state_at(state, min(self._journal.cluster_level, backup.cluster_level))
        self.validate_map(_port_map(state))

    def restore_backup(self, state: ports_pb2.PortsState | None, backup: BackupSource) -> None:
        if state is None:
            self.reset()
        else:
            self.load(state)

    def load(self, state: ports_pb2.PortsState) -> None:
        """Replace the table with a snapshot's (validated by the caller, or our own)."""
        self.reset()
        self.hosts = dict.fromkeys(state.hosts)
        self.ranges = {r.name: r for r in state.ranges}
        for reservation in state.reservations:
            table = self.reserved_host.setdefault(reservation.host, {}) if reservation.host else self.reserved_global
            table[reservation.port] = reservation
        for assignment in state.assignments:
            key = (assignment.host, assignment.service, assignment.name)
            self.assignments[key] = assignment
            self.by_port.setdefault(assignment.host, {})[(assignment.port, assignment.protocol)] = key
            if assignment.lease_id:
                self.by_lease.setdefault(assignment.lease_id, {})[key] = None
            self.hosts.setdefault(assignment.host, None)
        for record in state.services:
            self.services[(record.manifest.host, record.manifest.name)] = record
            self.hosts.setdefault(record.manifest.host, None)
            if record.health.ttl_lease_id:
                self.ttl_leases[record.health.ttl_lease_id] = (record.manifest.host, record.manifest.name)
        for entry in state.history:
            self.history.setdefault(entry.service, []).append(entry)
        self.history_totals = {t.service: t.total for t in state.history_totals}
        for report in state.observations:
            self.observations[report.host] = report
            self.observed[report.host] = {(o.port, o.protocol): o for o in report.ports}
        self.leaks = {(c.host, c.port, c.protocol): c for c in state.leaks}
        self.cursors = {(c.host, c.range): c.next for c in state.cursors}
        for host in list(state.hosts) + [r.host for r in state.reservations if r.host] + list(self.observations):
            self.hosts.setdefault(host, None)

    # ------------------------------------------------------------------ reads

    def list_assignments(
        self, host: str = "", service: str = "", range_name: str = ""
    ) -> list[ports_pb2.PortAssignment]:
        if host:
            self.known_host(host)
            keys: Iterable[AssignmentKey] = [self.by_port[host][s] for s in sorted(self.by_port.get(host, {}))]
        else:
            keys = sorted(
                self.assignments, key=lambda k: (k[0], self.assignments[k].port, self.assignments[k].protocol)
            )
        return [
            self.assignments[key]
            for key in keys
            if (not service or key[1] == service) and (not range_name or self.assignments[key].range == range_name)
        ]

    def list_reservations(self, host: str = "") -> list[ports_pb2.Reservation]:
        out = [self.reserved_global[p] for p in sorted(self.reserved_global)]
        for name in [host] if host else sorted(self.reserved_host):
            table = self.reserved_host.get(name, {})
            out.extend(table[p] for p in sorted(table))
        return out

    def service_history(self, service: str, after_revision: int = 0) -> tuple[list[ports_pb2.PortHistoryEntry], int]:
        _check(limits.check_name(service, "service"))
        if service not in self.history_totals:
            raise _not_found(f"no history for service {service!r}: it never held a port")
        return [e for e in self.history[service] if e.revision > after_revision], self.history_totals[service]

    def list_services(self, host: str = "", name: str = "", healthy: bool = False) -> list[ports_pb2.ServiceRecord]:
        if host:
            self.known_host(host)
        return [
            self.service_view(h, n)
            for h, n in sorted(self.services)
            if (not host or h == host)
            and (not name or n == name)
            and (not healthy or self.services[(h, n)].health.status in health.HEALTHY)
        ]


def request_key(
    request: ports_pb2.StartServiceRequest | ports_pb2.StopServiceRequest | ports_pb2.ReportRunRequest,
) -> tuple[str, str]:
    return request.host, request.name


def _offer_problem(offer: NodeOffer, manifest: ports_pb2.ServiceManifest) -> str | None:
    """Why ``offer``'s node cannot run ``manifest`` (its agent's consent, its resources), or None."""
    if not manifest.run.command:
        return "its manifest there has no run"
    required = set(manifest.capabilities)
    if manifest.health_check.type == "exec":
        required.add(health.EXEC_CAPABILITY)  # its agent must consent to running the check
    missing = sorted(required - set(offer.capabilities))
    if health.RUN_CAPABILITY not in offer.capabilities:
        missing.insert(0, health.RUN_CAPABILITY)
    if missing:
        return f"lacks {', '.join(missing)}"
    needs = manifest.requirements
    short = [
        f"{what} {has} < {need}"
        for what, has, need in (
            ("gpus", offer.gpus, needs.gpus),
            ("memory_mb", offer.memory_mb, needs.memory_mb),
            ("cpu_millis", offer.cpu_millis, needs.cpu_millis),
        )
        if has < need
    ]
    return f"has {', '.join(short)}" if short else None


def _same_manifest(given: ports_pb2.ServiceManifest, registered: ports_pb2.ServiceManifest) -> bool:
    """Whether a manifest to place says what a registered one says, the host aside."""
    copy = ports_pb2.ServiceManifest()
    copy.CopyFrom(registered)
    copy.host = ""
    return copy == given


def _listed(reasons: list[str], most: int = 8) -> str:
    """Reasons joined, at most ``most`` of them and how many more."""
    shown = "; ".join(reasons[:most])
    return shown + (f"; and {len(reasons) - most} more" if len(reasons) > most else "")


def _wrapping(start: int, low: int, high: int) -> Iterator[int]:
    yield from range(start, high + 1)
    yield from range(low, start)


def _with_reason(conflict: ports_pb2.Conflict, reason: str) -> ports_pb2.Conflict:
    copy = ports_pb2.Conflict()
    copy.CopyFrom(conflict)
    copy.description = f"{conflict.description}; not resolved: {reason}"
    return copy


def _stats_row(range_name: str, host: str, size: int, used: int, reserved: int) -> ports_pb2.RangeStats:
    available = size - reserved
    return ports_pb2.RangeStats(
        range=range_name,
        host=host,
        size=size,
        used=used,
        reserved=reserved,
        free=max(size - used - reserved, 0),
        utilisation=round(used / available, 4) if available > 0 else 0.0,
    )
