"""The Python SDK of the control plane: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Both have the same methods and behaviour; they share one base (``_base``) and differ only in the
gRPC transport they drive::

    from controlplane.client import Client

    with Client("10.0.0.1:7000,10.0.0.2:7000") as cp:
        put = cp.put("config/model", b"llama-3-8b")
        kv = cp.get("config/model")
        for event in cp.watch("config/", from_revision=put.revision):
            ...

Every call retries transient failures (``Unavailable``, including ``UnknownOutcome`` with the same
``request_id``) across endpoints until its deadline, follows the leader for writes, and raises the
errors below (from :mod:`controlplane.errors`) for everything else.
"""

from controlplane.client._async import AsyncClient, AsyncWatch
from controlplane.client._base import RetryPolicy
from controlplane.client._models import (
    CasResult,
    ClusterStatus,
    Consistency,
    DeleteResult,
    Event,
    EventType,
    KeyValue,
    ListResult,
    Member,
    PutResult,
    Role,
    SnapshotInfo,
)
from controlplane.client._ports import (
    AllocateResult,
    Conflict,
    ConflictKind,
    ImportResult,
    Lease,
    PortAction,
    PortAssignment,
    PortEvent,
    PortHistory,
    PortHistoryEntry,
    PortList,
    PortMove,
    PortRange,
    PortStats,
    RangeStats,
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
    ModelEvent,
    ModelFormat,
    ModelList,
    ModelVersion,
    Registration,
    SearchHit,
    SearchResult,
    VersionStatus,
)
from controlplane.client._sync import Client, Watch
from controlplane.errors import (
    AlreadyExists,
    ControlPlaneError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NoLeader,
    NotFound,
    NotLeader,
    OutOfRange,
    ResourceExhausted,
    Shutdown,
    Unavailable,
    UnknownOutcome,
)

__all__ = [
    "AllocateResult",
    "AlreadyExists",
    "AsyncClient",
    "AsyncWatch",
    "BulkRegistration",
    "CasResult",
    "Client",
    "ClusterStatus",
    "Conflict",
    "ConflictKind",
    "Consistency",
    "ControlPlaneError",
    "DeadlineExceeded",
    "DeleteResult",
    "Event",
    "EventType",
    "FailedPrecondition",
    "ImportResult",
    "Internal",
    "InvalidArgument",
    "KeyValue",
    "Lease",
    "ListResult",
    "Member",
    "Model",
    "ModelDetail",
    "ModelEvent",
    "ModelFormat",
    "ModelList",
    "ModelVersion",
    "NoLeader",
    "NotFound",
    "NotLeader",
    "OutOfRange",
    "PortAction",
    "PortAssignment",
    "PortEvent",
    "PortHistory",
    "PortHistoryEntry",
    "PortList",
    "PortMove",
    "PortRange",
    "PortStats",
    "PutResult",
    "RangeStats",
    "ReassignResult",
    "Registration",
    "ReleaseResult",
    "RepairResult",
    "Reservation",
    "ResolveResult",
    "ResourceExhausted",
    "RetryPolicy",
    "Role",
    "SearchHit",
    "SearchResult",
    "ServiceRecord",
    "Shutdown",
    "SnapshotInfo",
    "Unavailable",
    "UnknownOutcome",
    "VersionStatus",
    "Watch",
]
