"""One run of the fault suite: a fresh cluster (3 servers; 5 in the FIVE profile), the clients, a
seeded schedule of faults one at a time, then the checks and the summary table.

Profiles bound a run in fault count and in time (no new fault is started once ``max_seconds``
have passed). The SHORT profile runs inside ``make test`` (tests/fault/test_faults.py); LONG is
``make jepsen`` (``python -m tests.fault.run --profile long``) and the soak test; SOAK is
``make jepsen-long``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import random
import shutil
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
from google.protobuf import json_format

from bench.netns import NetUnavailable, ShapedNet, netns_unavailable
from controlplane import errors
from controlplane.client import AsyncClient, Client, Consistency, Credentials
from controlplane.dev import LocalCluster
from controlplane.v1 import watch_pb2, watch_pb2_grpc

from . import checks
from .history import FAIL, OK, History, completion_type
from .nemesis import NEMESES, Control, Fault, Nemesis, Unhealthy, clock_step_env
from .workloads import CALL_TIMEOUT_S, Context, Leases, Ports, Processes, Registers, SetAdds, Watchers

#: make test's SHORT profile: every nemesis but the long-only ones, once each.
SHORT_NEMESES = (
    "kill-leader",
    "kill-random",
    "pause-leader",
    "pause-random",
    "disk-full",
    "partition-leader",
    "partition-random",
    "partition-bridge",
    "partition-clients",
    "member-replace",
    "member-replace-kill",
    "member-replace-partition",
    "member-replace-pause",
    "member-join-kill",
    "clock-step-leader",
)
#: Run by the long, soak and five profiles, not by make test's SHORT one (its time is budgeted):
#: an election during a clock step, and a step backwards.
LONG_ONLY_NEMESES = ("clock-step-follower", "clock-step-back-leader")
ALL_NEMESES = (*SHORT_NEMESES, *LONG_ONLY_NEMESES)
SETTLE_TIMEOUT_S = 60.0
#: The client workloads whose acknowledged operations say the clients are working.
CHECKED_WORKLOADS = ("register", "set", "ports", "lease")
#: How long after a fault's cluster is whole its clients may take to be acknowledged again before
#: the run notes it and goes on (a note in the summary, not a violation: the checks judge the history).
CLIENT_RECOVERY_S = 30.0


@dataclass(frozen=True)
class Profile:
    name: str
    faults: int
    #: No new fault starts after this many seconds of faults.
    max_seconds: float
    nemeses: tuple[str, ...] = ALL_NEMESES
    seed: int = 13
    register_keys: int = 3
    register_clients: int = 4
    set_clients: int = 2
    port_clients: int = 2
    lease_clients: int = 2
    watchers: int = 2
    #: Quiet time between a fault's recovery and the next fault (seconds, uniform).
    quiet: tuple[float, float] = (1.0, 2.5)
    #: How long a kill or a pause lasts (seconds, uniform). Pauses longer than the SDK's attempt
    #: timeout (3 s) and shorter ones behave differently: the long profile draws both.
    hold: tuple[float, float] = (1.0, 4.0)
    #: The clients' SDK call deadline (seconds). Below a fault's length, operations end unknown
    #: (``info``): that exercises the checkers' unknown-outcome paths on real histories.
    call_timeout: float = CALL_TIMEOUT_S
    #: Voters the cluster starts with (each in a namespace of its own when partitions run).
    servers: int = 3


PROFILES = {
    # make test's: every nemesis once. Each fault waits for working clients before its quiet gap,
    # which can then be shorter. Its holds stay below the SDK's 3 s attempt timeout (longer than an
    # election timeout, so a cut leader is still deposed): the longer ones are LONG's, as its time is budgeted.
    "short": Profile(
        "short",
        faults=len(SHORT_NEMESES),
        max_seconds=150.0,
        nemeses=SHORT_NEMESES,
        quiet=(0.2, 0.6),
        hold=(1.0, 2.5),
    ),
    "long": Profile("long", faults=40, max_seconds=900.0, hold=(1.0, 6.0)),
    "soak": Profile("soak", faults=150, max_seconds=3600.0, hold=(1.0, 8.0)),
    # Five voters: a majority is 3, so two servers may be down at once; every nemesis once, and the
    # leader killed with another server, at the long profile's pace (make jepsen-five).
    "five": Profile(
        "five",
        faults=len(ALL_NEMESES) + 1,
        max_seconds=900.0,
        nemeses=(*ALL_NEMESES, "kill-leader-and-one"),
        hold=(1.0, 6.0),
        servers=5,
    ),
}


@dataclass
class RunResult:
    profile: Profile
    seed: int
    duration: float
    faults: list[Fault]
    violations: list[checks.Violation]
    notes: list[str]
    skipped: dict[str, str]
    table: str
    fault_lines: list[str]
    gap_lines: list[str]
    work_dir: Path
    history_path: Path | None = None
    summary_path: Path | None = None
    counts: Counter[str] = field(default_factory=Counter)
    wall_origin: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations

    def text(self) -> str:
        parts = [
            f"fault run: profile {self.profile.name}, seed {self.seed}, {len(self.faults)} faults, "
            f"{self.duration:.0f} s, work dir {self.work_dir}; run time 0 = {self.wall_origin} UTC in server logs",
            "",
            self.table,
            "",
            "faults:",
            *self.fault_lines,
            "",
            "longest windows without a successful write:",
            *self.gap_lines,
            "",
            *self.notes,
        ]
        if self.skipped:
            parts += ["", *(f"skipped {name}: {why}" for name, why in self.skipped.items())]
        if self.violations:
            parts += ["", f"{len(self.violations)} VIOLATION(S):", *(f"  {v}" for v in self.violations)]
        if self.history_path:
            parts += ["", f"history: {self.history_path}"]
        return "\n".join(parts)


async def _eventually(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)  # the poll interval of a condition wait


async def _list_prefix(client: AsyncClient, prefix: str, **read: object) -> dict[str, int]:
    """key -> mod_revision of every key under ``prefix``, following pagination."""
    out: dict[str, int] = {}
    start_after = ""
    while True:
        page = await client.list(prefix, limit=1000, start_after=start_after, keys_only=True, **read)  # type: ignore[arg-type]
        out.update((kv.key, kv.mod_revision) for kv in page.kvs)
        if not page.more or not page.kvs:
            return out
        start_after = page.kvs[-1].key


async def _replay(
    address: str, prefix: str, start: int, until: int, credentials: Credentials | None = None
) -> list[tuple[int, str]]:
    """The prefix's revision sequence in [start, until] as one server replays it after the faults
    (a raw Watch stream, read until its progress passes ``until``)."""
    out: list[tuple[int, str]] = []
    request = watch_pb2.WatchRequest(from_revision=start, filter=watch_pb2.WatchFilter(key_prefix=prefix))
    async with (credentials or Credentials()).async_channel_factory()(address) as channel:
        stream = watch_pb2_grpc.WatchStub(channel).Watch(request, timeout=300)
        async for message in stream:
            out.extend((e.revision, e.key) for e in message.events if e.revision <= until)
            if message.revision >= until:
                stream.cancel()
                return out
    raise AssertionError(f"the watch on {address} ended before revision {until}")


def _schedule(rng: random.Random, names: list[str], count: int) -> list[str]:
    """``count`` nemesis names: each round a fresh shuffle of every name, so each one is used."""
    order: list[str] = []
    while len(order) < count:
        round_ = list(names)
        rng.shuffle(round_)
        order += round_
    return order[:count]


def _namespaces(profile: Profile, log: Callable[[str], None]) -> tuple[ShapedNet | None, str]:
    """A namespace per server when the profile has a partition nemesis and this machine allows it."""
    if not any(name.startswith("partition-") or name.endswith("-partition") for name in profile.nemeses):
        return None, "no partition nemesis in this run"
    problem = netns_unavailable()
    if problem:
        return None, problem
    try:
        return ShapedNet(profile.servers, tag="f").create(), ""
    except (NetUnavailable, RuntimeError) as exc:
        log(f"network namespaces could not be created: {exc}")
        return None, str(exc)


async def run(
    profile: Profile,
    work_dir: Path,
    *,
    seed: int | None = None,
    log: Callable[[str], None] = print,
    keep_history: bool = False,
) -> RunResult:
    seed = profile.seed if seed is None else seed
    rng = random.Random(seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    history = History()
    net, net_unavailable = _namespaces(profile, log)
    clock_step_dir: Path | None = None
    if any(name.startswith("clock-step") for name in profile.nemeses):
        clock_step_dir = work_dir / "clock-steps"
        shutil.rmtree(clock_step_dir, ignore_errors=True)  # a reused --work-dir: no step left ahead
        clock_step_dir.mkdir()
    cluster = LocalCluster(
        work_dir / "cluster",
        servers=profile.servers,
        extra_env=clock_step_env(clock_step_dir) if clock_step_dir is not None else None,
        # A replaced server is promoted after 1 s caught up (10 s by default; the cluster tests'
        # setting too): faults stay short.
        extra_config={"history_limit": 1_000_000, "server_stabilization_s": 1.0},
        placement=(lambda i: (net.address(i - 1), net.exec_prefix(i - 1))) if net is not None else None,
    )
    control = Control(cluster, history.now, net, net_unavailable, clock_step_dir)
    nemeses: dict[str, Nemesis] = {name: NEMESES[name](control, work_dir / "scratch") for name in profile.nemeses}
    for nemesis in nemeses.values():
        nemesis.hold_range = profile.hold
    skipped = {name: n.unavailable for name, n in nemeses.items() if n.unavailable}
    for name, why in skipped.items():
        log(f"skipping nemesis {name}: {why}")
    available = [name for name in profile.nemeses if name not in skipped]
    faults: list[Fault] = []
    violations: list[checks.Violation] = []
    notes: list[str] = []
    started = time.monotonic()
    prefix = f"fault-{seed}-{int(time.time())}/"
    ctx = Context(
        history,
        cluster.client_addresses,
        prefix,
        Processes(),
        rng,
        asyncio.Event(),
        call_timeout=profile.call_timeout,
        credentials=cluster.credentials,
    )
    registers = Registers(ctx, profile.register_keys, profile.register_clients)
    adds = SetAdds(ctx, profile.set_clients)
    ports = Ports(ctx, profile.port_clients)
    leases = Leases(ctx, profile.lease_clients)
    watchers = Watchers(ctx, profile.watchers)
    tasks: list[asyncio.Task[None]] = []
    probes = itertools.count()

    def cold_client_probe(frozen: str) -> dict[str, object]:
        """One write from a client that knows no leader, listing a healthy follower first and the
        frozen leader second: the path of a CLI call or a restarted agent during a frozen leader."""
        others = [n.client_address for n in cluster.nodes.values() if n.id != frozen]
        endpoints = [others[0], cluster.nodes[frozen].client_address, *others[1:]]
        key = f"{prefix}probe/{next(probes)}"
        op = history.invoke(ctx.processes.new(), "probe", "add", key, key)
        try:
            with Client(endpoints, timeout=CALL_TIMEOUT_S, credentials=cluster.credentials) as client:
                result = client.put(key, b"1")
        except Exception as exc:
            history.complete(op, completion_type(exc), error=f"{type(exc).__name__}: {exc}", endpoints=endpoints)
            return {"cold_client_write": op.type}
        history.complete(op, OK, revision=result.kv.mod_revision, endpoints=endpoints)
        return {"cold_client_write_s": round(op.complete_s - op.invoke_s, 2)}

    control.on_leader_frozen = cold_client_probe
    try:
        cluster.start()
        await asyncio.to_thread(control.wait_whole)
        async with AsyncClient(cluster.client_addresses, credentials=cluster.credentials) as admin:
            await ports.setup(admin)
            await leases.setup(admin)
            watchers.from_revision = (await admin.status()).applied_revision + 1
        history.note("start", seed=seed, profile=profile.name, prefix=prefix, wall_clock_origin=history.wall_origin)
        clients = [asyncio.create_task(c) for w in (registers, adds, ports, leases) for c in w.tasks()]  # type: ignore[arg-type]
        tasks += clients + [asyncio.create_task(c) for c in watchers.tasks()]  # type: ignore[arg-type]

        def progressing() -> bool:
            ok = Counter(op.workload for op in history.ops if op.type == OK)
            return all(ok[name] >= 10 for name in CHECKED_WORKLOADS)

        def recovered_since(since: float) -> bool:
            """Every workload has an acknowledged operation invoked after ``since`` (run seconds).
            Operations are recorded as they start, so only the newest are read."""
            ok: set[str] = set()
            for op in reversed(history.ops):
                if op.invoke_s < since:
                    break
                if op.type == OK:
                    ok.add(op.workload)
            return set(CHECKED_WORKLOADS) <= ok

        await _eventually(progressing, 60, "every workload to get 10 acknowledged operations")
        log(f"clients running; faults: {profile.faults} from {available} (seed {seed})")
        for index, name in enumerate(_schedule(rng, available, profile.faults)):
            if time.monotonic() - started > profile.max_seconds:
                notes.append(f"stopped after {index} faults: the profile's {profile.max_seconds:g} s were used")
                break
            fault_rng = random.Random(rng.randrange(1 << 30))
            history.note("nemesis-start", nemesis=name)
            try:
                fault = await asyncio.to_thread(nemeses[name].run, fault_rng)
            except Unhealthy as exc:
                violations.append(checks.Violation("recovery", checks.OTHER, f"{name}: {exc}", history.now()))
                break
            faults.append(fault)
            history.note("nemesis-end", nemesis=name, target=fault.target, detail=fault.detail)
            for problem in fault.problems:
                violations.append(checks.Violation(name, checks.OTHER, problem, fault.injected))
            log(checks.fault_lines(history, [fault])[0])
            # The next fault starts from working clients, not only a whole cluster, so that what a
            # fault's aftermath costs is booked to it (a short quiet gap alone would not ensure it).
            try:
                await _eventually(
                    lambda since=fault.whole: recovered_since(since),
                    CLIENT_RECOVERY_S,
                    f"every workload to be acknowledged again after {name}",
                )
            except AssertionError as exc:
                notes.append(str(exc))
            await asyncio.sleep(rng.uniform(*profile.quiet))  # the schedule's pacing between faults
        ctx.stop.set()
        done, pending = await asyncio.wait(clients, timeout=SETTLE_TIMEOUT_S)
        for task in pending:
            task.cancel()
            violations.append(checks.Violation("client", checks.OTHER, f"a client hung after the run: {task}"))
        for task in done:
            if task.exception() is not None:
                violations.append(checks.Violation("client", checks.OTHER, f"a client crashed: {task.exception()!r}"))

        # ---- final state, read once every server is back
        await asyncio.to_thread(control.release_all)
        await asyncio.to_thread(control.wait_whole)
        async with AsyncClient(cluster.client_addresses, timeout=30.0, credentials=cluster.credentials) as final:
            everything = await _list_prefix(final, prefix)
            final_revision = (await final.status()).applied_revision
            service_history: dict[str, list[tuple[str, int, int]]] = {}
            for service in checks.needs_server_history(history.of("ports")):
                try:
                    entries = (await final.ports.history(service)).entries
                except errors.NotFound:  # it never held a port: its allocation never took effect
                    entries = ()
                service_history[service] = [
                    (e.action.name, e.revision, e.new_port or e.old_port) for e in entries if e.host == ports.host
                ]
        await _eventually(lambda: watchers.caught_up(final_revision), 60, f"watchers to reach {final_revision}")
        await watchers.close()
        leader = cluster.nodes[await asyncio.to_thread(control.leader)]
        expected: list[tuple[int, str]] | None
        try:
            expected = await _replay(
                leader.client_address, prefix, watchers.from_revision, final_revision, leader.credentials
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.OUT_OF_RANGE:
                raise
            # The server's history (bounded in events and bytes) no longer reaches the run's start:
            # judge the watchers against each other and against the acknowledged writes instead.
            expected = None
            notes.append(f"watch: the history was compacted past the run's start ({exc.details()})")

        # ---- replicas agree (hashicorp's VerifyFSM): every server, on its own, holds the same keys
        states = {}
        for node in cluster.nodes.values():
            async with AsyncClient(node.client_address, timeout=30.0, credentials=node.credentials) as pinned:
                states[node.id] = await _list_prefix(
                    pinned, prefix, consistency=Consistency.STALE, min_revision=final_revision
                )
        reference = next(iter(states.values()))
        for node_id, state in states.items():
            if state != reference:
                violations.append(checks.Violation("replicas", checks.OTHER, f"{node_id} holds a different key space"))

        # ---- checks
        acknowledged = {
            op.revision: op.key
            for op in history.ops
            if op.type == OK and op.workload in ("register", "set", "probe") and op.f != "read" and op.revision
        }
        reports = [
            checks.check_registers(history.of("register")),
            checks.check_set(history.of("set"), {k for k in everything if k.startswith(adds.key_prefix)}),
            checks.check_ports(history.of("ports"), service_history),
            checks.check_leases(history.of("lease"), leases.ttl_s),
            checks.check_watch([(d.watcher, d.events, d.error) for d in watchers.deliveries], expected, acknowledged),
        ]
        for report in reports:
            violations += report.violations
            notes += report.notes
    except Exception as exc:  # the run could not finish: that is a finding too, with the table so far
        violations.append(checks.Violation("run", checks.OTHER, f"the run stopped: {exc!r}", history.now()))
        notes.append("".join(traceback.format_exception(exc)))
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        if violations:  # what each server says of itself, before they stop: for the post-mortem
            with contextlib.suppress(Exception):  # never in the way of the cleanup below
                statuses_path = await asyncio.to_thread(write_statuses, cluster, work_dir / "statuses.json")
                notes.append(f"each server's status at the end: {statuses_path}")
        control.release_all()
        cluster.stop()
        if net is not None:
            net.close()

    duration = time.monotonic() - started
    events = server_events(cluster, history)
    elections = candidacies(events)
    rows = checks.summary_rows(history, faults, violations, elections)
    result = RunResult(
        profile=profile,
        seed=seed,
        duration=duration,
        faults=faults,
        violations=violations,
        notes=notes,
        skipped=skipped,
        table=checks.render_table(rows),
        fault_lines=checks.fault_lines(history, faults, elections),
        gap_lines=gap_report(history, faults, events),
        work_dir=work_dir,
        counts=Counter(op.type for op in history.ops),
        wall_origin=history.wall_origin,
    )
    result.summary_path = work_dir / "summary.md"
    if violations or keep_history:
        result.history_path = history.write_jsonl(work_dir / "history.jsonl")
    result.summary_path.write_text(result.text() + "\n")
    if not violations:
        for node in [*cluster.nodes.values(), *cluster.retired]:
            shutil.rmtree(node.data_dir, ignore_errors=True)  # keep the logs, drop the data
    return result


def write_statuses(cluster: LocalCluster, path: Path) -> Path:
    """Every running server's Cluster.Status (role, term, indexes, members as it sees them), as JSON."""
    statuses: dict[str, object] = {}
    for node in cluster.nodes.values():
        if not node.running:
            statuses[node.id] = f"not running (exit {node.process and node.process.returncode})"
            continue
        try:
            statuses[node.id] = json_format.MessageToDict(node.status(timeout=5.0))
        except grpc.RpcError as exc:
            statuses[node.id] = f"no answer: {exc.code().name}"  # type: ignore[attr-defined]
    path.write_text(json.dumps(statuses, indent=2) + "\n")
    return path


#: Server log events worth showing beside a window without writes.
NOTABLE_EVENTS = {
    "raft_role_changed",
    "raft_dump_written",
    "raft_dump_loaded",
    "journal_write_failed",
    "server_started",
}


def server_events(cluster: LocalCluster, history: History) -> list[tuple[float, str, str, dict[str, object]]]:
    """(run seconds, node, event, fields) of the notable events in the servers' JSON logs."""
    origin = datetime.datetime.fromisoformat(history.wall_origin)
    out = []
    for node in [*cluster.nodes.values(), *cluster.retired]:
        try:
            lines = node.log_path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if not line.startswith("{") or not any(f'"{name}"' in line for name in NOTABLE_EVENTS):
                continue
            try:
                record = json.loads(line)
                at = datetime.datetime.fromisoformat(record["timestamp"])
            except (ValueError, KeyError):
                continue
            if record.get("event") in NOTABLE_EVENTS:
                out.append(((at - origin).total_seconds(), node.id, str(record["event"]), record))
    return sorted(out, key=lambda e: e[0])


def candidacies(events: list[tuple[float, str, str, dict[str, object]]]) -> list[tuple[float, str, int]]:
    """(run seconds, node, term campaigned for) of every election a server started."""
    return [
        (at, node, int(str(fields.get("term", 0))) + 1)
        for at, node, event, fields in events
        if event == "raft_role_changed" and fields.get("new") == "candidate"
    ]


def _brief(event: str, fields: dict[str, object]) -> str:
    if event == "raft_role_changed":
        return f"{fields.get('new')}"
    if event == "raft_dump_written":
        return f"dump written ({int(str(fields.get('bytes', 0))) // 1_000_000} MB, index {fields.get('index')})"
    return event


def gap_report(
    history: History, faults: list[Fault], events: list[tuple[float, str, str, dict[str, object]]], top: int = 5
) -> list[str]:
    """The longest windows without a successful write: which fault they overlap, what the write
    operations in flight during the window ended with, and what the servers logged meanwhile
    (a dump is logged when its writing has finished, so up to a second after the window); then the
    slowest acknowledged writes and reads."""
    lines = []
    for start, end in checks.gaps(checks.write_completions(history))[:top]:
        during = [f for f in faults if f.injected <= end and start <= max(f.whole, f.injected)]
        around = ", ".join(f"{f.nemesis} {f.target} at {f.injected:.2f} s" for f in during) or "no fault"
        errors = Counter(
            (op.error.split(";")[-1].strip()[:90] or op.type)
            for op in history.ops
            if op.f in checks.WRITES
            and op.invoke_s < end
            and op.complete_s > start
            and op.type != OK
            # A range's refusal (the lock held, the ports taken) is an answer, not a missing one.
            and not (op.type == FAIL and op.error.startswith("ResourceExhausted"))
        )
        logged = [
            f"{node} {_brief(event, fields)} at {at:.2f}"
            for at, node, event, fields in events
            if start - 0.2 <= at <= end + 1.0
        ]
        lines.append(
            f"{end - start:5.2f} s  [{start:.2f}, {end:.2f}]  during: {around}; unanswered: {dict(errors)}"
            + (f"; servers: {', '.join(logged)}" if logged else "")
        )
    for kind, slow in (("writes", checks.WRITES.__contains__), ("reads", checks.READS.__contains__)):
        lines += ["", f"slowest acknowledged {kind} (one client's view):"]
        done = [op for op in history.ops if op.type == OK and slow(op.f)]
        for op in sorted(done, key=lambda op: op.invoke_s - op.complete_s)[:top]:
            during = [f for f in faults if f.injected <= op.complete_s and op.invoke_s <= max(f.whole, f.injected)]
            around = ", ".join(f"{f.nemesis} {f.target} at {f.injected:.2f} s" for f in during) or "no fault"
            first = f", fresh client, first endpoint {op.extra['fresh_client']}" if "fresh_client" in op.extra else ""
            lines.append(
                f"{op.complete_s - op.invoke_s:5.2f} s  {op.workload} {op.f} #{op.index} "
                f"[{op.invoke_s:.2f}, {op.complete_s:.2f}]{first}; during: {around}"
            )
    return lines
