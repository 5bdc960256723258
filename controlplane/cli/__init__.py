"""`cpctl`: the daemons (serve, dev) and the client commands, one module per command group."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="cpctl",
    help="Raft-replicated control plane: run servers, and read and write the cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def main() -> None:
    # Command groups register themselves on import; importing here keeps `cpctl --help` complete.
    from controlplane.cli import certs, cluster, dev, gateway, gossip, kv, membership, models, ports, serve  # noqa: F401

    app()


@app.callback()
def _root() -> None:
    """Raft-replicated control plane: run servers, and read and write the cluster."""
