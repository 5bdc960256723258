"""The Gossip service: groups, rounds, their reports and the bandwidth matrix."""

from __future__ import annotations

import grpc

from controlplane.errors import InvalidArgument
from controlplane.server.node import Node
from controlplane.server.services._shared import (
    deadline_of,
    refuse_early,
    replicate,
    replicated_writes,
)
from controlplane.state import limits
from controlplane.state.gossip import GossipTable, check_configure, check_metrics
from controlplane.v1 import (
    gossip_pb2,
    gossip_pb2_grpc,
)


@replicated_writes(gossip_pb2.DESCRIPTOR.services_by_name["Gossip"])
class GossipService(gossip_pb2_grpc.GossipServicer):
    """Bandwidth reports and round bookkeeping through the log; reads honour ReadOptions."""

    def __init__(self, node: Node) -> None:
        self._node = node

    async def ReportRound(
        self, request: gossip_pb2.ReportRoundRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.ReportRoundResponse:
        refuse_early(lambda: check_metrics(request.metrics))
        return await replicate(self._node, "gossip_report_round", request, gossip_pb2.ReportRoundResponse)

    async def GetBandwidth(
        self, request: gossip_pb2.GetBandwidthRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.GetBandwidthResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        matrix, revision = self._node.read_table(GossipTable, lambda table: table.matrix(request.node_id))
        return gossip_pb2.GetBandwidthResponse(header=self._node.header(revision), matrix=matrix)

    async def GetRound(
        self, request: gossip_pb2.GetRoundRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.GetRoundResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        found, revision = self._node.read_table(GossipTable, lambda table: table.round(request.group, request.number))
        return gossip_pb2.GetRoundResponse(header=self._node.header(revision), round=found)

    async def ListRounds(
        self, request: gossip_pb2.ListRoundsRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.ListRoundsResponse:
        if request.limit > limits.MAX_LIST_LIMIT:
            raise InvalidArgument(f"limit {request.limit} is above the maximum {limits.MAX_LIST_LIMIT}")
        await self._node.prepare_read(request.read, deadline_of(context))
        rounds, revision = self._node.read_table(
            GossipTable, lambda table: table.list_rounds(request.group, request.after, request.limit or 100)
        )
        return gossip_pb2.ListRoundsResponse(header=self._node.header(revision), rounds=rounds)

    async def ConfigureGroup(
        self, request: gossip_pb2.ConfigureGroupRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.ConfigureGroupResponse:
        refuse_early(lambda: check_configure(request))
        return await replicate(self._node, "gossip_configure_group", request, gossip_pb2.ConfigureGroupResponse)

    async def GetGroup(
        self, request: gossip_pb2.GetGroupRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.GetGroupResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        found, revision = self._node.read_table(GossipTable, lambda table: table.group(request.group))
        return gossip_pb2.GetGroupResponse(header=self._node.header(revision), group=found)

    async def ListGroups(
        self, request: gossip_pb2.ListGroupsRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.ListGroupsResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        groups, revision = self._node.read_table(GossipTable, lambda table: table.list_groups())
        return gossip_pb2.ListGroupsResponse(header=self._node.header(revision), groups=groups)
