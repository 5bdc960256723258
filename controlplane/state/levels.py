"""Cluster levels: a change to what the replicated state machine does takes effect only once every
server's release can apply it (etcd's "cluster version", as one number).

During a rolling upgrade old and new releases apply the same log. A new release must then apply
every entry exactly as the old one does, or the replicas differ; so a change to *how* commands
apply (not only a new command) belongs to a level:

* The replicated state holds ``cluster_level``: ``BASE_LEVEL`` for a state from before levels
  existed, raised by the ``set_cluster_level`` command, never lowered (a restore keeps the cluster's).
* Each release applies up to ``APPLY_LEVEL`` and reports it in ``Cluster.Status``. The leader's
  autopilot raises the cluster level to the lowest ``apply_level`` of all servers, once every
  server has answered (one it cannot reach may be an old release).
* Below a feature's level, the state machine applies commands as the releases before it did
  (``as_applied_at``), and the servers refuse requests that use the feature before proposing them
  (``required_level``), saying which level they need.

The levels (append only; a level's meaning never changes once released):

1. ``BASE_LEVEL``: everything up to the release that brought levels.
2. ``UDP_PORTS``: ``PortProtocol``. TCP and UDP hold one port number separately, host reports
   and backups carry protocols, and a manifest's ``protocol: udp`` declares a UDP port. Below it, a
   release from before UDP dropped every ``PortProtocol`` field as unknown, and read a manifest's
   protocol as a text without meaning: every port was a TCP one.
3. ``PLACEMENT``: ``Services.Start`` without a node places the service. Below it, a release
   before placement dropped the request's manifest and refused its empty host as invalid.
4. ``SNAPSHOT_TABLES``: snapshots of format 2, one entry per domain table (command.proto,
   ``StateSnapshot``). Below it the servers write format 1, the only one the releases before it
   read (a leader sends its snapshot to a lagging follower of any release), and a restore refuses
   a format-2 backup as those releases do.
5. ``UNPLACED_CLIENTS``: the membership table keeps the clients it took a place from and could not
   place again (``UnplacedClient``), until they are placed again or their lease ends. Below it no
   such record is kept, loaded or restored: the releases before it did not know them.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from controlplane.v1 import command_pb2, membership_pb2, ports_pb2

BASE_LEVEL = 1
UDP_PORTS = 2
PLACEMENT = 3
SNAPSHOT_TABLES = 4
UNPLACED_CLIENTS = 5
#: The highest level this release applies.
APPLY_LEVEL = UNPLACED_CLIENTS

DESCRIPTIONS = {
    BASE_LEVEL: "the base (every release before levels)",
    UDP_PORTS: "UDP ports (TCP and UDP hold one port number separately)",
    PLACEMENT: "placement (services start without a node)",
    SNAPSHOT_TABLES: "snapshots by domain table (format 2)",
    UNPLACED_CLIENTS: "unplaced clients kept with why (ListUnplaced)",
}

_PORT_PROTOCOL = ports_pb2.DESCRIPTOR.enum_types_by_name["PortProtocol"]
# The commands that can carry a PortProtocol (a restore's snapshot is bytes: see the machine).
_PORT_COMMANDS = frozenset(
    {
        "ports_allocate",
        "ports_assign",
        "ports_release",
        "ports_observe",
        "ports_import",
        "service_register",
        "service_start",
    }
)


def stored_level(level: int) -> int:
    """A stored level as a number: 0 (absent, from before levels) is the base."""
    return level or BASE_LEVEL


def required_level(command: command_pb2.Command) -> int:
    """The lowest cluster level at which ``command`` means what it says."""
    kind = command.WhichOneof("body")
    if kind == "restore_state":
        return SNAPSHOT_TABLES if _snapshot_format(command.restore_state.snapshot) > 1 else BASE_LEVEL
    if kind == "service_start" and places(command.service_start):
        return PLACEMENT  # above UDP_PORTS: covers a UDP port in the manifest too
    if kind in _PORT_COMMANDS and _uses_udp(command):
        return UDP_PORTS
    return BASE_LEVEL


def _snapshot_format(data: bytes) -> int:
    """A snapshot's format version (0 if it does not parse: the restore itself says why)."""
    try:
        return command_pb2.StateSnapshot.FromString(data).format_version
    except DecodeError:
        return 0


def as_applied_at(command: command_pb2.Command, level: int) -> command_pb2.Command:
    """``command`` as the releases of ``level`` see it: below UDP_PORTS, without its PortProtocol
    fields (they dropped them as unknown); below PLACEMENT, a start without its manifest. The
    command itself when nothing differs."""
    kind = command.WhichOneof("body")
    strip_start = kind == "service_start" and level < PLACEMENT and command.service_start.HasField("manifest")
    strip_udp = level < UDP_PORTS and kind in _PORT_COMMANDS and _uses_udp(command)
    if not strip_start and not strip_udp:
        return command
    legacy = command_pb2.Command()
    legacy.CopyFrom(command)
    if strip_start:
        legacy.service_start.ClearField("manifest")
    if strip_udp:
        clear_port_protocols(legacy)
    return legacy


def places(request: ports_pb2.StartServiceRequest) -> bool:
    """Whether a start asks the cluster to place the service (no node, or a manifest)."""
    return not request.host or request.HasField("manifest")


def ports_state_at(state: ports_pb2.PortsState, level: int) -> None:
    """``state`` (a snapshot's or a backup's port table) as the releases of ``level`` hold it, in
    place. Below UDP_PORTS, without protocols: the releases before it kept a PortProtocol they did
    not know as an unknown field, in their state and their dumps, and never read it."""
    if level < UDP_PORTS:
        clear_port_protocols(state)


def membership_state_at(state: membership_pb2.MembershipState, level: int) -> None:
    """``state`` (a snapshot's or a backup's membership table) as the releases of ``level`` hold it,
    in place. Below UNPLACED_CLIENTS, without unplaced clients: the releases before it never looked
    at (nor refused) them."""
    if level < UNPLACED_CLIENTS:
        del state.unplaced[:]


def clear_port_protocols(message: Message) -> None:
    """Clear every PortProtocol field in ``message`` and the messages inside it, in place."""
    for field, value in message.ListFields():
        if field.enum_type is _PORT_PROTOCOL:
            message.ClearField(field.name)
        for inner in _messages_in(field, value):
            clear_port_protocols(inner)


def _uses_udp(message: Message) -> bool:
    """Whether any PortProtocol field in ``message`` (or below it) holds anything but TCP. A
    manifest's protocol *text* does not count: below UDP_PORTS it is applied as TCP, as the older
    releases did, so redeploying a manifest that said "udp" all along keeps working mid-upgrade."""
    for field, value in message.ListFields():
        if field.enum_type is _PORT_PROTOCOL:
            if any(protocol != ports_pb2.PORT_PROTOCOL_TCP for protocol in (value if field.is_repeated else [value])):
                return True
        elif any(_uses_udp(inner) for inner in _messages_in(field, value)):
            return True
    return False


def _messages_in(field: FieldDescriptor, value: object) -> list[Message]:
    """The messages a field holds: none for a scalar, one for a message field, all of a repeated
    or map field's message values."""
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return []
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        values = list(value.values())  # type: ignore[attr-defined]
    elif field.is_repeated:
        values = list(value)  # type: ignore[call-overload]
    else:
        values = [value]
    return [inner for inner in values if isinstance(inner, Message)]
