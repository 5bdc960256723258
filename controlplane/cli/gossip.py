"""`cpctl gossip`: the gossip layer's bandwidth matrix, training rounds and groups, as the cluster
records them, and a plot of the rounds (matplotlib, imported only by `cpctl gossip plot`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from controlplane.cli import app
from controlplane.cli.common import EndpointsOption, OutputOption, TimeoutOption, connect
from controlplane.cli.output import EXIT_USAGE, Output, emit, fail, plain, table
from controlplane.client import NotFound, Round
from controlplane.client._gossip import GroupConfig

gossip_app = typer.Typer(help="The gossip layer: bandwidth matrix, rounds and groups.", no_args_is_help=True)
app.add_typer(gossip_app, name="gossip")
groups_app = typer.Typer(
    help="Gossip groups: the configuration the leader's coordinator runs each group's rounds from.",
    no_args_is_help=True,
)
gossip_app.add_typer(groups_app, name="groups")


def _rate(bps: float) -> str:
    return f"{bps / 1e6:.2f} MB/s" if bps else "-"


def _round_row(r: Round) -> list[object]:
    started = time.strftime("%H:%M:%S", time.localtime(r.started_unix_ms / 1000)) if r.started_unix_ms else "-"
    duration = r.duration_s
    distance = r.pair_distance_sq
    return [
        r.number,
        r.policy,
        r.state.name.lower(),
        started,
        f"{duration:.2f}s" if duration is not None else "running",
        len(r.participants),
        len(r.pairs),
        # A probe round's pairs are a slot of the probe schedule, not a policy's choice: its slowest
        # link is no bottleneck of anything (nor is its byte count a model's).
        "-" if r.probe else _rate(r.bottleneck_bps),
        f"{r.bytes_total / 1e6:.2f} MB",
        f"{r.seconds_max:.2f}s",
        f"{distance:.4g}" if distance is not None else "-",
        f"{r.loss:.4g}" if r.loss is not None else "-",
        f"{100 * r.accuracy:.1f}%" if r.accuracy is not None else "-",
        len(r.failures),
    ]


_ROUND_HEADERS = [
    "ROUND",
    "POLICY",
    "STATE",
    "STARTED",
    "TIME",
    "PEERS",
    "PAIRS",
    "BOTTLENECK",
    "BYTES",
    "SLOWEST",
    "PAIR_DIST2",
    "LOSS",
    "ACCURACY",
    "FAILURES",
]
_CONSENSUS_NOTE = (
    "PAIR_DIST2: mean squared distance between matched partners' parameters before the round "
    "(exchanged coordinates), the consensus measure"
)
_METRICS_NOTE = (
    "LOSS, ACCURACY: means over the participants that reported them, of the models they brought to the round"
)
_PROBE_NOTE = "probe: a round of bandwidth probes on disjoint pairs (two transfer sizes each way; nothing mixed)"


def _notes(found: list[Round]) -> str:
    notes = [_CONSENSUS_NOTE] if found else []
    if any(r.metrics is not None for r in found):
        notes.append(_METRICS_NOTE)
    if any(r.probe for r in found):
        notes.append(_PROBE_NOTE)
    return "".join(f"\n{note}" for note in notes)


def _round_value(r: Round | None) -> Any:
    """A round as JSON, with the derived time and consensus measure next to the recorded fields."""
    if r is None:
        return None
    value = plain(r)
    value["duration_s"] = r.duration_s
    value["pair_distance_sq"] = r.pair_distance_sq
    value["probe"] = r.probe
    value["loss"] = r.loss
    value["accuracy"] = r.accuracy
    return value


def _group_row(g: GroupConfig) -> list[object]:
    tensors = len(g.spec.tensors) if g.spec is not None else 0
    return [
        g.group,
        g.policy,
        "paused" if g.paused else "active",
        f"{g.round_timeout_s:g}s",
        g.min_participants,
        tensors,
        f"{g.sparsity_ratio:g}",
        _probe_every(g),
        g.seed,
    ]


def _probe_every(g: GroupConfig) -> str:
    return f"{g.probe_every_rounds} rounds" if g.probe_every_rounds else "unknown links only"


_GROUP_HEADERS = ["GROUP", "POLICY", "STATE", "TIMEOUT", "MIN_PEERS", "TENSORS", "SPARSITY", "PROBES", "SEED"]


def _describe_group(g: GroupConfig) -> str:
    tensors = (
        ", ".join(f"{t.name}:{t.dtype}[{','.join(str(d) for d in t.shape)}]" for t in g.spec.tensors)
        if g.spec is not None
        else "-"
    )
    return "\n".join(
        [
            f"group {g.group}: {'paused' if g.paused else 'active'}, policy {g.policy}, round timeout "
            f"{g.round_timeout_s:g}s, at least {g.min_participants} peers, seed {g.seed}",
            f"tensors: {tensors} (sparsity {g.sparsity_ratio:g}, compression {g.compression or 'none'})",
            f"probe cycles: when a link is unknown, and every {g.probe_every_rounds} training rounds"
            if g.probe_every_rounds
            else "probe cycles: only when a link is unknown",
        ]
    )


def _parse_tensor(text: str) -> tuple[str, str, tuple[int, ...]]:
    """``NAME:DTYPE:D1xD2...`` (an empty shape is a scalar)."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        fail(f"--tensor {text!r}: expected NAME:DTYPE:SHAPE, e.g. w:float32:784x10", code=EXIT_USAGE)
    name, dtype, shape = parts
    try:
        dims = tuple(int(d) for d in shape.split("x")) if shape else ()
    except ValueError:
        fail(f"--tensor {text!r}: the shape is dimensions joined by 'x', e.g. 784x10", code=EXIT_USAGE)
    return name, dtype, dims


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
    """A group's rounds, oldest first: policy (``probe`` for probe rounds), time, bytes, bottleneck
    bandwidth, consensus measure, the participants' mean loss and accuracy, and failures."""
    with connect(endpoints, timeout) as client:
        found = client.gossip.rounds(group, after=after, limit=limit)
    text = table([_round_row(r) for r in found], _ROUND_HEADERS)
    emit(output, [_round_value(r) for r in found], text + _notes(list(found)))


#: The matplotlib versions the plot is made with: the 'plot' extra's requirement (pyproject.toml).
MATPLOTLIB_REQUIREMENT = "matplotlib>=3.11.2,<4"
PLOT_SIZE_IN = (8.0, 8.0)
PLOT_DPI = 100


def plot_rounds(rounds: Sequence[Round], path: Path, title: str) -> int:
    """Draw the finished training rounds among ``rounds`` into a PNG at ``path``: the participants'
    accuracy and loss (mean line, min-max band over the participants) and the consensus measure,
    over the round number. Probe rounds (no mix, no metrics) and running rounds are left out.
    Returns how many rounds were drawn. Raises ImportError when matplotlib is not installed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    done = [r for r in rounds if r.ended_unix_ms and not r.probe]
    figure = Figure(figsize=PLOT_SIZE_IN, dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    accuracy_ax, loss_ax, distance_ax = figure.subplots(3, 1, sharex=True)
    figure.suptitle(title)
    for ax, field, label in ((accuracy_ax, "accuracy", "accuracy"), (loss_ax, "loss", "loss")):
        xs, means, lows, highs = [], [], [], []
        for r in done:
            values = [getattr(m.metrics, field) for m in r.node_metrics]
            known = [v for v in values if v is not None]
            mean = getattr(r, field)
            if mean is None or not known:
                continue
            xs.append(r.number)
            means.append(mean)
            lows.append(min(known))
            highs.append(max(known))
        if xs:
            ax.fill_between(xs, lows, highs, alpha=0.2, label="min-max over participants")
            ax.plot(xs, means, marker=".", label="mean over participants")
            ax.legend(loc="best", fontsize="small")
        else:
            ax.text(0.5, 0.5, f"no {field} reported", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    if any(r.accuracy is not None for r in done):
        accuracy_ax.set_ylim(-0.02, 1.02)
    measured = [(r.number, d) for r in done if (d := r.pair_distance_sq) is not None]
    if measured:
        distance_ax.plot([n for n, _ in measured], [d for _, d in measured], marker=".", color="tab:green")
        if all(d > 0 for _, d in measured):
            distance_ax.set_yscale("log")
    else:
        distance_ax.text(0.5, 0.5, "no mix reported", ha="center", va="center", transform=distance_ax.transAxes)
    distance_ax.set_ylabel("consensus distance\n(PAIR_DIST2)")
    distance_ax.set_xlabel("round")
    distance_ax.grid(True, alpha=0.3)
    figure.savefig(path, format="png")
    return len(done)


def _all_rounds(client: Any, group: str, after: int) -> list[Round]:
    """Every retained round of ``group`` numbered above ``after``, oldest first (page by page)."""
    found: list[Round] = []
    page = 1000
    while True:
        batch = client.gossip.rounds(group, after=after, limit=page)
        found.extend(batch)
        if len(batch) < page:
            return found
        after = batch[-1].number


@gossip_app.command()
def plot(
    group: str,
    out: Annotated[Path, typer.Option("--out", "-o", help="The PNG file to write")] = Path("rounds.png"),
    after: Annotated[int, typer.Option(help="Only rounds numbered above this")] = 0,
    title: Annotated[str | None, typer.Option(help="The figure's title (default: the group's name)")] = None,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Plot a group's finished training rounds as a PNG: the participants' accuracy and loss (mean and
    min-max band) and the consensus distance, over the round number. Needs matplotlib."""
    if out.suffix.lower() != ".png":
        fail(f"--out {out}: the plot is a PNG; name a file ending in .png", code=EXIT_USAGE)
    if not out.parent.is_dir():
        fail(f"--out {out}: directory {out.parent} does not exist", code=EXIT_USAGE)
    try:
        import matplotlib  # noqa: F401  # only to say what is missing before reading the rounds
    except ImportError:
        fail(
            "cpctl gossip plot draws with matplotlib, which is not installed: "
            f"pip install 'controlplane[plot]' ({MATPLOTLIB_REQUIREMENT})"
        )
    with connect(endpoints, timeout) as client:
        found = _all_rounds(client, group, after)
    drawable = [r for r in found if r.ended_unix_ms and not r.probe]
    if not drawable:
        fail(f"group {group!r} has no finished training round{f' after round {after}' if after else ''} to plot")
    try:
        drawn = plot_rounds(found, out, title or f"gossip group {group}")
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    first, last = drawable[0].number, drawable[-1].number
    value = {"group": group, "path": str(out), "rounds": drawn, "first": first, "last": last}
    emit(output, value, f"wrote {out}: {drawn} training rounds ({first} to {last})")


@gossip_app.command()
def status(
    group: str,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """The latest round of GROUP, its configuration, the matrix version, and what each node says it is doing."""
    with connect(endpoints, timeout) as client:
        try:
            latest: Round | None = client.gossip.round(group)
        except NotFound:
            latest = None
        try:
            config: GroupConfig | None = client.gossip.group(group)
        except NotFound:
            config = None
        matrix = client.gossip.bandwidth()
        nodes = client.membership.nodes()
    activity = {v.node.spec.id: v.node.activity for v in nodes if v.node.activity}
    lines = [
        _describe_group(config) if config is not None else f"group {group}: not configured (no coordinator runs it)",
        f"bandwidth matrix version {matrix.version}, {len(matrix.links)} link(s) measured",
    ]
    if latest is None:
        lines.append("no round yet")
    else:
        lines.append(table([_round_row(latest)], _ROUND_HEADERS))
        if latest.probe:
            lines.append(_PROBE_NOTE)
        lines.append("pairs: " + (", ".join(f"{p.a}<->{p.b}" for p in latest.pairs) or "-"))
        if latest.idle:
            lines.append("idle: " + ", ".join(latest.idle))
        for failure in latest.failures:
            lines.append(
                f"failed: {failure.node}" + (f" with {failure.peer}" if failure.peer else "") + f" ({failure.reason})"
            )
    if activity:
        lines.append("activity: " + ", ".join(f"{node}={what}" for node, what in sorted(activity.items())))
    value = {
        "group": group,
        "config": plain(config),
        "matrix_version": matrix.version,
        "latest": _round_value(latest),
        "activity": activity,
    }
    emit(output, value, "\n".join(lines))


@groups_app.command("list")
def groups_list(
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Every configured gossip group."""
    with connect(endpoints, timeout) as client:
        found = client.gossip.groups()
    emit(output, plain(found), table([_group_row(g) for g in found], _GROUP_HEADERS))


@groups_app.command("show")
def groups_show(
    group: str,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """A group's configuration and its latest round."""
    with connect(endpoints, timeout) as client:
        config = client.gossip.group(group)
        try:
            latest: Round | None = client.gossip.round(group)
        except NotFound:
            latest = None
    lines = [_describe_group(config)]
    lines.append(table([_round_row(latest)], _ROUND_HEADERS) if latest is not None else "no round yet")
    emit(output, {"group": plain(config), "latest": _round_value(latest)}, "\n".join(lines))


@groups_app.command("configure")
def groups_configure(
    group: str,
    tensor: Annotated[
        list[str] | None,
        typer.Option("--tensor", "-t", help="NAME:DTYPE:SHAPE, e.g. w:float32:784x10 (repeat; creates the group)"),
    ] = None,
    sparsity: Annotated[float | None, typer.Option(help="Fraction of coordinates exchanged (creation only)")] = None,
    compression: Annotated[
        str | None, typer.Option(help="How exchanged values travel: none or int8 (creation only)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="The group's seed (creation only)")] = None,
    policy: Annotated[str | None, typer.Option(help="saps, saps-adaptive, random or best_bottleneck")] = None,
    round_timeout: Annotated[float | None, typer.Option("--round-timeout", help="Seconds per round")] = None,
    min_participants: Annotated[int | None, typer.Option(help="Fewest peers a round starts with")] = None,
    pause: Annotated[bool | None, typer.Option("--pause/--resume", help="Stop or resume starting rounds")] = None,
    probe_every: Annotated[
        int | None,
        typer.Option(
            "--probe-every",
            min=0,
            help="Training rounds between two probe cycles (0: probe only unknown links; default 50)",
        ),
    ] = None,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Create a group (with --tensor), or change an existing group's policy, timeout, minimum, probe
    interval or pause.

    A group's tensors, sparsity, compression and seed are fixed once it exists: a new layout needs a
    new group name.
    """
    if tensor:
        tensors = [_parse_tensor(t) for t in tensor]
        with connect(endpoints, timeout) as client:
            change = client.gossip.configure_group(
                group,
                tensors,
                policy=policy or "saps",
                sparsity_ratio=sparsity if sparsity is not None else 1.0,
                round_timeout_s=round_timeout if round_timeout is not None else 30.0,
                min_participants=min_participants if min_participants is not None else 2,
                seed=seed or 0,
                paused=bool(pause),
                probe_every_rounds=probe_every,
                compression=compression or "",
            )
        verb = "created" if change.created else "exists (unchanged; use the options without --tensor to change it)"
    else:
        if sparsity is not None or seed is not None or compression is not None:
            fail(
                "--sparsity, --compression and --seed are fixed when a group is created (with --tensor)",
                code=EXIT_USAGE,
            )
        if (
            policy is None
            and round_timeout is None
            and min_participants is None
            and pause is None
            and probe_every is None
        ):
            options = "--policy, --round-timeout, --min-participants, --probe-every, --pause or --resume"
            fail(f"nothing to change: give --tensor to create the group, or {options}", code=EXIT_USAGE)
        with connect(endpoints, timeout) as client:
            change = client.gossip.update_group(
                group,
                policy=policy,
                round_timeout_s=round_timeout,
                min_participants=min_participants,
                paused=pause,
                probe_every_rounds=probe_every,
            )
        verb = "updated" if change.changed else "unchanged"
    emit(output, plain(change), f"{verb}\n{_describe_group(change.group)}")


@groups_app.command("delete")
def groups_delete(
    group: str,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Remove a group's configuration: no new round starts (its rounds stay as history)."""
    with connect(endpoints, timeout) as client:
        deleted = client.gossip.delete_group(group)
    emit(output, {"group": group, "deleted": deleted}, "deleted" if deleted else f"no group {group!r}")
