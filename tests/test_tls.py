"""controlplane.tls and `cpctl certs`: a CA and certificates made in a temporary directory, then real
TLS 1.3 handshakes on loopback (asyncio streams) to show who is let in and what identity is read back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import controlplane.cli.certs  # noqa: F401  (registers `cpctl certs`)
from controlplane import tls
from controlplane.cli import app
from controlplane.tls import Identity, TlsError, TlsFiles

SERVER = Identity("server", "n1")
CLIENT = Identity("client", "admin")


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    """A CA with a server n1 and a client admin certificate."""
    directory = tmp_path / "pki"
    tls.init_ca(directory)
    tls.issue(directory, SERVER, sans=["127.0.0.1", "localhost"])
    tls.issue(directory, CLIENT)
    return directory


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


class Exchange:
    """A TLS server on 127.0.0.1 that records the identity of every peer it accepts and sends it back."""

    def __init__(self) -> None:
        self.accepted: list[Identity | None] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        identity = tls.peer_identity(writer.get_extra_info("peercert"))
        self.accepted.append(identity)
        writer.write(f"{identity!r}\n".encode())
        await writer.drain()
        writer.close()

    async def dial(self, server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[bytes, Identity | None]:
        """What the server sent back, and the server's identity as the client read it."""
        listener = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=server)
        port = listener.sockets[0].getsockname()[1]
        async with listener:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
            try:
                return await reader.read(), tls.peer_identity(writer.get_extra_info("peercert"))
            finally:
                writer.close()
                with contextlib.suppress(ssl.SSLError, ConnectionError):
                    await writer.wait_closed()

    async def refused_by_server(self, server: ssl.SSLContext, client: ssl.SSLContext) -> None:
        # In TLS 1.3 the client finishes its side of the handshake before the server has checked the
        # client's certificate, so the refusal reaches the client after open_connection returned: as
        # an alert on its first read, or as the end of the stream. Either way the server let no one in.
        try:
            answer, _ = await self.dial(server, client)
        except (ssl.SSLError, ConnectionError):
            answer = b""
        assert answer == b""
        assert self.accepted == []


def files(directory: Path, identity: Identity, ca: Path | None = None) -> TlsFiles:
    return TlsFiles.from_directory(directory, identity, ca=ca)


# ------------------------------------------------------------------ making certificates


def test_init_writes_a_private_ca_and_refuses_to_replace_it(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "ca"
    with umask(0):  # even with nothing masked, the key and the directory are private
        cert = tls.init_ca(directory)
    assert cert == directory / "ca.pem"
    assert directory.stat().st_mode & 0o777 == 0o700
    assert (directory / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    info = tls.describe(cert)
    assert info["is_ca"] and info["subject"] == info["issuer"] == "CN=controlplane cluster CA"
    assert info["identity"] is None

    with pytest.raises(TlsError, match=r"already exists.*--force"):
        tls.init_ca(directory)
    assert tls.describe(cert)["sha256_fingerprint"] == info["sha256_fingerprint"]

    (directory / "ca-key.pem").chmod(0o644)
    tls.init_ca(directory, force=True)
    assert tls.describe(cert)["sha256_fingerprint"] != info["sha256_fingerprint"]
    assert (directory / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_issue_names_the_identity_once_canonically(ca_dir: Path, tmp_path: Path) -> None:
    cert, key = tls.issue(ca_dir, Identity("agent", "gpu-7"), sans=["10.0.0.7", "::1", "gpu-7.lab", "10.0.0.7"])
    assert (cert.name, key.name) == ("agent-gpu-7.pem", "agent-gpu-7-key.pem")
    assert key.stat().st_mode & 0o777 == 0o600
    info = tls.describe(cert)
    assert info["identity"] == {"role": "agent", "id": "gpu-7"}
    assert info["subject"] == "CN=gpu-7"
    assert info["issuer"] == "CN=controlplane cluster CA"
    assert info["sans"] == ["URI:urn:controlplane:agent:gpu-7", "IP:10.0.0.7", "IP:::1", "DNS:gpu-7.lab"]
    assert info["extended_key_usage"] == ["serverAuth", "clientAuth"]
    assert not info["is_ca"] and info["others_in_file"] == []
    assert len(info["sha256_fingerprint"].split(":")) == 32
    assert info["not_before"] < info["not_after"]

    client_cert, _ = tls.issue(ca_dir, Identity("client", "alice"), out_dir=tmp_path / "alice", days=30)
    assert client_cert == tmp_path / "alice" / "client-alice.pem"
    assert tls.describe(client_cert)["extended_key_usage"] == ["clientAuth"]


def test_a_certificate_never_outlives_its_ca(tmp_path: Path) -> None:
    tls.init_ca(tmp_path, days=10)
    cert, _ = tls.issue(tmp_path, SERVER, days=825)
    assert tls.describe(cert)["not_after"] == tls.describe(tmp_path / "ca.pem")["not_after"]


@pytest.mark.parametrize(
    ("role", "id_", "message"),
    [
        ("root", "n1", "not one of server, agent, client"),
        ("server", "", "must not be empty"),
        ("server", "n1:x", "not valid"),
        ("agent", "a/b", "not valid"),
        ("client", "bob smith", "not valid"),
    ],
)
def test_bad_identities_are_refused(role: str, id_: str, message: str) -> None:
    with pytest.raises(TlsError, match=message):
        Identity(role, id_)


def test_bad_requests_to_issue_are_refused(ca_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TlsError, match="clash"):  # its certificate would be n1's key file
        tls.issue(ca_dir, Identity("server", "n1-key"))
    with pytest.raises(TlsError, match="not a DNS name or an IP address"):
        tls.issue(ca_dir, SERVER, sans=["two words"])
    with pytest.raises(TlsError, match="at least 1 day"):
        tls.issue(ca_dir, SERVER, days=0)
    with pytest.raises(TlsError, match=r"no CA in .*cpctl certs init"):
        tls.issue(tmp_path / "nowhere", SERVER)


def test_ensure_dev_pki_creates_what_is_missing_and_reuses_the_rest(tmp_path: Path) -> None:
    directory = tmp_path / "dev-certs"
    tls.ensure_dev_pki(directory, ["n1", "n2"])
    names = sorted(p.name for p in directory.iterdir())
    assert names == [
        "ca-key.pem",
        "ca.pem",
        "client-admin-key.pem",
        "client-admin.pem",
        "server-n1-key.pem",
        "server-n1.pem",
        "server-n2-key.pem",
        "server-n2.pem",
    ]
    assert tls.describe(directory / "ca.pem")["subject"] == "CN=controlplane dev CA"
    assert "IP:127.0.0.1" in tls.describe(directory / "server-n1.pem")["sans"]
    before = {name: (directory / name).read_bytes() for name in names}

    tls.ensure_dev_pki(directory, ["n1", "n2"])
    assert {name: (directory / name).read_bytes() for name in names} == before

    (directory / "server-n2.pem").unlink()
    tls.ensure_dev_pki(directory, ["n1", "n2", "n3"])
    assert (directory / "server-n1.pem").read_bytes() == before["server-n1.pem"]
    assert (directory / "server-n2.pem").exists() and (directory / "server-n3.pem").exists()
    assert (directory / "ca.pem").read_bytes() == before["ca.pem"]

    # A pair half-replaced (the key written, then a crash before the certificate) is issued again.
    (directory / "client-admin-key.pem").write_bytes((directory / "server-n1-key.pem").read_bytes())
    tls.ensure_dev_pki(directory, ["n1"])
    tls.client_ssl_context(TlsFiles.from_directory(directory, CLIENT))  # loads: the key matches again


def test_ensure_dev_pki_reissues_certificates_of_a_replaced_ca(tmp_path: Path) -> None:
    tls.ensure_dev_pki(tmp_path, ["n1"], client_ids=())
    old = (tmp_path / "server-n1.pem").read_bytes()
    tls.init_ca(tmp_path, force=True)
    tls.ensure_dev_pki(tmp_path, ["n1"], client_ids=())
    assert (tmp_path / "server-n1.pem").read_bytes() != old


# ------------------------------------------------------------------ keys on disk


def test_an_open_key_is_refused_with_the_command_that_fixes_it(ca_dir: Path) -> None:
    key = ca_dir / "server-n1-key.pem"
    key.chmod(0o644)
    fix = f"chmod 600 {key.absolute()}"
    with pytest.raises(TlsError, match="0644") as raised:
        tls.check_key_permissions(key)
    assert fix in str(raised.value)
    with pytest.raises(TlsError, match="chmod 600"):
        tls.server_ssl_context(files(ca_dir, SERVER))
    (ca_dir / "ca-key.pem").chmod(0o640)
    with pytest.raises(TlsError, match="chmod 600"):  # the CA key too, before it signs anything
        tls.issue(ca_dir, CLIENT)
    key.chmod(0o600)
    tls.check_key_permissions(key)


def test_missing_files_are_named(ca_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TlsError, match="does not exist"):
        tls.check_key_permissions(tmp_path / "nope-key.pem")
    with pytest.raises(TlsError, match=r"CA file .* does not exist"):
        tls.client_ssl_context(files(ca_dir, CLIENT, ca=tmp_path / "nope.pem"))
    (ca_dir / "client-admin.pem").unlink()
    with pytest.raises(TlsError, match=r"client-admin\.pem does not exist"):
        tls.client_ssl_context(files(ca_dir, CLIENT))


# ------------------------------------------------------------------ handshakes


async def test_identities_cross_a_real_tls13_handshake(ca_dir: Path) -> None:
    server_context = tls.server_ssl_context(files(ca_dir, SERVER))
    client_context = tls.client_ssl_context(files(ca_dir, CLIENT))
    assert server_context.minimum_version == client_context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert server_context.verify_mode == client_context.verify_mode == ssl.CERT_REQUIRED
    exchange = Exchange()
    answer, server_identity = await exchange.dial(server_context, client_context)
    assert exchange.accepted == [CLIENT]
    assert answer == f"{CLIENT!r}\n".encode()
    assert server_identity == SERVER


async def test_servers_dial_each_other_with_their_own_certificates(ca_dir: Path) -> None:
    n2 = Identity("server", "n2")
    tls.issue(ca_dir, n2)
    exchange = Exchange()
    _, dialed = await exchange.dial(
        tls.server_ssl_context(files(ca_dir, SERVER)), tls.client_ssl_context(files(ca_dir, n2))
    )
    assert (exchange.accepted, dialed) == ([n2], SERVER)


async def test_a_client_without_a_certificate_is_refused(ca_dir: Path) -> None:
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cafile=ca_dir / "ca.pem")
    await Exchange().refused_by_server(tls.server_ssl_context(files(ca_dir, SERVER)), anonymous)


async def test_certificates_of_another_ca_are_refused(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    tls.ensure_dev_pki(other, ["n1"])
    # A client from another CA, at our server.
    await Exchange().refused_by_server(
        tls.server_ssl_context(files(ca_dir, SERVER)), tls.client_ssl_context(files(other, CLIENT))
    )
    # Our client, at a server from another CA.
    with pytest.raises(ssl.SSLCertVerificationError):
        await Exchange().dial(
            tls.server_ssl_context(files(other, SERVER)), tls.client_ssl_context(files(ca_dir, CLIENT))
        )


async def test_a_client_certificate_cannot_serve(ca_dir: Path) -> None:
    # Client certificates carry clientAuth only; OpenSSL checks the usage on the dialing side.
    admin_as_server = tls.server_ssl_context(files(ca_dir, CLIENT))
    with pytest.raises(ssl.SSLCertVerificationError, match="purpose"):
        await Exchange().dial(admin_as_server, tls.client_ssl_context(files(ca_dir, SERVER)))


async def test_a_web_certificate_serves_https_and_speaks_for_nobody(ca_dir: Path) -> None:
    """A gateway's HTTPS certificate: verified by a plain HTTPS client that trusts the cluster CA,
    naming its hosts and no identity; presented as a client certificate, a server refuses it."""
    cert, key = tls.issue_web(ca_dir, "gw", sans=["127.0.0.1", "gateway.internal"])
    assert (cert.name, key.name) == ("web-gw.pem", "web-gw-key.pem")
    shown = tls.describe(cert)
    assert shown["identity"] is None
    assert shown["sans"] == ["IP:127.0.0.1", "DNS:gateway.internal"]
    assert shown["extended_key_usage"] == ["serverAuth"]

    https = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    https.load_cert_chain(cert, key)
    browser = ssl.create_default_context(cafile=ca_dir / "ca.pem")  # checks the host name, 127.0.0.1
    exchange = Exchange()
    answer, served_by = await exchange.dial(https, browser)
    assert (answer, served_by) == (b"None\n", None)

    web_as_client = tls.client_ssl_context(TlsFiles(ca=ca_dir / "ca.pem", cert=cert, key=key))
    await Exchange().refused_by_server(tls.server_ssl_context(files(ca_dir, SERVER)), web_as_client)


def test_bad_requests_for_a_web_certificate_are_refused(ca_dir: Path) -> None:
    with pytest.raises(TlsError, match="--san HOST"):
        tls.issue_web(ca_dir, "gw", sans=[])
    with pytest.raises(TlsError, match="must not end in '-key'"):
        tls.issue_web(ca_dir, "gw-key", sans=["localhost"])
    with pytest.raises(TlsError, match="web certificate name"):
        tls.issue_web(ca_dir, "a/b", sans=["localhost"])


async def test_a_bundle_of_old_and_new_ca_verifies_certificates_of_both(tmp_path: Path) -> None:
    # A rotation: the new CA has the same name as the old one, as `cpctl certs init` makes them.
    old, new = tmp_path / "old", tmp_path / "new"
    tls.init_ca(old)
    tls.init_ca(new)
    tls.issue(new, SERVER)
    tls.issue(old, CLIENT)
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_bytes((old / "ca.pem").read_bytes() + (new / "ca.pem").read_bytes())
    info = tls.describe(bundle)
    assert [info["sha256_fingerprint"], info["others_in_file"][0]["sha256_fingerprint"]] == [
        tls.describe(old / "ca.pem")["sha256_fingerprint"],
        tls.describe(new / "ca.pem")["sha256_fingerprint"],
    ]

    exchange = Exchange()
    _, dialed = await exchange.dial(
        tls.server_ssl_context(files(new, SERVER, ca=bundle)), tls.client_ssl_context(files(old, CLIENT, ca=bundle))
    )
    assert (exchange.accepted, dialed) == ([CLIENT], SERVER)
    # Without the bundle, the new server does not know the old client.
    await Exchange().refused_by_server(
        tls.server_ssl_context(files(new, SERVER)), tls.client_ssl_context(files(old, CLIENT, ca=bundle))
    )


# ------------------------------------------------------------------ reading the identity


def peercert(*uris: str) -> dict[str, object]:
    return {
        "subject": ((("commonName", "n1"),),),
        "subjectAltName": (("DNS", "localhost"), *(("URI", u) for u in uris)),
    }


@pytest.mark.parametrize(
    ("cert", "expected"),
    [
        (peercert("urn:controlplane:server:n1"), SERVER),
        (peercert("https://example.com/", "urn:controlplane:client:admin"), CLIENT),
        (None, None),
        ({}, None),  # getpeercert() of an unverified peer
        ({"subject": ((("commonName", "n1"),),)}, None),  # no SAN: the CN alone is not enough
        (peercert(), None),
        (peercert("urn:controlplane:server:n1", "urn:controlplane:server:n2"), None),
        (peercert("urn:controlplane:server:n1", "URN:ControlPlane:server:n2"), None),
        (peercert("URN:controlplane:server:n1"), None),
        (peercert("urn:controlplane:root:n1"), None),
        (peercert("urn:controlplane:server"), None),
        (peercert("urn:controlplane:server:"), None),
        (peercert("urn:controlplane:server:n1:extra"), None),
        (peercert("urn:controlplane:server:n1\n"), None),
    ],
)
def test_peer_identity_reads_exactly_one_well_formed_uri(cert: dict[str, object] | None, expected: Identity) -> None:
    assert tls.peer_identity(cert) == expected


def test_identity_uri_round_trip() -> None:
    for identity in (SERVER, CLIENT, Identity("agent", "a.b_c-d")):
        assert Identity.from_uri(identity.uri) == identity


# ------------------------------------------------------------------ cpctl certs


def test_cli_init_issue_show(tmp_path: Path) -> None:
    runner = CliRunner()
    ca = tmp_path / "certs"
    made = runner.invoke(app, ["certs", "init", "--dir", str(ca)])
    assert made.exit_code == 0, made.output
    assert "ca-key.pem" in made.stdout and "next: cpctl certs issue" in made.stdout

    issued = runner.invoke(
        app,
        [
            *("certs", "issue", "n1", "--role", "server", "--san", "10.1.2.3", "--san", "n1.local"),
            *("--dir", str(ca), "--out", str(tmp_path / "n1"), "--output", "json"),
        ],
    )
    assert issued.exit_code == 0, issued.output
    written = json.loads(issued.stdout)
    assert written["cert"] == str(tmp_path / "n1" / "server-n1.pem")
    assert written["identity"] == {"role": "server", "id": "n1"}

    shown = runner.invoke(app, ["certs", "show", written["cert"], "--output", "json"])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.stdout)
    assert info["identity"] == {"role": "server", "id": "n1"}
    assert info["sans"] == ["URI:urn:controlplane:server:n1", "IP:10.1.2.3", "DNS:n1.local"]
    assert info["not_after"] == written["not_after"]

    text = runner.invoke(app, ["certs", "show", written["cert"]])
    assert text.exit_code == 0 and "identity:    server n1" in text.stdout

    web = runner.invoke(
        app, ["certs", "issue", "gw", "--role", "web", "--san", "localhost", "--dir", str(ca), "--output", "json"]
    )
    assert web.exit_code == 0, web.output
    assert json.loads(web.stdout)["identity"] is None
    assert json.loads(web.stdout)["cert"] == str(ca / "web-gw.pem")


def test_cli_renew_before_keeps_a_good_pair_and_issues_one_that_is_due_or_wrong(tmp_path: Path) -> None:
    """What a job run on every start needs: the same pair back while it is good, a new one when it
    nears its end, lacks a name asked for, or another CA signed it."""
    runner = CliRunner()
    ca = tmp_path / "ca"
    tls.init_ca(ca)

    def issue(*extra: str) -> dict[str, object]:
        args = ["certs", "issue", "n1", "--role", "server", "--san", "n1", "--dir", str(ca), "--output", "json"]
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code == 0, result.output
        answer: dict[str, object] = json.loads(result.stdout)
        return answer

    def pair() -> bytes:
        return (ca / "server-n1.pem").read_bytes() + (ca / "server-n1-key.pem").read_bytes()

    assert issue("--renew-before", "30")["kept"] is False  # nothing there yet
    first = pair()
    kept = issue("--renew-before", "30")
    assert kept["kept"] is True and pair() == first
    assert kept["identity"] == {"role": "server", "id": "n1"}  # the same keys as when it is issued
    assert issue("--days", "10")["kept"] is False  # without the option: always issued
    assert issue("--renew-before", "30")["kept"] is False  # due: 10 days left, 30 asked
    second = pair()
    assert second != first
    assert issue("--renew-before", "1", "--san", "n1.example")["kept"] is False  # a name it lacks
    third = pair()
    assert issue("--renew-before", "1", "--san", "n1.example")["kept"] is True and pair() == third
    tls.init_ca(ca, force=True)  # another CA: the pair no longer verifies
    assert issue("--renew-before", "1", "--san", "n1.example")["kept"] is False


@pytest.mark.parametrize(
    "args",
    [
        ["certs", "issue", "n1", "--role", "server", "--dir", "{tmp}/no-ca"],
        ["certs", "issue", "n1", "--role", "king", "--dir", "{tmp}/ca"],
        ["certs", "issue", "gw", "--role", "web", "--dir", "{tmp}/ca"],  # no --san
        ["certs", "init", "--dir", "{tmp}/ca"],  # already there
        ["certs", "show", "{tmp}/missing.pem"],
        ["certs", "show", "{tmp}/ca/ca-key.pem"],  # not a certificate
    ],
)
def test_cli_errors_are_one_line_and_an_exit_code(tmp_path: Path, args: list[str]) -> None:
    tls.init_ca(tmp_path / "ca")
    result = CliRunner().invoke(app, [arg.format(tmp=tmp_path) for arg in args])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_the_cli_group_imports_cryptography_only_when_a_command_runs() -> None:
    code = (
        "import sys, controlplane.cli.certs\n"
        "print(sorted(m for m in ('controlplane.tls', 'cryptography') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
