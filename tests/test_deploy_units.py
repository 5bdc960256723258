"""The systemd units in deploy/ (issue 17), checked by systemd's own tools on this machine.

``systemd-analyze verify`` loads each unit as systemd would and reports unknown keys, values it
cannot parse and commands that are not executable; it exits 0 for most of them and only prints a
warning, so any output counts as a failure here. It runs against a scratch root holding the host's
own unit directory (the targets the units order against) and an executable at each absolute path
the units start (``/opt/controlplane/bin/cpctl`` is not installed on a test machine): what is
checked is the unit files, not the installation.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
HOST_UNITS = Path("/usr/lib/systemd/system")
UNITS = sorted(p.name for p in DEPLOY.iterdir() if p.suffix in (".service", ".timer"))
DAEMONS = ["controlplane-server.service", "controlplane-agent.service", "controlplane-gateway.service"]

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not HOST_UNITS.is_dir(),
    reason="systemd-analyze (Debian: apt-get install systemd) and /usr/lib/systemd/system are needed to verify units",
)


def _directives(unit: str) -> dict[str, list[str]]:
    """KEY -> every value it is given, across sections (comments and continuation-free units only)."""
    found: dict[str, list[str]] = {}
    for line in (DEPLOY / unit).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def _scratch_root(root: Path, units: dict[str, str]) -> None:
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    for name, text in units.items():
        (system / name).write_text(text)
        for command in re.findall(r"^Exec\w*=[-@:+!]*(/\S+)", text, flags=re.MULTILINE):
            stub = root / command.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)


def verify(root: Path, unit: str) -> str:
    """What ``systemd-analyze verify`` says about ``unit`` in ``root``: "" when it is clean."""
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", unit],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    said = (result.stdout + result.stderr).strip()
    if result.returncode != 0 and not said:
        said = f"exit status {result.returncode}"
    return said


@needs_analyze
def test_every_unit_verifies_clean(tmp_path: Path) -> None:
    assert set(DAEMONS) | {"controlplane-backup.service", "controlplane-backup.timer"} <= set(UNITS)
    _scratch_root(tmp_path, {name: (DEPLOY / name).read_text() for name in UNITS})
    problems = {unit: said for unit in UNITS if (said := verify(tmp_path, unit))}
    assert problems == {}


@needs_analyze
def test_a_broken_unit_fails_verification(tmp_path: Path) -> None:
    """The check above would catch a typo: a misspelt key, a value systemd cannot parse, a relative command."""
    text = (DEPLOY / "controlplane-server.service").read_text()
    broken = {
        "misspelt.service": text.replace("\nRestart=on-failure", "\nRestrt=on-failure"),
        "bad-value.service": text.replace("RestartPreventExitStatus=1 2", "RestartPreventExitStatus=one two"),
        "relative.service": text.replace("ExecStart=/opt/controlplane/bin/cpctl", "ExecStart=cpctl"),
    }
    assert all(unit != text for unit in broken.values())
    _scratch_root(tmp_path, broken)
    for name in broken:
        assert verify(tmp_path, name), f"{name} passed verification"


@pytest.mark.parametrize("unit", DAEMONS)
def test_daemons_stop_on_deliberate_exits_and_read_an_environment_file(unit: str) -> None:
    directives = _directives(unit)
    assert directives["Restart"] == ["on-failure"]
    # 1: the cluster refused it (a removed server, a duplicate agent id); 2: bad configuration.
    assert directives["RestartPreventExitStatus"] == ["1 2"]
    role = unit.removeprefix("controlplane-").removesuffix(".service")
    # "-": the file is optional.
    assert directives["EnvironmentFile"] == [f"-/etc/controlplane/{role}.env"]
    assert (DEPLOY / f"{role}.env").is_file()
    assert directives["User"] == ["controlplane"] and directives["NoNewPrivileges"] == ["yes"]
    assert directives["ProtectSystem"] == ["strict"] and directives["CapabilityBoundingSet"] == [""]


def test_the_backup_timer_runs_the_snapshot_command() -> None:
    backup = _directives("controlplane-backup.service")
    assert backup["Type"] == ["oneshot"] and backup["EnvironmentFile"] == ["-/etc/controlplane/backup.env"]
    assert "/opt/controlplane/bin/cpctl cluster snapshot save " in backup["ExecStart"][0]
    assert _directives("controlplane-backup.timer")["OnCalendar"] == ["hourly"]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is needed to check the user")
def test_the_dedicated_user_is_declared_for_systemd_sysusers(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        ["systemd-sysusers", "--dry-run", f"--root={tmp_path}", str(DEPLOY / "controlplane.sysusers")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Creating user 'controlplane'" in result.stdout + result.stderr
