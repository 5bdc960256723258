"""``gossip.Worker``: one node's side of a gossip group, for a training loop.

::

    async with AsyncClient(endpoints) as client:
        worker = Worker(client, "mnist", "node-7", listen="0.0.0.0:7300", advertise="10.0.0.7:7300")
        await worker.start(params)            # gossip port, membership, heartbeats, group config
        try:
            for epoch in range(epochs):
                params = train_locally(params)
                params = await worker.step(params)   # this round's exchange: W = (I + P) / 2
        finally:
            await worker.close()

What it ties together: an :class:`~gossip.exchange.ExchangeServer` on the node's gossip port, the
node's membership (registered with address purpose ``gossip`` and label ``gossip-group=GROUP``,
joined to the network named like the group when one exists, kept alive by an
:class:`~controlplane.agent.Agent`'s heartbeats), the group's replicated configuration (created from
the first worker's parameters if absent), and the rounds the leader's coordinator commits (followed
through a watch). The worker never decides who it talks to: a round's pairs are committed in the
log before any exchange, and it exchanges only with the partner the committed round names.

Failure is ordinary: an exchange that fails (the partner died, hung or sent corrupt data) leaves the
worker with its own parameters; it reports the failure (the link is penalised in the matrix) and
the next round goes on, without the dead peer once its lease has expired.

Probe rounds (policy ``probe``, see ``gossip.coordinator``) are handled inside ``step``: the worker
measures its link to the partner the probe round names with a warm-up transfer and then one transfer
per size of a synthetic payload (``probe_bytes``, large then small, both directions at once), feeds
each measured one (bytes, seconds of the whole exchange) into its
:class:`~gossip.bandwidth.BandwidthTable` (two sizes separate latency from bandwidth), reports its
estimates and then the round, and goes on waiting: ``step`` returns after a training round only,
and a probe never touches the parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import structlog
from prometheus_client import Counter, Histogram

from controlplane.agent import Agent
from controlplane.client import AsyncClient, Consistency, ControlPlaneError, NodeState, NotFound
from controlplane.client._gossip import GroupConfig, Round, RoundState, TrainingMetrics, training_metrics
from controlplane.state.gossip import check_metrics
from controlplane.state.refusal import Refused
from gossip.bandwidth import BandwidthTable
from gossip.coordinator import GOSSIP_ADDRESS, GROUP_LABEL, PROBE_POLICY
from gossip.exchange import (
    ExchangeError,
    ExchangeResult,
    ExchangeServer,
    PeerTimeout,
    PeerUnavailable,
    exchange_or_keep,
    tls_credentials,
)
from gossip.mixing import Array, Params, is_count, pair_weights

__all__ = [
    "DEFAULT_PROBE_BYTES",
    "MAX_PROBE_BYTES",
    "REPORT_BANDWIDTH_EVERY",
    "RoundStats",
    "Worker",
    "wait_for_members",
]

log = structlog.get_logger("gossip.worker")

# What a training process's workers did, on prometheus_client's default registry (serve it with
# ``prometheus_client.start_http_server``; gossip/README.md). Process-wide, as one process may
# hold several workers.
ROUNDS = Counter(
    "gossip_worker_rounds_total",
    "Rounds this process's workers took part in, by kind (train, probe) and outcome (mixed, idle, failed)",
    ["kind", "result"],
)
ROUND_SECONDS = Histogram(
    "gossip_worker_round_seconds",
    "A training round's exchange, waiting for the partner included (idle rounds excluded)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
BYTES_RECEIVED = Counter(
    "gossip_worker_received_bytes_total", "Payload bytes received from partners, by kind (train, probe)", ["kind"]
)
REPORTS_FAILED = Counter(
    "gossip_worker_round_reports_failed_total", "Round reports the cluster did not take (too late, or unreachable)"
)

REPORT_BANDWIDTH_EVERY = 3
"""Rounds between two bandwidth reports (a failure or a probe is reported at once): each report is a
log entry and bumps the matrix version, so link estimates travel in batches, not per exchange."""

DEFAULT_PROBE_BYTES = (16 * 1024, 1024 * 1024)
"""A probe's two transfers, in payload bytes each way: a small one that is mostly latency and a large
one that is mostly bandwidth (one 1 MiB chunk: the largest single message the exchange sends)."""

MAX_PROBE_BYTES = 64 * 1024 * 1024
"""The largest probe transfer a worker accepts to configure."""

# The exchange ends this long before the round's deadline (a tenth of the round, within 0.25-2 s),
# so that the report - a failure above all - commits before the leader ends the round.
_REPORT_MARGIN_MIN_S = 0.25
_REPORT_MARGIN_MAX_S = 2.0
# Less time than this left in a round: too late to take part; wait for the next one.
_MIN_EXCHANGE_S = 0.05
_MAX_REASON_CHARS = 200
_TRACKER_BACKOFF_MAX_S = 2.0


@dataclass(frozen=True)
class RoundStats:
    """What this worker did in its last round."""

    number: int
    #: The partner the round matched, None when this worker was idle.
    partner: str | None
    #: Payload bytes received from the partner (what the round's bytes_total adds up).
    bytes: int
    #: The whole exchange, waiting for the partner included.
    seconds: float
    #: True when idle or when the exchange mixed; False when it failed (own parameters kept).
    ok: bool
    error: str | None
    #: Squared L2 norm of (parameters after - before): the consensus measure's input (0 when not mixed).
    mix_delta_sq: float = 0.0


def _tensors(params: Params) -> list[tuple[str, str, tuple[int, ...]]]:
    if not params:
        raise ValueError("params must hold at least one tensor")
    out = []
    for name in sorted(params):
        value = params[name]
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            raise ValueError(f"tensor {name!r} must be a floating-point numpy array (gossip averages parameters)")
        out.append((name, value.dtype.name, tuple(value.shape)))
    return out


def _check_examples(examples: int | None) -> int:
    """The count the exchange carries: 0 for None (no count given), else a positive integer."""
    if examples is None:
        return 0
    if not is_count(examples, minimum=1):
        raise ValueError(
            f"examples must be a positive integer (the examples trained on since the last step), or None "
            f"for the plain average; got {examples!r}"
        )
    return int(examples)


def _group_seed(group: str) -> int:
    """The seed a group gets when a Worker creates it: the same for every worker of the group."""
    return int.from_bytes(hashlib.sha256(f"gossip-group\x00{group}".encode()).digest()[:8], "little")


def _probe_sizes(probe_bytes: tuple[int, ...]) -> tuple[int, ...]:
    """The sizes, largest first. A link's first sample sets its estimate outright (RFC 6298's rule)
    and latency is unknown until a second size arrives, so a small transfer first - mostly latency -
    would seed the estimate far below the link's bandwidth, and the EWMA would take dozens of
    samples to climb back. The large transfer first seeds it close; the small one then completes
    the latency fit and contributes the fitted bandwidth. (A 100 MB/s link with 1 ms latency, the
    default sizes: 25 MB/s after a probe run small-first, 92 MB/s large-first.)"""
    sizes = tuple(sorted((int(b) for b in probe_bytes), reverse=True))
    if len(set(sizes)) < 2 or any(not (4 <= b <= MAX_PROBE_BYTES) or b % 4 for b in sizes):
        raise ValueError(
            f"probe_bytes {probe_bytes!r} must hold at least two different sizes (latency and bandwidth are "
            f"told apart by size), each a multiple of 4 (float32) between 4 and {MAX_PROBE_BYTES}"
        )
    return sizes


def _probe_sample(result: ExchangeResult) -> tuple[int, float] | None:
    """One probe transfer's sample: ``(bytes received, the whole exchange's seconds)`` on both ends,
    not the receive time a training exchange contributes. The receive clock starts at the peer's
    header, and the end that reads that header late (the listener, when the dial arrived before its
    offer: the header waited in the server) finds part of the payload already buffered, which
    overstated a 2 Mbit/s link 1.7x (and up to 5.3x, issue 19). Both ends time the same exchange from
    start to accept, so their views agree; the fit over the probe's sizes takes the per-exchange
    fixed cost as its intercept (``LinkEstimate.observe_probe``). None when the transfer failed."""
    if result.ok and result.bytes_received > 0 and result.seconds > 0.0:
        return result.bytes_received, result.seconds
    return None


def _probe_payload(nbytes: int) -> dict[str, Array]:
    # Synthetic float32 zeros: what travels is all that matters. Both ends derive the same layout from
    # the size, so the exchange's spec check catches workers configured with other probe sizes.
    return {"probe": np.zeros(nbytes // 4, dtype=np.float32)}


def _partner_of(round_: Round, node: str) -> str | None:
    return next((p.b if p.a == node else p.a for p in round_.pairs if node in (p.a, p.b)), None)


_METRIC_NAMES = ("loss", "accuracy", "examples")


def _checked_metrics(metrics: Mapping[str, float]) -> TrainingMetrics:
    """``step``'s metrics, refused early (ValueError) where the cluster would refuse the report."""
    unknown = sorted(set(metrics) - set(_METRIC_NAMES))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}: report any of {', '.join(_METRIC_NAMES)}")
    loss, accuracy, examples = (metrics.get(name) for name in _METRIC_NAMES)
    if examples is not None and (
        isinstance(examples, bool) or not float(examples).is_integer() or not 0 <= examples < 2**64
    ):
        raise ValueError(f"examples {examples!r} must be a whole number of examples")
    out = TrainingMetrics(
        loss=None if loss is None else float(loss),
        accuracy=None if accuracy is None else float(accuracy),
        examples=None if examples is None else int(examples),
    )
    try:
        check_metrics(training_metrics(out.loss, out.accuracy, out.examples))
    except Refused as refused:
        raise ValueError(refused.message) from None
    return out


def _delta_sq(before: Params, after: Params) -> float:
    total = 0.0
    for name in sorted(before):
        diff = np.asarray(after[name], dtype=np.float64) - np.asarray(before[name], dtype=np.float64)
        total += float(np.dot(diff.ravel(), diff.ravel()))
    return total


async def wait_for_members(client: AsyncClient, group: str, count: int, *, timeout_s: float = 60.0) -> int:
    """Wait until ``count`` nodes of ``group`` are ACTIVE (registered, and beating: what a round
    takes); the moment to unpause a group created paused, so that round 1 has them all. Returns how
    many are active, fewer when ``timeout_s`` ran out first."""
    deadline = time.monotonic() + timeout_s
    while True:
        active = len(await client.membership.nodes(state=NodeState.ACTIVE, labels={GROUP_LABEL: group}))
        if active >= count or time.monotonic() >= deadline:
            return active
        await asyncio.sleep(0.1)  # polling the cluster for a condition, under a deadline


class Worker:
    """One node of a gossip group: ``start`` once, ``step`` once per round, ``close`` at the end.

    ``listen`` is the gossip port's bind address (port 0: any free port); ``advertise`` the
    ``HOST:PORT`` other nodes dial (default: the bound address). ``policy``, ``sparsity_ratio``,
    ``compression``, ``round_timeout_s``, ``min_participants`` and ``probe_every_rounds`` (None: the
    cluster's default) configure the group when this worker creates it; a group that exists keeps its own
    settings (its tensors and sparsity must match: otherwise ``start`` raises
    ``FailedPrecondition``). ``lease_ttl_s`` is the node's liveness lease: a worker that dies leaves
    the rounds once it runs out. ``probe_bytes`` are the payload sizes of a probe's transfers (run
    largest first); every worker of a group must use the same (the two ends of a probe send the same
    layout: otherwise the probe fails with ``SpecMismatch``). One worker per node id, one group per
    worker. ``tls``: (CA, certificate, key) PEM bytes, the certificate naming ``agent:<node_id>``:
    the gossip port then serves mutual TLS and refuses a partner whose certificate does not name the
    node it claims (gossip/DESIGN.md); None: plaintext gossip, for loopback and trusted networks.
    """

    def __init__(
        self,
        client: AsyncClient,
        group: str,
        node_id: str,
        *,
        listen: str = "127.0.0.1:0",
        advertise: str | None = None,
        policy: str = "saps",
        sparsity_ratio: float = 1.0,
        round_timeout_s: float = 30.0,
        min_participants: int = 2,
        probe_every_rounds: int | None = None,
        lease_ttl_s: float = 10.0,
        labels: dict[str, str] | None = None,
        probe_bytes: tuple[int, ...] = DEFAULT_PROBE_BYTES,
        tls: tuple[bytes, bytes, bytes] | None = None,
        compression: str = "",
    ) -> None:
        labels = dict(labels or {})
        if labels.get(GROUP_LABEL, group) != group:
            raise ValueError(f"label {GROUP_LABEL}={labels[GROUP_LABEL]!r} contradicts the group {group!r}")
        labels[GROUP_LABEL] = group
        self.client = client
        self.group = group
        self.node_id = node_id
        self.policy = policy
        self.sparsity_ratio = sparsity_ratio
        #: "" / "none" or "int8" when this worker creates the group; rounds use the group's own.
        self.compression = compression
        self.round_timeout_s = round_timeout_s
        self.min_participants = min_participants
        self.probe_every_rounds = probe_every_rounds
        self.probe_bytes = _probe_sizes(probe_bytes)
        self.lease_ttl_s = lease_ttl_s
        self.labels = labels
        #: The last training round this worker took part in (None before the first).
        self.last_round: RoundStats | None = None
        #: The last probe round this worker took part in (``bytes``: payload received in both transfers).
        self.last_probe: RoundStats | None = None
        #: The group's configuration as the cluster holds it (set by ``start``).
        self.config: GroupConfig | None = None
        #: This node's link estimates, fed by every exchange and reported in batches.
        self.bandwidth = BandwidthTable(node_id)
        self._advertise = advertise
        self._groups = client.gossip
        server_credentials, channel_credentials = tls_credentials(*tls) if tls is not None else (None, None)
        self._server = ExchangeServer(
            node_id, listen, server_credentials=server_credentials, channel_credentials=channel_credentials
        )
        self._agent: Agent | None = None
        self._tracker: asyncio.Task[None] | None = None
        self._latest: Round | None = None
        self._changed = asyncio.Condition()
        self._done = 0  # the highest round number this worker took part in or gave up on
        self._unreported_rounds = 0
        self._metrics = TrainingMetrics()  # step's, for its training round's report
        self._activity = "training"
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ life

    @property
    def address(self) -> str:
        """The gossip address other nodes dial."""
        return self._advertise or self._server.address

    async def start(self, params: dict[str, np.ndarray]) -> None:
        """Open the gossip port, configure the group if absent (its spec from ``params``), register the
        node with its gossip address, start heartbeats, join the group's network if one exists, and
        start following the group's rounds."""
        if self._started:
            raise RuntimeError("the worker is already started")
        tensors = _tensors(params)
        await self._server.start()
        self._started = True
        try:
            change = await self._groups.configure_group(
                self.group,
                tensors,
                policy=self.policy,
                sparsity_ratio=self.sparsity_ratio,
                round_timeout_s=self.round_timeout_s,
                min_participants=self.min_participants,
                seed=_group_seed(self.group),
                probe_every_rounds=self.probe_every_rounds,
                compression=self.compression,
            )
            self.config = change.group
            if not change.created and (
                change.group.policy != self.policy or change.group.round_timeout_s != self.round_timeout_s
            ):
                log.info(
                    "gossip_group_settings_kept",
                    group=self.group,
                    policy=change.group.policy,
                    round_timeout_s=change.group.round_timeout_s,
                )
            self._agent = Agent(
                self.client,
                self.node_id,
                ttl_s=self.lease_ttl_s,
                addresses={GOSSIP_ADDRESS: self.address},
                labels=self.labels,
                activity=lambda: self._activity,
            )
            await self._agent.register()  # bad input raises here; Agent.start would retry it forever
            await self._agent.start()
            with contextlib.suppress(NotFound):  # no network of that name: the label places the node
                await self.client.membership.join(self.group, node_id=self.node_id)
            self._tracker = asyncio.create_task(self._track(), name=f"gossip-rounds-{self.group}-{self.node_id}")
            self._tracker.add_done_callback(lambda _: asyncio.ensure_future(self._wake()))
        except BaseException:
            await self.close(deregister=self._agent is not None)
            raise

    async def close(self, *, deregister: bool = True) -> None:
        """Stop following rounds, stop heartbeating, leave the membership (``deregister=False``: keep
        the registration and let the lease run out, as a crash would), and stop the gossip port
        (exchanges in flight are cut)."""
        self._closed = True
        if self._tracker is not None:
            self._tracker.cancel()
            await asyncio.gather(self._tracker, return_exceptions=True)  # its error, if any, was step's to raise
        if self._agent is not None:
            agent, self._agent = self._agent, None
            if deregister:
                await self._report_bandwidth()
            try:
                await agent.stop(deregister=deregister)
            except ControlPlaneError as exc:
                log.warning("gossip_worker_deregister_failed", node=self.node_id, reason=exc.message)
        if self._started:
            self._started = False
            await self._server.stop(0)

    async def __aenter__(self) -> Worker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ rounds

    async def step(
        self,
        params: dict[str, np.ndarray],
        *,
        examples: int | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> dict[str, np.ndarray]:
        """Take part in the next committed training round that lists this node: exchange with the
        matched partner (or stay idle), report the round, and return the mixed parameters - or
        ``params`` themselves when idle or when the exchange failed. Waits as long as no such round
        comes; probe rounds that list this node on the way are run and reported meanwhile (they
        never change the parameters).

        ``examples``: how many training examples ``params`` saw since the last step (>= 1). When both
        partners give one, the pair averages with weights ``n_a / (n_a + n_b)`` and
        ``n_b / (n_a + n_b)`` (``gossip.mixing.pair_weights``), which keeps the example-weighted
        mean over the group; None (or a partner that gives none): the plain average.

        ``metrics``: this node's ``loss``, ``accuracy`` (in [0, 1]) and ``examples`` for ``params``
        (any of them), reported with the training round (``cpctl gossip rounds``, ``cpctl gossip
        plot``); ``examples`` defaults to the argument above. ValueError for other keys or values.

        Do not train inside the event loop this runs on: heartbeats and the round watch share it,
        and a loop blocked for longer than the lease loses the node's lease. Train in a thread
        (``await asyncio.to_thread(train, ...)``) or use :class:`gossip.SyncWorker`."""
        if self._tracker is None or self.config is None or self._closed:
            raise RuntimeError("the worker is not running: start it first (and do not step after close)")
        self._check_params(params)
        count = _check_examples(examples)
        reported = dict(metrics or {})
        if examples is not None:
            reported.setdefault("examples", examples)
        self._metrics = _checked_metrics(reported)
        self._activity = "waiting"
        try:
            while True:
                round_, budget = await self._next_round()
                if round_.policy != PROBE_POLICY:
                    break
                self._activity = "probing"
                await self._probe(round_, budget)
                self._activity = "waiting"
            self._activity = "aggregating"
            return await self._take_part(round_, params, budget, count)
        finally:
            self._activity = "training"

    def _check_params(self, params: Params) -> None:
        assert self.config is not None and self.config.spec is not None
        expected = [(t.name, t.dtype, tuple(t.shape)) for t in self.config.spec.tensors]
        got = _tensors(params)
        if got != expected:
            raise ValueError(f"params {got} do not match group {self.group!r}'s tensors {expected}")

    async def _next_round(self) -> tuple[Round, float]:
        """The next running round that lists this node with time left, and the seconds the exchange
        may take (the round's deadline minus the report margin)."""
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: self._candidate() is not None or self._stopped())
                if self._stopped():
                    if self._tracker is not None and not self._closed and not self._tracker.cancelled():
                        self._tracker.result()  # the error that stopped following the rounds
                    raise RuntimeError(f"worker {self.node_id} was closed while waiting for a round")
                round_ = self._candidate()
                assert round_ is not None
            self._done = round_.number
            length_s = (round_.deadline_unix_ms - round_.started_unix_ms) / 1000
            margin = min(_REPORT_MARGIN_MAX_S, max(_REPORT_MARGIN_MIN_S, 0.1 * length_s))
            budget = (round_.deadline_unix_ms - time.time() * 1000) / 1000 - margin
            if budget >= _MIN_EXCHANGE_S:
                return round_, budget
            log.warning("gossip_round_missed", group=self.group, round=round_.number, node=self.node_id)

    def _candidate(self) -> Round | None:
        latest = self._latest
        if (
            latest is not None
            and latest.number > self._done
            and latest.state is RoundState.RUNNING
            and self.node_id in latest.participants
        ):
            return latest
        return None

    def _stopped(self) -> bool:
        return self._closed or self._tracker is None or self._tracker.done()

    async def _wake(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _take_part(self, round_: Round, params: Params, budget: float, examples: int = 0) -> dict[str, Array]:
        partner = _partner_of(round_, self.node_id)
        if partner is None:
            await self._report(RoundStats(round_.number, None, 0, 0.0, True, None))
            return dict(params)
        ratio = round_.spec.sparsity_ratio if round_.spec is not None and round_.spec.sparsity_ratio else 1.0
        started = asyncio.get_running_loop().time()
        result = await self._exchange(round_, partner, params, ratio, budget, examples)
        if result.dialed or not result.ok:
            # The listener's receive clock starts at the dialer's header, which waited in the server
            # when the dial came before this side's offer, with part of the payload buffered behind
            # it: that sample overstates the link (see _probe_sample). The dialer's clock starts
            # with the listener's header, right before its payload. Failures count on both ends.
            result.observe(self.bandwidth, time.monotonic())
        delta = await asyncio.to_thread(_delta_sq, params, result.params) if result.ok else 0.0
        if delta:
            # Weighted, this end moves by w_partner times the pair's difference, not by half of it:
            # report what the plain rule would have moved, so 4 * sum / mixed stays the mean squared
            # distance between partners before the round (DESIGN.md, "The consensus measure").
            _, w_partner = pair_weights(examples, result.peer_examples)
            delta *= 0.25 / (w_partner * w_partner)
        stats = RoundStats(
            number=round_.number,
            partner=partner,
            bytes=result.bytes_received,
            seconds=asyncio.get_running_loop().time() - started,
            ok=result.ok,
            error=None if result.error is None else str(result.error),
            mix_delta_sq=delta,
        )
        await self._report(stats)
        return result.params

    async def _probe(self, round_: Round, budget: float) -> None:
        """Measure the link to the probe round's partner: one transfer per ``probe_bytes`` size,
        largest first, each both ways at once; each side's receive is a (bytes, seconds) sample.
        Then report the estimates (at once: the training rounds after the cycle plan with them) and
        the round. The parameters are not involved at all."""
        partner = _partner_of(round_, self.node_id)
        if partner is None:  # the coordinator lists only probed pairs; another planner may not
            await self._report(RoundStats(round_.number, None, 0, 0.0, True, None), probe=True)
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + budget
        error: ExchangeError | None = None
        address, problem = await self._partner_address(partner, budget)
        if problem:
            error = PeerUnavailable(problem)
            self.bandwidth.penalise(partner, time.monotonic())
        received = 0
        # The smallest size once more, first and unmeasured: it pays the one-off costs (the dialer's
        # address lookup, which the listener's clock would count, the channel and TCP handshakes),
        # so the measured transfers start together on both ends with the connection warm.
        transfers = (self.probe_bytes[-1], *self.probe_bytes) if error is None else ()
        measured: list[tuple[int, float]] = []
        for index, nbytes in enumerate(transfers):
            remaining = deadline - loop.time()
            if remaining < _MIN_EXCHANGE_S:
                error = PeerTimeout(f"probe round {round_.number}: no time left for the {nbytes}-byte transfer")
                self.bandwidth.penalise(partner, time.monotonic())
                break
            # Each transfer its own exchange key ("/" never occurs in a group name): a dialer that gave
            # up on the first can never meet the partner's offer of the other.
            result = await exchange_or_keep(
                self._server,
                partner,
                address,
                f"{self.group}/probe{index}",
                round_.number,
                _probe_payload(nbytes),
                seed=round_.seed,
                deadline_s=remaining,
            )
            sample = _probe_sample(result)
            if index > 0 and sample is not None:
                measured.append(sample)
            received += result.bytes_received
            if result.error is not None:
                result.observe(self.bandwidth, time.monotonic())  # the penalty, if the link is to blame
                error = result.error
                break
        if error is None and measured:
            self.bandwidth.observe_probe(partner, measured, time.monotonic())
        stats = RoundStats(
            number=round_.number,
            partner=partner,
            bytes=received,
            seconds=loop.time() - started,
            ok=error is None,
            error=None if error is None else str(error),
        )
        await self._report(stats, probe=True)

    async def _partner_address(self, partner: str, budget: float) -> tuple[str, str]:
        """(the partner's gossip address, "") when this node dials it (the smaller id dials), ("", "")
        when it does not, ("", why not) when the address cannot be had."""
        if self.node_id > partner:
            return "", ""
        try:
            view = await self.client.membership.get_node(partner, timeout=budget)
        except ControlPlaneError as exc:
            return "", f"cannot look up {partner}'s gossip address: {exc.message}"
        address = view.node.spec.addresses.get(GOSSIP_ADDRESS, "")
        return address, "" if address else f"{partner} advertises no {GOSSIP_ADDRESS!r} address"

    async def _exchange(
        self, round_: Round, partner: str, params: Params, ratio: float, budget: float, examples: int = 0
    ) -> ExchangeResult:
        address = ""
        if self.node_id < partner:  # the smaller id dials: it needs the partner's gossip address
            loop = asyncio.get_running_loop()
            started = loop.time()
            address, problem = await self._partner_address(partner, budget)
            if problem:
                return ExchangeResult(
                    params=dict(params),
                    peer=partner,
                    group=self.group,
                    round=round_.number,
                    bytes_sent=0,
                    bytes_received=0,
                    seconds=loop.time() - started,
                    receive_seconds=0.0,
                    dialed=True,
                    error=PeerUnavailable(problem),
                )
            budget -= loop.time() - started
        return await exchange_or_keep(
            self._server,
            partner,
            address,
            self.group,
            round_.number,
            params,
            seed=round_.seed,
            sparsity_ratio=ratio,
            deadline_s=max(budget, _MIN_EXCHANGE_S),
            compression=round_.spec.compression if round_.spec is not None else "",
            examples=examples,
        )

    async def _report(self, stats: RoundStats, *, probe: bool = False) -> None:
        failed = stats.partner if not stats.ok and stats.partner else ""
        kind = "probe" if probe else "train"
        ROUNDS.labels(kind=kind, result="failed" if failed else "idle" if stats.partner is None else "mixed").inc()
        BYTES_RECEIVED.labels(kind=kind).inc(stats.bytes)
        if not probe and stats.partner is not None:
            ROUND_SECONDS.observe(stats.seconds)
        if probe:
            self.last_probe = stats
            await self._report_bandwidth()  # before the round: its end must find the estimates committed
        else:
            self.last_round = stats
        try:
            await self._groups.report_round(
                self.group,
                stats.number,
                self.node_id,
                bytes=stats.bytes,
                seconds=stats.seconds,
                failed_peer=failed,
                reason=(stats.error or "")[:_MAX_REASON_CHARS],
                mix_delta_sq=stats.mix_delta_sq,
                loss=None if probe else self._metrics.loss,
                accuracy=None if probe else self._metrics.accuracy,
                examples=None if probe else self._metrics.examples,
            )
        except ControlPlaneError as exc:
            # Too late (the leader ended the round) or the cluster is away: the round records this node
            # as silent instead. The parameters are what they are either way.
            REPORTS_FAILED.inc()
            log.warning("gossip_report_failed", group=self.group, round=stats.number, reason=exc.message)
        if failed:
            log.warning(
                "gossip_probe_failed" if probe else "gossip_exchange_failed",
                group=self.group,
                round=stats.number,
                peer=failed,
                error=stats.error,
            )
        if probe:
            return
        self._unreported_rounds += 1
        if failed or self._unreported_rounds >= REPORT_BANDWIDTH_EVERY:
            await self._report_bandwidth()

    async def _report_bandwidth(self) -> None:
        batch = self.bandwidth.report_batch()
        self._unreported_rounds = 0
        if not batch:
            return
        links: Mapping[str, Mapping[str, float]] = {
            peer: {
                "bandwidth_bps": est.bandwidth,
                "latency_s": est.latency,
                "spread_bps": est.spread,
                "samples": est.samples,
            }
            for peer, est in batch.items()
        }
        try:
            await self.client.gossip.report_bandwidth(self.node_id, links)
        except ControlPlaneError as exc:
            log.warning("gossip_bandwidth_report_failed", node=self.node_id, reason=exc.message)

    # ------------------------------------------------------------------ following the rounds

    async def _track(self) -> None:
        """Keep ``_latest`` at the group's newest committed round: one read, then a watch from there on
        (it survives failovers); on an error (e.g. the history it needs was compacted) start over."""
        backoff = 0.1
        while True:
            try:
                start = (await self.client.status()).applied_revision
                try:
                    latest = await self.client.gossip.round(
                        self.group, consistency=Consistency.STALE, min_revision=start
                    )
                except NotFound:
                    pass
                else:
                    await self._observe(latest)
                watch = self.client.watch(f"rounds/{self.group}/", from_revision=start + 1, domains=("gossip",))
                async with watch:
                    async for event in watch:
                        backoff = 0.1
                        if event.gossip is not None and event.gossip.round is not None:
                            await self._observe(event.gossip.round)
            except ControlPlaneError as exc:
                log.warning("gossip_round_watch_failed", group=self.group, reason=exc.message)
                await asyncio.sleep(backoff)  # retry pacing while the cluster is away
                backoff = min(backoff * 2, _TRACKER_BACKOFF_MAX_S)

    async def _observe(self, round_: Round) -> None:
        latest = self._latest
        if latest is None or (round_.number, round_.mod_revision) > (latest.number, latest.mod_revision):
            async with self._changed:
                self._latest = round_
                self._changed.notify_all()
