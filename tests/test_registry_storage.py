"""How the registry is stored (state/models.py: models and versions kept serialized, results in the
dedupe table and typed changes in the watch history too), and what must not change because of it:
snapshots in the existing format restore and are written back byte for byte, and every read hands
out a copy that the caller may change without changing the state.
"""

from __future__ import annotations

import hashlib

from controlplane.state import snapshot_v1
from controlplane.state.machine import SNAPSHOT_END_MARKER, StateMachine, batch_entry
from controlplane.v1 import command_pb2, kv_pb2, models_pb2, watch_pb2

READY = models_pb2.VERSION_STATUS_READY
PENDING = models_pb2.VERSION_STATUS_PENDING


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def handmade_snapshot() -> tuple[bytes, models_pb2.ModelsState]:
    """A snapshot in the StateSnapshot format as any earlier server wrote it (deterministic bytes of
    the message), with every registry feature in it: aliases, tags, metadata, replicas, statuses, a
    deleted version, model events in the history and a bulk registration's result remembered."""
    llama = models_pb2.Model(
        name="Llama-3-8B",
        description="Meta's model",
        family="llama",
        tags=["chat", "Multilingual"],
        owner="team-ml",
        aliases={"prod": 1, "canary": 3},
        latest_version=3,
        create_revision=1,
        mod_revision=7,
        created_unix_ms=1_000,
        updated_unix_ms=1_070,
        version_count=2,
    )
    cafe = models_pb2.Model(name="Café", latest_version=1, version_count=1, create_revision=5, mod_revision=5)
    versions = [
        models_pb2.ModelVersion(
            model="Llama-3-8B",
            version=1,
            sha256=sha("a"),
            size_bytes=123,
            format=models_pb2.MODEL_FORMAT_GGUF,
            source_uri="s3://models/a",
            metadata={"quant": "q4", "ctx": "8192"},
            status=READY,
            created_unix_ms=1_000,
            create_revision=2,
            mod_revision=8,
            replicas=["n1", "n3"],
        ),
        models_pb2.ModelVersion(
            model="Llama-3-8B", version=3, sha256=sha("c"), format=models_pb2.MODEL_FORMAT_ONNX, status=PENDING
        ),
        models_pb2.ModelVersion(model="Café", version=1, sha256=sha("d"), format=models_pb2.MODEL_FORMAT_PT),
    ]
    registry = models_pb2.ModelsState(models=[cafe, llama], versions=[versions[2], versions[0], versions[1]])
    history = [
        watch_pb2.Event(
            revision=7,
            type=watch_pb2.EVENT_TYPE_PUT,
            domain="models",
            key="Llama-3-8B",
            time_unix_ms=1_070,
            model=models_pb2.ModelEvent(change="alias canary -> 3", model=llama),
        ),
        watch_pb2.Event(
            revision=8,
            type=watch_pb2.EVENT_TYPE_PUT,
            domain="models",
            key="Llama-3-8B/1",
            time_unix_ms=1_080,
            model=models_pb2.ModelEvent(change="replica added: n3", version=versions[0]),
        ),
        watch_pb2.Event(
            revision=9,
            type=watch_pb2.EVENT_TYPE_PUT,
            domain="kv",
            key="k",
            time_unix_ms=1_090,
            kv=kv_pb2.KeyValue(key="k", value=b"v", create_revision=9, mod_revision=9, version=1),
        ),
    ]
    bulk = command_pb2.CommandResult(
        revision=6, model_bulk_register=models_pb2.BulkRegisterResponse(versions=versions[1:], models_created=1)
    )
    # What every server writes for the other domains when they are empty (ports' default ranges).
    snapshot = command_pb2.StateSnapshot.FromString(StateMachine().snapshot())
    snapshot.MergeFrom(
        command_pb2.StateSnapshot(
            format_version=snapshot_v1.FORMAT_VERSION,
            revision=9,
            time_unix_ms=1_090,
            kvs=[history[2].kv],
            history=history,
            compacted_revision=6,
            dedupe=[command_pb2.DedupeEntry(request_id="bulk-1", time_unix_ms=1_060, result=bulk)],
            models=registry,
            end_marker=SNAPSHOT_END_MARKER,
        )
    )
    return snapshot.SerializeToString(deterministic=True), registry


def test_a_snapshot_in_the_existing_format_restores_and_is_written_back_byte_for_byte() -> None:
    data, registry = handmade_snapshot()
    machine = StateMachine()
    machine.restore(data)
    assert machine.snapshot() == data
    table = machine.registry
    assert list(table.models) == ["Café", "Llama-3-8B"]
    assert [table.models[m.name] for m in registry.models] == list(registry.models)
    by_model = {
        m.name: sorted((v for v in registry.versions if v.model == m.name), key=lambda v: v.version)
        for m in registry.models
    }
    assert {name: table.versions_of(name) for name in table.models} == by_model
    assert table.resolve("Llama-3-8B", "canary") == by_model["Llama-3-8B"][1]
    assert [e.revision for e in machine.events_from(7)] == [7, 8, 9]
    assert machine.events_from(7) == list(command_pb2.StateSnapshot.FromString(data).history)
    # The remembered bulk result answers its retry, as it was.
    retry = command_pb2.Command(request_id="bulk-1", model_bulk_register=models_pb2.BulkRegisterRequest())
    (answer,) = machine.apply_entry(batch_entry(1_100, "n1", [retry]))
    assert answer == command_pb2.StateSnapshot.FromString(data).dedupe[0].result
    # And the machine goes on from it: a new version is numbered after the latest.
    register = command_pb2.Command(
        model_register=models_pb2.RegisterVersionRequest(
            model="Llama-3-8B", sha256=sha("e"), format=models_pb2.MODEL_FORMAT_GGUF
        )
    )
    (result,) = machine.apply_entry(batch_entry(1_200, "n1", [register]))
    assert result.model_register.version.version == 4
    duplicate = command_pb2.Command(
        model_register=models_pb2.RegisterVersionRequest(
            model="Llama-3-8B", sha256=sha("a"), format=models_pb2.MODEL_FORMAT_GGUF
        )
    )
    (refused,) = machine.apply_entry(batch_entry(1_300, "n1", [duplicate]))
    assert "version 1 already has sha256" in refused.error.message


def test_reads_are_copies_the_caller_may_change() -> None:
    data, _ = handmade_snapshot()
    machine = StateMachine()
    machine.restore(data)
    table = machine.registry
    model = table.models["Llama-3-8B"]
    model.description = "changed by a reader"
    model.aliases["prod"] = 3
    table.model("Llama-3-8B").tags.append("x")
    version = table.version("Llama-3-8B", 1)
    version.replicas.append("n9")
    table.versions_of("Llama-3-8B")[0].metadata["quant"] = "q8"
    table.resolve("Llama-3-8B", "prod").status = PENDING
    table.list_models("", "", 10)[0][0].name = "renamed"
    machine.events_from(7)[0].model.model.description = "changed"
    assert machine.snapshot() == data
