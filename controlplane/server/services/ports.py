"""The Ports service: allocations, assignments, ranges, reservations, conflicts and repair."""

from __future__ import annotations

import grpc

from controlplane.errors import InvalidArgument
from controlplane.server.node import Node
from controlplane.server.services._shared import (
    deadline_of,
    replicate,
    replicated_writes,
)
from controlplane.state import limits
from controlplane.state.ports import PortTable
from controlplane.v1 import (
    common_pb2,
    ports_pb2,
    ports_pb2_grpc,
)


@replicated_writes(ports_pb2.DESCRIPTOR.services_by_name["Ports"])
class PortsService(ports_pb2_grpc.PortsServicer):
    """Writes go through the log (the state machine validates them); reads honour ReadOptions."""

    def __init__(self, node: Node) -> None:
        self._node = node

    async def Import(
        self, request: ports_pb2.ImportPortsRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ImportPortsResponse:
        if request.ByteSize() > limits.MAX_RESTORE_BYTES:
            raise InvalidArgument(f"a port map import is one log entry, limited to {limits.MAX_RESTORE_BYTES} bytes")
        # Validate here first: a bad document is refused without a trip through the log.
        self._node.read_table(PortTable, lambda ports: ports.validate_map(request.map))
        return await replicate(self._node, "ports_import", request, ports_pb2.ImportPortsResponse)

    async def ResolveConflicts(
        self, request: ports_pb2.ResolveConflictsRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ResolveConflictsResponse:
        if not request.dry_run:
            return await replicate(self._node, "ports_resolve", request, ports_pb2.ResolveConflictsResponse)
        await self._node.prepare_read(common_pb2.ReadOptions(), deadline_of(context))

        def plan(ports: PortTable) -> tuple[list[ports_pb2.PortMove], list[ports_pb2.Conflict]]:
            if request.host:
                ports.known_host(request.host)
            return ports.plan_resolution(request.host)

        (moves, unresolved), revision = self._node.read_table(PortTable, plan)
        return ports_pb2.ResolveConflictsResponse(
            header=self._node.header(revision), moves=moves, unresolved=unresolved
        )

    async def ListRanges(
        self, request: ports_pb2.ListRangesRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ListRangesResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        ranges, revision = self._node.read_table(
            PortTable, lambda ports: sorted(ports.ranges.values(), key=lambda r: r.start)
        )
        return ports_pb2.ListRangesResponse(header=self._node.header(revision), ranges=ranges)

    async def List(
        self, request: ports_pb2.ListPortsRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ListPortsResponse:
        await self._node.prepare_read(request.read, deadline_of(context))

        def read(ports: PortTable) -> tuple[list[ports_pb2.PortAssignment], list[ports_pb2.Reservation]]:
            if request.range:
                ports.range_named(request.range)
            return (
                ports.list_assignments(request.host, request.service, request.range),
                ports.list_reservations(request.host) if not request.service else [],
            )

        (assignments, reservations), revision = self._node.read_table(PortTable, read)
        return ports_pb2.ListPortsResponse(
            header=self._node.header(revision), assignments=assignments, reservations=reservations
        )

    async def History(
        self, request: ports_pb2.PortHistoryRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.PortHistoryResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        (entries, total), revision = self._node.read_table(
            PortTable, lambda ports: ports.service_history(request.service, request.after_revision)
        )
        return ports_pb2.PortHistoryResponse(header=self._node.header(revision), entries=entries, total=total)

    async def Conflicts(
        self, request: ports_pb2.ConflictsRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ConflictsResponse:
        await self._node.prepare_read(request.read, deadline_of(context))

        def read(ports: PortTable) -> list[ports_pb2.Conflict]:
            if request.host:
                ports.known_host(request.host)
            return ports.conflicts(request.host)

        conflicts, revision = self._node.read_table(PortTable, read)
        return ports_pb2.ConflictsResponse(header=self._node.header(revision), conflicts=conflicts)

    async def Stats(
        self, request: ports_pb2.PortStatsRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.PortStatsResponse:
        await self._node.prepare_read(request.read, deadline_of(context))

        def read(ports: PortTable) -> ports_pb2.PortStatsResponse:
            if request.host:
                ports.known_host(request.host)
            return ports.stats(request.host)

        response, revision = self._node.read_table(PortTable, read)
        response.header.CopyFrom(self._node.header(revision))
        return response

    async def Export(
        self, request: ports_pb2.ExportPortsRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ExportPortsResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        port_map, revision = self._node.read_table(PortTable, lambda ports: ports.export_map(0))
        port_map.revision = revision  # read under the same lock as the map
        return ports_pb2.ExportPortsResponse(header=self._node.header(revision), map=port_map)
