"""The model registry through real server processes: search on every server at the same revision,
the index rebuilt after a restart and after a backup restore, bulk import over the CLI, bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from controlplane.client import Client, Consistency, FailedPrecondition, InvalidArgument, NotFound
from controlplane.dev import LocalCluster
from controlplane.v1 import models_pb2, models_pb2_grpc

from .conftest import channel, credentials_env, node_client, running, wait_converged

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

CATALOGUE = [
    ("Llama-3-8B-Instruct", "llama", ["chat", "instruct"], "Meta's instruction-tuned model"),
    ("Qwen2-7B-Instruct", "qwen", ["chat"], "Alibaba's 7B model"),
    ("Café-Mistral_7b", "mistral", ["french"], "A café-trained assistant"),
    ("whisper-large-v3", "whisper", ["audio"], "Speech recognition"),
]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def register_catalogue(client: Client, suffix: str) -> int:
    """Register the catalogue under names ending in ``suffix``; the revision of the last write."""
    revision = 0
    for index, (name, family, tags, description) in enumerate(CATALOGUE):
        result = client.models.register(
            f"{name}{suffix}",
            sha(f"{name}{suffix}"),
            1000 + index,
            "gguf" if index % 2 else "safetensors",
            status="ready",
            family=family,
            tags=tags,
            description=description,
        )
        revision = result.revision
    return revision


def names(result: object) -> list[str]:
    return [hit.model.name for hit in result.hits]  # type: ignore[attr-defined]


def test_search_quality_and_the_same_answer_on_every_server(cluster: LocalCluster) -> None:
    suffix = f"-{uuid.uuid4().hex[:6]}"
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        revision = register_catalogue(client, suffix)
        answers = []
        for node in running(cluster):
            with node_client(node) as local:
                found = {
                    query: names(local.models.search(f"{query} {suffix[1:]}", min_revision=revision,
                                                     consistency=Consistency.STALE))
                    for query in ("llama", "cafe", "llama-3", "qwen inst", "chat")
                }  # fmt: skip
            answers.append(found)
        assert answers[0] == answers[1] == answers[2], "servers disagree at the same revision"
        found = answers[0]
        assert found["llama"] == [f"Llama-3-8B-Instruct{suffix}"]
        assert found["cafe"] == [f"Café-Mistral_7b{suffix}"]
        assert found["llama-3"] == [f"Llama-3-8B-Instruct{suffix}"]
        assert found["qwen inst"] == [f"Qwen2-7B-Instruct{suffix}"]
        assert sorted(found["chat"]) == sorted([f"Llama-3-8B-Instruct{suffix}", f"Qwen2-7B-Instruct{suffix}"])
        result = client.models.search(suffix[1:], format="gguf")
        assert sorted(names(result)) == sorted([f"Qwen2-7B-Instruct{suffix}", f"whisper-large-v3{suffix}"])
        assert result.revision >= revision and result.query_ms >= 0 and result.engine in ("fts5", "like")
        for query in ("!!!", '"unbalanced', "-", ""):
            assert client.models.search(query).hits == (), query
        # Filters typed in the query, and "did you mean" for a misspelt word (issue 18).
        assert names(client.models.search(f"tag:chat family:qwen {suffix[1:]}")) == [f"Qwen2-7B-Instruct{suffix}"]
        misspelt = client.models.search(f"whispr {suffix[1:]}")
        assert misspelt.hits == () and misspelt.suggestions[0] == f"whisper {suffix[1:]}"
        with pytest.raises(InvalidArgument, match="give one"):
            client.models.search("tag:chat tag:audio")


def test_sorted_pages_follow_their_token_across_servers(cluster: LocalCluster) -> None:
    """Newest-changed first, a page at a time, each page asked of another server with the token the
    previous one returned: every model once, in order; a token is refused for another search."""
    tag = f"paged-{uuid.uuid4().hex[:6]}"
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        for index in range(7):
            client.models.register(f"{tag}-m{index}", sha(f"{tag}{index}"), 10, "onnx", tags=[tag])
        # m2 gets a new version last: the most recently changed.
        last = client.models.register(f"{tag}-m2", sha(f"{tag}-again"), 10, "onnx").revision
        seen: list[str] = []
        token = ""
        for page_number in range(10):
            node = running(cluster)[page_number % len(cluster.nodes)]
            with node_client(node) as local:
                page = local.models.search(
                    f"tag:{tag}", sort="updated", limit=3, page_token=token, min_revision=last,
                    consistency=Consistency.STALE,
                )  # fmt: skip
            seen += names(page)
            token = page.next_page_token
            if not token:
                break
        assert seen == [f"{tag}-m2", *(f"{tag}-m{index}" for index in (6, 5, 4, 3, 1, 0))]
        assert page_number == 2  # 3 + 3 + 1
        first = client.models.search(f"tag:{tag}", sort="updated", limit=3)
        with pytest.raises(InvalidArgument, match="another search"):
            client.models.search(f"tag:{tag}", sort="name", limit=3, page_token=first.next_page_token)
        with pytest.raises(InvalidArgument, match="unknown sort"):
            client.models.search(f"tag:{tag}", sort="popular")
        by_name = client.models.search(f"tag:{tag}", sort="name", limit=10)
        assert names(by_name) == sorted(names(by_name)) and by_name.next_page_token == ""
    # The CLI prints where the next page starts, and takes it back.
    cli = [sys.executable, "-m", "controlplane", "models", "search", f"tag:{tag}", "--sort", "created", "--limit", "4"]
    endpoints = ["--endpoints", ",".join(cluster.client_addresses)]
    env = credentials_env(cluster)
    shown = subprocess.run([*cli, *endpoints], capture_output=True, text=True, timeout=60, env=env)
    assert shown.returncode == 0, shown.stderr
    token = shown.stdout.split("--page-token ", 1)[1].split()[0]
    following = [*cli, "--page-token", token, "--output", "json", *endpoints]
    rest = subprocess.run(following, capture_output=True, text=True, timeout=60, env=env)
    assert rest.returncode == 0, rest.stderr
    assert [hit["model"]["name"] for hit in json.loads(rest.stdout)["hits"]] == [f"{tag}-m{i}" for i in (2, 1, 0)]


def test_registry_rules_and_bad_input_over_grpc(cluster: LocalCluster) -> None:
    name = f"rules-{uuid.uuid4().hex[:6]}"
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        first = client.models.register(name, sha("1"), 10, "onnx")
        second = client.models.register(name, sha("2"), 10, "onnx")
        assert (first.version.version, second.version.version) == (1, 2)
        client.models.set_alias(name, "prod", 1)
        assert client.models.get_version(name, "prod").sha256 == sha("1")
        with pytest.raises(FailedPrecondition, match="prod"):
            client.models.delete_version(name, 1)
        with pytest.raises(InvalidArgument, match="sha256"):
            client.models.register(name, "not-a-hash", 10, "onnx")
        with pytest.raises(InvalidArgument, match="format"):
            client.models.register(name, sha("3"), 10, "zip")
        with pytest.raises(NotFound):
            client.models.get(f"{name}-missing")
        detail = client.models.get(name)
        assert [v.version for v in detail.versions] == [1, 2] and detail.model.aliases == {"prod": 1}
    with channel(cluster.client_addresses[1]) as ch:
        stub = models_pb2_grpc.ModelsStub(ch)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Search(models_pb2.SearchRequest(query="x", limit=100_000))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as caught:
            stub.RegisterVersion(models_pb2.RegisterVersionRequest(model="bad name!", sha256=sha("x"), format=1))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_index_is_rebuilt_after_restart_and_after_restore(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    cluster.wait_for_leader()
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        register_catalogue(client, "")
        backup = tmp_path / "backup.snap"
        client.snapshot(backup)
        client.models.delete("whisper-large-v3", force=True)
        assert names(client.models.search("whisper")) == []
        client.restore(backup)
        revision = wait_converged(cluster)
        for node in running(cluster):
            with node_client(node) as local:
                found = local.models.search("whisper", consistency=Consistency.STALE, min_revision=revision)
            assert names(found) == ["whisper-large-v3"], f"{node.id} did not rebuild its index after the restore"
    # A restarted server rebuilds its index from the replicated state.
    victim = running(cluster)[0]
    cluster.restart(victim.id)
    cluster.wait_for_leader()
    revision = wait_converged(cluster)
    with node_client(cluster.nodes[victim.id]) as local:
        found = local.models.search("qwen inst", consistency=Consistency.STALE, min_revision=revision)
    assert names(found) == ["Qwen2-7B-Instruct"]


def test_bulk_import_over_the_cli(cluster: LocalCluster, tmp_path: Path) -> None:
    prefix = f"bulk-{uuid.uuid4().hex[:6]}"
    catalogue = tmp_path / "catalogue.jsonl"
    catalogue.write_text(
        "\n".join(
            json.dumps({"model": f"{prefix}-{i % 5}", "sha256": sha(f"{prefix}{i}"), "size_bytes": i, "format": "pt"})
            for i in range(250)
        )
    )
    env = dict(credentials_env(cluster), CP_ENDPOINTS=",".join(cluster.client_addresses))

    def cpctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controlplane", *args], env=env, capture_output=True, text=True, timeout=60
        )

    imported = cpctl("models", "import", str(catalogue), "--batch", "100", "--output", "json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["versions"] == 250
    listed = json.loads(cpctl("models", "list", prefix, "--output", "json").stdout)
    assert [(m["name"], m["latest_version"]) for m in listed["models"]] == [(f"{prefix}-{i}", 50) for i in range(5)]
    searched = json.loads(cpctl("models", "search", prefix, "--limit", "2", "--output", "json").stdout)
    assert searched["total"] == 5 and len(searched["hits"]) == 2
    again = cpctl("models", "import", str(catalogue))
    assert again.returncode == 1 and "already has sha256" in again.stderr


def test_version_tags_metrics_and_lineage_through_the_sdk_the_cli_and_search(cluster: LocalCluster) -> None:
    base, tuned = f"lin-{uuid.uuid4().hex[:6]}", f"lin-{uuid.uuid4().hex[:6]}-ft"
    env = dict(credentials_env(cluster), CP_ENDPOINTS=",".join(cluster.client_addresses))

    def cpctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controlplane", *args], env=env, capture_output=True, text=True, timeout=60
        )

    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        client.models.register(base, sha(base), 10, "safetensors", status="ready", run_id="pretrain-7")
        with pytest.raises(NotFound, match="no version 2"):
            client.models.register(tuned, sha(tuned), 10, "gguf", parent=f"{base}/2")
        registered = client.models.register(
            tuned, sha(tuned), 10, "gguf", version_tags={"dataset": "wiki"}, metrics={"accuracy": 0.91},
            run_id="sft-3", parent=f"{base}/1",
        ).version  # fmt: skip
        assert (registered.tags, registered.metrics, registered.run_id) == (
            {"dataset": "wiki"},
            {"accuracy": 0.91},
            "sft-3",
        )
        assert str(registered.parent) == f"{base}/1"

        # The CLI changes tags and metrics in one change; a metric that is not a number is a usage error.
        updated = cpctl(
            "models", "update-version", tuned, "1", "--set-tag", "stage=eval", "--remove-tag", "dataset",
            "--set-metric", "accuracy=0.95", "--output", "json",
        )  # fmt: skip
        assert updated.returncode == 0, updated.stderr
        assert (json.loads(updated.stdout)["tags"], json.loads(updated.stdout)["metrics"]) == (
            {"stage": "eval"},
            {"accuracy": 0.95},
        )
        bad = cpctl("models", "update-version", tuned, "1", "--set-metric", "accuracy=high")
        assert bad.returncode == 2 and "NAME=NUMBER" in bad.stderr
        shown = cpctl("models", "show", tuned, "1")
        assert shown.returncode == 0 and f"parent: {base}/1" in shown.stdout and "run_id: sft-3" in shown.stdout

        # Every server's index answers the new filters alike.
        revision = client.models.get(tuned).revision
        for node in running(cluster):
            with node_client(node) as local:

                def found(query: str, local: Client = local) -> list[str]:
                    return names(local.models.search(query, min_revision=revision, consistency=Consistency.STALE))

                assert found(f"parent:{base}") == [tuned]
                assert found(f"metric:accuracy>=0.95 parent:{base}/1") == [tuned]
                assert found(f"metric:accuracy>0.95 parent:{base}/1") == []
                assert found(f"tag:stage=eval {tuned}") == [tuned]
                assert found(f"tag:dataset=wiki {tuned}") == []
                assert found("run:pretrain-7") == [base]
        with pytest.raises(InvalidArgument, match="is not NAME"):
            client.models.search("metric:accuracy")


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, written by hand (a field this schema does not have)."""
    key, size, out = (number << 3) | 2, len(payload), bytearray()
    for value in (key, size):
        while value >= 0x80:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


def test_fields_a_server_does_not_know_never_reach_the_registry(cluster: LocalCluster) -> None:
    """A client (or a newer release) may send fields this server does not know, even inside a
    nested message: they are never stored (a 64 KiB blob inside the parent passed every size check
    and was kept with the version before; the servicer now drops them before the log too)."""
    name = f"unknown-{uuid.uuid4().hex[:6]}"
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        client.models.register(name, sha(name), 10, "onnx")
    parent = models_pb2.VersionRef(model=name, version=1).SerializeToString() + _field(99, b"x" * 65536)
    request = models_pb2.RegisterVersionRequest(
        model=name, sha256=sha(f"{name}-2"), format=models_pb2.MODEL_FORMAT_ONNX
    )
    raw = request.SerializeToString() + _field(13, parent) + _field(98, b"y" * 1024)
    with channel(cluster.client_addresses[0]) as ch:
        register = ch.unary_unary(
            "/controlplane.v1.Models/RegisterVersion",
            request_serializer=lambda data: data,
            response_deserializer=models_pb2.RegisterVersionResponse.FromString,
        )
        answer = register(raw, timeout=30)
    assert (answer.version.version, answer.version.parent.version) == (2, 1)
    with Client(cluster.client_addresses, credentials=cluster.credentials) as client:
        stored = client.models.get_version(name, 2)
        assert stored.parent is not None and stored.parent.sha256 == sha(name)
    with channel(cluster.client_addresses[1]) as ch:
        get = models_pb2_grpc.ModelsStub(ch).GetVersion
        version = get(models_pb2.GetVersionRequest(model=name, version="2"), timeout=30).version
    assert version.ByteSize() < 1024, version.ByteSize()
