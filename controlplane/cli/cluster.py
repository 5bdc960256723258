"""`cpctl cluster`: status, membership, leadership, backups."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from controlplane.cli import app
from controlplane.cli.common import EndpointsOption, OutputOption, TimeoutOption, client_credentials, connect
from controlplane.cli.health import DEFAULT_MAX_APPLY_LAG, judge
from controlplane.cli.output import EXIT_ERROR, EXIT_USAGE, Output, YesOption, confirm, emit, emit_json, fail
from controlplane.client import ClusterStatus, Member

cluster_app = typer.Typer(help="Cluster status, membership, leadership and backups.", no_args_is_help=True)
members_app = typer.Typer(
    help="Raft members - voters and learners: list, add, remove (one change at a time).", no_args_is_help=True
)
snapshot_app = typer.Typer(help="Backups of the replicated state.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
cluster_app.add_typer(members_app, name="members")
cluster_app.add_typer(snapshot_app, name="snapshot")


def _member_json(member: Member) -> dict[str, object]:
    out = dataclasses.asdict(member)
    out["role"] = member.role.name
    return out


def _emit_members(members: tuple[Member, ...] | list[Member], output: Output) -> None:
    if output is Output.json:
        emit_json([_member_json(member) for member in members])
    else:
        _print_members(members)


def _print_members(members: tuple[Member, ...] | list[Member]) -> None:
    # VOTE: "voter" counts towards quorum; "learner" was admitted and is catching up (the leader
    # promotes it once it has stayed caught up for server_stabilization_s).
    typer.echo(f"{'ID':<8} {'VOTE':<8} {'ROLE':<10} {'HEALTHY':<8} {'CLIENT':<22} RAFT")
    for member in members:
        # An SDK older than the server shows a learner's role as UNKNOWN: voter=False says it all.
        role = member.role.name.lower() if member.voter else "learner"
        typer.echo(
            f"{member.id or '?':<8} {'voter' if member.voter else 'learner':<8} {role:<10} "
            f"{'yes' if member.healthy else 'NO':<8} {member.client_address:<22} {member.raft_address}"
        )


def _status_json(current: ClusterStatus) -> dict[str, object]:
    out = dataclasses.asdict(current)
    out["role"] = current.role.name
    out["members"] = [_member_json(member) for member in current.members]
    return out


def _views_json(views: dict[str, ClusterStatus | str]) -> dict[str, object]:
    return {m: _status_json(v) if isinstance(v, ClusterStatus) else {"error": v} for m, v in views.items()}


def _every_view(endpoints: str | None, timeout: float) -> dict[str, ClusterStatus | str]:
    """Each member's own Status (asked directly, all at once), or why it did not answer."""
    from concurrent.futures import ThreadPoolExecutor

    from controlplane.client import Client
    from controlplane.errors import ControlPlaneError

    with connect(endpoints, timeout) as client:
        first: ClusterStatus = client.status()
    credentials = client_credentials(endpoints, servers=",".join(m.client_address for m in first.members))

    def ask(address: str) -> ClusterStatus | str:
        if not address:
            return "it has no client address yet"
        try:
            with Client(address, timeout=timeout, credentials=credentials) as one:
                return one.status()
        except ControlPlaneError as exc:
            return f"{type(exc).__name__}: {exc.message}"

    members = sorted(first.members, key=lambda member: member.id)
    with ThreadPoolExecutor(max_workers=max(1, len(members))) as pool:
        answers = list(pool.map(lambda member: ask(member.client_address), members))
    return {member.id: answer for member, answer in zip(members, answers, strict=True)}


@cluster_app.command()
def health(
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 3.0,
    max_apply_lag: Annotated[
        int, typer.Option(help="Entries a server may trail the commit index and still count as caught up", min=0)
    ] = DEFAULT_MAX_APPLY_LAG,
) -> None:
    """Ask every member; exit 0 when the cluster is healthy, 1 with the reasons when it is not.

    Healthy: every member answers, one leader and term agreed, the leader has quorum and sees every
    member healthy, every server ready and caught up. Warnings (no fsync, no peer TLS, mixed
    versions, a membership change in flight) are printed but do not fail the check.
    """
    views = _every_view(endpoints, timeout)
    verdict = judge(views, max_apply_lag)
    if output is Output.json:
        emit_json(
            {
                "healthy": verdict.healthy,
                "problems": verdict.problems,
                "warnings": verdict.warnings,
                "servers": _views_json(views),
            }
        )
    else:
        for warning in verdict.warnings:
            typer.echo(f"WARNING: {warning}", err=True)
        if verdict.healthy:
            typer.echo(f"healthy: {len(views)} servers answer, one leader, every member caught up")
        else:
            typer.echo("UNHEALTHY:")
            for problem in verdict.problems:
                typer.echo(f"  - {problem}")
    if not verdict.healthy:
        raise typer.Exit(EXIT_ERROR)


@cluster_app.command()
def status(
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 5.0,
    every_server: Annotated[
        bool, typer.Option("--all", help="Every server's own view (role, term, indexes, version), one per line")
    ] = False,
) -> None:
    """The answering server's view: role, leader, term, indexes, members and their health."""
    if every_server:
        _status_all(endpoints, output, timeout)
        return
    with connect(endpoints, timeout) as client:
        current: ClusterStatus = client.status()
    if output is Output.json:
        emit_json(_status_json(current))
        return
    me = next((member for member in current.members if member.id == current.node_id), None)
    role = "learner" if me is not None and not me.voter else current.role.name.lower()
    typer.echo(
        f"node {current.node_id} ({role}), leader {current.leader_id or 'none'} "
        f"at {current.leader_address or '-'}, term {current.term}, quorum {'yes' if current.has_quorum else 'NO'}"
    )
    typer.echo(
        f"commit index {current.commit_index}, applied index {current.applied_index}, "
        f"revision {current.applied_revision}, watch history from revision {current.oldest_revision}"
    )
    typer.echo(
        f"durability {current.durability or '?'}, peer plane {current.peer_security or '?'}, "
        f"cluster level {current.cluster_level} (this server applies up to {current.apply_level})"
    )
    if current.durability == "none":
        typer.echo(
            "WARNING: this server never fsyncs its Raft journal: acknowledged writes survive kill -9, not a power cut",
            err=True,
        )
    if current.peer_security == "insecure":
        typer.echo("WARNING: this server's Raft peer port runs without TLS (--insecure-dev)", err=True)
    _print_members(current.members)


def _status_all(endpoints: str | None, output: Output, timeout: float) -> None:
    views = _every_view(endpoints, timeout)
    if output is Output.json:
        emit_json(_views_json(views))
        return
    typer.echo(
        f"{'ID':<8} {'ROLE':<10} {'LEADER':<8} {'TERM':>5} {'COMMIT':>8} {'APPLIED':>8} {'READY':<6} "
        f"{'LEVEL':<6} {'APPLIES':<7} VERSION"
    )
    for member, view in views.items():
        if isinstance(view, ClusterStatus):
            typer.echo(
                f"{member:<8} {view.role.name.lower():<10} {view.leader_id or '-':<8} {view.term:>5} "
                f"{view.commit_index:>8} {view.applied_index:>8} {'yes' if view.ready else 'NO':<6} "
                f"{view.cluster_level:<6} {view.apply_level:<7} {view.version}"
            )
        else:
            typer.echo(f"{member:<8} NOT ANSWERING: {view}")


@members_app.command("list")
def members_list(
    endpoints: EndpointsOption = None, output: OutputOption = Output.text, timeout: TimeoutOption = 5.0
) -> None:
    """List the Raft members: voters and learners."""
    with connect(endpoints, timeout) as client:
        current = client.status()
    _emit_members(current.members, output)


@members_app.command("add")
def members_add(
    member_id: Annotated[str, typer.Argument(metavar="ID")],
    raft_address: Annotated[str, typer.Option(help="The new server's Raft HOST:PORT")],
    client_address: Annotated[str, typer.Option(help="The new server's gRPC HOST:PORT")],
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Admit a running server (started with --join and the current members as --peer) as a learner.

    The leader promotes it to voter once it has caught up and stayed so for server_stabilization_s
    (`cpctl cluster status` shows VOTE learner until then).
    """
    with connect(endpoints, timeout) as client:
        members = client.add_member(member_id, raft_address, client_address)
    _emit_members(members, output)


@members_app.command("remove")
def members_remove(
    member_id: Annotated[str, typer.Argument(metavar="ID")],
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 30.0,
    yes: YesOption = False,
) -> None:
    """Remove a voter or learner. It stops itself once it learns of it; its id may never rejoin."""
    with connect(endpoints, timeout) as client:
        current = client.status()
        if not any(member.id == member_id for member in current.members):
            fail(f"{member_id} is not a member (members: {', '.join(m.id for m in current.members)})", code=EXIT_USAGE)
        confirm(
            yes,
            f"remove {member_id} from the cluster led by {current.leader_id or '?'} "
            f"({len(current.members)} members)? The server stops and its id can never rejoin",
        )
        members = client.remove_member(member_id)
    _emit_members(members, output)


@cluster_app.command("transfer-leader")
def transfer_leader(
    target: Annotated[str, typer.Argument(help="Member id (empty: the most caught-up follower)")] = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 15.0,
) -> None:
    """Hand leadership to TARGET and wait until it leads."""
    with connect(endpoints, timeout) as client:
        leader_id, term = client.transfer_leadership(target)
    emit(output, {"leader_id": leader_id, "term": term}, f"leader is now {leader_id} (term {term})")


@snapshot_app.command("save")
def snapshot_save(
    file: Path,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 60.0,
) -> None:
    """Write a consistent backup of the replicated state to FILE (verified by sha256)."""
    with connect(endpoints, timeout) as client:
        info = client.snapshot(file)
    emit(
        output,
        dataclasses.asdict(info),
        f"saved revision {info.revision} ({info.size} bytes, sha256 {info.sha256}) to {file}",
    )


@snapshot_app.command("restore")
def snapshot_restore(
    file: Path,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 60.0,
    yes: YesOption = False,
    with_auth: Annotated[
        bool,
        typer.Option(
            "--with-auth",
            help="also bring back the backup's users, roles and tokens (disaster recovery into a new cluster); "
            "tokens revoked here stay revoked, and auth stays enabled or disabled as it is here",
        ),
    ] = False,
) -> None:
    """Replace the cluster's data with the backup in FILE, atomically, through the Raft log.

    Users, roles and tokens stay this cluster's unless --with-auth is given."""
    if not file.is_file():
        fail(f"{file}: no such backup file", code=EXIT_USAGE)
    if with_auth:
        # Every server applies the restore; one from before --with-auth would restore the data only,
        # and its users and tokens would then differ from the others'.
        views = _every_view(endpoints, timeout)
        silent = sorted(member for member, view in views.items() if not isinstance(view, ClusterStatus))
        versions = {view.version for view in views.values() if isinstance(view, ClusterStatus)}
        if silent or len(versions) > 1:
            why = f"{', '.join(silent)} did not answer" if silent else f"the servers run {', '.join(sorted(versions))}"
            fail(
                f"--with-auth needs every server answering and on one version ({why}): a server from before "
                "--with-auth would restore the data only. Finish the upgrade or bring the servers back "
                "(cpctl cluster status --all), then restore",
                code=EXIT_ERROR,
            )
    with connect(endpoints, timeout) as client:
        current = client.status()
        replaced = "ALL the state, users, roles and tokens included," if with_auth else "ALL the state"
        confirm(
            yes,
            f"replace {replaced} of the cluster led by {current.leader_id or '?'} at "
            f"{current.leader_address or '?'} (revision {current.applied_revision}) with {file}? "
            "Every change since that backup is lost",
        )
        revision = client.restore(file, include_auth=with_auth)
    emit(
        output,
        {"revision": revision, "auth_restored": with_auth},
        f"restored{' with its users, roles and tokens' if with_auth else ''}; the state is at revision {revision}",
    )
