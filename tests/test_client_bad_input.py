"""Bad numbers given to the SDK are InvalidArgument naming the call, before anything is sent, on
both clients: protobuf's bare ValueError ("Value out of range: -1") never reaches a caller; and a
service manifest's numbers must be numbers."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import json_format

from controlplane.client import AsyncClient, Client, InvalidArgument
from controlplane.client._ports import manifest_message
from controlplane.v1 import models_pb2, ports_pb2

# Nothing listens here: a call that got as far as sending would fail with Unavailable instead.
NOWHERE = ["127.0.0.1:1"]

CALLS: list[tuple[str, Callable[[Any], Any], str]] = [
    ("allocate", lambda c: c.ports.allocate("h", "svc", preferred_port=-5), "allocate: Value out of range: -5"),
    ("get", lambda c: c.get("k", min_revision=-1), "get: Value out of range"),
    ("list", lambda c: c.list("p/", limit=-1), "list: Value out of range"),
    ("compare_and_swap", lambda c: c.compare_and_swap("k", b"v", -2), "compare_and_swap: Value out of range"),
    ("add_replica", lambda c: c.models.add_replica("m", 2**40, "n1"), "add_replica: Value out of range"),
    ("search", lambda c: c.models.search("x", limit=-1), "search: Value out of range"),
    ("register", lambda c: c.models.register("m", "a" * 64, -1, "gguf"), "size_bytes must be a whole number"),
    ("register parent", lambda c: c.models.register("m", "a" * 64, 1, "gguf", parent="m/0"), "not MODEL/VERSION"),
    ("update_version", lambda c: c.models.update_version("m", 1), "nothing to update"),
]


@pytest.mark.parametrize(
    ("call", "expected"), [(call, expected) for _, call, expected in CALLS], ids=[c[0] for c in CALLS]
)
def test_sync_client(call: Callable[[Client], Any], expected: str) -> None:
    with Client(NOWHERE, timeout=5.0) as client, pytest.raises(InvalidArgument, match=expected):
        call(client)


@pytest.mark.parametrize(
    ("call", "expected"), [(call, expected) for _, call, expected in CALLS], ids=[c[0] for c in CALLS]
)
def test_async_client(call: Callable[[AsyncClient], Any], expected: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(NOWHERE, timeout=5.0) as client:
            with pytest.raises(InvalidArgument, match=expected):
                await call(client)

    asyncio.run(scenario())


def test_a_watch_from_a_negative_revision() -> None:
    with (
        Client(NOWHERE, timeout=5.0) as client,
        pytest.raises(InvalidArgument, match="from_revision must be 0 or more"),
    ):
        client.watch("p/", from_revision=-1)


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ({"ports": [{"name": "http", "port": "8080"}]}, "ports[0].port must be a whole number, not '8080'"),
        ({"ports": [{"name": "http", "port": 80.5}]}, "ports[0].port must be a whole number"),
        ({"health_check": {"type": "tcp", "interval_s": True}}, "health_check.interval_s must be a whole number"),
        ({"run": {"command": ["x"], "stop_timeout_s": "30"}}, "run.stop_timeout_s must be a whole number"),
        ({"run": {"command": ["x"], "stop_timeout_s": 301}}, "run.stop_timeout_s is at most 300"),
    ],
)
def test_a_manifests_numbers_are_numbers(document: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(says)):
        manifest_message({"name": "web", "host": "h1", **document})


def test_an_exported_manifest_reads_back() -> None:
    """64-bit integers keep the proto3 JSON mapping's strings: that is how a manifest is exported."""
    manifest = ports_pb2.ServiceManifest(name="web", host="h1", lease_id=5)
    manifest.ports.add(name="http", port=8080)
    manifest.requirements.memory_mb = 1024
    exported = json_format.MessageToDict(manifest, preserving_proto_field_name=True)
    assert exported["lease_id"] == "5"
    assert manifest_message(exported) == manifest


def test_metric_values_are_numbers_only() -> None:
    import numpy as np

    from controlplane.client import _models as R

    assert R.metric_values({"a": 1, "b": 0.5, "c": np.float32(0.25), "d": np.int64(3)}) == {
        "a": 1.0,
        "b": 0.5,
        "c": 0.25,
        "d": 3.0,
    }
    for bad in (True, "0.9", None, 10**400):
        with pytest.raises(InvalidArgument, match="metric 'acc'"):
            R.metric_values({"acc": bad})  # type: ignore[dict-item]
    request = R.register_request("m", "a" * 64, np.int64(5), "gguf", parent=("base", np.int64(2)))  # type: ignore[arg-type]
    assert (request.size_bytes, request.parent.version) == (5, 2)


def test_a_server_that_drops_the_metadata_is_told_not_believed() -> None:
    """A server from before version metadata registers the version without it (a rolling upgrade):
    the SDK raises FailedPrecondition rather than report a registration that lost what was sent."""
    from controlplane.client import FailedPrecondition
    from controlplane.client import _models as R

    sent = R.register_request("m", "a" * 64, 1, "gguf", version_tags={"stage": "eval"}, parent="base/1")
    old = models_pb2.RegisterVersionResponse(version=models_pb2.ModelVersion(model="m", version=3))
    with pytest.raises(FailedPrecondition, match="older than version tags"):
        R.registration(sent, old)
    kept = models_pb2.RegisterVersionResponse(
        version=models_pb2.ModelVersion(
            model="m", version=3, tags={"stage": "eval"}, parent=models_pb2.VersionRef(model="base", version=1)
        )
    )
    assert R.registration(sent, kept).version.tags == {"stage": "eval"}
    plain = R.register_request("m", "a" * 64, 1, "gguf")
    assert R.registration(plain, old).version.version == 3  # nothing was sent to drop
