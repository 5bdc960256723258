"""The gossip domain of the state machine: the versioned bandwidth matrix and the committed rounds.

Pure and deterministic like the rest of the machine; no networkx here (the leader computes the
matching with ``gossip.matching`` and proposes it; the machine only checks it). The rules it keeps:

* **the matrix has versions**: a report batch that changes any link bumps the version once; a link's
  bandwidth is the lower of its two ends' views (an exchange runs at its slower direction);
* **rounds are consecutive per group and never overlap**: round t+1 starts only after round t ended
  (every participant reported, or the leader ended it past its deadline), so a node that sees round t
  committed can never be sent back to an older topology;
* **a committed matching is valid**: pairs are disjoint, within the participants, each ``a < b``,
  and ``idle`` is exactly the participants left unmatched;
* **a failed exchange is remembered**: the failure is recorded in the round and the link's estimate
  halved, so the next matchings avoid it until fresh reports restore it;
* **a configured group's spec is fixed**: ``ConfigureGroup`` creates a group (tensors, sparsity,
  seed, policy, timeout, minimum participants, probe interval) or changes only its policy, timeout,
  minimum, probe interval and paused flag; a round of a configured group must carry exactly the
  group's spec. The leader's coordinator (``gossip.coordinator``) plans the rounds of every
  configured group that is not paused;
* **a round keeps its participants' training metrics**: a report may carry the node's own loss,
  accuracy and example count (each optional, validated: finite, accuracy in [0, 1]); the round keeps
  one record per participant (bounded like the participants) and their means, recomputed from the
  records in node order, so the aggregate does not depend on the order the reports arrived in;
* **probe rounds are rounds**: a round with policy ``probe`` (the coordinator's bandwidth probes on
  disjoint pairs) is validated, ended and penalised like any other; only it counts no mix and keeps
  no training metrics, since a probe leaves every model as it was.

Rounds are kept per group up to ``MAX_ROUNDS_PER_GROUP`` (the oldest dropped first).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

from sortedcontainers import SortedDict

from controlplane.state import limits
from controlplane.state.journal import Journal
from controlplane.state.refusal import Handler, refusing
from controlplane.state.refusal import check as _check
from controlplane.state.refusal import invalid as _invalid
from controlplane.state.refusal import not_found as _not_found
from controlplane.state.refusal import precondition as _precondition
from controlplane.state.tables import BackupSource
from controlplane.v1 import command_pb2, gossip_pb2, watch_pb2

DOMAIN_GOSSIP = "gossip"
MAX_ROUNDS_PER_GROUP = 1000
MAX_LINKS_PER_REPORT = 1024
MAX_PARTICIPANTS = 4096
MAX_TENSORS = 1024
# "saps-adaptive": SAPS where slow nodes sit some rounds out (gossip.matching.AdaptiveSelector).
POLICIES = ("saps", "saps-adaptive", "random", "best_bottleneck")
# A round's policy: a group's, or "probe" for the coordinator's probe rounds (never a group's policy).
PROBE_POLICY = "probe"
ROUND_POLICIES = (*POLICIES, PROBE_POLICY)
# Group names are shorter than other names: the coordinator's request id embeds one
# ("coordinator/GROUP/NUMBER") and request ids are at most 128 characters.
MAX_GROUP_NAME_CHARS = 64
DEFAULT_POLICY = "saps"
DEFAULT_ROUND_TIMEOUT_S = 30.0
MIN_ROUND_TIMEOUT_S = 1.0  # well above a commit, so a deadline is never past when its round applies
MAX_ROUND_TIMEOUT_S = 86_400.0
DEFAULT_MIN_PARTICIPANTS = 2
# Training rounds between two probe cycles when a group is created without saying (0: probe only
# links nobody measured). At most the rounds a group keeps: the coordinator finds the last probe
# round among them.
DEFAULT_PROBE_EVERY_ROUNDS = 50
MAX_GROUPS = 10_000
MAX_DIMS = 32
# Gossip averages parameters: only floating-point tensors can be averaged (numpy dtype names).
FLOAT_DTYPES = ("float16", "float32", "float64", "float128")
# What an update_mask may name, and what is fixed once a group exists.
GROUP_FIELDS = ("policy", "round_timeout_s", "min_participants", "paused", "probe_every_rounds")
FIXED_GROUP_FIELDS = ("spec", "sparsity_ratio", "seed", "compression")
# How exchanged values may travel (gossip.mixing.COMPRESSIONS; "" is "none", the form specs store).
COMPRESSIONS = ("none", "int8")
# A failed exchange halves the link's estimate (the same penalty as gossip.bandwidth.penalise).
FAILURE_PENALTY = 0.5

CommandResult = command_pb2.CommandResult
Round = gossip_pb2.Round
Link = gossip_pb2.Link
GroupConfig = gossip_pb2.GroupConfig
RUNNING = gossip_pb2.ROUND_STATE_RUNNING
DONE = gossip_pb2.ROUND_STATE_DONE
TIMED_OUT = gossip_pb2.ROUND_STATE_TIMED_OUT


def _finite(value: float, what: str, minimum: float = 0.0) -> None:
    if not math.isfinite(value) or value < minimum:
        raise _invalid(f"{what} {value!r} must be a finite number >= {minimum:g}")


def check_metrics(metrics: gossip_pb2.TrainingMetrics) -> None:
    """Refuse a report's training metrics that no training produces (state-independent: the server
    runs it before the log too)."""
    if metrics.HasField("loss") and not math.isfinite(metrics.loss):
        raise _invalid(f"loss {metrics.loss!r} must be a finite number")
    if metrics.HasField("accuracy") and not (math.isfinite(metrics.accuracy) and 0.0 <= metrics.accuracy <= 1.0):
        raise _invalid(f"accuracy {metrics.accuracy!r} must be a fraction between 0 and 1 (0.93, not 93)")


def has_metrics(metrics: gossip_pb2.TrainingMetrics) -> bool:
    return metrics.HasField("loss") or metrics.HasField("accuracy") or metrics.HasField("examples")


def aggregate_metrics(records: list[gossip_pb2.NodeMetrics]) -> gossip_pb2.TrainingMetrics:
    """The round's metrics over its records: plain means of loss and accuracy over the records that
    carry each, the sum of examples."""
    out = gossip_pb2.TrainingMetrics()
    losses = [r.metrics.loss for r in records if r.metrics.HasField("loss")]
    accuracies = [r.metrics.accuracy for r in records if r.metrics.HasField("accuracy")]
    examples = [r.metrics.examples for r in records if r.metrics.HasField("examples")]
    if losses:
        out.loss = _mean(losses)
    if accuracies:
        out.accuracy = min(1.0, _mean(accuracies))
    if examples:
        out.examples = min(sum(examples), 2**64 - 1)  # a uint64 must not overflow
    return out


def _mean(values: list[float]) -> float:
    """The mean as ``fsum(x / n)``: exactly rounded, so it does not depend on the order the values
    came in, and never past the largest double (summing first could overflow on finite values)."""
    return math.fsum(x / len(values) for x in values)


def check_spec(spec: gossip_pb2.TensorSpec) -> None:
    if len(spec.tensors) > MAX_TENSORS:
        raise _invalid(f"at most {MAX_TENSORS} tensors in a round's spec")
    names = set()
    for tensor in spec.tensors:
        _check(limits.check_text(tensor.name, "tensor name", 256) or limits.check_name(tensor.dtype, "dtype"))
        if not tensor.name or tensor.name in names:
            raise _invalid(f"tensor names must be non-empty and unique ({tensor.name!r})")
        names.add(tensor.name)
    if spec.sparsity_ratio and not (0.0 < spec.sparsity_ratio <= 1.0):
        raise _invalid(f"sparsity_ratio {spec.sparsity_ratio} must be in (0, 1] (0 means 1: everything)")
    _check_compression(spec.compression)


def _check_compression(compression: str) -> None:
    if compression and compression not in COMPRESSIONS:
        raise _invalid(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")


def _canonical_compression(compression: str) -> str:
    return "" if compression == "none" else compression


def check_group_name(group: str) -> None:
    _check(limits.check_name(group, "group"))
    if len(group) > MAX_GROUP_NAME_CHARS:
        raise _invalid(
            f"group name {group!r} is {len(group)} characters; a gossip group's name is at most "
            f"{MAX_GROUP_NAME_CHARS} (the coordinator's request ids embed it)"
        )


def canonical_spec(spec: gossip_pb2.TensorSpec) -> gossip_pb2.TensorSpec:
    """The spec with its tensors in name order (the order the exchange lays them out in)."""
    tensors: list[gossip_pb2.TensorInfo] = sorted(spec.tensors, key=lambda t: t.name)
    return gossip_pb2.TensorSpec(
        tensors=tensors, sparsity_ratio=spec.sparsity_ratio or 1.0, compression=_canonical_compression(spec.compression)
    )


def describe_spec(spec: gossip_pb2.TensorSpec) -> str:
    """``w:float32[10,3], b:float32[3] at sparsity 0.5``: for messages a person reads."""
    tensors = ", ".join(f"{t.name}:{t.dtype}[{','.join(str(d) for d in t.shape)}]" for t in spec.tensors)
    described = f"{tensors or 'no tensors'} at sparsity {spec.sparsity_ratio or 1.0:g}"
    return described + (f", compression {spec.compression}" if spec.compression else "")


def normalise_group(config: GroupConfig) -> GroupConfig:
    """A new group's configuration with the defaults filled in and its spec canonical; validated."""
    check_group_name(config.group)
    ratio = config.sparsity_ratio or config.spec.sparsity_ratio or 1.0
    if config.sparsity_ratio and config.spec.sparsity_ratio and config.sparsity_ratio != config.spec.sparsity_ratio:
        raise _invalid(
            f"sparsity_ratio {config.sparsity_ratio:g} and spec.sparsity_ratio {config.spec.sparsity_ratio:g} "
            "differ; give one of them"
        )
    _check_compression(config.compression)
    _check_compression(config.spec.compression)
    compression = _canonical_compression(config.compression or config.spec.compression)
    if (
        config.compression
        and config.spec.compression
        and compression != _canonical_compression(config.spec.compression)
    ):
        raise _invalid(
            f"compression {config.compression!r} and spec.compression {config.spec.compression!r} differ; "
            "give one of them"
        )
    spec = gossip_pb2.TensorSpec()
    spec.CopyFrom(config.spec)
    spec.sparsity_ratio = ratio
    spec.compression = compression
    out = GroupConfig(
        group=config.group,
        sparsity_ratio=ratio,
        spec=canonical_spec(spec),
        seed=config.seed,
        compression=compression,
        **_settable(config),
    )
    check_group(out)
    return out


def _settable(config: GroupConfig) -> dict[str, Any]:
    """The values of ``GROUP_FIELDS`` a request asks for, defaults filled in: for a new group and for
    the fields an update_mask names."""
    return {
        "policy": config.policy or DEFAULT_POLICY,
        "round_timeout_s": config.round_timeout_s or DEFAULT_ROUND_TIMEOUT_S,
        "min_participants": config.min_participants or DEFAULT_MIN_PARTICIPANTS,
        "paused": config.paused,
        "probe_every_rounds": _probe_every_rounds(config),
    }


def _probe_every_rounds(config: GroupConfig) -> int:
    """The probe interval a request asks for: its value when set (0 included), else the default."""
    return config.probe_every_rounds if config.HasField("probe_every_rounds") else DEFAULT_PROBE_EVERY_ROUNDS


def check_group(config: GroupConfig) -> None:
    """Refuse a group configuration (defaults already applied) with a message a person can act on."""
    check_group_name(config.group)
    if config.policy not in POLICIES:
        raise _invalid(f"policy {config.policy!r} is not one of {', '.join(POLICIES)}")
    timeout = config.round_timeout_s
    if not (math.isfinite(timeout) and MIN_ROUND_TIMEOUT_S <= timeout <= MAX_ROUND_TIMEOUT_S):
        raise _invalid(
            f"round_timeout_s {timeout!r} must be between {MIN_ROUND_TIMEOUT_S:g} and {MAX_ROUND_TIMEOUT_S:g} seconds"
        )
    if not DEFAULT_MIN_PARTICIPANTS <= config.min_participants <= MAX_PARTICIPANTS:
        raise _invalid(
            f"min_participants {config.min_participants} must be between {DEFAULT_MIN_PARTICIPANTS} and "
            f"{MAX_PARTICIPANTS} (a round needs two peers to exchange anything)"
        )
    if config.probe_every_rounds > MAX_ROUNDS_PER_GROUP:
        raise _invalid(
            f"probe_every_rounds {config.probe_every_rounds} must be at most {MAX_ROUNDS_PER_GROUP} (the rounds a "
            "group keeps; 0 probes only links nobody measured)"
        )
    if not config.spec.tensors:
        raise _invalid(f"group {config.group!r} needs a tensor spec: the tensors its peers train and average")
    check_spec(config.spec)
    for tensor in config.spec.tensors:
        if tensor.dtype not in FLOAT_DTYPES:
            raise _invalid(
                f"tensor {tensor.name!r} has dtype {tensor.dtype!r}: gossip averages parameters, so every "
                f"tensor must be one of {', '.join(FLOAT_DTYPES)}"
            )
        if len(tensor.shape) > MAX_DIMS:
            raise _invalid(f"tensor {tensor.name!r} has {len(tensor.shape)} dimensions; at most {MAX_DIMS}")


def check_configure(request: gossip_pb2.ConfigureGroupRequest) -> None:
    """The checks of a ConfigureGroup that do not depend on the state (all INVALID_ARGUMENT): the
    server runs them before the log, the state machine again when applying."""
    if not request.update_mask:
        normalise_group(request.group)
        return
    check_group_name(request.group.group)
    mask = list(request.update_mask)
    unknown = sorted(set(mask) - set(GROUP_FIELDS) - set(FIXED_GROUP_FIELDS))
    if unknown or len(set(mask)) != len(mask):
        raise _invalid(
            f"update_mask {mask} must name distinct fields among {', '.join(GROUP_FIELDS)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )


class GossipTable:
    name: ClassVar[str] = "gossip"
    state_type: ClassVar[type[gossip_pb2.GossipState]] = gossip_pb2.GossipState
    backup_noun: ClassVar[str] = "a bad gossip state"

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.reset()

    def reset(self) -> None:
        self.links: SortedDict = SortedDict()  # (a, b) -> Link, a < b
        self.matrix_version = 0
        self.matrix_updated_unix_ms = 0
        self.rounds: dict[str, SortedDict] = {}  # group -> number -> Round
        self.groups: SortedDict = SortedDict()  # name -> GroupConfig (replaced, never mutated)

    def handlers(self) -> dict[str, Callable[[command_pb2.Command], CommandResult]]:
        def wrap(handler: Handler) -> Handler:
            return refusing(lambda: self._journal.revision, handler)

        return {
            "gossip_report_bandwidth": wrap(lambda c: self._report_bandwidth(c.gossip_report_bandwidth)),
            "gossip_start_round": wrap(lambda c: self._start_round(c.gossip_start_round)),
            "gossip_report_round": wrap(lambda c: self._report_round(c.gossip_report_round)),
            "gossip_end_round": wrap(lambda c: self._end_round(c.gossip_end_round)),
            "gossip_configure_group": wrap(lambda c: self._configure_group(c.gossip_configure_group)),
            "gossip_delete_group": wrap(lambda c: self._delete_group(c.gossip_delete_group)),
        }

    # ------------------------------------------------------------------ reads

    def matrix(self, node_id: str = "") -> gossip_pb2.BandwidthMatrix:
        links = [link for (a, b), link in self.links.items() if not node_id or node_id in (a, b)]
        return gossip_pb2.BandwidthMatrix(
            version=self.matrix_version, updated_unix_ms=self.matrix_updated_unix_ms, links=links
        )

    def round(self, group: str, number: int = 0) -> Round:
        _check(limits.check_name(group, "group"))
        rounds = self.rounds.get(group)
        if not rounds:
            raise _not_found(f"group {group!r} has no rounds")
        if number == 0:
            latest: Round = rounds.peekitem(-1)[1]
            return latest
        found: Round | None = rounds.get(number)
        if found is None:
            oldest = rounds.peekitem(0)[0]
            hint = f" (rounds before {oldest} are no longer kept)" if number < oldest else ""
            raise _not_found(f"group {group!r} has no round {number}{hint}")
        return found

    def list_rounds(self, group: str, after: int, limit: int) -> list[Round]:
        _check(limits.check_name(group, "group"))
        rounds = self.rounds.get(group)
        if not rounds:
            return []
        numbers = rounds.irange(minimum=after, inclusive=(False, True))
        out: list[Round] = []
        for number in numbers:
            if len(out) == limit:
                break
            out.append(rounds[number])
        return out

    def group(self, name: str) -> GroupConfig:
        _check(limits.check_name(name, "group"))
        found: GroupConfig | None = self.groups.get(name)
        if found is None:
            raise _not_found(f"no gossip group {name!r} is configured")
        return found

    def list_groups(self) -> list[GroupConfig]:
        return list(self.groups.values())

    def recent_rounds(self, group: str, count: int) -> list[Round]:
        """The newest ``count`` retained rounds of ``group``, oldest first (what the coordinator reads)."""
        rounds = self.rounds.get(group)
        if not rounds:
            return []
        values = rounds.values()
        return list(values[max(0, len(values) - count) :])

    def running(self) -> list[Round]:
        """Every round still running, by group (what the leader watches for deadlines)."""
        return [
            rounds.peekitem(-1)[1]
            for _, rounds in sorted(self.rounds.items())
            if rounds.peekitem(-1)[1].state == RUNNING
        ]

    # ------------------------------------------------------------------ bandwidth

    @property
    def _now(self) -> int:
        return self._journal.time_unix_ms

    def _result(self, **body: object) -> CommandResult:
        return CommandResult(revision=self._journal.revision, **body)  # type: ignore[arg-type]

    def _report_bandwidth(self, request: gossip_pb2.ReportBandwidthRequest) -> CommandResult:
        _check(limits.check_member_id(request.node_id, "node id"))
        if len(request.links) > MAX_LINKS_PER_REPORT:
            raise _invalid(f"at most {MAX_LINKS_PER_REPORT} links per report; send several batches")
        seen = set()
        for report in request.links:
            _check(limits.check_member_id(report.peer, "peer id"))
            if report.peer == request.node_id:
                raise _invalid(f"{request.node_id} reported a link to itself")
            if report.peer in seen:
                raise _invalid(f"peer {report.peer} appears twice in one report")
            seen.add(report.peer)
            _finite(report.bandwidth_bps, "bandwidth_bps")
            _finite(report.latency_s, "latency_s")
            _finite(report.spread_bps, "spread_bps")
        changed = 0
        for report in sorted(request.links, key=lambda r: r.peer):
            a, b = sorted((request.node_id, report.peer))
            current: Link | None = self.links.get((a, b))
            link = Link(a=a, b=b)
            if current is not None:
                link.CopyFrom(current)
            if request.node_id == a:
                link.bandwidth_a_bps = report.bandwidth_bps
            else:
                link.bandwidth_b_bps = report.bandwidth_bps
            views = [v for v in (link.bandwidth_a_bps, link.bandwidth_b_bps) if v > 0]
            link.bandwidth_bps = min(views) if views else 0.0
            link.latency_s = report.latency_s
            link.spread_bps = report.spread_bps
            link.samples = report.samples
            if current is None or link != current:
                link.updated_unix_ms = self._now
                self.links[(a, b)] = link
                changed += 1
        if changed:
            self._bump_matrix()
        return self._result(
            gossip_report_bandwidth=gossip_pb2.ReportBandwidthResponse(
                matrix_version=self.matrix_version, links_changed=changed
            )
        )

    def _bump_matrix(self) -> None:
        self.matrix_version += 1
        self.matrix_updated_unix_ms = self._now
        self._journal.record_detail(
            DOMAIN_GOSSIP,
            "bandwidth",
            watch_pb2.EVENT_TYPE_PUT,
            gossip_pb2.GossipEvent(matrix_version=self.matrix_version),
        )

    def _penalise(self, node: str, peer: str) -> None:
        a, b = sorted((node, peer))
        current: Link | None = self.links.get((a, b))
        link = Link(a=a, b=b)
        if current is not None:
            link.CopyFrom(current)
        link.bandwidth_bps *= FAILURE_PENALTY
        link.bandwidth_a_bps *= FAILURE_PENALTY
        link.bandwidth_b_bps *= FAILURE_PENALTY
        link.failures += 1
        link.updated_unix_ms = self._now
        self.links[(a, b)] = link

    # ------------------------------------------------------------------ rounds

    def _store_round(self, round_: Round) -> Round:
        round_.mod_revision = self._journal.revision + 1
        rounds = self.rounds.setdefault(round_.group, SortedDict())
        rounds[round_.number] = round_
        while len(rounds) > MAX_ROUNDS_PER_GROUP:
            rounds.popitem(0)
        self._journal.record_detail(
            DOMAIN_GOSSIP,
            f"rounds/{round_.group}/{round_.number}",
            watch_pb2.EVENT_TYPE_PUT,
            gossip_pb2.GossipEvent(round=round_, matrix_version=self.matrix_version),
        )
        return round_

    def _start_round(self, request: gossip_pb2.StartRoundRequest) -> CommandResult:
        proposed = request.round
        _check(limits.check_name(proposed.group, "group"))
        if proposed.policy not in ROUND_POLICIES:
            raise _invalid(f"policy {proposed.policy!r} is not one of {', '.join(ROUND_POLICIES)}")
        participants = list(proposed.participants)
        if not participants or len(participants) > MAX_PARTICIPANTS:
            raise _invalid(f"a round needs 1 to {MAX_PARTICIPANTS} participants")
        for node in participants:
            _check(limits.check_member_id(node, "participant"))
        if participants != sorted(set(participants)):
            raise _invalid("participants must be sorted and unique")
        members = set(participants)
        matched: set[str] = set()
        for pair in proposed.pairs:
            if not (pair.a < pair.b) or pair.a not in members or pair.b not in members:
                raise _invalid(f"pair ({pair.a}, {pair.b}) must name two participants with a < b")
            if pair.a in matched or pair.b in matched:
                raise _invalid(f"pair ({pair.a}, {pair.b}) reuses a matched participant")
            matched.update((pair.a, pair.b))
        pairs_key = [(pair.a, pair.b) for pair in proposed.pairs]
        if pairs_key != sorted(pairs_key):
            raise _invalid("pairs must be sorted")
        if list(proposed.idle) != sorted(members - matched):
            raise _invalid("idle must be exactly the participants left unmatched, sorted")
        if proposed.matrix_version > self.matrix_version:
            raise _invalid(
                f"matrix version {proposed.matrix_version} is ahead of the committed one ({self.matrix_version})"
            )
        check_spec(proposed.spec)
        config: GroupConfig | None = self.groups.get(proposed.group)
        if config is not None:
            carried = canonical_spec(proposed.spec)
            if carried != config.spec:
                raise _precondition(
                    f"group {proposed.group!r} is configured with {describe_spec(config.spec)}; a round must carry "
                    f"that spec, not {describe_spec(carried)}"
                )
        if proposed.deadline_unix_ms <= self._now:
            raise _invalid("the deadline must be after the round starts")
        rounds = self.rounds.get(proposed.group)
        last = rounds.peekitem(-1)[1] if rounds else None
        expected = (last.number if last is not None else 0) + 1
        if last is not None and last.number == proposed.number and _same_start(last, proposed):
            # A retry of the start that committed (a new request id after an unknown outcome).
            return self._result(gossip_start_round=gossip_pb2.StartRoundResponse(round=last))
        if proposed.number != expected:
            raise _precondition(
                f"group {proposed.group!r} is at round {expected - 1}; the next round must be {expected}, "
                f"not {proposed.number}"
            )
        if last is not None and last.state == RUNNING:
            raise _precondition(
                f"round {last.number} of group {proposed.group!r} is still running (deadline "
                f"{last.deadline_unix_ms}); end it first"
            )
        bottleneck = min((self._bandwidth(pair.a, pair.b) for pair in proposed.pairs), default=0.0)
        round_ = Round(
            group=proposed.group,
            number=proposed.number,
            participants=participants,
            matrix_version=proposed.matrix_version,
            seed=proposed.seed,
            policy=proposed.policy,
            pairs=proposed.pairs,
            idle=proposed.idle,
            spec=proposed.spec,
            started_unix_ms=self._now,
            deadline_unix_ms=proposed.deadline_unix_ms,
            state=RUNNING,
            bottleneck_bps=bottleneck,
            create_revision=self._journal.revision + 1,
        )
        self._store_round(round_)
        return self._result(gossip_start_round=gossip_pb2.StartRoundResponse(round=round_))

    def _bandwidth(self, a: str, b: str) -> float:
        link: Link | None = self.links.get(tuple(sorted((a, b))))
        return float(link.bandwidth_bps) if link is not None else 0.0

    def _partner(self, round_: Round, node: str) -> str:
        for pair in round_.pairs:
            if node in (pair.a, pair.b):
                return pair.b if pair.a == node else pair.a
        return ""

    def _report_round(self, request: gossip_pb2.ReportRoundRequest) -> CommandResult:
        current = self.round(request.group, request.number) if request.number else None
        if current is None:
            raise _invalid("name the round number")
        _check(limits.check_member_id(request.node_id, "node id") or limits.check_text(request.reason, "reason"))
        _finite(request.seconds, "seconds")
        _finite(request.mix_delta_sq, "mix_delta_sq")
        check_metrics(request.metrics)
        if request.node_id not in current.participants:
            raise _precondition(f"{request.node_id} is not a participant of round {current.number}")
        if request.node_id in current.reported:
            return self._result(gossip_report_round=gossip_pb2.ReportRoundResponse(round=current))
        if current.state != RUNNING:
            raise _precondition(
                f"round {current.number} of group {current.group!r} has ended; its report came too late"
            )
        partner = self._partner(current, request.node_id)
        if request.failed_peer and request.failed_peer != partner:
            raise _invalid(f"{request.failed_peer} was not {request.node_id}'s partner in round {current.number}")
        updated = Round()
        updated.CopyFrom(current)
        updated.reported[:] = sorted([*current.reported, request.node_id])
        updated.bytes_total = min(updated.bytes_total + request.bytes, 2**64 - 1)  # a uint64 must not overflow
        updated.seconds_max = max(updated.seconds_max, request.seconds)
        if partner and not request.failed_peer and current.policy != PROBE_POLICY:
            updated.mixed += 1
            updated.mix_delta_sq += request.mix_delta_sq
        if has_metrics(request.metrics) and current.policy != PROBE_POLICY:
            record = gossip_pb2.NodeMetrics(node=request.node_id, metrics=request.metrics)
            records = sorted([*current.node_metrics, record], key=lambda r: r.node)
            del updated.node_metrics[:]
            updated.node_metrics.extend(records)
            updated.metrics.CopyFrom(aggregate_metrics(records))
        if request.failed_peer:
            updated.failures.append(
                gossip_pb2.RoundFailure(
                    node=request.node_id, peer=request.failed_peer, reason=request.reason or "exchange failed"
                )
            )
            self._penalise(request.node_id, request.failed_peer)
            self._bump_matrix()
        if len(updated.reported) == len(updated.participants):
            updated.state = DONE
            updated.ended_unix_ms = self._now
        self._store_round(updated)
        return self._result(gossip_report_round=gossip_pb2.ReportRoundResponse(round=updated))

    def _end_round(self, request: gossip_pb2.EndRoundRequest) -> CommandResult:
        current = self.round(request.group, request.number) if request.number else None
        if current is None:
            raise _invalid("name the round number")
        if current.state != RUNNING:
            return self._result(gossip_end_round=gossip_pb2.EndRoundResponse(round=current, ended=False))
        # Re-checked against this entry's time: the leader's clock decided, the log confirms.
        if current.deadline_unix_ms > self._now:
            raise _precondition(
                f"round {current.number} of group {current.group!r} runs until {current.deadline_unix_ms}; "
                "it ends on its own when every participant reports"
            )
        updated = Round()
        updated.CopyFrom(current)
        silent = sorted(set(current.participants) - set(current.reported))
        for node in silent:
            updated.failures.append(gossip_pb2.RoundFailure(node=node, reason="no report by the deadline"))
            partner = self._partner(current, node)
            if partner:
                self._penalise(node, partner)
        if any(self._partner(current, node) for node in silent):
            self._bump_matrix()
        updated.state = TIMED_OUT
        updated.ended_unix_ms = self._now
        self._store_round(updated)
        return self._result(gossip_end_round=gossip_pb2.EndRoundResponse(round=updated, ended=True))

    # ------------------------------------------------------------------ groups

    def _store_group(self, config: GroupConfig) -> GroupConfig:
        config.mod_revision = self._journal.revision + 1
        config.updated_unix_ms = self._now
        self.groups[config.group] = config
        self._journal.record_detail(
            DOMAIN_GOSSIP, f"groups/{config.group}", watch_pb2.EVENT_TYPE_PUT, gossip_pb2.GossipEvent(group=config)
        )
        return config

    def _configure_group(self, request: gossip_pb2.ConfigureGroupRequest) -> CommandResult:
        given = request.group
        mask = list(request.update_mask)
        existing: GroupConfig | None = self.groups.get(given.group)
        if not mask:
            config = normalise_group(given)  # all of check_configure for a creation
            if existing is not None:
                if existing.spec != config.spec:
                    raise _precondition(
                        f"gossip group {given.group!r} already exists with {describe_spec(existing.spec)}, not "
                        f"{describe_spec(config.spec)}; a group's tensors, sparsity and compression are fixed: "
                        "configure a new group name for a new layout"
                    )
                return self._result(
                    gossip_configure_group=gossip_pb2.ConfigureGroupResponse(group=existing, created=False)
                )
            if len(self.groups) >= MAX_GROUPS:
                raise _precondition(f"{MAX_GROUPS} gossip groups are configured; delete one first")
            config.create_revision = self._journal.revision + 1
            self._store_group(config)
            return self._result(
                gossip_configure_group=gossip_pb2.ConfigureGroupResponse(group=config, created=True, changed=True)
            )
        check_configure(request)
        if existing is None:
            raise _not_found(
                f"no gossip group {given.group!r} is configured; create it first (without update_mask, "
                "with its tensor spec)"
            )
        fixed = [field for field in mask if field in FIXED_GROUP_FIELDS]
        if fixed:
            raise _precondition(
                f"the {' and '.join(fixed)} of gossip group {given.group!r} cannot change once it exists (its peers "
                "exchange by them); configure a new group name instead"
            )
        updated = GroupConfig()
        updated.CopyFrom(existing)
        asked = _settable(given)
        for field in mask:
            setattr(updated, field, asked[field])
        check_group(updated)
        changed = updated != existing
        if changed:
            self._store_group(updated)
        return self._result(
            gossip_configure_group=gossip_pb2.ConfigureGroupResponse(
                group=updated if changed else existing, created=False, changed=changed
            )
        )

    def _delete_group(self, request: gossip_pb2.DeleteGroupRequest) -> CommandResult:
        _check(limits.check_name(request.group, "group"))
        existing: GroupConfig | None = self.groups.get(request.group)
        if existing is None:
            return self._result(gossip_delete_group=gossip_pb2.DeleteGroupResponse(deleted=False))
        del self.groups[request.group]
        self._journal.record_detail(
            DOMAIN_GOSSIP,
            f"groups/{request.group}",
            watch_pb2.EVENT_TYPE_DELETE,
            gossip_pb2.GossipEvent(group=existing),
        )
        return self._result(gossip_delete_group=gossip_pb2.DeleteGroupResponse(deleted=True))

    # ------------------------------------------------------------------ snapshot

    def to_state(self) -> gossip_pb2.GossipState:
        state = gossip_pb2.GossipState(matrix=self.matrix())
        for _, rounds in sorted(self.rounds.items()):
            state.rounds.extend(rounds.values())
        state.groups.extend(self.groups.values())
        return state

    def load_state(self, state: gossip_pb2.GossipState | None) -> None:
        self.load(state if state is not None else gossip_pb2.GossipState())

    def check_backup(self, state: gossip_pb2.GossipState | None, backup: BackupSource) -> None:
        """Taken as it is: a round or a matrix from a backup refers to nothing outside gossip."""

    def restore_backup(self, state: gossip_pb2.GossipState | None, backup: BackupSource) -> None:
        self.load_state(state)

    def load(self, state: gossip_pb2.GossipState) -> None:
        self.reset()
        self.matrix_version = state.matrix.version
        self.matrix_updated_unix_ms = state.matrix.updated_unix_ms
        for link in state.matrix.links:
            self.links[(link.a, link.b)] = link
        for round_ in state.rounds:
            self.rounds.setdefault(round_.group, SortedDict())[round_.number] = round_
        for config in state.groups:
            if not config.HasField("probe_every_rounds"):  # a snapshot from before probe rounds
                config.probe_every_rounds = DEFAULT_PROBE_EVERY_ROUNDS
            self.groups[config.group] = config


def _same_start(committed: Round, proposed: Round) -> bool:
    return (
        list(committed.participants) == list(proposed.participants)
        and list(committed.pairs) == list(proposed.pairs)
        and committed.seed == proposed.seed
        and committed.matrix_version == proposed.matrix_version
    )
