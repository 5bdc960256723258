"""How an agent stops a process it runs (controlplane/supervisor.py): SIGTERM to its process group,
SIGKILL once the manifest's ``run.stop_timeout_s`` has passed; a stop is waited for, and a process
replaced (a new manifest) has ended before its successor starts. Real processes; the cluster is a
recorder of the agent's reports (what the supervisor tells it is not under test here)."""

from __future__ import annotations

import asyncio
import errno
import signal
from pathlib import Path
from typing import Any

import pytest

from controlplane import supervisor
from controlplane.client._ports import service_record
from controlplane.supervisor import MAX_STOP_TIMEOUT_S, STOP_GRACE_S, Supervisor, stop_grace_s, terminate
from controlplane.v1 import ports_pb2

# Exits 0 half a second after SIGTERM: what `docker compose up` does while it stops its containers.
GRACEFUL = "trap 'sleep 0.5; exit 0' TERM; echo trapped; while :; do sleep 0.05; done"
# Never exits on SIGTERM.
STUBBORN = "trap '' TERM; echo trapped; while :; do sleep 0.05; done"


async def started(script: str) -> asyncio.subprocess.Process:
    """The shell running ``script``, once its trap is set (it says so)."""
    process = await asyncio.create_subprocess_exec(
        "sh", "-c", script, start_new_session=True, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    assert await asyncio.wait_for(process.stdout.readline(), 60) == b"trapped\n"
    return process


async def test_a_process_given_time_stops_by_itself() -> None:
    process = await started(GRACEFUL)
    await terminate(process, grace_s=30)
    assert process.returncode == 0


async def test_a_process_that_ignores_sigterm_is_killed_when_its_time_is_up() -> None:
    process = await started(STUBBORN)
    await terminate(process, grace_s=0.2)
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize(
    ("run", "grace"),
    [
        ({}, STOP_GRACE_S),
        ({"stop_timeout_s": 0}, STOP_GRACE_S),
        ({"stop_timeout_s": 30}, 30.0),
        ({"stop_timeout_s": 10_000}, float(MAX_STOP_TIMEOUT_S)),  # the servers store what they are given
        ({"stop_timeout_s": "30"}, STOP_GRACE_S),
    ],
)
def test_the_grace_is_the_manifests_capped(run: dict[str, object], grace: float) -> None:
    assert stop_grace_s(run) == grace


class _Reports:
    """Stands in for the cluster: records what the agent reports of its runs."""

    def __init__(self) -> None:
        self.services = self
        self.states: list[tuple[str, str]] = []

    async def report_run(self, host: str, name: str, state: str, **_: Any) -> None:
        self.states.append((name, state))


def wanted(script: str, log: Path, stop_timeout_s: int = 0, label: str = "one") -> Any:
    """An instance wanted running: ``sh -c SCRIPT LABEL LOG`` (the script sees them as $0 and $1)."""
    record = ports_pb2.ServiceRecord()
    record.manifest.name, record.manifest.host = "svc", "node"
    record.manifest.run.command.extend(["sh", "-c", script, label, str(log)])
    record.manifest.run.stop_timeout_s = stop_timeout_s
    record.run.wanted = True
    return service_record(record)


# Sets its trap, writes "$0 start", then on SIGTERM "$0 end" a second later and exits 0.
LOGGING = 'trap \'sleep 1; echo "$0 end" >> "$1"; exit 0\' TERM; echo "$0 start" >> "$1"; while :; do sleep 0.05; done'


async def until(condition: Any, what: str) -> None:
    for _ in range(1200):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


def logging_run(log: Path, label: str, stop_timeout_s: int = 30) -> Any:
    """The LOGGING script as instance svc's run, writing ``label start``/``label end`` to ``log``."""
    return wanted(LOGGING, log, stop_timeout_s=stop_timeout_s, label=label)


async def logged(log: Path, line: str) -> None:
    """Until ``log`` holds ``line``."""
    await until(lambda: log.exists() and line in log.read_text().splitlines(), line)


async def test_the_manifests_grace_is_given_and_an_agents_stop_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "STOP_GRACE_S", 0.2)  # the default would SIGKILL after 0.2 s
    log = tmp_path / "log"
    runs = Supervisor(_Reports(), "node")  # type: ignore[arg-type]
    runs.sync([logging_run(log, "one")])
    await logged(log, "one start")
    process = runs.processes["svc"]
    runs.sync([])  # no longer wanted: its stop begins, and takes a second
    await runs.stop()  # the agent stops: it waits for that stop, it does not cut it short
    assert process.returncode == 0 and log.read_text().splitlines() == ["one start", "one end"]


async def test_without_a_grace_a_slow_process_is_killed_after_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "STOP_GRACE_S", 0.2)
    log = tmp_path / "log"
    runs = Supervisor(_Reports(), "node")  # type: ignore[arg-type]
    runs.sync([logging_run(log, "one", stop_timeout_s=0)])
    await logged(log, "one start")
    process = runs.processes["svc"]
    await runs.stop()
    assert process.returncode == -signal.SIGKILL and log.read_text().splitlines() == ["one start"]


async def test_a_replaced_process_has_ended_before_its_successor_starts(tmp_path: Path) -> None:
    log = tmp_path / "log"
    runs = Supervisor(_Reports(), "node")  # type: ignore[arg-type]
    runs.sync([logging_run(log, "old")])
    await logged(log, "old start")
    runs.sync([logging_run(log, "new")])  # a new manifest
    await logged(log, "new start")
    await runs.stop()
    assert log.read_text().splitlines() == ["old start", "old end", "new start", "new end"]


async def test_started_again_while_it_still_stops_waits_for_the_stop(tmp_path: Path) -> None:
    log = tmp_path / "log"
    reports = _Reports()
    runs = Supervisor(reports, "node")  # type: ignore[arg-type]
    runs.sync([logging_run(log, "first")])
    await logged(log, "first start")
    runs.sync([])  # services stop: its stop takes a second
    runs.sync([logging_run(log, "again")])  # services start, at once
    await logged(log, "again start")
    assert log.read_text().splitlines() == ["first start", "first end", "again start"]
    # The catalog's last word is the new run's, not the old one's late "stopped".
    assert reports.states[-1] == ("svc", "running")
    await runs.stop()


@pytest.mark.parametrize("waiting", [False, True], ids=["b-never-ran", "b-waiting"])
async def test_a_chain_of_replacements_within_one_grace_never_overlaps(tmp_path: Path, waiting: bool) -> None:
    log = tmp_path / "log"
    reports = _Reports()
    runs = Supervisor(reports, "node")  # type: ignore[arg-type]
    runs.sync([logging_run(log, "a")])
    await logged(log, "a start")
    runs.sync([logging_run(log, "b")])  # b waits for a's stop...
    if waiting:
        await asyncio.sleep(0)  # one loop turn: b runs its first step, into its wait for a
    runs.sync([logging_run(log, "c")])  # ...and is replaced meanwhile
    await logged(log, "c start")
    await runs.stop()
    assert log.read_text().splitlines() == ["a start", "a end", "c start", "c end"]
    # a ran and stopped; b never ran (stopped only when a had); then c ran and stopped.
    expected = ["running", "stopped", *(["stopped"] if waiting else []), "running", "stopped"]
    assert [state for _, state in reports.states] == expected


async def test_a_program_that_cannot_start_is_reported_failed_once(tmp_path: Path) -> None:
    reports = _Reports()
    runs = Supervisor(reports, "node")  # type: ignore[arg-type]
    record = ports_pb2.ServiceRecord()
    record.manifest.name, record.manifest.host = "svc", "node"
    record.manifest.run.command.append(str(tmp_path / "no-such-program"))
    record.run.wanted = True
    missing = service_record(record)
    runs.sync([missing])
    await until(lambda: ("svc", "failed") in reports.states, "failed")
    for _ in range(3):  # the agent's refreshes: the same manifest, still wanted
        runs.sync([missing])
        await asyncio.sleep(0)
    assert reports.states == [("svc", "failed")]
    await runs.stop()
    assert reports.states == [("svc", "failed"), ("svc", "stopped")]


@pytest.mark.parametrize(
    ("error", "never"),
    [
        (FileNotFoundError(errno.ENOENT, "no such file"), True),
        (PermissionError(errno.EACCES, "permission denied"), True),
        (OSError(errno.ENOEXEC, "exec format error"), True),
        (OSError(errno.EAGAIN, "resource temporarily unavailable"), False),  # out of processes, for now
        (OSError(errno.ETXTBSY, "text file busy"), False),  # the binary is being replaced
        (OSError(errno.EMFILE, "too many open files"), False),
    ],
)
def test_only_a_start_that_cannot_ever_work_is_failed_for_good(error: OSError, never: bool) -> None:
    assert supervisor._never_starts(error) is never
