"""The client port over TLS on real server processes: the dev CA's admin certificate gets in, plaintext
and a foreign CA's certificate do not, and `cpctl` reaches the cluster through the context `cpctl dev`
writes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane import tls
from controlplane.client import Client, Credentials
from controlplane.dev import LocalCluster
from controlplane.errors import DeadlineExceeded, Unavailable
from controlplane.server import app as server_app

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        "add_client_port" not in Path(server_app.__file__).read_text(),
        reason="controlplane/server/app.py does not bind the client port with add_client_port yet",
    ),
]


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    from .conftest import started_cluster

    with started_cluster(tmp_path_factory.mktemp("tls-cluster"), servers=1, client_tls=True) as cluster:
        yield cluster


def test_the_dev_admin_certificate_reaches_the_cluster(tls_cluster: LocalCluster) -> None:
    with tls_cluster.client(timeout=20) as client:
        put = client.put("tls/hello", b"world")
        kv = client.get("tls/hello")
        assert kv is not None and kv.value == b"world" and kv.mod_revision == put.revision


def test_a_plaintext_client_cannot_talk_to_the_client_port(tls_cluster: LocalCluster) -> None:
    with Client(tls_cluster.client_addresses, timeout=3) as client, pytest.raises((Unavailable, DeadlineExceeded)):
        client.get("tls/hello")


def test_a_certificate_from_another_ca_is_refused(tls_cluster: LocalCluster, tmp_path: Path) -> None:
    other = tmp_path / "other"
    tls.ensure_dev_pki(other, [], ["admin"])
    foreign = tls.TlsFiles.from_directory(other, tls.Identity("client", "admin"))
    # Trusting the right CA but presenting a certificate it did not sign.
    creds = Credentials(ca=tls_cluster.credentials.ca, cert=foreign.cert, key=foreign.key)
    refused = pytest.raises((Unavailable, DeadlineExceeded))
    with Client(tls_cluster.client_addresses, timeout=3, credentials=creds) as client, refused:
        client.get("tls/hello")


def test_cpctl_through_the_written_context(tls_cluster: LocalCluster, tmp_path: Path) -> None:
    config = tls_cluster.write_client_config()
    assert os.stat(config).st_mode & 0o777 == 0o600
    env = {k: v for k, v in os.environ.items() if not k.startswith("CP_")}
    env["CP_CONFIG"] = str(config)

    def cpctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controlplane", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )

    assert cpctl("kv", "put", "tls/cli", "yes").returncode == 0
    assert cpctl("kv", "get", "tls/cli").stdout == "yes\n"
    # Flags beat the context: no CA means plaintext, which the TLS port refuses (exit 3, no traceback).
    refused = cpctl("--cacert", str(tmp_path / "missing.pem"), "kv", "get", "tls/cli")
    assert refused.returncode == 2 and "does not exist" in refused.stderr and "Traceback" not in refused.stderr
