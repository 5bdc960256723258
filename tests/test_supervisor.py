"""How an agent stops a process it runs (controlplane/supervisor.py): SIGTERM to its process group,
SIGKILL once the manifest's ``run.stop_timeout_s`` has passed. Real processes, no cluster."""

from __future__ import annotations

import asyncio
import signal

import pytest

from controlplane.supervisor import MAX_STOP_TIMEOUT_S, STOP_GRACE_S, stop_grace_s, terminate

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
