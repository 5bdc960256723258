"""What a user installing the package gets (issue 17): `cpctl --version`, the licence, type markers,
ranges rather than pins, and a lean install: `pip install controlplane` is the SDK and the client
commands, and every daemon names the extra it needs.

The wheel is built from a copy of the sources with the setuptools in the test's environment (no
network, no build isolation) and read as an installer would read it; the lean install puts it in a
fresh virtualenv with its own dependencies only (from the index, pinned by constraints.txt).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import controlplane

ROOT = Path(__file__).resolve().parent.parent


def test_cpctl_version_prints_the_package_version_and_exits_0() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "controlplane", "--version"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"cpctl {controlplane.__version__}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("controlplane", "gossip", "gateway"):
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-c", "from setuptools import build_meta; print(build_meta.build_wheel('dist'))"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=source,
    )
    assert built.returncode == 0, built.stderr
    return zipfile.ZipFile(source / "dist" / built.stdout.strip().splitlines()[-1])


def _requirements(wheel: zipfile.ZipFile) -> list[str]:
    info = f"controlplane-{controlplane.__version__}.dist-info"
    return Parser().parsestr(wheel.read(f"{info}/METADATA").decode()).get_all("Requires-Dist") or []


def test_the_wheel_carries_the_version_the_licence_and_py_typed_for_every_package(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for package in ("controlplane", "gossip", "gateway"):
        assert f"{package}/py.typed" in names, f"{package} is not marked typed (PEP 561)"
    info = f"controlplane-{controlplane.__version__}.dist-info"
    metadata = Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
    assert metadata["Version"] == controlplane.__version__  # declared once, in controlplane/__init__.py
    assert metadata["License-Expression"] == "Apache-2.0"
    licence = wheel.read(f"{info}/licenses/LICENSE").decode()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert licence == (ROOT / "LICENSE").read_text()


def test_the_metadata_holds_ranges_and_the_extras_while_constraints_pin_them(wheel: zipfile.ZipFile) -> None:
    requirements = _requirements(wheel)
    base = [r for r in requirements if "extra ==" not in r]
    assert {re.split(r"[<>=!;\[ ]", r)[0].lower() for r in base} == {
        "grpcio", "protobuf", "typer", "rich", "pyyaml", "structlog", "sortedcontainers", "prometheus-client",
    }  # fmt: skip
    # Exact versions only for pysyncobj (its internals are patched) and the dev tools.
    tools = ('extra == "dev"', 'extra == "browser"')
    pinned = [r for r in requirements if "==" in r.split(";")[0] and not r.startswith("pysyncobj")]
    assert [r for r in pinned if not any(tool in r for tool in tools)] == []
    for extra in ("server", "gateway", "agent", "gossip", "torch", "all"):
        assert any(f'extra == "{extra}"' in r for r in requirements), f"no extra {extra}"
    constraints = (ROOT / "constraints.txt").read_text().splitlines()
    exact = {_normal(line.split("==")[0]): line.split("==")[1] for line in constraints if "==" in line}
    for requirement in requirements:
        if not any(tool in requirement for tool in tools):
            assert _normal(re.split(r"[<>=!;\[ ]", requirement)[0]) in exact | {"controlplane": ""}, (
                f"{requirement} has no exact version in constraints.txt"
            )


def _normal(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


#: What pip prints when the index cannot be reached (no network): the test is then skipped, saying so.
OFFLINE = ("NewConnectionError", "Temporary failure in name resolution", "No matching distribution found")


@pytest.mark.timeout(900)
def test_a_lean_install_is_the_sdk_and_the_client_commands(wheel: zipfile.ZipFile, tmp_path: Path) -> None:
    assert wheel.filename is not None
    env_dir = tmp_path / "lean"
    # No pip of its own (ensurepip is 4 s): this venv's pip installs into it (--python).
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python, cpctl = env_dir / "bin" / "python", env_dir / "bin" / "cpctl"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--quiet",
            "-c",
            ROOT / "constraints.txt",
            wheel.filename,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0 and any(sign in install.stderr for sign in OFFLINE):
        pytest.skip(f"pip cannot reach the package index: {install.stderr.strip().splitlines()[-1]}")
    assert install.returncode == 0, install.stderr[-2000:]
    present = subprocess.run(
        [python, "-c", "import importlib.util as u; print(*[m for m in ('numpy', 'networkx', 'fastapi', 'uvicorn', "
         "'pysyncobj', 'aiosqlite', 'cryptography', 'uvloop', 'httpx', 'jinja2', 'grpc_health', 'grpc_reflection') "
         "if u.find_spec(m)])"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert present.returncode == 0, present.stderr
    assert present.stdout.split() == [], "the lean install pulled in what only the extras need"
    sdk = subprocess.run(
        [python, "-c", "from controlplane.client import AsyncClient, Client; print(Client.__name__)"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert sdk.stdout.strip() == "Client", sdk.stderr

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([cpctl, *args], capture_output=True, text=True, timeout=60)

    assert run("--version").stdout.strip() == f"cpctl {controlplane.__version__}"
    unreachable = run("kv", "get", "k", "--endpoints", "127.0.0.1:1", "--timeout", "2")
    assert unreachable.returncode == 3 and "no server at 127.0.0.1:1 answered" in unreachable.stderr
    # Discovery through a gateway is the SDK's own (the standard library's HTTP client): no extra.
    no_gateway = run("kv", "get", "k", "--endpoints", "http://127.0.0.1:1")
    assert no_gateway.returncode == 3, no_gateway.stderr
    assert "cannot learn the servers from the gateway at http://127.0.0.1:1" in no_gateway.stderr
    assert "Traceback" not in no_gateway.stderr and "pip install" not in no_gateway.stderr
    # TLS flags work without cryptography: a key open to others is refused by the client's own check.
    key = tmp_path / "client-key.pem"
    key.write_text("not a key")
    key.chmod(0o644)
    cert = tmp_path / "client.pem"
    cert.write_text("not a certificate")
    tls = ("--cacert", str(cert), "--cert", str(cert), "--key", str(key))
    open_key = run(*tls, "kv", "get", "k", "--endpoints", "127.0.0.1:1")
    assert open_key.returncode == 2 and f"chmod 600 {key}" in open_key.stderr, open_key.stderr
    for args, extra in (
        (("serve", "--node-id", "n1", "--client-address", "127.0.0.1:1", "--raft-address", "127.0.0.1:2",
          "--data-dir", str(tmp_path / "d")), "server"),
        (("dev",), "server"),
        (("gateway",), "gateway"),
        (("agent", "--id", "a1"), "agent"),
        (("certs", "show", str(tmp_path / "x.pem")), "server"),
        (("models", "fetch", "m", "1", "--dir", str(tmp_path / "store"), "--endpoints", "127.0.0.1:1"), "gossip"),
    ):  # fmt: skip
        refused = run(*args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert f"pip install 'controlplane[{extra}]'" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
