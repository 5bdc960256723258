"""`cpctl`: the daemons (serve, dev) and the client commands, one module per command group."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

# Before anything imports grpc, which reads it once: gRPC's C core otherwise writes INFO lines of
# its own (a refused TLS handshake, say), in its own format, into the servers' JSON logs. Its errors
# still show. Set GRPC_VERBOSITY yourself (INFO, DEBUG) to see everything.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import typer

app = typer.Typer(
    name="cpctl",
    help="Raft-replicated control plane: run servers, and read and write the cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


#: The module that registers each top-level command. A command named on the command line loads
#: its module alone: every server start (and every client command) would otherwise wait for all
#: the others' imports and typer's building of their options, about 0.3 s of CPU. A name missing
#: here is never loaded: tests/test_cli_startup.py checks the table against the modules.
COMMAND_MODULES = {  # loaded in this order for `cpctl --help`, as before the table
    "certs": "certs",
    "cluster": "cluster",
    "context": "contexts",
    "dev": "dev",
    "gateway": "gateway",
    "gossip": "gossip",
    "kv": "kv",
    "agent": "membership",
    "nodes": "membership",
    "networks": "membership",
    "flags": "membership",
    "models": "models",
    "ports": "ports",
    "services": "ports",
    "leases": "ports",
    "serve": "serve",
    "auth": "auth",
    "audit": "auth",
    "users": "auth",
    "roles": "auth",
    "tokens": "auth",
}
#: The root options that take a value (the command name follows it).
_ROOT_VALUE_OPTIONS = frozenset({"--cacert", "--cert", "--key", "--token", "--context"})


def _command_name(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (after the root options), or None (also after ``--help``: the
    root's help lists every command)."""
    args = iter(argv)
    for arg in args:
        if arg in _ROOT_VALUE_OPTIONS:
            next(args, None)
        elif arg == "--help":
            return None
        elif not arg.startswith("-"):
            return arg
    return None


def load_commands(command: str | None = None) -> None:
    """Import the module that registers ``command``, or every command module when it is None or
    unknown (command groups register themselves on import: all of them keep `cpctl --help` whole)."""
    alone = COMMAND_MODULES.get(command or "")
    for module in [alone] if alone is not None else dict.fromkeys(COMMAND_MODULES.values()):
        importlib.import_module(f"controlplane.cli.{module}")


def main() -> None:
    load_commands(_command_name(sys.argv[1:]))
    from controlplane.cli.common import show_cluster_warnings

    show_cluster_warnings()
    app()


def _print_version(value: bool) -> None:
    if value:
        from controlplane import __version__

        typer.echo(f"cpctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    cacert: Annotated[
        Path | None, typer.Option("--cacert", help="The cluster CA (ca.pem): talk TLS [CP_CACERT; else the context]")
    ] = None,
    cert: Annotated[Path | None, typer.Option("--cert", help="Client certificate [CP_CERT; else the context]")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="The certificate's key [CP_KEY; else the context]")] = None,
    token: Annotated[str | None, typer.Option("--token", help="Bearer token [CP_TOKEN; else the context]")] = None,
    context: Annotated[
        str | None, typer.Option("--context", help="Client context [CP_CONTEXT; else current_context in CP_CONFIG]")
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit")
    ] = False,
) -> None:
    """Raft-replicated control plane: run servers, and read and write the cluster."""
    from controlplane.cli.common import GLOBAL_FLAGS
    from controlplane.client import Credentials

    GLOBAL_FLAGS["credentials"] = Credentials(ca=cacert, cert=cert, key=key, token=token)
    GLOBAL_FLAGS["context"] = context
