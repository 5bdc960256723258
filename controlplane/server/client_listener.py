"""The gRPC client port: TLS with the cluster CA, or plaintext only for ``insecure_dev``.

With TLS the server presents its own certificate and REQUIRES a client certificate signed by the
cluster CA. Optional client certificates (request, verify when presented) would let a token-only
client in without one, but gRPC Python cannot ask for that: ``ssl_server_credentials`` and
``dynamic_ssl_server_credentials`` take one boolean, and ``require_client_auth=False`` maps to gRPC
core's ``GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE`` - the client's certificate is never requested,
so no caller could be identified by it (tests/test_client_listener.py pins this down). So every
client holds a certificate from the cluster CA (the transport's admission), and its identity is the
certificate's URI SAN unless it also sends a bearer token in the ``authorization`` metadata, which
then names the user (a shared ``client:`` certificate plus per-user tokens works).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import structlog

from controlplane import tls

if TYPE_CHECKING:
    from controlplane.client._credentials import Credentials
    from controlplane.server.config import ServerConfig

log = structlog.get_logger(__name__)


def server_credentials(ca: bytes, cert: bytes, key: bytes) -> grpc.ServerCredentials:
    """TLS credentials for the client port: our pair, and client certificates required and verified
    against ``ca`` (see the module docstring for why they cannot be optional)."""
    return grpc.ssl_server_credentials(((key, cert),), root_certificates=ca, require_client_auth=True)


def add_client_port(server: grpc.aio.Server, config: ServerConfig) -> int:
    """Bind ``config.client_address`` on ``server``: TLS when the config has its TLS files, plaintext
    (with a loud warning) only for ``insecure_dev``. Returns the bound port.

    Raises ``tls.TlsError`` for an unreadable or too-open key file and ``RuntimeError`` when the
    address cannot be bound (as ``add_insecure_port`` does).
    """
    if config.tls_ca and config.tls_cert and config.tls_key:
        tls.check_key_permissions(config.tls_key)
        try:
            ca, cert, key = config.tls_ca.read_bytes(), config.tls_cert.read_bytes(), config.tls_key.read_bytes()
        except OSError as exc:
            raise tls.TlsError(f"cannot read the client port's TLS files: {exc}") from exc
        return server.add_secure_port(config.client_address, server_credentials(ca, cert, key))
    if not config.insecure_dev:
        raise tls.TlsError(
            "the client port needs tls_ca, tls_cert and tls_key (CP_TLS_CA, CP_TLS_CERT, CP_TLS_KEY); "
            "only --insecure-dev serves it without TLS"
        )
    log.warning(
        "client_port_insecure",
        client_address=config.client_address,
        detail="INSECURE: the client port serves plaintext gRPC without TLS (--insecure-dev); "
        "anyone who can reach it is treated as admin. Never use this outside a development machine.",
    )
    return server.add_insecure_port(config.client_address)


def peer_channel_credentials(config: ServerConfig) -> grpc.ChannelCredentials | None:
    """What a server presents when it dials another server's client port (a follower handing a call
    to the leader, the autopilot's health checks): its own certificate (good for dialing too) and the
    cluster CA. ``None`` when the client ports are plaintext (``insecure_dev``/``insecure_client_port``)."""
    if config.insecure_dev or config.insecure_client_port:
        return None
    if not (config.tls_ca and config.tls_cert and config.tls_key):
        return None
    tls.check_key_permissions(config.tls_key)
    try:
        ca, cert, key = config.tls_ca.read_bytes(), config.tls_cert.read_bytes(), config.tls_key.read_bytes()
    except OSError as exc:
        raise tls.TlsError(f"cannot read the server's TLS files: {exc}") from exc
    return grpc.ssl_channel_credentials(ca, key, cert)


def peer_sdk_credentials(config: ServerConfig) -> Credentials:
    """The same identity as :func:`peer_channel_credentials`, for a server that talks to the cluster
    through the SDK (a joining server asking to be admitted): its certificate, key and the cluster CA;
    empty (plaintext) when the client ports are plaintext."""
    from controlplane.client._credentials import Credentials

    if config.insecure_dev or config.insecure_client_port or not (config.tls_ca and config.tls_cert and config.tls_key):
        return Credentials()
    return Credentials(ca=config.tls_ca, cert=config.tls_cert, key=config.tls_key)
