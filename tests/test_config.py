"""Server configuration: precedence, secrets, and refusing settings that cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.server.config import ConfigError, Peer, load_config

REPO = Path(__file__).resolve().parent.parent
BASE = {
    "node_id": "n1",
    "client_address": "127.0.0.1:7101",
    "raft_address": "127.0.0.1:7201",
    "data_dir": "/tmp/cp-n1",
}


def test_flags_override_environment_override_file(tmp_path: Path) -> None:
    config_file = tmp_path / "n1.toml"
    config_file.write_text(
        'node_id = "from-file"\nclient_address = "127.0.0.1:1"\nraft_address = "127.0.0.1:2"\n'
        'data_dir = "/tmp/x"\nlog_level = "debug"\n'
    )
    environ = {"CP_NODE_ID": "from-env", "CP_CLIENT_ADDRESS": "127.0.0.1:3", "CP_RAFT_PASSWORD": "s3cret"}
    config = load_config(config_file, {"node_id": "from-flag"}, environ)
    assert config.node_id == "from-flag"
    assert config.client_address == "127.0.0.1:3"
    assert config.raft_address == "127.0.0.1:2"
    assert config.log_level == "debug"
    assert config.raft_password == "s3cret"
    assert "s3cret" not in repr(config)


def test_refuses_to_start_without_a_raft_password() -> None:
    with pytest.raises(ConfigError, match="Raft password"):
        load_config(None, BASE, {})
    assert load_config(None, {**BASE, "insecure_dev": True}, {}).raft_password is None


def test_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    config = load_config(None, {**BASE, "raft_password_file": str(secret)}, {})
    assert config.raft_password == "from-file"
    with pytest.raises(ConfigError, match="cannot read raft_password_file"):
        load_config(None, {**BASE, "raft_password_file": str(tmp_path / "missing")}, {})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"client_address": "0.0.0.0:7101"}, "advertise_client_address"),
        ({"raft_address": "0.0.0.0:7201"}, "wildcard"),
        ({"raft_address": "localhost:99999"}, "port in 1-65535"),
        ({"node_id": "bad id!"}, "member id"),
        ({"peers": ["n1=127.0.0.1:7202,127.0.0.1:7102"]}, "itself"),
        ({"peers": ["n2=127.0.0.1:7201,127.0.0.1:7102"]}, "raft addresses must be unique"),
        ({"peers": ["n2"]}, "ID=RAFT_HOST:PORT,CLIENT_HOST:PORT"),
        ({"colour": "blue"}, "unknown setting"),
        ({"server_stabilization_s": -1}, "server_stabilization_s"),
        ({"max_trailing_logs": 0}, "max_trailing_logs"),
        ({"dead_server_cleanup_s": 0.5}, "dead_server_cleanup_s must be 0"),
        ({"min_quorum": 0}, "min_quorum"),
    ],
)
def test_settings_that_cannot_work_are_refused_with_the_reason(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {**BASE, **overrides}, {"CP_RAFT_PASSWORD": "x"})


def test_missing_settings_are_named() -> None:
    with pytest.raises(ConfigError, match=r"missing setting.*data_dir"):
        load_config(None, {"node_id": "n1", "client_address": "127.0.0.1:1", "raft_address": "127.0.0.1:2"}, {})


def test_peers_from_the_environment_are_whitespace_separated() -> None:
    environ = {"CP_RAFT_PASSWORD": "x", "CP_PEERS": "n2=127.0.0.1:7202,127.0.0.1:7102 n3=127.0.0.1:7203,127.0.0.1:7103"}
    config = load_config(None, BASE, environ)
    assert [peer.id for peer in config.peers] == ["n2", "n3"]
    assert Peer.parse(config.peers[0].spec()) == config.peers[0]


@pytest.mark.parametrize("name", ["n1.toml", "n2.toml", "n3.toml"])
def test_the_deploy_examples_are_valid(name: str) -> None:
    config = load_config(REPO / "deploy" / name, {}, {"CP_RAFT_PASSWORD": "x"})
    assert config.advertise_address.startswith("10.0.0.")
    assert len(config.peers) == 2


def test_membership_autopilot_defaults_and_file_settings(tmp_path: Path) -> None:
    defaults = load_config(None, BASE, {"CP_RAFT_PASSWORD": "x"})
    # Consul's stabilization time and trailing-log bound; cleanup off (a removal is permanent).
    assert (defaults.server_stabilization_s, defaults.max_trailing_logs) == (10.0, 250)
    assert (defaults.dead_server_cleanup_s, defaults.min_quorum) == (0.0, 3)
    assert not defaults.join
    config_file = tmp_path / "n4.toml"
    config_file.write_text("join = true\nserver_stabilization_s = 2.5\ndead_server_cleanup_s = 3600\nmin_quorum = 5\n")
    config = load_config(config_file, BASE, {"CP_RAFT_PASSWORD": "x"})
    assert config.join and config.server_stabilization_s == 2.5
    assert (config.dead_server_cleanup_s, config.min_quorum) == (3600, 5)
    assert config.voter_marker_file == config.data_dir / "raft.voter"
