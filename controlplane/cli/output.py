"""Output and exit codes for every command, in one place."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Any, NoReturn

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


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def emit(output: Output, value: Any, text: str) -> None:
    """One answer in the form the caller asked for: ``value`` as JSON, or ``text`` for a person."""
    if output is Output.json:
        emit_json(value)
    else:
        typer.echo(text)
