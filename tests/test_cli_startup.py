"""`cpctl COMMAND` loads only the module that registers COMMAND (controlplane.cli.COMMAND_MODULES):
each server start and each client command skips the other groups' imports and typer's building of
their options. The table must name every command of every module, and each module must stand alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer

from controlplane import cli

MARK = "cli-startup-report:"

# Runs `cpctl ARGS` in a fresh interpreter and reports what it loaded and registered (after MARK).
PROBE = f"""
import json, sys
from controlplane import cli
sys.argv = ["cpctl", *json.loads(sys.argv[1])]
code = 0
try:
    cli.main()
except SystemExit as exc:
    code = exc.code or 0
registered = [c.name or c.callback.__name__ for c in cli.app.registered_commands]
registered += [g.name for g in cli.app.registered_groups]
loaded = sorted(m for m in sys.modules if m.startswith(("controlplane.", "networkx")) or m in ("numpy", "structlog"))
print({MARK!r} + json.dumps({{"code": code, "registered": registered, "loaded": loaded}}), file=sys.stderr)
"""

# Every module of controlplane.cli imported, in a fresh interpreter: the commands they register.
EVERY_MODULE = """
import importlib, pkgutil
from controlplane import cli
for info in pkgutil.iter_modules(cli.__path__):
    importlib.import_module(f"controlplane.cli.{info.name}")
names = [c.name or c.callback.__name__ for c in cli.app.registered_commands]
print(sorted(names + [g.name for g in cli.app.registered_groups]))
"""


def _run(*args: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True, timeout=120)
    reports = [line.removeprefix(MARK) for line in done.stderr.splitlines() if line.startswith(MARK)]
    assert reports, f"no report from cpctl {' '.join(args)}: {done.stderr[-2000:]}"
    report: dict[str, object] = json.loads(reports[-1])
    report["stdout"] = done.stdout
    return report


def test_the_table_names_every_command_of_every_module() -> None:
    done = subprocess.run([sys.executable, "-c", EVERY_MODULE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr(sorted(cli.COMMAND_MODULES))
    everything = _run("--help")
    assert everything["code"] == 0
    assert sorted(everything["registered"]) == sorted(cli.COMMAND_MODULES)  # type: ignore[call-overload]


@pytest.mark.parametrize("module", sorted(set(cli.COMMAND_MODULES.values())))
def test_each_command_module_stands_alone(module: str) -> None:
    """Loaded alone (as `cpctl NAME` does), a module registers its commands and their help works."""
    names = [name for name, owner in cli.COMMAND_MODULES.items() if owner == module]
    report = _run(names[0], "--help")
    assert report["code"] == 0, report
    assert report["registered"] == names, report
    assert "Usage:" in str(report["stdout"])


def test_a_server_start_loads_no_client_command_and_no_graph_library() -> None:
    """Past its options (a config file that does not exist ends it there), a server has loaded its
    own modules and none of the client commands', nor networkx and numpy (loaded when a gossip group
    first needs a round planned)."""
    report = _run("--context", "none", "serve", "--config", "/nonexistent/cp.toml")
    assert report["code"] == 2, report
    assert report["registered"] == ["serve"]
    loaded = set(report["loaded"])  # type: ignore[call-overload]
    assert "controlplane.server.app" in loaded, sorted(loaded)  # it got as far as a server does
    assert not {"controlplane.cli.kv", "controlplane.cli.models", "networkx", "numpy"} & loaded, sorted(loaded)


def test_a_client_command_loads_no_server_module_and_no_logging_library() -> None:
    """A client command (here one that finds no server) imports the SDK, not the server's modules,
    numpy, or structlog (which only the daemons configure)."""
    report = _run("kv", "get", "k", "--endpoints", "127.0.0.1:1", "--timeout", "0.5")
    assert report["code"] == 3, report  # the cluster could not be reached
    loaded = set(report["loaded"])  # type: ignore[call-overload]
    assert "controlplane.client" in loaded, sorted(loaded)
    assert not {"structlog", "numpy", "networkx", "controlplane.server.node"} & loaded, sorted(loaded)


def test_the_command_is_found_after_the_root_options() -> None:
    assert cli._command_name(["--cacert", "ca.pem", "--token", "t", "kv", "get", "x"]) == "kv"
    assert cli._command_name(["--context=prod", "--", "serve"]) == "serve"
    assert cli._command_name(["--version"]) is None
    assert cli._command_name(["--help", "kv"]) is None  # the root's help: every command


def test_the_root_options_that_take_a_value_are_known() -> None:
    """A root option with a value the table does not know would be taken for the command's name."""
    group = typer.main.get_group(cli.app)
    valued = {name for param in group.params if not getattr(param, "is_flag", False) for name in param.opts}
    assert valued == set(cli._ROOT_VALUE_OPTIONS)
