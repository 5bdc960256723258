"""The client config file's contexts and the precedence flags > environment > context (pure: no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from controlplane.cli import app, kv  # noqa: F401  (kv registers its commands on import)
from controlplane.cli.contexts import ClientConfig, Context, ContextError, load, resolve
from controlplane.client import Credentials


@pytest.fixture
def config(tmp_path: Path) -> ClientConfig:
    token = tmp_path / "token"
    token.write_text("cp1.ctx.secret\n")
    token.chmod(0o600)
    written = ClientConfig(
        tmp_path / "config.toml",
        "dev",
        {
            "dev": Context("dev", ("127.0.0.1:7101",), Path("pki/ca.pem"), Path("pki/c.pem"), Path("pki/c-key.pem")),
            "prod": Context("prod", ("10.0.0.1:7101", "10.0.0.2:7101"), Path("/etc/cp/ca.pem"), token_file=token),
        },
    )
    written.save()
    return load(written.path)


def test_the_file_round_trips_and_relative_paths_are_beside_it(config: ClientConfig) -> None:
    dev = config.context()
    assert dev is not None and dev.name == "dev"
    assert dev.cacert == config.path.parent / "pki/ca.pem"
    assert config.contexts["prod"].endpoints == ("10.0.0.1:7101", "10.0.0.2:7101")
    assert os.stat(config.path).st_mode & 0o777 == 0o600


def test_the_context_fills_what_nothing_else_gives(config: ClientConfig) -> None:
    got = resolve(flags=Credentials(), endpoints_flag=None, context_flag="prod", environ={}, config=config)
    assert got.endpoints == "10.0.0.1:7101,10.0.0.2:7101"
    assert got.credentials == Credentials(ca=Path("/etc/cp/ca.pem"), token="cp1.ctx.secret")
    assert got.context == "prod"


def test_environment_beats_the_context_and_flags_beat_both(config: ClientConfig) -> None:
    environ = {"CP_ENDPOINTS": "env:1", "CP_TOKEN": "env-token", "CP_CONTEXT": "prod"}
    got = resolve(flags=Credentials(), endpoints_flag=None, context_flag=None, environ=environ, config=config)
    assert (got.endpoints, got.credentials.token, got.context) == ("env:1", "env-token", "prod")
    assert got.credentials.ca == Path("/etc/cp/ca.pem")  # not in the environment: from the context
    flags = Credentials(ca=Path("flag-ca.pem"), token="flag-token")
    got = resolve(flags=flags, endpoints_flag="flag:1", context_flag="dev", environ=environ, config=config)
    assert (got.endpoints, got.credentials.token, got.credentials.ca) == ("flag:1", "flag-token", Path("flag-ca.pem"))
    assert got.credentials.cert == config.path.parent / "pki/c.pem"  # from the dev context


def test_an_unknown_context_is_named(config: ClientConfig) -> None:
    with pytest.raises(ContextError, match=r"no context 'staging' in .*config.toml \(contexts: dev, prod\)"):
        resolve(flags=Credentials(), endpoints_flag=None, context_flag="staging", environ={}, config=config)


def test_a_token_file_open_to_others_is_refused(config: ClientConfig) -> None:
    token_file = config.contexts["prod"].token_file
    assert token_file is not None
    token_file.chmod(0o644)
    with pytest.raises(ContextError, match="chmod 600"):
        resolve(flags=Credentials(), endpoints_flag=None, context_flag="prod", environ={}, config=config)


def test_cpctl_context_use_list_show(config: ClientConfig) -> None:
    runner = CliRunner()
    env = {"CP_CONFIG": str(config.path)}
    result = runner.invoke(app, ["context", "use", "prod"], env=env)
    assert result.exit_code == 0, result.output
    assert load(config.path).current_context == "prod"
    listed = runner.invoke(app, ["context", "list"], env=env).output
    assert "* prod" in listed and "  dev" in listed
    shown = runner.invoke(app, ["context", "show"], env=env).output
    assert "endpoints: 10.0.0.1:7101,10.0.0.2:7101" in shown and "cp1.ctx.secret" not in shown
    missing = runner.invoke(app, ["context", "use", "nope"], env=env)
    assert missing.exit_code == 2 and "no context 'nope'" in missing.output


def test_a_certificate_without_its_key_is_a_usage_error(config: ClientConfig, tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    result = CliRunner().invoke(
        app,
        ["--cacert", str(cert), "--cert", str(cert), "kv", "get", "k"],
        env={"CP_CONFIG": str(tmp_path / "none.toml")},
    )
    assert result.exit_code == 2
    assert "without its key" in result.output
