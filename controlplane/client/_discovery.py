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
client (run in a worker thread, one short GET), so ``pip install controlplane`` discovers a cluster
without the gateway's extra. An ``https`` gateway is verified against the system's CAs and
``credentials.ca`` when it is set; with ``credentials.cert``/``key`` the client presents its
certificate too. No token is sent: a gateway answers discovery without one.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from controlplane import __version__, errors
from controlplane.client._credentials import Credentials

__all__ = ["BOOTSTRAP_PATH", "DiscoveryPolicy", "discover_endpoints", "warn_unused_token"]

BOOTSTRAP_PATH = "/v1/bootstrap"
#: The most of a bootstrap answer read: a thousand members' addresses fit many times over.
MAX_ANSWER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class DiscoveryPolicy:
    """How hard the gateway is asked before the seeds are."""

    #: Tries against the gateway (1 = no retry).
    attempts: int = 3
    #: Seconds per try (connect and answer), and per seed.
    timeout: float = 5.0
    #: Upper bound of the first delay; it doubles per retry up to ``max_backoff``.
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    #: A ``Retry-After`` longer than this is cut to it: past that, asking the seeds is better.
    max_retry_after: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.timeout <= 0:
            raise ValueError("attempts must be >= 1 and timeout > 0")

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Delay before retry ``retry`` (0-based): full jitter, so a thousand nodes whose gateway
        failed at once do not come back at once."""
        return rng.uniform(0.0, min(self.max_backoff, self.initial_backoff * 2 ** min(retry, 32)))


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
    base = _base_url(url)
    context = _tls_context(credentials) if base.startswith("https://") else None
    gateway_answer: errors.ControlPlaneError | None = None
    gateway_failure = ""
    for attempt in range(policy.attempts):
        retry_after = 0.0
        try:
            answer = await asyncio.to_thread(_get, base + BOOTSTRAP_PATH, context, policy.timeout)
        except (OSError, ValueError) as exc:  # refused, reset, timed out, a TLS failure, a bad port
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


def _base_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.InvalidArgument(f"a gateway URL is http://HOST[:PORT] or https://HOST[:PORT], not {url!r}")
    return url.strip().rstrip("/")


def _tls_context(credentials: Credentials | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if credentials and credentials.ca:
        context.load_verify_locations(cafile=str(credentials.ca))  # besides the system's CAs
    if credentials and credentials.cert and credentials.key:
        context.load_cert_chain(str(credentials.cert), str(credentials.key))
    return context


def _get(url: str, context: ssl.SSLContext | None, timeout: float) -> _Answer:
    """One GET (blocking: run in a thread). HTTP errors are answers; anything else raises OSError."""
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": f"controlplane-sdk/{__version__}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return _Answer(response.status, _json(response.read(MAX_ANSWER_BYTES)), 0.0)
    except urllib.error.HTTPError as exc:
        with exc:
            body = _json(exc.read(MAX_ANSWER_BYTES))
        return _Answer(exc.code, body, _retry_after(exc.headers.get("Retry-After")))


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None  # a proxy's HTML page, say: classified by its status


def _retry_after(value: str | None) -> float:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); 0 when absent or bad."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - time.time())


def _members(body: Any, url: str) -> list[str]:
    """The client addresses of a bootstrap answer, or ``NoLeader`` for any action but ``join``."""
    action = body.get("action") if isinstance(body, dict) else None
    members = body.get("members") if isinstance(body, dict) else None
    if action != "join" or not isinstance(members, list) or not members:
        raise errors.NoLeader(f"the gateway at {url} knows no running cluster yet (it answers {action!r})")
    addresses = [m.get("client_address") for m in members if isinstance(m, dict)]
    if not all(isinstance(a, str) and a for a in addresses) or not addresses:
        raise errors.Internal(f"the gateway at {url} answered a member without a client_address: {body!r:.300}")
    return addresses  # type: ignore[return-value]


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
    reason = getattr(exc, "reason", None)  # URLError wraps the socket's error
    cause = reason if isinstance(reason, BaseException) else exc
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
