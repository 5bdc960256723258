"""Artifact replication against a real cluster: `cpctl models publish`, `cpctl agent --artifact-dir`
processes serving their stores, `cpctl models fetch` as a user runs it, and the fetch through the
real SDK while a holder process is killed (SIGKILL) in the middle of the transfer, or while holders
serve corrupted files. Every outcome is checked in the registry (replicas) and byte for byte on disk.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from controlplane import tls
from controlplane.client import AsyncClient, Client, Credentials, NotFound
from controlplane.dev import LocalCluster
from controlplane.v1 import artifacts_pb2, artifacts_pb2_grpc, auth_pb2, auth_pb2_grpc
from gossip.artifacts import (
    ArtifactCorrupt,
    ArtifactMismatch,
    ArtifactServer,
    ArtifactStore,
    InvalidArtifactName,
    fetch_artifact,
    publish,
    tls_credentials,
)
from gossip.bandwidth import BandwidthTable

from .conftest import cpctl, credentials_env, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

CHUNK = 64 * 1024


def corrupt_every_chunk(path: Path) -> None:
    """Flip one byte in every chunk, keeping the file's mtime (bit rot): the holder's cached manifest
    still describes the good bytes, so it finds the damage chunk by chunk as it reads."""
    before = path.stat()
    with path.open("r+b") as f:
        for offset in range(0, before.st_size, CHUNK):
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.fixture
def agents() -> Iterator[dict[str, subprocess.Popen[str]]]:
    """`cpctl agent` processes started by the test; stopped cleanly (SIGTERM, so they deregister) or
    killed, and reaped, whatever happened."""
    started: dict[str, subprocess.Popen[str]] = {}
    yield started
    for process in started.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started.values():
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def identity_files(cluster: LocalCluster, role: str, name: str) -> Credentials:
    """The cluster CA with a fresh certificate for ``role:name`` (reachable at 127.0.0.1)."""
    cert, key = tls.issue(cluster.pki_dir, tls.Identity(role, name), sans=["127.0.0.1", "localhost"])
    return Credentials(ca=cluster.credentials.ca, cert=cert, key=key)


def agent_env(cluster: LocalCluster, node_id: str) -> dict[str, str]:
    """What `cpctl agent --id node_id` runs with: its own agent:<node_id> certificate (docs/operations.md)."""
    own = identity_files(cluster, "agent", node_id)
    return {**credentials_env(cluster), "CP_CERT": str(own.cert), "CP_KEY": str(own.key)}


def start_holder(
    cluster: LocalCluster, agents: dict[str, subprocess.Popen[str]], node_id: str, store: Path
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "controlplane", "agent", "--id", node_id, "--ttl", "5", "--artifact-dir", str(store),
         "--gossip-listen", "127.0.0.1:0", "--endpoints", ",".join(cluster.client_addresses)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=agent_env(cluster, node_id),
    )  # fmt: skip
    agents[node_id] = process
    return process


def gossip_address(client: Client, node_id: str) -> str:
    try:
        return client.membership.get_node(node_id).node.spec.addresses.get("gossip", "")
    except NotFound:
        return ""  # not registered yet


def wait_serving(client: Client, node_ids: list[str], model: str) -> None:
    """Every holder registered its gossip address and (announcing its store) is listed as a replica."""
    for node_id in node_ids:
        wait_until(functools.partial(gossip_address, client, node_id), 30, f"{node_id} to register its gossip address")
    wait_until(
        lambda: set(node_ids) <= set(client.models.get_version(model, 1).replicas), 30, f"{node_ids} as replicas"
    )


def test_publish_serve_and_fetch_with_the_cli(
    cluster: LocalCluster, agents: dict[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    data = random.Random(3).randbytes(3 * 1024 * 1024 + 77)
    source = tmp_path / "tiny.safetensors"
    source.write_bytes(data)
    model, holders = "art-cli-model", ["art-h1", "art-h2", "art-h3"]
    for i, node_id in enumerate(holders):
        done = cpctl(cluster, "models", "publish", model, str(source), "--dir", str(tmp_path / node_id),
                     "--node-id", node_id, "--output", "json")  # fmt: skip
        assert done.returncode == 0, done.stderr
        published = json.loads(done.stdout)
        assert (published["version"], published["registered"]) == (1, i == 0)
        assert published["sha256"] == hashlib.sha256(data).hexdigest()
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        version = client.models.get_version(model, 1)
        assert version.format.name == "SAFETENSORS" and version.size_bytes == len(data)
        for node_id in holders:
            start_holder(cluster, agents, node_id, tmp_path / node_id)
        wait_serving(client, holders, model)

        fetched = cpctl(cluster, "models", "fetch", model, "latest", "--dir", str(tmp_path / "f1"), "--node-id",
                        "art-f1", "--chunk-size", str(CHUNK), "--output", "json")  # fmt: skip
        assert fetched.returncode == 0, fetched.stderr
        result = json.loads(fetched.stdout)
        assert Path(result["path"]).read_bytes() == data and result["replica_recorded"]
        assert sum(result["by_holder"].values()) == result["chunks"] == 49 and len(result["by_holder"]) >= 2
        assert "art-f1" in client.models.get_version(model, 1).replicas
        again = cpctl(cluster, "models", "fetch", model, "1", "--dir", str(tmp_path / "f1"), "--node-id", "art-f1")
        assert again.returncode == 0 and "already here" in again.stdout and "recorded art-f1" in again.stdout

        # art-h2's copy rots on disk: the fetch still succeeds from the others, and art-h2's agent,
        # told by its server, stops claiming the replica.
        corrupt_every_chunk(tmp_path / "art-h2" / model / "1" / "artifact")
        fetched = cpctl(cluster, "models", "fetch", model, "1", "--dir", str(tmp_path / "f2"), "--chunk-size",
                        str(CHUNK), "--output", "json")  # fmt: skip
        assert fetched.returncode == 0, fetched.stderr
        result = json.loads(fetched.stdout)
        assert Path(result["path"]).read_bytes() == data and not result["replica_recorded"]
        assert any(holder == "art-h2" and "damaged" in why for holder, _, why in result["rejected"])
        assert "art-h2" not in result["by_holder"] or result["by_holder"]["art-h2"] < 49
        wait_until(
            lambda: "art-h2" not in client.models.get_version(model, 1).replicas, 20, "art-h2 to drop its replica"
        )

        # Errors a person can act on, with the documented exit codes.
        missing = cpctl(cluster, "models", "fetch", "art-no-such-model", "1", "--dir", str(tmp_path / "f3"))
        assert missing.returncode == 1 and "NotFound" in missing.stderr and "Traceback" not in missing.stderr
        client.models.register(model, "ab" * 32, 10, "other")  # version 2: registered, held by nobody
        nobody = cpctl(cluster, "models", "fetch", model, "2", "--dir", str(tmp_path / "f3"))
        assert nobody.returncode == 3 and "cpctl models publish" in nobody.stderr
        bad = cpctl(cluster, "models", "publish", "../up", str(source), "--dir", str(tmp_path / "x"), "--node-id", "n")
        assert bad.returncode == 2 and "Traceback" not in bad.stderr
        odd = cpctl(cluster, "models", "fetch", model, "1", "--dir", str(tmp_path / "f4"), "--chunk-size", "1000")
        assert odd.returncode == 2 and "power of two" in odd.stderr, odd.stderr
        nowhere = subprocess.run(
            [sys.executable, "-m", "controlplane", "models", "publish", model, str(source), "--dir",
             str(tmp_path / "x"), "--node-id", "n", "--endpoints", "127.0.0.1:1"],
            capture_output=True, text=True, timeout=60, env=credentials_env(cluster),
        )  # fmt: skip
        assert nowhere.returncode == 3 and "no server at 127.0.0.1:1" in nowhere.stderr, nowhere.stderr


async def test_publish_from_a_program_registers_once_and_records_each_holder(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """``gossip.artifacts.publish``, what the CLI runs, called from a program: the first publisher
    registers the version, a second node publishing the same bytes registers nothing and is recorded
    beside it; the same sha256 with another size, and a name that cannot name a directory, are refused."""
    data = random.Random(5).randbytes(300_000)
    source = tmp_path / "weights.gguf"
    source.write_bytes(data)
    model = f"art-lib-{uuid.uuid4().hex[:8]}"
    async with AsyncClient(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        first = await publish(
            client, ArtifactStore(tmp_path / "lib-h1"), model, source, node_id="lib-h1", family="llama"
        )
        second = await publish(client, ArtifactStore(tmp_path / "lib-h2"), model, source, node_id="lib-h2")
        assert (first.version, first.registered, second.version, second.registered) == (1, True, 1, False)
        assert first.sha256 == second.sha256 == hashlib.sha256(data).hexdigest() and first.size == len(data)
        assert second.path.read_bytes() == data and set(second.replicas) == {"lib-h1", "lib-h2"}
        version = await client.models.get_version(model, 1)
        assert version.format.name == "GGUF" and version.size_bytes == len(data)
        assert (await client.models.get(model)).model.family == "llama"

        other = tmp_path / "other.bin"
        other.write_bytes(b"x" * 10)
        await client.models.register(model, hashlib.sha256(b"y" * 10).hexdigest(), 11, "other")  # a lying size
        (tmp_path / "y.bin").write_bytes(b"y" * 10)
        with pytest.raises(ArtifactMismatch, match="11 bytes, not 10"):
            await publish(client, ArtifactStore(tmp_path / "lib-h3"), model, tmp_path / "y.bin", node_id="lib-h3")
        with pytest.raises(InvalidArtifactName):
            await publish(client, ArtifactStore(tmp_path / "lib-h3"), "../up", other, node_id="lib-h3")
        # Neither refusal stored a byte or recorded lib-h3 anywhere.
        assert not [path for path in (tmp_path / "lib-h3").rglob("*") if path.is_file()]
        assert "lib-h3" not in (await client.models.get_version(model, 2)).replicas


async def test_a_holder_killed_midway_leaves_the_fetch_to_the_others(
    cluster: LocalCluster, agents: dict[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    data = random.Random(4).randbytes(16 * 1024 * 1024)
    source = tmp_path / "model.bin"
    source.write_bytes(data)
    model, holders = "art-kill-model", ["kill-h1", "kill-h2", "kill-h3"]
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        client.models.register(model, hashlib.sha256(data).hexdigest(), len(data), "other", status="ready")
        for node_id in holders:
            ArtifactStore(tmp_path / node_id).put_file(model, 1, source, chunk_size=CHUNK)
            start_holder(cluster, agents, node_id, tmp_path / node_id)
        wait_serving(client, holders, model)

    victim = agents["kill-h2"]

    def kill_at_a_quarter(done: int, total: int) -> None:
        if done >= total // 4 and victim.poll() is None:
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)

    store = ArtifactStore(tmp_path / "f1")
    async with AsyncClient(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as aclient:
        result = await fetch_artifact(
            aclient, model, 1, store, node_id="kill-f1", chunk_size=CHUNK, progress=kill_at_a_quarter
        )  # TLS to the holders with the client's own credentials
        assert result.path.read_bytes() == data and victim.returncode == -signal.SIGKILL
        # Its streams broke (or it refused the next connection): it was dropped, the others finished.
        assert "kill-h2" in result.dropped and "UNAVAILABLE" in result.dropped["kill-h2"]
        assert sum(result.by_holder.values()) == result.chunks == 256
        assert result.by_holder["kill-h1"] + result.by_holder["kill-h3"] > 256 * 3 // 4 - 4
        replicas = (await aclient.models.get_version(model, 1)).replicas
        assert set(replicas) == {*holders, "kill-f1"}


async def test_corrupt_holders_through_the_sdk(cluster: LocalCluster, tmp_path: Path) -> None:
    """In-process holders registered in the real membership: one rotten copy is bypassed; when every
    copy of a chunk is rotten the fetch fails with ArtifactCorrupt and no replica is recorded."""
    data = random.Random(5).randbytes(2 * 1024 * 1024 + 5)
    source = tmp_path / "model.bin"
    source.write_bytes(data)
    servers: dict[str, ArtifactServer] = {}
    async with AsyncClient(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        try:
            for model in ("art-rot-one", "art-rot-all"):
                await client.models.register(model, hashlib.sha256(data).hexdigest(), len(data), "other")
            for node_id in ("rot-h1", "rot-h2", "rot-h3"):
                store = ArtifactStore(tmp_path / node_id)
                own = identity_files(cluster, "agent", node_id)  # TLS holders, as `cpctl agent` serves them
                assert own.ca is not None and own.cert is not None and own.key is not None
                pems = own.ca.read_bytes(), own.cert.read_bytes(), own.key.read_bytes()
                server = servers[node_id] = ArtifactServer(
                    store, node_id=node_id, server_credentials=tls_credentials(*pems)[0]
                )
                await server.start()
                await client.membership.register_node(node_id, ttl_s=60, addresses={"gossip": server.address})
                for model in ("art-rot-one", "art-rot-all"):
                    store.put_file(model, 1, source, chunk_size=CHUNK)
                    await client.models.add_replica(model, 1, node_id)

            corrupt_every_chunk(servers["rot-h2"].store.path("art-rot-one", 1))
            table = BandwidthTable("rot-f1")
            table.observe("rot-h2", 10**8, 0.1, 0.0)  # rot-h2 first: one stream asks it for every chunk
            result = await fetch_artifact(
                client, "art-rot-one", 1, ArtifactStore(tmp_path / "f1"), node_id="rot-f1", parallel=1,
                chunk_size=CHUNK, bandwidth=table,
            )  # fmt: skip
            assert result.path.read_bytes() == data and result.replica_recorded
            assert result.dropped["rot-h2"].startswith("delivered 8 chunks that failed verification")
            assert "rot-h2" not in result.by_holder
            assert "rot-f1" in (await client.models.get_version("art-rot-one", 1)).replicas

            for server in servers.values():
                corrupt_every_chunk(server.store.path("art-rot-all", 1))
            store = ArtifactStore(tmp_path / "f2")
            with pytest.raises(ArtifactCorrupt, match=r"every holder's copy of chunk 0 ") as raised:
                await fetch_artifact(client, "art-rot-all", 1, store, node_id="rot-f2", chunk_size=CHUNK)
            assert all(node_id in str(raised.value) for node_id in servers)
            assert store.record("art-rot-all", 1) is None
            version = await client.models.get_version("art-rot-all", 1)
            assert sorted(version.replicas) == ["rot-h1", "rot-h2", "rot-h3"]
        finally:
            for node_id, server in servers.items():
                await server.stop(0)
                await client.membership.deregister(node_id)


def _stat(address: str, credentials: grpc.ChannelCredentials | None, model: str) -> artifacts_pb2.StatArtifactResponse:
    """One Stat call on a holder's artifact port (plaintext without credentials)."""
    with grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials) as ch:
        answer: artifacts_pb2.StatArtifactResponse = artifacts_pb2_grpc.ArtifactsStub(ch).Stat(
            artifacts_pb2.StatArtifactRequest(model=model, version=1, chunk_size=CHUNK), timeout=15
        )
        return answer


def _refused(address: str, credentials: grpc.ChannelCredentials | None, model: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        _stat(address, credentials, model)
    return refused.value


async def test_the_artifact_port_serves_only_certified_readers(
    cluster: LocalCluster, agents: dict[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    """`cpctl agent` with its agent certificate serves mutual TLS: no download in clear or without a
    client certificate; a user's certificate needs models:read on the model (checked against the
    cluster on every call, so a revocation stops the next one); a peer agent needs no role."""
    data = random.Random(6).randbytes(300 * 1024)
    source = tmp_path / "model.bin"
    source.write_bytes(data)
    model, reader, stranger = "art-sec-model", "art-sec-reader", "art-sec-stranger"
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        client.models.register(model, hashlib.sha256(data).hexdigest(), len(data), "other", status="ready")
        ArtifactStore(tmp_path / "sec-h1").put_file(model, 1, source, chunk_size=CHUNK)
        start_holder(cluster, agents, "sec-h1", tmp_path / "sec-h1")
        wait_serving(client, ["sec-h1"], model)
        address = gossip_address(client, "sec-h1")

    anonymous = _refused(address, None, model)  # plaintext: the TLS handshake never completes
    assert anonymous.code() == grpc.StatusCode.UNAVAILABLE
    no_cert = _refused(address, Credentials(ca=cluster.credentials.ca).channel_credentials(), model)
    assert no_cert.code() == grpc.StatusCode.UNAVAILABLE  # the port requires a client certificate

    stranger_tls = identity_files(cluster, "client", stranger).channel_credentials()
    denied = _refused(address, stranger_tls, model)
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "models:read" in denied.details() and f"user:{stranger}" in denied.details()

    with grpc.secure_channel(cluster.client_addresses[0], cluster.credentials.channel_credentials()) as admin_ch:
        auth = auth_pb2_grpc.AuthStub(admin_ch)
        role = f"{reader}-role"
        auth.AddUser(auth_pb2.AddUserRequest(name=reader), timeout=10)
        auth.AddRole(auth_pb2.AddRoleRequest(name=role), timeout=10)
        permission = auth_pb2.Permission(domain="models", verb="read", resource="art-sec-")
        auth.GrantPermission(auth_pb2.GrantPermissionRequest(role=role, permission=permission), timeout=10)
        auth.GrantRole(auth_pb2.GrantRoleRequest(user=reader, role=role), timeout=10)

        reader_files = identity_files(cluster, "client", reader)
        # The grant reaches sec-h1's server through the log: allowed once that server applied it.
        wait_until(
            lambda: _allowed(address, reader_files.channel_credentials(), model), 30, "the reader's grant to apply"
        )
        store = ArtifactStore(tmp_path / "reader")
        async with AsyncClient(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as aclient:
            result = await fetch_artifact(
                aclient, model, 1, store, chunk_size=CHUNK, channel_credentials=reader_files.channel_credentials()
            )
        assert result.path.read_bytes() == data and result.by_holder == {"sec-h1": result.chunks}

        # A peer agent replicating the artifact holds no role: its agent certificate is enough.
        peer = identity_files(cluster, "agent", "sec-peer").channel_credentials()
        assert _stat(address, peer, model).sha256 == hashlib.sha256(data).hexdigest()

        auth.RevokeRole(auth_pb2.RevokeRoleRequest(user=reader, role=role), timeout=10)
        wait_until(
            lambda: not _allowed(address, reader_files.channel_credentials(), model), 30, "the revocation to apply"
        )


def _allowed(address: str, credentials: grpc.ChannelCredentials, model: str) -> bool:
    try:
        _stat(address, credentials, model)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
            raise
        return False
    return True


def _agent(cluster: LocalCluster, env: dict[str, str], store: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "controlplane", "agent", "--id", "sec-plain", "--ttl", "5", "--artifact-dir",
         str(store), "--endpoints", ",".join(cluster.client_addresses), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip


def test_an_agent_serves_artifacts_in_clear_only_with_insecure_dev(
    cluster: LocalCluster, agents: dict[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    """Without TLS credentials the agent refuses to serve its store (exit 2, naming the fix), and with a
    certificate that is not its own agent:<id> too; --insecure-dev serves in clear and says so loudly."""
    plain_env = {key: value for key, value in os.environ.items() if not key.startswith("CP_")}
    refused = _agent(cluster, plain_env, tmp_path / "store")
    agents["sec-plain-refused"] = refused
    _, stderr = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "needs TLS" in stderr and "--insecure-dev" in stderr
    assert "Traceback" not in stderr

    admin = _agent(cluster, credentials_env(cluster), tmp_path / "store")  # client:admin is no agent identity
    agents["sec-plain-admin"] = admin
    _, stderr = admin.communicate(timeout=60)
    assert admin.returncode == 2 and "names client:admin" in stderr and "--role agent" in stderr

    insecure = agents["sec-plain"] = _agent(cluster, plain_env, tmp_path / "store", "--insecure-dev")
    assert insecure.stderr is not None
    # readline blocks: the test's timeout bounds a silent agent; an exited one ends the stream.
    line = next((line for line in insecure.stderr if "WARNING" in line), "")
    assert "WARNING: --insecure-dev" in line and "WITHOUT TLS" in line
