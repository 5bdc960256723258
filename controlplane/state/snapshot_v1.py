"""Snapshot format 1: the layout every release before cluster level 4 (SNAPSHOT_TABLES) wrote, with
each domain in a field of its own and gossip nested in membership.

Frozen: no new domain is ever written here. It is still written while the cluster is below that
level (an older server of a rolling upgrade reads only this), and read forever (backups and data
directories outlive releases). The rest of the machine sees only the tables' states:
``table_states`` reads them out of a format-1 snapshot, ``write`` writes them back into one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from google.protobuf.message import Message

from controlplane.state import levels
from controlplane.v1 import auth_pb2, command_pb2, gossip_pb2, leases_pb2, membership_pb2, models_pb2, ports_pb2

M = TypeVar("M", bound=Message)

FORMAT_VERSION = 1
#: The fields that hold the domains, which format 2 keeps in ``tables`` instead.
DOMAIN_FIELDS = (
    "kvs",
    "members",
    "removed_members",
    "ports",
    "leases",
    "next_lease_id",
    "models",
    "membership",
    "auth",
)


#: The tables format 1 holds, by the names format 2 gives them.
TABLES = ("kv", "cluster", "ports", "leases", "models", "membership", "gossip", "auth")


def table_states(snap: command_pb2.StateSnapshot) -> dict[str, Message]:
    """Each table's part of a format-1 snapshot, as the tables load it; a part the snapshot lacks is
    left out, so its table loads its defaults, as format 1 defined.

    The model registry, the big part, is the parsed snapshot's own message (no copy: the registry
    keeps its own packed form, so nothing references the snapshot once it is loaded). Every other
    part gets memory of its own, because the tables keep references into it (stored keys): one
    kept reference would keep the whole parsed snapshot, registry included, alive.
    """
    membership = membership_pb2.MembershipState()
    membership.CopyFrom(snap.membership)
    membership.ClearField("gossip")
    copies: list[tuple[str, Message | None]] = [
        ("kv", command_pb2.KvState(kvs=snap.kvs)),
        ("cluster", command_pb2.MemberDirectoryState(members=snap.members, removed_members=snap.removed_members)),
        ("ports", snap.ports if snap.HasField("ports") else None),
        ("leases", leases_pb2.LeasesState(leases=snap.leases, next_lease_id=snap.next_lease_id)),
        ("membership", membership),
        ("gossip", snap.membership.gossip),
        ("auth", snap.auth if snap.HasField("auth") else None),
    ]
    states: dict[str, Message] = {"models": snap.models}
    for name, state in copies:
        if state is not None:
            states[name] = type(state).FromString(state.SerializeToString())
    return states


def write(
    header: command_pb2.StateSnapshot,
    states: Mapping[str, Message],
    auth_is_default: bool,
    cluster_level: int,
    end_marker: int,
) -> bytes:
    """The format-1 snapshot of a header (revision, time, history, dedupe) and the tables' states,
    byte for byte as the releases before format 2 wrote it."""
    snap = command_pb2.StateSnapshot()
    snap.CopyFrom(header)
    snap.format_version = FORMAT_VERSION
    kv = _of(states, "kv", command_pb2.KvState)
    directory = _of(states, "cluster", command_pb2.MemberDirectoryState)
    leases = _of(states, "leases", leases_pb2.LeasesState)
    snap.kvs.extend(kv.kvs)
    snap.members.extend(directory.members)
    snap.removed_members.extend(directory.removed_members)
    snap.ports.CopyFrom(_of(states, "ports", ports_pb2.PortsState))
    snap.leases.extend(leases.leases)
    snap.next_lease_id = leases.next_lease_id
    snap.models.CopyFrom(_of(states, "models", models_pb2.ModelsState))
    snap.membership.CopyFrom(_of(states, "membership", membership_pb2.MembershipState))
    snap.membership.gossip.CopyFrom(_of(states, "gossip", gossip_pb2.GossipState))
    tail = command_pb2.StateSnapshot()
    if not auth_is_default:
        tail.auth.CopyFrom(_of(states, "auth", auth_pb2.AuthState))
    if cluster_level != levels.BASE_LEVEL:
        tail.cluster_level = cluster_level
    if not tail.ListFields():
        # Auth at its defaults and the base level are what a snapshot without them loads as:
        # written as before either existed.
        snap.end_marker = end_marker
        return snap.SerializeToString(deterministic=True)
    # The end marker must stay the last bytes (a truncated snapshot lacks it), but the tail's
    # field numbers are above it: the parts are concatenated in this order (protobuf merges them).
    return (
        snap.SerializeToString(deterministic=True)
        + tail.SerializeToString(deterministic=True)
        + command_pb2.StateSnapshot(end_marker=end_marker).SerializeToString()
    )


def _of(states: Mapping[str, Message], name: str, kind: type[M]) -> M:
    """A table's state as the message format 1 knows it by (a table's state type never changes)."""
    state = states[name]
    if not isinstance(state, kind):
        raise TypeError(f"table {name!r} holds a {type(state).__name__}, not a {kind.__name__}")
    return state
