"""Ports, services and leases for the SDK: result types, request builders and conversions.

Shared by the sync and async clients (``client.ports``, ``client.services``, ``client.leases``),
which only add the transport. Like ``_kv``, no protobuf type reaches a caller: every result
is a frozen dataclass whose fields carry the wire schema's names (``proto/controlplane/v1/ports.proto``
documents each one), and documents (manifests, exported port maps) are plain dicts in the
proto3 JSON shape.
"""

from __future__ import annotations

import enum
import functools
import operator
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from controlplane import errors
from controlplane.client._base import Rpc, new_request_id
from controlplane.client._base import checked_request as checked_request  # for the domain methods (_api_async.py)
from controlplane.v1 import common_pb2, leases_pb2, ports_pb2

__all__ = [
    "AllocateResult",
    "Conflict",
    "ConflictKind",
    "HealthStatus",
    "ImportResult",
    "Lease",
    "Placed",
    "PortAction",
    "PortAssignment",
    "PortEvent",
    "PortHistory",
    "PortHistoryEntry",
    "PortList",
    "PortMove",
    "PortProtocol",
    "PortRange",
    "PortStats",
    "RangeStats",
    "ReassignResult",
    "ReleaseResult",
    "RepairResult",
    "Reservation",
    "ResolveResult",
    "RunStatus",
    "ServiceHealth",
    "ServiceRecord",
]

D = TypeVar("D")
M = TypeVar("M", bound=Message)
R = TypeVar("R")


class PortAction(enum.Enum):
    UNSPECIFIED = ports_pb2.PORT_ACTION_UNSPECIFIED
    ALLOCATED = ports_pb2.PORT_ACTION_ALLOCATED
    ASSIGNED = ports_pb2.PORT_ACTION_ASSIGNED
    RELEASED = ports_pb2.PORT_ACTION_RELEASED
    REASSIGNED = ports_pb2.PORT_ACTION_REASSIGNED
    EXPIRED = ports_pb2.PORT_ACTION_EXPIRED
    RESOLVED = ports_pb2.PORT_ACTION_RESOLVED
    REPAIRED = ports_pb2.PORT_ACTION_REPAIRED
    IMPORTED = ports_pb2.PORT_ACTION_IMPORTED
    RESERVED = ports_pb2.PORT_ACTION_RESERVED
    UNRESERVED = ports_pb2.PORT_ACTION_UNRESERVED
    RANGE_SET = ports_pb2.PORT_ACTION_RANGE_SET
    RANGE_DELETED = ports_pb2.PORT_ACTION_RANGE_DELETED
    OBSERVED = ports_pb2.PORT_ACTION_OBSERVED
    SERVICE_REGISTERED = ports_pb2.PORT_ACTION_SERVICE_REGISTERED
    SERVICE_DEREGISTERED = ports_pb2.PORT_ACTION_SERVICE_DEREGISTERED
    #: A service instance's health status changed (``PortEvent.health``).
    HEALTH_CHANGED = ports_pb2.PORT_ACTION_HEALTH_CHANGED
    SERVICE_STARTED = ports_pb2.PORT_ACTION_SERVICE_STARTED
    SERVICE_STOPPED = ports_pb2.PORT_ACTION_SERVICE_STOPPED
    #: The agent's account of an instance's process changed (``ServiceRecord.run``).
    RUN_CHANGED = ports_pb2.PORT_ACTION_RUN_CHANGED


class HealthStatus(enum.Enum):
    """A service instance's health in the catalog."""

    #: Not known yet (an instance imported from a port map, before its agent reports).
    UNSPECIFIED = ports_pb2.HEALTH_STATUS_UNSPECIFIED
    PASSING = ports_pb2.HEALTH_STATUS_PASSING
    #: Degraded but serving: still listed as healthy.
    WARNING = ports_pb2.HEALTH_STATUS_WARNING
    CRITICAL = ports_pb2.HEALTH_STATUS_CRITICAL


class PortProtocol(enum.Enum):
    """A port's transport. TCP and UDP are separate: 53/tcp and 53/udp may go to different
    assignments. Calls take the member or its name ("tcp", "udp", any case)."""

    TCP = ports_pb2.PORT_PROTOCOL_TCP
    UDP = ports_pb2.PORT_PROTOCOL_UDP


def protocol_value(protocol: PortProtocol | str | int) -> ports_pb2.PortProtocol:
    """The wire value of ``protocol``: a member, its name ("udp", "UDP", or the proto JSON name
    "PORT_PROTOCOL_UDP" from a document) or its number; ValueError (InvalidArgument from a call)
    for anything else."""
    if isinstance(protocol, PortProtocol):
        return protocol.value
    if isinstance(protocol, str):
        name = protocol.strip().upper().removeprefix("PORT_PROTOCOL_")
        if name in PortProtocol.__members__:
            return PortProtocol[name].value
    elif isinstance(protocol, int) and not isinstance(protocol, bool) and protocol in {m.value for m in PortProtocol}:
        return PortProtocol(protocol).value
    raise ValueError(f"protocol {protocol!r} is neither 'tcp' nor 'udp'")


class ConflictKind(enum.Enum):
    UNSPECIFIED = ports_pb2.CONFLICT_KIND_UNSPECIFIED
    #: Assigned to one service, bound by something else.
    WRONG_HOLDER = ports_pb2.CONFLICT_KIND_WRONG_HOLDER
    #: Bound inside a managed range, assigned to nobody.
    UNASSIGNED_BOUND = ports_pb2.CONFLICT_KIND_UNASSIGNED_BOUND
    #: A managed service bound to a port other than its own.
    MISPLACED = ports_pb2.CONFLICT_KIND_MISPLACED


@dataclass(frozen=True, slots=True)
class PortRange:
    name: str
    start: int
    end: int
    description: str = ""


@dataclass(frozen=True, slots=True)
class PortAssignment:
    host: str
    service: str
    name: str
    port: int
    range: str
    lease_id: int
    create_revision: int
    mod_revision: int
    created_unix_ms: int
    updated_unix_ms: int
    protocol: PortProtocol = PortProtocol.TCP


@dataclass(frozen=True, slots=True)
class Reservation:
    #: Empty: reserved on every host.
    host: str
    port: int
    reason: str
    revision: int


@dataclass(frozen=True, slots=True)
class PortHistoryEntry:
    revision: int
    time_unix_ms: int
    action: PortAction
    host: str
    service: str
    name: str
    old_port: int
    new_port: int
    reason: str
    protocol: PortProtocol = PortProtocol.TCP


@dataclass(frozen=True, slots=True)
class PortEvent:
    """What a watch on domain "ports" carries in ``Event.port``."""

    action: PortAction
    host: str
    service: str
    name: str
    old_port: int
    new_port: int
    reason: str
    assignment: PortAssignment | None
    prev_assignment: PortAssignment | None
    #: HEALTH_CHANGED: the instance's health after the change.
    health: ServiceHealth | None = None


@dataclass(frozen=True, slots=True)
class Conflict:
    kind: ConflictKind
    host: str
    port: int
    assignment: PortAssignment | None
    observed_holder: str
    description: str
    protocol: PortProtocol = PortProtocol.TCP


@dataclass(frozen=True, slots=True)
class PortMove:
    host: str
    service: str
    name: str
    old_port: int
    new_port: int
    reason: str
    protocol: PortProtocol = PortProtocol.TCP


@dataclass(frozen=True, slots=True)
class RangeStats:
    range: str
    #: Empty: the total over every known host.
    host: str
    size: int
    used: int
    reserved: int
    free: int
    utilisation: float


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl_ms: int
    granted_unix_ms: int
    renewed_unix_ms: int
    attached_ports: int


@dataclass(frozen=True, slots=True)
class AllocateResult:
    revision: int
    assignment: PortAssignment
    #: True when it already held this port: nothing changed.
    existing: bool


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    revision: int
    #: False when nothing was assigned (releasing twice is not an error).
    released: bool
    assignment: PortAssignment | None


@dataclass(frozen=True, slots=True)
class ReassignResult:
    revision: int
    assignment: PortAssignment
    old_port: int


@dataclass(frozen=True, slots=True)
class PortList:
    revision: int
    assignments: tuple[PortAssignment, ...]
    reservations: tuple[Reservation, ...]


@dataclass(frozen=True, slots=True)
class PortHistory:
    revision: int
    entries: tuple[PortHistoryEntry, ...]
    #: Entries ever recorded for the service (the oldest may have been trimmed).
    total: int


@dataclass(frozen=True, slots=True)
class ResolveResult:
    revision: int
    moves: tuple[PortMove, ...]
    unresolved: tuple[Conflict, ...]


@dataclass(frozen=True, slots=True)
class RepairResult:
    revision: int
    suspected: tuple[PortAssignment, ...]
    released: tuple[PortAssignment, ...]


@dataclass(frozen=True, slots=True)
class PortStats:
    revision: int
    ranges: tuple[RangeStats, ...]
    assignments: int
    reservations: int
    hosts: int


@dataclass(frozen=True, slots=True)
class ImportResult:
    revision: int
    assignments: int
    reservations: int
    ranges: int
    services: int
    leases_dropped: int


@dataclass(frozen=True, slots=True)
class ServiceHealth:
    status: HealthStatus
    #: The check's last output (at most 1024 characters).
    output: str
    #: Leader time at which the status took its value.
    since_unix_ms: int
    revision: int
    #: ttl checks: the lease a passing report holds (0 when not passing).
    ttl_lease_id: int

    @property
    def healthy(self) -> bool:
        """Passing or warning: what ``services.healthy`` lists."""
        return self.status in (HealthStatus.PASSING, HealthStatus.WARNING)


@dataclass(frozen=True, slots=True)
class RunStatus:
    """What the cluster knows of an instance's process (``services.start``)."""

    wanted: bool
    #: The agent's word: starting, running, exited, backoff, stopped or failed ("" before any).
    state: str
    #: Crashes restarted since the last start.
    restarts: int
    last_exit_code: int
    pid: int
    since_unix_ms: int
    message: str
    #: The revision of the last change.
    revision: int


@dataclass(frozen=True, slots=True)
class Placed:
    """What :meth:`services.place` did: the instance, whether it already ran, and why that node."""

    service: ServiceRecord
    existing: bool
    placement: str


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    name: str
    version: str
    host: str
    #: The ports it holds, by their declared names.
    ports: tuple[PortAssignment, ...]
    #: The manifest as registered, in its document (YAML/JSON) shape.
    manifest: dict[str, Any]
    create_revision: int
    mod_revision: int
    registered_unix_ms: int
    health: ServiceHealth
    run: RunStatus


# --- conversion ----------------------------------------------------------------------------------


def convert(cls: type[D], message: Message, **extra: Any) -> D:
    """A result dataclass from a message whose fields carry the same names.

    Nested dataclasses, enums, tuples of either and optional sub-messages (None when unset) follow
    the dataclass's annotations; ``extra`` fills fields the message does not have (``revision``).
    """
    readers = _readers(cls)  # type: ignore[arg-type]  # classes are hashable
    return cls(**{name: extra[name] if name in extra else read(message) for name, read in readers})


_Reader = Callable[[Any], Any]


@functools.cache
def _readers(cls: type) -> tuple[tuple[str, _Reader], ...]:
    """(field name, how to read it from a message) for a result dataclass, worked out once per
    class from its annotations: resolving them (``typing.get_type_hints``, ``get_origin``) per hit
    cost more than the conversion itself (a search answer converts hundreds of models)."""
    hints = typing.get_type_hints(cls)
    return tuple((field.name, _reader(hints[field.name], field.name)) for field in fields(cls))


def _reader(hint: Any, name: str) -> _Reader:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    get = operator.attrgetter(name)
    if origin is tuple:
        item = _converter(args[0])
        if item is None:
            return lambda message: tuple(get(message))
        return lambda message: tuple(map(item, get(message)))
    if origin is dict:
        return lambda message: dict(sorted(get(message).items()))  # a protobuf map iterates in no stable order
    if args and type(None) in args:  # Optional[X]
        inner = _converter(next(arg for arg in args if arg is not type(None)))
        if inner is None:
            return lambda message: get(message) if message.HasField(name) else None
        return lambda message: inner(get(message)) if message.HasField(name) else None
    single = _converter(hint)
    if single is None:
        return get
    return lambda message: single(get(message))


def _converter(hint: Any) -> _Reader | None:
    """How one value of type ``hint`` is made from its message value; None: it is used as it is."""
    if isinstance(hint, type) and is_dataclass(hint):
        return functools.partial(convert, hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        members = {member.value: member for member in hint}
        fallback = next(iter(hint))  # a newer server's value
        return lambda raw: members.get(raw, fallback)
    return None


def revision_of(response: Message) -> int:
    return int(response.header.revision)  # type: ignore[attr-defined]


def service_record(record: ports_pb2.ServiceRecord) -> ServiceRecord:
    manifest = record.manifest
    return ServiceRecord(
        name=manifest.name,
        version=manifest.version,
        host=manifest.host,
        ports=tuple(convert(PortAssignment, a) for a in record.ports),
        manifest=json_format.MessageToDict(manifest, preserving_proto_field_name=True),
        create_revision=record.create_revision,
        mod_revision=record.mod_revision,
        registered_unix_ms=record.registered_unix_ms,
        health=convert(ServiceHealth, record.health),
        run=convert(RunStatus, record.run),
    )


def health_status(status: HealthStatus | str) -> ports_pb2.HealthStatus:
    """ "passing", "warning", "critical" or a HealthStatus, as the wire value; InvalidArgument otherwise."""
    if isinstance(status, HealthStatus):
        return status.value  # type: ignore[no-any-return]
    try:
        return HealthStatus[status.upper()].value  # type: ignore[no-any-return]
    except KeyError:
        raise errors.InvalidArgument(f"health status {status!r} is not passing, warning or critical") from None


def manifest_message(manifest: Mapping[str, Any]) -> ports_pb2.ServiceManifest:
    """A manifest document (parsed YAML or JSON) as the wire message; InvalidArgument naming the problem."""
    if not isinstance(manifest, Mapping):
        raise errors.InvalidArgument("a service manifest must be a mapping (name, host, ports, ...)")
    _check_numbers(manifest, ports_pb2.ServiceManifest.DESCRIPTOR, "")
    message = _parse(manifest, ports_pb2.ServiceManifest(), "service manifest")
    if message.run.stop_timeout_s > MAX_STOP_TIMEOUT_S:
        raise errors.InvalidArgument(
            f"service manifest: run.stop_timeout_s is at most {MAX_STOP_TIMEOUT_S} (seconds between the "
            f"agent's SIGTERM and its SIGKILL), not {message.run.stop_timeout_s}"
        )
    return message


#: The longest ``run.stop_timeout_s``: what the SDK accepts and what an agent waits at most.
MAX_STOP_TIMEOUT_S = 300


# 32-bit integer fields: a person writes them as numbers. (The proto3 JSON mapping also takes
# "8080", and writes 64-bit integers as strings, so those keep its rules: an exported manifest
# must read back.)
_INT32_TYPES = frozenset(
    {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_FIXED32}
)


def _check_numbers(document: Mapping[str, Any], descriptor: Any, path: str) -> None:
    """InvalidArgument for a 32-bit integer field given as anything but a whole number (``port:
    "8080"``, ``true``, ``80.5``), naming where; the rest is left to the JSON mapping's parser."""
    for key, value in document.items():
        field = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        if field is None:
            continue  # the parser names unknown fields
        where = f"{path}{key}"
        if field.type == FieldDescriptor.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
            items = value if field.is_repeated and isinstance(value, list) else [value]
            for index, item in enumerate(items):
                if isinstance(item, Mapping):
                    suffix = f"[{index}]" if items is value else ""
                    _check_numbers(item, field.message_type, f"{where}{suffix}.")
        elif field.type in _INT32_TYPES:
            values = value if isinstance(value, list) else [value]
            if any(isinstance(item, bool) or not isinstance(item, int) for item in values):
                raise errors.InvalidArgument(f"service manifest: {where} must be a whole number, not {value!r}")


def port_map_message(document: Mapping[str, Any]) -> ports_pb2.PortMap:
    if not isinstance(document, Mapping):
        raise errors.InvalidArgument("a port map document must be a JSON object")
    return _parse(document, ports_pb2.PortMap(), "port map document")


def _parse(document: Mapping[str, Any], message: M, what: str) -> M:
    try:
        json_format.ParseDict(dict(document), message)
    except json_format.ParseError as exc:
        raise errors.InvalidArgument(f"{what} is malformed: {exc}") from None
    return message


def port_map_document(port_map: ports_pb2.PortMap) -> dict[str, Any]:
    """The exported port map as a JSON-ready dict (proto3 JSON mapping, the backup file format)."""
    return json_format.MessageToDict(port_map, preserving_proto_field_name=True)


def read_options(consistency: Any, min_revision: int) -> common_pb2.ReadOptions:
    return common_pb2.ReadOptions(consistency=consistency.value, min_revision=min_revision)


def observed_ports(
    ports: Iterable[int | tuple[int, str] | tuple[int, str, PortProtocol | str] | Mapping[str, Any]],
) -> list[ports_pb2.ObservedPort]:
    """Observed ports given as ints, (port, holder) or (port, holder, protocol) tuples, or
    {"port", "holder", "pid", "protocol"} mappings; TCP unless a protocol is given."""
    out = []
    for item in ports:
        if isinstance(item, int):
            out.append(ports_pb2.ObservedPort(port=item))
        elif isinstance(item, tuple):
            protocol = protocol_value(item[2]) if len(item) > 2 else ports_pb2.PORT_PROTOCOL_TCP  # type: ignore[misc]
            out.append(ports_pb2.ObservedPort(port=item[0], holder=item[1], protocol=protocol))  # type: ignore[arg-type]
        else:
            out.append(
                ports_pb2.ObservedPort(
                    port=int(item["port"]),
                    holder=str(item.get("holder", "")),
                    pid=int(item.get("pid", 0)),
                    protocol=protocol_value(item.get("protocol", PortProtocol.TCP)),  # type: ignore[arg-type]
                )
            )
    return out


def warned(response: Any, result: R) -> R:
    """``result``, after issuing the answer's ``warnings`` as ControlPlaneWarning (at the caller's line)."""
    for text in response.warnings:
        warnings.warn(text, errors.ControlPlaneWarning, stacklevel=3)
    return result


def rid(request_id: str | None) -> str:
    return request_id or new_request_id()


# --- the RPCs ------------------------------------------------------------------------------------

_P = "/controlplane.v1.Ports/"
ALLOCATE = Rpc(_P + "Allocate", ports_pb2.AllocateResponse)
ASSIGN = Rpc(_P + "Assign", ports_pb2.AssignResponse)
RELEASE = Rpc(_P + "Release", ports_pb2.ReleaseResponse)
REASSIGN = Rpc(_P + "Reassign", ports_pb2.ReassignResponse)
RESERVE = Rpc(_P + "Reserve", ports_pb2.ReserveResponse)
UNRESERVE = Rpc(_P + "Unreserve", ports_pb2.UnreserveResponse)
SET_RANGE = Rpc(_P + "SetRange", ports_pb2.SetRangeResponse)
DELETE_RANGE = Rpc(_P + "DeleteRange", ports_pb2.DeleteRangeResponse)
LIST_RANGES = Rpc(_P + "ListRanges", ports_pb2.ListRangesResponse)
LIST = Rpc(_P + "List", ports_pb2.ListPortsResponse)
HISTORY = Rpc(_P + "History", ports_pb2.PortHistoryResponse)
REPORT_OBSERVED = Rpc(_P + "ReportObserved", ports_pb2.ReportObservedResponse)
CONFLICTS = Rpc(_P + "Conflicts", ports_pb2.ConflictsResponse)
# A dry run is a read; the transport picks write routing only when it applies.
RESOLVE = Rpc(_P + "ResolveConflicts", ports_pb2.ResolveConflictsResponse)
REPAIR = Rpc(_P + "Repair", ports_pb2.RepairResponse)
STATS = Rpc(_P + "Stats", ports_pb2.PortStatsResponse)
EXPORT = Rpc(_P + "Export", ports_pb2.ExportPortsResponse)
IMPORT = Rpc(_P + "Import", ports_pb2.ImportPortsResponse)

_S = "/controlplane.v1.Services/"
REGISTER = Rpc(_S + "Register", ports_pb2.RegisterServiceResponse)
DEREGISTER = Rpc(_S + "Deregister", ports_pb2.DeregisterServiceResponse)
LIST_SERVICES = Rpc(_S + "List", ports_pb2.ListServicesResponse)
REPORT_HEALTH = Rpc(_S + "ReportHealth", ports_pb2.ReportHealthResponse)
START = Rpc(_S + "Start", ports_pb2.StartServiceResponse)
STOP = Rpc(_S + "Stop", ports_pb2.StopServiceResponse)
REPORT_RUN = Rpc(_S + "ReportRun", ports_pb2.ReportRunResponse)

_L = "/controlplane.v1.Leases/"
GRANT = Rpc(_L + "Grant", leases_pb2.GrantLeaseResponse)
KEEPALIVE = Rpc(_L + "KeepAlive", leases_pb2.KeepAliveResponse)
REVOKE = Rpc(_L + "Revoke", leases_pb2.RevokeLeaseResponse)
LIST_LEASES = Rpc(_L + "List", leases_pb2.ListLeasesResponse)
