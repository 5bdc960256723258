"""What the console's pages show, computed from SDK results: pure functions, no I/O, no HTML.

The templates only lay these out; every number that becomes an SVG coordinate or a colour is
computed here, so it is a float or a fixed-format string by the time it reaches a template (never
text from the cluster). Text from the cluster (node ids, labels, model names) is escaped by the
templates' autoescaping like everything else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from controlplane.client import BandwidthMatrix, NodeView, Round

#: Rows per Fleet page: a thousand nodes are ten pages of a table that renders at once.
FLEET_PAGE_SIZE = 100


# --------------------------------------------------------------------------------------- fleet


def node_text(view: NodeView) -> str:
    """Everything the Fleet search box matches against, lower-cased."""
    spec = view.node.spec
    parts = [
        spec.id,
        spec.version,
        view.node.activity,
        view.node.reason,
        *spec.capabilities,
        *spec.addresses.values(),
        *(f"{k}={v}" for k, v in spec.labels.items()),
        *view.networks,
    ]
    return " ".join(parts).lower()


@dataclass(frozen=True)
class FleetPage:
    rows: tuple[NodeView, ...]
    #: Nodes matching the search (all pages).
    matched: int
    #: Nodes the cluster returned for the filters.
    total: int
    page: int
    pages: int
    counts: dict[str, int]


def fleet_page(views: Sequence[NodeView], query: str, page: int, size: int = FLEET_PAGE_SIZE) -> FleetPage:
    """Filter by every whitespace-separated term (substring, all required), sort by id, paginate."""
    terms = query.lower().split()
    matched = [v for v in views if all(t in node_text(v) for t in terms)] if terms else list(views)
    matched.sort(key=lambda v: v.node.spec.id)
    pages = max(1, math.ceil(len(matched) / size))
    page = min(max(page, 1), pages)
    counts: dict[str, int] = {}
    for view in views:
        state = view.node.state.name.lower()
        counts[state] = counts.get(state, 0) + 1
    return FleetPage(
        rows=tuple(matched[(page - 1) * size : page * size]),
        matched=len(matched),
        total=len(views),
        page=page,
        pages=pages,
        counts=dict(sorted(counts.items())),
    )


# --------------------------------------------------------------------------------------- charts


@dataclass(frozen=True)
class Series:
    name: str
    #: "x,y x,y ..." in the chart's coordinates (an SVG polyline's ``points``).
    points: str
    #: The largest value, for the axis label.
    top: float
    last: float | None
    css: str


@dataclass(frozen=True)
class RoundChart:
    width: int
    height: int
    first: int
    last: int
    count: int
    series: tuple[Series, ...]
    #: Some participant reported accuracy or loss (their series are then among ``series``).
    metrics: bool = False


CHART_W, CHART_H, CHART_PAD = 640, 200, 24


def _series(
    name: str, css: str, xs: Sequence[float], values: Sequence[float | None], top: float | None = None
) -> Series:
    """A line scaled to its own maximum, or to ``top`` when given (accuracy: to 1, so its height reads)."""
    known = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None and math.isfinite(v)]
    top = max((v for _, v in known), default=0.0) if top is None else top
    scale = (CHART_H - 2 * CHART_PAD) / top if top > 0 else 0.0
    points = " ".join(f"{x:.1f},{CHART_H - CHART_PAD - v * scale:.1f}" for x, v in known)
    return Series(name, points, top, known[-1][1] if known else None, css)


def round_chart(rounds: Sequence[Round]) -> RoundChart | None:
    """Consensus distance, bytes and bottleneck bandwidth per finished training round, and the mean
    accuracy and loss the participants reported when any did (probe rounds measure links and mix
    nothing: left out). Each series is scaled to its own maximum, accuracy to 1."""
    done = sorted((r for r in rounds if r.ended_unix_ms and not r.probe), key=lambda r: r.number)
    if not done:
        return None
    first, last = done[0].number, done[-1].number
    span = max(1, last - first)
    xs = [CHART_PAD + (r.number - first) * (CHART_W - 2 * CHART_PAD) / span for r in done]
    metrics: tuple[Series, ...] = ()
    if any(r.accuracy is not None for r in done):
        metrics += (_series("accuracy (mean of reports)", "s-accuracy", xs, [r.accuracy for r in done], top=1.0),)
    if any(r.loss is not None for r in done):
        metrics += (_series("loss (mean of reports)", "s-loss", xs, [r.loss for r in done]),)
    return RoundChart(
        width=CHART_W,
        height=CHART_H,
        first=first,
        last=last,
        count=len(done),
        series=(
            _series("consensus distance", "s-distance", xs, [r.pair_distance_sq for r in done]),
            _series("bytes per round", "s-bytes", xs, [float(r.bytes_total) for r in done]),
            _series("bottleneck bandwidth (B/s)", "s-bottleneck", xs, [r.bottleneck_bps for r in done]),
            *metrics,
        ),
        metrics=bool(metrics),
    )


# --------------------------------------------------------------------------------------- heat map


@dataclass(frozen=True)
class Cell:
    x: int
    y: int
    fill: str
    title: str


@dataclass(frozen=True)
class HeatMap:
    nodes: tuple[str, ...]
    cells: tuple[Cell, ...]
    size: int
    cell: int
    top_bps: float


HEAT_CELL = 18
HEAT_LABEL = 120


def _fill(value: float, top: float) -> str:
    """Light to dark blue by the share of the best link (a single hue reads in grey too)."""
    share = value / top if top > 0 else 0.0
    light = 92 - 62 * share
    return f"hsl(210,70%,{light:.0f}%)"


def heat_map(matrix: BandwidthMatrix, limit: int = 64) -> HeatMap | None:
    """The bandwidth matrix as cells (symmetric: a link is drawn both ways); at most ``limit``
    nodes, the ones with the most links first."""
    if not matrix.links:
        return None
    degree: dict[str, int] = {}
    for link in matrix.links:
        degree[link.a] = degree.get(link.a, 0) + 1
        degree[link.b] = degree.get(link.b, 0) + 1
    nodes = tuple(sorted(sorted(degree), key=lambda n: -degree[n])[:limit])
    nodes = tuple(sorted(nodes))
    index = {n: i for i, n in enumerate(nodes)}
    top = max(link.bandwidth_bps for link in matrix.links)
    cells = []
    for link in matrix.links:
        if link.a not in index or link.b not in index:
            continue
        fill = _fill(link.bandwidth_bps, top)
        title = f"{link.a} - {link.b}: {human_rate(link.bandwidth_bps)}"
        i, j = index[link.a], index[link.b]
        cells.append(Cell(HEAT_LABEL + j * HEAT_CELL, HEAT_LABEL + i * HEAT_CELL, fill, title))
        cells.append(Cell(HEAT_LABEL + i * HEAT_CELL, HEAT_LABEL + j * HEAT_CELL, fill, title))
    # The slanted column labels reach past the last column: leave them room on the right.
    return HeatMap(nodes, tuple(cells), HEAT_LABEL + len(nodes) * HEAT_CELL + HEAT_LABEL // 2, HEAT_CELL, top)


# --------------------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class GraphNode:
    name: str
    x: float
    y: float
    idle: bool


@dataclass(frozen=True)
class GraphEdge:
    x1: float
    y1: float
    x2: float
    y2: float
    title: str
    bottleneck: bool


@dataclass(frozen=True)
class MatchingGraph:
    number: int
    group: str
    size: int
    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]
    bottleneck: str


GRAPH_SIZE = 360


def matching_graph(round_: Round, matrix: BandwidthMatrix | None) -> MatchingGraph:
    """A round's participants on a circle, its pairs as edges; the pair with the least bandwidth
    (by the matrix) is the round's bottleneck and is highlighted."""
    names = sorted(set(round_.participants) | {p.a for p in round_.pairs} | {p.b for p in round_.pairs})
    centre, radius = GRAPH_SIZE / 2, GRAPH_SIZE / 2 - 40
    where: dict[str, tuple[float, float]] = {}
    nodes = []
    idle = set(round_.idle)
    for i, name in enumerate(names):
        angle = 2 * math.pi * i / max(1, len(names)) - math.pi / 2
        x, y = centre + radius * math.cos(angle), centre + radius * math.sin(angle)
        where[name] = (x, y)
        nodes.append(GraphNode(name, round(x, 1), round(y, 1), name in idle))
    bandwidth = {}
    if matrix is not None:
        for link in matrix.links:
            bandwidth[frozenset((link.a, link.b))] = link.bandwidth_bps
    rates = [(bandwidth.get(frozenset((p.a, p.b))), p) for p in round_.pairs]
    known = [(r, p) for r, p in rates if r is not None]
    worst = min(known, key=lambda rp: rp[0])[1] if known else None
    edges = []
    for rate, pair in rates:
        (x1, y1), (x2, y2) = where[pair.a], where[pair.b]
        label = human_rate(rate) if rate is not None else "not measured"
        edges.append(
            GraphEdge(
                round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1), f"{pair.a} - {pair.b}: {label}", pair is worst
            )
        )
    bottleneck = f"{worst.a} - {worst.b}" if worst is not None else ""
    return MatchingGraph(round_.number, round_.group, GRAPH_SIZE, tuple(nodes), tuple(edges), bottleneck)


# --------------------------------------------------------------------------------------- formats


def human_rate(bps: float | None) -> str:
    if bps is None:
        return "-"
    return human_bytes(bps) + "/s"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - the loop returns


def ago(now_ms: int, then_ms: int) -> str:
    """'12 s ago' style, for timestamps from the cluster (leader-stamped)."""
    if then_ms <= 0:
        return "-"
    seconds = max(0, (now_ms - then_ms) // 1000)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"
