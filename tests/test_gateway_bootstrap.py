"""The gateway's formation endpoints in-process: candidacies, votes, form/wait/join answers, the relay
between two gateways, and input checks. The cluster-level race is tests/cluster/test_bootstrap.py."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_gateway_app import TOKEN, FakeBackend, FakeClock, assert_error, status

from controlplane.server.bootstrap import Bootstrapper, BootstrapRecord, load_record, save_record
from controlplane.server.config import ServerConfig
from gateway.app import GatewaySettings, create_app
from gateway.client import GatewayClient, RetryPolicy
from gateway.models import Backend

AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Gateways:
    """Two formation gateways (expect 3) sharing a clock, each relaying from the other on demand."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.backend = FakeBackend()
        self.backend_addresses: list[tuple[str, ...]] = []
        self.apps = [self._app(), self._app()]
        self.http = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://gw")
            for app in self.apps
        ]

    def _factory(self, addresses: Sequence[str]) -> Backend:
        self.backend_addresses.append(tuple(addresses))
        return self.backend

    def _app(self) -> Any:
        settings = GatewaySettings(endpoints=(), token=TOKEN, bootstrap_expect=3)
        return create_app(settings, clock=self.clock, backend_factory=self._factory)

    async def relay(self) -> None:
        """Each gateway pulls the other's list once (what the relay task does every 0.3 s)."""
        for source, target in ((0, 1), (1, 0)):
            await self.apps[target].state.gateway.relay(_PeerHttp(self.http[source]))

    async def post(self, index: int, node: str, vote: Sequence[str] = (), started: bool = False) -> dict[str, Any]:
        body = {"id": node, "client_address": f"127.0.0.1:71{node[-1]}0", "raft_address": f"127.0.0.1:72{node[-1]}0"}
        response = await self.http[index].post(
            "/v1/bootstrap/candidates", json={**body, "vote": list(vote), "started": started}, headers=AUTH
        )
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def aclose(self) -> None:
        for client in self.http:
            await client.aclose()


class _PeerHttp:
    """What Gateway.relay needs of an httpx client, routed to another in-process app."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def get(self, url: str) -> httpx.Response:
        return await self._http.get(httpx.URL(url).path)


@pytest.fixture
async def gateways() -> AsyncIterator[Gateways]:
    pair = Gateways(FakeClock())
    pair.apps[0].state.gateway.settings = GatewaySettings(
        endpoints=(), token=TOKEN, bootstrap_expect=3, peers=("http://gw",)
    )
    pair.apps[1].state.gateway.settings = pair.apps[0].state.gateway.settings
    yield pair
    await pair.aclose()


async def test_founders_split_over_two_gateways_see_one_founding_set(gateways: Gateways) -> None:
    # s1 and s2 ask gateway 0, s3 asks gateway 1: before a relay each sees too few candidates.
    assert (await gateways.post(0, "s1"))["action"] == "wait"
    assert (await gateways.post(0, "s2"))["action"] == "wait"
    answer = await gateways.post(1, "s3")
    assert answer["action"] == "wait" and answer["expect"] == 3 and [c["id"] for c in answer["candidates"]] == ["s3"]
    await gateways.relay()
    for index in (0, 1):
        listed = (await gateways.http[index].get("/v1/bootstrap/candidates")).json()
        assert [c["id"] for c in listed["candidates"]] == ["s1", "s2", "s3"]
    # Everyone votes {s1, s2, s3}; the set forms only when the last vote is seen.
    vote = ["s1", "s2", "s3"]
    await gateways.post(0, "s1", vote)
    await gateways.post(0, "s2", vote)
    await gateways.relay()
    assert (await gateways.http[1].get("/v1/bootstrap")).json()["action"] == "wait"
    answer = await gateways.post(1, "s3", vote)
    assert answer["action"] == "form"
    assert [m["id"] for m in answer["members"]] == vote and answer["leader"] is None
    await gateways.relay()
    answer = (await gateways.http[0].get("/v1/bootstrap")).json()
    assert answer["action"] == "form" and [m["id"] for m in answer["members"]] == vote


async def test_once_founders_run_the_gateway_answers_join_from_the_cluster(gateways: Gateways) -> None:
    vote = ["s1", "s2", "s3"]
    for node in vote:
        await gateways.post(0, node, vote, started=True)
    gateways.backend.status = status("n1")
    gateways.clock.now += 2  # past the status cache
    answer = (await gateways.http[0].get("/v1/bootstrap")).json()
    assert answer["action"] == "join" and answer["leader"]["id"] == "n1"
    # The backend follows the servers that announced they run the cluster.
    assert gateways.backend_addresses[-1] == ("127.0.0.1:7110", "127.0.0.1:7120", "127.0.0.1:7130")
    # No leader right now: GET answers 503; a candidacy post still gets an answer (wait).
    gateways.clock.now += 5
    gateways.backend.status = status("")
    assert_error(await gateways.http[0].get("/v1/bootstrap"), 503, "NO_LEADER")
    late = await gateways.post(0, "s4")
    assert late["action"] == "wait"  # a cluster runs, leaderless for now: nothing is to be formed


async def test_candidacies_expire_when_servers_stop_posting(gateways: Gateways) -> None:
    await gateways.post(0, "s1")
    gateways.clock.now += 11  # past the 10 s TTL
    listed = (await gateways.http[0].get("/v1/bootstrap/candidates")).json()
    assert listed["candidates"] == []


async def test_bad_candidacies_are_refused(gateways: Gateways) -> None:
    http = gateways.http[0]
    base = {"id": "s1", "client_address": "127.0.0.1:7110", "raft_address": "127.0.0.1:7210"}
    # Wrong size, voter missing, unsorted, bad address, no token.
    for body in (
        {**base, "vote": ["s1", "s2"]},
        {**base, "vote": ["s2", "s3", "s4"]},
        {**base, "vote": ["s3", "s2", "s1"]},
        {**base, "client_address": "nowhere"},
        {**base, "unknown": 1},
    ):
        assert_error(await http.post("/v1/bootstrap/candidates", json=body, headers=AUTH), 400, "INVALID_ARGUMENT")
    assert_error(await http.post("/v1/bootstrap/candidates", json=base), 401, "UNAUTHENTICATED")
    assert (await http.get("/v1/bootstrap/candidates")).json()["candidates"] == []


async def test_a_gateway_without_bootstrap_expect_forms_nothing() -> None:
    app = create_app(GatewaySettings(endpoints=("127.0.0.1:1",)), FakeBackend(), clock=FakeClock())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        body = {"id": "s1", "client_address": "127.0.0.1:7110", "raft_address": "127.0.0.1:7210"}
        assert_error(await http.post("/v1/bootstrap/candidates", json=body), 409, "FAILED_PRECONDITION")
        assert_error(await http.get("/v1/bootstrap/candidates"), 404, "NOT_FOUND")
        assert (await http.get("/v1/bootstrap")).json()["action"] == "join"


async def test_no_cluster_yet_is_a_503_on_discovery(gateways: Gateways) -> None:
    body = assert_error(await gateways.http[0].get("/v1/cluster"), 503, "NO_LEADER")
    assert "--bootstrap-expect 3" in body["message"]


# --------------------------------------------------------------------------------------- the server's side


def _server_config(tmp_path: Path, node_id: str) -> ServerConfig:
    index = node_id[-1]
    return ServerConfig(
        node_id=node_id,
        client_address=f"127.0.0.1:710{index}",
        raft_address=f"127.0.0.1:720{index}",
        metrics_address="",
        data_dir=tmp_path / node_id,
        insecure_dev=True,
    )


async def _bootstrapper(app: Any, config: ServerConfig, expect: int | None) -> Bootstrapper:
    bootstrapper = Bootstrapper(config, ["http://gw"], expect=expect, poll_s=0.01, settle_s=0.0)
    await bootstrapper._gateways[0].aclose()
    bootstrapper._gateways = [
        GatewayClient("http://gw", transport=httpx.ASGITransport(app=app), retry=RetryPolicy(attempts=1))
    ]
    return bootstrapper


async def _announce(http: httpx.AsyncClient, index: int, vote: Sequence[str]) -> None:
    """Server n<index> posts that it runs, with its vote."""
    body = {"id": f"n{index}", "client_address": f"127.0.0.1:710{index}", "raft_address": f"127.0.0.1:720{index}"}
    response = await http.post("/v1/bootstrap/candidates", json={**body, "vote": list(vote), "started": True})
    assert response.status_code == 200, response.text


async def test_a_founder_back_after_its_set_formed_is_a_voter_not_a_learner(tmp_path: Path) -> None:
    """n3 voted {n1, n2, n3} and crashed; the set formed; n2's announcements are out of the gateway's
    view. n3 must still start as a founding voter (with the founders as peers), not join as a learner."""
    backend = FakeBackend()
    backend.status = status("n1")
    app = create_app(
        GatewaySettings(endpoints=(), bootstrap_expect=3), clock=FakeClock(), backend_factory=lambda _: backend
    )
    vote = ("n1", "n2", "n3")
    save_record(tmp_path / "n3", BootstrapRecord(vote=vote))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        await _announce(http, 1, vote)
    # Restarted without --bootstrap-expect: the recorded vote says how many.
    bootstrapper = await _bootstrapper(app, _server_config(tmp_path, "n3"), expect=None)
    try:
        resolved = await bootstrapper.resolve()
    finally:
        await bootstrapper.close()
    assert bootstrapper.expect == 3
    assert not resolved.join and [p.id for p in resolved.peers] == ["n1", "n2"]
    assert load_record(tmp_path / "n3").outcome == "formed"


async def test_a_server_without_a_vote_joins_a_running_cluster(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.status = status("n1")
    app = create_app(
        GatewaySettings(endpoints=(), bootstrap_expect=3), clock=FakeClock(), backend_factory=lambda _: backend
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        for index in (1, 2, 3):
            await _announce(http, index, ["n1", "n2", "n3"])
    config = dataclasses.replace(
        _server_config(tmp_path, "n4"), client_address="127.0.0.1:7109", raft_address="127.0.0.1:7209"
    )
    bootstrapper = await _bootstrapper(app, config, expect=3)
    try:
        resolved = await bootstrapper.resolve()
    finally:
        await bootstrapper.close()
    assert resolved.join and [p.id for p in resolved.peers] == ["n1", "n2", "n3"]
    assert load_record(tmp_path / "n4") == BootstrapRecord(vote=(), outcome="joined", peers=resolved.peers)
