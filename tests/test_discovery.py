"""The SDK's gateway discovery against a real HTTP server on loopback that answers as scripted: the
answers a gateway gives (join, wait, typed errors, 5xx with Retry-After, a proxy's HTML page) and a
gateway that is not there. Discovery through a real gateway, and around a killed one through seeds,
is in tests/cluster/test_gateway.py."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from controlplane import errors
from controlplane.client import Client, DiscoveryPolicy, discover_endpoints
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


@pytest.fixture
def gateway() -> Iterator[tuple[str, Scripted]]:
    script = Scripted([answer(200, JOIN)])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            script.paths.append(self.path)
            script.headers.append(dict(self.headers))
            status, body, headers = script.next()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script
    finally:
        server.shutdown()
        server.server_close()


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


async def test_a_member_without_an_address_is_a_broken_gateway(gateway: tuple[str, Scripted]) -> None:
    url, script = gateway
    script.answers = [answer(200, {"action": "join", "members": [{"id": "n1"}]})]
    with pytest.raises(errors.Internal, match="without a client_address"):
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


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://gateway", "http://", ""])
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
