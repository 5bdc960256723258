"""One exception root (issue 16, item 6): every public exception class our packages define derives from
``controlplane.errors.ControlPlaneError``, so ``except ControlPlaneError`` catches whatever the SDK,
the CLI's helpers, the gossip layer or the gateway raise. Found by importing every module, so a new
class that forgets the root fails here."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from controlplane import errors

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("controlplane", "gossip", "gateway")
#: Exceptions that never leave a server, each with the reason it stays apart.
APART = {
    # The state layer imports nothing of ours but itself and the generated messages (test_layering);
    # a bad snapshot becomes InvalidArgument at the server's boundary.
    "controlplane.state.machine.SnapshotError",
    # A malformed peer frame: the peer transport drops the connection; no caller ever sees it.
    "controlplane.server.raft_codec.CodecError",
    # How a state-machine rule stops a command; apply turns it into the command's error result.
    "controlplane.state.refusal.Refused",
}


def _our_exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for package in PACKAGES:
        # Files, not pkgutil: controlplane.server is a namespace package, which pkgutil does not enter.
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__main__" or "examples" in parts:
                continue  # importing it runs it
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            module = importlib.import_module(name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                # A private class (``_RewriteFailed``) is control flow inside its module, caught there.
                public = not cls.__name__.startswith("_")
                if public and issubclass(cls, Exception) and not issubclass(cls, Warning) and cls.__module__ == name:
                    found[f"{name}.{cls.__qualname__}"] = cls
    return found


def test_every_exception_of_ours_derives_from_the_one_root() -> None:
    classes = _our_exception_classes()
    assert {"gossip.exchange.PeerTimeout", "controlplane.server.config.ConfigError"} <= set(classes)  # it looked
    stray = sorted(name for name, cls in classes.items() if not issubclass(cls, errors.ControlPlaneError))
    assert stray == sorted(APART), f"not under ControlPlaneError: {sorted(set(stray) - APART)}"


@pytest.mark.parametrize(
    "name",
    [
        "controlplane.client._credentials.CredentialsError",
        "controlplane.keyfiles.TlsError",
        "controlplane.server.config.ConfigError",
        "controlplane.cli.contexts.ContextError",
        "gossip.artifacts.InvalidArtifactName",
    ],
)
def test_errors_raised_before_any_call_are_invalid_arguments_and_still_value_errors(name: str) -> None:
    cls = _our_exception_classes()[name]
    assert issubclass(cls, errors.InvalidArgument if "Artifact" not in name else errors.ControlPlaneError)
    assert issubclass(cls, ValueError)  # what callers caught before the root
    error = cls("the message")
    assert error.message == str(error) == "the message"
