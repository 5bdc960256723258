"""Certificates for mutual TLS between servers, agents and clients: a cluster CA, issuing, checking.

Every certificate names one identity, a role (``server``, ``agent`` or ``client``) and an id (a node
id such as ``n1``, or a client name), in one canonical way: the URI SAN ``urn:controlplane:<role>:<id>``,
which is authoritative and parsed strictly, and the Subject CN = id, for people and for tools that
only show the subject. ``peer_identity`` reads the identity back from a verified peer certificate.

The files, all PEM (the default names, in one directory)::

    ca.pem                 the cluster CA's certificate: every server, agent and client trusts it;
                           may be a bundle of several CAs (see rotation below)
    ca-key.pem             the CA's private key (mode 0600): it signs every certificate; keep it off
                           the servers if you can, it is only needed to issue
    <role>-<id>.pem        one identity's certificate, e.g. server-n1.pem, client-admin.pem
    <role>-<id>-key.pem    that identity's private key (mode 0600)
    web-<name>.pem         an HTTPS certificate (a gateway's), naming hosts and no identity

Keys are ECDSA P-256. Private keys are created with mode 0600 from the first byte (never
world-readable, even for an instant) and every file is replaced atomically, so a reader sees the old
file or the new one, never half of one. The TLS contexts refuse a key that group or others can read.

The peer plane: servers listen with ``server_ssl_context`` and dial each other with
``client_ssl_context``; both demand TLS 1.3 and a certificate chaining to the CA on the other side
(server certificates carry both the serverAuth and clientAuth usages, since every server also
dials). Host names are not checked: after the handshake the caller reads the peer's identity with
``peer_identity(writer.get_extra_info("peercert"))`` and decides whether it is the peer it expected.

Rotating the CA, without downtime:

1. Make the new CA elsewhere: ``cpctl certs init --dir certs-new``.
2. Trust both: ``cat certs/ca.pem certs-new/ca.pem > ca-bundle.pem``, give that bundle to every
   server, agent and client as its ``ca`` file, and restart them one at a time. Certificates from
   either CA now verify everywhere (OpenSSL tells two CAs of the same name apart by their key ids).
3. Issue new certificates from the new CA (``cpctl certs issue ... --dir certs-new``) and roll
   them out one process at a time.
4. When nothing presents an old certificate any more, give everyone ``certs-new/ca.pem`` alone.

Renewing one certificate is step 3 alone: issue it again and restart the process that uses it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.keyfiles import TlsError as TlsError  # the SDK's half, without cryptography
from controlplane.keyfiles import check_key_permissions as check_key_permissions
from controlplane.state.limits import check_member_id, check_name

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "ROLES",
    "URI_PREFIX",
    "Identity",
    "TlsError",
    "TlsFiles",
    "check_key_permissions",
    "client_ssl_context",
    "describe",
    "ensure_dev_pki",
    "init_ca",
    "issue",
    "issue_web",
    "pair_paths",
    "peer_identity",
    "server_ssl_context",
    "worth_keeping",
]

ROLES = ("server", "agent", "client")
URI_PREFIX = "urn:controlplane:"
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
_KEY_SUFFIX = "-key"
# Accept a peer whose clock runs a little ahead of ours: certificates are valid from a few minutes ago.
_BACKDATE = datetime.timedelta(minutes=5)
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class Identity:
    """Who a certificate speaks for. Always valid: the constructor refuses an unknown role or a bad id."""

    role: str
    id: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise TlsError(f"role {self.role!r} is not one of {', '.join(ROLES)}")
        # Client names are names (up to 128 characters); servers and agents are member ids. Both
        # character sets exclude ':' and '/', so the URI and the file names stay unambiguous.
        problem = (
            check_name(self.id, "client name") if self.role == "client" else check_member_id(self.id, f"{self.role} id")
        )
        if problem:
            raise TlsError(problem)

    @property
    def uri(self) -> str:
        """The URI SAN that carries this identity: ``urn:controlplane:<role>:<id>``."""
        return f"{URI_PREFIX}{self.role}:{self.id}"

    @classmethod
    def from_uri(cls, uri: str) -> Identity:
        """Parse ``urn:controlplane:<role>:<id>`` exactly as ``uri`` writes it; TlsError otherwise."""
        if not uri.startswith(URI_PREFIX):
            raise TlsError(f"{uri!r} is not a {URI_PREFIX}<role>:<id> URI")
        role, sep, id_ = uri[len(URI_PREFIX) :].partition(":")
        if not sep:
            raise TlsError(f"{uri!r} is not a {URI_PREFIX}<role>:<id> URI")
        return cls(role, id_)

    def __str__(self) -> str:
        return f"{self.role} {self.id}"


@dataclass(frozen=True)
class TlsFiles:
    """The three files one process needs for mutual TLS: the CA (or CA bundle) it trusts, and its
    own certificate and key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_directory(cls, directory: Path, identity: Identity, *, ca: Path | None = None) -> TlsFiles:
        """The default file names in ``directory`` (``ca.pem``, ``<role>-<id>.pem``, ``<role>-<id>-key.pem``);
        ``ca`` overrides the trusted CA file, e.g. with a bundle during a CA rotation."""
        cert, key = _file_names(identity)
        return cls(ca=ca if ca is not None else directory / CA_CERT_FILE, cert=directory / cert, key=directory / key)


def _file_names(identity: Identity) -> tuple[str, str]:
    return _stem_file_names(identity.role, identity.id)


def _stem_file_names(role: str, id_: str) -> tuple[str, str]:
    if id_.endswith(_KEY_SUFFIX):
        # server-n1-key.pem would be both n1's key and the certificate of an id "n1-key".
        raise TlsError(f"{role} id {id_!r} must not end in {_KEY_SUFFIX!r}; its files would clash")
    stem = f"{role}-{id_}"
    return f"{stem}.pem", f"{stem}{_KEY_SUFFIX}.pem"


# ------------------------------------------------------------------ making a CA and certificates


def init_ca(
    directory: Path, *, common_name: str = "controlplane cluster CA", days: int = 3650, force: bool = False
) -> Path:
    """Create a cluster CA in ``directory`` (made with mode 0700): ``ca.pem`` and ``ca-key.pem`` (0600).

    Refuses to replace an existing CA unless ``force``: every certificate the old one issued would stop
    verifying. Returns the path of ``ca.pem``.
    """
    _check_days(days)
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    existing = [path for path in (cert_path, key_path) if path.exists()]
    if existing and not force:
        raise TlsError(
            f"{existing[0]} already exists: refusing to replace the CA, since every certificate it issued "
            "would stop verifying (use --force to replace it anyway, or another directory)"
        )
    _make_directory(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        # path_length=0: this CA signs leaf certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first: a crash in between leaves a key without a certificate, which init refuses to clobber.
    _write_atomically(key_path, _key_pem(key), 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path


def issue(
    ca_dir: Path,
    identity: Identity,
    *,
    sans: Sequence[str] = (),
    out_dir: Path | None = None,
    days: int = 825,
) -> tuple[Path, Path]:
    """Sign a certificate for ``identity`` with the CA in ``ca_dir``; returns (certificate, key) paths.

    Writes ``<role>-<id>.pem`` and ``<role>-<id>-key.pem`` (0600) into ``out_dir`` (default: ``ca_dir``),
    replacing an earlier pair for the same identity (that is how a certificate is renewed). ``sans`` are
    DNS names or IP addresses added besides the identity's URI. The certificate never outlives the CA.
    """
    alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if identity.role != "client":
        # Servers listen and dial each other; agents too. Clients only dial.
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    return _sign(ca_dir, _file_names(identity), identity.id, alt_names, sans, usages, out_dir, days)


WEB_ROLE = "web"


def issue_web(
    ca_dir: Path, name: str, *, sans: Sequence[str], out_dir: Path | None = None, days: int = 825
) -> tuple[Path, Path]:
    """Sign an HTTPS server certificate for ``sans`` (a gateway's ``--tls-cert``): ``web-<name>.pem``
    and its key, like :func:`issue`.

    It speaks for nobody in the cluster: no ``urn:controlplane:`` URI (so no server, agent or client
    identity: a server certificate would let whoever holds the gateway's key do anything), and only
    the serverAuth usage, so TLS refuses it as a client certificate too.
    """
    problem = check_name(name, "web certificate name")
    if problem:
        raise TlsError(problem)
    if not sans:
        raise TlsError("a web certificate needs the names it is reached at: --san HOST (repeatable)")
    file_names = _stem_file_names(WEB_ROLE, name)
    return _sign(ca_dir, file_names, name, [], sans, [ExtendedKeyUsageOID.SERVER_AUTH], out_dir, days)


def _sign(
    ca_dir: Path,
    file_names: tuple[str, str],
    common_name: str,
    alt_names: list[x509.GeneralName],
    sans: Sequence[str],
    usages: list[x509.ObjectIdentifier],
    out_dir: Path | None,
    days: int,
) -> tuple[Path, Path]:
    _check_days(days)
    alt_names = [*alt_names, *(_general_name(san) for san in dict.fromkeys(sans))]
    cert_name, key_name = file_names
    ca_cert, ca_key = _load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(ca_cert, ca_key), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out = ca_dir if out_dir is None else out_dir
    _make_directory(out)
    cert_path, key_path = out / cert_name, out / key_name
    # Key first: until the certificate is replaced too, the old pair no longer matches; loading it
    # fails loudly ("key values mismatch") rather than serving a stale identity.
    _write_atomically(key_path, _key_pem(key), 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def ensure_dev_pki(
    directory: Path,
    server_ids: Sequence[str],
    client_ids: Sequence[str] = ("admin",),
    sans: Sequence[str] = ("127.0.0.1", "localhost"),
) -> None:
    """Make ``directory`` hold a dev CA and a certificate for every server and client; idempotent.

    Creates the CA if there is none, and issues each missing certificate; a certificate that exists,
    was signed by this CA and has not expired is reused as it is. ``sans`` go on server certificates
    only (they are the addresses the servers listen on); client certificates carry just their URI.
    """
    if not (directory / CA_CERT_FILE).exists() and not (directory / CA_KEY_FILE).exists():
        init_ca(directory, common_name="controlplane dev CA")
    ca_cert = _load_ca(directory)[0]
    wanted = [(Identity("server", id_), sans) for id_ in server_ids]
    wanted += [(Identity("client", id_), ()) for id_ in client_ids]
    for identity, identity_sans in wanted:
        files = TlsFiles.from_directory(directory, identity)
        if not _usable(files, ca_cert):
            issue(directory, identity, sans=identity_sans)


def _usable(files: TlsFiles, ca_cert: x509.Certificate, *, sans: Sequence[str] = (), valid_for_days: float = 0) -> bool:
    """A pair worth keeping: signed by this CA, the key the certificate's, naming every one of
    ``sans``, and valid for more than ``valid_for_days`` days more."""
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
        named = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        wanted = [_general_name(san) for san in sans]
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound, TlsError):
        return False
    until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=valid_for_days)
    matches = key.public_key() == cert.public_key()
    return matches and cert.not_valid_after_utc > until and all(name in named for name in wanted)


def pair_paths(directory: Path, role: str, id_: str) -> tuple[Path, Path]:
    """Where :func:`issue` (or :func:`issue_web`, role ``web``) writes ID's certificate and key."""
    cert, key = _stem_file_names(role, id_)
    return directory / cert, directory / key


def worth_keeping(ca_dir: Path, cert: Path, key: Path, *, sans: Sequence[str] = (), valid_for_days: float = 0) -> bool:
    """Whether the pair at ``cert`` and ``key`` can stay instead of being issued again: the CA in
    ``ca_dir`` signed it, its key is the certificate's, it names every one of ``sans``, and it is
    valid for more than ``valid_for_days`` days more (``cpctl certs issue --renew-before``)."""
    files = TlsFiles(ca=ca_dir / CA_CERT_FILE, cert=cert, key=key)
    return _usable(files, _load_ca(ca_dir)[0], sans=sans, valid_for_days=valid_for_days)


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA's certificate and key. ``ca.pem`` may be a bundle: the certificate matching the key is used."""
    cert_path, key_path = ca_dir / CA_CERT_FILE, ca_dir / CA_KEY_FILE
    if not cert_path.exists():
        raise TlsError(
            f"no CA in {ca_dir}: {cert_path} does not exist (create one with `cpctl certs init --dir {ca_dir}`)"
        )
    check_key_permissions(key_path)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"{key_path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"{key_path} is not an ECDSA key")
    for cert in _load_certificates(cert_path):
        if cert.public_key() == key.public_key():
            return cert, key
    raise TlsError(f"{key_path} is not the key of (any certificate in) {cert_path}")


def _load_certificates(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise TlsError(f"{path.absolute()} does not exist") from exc
    except OSError as exc:
        raise TlsError(f"cannot read {path.absolute()}: {exc.strerror}") from exc
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TlsError(f"{path} holds no PEM certificate") from exc


def _authority_key_id(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _general_name(san: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        pass
    labels = san.split(".")
    if labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]  # a wildcard stands for one label, left of at least two more
    if len(san) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise TlsError(f"SAN {san!r} is not a DNS name or an IP address")
    return x509.DNSName(san)


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _check_days(days: int) -> None:
    if days < 1:
        raise TlsError(f"validity must be at least 1 day, not {days}")


def _make_directory(directory: Path) -> None:
    # Only the new directory itself gets 0700; parents are made as mkdir -p would.
    directory.parent.mkdir(parents=True, exist_ok=True)
    directory.mkdir(mode=0o700, exist_ok=True)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` through a temporary file created with ``mode`` (so a key is 0600 from the
    first byte, even when it replaces a more open file) and renamed over it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # the umask can only have removed bits; make it exactly `mode`
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------ using them


def server_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """For the listening side of the peer plane: TLS 1.3, and the dialer must present a certificate
    chaining to ``files.ca``. Host names are not checked: read the dialer's identity with ``peer_identity``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_REQUIRED
    _configure(context, files)
    return context


def client_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """For the dialing side: TLS 1.3, the server's certificate must chain to ``files.ca``, and ours is
    presented. Host names are not checked: read the server's identity with ``peer_identity``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    _configure(context, files)
    return context


def _configure(context: ssl.SSLContext, files: TlsFiles) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # RFC 5280 checks OpenSSL skips by default (Python 3.13 turns them on in its default contexts).
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    check_key_permissions(files.key)
    try:
        context.load_verify_locations(cafile=files.ca)
    except FileNotFoundError as exc:
        raise TlsError(f"CA file {files.ca.absolute()} does not exist") from exc
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the CA from {files.ca}: {exc}") from exc
    try:
        context.load_cert_chain(files.cert, files.key)
    except FileNotFoundError as exc:
        raise TlsError(f"certificate file {files.cert.absolute()} does not exist") from exc
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the certificate {files.cert} with the key {files.key}: {exc}") from exc


def peer_identity(peercert: Mapping[str, Any] | None) -> Identity | None:
    """The identity in a verified peer certificate (``getpeercert()``'s dict, or asyncio's
    ``get_extra_info("peercert")``): from its one ``urn:controlplane:`` URI SAN.

    None when there is no certificate, no such URI, more than one (ambiguous), or a malformed one.
    The Subject CN is not consulted.
    """
    if not peercert:
        return None
    uris = [value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]
    return identity_from_uris(uris)


def identity_from_uris(uris: Sequence[str]) -> Identity | None:
    """The identity a certificate's URI SANs name: exactly one ``urn:controlplane:`` URI, well formed."""
    # Any spelling of the prefix counts towards "more than one", so "URN:ControlPlane:..." cannot hide beside ours.
    ours = [uri for uri in uris if uri.lower().startswith(URI_PREFIX)]
    if len(ours) != 1:
        return None
    try:
        return Identity.from_uri(ours[0])
    except TlsError:
        return None


def describe(cert_path: Path) -> dict[str, Any]:
    """What ``cpctl certs show`` prints: the first certificate in the file (the leaf of a chain), and
    the others under ``others_in_file`` (e.g. both CAs of a rotation bundle)."""
    first, *others = _load_certificates(cert_path)
    return {"path": str(cert_path), **_describe(first), "others_in_file": [_describe(cert) for cert in others]}


def _describe(cert: x509.Certificate) -> dict[str, Any]:
    try:
        alt_names = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        alt_names = []
    sans: list[str] = []
    for name in alt_names:
        if isinstance(name, x509.UniformResourceIdentifier):
            sans.append(f"URI:{name.value}")
        elif isinstance(name, x509.DNSName):
            sans.append(f"DNS:{name.value}")
        elif isinstance(name, x509.IPAddress):
            sans.append(f"IP:{name.value}")
        else:
            sans.append(f"{type(name).__name__}:{name.value}")
    identity = identity_from_uris([n.value for n in alt_names if isinstance(n, x509.UniformResourceIdentifier)])
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    try:
        usages = [
            _USAGE_NAMES.get(oid, oid.dotted_string)
            for oid in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        ]
    except x509.ExtensionNotFound:
        usages = []
    return {
        "subject": cert.subject.rfc4514_string(),
        "identity": None if identity is None else {"role": identity.role, "id": identity.id},
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sans": sans,
        "serial": f"{cert.serial_number:x}",
        "sha256_fingerprint": cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        "is_ca": is_ca,
        "extended_key_usage": usages,
    }


_USAGE_NAMES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}
