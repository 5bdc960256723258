"""The checkers (registers, set, ports, leases, watch), availability figures, and the summary table.

Each checker takes what the clients recorded (and, where the clients cannot know the outcome of
an operation, what the cluster says after the run) and returns violations. A violation carries
the run-relative time it is attributed to, so the table can charge it to the fault in progress.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from controlplane.server.leader_clock import SLEW

from . import wgl
from .history import FAIL, INFO, OK, History, Op
from .nemesis import Fault

LOST, DUPLICATED, OTHER = "lost", "duplicated", "other"
#: Operations that go through the log: an ok one is a successful write. A lease keepalive is not
#: one: the leader answers it from memory (renewals.py), a cut-off leader too until it steps down.
WRITES = {"write", "cas", "add", "allocate", "release", "grant", "acquire", "revoke"}
READS = {"read"}


@dataclass
class Violation:
    checker: str
    kind: str  # LOST, DUPLICATED or OTHER
    message: str
    at: float | None = None  # run-relative seconds

    def __str__(self) -> str:
        when = f" at {self.at:.2f} s" if self.at is not None else ""
        return f"[{self.checker}/{self.kind}]{when} {self.message}"


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------- registers


def check_registers(ops: Iterable[Op]) -> Report:
    """WGL per key over ok and info operations (fail ones never took effect)."""
    report = Report()
    by_key: dict[str, list[wgl.RegisterOp]] = defaultdict(list)
    for op in ops:
        if op.type in (OK, INFO):
            complete = op.complete_s if op.type == OK else None
            by_key[op.key].append(wgl.RegisterOp(op.f, op.value, op.result, op.invoke_s, complete, op.index))
    for key, key_ops in sorted(by_key.items()):
        result = wgl.check(key_ops)
        report.notes.append(
            f"register {key}: {result.verdict.value} ({result.ops} ops after pruning, {result.steps} steps)"
        )
        if result.verdict is wgl.Verdict.NOT_LINEARIZABLE:
            culprit = result.culprit
            detail = (
                f"op #{culprit.id} {culprit.f} value={culprit.value!r} result={culprit.result!r} "
                f"[{culprit.invoke:.3f}, {culprit.complete}]"
                if culprit is not None
                else "no culprit"
            )
            report.violations.append(
                Violation(
                    "linearizability",
                    OTHER,
                    f"{key} is not linearizable; cannot place {detail}",
                    culprit.invoke if culprit else None,
                )
            )
        elif result.verdict is wgl.Verdict.UNKNOWN:
            report.notes.append(f"register {key}: search bound reached, not checked")
    return report


# --------------------------------------------------------------------------------------- set


def check_set(ops: Sequence[Op], present: set[str]) -> Report:
    """Every acknowledged add is in the final read; nothing there was never attempted or failed."""
    report = Report()
    attempted = {op.key: op for op in ops}
    acked = {op.key: op for op in ops if op.type == OK}
    failed = {op.key: op for op in ops if op.type == FAIL}
    unknown = [op for op in ops if op.type == INFO]
    for key, op in sorted(acked.items()):
        if key not in present:
            report.violations.append(Violation("set", LOST, f"acknowledged add {key} is missing", op.complete_s))
    for key in sorted(present - set(attempted)):
        report.violations.append(Violation("set", OTHER, f"{key} is present but was never added"))
    for key, op in sorted(failed.items()):
        if key in present:
            report.violations.append(
                Violation("set", OTHER, f"{key} is present although its add failed ({op.error})", op.invoke_s)
            )
    recovered = sum(1 for op in unknown if op.key in present)
    report.notes.append(
        f"set: {len(acked)} acknowledged, {len(unknown)} unknown ({recovered} of them present), "
        f"{len(failed)} failed, {len(present)} present"
    )
    return report


# --------------------------------------------------------------------------------------- ports


@dataclass
class Holding:
    service: str
    port: int
    start: int  # revision of the allocation
    end: float  # revision of the release (inf: still held)
    acknowledged: bool
    held_from: float  # run seconds: when the client learned it holds the port (ack), inf if never
    held_until: float  # run seconds: when it invoked the release


def needs_server_history(ops: Sequence[Op]) -> set[str]:
    """Services whose holding the clients cannot reconstruct alone (an outcome they never learned)."""
    by_service: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_service[op.key].append(op)
    return {
        service
        for service, service_ops in by_service.items()
        if any(op.type == INFO for op in service_ops)
        or not any(op.f == "release" and op.type == OK for op in service_ops)
    }


def port_holdings(ops: Sequence[Op], server_history: dict[str, list[tuple[str, int, int]]]) -> list[Holding]:
    """Who held which port over which revisions: from the clients' answers where they have one,
    else from the server's port history ((action, revision, port) per service).

    ``end`` is -1 for an acknowledged allocation that its first answered release found gone."""
    by_service: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_service[op.key].append(op)
    holdings = []
    for service, service_ops in by_service.items():
        allocate = next(op for op in service_ops if op.f == "allocate")
        releases = [op for op in service_ops if op.f == "release"]
        port: int | None = None
        start: int | None = None
        end: float | None = None
        if allocate.type == OK:
            port, start = allocate.result, allocate.extra["create_revision"]
        answered = next((op for op in releases if op.type == OK), None)
        if answered is not None and answered.result:  # released=True names what it freed
            end = answered.revision
            port = port if port is not None else answered.extra.get("port")
            start = start if start is not None else answered.extra.get("create_revision")
        elif answered is not None and allocate.type == OK:
            earlier_unknown = any(op.type == INFO and op.index < answered.index for op in releases)
            if not earlier_unknown:
                end = -1
        if port is None or start is None or end is None:
            for action, revision, new_port in server_history.get(service, []):
                if action == "ALLOCATED" and start is None:
                    port, start = new_port, revision
                elif action == "RELEASED" and end is None:
                    end = revision
        if port is None or start is None:
            continue  # never allocated
        holdings.append(
            Holding(
                service,
                port,
                start,
                float("inf") if end is None else end,
                allocate.type == OK,
                allocate.complete_s if allocate.type == OK else float("inf"),
                releases[0].invoke_s if releases else float("inf"),
            )
        )
    return holdings


def check_ports(ops: Sequence[Op], server_history: dict[str, list[tuple[str, int, int]]]) -> Report:
    """No port held by two services at once: by revision (what the cluster committed) and in real
    time (two clients each holding an acknowledged allocation of the same port)."""
    report = Report()
    holdings = port_holdings(ops, server_history)
    for h in holdings:
        if h.end == -1:
            report.violations.append(
                Violation("ports", LOST, f"{h.service}'s acknowledged port {h.port} was gone at release", h.held_from)
            )
    by_port: dict[int, list[Holding]] = defaultdict(list)
    for h in holdings:
        if h.end != -1:
            by_port[h.port].append(h)
    for port, held in sorted(by_port.items()):
        held.sort(key=lambda h: h.start)
        for a, b in itertools.pairwise(held):
            if b.start < a.end:
                report.violations.append(
                    Violation(
                        "ports",
                        DUPLICATED,
                        f"port {port} held by {a.service} (revisions {a.start}-{a.end}) and by {b.service} "
                        f"(from {b.start})",
                        b.held_from if b.held_from != float("inf") else None,
                    )
                )
        acked = sorted((h for h in held if h.acknowledged), key=lambda h: h.held_from)
        for i, a in enumerate(acked):
            for b in acked[i + 1 :]:
                if b.held_from >= a.held_until:
                    break
                report.violations.append(
                    Violation(
                        "ports",
                        DUPLICATED,
                        f"port {port}: {b.service} was acknowledged at {b.held_from:.3f} s while {a.service} "
                        f"held it (acknowledged {a.held_from:.3f} s, released from {a.held_until:.3f} s)",
                        b.held_from,
                    )
                )
    allocations = [op for op in ops if op.f == "allocate"]
    report.notes.append(
        f"ports: {sum(op.type == OK for op in allocations)} allocations acknowledged, "
        f"{sum(op.type == INFO for op in allocations)} unknown, "
        f"{sum(op.type == FAIL for op in allocations)} refused; {len(holdings)} holdings over {len(by_port)} ports"
    )
    return report


# --------------------------------------------------------------------------------------- leases


@dataclass
class LeaseHold:
    """One holder's acknowledged acquisition of the lock port, and how long its lease lived for sure."""

    holder: str
    port: int
    revision: int  # the allocation's create revision: the cluster's order of holders
    acquired: float  # run seconds: when the holder was told it holds the port
    #: Run seconds until which the lease was certainly alive and not given up (``lease_alive_until``).
    alive_until: float


def lease_alive_until(renewal_invoked: float, ttl_s: float) -> float:
    """Until when a lease acknowledged renewed by a call invoked at ``renewal_invoked`` certainly
    lives: the renewal was applied after it was invoked, and the cluster expires a lease a TTL after
    the renewal it applied at the earliest, as the leader's clock counts it; that clock may run up
    to ``SLEW`` fast while it catches up with a stepped wall clock (leader_clock.py)."""
    return renewal_invoked + ttl_s / (1 + SLEW)


def _renewed(op: Op) -> bool:
    return op.type == OK and op.f in ("grant", "keepalive")


def _lease_gone(op: Op) -> bool:
    """A keepalive or an acquisition answered that the lease no longer exists."""
    return op.f in ("keepalive", "acquire") and op.type == FAIL and op.error.startswith("NotFound: lease")


def lease_holds(ops: Sequence[Op], ttl_s: float) -> tuple[list[LeaseHold], list[Violation]]:
    """Each acknowledged acquisition with its certain lifetime; and the violations one cycle shows
    by itself: a lease found gone before a TTL had passed since an acknowledged renewal's
    invocation, and a revoke of a lease certainly alive that released no port."""
    by_holder: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_holder[op.key].append(op)
    holds, found = [], []
    for holder, cycle in by_holder.items():
        renewals = [op.invoke_s for op in cycle if _renewed(op)]
        if not renewals:
            continue
        alive_until = lease_alive_until(max(renewals), ttl_s)
        for gone in (op for op in cycle if _lease_gone(op)):
            # Renewals answered before it were applied before it (an expired lease never comes back).
            before = [op.invoke_s for op in cycle if _renewed(op) and op.index < gone.index]
            if before and gone.complete_s < lease_alive_until(max(before), ttl_s):
                found.append(
                    Violation(
                        "lease",
                        OTHER,
                        f"{holder}'s lease was found gone by its {gone.f} at {gone.complete_s:.3f} s, less than its "
                        f"TTL ({ttl_s:g} s) after its renewal invoked at {max(before):.3f} s",
                        gone.complete_s,
                    )
                )
        acquired = next((op for op in cycle if op.f == "acquire" and op.type == OK), None)
        for revoke in (op for op in cycle if op.f == "revoke" and op.type == OK):
            # Answered while the lease certainly lived, with the port attached: it must free it.
            if acquired is not None and revoke.complete_s < alive_until and not revoke.result:
                found.append(
                    Violation(
                        "lease",
                        OTHER,
                        f"{holder}'s revoke at {revoke.complete_s:.3f} s released no port, though its lease "
                        f"was alive until at least {alive_until:.3f} s and held the port acquired at revision "
                        f"{acquired.revision}: the lease was gone early, or the port had left it",
                        revoke.complete_s,
                    )
                )
        # Giving up ends the holder's claim; a revoke that certainly failed gave up nothing.
        revokes = [op.invoke_s for op in cycle if op.f == "revoke" and op.type != FAIL]
        if revokes:
            alive_until = min(alive_until, min(revokes))
        if acquired is not None:
            revision = acquired.extra.get("create_revision") or acquired.revision
            holds.append(LeaseHold(holder, acquired.result, revision, acquired.complete_s, alive_until))
    return holds, found


def check_leases(ops: Sequence[Op], ttl_s: float) -> Report:
    """A lease never held twice: in the cluster's order of acquisitions, nobody was told it holds
    the port while an earlier holder's lease was certainly alive (the lock property that etcd's
    leases give its ``concurrency.Mutex``); no lease gone before its TTL ran out; and a revoke of a
    live lease frees its port."""
    report = Report()
    holds, found = lease_holds(ops, ttl_s)
    report.violations += found
    by_port: dict[int, list[LeaseHold]] = defaultdict(list)
    for hold in holds:
        by_port[hold.port].append(hold)
    for port, port_holds in sorted(by_port.items()):
        port_holds.sort(key=lambda h: h.revision)
        earlier: LeaseHold | None = None  # of the holders before, the one whose lease lived longest
        for hold in port_holds:
            if earlier is not None and hold.acquired < earlier.alive_until:
                report.violations.append(
                    Violation(
                        "lease",
                        DUPLICATED,
                        f"port {port}: {hold.holder} was told at {hold.acquired:.3f} s that it holds it "
                        f"(revision {hold.revision}) while {earlier.holder}'s lease was alive until at least "
                        f"{earlier.alive_until:.3f} s (acquired at revision {earlier.revision})",
                        hold.acquired,
                    )
                )
            if earlier is None or hold.alive_until > earlier.alive_until:
                earlier = hold
    counts = Counter((op.f, op.type) for op in ops)
    abandoned = sum(1 for op in ops if op.f == "acquire" and op.type == OK and op.extra.get("abandoned"))
    refused = sum(1 for op in ops if op.f == "acquire" and op.type == FAIL and op.error.startswith("ResourceExhausted"))
    report.notes.append(
        f"leases: {counts['acquire', OK]} acquisitions acknowledged ({abandoned} left to expire), "
        f"{refused} refused while the port was held, {counts['acquire', INFO]} unknown; "
        f"{counts['keepalive', OK]} renewals, {sum(1 for op in ops if _lease_gone(op))} leases found gone"
    )
    return report


# --------------------------------------------------------------------------------------- watch


def check_watch(
    deliveries: Sequence[tuple[int, list[tuple[int, str, str, float]], str]],
    expected: Sequence[tuple[int, str]] | None,
    acknowledged: dict[int, str],
) -> Report:
    """Each watcher got every revision of ``expected`` once, in increasing order, and nothing else.

    ``expected`` is the prefix's revision sequence replayed after the run; ``acknowledged``
    (revision -> key, from the clients' acknowledged writes) must be part of it, so the replay is
    checked against what the clients were told. Without a replay (None: compacted history) the
    expected sequence is everything any watcher received plus every acknowledged write, which
    still finds a revision one watcher missed, duplicates and disorder.
    """
    report = Report()
    if expected is None:
        union = {(revision, key) for _, events, _ in deliveries for revision, key, _, _ in events}
        expected = sorted(union | set(acknowledged.items()))
    expected_keys = dict(expected)
    for revision, key in sorted(acknowledged.items()):
        if expected_keys.get(revision) != key:
            report.violations.append(
                Violation(
                    "watch",
                    LOST,
                    f"acknowledged write of {key} at revision {revision} is not in the replayed history "
                    f"(found {expected_keys.get(revision)!r})",
                )
            )
    for watcher, events, error in deliveries:
        if error:
            report.violations.append(Violation("watch", OTHER, f"watcher {watcher} stopped: {error}"))
        seen: set[int] = set()
        last = 0
        for revision, key, _type, at in events:
            if revision in seen:
                report.violations.append(
                    Violation("watch", DUPLICATED, f"watcher {watcher} got revision {revision} twice", at)
                )
            elif revision < last:
                report.violations.append(
                    Violation("watch", OTHER, f"watcher {watcher} got revision {revision} after {last}", at)
                )
            if revision not in expected_keys:
                report.violations.append(
                    Violation("watch", OTHER, f"watcher {watcher} got revision {revision} ({key}), not in history", at)
                )
            elif expected_keys[revision] != key:
                report.violations.append(
                    Violation(
                        "watch",
                        OTHER,
                        f"watcher {watcher}: revision {revision} is {key}, history says {expected_keys[revision]}",
                        at,
                    )
                )
            seen.add(revision)
            last = max(last, revision)
        missing = sorted(set(expected_keys) - seen)
        if missing:
            report.violations.append(
                Violation(
                    "watch",
                    LOST,
                    f"watcher {watcher} missed {len(missing)} revision(s): {missing[:10]}",
                    _time_of_gap(events, missing[0]),
                )
            )
            report.violations[-1].kind = LOST
        report.notes.append(f"watch {watcher}: {len(events)} events of {len(expected_keys)} expected")
    return report


def _time_of_gap(events: Sequence[tuple[int, str, str, float]], revision: int) -> float | None:
    """When the watcher received the first event after a missing revision."""
    return next((at for r, _, _, at in events if r > revision), None)


# --------------------------------------------------------------------------------------- availability


@dataclass
class FaultFigures:
    fault: Fault
    failover: float | None  # first successful write invoked after the injection, from the injection
    longest_gap: float  # longest time without a successful write around this fault
    gap_at: tuple[float, float]


def write_completions(history: History) -> list[float]:
    return sorted(op.complete_s for op in history.ops if op.type == OK and op.f in WRITES)


def gaps(times: Sequence[float]) -> list[tuple[float, float]]:
    """(start, end) of every interval between consecutive successful writes, longest first."""
    return sorted(itertools.pairwise(times), key=lambda g: g[0] - g[1])


def fault_figures(history: History, faults: Sequence[Fault]) -> list[FaultFigures]:
    writes = write_completions(history)
    intervals = gaps(writes)
    figures = []
    for fault in faults:
        first = min(
            (op.complete_s for op in history.ops if op.type == OK and op.f in WRITES and op.invoke_s >= fault.injected),
            default=None,
        )
        # Gaps that overlap the fault, from its injection until it was healed and whole again.
        near = [(a, b) for a, b in intervals if b > fault.injected and a < max(fault.whole, fault.injected)]
        longest = max(near, key=lambda g: g[1] - g[0], default=(fault.injected, fault.injected))
        figures.append(
            FaultFigures(fault, None if first is None else first - fault.injected, longest[1] - longest[0], longest)
        )
    return figures


# --------------------------------------------------------------------------------------- the table

COLUMNS = (
    "nemesis",
    "faults",
    "ops",
    "ok",
    "info",
    "fail",
    "lost",
    "dup",
    "violations",
    "max no-write window s",
    "failover p50 s",
    "failover max s",
    "slowest write s",
    "elections",
)


def _window_of(at: float | None, faults: Sequence[Fault]) -> str:
    """The nemesis whose fault was in progress (from its injection to the next one) at ``at``."""
    if at is None:
        return "(unattributed)"
    owner = "(before faults)"
    for fault in faults:
        if fault.injected <= at:
            owner = fault.nemesis
    return owner


def summary_rows(
    history: History,
    faults: Sequence[Fault],
    violations: Sequence[Violation],
    elections: Sequence[tuple[float, str, int]] = (),
) -> list[list[str]]:
    """One row per nemesis (plus the time before the first fault, and the total). ``elections`` are
    (run seconds, node, term) of every candidacy found in the server logs."""
    figures = fault_figures(history, faults)
    names = list(dict.fromkeys(["(before faults)", *(f.nemesis for f in faults)]))
    ops_by: dict[str, list[Op]] = defaultdict(list)
    for op in history.ops:
        ops_by[_window_of(op.invoke_s, faults)].append(op)
    violations_by: dict[str, list[Violation]] = defaultdict(list)
    for v in violations:
        violations_by[_window_of(v.at, faults)].append(v)
    if violations_by.get("(unattributed)"):
        names.append("(unattributed)")
    terms_by: dict[str, set[int]] = defaultdict(set)
    for at, _node, term in elections:
        terms_by[_window_of(at, faults)].add(term)
    rows = []

    def row(name: str, ops: list[Op], vs: list[Violation], figs: list[FaultFigures], count: int) -> list[str]:
        failovers = [f.failover for f in figs if f.failover is not None]
        latencies = [op.complete_s - op.invoke_s for op in ops if op.type == OK and op.f in WRITES]
        terms = set().union(*terms_by.values()) if name == "total" else terms_by.get(name, set())
        return [
            name,
            str(count) if count else "-",
            str(len(ops)),
            str(sum(op.type == OK for op in ops)),
            str(sum(op.type == INFO for op in ops)),
            str(sum(op.type == FAIL for op in ops)),
            str(sum(v.kind == LOST for v in vs)),
            str(sum(v.kind == DUPLICATED for v in vs)),
            str(len(vs)),
            f"{max(f.longest_gap for f in figs):.2f}" if figs else "-",
            f"{statistics.median(failovers):.2f}" if failovers else "-",
            f"{max(failovers):.2f}" if failovers else "-",
            f"{max(latencies):.2f}" if latencies else "-",
            str(len(terms)),
        ]

    for name in names:
        figs = [f for f in figures if f.fault.nemesis == name]
        rows.append(row(name, ops_by.get(name, []), violations_by.get(name, []), figs, len(figs)))
    rows.append(row("total", list(history.ops), list(violations), figures, len(figures)))
    return rows


def render_table(rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (readable as plain text too)."""
    widths = [max(len(str(r[i])) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(COLUMNS), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def fault_lines(
    history: History, faults: Sequence[Fault], elections: Sequence[tuple[float, str, int]] = ()
) -> list[str]:
    """One line per fault: what, where, how long, failover, the longest write gap around it, and
    the elections started from its injection until the next fault."""
    out = []
    for i, f in enumerate(fault_figures(history, faults)):
        fault = f.fault
        until = faults[i + 1].injected if i + 1 < len(faults) else float("inf")
        campaigns = [f"{node}@t{term}" for at, node, term in elections if fault.injected <= at < until]
        failover = f"{f.failover:.2f}" if f.failover is not None else "-"
        out.append(
            f"{fault.injected:8.2f} s  {fault.nemesis:<12} {fault.target}{' (leader)' if fault.was_leader else '':<9} "
            f"held {fault.duration:5.2f} s  whole after heal {fault.whole - fault.healed:5.2f} s  "
            f"failover {failover:>5} s  longest no-write window {f.longest_gap:5.2f} s "
            f"[{f.gap_at[0]:.2f}, {f.gap_at[1]:.2f}]"
            + (f"  elections: {' '.join(campaigns)}" if elections else "")
            + (f"  {fault.detail}" if fault.detail else "")
            + (f"  PROBLEMS: {fault.problems}" if fault.problems else "")
        )
    return out
