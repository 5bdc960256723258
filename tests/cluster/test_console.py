"""The web console (/ui) against real servers: every page shows the cluster's data, nothing is shown
without the token, hostile text arrives escaped, and a real `cpctl gateway` process pushes a
server-sent event when the cluster changes."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from controlplane.client import Client
from controlplane.dev import LocalCluster
from gateway.app import GatewaySettings, create_app

from .conftest import cpctl_json, eventually
from .test_gateway import TOKEN, running_gateway

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOSTILE = "<script>alert('x')</script>\"&"


@pytest.fixture
async def console(cluster: LocalCluster) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        GatewaySettings(endpoints=tuple(cluster.client_addresses), token=TOKEN, credentials=cluster.credentials)
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield client
    await app.state.gateway.close()


def assert_safe_page(response: httpx.Response) -> str:
    """A console page: 200, HTML, a strict CSP, and no script but the console's own file."""
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    scripts = re.findall(r"<script\b[^>]*>", response.text)
    assert all(re.search(r'src="/ui/static/console\.js\?v=[0-9a-f]+"', tag) for tag in scripts), scripts
    assert " on" + "error=" not in response.text and "<script>" not in response.text
    return response.text


async def test_every_page_shows_the_cluster(cluster: LocalCluster, console: httpx.AsyncClient) -> None:
    leader_id = cluster.wait_for_leader()
    peers = ["ui-a1", "ui-a2", "ui-a3", "ui-a4"]
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as admin:
        admin.membership.set_flag("multi_network", True)  # the shared cluster holds other tests' networks
        admin.membership.create_network("ui-net", "ui-model", 4, priority=2)
        for node in peers:
            admin.membership.register_node(node, labels={"zone": "ui-eu", "note": HOSTILE}, ttl_s=60)
            admin.membership.heartbeat(node, activity=HOSTILE)
        admin.membership.join("ui-net", node_id="ui-a1")
        admin.membership.join("ui-net", client_id="ui-c1")
        # A network whose only member leaves: its client has nowhere to go, and the cluster says why.
        admin.membership.create_network("ui-lone", "ui-lone-model", 2)
        admin.membership.join("ui-lone", node_id="ui-a2")
        admin.membership.join("ui-lone", client_id="ui-c9")
        admin.membership.leave("ui-lone", node_id="ui-a2")
        held = admin.ports.allocate("ui-host", "ui-svc", "http").assignment.port
        admin.ports.report_observed("ui-host", [(held, "nginx")])  # not ui-svc: a conflict to resolve
        admin.models.register("UiLlama-7B", "cd" * 32, 2048, "gguf", family="llama", description=HOSTILE)
        admin.models.set_alias("UiLlama-7B", "prod", 1)
        admin.gossip.configure_group("ui-g", [("w", "float32", (4,))])
        version = 0
        for i, node in enumerate(peers):
            links = {p: 1e6 * (1 + i + j) for j, p in enumerate(peers) if p != node}
            version = admin.gossip.report_bandwidth(node, links)
        deadline = int(time.time() * 1000) + 60_000
        pairs = [("ui-a1", "ui-a2"), ("ui-a3", "ui-a4")]
        admin.gossip.start_round(
            "ui-g", 1, peers, pairs, seed=1, matrix_version=version, deadline_unix_ms=deadline,
            tensors=[("w", "float32", (4,))],
        )  # fmt: skip
        for node in peers:
            admin.gossip.report_round("ui-g", 1, node, bytes=4096, seconds=0.1, mix_delta_sq=0.5, accuracy=0.875)

    page = assert_safe_page(await console.get("/ui/", headers=AUTH))
    assert re.search(rf'data-member="{leader_id}" data-role="leader"', page)
    for server in cluster.nodes:
        assert f'data-member="{server}"' in page
    assert "Durability" in page and "Commit index" in page
    assert '<th scope="col">Commit index</th>' in page  # each server's, in the members table

    fleet = assert_safe_page(await console.get("/ui/fleet", params={"q": "zone=ui-eu"}, headers=AUTH))
    assert all(f'data-node="{node}"' in fleet for node in peers)
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&#34;&amp;" in fleet  # activity and a label
    fragment = await console.get("/ui/fleet", params={"q": "ui-a3", "fragment": "1"}, headers=AUTH)
    assert 'data-node="ui-a3"' in fragment.text and 'data-node="ui-a1"' not in fragment.text
    assert "<html" not in fragment.text

    networks = assert_safe_page(await console.get("/ui/networks", headers=AUTH))
    assert 'data-network="ui-net"' in networks and "<meter" in networks
    network = assert_safe_page(await console.get("/ui/networks/ui-net", headers=AUTH))
    assert "ui-c1" in network and "ui-a1" in network and 'data-unplaced="ui-c9"' not in network
    why = "member ui-a2 left network ui-lone; no network for its model has room"
    lone = assert_safe_page(await console.get("/ui/networks/ui-lone", headers=AUTH))
    assert re.search(rf'data-unplaced="ui-c9">.*?<td>ui-lone</td><td>ui-a2</td>.*?<td>{why}</td>', lone), lone
    assert 'data-unplaced="ui-c9"' in networks  # and on the list of every network
    (listed,) = cpctl_json(cluster, "networks", "unplaced", "--network", "ui-lone")
    assert (listed["client_id"], listed["node_id"], listed["reason"]) == ("ui-c9", "ui-a2", why)

    ports = assert_safe_page(await console.get("/ui/ports", params={"host": "ui-host"}, headers=AUTH))
    assert 'data-host="ui-host"' in ports and "ui-svc" in ports
    # The plan `cpctl ports resolve --dry-run` would carry out, shown and not carried out.
    move = re.search(rf'data-move="ui-svc/http">.*?<td>{held} → (\d+)</td>', ports)
    assert move and int(move.group(1)) != held, ports
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as admin:
        (still,) = admin.ports.list(host="ui-host", service="ui-svc").assignments
        assert still.port == held
    history = assert_safe_page(await console.get("/ui/ports", params={"service": "ui-svc"}, headers=AUTH))
    assert "History of ui-svc" in history and "allocate" in history.lower()

    async def found() -> str | None:
        response = await console.get("/ui/models", params={"q": "uilla", "fragment": "1"}, headers=AUTH)
        return response.text if 'data-model="UiLlama-7B"' in response.text else None

    hits = await eventually(found, 10, "the model in the console's search")
    assert "prod→1" in hits
    model = assert_safe_page(await console.get("/ui/models/UiLlama-7B", headers=AUTH))
    assert "&lt;script&gt;" in model and "gguf" in model
    missing = await console.get("/ui/models/NoSuchModel", headers=AUTH)
    assert missing.status_code == 404 and "NOT_FOUND" in missing.text

    training = assert_safe_page(await console.get("/ui/training", params={"group": "ui-g"}, headers=AUTH))
    assert 'data-round="1"' in training and "<polyline" in training
    assert 'class="series s-accuracy"' in training and "<td>87.5%</td>" in training  # the reported accuracy
    assert 'class="edge bottleneck"' in training  # ui-a1 - ui-a2 is the slower pair
    assert "<rect" in training and "Bandwidth between" in training


async def test_nothing_without_the_token(cluster: LocalCluster, console: httpx.AsyncClient) -> None:
    cluster.wait_for_leader()
    page = await console.get("/ui/fleet?q=x")
    assert page.status_code == 303 and page.headers["location"] == "/ui/login?next=%2Fui%2Ffleet%3Fq%3Dx"
    assert "ui-" not in page.text
    assert (await console.get("/ui/", headers={"Authorization": "Bearer wrong"})).status_code == 303
    assert (await console.get("/ui/fleet", params={"fragment": "1"})).status_code == 401
    assert (await console.get("/ui/events")).status_code == 401
    assert (await console.get("/ui/static/console.css")).status_code == 200  # no data in it

    refused = await console.post("/ui/login", data={"token": "wrong", "next": "/ui/fleet"})
    assert refused.status_code == 401 and "cp_console" not in refused.headers.get("set-cookie", "")
    login = await console.post("/ui/login", data={"token": TOKEN, "next": "https://elsewhere.example/"})
    assert login.status_code == 303 and login.headers["location"] == "/ui/"  # no open redirect
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/ui" in cookie
    assert TOKEN not in cookie
    session = login.cookies["cp_console"]
    page = await console.get("/ui/", headers={"Cookie": f"cp_console={session}"})
    assert page.status_code == 200 and "Members" in page.text
    forged = await console.get("/ui/", headers={"Cookie": "cp_console=99999999999." + "0" * 64})
    assert forged.status_code == 303


async def read_event(stream: AsyncIterator[str], domain: str) -> str:
    async for line in stream:
        if line.startswith("data:") and f'"domain": "{domain}"' in line:
            return line
    raise AssertionError("the event stream ended")


async def test_events_follow_the_cluster(cluster: LocalCluster, tmp_path: Path) -> None:
    """A real `cpctl gateway`: its /ui/events stream says "membership" soon after a node registers,
    and a second console on the same gateway gets the same event (one watch fans out to both)."""
    cluster.wait_for_leader()
    with running_gateway(cluster, tmp_path) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=httpx.Timeout(30.0)) as http:
            refused = await http.get("/ui/events")
            assert refused.status_code == 401
            async with (
                http.stream("GET", "/ui/events", headers=AUTH) as first,
                http.stream("GET", "/ui/events", headers=AUTH) as second,
            ):
                assert first.status_code == 200 and first.headers["content-type"].startswith("text/event-stream")
                lines = [first.aiter_lines(), second.aiter_lines()]
                for stream in lines:  # both subscribed (the retry line comes first)
                    assert (await anext(stream)).startswith("retry:")
                with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as admin:
                    admin.membership.register_node("ui-sse-1", ttl_s=60)
                for stream in lines:
                    event = await read_event(stream, "membership")
                    assert '"revision": ' in event
            page = await http.get("/ui/fleet", params={"q": "ui-sse-1"}, headers=AUTH)
            assert 'data-node="ui-sse-1"' in page.text
