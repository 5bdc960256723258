"""The Cluster service: status, membership changes, leadership transfer, snapshots and restore."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import grpc

from controlplane.errors import InvalidArgument
from controlplane.server.interceptor import note_for_audit
from controlplane.server.node import Node
from controlplane.server.services._shared import (
    SNAPSHOT_CHUNK_BYTES,
    deadline_of,
)
from controlplane.state import limits
from controlplane.v1 import (
    cluster_pb2,
    cluster_pb2_grpc,
    common_pb2,
)


class ClusterService(cluster_pb2_grpc.ClusterServicer):
    def __init__(self, node: Node) -> None:
        self._node = node

    async def Status(
        self, request: cluster_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> cluster_pb2.StatusResponse:
        return self._node.status()

    async def AddMember(
        self, request: cluster_pb2.AddMemberRequest, context: grpc.aio.ServicerContext
    ) -> cluster_pb2.AddMemberResponse:
        members = await self._node.add_member(request, deadline_of(context))
        return cluster_pb2.AddMemberResponse(members=members)

    async def RemoveMember(
        self, request: cluster_pb2.RemoveMemberRequest, context: grpc.aio.ServicerContext
    ) -> cluster_pb2.RemoveMemberResponse:
        members = await self._node.remove_member(request, deadline_of(context))
        return cluster_pb2.RemoveMemberResponse(members=members)

    async def TransferLeadership(
        self, request: cluster_pb2.TransferLeadershipRequest, context: grpc.aio.ServicerContext
    ) -> cluster_pb2.TransferLeadershipResponse:
        leader_id, term = await self._node.transfer_leadership(request.target_id, deadline_of(context))
        return cluster_pb2.TransferLeadershipResponse(leader_id=leader_id, term=term)

    async def Snapshot(
        self, request: cluster_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cluster_pb2.SnapshotChunk]:
        # Linearizable, like a default read: a backup taken on a follower right after a write was
        # acknowledged must hold it (a follower may not have applied it yet).
        await self._node.prepare_read(common_pb2.ReadOptions(), deadline_of(context))
        data, revision = await asyncio.to_thread(self._node.backup)
        digest = hashlib.sha256(data).hexdigest()
        yield cluster_pb2.SnapshotChunk(
            data=data[:SNAPSHOT_CHUNK_BYTES], revision=revision, total_bytes=len(data), sha256=digest
        )
        for offset in range(SNAPSHOT_CHUNK_BYTES, len(data), SNAPSHOT_CHUNK_BYTES):
            yield cluster_pb2.SnapshotChunk(data=data[offset : offset + SNAPSHOT_CHUNK_BYTES])

    async def Restore(
        self, request_iterator: AsyncIterator[cluster_pb2.SnapshotChunk], context: grpc.aio.ServicerContext
    ) -> cluster_pb2.RestoreResponse:
        parts: list[bytes] = []
        size = 0
        expected_sha = ""
        expected_size = 0
        header = cluster_pb2.SnapshotChunk()
        async for chunk in request_iterator:
            if not parts:
                header = chunk
                expected_sha, expected_size = chunk.sha256, chunk.total_bytes
                if header.include_auth:
                    note_for_audit("with-auth")  # the audit record says so, refused or not
            size += len(chunk.data)
            if size > limits.MAX_RESTORE_BYTES:
                raise InvalidArgument(
                    f"backups larger than {limits.MAX_RESTORE_BYTES} bytes cannot be restored through the log"
                )
            parts.append(chunk.data)
        if expected_size and size != expected_size:
            raise InvalidArgument(f"received {size} bytes but the backup header says {expected_size}: truncated?")
        result = await self._node.restore(
            b"".join(parts), expected_sha, deadline_of(context), header.include_auth, header.request_id
        )
        return cluster_pb2.RestoreResponse(
            revision=result.revision, keys=result.restore.keys, auth_restored=header.include_auth
        )
