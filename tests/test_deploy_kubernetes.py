"""deploy/kubernetes (a kustomize base) and deploy/container/Dockerfile hold together.

What runs here: ``kubectl kustomize`` renders the base (skipped, saying so, where kubectl is not
installed). No container runtime or cluster runs on this machine, so the manifests are checked
for what would break them at run time: every environment variable is one the daemons read
(``controlplane/settings.py``), every port a probe or a Service names exists, the pod labels
match the selectors, the disruption budget keeps a majority of the voters, the servers and the
gateways agree on --bootstrap-expect, nothing runs as root, and no secret is written in them.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane import settings
from controlplane.cli.gateway import DEFAULT_TOKEN_ENV, GatewayOptions
from controlplane.cli.gateway import ENV_PREFIX as GATEWAY_PREFIX
from controlplane.cli.serve import GATEWAY_TOKEN_ENV, GATEWAYS_ENV
from controlplane.client._credentials import ENV_CACERT, ENV_CERT, ENV_KEY
from controlplane.server.config import ENV_PREFIX, NO_ENV, ServerConfig

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "deploy" / "container" / "Dockerfile"

#: Read by ``cpctl serve`` beside its settings: the gateways to form through, and their token.
SERVE_EXTRA = {GATEWAYS_ENV, GATEWAY_TOKEN_ENV}
#: Read by ``cpctl gateway`` beside its settings: how it reaches the servers, and its token.
GATEWAY_EXTRA = {ENV_CACERT, ENV_CERT, ENV_KEY, "CP_ENDPOINTS", DEFAULT_TOKEN_ENV}
#: Set for the container's own use (the downward API), not read by a daemon.
POD_VARIABLES = {"POD_NAME", "POD_NAMESPACE"}


@functools.cache
def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(BASE.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def one(kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    return found


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def bootstrap_expect(c: dict[str, Any]) -> int:
    args = [str(a) for a in c["args"]]
    return int(args[args.index("--bootstrap-expect") + 1])


def test_the_base_renders_with_kubectl_kustomize() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the manifests are checked below without rendering")
    done = subprocess.run([kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in rendered)
    assert kinds == sorted(f"{d['kind']}/{d['metadata']['name']}" for d in documents())
    images = {c["image"] for d in rendered if "template" in d.get("spec", {}) for c in _all_containers(d)}
    assert images == {"controlplane:0.1.0"}  # kustomization.yaml's tag, on every container


def _all_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_every_variable_is_one_the_daemons_read() -> None:
    """And a $(VAR) a value refers to is defined before it (Kubernetes expands only those)."""
    server_names = set(settings.env_names(ServerConfig, ENV_PREFIX, NO_ENV).values()) | SERVE_EXTRA
    gateway_names = set(settings.env_names(GatewayOptions, GATEWAY_PREFIX).values()) | GATEWAY_EXTRA
    server = container(one("StatefulSet", "controlplane-server"), "server")
    gateway = container(one("Deployment", "controlplane-gateway"), "gateway")
    assert set(env_of(server)) - POD_VARIABLES <= server_names, set(env_of(server)) - server_names
    assert set(env_of(gateway)) - POD_VARIABLES <= gateway_names, set(env_of(gateway)) - gateway_names
    for c in (server, gateway):
        defined: set[str] = set()
        for variable in c.get("env", []):
            for used in re.findall(r"\$\((\w+)\)", str(variable.get("value", ""))):
                assert used in defined, f"{variable['name']} uses $({used}) before it is defined"
            defined.add(variable["name"])


def test_servers_probes_services_and_budget_agree() -> None:
    servers = one("StatefulSet", "controlplane-server")
    server = container(servers, "server")
    env = env_of(server)
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    # The addresses the server binds and advertises use the ports the pod declares.
    assert env["CP_CLIENT_ADDRESS"].endswith(f":{ports['client']}")
    assert env["CP_METRICS_ADDRESS"].endswith(f":{ports['metrics']}")
    peer = one("Service", servers["spec"]["serviceName"])
    assert peer["spec"]["clusterIP"] == "None" and peer["spec"]["publishNotReadyAddresses"] is True
    peer_name = f"$(POD_NAME).{peer['metadata']['name']}.$(POD_NAMESPACE).svc.cluster.local"
    assert env["CP_RAFT_ADDRESS"] == f"{peer_name}:{ports['raft']}"
    assert env["CP_ADVERTISE_CLIENT_ADDRESS"] == f"{peer_name}:{ports['client']}"
    assert env["CP_NODE_ID"] == "$(POD_NAME)"
    # Probes: the metrics port's /readyz and /livez (controlplane/server/probes.py).
    assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    # Every Service selecting the servers targets ports they have, and selects their labels.
    labels = servers["spec"]["template"]["metadata"]["labels"]
    assert servers["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in (peer, one("Service", "controlplane")):
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])  # a name, or the number (the port's own by default)
            assert target in ports or target in ports.values(), port
    # A voluntary disruption leaves a majority of the voters.
    budget = one("PodDisruptionBudget", "controlplane-server")
    voters = servers["spec"]["replicas"]
    assert budget["spec"]["minAvailable"] == voters // 2 + 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Formation: the servers and the gateways expect the same number, the StatefulSet's.
    gateway_deployment = one("Deployment", "controlplane-gateway")
    gateway = container(gateway_deployment, "gateway")
    assert bootstrap_expect(server) == bootstrap_expect(gateway) == voters
    gateway_service = one("Service", "controlplane-gateway")
    gateway_port = {p["name"]: p["containerPort"] for p in gateway["ports"]}["http"]
    assert env["CP_GATEWAY"] == f"http://{gateway_service['metadata']['name']}:{gateway_port}"
    assert env_of(gateway)["CP_GATEWAY_LISTEN"].endswith(f":{gateway_port}")
    assert (
        gateway_service["spec"]["selector"].items()
        <= gateway_deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_nothing_runs_as_root_and_keys_come_from_secrets_only() -> None:
    for workload in (one("StatefulSet", "controlplane-server"), one("Deployment", "controlplane-gateway")):
        context = pod_spec(workload)["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] != 0
        for c in _all_containers(workload):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        secrets = [v for v in pod_spec(workload)["volumes"] if "secret" in v]
        assert secrets and all(v["secret"]["defaultMode"] & 0o007 == 0 for v in secrets)  # nothing for others
        # The keys a daemon reads are the copies its init container made private (0600): a server
        # refuses a key its group can read, and fsGroup makes secret files group-readable.
        [init] = pod_spec(workload)["initContainers"]
        assert "chmod 0600" in " ".join(init["command"])
        [daemon] = pod_spec(workload)["containers"]
        private = next(m["mountPath"] for m in daemon["volumeMounts"] if m["name"] == "own-tls")
        assert {m["name"] for m in init["volumeMounts"]} >= {"own-tls"}
        keys = [value for name, value in env_of(daemon).items() if name in ("CP_TLS_KEY", ENV_KEY)]
        assert keys and all(str(key).startswith(f"{private}/") for key in keys), keys
    text = "\n".join(path.read_text() for path in BASE.glob("*.yaml"))
    assert "BEGIN" not in text and not re.search(r"token:\s*\S{16,}", text)  # no key or token written here


def test_the_dockerfile_builds_in_two_stages_and_runs_unprivileged() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2 and stages[0].endswith(" AS build")
    final = lines[lines.index(stages[1]) :]
    user = next(line for line in final if line.startswith("USER "))
    assert user.split()[1].split(":")[0] not in ("0", "root")
    healthcheck = next(line for line in final if line.startswith("HEALTHCHECK"))
    check = healthcheck if "CMD" in healthcheck else final[final.index(healthcheck) + 1]
    assert "http://127.0.0.1:7301/livez" in check
    assert "CP_METRICS_ADDRESS=0.0.0.0:7301" in DOCKERFILE.read_text()  # the port it probes is on
    assert 'ENTRYPOINT ["cpctl"]' in final
    # What the build stage copies exists, and the image installs from the pinned constraints.
    for line in lines:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    [install] = [line for line in lines if "pip install" in line]
    assert "--constraint constraints.txt" in install
    extras = re.search(r'"\.\[([a-z,]+)\]"', install)
    assert extras is not None
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras.group(1).split(",")) <= set(declared)


def test_there_is_one_gateway_or_the_gateways_are_peered() -> None:
    """Gateways share what the founders announce only through --peer (gateway/DESIGN.md): more than
    one replica without it could split the founders between them and form nothing."""
    gateways = one("Deployment", "controlplane-gateway")
    args = [str(a) for a in container(gateways, "gateway")["args"]]
    assert gateways["spec"]["replicas"] == 1 or "--peer" in args
