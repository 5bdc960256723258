"""The gRPC servicers, one module per service, registered from one list (``SERVICES``).

Each servicer is thin: parse the request, call the node's handler, build the response. No decisions
here and no error handling: handlers raise ``controlplane.errors`` exceptions and
``interceptor.ErrorsAndMetrics`` turns them into statuses in one place. What several servicers share
(the call's deadline, replicating a request message, refusing bad input before the log) is in
``_shared``.

A new service is a module here and one ``Registration`` below: the server adds every entry to its
gRPC server and lists it for reflection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from google.protobuf.descriptor import ServiceDescriptor

from controlplane.server.audit import AuditLog
from controlplane.server.authz import Authorizer
from controlplane.server.node import Node
from controlplane.server.services.auth import AuthService
from controlplane.server.services.catalog import ServicesService
from controlplane.server.services.cluster import ClusterService
from controlplane.server.services.gossip import GossipService
from controlplane.server.services.kv import KVService
from controlplane.server.services.leases import LeasesService
from controlplane.server.services.membership import MembershipService
from controlplane.server.services.models import ModelsService
from controlplane.server.services.ports import PortsService
from controlplane.server.services.watch import WatchService
from controlplane.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    cluster_pb2,
    cluster_pb2_grpc,
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

__all__ = [
    "SERVICES",
    "AuthService",
    "ClusterService",
    "GossipService",
    "KVService",
    "LeasesService",
    "MembershipService",
    "ModelsService",
    "PortsService",
    "Registration",
    "ServicesService",
    "Serving",
    "WatchService",
    "add_services",
]


@dataclass(frozen=True)
class Serving:
    """What a servicer may be built from."""

    node: Node
    authorizer: Authorizer
    audit: AuditLog | None


class HandlerRegistry(Protocol):
    """What the generated ``add_*Servicer_to_server`` functions call on the server they are given:
    a ``grpc.aio.Server``, or the client port's ``interceptor.ErrorsAndMetrics``."""

    def add_generic_rpc_handlers(self, handlers: Any) -> None: ...

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None: ...


@dataclass(frozen=True)
class Registration:
    """One gRPC service: its schema, the generated ``add_..._to_server`` and how its servicer is built."""

    descriptor: ServiceDescriptor
    add: Callable[[Any, HandlerRegistry], None]
    make: Callable[[Serving], object]


def _service(pb2: ModuleType, pb2_grpc: ModuleType, name: str, make: Callable[[Serving], object]) -> Registration:
    """The registration of service ``name`` from its generated modules."""
    return Registration(pb2.DESCRIPTOR.services_by_name[name], getattr(pb2_grpc, f"add_{name}Servicer_to_server"), make)


SERVICES: tuple[Registration, ...] = (
    _service(auth_pb2, auth_pb2_grpc, "Auth", lambda s: AuthService(s.node, s.authorizer, s.audit)),
    _service(kv_pb2, kv_pb2_grpc, "KV", lambda s: KVService(s.node)),
    _service(watch_pb2, watch_pb2_grpc, "Watch", lambda s: WatchService(s.node)),
    _service(cluster_pb2, cluster_pb2_grpc, "Cluster", lambda s: ClusterService(s.node)),
    _service(ports_pb2, ports_pb2_grpc, "Ports", lambda s: PortsService(s.node)),
    _service(ports_pb2, ports_pb2_grpc, "Services", lambda s: ServicesService(s.node)),
    _service(leases_pb2, leases_pb2_grpc, "Leases", lambda s: LeasesService(s.node)),
    _service(models_pb2, models_pb2_grpc, "Models", lambda s: ModelsService(s.node)),
    _service(membership_pb2, membership_pb2_grpc, "Membership", lambda s: MembershipService(s.node)),
    _service(gossip_pb2, gossip_pb2_grpc, "Gossip", lambda s: GossipService(s.node)),
)


def add_services(server: HandlerRegistry, serving: Serving) -> tuple[str, ...]:
    """Add every service of ``SERVICES`` to ``server``; their full names, for reflection."""
    for registration in SERVICES:
        registration.add(registration.make(serving), server)
    return tuple(registration.descriptor.full_name for registration in SERVICES)
