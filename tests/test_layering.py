"""What a client command loads: `cpctl kv ...` needs the SDK and the CLI, not the server, the
gossip arithmetic (numpy, networkx), the plotting library (matplotlib: only `cpctl gossip plot`
imports it) or the gateway's web stack (issue 16)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "numpy",
    "networkx",
    "torch",
    "matplotlib",
    "fastapi",
    "uvicorn",
    "controlplane.server.node",
    "controlplane.server.app",
)


def test_a_client_command_loads_neither_the_server_nor_numpy_nor_the_web_stack() -> None:
    probe = (
        "import sys\n"
        "from controlplane.cli import app, main\n"
        "from controlplane.cli import certs, cluster, contexts, dev, gateway, gossip, kv, membership, models, ports, "
        "serve\n"
        "__import__('controlplane.cli.auth')\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
