"""Services an agent runs on demand (issue 21 item 4): the process side of ``Services.Start``.

The cluster holds what is wanted (``ServiceRecord.run.wanted``, set by ``Services.Start``/``Stop``)
and the agent's account of it (``run.state``, restarts, the last exit code). The agent of the
instance's node, started with ``--allow-run``, follows the catalog (``HealthChecker.refresh`` hands
it the node's instances) and:

* starts a wanted instance's ``run.command`` with its ports in the environment (``CP_PORT_<NAME>``
  for each, ``PORT`` for the first, ``CP_SERVICE``, ``CP_HOST``, then the manifest's ``run.env``);
* restarts a process that exits, after a backoff doubling from 1 s to 30 s (reset once a process
  has lived a minute), and counts the restarts;
* stops it (SIGTERM to its process group, then SIGKILL after ``run.stop_timeout_s``, 5 s unless
  set, 300 at most) when it is no longer wanted, deregistered, or the agent stops;
* reports its account only when it changes (a crash is one revision, a steady process none).

Its health is the instance's health check, run by the checker as for any other instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import signal
from collections.abc import Callable, Mapping, Sequence

import structlog

from controlplane import agent_metrics
from controlplane.client import AsyncClient, ControlPlaneError, NotFound, ServiceRecord
from controlplane.client._ports import MAX_STOP_TIMEOUT_S

log = structlog.get_logger("controlplane.supervisor")

MIN_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
#: A process that lived this long starts the next backoff from the minimum again.
STABLE_AFTER_S = 60.0
STOP_GRACE_S = 5.0


def stop_grace_s(run: Mapping[str, object]) -> float:
    """Seconds between SIGTERM and SIGKILL for a run (its manifest's ``run``): ``stop_timeout_s``
    when set, capped (the servers store any value), else :data:`STOP_GRACE_S`."""
    asked = run.get("stop_timeout_s")
    if not isinstance(asked, int) or asked <= 0:
        return STOP_GRACE_S
    return float(min(asked, MAX_STOP_TIMEOUT_S))


def run_environment(record: ServiceRecord, base: Mapping[str, str]) -> dict[str, str]:
    """The environment a run starts with: ``base``, the instance's ports, then the manifest's env."""
    env = dict(base)
    for index, assignment in enumerate(record.ports):
        env[f"CP_PORT_{re.sub(r'[^A-Z0-9]', '_', assignment.name.upper())}"] = str(assignment.port)
        if index == 0:
            env["PORT"] = str(assignment.port)
    env["CP_SERVICE"], env["CP_HOST"] = record.name, record.host
    env.update((record.manifest.get("run") or {}).get("env") or {})
    return env


class Supervisor:
    def __init__(self, client: AsyncClient, node_id: str) -> None:
        self.client = client
        self.node_id = node_id
        #: name -> (what it runs, its task) for every instance wanted running here.
        self._tasks: dict[str, tuple[tuple[str, ...], asyncio.Task[None]]] = {}
        #: name -> its tasks not finished yet, wanted or stopping: a new one for that name waits for
        #: them to end (a stop can take the run's whole stop_timeout_s), so two never run at once.
        self._pending: dict[str, set[asyncio.Task[None]]] = {}
        #: Every task not finished yet, stopping ones included: the agent must not exit before they end.
        self._unfinished: set[asyncio.Task[None]] = set()
        #: name -> the running process (for tests, the stop path and the metrics).
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        agent_metrics.track_processes(self)

    def sync(self, records: Sequence[ServiceRecord]) -> None:
        """Start what is wanted and not running; stop what runs and is no longer wanted.

        A run that could not start (``failed``) is not tried again until it is stopped and started,
        or its manifest or ports change: retrying does not make a missing program appear."""
        wanted: dict[str, ServiceRecord] = {
            r.name: r for r in records if r.run.wanted and (r.manifest.get("run") or {}).get("command")
        }
        for name in [n for n in self._tasks if n not in wanted]:
            self._tasks.pop(name)[1].cancel()
        for name, record in wanted.items():
            fingerprint = (repr(record.manifest.get("run")), repr([(p.name, p.port) for p in record.ports]))
            running = self._tasks.get(name)
            if running is not None and running[0] == fingerprint and not running[1].done():
                continue
            if running is not None:
                running[1].cancel()
            earlier = set(self._pending.get(name, ()))
            task = asyncio.create_task(self._supervise(record, after=earlier))
            self._pending.setdefault(name, set()).add(task)
            self._unfinished.add(task)
            task.add_done_callback(self._finished(name))
            self._tasks[name] = (fingerprint, task)

    def _finished(self, name: str) -> Callable[[asyncio.Task[None]], None]:
        def forget(task: asyncio.Task[None]) -> None:
            self._unfinished.discard(task)
            pending = self._pending.get(name)
            if pending is not None:
                pending.discard(task)
                if not pending:
                    del self._pending[name]

        return forget

    async def stop(self) -> None:
        """Stop every process, each given its grace, and wait until all have ended."""
        self._tasks.clear()
        tasks = list(self._unfinished)
        for task in tasks:
            if not task.cancelling():  # one stopping already: a second cancel would cut its grace short
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _supervise(self, record: ServiceRecord, after: set[asyncio.Task[None]] | None = None) -> None:
        """Run ``record``'s process until cancelled, once ``after`` (the earlier tasks for this name)
        have ended: two must never run at once, whether this one replaces one (a new manifest or
        new ports) or starts again while one still stops. (A task cancelled before it ran never
        waits itself, so each waits for every earlier one, not only the last.)"""
        name = record.name
        run = record.manifest.get("run") or {}
        command = list(run.get("command") or [])
        loop = asyncio.get_running_loop()
        restarts, backoff, code = 0, MIN_BACKOFF_S, 0
        process: asyncio.subprocess.Process | None = None
        try:
            if after:
                await asyncio.wait(after)  # not gather: cancelling this wait must not cancel them
            while True:
                try:
                    process = await asyncio.create_subprocess_exec(
                        *command,
                        env=run_environment(record, os.environ),
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL,
                        start_new_session=True,
                    )
                except OSError as exc:
                    problem = f"cannot start {command[0]}: {exc}"
                    if not _never_starts(exc):
                        # A passing shortage (processes, memory, files) or a binary being replaced:
                        # tried again after the backoff, as a process that exited.
                        restarts += 1
                        await self._report(name, "backoff", restarts, code, message=f"{problem}; retry in {backoff:g}s")
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, MAX_BACKOFF_S)
                        continue
                    await self._report(name, "failed", restarts, code, message=problem)
                    await loop.create_future()  # failed until stopped or replaced (see sync): never set
                    continue  # not reached; says so to the type checker
                started = loop.time()
                agent_metrics.SERVICE_STARTS.inc()
                self.processes[name] = process
                await self._report(name, "running", restarts, code=code, pid=process.pid)
                code = await process.wait()
                self._forget(name, process)
                if loop.time() - started >= STABLE_AFTER_S:
                    backoff = MIN_BACKOFF_S
                restarts += 1
                log.warning("service_exited", service=name, code=code, restart_in=backoff)
                await self._report(
                    name, "backoff", restarts, code=code, message=f"exited with {code}; restart in {backoff:g}s"
                )
                await asyncio.sleep(backoff)  # the restart backoff
                agent_metrics.SERVICE_RESTARTS.inc()  # counted once it is due, not for a stop meanwhile
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        except asyncio.CancelledError:
            try:
                # Cancelled while the earlier ones still stop: it still ends after them.
                if after and not all(task.done() for task in after):
                    await asyncio.wait(after)
                if process is not None and process.returncode is None:
                    await terminate(process, stop_grace_s(run))
            finally:
                if process is not None:
                    self._forget(name, process)
                current = asyncio.current_task()
                if current is None or current.cancelling() <= 1:  # not when cut short again: exit fast
                    with contextlib.suppress(ControlPlaneError, asyncio.CancelledError):
                        await self._report(name, "stopped", restarts, code)
            raise
        finally:
            # Whatever ended this task (a defect included), its process does not outlive it.
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                self._forget(name, process)

    def _forget(self, name: str, process: asyncio.subprocess.Process) -> None:
        """Drop ``process`` from ``processes`` unless a newer task has put its own there meanwhile
        (``sync`` replaced this one while it stopped)."""
        if self.processes.get(name) is process:
            del self.processes[name]

    async def _report(
        self, name: str, state: str, restarts: int, code: int = 0, pid: int = 0, message: str = ""
    ) -> None:
        try:
            await self.client.services.report_run(
                self.node_id, name, state, restarts=restarts, last_exit_code=code, pid=pid, message=message
            )
        except NotFound:
            pass  # deregistered meanwhile: the next sync stops it
        except ControlPlaneError as exc:
            log.warning("run_report_failed", service=name, state=state, reason=exc.message)


def _never_starts(exc: OSError) -> bool:
    """Whether starting again cannot help: no such program, not allowed to run it, not a program."""
    return isinstance(exc, FileNotFoundError | PermissionError | NotADirectoryError) or exc.errno == errno.ENOEXEC


async def terminate(process: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM to the process's group (it runs in a session of its own), SIGKILL after ``grace_s``,
    or at once if this wait is itself cancelled: a stop never leaves the group running."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        raise
