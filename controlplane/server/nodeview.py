"""The unified node view: one status per node, from the replicated membership table and this
server's view of Raft.

Servers appear whether or not they registered in the membership table: the Raft member directory
names them, and their role, voting status and connectivity come from the answering server's Raft
status. Agents' connectivity comes from their lease: heard from within its TTL, or not.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from controlplane.state.membership import ACTIVE, GONE_STATES, JOINING, LEFT
from controlplane.v1 import cluster_pb2, membership_pb2

if TYPE_CHECKING:
    from controlplane.server.node import Node

_RAFT_ROLES = {
    cluster_pb2.ROLE_LEADER: "leader",
    cluster_pb2.ROLE_FOLLOWER: "follower",
    cluster_pb2.ROLE_CANDIDATE: "candidate",
    cluster_pb2.ROLE_LEARNER: "learner",
}


def node_views(node: Node, request: membership_pb2.ListNodesRequest, only: str = "") -> list[membership_pb2.NodeView]:
    """Every node that matches the request's filters (or just ``only``), sorted by id. Call under no lock."""
    status = node.status()
    raft_members = {member.id: member for member in status.members if member.id}
    now_ms = time.time_ns() // 1_000_000
    views: dict[str, membership_pb2.NodeView] = {}
    with node.state_lock:
        machine = node.machine
        table = machine.membership
        for node_id in [only] if only else list(table.nodes):
            record = table.nodes.get(node_id)
            if record is None:
                continue
            view = membership_pb2.NodeView()
            view.node.CopyFrom(record)
            lease = machine.leases.leases.get(record.lease_id) if record.lease_id else None
            renewed = 0
            if lease is not None:
                # The leader answers keepalives from memory: its own record is the freshest; other
                # servers see the last checkpoint (renewals.py).
                renewed = max(lease.renewed_unix_ms, node.renewals.renewed(lease.id) or 0)
                view.last_heartbeat_unix_ms = renewed
                view.lease_ttl_ms = lease.ttl_ms
            view.networks.extend(table.networks_of(node_id))
            view.clients_served = table.clients_served_by(node_id)
            if record.state in GONE_STATES:
                view.connectivity = membership_pb2.CONNECTIVITY_GONE
            elif lease is not None and now_ms - renewed <= lease.ttl_ms:
                view.connectivity = membership_pb2.CONNECTIVITY_CONNECTED
            else:
                view.connectivity = membership_pb2.CONNECTIVITY_UNREACHABLE
            views[node_id] = view
        learners = {record.id for record in machine.directory.members.values() if record.learner}
        removed = list(machine.directory.removed_members)
    # The address book: the replicated directory over the configured peers, so servers show even
    # before they have published themselves (a fresh cluster's first seconds).
    directory = {address.id: address for address in node.members().values() if address.id and address.id not in removed}
    if only:
        directory = {only: directory[only]} if only in directory else {}
        removed = [only] if only in removed else []
    for server_id, server in directory.items():
        if server_id in views:
            view = views[server_id]
        else:
            view = membership_pb2.NodeView()
            view.node.spec.id = server_id
            view.node.spec.role = membership_pb2.NODE_ROLE_SERVER
            view.node.spec.addresses["grpc"] = server.client_address
            view.node.spec.addresses["raft"] = server.raft_address
            view.node.state = JOINING if server_id in learners else ACTIVE
            views[server_id] = view
        member = raft_members.get(server_id)
        learner = server_id in learners
        view.voter = not learner
        if member is not None:
            view.raft_role = "learner" if learner else _RAFT_ROLES.get(member.role, "")
            # Raft connectivity decides for a server: its lease (if it registered one) is secondary.
            view.connectivity = (
                membership_pb2.CONNECTIVITY_CONNECTED if member.healthy else membership_pb2.CONNECTIVITY_UNREACHABLE
            )
        else:
            view.raft_role = "learner" if learner else ""
            view.connectivity = membership_pb2.CONNECTIVITY_UNREACHABLE
    for server_id in removed:
        if server_id not in views:
            view = membership_pb2.NodeView()
            view.node.spec.id = server_id
            view.node.spec.role = membership_pb2.NODE_ROLE_SERVER
            view.node.state = LEFT
            view.node.reason = "removed from the Raft cluster"
            view.connectivity = membership_pb2.CONNECTIVITY_GONE
            views[server_id] = view
    return [views[node_id] for node_id in sorted(views) if _matches(views[node_id], request)]


def _matches(view: membership_pb2.NodeView, request: membership_pb2.ListNodesRequest) -> bool:
    record = view.node
    if request.role and record.spec.role != request.role:
        return False
    if request.state:
        if record.state != request.state:
            return False
    elif record.state in GONE_STATES and not request.include_gone:
        return False
    if not _labels_match(record.spec.labels, request.labels):
        return False
    if request.network and request.network not in view.networks:
        return False
    return not request.capability or request.capability in record.spec.capabilities


def _labels_match(have: Mapping[str, str], want: Mapping[str, str]) -> bool:
    return all(have.get(key) == value for key, value in want.items())
