"""`cpctl ports`, `cpctl services` and `cpctl leases`: the replicated port map."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from controlplane.cli import app
from controlplane.cli.common import EndpointsOption, OutputOption, TimeoutOption, connect, read_input
from controlplane.cli.output import EXIT_USAGE, Output, emit, fail, plain, table
from controlplane.client import Conflict, HealthStatus, PortAssignment, PortProtocol, ServiceRecord
from controlplane.errors import NotFound
from controlplane.state.ports import port_label

ports_app = typer.Typer(
    help="Port assignments: allocate, move, reserve, find conflicts, back up.", no_args_is_help=True
)
ranges_app = typer.Typer(help="Named port ranges.", no_args_is_help=True)
services_app = typer.Typer(
    help="Service manifests: register a service and all its ports at once.", no_args_is_help=True
)
leases_app = typer.Typer(help="Leases that port assignments hang on.", no_args_is_help=True)
app.add_typer(ports_app, name="ports")
ports_app.add_typer(ranges_app, name="ranges")
app.add_typer(services_app, name="services")
app.add_typer(leases_app, name="leases")

Host = Annotated[str, typer.Option("--host", "-H", help="The host the port is on")]
OptionalHost = Annotated[str, typer.Option("--host", "-H", help="Only this host")]
Service = Annotated[str, typer.Option("--service", "-s", help="The service that holds the port")]
PortName = Annotated[str, typer.Option("--name", "-n", help="The service's name for the port (default: main)")]
Lease = Annotated[int, typer.Option("--lease", help="Hang the assignment on this lease id")]
Protocol = Annotated[
    str, typer.Option("--protocol", "-p", help="tcp or udp: the two hold the same port number separately")
]

_SPAN = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")


def _span(text: str) -> tuple[int, int]:
    """``8000`` or ``8000-8009`` as (first, last); last is 0 for a single port."""
    match = _SPAN.fullmatch(text.strip())
    if not match:
        fail(f"{text!r} is not a port or a PORT-PORT span", code=EXIT_USAGE)
    return int(match.group(1)), int(match.group(2) or 0)


def _port(port: int, protocol: PortProtocol = PortProtocol.TCP) -> str:
    """``8080`` for TCP, ``53/udp`` for UDP, as the server's messages name ports."""
    return port_label(port, protocol.value)


def _protocol(text: str) -> str:
    if text.strip().lower() not in ("tcp", "udp"):
        fail(f"--protocol {text!r}: give tcp or udp", code=EXIT_USAGE)
    return text.strip().lower()


def _assignment_rows(assignments: tuple[PortAssignment, ...] | list[PortAssignment]) -> str:
    return table(
        [
            [a.host, _port(a.port, a.protocol), a.service, a.name, a.range or "-", a.lease_id or "-"]
            for a in assignments
        ],
        ["HOST", "PORT", "SERVICE", "NAME", "RANGE", "LEASE"],
    )


def _conflict_rows(conflicts: tuple[Conflict, ...]) -> str:
    return table(
        [[c.kind.name, c.host, _port(c.port, c.protocol), c.description] for c in conflicts],
        ["KIND", "HOST", "PORT", "DETAIL"],
    )


# --------------------------------------------------------------------------------------------- ports


@ports_app.command()
def allocate(
    service: Annotated[str, typer.Argument(help="The service that gets the port")],
    host: Host,
    name: PortName = "",
    range_: Annotated[str, typer.Option("--range", "-r", help="Allocate from this range (default: dynamic)")] = "",
    preferred: Annotated[int, typer.Option(help="Try this port first")] = 0,
    lease: Lease = 0,
    protocol: Protocol = "tcp",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Give SERVICE a free port on a host (the same port again if it already has one)."""
    protocol = _protocol(protocol)
    with connect(endpoints, timeout) as client:
        result = client.ports.allocate(
            host, service, name, range=range_, preferred_port=preferred, lease_id=lease, protocol=protocol
        )
    a = result.assignment
    note = " (already held)" if result.existing else ""
    emit(output, plain(result), f"{a.service}/{a.name} on {a.host}: port {_port(a.port, a.protocol)}{note}")


@ports_app.command()
def assign(
    service: str,
    port: int,
    host: Host,
    name: PortName = "",
    lease: Lease = 0,
    force: Annotated[bool, typer.Option(help="Assign even if the port was observed bound by something else")] = False,
    protocol: Protocol = "tcp",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Give SERVICE the specific PORT on a host."""
    protocol = _protocol(protocol)
    with connect(endpoints, timeout) as client:
        result = client.ports.assign(host, service, port, name, lease_id=lease, force=force, protocol=protocol)
    a = result.assignment
    emit(output, plain(result), f"{a.service}/{a.name} on {a.host}: port {_port(a.port, a.protocol)}")


@ports_app.command()
def release(
    host: Host,
    service: Annotated[str, typer.Option("--service", "-s", help="Release this service's port ...")] = "",
    name: PortName = "",
    port: Annotated[int, typer.Option(help="... or whatever holds this port")] = 0,
    protocol: Protocol = "tcp",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Free an assignment (succeeds when nothing was assigned)."""
    if not service and not port:
        fail("name what to release: --service (and --name) or --port", code=EXIT_USAGE)
    protocol = _protocol(protocol)
    with connect(endpoints, timeout) as client:
        result = client.ports.release(host, service, name, port=port, protocol=protocol)
    a = result.assignment
    text = f"released port {_port(a.port, a.protocol)}" if a else "nothing was assigned"
    emit(output, plain(result), text)


@ports_app.command()
def reassign(
    service: str,
    host: Host,
    name: PortName = "",
    port: Annotated[int, typer.Option(help="Move to this port (default: any free port)")] = 0,
    range_: Annotated[str, typer.Option("--range", "-r", help="Move into this range")] = "",
    reason: Annotated[str, typer.Option(help="Recorded in the history")] = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Move SERVICE's port on a host to another port."""
    with connect(endpoints, timeout) as client:
        result = client.ports.reassign(host, service, name, port=port, range=range_, reason=reason)
    a = result.assignment
    moved = f"{_port(result.old_port, a.protocol)} -> {_port(a.port, a.protocol)}"
    emit(output, plain(result), f"{a.service}/{a.name} on {a.host}: port {moved}")


@ports_app.command()
def reserve(
    ports: Annotated[str, typer.Argument(help="PORT or PORT-PORT")],
    host: Annotated[str, typer.Option("--host", "-H", help="Only on this host (default: every host)")] = "",
    reason: Annotated[str, typer.Option(help="Why (shown to whoever hits it)")] = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Keep ports out of every allocation."""
    first, last = _span(ports)
    with connect(endpoints, timeout) as client:
        reservations = client.ports.reserve(first, last, host=host, reason=reason)
    emit(output, plain(reservations), f"reserved {len(reservations)} port(s) on {host or 'every host'}")


@ports_app.command()
def unreserve(
    ports: Annotated[str, typer.Argument(help="PORT or PORT-PORT")],
    host: Annotated[str, typer.Option("--host", "-H", help="The host of a per-host reservation")] = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Lift reservations."""
    first, last = _span(ports)
    with connect(endpoints, timeout) as client:
        removed = client.ports.unreserve(first, last, host=host)
    emit(output, {"removed": removed}, f"removed {removed} reservation(s)")


@ports_app.command("list")
def list_(
    host: OptionalHost = "",
    service: Annotated[str, typer.Option("--service", "-s", help="Only this service")] = "",
    range_: Annotated[str, typer.Option("--range", "-r", help="Only this range")] = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Assignments and reservations."""
    with connect(endpoints, timeout) as client:
        result = client.ports.list(host=host, service=service, range=range_)
    text = _assignment_rows(result.assignments)
    if result.reservations:
        text += "\n\nreserved:\n" + table(
            [[r.host or "*", r.port, r.reason] for r in result.reservations], ["HOST", "PORT", "REASON"]
        )
    emit(output, plain(result), text)


@ports_app.command()
def history(
    service: str,
    after_revision: Annotated[int, typer.Option(help="Only changes after this revision")] = 0,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Every change to SERVICE's ports, oldest first."""
    with connect(endpoints, timeout) as client:
        result = client.ports.history(service, after_revision=after_revision)
    rows = [
        [
            e.revision,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time_unix_ms / 1000)),
            e.action.name.lower(),
            e.host,
            e.name,
            _port(e.old_port, e.protocol) if e.old_port else "-",
            _port(e.new_port, e.protocol) if e.new_port else "-",
            e.reason,
        ]
        for e in result.entries
    ]
    emit(output, plain(result), table(rows, ["REVISION", "TIME", "ACTION", "HOST", "NAME", "OLD", "NEW", "REASON"]))


@ports_app.command()
def observe(
    host: Host,
    ports: Annotated[
        list[str] | None,
        typer.Argument(help="Bound ports as PORT or PORT=HOLDER, PORT/udp for a UDP socket (the full set on the host)"),
    ] = None,
    udp: Annotated[
        bool,
        typer.Option(
            "--udp",
            help="The list holds every bound UDP socket too (by default it is complete for TCP only, and the "
            "leak repair never frees a UDP port on its word)",
        ),
    ] = False,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Report the ports actually bound on a host; prints the conflicts found there."""
    observed: list[tuple[int, str, str]] = []
    for item in ports or []:
        where, _, holder = item.partition("=")
        port, _, protocol = where.partition("/")
        if not port.isdigit() or protocol.lower() not in ("", "tcp", "udp"):
            fail(f"{item!r} is not PORT, PORT/udp or PORT=HOLDER", code=EXIT_USAGE)
        observed.append((int(port), holder, protocol or "tcp"))
    with connect(endpoints, timeout) as client:
        conflicts = client.ports.report_observed(host, observed, complete_for=("tcp", "udp") if udp else ())
    emit(output, plain(conflicts), _conflict_rows(conflicts))


@ports_app.command()
def conflicts(
    host: OptionalHost = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Ports bound by something other than their assignee, unassigned but bound, or services on the wrong port."""
    with connect(endpoints, timeout) as client:
        found = client.ports.conflicts(host=host)
    emit(output, plain(found), _conflict_rows(found))


@ports_app.command()
def resolve(
    host: OptionalHost = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the moves, change nothing")] = False,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Move managed services to free ports so no conflict remains that a move can fix."""
    with connect(endpoints, timeout) as client:
        result = client.ports.resolve_conflicts(host=host, dry_run=dry_run)
    moves = table(
        [
            [m.host, m.service, m.name, _port(m.old_port, m.protocol), _port(m.new_port, m.protocol), m.reason]
            for m in result.moves
        ],
        ["HOST", "SERVICE", "NAME", "OLD", "NEW", "REASON"],
    )
    text = ("would move:\n" if dry_run else "moved:\n") + moves
    if result.unresolved:
        text += "\n\nleft as they are:\n" + _conflict_rows(result.unresolved)
    emit(output, plain(result), text)


@ports_app.command()
def repair(
    passes: Annotated[int, typer.Option(help="Passes in a row a leak must be seen before it is freed")] = 0,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Run one leak-repair pass now (the leader runs them periodically too)."""
    with connect(endpoints, timeout) as client:
        result = client.ports.repair(passes_before_release=passes)
    text = f"{len(result.suspected)} suspected leak(s), {len(result.released)} released"
    if result.released:
        text += "\n" + _assignment_rows(result.released)
    emit(output, plain(result), text)


@ports_app.command()
def stats(
    host: OptionalHost = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Size, used, reserved, free and utilisation per range and host."""
    with connect(endpoints, timeout) as client:
        result = client.ports.stats(host=host)
    rows = [
        [r.range, r.host or "(all)", r.size, r.used, r.reserved, r.free, f"{r.utilisation:.1%}"] for r in result.ranges
    ]
    text = table(rows, ["RANGE", "HOST", "SIZE", "USED", "RESERVED", "FREE", "UTILISATION"])
    text += f"\n\n{result.assignments} assignment(s), {result.reservations} reservation(s), {result.hosts} host(s)"
    emit(output, plain(result), text)


@ports_app.command("export")
def export_(
    file: Annotated[Path | None, typer.Argument(help="Write the JSON document here (default: stdout)")] = None,
    endpoints: EndpointsOption = None,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Back up the whole port map as a JSON document."""
    with connect(endpoints, timeout) as client:
        document = client.ports.export()
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if file is None:
        sys.stdout.write(text)
    else:
        temporary = file.with_name(file.name + ".tmp")
        temporary.write_text(text)
        temporary.replace(file)
        typer.echo(f"exported {len(document.get('assignments', []))} assignment(s) to {file}", err=True)


@ports_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A document written by `cpctl ports export` (- for stdin)")],
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Replace the whole port map with a document: validated first, then applied all or nothing."""
    raw = read_input(file)
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as exc:
        fail(f"{file} is not JSON: {exc}", code=EXIT_USAGE)
    with connect(endpoints, timeout) as client:
        result = client.ports.import_(document)
    emit(
        output,
        plain(result),
        f"imported {result.assignments} assignment(s), {result.reservations} reservation(s), "
        f"{result.ranges} range(s), {result.services} service(s) at revision {result.revision}",
    )


# -------------------------------------------------------------------------------------- ranges


@ranges_app.command("list")
def ranges_list(
    endpoints: EndpointsOption = None, output: OutputOption = Output.text, timeout: TimeoutOption = 10.0
) -> None:
    """Every named range."""
    with connect(endpoints, timeout) as client:
        ranges = client.ports.ranges()
    emit(
        output,
        plain(ranges),
        table([[r.name, r.start, r.end, r.description] for r in ranges], ["NAME", "START", "END", "DESCRIPTION"]),
    )


@ranges_app.command("set")
def ranges_set(
    name: str,
    ports: Annotated[str, typer.Argument(help="PORT-PORT (inclusive)")],
    description: Annotated[str, typer.Option(help="What the range is for")] = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Create or change a range (`dynamic` is where allocations without a range go)."""
    first, last = _span(ports)
    with connect(endpoints, timeout) as client:
        result = client.ports.set_range(name, first, last or first, description=description)
    emit(output, plain(result), f"range {result.name}: {result.start}-{result.end}")


@ranges_app.command("delete")
def ranges_delete(
    name: str, endpoints: EndpointsOption = None, output: OutputOption = Output.text, timeout: TimeoutOption = 10.0
) -> None:
    """Delete a range that no assignment uses."""
    with connect(endpoints, timeout) as client:
        deleted = client.ports.delete_range(name)
    emit(output, {"deleted": deleted}, "deleted" if deleted else f"no range {name!r}")


# ------------------------------------------------------------------------------------ services


@services_app.command()
def register(
    file: Annotated[Path, typer.Argument(help="The manifest, YAML or JSON (- for stdin)")],
    host: Annotated[str, typer.Option("--host", "-H", help="Override the manifest's host")] = "",
    lease: Lease = 0,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Register a service from its manifest; every declared port is allocated in one step."""
    raw = read_input(file)
    try:
        manifest: Any = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        fail(f"{file} is not valid YAML: {exc}", code=EXIT_USAGE)
    if not isinstance(manifest, dict):
        fail(f"{file} must hold a mapping (name, host, ports, ...)", code=EXIT_USAGE)
    if host:
        manifest["host"] = host
    if lease:
        manifest["lease_id"] = lease
    with connect(endpoints, timeout) as client:
        record = client.services.register(manifest)
    emit(output, plain(record), f"{record.name} {record.version} on {record.host}\n" + _assignment_rows(record.ports))


@services_app.command()
def deregister(
    name: str,
    host: Host,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Remove a service instance and release its ports."""
    with connect(endpoints, timeout) as client:
        released = client.services.deregister(host, name)
    emit(output, plain(released), f"released {len(released)} port(s)")


@services_app.command("list")
def services_list(
    host: OptionalHost = "",
    name: Annotated[str, typer.Option("--name", "-n", help="Only this service")] = "",
    healthy: Annotated[bool, typer.Option("--healthy", help="Only instances passing or warning")] = False,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Registered services, their ports and their health."""
    with connect(endpoints, timeout) as client:
        records = client.services.list(host=host, name=name, healthy=healthy)
    rows = [
        [
            r.host,
            r.name,
            r.version,
            " ".join(f"{p.name}={_port(p.port, p.protocol)}" for p in r.ports),
            _health_word(r),
            r.manifest.get("health_check", {}).get("type", "-"),
        ]
        for r in records
    ]
    emit(output, plain(records), table(rows, ["HOST", "SERVICE", "VERSION", "PORTS", "HEALTH", "CHECK"]))


def _health_word(record: ServiceRecord) -> str:
    return record.health.status.name.lower() if record.health.status != HealthStatus.UNSPECIFIED else "unknown"


@services_app.command("show")
def services_show(
    name: str,
    host: OptionalHost = "",
    history: Annotated[int, typer.Option(help="How many of the newest history entries to show")] = 20,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """A service: each instance with its ports, check and health, and the newest history."""
    with connect(endpoints, timeout) as client:
        records = client.services.list(host=host, name=name)
        if not records:
            fail(f"no service {name!r}" + (f" on {host}" if host else ""))
        changes = client.ports.history(name)
    entries = [e for e in changes.entries if not host or e.host == host][-history:] if history > 0 else []
    lines = []
    for r in records:
        check = r.manifest.get("health_check") or {}
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.health.since_unix_ms / 1000))
        lines.append(f"{r.name} {r.version} on {r.host}: {_health_word(r)} since {since} UTC")
        lines.append("  ports: " + (" ".join(f"{p.name}={_port(p.port, p.protocol)}" for p in r.ports) or "-"))
        described = " ".join(f"{k}={v}" for k, v in sorted(check.items()))
        lines.append("  check: " + (described or "none (passing while its agent lives)"))
        if r.health.output:
            lines.append("  output: " + r.health.output.replace("\n", " ")[:300])
        if r.run.wanted or r.run.state:
            lines.append(
                f"  run: {'wanted' if r.run.wanted else 'not wanted'}, {r.run.state or 'not reported'}"
                f", restarts {r.run.restarts}"
                + (f", pid {r.run.pid}" if r.run.pid else "")
                + (f", last exit {r.run.last_exit_code}" if r.run.restarts else "")
            )
    lines.append("history:")
    lines.extend(
        f"  {e.revision:>8} {time.strftime('%H:%M:%S', time.gmtime(e.time_unix_ms / 1000))} "
        f"{e.action.name.lower():<20} {e.host} {e.name or '-'} {e.reason[:100]}"
        for e in entries
    )
    emit(output, {"instances": plain(records), "history": plain(entries)}, "\n".join(lines))


@services_app.command("start")
def services_start(
    name: str,
    node: Annotated[
        str,
        typer.Option(
            "--node", help="The node whose agent runs it (the instance's host); omit to let the cluster place it"
        ),
    ] = "",
    manifest_file: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help="Place this manifest (YAML or JSON, no host) on a node the cluster chooses, registering it there",
        ),
    ] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for its check to pass (0: do not wait)")] = 60.0,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Ask a node's agent to run a service from its manifest's run, and wait until its health check
    passes. Without --node the cluster places it: on a node whose live agent allows runs and has the
    manifest's capabilities and resources, whose ports are free (where it is registered already,
    then the node running the fewest services). A second start of a running instance reuses it."""
    if node and manifest_file is not None:
        fail("give --node (start it there) or --manifest (let the cluster place it), not both", code=EXIT_USAGE)
    manifest: Any = None
    if manifest_file is not None:
        try:
            manifest = yaml.safe_load(read_input(manifest_file))
        except yaml.YAMLError as exc:
            fail(f"{manifest_file} is not valid YAML: {exc}", code=EXIT_USAGE)
        if not isinstance(manifest, dict):
            fail(f"{manifest_file} must hold a mapping (name, ports, run, ...)", code=EXIT_USAGE)
        if manifest.get("host"):
            fail(
                f"{manifest_file} names host {manifest['host']!r}: placement chooses the node, so leave host out "
                f"(or run `cpctl services register {manifest_file}` and `cpctl services start {name} --node "
                f"{manifest['host']}`)",
                code=EXIT_USAGE,
            )
    placed = None
    with connect(endpoints, timeout) as client:
        if node:
            record = client.services.start(node, name)
        else:
            placed = client.services.place(name, manifest)
            record = placed.service
        host = record.host
        deadline = time.monotonic() + wait
        while wait and not record.health.healthy and time.monotonic() < deadline:
            time.sleep(0.2)  # the poll interval of a condition wait
            found = client.services.list(host=host, name=name)
            if not found:
                fail(f"{name} on {host} was deregistered while starting")
            record = found[0]
    word = _health_word(record)
    run = f"{record.run.state or 'starting'}, restarts {record.run.restarts}"
    where = f" (placed: {placed.placement})" if placed is not None else ""
    shown = (
        plain(record)
        if placed is None
        else {**plain(record), "existing": placed.existing, "placement": placed.placement}
    )
    emit(output, shown, f"{name} on {host}: {word} ({run}){where}")
    if wait and not record.health.healthy:
        fail(f"{name} on {host} is not passing after {wait:g}s: {record.health.output[:200]}")


@services_app.command("stop")
def services_stop(
    name: str,
    node: Annotated[str, typer.Option("--node", help="The instance's host")],
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Ask a node's agent to stop a service it runs (its registration and ports stay)."""
    with connect(endpoints, timeout) as client:
        record = client.services.stop(node, name)
    emit(output, plain(record), f"{name} on {node}: stop asked")


@services_app.command("report")
def services_report(
    name: str,
    host: Host,
    status: Annotated[str, typer.Argument(help="passing, warning or critical")] = "passing",
    message: Annotated[str, typer.Option("--message", "-m", help="The check's output")] = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Report a check's result (a ttl check's service passes it within its ttl_s)."""
    with connect(endpoints, timeout) as client:
        result = client.services.report_health(host, name, status, message)
    emit(output, plain(result), f"{name} on {host}: {result.status.name.lower()}")


# -------------------------------------------------------------------------------------- leases


@leases_app.command()
def grant(
    ttl: Annotated[float, typer.Argument(help="Seconds (1 to 86400)")],
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Grant a lease; print its id."""
    with connect(endpoints, timeout) as client:
        lease = client.leases.grant(ttl)
    emit(output, plain(lease), str(lease.id))


@leases_app.command()
def keepalive(
    lease_id: int,
    once: Annotated[
        bool, typer.Option("--once", help="Renew once and exit (default: keep renewing until Ctrl-C)")
    ] = False,
    endpoints: EndpointsOption = None,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Keep a lease alive (renewing at a third of its TTL) until interrupted."""
    with connect(endpoints, timeout) as client:
        while True:
            try:
                lease = client.leases.keep_alive(lease_id)
            except NotFound as exc:
                fail(exc.message)
            if once:
                typer.echo(f"lease {lease.id} renewed, TTL {lease.ttl_ms / 1000:g} s")
                return
            try:
                time.sleep(lease.ttl_ms / 3000)  # renewal pacing, a third of the TTL
            except KeyboardInterrupt:
                return


@leases_app.command()
def revoke(
    lease_id: int, endpoints: EndpointsOption = None, output: OutputOption = Output.text, timeout: TimeoutOption = 10.0
) -> None:
    """End a lease now, releasing every port it holds."""
    with connect(endpoints, timeout) as client:
        released = client.leases.revoke(lease_id)
    emit(output, {"released_ports": released}, f"revoked; released {released} port(s)")


@leases_app.command("list")
def leases_list(
    endpoints: EndpointsOption = None, output: OutputOption = Output.text, timeout: TimeoutOption = 10.0
) -> None:
    """Live leases."""
    with connect(endpoints, timeout) as client:
        leases = client.leases.list()
    rows = [[lease.id, f"{lease.ttl_ms / 1000:g}s", lease.attached_ports] for lease in leases]
    emit(output, plain(leases), table(rows, ["ID", "TTL", "PORTS"]))
