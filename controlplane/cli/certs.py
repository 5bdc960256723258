"""`cpctl certs`: a cluster CA, and certificates for servers, agents and clients (mutual TLS).

``controlplane.tls`` (and with it ``cryptography``) is imported inside each command, only when it runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from controlplane.cli import app
from controlplane.cli.common import OutputOption, require_extra
from controlplane.cli.output import EXIT_ERROR, EXIT_USAGE, Output, emit, fail

certs_app = typer.Typer(
    help="Certificates for mutual TLS: make a cluster CA, issue certificates from it, inspect them.",
    no_args_is_help=True,
)
app.add_typer(certs_app, name="certs")

DEFAULT_DIR = Path("certs")
CaDir = Annotated[Path, typer.Option("--dir", help="The CA's directory (ca.pem, ca-key.pem)")]


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """A certificate problem or an unwritable file as one line and an exit code, never a traceback."""
    from controlplane.tls import TlsError

    try:
        yield
    except TlsError as exc:
        fail(str(exc), code=EXIT_USAGE)
    except OSError as exc:
        fail(f"{exc.filename or 'file'}: {exc.strerror or exc}", code=EXIT_ERROR)


@certs_app.command()
def init(
    directory: CaDir = DEFAULT_DIR,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing CA (its certificates stop verifying)")
    ] = False,
    output: OutputOption = Output.text,
) -> None:
    """Create the cluster CA: DIR/ca.pem (trusted by everyone) and DIR/ca-key.pem (signs; keep it secret)."""
    require_extra("server", "cpctl certs", modules=("cryptography",))
    from controlplane.tls import CA_KEY_FILE, init_ca

    with _errors():
        cert = init_ca(directory, force=force)
    key = directory / CA_KEY_FILE
    dir_flag = "" if directory == DEFAULT_DIR else f" --dir {directory}"
    emit(
        output,
        {"ca": str(cert), "key": str(key)},
        f"wrote {cert}  the CA certificate: give it to every server, agent and client\n"
        f"wrote {key}  the CA key (mode 0600): it signs every certificate, keep it secret\n"
        f"next: cpctl certs issue n1 --role server --san HOST{dir_flag}",
    )


@certs_app.command()
def issue(
    id_: Annotated[str, typer.Argument(metavar="ID", help="A node id (n1), a client name, or a web name")],
    role: Annotated[
        str,
        typer.Option(
            "--role",
            help="server, agent or client; or web: an HTTPS certificate for a gateway (--san its hosts), "
            "which speaks for no identity in the cluster",
        ),
    ],
    san: Annotated[
        list[str] | None, typer.Option("--san", help="A DNS name or IP address it is reached at (repeatable)")
    ] = None,
    directory: CaDir = DEFAULT_DIR,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the files here (default: the CA's directory)")
    ] = None,
    days: Annotated[int, typer.Option(help="Days of validity (never past the CA's own)")] = 825,
    renew_before: Annotated[
        float | None,
        typer.Option(
            help="Keep an existing pair instead if this CA signed it, it names every --san and it is valid "
            "for more than this many days more (for a job that runs on every start or from a timer)",
            min=0,
        ),
    ] = None,
    output: OutputOption = Output.text,
) -> None:
    """Issue a certificate and key for ID, signed by the CA: ROLE-ID.pem and ROLE-ID-key.pem (0600).

    An existing pair for the same identity is replaced (that is how a certificate is renewed),
    unless --renew-before finds it good for longer. A gateway's HTTPS certificate is `--role web`:
    never a server's, which may do anything.
    """
    require_extra("server", "cpctl certs", modules=("cryptography",))
    from controlplane.tls import ROLES, WEB_ROLE, Identity, describe, issue_web, pair_paths, worth_keeping
    from controlplane.tls import issue as issue_certificate

    if role not in (*ROLES, WEB_ROLE):
        fail(f"role {role!r} is not one of {', '.join((*ROLES, WEB_ROLE))}", code=EXIT_USAGE)
    with _errors():
        kept_cert, kept_key = pair_paths(out or directory, role, id_)
        if renew_before is not None and worth_keeping(
            directory, kept_cert, kept_key, sans=san or (), valid_for_days=renew_before
        ):
            kept = describe(kept_cert)
            until = kept["not_after"]
            emit(
                output,
                {
                    "cert": str(kept_cert),
                    "key": str(kept_key),
                    "identity": kept["identity"],
                    "kept": True,
                    "not_after": until,
                },
                f"kept {kept_cert}  valid until {until}, more than {renew_before:g} days from now",
            )
            return
        if role == WEB_ROLE:
            identity = None
            cert, key = issue_web(directory, id_, sans=san or (), out_dir=out, days=days)
        else:
            identity = Identity(role, id_)
            cert, key = issue_certificate(directory, identity, sans=san or (), out_dir=out, days=days)
        until = describe(cert)["not_after"]
    speaks_for = (
        f"certificate for {identity} ({identity.uri})"
        if identity is not None
        else f"HTTPS certificate for {', '.join(san or ())} (no cluster identity)"
    )
    emit(
        output,
        {
            "cert": str(cert),
            "key": str(key),
            "identity": None if identity is None else {"role": identity.role, "id": identity.id},
            "kept": False,
            "not_after": until,
        },
        f"wrote {cert}  {speaks_for}, valid until {until}\nwrote {key}  its key (mode 0600)",
    )


@certs_app.command()
def show(
    file: Annotated[Path, typer.Argument(help="A PEM certificate (or bundle)")],
    output: OutputOption = Output.text,
) -> None:
    """Show a certificate: its identity, issuer, validity, SANs, serial and SHA-256 fingerprint."""
    require_extra("server", "cpctl certs", modules=("cryptography",))
    from controlplane.tls import describe

    with _errors():
        info = describe(file)
    emit(output, info, "\n\n".join(_text(cert) for cert in [info, *info["others_in_file"]]))


def _text(cert: dict[str, Any]) -> str:
    identity = cert["identity"]
    lines = [
        ("identity", f"{identity['role']} {identity['id']}" if identity else "(none: no urn:controlplane: URI)"),
        ("subject", cert["subject"]),
        ("issuer", cert["issuer"]),
        ("CA", "yes" if cert["is_ca"] else "no"),
        ("not before", cert["not_before"]),
        ("not after", cert["not_after"]),
        ("SANs", ", ".join(cert["sans"]) or "(none)"),
        ("usages", ", ".join(cert["extended_key_usage"]) or "(any)"),
        ("serial", cert["serial"]),
        ("sha256", cert["sha256_fingerprint"]),
    ]
    return "\n".join(f"{name + ':':12} {value}" for name, value in lines)
