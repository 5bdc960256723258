"""Service health in the replicated state machine, with no network (issue 21).

Only status changes cost a revision; a node whose lease expires turns its instances critical in
that same command; a ttl check is a lease (renewed without a revision, expired by the leader);
deregister_critical_after_s reaps through the normal release path; bad input changes nothing.
Every scenario runs on a twin fed the same entries and must end byte-identical, and survives a
snapshot round trip.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from controlplane.state import health, levels
from controlplane.state.machine import StateMachine
from controlplane.v1 import command_pb2, common_pb2, leases_pb2, membership_pb2, ports_pb2

from machine_driver import MachineDriver

PASSING = ports_pb2.HEALTH_STATUS_PASSING
WARNING = ports_pb2.HEALTH_STATUS_WARNING
CRITICAL = ports_pb2.HEALTH_STATUS_CRITICAL
HEALTH_CHANGED = ports_pb2.PORT_ACTION_HEALTH_CHANGED


class Twins(MachineDriver):
    """Two machines fed the same entries, at a leader time the test moves."""

    def __init__(self, level: int = levels.BASE_LEVEL) -> None:
        super().__init__(level=level, replicas=2, now=1_000_000, tick_ms=0, leader_id="s1")

    @property
    def m(self) -> StateMachine:
        return self.machine

    def register_node(self, node_id: str, *capabilities: str, ttl_ms: int = 5_000, gpus: int = 0) -> int:
        spec = membership_pb2.NodeSpec(
            id=node_id,
            role=membership_pb2.NODE_ROLE_AGENT,
            capabilities=capabilities,
            resources=membership_pb2.Resources(gpus=gpus, memory_bytes=16 << 30, cpu_millis=8000),
        )
        result = self.ok(node_register=membership_pb2.RegisterNodeRequest(node=spec, lease_ttl_ms=ttl_ms))
        return result.node_register.node.lease_id

    def register(self, host: str, name: str, check: dict[str, Any] | None = None, **extra: Any) -> Any:
        manifest = ports_pb2.ServiceManifest(
            name=name,
            host=host,
            ports=[ports_pb2.DeclaredPort(name="http")],
            health_check=ports_pb2.HealthCheck(**(check or {})),
            **extra,
        )
        return self.run(service_register=ports_pb2.RegisterServiceRequest(manifest=manifest))

    def report(self, host: str, name: str, status: int, output: str = "", request_id: str = "") -> Any:
        return self.run(
            request_id=request_id,
            service_health=ports_pb2.ReportHealthRequest(host=host, name=name, status=status, output=output),  # type: ignore[arg-type]
        )

    def health(self, host: str, name: str) -> ports_pb2.ServiceHealth:
        return self.m.ports.services[(host, name)].health

    def same(self) -> None:
        assert self.machines[0].snapshot() == self.machines[1].snapshot()
        copy = StateMachine()
        copy.restore(self.m.snapshot())
        assert copy.snapshot() == self.m.snapshot()
        assert copy.ports.ttl_leases == self.m.ports.ttl_leases


HTTP = {"type": "http", "path": "/healthz", "interval_s": 1}


def _critical_due(machine: StateMachine, now_unix_ms: int) -> list[ports_pb2.ServiceKey]:
    """The instances a leader may reap at ``now_unix_ms`` by the replicated times alone."""
    deadlines = machine.ports.critical_deadlines()
    return [ports_pb2.ServiceKey(host=h, name=n) for (h, n, _since), at in deadlines.items() if at <= now_unix_ms]


def test_a_check_starts_critical_and_a_service_without_one_passes() -> None:
    t = Twins()
    t.register_node("n1")
    assert t.register("n1", "api", HTTP).service_register.service.health.status == CRITICAL
    assert t.health("n1", "api").output == "not checked yet"
    t.register("n1", "plain")
    assert t.health("n1", "plain").status == PASSING
    assert [r.manifest.name for r in t.m.ports.list_services(healthy=True)] == ["plain"]
    t.same()


def test_only_a_changed_status_costs_a_revision_and_is_idempotent_by_request_id() -> None:
    t = Twins()
    t.register_node("n1")
    t.register("n1", "api", HTTP)
    before = t.m.revision
    changed = t.report("n1", "api", PASSING, "HTTP 200", request_id="r1")
    assert changed.service_health.changed and t.m.revision == before + 1
    event = t.m.events_from(t.m.revision)[0]
    assert event.key == "services/n1/api" and event.port.action == HEALTH_CHANGED
    assert event.port.health.status == PASSING
    # The same request again: the recorded answer, nothing new.
    assert t.report("n1", "api", PASSING, "HTTP 200", request_id="r1") == changed
    # The same status again (an agent repeating itself): no revision, no event.
    again = t.report("n1", "api", PASSING, "HTTP 200 again")
    assert not again.service_health.changed and t.m.revision == before + 1
    assert t.health("n1", "api").output == "HTTP 200"
    t.report("n1", "api", WARNING, "HTTP 429")
    assert [r.manifest.name for r in t.m.ports.list_services(healthy=True)] == ["api"]
    t.report("n1", "api", CRITICAL, "connection refused")
    assert t.m.ports.list_services(healthy=True) == []
    history = [e for e in t.m.ports.history["api"] if e.action == HEALTH_CHANGED]
    assert [e.reason.split(":")[0] for e in history] == ["passing", "warning", "critical"]
    t.same()


def test_output_is_truncated_and_bounded() -> None:
    t = Twins()
    t.register_node("n1")
    t.register("n1", "api", HTTP)
    t.report("n1", "api", PASSING, "x" * 100_000)
    output = t.health("n1", "api").output
    assert len(output) == health.MAX_OUTPUT_CHARS and output.endswith("...")
    t.same()


def test_reregistering_the_same_check_keeps_its_status_a_changed_check_starts_over() -> None:
    t = Twins()
    t.register_node("n1")
    t.register("n1", "api", HTTP)
    t.report("n1", "api", PASSING)
    t.register("n1", "api", HTTP, version="2")
    assert t.health("n1", "api").status == PASSING
    t.register("n1", "api", {**HTTP, "path": "/ready"})
    assert t.health("n1", "api").status == CRITICAL
    t.same()


def test_lease_expiry_turns_the_nodes_instances_critical_in_the_same_command() -> None:
    t = Twins()
    lease = t.register_node("n1", ttl_ms=5_000)
    t.register("n1", "api", HTTP)
    t.register("n1", "plain")
    t.register_node("n2")
    t.register("n2", "other", HTTP)
    t.report("n1", "api", PASSING)
    t.report("n2", "other", PASSING)
    t.now += 10_000
    result = t.ok(lease_expire=leases_pb2.ExpireLeases(lease_ids=[lease]))
    assert list(result.lease_expire.expired) == [lease]
    assert t.m.membership.nodes["n1"].state == membership_pb2.NODE_STATE_DEAD
    for name in ("api", "plain"):
        record = t.health("n1", name)
        assert record.status == CRITICAL and "dead" in record.output
        assert record.revision <= result.revision
    assert t.health("n2", "other").status == PASSING
    assert [r.manifest.name for r in t.m.ports.list_services(healthy=True)] == ["other"]
    t.same()


def test_a_clean_deregistration_of_the_node_turns_its_instances_critical() -> None:
    t = Twins()
    t.register_node("n1")
    t.register("n1", "plain")
    t.ok(node_deregister=membership_pb2.DeregisterNodeRequest(node_id="n1"))
    assert t.health("n1", "plain").status == CRITICAL
    # A late report of the dying agent does not undo the node's death.
    late = t.report("n1", "plain", PASSING)
    assert late.error.code == common_pb2.ERROR_CODE_FAILED_PRECONDITION and t.health("n1", "plain").status == CRITICAL
    # The agent back: it reports its check-less services passing again.
    t.register_node("n1")
    assert t.report("n1", "plain", PASSING).service_health.changed
    t.same()


def test_ttl_check_is_a_lease_renewed_without_a_revision_and_expiring_to_critical() -> None:
    t = Twins()
    t.register_node("n1")
    t.register("n1", "job", {"type": "ttl", "ttl_s": 5})
    assert t.health("n1", "job").status == CRITICAL
    first = t.report("n1", "job", PASSING, "alive")
    lease = first.service_health.health.ttl_lease_id
    assert first.service_health.changed and lease and t.m.ports.ttl_leases == {lease: ("n1", "job")}
    t.same()
    revision = t.m.revision
    t.now += 3_000
    renewed = t.report("n1", "job", PASSING)
    assert not renewed.service_health.changed and t.m.revision == revision
    assert t.m.leases.leases[lease].renewed_unix_ms == t.now
    # Silence past the ttl: the leader's expiry turns it critical.
    t.now += 6_000
    assert lease in [due.id for due in t.m.leases.expired_by(t.now)]
    t.ok(lease_expire=leases_pb2.ExpireLeases(lease_ids=[lease]))
    assert t.health("n1", "job").status == CRITICAL and "ttl expired" in t.health("n1", "job").output
    assert t.m.ports.ttl_leases == {}
    # Reporting again starts a fresh lease.
    back = t.report("n1", "job", PASSING)
    assert back.service_health.changed and back.service_health.health.ttl_lease_id not in (0, lease)
    # Deregistering ends the lease (not left behind to expire into a missing service).
    t.ok(service_deregister=ports_pb2.DeregisterServiceRequest(host="n1", name="job"))
    assert back.service_health.health.ttl_lease_id not in t.m.leases.leases and t.m.ports.ttl_leases == {}
    t.same()


def test_deregister_critical_after_releases_ports_through_the_release_path() -> None:
    t = Twins()
    t.register_node("n1")
    t.register("n1", "api", {**HTTP, "deregister_critical_after_s": 30})
    t.report("n1", "api", PASSING)
    t.report("n1", "api", CRITICAL, "refused")
    assert _critical_due(t.m, t.now + 29_999) == []
    t.now += 30_000
    due = _critical_due(t.m, t.now)
    assert [(k.host, k.name) for k in due] == [("n1", "api")]
    # A passing report that commits before the reap wins: the reap re-checks.
    t.report("n1", "api", PASSING)
    assert list(t.ok(service_reap=ports_pb2.ReapCriticalRequest(services=due)).service_reap.deregistered) == []
    t.report("n1", "api", CRITICAL)
    t.now += 30_000
    reaped = t.ok(service_reap=ports_pb2.ReapCriticalRequest(services=due))
    assert list(reaped.service_reap.deregistered) == list(due)
    assert ("n1", "api") not in t.m.ports.services and not t.m.ports.by_port.get("n1")
    released = [e for e in t.m.ports.history["api"] if e.action == ports_pb2.PORT_ACTION_RELEASED]
    assert released and "deregister_critical_after_s" in released[-1].reason
    t.same()


@pytest.mark.parametrize(
    ("check", "code", "words"),
    [
        ({"type": "http", "port_name": "grpc"}, "INVALID_ARGUMENT", "does not declare"),
        ({"type": "icmp"}, "INVALID_ARGUMENT", "not one of"),
        ({"type": "exec", "command": ["true"]}, "FAILED_PRECONDITION", "allows exec checks"),
        ({"type": "exec"}, "INVALID_ARGUMENT", "needs command"),
        ({"type": "ttl"}, "INVALID_ARGUMENT", "needs ttl_s"),
        ({"type": "http", "interval_s": 2, "timeout_s": 5}, "INVALID_ARGUMENT", "longer than"),
        ({"deregister_critical_after_s": 5}, "INVALID_ARGUMENT", "needs a health check"),
    ],
)
def test_bad_checks_are_refused_and_change_nothing(check: dict[str, Any], code: str, words: str) -> None:
    t = Twins()
    t.register_node("n1")
    before = t.m.snapshot()
    result = t.register("n1", "api", check)
    assert common_pb2.ErrorCode.Name(result.error.code) == f"ERROR_CODE_{code}" and words in result.error.message
    assert t.m.snapshot() == before


def test_exec_checks_need_a_live_agent_that_opted_in() -> None:
    t = Twins()
    t.register_node("n1", health.EXEC_CAPABILITY)
    assert not t.register("n1", "job", {"type": "exec", "command": ["true"]}).HasField("error")
    t.ok(node_deregister=membership_pb2.DeregisterNodeRequest(node_id="n1"))
    refused = t.register("n1", "job2", {"type": "exec", "command": ["true"]})
    assert refused.error.code == common_pb2.ERROR_CODE_FAILED_PRECONDITION


def test_bad_reports_are_refused_and_change_nothing() -> None:
    t = Twins()
    t.register_node("n1")
    t.register("n1", "api", HTTP)
    before = t.m.snapshot()
    assert t.report("n1", "api", 0).error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT
    assert t.report("n1", "api", 9).error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT
    assert t.report("n1", "nope", PASSING).error.code == common_pb2.ERROR_CODE_NOT_FOUND
    assert t.m.snapshot() == before


RUN = {"command": ["python3", "-m", "http.server"], "env": {"MODE": "dev"}}


def test_start_needs_a_run_and_a_live_agent_that_allows_it_and_a_second_start_reuses() -> None:
    t = Twins()
    t.register_node("n1")
    t.register("n1", "norun", HTTP)
    t.register("n1", "api", HTTP, run=ports_pb2.RunSpec(**RUN), capabilities=["gpu"])  # type: ignore[arg-type]
    before = t.m.snapshot()
    start = ports_pb2.StartServiceRequest(host="n1", name="norun")
    assert "has no run" in t.run(service_start=start).error.message
    refused = t.run(service_start=ports_pb2.StartServiceRequest(host="n1", name="api"))
    assert refused.error.code == common_pb2.ERROR_CODE_FAILED_PRECONDITION
    assert "run-services" in refused.error.message and "gpu" in refused.error.message
    assert t.run(service_start=ports_pb2.StartServiceRequest(host="n1", name="nope")).error.code == (
        common_pb2.ERROR_CODE_NOT_FOUND
    )
    assert t.m.snapshot() == before
    t.register_node("n1", health.RUN_CAPABILITY, "gpu")  # the agent again, now allowing runs
    first = t.ok(service_start=ports_pb2.StartServiceRequest(host="n1", name="api"))
    assert not first.service_start.existing and first.service_start.service.run.wanted
    revision = t.m.revision
    again = t.ok(service_start=ports_pb2.StartServiceRequest(host="n1", name="api"))
    assert again.service_start.existing and t.m.revision == revision
    # The agent's account: only changes cost a revision.
    report = ports_pb2.ReportRunRequest(host="n1", name="api", state="running", pid=42)
    assert t.ok(service_run_report=report).service_run_report.changed
    assert not t.ok(service_run_report=report).service_run_report.changed and t.m.revision == revision + 1
    crashed = ports_pb2.ReportRunRequest(host="n1", name="api", state="backoff", restarts=1, last_exit_code=-9)
    assert t.ok(service_run_report=crashed).service_run_report.run.restarts == 1
    assert t.run(service_run_report=ports_pb2.ReportRunRequest(host="n1", name="api", state="zombie")).error.code == (
        common_pb2.ERROR_CODE_INVALID_ARGUMENT
    )
    # Re-registering keeps it wanted; stop ends that.
    t.register("n1", "api", HTTP, run=ports_pb2.RunSpec(**RUN), capabilities=["gpu"], version="2")  # type: ignore[arg-type]
    assert t.m.ports.services[("n1", "api")].run.wanted
    stopped = t.ok(service_stop=ports_pb2.StopServiceRequest(host="n1", name="api"))
    assert stopped.service_stop.changed and not stopped.service_stop.service.run.wanted
    assert not t.ok(service_stop=ports_pb2.StopServiceRequest(host="n1", name="api")).service_stop.changed
    t.same()


def test_a_bad_run_spec_is_refused() -> None:
    t = Twins()
    t.register_node("n1")
    bad = t.register("n1", "api", HTTP, run=ports_pb2.RunSpec(command=["x"], env={"1BAD": "v"}))
    assert bad.error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT and "variable name" in bad.error.message


def active_node(t: Twins, node_id: str, *capabilities: str, gpus: int = 0) -> None:
    """A node as its agent makes it: registered, then active with its first heartbeat."""
    t.register_node(node_id, *capabilities, gpus=gpus)
    t.ok(node_heartbeat=membership_pb2.HeartbeatRequest(node_id=node_id))


def place(t: Twins, name: str, manifest: ports_pb2.ServiceManifest | None = None) -> command_pb2.CommandResult:
    request = ports_pb2.StartServiceRequest(name=name)
    if manifest is not None:
        request.manifest.CopyFrom(manifest)
    return t.run(service_start=request)


def placeable(name: str, *capabilities: str, gpus: int = 0, port: int = 0) -> ports_pb2.ServiceManifest:
    return ports_pb2.ServiceManifest(
        name=name,
        ports=[ports_pb2.DeclaredPort(name="http", port=port)],
        run=ports_pb2.RunSpec(**RUN),  # type: ignore[arg-type]
        capabilities=capabilities,
        requirements=ports_pb2.Requirements(gpus=gpus),
    )


def test_placement_picks_a_node_that_consents_fits_and_has_the_ports_then_spreads() -> None:
    t = Twins(level=levels.PLACEMENT)
    active_node(t, "n1", health.RUN_CAPABILITY)
    active_node(t, "n2", health.RUN_CAPABILITY, "gpu", gpus=1)
    active_node(t, "n3", "gpu", gpus=4)  # its agent does not allow runs
    trainer = place(t, "trainer", placeable("trainer", "gpu", gpus=1)).service_start
    assert trainer.service.manifest.host == "n2" and trainer.service.run.wanted and not trainer.existing
    assert "n1: lacks gpu" in trainer.placement and "n3: lacks run-services" in trainer.placement
    assert [p.name for p in trainer.service.ports] == ["http"], "registered on the node chosen, ports and all"
    revision = t.m.revision
    again = place(t, "trainer", placeable("trainer", "gpu", gpus=1)).service_start
    assert again.existing and again.service.manifest.host == "n2" and t.m.revision == revision
    # The fewest services running first: n1 runs none, n2 runs the trainer.
    assert place(t, "web", placeable("web")).service_start.service.manifest.host == "n1"
    # A fixed port another service holds on n1 sends the next one to n2, though n1 ties on count.
    t.ok(ports_assign=ports_pb2.AssignRequest(host="n2", service="other", port=7001))
    t.ok(ports_assign=ports_pb2.AssignRequest(host="n1", service="other", port=7000))
    assert place(t, "api", placeable("api", port=7000)).service_start.service.manifest.host == "n2"
    # Too big for every node: refused, naming each node's reason, and nothing changed.
    before = t.m.snapshot()
    refused = place(t, "huge", placeable("huge", "gpu", gpus=8))
    assert refused.error.code == common_pb2.ERROR_CODE_FAILED_PRECONDITION
    assert "n2: has gpus 1 < 8" in refused.error.message and "n3: lacks run-services" in refused.error.message
    assert t.m.snapshot() == before
    t.same()


def test_placement_without_a_manifest_chooses_among_the_nodes_the_service_is_registered_on() -> None:
    t = Twins(level=levels.PLACEMENT)
    active_node(t, "n1", health.RUN_CAPABILITY)
    active_node(t, "n2", health.RUN_CAPABILITY)
    active_node(t, "n3")
    t.register("n3", "batch", HTTP, run=ports_pb2.RunSpec(**RUN))  # type: ignore[arg-type]
    refused = place(t, "batch")
    assert refused.error.code == common_pb2.ERROR_CODE_FAILED_PRECONDITION and "n3: lacks run-services" in (
        refused.error.message
    )
    t.register("n2", "batch", HTTP, run=ports_pb2.RunSpec(**RUN))  # type: ignore[arg-type]
    placed = place(t, "batch").service_start
    assert placed.service.manifest.host == "n2" and "registered there" in placed.placement
    assert ("n1", "batch") not in t.m.ports.services, "never registered anywhere else"
    assert place(t, "ghost").error.code == common_pb2.ERROR_CODE_NOT_FOUND
    t.same()


def test_placement_passes_over_draining_nodes_and_moves_off_a_dead_one() -> None:
    t = Twins(level=levels.PLACEMENT)
    active_node(t, "n1", health.RUN_CAPABILITY)
    active_node(t, "n2", health.RUN_CAPABILITY)
    t.ok(node_drain=membership_pb2.DrainNodeRequest(node_id="n1"))
    first = place(t, "web", placeable("web")).service_start
    assert first.service.manifest.host == "n2" and "n1: is leaving" in first.placement
    # Its node leaves: the next start places it anew, and the old instance is no longer wanted
    # (its agent, back, must not run a second one).
    active_node(t, "n3", health.RUN_CAPABILITY)
    t.ok(node_deregister=membership_pb2.DeregisterNodeRequest(node_id="n2"))
    second = place(t, "web", placeable("web")).service_start
    assert not second.existing and second.service.manifest.host == "n3"
    assert not t.m.ports.services[("n2", "web")].run.wanted
    assert t.m.ports.services[("n2", "web")].run.state == "stopped"
    # Asked again with another manifest while it runs: refused, not silently the old one.
    changed = placeable("web")
    changed.version = "2"
    refused = place(t, "web", changed)
    assert refused.error.code == common_pb2.ERROR_CODE_FAILED_PRECONDITION
    assert "runs on n3 with another manifest" in refused.error.message
    assert place(t, "web", placeable("web")).service_start.existing
    # What no node can fix is the manifest's own fault, whatever the nodes.
    bad = placeable("odd")
    bad.labels["bad label!"] = "x"
    assert place(t, "odd", bad).error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT
    exec_check = placeable("probe")
    exec_check.health_check.CopyFrom(ports_pb2.HealthCheck(type="exec", command=["true"], interval_s=10))
    refused_exec = place(t, "probe", exec_check)
    assert "lacks exec-checks" in refused_exec.error.message
    t.same()


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (ports_pb2.StartServiceRequest(name="x", host="n1", manifest=placeable("x")), "not both"),
        (ports_pb2.StartServiceRequest(name="x", manifest=ports_pb2.ServiceManifest(name="y")), "is for service 'y'"),
        (
            ports_pb2.StartServiceRequest(name="x", manifest=ports_pb2.ServiceManifest(host="n1")),
            "leave the manifest's host",
        ),
        (ports_pb2.StartServiceRequest(name="x", manifest=ports_pb2.ServiceManifest()), "has no run"),
    ],
)
def test_bad_placements_are_refused_and_change_nothing(request_: ports_pb2.StartServiceRequest, words: str) -> None:
    t = Twins(level=levels.PLACEMENT)
    active_node(t, "n1", health.RUN_CAPABILITY)
    before = t.m.snapshot()
    result = t.run(service_start=request_)
    assert result.HasField("error") and words in result.error.message, result
    assert t.m.snapshot() == before


def test_below_the_placement_level_a_start_without_a_node_is_refused_as_before() -> None:
    t = Twins()
    t.register_node("n1", health.RUN_CAPABILITY)
    result = place(t, "web", placeable("web"))
    assert result.error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT and "host" in result.error.message
    assert ("n1", "web") not in t.m.ports.services


# ------------------------------------------------------------------- random sequences

NODES = ["n1", "n2"]
NAMES = ["api", "job", "plain"]
CHECKS: dict[str, dict[str, Any]] = {
    "api": {**HTTP, "deregister_critical_after_s": 5},
    "job": {"type": "ttl", "ttl_s": 3},
    "plain": {},
}


class HealthWalk(RuleBasedStateMachine):
    """Random registrations, reports, node deaths, ttl expiries, reaps and deregistrations, with the
    catalog's invariants after every step, a twin and a snapshot round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.t = Twins()

    @rule(node=st.sampled_from(NODES))
    def register_node(self, node: str) -> None:
        self.t.register_node(node, ttl_ms=2_000)

    @rule(node=st.sampled_from(NODES), name=st.sampled_from(NAMES))
    def register(self, node: str, name: str) -> None:
        self.t.register(node, name, CHECKS[name])

    @rule(
        node=st.sampled_from(NODES), name=st.sampled_from(NAMES), status=st.sampled_from([PASSING, WARNING, CRITICAL])
    )
    def report(self, node: str, name: str, status: int) -> None:
        before = self.t.m.revision
        result = self.t.report(node, name, status)
        if result.HasField("error") or not result.service_health.changed:
            assert self.t.m.revision == before  # a refusal or an unchanged status: no revision

    @rule(ms=st.integers(0, 4_000))
    def time_passes(self, ms: int) -> None:
        self.t.now += ms

    @rule()
    def expire(self) -> None:
        due = [lease.id for lease in self.t.m.leases.expired_by(self.t.now)]
        if due:
            self.t.ok(lease_expire=leases_pb2.ExpireLeases(lease_ids=due))

    @rule()
    def reap(self) -> None:
        due = _critical_due(self.t.m, self.t.now)
        if due:
            self.t.ok(service_reap=ports_pb2.ReapCriticalRequest(services=due))

    @rule(node=st.sampled_from(NODES), name=st.sampled_from(NAMES))
    def deregister(self, node: str, name: str) -> None:
        self.t.run(service_deregister=ports_pb2.DeregisterServiceRequest(host=node, name=name))

    @invariant()
    def catalog_is_consistent(self) -> None:
        m = self.t.m
        ttl = {r.health.ttl_lease_id: key for key, r in m.ports.services.items() if r.health.ttl_lease_id}
        assert ttl == m.ports.ttl_leases and all(m.leases.exists(lease) for lease in ttl)
        for (host, _), record in m.ports.services.items():
            if m.membership.is_gone(host):
                assert record.health.status == CRITICAL  # a dead or left node's instances are critical
            if record.health.ttl_lease_id:
                assert record.health.status == PASSING
        assert all(r.health.status in health.HEALTHY for r in m.ports.list_services(healthy=True))
        assert self.t.machines[0].snapshot() == self.t.machines[1].snapshot()

    def teardown(self) -> None:
        self.t.same()


TestHealthWalk = HealthWalk.TestCase
TestHealthWalk.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
