"""The client config file and its named contexts (kubeconfig / etcdctl style), and `cpctl context`.

``~/.config/controlplane/config.toml`` (or ``$CP_CONFIG``)::

    current_context = "dev"

    [contexts.dev]
    endpoints = ["127.0.0.1:7101", "127.0.0.1:7102"]
    cacert = "/home/me/cp/.data/pki/ca.pem"
    cert = "/home/me/cp/.data/pki/client-admin.pem"
    key = "/home/me/cp/.data/pki/client-admin-key.pem"
    # token_file = "/home/me/.config/controlplane/token"   (mode 0600, like a key)

Every client command resolves its endpoints and credentials field by field: the flag
(``--endpoints``, ``--cacert``, ``--cert``, ``--key``, ``--token``), else the environment
(``CP_ENDPOINTS``, ``CP_CACERT``, ``CP_CERT``, ``CP_KEY``, ``CP_TOKEN``), else the context
(``--context`` / ``CP_CONTEXT``, else the file's ``current_context``). Relative paths in the file
are relative to the file's directory.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from controlplane.cli import app
from controlplane.cli.output import EXIT_USAGE, Output, emit, fail
from controlplane.client import Credentials, CredentialsError
from controlplane.errors import InvalidArgument

ENV_CONFIG = "CP_CONFIG"
ENV_CONTEXT = "CP_CONTEXT"


class ContextError(InvalidArgument, ValueError):
    """A config file or context that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Context:
    name: str
    endpoints: tuple[str, ...] = ()
    cacert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token_file: Path | None = None

    def credentials(self) -> Credentials:
        """The context's credentials; its token file is read (and refused when open to others)."""
        token = None
        if self.token_file is not None:
            from controlplane import keyfiles

            try:
                keyfiles.check_key_permissions(self.token_file)
                token = self.token_file.read_text().strip() or None
            except (keyfiles.TlsError, OSError) as exc:
                raise ContextError(f"context {self.name!r}: token_file: {exc}") from None
        return Credentials(ca=self.cacert, cert=self.cert, key=self.key, token=token)

    def to_toml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"endpoints": list(self.endpoints)}
        for name in ("cacert", "cert", "key", "token_file"):
            value = getattr(self, name)
            if value is not None:
                out[name] = str(value)
        return out


@dataclass
class ClientConfig:
    path: Path
    current_context: str = ""
    contexts: dict[str, Context] = field(default_factory=dict)

    def context(self, name: str | None = None) -> Context | None:
        """The named context (an unknown name is an error), else the current one, else none."""
        wanted = name or self.current_context
        if not wanted:
            return None
        if wanted not in self.contexts:
            known = ", ".join(sorted(self.contexts)) or "none"
            raise ContextError(f"no context {wanted!r} in {self.path} (contexts: {known})")
        return self.contexts[wanted]

    def dumps(self) -> str:
        lines = [f"current_context = {_toml_str(self.current_context)}", ""]
        for name in sorted(self.contexts):
            lines.append(f"[contexts.{_toml_str(name)}]")
            for key, value in self.contexts[name].to_toml().items():
                if isinstance(value, list):
                    lines.append(f"{key} = [{', '.join(_toml_str(v) for v in value)}]")
                else:
                    lines.append(f"{key} = {_toml_str(value)}")
            lines.append("")
        return "\n".join(lines)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.dumps())
        os.replace(tmp, self.path)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG])
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "controlplane" / "config.toml"


def load(path: Path) -> ClientConfig:
    """The config at ``path``; a missing file is an empty config."""
    if not path.exists():
        return ClientConfig(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ContextError(f"cannot read the client config {path}: {exc}") from None
    contexts: dict[str, Context] = {}
    for name, body in (raw.get("contexts") or {}).items():
        if not isinstance(body, dict):
            raise ContextError(f"{path}: [contexts.{name}] must be a table")
        endpoints = body.get("endpoints", [])
        if isinstance(endpoints, str):
            endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
        unknown = set(body) - {"endpoints", "cacert", "cert", "key", "token_file"}
        if unknown:
            raise ContextError(f"{path}: [contexts.{name}] has unknown keys: {', '.join(sorted(unknown))}")

        def where(key: str, table: dict[str, Any] = body) -> Path | None:
            value = table.get(key)
            return None if not value else (path.parent / Path(str(value)).expanduser())

        contexts[name] = Context(
            name, tuple(str(e) for e in endpoints), where("cacert"), where("cert"), where("key"), where("token_file")
        )
    return ClientConfig(path, str(raw.get("current_context", "")), contexts)


@dataclass(frozen=True)
class Resolved:
    endpoints: str
    credentials: Credentials
    context: str  # the context used, "" for none


def resolve(
    *,
    flags: Credentials,
    endpoints_flag: str | None,
    context_flag: str | None,
    environ: Mapping[str, str] | None = None,
    config: ClientConfig | None = None,
) -> Resolved:
    """Endpoints and credentials, each field: flag, else environment, else context. Pure."""
    env = os.environ if environ is None else environ
    if config is None:
        config = load(config_path(env))
    context = config.context(context_flag or env.get(ENV_CONTEXT) or None)
    from_context = context.credentials() if context is not None else Credentials()
    credentials = flags.merged_over(Credentials.from_env(env)).merged_over(from_context)
    endpoints = endpoints_flag or env.get("CP_ENDPOINTS") or (",".join(context.endpoints) if context else "")
    return Resolved(endpoints, credentials, context.name if context else "")


# --- cpctl context ------------------------------------------------------------------------------

context_app = typer.Typer(help="Named client contexts: endpoints and credentials in one file (CP_CONFIG).")
app.add_typer(context_app, name="context")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="The client config file [CP_CONFIG; ~/.config/controlplane/config.toml]")
]


def _load(config: Path | None) -> ClientConfig:
    try:
        return load(config or config_path())
    except ContextError as exc:
        fail(str(exc), code=EXIT_USAGE)


@context_app.command("list")
def list_(config: ConfigOption = None, output: Annotated[Output, typer.Option("--output", "-o")] = Output.text) -> None:
    """The contexts in the config file; the current one is starred."""
    loaded = _load(config)
    rows = [
        {"name": name, "current": name == loaded.current_context, "endpoints": ",".join(ctx.endpoints)}
        for name, ctx in sorted(loaded.contexts.items())
    ]
    if output is Output.json:
        emit(output, {"config": str(loaded.path), "contexts": rows}, "")
        return
    if not rows:
        typer.echo(f"no contexts in {loaded.path}")
    for row in rows:
        typer.echo(f"{'*' if row['current'] else ' '} {row['name']}\t{row['endpoints']}")


@context_app.command("use")
def use(name: str, config: ConfigOption = None) -> None:
    """Make NAME the current context."""
    loaded = _load(config)
    try:
        loaded.context(name)
    except ContextError as exc:
        fail(str(exc), code=EXIT_USAGE)
    loaded.current_context = name
    loaded.save()
    typer.echo(f"current context: {name} ({loaded.path})")


@context_app.command("show")
def show(
    name: Annotated[str | None, typer.Argument(help="Default: the current context")] = None,
    config: ConfigOption = None,
) -> None:
    """A context's endpoints and credential files (never a token)."""
    loaded = _load(config)
    try:
        ctx = loaded.context(name)
    except ContextError as exc:
        fail(str(exc), code=EXIT_USAGE)
    if ctx is None:
        fail(f"no current context in {loaded.path}: pass a name or run `cpctl context use NAME`", code=EXIT_USAGE)
    typer.echo(f"context: {ctx.name}\nconfig: {loaded.path}")
    for key, value in ctx.to_toml().items():
        typer.echo(f"{key}: {','.join(value) if isinstance(value, list) else value}")


def check_credentials(credentials: Credentials) -> None:
    try:
        credentials.check()
    except CredentialsError as exc:
        fail(str(exc), code=EXIT_USAGE)


def endpoints_list(value: str) -> Sequence[str]:
    return [part.strip() for part in value.split(",") if part.strip()]
