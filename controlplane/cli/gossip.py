"""`cpctl gossip`: the gossip layer's bandwidth matrix and training rounds, as the cluster records them."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from controlplane.cli import app
from controlplane.cli.common import EndpointsOption, OutputOption, TimeoutOption, connect
from controlplane.cli.output import Output, emit, plain, table
from controlplane.client import NotFound, Round

gossip_app = typer.Typer(help="The gossip layer: bandwidth matrix and rounds.", no_args_is_help=True)
app.add_typer(gossip_app, name="gossip")


def _rate(bps: float) -> str:
    return f"{bps / 1e6:.2f} MB/s" if bps else "-"


def _round_row(r: Round) -> list[object]:
    return [
        r.number,
        r.state.name.lower(),
        len(r.participants),
        len(r.pairs),
        _rate(r.bottleneck_bps),
        f"{r.bytes_total / 1e6:.1f} MB",
        f"{r.seconds_max:.2f}s",
        len(r.failures),
    ]


_ROUND_HEADERS = ["ROUND", "STATE", "PEERS", "PAIRS", "BOTTLENECK", "BYTES", "SLOWEST", "FAILURES"]


@gossip_app.command()
def bandwidth(
    node: Annotated[str, typer.Option(help="Only the links touching this node")] = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """The bandwidth matrix: each link's estimate (the slower of its two ends' views)."""
    with connect(endpoints, timeout) as client:
        matrix = client.gossip.bandwidth(node_id=node)
    now_ms = time.time() * 1000
    rows = [
        [
            link.a,
            link.b,
            _rate(link.bandwidth_bps),
            f"{link.latency_s * 1000:.1f} ms",
            link.failures,
            f"{max(0.0, now_ms - link.updated_unix_ms) / 1000:.0f}s ago",
        ]
        for link in matrix.links
    ]
    text = f"matrix version {matrix.version}\n" + table(rows, ["A", "B", "BANDWIDTH", "LATENCY", "FAILURES", "UPDATED"])
    emit(output, plain(matrix), text)


@gossip_app.command()
def rounds(
    group: str,
    after: Annotated[int, typer.Option(help="Rounds numbered above this")] = 0,
    limit: Annotated[int, typer.Option(help="At most this many")] = 100,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """A group's rounds, oldest first: time, bytes, bottleneck bandwidth and failures per round."""
    with connect(endpoints, timeout) as client:
        found = client.gossip.rounds(group, after=after, limit=limit)
    emit(output, plain(found), table([_round_row(r) for r in found], _ROUND_HEADERS))


@gossip_app.command()
def status(
    group: str,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """The latest round of GROUP, the matrix version, and what each node says it is doing."""
    with connect(endpoints, timeout) as client:
        try:
            latest: Round | None = client.gossip.round(group)
        except NotFound:
            latest = None
        matrix = client.gossip.bandwidth()
        nodes = client.membership.nodes()
    activity = {v.node.spec.id: v.node.activity for v in nodes if v.node.activity}
    lines = [f"group {group}: matrix version {matrix.version}, {len(matrix.links)} link(s) measured"]
    if latest is None:
        lines.append("no round yet")
    else:
        lines.append(table([_round_row(latest)], _ROUND_HEADERS))
        lines.append("pairs: " + (", ".join(f"{p.a}<->{p.b}" for p in latest.pairs) or "-"))
        if latest.idle:
            lines.append("idle: " + ", ".join(latest.idle))
        for failure in latest.failures:
            lines.append(
                f"failed: {failure.node}" + (f" with {failure.peer}" if failure.peer else "") + f" ({failure.reason})"
            )
    if activity:
        lines.append("activity: " + ", ".join(f"{node}={what}" for node, what in sorted(activity.items())))
    value = {"group": group, "matrix_version": matrix.version, "latest": plain(latest), "activity": activity}
    emit(output, value, "\n".join(lines))
