"""`cpctl models`: the replicated model registry and its search."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from controlplane.cli import app
from controlplane.cli.common import EndpointsOption, OutputOption, TimeoutOption, connect, read_input
from controlplane.cli.output import EXIT_USAGE, Output, emit, fail, plain, table
from controlplane.client import Model, ModelVersion

models_app = typer.Typer(help="The model registry: versions, aliases, replicas, search.", no_args_is_help=True)
app.add_typer(models_app, name="models")

IMPORT_BATCH = 1000


def _size(size_bytes: int) -> str:
    value = float(size_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size_bytes)


def _version_rows(versions: tuple[ModelVersion, ...] | list[ModelVersion], aliases: dict[str, int]) -> str:
    by_version: dict[int, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(number, []).append(alias)
    rows = [
        [
            v.version,
            v.status.name.lower(),
            v.format.name.lower(),
            _size(v.size_bytes),
            v.sha256[:12],
            ",".join(sorted(by_version.get(v.version, []))) or "-",
            ",".join(v.replicas) or "-",
        ]
        for v in versions
    ]
    return table(rows, ["VERSION", "STATUS", "FORMAT", "SIZE", "SHA256", "ALIASES", "REPLICAS"])


def _model_line(model: Model) -> str:
    tags = f" [{', '.join(model.tags)}]" if model.tags else ""
    family = f" ({model.family})" if model.family else ""
    return f"{model.name}{family}{tags}: {model.version_count} version(s), latest {model.latest_version}"


def _metadata(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--meta takes KEY=VALUE, not {item!r}", code=EXIT_USAGE)
        out[key] = value
    return out


@models_app.command()
def register(
    name: str,
    sha256: Annotated[str, typer.Option(help="The artifact's sha256 (64 hex digits)")],
    size: Annotated[int, typer.Option(help="The artifact's size in bytes")],
    format_: Annotated[str, typer.Option("--format", help="safetensors, gguf, onnx, pt or other")],
    source: Annotated[str, typer.Option(help="Where the artifact can be fetched (URI)")] = "",
    status: Annotated[str, typer.Option(help="pending (default) or ready")] = "pending",
    description: Annotated[str, typer.Option(help="For a new model")] = "",
    family: Annotated[str, typer.Option(help="For a new model")] = "",
    tag: Annotated[list[str] | None, typer.Option(help="For a new model (repeat for several)")] = None,
    owner: Annotated[str, typer.Option(help="For a new model")] = "",
    meta: Annotated[list[str] | None, typer.Option(help="KEY=VALUE metadata (repeat for several)")] = None,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Register the next version of NAME (creating the model on its first version)."""
    with connect(endpoints, timeout) as client:
        result = client.models.register(
            name,
            sha256,
            size,
            format_,
            source_uri=source,
            metadata=_metadata(meta),
            status=status,
            description=description,
            family=family,
            tags=tag or (),
            owner=owner,
        )
    created = " (new model)" if result.model_created else ""
    emit(output, plain(result), f"{name} version {result.version.version}{created}")


@models_app.command()
def show(
    name: str,
    version: Annotated[str | None, typer.Argument(help="A version number, alias or 'latest'")] = None,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """A model and its versions, or one version."""
    with connect(endpoints, timeout) as client:
        if version is not None:
            found = client.models.get_version(name, version)
            text = "\n".join(f"{key}: {value}" for key, value in plain(found).items())
            emit(output, plain(found), text)
            return
        detail = client.models.get(name)
    model = detail.model
    text = _model_line(model)
    if model.description:
        text += f"\n{model.description}"
    text += "\n\n" + _version_rows(detail.versions, model.aliases)
    emit(output, plain(detail), text)


@models_app.command("list")
def list_(
    prefix: Annotated[str, typer.Argument(help="Only names starting with this")] = "",
    limit: Annotated[int, typer.Option(help="At most this many (0: the server maximum)")] = 0,
    start_after: Annotated[str, typer.Option(help="Continue after this name")] = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Models by name."""
    with connect(endpoints, timeout) as client:
        result = client.models.list(prefix, start_after=start_after, limit=limit)
    text = "\n".join(_model_line(m) for m in result.models) or "(none)"
    if result.more:
        text += f"\n... more: --start-after {result.models[-1].name}"
    emit(output, plain(result), text)


@models_app.command()
def search(
    query: Annotated[str, typer.Argument(help="Terms; each matches as a prefix, all must match")],
    tag: Annotated[str, typer.Option(help="Only models with this tag")] = "",
    family: Annotated[str, typer.Option(help="Only this family")] = "",
    format_: Annotated[str | None, typer.Option("--format", help="Only models with a version in this format")] = None,
    status: Annotated[str | None, typer.Option(help="Only models with a version in this status")] = None,
    limit: Annotated[int, typer.Option(help="Results per page")] = 20,
    offset: Annotated[int, typer.Option(help="Skip this many results")] = 0,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Find models by name fragments, family, tags and description."""
    with connect(endpoints, timeout) as client:
        result = client.models.search(
            query, tag=tag, family=family, format=format_, status=status, limit=limit, offset=offset
        )
    lines = [_model_line(hit.model) for hit in result.hits] or ["(no match)"]
    lines.append(
        f"\n{len(result.hits)} of {result.total} match(es), {result.query_ms:.2f} ms ({result.engine}), "
        f"revision {result.revision}"
    )
    emit(output, plain(result), "\n".join(lines))


@models_app.command()
def alias(
    name: str,
    alias_: Annotated[str, typer.Argument(metavar="ALIAS", help="e.g. prod")],
    version: Annotated[int, typer.Argument(help="The version it points at; 0 removes the alias")],
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Point ALIAS at VERSION, atomically."""
    with connect(endpoints, timeout) as client:
        model = client.models.set_alias(name, alias_, version)
    text = f"{name}: {alias_} -> {version}" if version else f"{name}: alias {alias_} removed"
    emit(output, plain(model), text)


@models_app.command()
def status(
    name: str,
    version: int,
    new_status: Annotated[str, typer.Argument(metavar="STATUS", help="ready, failed, deprecated or pending")],
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Move a version to another status."""
    with connect(endpoints, timeout) as client:
        found = client.models.set_status(name, version, new_status)
    emit(output, plain(found), f"{name} version {version}: {found.status.name.lower()}")


@models_app.command()
def replica(
    name: str,
    version: int,
    node_id: str,
    remove: Annotated[bool, typer.Option("--remove", help="The node no longer holds it")] = False,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Record that NODE_ID holds (or, with --remove, no longer holds) a version's artifact."""
    with connect(endpoints, timeout) as client:
        if remove:
            found = client.models.remove_replica(name, version, node_id)
        else:
            found = client.models.add_replica(name, version, node_id)
    emit(output, plain(found), f"{name} version {version} replicas: {', '.join(found.replicas) or 'none'}")


@models_app.command()
def delete(
    name: str,
    version: Annotated[int | None, typer.Argument(help="Delete only this version")] = None,
    force: Annotated[
        bool, typer.Option(help="Also remove aliases pointing at it / delete a model with versions")
    ] = False,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Delete a version, or a whole model."""
    with connect(endpoints, timeout) as client:
        if version is None:
            deleted = client.models.delete(name, force=force)
        else:
            deleted = client.models.delete_version(name, version, force=force)
    what = name if version is None else f"{name} version {version}"
    emit(output, {"deleted": deleted}, f"deleted {what}" if deleted else f"{what} did not exist")


def _read_catalogue(file: Path) -> list[dict[str, Any]]:
    """A catalogue: a JSON or YAML list of versions, or JSON lines (one version per line)."""
    raw = read_input(file)
    try:
        loaded: Any = yaml.safe_load(raw) if not raw.lstrip().startswith("{") else None
    except yaml.YAMLError:
        loaded = None
    if loaded is None:
        try:
            loaded = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            fail(f"{file} is neither a JSON/YAML list nor JSON lines: {exc}", code=EXIT_USAGE)
    if not isinstance(loaded, list) or not all(isinstance(item, dict) for item in loaded):
        fail(f"{file} must hold a list of versions (mappings with model, sha256, size_bytes, format, ...)")
    return loaded


def _batches(items: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@models_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="JSON/YAML list or JSON lines of versions (- for stdin)")],
    batch: Annotated[int, typer.Option(help="Versions per request (one log entry each)")] = IMPORT_BATCH,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 60.0,
) -> None:
    """Register a catalogue of versions in bulk; each batch is all or nothing."""
    items = _read_catalogue(file)
    registered = created = 0
    started = time.monotonic()
    with connect(endpoints, timeout) as client:
        for chunk in _batches(items, max(1, batch)):
            result = client.models.bulk_register(chunk)
            registered += len(result.versions)
            created += result.models_created
    elapsed = time.monotonic() - started
    emit(
        output,
        {"versions": registered, "models_created": created, "seconds": round(elapsed, 3)},
        f"registered {registered} version(s), {created} new model(s) in {elapsed:.1f} s",
    )
