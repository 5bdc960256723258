"""Generate controlplane/client/_api.py: the sync and async method sets from one table.

The two transports cannot drift: `make sdk` regenerates, and `make test` fails when the committed
file differs from what this table produces. Usage: python scripts/gen_sdk_api.py [OUTPUT]
"""

import sys

METHODS = [
    # name, signature, doc, rpc, request expr, result expr
    (
        "ports",
        "allocate",
        'self, host: str, service: str, name: str = "", *, range: str = "", preferred_port: int = 0, lease_id: int = 0, request_id: str | None = None, timeout: float | None = None',
        "AllocateResult",
        'A free port for (host, service, name) in ``range`` (default "dynamic"), trying ``preferred_port`` first.\n\n        Idempotent: the same (host, service, name) returns the port it already holds (``existing``).\n        A full range raises ``ResourceExhausted`` naming it.',
        "P.ALLOCATE",
        "ports_pb2.AllocateRequest(host=host, service=service, name=name, range=range, preferred_port=preferred_port, lease_id=lease_id, request_id=P.rid(request_id))",
        "P.AllocateResult(P.revision_of(r), P.convert(P.PortAssignment, r.assignment), r.existing)",
    ),
    (
        "ports",
        "assign",
        'self, host: str, service: str, port: int, name: str = "", *, lease_id: int = 0, force: bool = False, request_id: str | None = None, timeout: float | None = None',
        "AllocateResult",
        "Assign a specific port. ``FailedPrecondition`` naming the holder if it is taken or reserved\n        (or observed bound by something else, unless ``force``).",
        "P.ASSIGN",
        "ports_pb2.AssignRequest(host=host, service=service, name=name, port=port, lease_id=lease_id, force=force, request_id=P.rid(request_id))",
        "P.AllocateResult(P.revision_of(r), P.convert(P.PortAssignment, r.assignment), r.existing)",
    ),
    (
        "ports",
        "release",
        'self, host: str, service: str = "", name: str = "", *, port: int = 0, request_id: str | None = None, timeout: float | None = None',
        "ReleaseResult",
        "Free an assignment named by (service, name) or by ``port``. Releasing what is not assigned\n        returns ``released=False``.",
        "P.RELEASE",
        "ports_pb2.ReleaseRequest(host=host, service=service, name=name, port=port, request_id=P.rid(request_id))",
        'P.ReleaseResult(P.revision_of(r), r.released, P.convert(P.PortAssignment, r.assignment) if r.HasField("assignment") else None)',
    ),
    (
        "ports",
        "reassign",
        'self, host: str, service: str, name: str = "", *, port: int = 0, range: str = "", reason: str = "", request_id: str | None = None, timeout: float | None = None',
        "ReassignResult",
        "Move an assignment to ``port`` or (0) any free port in its range or ``range``; recorded in the history.",
        "P.REASSIGN",
        "ports_pb2.ReassignRequest(host=host, service=service, name=name, port=port, range=range, reason=reason, request_id=P.rid(request_id))",
        "P.ReassignResult(P.revision_of(r), P.convert(P.PortAssignment, r.assignment), r.old_port)",
    ),
    (
        "ports",
        "reserve",
        'self, port: int, end_port: int = 0, *, host: str = "", reason: str = "", request_id: str | None = None, timeout: float | None = None',
        "tuple[Reservation, ...]",
        "Keep ``port`` (through ``end_port``) out of every allocation, on ``host`` or (empty) on all hosts.\n        ``FailedPrecondition`` naming the holder if one is in use.",
        "P.RESERVE",
        "ports_pb2.ReserveRequest(host=host, port=port, end_port=end_port, reason=reason, request_id=P.rid(request_id))",
        "tuple(P.convert(P.Reservation, x) for x in r.reservations)",
    ),
    (
        "ports",
        "unreserve",
        'self, port: int, end_port: int = 0, *, host: str = "", request_id: str | None = None, timeout: float | None = None',
        "int",
        "Lift reservations; returns how many were removed.",
        "P.UNRESERVE",
        "ports_pb2.UnreserveRequest(host=host, port=port, end_port=end_port, request_id=P.rid(request_id))",
        "int(r.removed)",
    ),
    (
        "ports",
        "set_range",
        'self, name: str, start: int, end: int, *, description: str = "", request_id: str | None = None, timeout: float | None = None',
        "PortRange",
        "Create or change a named range (inclusive bounds). Ranges may not overlap.",
        "P.SET_RANGE",
        "ports_pb2.SetRangeRequest(range=ports_pb2.PortRange(name=name, start=start, end=end, description=description), request_id=P.rid(request_id))",
        "P.convert(P.PortRange, r.range)",
    ),
    (
        "ports",
        "delete_range",
        "self, name: str, *, request_id: str | None = None, timeout: float | None = None",
        "bool",
        "Delete an empty range; False if it did not exist.",
        "P.DELETE_RANGE",
        "ports_pb2.DeleteRangeRequest(name=name, request_id=P.rid(request_id))",
        "bool(r.deleted)",
    ),
    (
        "ports",
        "ranges",
        "self, *, consistency: Consistency = Consistency.LINEARIZABLE, min_revision: int = 0, timeout: float | None = None",
        "tuple[PortRange, ...]",
        "Every range, by start port.",
        "P.LIST_RANGES",
        "ports_pb2.ListRangesRequest(read=P.read_options(consistency, min_revision))",
        "tuple(P.convert(P.PortRange, x) for x in r.ranges)",
    ),
    (
        "ports",
        "list",
        'self, *, host: str = "", service: str = "", range: str = "", consistency: Consistency = Consistency.LINEARIZABLE, min_revision: int = 0, timeout: float | None = None',
        "PortList",
        "Assignments (and reservations, unless filtered by service), by host and port.",
        "P.LIST",
        "ports_pb2.ListPortsRequest(read=P.read_options(consistency, min_revision), host=host, service=service, range=range)",
        "P.convert(P.PortList, r, revision=P.revision_of(r))",
    ),
    (
        "ports",
        "history",
        "self, service: str, *, after_revision: int = 0, consistency: Consistency = Consistency.LINEARIZABLE, min_revision: int = 0, timeout: float | None = None",
        "PortHistory",
        "A service's port changes, oldest first.",
        "P.HISTORY",
        "ports_pb2.PortHistoryRequest(read=P.read_options(consistency, min_revision), service=service, after_revision=after_revision)",
        "P.convert(P.PortHistory, r, revision=P.revision_of(r))",
    ),
    (
        "ports",
        "report_observed",
        "self, host: str, ports: Iterable[int | tuple[int, str] | Mapping[str, Any]], *, request_id: str | None = None, timeout: float | None = None",
        "tuple[Conflict, ...]",
        "Report the full set of ports bound on ``host`` (ints, (port, holder) pairs or mappings);\n        returns the conflicts on that host afterwards.",
        "P.REPORT_OBSERVED",
        "ports_pb2.ReportObservedRequest(host=host, ports=P.observed_ports(ports), request_id=P.rid(request_id))",
        "tuple(P.convert(P.Conflict, x) for x in r.conflicts)",
    ),
    (
        "ports",
        "conflicts",
        'self, *, host: str = "", consistency: Consistency = Consistency.LINEARIZABLE, min_revision: int = 0, timeout: float | None = None',
        "tuple[Conflict, ...]",
        "Conflicts between assignments and what hosts reported bound.",
        "P.CONFLICTS",
        "ports_pb2.ConflictsRequest(read=P.read_options(consistency, min_revision), host=host)",
        "tuple(P.convert(P.Conflict, x) for x in r.conflicts)",
    ),
    (
        "ports",
        "resolve_conflicts",
        'self, *, host: str = "", dry_run: bool = False, request_id: str | None = None, timeout: float | None = None',
        "ResolveResult",
        "Move managed services off ports they cannot have (``dry_run``: only show the moves).",
        "P.RESOLVE",
        "ports_pb2.ResolveConflictsRequest(host=host, dry_run=dry_run, request_id=P.rid(request_id))",
        "P.convert(P.ResolveResult, r, revision=P.revision_of(r))",
    ),
    (
        "ports",
        "repair",
        "self, *, passes_before_release: int = 0, request_id: str | None = None, timeout: float | None = None",
        "RepairResult",
        "Run one leak-repair pass now (the leader also runs them periodically).",
        "P.REPAIR",
        "ports_pb2.RepairRequest(passes_before_release=passes_before_release, request_id=P.rid(request_id))",
        "P.convert(P.RepairResult, r, revision=P.revision_of(r))",
    ),
    (
        "ports",
        "stats",
        'self, *, host: str = "", consistency: Consistency = Consistency.LINEARIZABLE, min_revision: int = 0, timeout: float | None = None',
        "PortStats",
        "Size, used, reserved, free and utilisation per range (per host, and totals).",
        "P.STATS",
        "ports_pb2.PortStatsRequest(read=P.read_options(consistency, min_revision), host=host)",
        "P.convert(P.PortStats, r, revision=P.revision_of(r))",
    ),
    (
        "ports",
        "export",
        "self, *, consistency: Consistency = Consistency.LINEARIZABLE, min_revision: int = 0, timeout: float | None = None",
        "dict[str, Any]",
        "The whole port map as a JSON-ready document (the backup format ``import_`` takes).",
        "P.EXPORT",
        "ports_pb2.ExportPortsRequest(read=P.read_options(consistency, min_revision))",
        "P.port_map_document(r.map)",
    ),
    (
        "ports",
        "import_",
        "self, document: Mapping[str, Any], *, request_id: str | None = None, timeout: float | None = None",
        "ImportResult",
        "Replace the whole port map with an exported document: validated first, applied all or nothing.",
        "P.IMPORT",
        "ports_pb2.ImportPortsRequest(map=P.port_map_message(document), request_id=P.rid(request_id))",
        "P.convert(P.ImportResult, r, revision=P.revision_of(r))",
    ),
    (
        "services",
        "register",
        "self, manifest: Mapping[str, Any], *, request_id: str | None = None, timeout: float | None = None",
        "ServiceRecord",
        "Register (or update) a service from its manifest (the YAML/JSON shape of ``ServiceManifest``);\n        every declared port is allocated in one atomic step.",
        "P.REGISTER",
        "ports_pb2.RegisterServiceRequest(manifest=P.manifest_message(manifest), request_id=P.rid(request_id))",
        "P.service_record(r.service)",
    ),
    (
        "services",
        "deregister",
        "self, host: str, name: str, *, request_id: str | None = None, timeout: float | None = None",
        "tuple[PortAssignment, ...]",
        "Remove a service instance and release its ports; returns what was released.",
        "P.DEREGISTER",
        "ports_pb2.DeregisterServiceRequest(host=host, name=name, request_id=P.rid(request_id))",
        "tuple(P.convert(P.PortAssignment, x) for x in r.released)",
    ),
    (
        "services",
        "list",
        'self, *, host: str = "", name: str = "", consistency: Consistency = Consistency.LINEARIZABLE, min_revision: int = 0, timeout: float | None = None',
        "tuple[ServiceRecord, ...]",
        "Registered services with the ports they hold.",
        "P.LIST_SERVICES",
        "ports_pb2.ListServicesRequest(read=P.read_options(consistency, min_revision), host=host, name=name)",
        "tuple(P.service_record(x) for x in r.services)",
    ),
    (
        "leases",
        "grant",
        "self, ttl: float, *, request_id: str | None = None, timeout: float | None = None",
        "Lease",
        "A new lease of ``ttl`` seconds (1 s to 1 day). Keep it alive with :meth:`keep_alive`.",
        "P.GRANT",
        "leases_pb2.GrantLeaseRequest(ttl_ms=int(ttl * 1000), request_id=P.rid(request_id))",
        "P.convert(P.Lease, r.lease)",
    ),
    (
        "leases",
        "keep_alive",
        "self, lease_id: int, *, request_id: str | None = None, timeout: float | None = None",
        "Lease",
        "Restart the lease's TTL; ``NotFound`` once it has expired (grant a new one and attach again).",
        "P.KEEPALIVE",
        "leases_pb2.KeepAliveRequest(lease_id=lease_id, request_id=P.rid(request_id))",
        "P.convert(P.Lease, r.lease)",
    ),
    (
        "leases",
        "revoke",
        "self, lease_id: int, *, request_id: str | None = None, timeout: float | None = None",
        "int",
        "End a lease now; returns how many port assignments it released.",
        "P.REVOKE",
        "leases_pb2.RevokeLeaseRequest(lease_id=lease_id, request_id=P.rid(request_id))",
        "int(r.released_ports)",
    ),
    (
        "leases",
        "list",
        "self, *, consistency: Consistency = Consistency.LINEARIZABLE, min_revision: int = 0, timeout: float | None = None",
        "tuple[Lease, ...]",
        "Every live lease with the number of ports it holds.",
        "P.LIST_LEASES",
        "leases_pb2.ListLeasesRequest(read=P.read_options(consistency, min_revision))",
        "tuple(P.convert(P.Lease, x) for x in r.leases)",
    ),
    ("models", "register", 'self, model: str, sha256: str, size_bytes: int, format: ModelFormat | str, *, source_uri: str = "", metadata: Mapping[str, str] | None = None, status: VersionStatus | str | None = None, description: str = "", family: str = "", tags: Iterable[str] = (), owner: str = "", request_id: str | None = None, timeout: float | None = None', "Registration",
     "Register the next version of ``model`` (created on its first version with the description,\n        family, tags and owner given). Versions are immutable and numbered 1, 2, 3, ... per model.",
     "R.REGISTER_VERSION", "R.register_request(model, sha256, size_bytes, format, source_uri=source_uri, metadata=metadata, status=status, description=description, family=family, tags=tags, owner=owner, request_id=P.rid(request_id))",
     "P.convert(R.Registration, r, revision=P.revision_of(r))"),
    ("models", "bulk_register", "self, versions: Iterable[Mapping[str, Any]], *, request_id: str | None = None, timeout: float | None = None", "BulkRegistration",
     "Register many versions in one request and one log entry, all or nothing. Each item is a\n        mapping of :meth:`register`'s arguments.",
     "R.BULK_REGISTER", "R.bulk_request(versions, P.rid(request_id))",
     "P.convert(R.BulkRegistration, r, revision=P.revision_of(r))"),
    ("models", "update", "self, model: str, *, description: str | None = None, family: str | None = None, tags: Iterable[str] | None = None, owner: str | None = None, request_id: str | None = None, timeout: float | None = None", "Model",
     "Change the fields given (the others stay).",
     "R.UPDATE_MODEL", "R.update_request(model, description, family, tags, owner, P.rid(request_id))",
     "P.convert(R.Model, r.model)"),
    ("models", "set_status", "self, model: str, version: int, status: VersionStatus | str, *, request_id: str | None = None, timeout: float | None = None", "ModelVersion",
     "pending -> ready | failed; ready | failed -> deprecated; deprecated -> ready.",
     "R.SET_STATUS", "R.status_request(model, version, status, P.rid(request_id))",
     "P.convert(R.ModelVersion, r.version)"),
    ("models", "set_alias", "self, model: str, alias: str, version: int, *, request_id: str | None = None, timeout: float | None = None", "Model",
     "Point ``alias`` at ``version`` atomically (0 removes the alias).",
     "R.SET_ALIAS", "models_pb2.SetAliasRequest(model=model, alias=alias, version=version, request_id=P.rid(request_id))",
     "P.convert(R.Model, r.model)"),
    ("models", "delete_version", "self, model: str, version: int, *, force: bool = False, request_id: str | None = None, timeout: float | None = None", "bool",
     "Delete a version; refused while an alias points at it unless ``force``. False if it did not exist.",
     "R.DELETE_VERSION", "models_pb2.DeleteVersionRequest(model=model, version=version, force=force, request_id=P.rid(request_id))",
     "bool(r.deleted)"),
    ("models", "delete", "self, model: str, *, force: bool = False, request_id: str | None = None, timeout: float | None = None", "bool",
     "Delete a model; refused while it has versions unless ``force``. False if it did not exist.",
     "R.DELETE_MODEL", "models_pb2.DeleteModelRequest(model=model, force=force, request_id=P.rid(request_id))",
     "bool(r.deleted)"),
    ("models", "add_replica", "self, model: str, version: int, node_id: str, *, request_id: str | None = None, timeout: float | None = None", "ModelVersion",
     "Record that ``node_id`` holds the version's artifact.",
     "R.ADD_REPLICA", "models_pb2.ReplicaRequest(model=model, version=version, node_id=node_id, request_id=P.rid(request_id))",
     "P.convert(R.ModelVersion, r.version)"),
    ("models", "remove_replica", "self, model: str, version: int, node_id: str, *, request_id: str | None = None, timeout: float | None = None", "ModelVersion",
     "Record that ``node_id`` no longer holds the version's artifact.",
     "R.REMOVE_REPLICA", "models_pb2.ReplicaRequest(model=model, version=version, node_id=node_id, request_id=P.rid(request_id))",
     "P.convert(R.ModelVersion, r.version)"),
    ("models", "get", "self, model: str, *, consistency: Consistency = Consistency.LINEARIZABLE, min_revision: int = 0, timeout: float | None = None", "ModelDetail",
     "A model with all its versions.",
     "R.GET_MODEL", "models_pb2.GetModelRequest(read=P.read_options(consistency, min_revision), model=model)",
     "R.detail(r)"),
    ("models", "get_version", 'self, model: str, version: int | str = "latest", *, consistency: Consistency = Consistency.LINEARIZABLE, min_revision: int = 0, timeout: float | None = None', "ModelVersion",
     'A version by number, alias ("prod") or "latest".',
     "R.GET_VERSION", "models_pb2.GetVersionRequest(read=P.read_options(consistency, min_revision), model=model, version=str(version))",
     "P.convert(R.ModelVersion, r.version)"),
    ("models", "list", 'self, prefix: str = "", *, start_after: str = "", limit: int = 0, consistency: Consistency = Consistency.LINEARIZABLE, min_revision: int = 0, timeout: float | None = None', "ModelList",
     "Models by name, paginated (``more``: ask again with ``start_after``).",
     "R.LIST_MODELS", "models_pb2.ListModelsRequest(read=P.read_options(consistency, min_revision), prefix=prefix, start_after=start_after, limit=limit)",
     "P.convert(R.ModelList, r, revision=P.revision_of(r))"),
    ("models", "search", 'self, query: str, *, tag: str = "", family: str = "", format: ModelFormat | str | None = None, status: VersionStatus | str | None = None, limit: int = 20, offset: int = 0, consistency: Consistency = Consistency.LINEARIZABLE, min_revision: int = 0, timeout: float | None = None', "SearchResult",
     "Full-text search: every term a prefix, all required, ranked by bm25; filters on tag, family,\n        format and status. The answer carries the revision it reflects and the query time.",
     "R.SEARCH", "R.search_request(query, tag, family, format, status, limit, offset, P.read_options(consistency, min_revision))",
     "R.search_result(r)"),
]
CLASSES = {
    "ports": ("Ports", "Port assignments: ``client.ports``."),
    "services": ("Services", "Service manifests: ``client.services``."),
    "leases": ("Leases", "Leases: ``client.leases``."),
    "models": ("Models", "The model registry: ``client.models``."),
}
out = [
    '''"""``client.ports``, ``client.services``, ``client.leases`` and ``client.models``, sync and async.

Generated by ``scripts/gen_sdk_api.py`` from one table, so the two transports cannot drift: edit
the table and regenerate (``make sdk``), do not edit this file by hand. Requests, conversions and
result types live in ``_ports`` and ``_registry``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from controlplane.client import _ports as P
from controlplane.client import _registry as R
from controlplane.client._models import Consistency
from controlplane.client._ports import (
    AllocateResult,
    Conflict,
    ImportResult,
    Lease,
    PortAssignment,
    PortHistory,
    PortList,
    PortRange,
    PortStats,
    ReassignResult,
    ReleaseResult,
    RepairResult,
    Reservation,
    ResolveResult,
    ServiceRecord,
)
from controlplane.client._registry import (
    BulkRegistration,
    Model,
    ModelDetail,
    ModelFormat,
    ModelList,
    ModelVersion,
    Registration,
    SearchResult,
    VersionStatus,
)
from controlplane.v1 import leases_pb2, models_pb2, ports_pb2

#: The client's unary call: (rpc, request, timeout) -> response, with its routing and retries.
SyncUnary = Callable[[Any, Any, "float | None"], Any]
AsyncUnary = Callable[[Any, Any, "float | None"], Awaitable[Any]]
'''
]
for asynchronous in (False, True):
    for group, (cls, doc) in CLASSES.items():
        name = ("Async" if asynchronous else "") + cls
        out.append(
            f'\n\nclass {name}:\n    """{doc}"""\n\n    def __init__(self, unary: {"AsyncUnary" if asynchronous else "SyncUnary"}) -> None:\n        self._unary = unary\n'
        )
        for g, meth, sig, ret, mdoc, rpc, req, res in METHODS:
            if g != group:
                continue
            kw = "async def" if asynchronous else "def"
            aw = "await " if asynchronous else ""
            out.append(
                f'\n    {kw} {meth}({sig}) -> {ret}:\n        """{mdoc}"""\n        r = {aw}self._unary({rpc}, {req}, timeout)\n        return {res}\n'
            )
target = sys.argv[1] if len(sys.argv) > 1 else "controlplane/client/_api.py"
with open(target, "w") as handle:
    handle.write("".join(out))
