"""How the domain tables refuse a command: raise ``Refused`` before changing anything.

A table validates and plans a command completely before its first change, so raising out of the
planning leaves the state untouched; ``refusing`` turns the exception into the command's error
result. Reads raise the same exception and the server maps it to the same status.
"""

from __future__ import annotations

from collections.abc import Callable

from controlplane.v1 import command_pb2, common_pb2

Handler = Callable[[command_pb2.Command], command_pb2.CommandResult]


class Refused(Exception):
    """A command or read the state refuses; carried out as an error result, never past apply."""

    def __init__(self, code: common_pb2.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> Refused:
    return Refused(common_pb2.ERROR_CODE_INVALID_ARGUMENT, message)


def not_found(message: str) -> Refused:
    return Refused(common_pb2.ERROR_CODE_NOT_FOUND, message)


def precondition(message: str) -> Refused:
    return Refused(common_pb2.ERROR_CODE_FAILED_PRECONDITION, message)


def check(problem: str | None) -> None:
    """Raise INVALID_ARGUMENT with a ``limits`` check's message, if it found a problem."""
    if problem:
        raise invalid(problem)


def error_result(code: common_pb2.ErrorCode, message: str, revision: int) -> command_pb2.CommandResult:
    """A command's error result, at the revision it left unchanged."""
    return command_pb2.CommandResult(revision=revision, error=common_pb2.Error(code=code, message=message))


def refusing(current_revision: Callable[[], int], handler: Handler) -> Handler:
    """``handler`` with ``Refused`` turned into an error result at the current (unchanged) revision."""

    def run(command: command_pb2.Command) -> command_pb2.CommandResult:
        try:
            return handler(command)
        except Refused as refused:
            return error_result(refused.code, refused.message, current_revision())

    return run
