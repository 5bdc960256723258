"""The Leases service: grants, keepalives (answered by the leader's memory) and revocations."""

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
from controlplane.state import limits
from controlplane.v1 import (
    leases_pb2,
    leases_pb2_grpc,
)


@replicated_writes(leases_pb2.DESCRIPTOR.services_by_name["Leases"])
class LeasesService(leases_pb2_grpc.LeasesServicer):
    def __init__(self, node: Node) -> None:
        self._node = node

    async def Grant(
        self, request: leases_pb2.GrantLeaseRequest, context: grpc.aio.ServicerContext
    ) -> leases_pb2.GrantLeaseResponse:
        refuse_if(limits.check_lease_ttl(request.ttl_ms))
        return await replicate(self._node, "lease_grant", request, leases_pb2.GrantLeaseResponse)

    async def KeepAlive(
        self, request: leases_pb2.KeepAliveRequest, context: grpc.aio.ServicerContext
    ) -> leases_pb2.KeepAliveResponse:
        forwarded = await to_leader(self._node, context, lambda ch: leases_pb2_grpc.LeasesStub(ch).KeepAlive, request)
        if forwarded is not None:
            return forwarded
        lease = self._node.renew_from_memory(request.lease_id)
        if lease is not None:
            return leases_pb2.KeepAliveResponse(header=self._node.header(), lease=lease)
        return await replicate(self._node, "lease_keepalive", request, leases_pb2.KeepAliveResponse)

    async def List(
        self, request: leases_pb2.ListLeasesRequest, context: grpc.aio.ServicerContext
    ) -> leases_pb2.ListLeasesResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        leases = self._node.lease_views()
        return leases_pb2.ListLeasesResponse(header=self._node.header(), leases=leases)
