"""The KV service: puts, gets, ranges, deletes and compare-and-swap over the replicated key space."""

from __future__ import annotations

import grpc

from controlplane.server.node import Node
from controlplane.server.services._shared import (
    deadline_of,
    refuse_if,
)
from controlplane.state import limits
from controlplane.v1 import (
    command_pb2,
    kv_pb2,
    kv_pb2_grpc,
)


class KVService(kv_pb2_grpc.KVServicer):
    def __init__(self, node: Node) -> None:
        self._node = node

    async def Put(self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext) -> kv_pb2.PutResponse:
        refuse_if(limits.check_key(request.key) or limits.check_value(request.value))
        result = await self._node.write(
            command_pb2.Command(
                request_id=request.request_id,
                kv_put=command_pb2.KvPut(key=request.key, value=request.value, prev_kv=request.prev_kv),
            )
        )
        response = kv_pb2.PutResponse(header=self._node.header(result.revision), kv=result.kv_put.kv)
        if result.kv_put.HasField("prev_kv"):
            response.prev_kv.CopyFrom(result.kv_put.prev_kv)
        return response

    async def Get(self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext) -> kv_pb2.GetResponse:
        refuse_if(limits.check_key(request.key))
        await self._node.prepare_read(request.read, deadline_of(context))
        kv, revision = self._node.get(request.key)
        response = kv_pb2.GetResponse(header=self._node.header(revision), found=kv is not None)
        if kv is not None:
            response.kv.CopyFrom(kv)
        return response

    async def Delete(self, request: kv_pb2.DeleteRequest, context: grpc.aio.ServicerContext) -> kv_pb2.DeleteResponse:
        refuse_if(limits.check_key(request.key))
        result = await self._node.write(
            command_pb2.Command(request_id=request.request_id, kv_delete=command_pb2.KvDelete(key=request.key))
        )
        body = result.kv_delete
        response = kv_pb2.DeleteResponse(header=self._node.header(result.revision), deleted=body.deleted)
        if body.HasField("prev_kv"):
            response.prev_kv.CopyFrom(body.prev_kv)
        return response

    async def List(self, request: kv_pb2.ListRequest, context: grpc.aio.ServicerContext) -> kv_pb2.ListResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        kvs, more, revision = self._node.list_keys(request)
        response = kv_pb2.ListResponse(header=self._node.header(revision), more=more)
        if request.keys_only:
            response.kvs.extend(
                kv_pb2.KeyValue(
                    key=kv.key,
                    create_revision=kv.create_revision,
                    mod_revision=kv.mod_revision,
                    version=kv.version,
                )
                for kv in kvs
            )
        else:
            response.kvs.extend(kvs)
        return response

    async def CompareAndSwap(
        self, request: kv_pb2.CompareAndSwapRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.CompareAndSwapResponse:
        refuse_if(limits.check_key(request.key) or limits.check_value(request.value))
        result = await self._node.write(
            command_pb2.Command(
                request_id=request.request_id,
                kv_compare_and_swap=command_pb2.KvCompareAndSwap(
                    key=request.key,
                    expected_mod_revision=request.expected_mod_revision,
                    value=request.value,
                    delete=request.delete,
                ),
            )
        )
        body = result.kv_compare_and_swap
        response = kv_pb2.CompareAndSwapResponse(
            header=self._node.header(result.revision), succeeded=body.succeeded, found=body.found
        )
        if body.HasField("kv"):
            response.kv.CopyFrom(body.kv)
        return response
