"""`cpctl nodes`, `cpctl networks`, `cpctl flags` and `cpctl agent`: network membership."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from controlplane import __version__, agent_metrics
from controlplane.agent import FINAL_REGISTRATION_ERRORS, Agent
from controlplane.checks import HealthChecker
from controlplane.cli import app
from controlplane.cli.common import (
    ConfigOption,
    EndpointsOption,
    OutputOption,
    TimeoutOption,
    client_credentials,
    connect,
    daemon_settings,
    require_extra,
    resolve_endpoints,
)
from controlplane.cli.output import EXIT_ERROR, EXIT_USAGE, Output, emit, fail, plain, table
from controlplane.client import (
    AsyncClient,
    ControlPlaneError,
    Credentials,
    CredentialsError,
    Moves,
    Network,
    NodeState,
    NodeView,
)
from controlplane.state import health, limits
from controlplane.supervisor import Supervisor
from gossip.artifacts import ArtifactServer, ArtifactStore, ClusterAccess, announce, tls_credentials

nodes_app = typer.Typer(help="Servers and agents: the unified node view.", no_args_is_help=True)
networks_app = typer.Typer(help="Networks, their members and client places.", no_args_is_help=True)
flags_app = typer.Typer(help="Cluster-wide feature flags.", no_args_is_help=True)
app.add_typer(nodes_app, name="nodes")
app.add_typer(networks_app, name="networks")
app.add_typer(flags_app, name="flags")


def _pairs(items: list[str] | None, option: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"{option} takes KEY=VALUE, not {item!r}", code=EXIT_USAGE)
        out[key] = value
    return out


def _ago(unix_ms: int) -> str:
    if not unix_ms:
        return "-"
    seconds = max(0.0, time.time() - unix_ms / 1000)
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


def _node_rows(views: tuple[NodeView, ...]) -> str:
    rows = [
        [
            v.node.spec.id,
            v.node.spec.role.name.lower(),
            v.node.state.name.lower(),
            v.raft_role or "-",
            v.connectivity.name.lower(),
            v.node.activity or "-",
            _ago(v.last_heartbeat_unix_ms),
            ",".join(v.networks) or "-",
            v.clients_served,
        ]
        for v in views
    ]
    return table(rows, ["ID", "ROLE", "STATE", "RAFT", "CONNECTIVITY", "ACTIVITY", "HEARD", "NETWORKS", "CLIENTS"])


@nodes_app.command("list")
def nodes_list(
    role: Annotated[str | None, typer.Option(help="server or agent")] = None,
    state: Annotated[str | None, typer.Option(help="joining, active, leaving, left or dead")] = None,
    label: Annotated[list[str] | None, typer.Option(help="KEY=VALUE; every one must match (repeat)")] = None,
    network: Annotated[str, typer.Option(help="Only members of this network")] = "",
    capability: Annotated[str, typer.Option(help="Only nodes with this capability")] = "",
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include left and dead nodes")] = False,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Every node: membership state, Raft role, gossip activity and connectivity in one view."""
    with connect(endpoints, timeout) as client:
        views = client.membership.nodes(
            role=role,
            state=state,
            labels=_pairs(label, "--label"),
            network=network,
            capability=capability,
            include_gone=all_,
        )
    emit(output, plain(views), _node_rows(views))


@nodes_app.command("show")
def nodes_show(
    node_id: str,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """One node in detail."""
    with connect(endpoints, timeout) as client:
        view = client.membership.get_node(node_id)
    spec, record = view.node.spec, view.node
    lines = [
        f"{spec.id}: {spec.role.name.lower()}, {record.state.name.lower()}"
        + (f" ({record.reason})" if record.reason else ""),
        f"raft: {view.raft_role or '-'}{' (voter)' if view.voter else ''}",
        f"connectivity: {view.connectivity.name.lower()}, last heartbeat {_ago(view.last_heartbeat_unix_ms)} ago"
        + (f", TTL {view.lease_ttl_ms / 1000:.0f}s" if view.lease_ttl_ms else ""),
        f"activity: {record.activity or '-'}",
        f"addresses: {', '.join(f'{k}={v}' for k, v in sorted(spec.addresses.items())) or '-'}",
        f"capabilities: {', '.join(spec.capabilities) or '-'}",
        f"labels: {', '.join(f'{k}={v}' for k, v in sorted(spec.labels.items())) or '-'}",
        f"networks: {', '.join(view.networks) or '-'}; clients served: {view.clients_served}",
        f"incarnation {record.incarnation}, version {spec.version or '-'}",
    ]
    if spec.resources is not None and (spec.resources.gpus or spec.resources.memory_bytes or spec.resources.cpu_millis):
        res = spec.resources
        lines.append(f"resources: {res.gpus} GPU, {res.memory_bytes / 2**30:.1f} GiB, {res.cpu_millis / 1000:g} CPU")
    emit(output, plain(view), "\n".join(lines))


@nodes_app.command("drain")
def nodes_drain(
    node_id: str,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Stop giving NODE_ID new clients and move the ones it serves."""
    with connect(endpoints, timeout) as client:
        moves = client.membership.drain(node_id)
    emit(output, plain(moves), f"{node_id} draining; " + _moves_text(moves))


@nodes_app.command("deregister")
def nodes_deregister(
    node_id: str,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Deregister NODE_ID as if it had stopped cleanly."""
    with connect(endpoints, timeout) as client:
        moves = client.membership.deregister(node_id)
    text = f"{node_id} left; " + _moves_text(moves) if moves.changed else f"{node_id} was already gone"
    emit(output, plain(moves), text)


@nodes_app.command("forget")
def nodes_forget(
    node_id: str,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Drop a left or dead node's record."""
    with connect(endpoints, timeout) as client:
        forgotten = client.membership.forget(node_id)
    emit(output, {"forgotten": forgotten}, f"{node_id} forgotten" if forgotten else f"no node {node_id}")


def _moves_text(moves: Moves) -> str:
    parts = [f"{len(moves.moved)} client(s) moved"]
    if moves.unplaced:
        parts.append(f"{len(moves.unplaced)} left without a place: {', '.join(moves.unplaced)}")
    return "; ".join(parts)


def _network_line(network: Network) -> str:
    return (
        f"{network.name}: model {network.model}, {network.clients}/{network.max_clients} clients, "
        f"priority {network.priority}, {network.active_members}/{len(network.members)} active member(s)"
    )


@networks_app.command("create")
def networks_create(
    name: str,
    model: Annotated[str, typer.Option(help="The registry model it serves (NAME, NAME@VERSION or NAME@ALIAS)")],
    max_clients: Annotated[int, typer.Option(help="Client places")],
    priority: Annotated[int, typer.Option(help="Higher wins when assigning clients")] = 0,
    label: Annotated[list[str] | None, typer.Option(help="KEY=VALUE (repeat)")] = None,
    require: Annotated[list[str] | None, typer.Option(help="A capability members must have (repeat)")] = None,
    description: str = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Create a network serving a model."""
    with connect(endpoints, timeout) as client:
        network = client.membership.create_network(
            name,
            model,
            max_clients,
            priority=priority,
            labels=_pairs(label, "--label"),
            required_capabilities=require or (),
            description=description,
        )
    emit(output, plain(network), _network_line(network))


@networks_app.command("update")
def networks_update(
    name: str,
    model: Annotated[str | None, typer.Option(help="A new model reference")] = None,
    max_clients: Annotated[int | None, typer.Option(help="A new capacity")] = None,
    priority: Annotated[int | None, typer.Option(help="A new priority")] = None,
    label: Annotated[list[str] | None, typer.Option(help="KEY=VALUE; replaces all labels (repeat)")] = None,
    require: Annotated[list[str] | None, typer.Option(help="Replaces the required capabilities (repeat)")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Change the fields given."""
    with connect(endpoints, timeout) as client:
        network = client.membership.update_network(
            name,
            model=model,
            max_clients=max_clients,
            priority=priority,
            labels=_pairs(label, "--label") if label is not None else None,
            required_capabilities=require,
            description=description,
        )
    emit(output, plain(network), _network_line(network))


@networks_app.command("delete")
def networks_delete(
    name: str,
    force: Annotated[bool, typer.Option(help="Even with members or clients (its clients move elsewhere)")] = False,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Delete a network."""
    with connect(endpoints, timeout) as client:
        moves = client.membership.delete_network(name, force=force)
    text = f"{name} deleted; " + _moves_text(moves) if moves.changed else f"no network {name}"
    emit(output, plain(moves), text)


@networks_app.command("join")
def networks_join(
    network: str,
    node: Annotated[str, typer.Option(help="A registered node joining as a member (it serves the network)")] = "",
    client_id: Annotated[str, typer.Option("--client", help="A client taking one of the network's places")] = "",
    lease: Annotated[int, typer.Option(help="For a client that is not a node: the lease its place hangs on")] = 0,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Join NETWORK as a member (--node) or take a client place (--client)."""
    with connect(endpoints, timeout) as client:
        result = client.membership.join(network, node_id=node, client_id=client_id, lease_id=lease)
    again = " (already)" if result.existing else ""
    if result.placement is not None:
        text = f"{client_id} placed in {network}, served by {result.placement.node_id}{again}"
    else:
        text = f"{node} is a member of {network}{again}"
    emit(output, plain(result), text)


@networks_app.command("leave")
def networks_leave(
    network: str,
    node: Annotated[str, typer.Option(help="A member leaving (its clients move)")] = "",
    client_id: Annotated[str, typer.Option("--client", help="A client giving up its place")] = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Leave NETWORK as a member (--node) or give up a client place (--client)."""
    with connect(endpoints, timeout) as client:
        moves = client.membership.leave(network, node_id=node, client_id=client_id)
    who = node or client_id
    text = f"{who} left {network}; " + _moves_text(moves) if moves.changed else f"{who} was not in {network}"
    emit(output, plain(moves), text)


@networks_app.command("assign")
def networks_assign(
    client_id: Annotated[str, typer.Argument(metavar="CLIENT")],
    model: Annotated[str, typer.Option(help="The model the client needs")],
    lease: Annotated[int, typer.Option(help="For a client that is not a node: the lease its place hangs on")] = 0,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Put CLIENT on the best network for a model (priority, then load, then free places)."""
    with connect(endpoints, timeout) as client:
        result = client.membership.assign(client_id, model, lease_id=lease)
    assert result.placement is not None
    again = " (already)" if result.existing else ""
    text = f"{client_id} -> {result.placement.network}, served by {result.placement.node_id}{again}"
    emit(output, plain(result), text)


@networks_app.command("list")
def networks_list(
    model: Annotated[str, typer.Option(help="Only networks serving this model")] = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Every network with its capacity and members."""
    with connect(endpoints, timeout) as client:
        networks = client.membership.networks(model=model)
    rows = [
        [n.name, n.model, f"{n.clients}/{n.max_clients}", n.priority, ",".join(n.members) or "-", n.active_members]
        for n in networks
    ]
    emit(output, plain(networks), table(rows, ["NAME", "MODEL", "CLIENTS", "PRIORITY", "MEMBERS", "ACTIVE"]))


@networks_app.command("show")
def networks_show(
    name: str,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """A network and every client placed in it."""
    with connect(endpoints, timeout) as client:
        detail = client.membership.get_network(name)
    rows = [[p.client_id, p.node_id, p.model or "-", p.lease_id or "-"] for p in detail.placements]
    text = _network_line(detail.network) + "\n\n" + table(rows, ["CLIENT", "SERVED BY", "MODEL", "LEASE"])
    emit(output, plain(detail), text)


@networks_app.command("unplaced")
def networks_unplaced(
    network: Annotated[str, typer.Option(help="Only the clients unplaced from this network")] = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Clients the cluster took a place from and could not place again, with why (newest first)."""
    with connect(endpoints, timeout) as client:
        waiting = client.membership.unplaced(network=network)
    rows = [[u.client_id, u.network, u.node_id or "-", _ago(u.unplaced_unix_ms), u.reason] for u in waiting]
    text = table(rows, ["CLIENT", "WAS IN", "SERVED BY", "AGO", "WHY"]) if rows else "no unplaced client"
    emit(output, plain(waiting), text)


_ON = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}


@flags_app.command("set")
def flags_set(
    name: str,
    value: Annotated[str, typer.Argument(help="on or off")],
    description: Annotated[str, typer.Option(help="What the flag does")] = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Turn a cluster-wide flag on or off."""
    if value.lower() not in _ON:
        fail(f"VALUE must be on or off, not {value!r}", code=EXIT_USAGE)
    with connect(endpoints, timeout) as client:
        flag = client.membership.set_flag(name, _ON[value.lower()], description=description)
    emit(output, plain(flag), f"{flag.name} {'on' if flag.enabled else 'off'}")


@flags_app.command("list")
def flags_list(
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Every flag, with its default when never set."""
    with connect(endpoints, timeout) as client:
        flags = client.membership.flags()
    rows = [[f.name, "on" if f.enabled else "off", "" if f.set else "(default)", f.description] for f in flags]
    emit(output, plain(flags), table(rows, ["FLAG", "VALUE", "", "DESCRIPTION"]))


#: ``CP_AGENT_`` + a setting's name in capitals: ``CP_AGENT_TTL``, ``CP_AGENT_CAPABILITY``.
AGENT_ENV_PREFIX = "CP_AGENT_"


@dataclass(frozen=True)
class AgentOptions:
    """``cpctl agent``'s settings: each is the flag of the same name (``node_id`` is ``--id``),
    ``CP_AGENT_<NAME>`` in the environment (lists: whitespace between the items) and
    ``name = value`` in ``--config`` (``controlplane/settings.py``). How the agent reaches the
    servers (``--endpoints``, ``--cacert``...) is every command's, with its own variables."""

    node_id: str = ""
    ttl: float = 10.0
    address: tuple[str, ...] = ()
    capability: tuple[str, ...] = ()
    gpus: int = 0
    memory_gib: float = 0.0
    cpus: float = 0.0
    label: tuple[str, ...] = ()
    join: tuple[str, ...] = ()
    artifact_dir: Path | None = None
    gossip_listen: str = "127.0.0.1:0"
    gossip_advertise: str = ""
    checks: bool = True
    allow_exec_checks: bool = False
    check_address: str = "127.0.0.1"
    allow_run: bool = False
    insecure_dev: bool = False
    instance_id: str = ""
    metrics_address: str = ""


@app.command()
def agent(
    ctx: typer.Context,
    config: ConfigOption = None,
    node_id: Annotated[str, typer.Option("--id", help="This agent's node id [default: the host name]")] = "",
    ttl: Annotated[float, typer.Option(help="Liveness TTL in seconds (heartbeats every third of it)")] = 10.0,
    address: Annotated[list[str] | None, typer.Option(help="PURPOSE=HOST:PORT, e.g. gossip=10.0.0.5:7300")] = None,
    capability: Annotated[list[str] | None, typer.Option(help="e.g. gpu (repeat)")] = None,
    gpus: Annotated[int, typer.Option(help="GPUs this machine offers")] = 0,
    memory_gib: Annotated[float, typer.Option(help="Memory this machine offers, GiB")] = 0.0,
    cpus: Annotated[float, typer.Option(help="CPU cores this machine offers")] = 0.0,
    label: Annotated[list[str] | None, typer.Option(help="KEY=VALUE (repeat)")] = None,
    join: Annotated[list[str] | None, typer.Option(help="A network to join as a member once active (repeat)")] = None,
    artifact_dir: Annotated[
        Path | None,
        typer.Option(help="Serve the model artifacts in this store on the gossip port (see cpctl models publish)"),
    ] = None,
    gossip_listen: Annotated[
        str, typer.Option(help="HOST:PORT the gossip port binds (port 0: any free port) [with --artifact-dir]")
    ] = "127.0.0.1:0",
    gossip_advertise: Annotated[
        str, typer.Option(help="HOST:PORT other nodes dial [default: the address bound]; registered as 'gossip'")
    ] = "",
    checks: Annotated[
        bool, typer.Option(help="Run the health checks of the services registered on this node (host = --id)")
    ] = True,
    allow_exec_checks: Annotated[
        bool,
        typer.Option(help="Run exec health checks (commands from service manifests); registers capability exec-checks"),
    ] = False,
    check_address: Annotated[str, typer.Option(help="The address http, tcp and grpc checks probe")] = "127.0.0.1",
    allow_run: Annotated[
        bool,
        typer.Option(
            help="Start services on demand from their manifests' run (cpctl services start); capability run-services"
        ),
    ] = False,
    insecure_dev: Annotated[
        bool,
        typer.Option(
            "--insecure-dev",
            help="Without TLS credentials, serve the artifacts in clear to anyone who can connect (local experiments)",
        ),
    ] = False,
    instance_id: Annotated[
        str,
        typer.Option(
            help="This process's claim on --id [default: random]. While a node is live the cluster refuses "
            "another instance's registration; a stable value (a systemd unit's machine id) lets a restarted "
            "agent take its node back at once. Sent hashed, never as given"
        ),
    ] = "",
    metrics_address: Annotated[
        str,
        typer.Option(
            help="Serve Prometheus metrics (lease, heartbeats, checks, supervised services) on HOST:PORT "
            "(port 0: any free port) [default: off]",
        ),
    ] = "",
    endpoints: EndpointsOption = None,
) -> None:
    """Run an agent: register, keep its lease alive, deregister on Ctrl-C or SIGTERM.

    A second agent started with the --id of a running one is refused and exits with status 1, naming
    when the running one's lease expires; the running one keeps it.

    It runs the health checks of the services registered with host = its node id and sends the
    cluster only the changes of their status (--no-checks: none).

    With --artifact-dir it also serves the artifacts in that store on its gossip port, registers that
    port under the purpose "gossip", and records itself as a replica of every artifact in the store
    the registry knows with the same sha256. The port serves mutual TLS with the agent's own
    certificate (--cacert/--cert/--key naming agent:ID): agents and servers may download, and users
    who hold models:read on the model (asked of the cluster). Without TLS credentials it refuses to
    serve unless --insecure-dev.
    """
    require_extra("agent", "cpctl agent")
    options = daemon_settings(ctx, AgentOptions, prefix=AGENT_ENV_PREFIX, config_file=config)
    ttl, gossip_listen, gossip_advertise = options.ttl, options.gossip_listen, options.gossip_advertise
    artifact_dir, instance_id, metrics_address = options.artifact_dir, options.instance_id, options.metrics_address
    allow_exec_checks, allow_run, checks = options.allow_exec_checks, options.allow_run, options.checks
    if ttl <= 0 or options.gpus < 0 or options.memory_gib < 0 or options.cpus < 0:
        fail("cannot start: ttl must be above 0, and gpus, memory_gib and cpus at least 0", code=EXIT_USAGE)
    agent_id = options.node_id or socket.gethostname().split(".")[0]
    if problem := limits.check_text(instance_id, "--instance-id", 64):
        fail(problem, code=EXIT_USAGE)
    addresses = _pairs(list(options.address), "--address")
    if artifact_dir is not None:
        if "gossip" in addresses:
            fail("give the gossip address once: --gossip-advertise HOST:PORT, not --address gossip=...", EXIT_USAGE)
        host, _, port = gossip_listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            fail(f"--gossip-listen {gossip_listen!r} is not HOST:PORT (port 0: any free port)", code=EXIT_USAGE)
        if not gossip_advertise and host in ("0.0.0.0", "[::]", "::"):
            fail(
                f"--gossip-listen {gossip_listen} binds every interface: give --gossip-advertise HOST:PORT, "
                "the address other nodes dial",
                code=EXIT_USAGE,
            )
        if gossip_advertise and (problem := limits.check_address(gossip_advertise, "--gossip-advertise")):
            fail(problem, code=EXIT_USAGE)
    servers = resolve_endpoints(endpoints)
    credentials = client_credentials(endpoints, servers=servers)
    pems = _artifact_tls(credentials, agent_id, options.insecure_dev) if artifact_dir is not None else None
    runner = Agent(
        AsyncClient(servers, timeout=max(5.0, ttl / 3), credentials=credentials),
        agent_id,
        ttl_s=ttl,
        addresses=addresses,
        capabilities=[
            *options.capability,
            *([health.EXEC_CAPABILITY] if allow_exec_checks else []),
            *([health.RUN_CAPABILITY] if allow_run else []),
        ],
        gpus=options.gpus,
        memory_bytes=int(options.memory_gib * 2**30),
        cpu_millis=int(options.cpus * 1000),
        labels=_pairs(list(options.label), "--label"),
        version=__version__,
        instance_id=_instance_claim(instance_id) if instance_id else uuid.uuid4().hex,
    )
    artifacts = None
    if artifact_dir is not None:
        server_credentials = tls_credentials(*pems)[0] if pems is not None else None
        artifacts = ArtifactServer(
            ArtifactStore(artifact_dir),
            node_id=agent_id,
            on_damaged=runner.artifact_damaged,
            server_credentials=server_credentials,
            access=ClusterAccess(runner.client) if server_credentials is not None else None,
        )
    if allow_run and not checks:
        fail("--allow-run needs the checks (a started service is followed by its health check)", code=EXIT_USAGE)
    supervisor = Supervisor(runner.client, agent_id) if allow_run else None
    checker = (
        HealthChecker(
            runner.client, agent_id, address=options.check_address, allow_exec=allow_exec_checks, supervisor=supervisor
        )
        if checks
        else None
    )
    if metrics_address:
        try:
            metrics_host, metrics_port = agent_metrics.serve(metrics_address)
        except (OSError, ValueError) as exc:
            fail(f"cannot serve metrics on {metrics_address}: {exc}", code=EXIT_USAGE)
        typer.echo(f"agent {agent_id} metrics at http://{metrics_host}:{metrics_port}/metrics")
    asyncio.run(_run_agent(runner, list(options.join), artifacts, gossip_listen, gossip_advertise, checker))


def _instance_claim(value: str) -> str:
    """What the cluster records for ``--instance-id VALUE``: a hash, as systemd derives an
    application-specific id from the machine id (which must not be shown to others, machine-id(5));
    the node's record is readable by anyone who may list nodes."""
    return hashlib.sha256(f"controlplane-agent-instance:{value}".encode()).hexdigest()[:32]


def _artifact_tls(credentials: Credentials, agent_id: str, insecure_dev: bool) -> tuple[bytes, bytes, bytes] | None:
    """(CA, certificate, key) PEM bytes for the artifact port: the agent's own cluster credentials,
    which must name agent:<its id>. None (plaintext) only with --insecure-dev and no credentials."""
    if credentials.ca is None or credentials.cert is None or credentials.key is None:
        if not insecure_dev:
            fail(
                "serving artifacts needs TLS: run the agent with its own certificate (cpctl certs issue "
                f"{agent_id} --role agent --san ADDRESS_IT_IS_DIALED_AT, then --cacert ca.pem --cert "
                f"agent-{agent_id}.pem --key agent-{agent_id}-key.pem), or --insecure-dev to serve them in clear "
                "to anyone on a trusted network",
                code=EXIT_USAGE,
            )
        typer.echo(
            "WARNING: --insecure-dev: this agent serves its model artifacts WITHOUT TLS to anyone who can reach "
            "its gossip port: no authentication, no permission check. Local experiments only.",
            err=True,
        )
        return None
    from controlplane import tls  # cryptography: only for an agent serving artifacts over TLS

    try:
        credentials.check()
        named = tls.describe(credentials.cert)["identity"]
        pems = (credentials.ca.read_bytes(), credentials.cert.read_bytes(), credentials.key.read_bytes())
    except (CredentialsError, tls.TlsError, OSError, ValueError) as exc:
        fail(f"cannot serve artifacts over TLS: {exc}", code=EXIT_USAGE)
    if named != {"role": "agent", "id": agent_id}:
        who = f"{named['role']}:{named['id']}" if named else "no controlplane identity"
        fail(
            f"the certificate {credentials.cert} names {who}, but the artifact port of agent {agent_id} presents "
            f"agent:{agent_id} (fetchers and peers check it): cpctl certs issue {agent_id} --role agent "
            "--san ADDRESS_IT_IS_DIALED_AT, and run the agent with that pair (--cert, --key)",
            code=EXIT_USAGE,
        )
    return pems


async def _run_agent(
    runner: Agent,
    networks: list[str],
    artifacts: ArtifactServer | None,
    listen: str,
    advertise: str,
    checker: HealthChecker | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with runner.client:
        if artifacts is not None:
            # Bound before registering: the address registered is one that already answers.
            try:
                await artifacts.start(listen)
            except (OSError, RuntimeError) as exc:
                fail(f"cannot serve artifacts on {listen}: {exc}", code=EXIT_USAGE)
            runner.addresses["gossip"] = advertise or artifacts.address
        try:
            # Registration retries until the cluster answers; a stop signal meanwhile ends the agent
            # (deregistering what it registered, when its first renewal was in flight).
            starting = asyncio.create_task(runner.start())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
                if runner.registered:  # stopped during its first renewal: leave what it registered
                    await _leave_quietly(runner)
                    if runner.state is NodeState.LEFT:
                        typer.echo(f"agent {runner.node_id} stopped while starting; deregistered")
                    else:
                        typer.echo(
                            f"agent {runner.node_id} stopped while starting; could not deregister, "
                            f"it expires in {runner.ttl_s:g}s"
                        )
                else:
                    typer.echo(f"agent {runner.node_id} stopped before it could register")
                return
            try:
                starting.result()
            except FINAL_REGISTRATION_ERRORS as exc:
                # Nothing was registered by this process: nothing to deregister, and the agent that
                # holds the id keeps its lease.
                fail(f"agent {runner.node_id} not started: {exc.message}", code=EXIT_ERROR)
            if runner.displaced is not None:  # its first renewal found the id taken over
                fail(f"agent {runner.node_id} stopped: {runner.displaced.message}", code=EXIT_ERROR)
            for network in networks:
                try:
                    await runner.client.membership.join(network, node_id=runner.node_id)
                except ControlPlaneError as exc:
                    # Asked for at start: an agent that cannot be where it was told to be leaves
                    # rather than run half-placed (the client already retried what can be retried).
                    await _leave_quietly(runner)
                    if runner.displaced is not None:  # the renewals found the id taken over meanwhile
                        fail(f"agent {runner.node_id} stopped: {runner.displaced.message}", code=EXIT_ERROR)
                    fail(f"agent {runner.node_id} could not join network {network}: {exc.message}", code=EXIT_ERROR)
            typer.echo(
                f"agent {runner.node_id} registered ({runner.state.name.lower()}), heartbeat every "
                f"{runner.ttl_s / 3:.1f}s; Ctrl-C to leave"
            )
            if artifacts is not None:
                await _announce(runner, artifacts)
            if checker is not None:
                await _start_checks(checker)
            stopping = asyncio.create_task(stop.wait())
            ended = asyncio.create_task(runner.wait_ended())
            await asyncio.wait({stopping, ended}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            ended.cancel()
            if checker is not None:
                await checker.stop()
            try:
                # Not once displaced (stop() checks, also for a displacement found while it waits):
                # the id, and its lease, belong to the other agent now.
                await runner.stop(deregister=True)
            except ControlPlaneError as exc:
                # Its lease will expire on its own: the cluster marks it dead after the TTL.
                typer.echo(
                    f"agent {runner.node_id} could not deregister ({exc.message}); it expires in {runner.ttl_s:g}s"
                )
            else:
                if runner.displaced is not None:
                    fail(f"agent {runner.node_id} stopped: {runner.displaced.message}", code=EXIT_ERROR)
                typer.echo(f"agent {runner.node_id} deregistered")
        finally:
            if artifacts is not None:
                # After deregistering: fetchers skip a left node, so nothing new starts; a second of
                # grace lets transfers in flight finish.
                await artifacts.stop(1.0)


async def _leave_quietly(runner: Agent) -> None:
    """Stop and deregister (unless displaced meanwhile); if the cluster cannot be told, the lease
    expires on its own after the TTL."""
    with contextlib.suppress(ControlPlaneError):
        await runner.stop(deregister=True)


async def _start_checks(checker: HealthChecker) -> None:
    """Start the checks; a cluster that cannot answer now is asked again on the next refresh."""
    try:
        await checker.start()
    except ControlPlaneError as exc:
        typer.echo(f"agent {checker.node_id} could not read its services yet ({exc.message}); retrying")
        checker.start_refreshing()
    typer.echo(f"agent {checker.node_id} checks {len(checker.status())} service instance(s)")


async def _announce(runner: Agent, artifacts: ArtifactServer) -> None:
    try:
        outcome = await announce(runner.client, artifacts.store, runner.node_id)
    except ControlPlaneError as exc:
        # Serving still works for fetchers that find this node some other way; say why and go on.
        typer.echo(f"agent {runner.node_id} could not record its artifacts as replicas ({exc.message})")
        outcome = {}
    recorded = sum(1 for what in outcome.values() if what in ("recorded", "already recorded"))
    skipped = [
        f"{m} v{v}: {what}" for (m, v), what in sorted(outcome.items()) if what not in ("recorded", "already recorded")
    ]
    typer.echo(
        f"serving artifacts from {artifacts.store.root} on {runner.addresses['gossip']}: "
        f"{recorded} replica(s) recorded" + (f"; not recorded: {', '.join(skipped)}" if skipped else "")
    )
