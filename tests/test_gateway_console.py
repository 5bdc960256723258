"""The web console without a cluster: the hub's fan-out (one watch for every console, coalesced
marks), the pure views (fleet search and pages, charts, heat map, matching), the session cookie, and
pages rendered over a fake source (hostile names escaped, a thousand nodes paginated)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
import httpx
import pytest

from controlplane import errors
from controlplane.client import (
    BandwidthMatrix,
    ClusterStatus,
    Connectivity,
    Event,
    EventType,
    Link,
    Model,
    ModelList,
    Network,
    NodeMetrics,
    NodeRecord,
    NodeRole,
    NodeSpec,
    NodeState,
    NodeView,
    Role,
    Round,
    RoundState,
    SearchHit,
    SearchResult,
    TrainingMetrics,
    UnplacedClient,
)
from controlplane.client._gossip import Pair
from gateway.app import GatewaySettings, create_app
from gateway.console import auth, views
from gateway.console.hub import STATUS, LiveHub, SharedReads

# --------------------------------------------------------------------------------------- builders


def node(node_id: str, state: NodeState = NodeState.ACTIVE, labels: dict[str, str] | None = None) -> NodeView:
    spec = NodeSpec(node_id, NodeRole.AGENT, {}, (), None, labels or {}, "1.0")
    record = NodeRecord(spec, state, 1, 0, 0, 1, 1, "idle", "", 1)
    return NodeView(record, "", False, Connectivity.CONNECTED, 0, 10_000, (), 0)


def model(name: str) -> Model:
    return Model(name, "a <b>description</b>", "llama", ("t",), "", {"prod": 1}, 1, 1, 1, 0, 0, 1)


def link(a: str, b: str, bps: float) -> Link:
    return Link(a, b, bps, 0.0, 0.0, 1, bps, bps, 0, 0)


def round_(
    number: int, pairs: tuple[tuple[str, str], ...] = (), probe: bool = False, accuracy: float | None = None
) -> Round:
    metrics = TrainingMetrics(loss=1.0 / number, accuracy=accuracy) if accuracy is not None else None
    return Round(
        group="g",
        number=number,
        participants=tuple(sorted({p for pair in pairs for p in pair})),
        matrix_version=1,
        seed=number,
        policy="probe" if probe else "saps",
        pairs=tuple(Pair(a, b) for a, b in pairs),
        idle=(),
        spec=None,
        started_unix_ms=1000 * number,
        deadline_unix_ms=0,
        state=RoundState.DONE,
        reported=(),
        failures=(),
        bytes_total=100 * number,
        bottleneck_bps=1e6,
        seconds_max=0.1,
        ended_unix_ms=1000 * number + 500,
        create_revision=number,
        mod_revision=number,
        mixed=2,
        mix_delta_sq=1.0 / number,
        node_metrics=(NodeMetrics("a", metrics),) if metrics is not None else (),
        metrics=metrics,
    )


def status(leader: str = "n1", term: int = 1) -> ClusterStatus:
    return ClusterStatus("n1", Role.LEADER, leader, "", term, 5, 5, 5, (), True, 1, 5, "0.1.0")


# --------------------------------------------------------------------------------------- hub


class FakeWatch:
    """One watch: yields what is put in its queue until closed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.closed = False

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        while True:
            yield await self.queue.get()

    async def aclose(self) -> None:
        self.closed = True


def event(domain: str, revision: int) -> Event:
    return Event(revision, EventType.PUT, domain, "k", None, None, 0)


async def wait_for(check: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_one_watch_fans_out_to_every_console_and_stops_with_the_last() -> None:
    watches: list[FakeWatch] = []
    current = status()

    def open_watch() -> FakeWatch:
        watches.append(FakeWatch())
        return watches[-1]

    async def get_status() -> ClusterStatus:
        return current

    hub = LiveHub(open_watch, get_status, status_interval_s=0.01)
    consoles = [hub.subscribe() for _ in range(3)]
    await wait_for(lambda: watches, "the watch to open")
    for revision in (7, 8, 9):  # three changes: each console gets one mark, at the latest revision
        watches[0].queue.put_nowait(event("membership", revision))
    watches[0].queue.put_nowait(event("ports", 10))
    await wait_for(lambda: watches[0].queue.empty(), "the events to be read")
    for console in consoles:
        assert await console.changes(1.0) == {"membership": 9, "ports": 10}
    assert len(watches) == 1 and hub.watches_opened == 1

    current = status(leader="n2", term=2)  # a new leader: no watch event says so, the status check does
    for console in consoles:
        assert STATUS in await console.changes(5.0)

    for console in consoles:
        hub.unsubscribe(console)
    await wait_for(lambda: watches[0].closed, "the watch to close with the last console")
    assert hub.subscribers == 0


async def test_a_failing_watch_is_opened_again() -> None:
    opened = 0

    class Broken(FakeWatch):
        async def _events(self) -> AsyncIterator[Event]:
            raise errors.OutOfRange("compacted")
            yield  # pragma: no cover - makes this an async generator

    def open_watch() -> FakeWatch:
        nonlocal opened
        opened += 1
        return Broken()

    async def get_status() -> ClusterStatus:
        raise errors.Unavailable("no leader")

    hub = LiveHub(open_watch, get_status, status_interval_s=0.01)
    hub.subscribe()
    await wait_for(lambda: opened >= 1, "the first watch")
    await hub.close()


async def test_consoles_share_one_read_per_change() -> None:
    async def get_status() -> ClusterStatus:
        return status()

    hub = LiveHub(None, get_status, status_interval_s=60)
    now = [0.0]
    reads = SharedReads(hub, ttl_s=1.0, clock=lambda: now[0])
    calls = 0
    release = asyncio.Event()

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return calls

    assert await asyncio.wait_for(reads.get("membership", "k", lambda: asyncio.sleep(0, 7)), 1) == 7
    assert reads.fetches == 0  # no open console: every request reads for itself

    hub.subscribe()
    waiting = [asyncio.ensure_future(reads.get("membership", "k", fetch)) for _ in range(100)]
    await asyncio.sleep(0)
    release.set()
    assert set(await asyncio.gather(*waiting)) == {1} and calls == 1  # a hundred consoles, one read
    assert await reads.get("membership", "k", fetch) == 1 and calls == 1
    hub.publish("ports", 5)  # another domain changed: still fresh
    assert await reads.get("membership", "k", fetch) == 1
    hub.publish("membership", 6)  # a console told "membership changed at 6" never gets the older read
    assert await reads.get("membership", "k", fetch) == 2
    now[0] += 1.0  # and nothing is kept longer than the TTL
    assert await reads.get("membership", "k", fetch) == 3

    async def fail() -> int:
        raise errors.Unavailable("no leader")

    now[0] += 1.0
    with pytest.raises(errors.Unavailable):
        await reads.get("membership", "k", fail)
    assert await reads.get("membership", "k", fetch) == 4  # a failure is not kept
    await hub.close()


# --------------------------------------------------------------------------------------- views


def test_fleet_search_and_pages_over_a_thousand_nodes() -> None:
    nodes = [node(f"n{i:04d}", labels={"zone": "eu" if i % 2 else "us"}) for i in range(1000)]
    nodes[5] = replace(nodes[5], node=replace(nodes[5].node, state=NodeState.DEAD))
    first = views.fleet_page(nodes, "", 1)
    assert len(first.rows) == views.FLEET_PAGE_SIZE and first.pages == 10 and first.matched == 1000
    assert first.rows[0].node.spec.id == "n0000" and first.counts == {"active": 999, "dead": 1}
    eu = views.fleet_page(nodes, "ZONE=eu n09", 1)
    assert eu.matched == 50 and all(v.node.spec.id.startswith("n09") for v in eu.rows)
    assert views.fleet_page(nodes, "", 99).page == 10  # past the end: the last page


def test_chart_leaves_out_probe_rounds_and_scales_each_series() -> None:
    chart = views.round_chart([round_(1), round_(2), round_(3, probe=True), round_(4)])
    assert chart is not None and (chart.first, chart.last, chart.count) == (1, 4, 3)
    distance = chart.series[0]
    assert distance.top == pytest.approx(4.0 * 1.0 / 2) and distance.last == pytest.approx(4.0 * 0.25 / 2)
    assert len(distance.points.split()) == 3
    assert views.round_chart([]) is None
    assert not chart.metrics and len(chart.series) == 3  # nothing reported: no accuracy or loss line


def test_chart_draws_the_reported_accuracy_and_loss() -> None:
    chart = views.round_chart([round_(1, accuracy=0.5), round_(2), round_(3, accuracy=0.75)])
    assert chart is not None and chart.metrics
    series = {s.css: s for s in chart.series}
    accuracy, loss = series["s-accuracy"], series["s-loss"]
    # Accuracy is drawn against 1, not against its own maximum: 75% sits at three quarters of the height.
    assert accuracy.top == 1.0 and accuracy.last == 0.75 and len(accuracy.points.split()) == 2
    y_75 = float(accuracy.points.split()[-1].split(",")[1])
    assert y_75 == pytest.approx(views.CHART_H - views.CHART_PAD - 0.75 * (views.CHART_H - 2 * views.CHART_PAD))
    assert loss.top == 1.0 and loss.last == pytest.approx(1.0 / 3)  # round 2 reported nothing: no point


def test_heat_map_and_matching_bottleneck() -> None:
    matrix = BandwidthMatrix(1, 0, (link("a", "b", 1e6), link("c", "d", 5e6), link("a", "c", 2e6)))
    heat = views.heat_map(matrix)
    assert heat is not None and heat.nodes == ("a", "b", "c", "d") and len(heat.cells) == 6
    assert heat.cells[0].fill != heat.cells[2].fill  # slower link, lighter cell
    graph = views.matching_graph(round_(1, (("a", "b"), ("c", "d"))), matrix)
    assert [e.bottleneck for e in graph.edges] == [True, False] and graph.bottleneck == "a - b"
    assert views.heat_map(BandwidthMatrix(0, 0, ())) is None


def test_session_cookie() -> None:
    cookie = auth.session_cookie("secret", now=1000.0)
    assert auth.valid_session("secret", cookie, now=1001.0)
    assert not auth.valid_session("other", cookie, now=1001.0)
    assert not auth.valid_session("secret", cookie, now=1000.0 + auth.SESSION_S + 1)
    expiry, _, mac = cookie.partition(".")
    assert not auth.valid_session("secret", f"{int(expiry) + 1}.{mac}", now=1001.0)
    assert not auth.valid_session("secret", "garbage", now=1001.0)
    assert auth.safe_next("/ui/fleet?q=a") == "/ui/fleet?q=a"
    assert auth.safe_next("//evil.example/") == "/ui/" and auth.safe_next("https://evil.example/") == "/ui/"


# --------------------------------------------------------------------------------------- pages


class FakeSource:
    def __init__(self, nodes: list[NodeView], models: list[Model]) -> None:
        self._nodes = nodes
        self._models = models

    async def nodes(self, role: str | None, state: str | None, include_gone: bool) -> tuple[NodeView, ...]:
        return tuple(self._nodes)

    async def search_models(self, query: str, limit: int) -> SearchResult:
        hits = tuple(SearchHit(m, 1.0) for m in self._models)
        return SearchResult(revision=1, hits=hits, total=len(hits), engine="fake", query_ms=0.1)

    async def models(self, start_after: str, limit: int) -> ModelList:
        return ModelList(1, tuple(self._models), False)


@pytest.fixture
async def http() -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(GatewaySettings(endpoints=("127.0.0.1:1",), token="tok"))
    hostile = "<script>alert(1)</script>"
    app.state.console_source = FakeSource(
        [node(f"n{i:04d}", labels={"x": hostile}) for i in range(1000)],
        [model(hostile), model("ok-model")],
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        client.headers["Authorization"] = "Bearer tok"
        yield client, app


async def test_a_hostile_model_name_is_escaped(http: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = http
    for params in ({"q": "anything"}, {}):
        page = await client.get("/ui/models", params=params)
        assert page.status_code == 200
        assert "<script>alert(1)</script>" not in page.text
        assert 'data-model="&lt;script&gt;alert(1)&lt;/script&gt;"' in page.text
        assert 'href="/ui/models/%3Cscript%3Ealert%281%29%3C/script%3E"' in page.text


async def test_a_thousand_nodes_render_one_page_at_a_time(http: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = http
    page = await client.get("/ui/fleet", params={"page": 3})
    assert page.status_code == 200 and page.text.count("data-node=") == views.FLEET_PAGE_SIZE
    assert 'data-node="n0200"' in page.text and 'rel="next"' in page.text and 'rel="prev"' in page.text
    assert "&lt;script&gt;" in page.text and "<script>alert" not in page.text
    found = await client.get("/ui/fleet", params={"q": "n0999", "fragment": "1"})
    assert found.text.count("data-node=") == 1 and "<html" not in found.text


class OlderCluster(FakeSource):
    """A cluster that answers the networks but not the unplaced clients, with ``failure``."""

    def __init__(self, failure: errors.ControlPlaneError) -> None:
        super().__init__([], [])
        self.failure = failure

    async def networks(self) -> tuple[Network, ...]:
        return (Network("eu", "llama", 4, 0, {}, (), "", 1, 1, (), 0, 0),)

    async def unplaced(self, network: str) -> tuple[UnplacedClient, ...]:
        raise self.failure


@pytest.mark.parametrize(
    ("failure", "shown"),
    [
        (errors.FailedPrecondition("this needs cluster level 5"), "this needs cluster level 5"),
        (errors.PermissionDenied("user:gw lacks membership:read"), "lacks membership:read"),
        (errors.error_from_status(grpc.StatusCode.UNIMPLEMENTED, "Method not found!"), "run a release without"),
    ],
)
async def test_a_section_an_older_cluster_cannot_answer_says_why_and_the_page_stays(
    failure: errors.ControlPlaneError, shown: str
) -> None:
    app = create_app(GatewaySettings(endpoints=("127.0.0.1:1",), token="tok"))
    app.state.console_source = OlderCluster(failure)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        page = await client.get("/ui/networks", headers={"Authorization": "Bearer tok"})
    assert page.status_code == 200, page.text
    assert 'data-network="eu"' in page.text and "Not available from this cluster" in page.text and shown in page.text


async def test_a_server_failure_in_a_section_is_the_pages() -> None:
    app = create_app(GatewaySettings(endpoints=("127.0.0.1:1",), token="tok"))
    app.state.console_source = OlderCluster(errors.Internal("internal error (KeyError) in ListUnplaced"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        page = await client.get("/ui/networks", headers={"Authorization": "Bearer tok"})
    assert page.status_code == 500 and "Not available" not in page.text
