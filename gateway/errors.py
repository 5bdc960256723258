"""The gateway's errors and the one place every failure becomes an HTTP status and a JSON body.

Every error answer, whoever detected it, has the same shape::

    {"code": "NOT_FOUND", "message": "no node 'gpu-07'; register it"}

``code`` is stable and meant for programs; ``message`` is for people and may change. The mapping
(:data:`STATUS_BY_ERROR`, resolved along the exception's MRO so a subclass inherits its parent's
status unless listed itself)::

    controlplane.errors                HTTP  code                  why this status
    InvalidArgument                    400   INVALID_ARGUMENT      fix the input; nothing changed
    OutOfRange                         400   OUT_OF_RANGE          a revision outside what is kept
    NotFound                           404   NOT_FOUND
    AlreadyExists                      409   ALREADY_EXISTS
    FailedPrecondition                 409   FAILED_PRECONDITION   the state forbids it now; 412 is
                                                                   for HTTP conditional headers
                                                                   (If-Match), which we do not use
    NotLeader (a FailedPrecondition)   503   NOT_LEADER            leadership is moving: retry
    ResourceExhausted                  409   RESOURCE_EXHAUSTED    a full network or port range; not
                                                                   429, which tells clients to retry
                                                                   the same request later
    Unavailable, NoLeader, Shutdown,   503   UNAVAILABLE, ...      with Retry-After; nothing was
    UnknownOutcome                                                 applied, or (UnknownOutcome) retry
                                                                   with the same Idempotency-Key
    DeadlineExceeded                   504   DEADLINE_EXCEEDED     the cluster did not answer in time
    Internal, anything else            500   INTERNAL              no stack trace in the body

    the gateway's own
    request validation (FastAPI)       400   INVALID_ARGUMENT      one status for "fix your input",
                                                                   whether the gateway or the cluster
                                                                   noticed
    Unauthenticated                    401   UNAUTHENTICATED       with WWW-Authenticate: Bearer
    PermissionDenied                   403   PERMISSION_DENIED     the cluster refused the gateway's identity
    body over the size limit           413   PAYLOAD_TOO_LARGE     refused before parsing
    unknown path / method              404 / 405  NOT_FOUND / METHOD_NOT_ALLOWED
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from controlplane import errors

__all__ = [
    "RETRY_AFTER_S",
    "STATUS_BY_ERROR",
    "ClusterUnreachable",
    "ErrorAnswer",
    "PayloadTooLarge",
    "Unauthenticated",
    "error_body",
    "error_from_answer",
    "from_control_plane",
    "from_http_status",
    "internal",
]

#: Seconds a client should wait before retrying a 503 (sent as ``Retry-After``). An election on
#: loopback takes well under a second; on a LAN a little more.
RETRY_AFTER_S = 1


class Unauthenticated(errors.Unauthenticated):
    """A mutating request without the configured bearer token (or with a wrong one)."""


class PayloadTooLarge(errors.InvalidArgument):
    """A request body over the gateway's limit."""


class ClusterUnreachable(errors.Unavailable):
    """No server answered the gateway in time: for discovery this means "no leader reachable"."""


#: HTTP status per control-plane error class. Looked up along the MRO: the most specific wins.
STATUS_BY_ERROR: dict[type[errors.ControlPlaneError], int] = {
    errors.InvalidArgument: 400,
    errors.OutOfRange: 400,
    errors.NotFound: 404,
    errors.AlreadyExists: 409,
    errors.FailedPrecondition: 409,
    errors.NotLeader: 503,
    errors.ResourceExhausted: 409,
    errors.Unavailable: 503,
    errors.DeadlineExceeded: 504,
    errors.Internal: 500,
    errors.Unauthenticated: 401,
    errors.PermissionDenied: 403,
    PayloadTooLarge: 413,
}

#: Extra headers per status: a 401 names the scheme it wants (RFC 9110), a 503 when to come back.
_HEADERS_BY_STATUS: dict[int, dict[str, str]] = {
    401: {"WWW-Authenticate": "Bearer"},
    503: {"Retry-After": str(RETRY_AFTER_S)},
}


class ErrorAnswer:
    """An HTTP error answer: status, the JSON body and extra headers."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.body = error_body(code, message)
        self.headers = {**_HEADERS_BY_STATUS.get(status, {}), **(headers or {})}


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}


def from_control_plane(exc: errors.ControlPlaneError) -> ErrorAnswer:
    status = next((STATUS_BY_ERROR[cls] for cls in type(exc).__mro__ if cls in STATUS_BY_ERROR), 500)
    if status == 500:
        # The cluster's Internal message names where the bug is, never a traceback; an unknown
        # subclass gets a generic message.
        message = exc.message if isinstance(exc, errors.Internal) else "internal error in the control plane"
        return ErrorAnswer(500, "INTERNAL", message)
    code = "UNAVAILABLE" if isinstance(exc, ClusterUnreachable) else errors.code_of(type(exc))
    return ErrorAnswer(status, code, exc.message)


def from_http_status(status: int, detail: str | None = None) -> ErrorAnswer:
    """Starlette's own answers (unknown path, wrong method) in our shape."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    code = re.sub(r"[^A-Z0-9]+", "_", phrase.upper()).strip("_")
    return ErrorAnswer(status, code, detail or phrase)


def internal(error_id: str) -> ErrorAnswer:
    """An unexpected exception: the details stay in the gateway's log, under ``error_id``."""
    return ErrorAnswer(500, "INTERNAL", f"internal error in the gateway (error id {error_id}); see its log")


# --------------------------------------------------------------------------------------- client side

#: The SDK's mapping (controlplane.errors), with the gateway's own classes.
_BY_CODE: dict[str, type[errors.ControlPlaneError]] = {
    **errors.HTTP_CODES,
    errors.code_of(Unauthenticated): Unauthenticated,
    errors.code_of(PayloadTooLarge): PayloadTooLarge,
}
_BY_STATUS: dict[int, type[errors.ControlPlaneError]] = {
    **errors.HTTP_STATUSES,
    401: Unauthenticated,
    413: PayloadTooLarge,
}


def error_from_answer(status: int, body: Any) -> errors.ControlPlaneError:
    """The typed error for a gateway's error answer (the inverse of :func:`from_control_plane`)."""
    return errors.error_from_http_answer(status, body, _BY_CODE, _BY_STATUS)
