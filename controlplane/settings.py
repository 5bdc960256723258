"""One settings model for the daemons (``cpctl serve``, ``gateway`` and ``agent``).

Each daemon's settings are a frozen dataclass, and every field of it is a setting, read from three
places, each overriding the one before:

1. the TOML file given with ``--config``: ``name = value``; a field that is itself a dataclass is a
   ``[name]`` table;
2. the environment: the daemon's prefix and the name in capitals (``CP_NODE_ID``, ``CP_AGENT_TTL``,
   ``CP_GATEWAY_LISTEN``); a table's fields add the table's name (``CP_RAFT_TICK_S``). An empty
   variable counts as unset;
3. the command's flags, the ones given on the command line only (a flag left at its default does
   not hide the file or the environment).

Every value is checked against its field's type, wherever it comes from. A file value must already
have the type (``ttl = "10"`` is refused: TOML has numbers); an environment value is text and must
parse (``true``/``false``, ``1``/``0``, ``yes``/``no`` for switches; whitespace between the items
of a list; numbers finite). An empty path in the file is unset, as an empty variable is. An
unknown name in the file, or a value that does not fit, is refused with a ``SettingsError`` naming
the setting and where the value came from, before anything starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from controlplane.errors import InvalidArgument

__all__ = ["Parser", "SettingsError", "env_names", "load", "read_file"]

#: A field's own reading of a value: (value, where it came from, is it text from the environment).
Parser = Callable[[Any, str, bool], Any]

_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")


class SettingsError(InvalidArgument, ValueError):
    """A setting that is unknown or whose value does not fit; the message names it and its source."""


def read_file(path: Path) -> dict[str, Any]:
    """The settings in a TOML file."""
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None


def env_names(cls: type, prefix: str, no_env: frozenset[str] = frozenset()) -> dict[str, str]:
    """Every setting of ``cls`` (``table.field`` for a table's) and its environment variable."""
    names = {}
    for field, hint in _hints(cls).items():
        if _is_table(hint):
            for inner in _hints(hint):
                names[f"{field}.{inner}"] = f"{prefix}{field.upper()}_{inner.upper()}"
        elif field not in no_env:
            names[field] = f"{prefix}{field.upper()}"
    return names


def load(
    cls: type,
    *,
    prefix: str,
    file_values: Mapping[str, Any] | None = None,
    file_name: str = "the config file",
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    parsers: Mapping[str, Parser] | None = None,
    ignore: frozenset[str] = frozenset(),
    no_env: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The settings of ``cls`` given in the file, the environment and the flags, merged in that
    order and checked: field name -> value (a table's as an instance of its dataclass, built from
    its defaults and what was given). Fields given nowhere are left out, so the dataclass's
    defaults apply. ``parsers`` read the fields whose type needs more than the rules above;
    ``ignore`` names file keys the caller handles itself; ``no_env`` fields the environment may
    not set (a switch that turns security off must not come from a variable inherited by accident)."""
    hints = _hints(cls)
    parsers = parsers or {}
    given: dict[str, Any] = {}
    tables: dict[str, dict[str, Any]] = {}

    def take(field: str, value: Any, where: str, text: bool) -> None:
        hint = hints[field]
        parser = parsers.get(field)
        given[field] = parser(value, where, text) if parser else _coerce(value, hint, where, text)

    unknown = []
    for key, value in (file_values or {}).items():
        where = f"{key} in {file_name}"
        if key in ignore:
            continue
        if key not in hints:
            unknown.append(key)
        elif _is_table(hints[key]):
            if not isinstance(value, dict):
                raise SettingsError(f"{where} must be a [{key}] table")
            inner_hints = _hints(hints[key])
            strays = sorted(set(value) - set(inner_hints))
            if strays:
                raise SettingsError(f"unknown setting(s) in [{key}] of {file_name}: {', '.join(strays)}")
            tables[key] = {
                name: _coerce(item, inner_hints[name], f"{key}.{name} in {file_name}", False)
                for name, item in value.items()
            }
        else:
            take(key, value, where, False)
    if unknown:
        raise SettingsError(f"unknown setting(s) in {file_name}: {', '.join(sorted(unknown))}")

    environ = {} if environ is None else environ
    for name, variable in env_names(cls, prefix, no_env).items():
        text = environ.get(variable, "")
        if text == "":
            continue
        field, _, inner = name.partition(".")
        if inner:
            tables.setdefault(field, {})[inner] = _coerce(text, _hints(hints[field])[inner], variable, True)
        else:
            take(field, text, variable, True)

    strays = sorted(set(flags or {}) - set(hints))
    if strays:
        raise SettingsError(f"unknown setting(s): {', '.join(strays)}")
    for field, value in (flags or {}).items():
        take(field, value, f"{field} (a flag)", False)

    for field, values in tables.items():
        given[field] = hints[field](**values)
    return given


def _hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _is_table(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _coerce(value: Any, hint: Any, where: str, text: bool) -> Any:
    """``value`` as ``hint`` says, or SettingsError. ``text``: it is an environment variable's."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None: None is the default, never given
        (hint,) = [arg for arg in args if arg is not type(None)]
        if hint is Path and value == "":
            return None  # an empty path in a file is unset, as an empty variable is
        return _coerce(value, hint, where, text)
    if origin is typing.Literal:
        if value not in args:
            raise SettingsError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
        return value
    if origin in (tuple, list):
        items = value.split() if text and isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise SettingsError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(item, args[0], where, text) for item in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if text and isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise SettingsError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise SettingsError(f"{where}: expected a whole number, got {value!r}")
    if hint is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif text and isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value.strip())
        if number is None or not math.isfinite(number):
            raise SettingsError(f"{where}: expected a number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise SettingsError(f"{where}: expected text, got {value!r}")
    if hint is Path:
        if isinstance(value, (str, Path)) and str(value):
            return Path(value)
        raise SettingsError(f"{where}: expected a path, got {value!r}")

    raise TypeError(f"{where}: no rule reads a setting of type {hint!r}: give it a parser")  # a bug, not input
