"""Starting a server from gateway URLs instead of a peer list: form the cluster, or join it.

``cpctl serve --gateway URL[,URL] [--bootstrap-expect N]``:

1. **Already decided** (``DATA_DIR/bootstrap.json`` says formed or joined): start exactly as then,
   without asking anyone. A restart never depends on a gateway.
2. **Forming** (with ``--bootstrap-expect``): post this server's candidacy to a gateway every
   ``poll_s``; cast one vote when the rules of :mod:`gateway.formation` say so, writing it to disk
   (fsync) *before* posting it; start Raft with the voted set once every member of it has voted the
   same set. The vote is never changed, also across restarts: that is what makes two clusters
   impossible (``gateway/DESIGN.md``, "Forming a cluster").
3. **Joining** (the gateway answers ``join``: a cluster with a leader exists, and this server's vote,
   if any, did not win): start as a learner with the current members as peers, then ask the leader
   to admit it (``Cluster.AddMember``); the autopilot promotes it to voter once it has caught up.

While running, the server keeps announcing itself (``started``) to the gateways, so a gateway run
without ``--endpoints`` always knows where the cluster is, also after the gateway restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from controlplane import errors
from controlplane.client._credentials import CredentialsError
from controlplane.server.config import ConfigError, Peer, ServerConfig
from controlplane.server.datadir import ensure_private_directory, open_private_for_writing

log = structlog.get_logger("bootstrap")

RECORD_FILE = "bootstrap.json"
#: How often a forming server posts its candidacy (and learns the others' votes).
DEFAULT_POLL_S = 0.25
#: A server votes (by the smallest-ids rule) only after the candidate list stayed the same this long:
#: servers started together then see each other before anyone votes. Safety does not depend on it.
DEFAULT_SETTLE_S = 0.75
#: How often a running server announces itself to the gateways.
ANNOUNCE_INTERVAL_S = 2.0

Outcome = Literal["", "formed", "joined"]


@dataclass(frozen=True)
class BootstrapRecord:
    """What this server decided, kept in its data directory."""

    #: The founding set it voted for (sorted ids, itself included); empty if it never voted.
    vote: tuple[str, ...] = ()
    #: "formed": a founder; "joined": started as a learner of an existing cluster; "": undecided.
    outcome: Outcome = ""
    #: The other servers it started with (its Raft peers at first start).
    peers: tuple[Peer, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "vote": list(self.vote),
                "outcome": self.outcome,
                "peers": [dataclasses.asdict(peer) for peer in self.peers],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> BootstrapRecord:
        data = json.loads(text)
        outcome = data.get("outcome", "")
        if outcome not in ("", "formed", "joined"):
            raise ValueError(f"unknown outcome {outcome!r}")
        return cls(
            vote=tuple(str(v) for v in data.get("vote", ())),
            outcome=outcome,
            peers=tuple(Peer(p["id"], p["raft_address"], p["client_address"]) for p in data.get("peers", ())),
        )


def load_record(data_dir: Path) -> BootstrapRecord:
    path = data_dir / RECORD_FILE
    try:
        return BootstrapRecord.from_json(path.read_text())
    except FileNotFoundError:
        return BootstrapRecord()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Guessing here could cast a second vote: refuse to start instead.
        raise ConfigError(f"{path} is unreadable ({exc}); restore it, or wipe the data directory") from None


def save_record(data_dir: Path, record: BootstrapRecord) -> None:
    """Atomically and durably: a vote must survive a crash the moment after anyone could see it."""
    ensure_private_directory(data_dir)
    path = data_dir / RECORD_FILE
    tmp = path.with_suffix(".tmp")
    with open(open_private_for_writing(tmp), "w") as f:
        f.write(record.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def apply(config: ServerConfig, record: BootstrapRecord) -> ServerConfig:
    return dataclasses.replace(config, peers=record.peers, join=record.outcome == "joined")


class Bootstrapper:
    """Decides how this server starts, through the gateways; then keeps announcing it."""

    def __init__(
        self,
        config: ServerConfig,
        gateways: Sequence[str],
        *,
        expect: int | None = None,
        token: str | None = None,
        poll_s: float = DEFAULT_POLL_S,
        settle_s: float = DEFAULT_SETTLE_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not gateways:
            raise ConfigError("--gateway names no gateway URL")
        if expect is not None and expect < 1:
            raise ConfigError("--bootstrap-expect must be at least 1")
        if config.peers:
            raise ConfigError("--gateway finds the peers itself: give --peer or --gateway, not both")
        # Imported here: the gateway client (httpx, pydantic) is needed only by servers started this way.
        from gateway.client import BreakerPolicy, GatewayClient, RetryPolicy

        # httpx logs every request at INFO: one line per candidacy post would drown the server's log.
        logging.getLogger("httpx").setLevel(logging.WARNING)

        self.config = config
        self.record = load_record(config.data_dir)
        if expect is None and self.record.vote and not self.record.outcome:
            # A vote cast and not yet decided must keep being posted, or the other founders wait forever.
            expect = len(self.record.vote)
            log.info("bootstrap_expect_from_vote", expect=expect)
        self.expect = expect
        # No circuit breaker: the loop already paces itself (a post every poll_s), and a breaker
        # opened by a short blip would silence this server for a minute, long enough for the
        # gateways to forget it (their candidacy TTL is 10 s).
        never_open = BreakerPolicy(failure_threshold=2**31, open_s=0.0)
        # An https gateway may carry a certificate from the cluster CA (deploy/compose/ issues one).
        try:
            self._gateways = [
                GatewayClient(
                    url,
                    token=token,
                    retry=RetryPolicy(attempts=1),
                    breaker=never_open,
                    timeout=2.0,
                    cafile=config.tls_ca,
                )
                for url in gateways
            ]
        except CredentialsError as exc:
            raise ConfigError(str(exc)) from None
        #: Gateways that answered that they form no cluster: running servers do not announce to them.
        self._plain: set[int] = set()
        self._next = 0
        self._poll_s = poll_s
        self._settle_s = settle_s
        self._clock = clock
        self._sleep = sleep
        self._rng = random.Random()

    # --- deciding ------------------------------------------------------------------------------

    async def resolve(self) -> ServerConfig:
        """The configuration to start with: formed, joined, or as decided before."""
        if self.record.outcome:
            log.info("bootstrap_recorded", outcome=self.record.outcome, peers=[p.id for p in self.record.peers])
            return apply(self.config, self.record)
        if self.config.journal_file.exists():
            raise ConfigError(
                f"{self.config.data_dir} holds a Raft journal but no {RECORD_FILE}: this server was started with "
                "--peer before; keep starting it that way"
            )
        from gateway.formation import Candidate, next_step

        me = self.config.node_id
        seen: frozenset[str] = frozenset()
        seen_since = self._clock()
        while True:
            view = await self._ask()
            if view is None:
                await self._pause()
                continue
            candidates = {
                c.id: Candidate(c.id, c.client_address, c.raft_address, tuple(c.vote), c.started)
                for c in view.candidates
            }
            if frozenset(candidates) != seen:
                seen, seen_since = frozenset(candidates), self._clock()
            step = (
                next_step(
                    me,
                    self.expect,
                    self.record.vote,
                    candidates,
                    settled=self._clock() - seen_since >= self._settle_s,
                )
                if self.expect
                else None
            )
            if step is not None and step.action == "form":
                peers = tuple(
                    Peer(m, candidates[m].raft_address, candidates[m].client_address) for m in step.members if m != me
                )
                return self._decide("formed", peers)
            if view.action == "join" and view.leader is not None:
                members = {m.id: Peer(m.id, m.raft_address, m.client_address) for m in view.members}
                if self.record.vote and me in members:
                    # This server's set formed while it was away (the others' announcements may be out
                    # of this gateway's view): it is a founding voter, never a learner.
                    known = {**members, **{c.id: Peer(c.id, c.raft_address, c.client_address) for c in view.candidates}}
                    founders = [known[m] for m in self.record.vote if m != me and m in known]
                    peers = tuple(founders) if len(founders) == len(self.record.vote) - 1 else ()
                    return self._decide("formed", peers or tuple(p for i, p in members.items() if i != me))
                # A vote that did not win (or none) and a running cluster: join it.
                peers = tuple(p for i, p in members.items() if i != me)
                if not peers:
                    raise ConfigError(f"the gateway lists only this server ({me}) as the cluster: nothing to join")
                return self._decide("joined", peers)
            if step is not None and step.action == "vote":
                self.record = dataclasses.replace(self.record, vote=step.members)
                save_record(self.config.data_dir, self.record)
                log.info("bootstrap_voted", vote=list(step.members))
                continue  # post the vote at once
            await self._pause()

    def _decide(self, outcome: Outcome, peers: tuple[Peer, ...]) -> ServerConfig:
        self.record = dataclasses.replace(self.record, outcome=outcome, peers=peers)
        save_record(self.config.data_dir, self.record)
        log.info("bootstrap_decided", outcome=outcome, peers=[p.id for p in peers], vote=list(self.record.vote))
        return apply(self.config, self.record)

    async def _ask(self, index: int | None = None, *, started: bool = False) -> Any:
        """One gateway's answer, or None when it did not answer. ``index``: which gateway (default:
        the current one, moving on to the next after a failure)."""
        rotating = index is None
        position = self._next % len(self._gateways) if index is None else index
        gateway = self._gateways[position]
        try:
            if self.expect or started:
                return await gateway.post_candidacy(
                    self.config.node_id,
                    self.config.advertise_address,
                    self.config.raft_address,
                    vote=self.record.vote,
                    started=started,
                )
            return await gateway.bootstrap()
        except (errors.InvalidArgument, errors.FailedPrecondition, errors.NotFound) as exc:
            # The gateway's considered answer about our request: retrying cannot help.
            raise ConfigError(f"the gateway refused this server: {exc.message}") from None
        except errors.ControlPlaneError as exc:
            log.info("bootstrap_gateway_unavailable", gateway=position, error=exc.message)
            if rotating:
                self._next += 1
            return None

    async def _pause(self) -> None:
        await self._sleep(self._poll_s * self._rng.uniform(0.8, 1.2))

    # --- running -------------------------------------------------------------------------------

    async def announce_forever(self) -> None:
        """While the server runs: keep the gateways told where the cluster is, and (a joiner) get admitted."""
        admitted = self.record.outcome != "joined"
        while True:
            # Every server that runs announces itself to every gateway, joined ones too: a gateway
            # without --endpoints finds the cluster only through these, also after founders are gone.
            for index in range(len(self._gateways)):
                if index in self._plain:
                    continue
                try:
                    await self._ask(index, started=True)
                except ConfigError:
                    self._plain.add(index)  # run with --endpoints: it forms nothing, needs no announcements
            if not admitted:
                admitted = await self._ask_to_be_admitted()
            await self._sleep(ANNOUNCE_INTERVAL_S if admitted else self._poll_s)

    async def _ask_to_be_admitted(self) -> bool:
        from controlplane.client import AsyncClient
        from controlplane.server.client_listener import peer_sdk_credentials

        config = self.config
        addresses = [p.client_address for p in self.record.peers]
        try:
            # As this server (its own certificate), like every server dialing another's client port.
            async with AsyncClient(addresses, timeout=5.0, credentials=peer_sdk_credentials(config)) as client:
                await client.add_member(config.node_id, config.raft_address, config.advertise_address)
        except errors.AlreadyExists:
            return True
        except errors.ControlPlaneError as exc:
            # One membership change at a time, or no leader right now: ask again shortly.
            log.info("bootstrap_admission_pending", error=exc.message)
            return False
        log.info("bootstrap_admitted")
        return True

    async def close(self) -> None:
        for gateway in self._gateways:
            with contextlib.suppress(Exception):
                await gateway.aclose()


async def serve_via_gateway(
    config: ServerConfig, gateways: Sequence[str], *, expect: int | None, token: str | None
) -> None:
    """``cpctl serve --gateway``: decide, then run the server with an announcer beside it."""
    from controlplane.server.app import serve as run_server

    bootstrapper = Bootstrapper(config, gateways, expect=expect, token=token)
    try:
        resolved = await bootstrapper.resolve()
        announcer = asyncio.ensure_future(bootstrapper.announce_forever())
        try:
            await run_server(resolved)
        finally:
            announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await announcer
    finally:
        await bootstrapper.close()
