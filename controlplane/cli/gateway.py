"""`cpctl gateway`: run the stateless HTTP discovery gateway (gateway.app under uvicorn)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Annotated

import typer

from controlplane.cli import app
from controlplane.cli.common import (
    ConfigOption,
    EndpointsOption,
    client_credentials,
    daemon_settings,
    require_extra,
    resolve_endpoints,
)
from controlplane.cli.output import EXIT_USAGE, fail
from controlplane.state import limits
from gateway.defaults import DEFAULT_BODY_TIMEOUT_S, DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS
from gateway.formation import MAX_BOOTSTRAP_EXPECT

DEFAULT_TOKEN_ENV = "CP_GATEWAY_TOKEN"
#: ``CP_GATEWAY_`` + a setting's name in capitals: ``CP_GATEWAY_LISTEN``, ``CP_GATEWAY_MAX_BODY_KIB``.
ENV_PREFIX = "CP_GATEWAY_"


@dataclass(frozen=True)
class GatewayOptions:
    """``cpctl gateway``'s settings: each is the flag of the same name, ``CP_GATEWAY_<NAME>`` in the
    environment and ``name = value`` in ``--config`` (``controlplane/settings.py``). How the gateway
    reaches the servers (``--endpoints``, ``--cacert``...) is every command's, with its own variables."""

    listen: str = "127.0.0.1:8080"
    token_env: str = DEFAULT_TOKEN_ENV
    allow_unauthenticated: bool = False
    max_body_kib: int = 64
    bootstrap_expect: int | None = None
    peer: tuple[str, ...] = ()
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    tls_cert: str | None = None
    tls_key: str | None = None
    open_reads: bool = False
    access_log: bool = False
    log_level: str = "info"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_listen(listen: str) -> tuple[str, int]:
    problem = limits.check_address(listen, "--listen")
    if problem:
        fail(problem, code=EXIT_USAGE)
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


@app.command()
def gateway(
    ctx: typer.Context,
    config: ConfigOption = None,
    endpoints: EndpointsOption = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT to serve HTTP on")] = "127.0.0.1:8080",
    token_env: Annotated[
        str,
        typer.Option(help="Environment variable holding the bearer token that POST and DELETE require"),
    ] = DEFAULT_TOKEN_ENV,
    allow_unauthenticated: Annotated[
        bool,
        typer.Option(help="Serve changes without a token on a non-loopback address (never in production)"),
    ] = False,
    max_body_kib: Annotated[int, typer.Option(help="Largest request body accepted (413 beyond)", min=1)] = 64,
    bootstrap_expect: Annotated[
        int | None,
        typer.Option(
            help="Form a cluster of exactly this many servers started with --gateway (then --endpoints is not needed)",
            min=1,
            max=MAX_BOOTSTRAP_EXPECT,
        ),
    ] = None,
    peer: Annotated[
        list[str] | None,
        typer.Option(help="Another gateway's URL (repeat): candidacies are relayed between gateways"),
    ] = None,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a request's headers may take to arrive (408 and closed beyond)", min=0.001)
    ] = DEFAULT_HEADER_TIMEOUT_S,
    body_timeout: Annotated[
        float, typer.Option(help="Seconds a request body may take after its headers (408 beyond)", min=0.001)
    ] = DEFAULT_BODY_TIMEOUT_S,
    max_connections: Annotated[
        int, typer.Option(help="Connections served at once (503 beyond)", min=1)
    ] = DEFAULT_MAX_CONNECTIONS,
    tls_cert: Annotated[
        str | None, typer.Option(help="Serve HTTPS with this certificate (PEM; cpctl certs issue), with --tls-key")
    ] = None,
    tls_key: Annotated[str | None, typer.Option(help="The certificate's key (PEM, mode 0600)")] = None,
    open_reads: Annotated[
        bool,
        typer.Option(
            help="With a token: serve nodes, networks, ports, models and flags without it (discovery is always open)"
        ),
    ] = False,
    access_log: Annotated[bool, typer.Option(help="Log every request (costs throughput)")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Serve HTTP JSON discovery and bootstrap for the cluster: /v1/cluster, /v1/bootstrap, /v1/nodes, ...

    Stateless: run as many as you like, behind one name; a restart loses nothing. The token is read
    from the environment variable named by --token-env, never from a flag (flags show in `ps`).
    OpenAPI at /openapi.json, a docs page at /docs.
    """
    require_extra("gateway", "cpctl gateway")
    options = daemon_settings(
        ctx,
        GatewayOptions,
        prefix=ENV_PREFIX,
        config_file=config,
        other_variables=lambda options: (DEFAULT_TOKEN_ENV, options.token_env),
    )
    _check_ranges(options)
    listen, token_env, log_level = options.listen, options.token_env, options.log_level
    bootstrap_expect, tls_cert, tls_key = options.bootstrap_expect, options.tls_cert, options.tls_key
    host, port = _split_listen(listen)
    if bootstrap_expect is not None and not endpoints:
        servers: tuple[str, ...] = ()  # found through the servers' candidacies once they formed the cluster
    else:
        servers = tuple(dict.fromkeys(e.strip() for e in resolve_endpoints(endpoints).split(",") if e.strip()))
        if not servers:
            fail("--endpoints names no server (HOST:PORT[,HOST:PORT...])", code=EXIT_USAGE)
    peers = tuple(dict.fromkeys(p.strip().rstrip("/") for p in options.peer if p.strip()))
    for url in peers:
        if not url.startswith(("http://", "https://")):
            fail(f"--peer {url!r} must be a gateway URL (http://HOST:PORT)", code=EXIT_USAGE)
    token = os.environ.get(token_env) or None
    if token is None and not _is_loopback(host) and not options.allow_unauthenticated:
        fail(
            f"${token_env} is not set: refusing to accept unauthenticated changes on {listen}. "
            f"Set it (e.g. export {token_env}=$(openssl rand -hex 32)), listen on 127.0.0.1, "
            "or pass --allow-unauthenticated",
            code=EXIT_USAGE,
        )
    if (tls_cert is None) != (tls_key is None):
        fail("--tls-cert and --tls-key go together", code=EXIT_USAGE)
    if tls_key is not None:
        from pathlib import Path

        from controlplane.tls import TlsError, check_key_permissions

        try:
            check_key_permissions(Path(tls_key))
        except TlsError as exc:
            fail(str(exc), code=EXIT_USAGE)
    # Imported here: FastAPI and uvicorn are needed by this command only, not by every cpctl call.
    import ssl

    import uvicorn

    from gateway.app import GatewaySettings, configure_logging, create_app
    from gateway.slow_clients import ArrivalDeadlines

    configure_logging(log_level)
    settings = GatewaySettings(
        endpoints=servers,
        token=token,
        max_body_bytes=options.max_body_kib * 1024,
        bootstrap_expect=bootstrap_expect,
        peers=peers,
        open_reads=options.open_reads,
        # --cacert/--cert/--key/--token (or CP_*, or the context): how it reaches TLS client ports.
        credentials=client_credentials(endpoints),
    )
    server_config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=options.access_log,
        lifespan="on",
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
        http=ArrivalDeadlines.with_timeouts(options.header_timeout, options.body_timeout),
        limit_concurrency=options.max_connections,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        ssl_version=ssl.PROTOCOL_TLS_SERVER,
    )
    target = ",".join(servers) if servers else f"the cluster its {bootstrap_expect} founders form"
    scheme = "https" if tls_cert else "http"
    if scheme == "http" and not _is_loopback(host):
        typer.echo(
            f"WARNING: plain HTTP on {listen}: tokens and answers cross the network in clear; "
            "pass --tls-cert/--tls-key (cpctl certs issue NAME --role web --san HOST)",
            err=True,
        )
    typer.echo(f"gateway on {scheme}://{listen} for {target} (changes {'need a token' if token else 'open'})")
    uvicorn.Server(server_config).run()


def _check_ranges(options: GatewayOptions) -> None:
    """The bounds the flags enforce, for values from the file or the environment too."""
    problems = [
        options.max_body_kib < 1 and "max_body_kib must be at least 1",
        options.bootstrap_expect is not None
        and not 1 <= options.bootstrap_expect <= MAX_BOOTSTRAP_EXPECT
        and f"bootstrap_expect must be within 1-{MAX_BOOTSTRAP_EXPECT}",
        options.header_timeout < 0.001 and "header_timeout must be at least 0.001 s",
        options.body_timeout < 0.001 and "body_timeout must be at least 0.001 s",
        options.max_connections < 1 and "max_connections must be at least 1",
    ]
    for problem in problems:
        if problem:
            fail(f"cannot start: {problem}", code=EXIT_USAGE)
