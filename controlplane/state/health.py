"""Health checks of service instances: the rules the catalog and the agents share.

The catalog (``ports.PortTable``) holds one ``ServiceHealth`` per instance and changes it only on a
*different* status: an agent sends a result only when its thresholded status differs from the
catalog's, so a thousand stable checks cost no log write. Pure: no clock, no I/O.
"""

from __future__ import annotations

from controlplane.state import limits
from controlplane.v1 import ports_pb2

CHECK_TYPES = ("", "none", "http", "tcp", "grpc", "exec", "ttl")
PROBED_TYPES = ("http", "tcp", "grpc")
#: A node capability: its agent runs exec checks (they run commands, so agents opt in).
EXEC_CAPABILITY = "exec-checks"
#: A node capability: its agent starts services from their manifests' run (Services.Start).
RUN_CAPABILITY = "run-services"
RUN_STATES = ("starting", "running", "exited", "backoff", "stopped", "failed")
MAX_ENV = 64
MAX_OUTPUT_CHARS = 1024
_CUT_MARK = "..."
DEFAULT_INTERVAL_S = 10
DEFAULT_TIMEOUT_S = 2
MAX_INTERVAL_S = 24 * 3600
MAX_THRESHOLD = 100
MAX_DEREGISTER_AFTER_S = 30 * 24 * 3600
MAX_COMMAND_ARGS = 64

Status = ports_pb2.HealthStatus
PASSING = ports_pb2.HEALTH_STATUS_PASSING
WARNING = ports_pb2.HEALTH_STATUS_WARNING
CRITICAL = ports_pb2.HEALTH_STATUS_CRITICAL
STATUSES = (PASSING, WARNING, CRITICAL)
#: What ``healthy`` means in a listing: serving, perhaps degraded (Consul's DNS default).
HEALTHY = (PASSING, WARNING)


def status_name(status: int) -> str:
    return {PASSING: "passing", WARNING: "warning", CRITICAL: "critical"}.get(status, "unknown")  # type: ignore[call-overload]


def has_check(check: ports_pb2.HealthCheck) -> bool:
    return check.type not in ("", "none")


def truncate(output: str) -> str:
    """At most MAX_OUTPUT_CHARS characters; a cut output ends in "..." (deterministic)."""
    if len(output) <= MAX_OUTPUT_CHARS:
        return output
    return output[: MAX_OUTPUT_CHARS - len(_CUT_MARK)] + _CUT_MARK


def interval_s(check: ports_pb2.HealthCheck) -> int:
    return check.interval_s or DEFAULT_INTERVAL_S


def timeout_s(check: ports_pb2.HealthCheck) -> int:
    return min(check.timeout_s or DEFAULT_TIMEOUT_S, interval_s(check))


def probed_port_name(manifest: ports_pb2.ServiceManifest) -> str:
    """The declared port an http/tcp/grpc check probes: the one it names, or the only one declared."""
    check = manifest.health_check
    if check.port_name:
        return check.port_name
    return manifest.ports[0].name if len(manifest.ports) == 1 else ""


def check_problem(manifest: ports_pb2.ServiceManifest) -> str | None:
    """What is wrong with a manifest's health check (INVALID_ARGUMENT), or None."""
    check = manifest.health_check
    if check.type not in CHECK_TYPES:
        return f"health check type {check.type!r} is not one of http, tcp, grpc, exec, ttl, none"
    declared = [declared.name for declared in manifest.ports]
    if check.port_name and check.port_name not in declared:
        return (
            f"health check probes port {check.port_name!r}, which the service does not declare "
            f"(declared: {', '.join(declared) or 'none'})"
        )
    if check.type in PROBED_TYPES and not probed_port_name(manifest):
        return f"a {check.type} health check needs port_name: the service declares " + (
            f"{len(declared)} ports ({', '.join(declared)})" if declared else "no port"
        )
    problem = limits.check_text(check.path, "health check path") or limits.check_text(
        check.grpc_service, "health check grpc_service"
    )
    if problem:
        return problem
    if check.path and check.type != "http":
        return f"a {check.type or 'none'} health check takes no path (only http does)"
    if check.interval_s > MAX_INTERVAL_S or check.ttl_s > MAX_INTERVAL_S:
        return f"health check interval_s and ttl_s are at most {MAX_INTERVAL_S}"
    if check.timeout_s and check.timeout_s > interval_s(check):
        return f"health check timeout_s {check.timeout_s} is longer than its interval_s {interval_s(check)}"
    if check.success_threshold > MAX_THRESHOLD or check.failure_threshold > MAX_THRESHOLD:
        return f"health check thresholds are at most {MAX_THRESHOLD}"
    if check.deregister_critical_after_s > MAX_DEREGISTER_AFTER_S:
        return f"deregister_critical_after_s is at most {MAX_DEREGISTER_AFTER_S} (30 days)"
    if check.type == "exec":
        if not check.command:
            return "an exec health check needs command: the program and its arguments"
        if len(check.command) > MAX_COMMAND_ARGS:
            return f"an exec health check's command has at most {MAX_COMMAND_ARGS} arguments"
        for arg in check.command:
            problem = limits.check_text(arg, "health check command argument")
            if problem:
                return problem
    elif check.command:
        return f"a {check.type or 'none'} health check takes no command (only exec does)"
    if check.type == "ttl" and not check.ttl_s:
        return "a ttl health check needs ttl_s: how long a passing report holds"
    if check.ttl_s and check.type != "ttl":
        return f"a {check.type or 'none'} health check takes no ttl_s (only ttl does)"
    if not has_check(check) and check.deregister_critical_after_s:
        return "deregister_critical_after_s needs a health check"
    return run_problem(manifest.run)


def run_problem(run: ports_pb2.RunSpec) -> str | None:
    if len(run.command) > MAX_COMMAND_ARGS or len(run.env) > MAX_ENV:
        return f"run has at most {MAX_COMMAND_ARGS} command arguments and {MAX_ENV} environment variables"
    if run.env and not run.command:
        return "run needs command: the program and its arguments"
    for arg in run.command:
        problem = limits.check_text(arg, "run command argument")
        if problem:
            return problem
    for key, value in sorted(run.env.items()):  # key order: the first bad one is named alike everywhere
        if not key or not key.replace("_", "a").isalnum() or key[0].isdigit():
            return f"run env name {key!r} is not a variable name (letters, digits and '_')"
        problem = limits.check_text(value, f"run env {key}", 4096)
        if problem:
            return problem
    return None
