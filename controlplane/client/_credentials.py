"""What a client proves itself with: the cluster CA it trusts, its certificate pair, a bearer token.

One :class:`Credentials` value serves the blocking and the asyncio client, the CLI and the agent.
With ``ca`` set the channel is TLS (the server's certificate is verified against ``ca`` for the
address's host; dev certificates carry 127.0.0.1 and localhost); with ``cert``/``key`` the client
also presents its certificate (its identity is the certificate's URI SAN). With ``token`` every call
carries the metadata ``authorization: Bearer <token>``. A token is only sent over TLS, or in clear to
a loopback address (an ``--insecure-dev`` cluster on this machine): anything else is refused before
a connection is made.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from controlplane import errors
from controlplane.grpc_options import CHANNEL_OPTIONS

__all__ = ["Credentials", "CredentialsError"]

ENV_CACERT = "CP_CACERT"
ENV_CERT = "CP_CERT"
ENV_KEY = "CP_KEY"
ENV_TOKEN = "CP_TOKEN"
AUTHORIZATION = "authorization"


class CredentialsError(errors.InvalidArgument, ValueError):
    """Credentials that cannot work (a certificate without its key, a missing or too-open file, a
    token over plaintext to another machine); the message says what to change."""


@dataclass(frozen=True)
class Credentials:
    """The client side of TLS and authentication. All fields optional: ``Credentials()`` is a
    plaintext client for an ``--insecure-dev`` cluster."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if self.token is not None:
            object.__setattr__(self, "token", self.token.strip() or None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        """From ``CP_CACERT``, ``CP_CERT``, ``CP_KEY`` and ``CP_TOKEN`` (unset or empty: absent)."""
        env = os.environ if environ is None else environ
        return cls(
            ca=Path(env[ENV_CACERT]) if env.get(ENV_CACERT) else None,
            cert=Path(env[ENV_CERT]) if env.get(ENV_CERT) else None,
            key=Path(env[ENV_KEY]) if env.get(ENV_KEY) else None,
            token=env.get(ENV_TOKEN) or None,
        )

    def merged_over(self, fallback: Credentials) -> Credentials:
        """These credentials, each unset field taken from ``fallback`` (flags over env over context)."""
        return replace(
            self,
            ca=self.ca or fallback.ca,
            cert=self.cert or fallback.cert,
            key=self.key or fallback.key,
            token=self.token or fallback.token,
        )

    @property
    def secure(self) -> bool:
        return self.ca is not None

    def check(self) -> None:
        """Raise :class:`CredentialsError` naming what is missing or wrong."""
        if (self.cert is None) != (self.key is None):
            have, missing = ("cert", "key") if self.cert is not None else ("key", "cert")
            raise CredentialsError(
                f"a client {have} without its {missing}: pass both --cert and --key (CP_CERT, CP_KEY)"
            )
        if self.cert is not None and self.ca is None:
            raise CredentialsError(
                "a client certificate needs TLS: pass --cacert (CP_CACERT) with the cluster CA (ca.pem)"
            )
        for name, path in (("CA certificate", self.ca), ("client certificate", self.cert)):
            if path is not None and not path.is_file():
                raise CredentialsError(f"{name} {path.absolute()} does not exist or is not a file")
        if self.key is not None:
            from controlplane import keyfiles

            try:
                keyfiles.check_key_permissions(self.key)
            except keyfiles.TlsError as exc:
                raise CredentialsError(str(exc)) from None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """TLS channel credentials (``ca`` required), with the client pair when set."""
        self.check()
        if self.ca is None:
            raise CredentialsError("no CA certificate: pass --cacert (CP_CACERT) to use TLS")
        try:
            ca = self.ca.read_bytes()
            key = self.key.read_bytes() if self.key else None
            cert = self.cert.read_bytes() if self.cert else None
        except OSError as exc:
            raise CredentialsError(f"cannot read {exc.filename}: {exc.strerror}") from None
        return grpc.ssl_channel_credentials(ca, key, cert)

    def check_address(self, address: str) -> None:
        """Refuse to send a token in clear to anything but this machine."""
        if self.token and not self.secure and not is_loopback(address):
            raise CredentialsError(
                f"refusing to send a token without TLS to {address}: pass --cacert (CP_CACERT) with the "
                "cluster CA, or use a loopback address for an --insecure-dev cluster"
            )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((AUTHORIZATION, f"Bearer {self.token}"),) if self.token else ()

    def describe(self) -> str:
        """What a person reads in an error: which credentials were used (never the token itself)."""
        parts = [f"TLS with CA {self.ca}" if self.ca else "no TLS"]
        if self.cert:
            parts.append(f"certificate {self.cert}")
        if self.token:
            parts.append("a bearer token")
        return ", ".join(parts)

    # --- channels ---------------------------------------------------------------------------------

    def sync_channel_factory(self) -> Callable[[str], grpc.Channel]:
        """A ``channel_factory`` for :class:`~controlplane.client.Client`."""
        self.check()
        tls_creds = self.channel_credentials() if self.secure else None
        interceptors = (_SyncMetadata(self.metadata()),) if self.token else ()

        def factory(address: str) -> grpc.Channel:
            self.check_address(address)
            if tls_creds is not None:
                channel = grpc.secure_channel(address, tls_creds, options=CHANNEL_OPTIONS)
            else:
                channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
            return grpc.intercept_channel(channel, *interceptors) if interceptors else channel

        return factory

    def async_channel_factory(self) -> Callable[[str], grpc.aio.Channel]:
        """A ``channel_factory`` for :class:`~controlplane.client.AsyncClient`."""
        self.check()
        tls_creds = self.channel_credentials() if self.secure else None
        metadata = self.metadata()

        def factory(address: str) -> grpc.aio.Channel:
            self.check_address(address)
            interceptors = _async_interceptors(metadata) if metadata else None
            if tls_creds is not None:
                return grpc.aio.secure_channel(address, tls_creds, options=CHANNEL_OPTIONS, interceptors=interceptors)
            return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=interceptors)

        return factory


def is_loopback(address: str) -> bool:
    """``address`` (``host:port``, ``[v6]:port``) names this machine."""
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _with_metadata(details: Any, extra: tuple[tuple[str, str], ...]) -> Any:
    metadata = [item for item in (details.metadata or ()) if item[0] != AUTHORIZATION]
    return details._replace(metadata=[*metadata, *extra])


class _SyncMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the token metadata to every call of a blocking channel."""

    def __init__(self, extra: tuple[tuple[str, str], ...]) -> None:
        self._extra = extra

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(_with_metadata(client_call_details, self._extra), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(_with_metadata(client_call_details, self._extra), request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(_with_metadata(client_call_details, self._extra), request_iterator)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(_with_metadata(client_call_details, self._extra), request_iterator)


def _async_interceptors(extra: tuple[tuple[str, str], ...]) -> list[grpc.aio.ClientInterceptor]:
    def details(client_call_details: Any) -> Any:
        metadata = grpc.aio.Metadata(
            *[item for item in (client_call_details.metadata or ()) if item[0] != AUTHORIZATION], *extra
        )
        return client_call_details._replace(metadata=metadata)

    class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
            return await continuation(details(client_call_details), request)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
            return await continuation(details(client_call_details), request)

    class StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
        async def intercept_stream_unary(
            self, continuation: Any, client_call_details: Any, request_iterator: Any
        ) -> Any:
            return await continuation(details(client_call_details), request_iterator)

    class StreamStream(grpc.aio.StreamStreamClientInterceptor):
        async def intercept_stream_stream(
            self, continuation: Any, client_call_details: Any, request_iterator: Any
        ) -> Any:
            return await continuation(details(client_call_details), request_iterator)

    return [UnaryUnary(), UnaryStream(), StreamUnary(), StreamStream()]
