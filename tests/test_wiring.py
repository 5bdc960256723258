"""The hand-kept registration places agree with the wire schemas (issue 16, item 3's checks): every
command in the envelope has a state handler and every handler a command, every write a servicer
replicates names a command body and a result body of that name (``services._shared.replicate``
relies on it), and every RPC of every service on
the client port is registered and implemented. A new domain that misses one fails here, not at run
time on a cluster."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import ServiceDescriptor
from test_authz_table import NOT_ON_THE_CLIENT_PORT  # tests/ is on the path, not a package

import controlplane.v1
from controlplane import methods
from controlplane.methods import CARRY_PATH
from controlplane.server import authz
from controlplane.server.interceptor import ErrorsAndMetrics
from controlplane.server.services import SERVICES, Serving
from controlplane.state.machine import StateMachine
from controlplane.v1 import command_pb2

SERVICES_DIR = Path(__file__).resolve().parent.parent / "controlplane" / "server" / "services"


def _servicers() -> list[tuple[ServiceDescriptor, type]]:
    """Each registered service and its servicer class (the constructors only keep what they get)."""
    nobody = Serving(node=None, authorizer=None, audit=None)  # type: ignore[arg-type]
    return [(r.descriptor, type(r.make(nobody))) for r in SERVICES]


def _handwritten_rpcs() -> Iterator[tuple[str, ast.AsyncFunctionDef]]:
    """(gRPC path, its method's syntax) for every RPC a servicer class writes by hand."""
    service_of = {cls.__name__: descriptor for descriptor, cls in _servicers()}
    for path in sorted(SERVICES_DIR.glob("*.py")):
        for cls in ast.parse(path.read_text()).body:
            if not isinstance(cls, ast.ClassDef) or cls.name not in service_of:
                continue
            service = service_of[cls.name]
            for function in cls.body:
                if isinstance(function, ast.AsyncFunctionDef) and function.name in service.methods_by_name:
                    yield f"/{service.full_name}/{function.name}", function


def _replicated() -> dict[str, str]:
    """gRPC path -> the field its hand-written servicer method passes to ``replicate``."""
    found = {}
    for path, function in _handwritten_rpcs():
        for node in ast.walk(function):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "replicate":
                field = node.args[1]
                assert isinstance(field, ast.Constant) and isinstance(field.value, str), f"{path}: {ast.unparse(node)}"
                found[path] = field.value
    return found


def _body_fields(message: Any) -> set[str]:
    return {field.name for field in message.DESCRIPTOR.oneofs_by_name["body"].fields}


def test_every_command_has_a_state_handler_and_every_handler_a_command() -> None:
    commands = _body_fields(command_pb2.Command)
    handled = set(StateMachine()._handlers)
    assert commands - handled == set(), "commands the state machine cannot apply"
    assert handled - commands == set(), "handlers no command reaches"


def test_every_replicated_write_names_a_command_and_its_result() -> None:
    """``replicate`` copies the request into the command body of that name and answers with the
    result body of the same name: both must exist, or the write fails on a cluster."""
    replicated = _replicated()
    assert len(replicated) > 10  # it found the calls (the methods that only replicate are made, below)
    commands, results = _body_fields(command_pb2.Command), _body_fields(command_pb2.CommandResult)
    assert {at: f for at, f in replicated.items() if f not in commands} == {}, "no such command body"
    assert {at: f for at, f in replicated.items() if f not in results} == {}, "no such result body"


def test_every_service_of_the_protos_is_registered_once() -> None:
    services: set[str] = set()
    for info in pkgutil.iter_modules(controlplane.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"controlplane.v1.{info.name}")
            services |= {service.full_name for service in module.DESCRIPTOR.services_by_name.values()}
    registered = [registration.descriptor.full_name for registration in SERVICES]
    assert len(registered) == len(set(registered))
    # Calls is the transport the others' unary calls may travel on: app.add_client_api adds it,
    # with the client port's one handler that it resolves each carried call through.
    assert set(registered) == services - NOT_ON_THE_CLIENT_PORT - {"controlplane.v1.Calls"}


def test_every_rpc_is_implemented_by_its_servicer() -> None:
    """The generated base class answers UNIMPLEMENTED: each RPC must be overridden."""
    missing = []
    for service, servicer in _servicers():
        module = importlib.import_module(service.file.name.replace("/", ".").removesuffix(".proto") + "_pb2_grpc")
        base = getattr(module, f"{service.name}Servicer")
        assert issubclass(servicer, base), service.full_name
        missing += [
            f"{service.name}.{m.name}" for m in service.methods if getattr(servicer, m.name) is getattr(base, m.name)
        ]
    assert missing == []


def test_each_write_is_declared_once_in_its_proto_with_the_command_it_replicates() -> None:
    """``option (controlplane.v1.command)`` names what the servicer really replicates, names a
    command body, and sits only on a method declared a write."""
    replicated = _replicated()
    assert len(replicated) > 10
    assert {path: field for path, field in replicated.items() if methods.command_of(path) != field} == {}
    commands = _body_fields(command_pb2.Command)
    declared = {path: methods.command_of(path) for path in authz.METHODS if path.startswith("/controlplane.")}
    assert {path: c for path, c in declared.items() if c and (c not in commands or not methods.is_write(path))} == {}


def test_the_audit_log_records_the_writes_and_only_the_writes() -> None:
    """Which calls are audited follows the protos' declarations. A rule by method name before it
    missed two reads, audited on every call (an agent asks Auth.Check on every artifact read)."""
    for read in ("/controlplane.v1.Auth/Check", "/controlplane.v1.Auth/WatchAudit", "/controlplane.v1.KV/Get"):
        assert read in authz.READ_ONLY and not methods.is_write(read)
    for write in ("/controlplane.v1.KV/Put", "/controlplane.v1.Auth/CreateToken", "/controlplane.v1.Cluster/AddMember"):
        assert write not in authz.READ_ONLY and methods.is_write(write)


def test_the_methods_that_only_replicate_are_made_from_their_protos() -> None:
    """``replicated_writes`` gives a servicer each declared one-command write it does not write by
    hand; the hand-written ones (validation first, another message) are not replaced."""
    made, by_hand = [], _replicated()
    for service, servicer in _servicers():
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            handler = getattr(servicer, method.name)
            if (handler.__doc__ or "").startswith("Replicates the request as one"):
                assert path not in by_hand and methods.command_of(path) in handler.__doc__
                made.append(path)
    assert len(made) > 30 and "/controlplane.v1.Ports/Allocate" in made
    assert "/controlplane.v1.KV/Put" not in made  # hand-written: its request is not the command's body


#: Calls through which a servicer changes state other than ``replicate``.
_WRITING_CALLS = {"write", "_change", "restore", "add_member", "remove_member", "transfer_leadership"}


def test_every_servicer_method_that_writes_is_declared_a_write() -> None:
    """A method that changes state without ``replicate`` (``node.write``, membership changes, a
    restore) must be declared a write in its proto too: else the audit log would skip it and the
    SDK would not send it to the leader."""
    undeclared, writers = [], 0
    for path, function in _handwritten_rpcs():
        called = {
            getattr(n.func, "attr", getattr(n.func, "id", "")) for n in ast.walk(function) if isinstance(n, ast.Call)
        }
        writes = bool(called & (_WRITING_CALLS | {"replicate"}))
        writers += writes
        if writes and not methods.is_write(path):
            undeclared.append(path)
    assert writers > 25  # it saw the hand-written writes
    assert undeclared == []


def test_servicers_read_the_state_through_one_table_never_the_machine() -> None:
    """A servicer reads a domain through ``Node.read_table`` (one table, under the state lock, with
    refusals mapped to errors): never ``node.machine`` or the lock itself."""
    reaching = []
    for path in sorted(SERVICES_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("machine", "state_lock"):
                reaching.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not reaching, reaching


def test_every_sdk_rpc_names_a_served_method_and_its_response_type() -> None:
    """The SDK's ``Rpc`` descriptors are typed by hand (for the type checker): each must name a
    method of the client port, with exactly the response message its proto declares, and every
    method of the client port must have one."""
    import controlplane.client
    from controlplane.client import _base

    modules = [
        importlib.import_module(f"controlplane.client.{info.name}")
        for info in pkgutil.iter_modules(controlplane.client.__path__)
    ]
    rpcs = [value for module in modules for value in vars(module).values() if isinstance(value, _base.Rpc)]
    for rpc in rpcs:
        declared = methods.descriptor(rpc.path).output_type
        assert rpc.response.DESCRIPTOR.full_name == declared.full_name, rpc.path
    served = {path for path in authz.METHODS if path.startswith("/controlplane.")}
    assert served - {CARRY_PATH} == {rpc.path for rpc in rpcs}  # the SDK carries calls on Carry (_calls.py)


async def test_every_method_of_the_client_port_is_judged_by_the_authorizer_before_it_runs() -> None:
    """The client port's one handler (``app.add_client_api``: our services, gRPC health and reflection)
    resolves every method, and each call meets the authorizer before the servicer: a refusal there
    stops it (the servicers here have no node, so one that ran would fail otherwise). grpcio never
    sees a registered method: its asyncio server waits on one pending request per registered method
    after every call it accepts (~0.05 ms per call with the client port's 106 methods)."""
    from grpc_health.v1 import health, health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    from controlplane.server.app import add_client_api
    from controlplane.state.auth import Caller

    judged: list[str] = []

    class Refusing:
        def check(self, method: str, request: Any, context: Any) -> tuple[Caller | None, str]:
            judged.append(method)
            raise authz.PermissionDenied(f"{method} refused by the test", Caller("user", "nobody"))

    class Aborted(Exception):
        pass

    class Context:
        async def abort(self, code: Any, details: str, trailing_metadata: Any = ()) -> None:
            raise Aborted(details)

    class Details:
        def __init__(self, method: str) -> None:
            self.method = method
            self.invocation_metadata = ()

    api = ErrorsAndMetrics(Refusing())  # type: ignore[arg-type]
    add_client_api(api, Serving(node=None, authorizer=None, audit=None), health.aio.HealthServicer())  # type: ignore[arg-type]
    descriptors = [descriptor for descriptor, _servicer in _servicers()]
    descriptors += [health_pb2.DESCRIPTOR.services_by_name["Health"]]
    descriptors += [reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]]
    paths = [f"/{d.full_name}/{m.name}" for d in descriptors for m in d.methods]
    assert len(paths) == 106
    for path in paths:
        handler = api.service(Details(path))  # type: ignore[arg-type]
        assert handler is not None, path
        behaviour = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        assert api.service(Details(path)) is handler  # type: ignore[arg-type]  # resolved and wrapped once
        with pytest.raises(Aborted, match="refused by the test"):
            call = behaviour(None, Context())
            if hasattr(call, "__anext__"):
                await call.__anext__()
            else:
                await call
        assert judged[-1] == path
    assert len(judged) == len(paths)
    assert api.service(Details("/controlplane.v1.KV/NoSuchMethod")) is None  # type: ignore[arg-type]
