"""Faults against a LocalCluster, one at a time, each bounded in time and followed by recovery.

Every nemesis is synchronous (process signals, mounts, status polls): the runner calls it in a
worker thread while the clients keep running on the event loop. A fault is
``inject`` -> hold for its duration -> ``heal`` -> wait until the cluster is whole again
(every server up, one agreed leader, the healed server caught up); the runner measures each
phase. Waiting is always for a condition with a deadline; the one deliberate sleep is the length
of the fault itself.

Nemeses:

* ``kill-leader`` / ``kill-random``: ``kill -9``, then restart the same data directory.
* ``kill-leader-and-one``: the leader and another server at once (the FIVE profile: a majority of
  five survives it).
* ``pause-leader`` / ``pause-random``: SIGSTOP, then SIGCONT: a frozen VM or a long GC pause; no
  connection is closed, so peers and clients notice only through their own timeouts.
* ``disk-full``: the server is stopped, its data directory moved onto a small tmpfs (what it holds
  plus a little headroom) and restarted; catching up and new writes fill the disk. The server must
  stop on its own with status 3 (``raft.EXIT_STORAGE_FAILED``). Healing copies what it wrote back
  to the real disk, unmounts, and restarts it from there (a torn journal tail is dropped).
  Needs ``mount -t tmpfs`` (root); when mounting is refused the nemesis is skipped with a message.
* ``partition-leader`` / ``partition-random`` / ``partition-bridge``: each server runs in a
  network namespace of its own (``bench.netns.ShapedNet``, blackhole routes for the cuts). The
  leader, or any server, is cut off from every other (with 3 servers, the one majority/minority
  split); or the leader and one follower cannot reach each other while the others reach both (a
  bridge: the leader keeps its majority, the cut follower campaigns). Clients reach every
  server throughout, the isolated one included. Healing removes the cuts. Needs root and iproute2.
* ``partition-clients``: the clients lose the leader; the servers still follow it.
* ``member-replace``: a server (leader or not) is removed through the SDK and must stop itself; a
  new server with a new id joins on its machine with an empty data directory, is admitted and
  promoted to voter. Ids change: ``n1`` may be replaced by ``n4``.
* ``member-replace-kill`` / ``member-replace-partition`` / ``member-replace-pause``: the same,
  with ``kill -9`` of another server, that server cut off from the others, or frozen (SIGSTOP),
  while the removal is in flight; it recovers after the hold, and the replacement joins once the
  removal has committed.
* ``member-join-kill``: the same, with the ``kill -9`` while the replacement is being admitted.
* ``clock-step-leader``: the leader's wall clock jumps an hour ahead for the hold, then back (NTP
  stepping, a hypervisor setting the guest's time, someone running ``date``). Meanwhile a node
  lease renewed every second must live on, and a lease nobody renews must still expire, before
  the step back and after it (``controlplane/server/leader_clock.py``). The step is made inside the
  server's Python (``tests/fault/clockstep/sitecustomize.py`` says how, and why not the kernel's
  clock).
* ``clock-step-follower`` (not in the SHORT profile): a follower's clock jumps an hour ahead and
  leadership is handed to it; the same checks.
* ``clock-step-back-leader`` (not in the SHORT profile): the leader's clock an hour behind, then
  put right; the same checks.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.netns import ShapedNet
from controlplane import errors
from controlplane.client import Client, NodeState, RetryPolicy
from controlplane.dev import LocalCluster, NodeProcess
from controlplane.server.journal import write_file_atomically
from controlplane.server.raft import EXIT_STORAGE_FAILED
from controlplane.v1 import cluster_pb2

HEAL_TIMEOUT_S = 90.0
#: One membership call's deadline (the SDK retries inside it; the nemesis retries the call).
MEMBERSHIP_CALL_S = 20.0
#: What a membership call may answer that a retry can change: no leader yet (or no quorum).
RETRIED_MEMBERSHIP_ERRORS = (errors.Unavailable, errors.DeadlineExceeded)
#: How long a removed server may take to learn of its removal and stop itself.
REMOVED_STOP_TIMEOUT_S = 30.0
#: What the tmpfs holds beyond the data directory's current size (bytes).
DISK_HEADROOM = 96 * 1024
#: How long the disk-full nemesis waits for the server to stop on its own.
DISK_FILL_TIMEOUT_S = 20.0
#: How far the clock-step nemesis moves the leader's wall clock (seconds).
CLOCK_STEP_S = 3600.0
#: The lease of the clock-step nemesis's renewed node, renewed every ``CLOCK_STEP_RENEW_S``.
CLOCK_STEP_TTL_S = 8.0
CLOCK_STEP_RENEW_S = 1.0
#: How long a lease nobody renews may live past its TTL before the nemesis calls it kept (the
#: leader's sweep, and a busy machine, on top of the TTL).
CLOCK_STEP_EXPIRY_SLACK_S = 30.0
#: Where the suite's server processes find the clock-step hook (``sitecustomize``).
CLOCK_STEP_HOOK_DIR = Path(__file__).resolve().parent / "clockstep"


class Unhealthy(AssertionError):
    """The cluster did not come back whole within the deadline after a fault."""


@dataclass
class Fault:
    nemesis: str
    target: str
    was_leader: bool
    injected: float  # run-relative seconds
    healed: float = 0.0  # the heal action (restart, SIGCONT, ...) was taken
    whole: float = 0.0  # every server up, caught up, one leader
    duration: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.05,
    retry: tuple[type[Exception], ...] = (),
) -> Any:
    """Poll ``predicate`` until truthy; RPC errors (and ``retry``) count as "not yet". Raises
    Unhealthy on timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except errors.FailedPrecondition as exc:
            if "already in flight" not in exc.message:
                raise  # a refusal no retry changes (a removed id, a refused transfer): a finding
            value, last = None, exc  # the previous membership change (a promotion) is still going
        except (grpc.RpcError, OSError, *retry) as exc:
            value, last = None, exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise Unhealthy(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(interval)  # the poll interval of a condition wait


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _log_mentions(path: Path, text: str, tail_bytes: int = 1 << 20) -> bool:
    try:
        with path.open("rb") as log:
            log.seek(max(0, path.stat().st_size - tail_bytes))
            return text.encode() in log.read()
    except OSError:
        return False


def mount_permitted(scratch: Path) -> str:
    """'' when this process may mount a tmpfs, else why not."""
    probe = scratch / "mount-probe"
    probe.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"mount unavailable: {exc}"
    if done.returncode != 0:
        return f"mount -t tmpfs refused: {done.stderr.strip() or done.returncode}"
    subprocess.run(["umount", str(probe)], capture_output=True, timeout=10)
    probe.rmdir()
    return ""


class Control:
    """What the nemeses need of the cluster: who leads, signals, restarts, and "whole again"."""

    def __init__(
        self,
        cluster: LocalCluster,
        clock: Callable[[], float],
        net: ShapedNet | None = None,
        net_unavailable: str = "",
        clock_step_dir: Path | None = None,
    ) -> None:
        self.cluster = cluster
        #: Where each server's clock step is written (``clockstep/sitecustomize.py``), or None when
        #: the servers run without the hook.
        self.clock_step_dir = clock_step_dir
        self.clock = clock
        #: The namespaces the servers run in (server ``n<i>`` in namespace ``i - 1``), or None
        #: (then ``net_unavailable`` says why), when they share the host's loopback.
        self.net = net
        self.net_unavailable = net_unavailable
        self.paused: set[str] = set()
        self.mounts: list[Path] = []
        #: Called (in a thread of its own) when a leader has just been frozen, with its id and the
        #: fault: the runner's cold-client probe. Returns what to record in the fault's detail.
        self.on_leader_frozen: Callable[[str], dict[str, Any]] | None = None

    def leader(self, timeout: float = HEAL_TIMEOUT_S) -> str:
        return self.cluster.wait_for_leader(timeout)

    def node(self, node_id: str) -> NodeProcess:
        return self.cluster.nodes[node_id]

    def admin(self, retry_policy: RetryPolicy | None = None) -> Client:
        """A blocking SDK client over the running servers, as the dev admin."""
        running = [node.client_address for node in self.cluster.nodes.values() if node.running]
        return Client(
            running, timeout=MEMBERSHIP_CALL_S, credentials=self.cluster.credentials, retry_policy=retry_policy
        )

    def signal(self, node_id: str, sig: int) -> None:
        pid = self.node(node_id).pid
        assert pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if sig == signal.SIGSTOP:
            self.paused.add(node_id)
        elif sig == signal.SIGCONT:
            self.paused.discard(node_id)

    def wait_whole(self, timeout: float = HEAL_TIMEOUT_S) -> str:
        """Every server runs, all name one leader, and each has applied what that leader had
        committed when it was asked. Returns the leader id."""
        deadline = time.monotonic() + timeout
        for node in self.cluster.nodes.values():
            if not node.running:
                raise Unhealthy(f"{node.id} is not running (exit {node.process and node.process.returncode})")
        try:
            leader_id = self.cluster.wait_for_leader(timeout)
        except (TimeoutError, RuntimeError) as exc:
            raise Unhealthy(str(exc)) from exc
        target = wait_for(
            lambda: self.node(leader_id).status(timeout=2.0).commit_index,
            max(1.0, deadline - time.monotonic()),
            "the leader's commit index",
        )
        for node in self.cluster.nodes.values():
            wait_for(
                lambda node=node: node.status(timeout=2.0).applied_index >= target,
                max(1.0, deadline - time.monotonic()),
                f"{node.id} to apply index {target}",
            )
        return leader_id

    def cut(self, a: str, b: str) -> None:
        """Servers ``a`` and ``b`` stop reaching each other (both ways); checked with a real
        connection attempt each way to the other's Raft port, so a cut that did not take fails
        the run instead of passing as a fault survived."""
        assert self.net is not None
        self.net.cut(self._index(a), self._index(b))
        for source, dest in ((a, b), (b, a)):
            host, port = self.node(dest).raft_address.rsplit(":", 1)
            if self.net.can_connect(self._index(source), host, int(port), timeout=1.0):
                raise RuntimeError(f"the cut between {a} and {b} did not take: {source} still reaches {dest}")

    def cut_from_clients(self, node_id: str) -> None:
        """The clients (this process's namespace) stop reaching ``node_id``; checked with a real
        connection attempt to its client port (it must hang, not fail at once), and the servers'
        links are left alone."""
        assert self.net is not None
        self.net.cut_from_host(self._index(node_id))
        host, port = self.node(node_id).client_address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=1.0).close()
        except TimeoutError:
            return
        except OSError as exc:
            raise RuntimeError(
                f"the cut between the clients and {node_id} fails at once ({exc}), not as a partition"
            ) from exc
        raise RuntimeError(f"the cut between the clients and {node_id} did not take")

    def _index(self, node_id: str) -> int:
        """The namespace ``node_id`` runs in: the one whose address it listens on (a replacement
        server takes over its predecessor's machine, so ids and namespaces part ways)."""
        assert self.net is not None
        host = self.node(node_id).raft_address.rsplit(":", 1)[0]
        return next(i for i in range(self.net.nodes) if self.net.address(i) == host)

    def release_all(self) -> None:
        """Undo whatever a fault left behind: heal cuts, continue paused servers, unmount tmpfs, put
        clocks right."""
        if self.net is not None:
            self.net.heal()
        for node_id in list(self.paused):
            self.signal(node_id, signal.SIGCONT)
        for mount in list(self.mounts):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)
            self.mounts.remove(mount)
        if self.clock_step_dir is not None:
            reset_clock_steps(self.clock_step_dir)


class Nemesis:
    name = ""
    #: Non-empty when this nemesis cannot run here (checked once before the run).
    unavailable = ""
    #: How long a fault lasts (seconds, uniform; the seeded schedule draws it).
    hold_range = (1.0, 4.0)
    #: Cuts links between servers: runs only when each server has a network namespace of its own.
    needs_namespaces = False

    def __init__(self, control: Control) -> None:
        self.control = control
        if self.needs_namespaces and control.net is None:
            self.unavailable = f"needs the servers in network namespaces: {control.net_unavailable or 'not set up'}"

    def choose(self, rng: random.Random) -> tuple[str, bool]:
        leader = self.control.leader()
        if self.name.endswith("-leader"):
            return leader, True
        target = rng.choice(sorted(self.control.cluster.nodes))
        return target, target == leader

    def run(self, rng: random.Random) -> Fault:
        """Inject, hold, heal, wait until whole. Problems found on the way go into ``Fault.problems``."""
        target, was_leader = self.choose(rng)
        fault = Fault(self.name, target, was_leader, self.control.clock())
        self.inject(fault, rng)
        self.hold(fault, rng)
        self.heal(fault)
        fault.healed = self.control.clock()
        self.control.wait_whole()
        fault.whole = self.control.clock()
        return fault

    def inject(self, fault: Fault, rng: random.Random) -> None:
        raise NotImplementedError

    def hold(self, fault: Fault, rng: random.Random) -> None:
        fault.duration = rng.uniform(*self.hold_range)
        time.sleep(fault.duration)  # the length of the fault, chosen by the seeded schedule

    def heal(self, fault: Fault) -> None:
        raise NotImplementedError


class Kill(Nemesis):
    def inject(self, fault: Fault, rng: random.Random) -> None:
        self.control.cluster.kill(fault.target, signal.SIGKILL)

    def heal(self, fault: Fault) -> None:
        self.control.cluster.restart(fault.target)


class KillLeader(Kill):
    name = "kill-leader"


class KillRandom(Kill):
    name = "kill-random"


class KillLeaderAndOne(Nemesis):
    """``kill -9`` of the leader and one other server at once: what five voters survive and three
    do not (with three, the cluster has no quorum until the heal; acknowledged writes must still
    all be there)."""

    name = "kill-leader-and-one"

    def choose(self, rng: random.Random) -> tuple[str, bool]:
        return self.control.leader(), True

    def inject(self, fault: Fault, rng: random.Random) -> None:
        other = rng.choice([node_id for node_id in sorted(self.control.cluster.nodes) if node_id != fault.target])
        fault.detail["also_killed"] = other
        for node_id in (fault.target, other):
            self.control.cluster.kill(node_id, signal.SIGKILL)

    def heal(self, fault: Fault) -> None:
        # Each restarted whatever happens to the other; one that cannot start is a finding (and
        # wait_whole then says the cluster is not whole).
        for node_id in (fault.target, fault.detail["also_killed"]):
            try:
                self.control.cluster.restart(node_id)
            except (OSError, RuntimeError, TimeoutError) as exc:
                fault.problems.append(f"kill-leader-and-one: {node_id} could not be restarted: {exc}")


class Pause(Nemesis):
    """SIGSTOP, then SIGCONT. When the frozen server was the leader, the runner's probe (a client
    that knows no leader yet) writes while it is frozen; its latency goes into the fault's detail."""

    def inject(self, fault: Fault, rng: random.Random) -> None:
        self.control.signal(fault.target, signal.SIGSTOP)
        self._probe: threading.Thread | None = None
        probe = self.control.on_leader_frozen
        if fault.was_leader and probe is not None:

            def run_probe() -> None:
                fault.detail.update(probe(fault.target))

            self._probe = threading.Thread(target=run_probe, name="cold-client-probe", daemon=True)
            self._probe.start()

    def heal(self, fault: Fault) -> None:
        self.control.signal(fault.target, signal.SIGCONT)
        if self._probe is not None:
            self._probe.join(60)


class PauseLeader(Pause):
    name = "pause-leader"


class PauseRandom(Pause):
    name = "pause-random"


class DiskFull(Nemesis):
    name = "disk-full"

    def __init__(self, control: Control, scratch: Path) -> None:
        super().__init__(control)
        self.scratch = scratch
        self.unavailable = mount_permitted(scratch)

    def inject(self, fault: Fault, rng: random.Random) -> None:
        cluster = self.control.cluster
        node = cluster.nodes[fault.target]
        cluster.kill(node.id, signal.SIGKILL)
        before = node.data_dir.with_name(f"{node.id}.before-disk-full")
        shutil.rmtree(before, ignore_errors=True)
        node.data_dir.rename(before)
        node.data_dir.mkdir()
        used = _size(before)
        size = -(-(used + DISK_HEADROOM) // 4096) * 4096
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(node.data_dir)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            node.data_dir.rmdir()
            before.rename(node.data_dir)
            cluster.restart(node.id)
            raise RuntimeError(f"mount -t tmpfs failed: {done.stderr.strip()}")
        self.control.mounts.append(node.data_dir)
        shutil.copytree(before, node.data_dir, dirs_exist_ok=True)
        fault.detail.update(used_bytes=used, tmpfs_bytes=size)
        cluster.restart(node.id)

    def hold(self, fault: Fault, rng: random.Random) -> None:
        node = self.control.node(fault.target)
        assert node.process is not None
        started = time.monotonic()
        try:
            code = node.process.wait(DISK_FILL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            fault.detail["exit"] = None
            fault.detail["note"] = f"still running after {DISK_FILL_TIMEOUT_S:g} s on a full disk"
            # A known way to get here: a snapshot received on the full disk, whose failed write
            # pysyncobj's serializer logs (as a plain traceback) and swallows.
            seen = _log_mentions(node.log_path, "Failed to write incoming transition data")
            fault.problems.append(
                f"disk-full: {node.id} kept running {DISK_FILL_TIMEOUT_S:g} s on a full tmpfs"
                + (" (its log: 'Failed to write incoming transition data': a snapshot write failed)" if seen else "")
            )
        else:
            fault.detail["exit"] = code
            if code != EXIT_STORAGE_FAILED:
                fault.problems.append(
                    f"disk-full: {node.id} exited with status {code}, not {EXIT_STORAGE_FAILED} (see {node.log_path})"
                )
        fault.duration = time.monotonic() - started

    def heal(self, fault: Fault) -> None:
        cluster = self.control.cluster
        node = cluster.nodes[fault.target]
        if node.running:
            cluster.kill(node.id, signal.SIGKILL)
        after = node.data_dir.with_name(f"{node.id}.after-disk-full")
        shutil.rmtree(after, ignore_errors=True)
        shutil.copytree(node.data_dir, after)
        done = subprocess.run(["umount", str(node.data_dir)], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"umount {node.data_dir} failed: {done.stderr.strip()}")
        self.control.mounts.remove(node.data_dir)
        node.data_dir.rmdir()
        after.rename(node.data_dir)
        shutil.rmtree(node.data_dir.with_name(f"{node.id}.before-disk-full"), ignore_errors=True)
        cluster.restart(node.id)


class Partition(Nemesis):
    """Cut the target off from the other servers (or, for the bridge, from one of them)."""

    needs_namespaces = True

    def others(self, fault: Fault, rng: random.Random) -> list[str]:
        return [node_id for node_id in sorted(self.control.cluster.nodes) if node_id != fault.target]

    def inject(self, fault: Fault, rng: random.Random) -> None:
        cut_from = self.others(fault, rng)
        for other in cut_from:
            self.control.cut(fault.target, other)
        fault.detail["cut_from"] = cut_from

    def heal(self, fault: Fault) -> None:
        assert self.control.net is not None
        self.control.net.heal()


class PartitionLeader(Partition):
    name = "partition-leader"


class PartitionRandom(Partition):
    name = "partition-random"


class PartitionBridge(Partition):
    """The leader and one follower lose each other; the others still reach both."""

    name = "partition-bridge"

    def choose(self, rng: random.Random) -> tuple[str, bool]:
        return self.control.leader(), True

    def others(self, fault: Fault, rng: random.Random) -> list[str]:
        return [rng.choice(super().others(fault, rng))]


class PartitionClients(Partition):
    """The clients lose the leader; the servers keep reaching each other (it stays the leader).
    A client must write through a follower, which forwards to the leader."""

    name = "partition-clients"

    def choose(self, rng: random.Random) -> tuple[str, bool]:
        return self.control.leader(), True

    def inject(self, fault: Fault, rng: random.Random) -> None:
        self.control.cut_from_clients(fault.target)
        fault.detail["cut_from"] = ["clients"]


class MemberReplace(Nemesis):
    """A membership change while the clients run: a server (the leader as often as any other) is
    removed through the SDK, must stop itself, and a new server with a new id joins on its machine
    (same addresses, empty data directory) and is admitted, caught up and promoted to voter.

    While the fault lasts the cluster has one voter fewer (two of three, four of five). Removing the
    leader makes it hand leadership over first (pysyncobj cannot remove a leader). A removed server
    that keeps running is a finding (it is killed so the run can go on)."""

    name = "member-replace"

    def inject(self, fault: Fault, rng: random.Random) -> None:
        cluster = self.control.cluster
        removed = cluster.nodes[fault.target]
        started = time.monotonic()
        with self.control.admin() as admin:
            wait_for(
                lambda: admin.remove_member(fault.target, timeout=MEMBERSHIP_CALL_S) or True,
                HEAL_TIMEOUT_S,
                f"the removal of {fault.target} to commit",
                retry=RETRIED_MEMBERSHIP_ERRORS,
            )
        fault.detail["removal_s"] = round(time.monotonic() - started, 2)
        assert removed.process is not None
        try:
            code = removed.process.wait(REMOVED_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            fault.problems.append(
                f"member-replace: {removed.id} kept running {REMOVED_STOP_TIMEOUT_S:g} s after its removal "
                f"committed (see {removed.log_path})"
            )
            cluster.kill(removed.id, signal.SIGKILL)
        else:
            fault.detail["removed_exit"] = code
            fault.detail["removed_stop_s"] = round(time.monotonic() - started, 2)
            if code != 1:
                fault.problems.append(
                    f"member-replace: the removed {removed.id} exited with status {code}, not 1 "
                    f"(see {removed.log_path})"
                )

    def heal(self, fault: Fault) -> None:
        cluster = self.control.cluster
        # The machine is wiped: the replacement starts on a data directory of its own (kept for the
        # post-mortem; the run drops every data directory when it passes).
        node = cluster.replace_server(fault.target)
        fault.detail["replaced_by"] = node.id
        started = time.monotonic()
        wait_for(lambda: node.status(timeout=2.0), HEAL_TIMEOUT_S, f"the joining {node.id} to answer")
        self._admit(fault, node)
        wait_for(lambda: self._voter(node.id), HEAL_TIMEOUT_S, f"{node.id} to be promoted to voter")
        fault.detail["join_to_voter_s"] = round(time.monotonic() - started, 2)

    def _admit(self, fault: Fault, node: NodeProcess) -> None:
        with self.control.admin() as admin:
            wait_for(
                lambda: admin.add_member(node.id, node.raft_address, node.client_address, timeout=MEMBERSHIP_CALL_S),
                HEAL_TIMEOUT_S,
                f"{node.id} to be admitted",
                retry=RETRIED_MEMBERSHIP_ERRORS,
            )

    def _voter(self, node_id: str) -> bool:
        """The leader lists ``node_id`` as a voter and the server itself serves as one."""
        leader = self.control.node(self.control.leader())
        member = next((m for m in leader.status(timeout=2.0).members if m.id == node_id), None)
        own = self.control.node(node_id).status(timeout=2.0)
        serving = own.ready and own.role in (cluster_pb2.ROLE_FOLLOWER, cluster_pb2.ROLE_LEADER)
        return bool(member is not None and member.voter and not member.learner and serving)


class MemberReplaceDuringFault(MemberReplace):
    """``member-replace`` with another fault in the middle: within 200 ms of the removal call (or,
    with ``during = "addition"``, of the call that admits the replacement), another server (the
    leader as often as not) is struck, and it recovers after the fault's hold.

    A removal is retried until it has committed. It may need the struck server: once a removal
    entry is in a follower's log, that follower counts votes in the new two-server configuration,
    so when the leader that appended it is gone, nobody can win an election until the struck
    server is back (single-server membership changes in Raft, not a defect). After a strike during
    the removal, the replacement joins once the struck server has recovered. An addition struck
    this way is retried the same way, and the replacement must still become a voter."""

    #: Which call the strike lands in: "removal" or "addition".
    during = "removal"

    def strike(self, victim: str) -> None:
        raise NotImplementedError

    def recover(self, victim: str) -> None:
        raise NotImplementedError

    def inject(self, fault: Fault, rng: random.Random) -> None:
        victim = rng.choice(sorted(node_id for node_id in self.control.cluster.nodes if node_id != fault.target))
        self._strike_plan = (victim, rng.uniform(0.0, 0.2))
        fault.duration = rng.uniform(*self.hold_range)
        fault.detail["struck"] = victim
        fault.detail["struck_during"] = self.during
        if self.during == "removal":
            self._struck(fault, lambda: super(MemberReplaceDuringFault, self).inject(fault, rng))
        else:
            super().inject(fault, rng)

    def _admit(self, fault: Fault, node: NodeProcess) -> None:
        if self.during == "addition":
            self._struck(fault, lambda: super(MemberReplaceDuringFault, self)._admit(fault, node))
        else:
            super()._admit(fault, node)

    def _struck(self, fault: Fault, call: Callable[[], None]) -> None:
        """``call()`` with the strike (at the seeded moment) and the recovery (after the seeded hold)
        happening beside it; returns once both are done."""
        victim, delay = self._strike_plan

        def strike_then_recover() -> None:
            try:
                time.sleep(delay)  # the seeded moment of the strike, within the call's first 200 ms
                self.strike(victim)
                time.sleep(fault.duration)  # how long it lasts, chosen by the seeded schedule
                self.recover(victim)
            except Exception as exc:  # wait_whole would notice too; said here first, with the cause
                fault.problems.append(f"{self.name}: striking or recovering {victim} failed: {exc!r}")

        striker = threading.Thread(target=strike_then_recover, name=f"strike-during-{self.during}", daemon=True)
        striker.start()
        try:
            call()
        finally:
            striker.join()

    def hold(self, fault: Fault, rng: random.Random) -> None:
        """The strike's length is the hold."""


class MemberReplaceUnderKill(MemberReplaceDuringFault):
    """The struck server gets ``kill -9`` and restarts on its data directory."""

    name = "member-replace-kill"

    def strike(self, victim: str) -> None:
        self.control.cluster.kill(victim, signal.SIGKILL)

    def recover(self, victim: str) -> None:
        self.control.cluster.restart(victim)


class MemberReplaceUnderPartition(MemberReplaceDuringFault):
    """The struck server is cut off from every other server (it keeps running, and campaigns with
    Pre-Vote); the clients still reach it. Healing removes the cuts."""

    name = "member-replace-partition"
    needs_namespaces = True

    def strike(self, victim: str) -> None:
        for other in sorted(self.control.cluster.nodes):
            if other != victim:
                self.control.cut(victim, other)

    def recover(self, victim: str) -> None:
        assert self.control.net is not None
        self.control.net.heal()


class MemberReplaceUnderPause(MemberReplaceDuringFault):
    """The struck server is frozen (SIGSTOP) during the removal, and thawed (SIGCONT) after the hold:
    its connections stay open and silent, unlike a kill's."""

    name = "member-replace-pause"

    def strike(self, victim: str) -> None:
        self.control.signal(victim, signal.SIGSTOP)

    def recover(self, victim: str) -> None:
        self.control.signal(victim, signal.SIGCONT)


class MemberJoinUnderKill(MemberReplaceUnderKill):
    """``member-replace-kill`` with the kill during the addition instead: a server (the leader as
    often as not) gets ``kill -9`` within 200 ms of the call that admits the replacement."""

    name = "member-join-kill"
    during = "addition"


def write_clock_step(step_dir: Path, node_id: str, step_ns: int) -> None:
    """Ask ``node_id``'s clock-step hook for a step of ``step_ns`` (whole: written, then renamed)."""
    write_file_atomically(step_dir / f"{node_id}.step", f"{step_ns}\n".encode())


def reset_clock_steps(step_dir: Path) -> None:
    """Every server's clock back to the true time (the hooks follow within 20 ms)."""
    for step_file in step_dir.glob("*.step"):
        write_clock_step(step_dir, step_file.name.removesuffix(".step"), 0)


def clock_step_env(step_dir: Path) -> dict[str, str]:
    """The environment that puts the clock-step hook into a server process (``step_dir``: where
    the nemesis writes each server's step)."""
    path = os.pathsep.join(p for p in (str(CLOCK_STEP_HOOK_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "CP_TEST_CLOCK_STEP_DIR": str(step_dir)}


class ClockStepLeader(Nemesis):
    """The leader's wall clock an hour ahead for the hold, then back; node leases judged throughout.

    A lease renewed every second (TTL 8 s) must never be found expired; a lease nobody renews
    (TTL 1 s), registered once the clock is ahead and once it is back, must expire each time within
    ``CLOCK_STEP_EXPIRY_SLACK_S`` of its TTL. A leader whose readings followed its wall clock would
    stamp the log an hour ahead during the step, and the state's time, which never goes back, would
    keep every lease registered after the step back alive for an hour (measured: docs/faults.md)."""

    name = "clock-step-leader"
    #: How far the step moves the target's wall clock (seconds; negative: backwards).
    step_s = CLOCK_STEP_S

    def __init__(self, control: Control) -> None:
        super().__init__(control)
        if control.clock_step_dir is None:
            self.unavailable = "the servers run without the clock-step hook (clock_step_env)"
        # Set to stop this fault's renewer; a new one per fault, so that a renewer that outlived its
        # fault (a heartbeat hung past the join) never takes the next fault's for its own.
        self._renewing = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lost: list[str] = []
        self._probes: list[str] = []

    def choose(self, rng: random.Random) -> tuple[str, bool]:
        return self.control.leader(), True

    def step(self, node_id: str, seconds: float) -> None:
        """Move ``node_id``'s wall clock by ``seconds`` from the true time, and wait until it has."""
        assert self.control.clock_step_dir is not None
        step_ns = round(seconds * 1e9)
        write_clock_step(self.control.clock_step_dir, node_id, step_ns)
        applied = self.control.clock_step_dir / f"{node_id}.applied"
        node = self.control.node(node_id)

        def stepped() -> bool:
            if not node.running:
                raise Unhealthy(f"{node_id} exited (status {node.process and node.process.returncode}) before its step")
            return applied.exists() and int(applied.read_text() or -1) == step_ns

        wait_for(stepped, 10.0, f"{node_id}'s clock to be stepped by {seconds:g} s", retry=(ValueError,))

    def run(self, rng: random.Random) -> Fault:
        try:
            return super().run(rng)
        finally:  # whatever failed on the way: no clock left ahead, no renewer left, no probe node left
            self._renewing.set()
            if self.control.clock_step_dir is not None:
                reset_clock_steps(self.control.clock_step_dir)
            if self._renewer is not None:
                self._renewer.join(CLOCK_STEP_TTL_S + 5)
            self._forget_probes()

    def _forget_probes(self) -> None:
        with self.control.admin() as admin:  # the next fault starts from a clean node list
            for node_id in self._probes:
                with contextlib.suppress(errors.ControlPlaneError):
                    admin.membership.deregister(node_id)
                with contextlib.suppress(errors.ControlPlaneError):
                    admin.membership.forget(node_id)
        self._probes = []

    def _register(self, node_id: str, ttl_s: float) -> None:
        self._probes.append(node_id)
        with self.control.admin() as admin:
            wait_for(
                lambda: admin.membership.register_node(node_id, ttl_s=ttl_s),
                MEMBERSHIP_CALL_S * 3,
                f"{node_id} to be registered",
                retry=RETRIED_MEMBERSHIP_ERRORS,
            )

    def inject(self, fault: Fault, rng: random.Random) -> None:
        self.prefix = f"clock-{int(fault.injected * 1000)}"
        self.renewed = f"{self.prefix}-renewed"
        self._register(self.renewed, CLOCK_STEP_TTL_S)
        self._renewing = threading.Event()
        self._lost = []
        self._renewer = threading.Thread(
            target=self._renew, args=(self._renewing, self._lost), name="clock-step-renewer", daemon=True
        )
        self._renewer.start()
        step_s = self.step_for(fault)
        self.step(fault.target, step_s)
        fault.detail["step_s"] = round(step_s, 1)

    def step_for(self, fault: Fault) -> float:
        """How far to move the target's wall clock from the true time."""
        return self.step_s

    def _renew(self, stop: threading.Event, lost: list[str]) -> None:
        with self.control.admin() as admin:
            while not stop.wait(CLOCK_STEP_RENEW_S):  # the renewal pace of an agent
                try:
                    admin.membership.heartbeat(self.renewed, timeout=CLOCK_STEP_TTL_S / 2)
                except errors.NotFound as exc:
                    lost.append(exc.message)
                    return
                except errors.ControlPlaneError:
                    continue  # slow or no leader for a moment: the next renewal is a second away

    def _expires(self, fault: Fault, node_id: str, when: str) -> None:
        """Register ``node_id`` with a 1 s lease and never renew it: it must be declared dead."""
        self._register(node_id, 1.0)
        started = time.monotonic()
        with self.control.admin() as admin:
            try:
                wait_for(
                    lambda: admin.membership.get_node(node_id).node.state is NodeState.DEAD,
                    1.0 + CLOCK_STEP_EXPIRY_SLACK_S,
                    f"{node_id}'s lease to expire",
                    retry=(errors.ControlPlaneError,),
                )
            except Unhealthy:
                fault.problems.append(
                    f"{self.name}: a 1 s lease registered {when} was still alive "
                    f"{1.0 + CLOCK_STEP_EXPIRY_SLACK_S:g} s later"
                )
        fault.detail[f"expiry_{when.replace(' ', '_')}_s"] = round(time.monotonic() - started, 2)

    def hold(self, fault: Fault, rng: random.Random) -> None:
        started = time.monotonic()
        self._expires(
            fault, f"{self.prefix}-stepped", "with the clock ahead" if self.step_s > 0 else "with the clock behind"
        )
        super().hold(fault, rng)
        fault.duration = time.monotonic() - started

    def heal(self, fault: Fault) -> None:
        leader = self.control.leader()
        if leader != fault.target:  # the step was judged under another leader for part of the hold
            fault.detail["leader_at_heal"] = leader
        self.step(fault.target, 0.0)
        self._expires(fault, f"{self.prefix}-back", "after the step back")
        self._renewing.set()
        assert self._renewer is not None
        self._renewer.join(CLOCK_STEP_TTL_S + 5)
        if self._renewer.is_alive():
            fault.problems.append(f"{self.name}: the lease renewer did not stop (a heartbeat hung)")
        for message in self._lost:
            fault.problems.append(
                f"{self.name}: a lease renewed every {CLOCK_STEP_RENEW_S:g} s was found expired: {message}"
            )


class ClockStepBackLeader(ClockStepLeader):
    """The leader's wall clock an hour *behind* for the hold, then put right: a leader whose
    readings followed its clock would stop the cluster's time (it never goes back) and expire
    nothing for an hour. The same checks as ``clock-step-leader``."""

    name = "clock-step-back-leader"
    step_s = -CLOCK_STEP_S


class ClockStepFollower(ClockStepLeader):
    """A follower's wall clock an hour ahead, then that follower elected (leadership handed to it):
    an election during a step. The cluster's time jumps an hour with the new leader (no server can
    tell a step from a catch-up then: leader_clock.py), so the checks are the ones that must hold
    anyway: the lease renewed every second is never found expired (a new leader expires nothing
    before it has led a TTL, and then judges renewals by its monotonic clock), and a 1 s lease
    nobody renews still expires, with the clock ahead and after the step back."""

    name = "clock-step-follower"

    def choose(self, rng: random.Random) -> tuple[str, bool]:
        leader = self.control.leader()
        return rng.choice(sorted(node for node in self.control.cluster.nodes if node != leader)), False

    def step_for(self, fault: Fault) -> float:
        """An hour ahead of the *cluster's* time, which an earlier election during a step left ahead
        of the true time (it never goes back, and catches up at 1 %): else a second such fault in a
        run would move the cluster's time by seconds, and test nothing. The cluster's time is read
        from the renewed node's record, stamped by the leader when it registered."""
        with self.control.admin() as admin:
            stamped_ms = admin.membership.get_node(self.renewed).node.registered_unix_ms
        ahead_s = max(0.0, stamped_ms / 1000 - time.time())
        fault.detail["cluster_ahead_s"] = round(ahead_s, 1)
        return ahead_s + CLOCK_STEP_S

    def inject(self, fault: Fault, rng: random.Random) -> None:
        super().inject(fault, rng)  # the renewed lease, its renewer, the step
        # One attempt may take the whole call (the default 3 s attempt gives up on a transfer a
        # loaded machine finishes later, and that refusal is not retried).
        with self.control.admin(RetryPolicy(attempt_timeout=MEMBERSHIP_CALL_S)) as admin:
            leader, term = admin.transfer_leadership(fault.target)
        fault.detail["term"] = term
        if leader != fault.target:  # an election beside the transfer: the step was judged elsewhere
            fault.detail["leader_after_transfer"] = leader

    def hold(self, fault: Fault, rng: random.Random) -> None:
        super().hold(fault, rng)
        if self.control.leader() != fault.target:  # the checks above judged another leader for a while
            fault.detail["leader_left_during_hold"] = True


NEMESES: dict[str, Callable[[Control, Path], Nemesis]] = {
    "kill-leader": lambda control, scratch: KillLeader(control),
    "kill-random": lambda control, scratch: KillRandom(control),
    "kill-leader-and-one": lambda control, scratch: KillLeaderAndOne(control),
    "pause-leader": lambda control, scratch: PauseLeader(control),
    "pause-random": lambda control, scratch: PauseRandom(control),
    "disk-full": DiskFull,
    "partition-leader": lambda control, scratch: PartitionLeader(control),
    "partition-random": lambda control, scratch: PartitionRandom(control),
    "partition-clients": lambda control, scratch: PartitionClients(control),
    "partition-bridge": lambda control, scratch: PartitionBridge(control),
    "member-replace": lambda control, scratch: MemberReplace(control),
    "member-replace-kill": lambda control, scratch: MemberReplaceUnderKill(control),
    "member-replace-partition": lambda control, scratch: MemberReplaceUnderPartition(control),
    "member-replace-pause": lambda control, scratch: MemberReplaceUnderPause(control),
    "member-join-kill": lambda control, scratch: MemberJoinUnderKill(control),
    "clock-step-leader": lambda control, scratch: ClockStepLeader(control),
    "clock-step-follower": lambda control, scratch: ClockStepFollower(control),
    "clock-step-back-leader": lambda control, scratch: ClockStepBackLeader(control),
}
