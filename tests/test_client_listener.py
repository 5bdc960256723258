"""The client port's TLS (controlplane/server/client_listener.py) on a real grpc.aio server on loopback:
optional verified client certificates, plaintext refused, a foreign CA's certificate refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from controlplane import tls
from controlplane.server.client_listener import add_client_port, peer_channel_credentials
from controlplane.server.config import ServerConfig

pytestmark = pytest.mark.timeout(60)


@dataclass
class Served:
    port: int
    pki: Path
    seen: list[str]  # the URI SANs the server saw, per call


class RecordingHealth(health.aio.HealthServicer):
    def __init__(self, seen: list[str]) -> None:
        super().__init__()
        self._seen = seen

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> object:
        sans = context.auth_context().get("x509_subject_alternative_name", [])
        self._seen.append(",".join(s.decode() for s in sans if s.startswith(b"urn:")))
        return await super().Check(request, context)


def _config(pki: Path, *, secure: bool) -> ServerConfig:
    files = tls.TlsFiles.from_directory(pki, tls.Identity("server", "n1"))
    return ServerConfig(
        node_id="n1",
        client_address="127.0.0.1:0",
        raft_address="127.0.0.1:1",
        metrics_address="",
        data_dir=pki,
        tls_ca=files.ca if secure else None,
        tls_cert=files.cert if secure else None,
        tls_key=files.key if secure else None,
        insecure_dev=not secure,
    )


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    pki = tmp_path / "pki"
    tls.ensure_dev_pki(pki, ["n1"], ["admin"])
    seen: list[str] = []
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(RecordingHealth(seen), server)
    port = add_client_port(server, _config(pki, secure=True))
    await server.start()
    try:
        yield Served(port, pki, seen)
    finally:
        await server.stop(None)


async def _check(channel: grpc.aio.Channel) -> int:
    async with channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        return int(reply.status)


def _secure(served: Served, ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        ca.read_bytes(), key.read_bytes() if key else None, cert.read_bytes() if cert else None
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{served.port}", creds)


async def test_tls_without_a_client_certificate_is_refused(served: Served) -> None:
    # gRPC Python cannot request a client certificate without requiring it (client_listener's docstring).
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _check(_secure(served, served.pki / "ca.pem"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert served.seen == []


async def test_optional_client_certificates_are_never_requested(tmp_path: Path) -> None:
    """Why the port requires certificates: require_client_auth=False means 'do not even ask', so a
    client's certificate is not seen. If a grpcio release changes this, optional certificates become possible."""
    pki = tmp_path / "pki"
    tls.ensure_dev_pki(pki, ["n1"], ["admin"])
    server_files = tls.TlsFiles.from_directory(pki, tls.Identity("server", "n1"))
    seen: list[str] = []
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(RecordingHealth(seen), server)
    creds = grpc.ssl_server_credentials(
        ((server_files.key.read_bytes(), server_files.cert.read_bytes()),),
        root_certificates=server_files.ca.read_bytes(),
        require_client_auth=False,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        files = tls.TlsFiles.from_directory(pki, tls.Identity("client", "admin"))
        await _check(_secure(Served(port, pki, seen), files.ca, files.cert, files.key))
        assert seen == [""]
    finally:
        await server.stop(None)


async def test_a_client_certificate_is_verified_and_its_identity_seen(served: Served) -> None:
    files = tls.TlsFiles.from_directory(served.pki, tls.Identity("client", "admin"))
    assert await _check(_secure(served, files.ca, files.cert, files.key)) == health_pb2.HealthCheckResponse.SERVING
    assert served.seen == ["urn:controlplane:client:admin"]


async def test_plaintext_is_refused(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _check(grpc.aio.insecure_channel(f"127.0.0.1:{served.port}"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert served.seen == []


async def test_a_certificate_from_another_ca_is_refused(served: Served, tmp_path: Path) -> None:
    other = tmp_path / "other"
    tls.ensure_dev_pki(other, [], ["admin"])
    files = tls.TlsFiles.from_directory(other, tls.Identity("client", "admin"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _check(_secure(served, served.pki / "ca.pem", files.cert, files.key))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert served.seen == []


async def test_insecure_dev_serves_plaintext(tmp_path: Path) -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = add_client_port(server, _config(tmp_path, secure=False))
    await server.start()
    try:
        assert await _check(grpc.aio.insecure_channel(f"127.0.0.1:{port}")) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(None)


async def test_without_tls_files_or_insecure_dev_it_refuses(tmp_path: Path) -> None:
    config = ServerConfig(
        node_id="n1", client_address="127.0.0.1:0", raft_address="127.0.0.1:1", metrics_address="", data_dir=tmp_path
    )
    with pytest.raises(tls.TlsError, match="insecure-dev"):
        add_client_port(grpc.aio.server(), config)


async def test_a_server_dials_another_servers_client_port_with_its_own_certificate(served: Served) -> None:
    creds = peer_channel_credentials(_config(served.pki, secure=True))
    assert creds is not None
    assert await _check(grpc.aio.secure_channel(f"127.0.0.1:{served.port}", creds)) == 1
    assert served.seen == ["urn:controlplane:server:n1"]
    assert peer_channel_credentials(_config(served.pki, secure=False)) is None
