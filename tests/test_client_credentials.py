"""Client credentials (controlplane/client/_credentials.py): TLS channels, client certificates and the
bearer token metadata, against a real grpc.aio server on loopback that records what it received."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from controlplane import tls
from controlplane.client import Credentials, CredentialsError
from controlplane.server.client_listener import server_credentials

pytestmark = pytest.mark.timeout(60)


class RecordingHealth(health.aio.HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self.authorization: list[str] = []

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> object:
        metadata = dict(context.invocation_metadata() or ())
        self.authorization.append(str(metadata.get("authorization", "")))
        return await super().Check(request, context)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    tls.ensure_dev_pki(directory, ["n1"], ["admin"])
    return directory


def _admin(pki: Path, token: str | None = None) -> Credentials:
    files = tls.TlsFiles.from_directory(pki, tls.Identity("client", "admin"))
    return Credentials(ca=files.ca, cert=files.cert, key=files.key, token=token)


async def _serve(pki: Path | None) -> tuple[grpc.aio.Server, int, RecordingHealth]:
    servicer = RecordingHealth()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if pki is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        files = tls.TlsFiles.from_directory(pki, tls.Identity("server", "n1"))
        creds = server_credentials(files.ca.read_bytes(), files.cert.read_bytes(), files.key.read_bytes())
        port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    return server, port, servicer


@pytest.fixture
async def tls_server(pki: Path) -> AsyncIterator[tuple[int, RecordingHealth]]:
    server, port, servicer = await _serve(pki)
    try:
        yield port, servicer
    finally:
        await server.stop(None)


async def test_async_channel_sends_the_token_over_tls(pki: Path, tls_server: tuple[int, RecordingHealth]) -> None:
    port, servicer = tls_server
    async with _admin(pki, token="cp1.abc.secret").async_channel_factory()(f"127.0.0.1:{port}") as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert servicer.authorization == ["Bearer cp1.abc.secret"]


async def test_sync_channel_sends_the_token_over_tls(pki: Path, tls_server: tuple[int, RecordingHealth]) -> None:
    port, servicer = tls_server
    # "localhost": the server's name is verified against the certificate's DNS SAN too.
    channel = _admin(pki, token="cp1.abc.secret").sync_channel_factory()(f"localhost:{port}")
    with channel:
        # The blocking stub runs in a worker thread: the server's loop must keep running.
        import asyncio

        await asyncio.to_thread(health_pb2_grpc.HealthStub(channel).Check, health_pb2.HealthCheckRequest(), timeout=10)
    assert servicer.authorization == ["Bearer cp1.abc.secret"]


async def test_without_a_token_no_authorization_is_sent(pki: Path, tls_server: tuple[int, RecordingHealth]) -> None:
    port, servicer = tls_server
    async with _admin(pki).async_channel_factory()(f"127.0.0.1:{port}") as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert servicer.authorization == [""]


async def test_a_plaintext_client_cannot_reach_a_tls_port(tls_server: tuple[int, RecordingHealth]) -> None:
    port, servicer = tls_server
    async with Credentials().async_channel_factory()(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.authorization == []


async def test_a_token_goes_in_clear_only_to_loopback() -> None:
    server, port, servicer = await _serve(None)
    try:
        async with Credentials(token="t1").async_channel_factory()(f"127.0.0.1:{port}") as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert servicer.authorization == ["Bearer t1"]
    finally:
        await server.stop(None)
    with pytest.raises(CredentialsError, match=r"without TLS to 10\.1\.2\.3:7101"):
        Credentials(token="t1").async_channel_factory()("10.1.2.3:7101")


def test_from_env() -> None:
    creds = Credentials.from_env({"CP_CACERT": "/a/ca.pem", "CP_TOKEN": "t", "CP_CERT": ""})
    assert creds == Credentials(ca=Path("/a/ca.pem"), token="t")


def test_flags_win_over_the_fallback() -> None:
    flags = Credentials(token="flag")
    assert flags.merged_over(Credentials(ca=Path("ca.pem"), token="env")) == Credentials(
        ca=Path("ca.pem"), token="flag"
    )


def test_errors_name_what_is_missing(pki: Path, tmp_path: Path) -> None:
    admin = _admin(pki)
    with pytest.raises(CredentialsError, match="without its key"):
        Credentials(ca=admin.ca, cert=admin.cert).check()
    with pytest.raises(CredentialsError, match="without its cert"):
        Credentials(ca=admin.ca, key=admin.key).check()
    with pytest.raises(CredentialsError, match="--cacert"):
        Credentials(cert=admin.cert, key=admin.key).check()
    with pytest.raises(CredentialsError, match="does not exist"):
        Credentials(ca=tmp_path / "nope.pem").check()
    assert admin.key is not None
    os.chmod(admin.key, 0o644)
    with pytest.raises(CredentialsError, match="chmod 600"):
        admin.check()
