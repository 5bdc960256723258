"""The Services service: manifests whose declared ports are allocated atomically, their health and runs."""

from __future__ import annotations

import grpc

from controlplane.server.node import Node
from controlplane.server.services._shared import (
    deadline_of,
    refuse_if,
    replicate,
    replicated_writes,
    to_leader,
)
from controlplane.state import health, limits
from controlplane.state.ports import PortTable
from controlplane.v1 import (
    ports_pb2,
    ports_pb2_grpc,
)


@replicated_writes(ports_pb2.DESCRIPTOR.services_by_name["Services"])
class ServicesService(ports_pb2_grpc.ServicesServicer):
    def __init__(self, node: Node) -> None:
        self._node = node

    async def List(
        self, request: ports_pb2.ListServicesRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ListServicesResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        services, revision = self._node.read_table(
            PortTable, lambda ports: ports.list_services(request.host, request.name, request.healthy)
        )
        return ports_pb2.ListServicesResponse(header=self._node.header(revision), services=services)

    async def ReportHealth(
        self, request: ports_pb2.ReportHealthRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ReportHealthResponse:
        refuse_if(limits.check_host(request.host) or limits.check_name(request.name, "service name"))
        if request.status not in health.STATUSES:
            refuse_if(f"health status {request.status} is not passing, warning or critical")
        # Cut before the log: the state machine would cut it anyway, after carrying it.
        request.output = health.truncate(request.output)
        # A passing ttl report of a passing ttl check renews its lease from the leader's memory.
        forwarded = await to_leader(
            self._node, context, lambda ch: ports_pb2_grpc.ServicesStub(ch).ReportHealth, request
        )
        if forwarded is not None:
            return forwarded
        answered = self._node.ttl_pass_from_memory(request)
        if answered is not None:
            return ports_pb2.ReportHealthResponse(header=self._node.header(), health=answered)
        return await replicate(self._node, "service_health", request, ports_pb2.ReportHealthResponse)
