"""deploy/compose/: three servers, a gateway and two agents with mutual TLS, checked two ways.

In ``make test``: Debian's ``docker-compose`` validates the file (skipped, saying so, where it is not
installed), and the file is checked for what would break it at run time: every variable is one the
daemons read, every TLS file a container names is one ``issue-certs.sh`` (run here for real) puts
in the volume that container mounts, the certificates name the identities and hosts the
containers use, servers and gateway expect the number of servers there are, nothing runs as root
or with capabilities, and no secret is written in it.

``make compose-e2e`` (root, about 5 minutes the first time): the image is built with podman and
the cluster runs under ``docker-compose`` on podman's API (``test_the_compose_cluster_runs``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from controlplane import errors, settings, tls
from controlplane.cli.gateway import DEFAULT_TOKEN_ENV, GatewayOptions
from controlplane.cli.gateway import ENV_PREFIX as GATEWAY_PREFIX
from controlplane.cli.membership import AGENT_ENV_PREFIX, AgentOptions
from controlplane.cli.serve import GATEWAY_TOKEN_ENV, GATEWAYS_ENV
from controlplane.client._credentials import ENV_CACERT, ENV_CERT, ENV_KEY
from controlplane.server.config import ENV_PREFIX, NO_ENV, ServerConfig

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE / "compose.yaml"
DOCKERFILE = ROOT / "deploy" / "container" / "Dockerfile"
TLS_MOUNT = "/etc/controlplane/tls"
IMAGE_USER = 10001  # the Dockerfile's

#: How every client command, and so the agent, reaches the servers.
CLIENT_VARIABLES = {"CP_ENDPOINTS", ENV_CACERT, ENV_CERT, ENV_KEY}
SERVER_VARIABLES = set(settings.env_names(ServerConfig, ENV_PREFIX, NO_ENV).values()) | {
    GATEWAYS_ENV,
    GATEWAY_TOKEN_ENV,
}
GATEWAY_VARIABLES = set(settings.env_names(GatewayOptions, GATEWAY_PREFIX).values()) | CLIENT_VARIABLES
GATEWAY_VARIABLES |= {DEFAULT_TOKEN_ENV}
AGENT_VARIABLES = set(settings.env_names(AgentOptions, AGENT_ENV_PREFIX).values()) | CLIENT_VARIABLES


@functools.cache
def services() -> dict[str, dict[str, Any]]:
    """The services as compose reads them (YAML merge keys resolved; variables left as written)."""
    loaded: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return loaded


def command_of(name: str) -> list[str]:
    return [str(part) for part in services()[name].get("command", [])]


def environment(name: str) -> dict[str, str]:
    return {key: str(value) for key, value in services()[name].get("environment", {}).items()}


def daemons(kind: str) -> list[str]:
    """The services that run `cpctl KIND` (serve, gateway, agent)."""
    return sorted(name for name in services() if command_of(name)[:1] == [kind])


def bootstrap_expect(name: str) -> int:
    args = command_of(name)
    return int(args[args.index("--bootstrap-expect") + 1])


def tls_volume(name: str) -> str:
    [volume] = [m.split(":")[0] for m in services()[name].get("volumes", []) if m.split(":")[1] == TLS_MOUNT]
    return volume


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def test_docker_compose_validates_the_file() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose (Debian's) is not installed: the file is checked below without it")
    done = subprocess.run(
        [tool, "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CP_GATEWAY_TOKEN": "x" * 64},
    )
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    assert sorted(resolved) == sorted(services())
    assert resolved["n1"]["environment"]["CP_GATEWAY_TOKEN"] == "x" * 64
    # Without the token the file refuses to start anything, and says how to make one.
    env = {k: v for k, v in os.environ.items() if k != "CP_GATEWAY_TOKEN"}
    refused = subprocess.run(
        [tool, "-f", str(COMPOSE_FILE), "config"], capture_output=True, text=True, timeout=120, env=env
    )
    assert refused.returncode != 0 and "openssl rand -hex 32" in refused.stderr


def test_every_variable_is_one_the_daemons_read() -> None:
    expected = {"serve": SERVER_VARIABLES, "gateway": GATEWAY_VARIABLES, "agent": AGENT_VARIABLES}
    for kind, known in expected.items():
        assert daemons(kind), kind
        for name in daemons(kind):
            unknown = set(environment(name)) - known
            assert not unknown, f"{name}: {sorted(unknown)} are read by no daemon"
    for name in ("setup", "cpctl"):  # client commands as the admin
        assert set(environment(name)) <= CLIENT_VARIABLES, name


def test_servers_gateway_and_agents_agree_on_names_ports_and_the_count() -> None:
    servers = daemons("serve")
    [gateway] = daemons("gateway")
    assert len(servers) == 3
    # One gateway: unpeered gateways could each see part of the founders (gateway/DESIGN.md).
    assert "--peer" not in command_of(gateway)
    assert {bootstrap_expect(name) for name in [*servers, gateway]} == {len(servers)}
    gateway_port = host_port(environment(gateway)["CP_GATEWAY_LISTEN"])[1]
    client_addresses = []
    for name in servers:
        env = environment(name)
        assert env["CP_NODE_ID"] == name == services()[name]["hostname"]
        # The addresses it binds and announces are its own service name, on the ports it listens on.
        assert host_port(env["CP_RAFT_ADDRESS"])[0] == name
        advertised = host_port(env["CP_ADVERTISE_CLIENT_ADDRESS"])
        assert advertised == (name, host_port(env["CP_CLIENT_ADDRESS"])[1])
        client_addresses.append(env["CP_ADVERTISE_CLIENT_ADDRESS"])
        gateway_url = urlsplit(env["CP_GATEWAY"])
        assert (gateway_url.scheme, gateway_url.hostname, gateway_url.port) == ("https", gateway, gateway_port)
        assert env["CP_DATA_DIR"].startswith("/var/lib/controlplane/")  # below the volume's root
        published = [str(p).rsplit(":", 1)[1] for p in services()[name]["ports"]]
        assert published == [str(advertised[1])]
        assert all(str(p).startswith("127.0.0.1:") for p in services()[name]["ports"])
    for name in [*daemons("agent"), "setup", "cpctl"]:
        assert environment(name)["CP_ENDPOINTS"].split(",") == client_addresses, name
    assert [environment(name)["CP_AGENT_NODE_ID"] for name in daemons("agent")] == daemons("agent")


def test_nothing_runs_as_root_with_capabilities_and_no_secret_is_written() -> None:
    for name, service in services().items():
        if name == "certs":
            # Root only to hand new volumes to the image's user; no network at all.
            assert service["user"] == "0:0" and service["network_mode"] == "none"
            continue
        assert "user" not in service, f"{name} runs as the image's user ({IMAGE_USER})"
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        # Each container mounts its own identity and never the CA's key.
        assert not any(str(m).startswith("ca:") for m in service.get("volumes", [])), name
    text = COMPOSE_FILE.read_text()
    assert "BEGIN" not in text
    tokens = re.findall(r"CP_GATEWAY_TOKEN:\s*(\S+)", text)
    assert tokens and all(token.startswith("${CP_GATEWAY_TOKEN:?") for token in tokens)


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """issue-certs.sh run twice, as the certs service runs it, into a directory per volume."""
    root = tmp_path_factory.mktemp("volumes")
    env = {**os.environ, "CA_DIR": str(root / "ca"), "TLS_DIR": str(root / "tls")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # this venv's cpctl
    mounts = [m for m in services()["certs"]["volumes"] if ":/tls/" in m]
    for mount in mounts:
        (root / "tls" / mount.split(":")[1].removeprefix("/tls/")).mkdir(parents=True)
    first = subprocess.run(
        ["sh", str(COMPOSE / "issue-certs.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert first.returncode == 0, first.stdout + first.stderr
    before = {p: p.read_bytes() for p in root.rglob("*.pem")}
    again = subprocess.run(
        ["sh", str(COMPOSE / "issue-certs.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert {p: p.read_bytes() for p in root.rglob("*.pem")} == before, "a second `up` must keep every key"
    return root


def test_each_container_finds_its_own_certificates_in_its_own_volume(issued: Path) -> None:
    volumes = {m.split(":")[0]: m.split(":")[1] for m in services()["certs"]["volumes"] if ":/tls/" in m}
    for name in services():
        if name == "certs":
            continue
        directory = issued / "tls" / volumes[tls_volume(name)].removeprefix("/tls/")
        named = {v for v in environment(name).values() if v.startswith(f"{TLS_MOUNT}/")}
        assert named, name
        for path in named:
            found = directory / path.removeprefix(f"{TLS_MOUNT}/")
            assert found.exists(), f"{name} names {path}, which its volume does not hold"
            if path.endswith("-key.pem"):
                assert stat.S_IMODE(found.stat().st_mode) == 0o600, found
            if os.geteuid() == 0:  # as the certs service runs: handed to the image's user
                assert found.stat().st_uid == IMAGE_USER, found
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    if os.geteuid() == 0:  # the CA stays root's: no daemon runs as root
        assert {path.stat().st_uid for path in [issued / "ca", *(issued / "ca").iterdir()]} == {0}


def test_the_one_shot_scripts_are_the_ones_the_image_carries() -> None:
    """No file of the checkout is mounted: the services run the scripts the Dockerfile copies."""
    copied = next(line for line in DOCKERFILE.read_text().splitlines() if line.startswith("COPY deploy/compose/"))
    *sources, destination = copied.split()[1:]
    for name in ("certs", "setup"):
        entrypoint = services()[name]["entrypoint"]
        assert entrypoint[0] == "sh" and Path(entrypoint[1]).parent == Path(destination), entrypoint
        assert f"deploy/compose/{Path(entrypoint[1]).name}" in sources
    for name, service in services().items():
        assert not [m for m in service.get("volumes", []) if str(m).startswith((".", "/"))], name


def identity_and_names(cert: Path) -> tuple[dict[str, str] | None, set[str]]:
    shown = tls.describe(cert)
    return shown["identity"], {san.split(":", 1)[1] for san in shown["sans"] if not san.startswith("URI:")}


def test_the_certificates_name_what_the_containers_are(issued: Path) -> None:
    def cert(name: str, variable: str) -> Path:
        volumes = {m.split(":")[0]: m.split(":")[1] for m in services()["certs"]["volumes"] if ":/tls/" in m}
        directory = issued / "tls" / volumes[tls_volume(name)].removeprefix("/tls/")
        return directory / environment(name)[variable].removeprefix(f"{TLS_MOUNT}/")

    for name in daemons("serve"):
        identity, names = identity_and_names(cert(name, "CP_TLS_CERT"))
        assert identity == {"role": "server", "id": name}
        assert {name, "localhost"} <= names  # the peers dial it by name; the host through its port
    [gateway] = daemons("gateway")
    assert identity_and_names(cert(gateway, "CP_CERT"))[0] == {"role": "client", "id": "gateway"}
    web_identity, web_names = identity_and_names(cert(gateway, "CP_GATEWAY_TLS_CERT"))
    assert web_identity is None  # its HTTPS certificate speaks for nobody in the cluster
    assert {gateway, "localhost", "127.0.0.1"} <= web_names
    for name in daemons("agent"):
        assert identity_and_names(cert(name, "CP_CERT"))[0] == {"role": "agent", "id": name}
    for name in ("setup", "cpctl"):
        assert identity_and_names(cert(name, "CP_CERT"))[0] == {"role": "client", "id": "admin"}


# ------------------------------------------------------------------ end to end (make compose-e2e)

#: deploy/compose/README.md's way to a client certificate of one's own, from the CA's volume.
ISSUE_ALICE = (
    """cpctl certs issue alice --role client --dir /ca --out /out && cp /ca/ca.pem /out/ && chown -R "$OWNER" /out"""
)
BASE_IMAGE = "localhost/controlplane-base:3.11-bookworm"
IMAGE = "localhost/controlplane:e2e"
#: podman without systemd or cgroup delegation (this machine: hybrid cgroups, no rlimit raising).
CONTAINERS_CONF = """\
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
"""


def _run(args: list[str], env: dict[str, str], timeout: float, cwd: Path = COMPOSE) -> str:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _wait(condition: Callable[[], bool], timeout: float, what: str, detail: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:.0f} s\n{detail()}")
        time.sleep(2)  # each look runs a container: pace them


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """podman's API on a private socket, the image built from deploy/container/Dockerfile on a
    Debian base made with debootstrap (no registry is reachable here), and the variables
    docker-compose needs to use them."""
    missing = [tool for tool in ("podman", "docker-compose", "debootstrap", "runc") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        pytest.skip(f"needs root and {', '.join(missing) or 'nothing more'}: make compose-e2e installs them")
    work = tmp_path_factory.mktemp("podman")
    conf = work / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE], env=env).returncode != 0:
        rootfs = work / "rootfs"
        _run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(rootfs),
              "http://deb.debian.org/debian"], env, 1800)  # fmt: skip
        for package in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            package.unlink()  # what debootstrap downloaded: not part of the image
        # This machine reaches PyPI through a proxy its own CA signs: the build trusts what the host does.
        bundle = Path(os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"))
        if bundle.exists():
            (rootfs / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
            shutil.copy(bundle, rootfs / "etc/ssl/certs/ca-certificates.crt")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        trust_the_hosts_cas = "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt"
        subprocess.run(
            ["podman", "import", "--change", trust_the_hosts_cas, "-", BASE_IMAGE],
            stdin=tar.stdout, env=env, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        tar.wait(60)
    _run(["podman", "build", "--network", "host", "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}",
          "-f", str(DOCKERFILE), "-t", IMAGE, str(ROOT)], env, 1800, cwd=ROOT)  # fmt: skip
    socket = work / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        _wait(socket.exists, 60, "podman's API socket", lambda: "")
        yield {
            **env,
            "DOCKER_HOST": f"unix://{socket}",
            "CP_IMAGE": IMAGE,
            "CP_GATEWAY_TOKEN": os.urandom(32).hex(),
            "COMPOSE_PROJECT_NAME": "cpe2e",
        }
    finally:
        service.terminate()
        service.wait(30)
        # The build stage's image and the image this run replaced; the base is kept for the next run.
        subprocess.run(["podman", "image", "prune", "--force"], env=env, capture_output=True, timeout=300)


@pytest.mark.compose
@pytest.mark.timeout(3600)
def test_the_compose_cluster_runs(podman_env: dict[str, str]) -> None:
    """`up`: certificates, formation through the HTTPS gateway, the gateway user's roles, both agents
    active; a write; a server stopped and started again catches up; `down -v` leaves nothing."""
    compose = ["docker-compose", "-f", str(COMPOSE_FILE)]
    env = podman_env

    def cpctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*compose, "run", "--rm", "cpctl", *args], env=env, cwd=COMPOSE,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    def logs() -> str:
        return subprocess.run([*compose, "logs", "--tail", "30"], env=env, cwd=COMPOSE, capture_output=True,
                              text=True, timeout=120).stdout[-6000:]  # fmt: skip

    _run([*compose, "down", "-v"], env, 300)  # a run cut short before
    try:
        _run([*compose, "up", "-d"], env, 600)
        _wait(lambda: cpctl("cluster", "health").returncode == 0, 300, "a healthy cluster", logs)

        def agents_active() -> bool:
            listed = cpctl("nodes", "list", "--output", "json")
            if listed.returncode != 0:
                return False
            states = {view["node"]["spec"]["id"]: view["node"]["state"] for view in json.loads(listed.stdout)}
            return all(states.get(agent) == "ACTIVE" for agent in daemons("agent"))

        _wait(agents_active, 180, "both agents active", logs)

        def setup_done() -> bool:
            inspect = ["podman", "inspect", "cpe2e_setup_1", "--format", "{{.State.ExitCode}} {{.State.Status}}"]
            state = subprocess.run(inspect, env=env, capture_output=True, text=True, timeout=60).stdout.split()
            return state == ["0", "exited"]

        _wait(setup_done, 300, "the setup service to give the gateway its roles", logs)

        # The gateway over HTTPS from the host, verified with the cluster CA, reading as its user.
        volume = _run(["podman", "volume", "inspect", "cpe2e_tls-admin", "--format", "{{.Mountpoint}}"], env, 60)
        volume = volume.strip()
        ca = Path(volume) / "ca.pem"
        with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=10) as http:
            cluster = http.get("https://localhost:8080/v1/cluster").json()
            assert sorted(m["id"] for m in cluster["members"]) == daemons("serve")
            nodes = http.get(
                "https://localhost:8080/v1/nodes", headers={"Authorization": f"Bearer {env['CP_GATEWAY_TOKEN']}"}
            )
            assert nodes.status_code == 200, nodes.text
            assert set(daemons("agent")) <= {node["id"] for node in nodes.json()["nodes"]}

        def ok(done: subprocess.CompletedProcess[str]) -> str:
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            return done.stdout

        ok(cpctl("kv", "put", "compose/greeting", "hello"))
        _run([*compose, "stop", "n1"], env, 120)
        ok(cpctl("kv", "put", "compose/while-n1-was-down", "yes"))
        _run([*compose, "start", "n1"], env, 120)
        _wait(lambda: cpctl("cluster", "health").returncode == 0, 300, "n1 back and caught up", logs)
        # Read from n1 alone, through its port on the host, as the admin.
        admin = {ENV_CACERT: str(ca), ENV_CERT: str(Path(volume) / "client-admin.pem"),
                 ENV_KEY: str(Path(volume) / "client-admin-key.pem")}  # fmt: skip
        with tempfile.TemporaryDirectory() as elsewhere:  # not this checkout's ./.data/cluster.json
            read = subprocess.run(
                [str(Path(sys.executable).parent / "cpctl"), "kv", "get", "compose/while-n1-was-down",
                 "--endpoints", "localhost:7101", "--consistency", "stale"],
                env={**env, **admin}, cwd=elsewhere, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        assert read.returncode == 0 and read.stdout.strip() == "yes", read.stdout + read.stderr

        # The README's client of its own, issued from the CA's volume and used from the host.
        alice = Path(volume).parent.parent / "alice-out"  # a host directory beside podman's volumes
        shutil.rmtree(alice, ignore_errors=True)
        alice.mkdir()
        try:
            owner = f"OWNER={os.getuid()}:{os.getgid()}"
            assert ISSUE_ALICE in (COMPOSE / "README.md").read_text()  # the README's command, run here
            _run([*compose, "run", "--rm", "--no-deps", "-v", f"{alice}:/out", "-e", owner,
                  "--entrypoint", "sh", "certs", "-c", ISSUE_ALICE], env, 120)  # fmt: skip
            as_alice = {ENV_CACERT: str(alice / "ca.pem"), ENV_CERT: str(alice / "client-alice.pem"),
                        ENV_KEY: str(alice / "client-alice-key.pem")}  # fmt: skip
            with tempfile.TemporaryDirectory() as elsewhere:
                seen = subprocess.run(
                    [str(Path(sys.executable).parent / "cpctl"), "cluster", "status", "--output", "json",
                     "--endpoints", "localhost:7101,localhost:7102,localhost:7103"],
                    env={**env, **as_alice}, cwd=elsewhere, capture_output=True, text=True, timeout=60,
                )  # fmt: skip
            assert seen.returncode == 0, seen.stdout + seen.stderr
        finally:
            shutil.rmtree(alice, ignore_errors=True)

        # A second `up`: every certificate kept, the setup done again without a change.
        pems = {path: path.read_bytes() for path in Path(volume).glob("*.pem")}
        _run([*compose, "up", "-d"], env, 600)
        _wait(setup_done, 300, "the setup service to finish again", logs)
        assert {path: path.read_bytes() for path in Path(volume).glob("*.pem")} == pems
        ok(cpctl("cluster", "health"))
    finally:
        _run([*compose, "down", "-v"], env, 300)
    leftover = subprocess.run(["podman", "volume", "ls", "--format", "{{.Name}}"], env=env, capture_output=True,
                              text=True, timeout=60).stdout.split()  # fmt: skip
    assert not [v for v in leftover if v.startswith("cpe2e_")]


#: A service whose run is a compose file on its node (issue 21): the image's Python serves HTTP on
#: the port the cluster assigned, published on the loopback where the agent checks it.
SERVICE_COMPOSE_FILE = """\
services:
  web:
    image: {image}
    entrypoint: [python, -m, http.server, "8000"]
    ports: ["127.0.0.1:${{CP_PORT_HTTP}}:8000"]
    healthcheck: {{disable: true}}
"""


@pytest.mark.compose
@pytest.mark.timeout(1800)
def test_an_agent_runs_a_service_from_a_compose_file(podman_env: dict[str, str], tmp_path: Path) -> None:
    """A manifest whose run is `docker-compose up` of a file on the node: the agent starts it with the
    assigned port in its environment, the http check passes, a killed container ends `compose up`
    and is started again, and a stop ends the container (compose stops it on SIGTERM, within the
    manifest's stop_timeout_s)."""
    from controlplane.client import Client
    from controlplane.dev import LocalCluster

    compose_file = tmp_path / "web.yaml"
    compose_file.write_text(SERVICE_COMPOSE_FILE.format(image=IMAGE))
    project = "cpe2eweb"
    env = podman_env

    def containers() -> list[str]:
        listed = ["podman", "ps", "--filter", f"label=com.docker.compose.project={project}", "--format", "{{.Names}}"]
        return _run(listed, env, 60).split()

    with LocalCluster(tmp_path / "cluster", servers=1) as cluster:
        cluster.wait_for_leader(60)
        creds = cluster.credentials
        agent_env = {k: v for k, v in env.items() if not k.startswith("CP_")}
        agent_env.update({ENV_CACERT: str(creds.ca), ENV_CERT: str(creds.cert), ENV_KEY: str(creds.key)})
        agent = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "agent", "--id", "web-node", "--ttl", "5", "--allow-run",
             "--endpoints", ",".join(cluster.client_addresses)],
            env=agent_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            with Client(cluster.client_addresses, credentials=creds, timeout=30) as client:
                manifest = {
                    "name": "web",
                    "host": "web-node",
                    "ports": [{"name": "http"}],
                    "health_check": {"type": "http", "path": "/", "interval_s": 2, "timeout_s": 2},
                    "run": {
                        "command": ["docker-compose", "-f", str(compose_file), "-p", project, "up"],
                        "stop_timeout_s": 60,
                    },
                }
                client.services.register(manifest)

                def instance() -> Any:
                    [found] = client.services.list(host="web-node", name="web")
                    return found

                def agent_there() -> bool:
                    try:
                        client.services.start("web-node", "web")
                    except errors.FailedPrecondition:
                        return False  # the agent has not registered yet
                    return True

                _wait(agent_there, 120, "the agent to take the start", lambda: "")
                _wait(lambda: instance().health.status.name == "PASSING", 600, "the compose service passing",
                      lambda: repr(instance()))  # fmt: skip
                port = instance().ports[0].port
                assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
                [container] = containers()

                # Its container killed: `compose up` ends, and the agent starts it again.
                first_pid = instance().run.pid
                _run(["podman", "kill", container], env, 60)

                def restarted() -> bool:
                    now = instance()
                    return now.run.restarts == 1 and now.run.state == "running" and now.run.pid != first_pid

                _wait(restarted, 600, "compose up started again", lambda: repr(instance()))
                _wait(lambda: len(containers()) == 1 and instance().health.status.name == "PASSING", 600,
                      "its container back and passing", lambda: repr(instance()))  # fmt: skip

                client.services.stop("web-node", "web")
                _wait(lambda: instance().run.state == "stopped", 120, "the run stopped", lambda: repr(instance()))
                assert containers() == []  # compose stopped it, not a SIGKILL that leaves it running
        finally:
            agent.terminate()  # it stops what it runs, each given its grace (60 s here)
            try:
                agent.wait(120)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(60)
            subprocess.run(["docker-compose", "-f", str(compose_file), "-p", project, "down"], env=env,
                           capture_output=True, timeout=300)  # fmt: skip
