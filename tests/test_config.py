"""Server configuration: precedence, TLS files and durability, and refusing settings that cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.server.config import ConfigError, Peer, load_config
from controlplane.state.machine import DEFAULT_HISTORY_LIMIT

REPO = Path(__file__).resolve().parent.parent
BASE = {
    "node_id": "n1",
    "client_address": "127.0.0.1:7101",
    "raft_address": "127.0.0.1:7201",
    "data_dir": "/tmp/cp-n1",
}
# load_config only records the TLS paths; the server opens (and checks) the files when it starts.
TLS_ENV = {
    "CP_TLS_CA": "/etc/controlplane/ca.pem",
    "CP_TLS_CERT": "/etc/controlplane/server-n1.pem",
    "CP_TLS_KEY": "/etc/controlplane/server-n1-key.pem",
}
TLS_SETTINGS = {"tls_ca": "ca.pem", "tls_cert": "server-n1.pem", "tls_key": "server-n1-key.pem"}


def test_flags_override_environment_override_file(tmp_path: Path) -> None:
    config_file = tmp_path / "n1.toml"
    config_file.write_text(
        'node_id = "from-file"\nclient_address = "127.0.0.1:1"\nraft_address = "127.0.0.1:2"\n'
        'data_dir = "/tmp/x"\nlog_level = "debug"\ntls_ca = "/from/file/ca.pem"\n'
    )
    environ = {**TLS_ENV, "CP_NODE_ID": "from-env", "CP_CLIENT_ADDRESS": "127.0.0.1:3"}
    config = load_config(config_file, {"node_id": "from-flag", "tls_key": "/from/flag/key.pem"}, environ)
    assert config.node_id == "from-flag"
    assert config.client_address == "127.0.0.1:3"
    assert config.raft_address == "127.0.0.1:2"
    assert config.log_level == "debug"
    assert config.tls_ca == Path(TLS_ENV["CP_TLS_CA"])
    assert config.tls_key == Path("/from/flag/key.pem")


def test_refuses_to_start_without_tls_files() -> None:
    with pytest.raises(ConfigError, match=r"TLS.*cpctl certs"):
        load_config(None, BASE, {})


def test_insecure_dev_runs_without_tls_files() -> None:
    config = load_config(None, {**BASE, "insecure_dev": True}, {})
    assert config.insecure_dev
    assert (config.tls_ca, config.tls_cert, config.tls_key) == (None, None, None)


@pytest.mark.parametrize("missing", ["tls_ca", "tls_cert", "tls_key"])
def test_some_but_not_all_tls_files_are_refused(missing: str) -> None:
    partial = {key: value for key, value in TLS_SETTINGS.items() if key != missing}
    with pytest.raises(ConfigError, match="set all of tls_ca, tls_cert and tls_key"):
        load_config(None, {**BASE, **partial}, {})
    # Even with --insecure-dev: half a TLS setup is a mistake, not a choice.
    with pytest.raises(ConfigError, match="set all of tls_ca, tls_cert and tls_key"):
        load_config(None, {**BASE, **partial, "insecure_dev": True}, {})


def test_tls_files_from_the_environment_are_paths() -> None:
    config = load_config(None, BASE, TLS_ENV)
    assert config.tls_ca == Path("/etc/controlplane/ca.pem")
    assert config.tls_cert == Path("/etc/controlplane/server-n1.pem")
    assert config.tls_key == Path("/etc/controlplane/server-n1-key.pem")
    assert not config.insecure_dev


@pytest.mark.parametrize("line", ['raft_password = "s3cret"', 'raft_password_file = "/etc/controlplane/raft-password"'])
def test_a_raft_password_in_the_config_file_is_refused(tmp_path: Path, line: str) -> None:
    config_file = tmp_path / "n1.toml"
    config_file.write_text(line + "\n")
    setting = line.partition(" ")[0]
    with pytest.raises(ConfigError, match=rf"{setting} is no longer used.*tls_ca, tls_cert and tls_key"):
        load_config(config_file, BASE, TLS_ENV)


def test_durability_is_fsync_unless_set_to_none() -> None:
    assert load_config(None, BASE, TLS_ENV).durability == "fsync"
    assert load_config(None, BASE, {**TLS_ENV, "CP_DURABILITY": "none"}).durability == "none"
    assert load_config(None, {**BASE, "durability": "none"}, TLS_ENV).durability == "none"
    for value in ("off", "FSYNC", "fdatasync"):
        with pytest.raises(ConfigError, match="durability must be 'fsync' or 'none'"):
            load_config(None, {**BASE, "durability": value}, TLS_ENV)


def test_the_watch_history_holds_ten_thousand_revisions_unless_configured() -> None:
    # ServerConfig keeps its own literal (importing the state machine would slow every cpctl start):
    # this pins the two together.
    assert load_config(None, BASE, TLS_ENV).history_limit == DEFAULT_HISTORY_LIMIT == 10_000
    # That a configured limit reaches every server's state machine, tests/cluster/test_watch.py shows.
    assert load_config(None, {**BASE, "history_limit": 200}, TLS_ENV).history_limit == 200


def test_the_carry_stream_limit_is_a_setting() -> None:
    assert load_config(None, BASE, TLS_ENV).max_carry_streams_per_identity == 64
    assert (
        load_config(None, {**BASE, "max_carry_streams_per_identity": 512}, TLS_ENV).max_carry_streams_per_identity
        == 512
    )


def test_journal_files_live_in_the_data_dir() -> None:
    config = load_config(None, BASE, TLS_ENV)
    assert config.journal_file == Path("/tmp/cp-n1") / "raft.wal"
    # What servers before the durable journal wrote; migrated into raft.wal on start.
    assert config.legacy_journal_file == Path("/tmp/cp-n1") / "raft.journal"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"client_address": "0.0.0.0:7101"}, "advertise_client_address"),
        ({"raft_address": "0.0.0.0:7201"}, "wildcard"),
        ({"raft_address": "localhost:99999"}, "port in 1-65535"),
        ({"node_id": "bad id!"}, "member id"),
        ({"peers": ["n1=127.0.0.1:7202,127.0.0.1:7102"]}, "make them agree"),  # itself, elsewhere
        ({"peers": ["n2=127.0.0.1:7201,127.0.0.1:7102"]}, "raft addresses must be unique"),
        ({"peers": ["n2"]}, "ID=RAFT_HOST:PORT,CLIENT_HOST:PORT"),
        ({"colour": "blue"}, "unknown setting"),
        ({"server_stabilization_s": -1}, "server_stabilization_s"),
        ({"max_trailing_logs": 0}, "max_trailing_logs"),
        ({"dead_server_cleanup_s": 0.5}, "dead_server_cleanup_s must be 0"),
        ({"min_quorum": 0}, "min_quorum"),
        ({"max_carry_streams_per_identity": -1}, "max_carry_streams_per_identity must be >= 0"),
    ],
)
def test_settings_that_cannot_work_are_refused_with_the_reason(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {**BASE, **overrides}, TLS_ENV)


def test_missing_settings_are_named() -> None:
    with pytest.raises(ConfigError, match=r"missing setting.*data_dir"):
        load_config(None, {"node_id": "n1", "client_address": "127.0.0.1:1", "raft_address": "127.0.0.1:2"}, {})


def test_peers_from_the_environment_are_whitespace_separated() -> None:
    environ = {**TLS_ENV, "CP_PEERS": "n2=127.0.0.1:7202,127.0.0.1:7102 n3=127.0.0.1:7203,127.0.0.1:7103"}
    config = load_config(None, BASE, environ)
    assert [peer.id for peer in config.peers] == ["n2", "n3"]
    assert Peer.parse(config.peers[0].spec()) == config.peers[0]


@pytest.mark.parametrize("name", ["n1.toml", "n2.toml", "n3.toml"])
def test_the_deploy_examples_are_valid(name: str) -> None:
    config = load_config(REPO / "deploy" / name, {}, {})
    assert config.advertise_address.startswith("10.0.0.")
    assert len(config.peers) == 2
    # The names `cpctl certs issue ID --role server` writes, fsync spelled out, no password.
    node_id = config.node_id
    assert config.tls_ca == Path("/etc/controlplane/ca.pem")
    assert config.tls_cert == Path(f"/etc/controlplane/server-{node_id}.pem")
    assert config.tls_key == Path(f"/etc/controlplane/server-{node_id}-key.pem")
    assert config.durability == "fsync"
    assert not config.insecure_dev


def test_membership_autopilot_defaults_and_file_settings(tmp_path: Path) -> None:
    defaults = load_config(None, BASE, TLS_ENV)
    # Consul's stabilization time and trailing-log bound; cleanup off (a removal is permanent).
    assert (defaults.server_stabilization_s, defaults.max_trailing_logs) == (10.0, 250)
    assert (defaults.dead_server_cleanup_s, defaults.min_quorum) == (0.0, 3)
    assert not defaults.join
    config_file = tmp_path / "n4.toml"
    config_file.write_text("join = true\nserver_stabilization_s = 2.5\ndead_server_cleanup_s = 3600\nmin_quorum = 5\n")
    config = load_config(config_file, BASE, TLS_ENV)
    assert config.join and config.server_stabilization_s == 2.5
    assert (config.dead_server_cleanup_s, config.min_quorum) == (3600, 5)
    assert config.voter_marker_file == config.data_dir / "raft.voter"


def test_one_peer_list_serves_every_server() -> None:
    """A StatefulSet or compose file gives every server the same list: each drops its own entry."""
    shared = [f"n{i}=127.0.0.1:720{i},127.0.0.1:710{i}" for i in (1, 2, 3)]
    for node in (1, 2, 3):
        own = {"node_id": f"n{node}", "raft_address": f"127.0.0.1:720{node}", "client_address": f"127.0.0.1:710{node}"}
        config = load_config(None, {**BASE, **own, "peers": shared}, TLS_ENV)
        assert [peer.id for peer in config.peers] == [f"n{i}" for i in (1, 2, 3) if i != node]


def test_the_event_loop_is_uvloop_unless_asyncio_is_asked_for() -> None:
    assert load_config(None, {**BASE, **TLS_SETTINGS}, {}).event_loop == "uvloop"
    assert load_config(None, {**BASE, **TLS_SETTINGS}, {"CP_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    with pytest.raises(ConfigError, match="event_loop must be 'uvloop' or 'asyncio', not 'tokio'"):
        load_config(None, {**BASE, **TLS_SETTINGS, "event_loop": "tokio"}, {})
