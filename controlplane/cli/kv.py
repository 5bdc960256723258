"""`cpctl kv`: the replicated key-value namespace."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from controlplane.cli import app
from controlplane.cli.common import EndpointsOption, OutputOption, TimeoutOption, connect, kv_to_json, printable
from controlplane.cli.output import EXIT_ERROR, Output, emit, emit_json, fail
from controlplane.client import Consistency

kv_app = typer.Typer(help="Read and write the replicated key-value namespace.", no_args_is_help=True)
app.add_typer(kv_app, name="kv")


def _value(value: str | None, file: Path | None) -> bytes:
    if (value is None) == (file is None):
        fail("give the value either as an argument or with --file (use --file - for standard input)", code=2)
    if file is None:
        assert value is not None
        return value.encode("utf-8")
    return sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()


@kv_app.command()
def put(
    key: str,
    value: Annotated[str | None, typer.Argument()] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Read the value from a file (- for stdin)")] = None,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Create or replace KEY."""
    data = _value(value, file)
    with connect(endpoints, timeout) as client:
        result = client.put(key, data)
    emit(output, {"revision": result.revision, "kv": kv_to_json(result.kv)}, f"OK revision {result.revision}")


@kv_app.command()
def get(
    key: str,
    consistency: Annotated[str, typer.Option(help="linearizable or stale")] = "linearizable",
    min_revision: Annotated[int, typer.Option(help="Wait until this revision is applied (read-your-writes)")] = 0,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Print KEY's value (exit code 1 when it does not exist)."""
    level = _consistency(consistency)
    with connect(endpoints, timeout) as client:
        kv = client.get(key, consistency=level, min_revision=min_revision)
    if output is Output.json:
        emit_json({"found": kv is not None, "kv": kv_to_json(kv)})
    elif kv is not None:
        typer.echo(printable(kv.value))
    if kv is None:
        if output is Output.text:
            typer.echo(f"key {key!r} not found", err=True)
        raise typer.Exit(EXIT_ERROR)


@kv_app.command()
def delete(
    key: str,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Delete KEY (succeeds when it does not exist)."""
    with connect(endpoints, timeout) as client:
        result = client.delete(key)
    emit(
        output,
        {"revision": result.revision, "deleted": result.deleted},
        f"{'deleted' if result.deleted else 'no such key'} (revision {result.revision})",
    )


@kv_app.command("list")
def list_(
    prefix: Annotated[str, typer.Argument()] = "",
    limit: Annotated[int, typer.Option(help="At most this many keys (0: all, up to 10,000)")] = 0,
    keys_only: Annotated[bool, typer.Option(help="Omit values")] = False,
    consistency: Annotated[str, typer.Option(help="linearizable or stale")] = "linearizable",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """List keys under PREFIX in lexical order."""
    with connect(endpoints, timeout) as client:
        result = client.list(prefix, limit=limit, keys_only=keys_only, consistency=_consistency(consistency))
    if output is Output.json:
        emit_json({"revision": result.revision, "more": result.more, "kvs": [kv_to_json(kv) for kv in result.kvs]})
        return
    for kv in result.kvs:
        typer.echo(kv.key if keys_only else f"{kv.key}\t{printable(kv.value)}")
    if result.more:
        typer.echo(f"... more keys after {result.kvs[-1].key!r} (raise --limit)", err=True)


@kv_app.command()
def cas(
    key: str,
    value: Annotated[str | None, typer.Argument()] = None,
    expected_revision: Annotated[
        int, typer.Option("--expected-revision", help="KEY's mod_revision now; 0 means KEY must not exist")
    ] = 0,
    delete: Annotated[bool, typer.Option("--delete", help="Delete instead of writing")] = False,
    file: Annotated[Path | None, typer.Option("--file", "-f")] = None,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Compare-and-swap: write (or delete) KEY only if its revision is still the expected one.

    Exit code 1 when another write got there first.
    """
    data = b"" if delete and value is None and file is None else _value(value, file)
    with connect(endpoints, timeout) as client:
        result = client.compare_and_swap(key, data, expected_revision, delete=delete)
    if output is Output.json:
        emit_json({"revision": result.revision, "succeeded": result.succeeded, "kv": kv_to_json(result.kv)})
    elif result.succeeded:
        typer.echo(f"OK revision {result.revision}")
    else:
        current = result.kv.mod_revision if result.kv else 0
        typer.echo(f"not swapped: {key!r} is at revision {current}, not {expected_revision}", err=True)
    if not result.succeeded:
        raise typer.Exit(EXIT_ERROR)


@kv_app.command()
def watch(
    prefix: Annotated[str, typer.Argument()] = "",
    from_revision: Annotated[int, typer.Option(help="First revision to show (0: changes from now on)")] = 0,
    count: Annotated[int, typer.Option(help="Stop after this many events (0: until Ctrl-C)")] = 0,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
) -> None:
    """Stream changes under PREFIX; resumes across server failures without gaps or duplicates."""
    seen = 0
    with connect(endpoints, 10.0) as client, client.watch(prefix, from_revision=from_revision) as stream:
        try:
            for event in stream:
                if output is Output.json:
                    line = {"revision": event.revision, "type": event.type.name, "key": event.key}
                    line["kv"] = kv_to_json(event.kv)
                    sys.stdout.write(json.dumps(line) + "\n")
                else:
                    value = printable(event.kv.value) if event.kv is not None else ""
                    typer.echo(f"{event.revision}\t{event.type.name}\t{event.key}\t{value}")
                sys.stdout.flush()
                seen += 1
                if count and seen >= count:
                    break
        except KeyboardInterrupt:
            pass


def _consistency(name: str) -> Consistency:
    try:
        return Consistency[name.upper()]
    except KeyError:
        fail(f"unknown consistency {name!r}; use linearizable or stale", code=2)
