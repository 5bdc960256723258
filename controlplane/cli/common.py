"""What every client command shares: finding the cluster, connecting, and turning errors into exit codes."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from controlplane.cli.output import EXIT_ERROR, EXIT_UNAVAILABLE, EXIT_USAGE, Output, fail
from controlplane.client import Client, Credentials, CredentialsError, KeyValue
from controlplane.dev import MANIFEST_FILE
from controlplane.errors import ControlPlaneError, ControlPlaneWarning, DeadlineExceeded, InvalidArgument, Unavailable

SettingsT = TypeVar("SettingsT")

DEFAULT_ENDPOINTS = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"
#: A server's client port unless configured otherwise (`cpctl serve --client-address`): what an
#: endpoint given as a bare host means.
DEFAULT_CLIENT_PORT = 7101
#: How long a command waits for any endpoint to accept a TCP connection before it says nobody runs there.
REACH_TIMEOUT_S = 1.5

EndpointsOption = Annotated[
    str | None,
    typer.Option(
        "--endpoints",
        "-e",
        help="HOST:PORT[,HOST:PORT...] or a gateway URL http://HOST:PORT [CP_ENDPOINTS; else ./.data/cluster.json; "
        "else the `cpctl dev` defaults]",
    ),
]
OutputOption = Annotated[Output, typer.Option("--output", "-o", help="text or json")]
TimeoutOption = Annotated[float, typer.Option(help="Seconds before giving up (retries included)")]


#: The root options (`cpctl --cacert ... --context ... COMMAND`), set by the root callback.
GLOBAL_FLAGS: dict[str, Any] = {"credentials": Credentials(), "context": None}


#: What each extra of the package brings that its commands import (pyproject.toml's extras).
EXTRA_MODULES = {
    "server": (
        "pysyncobj",
        "aiosqlite",
        "cryptography",
        "numpy",
        "networkx",
        "httpx",
        "grpc_health",
        "grpc_reflection",
    ),
    "gateway": ("fastapi", "uvicorn", "jinja2", "httpx", "cryptography"),
    "agent": ("httpx", "grpc_health", "cryptography"),
}


def require_extra(extra: str, what: str, modules: tuple[str, ...] = ()) -> None:
    """Exit 2 naming the pip command when this install lacks what ``what`` needs (``modules``, by
    default all the extra brings): ``pip install controlplane`` is the SDK and the client commands
    only (docs/operations.md, Install)."""
    needed = modules or EXTRA_MODULES[extra]
    missing = [module for module in needed if importlib.util.find_spec(module) is None]
    if missing:
        fail(
            f"{what} needs {', '.join(missing)}, which this install lacks: pip install 'controlplane[{extra}]'",
            code=EXIT_USAGE,
        )


def _manifest() -> dict[str, Any]:
    """``./.data/cluster.json`` as `cpctl dev` wrote it, or nothing."""
    manifest = Path(".data") / MANIFEST_FILE
    if manifest.exists():
        with contextlib.suppress(ValueError, OSError):
            value = json.loads(manifest.read_text())
            if isinstance(value, dict):
                return value
    return {}


def _resolved(endpoints: str | None) -> tuple[str, Credentials]:
    """Endpoints and credentials: flags, else CP_* environment, else the client context, else the
    local `cpctl dev` manifest (whose admin credentials are used only with its endpoints)."""
    from controlplane.cli import contexts

    try:
        resolved = contexts.resolve(
            flags=GLOBAL_FLAGS["credentials"], endpoints_flag=endpoints, context_flag=GLOBAL_FLAGS["context"]
        )
    except contexts.ContextError as exc:
        fail(str(exc), code=EXIT_USAGE)
    value, credentials = resolved.endpoints, resolved.credentials
    if not value:
        manifest = _manifest()
        value = str(manifest.get("endpoints", ""))
        local = manifest.get("credentials") or {}
        if value and isinstance(local, dict):
            credentials = credentials.merged_over(
                Credentials(
                    ca=Path(local["ca"]) if local.get("ca") else None,
                    cert=Path(local["cert"]) if local.get("cert") else None,
                    key=Path(local["key"]) if local.get("key") else None,
                )
            )
    try:
        credentials.check()
    except CredentialsError as exc:
        fail(str(exc), code=EXIT_USAGE)
    return value, credentials


def client_credentials(endpoints: str | None = None, servers: str | None = None) -> Credentials:
    """The credentials a command uses (see ``_resolved``). ``servers``: the addresses the command
    will dial (say, learned from a gateway URL); when nothing else gave credentials and they are
    all the local `cpctl dev` cluster's, its admin credentials are used, as for its own endpoints."""
    credentials = _resolved(endpoints)[1]
    if servers and not (credentials.ca or credentials.cert or credentials.key or credentials.token):
        manifest = _manifest()
        local = manifest.get("credentials") or {}
        known = {e.strip() for e in str(manifest.get("endpoints", "")).split(",") if e.strip()}
        wanted = {e.strip() for e in servers.split(",") if e.strip()}
        if isinstance(local, dict) and local and wanted <= known:
            credentials = Credentials(
                ca=Path(local["ca"]) if local.get("ca") else None,
                cert=Path(local["cert"]) if local.get("cert") else None,
                key=Path(local["key"]) if local.get("key") else None,
            )
    return credentials


def resolve_endpoints(endpoints: str | None) -> str:
    """The servers' client addresses. A gateway URL (``http://HOST:PORT``) is asked for them."""
    value = _resolved(endpoints)[0]
    if value.startswith(("http://", "https://")):
        return _from_gateway(value, _resolved(endpoints)[1])
    return ",".join(with_default_port(e) for e in (value or DEFAULT_ENDPOINTS).split(",") if e.strip())


def with_default_port(endpoint: str) -> str:
    """``10.0.0.5`` -> ``10.0.0.5:7101`` (gRPC alone would dial port 443); ``[::1]`` -> ``[::1]:7101``."""
    endpoint = endpoint.strip()
    host_only = endpoint.endswith("]") or (":" not in endpoint) or (endpoint.count(":") > 1 and "[" not in endpoint)
    if not host_only:
        return endpoint
    if endpoint.count(":") > 1 and "[" not in endpoint:
        endpoint = f"[{endpoint}]"
    return f"{endpoint}:{DEFAULT_CLIENT_PORT}"


def _reachable(endpoints: str, timeout: float = REACH_TIMEOUT_S) -> bool:
    """Does any endpoint accept a TCP connection within ``timeout``? All are tried at once: a cluster
    that is not running answers in milliseconds (connection refused), not after the RPC retries."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    def one(endpoint: str) -> bool:
        host, _, port = endpoint.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return True
        except (OSError, ValueError):
            return False

    addresses = [e.strip() for e in endpoints.split(",") if e.strip()]
    with ThreadPoolExecutor(max_workers=max(1, len(addresses))) as pool:
        return any(pool.map(one, addresses))


def _from_gateway(url: str, credentials: Credentials) -> str:
    """Ask a gateway where the cluster is (``GET /v1/bootstrap``); then talk to the servers directly,
    so a command (or an agent) keeps working if the gateway goes away afterwards."""
    import asyncio

    from controlplane.client._discovery import check_gateway_url, discover_endpoints

    try:
        check_gateway_url(url)
    except InvalidArgument as exc:
        fail(exc.message, code=EXIT_USAGE)
    try:
        addresses = asyncio.run(discover_endpoints(url, credentials=credentials))
    except CredentialsError as exc:
        fail(exc.message, code=EXIT_USAGE)
    except ControlPlaneError as exc:  # the gateway's answer (a 400 from a proxy, say) included
        fail(f"cannot learn the servers from the gateway at {url}: {exc.message}", code=EXIT_UNAVAILABLE)
    return ",".join(addresses)


def require_reachable(resolved: str) -> None:
    """Fail at once (exit 3) when no endpoint accepts a connection, rather than after the RPC retries."""
    if not _reachable(resolved):
        fail(
            f"no server at {resolved} answered: is the cluster running? (`make run` or `cpctl dev` starts "
            "one here; elsewhere pass --endpoints or CP_ENDPOINTS)",
            code=EXIT_UNAVAILABLE,
        )


def unavailable_message(exc: ControlPlaneError, resolved: str, credentials: Credentials) -> str:
    """What to say when the cluster did not answer: the endpoints, the credentials, and the TLS hint."""
    hint = "" if credentials.secure else "; if the cluster serves TLS, pass --cacert (CP_CACERT) or a --context"
    return f"{exc.message} (endpoints: {resolved}; {credentials.describe()}{hint})"


@contextlib.contextmanager
def connect(endpoints: str | None, timeout: float) -> Iterator[Client]:
    """A client for the command, with every control-plane error turned into a message and exit code."""
    resolved = resolve_endpoints(endpoints)
    credentials = client_credentials(endpoints, servers=resolved)
    require_reachable(resolved)
    try:
        with Client(resolved, timeout=timeout, credentials=credentials) as client:
            yield client
    except CredentialsError as exc:
        fail(str(exc), code=EXIT_USAGE)
    except InvalidArgument as exc:
        fail(exc.message, code=EXIT_USAGE)
    except (Unavailable, DeadlineExceeded) as exc:
        fail(unavailable_message(exc, resolved, credentials), code=EXIT_UNAVAILABLE)
    except ControlPlaneError as exc:
        fail(f"{type(exc).__name__}: {exc.message}", code=EXIT_ERROR)


_default_show_warning = warnings.showwarning


def show_cluster_warnings() -> None:
    """Every command prints what the cluster flagged in an answer (ControlPlaneWarning, from any
    client the command uses, an agent's or a fetch's included) as ``warning: ...`` on stderr,
    each time; other warnings as Python shows them."""
    warnings.simplefilter("always", ControlPlaneWarning)
    warnings.showwarning = _show_warning


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    if issubclass(category, ControlPlaneWarning):
        # A daemon's logs (a server's are JSON lines): one line of them. Daemons import structlog
        # and configure it; a client command never imports it (a tenth of a second of its start).
        structlog = sys.modules.get("structlog")
        if structlog is not None and structlog.is_configured():
            structlog.get_logger("controlplane.cli").warning("cluster_warning", detail=str(message))
        else:
            print(f"warning: {message}", file=sys.stderr)
    else:
        _default_show_warning(message, category, *args, **kwargs)


def read_input(file: Path) -> str:
    """A file argument's text; ``-`` reads standard input. Unreadable: a usage error (exit 2)."""
    if str(file) == "-":
        return sys.stdin.read()
    try:
        return file.read_text()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}", code=EXIT_USAGE)


def kv_to_json(kv: KeyValue | None) -> dict[str, Any] | None:
    if kv is None:
        return None
    out: dict[str, Any] = {
        "key": kv.key,
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    }
    try:
        out["value"] = kv.value.decode("utf-8")
    except UnicodeDecodeError:
        out["value_base64"] = base64.b64encode(kv.value).decode("ascii")
    return out


def printable(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode("ascii")


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML file of this daemon's settings: the flags' names with underscores (not --endpoints or the TLS "
        "flags, which every command shares)",
    ),
]


def daemon_settings(
    ctx: typer.Context,
    cls: type[SettingsT],
    *,
    prefix: str,
    config_file: Path | None,
    other_variables: Callable[[SettingsT], Iterable[str]] = lambda _: (),
) -> SettingsT:
    """A daemon's settings (``controlplane/settings.py``): ``config_file`` < ``PREFIX<NAME>``
    variables < the flags given on the command line. Each setting is the flag of the same name; a
    flag left at its default hides neither the file nor the environment. Exits 2 naming the setting
    and its source when one is unknown or does not fit."""
    from controlplane import settings

    fields = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    # By the enum's name: typer carries its own copy of click, whose ParameterSource is not click's.
    given = {
        name: value
        for name, value in ctx.params.items()
        if name in fields and getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    }
    try:
        values = settings.load(
            cls,
            prefix=prefix,
            file_values=settings.read_file(config_file) if config_file is not None else {},
            file_name=str(config_file),
            environ=os.environ,
            flags=given,
        )
    except settings.SettingsError as exc:
        fail(f"cannot start: {exc.message}", code=EXIT_USAGE)
    result = cls(**values)
    # A misspelt variable (CP_AGENT_ID for CP_AGENT_NODE_ID) would be ignored without a word.
    known = {*settings.env_names(cls, prefix).values(), f"{prefix}ARGS", *other_variables(result)}
    stray = sorted(name for name in os.environ if name.startswith(prefix) and name not in known)
    if stray:
        typer.echo(
            f"WARNING: {', '.join(stray)} set no setting (they are {prefix}<NAME>, NAME a flag's name with "
            "underscores); ignored",
            err=True,
        )
    return result
