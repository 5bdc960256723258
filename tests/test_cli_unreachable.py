"""A client command against endpoints where nothing listens: one line naming them and the likely fix,
exit 3, no traceback; a bare host means the default client port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.cli.common import DEFAULT_CLIENT_PORT, with_default_port


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again on exit: nothing listens there


def test_a_bare_host_means_the_default_client_port() -> None:
    assert with_default_port("10.0.0.5") == f"10.0.0.5:{DEFAULT_CLIENT_PORT}"
    assert with_default_port(" db.internal ") == f"db.internal:{DEFAULT_CLIENT_PORT}"
    assert with_default_port("::1") == f"[::1]:{DEFAULT_CLIENT_PORT}"
    assert with_default_port("[::1]") == f"[::1]:{DEFAULT_CLIENT_PORT}"
    assert with_default_port("[::1]:9000") == "[::1]:9000"
    assert with_default_port("10.0.0.5:9000") == "10.0.0.5:9000"


def test_nothing_listening_is_one_line_with_the_fix(tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{_closed_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CP_")}
    done = subprocess.run(
        [sys.executable, "-m", "controlplane", "kv", "get", "x", "--endpoints", endpoint],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    assert f"no server at {endpoint} answered: is the cluster running?" in done.stderr
    assert "make run" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_servers_learned_from_a_gateway_use_the_local_dev_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controlplane.cli import common
    from controlplane.cli.common import client_credentials
    from controlplane.client import Credentials

    # The root callback's flags are module state: another test's `cpctl --cert ...` may have left them.
    monkeypatch.setitem(common.GLOBAL_FLAGS, "credentials", Credentials())
    monkeypatch.setitem(common.GLOBAL_FLAGS, "context", None)
    for name in ("CP_CACERT", "CP_CERT", "CP_KEY", "CP_TOKEN", "CP_CONTEXT", "CP_ENDPOINTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CP_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".data").mkdir()
    manifest = {"endpoints": "127.0.0.1:7101,127.0.0.1:7102", "credentials": {"ca": "/pki/ca.pem"}}
    (tmp_path / ".data" / "cluster.json").write_text(json.dumps(manifest))
    gateway = "http://127.0.0.1:8080"
    # The dev cluster's own servers, learned through a gateway: its admin credentials.
    assert client_credentials(gateway, servers="127.0.0.1:7102").ca == Path("/pki/ca.pem")
    # Anyone else's: nothing borrowed.
    assert client_credentials(gateway, servers="10.0.0.9:7101").ca is None
