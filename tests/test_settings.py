"""One settings model for serve, gateway and agent (issue 17, item 7): TOML < environment < flags,
every setting with an environment variable, unknown names and wrong types refused with the setting
and its source named. The daemons' own use of it runs in tests/cluster (gateway, agent) and
tests/test_config.py (serve)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer

from controlplane import settings
from controlplane.cli import app
from controlplane.cli.gateway import ENV_PREFIX as GATEWAY_PREFIX
from controlplane.cli.gateway import GatewayOptions
from controlplane.cli.membership import AGENT_ENV_PREFIX, AgentOptions
from controlplane.server.config import ConfigError, RaftTuning, ServerConfig, load_config


@dataclass(frozen=True)
class Inner:
    rate: float = 1.0
    on: bool = False


@dataclass(frozen=True)
class Example:
    name: str = "x"
    count: int = 1
    ratio: float = 0.5
    enabled: bool = False
    where: Path | None = None
    tags: tuple[str, ...] = ()
    inner: Inner = field(default_factory=Inner)


def load(**kwargs: Any) -> dict[str, Any]:
    return settings.load(Example, prefix="EX_", **kwargs)


def test_the_file_the_environment_and_the_flags_override_in_that_order() -> None:
    file_values = {"name": "file", "count": 2, "ratio": 1, "tags": ["a", "b"], "inner": {"rate": 3}}
    environ = {"EX_COUNT": "3", "EX_ENABLED": "yes", "EX_INNER_ON": "true", "EX_WHERE": "/srv/x", "EX_NAME": ""}
    values = load(file_values=file_values, environ=environ, flags={"count": 4})
    assert values == {
        "name": "file",  # an empty variable is unset
        "count": 4,
        "ratio": 1.0,
        "tags": ("a", "b"),
        "enabled": True,
        "where": Path("/srv/x"),
        "inner": Inner(rate=3.0, on=True),
    }
    assert load() == {}  # nothing given: the dataclass's defaults apply
    assert load(environ={"EX_TAGS": "a  b\tc"})["tags"] == ("a", "b", "c")
    assert load(file_values={"where": ""}) == {"where": None}  # an empty path is unset, as in a template


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"file_values": {"colour": "red"}}, "unknown setting(s) in the config file: colour"),
        ({"file_values": {"inner": {"speed": 1}}}, r"unknown setting(s) in [inner] of the config file: speed"),
        ({"file_values": {"inner": 3}}, "inner in the config file must be a [inner] table"),
        ({"file_values": {"count": "5"}}, "count in the config file: expected a whole number, got '5'"),
        ({"file_values": {"count": True}}, "count in the config file: expected a whole number, got True"),
        ({"file_values": {"ratio": "fast"}}, "ratio in the config file: expected a number"),
        ({"file_values": {"enabled": 1}}, "enabled in the config file: expected true or false, got 1"),
        ({"file_values": {"name": 7}}, "name in the config file: expected text, got 7"),
        ({"file_values": {"tags": "a"}}, "tags in the config file: expected a list"),
        ({"file_values": {"inner": {"rate": "x"}}}, "inner.rate in the config file: expected a number"),
        ({"environ": {"EX_COUNT": "many"}}, "EX_COUNT: expected a whole number, got 'many'"),
        ({"environ": {"EX_ENABLED": "maybe"}}, "EX_ENABLED: expected true or false, got 'maybe'"),
        ({"environ": {"EX_INNER_RATE": "1,5"}}, "EX_INNER_RATE: expected a number, got '1,5'"),
        ({"flags": {"colour": "red"}}, "unknown setting(s): colour"),
        ({"flags": {"count": "5"}}, "count (a flag): expected a whole number"),
        ({"environ": {"EX_RATIO": "nan"}}, "EX_RATIO: expected a number, got 'nan'"),
        ({"file_values": {"ratio": float("inf")}}, "ratio in the config file: expected a number, got inf"),
    ],
)
def test_what_does_not_fit_is_refused_naming_the_setting_and_its_source(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(settings.SettingsError) as refused:
        load(**kwargs)
    assert message in refused.value.message


def test_a_file_that_is_not_toml_or_not_there(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("listen = \n")
    with pytest.raises(settings.SettingsError, match="is not valid TOML"):
        settings.read_file(broken)
    with pytest.raises(settings.SettingsError, match="cannot read config file"):
        settings.read_file(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("cls", "prefix"), [(ServerConfig, "CP_"), (GatewayOptions, GATEWAY_PREFIX), (AgentOptions, AGENT_ENV_PREFIX)]
)
def test_every_setting_of_every_daemon_has_its_own_variable(cls: type, prefix: str) -> None:
    names = settings.env_names(cls, prefix)
    top_level = {f.name for f in dataclasses.fields(cls)} - ({"raft"} if cls is ServerConfig else set())
    assert top_level <= set(names)
    assert len(set(names.values())) == len(names), "two settings share a variable"
    assert all(variable.startswith(prefix) and variable.isupper() for variable in names.values())


def test_every_server_setting_is_read_from_the_environment_with_its_type() -> None:
    base = {
        "CP_NODE_ID": "n1",
        "CP_CLIENT_ADDRESS": "127.0.0.1:7101",
        "CP_RAFT_ADDRESS": "127.0.0.1:7201",
        "CP_DATA_DIR": "/tmp/d",
    }
    # The one setting without a variable: one inherited by accident must not turn TLS off.
    with pytest.raises(ConfigError, match="no TLS for the Raft peer plane"):
        load_config(None, {}, {**base, "CP_INSECURE_DEV": "true"})
    config = load_config(
        None,
        {"insecure_dev": True},
        {
            **base,
            "CP_MAX_BATCH_COMMANDS": "512",
            "CP_RAFT_TICK_S": "0.02",
            "CP_PEERS": "n2=127.0.0.1:7202,127.0.0.1:7102",
        },
    )
    assert config.max_batch_commands == 512 and config.raft == RaftTuning(tick_s=0.02)
    assert [peer.id for peer in config.peers] == ["n2"] and config.insecure_dev
    with pytest.raises(ConfigError, match="CP_HISTORY_LIMIT: expected a whole number, got 'lots'"):
        load_config(None, {}, {**base, "CP_HISTORY_LIMIT": "lots"})


def _command(name: str) -> Any:
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("command", "cls"), [("gateway", GatewayOptions), ("agent", AgentOptions)])
def test_each_setting_is_the_flag_of_the_same_name_with_the_same_default(command: str, cls: type) -> None:
    """The dataclass is what the daemon reads; the flags' defaults (shown by --help) must be its."""
    params = {param.name: param for param in _command(command).params}
    for setting in dataclasses.fields(cls):
        assert setting.name in params, f"{command} has no flag for {setting.name}"
        flag_default = params[setting.name].default
        if isinstance(flag_default, (list, tuple)) or (flag_default is None and setting.default == ()):
            flag_default = tuple(flag_default or ())
        assert flag_default == setting.default, setting.name


def test_a_daemon_refuses_a_bad_setting_before_it_starts(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('listen = "127.0.0.1:1"\nmax_body_kib = "big"\n')
    command = [sys.executable, "-m", "controlplane", "gateway", "--config", str(config), "--bootstrap-expect", "3"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert f"max_body_kib in {config}: expected a whole number, got 'big'" in refused.stderr
    agent = subprocess.run(
        [sys.executable, "-m", "controlplane", "agent", "--id", "a1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "CP_AGENT_TTL": "soon"},
    )
    assert agent.returncode == 2 and "CP_AGENT_TTL: expected a number, got 'soon'" in agent.stderr
    misspelt = subprocess.run(
        [sys.executable, "-m", "controlplane", "agent"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "CP_AGENT_ID": "a1", "CP_AGENT_TTL": "0", "CP_AGENT_ARGS": "--id a1"},
    )
    assert misspelt.returncode == 2 and "ttl must be above 0" in misspelt.stderr
    assert "WARNING: CP_AGENT_ID set no setting" in misspelt.stderr and "CP_AGENT_ARGS" not in misspelt.stderr
    assert "Traceback" not in refused.stderr + agent.stderr + misspelt.stderr
