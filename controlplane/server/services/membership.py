"""The Membership service: nodes, their leases and activity, networks and their clients."""

from __future__ import annotations

import grpc

from controlplane.errors import NotFound
from controlplane.server.node import Node
from controlplane.server.nodeview import node_views
from controlplane.server.services._shared import (
    deadline_of,
    refuse_early,
    refuse_if,
    replicate,
    replicated_writes,
    to_leader,
)
from controlplane.state import levels, limits
from controlplane.state.membership import MAX_INSTANCE_ID_CHARS, MembershipTable, check_network_fields, check_node_spec
from controlplane.v1 import (
    membership_pb2,
    membership_pb2_grpc,
)


@replicated_writes(membership_pb2.DESCRIPTOR.services_by_name["Membership"])
class MembershipService(membership_pb2_grpc.MembershipServicer):
    """Nodes, networks, places and flags: writes through the log, reads honour ReadOptions."""

    def __init__(self, node: Node) -> None:
        self._node = node

    async def RegisterNode(
        self, request: membership_pb2.RegisterNodeRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.RegisterNodeResponse:
        refuse_early(lambda: check_node_spec(request.node))
        if request.lease_ttl_ms:
            refuse_if(limits.check_lease_ttl(request.lease_ttl_ms))
        refuse_if(limits.check_text(request.instance_id, "instance id", MAX_INSTANCE_ID_CHARS))
        return await replicate(self._node, "node_register", request, membership_pb2.RegisterNodeResponse)

    async def Heartbeat(
        self, request: membership_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.HeartbeatResponse:
        forwarded = await to_leader(
            self._node, context, lambda ch: membership_pb2_grpc.MembershipStub(ch).Heartbeat, request
        )
        if forwarded is not None:
            return forwarded
        answered = self._node.heartbeat_from_memory(request)
        if answered is not None:
            return answered
        return await replicate(self._node, "node_heartbeat", request, membership_pb2.HeartbeatResponse)

    async def GetNode(
        self, request: membership_pb2.GetNodeRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.GetNodeResponse:
        refuse_if(limits.check_member_id(request.node_id, "node id"))
        await self._node.prepare_read(request.read, deadline_of(context))
        views = node_views(self._node, membership_pb2.ListNodesRequest(include_gone=True), only=request.node_id)
        found = views[0] if views else None
        if found is None:
            raise NotFound(f"no node {request.node_id!r} is registered or a server of this cluster")
        return membership_pb2.GetNodeResponse(header=self._node.header(), node=found)

    async def ListNodes(
        self, request: membership_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.ListNodesResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        return membership_pb2.ListNodesResponse(header=self._node.header(), nodes=node_views(self._node, request))

    async def CreateNetwork(
        self, request: membership_pb2.CreateNetworkRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.CreateNetworkResponse:
        refuse_early(lambda: check_network_fields(request.network))
        return await replicate(self._node, "network_create", request, membership_pb2.CreateNetworkResponse)

    async def GetNetwork(
        self, request: membership_pb2.GetNetworkRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.GetNetworkResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        (network, placements), revision = self._node.read_table(
            MembershipTable,
            lambda table: (table.network_view(request.name), table.list_placements(network=request.name)),
        )
        return membership_pb2.GetNetworkResponse(
            header=self._node.header(revision), network=network, placements=placements
        )

    async def ListNetworks(
        self, request: membership_pb2.ListNetworksRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.ListNetworksResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        networks, revision = self._node.read_table(MembershipTable, lambda table: table.list_networks(request.model))
        return membership_pb2.ListNetworksResponse(header=self._node.header(revision), networks=networks)

    async def ListPlacements(
        self, request: membership_pb2.ListPlacementsRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.ListPlacementsResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        placements, revision = self._node.read_table(
            MembershipTable, lambda table: table.list_placements(request.network, request.node_id, request.client_id)
        )
        return membership_pb2.ListPlacementsResponse(header=self._node.header(revision), placements=placements)

    async def ListUnplaced(
        self, request: membership_pb2.ListUnplacedRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.ListUnplacedResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        # Below the level no server keeps them: an empty list would say "none" when it means "not kept".
        self._node.require_level(levels.UNPLACED_CLIENTS)
        clients, revision = self._node.read_table(MembershipTable, lambda table: table.list_unplaced(request.network))
        return membership_pb2.ListUnplacedResponse(header=self._node.header(revision), clients=clients)

    async def SetFlag(
        self, request: membership_pb2.SetFlagRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.SetFlagResponse:
        refuse_if(limits.check_name(request.name, "flag name"))
        return await replicate(self._node, "flag_set", request, membership_pb2.SetFlagResponse)

    async def ListFlags(
        self, request: membership_pb2.ListFlagsRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.ListFlagsResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        flags, revision = self._node.read_table(MembershipTable, lambda table: table.list_flags())
        return membership_pb2.ListFlagsResponse(header=self._node.header(revision), flags=flags)
