"""The layering (issue 16). What a client command loads: `cpctl kv ...` needs the SDK and the CLI,
not the server, the gossip arithmetic (numpy, networkx), the plotting library (matplotlib: only
`cpctl gossip plot` imports it) or the gateway's web stack. Which layer may import which: the
state machine nothing above it, the SDK neither the server nor the gateway; and no import cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import networkx as nx

HEAVY = (
    "numpy",
    "networkx",
    "torch",
    "matplotlib",
    "fastapi",
    "uvicorn",
    "controlplane.server.node",
    "controlplane.server.app",
)


def test_a_client_command_loads_neither_the_server_nor_numpy_nor_the_web_stack() -> None:
    probe = (  # every command module, as `cpctl --help` loads them
        "import sys\n"
        "from controlplane.cli import load_commands\n"
        "load_commands()\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


# ------------------------------------------------------------------ which layer may import which

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("controlplane", "gossip", "gateway")
#: The pure state machine imports only itself and the generated messages: no network, no process,
#: nothing that knows about either (an allow-list, so a new module elsewhere is covered at once).
STATE_MAY_IMPORT = ("controlplane.state", "controlplane.v1")
#: Layer -> what it must never import, anywhere in it (a deferred import inside a function too).
FORBIDDEN = {
    # The SDK talks to servers over gRPC only, and the gateway is built on it, not the reverse.
    "controlplane.client": ("controlplane.server", "controlplane.cli", "gossip", "gateway"),
}


#: Known breaks, each with why it is still there; the test fails on any other, and when one of these
#: is gone (so that this list only ever shrinks). None today: the SDK's gateway discovery
#: (controlplane/client/_discovery.py, issue 16 item 5) was the last one.
KNOWN_BREAKS: set[str] = set()


def _modules() -> dict[str, Path]:
    """Every module of ours by name, packages included (a directory without ``__init__.py`` is a
    namespace package: ``from controlplane import server`` imports it all the same)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "v1" in parts:  # generated protobuf code
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
            for depth in range(1, len(parts)):
                found.setdefault(".".join(parts[:depth]), path.parents[len(parts) - 1 - depth])
    return found


def _dynamic_import(node: ast.AST) -> str | None:
    """``__import__("a.b")`` or ``importlib.import_module("a.b")``: the module named, else None."""
    if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
        return None
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    argument = node.args[0].value
    return argument if name in ("__import__", "import_module") and isinstance(argument, str) else None


def _imports(name: str, path: Path, modules: dict[str, Path], *, module_level_only: bool) -> set[str]:
    """The modules of ours that ``name`` imports: ``from pkg import sub`` counts as ``pkg.sub`` when
    that is a module. With ``module_level_only``, imports in functions and under TYPE_CHECKING (they
    run later, or never) are left out: those are the ones that make an import cycle."""
    if path.is_dir():
        return set()  # a namespace package: no code of its own
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                if not module_level_only:
                    yield from statements(node.body)
                yield from statements(node.orelse)  # what runs when not type checking
                continue
            yield node
            if isinstance(node, ast.Try | ast.If | ast.With):
                handlers = [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]
                blocks = [*node.body, *handlers, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
                yield from statements(blocks)

    nodes = list(statements(tree.body)) if module_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if (dynamic := _dynamic_import(node)) is not None:
            found.add(dynamic)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join([*base, node.module] if node.module else base) if node.level else (node.module or "")
            submodules = {f"{source}.{alias.name}" for alias in node.names} & modules.keys()
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(source)
    return {imported for imported in found if imported.split(".")[0] in PACKAGES}


def test_the_state_machine_and_the_sdk_import_nothing_above_them() -> None:
    modules = _modules()
    broken = []

    def within(module: str, layers: tuple[str, ...]) -> bool:
        return any(module == layer or module.startswith(layer + ".") for layer in layers)

    for name, path in sorted(modules.items()):
        imported = sorted(_imports(name, path, modules, module_level_only=False))
        if within(name, ("controlplane.state",)):
            broken += [f"{name} imports {i}" for i in imported if not within(i, STATE_MAY_IMPORT)]
        for layer, forbidden in FORBIDDEN.items():
            if within(name, (layer,)):
                broken += [f"{name} imports {i}" for i in imported if within(i, forbidden)]
    assert set(broken) - KNOWN_BREAKS == set(), "layering broken:\n" + "\n".join(sorted(set(broken) - KNOWN_BREAKS))
    assert KNOWN_BREAKS - set(broken) == set(), f"mended, take them off KNOWN_BREAKS: {KNOWN_BREAKS - set(broken)}"


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules, module_level_only=True) - {name} for name, path in modules.items()}
    cycles = [cycle for cycle in nx.simple_cycles(nx.DiGraph([(a, b) for a, bs in graph.items() for b in bs]))]
    assert cycles == [], "import cycles (module level):\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_layering_check_sees_a_forbidden_import_and_a_cycle(tmp_path: Path) -> None:
    """The checks above look at real imports: a fake state module importing the server, and two
    modules importing each other, are found."""
    state = tmp_path / "controlplane" / "state"
    state.mkdir(parents=True)
    (state / "bad.py").write_text("from controlplane.server import node\n")
    (tmp_path / "gossip").mkdir()
    (tmp_path / "gossip" / "a.py").write_text("from gossip import b\n")
    (tmp_path / "gossip" / "b.py").write_text("import gossip.a\n")
    modules = {"controlplane.state.bad": state / "bad.py", "controlplane.server.node": state / "bad.py"}
    assert _imports("controlplane.state.bad", state / "bad.py", modules, module_level_only=False) == {
        "controlplane.server.node"
    }
    # A namespace package imported whole, and a dynamic import, are imports too.
    (state / "sly.py").write_text(
        "from controlplane import server\nimport importlib\nimportlib.import_module('gateway.app')\n"
    )
    modules["controlplane.server"] = state
    assert _imports("controlplane.state.sly", state / "sly.py", modules, module_level_only=False) == {
        "controlplane.server",
        "gateway.app",
    }
    pair = {"gossip.a": tmp_path / "gossip" / "a.py", "gossip.b": tmp_path / "gossip" / "b.py"}
    edges = [
        (name, other) for name, path in pair.items() for other in _imports(name, path, pair, module_level_only=True)
    ]
    assert list(nx.simple_cycles(nx.DiGraph(edges))) != []
