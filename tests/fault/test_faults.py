"""The fault suite against real servers: the SHORT profile in ``make test``, the LONG one as a soak.

Each run starts its own 3-server cluster, runs the register, set, ports and watch clients while a
seeded schedule injects one fault at a time, then checks the histories. A failure names every
violation and the history file (JSON lines) beside the summary; the server logs are in the run's
work directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .runner import PROFILES, run


async def _run(profile: str, tmp_path: Path) -> None:
    result = await run(PROFILES[profile], tmp_path / "run", log=lambda line: print(line, flush=True))
    print(result.text())  # the table, in the captured output of the test (pytest -s shows it live)
    assert result.faults, "no fault was injected"
    assert result.ok, f"{len(result.violations)} violation(s); history: {result.history_path}\n" + "\n".join(
        str(v) for v in result.violations
    )


@pytest.mark.cluster
@pytest.mark.timeout(420)
async def test_short_fault_run(tmp_path: Path) -> None:
    """Fifteen faults, one of each nemesis but the LONG-only clock steps (~90 s)."""
    await _run("short", tmp_path)


@pytest.mark.soak
@pytest.mark.timeout(1800)
async def test_long_fault_run(tmp_path: Path) -> None:
    """Forty faults (about 6-7 minutes); ``make jepsen`` runs the same profile and prints the table."""
    await _run("long", tmp_path)
