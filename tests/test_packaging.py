"""What a user installing the package gets (issue 17): `cpctl --version`, the licence, type markers.

The wheel is built from a copy of the sources with the setuptools in the test's environment (no
network, no build isolation) and read as an installer would read it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
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
