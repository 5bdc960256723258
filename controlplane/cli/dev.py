"""`cpctl dev`: a local cluster of real server processes, until Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from controlplane.cli import app
from controlplane.cli.common import require_extra
from controlplane.cli.output import EXIT_ERROR, EXIT_UNAVAILABLE, EXIT_USAGE, fail
from controlplane.dev import MANIFEST_FILE, LocalCluster

if TYPE_CHECKING:
    from controlplane.client import Client

DEFAULT_BASE_PORT = 7100


@app.command()
def dev(
    servers: Annotated[int, typer.Option(min=1, max=9, help="How many servers")] = 3,
    data_dir: Annotated[Path, typer.Option(help="Data, logs and cluster.json go here")] = Path(".data"),
    base_port: Annotated[
        int, typer.Option(help="Client ports are BASE+1.., Raft BASE+101.., metrics BASE+201..")
    ] = DEFAULT_BASE_PORT,
    demo: Annotated[bool, typer.Option(help="Once up, show status, a write and a read back")] = False,
    insecure_dev: Annotated[
        bool, typer.Option("--insecure-dev", help="No TLS between the servers (by default a dev CA in DATA_DIR/pki)")
    ] = False,
) -> None:
    """Start SERVERS local servers on loopback and keep them running until Ctrl-C or SIGTERM.

    Writes DATA_DIR/cluster.json with every process's addresses (client commands run from the
    same directory read ./.data/cluster.json when --endpoints is not given). Data persists across
    runs in DATA_DIR.
    """
    require_extra("server", "cpctl dev")
    # Imported here: the server's modules are needed by this command only, not by every cpctl call.
    from controlplane.server.app import check_bindable
    from controlplane.server.config import ConfigError

    manifest_path = data_dir / MANIFEST_FILE
    if manifest_path.exists():
        previous = json.loads(manifest_path.read_text())
        if len(previous.get("servers", [])) != servers:
            fail(
                f"{data_dir} holds a {len(previous['servers'])}-server cluster; use --servers "
                f"{len(previous['servers'])} or another --data-dir"
            )
    cluster = LocalCluster(
        data_dir,
        servers=servers,
        base_port=base_port,
        insecure=insecure_dev,
        client_tls=not insecure_dev,
        die_with_parent=True,
    )
    if insecure_dev:
        typer.echo(
            "WARNING: --insecure-dev: no TLS on the Raft peer ports or the client ports, and every caller "
            "without credentials is treated as admin",
            err=True,
        )
    for node in cluster.nodes.values():
        for address, what in (
            (node.client_address, "client"),
            (node.raft_address, "raft"),
            (node.metrics_address, "metrics"),
        ):
            try:
                check_bindable(address, f"{node.id}'s {what} address")
            except ConfigError as exc:
                fail(f"{exc}: is another `cpctl dev` running? Stop it, or use another --base-port", code=EXIT_USAGE)
    stop = threading.Event()
    # Ctrl-C, kill, and the terminal closing (SIGHUP) all stop every server.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    supervisor = Supervisor(cluster)
    cluster.start()
    try:
        typer.echo(f"starting {servers} servers (logs in {data_dir}/n*.log)...")
        try:
            leader = cluster.wait_for_leader(timeout=30.0)
        except (TimeoutError, RuntimeError) as exc:
            fail(f"the cluster did not come up: {exc}", code=EXIT_UNAVAILABLE)
        typer.echo(f"cluster up; leader {leader}; manifest {manifest_path}\n")
        for node in cluster.nodes.values():
            typer.echo(
                f"  {node.id}  client {node.client_address}  raft {node.raft_address}  "
                f"metrics http://{node.metrics_address}/metrics  pid {node.pid}"
            )
        typer.echo(f"\n  endpoints: {cluster.endpoints}")
        if not insecure_dev:
            typer.echo(f"  TLS: peer plane and client ports, dev CA and certificates in {cluster.pki_dir}")
            _print_client_access(cluster)
        if demo:
            _demo(cluster)
        typer.echo("\nrunning; a server that dies is restarted; Ctrl-C stops every server")
        while not stop.wait(0.5):
            supervisor.check()
            if not any(node.running for node in cluster.nodes.values()) and not supervisor.pending:
                typer.echo("every server has stopped; see the logs above", err=True)
                break
    finally:
        # `make run | tee log` then Ctrl-C: tee is gone, so printing can fail; stopping must not.
        with contextlib.suppress(OSError):
            typer.echo("stopping...")
        cluster.stop()
        with contextlib.suppress(OSError):
            typer.echo("stopped")
    if supervisor.gave_up:
        raise typer.Exit(EXIT_ERROR)


#: Restarts of one server within RESTART_WINDOW_S before `cpctl dev` gives up on it.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


class Supervisor:
    """Keeps the dev servers running: one that dies (kill -9, a crash) is restarted after a backoff
    (1, 2, 4 ... s), and given up on after MAX_RESTARTS within a minute. One that stopped itself
    because it was removed from the cluster, or that refuses to start, is reported with its log and
    left stopped: restarting it cannot help, and the others keep serving."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.restarts: dict[str, list[float]] = {}
        self.due: dict[str, float] = {}
        self.left_alone: set[str] = set()
        self.gave_up: set[str] = set()

    @property
    def pending(self) -> bool:
        return bool(self.due)

    def check(self) -> None:
        import time

        now = time.monotonic()
        for node in self.cluster.nodes.values():
            if node.running or node.id in self.left_alone or node.process is None:
                continue
            if node.id in self.due:
                if now >= self.due[node.id]:
                    del self.due[node.id]
                    typer.echo(f"restarting {node.id}...", err=True)
                    self.cluster.restart(node.id)
                continue
            code = node.process.returncode
            why = _why_stopped(node.log_path)
            if why is not None:
                self.left_alone.add(node.id)
                typer.echo(f"{node.id} {why} (its log: {node.log_path}); the others keep running", err=True)
                continue
            recent = [t for t in self.restarts.get(node.id, []) if now - t < RESTART_WINDOW_S]
            if len(recent) >= MAX_RESTARTS:
                self.left_alone.add(node.id)
                self.gave_up.add(node.id)
                typer.echo(
                    f"{node.id} died {len(recent)} times within a minute; not restarting it again "
                    f"(its log: {node.log_path})",
                    err=True,
                )
                continue
            recent.append(now)
            self.restarts[node.id] = recent
            delay = min(30.0, 2.0 ** (len(recent) - 1))
            exit_text = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            typer.echo(
                f"{node.id} died ({exit_text}; its log: {node.log_path}); restarting it in {delay:g} s", err=True
            )
            self.due[node.id] = now + delay


def _why_stopped(log_path: Path) -> str | None:
    """Why a server stopped for good, from the end of its log: removed from the cluster, or refusing
    to start (with the fix); None for a death a restart can mend."""
    try:
        with open(log_path, "rb") as log:
            log.seek(0, 2)
            log.seek(max(0, log.tell() - 8192))
            tail = log.read().decode(errors="replace")
    except OSError:
        return None
    last = tail.strip().splitlines()[-1] if tail.strip() else ""
    if "stopped:" in last:
        return f"stopped itself: {last.split('stopped:', 1)[1].strip()}"
    if "cannot start:" in last:
        return (
            f"refuses to start: {last.split('cannot start:', 1)[1].strip()} "
            "(to start the dev cluster over: stop it, rm -rf its --data-dir)"
        )
    return None


def _print_client_access(cluster: LocalCluster) -> None:
    """Where the admin credential is and the exact commands that reach the cluster with it."""
    config = cluster.write_client_config()
    creds = cluster.credentials
    typer.echo(f"  admin credential (client:admin): certificate {_abs(creds.cert)}, key {_abs(creds.key)} (mode 0600)")
    typer.echo(f"  client context 'dev' written to {config}; reach the cluster with:\n")
    typer.echo(f"    export CP_CONFIG={config}")
    typer.echo("    cpctl cluster status")
    typer.echo(
        f"\n  or with flags: cpctl --cacert {_abs(creds.ca)} --cert {_abs(creds.cert)} --key {_abs(creds.key)} "
        f"kv get demo/hello --endpoints {cluster.endpoints}"
    )
    if cluster.data_dir == Path(".data"):
        typer.echo(
            f"  (client commands run from {Path.cwd()} need none of this: they read the endpoints and these "
            "credentials from ./.data/cluster.json)"
        )


def _abs(path: Path | None) -> str:
    return str(path.absolute()) if path is not None else ""


def _demo(cluster: LocalCluster) -> None:
    from controlplane.client import ControlPlaneError

    with cluster.client() as client:
        written = client.put("demo/hello", b"world")
        typer.echo(f"\n$ cpctl kv put demo/hello world    -> revision {written.revision}")
        kv = client.get("demo/hello")
        value = kv.value.decode() if kv else None
        typer.echo(f"$ cpctl kv get demo/hello          -> {value} (linearizable read)")
        allocated = client.ports.allocate("demo-host", "demo-api", "http")
        typer.echo(
            f"$ cpctl ports allocate demo-api -H demo-host -n http -> port {allocated.assignment.port} "
            f"(range {allocated.assignment.range})"
        )
        # Membership: an agent joins a network and a client is placed on it, then the agent leaves
        # cleanly (a real one: `cpctl agent --id NAME --join demo-net`, in another terminal).
        try:
            _demo_membership(client)
        except ControlPlaneError as exc:  # e.g. the data dir already holds another network
            typer.echo(f"(membership demo skipped: {exc.message})")
        status = client.status()
        typer.echo(
            f"$ cpctl cluster status             -> leader {status.leader_id}, term {status.term}, "
            f"revision {status.applied_revision}, members "
            + ", ".join(f"{m.id}({'up' if m.healthy else 'down'})" for m in status.members)
            + f"; journal {status.durability}, peers {status.peer_security}"
        )


def _demo_membership(client: Client) -> None:
    """An agent joins a network and a client is placed on it, then the agent leaves cleanly (a real
    agent: `cpctl agent --id NAME --join demo-net`, in another terminal)."""
    client.membership.register_node("demo-agent", capabilities=["gpu"], ttl_s=30)
    client.membership.heartbeat("demo-agent")
    client.membership.create_network("demo-net", "demo-model", 8)
    client.membership.join("demo-net", node_id="demo-agent")
    placed = client.membership.assign("demo-client", "demo-model")
    served_by = placed.placement.node_id if placed.placement else "-"
    typer.echo(f"$ cpctl networks assign demo-client --model demo-model -> demo-net, served by {served_by}")
    views = client.membership.nodes()
    roles = ", ".join(f"{v.node.spec.id}({v.raft_role or v.node.state.name.lower()})" for v in views)
    typer.echo(f"$ cpctl nodes list                 -> {roles}")
    left = client.membership.deregister("demo-agent")
    typer.echo(
        f"$ cpctl nodes deregister demo-agent -> left; {len(left.unplaced)} client(s) without a place "
        "(no other member serves demo-model)"
    )
