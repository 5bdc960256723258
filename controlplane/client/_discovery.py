"""Finding the servers through a gateway: what ``from_gateway`` and ``cpctl --endpoints http://...`` use.

A client asks a gateway once where the servers are (``GET /v1/bootstrap``), then talks to them
directly, so the gateway can go away afterwards. Two steps, the second only when the first could not
answer:

1. **The gateway**, ``DiscoveryPolicy.attempts`` times. A connection failure, a 5xx or a 429 is
   retried after an exponential backoff with full jitter (at least the ``Retry-After`` the gateway
   sends, capped). Any other 4xx is the gateway's considered answer and is raised at once as the
   typed error its ``code`` names (:func:`controlplane.errors.error_from_http_answer`).
2. **The seeds** (server client addresses) over gRPC: the members that a server which knows a
   leader lists.

An answer other than ``join`` (``form`` or ``wait``: no cluster has formed yet) raises ``NoLeader``.

The gateway depends on the SDK, never the reverse. This module uses only the standard library's HTTP
client (``http.client`` in a worker thread, one short GET), so ``pip install controlplane``
discovers a cluster without the gateway's extra. An ``https`` gateway is verified against the
system's CAs and ``credentials.ca`` when it is set; with ``credentials.cert``/``key`` the client
presents its certificate too. No token is sent: a gateway answers discovery without one. Redirects
are not followed (a 3xx is an error naming where it points), and no HTTP proxy is used: a gateway is
on the cluster's own network.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import ssl
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import SplitResult, urlsplit

from controlplane import __version__, errors
from controlplane.client._base import full_jitter
from controlplane.client._credentials import Credentials, CredentialsError

__all__ = ["BOOTSTRAP_PATH", "DiscoveryPolicy", "check_gateway_url", "discover_endpoints", "warn_unused_token"]

BOOTSTRAP_PATH = "/v1/bootstrap"
#: The most of a bootstrap answer read: a thousand members' addresses fit many times over.
MAX_ANSWER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class DiscoveryPolicy:
    """How hard the gateway is asked before the seeds are."""

    #: Tries against the gateway (1 = no retry).
    attempts: int = 3
    #: Seconds to connect to the gateway, per try: a host that drops packets is given up quickly.
    connect_timeout: float = 1.0
    #: Seconds the gateway may stay silent once connected (per read, as sockets time out), and the
    #: deadline for asking the seeds (all of them together).
    timeout: float = 5.0
    #: Upper bound of the first delay; it doubles per retry up to ``max_backoff``.
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    #: A ``Retry-After`` longer than this is cut to it: past that, asking the seeds is better.
    max_retry_after: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("attempts must be >= 1, timeout and connect_timeout > 0")

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Delay before retry ``retry`` (0-based), with full jitter (``_base.full_jitter``)."""
        return full_jitter(retry, self.initial_backoff, self.max_backoff, rng)


@dataclass(frozen=True)
class _Answer:
    status: int
    body: Any
    retry_after: float


async def discover_endpoints(
    url: str,
    *,
    seeds: Sequence[str] = (),
    credentials: Credentials | None = None,
    policy: DiscoveryPolicy | None = None,
    rng: random.Random | None = None,
) -> list[str]:
    """The servers' client addresses, from the gateway at ``url`` or, when it cannot answer, from
    the ``seeds``. Raises ``NoLeader`` while no cluster runs, ``InvalidArgument`` for a URL that is
    not ``http(s)://HOST[:PORT]``, and ``Unavailable`` (naming each failure) when nobody answered."""
    policy = policy or DiscoveryPolicy()
    rng = rng or random.Random()
    target = check_gateway_url(url)
    # Off the loop: loading the system's CAs takes tens of milliseconds.
    context = await asyncio.to_thread(_tls_context, credentials) if target.scheme == "https" else None
    gateway_answer: errors.ControlPlaneError | None = None
    gateway_failure = ""
    for attempt in range(policy.attempts):
        retry_after = 0.0
        try:
            answer = await asyncio.to_thread(_get, target, context, policy)
        except (OSError, http.client.HTTPException) as exc:
            # Refused, reset, timed out, a TLS failure, or not HTTP at all (a gRPC port, say), or
            # an answer cut short: the gateway did not answer.
            gateway_failure = _describe(exc)
        else:
            if 200 <= answer.status < 300:
                return _members(answer.body, url)
            error = errors.error_from_http_answer(answer.status, answer.body)
            if answer.status < 500 and answer.status != 429:
                raise error  # the gateway's (or the cluster's) answer: not retried, not sent around
            gateway_answer, gateway_failure = error, f"HTTP {answer.status}: {error.message}"
            retry_after = min(answer.retry_after, policy.max_retry_after)
        if attempt + 1 < policy.attempts:
            await asyncio.sleep(max(retry_after, policy.backoff(attempt, rng)))
    if not seeds:
        if gateway_answer is not None:
            raise gateway_answer
        raise errors.Unavailable(f"the gateway at {url} did not answer ({gateway_failure}) and no seeds were given")
    try:
        return await _from_seeds(seeds, credentials, policy.timeout)
    except errors.NoLeader:
        raise  # the seeds' answer
    except (errors.Unavailable, errors.DeadlineExceeded) as exc:
        if gateway_answer is not None:
            raise gateway_answer from exc  # the gateway's answer says more than the seeds' silence
        raise errors.Unavailable(
            f"neither the gateway at {url} ({gateway_failure}) nor the seeds answered: {exc.message}"
        ) from exc


def warn_unused_token(token: str | None) -> None:
    """``from_gateway(token=...)`` once went to the gateway, which never needed it for discovery."""
    if token:
        warnings.warn(
            "from_gateway(token=...) is ignored: a gateway answers discovery without a token; the "
            "cluster's token goes in credentials=Credentials(token=...)",
            DeprecationWarning,
            stacklevel=3,
        )


def check_gateway_url(url: str) -> SplitResult:
    """``url`` parsed, or ``InvalidArgument`` unless it is ``http(s)://HOST[:PORT][/PREFIX]``."""
    problem = f"a gateway URL is http://HOST[:PORT] or https://HOST[:PORT], not {url!r}"
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 (raises ValueError for a port that is not one)
    except ValueError:
        raise errors.InvalidArgument(problem) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.query or parts.fragment:
        raise errors.InvalidArgument(problem)
    return parts


def _tls_context(credentials: Credentials | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    try:
        if credentials and credentials.ca:
            context.load_verify_locations(cafile=str(credentials.ca))  # besides the system's CAs
        if credentials and credentials.cert and credentials.key:
            context.load_cert_chain(str(credentials.cert), str(credentials.key))
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: not PEM, a key that does not match
        raise CredentialsError(f"cannot use the CA or client certificate to reach the gateway: {exc}") from None
    return context


def _get(target: SplitResult, context: ssl.SSLContext | None, policy: DiscoveryPolicy) -> _Answer:
    """One GET of the bootstrap path (blocking: run in a thread). Any answer is returned; a failure
    to get one raises ``OSError`` or ``http.client.HTTPException``."""
    # The port always given: http.client would read "::1" without one as host "::", port 1.
    host, port = target.hostname or "", target.port or (443 if context is not None else 80)
    connection: http.client.HTTPConnection
    if context is not None:
        connection = http.client.HTTPSConnection(host, port, timeout=policy.connect_timeout, context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=policy.connect_timeout)
    try:
        connection.connect()
        assert connection.sock is not None
        connection.sock.settimeout(policy.timeout)
        path = target.path.rstrip("/") + BOOTSTRAP_PATH
        headers = {"Accept": "application/json", "User-Agent": f"controlplane-sdk/{__version__}"}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        raw = response.read(MAX_ANSWER_BYTES + 1)
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and len(raw) < int(length):
            raise http.client.IncompleteRead(raw, int(length) - len(raw))  # the gateway died mid-answer
        if len(raw) > MAX_ANSWER_BYTES:
            raise http.client.HTTPException(f"an answer over {MAX_ANSWER_BYTES} bytes")
        body = _json(raw)
        if 300 <= response.status < 400:
            where = response.getheader("Location") or "nowhere"
            body = {"message": f"the gateway answered HTTP {response.status}, a redirect to {where}: give that URL"}
        return _Answer(response.status, body, retry_after_seconds(response.getheader("Retry-After"), time.time()))
    finally:
        connection.close()


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None  # a proxy's HTML page, say: classified by its status


def retry_after_seconds(value: str | None, now: float) -> float:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date, against ``now`` in Unix
    seconds); 0 when absent or bad. The gateway's own client reads it the same way."""
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - now)


def _members(body: Any, url: str) -> list[str]:
    """The client addresses of a bootstrap answer, or ``NoLeader`` for any action but ``join``."""
    if not isinstance(body, dict) or not isinstance(body.get("action"), str):
        raise errors.Internal(f"{url} did not answer as a gateway does (no JSON object with an action): wrong URL?")
    action, members = body["action"], body.get("members")
    if action != "join":
        raise errors.NoLeader(f"the gateway at {url} knows no running cluster yet (it answers {action!r})")
    addresses = [m.get("client_address") for m in members if isinstance(m, dict)] if isinstance(members, list) else []
    # A voter the leader's member directory does not list yet has no client address: skip it.
    usable = [address for address in addresses if isinstance(address, str) and address]
    if not usable:
        raise errors.Internal(f"the gateway at {url} answered join with no member's client_address: {body!r:.300}")
    return usable


async def _from_seeds(seeds: Sequence[str], credentials: Credentials | None, timeout: float) -> list[str]:
    """The members a seed lists, once some seed knows a leader (the same rule as the gateway's)."""
    from controlplane.client._async import AsyncClient  # the client module imports this one

    addresses = [s.strip() for s in seeds if s.strip()]
    if not addresses:
        raise errors.InvalidArgument("the seeds name no server address")
    async with AsyncClient(addresses, timeout=timeout, credentials=credentials) as client:
        status = await client.status()
    led_by_itself = status.node_id == status.leader_id
    if not status.leader_address or (led_by_itself and not status.has_quorum):
        raise errors.NoLeader(
            f"the seeds ({', '.join(addresses)}) know no leader right now (an election is running or quorum is lost)"
        )
    return [member.client_address for member in status.members if member.client_address] or addresses


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
