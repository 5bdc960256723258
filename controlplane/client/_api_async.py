"""``client.ports``, ``.services``, ``.leases``, ``.models``, ``.membership``, ``.gossip`` and ``.auth``
of the asyncio client, written by hand.

The blocking client's twin, ``_api_sync.py``, is generated from this file by
``scripts/unasync.py`` (``async def`` -> ``def``, ``await`` dropped, ``AsyncX`` -> ``X``), so the two
transports cannot drift: edit this file, then ``make sdk``; ``make test`` fails when the twin is
stale. Requests, conversions and result types live in ``_ports``, ``_models``, ``_membership``,
``_gossip`` and ``_auth``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from controlplane.client import _auth as A
from controlplane.client import _gossip as G
from controlplane.client import _membership as B
from controlplane.client import _models as R
from controlplane.client import _ports as P
from controlplane.client._auth import AuthChange, AuthRole, AuthStatus, AuthToken, AuthUser, CreatedToken, Permission
from controlplane.client._gossip import BandwidthMatrix, Round
from controlplane.client._kv import Consistency
from controlplane.client._membership import (
    Flag,
    JoinResult,
    Moves,
    Network,
    NetworkDetail,
    NodeRole,
    NodeState,
    NodeView,
    Placement,
    Registered,
    UnplacedClient,
)
from controlplane.client._models import (
    BulkRegistration,
    Model,
    ModelDetail,
    ModelFormat,
    ModelList,
    ModelVersion,
    Registration,
    SearchResult,
    VersionRef,
    VersionStatus,
)
from controlplane.client._ports import (
    AllocateResult,
    Conflict,
    HealthStatus,
    ImportResult,
    Lease,
    Placed,
    PortAssignment,
    PortHistory,
    PortList,
    PortProtocol,
    PortRange,
    PortStats,
    ReassignResult,
    ReleaseResult,
    RepairResult,
    Reservation,
    ResolveResult,
    RunStatus,
    ServiceHealth,
    ServiceRecord,
)
from controlplane.v1 import auth_pb2, gossip_pb2, leases_pb2, membership_pb2, models_pb2, ports_pb2

#: The client's unary call: (rpc, request, timeout) -> response, with its routing and retries.
AsyncUnary = Callable[[Any, Any, "float | None"], Awaitable[Any]]


class AsyncPorts:
    """Port assignments: ``client.ports``."""

    def __init__(self, unary: AsyncUnary) -> None:
        self._unary = unary

    async def allocate(
        self,
        host: str,
        service: str,
        name: str = "",
        *,
        range: str = "",
        preferred_port: int = 0,
        lease_id: int = 0,
        protocol: PortProtocol | str = PortProtocol.TCP,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> AllocateResult:
        """A free port for (host, service, name) in ``range`` (default "dynamic"), trying ``preferred_port`` first.

        Idempotent: the same (host, service, name) returns the port it already holds (``existing``).
        A full range raises ``ResourceExhausted`` naming it. ``protocol`` "udp" takes a UDP port: TCP
        and UDP hold the same number separately."""
        with P.checked_request("allocate"):
            request = ports_pb2.AllocateRequest(
                host=host,
                service=service,
                name=name,
                range=range,
                preferred_port=preferred_port,
                lease_id=lease_id,
                protocol=P.protocol_value(protocol),
                request_id=P.rid(request_id),
            )
        r = await self._unary(P.ALLOCATE, request, timeout)
        return P.AllocateResult(P.revision_of(r), P.convert(P.PortAssignment, r.assignment), r.existing)

    async def assign(
        self,
        host: str,
        service: str,
        port: int,
        name: str = "",
        *,
        lease_id: int = 0,
        force: bool = False,
        protocol: PortProtocol | str = PortProtocol.TCP,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> AllocateResult:
        """Assign a specific port (of ``protocol``, TCP by default). ``FailedPrecondition`` naming the holder
        if it is taken or reserved (or observed bound by something else, unless ``force``)."""
        with P.checked_request("assign"):
            request = ports_pb2.AssignRequest(
                host=host,
                service=service,
                name=name,
                port=port,
                lease_id=lease_id,
                force=force,
                protocol=P.protocol_value(protocol),
                request_id=P.rid(request_id),
            )
        r = await self._unary(P.ASSIGN, request, timeout)
        return P.AllocateResult(P.revision_of(r), P.convert(P.PortAssignment, r.assignment), r.existing)

    async def release(
        self,
        host: str,
        service: str = "",
        name: str = "",
        *,
        port: int = 0,
        protocol: PortProtocol | str = PortProtocol.TCP,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> ReleaseResult:
        """Free an assignment named by (service, name) or by ``port`` and ``protocol``. Releasing what is
        not assigned returns ``released=False``."""
        with P.checked_request("release"):
            request = ports_pb2.ReleaseRequest(
                host=host,
                service=service,
                name=name,
                port=port,
                protocol=P.protocol_value(protocol),
                request_id=P.rid(request_id),
            )
        r = await self._unary(P.RELEASE, request, timeout)
        return P.ReleaseResult(
            P.revision_of(r),
            r.released,
            P.convert(P.PortAssignment, r.assignment) if r.HasField("assignment") else None,
        )

    async def reassign(
        self,
        host: str,
        service: str,
        name: str = "",
        *,
        port: int = 0,
        range: str = "",
        reason: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> ReassignResult:
        """Move an assignment to ``port`` or (0) any free port in its range or ``range``; recorded in the history."""
        with P.checked_request("reassign"):
            request = ports_pb2.ReassignRequest(
                host=host,
                service=service,
                name=name,
                port=port,
                range=range,
                reason=reason,
                request_id=P.rid(request_id),
            )
        r = await self._unary(P.REASSIGN, request, timeout)
        return P.ReassignResult(P.revision_of(r), P.convert(P.PortAssignment, r.assignment), r.old_port)

    async def reserve(
        self,
        port: int,
        end_port: int = 0,
        *,
        host: str = "",
        reason: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> tuple[Reservation, ...]:
        """Keep ``port`` (through ``end_port``) out of every allocation, on ``host`` or (empty) on all hosts.
        ``FailedPrecondition`` naming the holder if one is in use."""
        with P.checked_request("reserve"):
            request = ports_pb2.ReserveRequest(
                host=host, port=port, end_port=end_port, reason=reason, request_id=P.rid(request_id)
            )
        r = await self._unary(P.RESERVE, request, timeout)
        return tuple(P.convert(P.Reservation, x) for x in r.reservations)

    async def unreserve(
        self,
        port: int,
        end_port: int = 0,
        *,
        host: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Lift reservations; returns how many were removed."""
        with P.checked_request("unreserve"):
            request = ports_pb2.UnreserveRequest(host=host, port=port, end_port=end_port, request_id=P.rid(request_id))
        r = await self._unary(P.UNRESERVE, request, timeout)
        return int(r.removed)

    async def set_range(
        self,
        name: str,
        start: int,
        end: int,
        *,
        description: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> PortRange:
        """Create or change a named range (inclusive bounds). Ranges may not overlap."""
        with P.checked_request("set_range"):
            request = ports_pb2.SetRangeRequest(
                range=ports_pb2.PortRange(name=name, start=start, end=end, description=description),
                request_id=P.rid(request_id),
            )
        r = await self._unary(P.SET_RANGE, request, timeout)
        return P.convert(P.PortRange, r.range)

    async def delete_range(self, name: str, *, request_id: str | None = None, timeout: float | None = None) -> bool:
        """Delete an empty range; False if it did not exist."""
        with P.checked_request("delete_range"):
            request = ports_pb2.DeleteRangeRequest(name=name, request_id=P.rid(request_id))
        r = await self._unary(P.DELETE_RANGE, request, timeout)
        return bool(r.deleted)

    async def ranges(
        self,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> tuple[PortRange, ...]:
        """Every range, by start port."""
        with P.checked_request("ranges"):
            request = ports_pb2.ListRangesRequest(read=P.read_options(consistency, min_revision))
        r = await self._unary(P.LIST_RANGES, request, timeout)
        return tuple(P.convert(P.PortRange, x) for x in r.ranges)

    async def list(
        self,
        *,
        host: str = "",
        service: str = "",
        range: str = "",
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> PortList:
        """Assignments (and reservations, unless filtered by service), by host and port."""
        with P.checked_request("list"):
            request = ports_pb2.ListPortsRequest(
                read=P.read_options(consistency, min_revision), host=host, service=service, range=range
            )
        r = await self._unary(P.LIST, request, timeout)
        return P.convert(P.PortList, r, revision=P.revision_of(r))

    async def history(
        self,
        service: str,
        *,
        after_revision: int = 0,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> PortHistory:
        """A service's port changes, oldest first."""
        with P.checked_request("history"):
            request = ports_pb2.PortHistoryRequest(
                read=P.read_options(consistency, min_revision), service=service, after_revision=after_revision
            )
        r = await self._unary(P.HISTORY, request, timeout)
        return P.convert(P.PortHistory, r, revision=P.revision_of(r))

    async def report_observed(
        self,
        host: str,
        ports: Iterable[int | tuple[int, str] | tuple[int, str, PortProtocol | str] | Mapping[str, Any]],
        *,
        complete_for: Iterable[PortProtocol | str] = (),
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> tuple[Conflict, ...]:
        """Report the ports bound on ``host`` (ints, (port, holder) or (port, holder, protocol) tuples, or
        mappings; TCP unless told); returns the conflicts on that host afterwards. The report is the
        full set for each protocol in ``complete_for`` (default: TCP): the leak repair frees only ports
        of those protocols that it leaves out."""
        with P.checked_request("report_observed"):
            request = ports_pb2.ReportObservedRequest(
                host=host,
                ports=P.observed_ports(ports),
                complete_for=[P.protocol_value(p) for p in complete_for],
                request_id=P.rid(request_id),
            )
        r = await self._unary(P.REPORT_OBSERVED, request, timeout)
        return tuple(P.convert(P.Conflict, x) for x in r.conflicts)

    async def conflicts(
        self,
        *,
        host: str = "",
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> tuple[Conflict, ...]:
        """Conflicts between assignments and what hosts reported bound."""
        with P.checked_request("conflicts"):
            request = ports_pb2.ConflictsRequest(read=P.read_options(consistency, min_revision), host=host)
        r = await self._unary(P.CONFLICTS, request, timeout)
        return tuple(P.convert(P.Conflict, x) for x in r.conflicts)

    async def resolve_conflicts(
        self, *, host: str = "", dry_run: bool = False, request_id: str | None = None, timeout: float | None = None
    ) -> ResolveResult:
        """Move managed services off ports they cannot have (``dry_run``: only show the moves)."""
        with P.checked_request("resolve_conflicts"):
            request = ports_pb2.ResolveConflictsRequest(host=host, dry_run=dry_run, request_id=P.rid(request_id))
        r = await self._unary(P.RESOLVE, request, timeout)
        return P.convert(P.ResolveResult, r, revision=P.revision_of(r))

    async def repair(
        self, *, passes_before_release: int = 0, request_id: str | None = None, timeout: float | None = None
    ) -> RepairResult:
        """Run one leak-repair pass now (the leader also runs them periodically)."""
        with P.checked_request("repair"):
            request = ports_pb2.RepairRequest(passes_before_release=passes_before_release, request_id=P.rid(request_id))
        r = await self._unary(P.REPAIR, request, timeout)
        return P.convert(P.RepairResult, r, revision=P.revision_of(r))

    async def stats(
        self,
        *,
        host: str = "",
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> PortStats:
        """Size, used, reserved, free and utilisation per range (per host, and totals)."""
        with P.checked_request("stats"):
            request = ports_pb2.PortStatsRequest(read=P.read_options(consistency, min_revision), host=host)
        r = await self._unary(P.STATS, request, timeout)
        return P.convert(P.PortStats, r, revision=P.revision_of(r))

    async def export(
        self,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """The whole port map as a JSON-ready document (the backup format ``import_`` takes)."""
        with P.checked_request("export"):
            request = ports_pb2.ExportPortsRequest(read=P.read_options(consistency, min_revision))
        r = await self._unary(P.EXPORT, request, timeout)
        return P.port_map_document(r.map)

    async def import_(
        self, document: Mapping[str, Any], *, request_id: str | None = None, timeout: float | None = None
    ) -> ImportResult:
        """Replace the whole port map with an exported document: validated first, applied all or nothing."""
        with P.checked_request("import_"):
            request = ports_pb2.ImportPortsRequest(map=P.port_map_message(document), request_id=P.rid(request_id))
        r = await self._unary(P.IMPORT, request, timeout)
        return P.convert(P.ImportResult, r, revision=P.revision_of(r))


class AsyncServices:
    """Service manifests: ``client.services``."""

    def __init__(self, unary: AsyncUnary) -> None:
        self._unary = unary

    async def register(
        self, manifest: Mapping[str, Any], *, request_id: str | None = None, timeout: float | None = None
    ) -> ServiceRecord:
        """Register (or update) a service from its manifest (the YAML/JSON shape of ``ServiceManifest``);
        every declared port is allocated in one atomic step."""
        with P.checked_request("register"):
            request = ports_pb2.RegisterServiceRequest(
                manifest=P.manifest_message(manifest), request_id=P.rid(request_id)
            )
        r = await self._unary(P.REGISTER, request, timeout)
        return P.service_record(r.service)

    async def deregister(
        self, host: str, name: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> tuple[PortAssignment, ...]:
        """Remove a service instance and release its ports; returns what was released."""
        with P.checked_request("deregister"):
            request = ports_pb2.DeregisterServiceRequest(host=host, name=name, request_id=P.rid(request_id))
        r = await self._unary(P.DEREGISTER, request, timeout)
        return tuple(P.convert(P.PortAssignment, x) for x in r.released)

    async def list(
        self,
        *,
        host: str = "",
        name: str = "",
        healthy: bool = False,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> tuple[ServiceRecord, ...]:
        """Registered services with the ports they hold and their health; ``healthy`` keeps only
        instances that are passing or warning."""
        with P.checked_request("list"):
            request = ports_pb2.ListServicesRequest(
                read=P.read_options(consistency, min_revision), host=host, name=name, healthy=healthy
            )
        r = await self._unary(P.LIST_SERVICES, request, timeout)
        return tuple(P.service_record(x) for x in r.services)

    async def healthy(
        self,
        name: str,
        *,
        host: str = "",
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> tuple[ServiceRecord, ...]:
        """The instances of service ``name`` that are passing or warning (never a critical one)."""
        with P.checked_request("healthy"):
            request = ports_pb2.ListServicesRequest(
                read=P.read_options(consistency, min_revision), host=host, name=name, healthy=True
            )
        r = await self._unary(P.LIST_SERVICES, request, timeout)
        return tuple(P.service_record(x) for x in r.services)

    async def report_health(
        self,
        host: str,
        name: str,
        status: HealthStatus | str,
        output: str = "",
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> ServiceHealth:
        """A health check's result for an instance ("passing", "warning" or "critical"). A service with
        a ttl check calls this within its ``ttl_s``: a passing report of a passing ttl check renews it
        without a log write. An unchanged status of other checks changes nothing."""
        with P.checked_request("report_health"):
            request = ports_pb2.ReportHealthRequest(
                host=host, name=name, status=P.health_status(status), output=output, request_id=P.rid(request_id)
            )
        r = await self._unary(P.REPORT_HEALTH, request, timeout)
        return P.convert(P.ServiceHealth, r.health)

    async def start(
        self, host: str, name: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> ServiceRecord:
        """Ask the agent of node ``host`` to run the instance from its manifest's ``run``. A second start
        of an instance wanted running changes nothing. ``FailedPrecondition`` without ``run`` or without
        a live agent allowing it (``--allow-run``) or having the manifest's capabilities."""
        with P.checked_request("start"):
            request = ports_pb2.StartServiceRequest(host=host, name=name, request_id=P.rid(request_id))
        r = await self._unary(P.START, request, timeout)
        return P.service_record(r.service)

    async def place(
        self,
        name: str,
        manifest: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Placed:
        """Run service ``name`` on a node the cluster chooses: one whose live agent allows runs and has the
        manifest's capabilities and resources, and whose ports are free (an instance already registered
        there first, then the node running the fewest services). Without ``manifest``, among the nodes
        it is registered on; with one (no host), among every live node, registering it there. A second
        call while an instance runs reuses it (``existing``). ``FailedPrecondition`` naming why each node
        was passed over when none fits; needs cluster level 3."""
        with P.checked_request("place"):
            request = ports_pb2.StartServiceRequest(
                name=name,
                manifest=P.manifest_message(manifest) if manifest is not None else None,
                request_id=P.rid(request_id),
            )
        r = await self._unary(P.START, request, timeout)
        return P.Placed(P.service_record(r.service), r.existing, r.placement)

    async def stop(
        self, host: str, name: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> ServiceRecord:
        """Ask the agent of node ``host`` to stop the instance's process (its registration and ports stay)."""
        with P.checked_request("stop"):
            request = ports_pb2.StopServiceRequest(host=host, name=name, request_id=P.rid(request_id))
        r = await self._unary(P.STOP, request, timeout)
        return P.service_record(r.service)

    async def report_run(
        self,
        host: str,
        name: str,
        state: str,
        *,
        restarts: int = 0,
        last_exit_code: int = 0,
        pid: int = 0,
        message: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> RunStatus:
        """An agent's account of the process it runs for an instance (send it only when it changes)."""
        with P.checked_request("report_run"):
            request = ports_pb2.ReportRunRequest(
                host=host,
                name=name,
                state=state,
                restarts=restarts,
                last_exit_code=last_exit_code,
                pid=pid,
                message=message,
                request_id=P.rid(request_id),
            )
        r = await self._unary(P.REPORT_RUN, request, timeout)
        return P.convert(P.RunStatus, r.run)


class AsyncLeases:
    """Leases: ``client.leases``."""

    def __init__(self, unary: AsyncUnary) -> None:
        self._unary = unary

    async def grant(self, ttl: float, *, request_id: str | None = None, timeout: float | None = None) -> Lease:
        """A new lease of ``ttl`` seconds (1 s to 1 day). Keep it alive with :meth:`keep_alive`."""
        with P.checked_request("grant"):
            request = leases_pb2.GrantLeaseRequest(ttl_ms=int(ttl * 1000), request_id=P.rid(request_id))
        r = await self._unary(P.GRANT, request, timeout)
        return P.convert(P.Lease, r.lease)

    async def keep_alive(self, lease_id: int, *, request_id: str | None = None, timeout: float | None = None) -> Lease:
        """Restart the lease's TTL; ``NotFound`` once it has expired (grant a new one and attach again)."""
        with P.checked_request("keep_alive"):
            request = leases_pb2.KeepAliveRequest(lease_id=lease_id, request_id=P.rid(request_id))
        r = await self._unary(P.KEEPALIVE, request, timeout)
        return P.convert(P.Lease, r.lease)

    async def revoke(self, lease_id: int, *, request_id: str | None = None, timeout: float | None = None) -> int:
        """End a lease now; returns how many port assignments it released."""
        with P.checked_request("revoke"):
            request = leases_pb2.RevokeLeaseRequest(lease_id=lease_id, request_id=P.rid(request_id))
        r = await self._unary(P.REVOKE, request, timeout)
        return int(r.released_ports)

    async def list(
        self,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> tuple[Lease, ...]:
        """Every live lease with the number of ports it holds."""
        with P.checked_request("list"):
            request = leases_pb2.ListLeasesRequest(read=P.read_options(consistency, min_revision))
        r = await self._unary(P.LIST_LEASES, request, timeout)
        return tuple(P.convert(P.Lease, x) for x in r.leases)


class AsyncModels:
    """The model registry: ``client.models``."""

    def __init__(self, unary: AsyncUnary) -> None:
        self._unary = unary

    async def register(
        self,
        model: str,
        sha256: str,
        size_bytes: int,
        format: ModelFormat | str,
        *,
        source_uri: str = "",
        metadata: Mapping[str, str] | None = None,
        status: VersionStatus | str | None = None,
        description: str = "",
        family: str = "",
        tags: Iterable[str] = (),
        owner: str = "",
        version_tags: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        run_id: str = "",
        parent: VersionRef | tuple[str, int] | str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Registration:
        """Register the next version of ``model`` (created on its first version with the description,
        family, tags and owner given). Versions are immutable and numbered 1, 2, 3, ... per model.
        ``version_tags`` and ``metrics`` belong to the version and may change later
        (:meth:`update_version`); ``run_id`` and ``parent`` (``"MODEL/VERSION"``, a registered
        version) record its lineage and never change."""
        with P.checked_request("register"):
            request = R.register_request(
                model,
                sha256,
                size_bytes,
                format,
                source_uri=source_uri,
                metadata=metadata,
                status=status,
                description=description,
                family=family,
                tags=tags,
                owner=owner,
                version_tags=version_tags,
                metrics=metrics,
                run_id=run_id,
                parent=parent,
                request_id=P.rid(request_id),
            )
        r = await self._unary(R.REGISTER_VERSION, request, timeout)
        return R.registration(request, r)

    async def bulk_register(
        self, versions: Iterable[Mapping[str, Any]], *, request_id: str | None = None, timeout: float | None = None
    ) -> BulkRegistration:
        """Register many versions in one request and one log entry, all or nothing. Each item is a
        mapping of :meth:`register`'s arguments."""
        with P.checked_request("bulk_register"):
            request = R.bulk_request(versions, P.rid(request_id))
        r = await self._unary(R.BULK_REGISTER, request, timeout)
        return R.bulk_registration(request, r)

    async def update(
        self,
        model: str,
        *,
        description: str | None = None,
        family: str | None = None,
        tags: Iterable[str] | None = None,
        owner: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Model:
        """Change the fields given (the others stay)."""
        with P.checked_request("update"):
            request = R.update_request(model, description, family, tags, owner, P.rid(request_id))
        r = await self._unary(R.UPDATE_MODEL, request, timeout)
        return P.convert(R.Model, r.model)

    async def set_status(
        self,
        model: str,
        version: int,
        status: VersionStatus | str,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> ModelVersion:
        """pending -> ready | failed; ready | failed -> deprecated; deprecated -> ready."""
        with P.checked_request("set_status"):
            request = R.status_request(model, version, status, P.rid(request_id))
        r = await self._unary(R.SET_STATUS, request, timeout)
        return P.convert(R.ModelVersion, r.version)

    async def update_version(
        self,
        model: str,
        version: int,
        *,
        set_tags: Mapping[str, str] | None = None,
        remove_tags: Iterable[str] = (),
        set_metrics: Mapping[str, float] | None = None,
        remove_metrics: Iterable[str] = (),
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> ModelVersion:
        """Set and remove a version's tags and metrics in one change (a key absent already is no error)."""
        with P.checked_request("update_version"):
            request = R.update_version_request(
                model, version, set_tags, remove_tags, set_metrics, remove_metrics, P.rid(request_id)
            )
        r = await self._unary(R.UPDATE_VERSION, request, timeout)
        return P.convert(R.ModelVersion, r.version)

    async def set_alias(
        self, model: str, alias: str, version: int, *, request_id: str | None = None, timeout: float | None = None
    ) -> Model:
        """Point ``alias`` at ``version`` atomically (0 removes the alias)."""
        with P.checked_request("set_alias"):
            request = models_pb2.SetAliasRequest(
                model=model, alias=alias, version=version, request_id=P.rid(request_id)
            )
        r = await self._unary(R.SET_ALIAS, request, timeout)
        return P.convert(R.Model, r.model)

    async def delete_version(
        self,
        model: str,
        version: int,
        *,
        force: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Delete a version; refused while an alias points at it unless ``force``. False if it did not exist."""
        with P.checked_request("delete_version"):
            request = models_pb2.DeleteVersionRequest(
                model=model, version=version, force=force, request_id=P.rid(request_id)
            )
        r = await self._unary(R.DELETE_VERSION, request, timeout)
        return bool(r.deleted)

    async def delete(
        self, model: str, *, force: bool = False, request_id: str | None = None, timeout: float | None = None
    ) -> bool:
        """Delete a model; refused while it has versions unless ``force``. False if it did not exist."""
        with P.checked_request("delete"):
            request = models_pb2.DeleteModelRequest(model=model, force=force, request_id=P.rid(request_id))
        r = await self._unary(R.DELETE_MODEL, request, timeout)
        return bool(r.deleted)

    async def add_replica(
        self, model: str, version: int, node_id: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> ModelVersion:
        """Record that ``node_id`` holds the version's artifact."""
        with P.checked_request("add_replica"):
            request = models_pb2.ReplicaRequest(
                model=model, version=version, node_id=node_id, request_id=P.rid(request_id)
            )
        r = await self._unary(R.ADD_REPLICA, request, timeout)
        return P.warned(r, P.convert(R.ModelVersion, r.version))

    async def remove_replica(
        self, model: str, version: int, node_id: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> ModelVersion:
        """Record that ``node_id`` no longer holds the version's artifact."""
        with P.checked_request("remove_replica"):
            request = models_pb2.ReplicaRequest(
                model=model, version=version, node_id=node_id, request_id=P.rid(request_id)
            )
        r = await self._unary(R.REMOVE_REPLICA, request, timeout)
        return P.convert(R.ModelVersion, r.version)

    async def get(
        self,
        model: str,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> ModelDetail:
        """A model with all its versions."""
        with P.checked_request("get"):
            request = models_pb2.GetModelRequest(read=P.read_options(consistency, min_revision), model=model)
        r = await self._unary(R.GET_MODEL, request, timeout)
        return R.detail(r)

    async def get_version(
        self,
        model: str,
        version: int | str = "latest",
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> ModelVersion:
        """A version by number, alias ("prod") or "latest"."""
        with P.checked_request("get_version"):
            request = models_pb2.GetVersionRequest(
                read=P.read_options(consistency, min_revision), model=model, version=str(version)
            )
        r = await self._unary(R.GET_VERSION, request, timeout)
        return P.convert(R.ModelVersion, r.version)

    async def list(
        self,
        prefix: str = "",
        *,
        start_after: str = "",
        limit: int = 0,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> ModelList:
        """Models by name, paginated (``more``: ask again with ``start_after``)."""
        with P.checked_request("list"):
            request = models_pb2.ListModelsRequest(
                read=P.read_options(consistency, min_revision), prefix=prefix, start_after=start_after, limit=limit
            )
        r = await self._unary(R.LIST_MODELS, request, timeout)
        return P.convert(R.ModelList, r, revision=P.revision_of(r))

    async def search(
        self,
        query: str,
        *,
        tag: str = "",
        family: str = "",
        format: ModelFormat | str | None = None,
        status: VersionStatus | str | None = None,
        owner: str = "",
        limit: int = 20,
        offset: int = 0,
        sort: str = "relevance",
        page_token: str = "",
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> SearchResult:
        """Full-text search: every term a prefix, all required; an exact name first, then name prefixes,
        then bm25. Filters on tag, family, format, status and owner, as arguments or typed in the
        query ("tag:chat llama"). A query that finds nothing carries ``suggestions`` (did you mean).
        ``sort``: relevance, name, updated or created (newest first). For the next page pass the
        result's ``next_page_token`` as ``page_token`` with the same query, filters and sort."""
        with P.checked_request("search"):
            request = R.search_request(
                query,
                tag,
                family,
                format,
                status,
                owner,
                limit,
                offset,
                P.read_options(consistency, min_revision),
                sort,
                page_token,
            )
        r = await self._unary(R.SEARCH, request, timeout)
        return R.search_result(r, sort, page_token)


class AsyncMembership:
    """Nodes, networks, client places and feature flags: ``client.membership``."""

    def __init__(self, unary: AsyncUnary) -> None:
        self._unary = unary

    async def register_node(
        self,
        node_id: str,
        *,
        role: NodeRole | str = "agent",
        addresses: Mapping[str, str] | None = None,
        capabilities: Iterable[str] = (),
        gpus: int = 0,
        memory_bytes: int = 0,
        cpu_millis: int = 0,
        labels: Mapping[str, str] | None = None,
        version: str = "",
        ttl_s: float = 10.0,
        instance_id: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Registered:
        """Register a node (server or agent) and grant its liveness lease (``ttl_s``). Registering again
        updates its description and keeps a live lease; after it left or died it comes back as a new
        incarnation. Keep it alive with :meth:`heartbeat` well within the TTL. ``instance_id`` names the
        process (an agent's random id): while the node is live, another instance's registration is
        ``FailedPrecondition`` naming when the lease expires."""
        with P.checked_request("register_node"):
            request = B.register_request(
                node_id,
                role=role,
                addresses=addresses,
                capabilities=capabilities,
                gpus=gpus,
                memory_bytes=memory_bytes,
                cpu_millis=cpu_millis,
                labels=labels,
                version=version,
                ttl_s=ttl_s,
                instance_id=instance_id,
                request_id=P.rid(request_id),
            )
        r = await self._unary(B.REGISTER_NODE, request, timeout)
        return P.convert(B.Registered, r, revision=P.revision_of(r))

    async def heartbeat(
        self,
        node_id: str,
        *,
        activity: str = "",
        instance_id: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> NodeState:
        """Renew the node's lease; the first one makes a joining node active. ``NotFound`` once the
        node is dead or left: register again. ``FailedPrecondition`` when ``instance_id`` is not
        the instance that registered the node (another agent took it over)."""
        with P.checked_request("heartbeat"):
            request = membership_pb2.HeartbeatRequest(
                node_id=node_id, activity=activity, instance_id=instance_id, request_id=P.rid(request_id)
            )
        r = await self._unary(B.HEARTBEAT, request, timeout)
        return B.NodeState(r.state)

    async def drain(self, node_id: str, *, request_id: str | None = None, timeout: float | None = None) -> Moves:
        """Mark a node leaving: it takes no new clients and the clients it serves move elsewhere."""
        with P.checked_request("drain"):
            request = membership_pb2.DrainNodeRequest(node_id=node_id, request_id=P.rid(request_id))
        r = await self._unary(B.DRAIN_NODE, request, timeout)
        return B.moves(r, None)

    async def deregister(self, node_id: str, *, request_id: str | None = None, timeout: float | None = None) -> Moves:
        """A clean stop: the node leaves its networks, its clients move, its lease ends; it stays listed as left."""
        with P.checked_request("deregister"):
            request = membership_pb2.DeregisterNodeRequest(node_id=node_id, request_id=P.rid(request_id))
        r = await self._unary(B.DEREGISTER_NODE, request, timeout)
        return B.moves(r, "deregistered")

    async def forget(self, node_id: str, *, request_id: str | None = None, timeout: float | None = None) -> bool:
        """Drop a left or dead node's record; ``FailedPrecondition`` for a live one."""
        with P.checked_request("forget"):
            request = membership_pb2.ForgetNodeRequest(node_id=node_id, request_id=P.rid(request_id))
        r = await self._unary(B.FORGET_NODE, request, timeout)
        return bool(r.forgotten)

    async def get_node(
        self,
        node_id: str,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> NodeView:
        """One node in the unified view (servers included even if they never registered)."""
        with P.checked_request("get_node"):
            request = membership_pb2.GetNodeRequest(node_id=node_id, read=P.read_options(consistency, min_revision))
        r = await self._unary(B.GET_NODE, request, timeout)
        return P.convert(B.NodeView, r.node)

    async def nodes(
        self,
        *,
        role: NodeRole | str | None = None,
        state: NodeState | str | None = None,
        labels: Mapping[str, str] | None = None,
        network: str = "",
        capability: str = "",
        include_gone: bool = False,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> tuple[NodeView, ...]:
        """Nodes by id in the unified view, filtered; left and dead ones only with ``include_gone`` (or a ``state``)."""
        with P.checked_request("nodes"):
            request = B.list_nodes_request(
                role, state, labels, network, capability, include_gone, P.read_options(consistency, min_revision)
            )
        r = await self._unary(B.LIST_NODES, request, timeout)
        return tuple(P.convert(B.NodeView, x) for x in r.nodes)

    async def create_network(
        self,
        name: str,
        model: str,
        max_clients: int,
        *,
        priority: int = 0,
        labels: Mapping[str, str] | None = None,
        required_capabilities: Iterable[str] = (),
        description: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Network:
        """Create a network serving ``model`` with ``max_clients`` places. A second network needs the
        ``multi_network`` flag."""
        with P.checked_request("create_network"):
            request = membership_pb2.CreateNetworkRequest(
                network=B.network_message(
                    name, model, max_clients, priority, labels, required_capabilities, description
                ),
                request_id=P.rid(request_id),
            )
        r = await self._unary(B.CREATE_NETWORK, request, timeout)
        return P.warned(r, P.convert(B.Network, r.network))

    async def update_network(
        self,
        name: str,
        *,
        model: str | None = None,
        max_clients: int | None = None,
        priority: int | None = None,
        labels: Mapping[str, str] | None = None,
        required_capabilities: Iterable[str] | None = None,
        description: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Network:
        """Change the fields given; the others stay."""
        with P.checked_request("update_network"):
            request = B.update_request(
                name, model, max_clients, priority, labels, required_capabilities, description, P.rid(request_id)
            )
        r = await self._unary(B.UPDATE_NETWORK, request, timeout)
        return P.warned(r, P.convert(B.Network, r.network))

    async def delete_network(
        self, name: str, *, force: bool = False, request_id: str | None = None, timeout: float | None = None
    ) -> Moves:
        """Delete a network; refused while it has members or clients unless ``force`` (its clients move)."""
        with P.checked_request("delete_network"):
            request = membership_pb2.DeleteNetworkRequest(name=name, force=force, request_id=P.rid(request_id))
        r = await self._unary(B.DELETE_NETWORK, request, timeout)
        return B.moves(r, "deleted")

    async def get_network(
        self,
        name: str,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> NetworkDetail:
        """A network with its members and every client placed in it."""
        with P.checked_request("get_network"):
            request = membership_pb2.GetNetworkRequest(name=name, read=P.read_options(consistency, min_revision))
        r = await self._unary(B.GET_NETWORK, request, timeout)
        return P.convert(B.NetworkDetail, r, revision=P.revision_of(r))

    async def networks(
        self,
        *,
        model: str = "",
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> tuple[Network, ...]:
        """Every network by name, or those serving ``model``."""
        with P.checked_request("networks"):
            request = membership_pb2.ListNetworksRequest(model=model, read=P.read_options(consistency, min_revision))
        r = await self._unary(B.LIST_NETWORKS, request, timeout)
        return tuple(P.convert(B.Network, x) for x in r.networks)

    async def join(
        self,
        network: str,
        *,
        node_id: str = "",
        client_id: str = "",
        lease_id: int = 0,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> JoinResult:
        """A node joins as a member (it serves the network), or a client takes a place (capacity checked
        and taken atomically; ``ResourceExhausted`` when full)."""
        with P.checked_request("join"):
            request = membership_pb2.JoinNetworkRequest(
                network=network, node_id=node_id, client_id=client_id, lease_id=lease_id, request_id=P.rid(request_id)
            )
        r = await self._unary(B.JOIN_NETWORK, request, timeout)
        return B.join_result(r)

    async def leave(
        self,
        network: str,
        *,
        node_id: str = "",
        client_id: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Moves:
        """A member leaves (its clients move) or a client gives up its place."""
        with P.checked_request("leave"):
            request = membership_pb2.LeaveNetworkRequest(
                network=network, node_id=node_id, client_id=client_id, request_id=P.rid(request_id)
            )
        r = await self._unary(B.LEAVE_NETWORK, request, timeout)
        return B.moves(r, "left")

    async def assign(
        self,
        client_id: str,
        model: str,
        *,
        lease_id: int = 0,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> JoinResult:
        """Place a client on the best network for ``model``: highest priority, then least load, then most
        free places. A client already placed for that model keeps its place (``existing``)."""
        with P.checked_request("assign"):
            request = membership_pb2.AssignClientRequest(
                client_id=client_id, model=model, lease_id=lease_id, request_id=P.rid(request_id)
            )
        r = await self._unary(B.ASSIGN, request, timeout)
        return B.join_result(r)

    async def placements(
        self,
        *,
        network: str = "",
        node_id: str = "",
        client_id: str = "",
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> tuple[Placement, ...]:
        """Client places, filtered by network, serving member or client."""
        with P.checked_request("placements"):
            request = membership_pb2.ListPlacementsRequest(
                network=network, node_id=node_id, client_id=client_id, read=P.read_options(consistency, min_revision)
            )
        r = await self._unary(B.LIST_PLACEMENTS, request, timeout)
        return tuple(P.convert(B.Placement, x) for x in r.placements)

    async def unplaced(
        self,
        *,
        network: str = "",
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> tuple[UnplacedClient, ...]:
        """Clients the cluster took a place from and could not place again, with why; newest first.
        ``FailedPrecondition`` while the cluster is below level 5 (no server keeps them there)."""
        with P.checked_request("unplaced"):
            request = membership_pb2.ListUnplacedRequest(
                network=network, read=P.read_options(consistency, min_revision)
            )
        r = await self._unary(B.LIST_UNPLACED, request, timeout)
        return tuple(P.convert(B.UnplacedClient, x) for x in r.clients)

    async def set_flag(
        self,
        name: str,
        enabled: bool,
        *,
        description: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Flag:
        """Turn a cluster-wide feature flag on or off."""
        with P.checked_request("set_flag"):
            request = membership_pb2.SetFlagRequest(
                name=name, enabled=enabled, description=description, request_id=P.rid(request_id)
            )
        r = await self._unary(B.SET_FLAG, request, timeout)
        return P.convert(B.Flag, r.flag)

    async def flags(
        self,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> tuple[Flag, ...]:
        """Every flag: the known ones (with defaults when never set) and any set by users."""
        with P.checked_request("flags"):
            request = membership_pb2.ListFlagsRequest(read=P.read_options(consistency, min_revision))
        r = await self._unary(B.LIST_FLAGS, request, timeout)
        return tuple(P.convert(B.Flag, x) for x in r.flags)


class AsyncGossip:
    """The gossip layer's bandwidth matrix and rounds: ``client.gossip``."""

    def __init__(self, unary: AsyncUnary) -> None:
        self._unary = unary

    async def report_bandwidth(
        self,
        node_id: str,
        links: Mapping[str, float | Mapping[str, float]],
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Report this node's link estimates (``{peer: bytes_per_s}`` or ``{peer: {bandwidth_bps, latency_s,
        spread_bps, samples}}``); returns the matrix version afterwards."""
        with P.checked_request("report_bandwidth"):
            request = gossip_pb2.ReportBandwidthRequest(
                node_id=node_id, links=G.link_reports(links), request_id=P.rid(request_id)
            )
        r = await self._unary(G.REPORT_BANDWIDTH, request, timeout)
        return int(r.matrix_version)

    async def bandwidth(
        self,
        *,
        node_id: str = "",
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> BandwidthMatrix:
        """The versioned bandwidth matrix (or the links touching ``node_id``)."""
        with P.checked_request("bandwidth"):
            request = gossip_pb2.GetBandwidthRequest(node_id=node_id, read=P.read_options(consistency, min_revision))
        r = await self._unary(G.GET_BANDWIDTH, request, timeout)
        return P.convert(G.BandwidthMatrix, r.matrix)

    async def start_round(
        self,
        group: str,
        number: int,
        participants: Sequence[str],
        pairs: Iterable[tuple[str, str]],
        idle: Iterable[str] = (),
        *,
        seed: int,
        policy: str = "saps",
        matrix_version: int = 0,
        deadline_unix_ms: int,
        tensors: Iterable[tuple[str, str, Sequence[int]]] = (),
        sparsity_ratio: float = 1.0,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Round:
        """Commit round ``number`` of ``group`` (the coordinator does this; numbers are consecutive and a round
        starts only after the previous one ended)."""
        with P.checked_request("start_round"):
            request = G.round_request(
                group,
                number,
                participants,
                pairs,
                idle,
                seed=seed,
                policy=policy,
                matrix_version=matrix_version,
                deadline_unix_ms=deadline_unix_ms,
                tensors=tensors,
                sparsity_ratio=sparsity_ratio,
                request_id=P.rid(request_id),
            )
        r = await self._unary(G.START_ROUND, request, timeout)
        return P.convert(G.Round, r.round)

    async def report_round(
        self,
        group: str,
        number: int,
        node_id: str,
        *,
        bytes: int = 0,
        seconds: float = 0.0,
        failed_peer: str = "",
        reason: str = "",
        mix_delta_sq: float = 0.0,
        loss: float | None = None,
        accuracy: float | None = None,
        examples: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Round:
        """A participant's outcome; ``failed_peer`` names the partner that failed the exchange
        (its link is penalised). ``loss``, ``accuracy`` (in [0, 1]) and ``examples``: this node's
        training metrics for the round (its model before the mix); None: not measured."""
        with P.checked_request("report_round"):
            request = gossip_pb2.ReportRoundRequest(
                group=group,
                number=number,
                node_id=node_id,
                bytes=bytes,
                seconds=seconds,
                failed_peer=failed_peer,
                reason=reason,
                mix_delta_sq=mix_delta_sq,
                metrics=G.training_metrics(loss, accuracy, examples),
                request_id=P.rid(request_id),
            )
        r = await self._unary(G.REPORT_ROUND, request, timeout)
        return P.convert(G.Round, r.round)

    async def end_round(
        self, group: str, number: int, *, request_id: str | None = None, timeout: float | None = None
    ) -> Round:
        """End a round whose deadline passed (the silent participants are recorded as failed)."""
        with P.checked_request("end_round"):
            request = gossip_pb2.EndRoundRequest(group=group, number=number, request_id=P.rid(request_id))
        r = await self._unary(G.END_ROUND, request, timeout)
        return P.convert(G.Round, r.round)

    async def round(
        self,
        group: str,
        number: int = 0,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> Round:
        """A round by number (0: the latest)."""
        with P.checked_request("round"):
            request = gossip_pb2.GetRoundRequest(
                group=group, number=number, read=P.read_options(consistency, min_revision)
            )
        r = await self._unary(G.GET_ROUND, request, timeout)
        return P.convert(G.Round, r.round)

    async def rounds(
        self,
        group: str,
        *,
        after: int = 0,
        limit: int = 100,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> tuple[Round, ...]:
        """Rounds numbered above ``after``, oldest first."""
        with P.checked_request("rounds"):
            request = gossip_pb2.ListRoundsRequest(
                group=group, after=after, limit=limit, read=P.read_options(consistency, min_revision)
            )
        r = await self._unary(G.LIST_ROUNDS, request, timeout)
        return tuple(P.convert(G.Round, x) for x in r.rounds)

    async def configure_group(
        self,
        group: str,
        tensors: Iterable[tuple[str, str, Sequence[int]]],
        *,
        policy: str = "saps",
        sparsity_ratio: float = 1.0,
        round_timeout_s: float = 30.0,
        min_participants: int = 2,
        seed: int = 0,
        paused: bool = False,
        probe_every_rounds: int | None = None,
        compression: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> G.GroupChange:
        """Create the group with its tensor spec (``[(name, dtype, shape), ...]``), or get it back
        unchanged when it exists with the same tensors, sparsity and compression (``created=False``).
        ``FailedPrecondition`` for another spec: use a new name. ``probe_every_rounds``: training
        rounds between two probe cycles (0: probe only unmeasured links; None: the default, 50).
        ``compression``: "none" (or "") or "int8" (``InvalidArgument`` for anything else)."""
        with P.checked_request("configure_group"):
            request = G.configure_request(
                group,
                tensors,
                policy=policy,
                sparsity_ratio=sparsity_ratio,
                round_timeout_s=round_timeout_s,
                min_participants=min_participants,
                seed=seed,
                paused=paused,
                probe_every_rounds=probe_every_rounds,
                compression=compression,
                request_id=P.rid(request_id),
            )
        r = await self._unary(G.CONFIGURE_GROUP, request, timeout)
        return G.group_change(r)

    async def update_group(
        self,
        group: str,
        *,
        policy: str | None = None,
        round_timeout_s: float | None = None,
        min_participants: int | None = None,
        paused: bool | None = None,
        probe_every_rounds: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> G.GroupChange:
        """Change the given settings of an existing group (``NotFound`` if there is none)."""
        with P.checked_request("update_group"):
            request = G.update_request(
                group,
                policy=policy,
                round_timeout_s=round_timeout_s,
                min_participants=min_participants,
                paused=paused,
                probe_every_rounds=probe_every_rounds,
                request_id=P.rid(request_id),
            )
        r = await self._unary(G.CONFIGURE_GROUP, request, timeout)
        return G.group_change(r)

    async def group(
        self,
        group: str,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> G.GroupConfig:
        """A group's configuration (``NotFound`` if it is not configured)."""
        with P.checked_request("group"):
            request = gossip_pb2.GetGroupRequest(group=group, read=P.read_options(consistency, min_revision))
        r = await self._unary(G.GET_GROUP, request, timeout)
        return P.convert(G.GroupConfig, r.group)

    async def groups(
        self,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        min_revision: int = 0,
        timeout: float | None = None,
    ) -> tuple[G.GroupConfig, ...]:
        """Every configured group, by name."""
        with P.checked_request("groups"):
            request = gossip_pb2.ListGroupsRequest(read=P.read_options(consistency, min_revision))
        r = await self._unary(G.LIST_GROUPS, request, timeout)
        return tuple(P.convert(G.GroupConfig, x) for x in r.groups)

    async def delete_group(self, group: str, *, request_id: str | None = None, timeout: float | None = None) -> bool:
        """Remove a group's configuration (its rounds stay as history); False if there was none."""
        with P.checked_request("delete_group"):
            request = gossip_pb2.DeleteGroupRequest(group=group, request_id=P.rid(request_id))
        r = await self._unary(G.DELETE_GROUP, request, timeout)
        return bool(r.deleted)


class AsyncAuth:
    """Users, roles, permissions and bearer tokens: ``client.auth`` (etcd's ``Auth`` API). Every
    call needs ``cluster:admin`` but ``status``, which tells any caller who the cluster takes it
    for. Changes are idempotent by request id, like every write (``create_token`` says what a lost
    answer costs)."""

    def __init__(self, unary: AsyncUnary) -> None:
        self._unary = unary

    async def status(self, *, timeout: float | None = None) -> AuthStatus:
        """Whether authorization is on, who this client is to the cluster, and the revision."""
        r = await self._unary(A.STATUS, auth_pb2.AuthStatusRequest(), timeout)
        return P.convert(AuthStatus, r)

    async def set_enabled(
        self, enabled: bool, *, request_id: str | None = None, timeout: float | None = None
    ) -> AuthChange:
        """Turn authorization on (every call then needs a permission) or off (every call is allowed)."""
        with P.checked_request("set_enabled"):
            request = auth_pb2.SetEnabledRequest(enabled=enabled, request_id=P.rid(request_id))
        r = await self._unary(A.SET_ENABLED, request, timeout)
        return P.convert(AuthChange, r)

    async def add_user(self, name: str, *, request_id: str | None = None, timeout: float | None = None) -> AuthChange:
        """A new user without roles (``AlreadyExists`` if there is one by that name)."""
        with P.checked_request("add_user"):
            request = auth_pb2.AddUserRequest(name=name, request_id=P.rid(request_id))
        r = await self._unary(A.ADD_USER, request, timeout)
        return P.convert(AuthChange, r)

    async def delete_user(
        self, name: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> AuthChange:
        """Remove a user; its tokens stop working at once."""
        with P.checked_request("delete_user"):
            request = auth_pb2.DeleteUserRequest(name=name, request_id=P.rid(request_id))
        r = await self._unary(A.DELETE_USER, request, timeout)
        return P.convert(AuthChange, r)

    async def users(self, *, timeout: float | None = None) -> tuple[AuthUser, ...]:
        """Every user and the roles it holds, by name."""
        r = await self._unary(A.LIST_USERS, auth_pb2.ListUsersRequest(), timeout)
        return tuple(P.convert(AuthUser, x) for x in r.users)

    async def grant_role(
        self, user: str, role: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> AuthChange:
        with P.checked_request("grant_role"):
            request = auth_pb2.GrantRoleRequest(user=user, role=role, request_id=P.rid(request_id))
        r = await self._unary(A.GRANT_ROLE, request, timeout)
        return P.convert(AuthChange, r)

    async def revoke_role(
        self, user: str, role: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> AuthChange:
        with P.checked_request("revoke_role"):
            request = auth_pb2.RevokeRoleRequest(user=user, role=role, request_id=P.rid(request_id))
        r = await self._unary(A.REVOKE_ROLE, request, timeout)
        return P.convert(AuthChange, r)

    async def add_role(self, name: str, *, request_id: str | None = None, timeout: float | None = None) -> AuthChange:
        """A new role without permissions."""
        with P.checked_request("add_role"):
            request = auth_pb2.AddRoleRequest(name=name, request_id=P.rid(request_id))
        r = await self._unary(A.ADD_ROLE, request, timeout)
        return P.convert(AuthChange, r)

    async def delete_role(
        self, name: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> AuthChange:
        """Remove a role; the users who held it lose its permissions at once."""
        with P.checked_request("delete_role"):
            request = auth_pb2.DeleteRoleRequest(name=name, request_id=P.rid(request_id))
        r = await self._unary(A.DELETE_ROLE, request, timeout)
        return P.convert(AuthChange, r)

    async def roles(self, *, timeout: float | None = None) -> tuple[AuthRole, ...]:
        """Every role and its permissions, by name (the built-in ``root`` holds everything)."""
        r = await self._unary(A.LIST_ROLES, auth_pb2.ListRolesRequest(), timeout)
        return tuple(P.convert(AuthRole, x) for x in r.roles)

    async def grant_permission(
        self,
        role: str,
        permission: Permission | tuple[str, str] | tuple[str, str, str],
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> AuthChange:
        """Give ``role`` a permission: a ``Permission`` or ``(domain, verb[, resource])``."""
        with P.checked_request("grant_permission"):
            request = auth_pb2.GrantPermissionRequest(
                role=role, permission=A.permission_message(permission), request_id=P.rid(request_id)
            )
        r = await self._unary(A.GRANT_PERMISSION, request, timeout)
        return P.convert(AuthChange, r)

    async def revoke_permission(
        self,
        role: str,
        permission: Permission | tuple[str, str] | tuple[str, str, str],
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> AuthChange:
        with P.checked_request("revoke_permission"):
            request = auth_pb2.RevokePermissionRequest(
                role=role, permission=A.permission_message(permission), request_id=P.rid(request_id)
            )
        r = await self._unary(A.REVOKE_PERMISSION, request, timeout)
        return P.convert(AuthChange, r)

    async def create_token(
        self,
        user: str,
        *,
        ttl: float = 0,
        description: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> CreatedToken:
        """A bearer token for ``user``, valid ``ttl`` seconds (0: until revoked; a fraction rounds up
        to the next second). Its ``token`` is shown this once: keep it
        (``Credentials(..., token=...)``). If the answer is lost and the retry finds the token made,
        the secret cannot be shown again: ``FailedPrecondition`` says to revoke it and create another."""
        with P.checked_request("create_token"):
            request = auth_pb2.CreateTokenRequest(
                user=user, ttl_s=A.ttl_seconds(ttl), description=description, request_id=P.rid(request_id)
            )
        r = await self._unary(A.CREATE_TOKEN, request, timeout)
        return P.convert(CreatedToken, r)

    async def tokens(self, user: str = "", *, timeout: float | None = None) -> tuple[AuthToken, ...]:
        """Every token (of ``user``, if given), without its secret."""
        with P.checked_request("tokens"):
            request = auth_pb2.ListTokensRequest(user=user)
        r = await self._unary(A.LIST_TOKENS, request, timeout)
        return tuple(P.convert(AuthToken, x) for x in r.tokens)

    async def revoke_token(
        self, token_id: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> AuthChange:
        """End a token now (it stays listed, revoked)."""
        with P.checked_request("revoke_token"):
            request = auth_pb2.RevokeTokenRequest(token_id=token_id, request_id=P.rid(request_id))
        r = await self._unary(A.REVOKE_TOKEN, request, timeout)
        return P.convert(AuthChange, r)
