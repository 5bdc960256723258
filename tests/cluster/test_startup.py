"""`python -m controlplane serve` refuses to start, with a clear message, when it cannot run safely."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.client import Client
from controlplane.dev import LocalCluster, free_port
from controlplane.tls import Identity, TlsFiles, ensure_dev_pki

from .conftest import running, wait_converged

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

EXIT_USAGE = 2  # controlplane.cli.output: bad usage or configuration


def _serve(
    data_dir: Path, *args: str, tls_files: TlsFiles | None, client: str = "", raft: str = "", **env_extra: str
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CP_")}
    if tls_files is not None:
        env.update(CP_TLS_CA=str(tls_files.ca), CP_TLS_CERT=str(tls_files.cert), CP_TLS_KEY=str(tls_files.key))
    env.update(env_extra)
    command = [
        sys.executable,
        "-m",
        "controlplane",
        "serve",
        "--node-id",
        "solo",
        "--client-address",
        client or f"127.0.0.1:{free_port()}",
        "--raft-address",
        raft or f"127.0.0.1:{free_port()}",
        "--metrics-address",
        "",
        "--data-dir",
        str(data_dir),
        *args,
    ]
    # A server that wrongly starts would run forever: the timeout turns that into a failure.
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def taken_port() -> Iterator[str]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield f"127.0.0.1:{holder.getsockname()[1]}"


@pytest.fixture
def solo_tls(tmp_path: Path) -> TlsFiles:
    """A CA and a server certificate for the server "solo", as `cpctl certs` makes them."""
    ensure_dev_pki(tmp_path / "pki", ["solo"])
    return TlsFiles.from_directory(tmp_path / "pki", Identity("server", "solo"))


def test_refuses_to_start_without_tls_for_the_peer_plane(tmp_path: Path) -> None:
    result = _serve(tmp_path / "data", tls_files=None)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "TLS" in result.stderr and "cpctl certs" in result.stderr, result.stderr
    assert "--insecure-dev" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "raft.wal").exists(), "nothing may be written before refusing"


def test_refuses_a_key_that_others_can_read(tmp_path: Path, solo_tls: TlsFiles) -> None:
    solo_tls.key.chmod(0o644)
    result = _serve(tmp_path / "data", tls_files=solo_tls)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert f"chmod 600 {solo_tls.key}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_refuses_the_retired_raft_password(tmp_path: Path, solo_tls: TlsFiles) -> None:
    result = _serve(tmp_path / "data", tls_files=solo_tls, CP_RAFT_PASSWORD="secret")
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "CP_RAFT_PASSWORD is no longer used" in result.stderr, result.stderr


@pytest.mark.parametrize("which", ["client", "raft"])
def test_refuses_a_taken_port(tmp_path: Path, taken_port: str, which: str, solo_tls: TlsFiles) -> None:
    ports = {which: taken_port}
    result = _serve(tmp_path / "data", tls_files=solo_tls, **ports)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert f"{which}_address {taken_port}" in result.stderr, result.stderr
    assert "in use" in result.stderr.lower(), result.stderr
    assert "Traceback" not in result.stderr


def test_refuses_the_port_of_a_running_server_and_leaves_it_alone(
    cluster: LocalCluster, tmp_path: Path, solo_tls: TlsFiles
) -> None:
    victim = next(iter(cluster.nodes.values()))
    result = _serve(tmp_path / "data", tls_files=solo_tls, client=victim.client_address)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert victim.client_address in result.stderr
    result = _serve(tmp_path / "data", tls_files=solo_tls, raft=victim.raft_address)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert victim.raft_address in result.stderr

    with Client(victim.client_address, credentials=victim.credentials) as client:
        put = client.put("startup/still-serving", b"1")
        assert client.get("startup/still-serving") is not None
    assert wait_converged(cluster) >= put.revision
    assert len(running(cluster)) == len(cluster.nodes)


def test_a_servers_data_dir_is_0700_and_its_files_0600(cluster: LocalCluster) -> None:
    with cluster.client() as client:
        put = client.put("startup/private", b"1")
    assert wait_converged(cluster) >= put.revision
    for node in cluster.nodes.values():
        assert stat.S_IMODE(node.data_dir.stat().st_mode) == 0o700, node.data_dir
        files = [path for path in node.data_dir.rglob("*") if path.is_file()]
        assert any(path.name == "raft.wal" for path in files)
        readable = {str(path): oct(stat.S_IMODE(path.stat().st_mode)) for path in files if path.stat().st_mode & 0o077}
        assert readable == {}, f"files others can read in {node.data_dir}"
