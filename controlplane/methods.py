"""What each RPC of the client port is, read from the options declared next to it in the protos
(``proto/controlplane/v1/options.proto``): one declaration that the SDK (which calls go to the
leader), the server (which calls the audit log records, what each call needs from its caller) and
the tests (tests/test_wiring.py, tests/test_authz_table.py) share.

A method is named by its gRPC path, ``/controlplane.v1.Ports/Allocate``.
"""

from __future__ import annotations

import functools

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor

from controlplane.v1 import (
    auth_pb2,
    calls_pb2,
    cluster_pb2,
    gossip_pb2,
    kv_pb2,
    leases_pb2,
    membership_pb2,
    models_pb2,
    options_pb2,
    ports_pb2,
    watch_pb2,
)

__all__ = [
    "CARRY_ACCEPTED",
    "CARRY_PATH",
    "CLIENT_PORT_FILES",
    "command_of",
    "declared_access",
    "descriptor",
    "is_write",
]

#: The stream that carries unary calls of the client port as its messages (server/calls.py,
#: client/_calls.py): one definition for the server and the SDK, which may not import the server.
CARRY_PATH = f"/{calls_pb2.DESCRIPTOR.services_by_name['Calls'].full_name}/Carry"
#: The header a server sends as it takes a Carry stream; a client writes nothing before it.
CARRY_ACCEPTED = ("cp-carry", "1")

#: The files whose services the client port serves (the others are served on their own ports); importing
#: them puts their methods in the descriptor pool.
CLIENT_PORT_FILES = (
    auth_pb2,
    calls_pb2,
    cluster_pb2,
    gossip_pb2,
    kv_pb2,
    leases_pb2,
    membership_pb2,
    models_pb2,
    ports_pb2,
    watch_pb2,
)


@functools.cache
def descriptor(path: str) -> MethodDescriptor:
    """The method at gRPC path ``path``; KeyError when no imported service has it."""
    service, _, method = path.lstrip("/").partition("/")
    return descriptor_pool.Default().FindServiceByName(service).methods_by_name[method]


def is_write(path: str) -> bool:
    """Whether the method may change the cluster's state (``option (controlplane.v1.write)``)."""
    return bool(descriptor(path).GetOptions().Extensions[options_pb2.write])  # type: ignore[index]


def command_of(path: str) -> str:
    """The Command body field the write travels in (``option (controlplane.v1.command)``), or ""."""
    return str(descriptor(path).GetOptions().Extensions[options_pb2.command])  # type: ignore[index]


def declared_access() -> dict[str, options_pb2.Access]:
    """Every method of the client port's files that declares ``option (controlplane.v1.access)``,
    by gRPC path (a method that declares none is in no one's reach: authz refuses it)."""
    declared: dict[str, options_pb2.Access] = {}
    for module in CLIENT_PORT_FILES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if options.HasExtension(options_pb2.access):
                    declared[f"/{service.full_name}/{method.name}"] = options.Extensions[options_pb2.access]
    return declared
