"""`cpctl models`: the replicated model registry and its search."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from controlplane.cli import app
from controlplane.cli.common import (
    EndpointsOption,
    OutputOption,
    TimeoutOption,
    client_credentials,
    connect,
    read_input,
    require_extra,
    require_reachable,
    resolve_endpoints,
    unavailable_message,
)
from controlplane.cli.output import EXIT_ERROR, EXIT_UNAVAILABLE, EXIT_USAGE, Output, emit, fail, plain, table
from controlplane.client import (
    AsyncClient,
    ControlPlaneError,
    Credentials,
    CredentialsError,
    DeadlineExceeded,
    InvalidArgument,
    Model,
    ModelVersion,
    Unavailable,
)
from controlplane.client._models import version_ref
from controlplane.state import limits
from gossip.artifacts import (
    DEFAULT_CHUNK_SIZE,
    ArtifactBusy,
    ArtifactCorrupt,
    ArtifactMismatch,
    ArtifactStore,
    ArtifactUnavailable,
    FetchResult,
    InvalidArtifactName,
    PublishResult,
    fetch_artifact,
)
from gossip.artifacts import publish as publish_artifact

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


def _metadata(items: list[str] | None, option: str = "--meta") -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"{option} takes KEY=VALUE, not {item!r}", code=EXIT_USAGE)
        out[key] = value
    return out


def _metrics(items: list[str] | None, option: str) -> dict[str, float]:
    out = {}
    for key, value in _metadata(items, option).items():
        try:
            out[key] = float(value)
        except ValueError:
            fail(f"{option} takes NAME=NUMBER, not {key}={value}", code=EXIT_USAGE)
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
    version_tag: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE tag of this version, changeable later (repeat)")
    ] = None,
    metric: Annotated[list[str] | None, typer.Option(help="NAME=NUMBER measured value, e.g. accuracy=0.91")] = None,
    run: Annotated[str, typer.Option(help="The run (training job, experiment) that produced it")] = "",
    parent: Annotated[str, typer.Option(help="MODEL/VERSION it was derived from (must be registered)")] = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Register the next version of NAME (creating the model on its first version)."""
    if size < 0:
        fail(f"--size must be 0 or more, not {size}", code=EXIT_USAGE)
    version_tags, metrics = _metadata(version_tag, "--version-tag"), _metrics(metric, "--metric")
    if parent:
        try:
            version_ref(parent)  # a usage error before any connection, not after
        except InvalidArgument as exc:
            fail(f"--parent: {exc.message}", code=EXIT_USAGE)
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
            version_tags=version_tags,
            metrics=metrics,
            run_id=run,
            parent=parent or None,
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
            fields = plain(found)
            fields["parent"] = str(found.parent) if found.parent is not None else ""  # MODEL/VERSION, as typed
            text = "\n".join(f"{key}: {value}" for key, value in fields.items())
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


class SearchOrder(enum.StrEnum):
    relevance = "relevance"
    name = "name"
    updated = "updated"
    created = "created"


@models_app.command()
def search(
    query: Annotated[
        str, typer.Argument(help="Terms, each a prefix, all required; tag:X family:X status:X format:X owner:X filter")
    ] = "",
    tag: Annotated[str, typer.Option(help="Only models with this tag")] = "",
    family: Annotated[str, typer.Option(help="Only this family")] = "",
    format_: Annotated[str | None, typer.Option("--format", help="Only models with a version in this format")] = None,
    status: Annotated[str | None, typer.Option(help="Only models with a version in this status")] = None,
    owner: Annotated[str, typer.Option(help="Only models of this owner")] = "",
    limit: Annotated[int, typer.Option(help="Results per page")] = 20,
    offset: Annotated[int, typer.Option(help="Skip this many results (or use --page-token)")] = 0,
    sort: Annotated[
        SearchOrder, typer.Option(help="relevance, name, updated or created (the newest first)")
    ] = SearchOrder.relevance,
    page_token: Annotated[
        str, typer.Option(help="The next page: the token the previous page printed (same query, filters, sort)")
    ] = "",
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Find models by name fragments, family, tags and description.

    Filters can be typed in the query too ('tag:chat family:qwen 7b'); filters alone list their models.
    """
    with connect(endpoints, timeout) as client:
        result = client.models.search(
            query,
            tag=tag,
            family=family,
            format=format_,
            status=status,
            owner=owner,
            limit=limit,
            offset=offset,
            sort=sort.value,
            page_token=page_token,
        )
    lines = [_model_line(hit.model) for hit in result.hits] or ["(no match)"]
    if result.suggestions:
        lines.append("did you mean: " + ", ".join(repr(suggestion) for suggestion in result.suggestions))
    lines.append(
        f"\n{len(result.hits)} of {result.total} match(es), {result.query_ms:.2f} ms ({result.engine}), "
        f"revision {result.revision}"
    )
    if result.next_page_token:
        lines.append(f"next page: --page-token {result.next_page_token}")
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


@models_app.command("update-version")
def update_version(
    name: str,
    version: Annotated[int, typer.Argument(min=1)],
    set_tag: Annotated[list[str] | None, typer.Option(help="KEY=VALUE to add or replace (repeat)")] = None,
    remove_tag: Annotated[list[str] | None, typer.Option(help="KEY to remove (repeat)")] = None,
    set_metric: Annotated[list[str] | None, typer.Option(help="NAME=NUMBER to add or replace (repeat)")] = None,
    remove_metric: Annotated[list[str] | None, typer.Option(help="NAME to remove (repeat)")] = None,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Set and remove a version's tags and metrics, in one change (its artifact and lineage stay)."""
    tags, metrics = _metadata(set_tag, "--set-tag"), _metrics(set_metric, "--set-metric")
    if not (tags or metrics or remove_tag or remove_metric):
        fail("nothing to update: give --set-tag, --remove-tag, --set-metric or --remove-metric", code=EXIT_USAGE)
    with connect(endpoints, timeout) as client:
        found = client.models.update_version(
            name,
            version,
            set_tags=tags,
            remove_tags=remove_tag or (),
            set_metrics=metrics,
            remove_metrics=remove_metric or (),
        )
    shown = [f"{key}={value}" for key, value in sorted(found.tags.items())]
    shown += [f"{key}={value:g}" for key, value in sorted(found.metrics.items())]
    emit(output, plain(found), f"{name} version {version}: {' '.join(shown) or 'no tags or metrics'}")


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


# --- artifacts: publish a local file, fetch from the nodes that hold it ----------------------------


@models_app.command()
def publish(
    name: str,
    file: Annotated[Path, typer.Argument(help="The artifact file", exists=True, dir_okay=False)],
    dir_: Annotated[Path, typer.Option("--dir", help="The artifact store to put it in (the agent's --artifact-dir)")],
    node_id: Annotated[str, typer.Option("--node-id", help="The node that serves DIR (its agent's --id)")],
    format_: Annotated[
        str | None,
        typer.Option("--format", help="safetensors, gguf, onnx, pt or other [default: from FILE's extension]"),
    ] = None,
    status: Annotated[str, typer.Option(help="For a new version: ready or pending")] = "ready",
    source: Annotated[str, typer.Option(help="For a new version: where the artifact came from (URI)")] = "",
    description: Annotated[str, typer.Option(help="For a new model")] = "",
    family: Annotated[str, typer.Option(help="For a new model")] = "",
    tag: Annotated[list[str] | None, typer.Option(help="For a new model (repeat for several)")] = None,
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Put FILE into the artifact store DIR as a version of NAME and record NODE_ID as its replica.

    The version is the one whose sha256 is FILE's; when there is none, the next version is registered
    with FILE's sha256 and size. The file is copied into DIR and verified there; an agent serving DIR
    (cpctl agent --artifact-dir DIR) then serves it to nodes that fetch it (cpctl models fetch).
    The same as gossip.artifacts.publish from a program.
    """
    resolved = resolve_endpoints(endpoints)
    credentials = client_credentials(endpoints, servers=resolved)
    try:  # readable before anything else (the library would find out only after connecting)
        with file.open("rb"):
            pass
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}", code=EXIT_USAGE)
    if problem := limits.check_model_name(name):
        fail(problem, code=EXIT_USAGE)
    require_reachable(resolved)
    store = ArtifactStore(dir_)

    async def run() -> PublishResult:
        async with AsyncClient(resolved, timeout=timeout, credentials=credentials) as client:
            return await publish_artifact(
                client,
                store,
                name,
                file,
                node_id=node_id,
                format=format_,
                status=status,
                source_uri=source,
                description=description,
                family=family,
                tags=tag or (),
            )

    with _artifact_errors(resolved, credentials, interrupted="interrupted; run the same command again"):
        result = asyncio.run(run())
    text = (
        f"{name} version {result.version}{' (registered)' if result.registered else ''}: {result.path} "
        f"({_size(result.size)}, sha256 {result.sha256[:12]}); replicas: {', '.join(result.replicas)}"
    )
    value = {
        "model": result.model,
        "version": result.version,
        "sha256": result.sha256,
        "size_bytes": result.size,
        "path": str(result.path),
        "registered": result.registered,
        "replicas": list(result.replicas),
    }
    emit(output, value, text)


@contextlib.contextmanager
def _progress_bar(label: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """``progress(done_bytes, total_bytes)`` drawing a bar with size, rate and ETA on a terminal's stderr."""
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not (enabled and console.is_terminal)) as bar:
        task = bar.add_task(label, total=None)
        started = False

        def update(done: int, total: int) -> None:
            nonlocal started
            if not started:
                # Resumed bytes are not transfer speed: start the rate (and ETA) from here.
                bar.reset(task, total=total, completed=done)
                started = True
            else:
                bar.update(task, completed=done, total=total)

        yield update


@contextlib.contextmanager
def _artifact_errors(resolved: str, credentials: Credentials, interrupted: str) -> Iterator[None]:
    """Errors of a publish or a fetch as a message and an exit code (as ``connect`` does for the sync
    commands); ``interrupted``: what to say on Ctrl-C."""
    try:
        yield
    except (InvalidArtifactName, InvalidArgument) as exc:
        fail(str(exc), code=EXIT_USAGE)
    except ArtifactUnavailable as exc:
        fail(str(exc), code=EXIT_UNAVAILABLE)
    except (ArtifactCorrupt, ArtifactBusy, ArtifactMismatch) as exc:
        fail(str(exc), code=EXIT_ERROR)
    except (Unavailable, DeadlineExceeded) as exc:
        fail(unavailable_message(exc, resolved, credentials), code=EXIT_UNAVAILABLE)
    except ValueError as exc:  # before ControlPlaneError: a bad chunk size is both
        fail(str(exc), code=EXIT_USAGE)
    except ControlPlaneError as exc:
        fail(f"{type(exc).__name__}: {exc.message}", code=EXIT_ERROR)
    except OSError as exc:
        if exc.filename:  # a file of the store's (its disk full, read-only)
            fail(f"{exc.filename}: {exc.strerror or exc}", code=EXIT_ERROR)
        fail(f"{exc} (endpoints: {resolved})", code=EXIT_UNAVAILABLE)  # the network's
    except KeyboardInterrupt:
        fail(interrupted)


def _fetch_text(result: FetchResult, node_id: str) -> str:
    where = (
        f"{result.model} version {result.version}: {result.path} ({_size(result.size)}, sha256 {result.sha256[:12]})"
    )
    if result.already_present:
        lines = [f"{where} already here"]
    else:
        rate = result.bytes_fetched / result.seconds / 1e6 if result.seconds > 0 else 0.0
        sources = ", ".join(f"{h} ({n})" for h, n in sorted(result.by_holder.items())) or "-"
        lines = [
            f"{where} verified",
            f"fetched {result.chunks_fetched} chunk(s) ({_size(result.bytes_fetched)}) in {result.seconds:.1f} s "
            f"({rate:.1f} MB/s) from {sources}; {result.chunks_resumed} resumed",
        ]
        lines += [f"not used: {h}: {why}" for h, why in sorted(result.dropped.items())]
        if result.repaired:
            lines.append(f"re-fetched after the whole-file check: chunk(s) {', '.join(map(str, result.repaired))}")
    if result.replica_recorded:
        lines.append(f"recorded {node_id} as a replica")
    else:
        lines.append("not recorded as a replica (give --node-id, the id of the agent serving this directory)")
    return "\n".join(lines)


@models_app.command("fetch")
def fetch_(
    name: str,
    version: Annotated[str, typer.Argument(help="A version number, alias or 'latest'")],
    dir_: Annotated[Path, typer.Option("--dir", help="The artifact store to fetch into (an agent's --artifact-dir)")],
    node_id: Annotated[
        str, typer.Option("--node-id", help="This node's id: recorded as a replica once the artifact verified")
    ] = "",
    parallel: Annotated[int, typer.Option(min=1, max=64, help="Chunk streams at once, spread over holders")] = 4,
    chunk_size: Annotated[int, typer.Option(help="Bytes per chunk (a resumed download keeps its own)")] = (
        DEFAULT_CHUNK_SIZE
    ),
    endpoints: EndpointsOption = None,
    output: OutputOption = Output.text,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Fetch a version's artifact into DIR from the nodes holding it, verify it, and record this node.

    Chunks come from several holders at once, fastest first; each is checked against its holder's
    manifest and the whole file against the registry's sha256. Interrupted, it resumes where it
    stopped when run again. Exit 3 when no holder can deliver it now, 1 when every copy is corrupt.
    """
    require_extra("gossip", "cpctl models fetch", modules=("numpy", "networkx"))
    resolved = resolve_endpoints(endpoints)
    credentials = client_credentials(endpoints, servers=resolved)
    require_reachable(resolved)
    holder_tls = None
    if credentials.secure:
        # The holders' artifact ports take only certificates from the cluster CA (docs/artifacts.md).
        if credentials.cert is None:
            fail(
                "fetching artifacts from a TLS cluster needs a client certificate (--cert, --key: cpctl certs issue "
                "NAME --role client) whose identity holds models:read; a bearer token alone is not enough",
                code=EXIT_USAGE,
            )
        try:
            holder_tls = credentials.channel_credentials()
        except CredentialsError as exc:
            fail(str(exc), code=EXIT_USAGE)
    store = ArtifactStore(dir_)
    # The library's warnings (a holder dropped, a chunk refused) are summed up in the result printed at
    # the end; only errors go to stderr meanwhile, never into the JSON on stdout.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )

    async def run() -> FetchResult:
        async with AsyncClient(resolved, timeout=timeout, credentials=credentials) as client:
            with _progress_bar(f"{name} {version}", enabled=output is Output.text) as progress:
                return await fetch_artifact(
                    client,
                    name,
                    version,
                    store,
                    node_id=node_id or None,
                    parallel=parallel,
                    chunk_size=chunk_size,
                    progress=progress,
                    channel_credentials=holder_tls,
                )

    with _artifact_errors(
        resolved, credentials, "interrupted; the chunks fetched so far are kept: run the same command again"
    ):
        result = asyncio.run(run())
    emit(output, plain(result) | {"path": str(result.path)}, _fetch_text(result, node_id))
