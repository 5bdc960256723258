"""Every error the control plane raises, and the one place they map to gRPC status codes.

The tree::

    ControlPlaneError
    ├── InvalidArgument        bad input; nothing changed              INVALID_ARGUMENT
    ├── NotFound                                                        NOT_FOUND
    ├── AlreadyExists                                                   ALREADY_EXISTS
    ├── FailedPrecondition     the state forbids it now (e.g. a         FAILED_PRECONDITION
    │   │                      membership change already in flight)
    │   └── NotLeader          only the leader can do this; carries     FAILED_PRECONDITION
    │                          the leader hint
    ├── ResourceExhausted                                               RESOURCE_EXHAUSTED
    ├── OutOfRange             e.g. a watch older than the retained     OUT_OF_RANGE
    │                          history; carries the oldest revision
    ├── Unavailable            retry elsewhere or later; the request    UNAVAILABLE
    │   │                      was not applied
    │   ├── NoLeader           no leader is known (election running)
    │   ├── Shutdown           the node is stopping
    │   └── UnknownOutcome     the command may or may not have been
    │                          applied: retry with the same request id
    ├── DeadlineExceeded       the caller's deadline passed             DEADLINE_EXCEEDED
    ├── Unauthenticated        no credential, or one the cluster does   UNAUTHENTICATED
    │                          not accept (unknown/expired token)
    ├── PermissionDenied       the caller is known but lacks the        PERMISSION_DENIED
    │                          permission the call needs
    └── Internal               a bug; please report it                  INTERNAL
        └── Unimplemented      the server has no such method (a release  UNIMPLEMENTED
                               older than the client's)

It is the one root: every error our packages raise to a caller derives from it, so
``except ControlPlaneError`` catches them all. Errors raised before any call is made are
``InvalidArgument`` and stay ``ValueError`` too, as they always were: ``CredentialsError`` (SDK
credentials), ``TlsError`` (a key, certificate or CA file), ``ConfigError`` (a server's config) and
``ContextError`` (a cpctl context). The gossip layer's ``gossip.artifacts.ArtifactError`` and
``gossip.exchange.ExchangeError`` trees hang directly under the root. Two errors never leave the
server and stay apart: ``state.machine.SnapshotError`` (the state layer imports nothing of ours
but itself and the wire messages) and ``server.raft_codec.CodecError`` (a malformed peer frame).

A consensus failure (Unavailable and its children) is kept apart from the application's answer
(everything else), as hashicorp/raft keeps ``ErrLeadershipLost`` apart from an FSM response.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import grpc

from controlplane.v1 import common_pb2

__all__ = [
    "AlreadyExists",
    "ControlPlaneError",
    "ControlPlaneWarning",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NoLeader",
    "NotFound",
    "NotLeader",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Shutdown",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UnknownOutcome",
    "code_of",
    "error_from_http_answer",
    "error_from_result",
    "error_from_rpc",
    "error_from_status",
    "rpc_metadata",
]

# Trailing-metadata keys that carry an error's structured fields across the wire.
LEADER_ID_KEY = "cp-leader-id"
LEADER_ADDRESS_KEY = "cp-leader-address"
OLDEST_REVISION_KEY = "cp-oldest-revision"
ERROR_KIND_KEY = "cp-error"
# Initial metadata of an ``Auth.WatchAudit`` stream the server subscribed: the SDK waits for it.
AUDIT_SUBSCRIBED_KEY = "cp-audit-subscribed"


class ControlPlaneWarning(UserWarning):
    """What the cluster accepted but flagged (a network naming a model not registered yet, a replica
    on an unknown node): the SDK issues it with ``warnings.warn``, ``cpctl`` prints it on stderr."""


class ControlPlaneError(Exception):
    """Base of every error the control plane raises."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Structured fields sent as trailing metadata next to the status."""
        return ((ERROR_KIND_KEY, type(self).__name__),)


class InvalidArgument(ControlPlaneError):
    """The request is malformed; fix it before retrying. Nothing changed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ControlPlaneError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ControlPlaneError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ControlPlaneError):
    """The request is valid but the current state forbids it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NotLeader(FailedPrecondition):
    """Only the leader can do this. ``leader_id``/``leader_address`` name it when known."""

    def __init__(self, message: str, leader_id: str = "", leader_address: str = "") -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_address = leader_address

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (
            *super().metadata(),
            (LEADER_ID_KEY, self.leader_id),
            (LEADER_ADDRESS_KEY, self.leader_address),
        )


class ResourceExhausted(ControlPlaneError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class OutOfRange(ControlPlaneError):
    """A revision outside what is retained. ``oldest_revision`` is the oldest still available."""

    code = grpc.StatusCode.OUT_OF_RANGE

    def __init__(self, message: str, oldest_revision: int = 0) -> None:
        super().__init__(message)
        self.oldest_revision = oldest_revision

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (*super().metadata(), (OLDEST_REVISION_KEY, str(self.oldest_revision)))


class Unavailable(ControlPlaneError):
    """The cluster could not take the request now; it was not applied. Safe to retry.

    ``leader_address``, when set, is the client address of the leader the answering server knows
    now (it learned of a new leader while this call was on its way to the old one): retry there.
    """

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, leader_address: str = "") -> None:
        super().__init__(message)
        self.leader_address = leader_address

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if not self.leader_address:
            return super().metadata()
        return (*super().metadata(), (LEADER_ADDRESS_KEY, self.leader_address))


class NoLeader(Unavailable):
    """No leader is known: an election is running or quorum is lost."""


class Shutdown(Unavailable):
    """The node is shutting down."""


class UnknownOutcome(Unavailable):
    """The command was handed to Raft but its fate is unknown (timeout or leader change).

    It may still commit. Retrying with the same request id is safe: the state machine
    deduplicates, so the retry returns the first outcome instead of applying twice.
    """


class DeadlineExceeded(ControlPlaneError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(ControlPlaneError):
    """No credential, or one the cluster does not accept (unknown, expired or revoked token). Not
    retried: the same credential would be refused again."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ControlPlaneError):
    """The caller is known but lacks the permission the call needs; the message names both."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Internal(ControlPlaneError):
    """A bug in the control plane. The message says where; please report it."""

    code = grpc.StatusCode.INTERNAL


class Unimplemented(Internal):
    """The server does not have the method called: it runs a release older than the caller's.
    An ``Internal`` still, so code that catches those catches it too."""

    code = grpc.StatusCode.UNIMPLEMENTED


_BY_RESULT_CODE: dict[int, type[ControlPlaneError]] = {
    common_pb2.ERROR_CODE_INVALID_ARGUMENT: InvalidArgument,
    common_pb2.ERROR_CODE_NOT_FOUND: NotFound,
    common_pb2.ERROR_CODE_ALREADY_EXISTS: AlreadyExists,
    common_pb2.ERROR_CODE_FAILED_PRECONDITION: FailedPrecondition,
    common_pb2.ERROR_CODE_RESOURCE_EXHAUSTED: ResourceExhausted,
    common_pb2.ERROR_CODE_OUT_OF_RANGE: OutOfRange,
    common_pb2.ERROR_CODE_INTERNAL: Internal,
}

_BY_STATUS: dict[grpc.StatusCode, type[ControlPlaneError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}

_UNAVAILABLE_KINDS: dict[str, type[Unavailable]] = {
    "NoLeader": NoLeader,
    "Shutdown": Shutdown,
    "UnknownOutcome": UnknownOutcome,
}


def error_from_result(error: common_pb2.Error) -> ControlPlaneError:
    """The exception for an error the state machine returned as a result."""
    return _BY_RESULT_CODE.get(error.code, Internal)(error.message)


def error_from_status(code: grpc.StatusCode, details: str, metadata: dict[str, str] | None = None) -> ControlPlaneError:
    """The exception for a gRPC status received by a client (the inverse of ``ControlPlaneError.code``)."""
    metadata = metadata or {}
    kind = metadata.get(ERROR_KIND_KEY, "")
    if code == grpc.StatusCode.FAILED_PRECONDITION and kind == "NotLeader":
        return NotLeader(details, metadata.get(LEADER_ID_KEY, ""), metadata.get(LEADER_ADDRESS_KEY, ""))
    if code == grpc.StatusCode.OUT_OF_RANGE:
        try:
            oldest = int(metadata.get(OLDEST_REVISION_KEY, "0"))
        except ValueError:
            oldest = 0
        return OutOfRange(details, oldest)
    if code == grpc.StatusCode.UNAVAILABLE:
        return _UNAVAILABLE_KINDS.get(kind, Unavailable)(details, metadata.get(LEADER_ADDRESS_KEY, ""))
    return _BY_STATUS.get(code, Internal)(details or code.name)


def rpc_metadata(error: grpc.RpcError) -> dict[str, str]:
    """The trailing metadata of a failed call, as text."""
    metadata: dict[str, str] = {}
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        metadata[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return metadata


def error_from_rpc(error: grpc.RpcError) -> ControlPlaneError:
    """The typed exception for a failed gRPC call: its status, details and trailing metadata."""
    return error_from_status(error.code(), error.details() or "", rpc_metadata(error))  # type: ignore[attr-defined]


# --- HTTP answers (the gateway's error bodies) ----------------------------------------------------


def code_of(cls: type[BaseException]) -> str:
    """``NoLeader`` -> ``NO_LEADER``: the ``code`` of a gateway's error body names the most specific
    class, so a client can tell an election (NO_LEADER) from a server stopping (SHUTDOWN) without
    parsing messages."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).upper()


#: The class each ``code`` names, so that an HTTP client raises what the cluster raised.
HTTP_CODES: Mapping[str, type[ControlPlaneError]] = {
    code_of(cls): cls
    for cls in (
        InvalidArgument,
        OutOfRange,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        NotLeader,
        ResourceExhausted,
        Unavailable,
        NoLeader,
        Shutdown,
        UnknownOutcome,
        DeadlineExceeded,
        Internal,
        Unauthenticated,
        PermissionDenied,
    )
}
#: The class for an answer without a known ``code`` (a proxy's HTML 502, say), by HTTP status.
HTTP_STATUSES: Mapping[int, type[ControlPlaneError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: FailedPrecondition,
    503: Unavailable,
    504: DeadlineExceeded,
}


def error_from_http_answer(
    status: int,
    body: Any,
    codes: Mapping[str, type[ControlPlaneError]] = HTTP_CODES,
    statuses: Mapping[int, type[ControlPlaneError]] = HTTP_STATUSES,
) -> ControlPlaneError:
    """The typed error for a gateway's error answer ``{"code": ..., "message": ...}``.

    The ``code`` decides; an answer without a known one is classified by ``status``: any other 5xx
    is ``Unavailable``, any other 4xx ``InvalidArgument``.
    """
    code = body.get("code") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message:
        message = f"the gateway answered HTTP {status}"
    cls = codes.get(code) if isinstance(code, str) else None
    if cls is None:
        cls = statuses.get(status) or (Unavailable if status >= 500 else InvalidArgument)
    return cls(message)
