"""Thin gRPC servicers: parse the request, call the node's handler, build the response.

No decisions here and no error handling: handlers raise ``controlplane.errors`` exceptions and
``interceptor.ErrorsAndMetrics`` turns them into statuses in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from controlplane.errors import DeadlineExceeded, InvalidArgument, NoLeader, NotFound, Unavailable, error_from_rpc
from controlplane.server import metrics
from controlplane.server.interceptor import note_for_audit
from controlplane.server.node import Node
from controlplane.server.nodeview import node_views
from controlplane.server.search import page_offset, page_token
from controlplane.state import health, limits
from controlplane.state.gossip import check_configure, check_metrics
from controlplane.state.machine import DOMAIN_KV
from controlplane.state.membership import MAX_INSTANCE_ID_CHARS, check_network_fields, check_node_spec
from controlplane.state.models import check_version_fields
from controlplane.state.refusal import Refused
from controlplane.v1 import (
    cluster_pb2,
    cluster_pb2_grpc,
    command_pb2,
    common_pb2,
    gossip_pb2,
    gossip_pb2_grpc,
    kv_pb2,
    kv_pb2_grpc,
    leases_pb2,
    leases_pb2_grpc,
    membership_pb2,
    membership_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    ports_pb2,
    ports_pb2_grpc,
    watch_pb2,
    watch_pb2_grpc,
)

Resp = TypeVar("Resp", bound=Message)

SNAPSHOT_CHUNK_BYTES = 1024 * 1024
WATCH_PROGRESS_EVERY_S = 1.0


def _timeout(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining > 0 else None


class KVService(kv_pb2_grpc.KVServicer):
    def __init__(self, node: Node) -> None:
        self._node = node

    async def Put(self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext) -> kv_pb2.PutResponse:
        _check(limits.check_key(request.key) or limits.check_value(request.value))
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
        _check(limits.check_key(request.key))
        await self._node.prepare_read(request.read, _timeout(context))
        kv, revision = self._node.get(request.key)
        response = kv_pb2.GetResponse(header=self._node.header(revision), found=kv is not None)
        if kv is not None:
            response.kv.CopyFrom(kv)
        return response

    async def Delete(self, request: kv_pb2.DeleteRequest, context: grpc.aio.ServicerContext) -> kv_pb2.DeleteResponse:
        _check(limits.check_key(request.key))
        result = await self._node.write(
            command_pb2.Command(request_id=request.request_id, kv_delete=command_pb2.KvDelete(key=request.key))
        )
        body = result.kv_delete
        response = kv_pb2.DeleteResponse(header=self._node.header(result.revision), deleted=body.deleted)
        if body.HasField("prev_kv"):
            response.prev_kv.CopyFrom(body.prev_kv)
        return response

    async def List(self, request: kv_pb2.ListRequest, context: grpc.aio.ServicerContext) -> kv_pb2.ListResponse:
        await self._node.prepare_read(request.read, _timeout(context))
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
        _check(limits.check_key(request.key) or limits.check_value(request.value))
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


class WatchService(watch_pb2_grpc.WatchServicer):
    def __init__(self, node: Node) -> None:
        self._node = node

    async def Watch(
        self, request: watch_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[watch_pb2.WatchResponse]:
        domains = set(request.filter.domains) or {DOMAIN_KV}
        types = set(request.filter.types)
        prefix = request.filter.key_prefix
        next_revision = self._node.watch_start(request.from_revision)
        metrics.WATCH_STREAMS.inc()
        try:
            # First message: where the stream starts, so a client can resume even before any event.
            yield watch_pb2.WatchResponse(revision=next_revision - 1)
            last_sent = time.monotonic()
            while True:
                # Nothing new within the progress interval is fine: a progress notice goes out below.
                with contextlib.suppress(DeadlineExceeded):
                    await self._node.wait_for_revision(next_revision, WATCH_PROGRESS_EVERY_S)
                events, _applied = self._node.watch_read(next_revision)
                if events:
                    # Every revision has exactly one event, so this covers every revision up to here.
                    next_revision = events[-1].revision + 1
                matched = [
                    event
                    for event in events
                    if event.domain in domains and event.key.startswith(prefix) and (not types or event.type in types)
                ]
                if matched or time.monotonic() - last_sent >= WATCH_PROGRESS_EVERY_S:
                    yield watch_pb2.WatchResponse(events=matched, revision=next_revision - 1)
                    last_sent = time.monotonic()
        finally:  # the client went away, cancelled, or the server is stopping
            metrics.WATCH_STREAMS.dec()


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
        members = await self._node.add_member(request, _timeout(context))
        return cluster_pb2.AddMemberResponse(members=members)

    async def RemoveMember(
        self, request: cluster_pb2.RemoveMemberRequest, context: grpc.aio.ServicerContext
    ) -> cluster_pb2.RemoveMemberResponse:
        members = await self._node.remove_member(request, _timeout(context))
        return cluster_pb2.RemoveMemberResponse(members=members)

    async def TransferLeadership(
        self, request: cluster_pb2.TransferLeadershipRequest, context: grpc.aio.ServicerContext
    ) -> cluster_pb2.TransferLeadershipResponse:
        leader_id, term = await self._node.transfer_leadership(request.target_id, _timeout(context))
        return cluster_pb2.TransferLeadershipResponse(leader_id=leader_id, term=term)

    async def Snapshot(
        self, request: cluster_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cluster_pb2.SnapshotChunk]:
        # Linearizable, like a default read: a backup taken on a follower right after a write was
        # acknowledged must hold it (a follower may not have applied it yet).
        await self._node.prepare_read(common_pb2.ReadOptions(), _timeout(context))
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
            b"".join(parts), expected_sha, _timeout(context), header.include_auth, header.request_id
        )
        return cluster_pb2.RestoreResponse(
            revision=result.revision, keys=result.restore.keys, auth_restored=header.include_auth
        )


FORWARDED_METADATA = ("cp-forwarded", "1")


async def _to_leader(
    node: Node,
    context: grpc.aio.ServicerContext,
    method: Callable[[grpc.aio.Channel], Callable[..., Awaitable[Resp]]],
    request: Message,
) -> Resp | None:
    """A follower hands a keepalive to the leader, whose memory holds renewals (renewals.py); None
    when this server should answer itself (it leads, renewals are off, no leader is known, or the
    call was already forwarded once: then it goes through the log, which forwards on its own).
    """
    if node.raft.is_leader() or not node.config.lease_checkpoint_interval_s:
        return None
    if FORWARDED_METADATA in tuple(context.invocation_metadata() or ()):
        return None
    try:
        channel = node.leader_channel()
    except NoLeader:
        return None
    try:
        return await method(channel)(request, timeout=_timeout(context) or 5.0, metadata=(FORWARDED_METADATA,))
    except grpc.aio.AioRpcError as exc:
        raise error_from_rpc(exc) from None


async def _replicate(node: Node, field: str, request: Message, response_type: type[Resp]) -> Resp:
    """Propose a request message as the command body ``field``; answer with the result body.

    Port, service and lease commands carry their request message (request_id lifted into the
    envelope, the dedupe key) and their results the response message; the header is added here.
    """
    command = command_pb2.Command(request_id=getattr(request, "request_id", ""))
    body = getattr(command, field)
    body.CopyFrom(request)
    body.ClearField("request_id")
    # Fields this server does not know never reach the log: a state machine could copy them
    # into what it stores (a 1 MiB blob inside a nested message passed every size check), and
    # servers of another release would apply them differently.
    body.DiscardUnknownFields()
    result = await node.write(command)
    # A copy: the result may be the one the dedupe table keeps, which must not gain a header.
    response = response_type()
    response.CopyFrom(getattr(result, field))
    response.header.CopyFrom(node.header(result.revision))  # type: ignore[attr-defined]
    return response


class PortsService(ports_pb2_grpc.PortsServicer):
    """Writes go through the log (the state machine validates them); reads honour ReadOptions."""

    def __init__(self, node: Node) -> None:
        self._node = node

    async def Allocate(
        self, request: ports_pb2.AllocateRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.AllocateResponse:
        return await _replicate(self._node, "ports_allocate", request, ports_pb2.AllocateResponse)

    async def Assign(
        self, request: ports_pb2.AssignRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.AssignResponse:
        return await _replicate(self._node, "ports_assign", request, ports_pb2.AssignResponse)

    async def Release(
        self, request: ports_pb2.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ReleaseResponse:
        return await _replicate(self._node, "ports_release", request, ports_pb2.ReleaseResponse)

    async def Reassign(
        self, request: ports_pb2.ReassignRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ReassignResponse:
        return await _replicate(self._node, "ports_reassign", request, ports_pb2.ReassignResponse)

    async def Reserve(
        self, request: ports_pb2.ReserveRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ReserveResponse:
        return await _replicate(self._node, "ports_reserve", request, ports_pb2.ReserveResponse)

    async def Unreserve(
        self, request: ports_pb2.UnreserveRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.UnreserveResponse:
        return await _replicate(self._node, "ports_unreserve", request, ports_pb2.UnreserveResponse)

    async def SetRange(
        self, request: ports_pb2.SetRangeRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.SetRangeResponse:
        return await _replicate(self._node, "ports_set_range", request, ports_pb2.SetRangeResponse)

    async def DeleteRange(
        self, request: ports_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.DeleteRangeResponse:
        return await _replicate(self._node, "ports_delete_range", request, ports_pb2.DeleteRangeResponse)

    async def ReportObserved(
        self, request: ports_pb2.ReportObservedRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ReportObservedResponse:
        return await _replicate(self._node, "ports_observe", request, ports_pb2.ReportObservedResponse)

    async def Repair(
        self, request: ports_pb2.RepairRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.RepairResponse:
        return await _replicate(self._node, "ports_repair", request, ports_pb2.RepairResponse)

    async def Import(
        self, request: ports_pb2.ImportPortsRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ImportPortsResponse:
        if request.ByteSize() > limits.MAX_RESTORE_BYTES:
            raise InvalidArgument(f"a port map import is one log entry, limited to {limits.MAX_RESTORE_BYTES} bytes")
        # Validate here first: a bad document is refused without a trip through the log.
        self._node.read_state(lambda: self._node.machine.ports.validate_map(request.map))
        return await _replicate(self._node, "ports_import", request, ports_pb2.ImportPortsResponse)

    async def ResolveConflicts(
        self, request: ports_pb2.ResolveConflictsRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ResolveConflictsResponse:
        if not request.dry_run:
            return await _replicate(self._node, "ports_resolve", request, ports_pb2.ResolveConflictsResponse)
        await self._node.prepare_read(common_pb2.ReadOptions(), _timeout(context))
        ports = self._node.machine.ports

        def plan() -> tuple[list[ports_pb2.PortMove], list[ports_pb2.Conflict]]:
            if request.host:
                ports.known_host(request.host)
            return ports.plan_resolution(request.host)

        (moves, unresolved), revision = self._node.read_state(plan)
        return ports_pb2.ResolveConflictsResponse(
            header=self._node.header(revision), moves=moves, unresolved=unresolved
        )

    async def ListRanges(
        self, request: ports_pb2.ListRangesRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ListRangesResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        ports = self._node.machine.ports
        ranges, revision = self._node.read_state(lambda: sorted(ports.ranges.values(), key=lambda r: r.start))
        return ports_pb2.ListRangesResponse(header=self._node.header(revision), ranges=ranges)

    async def List(
        self, request: ports_pb2.ListPortsRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ListPortsResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        ports = self._node.machine.ports

        def read() -> tuple[list[ports_pb2.PortAssignment], list[ports_pb2.Reservation]]:
            if request.range:
                ports.range_named(request.range)
            return (
                ports.list_assignments(request.host, request.service, request.range),
                ports.list_reservations(request.host) if not request.service else [],
            )

        (assignments, reservations), revision = self._node.read_state(read)
        return ports_pb2.ListPortsResponse(
            header=self._node.header(revision), assignments=assignments, reservations=reservations
        )

    async def History(
        self, request: ports_pb2.PortHistoryRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.PortHistoryResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        ports = self._node.machine.ports
        (entries, total), revision = self._node.read_state(
            lambda: ports.service_history(request.service, request.after_revision)
        )
        return ports_pb2.PortHistoryResponse(header=self._node.header(revision), entries=entries, total=total)

    async def Conflicts(
        self, request: ports_pb2.ConflictsRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ConflictsResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        ports = self._node.machine.ports

        def read() -> list[ports_pb2.Conflict]:
            if request.host:
                ports.known_host(request.host)
            return ports.conflicts(request.host)

        conflicts, revision = self._node.read_state(read)
        return ports_pb2.ConflictsResponse(header=self._node.header(revision), conflicts=conflicts)

    async def Stats(
        self, request: ports_pb2.PortStatsRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.PortStatsResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        ports = self._node.machine.ports

        def read() -> ports_pb2.PortStatsResponse:
            if request.host:
                ports.known_host(request.host)
            return ports.stats(request.host)

        response, revision = self._node.read_state(read)
        response.header.CopyFrom(self._node.header(revision))
        return response

    async def Export(
        self, request: ports_pb2.ExportPortsRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ExportPortsResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        machine = self._node.machine
        port_map, revision = self._node.read_state(lambda: machine.ports.export_map(machine.revision))
        return ports_pb2.ExportPortsResponse(header=self._node.header(revision), map=port_map)


class ServicesService(ports_pb2_grpc.ServicesServicer):
    def __init__(self, node: Node) -> None:
        self._node = node

    async def Register(
        self, request: ports_pb2.RegisterServiceRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.RegisterServiceResponse:
        return await _replicate(self._node, "service_register", request, ports_pb2.RegisterServiceResponse)

    async def Deregister(
        self, request: ports_pb2.DeregisterServiceRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.DeregisterServiceResponse:
        return await _replicate(self._node, "service_deregister", request, ports_pb2.DeregisterServiceResponse)

    async def List(
        self, request: ports_pb2.ListServicesRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ListServicesResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        ports = self._node.machine.ports
        services, revision = self._node.read_state(
            lambda: ports.list_services(request.host, request.name, request.healthy)
        )
        return ports_pb2.ListServicesResponse(header=self._node.header(revision), services=services)

    async def ReportHealth(
        self, request: ports_pb2.ReportHealthRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ReportHealthResponse:
        _check(limits.check_host(request.host) or limits.check_name(request.name, "service name"))
        if request.status not in health.STATUSES:
            _check(f"health status {request.status} is not passing, warning or critical")
        # Cut before the log: the state machine would cut it anyway, after carrying it.
        request.output = health.truncate(request.output)
        # A passing ttl report of a passing ttl check renews its lease from the leader's memory.
        forwarded = await _to_leader(
            self._node, context, lambda ch: ports_pb2_grpc.ServicesStub(ch).ReportHealth, request
        )
        if forwarded is not None:
            return forwarded
        answered = self._node.ttl_pass_from_memory(request)
        if answered is not None:
            return ports_pb2.ReportHealthResponse(header=self._node.header(), health=answered)
        return await _replicate(self._node, "service_health", request, ports_pb2.ReportHealthResponse)

    async def Start(
        self, request: ports_pb2.StartServiceRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.StartServiceResponse:
        return await _replicate(self._node, "service_start", request, ports_pb2.StartServiceResponse)

    async def Stop(
        self, request: ports_pb2.StopServiceRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.StopServiceResponse:
        return await _replicate(self._node, "service_stop", request, ports_pb2.StopServiceResponse)

    async def ReportRun(
        self, request: ports_pb2.ReportRunRequest, context: grpc.aio.ServicerContext
    ) -> ports_pb2.ReportRunResponse:
        return await _replicate(self._node, "service_run_report", request, ports_pb2.ReportRunResponse)


class LeasesService(leases_pb2_grpc.LeasesServicer):
    def __init__(self, node: Node) -> None:
        self._node = node

    async def Grant(
        self, request: leases_pb2.GrantLeaseRequest, context: grpc.aio.ServicerContext
    ) -> leases_pb2.GrantLeaseResponse:
        _check(limits.check_lease_ttl(request.ttl_ms))
        return await _replicate(self._node, "lease_grant", request, leases_pb2.GrantLeaseResponse)

    async def KeepAlive(
        self, request: leases_pb2.KeepAliveRequest, context: grpc.aio.ServicerContext
    ) -> leases_pb2.KeepAliveResponse:
        forwarded = await _to_leader(self._node, context, lambda ch: leases_pb2_grpc.LeasesStub(ch).KeepAlive, request)
        if forwarded is not None:
            return forwarded
        lease = self._node.renew_from_memory(request.lease_id)
        if lease is not None:
            return leases_pb2.KeepAliveResponse(header=self._node.header(), lease=lease)
        return await _replicate(self._node, "lease_keepalive", request, leases_pb2.KeepAliveResponse)

    async def Revoke(
        self, request: leases_pb2.RevokeLeaseRequest, context: grpc.aio.ServicerContext
    ) -> leases_pb2.RevokeLeaseResponse:
        return await _replicate(self._node, "lease_revoke", request, leases_pb2.RevokeLeaseResponse)

    async def List(
        self, request: leases_pb2.ListLeasesRequest, context: grpc.aio.ServicerContext
    ) -> leases_pb2.ListLeasesResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        leases = self._node.lease_views()
        return leases_pb2.ListLeasesResponse(header=self._node.header(), leases=leases)


class ModelsService(models_pb2_grpc.ModelsServicer):
    """Registry writes go through the log; reads come from the state machine, search from the local index."""

    def __init__(self, node: Node) -> None:
        self._node = node

    async def RegisterVersion(
        self, request: models_pb2.RegisterVersionRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.RegisterVersionResponse:
        _refuse_early(lambda: check_version_fields(request))
        return await _replicate(self._node, "model_register", request, models_pb2.RegisterVersionResponse)

    async def BulkRegister(
        self, request: models_pb2.BulkRegisterRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.BulkRegisterResponse:
        if request.ByteSize() > limits.MAX_RESTORE_BYTES:
            raise InvalidArgument(f"a bulk registration is one log entry, limited to {limits.MAX_RESTORE_BYTES} bytes")
        for index, item in enumerate(request.versions):
            try:
                _refuse_early(lambda: check_version_fields(item))  # noqa: B023 (called at once)
            except InvalidArgument as exc:
                raise InvalidArgument(f"version #{index + 1} ({item.model}): {exc.message}") from None
        return await _replicate(self._node, "model_bulk_register", request, models_pb2.BulkRegisterResponse)

    async def UpdateModel(
        self, request: models_pb2.UpdateModelRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.UpdateModelResponse:
        return await _replicate(self._node, "model_update", request, models_pb2.UpdateModelResponse)

    async def SetVersionStatus(
        self, request: models_pb2.SetVersionStatusRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.SetVersionStatusResponse:
        return await _replicate(self._node, "model_set_status", request, models_pb2.SetVersionStatusResponse)

    async def UpdateVersion(
        self, request: models_pb2.UpdateVersionRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.UpdateVersionResponse:
        return await _replicate(self._node, "model_update_version", request, models_pb2.UpdateVersionResponse)

    async def SetAlias(
        self, request: models_pb2.SetAliasRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.SetAliasResponse:
        return await _replicate(self._node, "model_set_alias", request, models_pb2.SetAliasResponse)

    async def DeleteVersion(
        self, request: models_pb2.DeleteVersionRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.DeleteVersionResponse:
        return await _replicate(self._node, "model_delete_version", request, models_pb2.DeleteVersionResponse)

    async def DeleteModel(
        self, request: models_pb2.DeleteModelRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.DeleteModelResponse:
        return await _replicate(self._node, "model_delete", request, models_pb2.DeleteModelResponse)

    async def AddReplica(
        self, request: models_pb2.ReplicaRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ReplicaResponse:
        return await _replicate(self._node, "model_add_replica", request, models_pb2.ReplicaResponse)

    async def RemoveReplica(
        self, request: models_pb2.ReplicaRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ReplicaResponse:
        return await _replicate(self._node, "model_remove_replica", request, models_pb2.ReplicaResponse)

    async def GetModel(
        self, request: models_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.GetModelResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        registry = self._node.machine.registry
        (model, versions), revision = self._node.read_state(
            lambda: (registry.model(request.model), registry.versions_of(request.model))
        )
        return models_pb2.GetModelResponse(header=self._node.header(revision), model=model, versions=versions)

    async def GetVersion(
        self, request: models_pb2.GetVersionRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.GetVersionResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        registry = self._node.machine.registry
        version, revision = self._node.read_state(lambda: registry.resolve(request.model, request.version or "latest"))
        return models_pb2.GetVersionResponse(header=self._node.header(revision), version=version)

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        if request.limit > limits.MAX_LIST_LIMIT:
            raise InvalidArgument(f"limit {request.limit} is above the maximum {limits.MAX_LIST_LIMIT}")
        await self._node.prepare_read(request.read, _timeout(context))
        registry = self._node.machine.registry
        (models, more), revision = self._node.read_state(
            lambda: registry.list_models(request.prefix, request.start_after, request.limit or limits.MAX_LIST_LIMIT)
        )
        return models_pb2.ListModelsResponse(header=self._node.header(revision), models=models, more=more)

    async def Search(
        self, request: models_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.SearchResponse:
        offset, continued_from = page_offset(request)  # bad input is refused before any work
        await self._node.prepare_read(request.read, _timeout(context))
        # The index trails the state machine by one catch-up: wait until it reflects what this read
        # may see (everything applied, for LINEARIZABLE; min_revision, for STALE), and never less
        # than the page that gave the token (a lagging server must not answer an older page 2).
        stale = request.read.consistency == common_pb2.CONSISTENCY_STALE
        required = max(request.read.min_revision if stale else self._node.machine.revision, continued_from)
        if self._node.indexer is None:
            raise Unavailable(f"{self._node.node_id} is still starting: its search index is not built yet")
        index = await self._node.indexer.wait_indexed(required, _timeout(context))
        page = await index.search(
            request.query,
            tag=request.tag,
            family=request.family,
            format=request.format,
            status=request.status,
            owner=request.owner,
            limit=request.limit or 20,
            offset=offset,
            sort=request.sort,
        )
        following = offset + len(page.hits)
        more = bool(page.hits) and following < page.total
        registry = self._node.machine.registry
        with self._node.state_lock:
            hits = [
                models_pb2.SearchHit(model=registry.models[name], score=score)
                for name, score in page.hits
                if name in registry.models
            ]
        return models_pb2.SearchResponse(
            header=self._node.header(page.revision),
            hits=hits,
            total=page.total,
            query_ms=page.query_ms,
            engine=page.engine,
            suggestions=page.suggestions,
            next_page_token=page_token(request, following, page.revision) if more else "",
            offset=offset,
            sort=request.sort,
        )


class MembershipService(membership_pb2_grpc.MembershipServicer):
    """Nodes, networks, places and flags: writes through the log, reads honour ReadOptions."""

    def __init__(self, node: Node) -> None:
        self._node = node

    async def RegisterNode(
        self, request: membership_pb2.RegisterNodeRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.RegisterNodeResponse:
        _refuse_early(lambda: check_node_spec(request.node))
        if request.lease_ttl_ms:
            _check(limits.check_lease_ttl(request.lease_ttl_ms))
        _check(limits.check_text(request.instance_id, "instance id", MAX_INSTANCE_ID_CHARS))
        return await _replicate(self._node, "node_register", request, membership_pb2.RegisterNodeResponse)

    async def Heartbeat(
        self, request: membership_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.HeartbeatResponse:
        forwarded = await _to_leader(
            self._node, context, lambda ch: membership_pb2_grpc.MembershipStub(ch).Heartbeat, request
        )
        if forwarded is not None:
            return forwarded
        answered = self._node.heartbeat_from_memory(request)
        if answered is not None:
            return answered
        return await _replicate(self._node, "node_heartbeat", request, membership_pb2.HeartbeatResponse)

    async def DrainNode(
        self, request: membership_pb2.DrainNodeRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.DrainNodeResponse:
        return await _replicate(self._node, "node_drain", request, membership_pb2.DrainNodeResponse)

    async def DeregisterNode(
        self, request: membership_pb2.DeregisterNodeRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.DeregisterNodeResponse:
        return await _replicate(self._node, "node_deregister", request, membership_pb2.DeregisterNodeResponse)

    async def ForgetNode(
        self, request: membership_pb2.ForgetNodeRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.ForgetNodeResponse:
        return await _replicate(self._node, "node_forget", request, membership_pb2.ForgetNodeResponse)

    async def GetNode(
        self, request: membership_pb2.GetNodeRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.GetNodeResponse:
        _check(limits.check_member_id(request.node_id, "node id"))
        await self._node.prepare_read(request.read, _timeout(context))
        views = node_views(self._node, membership_pb2.ListNodesRequest(include_gone=True), only=request.node_id)
        found = views[0] if views else None
        if found is None:
            raise NotFound(f"no node {request.node_id!r} is registered or a server of this cluster")
        return membership_pb2.GetNodeResponse(header=self._node.header(), node=found)

    async def ListNodes(
        self, request: membership_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.ListNodesResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        return membership_pb2.ListNodesResponse(header=self._node.header(), nodes=node_views(self._node, request))

    async def CreateNetwork(
        self, request: membership_pb2.CreateNetworkRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.CreateNetworkResponse:
        _refuse_early(lambda: check_network_fields(request.network))
        return await _replicate(self._node, "network_create", request, membership_pb2.CreateNetworkResponse)

    async def UpdateNetwork(
        self, request: membership_pb2.UpdateNetworkRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.UpdateNetworkResponse:
        return await _replicate(self._node, "network_update", request, membership_pb2.UpdateNetworkResponse)

    async def DeleteNetwork(
        self, request: membership_pb2.DeleteNetworkRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.DeleteNetworkResponse:
        return await _replicate(self._node, "network_delete", request, membership_pb2.DeleteNetworkResponse)

    async def GetNetwork(
        self, request: membership_pb2.GetNetworkRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.GetNetworkResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        table = self._node.machine.membership
        (network, placements), revision = self._node.read_state(
            lambda: (table.network_view(request.name), table.list_placements(network=request.name))
        )
        return membership_pb2.GetNetworkResponse(
            header=self._node.header(revision), network=network, placements=placements
        )

    async def ListNetworks(
        self, request: membership_pb2.ListNetworksRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.ListNetworksResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        table = self._node.machine.membership
        networks, revision = self._node.read_state(lambda: table.list_networks(request.model))
        return membership_pb2.ListNetworksResponse(header=self._node.header(revision), networks=networks)

    async def JoinNetwork(
        self, request: membership_pb2.JoinNetworkRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.JoinNetworkResponse:
        return await _replicate(self._node, "network_join", request, membership_pb2.JoinNetworkResponse)

    async def LeaveNetwork(
        self, request: membership_pb2.LeaveNetworkRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.LeaveNetworkResponse:
        return await _replicate(self._node, "network_leave", request, membership_pb2.LeaveNetworkResponse)

    async def Assign(
        self, request: membership_pb2.AssignClientRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.AssignClientResponse:
        return await _replicate(self._node, "network_assign", request, membership_pb2.AssignClientResponse)

    async def ListPlacements(
        self, request: membership_pb2.ListPlacementsRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.ListPlacementsResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        table = self._node.machine.membership
        placements, revision = self._node.read_state(
            lambda: table.list_placements(request.network, request.node_id, request.client_id)
        )
        return membership_pb2.ListPlacementsResponse(header=self._node.header(revision), placements=placements)

    async def SetFlag(
        self, request: membership_pb2.SetFlagRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.SetFlagResponse:
        _check(limits.check_name(request.name, "flag name"))
        return await _replicate(self._node, "flag_set", request, membership_pb2.SetFlagResponse)

    async def ListFlags(
        self, request: membership_pb2.ListFlagsRequest, context: grpc.aio.ServicerContext
    ) -> membership_pb2.ListFlagsResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        table = self._node.machine.membership
        flags, revision = self._node.read_state(table.list_flags)
        return membership_pb2.ListFlagsResponse(header=self._node.header(revision), flags=flags)


class GossipService(gossip_pb2_grpc.GossipServicer):
    """Bandwidth reports and round bookkeeping through the log; reads honour ReadOptions."""

    def __init__(self, node: Node) -> None:
        self._node = node

    async def ReportBandwidth(
        self, request: gossip_pb2.ReportBandwidthRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.ReportBandwidthResponse:
        return await _replicate(self._node, "gossip_report_bandwidth", request, gossip_pb2.ReportBandwidthResponse)

    async def StartRound(
        self, request: gossip_pb2.StartRoundRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.StartRoundResponse:
        return await _replicate(self._node, "gossip_start_round", request, gossip_pb2.StartRoundResponse)

    async def ReportRound(
        self, request: gossip_pb2.ReportRoundRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.ReportRoundResponse:
        _refuse_early(lambda: check_metrics(request.metrics))
        return await _replicate(self._node, "gossip_report_round", request, gossip_pb2.ReportRoundResponse)

    async def EndRound(
        self, request: gossip_pb2.EndRoundRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.EndRoundResponse:
        return await _replicate(self._node, "gossip_end_round", request, gossip_pb2.EndRoundResponse)

    async def GetBandwidth(
        self, request: gossip_pb2.GetBandwidthRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.GetBandwidthResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        table = self._node.machine.gossip
        matrix, revision = self._node.read_state(lambda: table.matrix(request.node_id))
        return gossip_pb2.GetBandwidthResponse(header=self._node.header(revision), matrix=matrix)

    async def GetRound(
        self, request: gossip_pb2.GetRoundRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.GetRoundResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        table = self._node.machine.gossip
        found, revision = self._node.read_state(lambda: table.round(request.group, request.number))
        return gossip_pb2.GetRoundResponse(header=self._node.header(revision), round=found)

    async def ListRounds(
        self, request: gossip_pb2.ListRoundsRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.ListRoundsResponse:
        if request.limit > limits.MAX_LIST_LIMIT:
            raise InvalidArgument(f"limit {request.limit} is above the maximum {limits.MAX_LIST_LIMIT}")
        await self._node.prepare_read(request.read, _timeout(context))
        table = self._node.machine.gossip
        rounds, revision = self._node.read_state(
            lambda: table.list_rounds(request.group, request.after, request.limit or 100)
        )
        return gossip_pb2.ListRoundsResponse(header=self._node.header(revision), rounds=rounds)

    async def ConfigureGroup(
        self, request: gossip_pb2.ConfigureGroupRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.ConfigureGroupResponse:
        _refuse_early(lambda: check_configure(request))
        return await _replicate(self._node, "gossip_configure_group", request, gossip_pb2.ConfigureGroupResponse)

    async def DeleteGroup(
        self, request: gossip_pb2.DeleteGroupRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.DeleteGroupResponse:
        return await _replicate(self._node, "gossip_delete_group", request, gossip_pb2.DeleteGroupResponse)

    async def GetGroup(
        self, request: gossip_pb2.GetGroupRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.GetGroupResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        table = self._node.machine.gossip
        found, revision = self._node.read_state(lambda: table.group(request.group))
        return gossip_pb2.GetGroupResponse(header=self._node.header(revision), group=found)

    async def ListGroups(
        self, request: gossip_pb2.ListGroupsRequest, context: grpc.aio.ServicerContext
    ) -> gossip_pb2.ListGroupsResponse:
        await self._node.prepare_read(request.read, _timeout(context))
        table = self._node.machine.gossip
        groups, revision = self._node.read_state(table.list_groups)
        return gossip_pb2.ListGroupsResponse(header=self._node.header(revision), groups=groups)


def _refuse_early(check: Callable[[], None]) -> None:
    """Run a state-independent check of the state machine's before the log: same message, no round trip."""
    try:
        check()
    except Refused as refused:
        raise InvalidArgument(refused.message) from None


def _check(problem: str | None) -> None:
    if problem:
        raise InvalidArgument(problem)
