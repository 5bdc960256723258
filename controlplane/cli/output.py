"""Output and exit codes for every command, in one place."""

from __future__ import annotations

import dataclasses
import json
import sys
from enum import Enum, StrEnum
from typing import Annotated, Any, NoReturn

import typer


class Output(StrEnum):
    text = "text"
    json = "json"


# Exit codes: 0 success, 1 the cluster said no (error from the server), 2 bad usage or
# configuration, 3 the cluster could not be reached in time.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking (scripts)")]


def confirm(yes: bool, question: str) -> None:
    """Go on with a destructive command: --yes, or a "y" typed at a terminal. Never silently."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"refusing to {question.rstrip('?').split('?')[0]} without --yes (no terminal to ask)", code=EXIT_USAGE)
    if not typer.confirm(question[0].upper() + question[1:], default=False, err=True):
        fail("not done", code=EXIT_USAGE)


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def emit(output: Output, value: Any, text: str) -> None:
    """One answer in the form the caller asked for: ``value`` as JSON, or ``text`` for a person."""
    if output is Output.json:
        emit_json(value)
    else:
        typer.echo(text)


def plain(value: Any) -> Any:
    """A result (dataclasses, enums, tuples) as JSON-ready values; enums by name."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """Rows as left-aligned columns under a header line; "(none)" when there are none."""
    if not rows:
        return "(none)"
    cells = [headers, *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells
    )
