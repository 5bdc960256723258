"""The commands of deploy/controlplane-backup.service, run as systemd would run them, against a real
cluster (issue 17): each run saves a backup that restores, and only the newest CP_BACKUP_KEEP stay.

systemd is not running here, so the test does what it would: the command line of ExecStart= and
ExecStartPost= with systemd's escapes undone (``$$`` -> ``$``, ``%%`` -> ``%``), handed to /bin/sh
with STATE_DIRECTORY and the unit's environment; /opt/controlplane/bin/cpctl is this tree's cpctl.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.client import Client
from controlplane.dev import LocalCluster
from controlplane.v1 import cluster_pb2

from .conftest import credentials_env

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "controlplane-backup.service"
INSTALLED_CPCTL = "/opt/controlplane/bin/cpctl"


def _shell_commands(key: str) -> list[str]:
    """The scripts ``/bin/sh -c '...'`` of every ``KEY=`` line, unescaped as systemd does."""
    scripts = re.findall(rf"^{key}=/bin/sh -c '(.*)'$", UNIT.read_text(), flags=re.MULTILINE)
    assert scripts, f"no {key}=/bin/sh -c '...' in {UNIT.name}"
    return [script.replace("$$", "$").replace("%%", "%") for script in scripts]


def _run(script: str, env: dict[str, str], cpctl: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", "-c", script.replace(INSTALLED_CPCTL, str(cpctl))],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )


def test_the_backup_unit_saves_a_snapshot_and_keeps_the_newest(cluster: LocalCluster, tmp_path: Path) -> None:
    cpctl = tmp_path / "cpctl"
    cpctl.write_text(f'#!/bin/sh\nexec {sys.executable} -m controlplane "$@"\n')
    cpctl.chmod(0o755)
    backups = tmp_path / "backups"
    backups.mkdir()
    # Three older backups (by mtime): with CP_BACKUP_KEEP=2 the new one and the newest old one stay.
    for age, name in (
        (300, "controlplane-old1.snap"),
        (200, "controlplane-old2.snap"),
        (100, "controlplane-old3.snap"),
    ):
        (backups / name).write_bytes(b"old")
        os.utime(backups / name, (1_700_000_000 - age, 1_700_000_000 - age))
    (backups / "notes.txt").write_text("not a backup: never deleted")
    env = {
        **credentials_env(cluster),
        "CP_ENDPOINTS": ",".join(cluster.client_addresses),
        "STATE_DIRECTORY": str(backups),
        "CP_BACKUP_KEEP": "2",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    with Client(cluster.client_addresses, credentials=cluster.credentials, timeout=15) as client:
        client.put("backup-unit/key", "value")

    for script in _shell_commands("ExecStart"):
        done = _run(script, env, cpctl)
        assert done.returncode == 0, done.stderr
        assert "saved revision" in done.stdout
    saved = list(backups.glob("controlplane-2*.snap"))
    assert len(saved) == 1 and re.fullmatch(r"controlplane-\d{8}T\d{6}Z\.snap", saved[0].name)
    # A real backup: it parses as one (Cluster.Restore checks the same) and is not empty.
    assert cluster_pb2.Backup.FromString(saved[0].read_bytes()).ByteSize() > 0

    for script in _shell_commands("ExecStartPost"):
        done = _run(script, env, cpctl)
        assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in backups.iterdir()) == sorted([saved[0].name, "controlplane-old3.snap", "notes.txt"])
