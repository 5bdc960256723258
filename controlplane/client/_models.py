"""The model registry for the SDK (``client.models``): result types, request builders, conversions.

Like ``_ports``, no protobuf type reaches a caller: results are frozen dataclasses whose fields carry
the names of ``proto/controlplane/v1/models.proto``; maps become dicts and repeated fields tuples.
"""

from __future__ import annotations

import enum
import numbers
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane import errors
from controlplane.client._base import Rpc
from controlplane.client._ports import convert, revision_of
from controlplane.v1 import models_pb2

__all__ = [
    "BulkRegistration",
    "Model",
    "ModelDetail",
    "ModelEvent",
    "ModelFormat",
    "ModelList",
    "ModelVersion",
    "Registration",
    "SearchHit",
    "SearchResult",
    "VersionStatus",
]


class ModelFormat(enum.Enum):
    UNSPECIFIED = models_pb2.MODEL_FORMAT_UNSPECIFIED
    SAFETENSORS = models_pb2.MODEL_FORMAT_SAFETENSORS
    GGUF = models_pb2.MODEL_FORMAT_GGUF
    ONNX = models_pb2.MODEL_FORMAT_ONNX
    PT = models_pb2.MODEL_FORMAT_PT
    OTHER = models_pb2.MODEL_FORMAT_OTHER


class VersionStatus(enum.Enum):
    UNSPECIFIED = models_pb2.VERSION_STATUS_UNSPECIFIED
    PENDING = models_pb2.VERSION_STATUS_PENDING
    READY = models_pb2.VERSION_STATUS_READY
    FAILED = models_pb2.VERSION_STATUS_FAILED
    DEPRECATED = models_pb2.VERSION_STATUS_DEPRECATED


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    description: str
    family: str
    tags: tuple[str, ...]
    owner: str
    #: alias -> version number.
    aliases: dict[str, int]
    latest_version: int
    create_revision: int
    mod_revision: int
    created_unix_ms: int
    updated_unix_ms: int
    version_count: int


@dataclass(frozen=True, slots=True)
class VersionRef:
    """One version of one model; ``str()`` gives the ``MODEL/VERSION`` form the CLI takes."""

    model: str
    version: int
    #: In a version's ``parent``: that version's sha256 when the child was registered (a model
    #: deleted and created again restarts its numbers; this tells the artifacts apart).
    sha256: str = ""

    def __str__(self) -> str:
        return f"{self.model}/{self.version}"


@dataclass(frozen=True, slots=True)
class ModelVersion:
    model: str
    version: int
    sha256: str
    size_bytes: int
    format: ModelFormat
    source_uri: str
    metadata: dict[str, str]
    status: VersionStatus
    created_unix_ms: int
    create_revision: int
    mod_revision: int
    #: Node ids holding the artifact.
    replicas: tuple[str, ...]
    #: Labels that may change after registration (``update_version``).
    tags: dict[str, str] = field(default_factory=dict)
    #: Measured values (accuracy, loss ...), set at registration or later.
    metrics: dict[str, float] = field(default_factory=dict)
    #: Lineage, fixed at registration: the run that produced it ...
    run_id: str = ""
    #: ... and the version it was derived from (None: none recorded).
    parent: VersionRef | None = None


@dataclass(frozen=True, slots=True)
class ModelEvent:
    """What a watch on domain "models" carries in ``Event.model``: the model or version after the change."""

    change: str
    model: Model | None
    version: ModelVersion | None


@dataclass(frozen=True, slots=True)
class Registration:
    revision: int
    version: ModelVersion
    model_created: bool


@dataclass(frozen=True, slots=True)
class BulkRegistration:
    revision: int
    versions: tuple[ModelVersion, ...]
    models_created: int


@dataclass(frozen=True, slots=True)
class ModelDetail:
    revision: int
    model: Model
    versions: tuple[ModelVersion, ...]


@dataclass(frozen=True, slots=True)
class ModelList:
    revision: int
    models: tuple[Model, ...]
    #: More follow: ask again with ``start_after=models[-1].name``.
    more: bool


@dataclass(frozen=True, slots=True)
class SearchHit:
    model: Model
    #: bm25 (lower is better) of a model whose name does not hold every word; 0 for one whose name
    #: does (separators dropped) and from the LIKE fallback. The order of the hits is the ranking.
    score: float


@dataclass(frozen=True, slots=True)
class SearchResult:
    #: The revision of the registry the answer reflects.
    revision: int
    hits: tuple[SearchHit, ...]
    total: int
    #: Time spent in the server's index, milliseconds.
    query_ms: float
    #: "fts5" or "like".
    engine: str
    #: Did you mean: when the first page found nothing, corrected queries that find models, best first.
    suggestions: tuple[str, ...] = ()
    #: Pass it as ``page_token`` (same query, filters and sort) for the next page; "" on the last one.
    next_page_token: str = ""


def format_value(value: ModelFormat | str | int) -> int:
    """A format given as the enum, its name ("gguf") or its number."""
    if isinstance(value, ModelFormat):
        return int(value.value)
    if isinstance(value, str):
        try:
            return int(ModelFormat[value.upper()].value)
        except KeyError:
            raise errors.InvalidArgument(
                f"unknown format {value!r}; use safetensors, gguf, onnx, pt or other"
            ) from None
    return int(value)


def status_value(value: VersionStatus | str | int | None) -> int:
    if value is None:
        return 0
    if isinstance(value, VersionStatus):
        return int(value.value)
    if isinstance(value, str):
        try:
            return int(VersionStatus[value.upper()].value)
        except KeyError:
            raise errors.InvalidArgument(
                f"unknown status {value!r}; use pending, ready, failed or deprecated"
            ) from None
    return int(value)


def register_request(
    model: str,
    sha256: str,
    size_bytes: int,
    format: ModelFormat | str | int,
    *,
    source_uri: str = "",
    metadata: Mapping[str, str] | None = None,
    status: VersionStatus | str | int | None = None,
    description: str = "",
    family: str = "",
    tags: Iterable[str] = (),
    owner: str = "",
    version_tags: Mapping[str, str] | None = None,
    metrics: Mapping[str, float] | None = None,
    run_id: str = "",
    parent: VersionRef | tuple[str, int] | str | None = None,
    request_id: str = "",
) -> models_pb2.RegisterVersionRequest:
    check_unsigned(size_bytes, "size_bytes")
    return models_pb2.RegisterVersionRequest(
        model=model,
        draft=models_pb2.ModelDraft(description=description, family=family, tags=list(tags), owner=owner),
        sha256=sha256,
        size_bytes=size_bytes,
        format=format_value(format),  # type: ignore[arg-type]
        source_uri=source_uri,
        metadata=dict(metadata or {}),
        status=status_value(status),  # type: ignore[arg-type]
        request_id=request_id,
        tags=dict(version_tags or {}),
        metrics=metric_values(metrics or {}),
        run_id=run_id,
        parent=version_ref(parent) if parent is not None else None,
    )


def _kept_metadata(sent: models_pb2.RegisterVersionRequest, stored: models_pb2.ModelVersion) -> None:
    """FailedPrecondition when the server dropped the tags, metrics or lineage it was sent: a
    server from before them (a rolling upgrade) registers the version without them."""
    dropped = (
        (sent.tags and not stored.tags)
        or (sent.metrics and not stored.metrics)
        or (sent.run_id and not stored.run_id)
        or (sent.HasField("parent") and not stored.HasField("parent"))
    )
    if dropped:
        raise errors.FailedPrecondition(
            f"the server answering is older than version tags, metrics and lineage: {stored.model} version "
            f"{stored.version} was registered without them. Upgrade every server (cpctl cluster status --all "
            "shows their versions); then update_version can add the tags and metrics"
        )


def registration(sent: models_pb2.RegisterVersionRequest, response: models_pb2.RegisterVersionResponse) -> Registration:
    _kept_metadata(sent, response.version)
    return convert(Registration, response, revision=revision_of(response))


def bulk_registration(
    sent: models_pb2.BulkRegisterRequest, response: models_pb2.BulkRegisterResponse
) -> BulkRegistration:
    for item, stored in zip(sent.versions, response.versions, strict=False):
        _kept_metadata(item, stored)
    return convert(BulkRegistration, response, revision=revision_of(response))


def version_ref(value: VersionRef | tuple[str, int] | str) -> models_pb2.VersionRef:
    """A version given as ``VersionRef``, ``(model, version)`` or ``"MODEL/VERSION"``."""
    if isinstance(value, str):
        name, _, digits = value.rpartition("/")
        if not name or not digits.isdigit() or int(digits) < 1:
            raise errors.InvalidArgument(f"version {value!r} is not MODEL/VERSION, e.g. llama-3-8b/2")
        return models_pb2.VersionRef(model=name, version=int(digits))
    model, number = (value.model, value.version) if isinstance(value, VersionRef) else value
    check_unsigned(number, "version")
    return models_pb2.VersionRef(model=model, version=number)


def metric_values(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics as numbers (ints, floats, numpy's); anything else, a bool or a string included, is
    InvalidArgument (the server refuses NaN and infinities)."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise errors.InvalidArgument(f"metric {name!r} is {value!r}, not a number")
        try:
            out[name] = float(value)
        except OverflowError:
            raise errors.InvalidArgument(f"metric {name!r} is too large for a float") from None
    return out


def check_unsigned(value: int, what: str) -> None:
    """The wire's unsigned fields take 0 .. 2**32-1 or 2**64-1: say so rather than fail in protobuf."""
    try:
        whole = operator.index(value)  # int, or numpy's integers
    except TypeError:
        whole = -1
    if isinstance(value, bool) or whole < 0:
        raise errors.InvalidArgument(f"{what} must be a whole number, 0 or more (got {value!r})")


def update_version_request(
    model: str,
    version: int,
    set_tags: Mapping[str, str] | None,
    remove_tags: Iterable[str],
    set_metrics: Mapping[str, float] | None,
    remove_metrics: Iterable[str],
    request_id: str,
) -> models_pb2.UpdateVersionRequest:
    check_unsigned(version, "version")
    request = models_pb2.UpdateVersionRequest(
        model=model,
        version=version,
        set_tags=dict(set_tags or {}),
        remove_tags=list(remove_tags),
        set_metrics=metric_values(set_metrics or {}),
        remove_metrics=list(remove_metrics),
        request_id=request_id,
    )
    if not (request.set_tags or request.remove_tags or request.set_metrics or request.remove_metrics):
        raise errors.InvalidArgument("nothing to update: give tags or metrics to set or remove")
    return request


def bulk_request(versions: Iterable[Mapping[str, Any]], request_id: str) -> models_pb2.BulkRegisterRequest:
    """Versions as mappings with register()'s argument names (model, sha256, size_bytes, format, ...)."""
    request = models_pb2.BulkRegisterRequest(request_id=request_id)
    for index, item in enumerate(versions):
        try:
            request.versions.append(register_request(**item))
        except TypeError as exc:
            raise errors.InvalidArgument(f"version #{index + 1}: {exc}") from None
    return request


def update_request(
    model: str,
    description: str | None,
    family: str | None,
    tags: Iterable[str] | None,
    owner: str | None,
    request_id: str,
) -> models_pb2.UpdateModelRequest:
    given = {"description": description, "family": family, "tags": tags, "owner": owner}
    mask = [name for name, value in given.items() if value is not None]
    if not mask:
        raise errors.InvalidArgument("nothing to update: give description, family, tags or owner")
    fields = models_pb2.ModelDraft(
        description=description or "", family=family or "", tags=list(tags or ()), owner=owner or ""
    )
    return models_pb2.UpdateModelRequest(model=model, fields=fields, update_mask=mask, request_id=request_id)


def detail(response: models_pb2.GetModelResponse) -> ModelDetail:
    return convert(ModelDetail, response, revision=revision_of(response))


#: ``search(sort=...)``: the orders, by the names the SDK, the CLI and the gateway take.
SEARCH_SORTS: dict[str, int] = {
    "relevance": models_pb2.SEARCH_SORT_RELEVANCE,
    "name": models_pb2.SEARCH_SORT_NAME,
    "updated": models_pb2.SEARCH_SORT_UPDATED,
    "created": models_pb2.SEARCH_SORT_CREATED,
}


def search_result(response: models_pb2.SearchResponse, sort: str = "relevance", page_token: str = "") -> SearchResult:
    """The answer, unless the server ignored a sort or a page token it does not know (a server from
    before them, in a rolling upgrade): then FailedPrecondition, rather than a wrong page."""
    ignored = (SEARCH_SORTS[sort.lower()] != models_pb2.SEARCH_SORT_RELEVANCE and response.sort == 0) or (
        page_token and response.offset == 0
    )
    if ignored:
        raise errors.FailedPrecondition(
            "the server answering is older than sort and page_token and ignored them (a rolling upgrade?); "
            "upgrade every server (cpctl cluster status --all shows their versions) or page with offset"
        )
    return convert(SearchResult, response, revision=revision_of(response))


_M = "/controlplane.v1.Models/"
REGISTER_VERSION = Rpc(_M + "RegisterVersion", models_pb2.RegisterVersionResponse)
BULK_REGISTER = Rpc(_M + "BulkRegister", models_pb2.BulkRegisterResponse)
UPDATE_MODEL = Rpc(_M + "UpdateModel", models_pb2.UpdateModelResponse)
SET_STATUS = Rpc(_M + "SetVersionStatus", models_pb2.SetVersionStatusResponse)
SET_ALIAS = Rpc(_M + "SetAlias", models_pb2.SetAliasResponse)
UPDATE_VERSION = Rpc(_M + "UpdateVersion", models_pb2.UpdateVersionResponse)
DELETE_VERSION = Rpc(_M + "DeleteVersion", models_pb2.DeleteVersionResponse)
DELETE_MODEL = Rpc(_M + "DeleteModel", models_pb2.DeleteModelResponse)
ADD_REPLICA = Rpc(_M + "AddReplica", models_pb2.ReplicaResponse)
REMOVE_REPLICA = Rpc(_M + "RemoveReplica", models_pb2.ReplicaResponse)
GET_MODEL = Rpc(_M + "GetModel", models_pb2.GetModelResponse)
GET_VERSION = Rpc(_M + "GetVersion", models_pb2.GetVersionResponse)
LIST_MODELS = Rpc(_M + "ListModels", models_pb2.ListModelsResponse)
SEARCH = Rpc(_M + "Search", models_pb2.SearchResponse)


def status_request(
    model: str, version: int, status: VersionStatus | str | int, request_id: str
) -> models_pb2.SetVersionStatusRequest:
    return models_pb2.SetVersionStatusRequest(
        model=model,
        version=version,
        status=status_value(status),  # type: ignore[arg-type]
        request_id=request_id,
    )


def search_request(
    query: str,
    tag: str,
    family: str,
    format: ModelFormat | str | None,
    status: VersionStatus | str | None,
    owner: str,
    limit: int,
    offset: int,
    read: Any,
    sort: str = "relevance",
    page_token: str = "",
) -> models_pb2.SearchRequest:
    order = SEARCH_SORTS.get(sort.lower())
    if order is None:
        raise errors.InvalidArgument(f"unknown sort {sort!r}; use {', '.join(SEARCH_SORTS)}")
    return models_pb2.SearchRequest(
        read=read,
        query=query,
        tag=tag,
        family=family,
        format=format_value(format) if format is not None else 0,  # type: ignore[arg-type]
        status=status_value(status),  # type: ignore[arg-type]
        owner=owner,
        limit=limit,
        offset=offset,
        sort=order,  # type: ignore[arg-type]
        page_token=page_token,
    )
