"""A 3-member etcd cluster on 127.0.0.1 for the benchmark: install, start, wait for a leader, stop.

etcd comes from Debian's ``etcd-server`` package (3.4 on bookworm); when the ``etcd`` binary is absent
the bench installs it (``apt-get update`` once, then ``apt-get install -y etcd-server``; needs root).
Two variants are run: the default (every WAL append fsynced), the like-for-like of our default
``durability = "fsync"``, and ``--unsafe-no-fsync`` (an undocumented but accepted flag in 3.4.23),
the like-for-like of our ``durability = "none"``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import grpc

from bench.common import WORK_DIR, free_ports, log, stop_process, tail, track
from bench.load import CHANNEL_OPTIONS

ETCD_DATA = WORK_DIR / "etcd"


class EtcdUnavailable(RuntimeError):
    """etcd could not be installed or started; the bench reports our side without ratios."""


def ensure_etcd() -> str:
    """Path of the etcd binary, installing Debian's etcd-server when it is absent."""
    path = shutil.which("etcd")
    if path:
        return path
    if os.geteuid() != 0:
        raise EtcdUnavailable("etcd is not installed and the bench is not root (apt-get install etcd-server)")
    log("etcd not found: apt-get update && apt-get install -y etcd-server")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "etcd-server"]):
        # apt's chatter goes to stderr: stdout is reserved for the JSON lines.
        rc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, env=env, check=False).returncode
        if rc != 0:
            raise EtcdUnavailable(f"{' '.join(cmd)} failed (exit {rc})")
    path = shutil.which("etcd")
    if not path:
        raise EtcdUnavailable("etcd-server installed but no etcd binary on PATH")
    return path


def etcd_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"etcd Version:\s*(\S+)", out)
    return m.group(1) if m else "unknown"


def supports_no_fsync(binary: str) -> bool:
    """--unsafe-no-fsync is not in 3.4's --help, but 3.4.23 accepts it; an unknown flag exits 2."""
    r = subprocess.run([binary, "--unsafe-no-fsync", "--version"], capture_output=True, check=False)
    return r.returncode == 0


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class EtcdCluster:
    binary: str
    no_fsync: bool = False
    size: int = 3
    members: list[EtcdMember] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "etcd-nofsync" if self.no_fsync else "etcd"

    @property
    def client_addresses(self) -> list[str]:
        return [m.client_address for m in self.members]

    @property
    def pids(self) -> list[int]:
        return [m.proc.pid for m in self.members if m.proc is not None]

    def start(self) -> None:
        root = ETCD_DATA / self.label
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        ports = free_ports(2 * self.size)
        self.members = [
            EtcdMember(
                name=f"m{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=root / f"m{i}",
                log_path=root / f"m{i}.log",
            )
            for i in range(self.size)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        token = f"bench-{uuid.uuid4().hex[:12]}"
        for m in self.members:
            cmd = [
                self.binary,
                "--name", m.name,
                "--data-dir", str(m.data_dir),
                "--listen-client-urls", f"http://{m.client_address}",
                "--advertise-client-urls", f"http://{m.client_address}",
                "--listen-peer-urls", m.peer_url,
                "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", initial,
                "--initial-cluster-token", token,
                "--initial-cluster-state", "new",
                "--logger", "zap",
                "--log-outputs", "stderr",
            ]  # fmt: skip
            if self.no_fsync:
                cmd.append("--unsafe-no-fsync")
            with open(m.log_path, "wb") as logf:
                # Own session: a Ctrl-C on the terminal reaches only the bench, which then stops
                # the members itself (and kills them at exit whatever happens).
                m.proc = track(
                    subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
                )
        log(f"{self.label}: started {self.size} members on {', '.join(self.client_addresses)}")

    def stop(self) -> None:
        for m in self.members:
            if m.proc is not None:
                stop_process(m.proc)
                m.proc = None

    def _check_alive(self) -> None:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is not None:
                raise EtcdUnavailable(
                    f"{self.label} member {m.name} exited with {m.proc.returncode}:\n{tail(m.log_path)}"
                )

    async def wait_healthy(self, pb2: ModuleType, pb2_grpc: ModuleType, timeout: float = 30.0) -> str:
        """Poll Maintenance.Status on every member until all answer and agree on one leader.

        Returns the leader's client address.
        """
        deadline = time.monotonic() + timeout
        channels = [grpc.aio.insecure_channel(a, options=CHANNEL_OPTIONS) for a in self.client_addresses]
        try:
            stubs = [pb2_grpc.MaintenanceStub(ch) for ch in channels]
            last_err = "no answer yet"
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    resps = await asyncio.gather(*(s.Status(pb2.StatusRequest(), timeout=1.0) for s in stubs))
                except grpc.aio.AioRpcError as e:
                    last_err = f"{e.code().name}: {e.details()}"
                else:
                    leaders = {r.leader for r in resps}
                    by_id = {r.header.member_id: addr for r, addr in zip(resps, self.client_addresses, strict=True)}
                    if len(leaders) == 1 and 0 not in leaders and next(iter(leaders)) in by_id:
                        leader = by_id[next(iter(leaders))]
                        log(f"{self.label}: healthy, leader {leader}, version {resps[0].version}")
                        return leader
                    last_err = f"leaders seen {sorted(leaders)}"
                await asyncio.sleep(0.05)
            raise EtcdUnavailable(f"{self.label}: no agreed leader within {timeout}s ({last_err})")
        finally:
            for ch in channels:
                await ch.close()


def etcd_put_fn(pb2: ModuleType):  # type: ignore[no-untyped-def]
    """The etcd side's put(stub, key, value) coroutine for the load generator."""

    async def put(stub, key: str, value: bytes) -> None:  # type: ignore[no-untyped-def]
        await stub.Put(pb2.PutRequest(key=key.encode(), value=value), timeout=10.0)

    return put
