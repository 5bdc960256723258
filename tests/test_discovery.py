"""The SDK's gateway discovery against a real HTTP server on loopback that answers as scripted: the
answers a gateway gives (join, wait, typed errors, 5xx with Retry-After, a proxy's HTML page) and a
gateway that is not there. Discovery through a real gateway, and around a killed one through seeds,
is in tests/cluster/test_gateway.py."""

from __future__ import annotations

import json
import random
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from controlplane import errors, tls
from controlplane.client import Client, Credentials, CredentialsError, DiscoveryPolicy, discover_endpoints
from controlplane.client._discovery import retry_after_seconds
from controlplane.dev import free_port

#: No waiting between tries: the tests check what is retried, not how long the backoff is.
QUICK = DiscoveryPolicy(attempts=3, timeout=5.0, initial_backoff=0.0, max_backoff=0.0, max_retry_after=0.0)
JOIN = {
    "action": "join",
    "leader": {"id": "n1", "client_address": "10.0.0.1:7101"},
    "members": [
        {"id": "n1", "client_address": "10.0.0.1:7101", "raft_address": "10.0.0.1:7201", "voter": True},
        {"id": "n2", "client_address": "10.0.0.2:7101", "raft_address": "10.0.0.2:7201", "voter": True},
    ],
}


@dataclass
class Scripted:
    """What the fake gateway answers, one (status, body, headers) per request, the last repeated."""

    answers: list[tuple[int, bytes, dict[str, str]]]
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def next(self) -> tuple[int, bytes, dict[str, str]]:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def answer(status: int, body: object, **headers: str) -> tuple[int, bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return status, raw, headers


def serve(script: Scripted, context: ssl.SSLContext | None = None) -> Iterator[str]:
    """A real HTTP(S) server on loopback answering as ``script`` says; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            script.paths.append(self.path)
            script.headers.append(dict(self.headers))
            status, body, headers = script.next()
            self.send_response(status)
            for name, value in {
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
                **headers,
            }.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    # A short poll interval: shutdown() waits for the next poll, and the default 0.5 s is most of each test.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"{'https' if context else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def gateway() -> Iterator[tuple[str, Scripted]]:
    script = Scripted([answer(200, JOIN)])
    for url in serve(script):
        yield url, script


async def test_a_join_answer_gives_every_members_client_address(gateway: tuple[str, Scripted]) -> None:
    url, script = gateway
    assert await discover_endpoints(url + "/", policy=QUICK) == ["10.0.0.1:7101", "10.0.0.2:7101"]
    assert script.paths == ["/v1/bootstrap"]
    assert "Authorization" not in script.headers[0]  # discovery needs no token: none is sent


async def test_5xx_and_429_are_retried_until_the_gateway_answers(gateway: tuple[str, Scripted]) -> None:
    url, script = gateway
    script.answers = [
        answer(503, {"code": "NO_LEADER", "message": "an election is running"}, **{"Retry-After": "1"}),
        answer(429, {"code": "RESOURCE_EXHAUSTED", "message": "slow down"}),
        answer(200, JOIN),
    ]
    assert len(await discover_endpoints(url, policy=QUICK)) == 2
    assert len(script.paths) == 3


async def test_a_gateway_that_keeps_failing_raises_its_last_answer(gateway: tuple[str, Scripted]) -> None:
    url, script = gateway
    script.answers = [answer(503, {"code": "NO_LEADER", "message": "an election is running"})]
    with pytest.raises(errors.NoLeader, match="an election is running"):
        await discover_endpoints(url, policy=QUICK)
    assert len(script.paths) == QUICK.attempts
    # A proxy's HTML error page: classified by its status.
    script.answers = [answer(502, b"<html>Bad Gateway</html>")]
    with pytest.raises(errors.Unavailable, match="HTTP 502"):
        await discover_endpoints(url, policy=QUICK)


@pytest.mark.parametrize(
    ("status", "body", "raised"),
    [
        (404, {"code": "NOT_FOUND", "message": "no such path"}, errors.NotFound),
        (403, {"code": "PERMISSION_DENIED", "message": "not you"}, errors.PermissionDenied),
        (400, b"not json", errors.InvalidArgument),
    ],
)
async def test_a_4xx_is_the_answer_and_is_not_retried(
    gateway: tuple[str, Scripted], status: int, body: object, raised: type[errors.ControlPlaneError]
) -> None:
    url, script = gateway
    script.answers = [answer(status, body)]
    with pytest.raises(raised):
        await discover_endpoints(url, policy=QUICK)
    assert len(script.paths) == 1


@pytest.mark.parametrize("action", ["wait", "form", "something-new"])
async def test_no_cluster_yet_is_no_leader(gateway: tuple[str, Scripted], action: str) -> None:
    url, script = gateway
    script.answers = [answer(200, {"action": action, "members": []})]
    with pytest.raises(errors.NoLeader, match=f"it answers '{action}'"):
        await discover_endpoints(url, policy=QUICK)


async def test_a_join_that_names_no_address_is_a_broken_gateway(gateway: tuple[str, Scripted]) -> None:
    url, script = gateway
    script.answers = [answer(200, {"action": "join", "members": [{"id": "n1"}]})]
    with pytest.raises(errors.Internal, match="no member's client_address"):
        await discover_endpoints(url, policy=QUICK)


async def test_nobody_there_and_no_seeds_names_the_gateway_and_the_failure() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(errors.Unavailable, match=r"did not answer \(ConnectionRefusedError.*no seeds were given"):
        await discover_endpoints(url, policy=QUICK)


async def test_a_gateway_gone_and_seeds_that_do_not_answer_either() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    seeds = [f"127.0.0.1:{free_port()}"]
    with pytest.raises(errors.Unavailable, match=r"neither the gateway .* nor the seeds answered"):
        await discover_endpoints(url, seeds=seeds, policy=DiscoveryPolicy(attempts=1, timeout=2.0))


@pytest.mark.parametrize(
    "url",
    [
        "127.0.0.1:8080",
        "ftp://gateway",
        "http://",
        "",
        "http://gw:80a",
        "http://[::1",
        "http://u:p@gw",
        "http://gw/?q=1",
    ],
)
async def test_a_url_that_is_not_http_is_invalid(url: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="a gateway URL is http"):
        await discover_endpoints(url)


def test_the_blocking_client_discovers_too_and_a_token_given_is_not_sent(gateway: tuple[str, Scripted]) -> None:
    url, script = gateway
    with pytest.warns(DeprecationWarning, match="token"), Client.from_gateway(url, token="secret") as client:
        assert client.endpoints == ("10.0.0.1:7101", "10.0.0.2:7101")
    assert "Authorization" not in script.headers[0]


def test_backoff_is_full_jitter_and_capped() -> None:
    policy = DiscoveryPolicy(initial_backoff=0.1, max_backoff=2.0)
    rng = random.Random(7)
    delays = [policy.backoff(retry, rng) for retry in range(8) for _ in range(50)]
    assert all(0.0 <= d <= 2.0 for d in delays)
    assert max(delays[:50]) <= 0.1 and max(delays[-50:]) > 1.0
    with pytest.raises(ValueError, match="attempts"):
        DiscoveryPolicy(attempts=0)


async def test_an_answer_cut_short_is_retried(gateway: tuple[str, Scripted]) -> None:
    url, script = gateway
    script.answers = [answer(200, JOIN, **{"Content-Length": "100000"}), answer(200, JOIN)]
    assert len(await discover_endpoints(url, policy=QUICK)) == 2
    assert len(script.paths) == 2


async def test_a_redirect_is_not_followed_and_says_where_it_points(gateway: tuple[str, Scripted]) -> None:
    url, script = gateway
    script.answers = [answer(301, b"", Location="https://elsewhere.example/v1/bootstrap")]
    with pytest.raises(errors.InvalidArgument, match=r"a redirect to https://elsewhere\.example"):
        await discover_endpoints(url, policy=QUICK)
    assert len(script.paths) == 1


async def test_something_that_is_not_a_gateway(gateway: tuple[str, Scripted]) -> None:
    url, script = gateway
    script.answers = [answer(200, b"<html>a web server</html>")]
    with pytest.raises(errors.Internal, match="did not answer as a gateway does"):
        await discover_endpoints(url, policy=QUICK)


async def test_a_member_the_directory_does_not_list_yet_is_skipped(gateway: tuple[str, Scripted]) -> None:
    url, script = gateway
    members = [*JOIN["members"], {"id": "n3", "client_address": "", "raft_address": "10.0.0.3:7201"}]  # type: ignore[misc]
    script.answers = [answer(200, {**JOIN, "members": members})]
    assert await discover_endpoints(url, policy=QUICK) == ["10.0.0.1:7101", "10.0.0.2:7101"]


async def test_a_port_that_does_not_speak_http_did_not_answer() -> None:
    """A gRPC port given by mistake answers bytes that are not HTTP: a failure, retried, then named."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def garbage() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.sendall(b"\x00\x00\x12\x04not http at all\r\n\r\n")

    thread = threading.Thread(target=garbage, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(errors.Unavailable, match=r"did not answer .*BadStatusLine"):
            await discover_endpoints(url, policy=QUICK)
    finally:
        stop.set()
        listener.close()


async def test_an_https_gateway_is_verified_against_the_given_ca(tmp_path: Path) -> None:
    tls.ensure_dev_pki(tmp_path, ["gw"], ["admin"])
    files = tls.TlsFiles.from_directory(tmp_path, tls.Identity("server", "gw"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert, files.key)
    script = Scripted([answer(200, JOIN)])
    for url in serve(script, context):
        trusted = Credentials(ca=files.ca)
        assert len(await discover_endpoints(url, credentials=trusted, policy=QUICK)) == 2
        # Without the CA the certificate does not verify: the gateway did not answer.
        with pytest.raises(errors.Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await discover_endpoints(url, policy=QUICK)
    not_pem = tmp_path / "not-a-ca.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(CredentialsError, match="cannot use the CA"):
        await discover_endpoints("https://127.0.0.1:1", credentials=Credentials(ca=not_pem), policy=QUICK)


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = 1_800_000_000.0
    assert retry_after_seconds("3", now) == 3.0 and retry_after_seconds("1.5", now) == 1.5
    assert retry_after_seconds(formatdate(now + 60, usegmt=True), now) == 60.0
    assert retry_after_seconds(formatdate(now - 60, usegmt=True), now) == 0.0
    assert retry_after_seconds("soon", now) == retry_after_seconds(None, now) == retry_after_seconds("", now) == 0.0


def test_cpctl_says_which_part_is_wrong(gateway: tuple[str, Scripted]) -> None:
    """A URL that is not one is a usage error (2); anything the gateway answers, or not, is 3."""

    def cpctl(endpoints: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "controlplane", "kv", "get", "k", "--endpoints", endpoints]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    bad_url = cpctl("http://gw:80a")
    assert bad_url.returncode == 2 and "a gateway URL is http" in bad_url.stderr
    url, script = gateway
    script.answers = [answer(400, b"<html>plain HTTP sent to an HTTPS port</html>")]
    refused = cpctl(url)
    assert refused.returncode == 3, refused.stderr
    assert f"cannot learn the servers from the gateway at {url}: the gateway answered HTTP 400" in refused.stderr
    assert "Traceback" not in bad_url.stderr + refused.stderr
