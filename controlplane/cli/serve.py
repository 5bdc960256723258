"""`cpctl serve`: run one server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from controlplane.cli import app
from controlplane.cli.common import require_extra
from controlplane.cli.output import EXIT_ERROR, EXIT_USAGE, YesOption, confirm, fail
from controlplane.server.config import ConfigError, ServerConfig, load_config
from gateway.formation import MAX_BOOTSTRAP_EXPECT

#: The gateways to form or join through (``--gateway``), and the variable holding their token.
GATEWAYS_ENV = "CP_GATEWAY"
GATEWAY_TOKEN_ENV = "CP_GATEWAY_TOKEN"


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file")] = None,
    node_id: Annotated[str | None, typer.Option(help="This server's id [CP_NODE_ID]")] = None,
    client_address: Annotated[str | None, typer.Option(help="gRPC API HOST:PORT [CP_CLIENT_ADDRESS]")] = None,
    advertise_client_address: Annotated[
        str | None,
        typer.Option(help="HOST:PORT others dial, if client-address is 0.0.0.0 [CP_ADVERTISE_CLIENT_ADDRESS]"),
    ] = None,
    raft_address: Annotated[str | None, typer.Option(help="Raft peer HOST:PORT [CP_RAFT_ADDRESS]")] = None,
    metrics_address: Annotated[
        str | None, typer.Option(help="Prometheus HOST:PORT, empty to disable [CP_METRICS_ADDRESS]")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Raft journal and dump [CP_DATA_DIR]")] = None,
    peer: Annotated[
        list[str] | None,
        typer.Option(help="Another server, ID=RAFT_HOST:PORT,CLIENT_HOST:PORT (repeat) [CP_PEERS]"),
    ] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="Cluster CA (or CA bundle) file [CP_TLS_CA]")] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="This server's certificate (cpctl certs issue ID --role server) [CP_TLS_CERT]")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="This server's key, mode 0600 [CP_TLS_KEY]")] = None,
    durability: Annotated[
        str | None,
        typer.Option(help='"fsync" (default) or "none": never fsync the journal (throwaway clusters) [CP_DURABILITY]'),
    ] = None,
    insecure_dev: Annotated[
        bool,
        typer.Option("--insecure-dev", help="Run the Raft peer plane without TLS (local experiments only)"),
    ] = False,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning [CP_LOG_LEVEL]")] = None,
    gateway: Annotated[
        str | None,
        typer.Option(
            "--gateway",
            help="Gateway URL(s), comma-separated, instead of --peer: join the cluster they know, or with "
            "--bootstrap-expect form it [CP_GATEWAY]",
        ),
    ] = None,
    bootstrap_expect: Annotated[
        int | None,
        typer.Option(
            help="With --gateway: form a cluster of exactly this many servers when none exists (start exactly "
            "this many with the same value; the gateways must run with the same --bootstrap-expect)",
            min=1,
            max=MAX_BOOTSTRAP_EXPECT,
        ),
    ] = None,
    gateway_token_env: Annotated[
        str, typer.Option(help="Environment variable holding the gateway's bearer token")
    ] = GATEWAY_TOKEN_ENV,
    join: Annotated[
        bool,
        typer.Option(
            "--join",
            help="Join a running cluster (--peer: its current members) as a learner; the leader promotes it "
            "to voter after `cpctl cluster members add` once it has caught up",
        ),
    ] = False,
    force_new_cluster: Annotated[
        bool,
        typer.Option(
            "--force-new-cluster",
            help="Lost quorum: make this (stopped) server's data dir a one-voter cluster of its own, keeping "
            'its state, then run it; add new servers under new ids (docs/operations.md, "Lost quorum")',
        ),
    ] = False,
    apply_level: Annotated[
        int | None,
        typer.Option(
            help="Report at most this cluster level, holding the cluster below later features (0: all this "
            "release applies) [CP_APPLY_LEVEL]",
            min=0,
        ),
    ] = None,
    yes: YesOption = False,
) -> None:
    """Run a server: Raft voter (or learner, with --join), gRPC API and Prometheus metrics.

    Settings come from --config, then CP_* environment variables, then these flags (highest).
    The peer plane runs mutual TLS: --tls-ca, --tls-cert and --tls-key name files (a key is never
    passed as a value); make them with `cpctl certs`.

    Exit status: 0 when stopped by SIGTERM/SIGINT; 2 when the configuration cannot work, the data
    directory belongs to a server removed from its cluster, or --force-new-cluster is refused (another
    server of the old cluster still runs, or not confirmed); 1 when the server stopped itself because
    it learned it was removed.
    """
    require_extra("server", "cpctl serve")
    overrides = {
        "node_id": node_id,
        "client_address": client_address,
        "advertise_client_address": advertise_client_address,
        "raft_address": raft_address,
        "metrics_address": metrics_address,
        "data_dir": data_dir,
        "peers": peer or None,
        "tls_ca": tls_ca,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "durability": durability,
        "insecure_dev": insecure_dev or None,
        "log_level": log_level,
        "join": join or None,
        "apply_level": apply_level,
    }
    from controlplane.server import logs
    from controlplane.server.app import run_on_loop
    from controlplane.server.app import serve as run_server
    from controlplane.server.bootstrap import serve_via_gateway
    from controlplane.server.own_membership import stop_reason

    gateways = [g.strip() for g in (gateway or os.environ.get(GATEWAYS_ENV, "")).split(",") if g.strip()]
    try:
        server_config = load_config(config, overrides)
        if force_new_cluster:
            _force_new_cluster(server_config, gateways, yes)
        if gateways:
            token = os.environ.get(gateway_token_env) or None
            # JSON from the first line (the server's own configuration replaces this one once it runs).
            logs.configure(server_config.node_id, server_config.log_level, lambda: {"role": "bootstrap"}, final=False)
            run_on_loop(server_config, serve_via_gateway(server_config, gateways, expect=bootstrap_expect, token=token))
        elif bootstrap_expect is not None:
            raise ConfigError("--bootstrap-expect needs --gateway (the gateways carry the votes)")
        else:
            run_on_loop(server_config, run_server(server_config))
    except ConfigError as exc:
        fail(f"cannot start: {exc}", code=EXIT_USAGE)
    reason = stop_reason()
    if reason:
        # The server stopped itself (it was removed): a supervisor must not treat that as a clean exit.
        fail(f"stopped: {reason}", code=EXIT_ERROR)


def _force_new_cluster(server_config: ServerConfig, gateways: list[str], yes: bool) -> None:
    """Rewrite the data dir into a one-voter cluster (recovery.py) after an explicit confirmation."""
    from controlplane.server.recovery import force_new_cluster

    if gateways:
        raise ConfigError(
            "--force-new-cluster runs without --gateway: start the survivor with its usual flags minus --gateway"
        )
    confirm(
        yes,
        f"make {server_config.node_id} ({server_config.data_dir}) the only voter of a NEW cluster, with its own "
        "state? Only when a majority of the servers is gone for good: the old members are removed for ever",
    )
    from controlplane.server import logs

    # JSON from the first line, like the server's own (role and term come once Raft runs).
    logs.configure(server_config.node_id, server_config.log_level, lambda: {"role": "recovery"})
    forced = force_new_cluster(server_config)
    typer.echo(
        f"FORCED A NEW CLUSTER: {server_config.node_id} is now its only voter, at log index {forced.last_index}; "
        f"old voters removed: {', '.join(forced.old_voters) or 'none'}. Add new servers under new ids "
        "(cpctl serve --join ..., then cpctl cluster members add).",
        err=True,
    )
