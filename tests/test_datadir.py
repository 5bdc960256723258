"""The data directory and the files a server writes in it are private (datadir.py)."""

from __future__ import annotations

import stat
from pathlib import Path

from controlplane.server.datadir import create_private_file, ensure_private_directory, open_private_for_writing


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_data_dir_is_created_0700(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "data"
    ensure_private_directory(data_dir)
    assert _mode(data_dir) == 0o700


def test_an_existing_data_dir_others_can_enter_is_tightened(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    ensure_private_directory(data_dir)
    assert _mode(data_dir) == 0o700


def test_private_files_are_0600_even_when_they_existed_readable(tmp_path: Path) -> None:
    existing = tmp_path / "index.sqlite"
    existing.write_bytes(b"x")
    existing.chmod(0o644)
    create_private_file(existing)
    assert _mode(existing) == 0o600 and existing.read_bytes() == b"x"  # created, never truncated

    record = tmp_path / "record.json"
    record.write_text("old")
    record.chmod(0o644)
    with open(open_private_for_writing(record), "w") as out:
        out.write("new")
    assert _mode(record) == 0o600 and record.read_text() == "new"
