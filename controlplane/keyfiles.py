"""Private key and token files: the permission check every holder of a secret makes, without
``cryptography`` (the SDK and the client commands use it; ``pip install controlplane`` has no
cryptography, only the server, gateway and agent extras do)."""

from __future__ import annotations

from pathlib import Path

from controlplane.errors import InvalidArgument


class TlsError(InvalidArgument, ValueError):
    """A certificate, key or CA problem, with a message a person can act on."""


def check_key_permissions(path: Path) -> None:
    """Refuse a private key file that is missing, unreadable, or open to group or others (as ssh does)."""
    where = path.absolute()
    try:
        mode = path.stat().st_mode
        with path.open("rb"):
            pass
    except FileNotFoundError as exc:
        raise TlsError(f"key file {where} does not exist") from exc
    except OSError as exc:
        raise TlsError(f"cannot read key file {where}: {exc.strerror}") from exc
    if mode & 0o077:
        raise TlsError(
            f"key file {where} is open to group or others (mode {mode & 0o777:04o}); "
            f"make it private with: chmod 600 {where}"
        )
