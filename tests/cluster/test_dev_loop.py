"""`cpctl dev` as a user runs it: a server killed with kill -9 comes back while the others keep
serving; closing the terminal (SIGHUP) stops every server; kill -9 of `cpctl dev` itself takes its
servers with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.client import Client
from controlplane.dev import dev_admin_credentials

from .conftest import free_base_port, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


class Dev:
    def __init__(self, process: subprocess.Popen[bytes], data_dir: Path, log: Path) -> None:
        self.process, self.data_dir, self.log = process, data_dir, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def manifest(self) -> dict[str, object]:
        return dict(json.loads((self.data_dir / "cluster.json").read_text()))

    def server_pids(self) -> dict[str, int]:
        return {s["id"]: s["pid"] for s in self.manifest()["servers"]}  # type: ignore[attr-defined]

    def client(self) -> Client:
        endpoints = str(self.manifest()["endpoints"])
        return Client(endpoints, credentials=dev_admin_credentials(self.data_dir), timeout=15)


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    data_dir, log = tmp_path / "data", tmp_path / "dev.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CP_")}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "dev", "--servers", "3", "--data-dir", str(data_dir),
             "--base-port", str(free_base_port(21000))],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )  # fmt: skip
    running = Dev(process, data_dir, log)
    try:
        wait_until(lambda: "running;" in running.output(), 90, "cpctl dev to be up", detail=running.output)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_a_killed_server_is_restarted_and_the_cluster_keeps_serving(dev: Dev) -> None:
    victim, old_pid = "n2", dev.server_pids()["n2"]
    os.kill(old_pid, signal.SIGKILL)
    with dev.client() as client:
        client.put("dev/while-n2-is-down", b"1")  # the others keep serving
        wait_until(lambda: "restarting n2" in dev.output(), 60, "cpctl dev to restart n2", detail=dev.output)
        wait_until(
            lambda: dev.server_pids()["n2"] != old_pid and _alive(dev.server_pids()["n2"]),
            60,
            "a new n2 process",
            detail=dev.output,
        )
        wait_until(lambda: all(m.healthy for m in client.status().members), 60, "n2 back and healthy")
        assert client.put("dev/after", b"2").revision > 0
    assert dev.process.poll() is None, dev.output()
    assert f"{victim} died (signal 9" in dev.output()


def test_sighup_stops_every_server(dev: Dev) -> None:
    pids = list(dev.server_pids().values())
    dev.process.send_signal(signal.SIGHUP)
    dev.process.wait(60)
    assert "stopped" in dev.output()
    wait_until(lambda: not any(_alive(pid) for pid in pids), 30, "every server to exit")


def test_servers_die_with_a_killed_cpctl_dev(dev: Dev) -> None:
    pids = list(dev.server_pids().values())
    dev.process.kill()
    dev.process.wait(10)
    wait_until(lambda: not any(_alive(pid) for pid in pids), 30, "every server to exit with its supervisor")
