"""`cpctl COMMAND` loads only the module that registers COMMAND (controlplane.cli.COMMAND_MODULES):
each server start and each client command skips the other groups' imports and typer's building of
their options. The table must name every command, and each module must stand alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from controlplane import cli

# Runs `cpctl ARGS` in a fresh interpreter and reports what it loaded and registered.
PROBE = """
import json, sys
from controlplane import cli
sys.argv = ["cpctl", *json.loads(sys.argv[1])]
try:
    cli.main()
except SystemExit as exc:
    code = exc.code or 0
registered = [c.name or c.callback.__name__ for c in cli.app.registered_commands]
registered += [g.name for g in cli.app.registered_groups]
loaded = sorted(m for m in sys.modules if m.startswith("controlplane.cli.") or m in ("networkx", "numpy"))
print(json.dumps({"code": code, "registered": registered, "loaded": loaded}), file=sys.stderr)
"""


def _run(*args: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True, timeout=120)
    report: dict[str, object] = json.loads(done.stderr.strip().splitlines()[-1])
    report["stdout"] = done.stdout
    return report


def test_the_table_names_every_command_and_only_those() -> None:
    everything = _run("--help")
    assert everything["code"] == 0
    assert sorted(everything["registered"]) == sorted(cli.COMMAND_MODULES)  # type: ignore[arg-type]


@pytest.mark.parametrize("module", sorted(set(cli.COMMAND_MODULES.values())))
def test_each_command_module_stands_alone(module: str) -> None:
    """Loaded alone (as `cpctl NAME` does), a module registers its commands and their help works."""
    names = sorted(name for name, owner in cli.COMMAND_MODULES.items() if owner == module)
    report = _run(names[0], "--help")
    assert report["code"] == 0, report
    assert sorted(report["registered"]) == names, report  # type: ignore[arg-type]
    assert "Usage:" in str(report["stdout"])


def test_a_server_start_loads_no_client_command_and_no_graph_library() -> None:
    report = _run("--context", "none", "serve", "--help")
    assert report["code"] == 0, report
    assert report["registered"] == ["serve"]
    loaded = set(report["loaded"])  # type: ignore[call-overload]
    assert not {"controlplane.cli.kv", "controlplane.cli.models", "networkx"} & loaded, sorted(loaded)


def test_the_command_is_found_after_the_root_options() -> None:
    assert cli._command_name(["--cacert", "ca.pem", "--token", "t", "kv", "get", "x"]) == "kv"
    assert cli._command_name(["--context=prod", "--", "serve"]) == "serve"
    assert cli._command_name(["--version"]) is None
