"""What the servicers share: the call's deadline, replicating a request message (and the servicer
methods that do only that, made from their protos' declarations), forwarding a keepalive to the
leader, and refusing bad input before the log."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from controlplane import methods
from controlplane.errors import InvalidArgument, NoLeader
from controlplane.server.authz import forwarded_error
from controlplane.server.node import Node
from controlplane.state.refusal import Refused
from controlplane.v1 import (
    command_pb2,
)

Resp = TypeVar("Resp", bound=Message)
Servicer = TypeVar("Servicer", bound=type)

SNAPSHOT_CHUNK_BYTES = 1024 * 1024
WATCH_PROGRESS_EVERY_S = 1.0


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining > 0 else None


FORWARDED_METADATA = ("cp-forwarded", "1")


async def to_leader(
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
        return await method(channel)(request, timeout=deadline_of(context) or 5.0, metadata=(FORWARDED_METADATA,))
    except grpc.aio.AioRpcError as exc:
        raise forwarded_error(exc, node.node_id) from None


async def replicate(node: Node, field: str, request: Message, response_type: type[Resp]) -> Resp:
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


def refuse_early(check: Callable[[], None]) -> None:
    """Run a state-independent check of the state machine's before the log: same message, no round trip."""
    try:
        check()
    except Refused as refused:
        raise InvalidArgument(refused.message) from None


def refuse_if(problem: str | None) -> None:
    if problem:
        raise InvalidArgument(problem)


def replicated_writes(service: ServiceDescriptor) -> Callable[[Servicer], Servicer]:
    """A class decorator: every method of ``service`` whose proto declares it one command (``option
    (controlplane.v1.command)``) and that the class does not define itself becomes ``replicate``
    with that command, when the command's body and result are the method's own request and
    response messages. A method that needs more (validation before the log, another message) is
    written by hand; one that is neither stays the generated base's UNIMPLEMENTED, which
    tests/test_wiring.py refuses."""
    bodies = command_pb2.Command.DESCRIPTOR.fields_by_name
    results = command_pb2.CommandResult.DESCRIPTOR.fields_by_name

    def decorate(servicer: Servicer) -> Servicer:
        base = next(cls for cls in servicer.__mro__ if cls.__name__ == f"{service.name}Servicer")
        for method in service.methods:
            command = methods.command_of(f"/{service.full_name}/{method.name}")
            if not command or command not in bodies or command not in results:
                continue
            if method.client_streaming or method.server_streaming:
                continue
            if getattr(servicer, method.name) is not getattr(base, method.name):
                continue  # written by hand (here or in a class it inherits from)
            body, result = bodies[command].message_type, results[command].message_type
            if body is None or body.full_name != method.input_type.full_name:
                continue
            if result is None or result.full_name != method.output_type.full_name:
                continue
            setattr(
                servicer,
                method.name,
                _replicating(method.name, command, message_factory.GetMessageClass(method.output_type)),
            )
        return servicer

    return decorate


def _replicating(name: str, command: str, response: type[Message]) -> Callable[..., Awaitable[Message]]:
    async def handler(self: Any, request: Message, context: grpc.aio.ServicerContext) -> Message:
        return await replicate(self._node, command, request, response)

    handler.__name__ = handler.__qualname__ = name
    handler.__doc__ = f"Replicates the request as one ``{command}`` command (its proto says so)."
    return handler
