"""The model-registry domain of the state machine: models, numbered versions, aliases, replicas.

Pure and deterministic like the rest of the machine. The rules it keeps:

* a version's identity (sha256, size, format, source, metadata) and its lineage (the run it came
  from, the version it was derived from) never change once registered; only its status (along
  the allowed transitions), its tags and metrics, and its replica list do;
* a parent named at registration exists then (in the state, or earlier in the same bulk
  request); deleting it later leaves the child's reference, as lineage is history;
* versions are numbered 1, 2, 3, ... per model in registration order, never renumbered and never
  reused after a delete (``latest_version`` only grows);
* an alias only ever points at an existing version: deleting a version an alias points at is
  refused unless forced, and forcing removes those aliases in the same command;
* model names are unique ignoring case ("llama-3" and "Llama-3" cannot both exist), so a search
  or a `get` never has to guess which one was meant.

Every handler validates the whole command before changing anything; a bulk registration is
all or nothing. Search lives outside the machine (server/search.py), derived from this state.

Storage: models and versions are kept *serialized* (deterministic protobuf bytes), not as message
objects. A message object costs about 0.5 KB (a version) to 1.5 KB (a model) of memory, its bytes
about a tenth of that, and bytes are immutable, so "never mutated in place" holds by
construction. Every read parses a fresh message the caller may keep or change: ``models[name]``,
``version()``, ``versions_of()``. A version's bytes leave out its model name and number, which
are the keys it is stored under.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import ClassVar

from sortedcontainers import SortedDict

from controlplane.state import limits
from controlplane.state.journal import Journal
from controlplane.state.refusal import Handler, Refused, refusing
from controlplane.state.refusal import check as _check
from controlplane.state.refusal import invalid as _invalid
from controlplane.state.refusal import not_found as _not_found
from controlplane.state.refusal import precondition as _precondition
from controlplane.state.tables import BackupSource
from controlplane.v1 import command_pb2, common_pb2, models_pb2, watch_pb2

DOMAIN_MODELS = "models"
MAX_TAGS = 64
MAX_METADATA = 64
MAX_DESCRIPTION_CHARS = 4096
MAX_URI_CHARS = 2048
MAX_BULK = 10_000
MAX_VERSION_TAGS = 64
MAX_METRICS = 128
MAX_TAG_VALUE_CHARS = 1024
MAX_RUN_ID_CHARS = 256

CommandResult = command_pb2.CommandResult
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")
# Alias names that always mean something else (MLflow reserves "latest" the same way).
RESERVED_ALIASES = frozenset({"latest"})

# Which status a version may move to from each status.
TRANSITIONS: dict[int, frozenset[int]] = {
    models_pb2.VERSION_STATUS_PENDING: frozenset({models_pb2.VERSION_STATUS_READY, models_pb2.VERSION_STATUS_FAILED}),
    models_pb2.VERSION_STATUS_READY: frozenset({models_pb2.VERSION_STATUS_DEPRECATED}),
    models_pb2.VERSION_STATUS_FAILED: frozenset({models_pb2.VERSION_STATUS_DEPRECATED}),
    models_pb2.VERSION_STATUS_DEPRECATED: frozenset({models_pb2.VERSION_STATUS_READY}),
}
DRAFT_FIELDS = ("description", "family", "tags", "owner")
_ALL_DRAFT_FIELDS = frozenset(DRAFT_FIELDS)
_KNOWN_FORMATS = frozenset(models_pb2.ModelFormat.values())
_KNOWN_STATUSES = frozenset(models_pb2.VersionStatus.values())
_FORMATS = _KNOWN_FORMATS - {models_pb2.MODEL_FORMAT_UNSPECIFIED}
_NEW_STATUSES = frozenset(
    {models_pb2.VERSION_STATUS_UNSPECIFIED, models_pb2.VERSION_STATUS_PENDING, models_pb2.VERSION_STATUS_READY}
)


def status_name(status: int) -> str:
    return models_pb2.VersionStatus.Name(status).removeprefix("VERSION_STATUS_").lower()  # type: ignore[arg-type]


def check_draft(draft: models_pb2.ModelDraft, fields: Iterable[str] = DRAFT_FIELDS) -> None:
    chosen = fields if fields is DRAFT_FIELDS else set(fields)
    if "description" in chosen:
        _check(limits.check_text(draft.description, "description", MAX_DESCRIPTION_CHARS))
    if "family" in chosen and draft.family:
        _check(limits.check_model_name(draft.family, "family"))
    if "owner" in chosen:
        _check(limits.check_text(draft.owner, "owner", 256))
    if "tags" in chosen:
        if len(draft.tags) > MAX_TAGS:
            raise _invalid(f"at most {MAX_TAGS} tags")
        for tag in draft.tags:
            _check(limits.check_model_name(tag, "tag"))
        if len({tag.lower() for tag in draft.tags}) != len(draft.tags):
            raise _invalid("a tag appears twice")


def check_version_fields(request: models_pb2.RegisterVersionRequest) -> None:
    """Everything about one registration that does not depend on the state."""
    _check(limits.check_model_name(request.model))
    if not _SHA256.fullmatch(request.sha256.lower()):
        raise _invalid(f"sha256 {request.sha256[:80]!r} is not 64 hexadecimal digits")
    if request.format not in _FORMATS:
        raise _invalid("format must be one of safetensors, gguf, onnx, pt, other")
    if request.status not in _NEW_STATUSES:
        raise _invalid("a new version starts pending (the default) or ready")
    _check(limits.check_text(request.source_uri, "source_uri", MAX_URI_CHARS))
    if len(request.metadata) > MAX_METADATA:
        raise _invalid(f"at most {MAX_METADATA} metadata entries")
    # Maps in sorted order: their iteration order differs from process to process, and the first
    # bad entry names the refusal, which the dedupe table keeps (snapshots must agree).
    for key, value in sorted(request.metadata.items()):
        _check(limits.check_name(key, "metadata key") or limits.check_text(value, f"metadata {key!r}", 1024))
    check_draft(request.draft)
    check_version_metadata(request)


def check_version_metadata(version: models_pb2.RegisterVersionRequest | models_pb2.ModelVersion) -> None:
    """A version's tags, metrics, run id and parent, as a registration brings them or a backup
    holds them (the same fields on both messages); the counts first, so a huge map is refused
    before it is walked."""
    if len(version.tags) > MAX_VERSION_TAGS or len(version.metrics) > MAX_METRICS:
        raise _invalid(f"at most {MAX_VERSION_TAGS} tags and {MAX_METRICS} metrics per version")
    check_tags(version.tags.items())
    check_metrics(version.metrics.items())
    _check(limits.check_text(version.run_id, "run_id", MAX_RUN_ID_CHARS))
    if version.HasField("parent"):
        _check(limits.check_model_name(version.parent.model, "parent model"))
        if version.parent.version < 1:
            raise _invalid("parent needs a version number (1 or more)")


def check_tags(tags: Iterable[tuple[str, str]]) -> None:
    """Version tags: a name-like key (letters, digits, '.', '_', '-') and a text value; checked in
    key order (the first bad one is named, alike on every server)."""
    for key, value in sorted(tags):
        _check(limits.check_name(key, "tag key") or limits.check_text(value, f"tag {key!r}", MAX_TAG_VALUE_CHARS))


def check_metrics(metrics: Iterable[tuple[str, float]]) -> None:
    """Metrics: a name-like key and a finite number (NaN compares false with everything, so a
    search for ``metric:acc>0.9`` could neither find nor exclude it). In key order."""
    for key, value in sorted(metrics):
        _check(limits.check_name(key, "metric name"))
        if not math.isfinite(value):
            raise _invalid(f"metric {key!r} is {value}; metrics are finite numbers")


def check_version_update(request: models_pb2.UpdateVersionRequest) -> None:
    """Everything about one UpdateVersion that does not depend on the state."""
    _check(limits.check_model_name(request.model))
    check_tags(request.set_tags.items())
    check_metrics(request.set_metrics.items())
    if len(request.set_tags) > MAX_VERSION_TAGS or len(request.set_metrics) > MAX_METRICS:
        raise _invalid(f"at most {MAX_VERSION_TAGS} tags and {MAX_METRICS} metrics per version")
    for key in sorted(request.remove_tags):
        _check(limits.check_name(key, "tag key"))
    for key in sorted(request.remove_metrics):
        _check(limits.check_name(key, "metric name"))
    both = sorted(set(request.set_tags) & set(request.remove_tags))
    both += sorted(set(request.set_metrics) & set(request.remove_metrics))
    if both:
        raise _invalid(f"{', '.join(both)}: set and removed in the same request; do one or the other")


def _pack_version(version: models_pb2.ModelVersion) -> bytes:
    """A version's stored bytes: its serialization without the model name and number (its keys)."""
    data = version.SerializeToString(deterministic=True)
    # Fields 1 (model) and 2 (version) come first in a deterministic serialization: cut them off.
    head = models_pb2.ModelVersion(model=version.model, version=version.version).SerializeToString()
    if data.startswith(head):
        return data[len(head) :]
    bare = models_pb2.ModelVersion()  # not reached with this schema; kept correct whatever the encoder does
    bare.CopyFrom(version)
    bare.ClearField("model")
    bare.ClearField("version")
    return bare.SerializeToString(deterministic=True)


def _unpack_version(name: str, number: int, data: bytes) -> models_pb2.ModelVersion:
    version = models_pb2.ModelVersion.FromString(data)
    version.model = name
    version.version = number
    return version


class ModelRecords(Mapping[str, models_pb2.Model]):
    """The models by name, in name order, kept serialized; reading one parses a fresh copy."""

    def __init__(self) -> None:
        self._data: SortedDict = SortedDict()  # name -> the Model's deterministic bytes

    def __getitem__(self, name: str) -> models_pb2.Model:
        return models_pb2.Model.FromString(self._data[name])

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def irange(self, minimum: str, inclusive: tuple[bool, bool] = (True, True)) -> Iterator[str]:
        """Names from ``minimum`` on, in order."""
        names: Iterator[str] = self._data.irange(minimum=minimum, inclusive=inclusive)
        return names

    def data(self, name: str) -> bytes:
        """The stored bytes of model ``name`` (KeyError if there is none)."""
        stored: bytes = self._data[name]
        return stored

    def put(self, name: str, model: models_pb2.Model) -> None:
        """Store ``model`` under ``name`` (its name: the caller passes the one str object it keys
        everything of this model by, so the name is held once)."""
        self._data[name] = model.SerializeToString(deterministic=True)

    def remove(self, name: str) -> models_pb2.Model:
        return models_pb2.Model.FromString(self._data.pop(name))


class ModelTable:
    name: ClassVar[str] = "models"
    state_type: ClassVar[type[models_pb2.ModelsState]] = models_pb2.ModelsState
    backup_noun: ClassVar[str] = "a bad model registry"

    def __init__(self, journal: Journal, node_problem: Callable[[str], str | None] = lambda node_id: None) -> None:
        self._journal = journal
        # Why a replica's node looks wrong (not registered, dead or left), or None: a warning in
        # the answer, not a refusal (an artifact may be recorded before its node's agent registers).
        self._node_problem = node_problem
        self.reset()

    def reset(self) -> None:
        self.models = ModelRecords()
        # name -> number -> the version's stored bytes (_pack_version)
        self.versions: dict[str, dict[int, bytes]] = {}
        self._folded: dict[str, str] = {}  # name.lower() -> name

    def handlers(self) -> dict[str, Callable[[command_pb2.Command], CommandResult]]:
        def wrap(handler: Handler) -> Handler:
            return refusing(lambda: self._journal.revision, handler)

        return {
            "model_register": wrap(lambda c: self._register(c.model_register)),
            "model_bulk_register": wrap(lambda c: self._bulk(c.model_bulk_register)),
            "model_update": wrap(lambda c: self._update(c.model_update)),
            "model_set_status": wrap(lambda c: self._set_status(c.model_set_status)),
            "model_set_alias": wrap(lambda c: self._set_alias(c.model_set_alias)),
            "model_delete_version": wrap(lambda c: self._delete_version(c.model_delete_version)),
            "model_delete": wrap(lambda c: self._delete_model(c.model_delete)),
            "model_add_replica": wrap(lambda c: self._replica(c.model_add_replica, add=True)),
            "model_remove_replica": wrap(lambda c: self._replica(c.model_remove_replica, add=False)),
            "model_update_version": wrap(lambda c: self._update_version(c.model_update_version)),
        }

    # ------------------------------------------------------------------ lookups (also the read API)

    def model(self, name: str) -> models_pb2.Model:
        self._check_exists(name)
        return self.models[name]

    def _check_exists(self, name: str) -> None:
        _check(limits.check_model_name(name))
        if name not in self.models:
            other = self._folded.get(name.lower())
            hint = f" (did you mean {other!r}?)" if other else ""
            raise _not_found(f"no model {name!r}{hint}")

    def version(self, name: str, number: int) -> models_pb2.ModelVersion:
        self._check_exists(name)
        found = self.versions.get(name, {}).get(number)
        if found is None:
            raise _not_found(f"model {name!r} has no version {number}")
        return _unpack_version(name, number, found)

    def resolve(self, name: str, reference: str) -> models_pb2.ModelVersion:
        """A version by number ("7"), "latest" (always the newest version), or alias ("prod",
        matched ignoring case like model names)."""
        model = self.model(name)
        if reference.isdigit():
            return self.version(name, int(reference))
        if reference.lower() in ("", *RESERVED_ALIASES):
            if self.versions.get(name):
                return self.version(name, max(self.versions[name]))
            raise _not_found(f"model {name!r} has no versions yet")
        alias = _alias_key(model.aliases, reference)
        if alias is not None:
            return self.version(name, model.aliases[alias])
        known = ", ".join(sorted(model.aliases)) or "none"
        raise _not_found(f"model {name!r} has no version or alias {reference!r} (aliases: {known})")

    def reference_problem(self, reference: str) -> str | None:
        """Why a network's model reference ("NAME", "NAME@7", "NAME@prod") names nothing registered
        now, or None when it does; model names and aliases match ignoring case, as everywhere in
        the registry. Only says what is missing (the caller may not be allowed to read the model)."""
        typed, at, which = reference.partition("@")
        name = self._folded.get(typed.lower())
        if name is None:
            return f"model {typed!r} is not registered (yet): its members have no artifact to fetch until it is"
        if at:
            try:
                self.resolve(name, which)
            except Refused:
                return (
                    f"model {typed!r} has no version or alias {which!r} (yet): its members have no artifact "
                    "to fetch until it does"
                )
        return None

    def versions_of(self, name: str) -> list[models_pb2.ModelVersion]:
        table = self.versions.get(name, {})
        return [_unpack_version(name, number, table[number]) for number in sorted(table)]

    def list_models(self, prefix: str, start_after: str, limit: int) -> tuple[list[models_pb2.Model], bool]:
        start = start_after if start_after and start_after >= prefix else prefix
        out: list[models_pb2.Model] = []
        for name in self.models.irange(minimum=start, inclusive=(not start_after or start_after < prefix, True)):
            if not name.startswith(prefix):
                break
            if len(out) == limit:
                return out, True
            out.append(self.models[name])
        return out, False

    # ------------------------------------------------------------------ changing

    def _event(self, key: str, event_type: watch_pb2.EventType, change: str, model: models_pb2.Model | None,
               version: models_pb2.ModelVersion | None = None) -> int:  # fmt: skip
        detail = models_pb2.ModelEvent(change=change)
        if model is not None:
            detail.model.CopyFrom(model)
        if version is not None:
            detail.version.CopyFrom(version)
        return self._journal.record_detail(DOMAIN_MODELS, key, event_type, detail)

    def _store_model(self, model: models_pb2.Model, change: str) -> models_pb2.Model:
        """Replace a model record and record the change."""
        model.mod_revision = self._journal.revision + 1
        model.updated_unix_ms = self._journal.time_unix_ms
        self.models.put(self._name(model.name), model)
        self._event(model.name, watch_pb2.EVENT_TYPE_PUT, change, model)
        return model

    def _name(self, name: str) -> str:
        """The one str object this model's name is held as (in every table), made on first use."""
        return self._folded.setdefault(name.lower(), name)

    def _copy(self, name: str) -> models_pb2.Model:
        return self.models[name]  # a fresh parse: the caller may change it

    def _check_new_model_name(self, name: str) -> None:
        other = self._folded.get(name.lower())
        if other is not None and other != name:
            raise Refused(
                common_pb2.ERROR_CODE_ALREADY_EXISTS,
                f"model {other!r} already exists; names are unique ignoring case",
            )

    def _plan_registration(
        self, request: models_pb2.RegisterVersionRequest, planned_hashes: dict[str, dict[str, int]],
        planned_numbers: dict[str, int],
    ) -> models_pb2.VersionRef | None:  # fmt: skip
        """Check one registration against the state and the request's earlier items, and count it
        in; returns its parent as it will be stored (None without one)."""
        check_version_fields(request)
        name = request.model
        self._check_new_model_name(name)
        sha = request.sha256.lower()
        # The sha256 field as it is serialized: found in a version's bytes only if it is that
        # version's sha256 (or, conceivably, inside its metadata: hence the check after parsing).
        field = models_pb2.ModelVersion(sha256=sha).SerializeToString()
        for existing, data in self.versions.get(name, {}).items():
            if field in data and models_pb2.ModelVersion.FromString(data).sha256 == sha:
                raise Refused(
                    common_pb2.ERROR_CODE_ALREADY_EXISTS, f"model {name!r} version {existing} already has sha256 {sha}"
                )
        in_batch = planned_hashes.setdefault(name, {})
        if sha in in_batch:
            raise _invalid(f"sha256 {sha} appears twice for model {name!r} in this request")
        parent = None
        if request.HasField("parent"):
            ref = request.parent  # copied field by field: nothing else a client put in it is kept
            sha256 = self._parent_sha256(ref, planned_hashes, planned_numbers)
            parent = models_pb2.VersionRef(model=ref.model, version=ref.version, sha256=sha256)
        number = planned_numbers.get(name)
        if number is None:  # the model's first version in this request: after its latest
            number = self.models[name].latest_version if name in self.models else 0
        planned_numbers[name] = number + 1
        in_batch[sha] = number + 1
        return parent

    def _parent_sha256(
        self, parent: models_pb2.VersionRef, planned_hashes: dict[str, dict[str, int]], planned_numbers: dict[str, int]
    ) -> str:
        """The sha256 of ``parent``, registered or registered earlier in the same request; NOT_FOUND if neither."""
        stored = self.versions.get(parent.model, {}).get(parent.version)
        if stored is not None:
            return models_pb2.ModelVersion.FromString(stored).sha256
        latest = self.models[parent.model].latest_version if parent.model in self.models else 0
        if latest < parent.version <= planned_numbers.get(parent.model, 0):
            return next(sha for sha, number in planned_hashes[parent.model].items() if number == parent.version)
        other = self._folded.get(parent.model.lower())
        hint = f" (did you mean {other!r}?)" if other and other != parent.model else ""
        raise _not_found(f"parent: model {parent.model!r} has no version {parent.version}{hint}")

    def _apply_registration(
        self, request: models_pb2.RegisterVersionRequest, parent: models_pb2.VersionRef | None
    ) -> tuple[models_pb2.ModelVersion, bool]:
        """Store one planned registration (``parent``: what planning made of its parent)."""
        name = request.model
        created = name not in self.models
        now = self._journal.time_unix_ms
        if created:
            model = models_pb2.Model(
                name=name,
                description=request.draft.description,
                family=request.draft.family,
                tags=request.draft.tags,
                owner=request.draft.owner,
                create_revision=self._journal.revision + 1,
                created_unix_ms=now,
            )
        else:
            model = self._copy(name)
        model.latest_version += 1
        model.version_count += 1
        self._store_model(model, "created" if created else "version added")
        name = self._name(name)
        number = model.latest_version
        # Built without its keys (model name, number): that is how it is stored.
        version = models_pb2.ModelVersion(
            sha256=request.sha256.lower(),
            size_bytes=request.size_bytes,
            format=request.format,
            source_uri=request.source_uri,
            metadata=request.metadata,
            tags=request.tags,
            metrics=request.metrics,
            run_id=request.run_id,
            parent=parent,
            status=request.status or models_pb2.VERSION_STATUS_PENDING,
            created_unix_ms=now,
            create_revision=self._journal.revision + 1,
            mod_revision=self._journal.revision + 1,
        )
        self.versions.setdefault(name, {})[number] = version.SerializeToString(deterministic=True)
        version.model = name
        version.version = number
        self._event(f"{name}/{number}", watch_pb2.EVENT_TYPE_PUT, "registered", None, version)
        return version, created

    def _register(self, request: models_pb2.RegisterVersionRequest) -> CommandResult:
        parent = self._plan_registration(request, {}, {})
        version, created = self._apply_registration(request, parent)
        return CommandResult(
            revision=self._journal.revision,
            model_register=models_pb2.RegisterVersionResponse(version=version, model_created=created),
        )

    def _bulk(self, request: models_pb2.BulkRegisterRequest) -> CommandResult:
        if not request.versions:
            raise _invalid("a bulk registration needs at least one version")
        if len(request.versions) > MAX_BULK:
            raise _invalid(f"at most {MAX_BULK} versions per bulk request; split the catalogue")
        hashes: dict[str, dict[str, int]] = {}
        numbers: dict[str, int] = {}
        parents: list[models_pb2.VersionRef | None] = []
        for index, item in enumerate(request.versions):
            try:
                parents.append(self._plan_registration(item, hashes, numbers))
            except Refused as refused:
                raise Refused(refused.code, f"version #{index + 1} ({item.model}): {refused.message}") from None
        response = models_pb2.BulkRegisterResponse()
        for item, parent in zip(request.versions, parents, strict=True):
            version, created = self._apply_registration(item, parent)
            response.versions.append(version)
            response.models_created += int(created)
        return CommandResult(revision=self._journal.revision, model_bulk_register=response)

    def _update(self, request: models_pb2.UpdateModelRequest) -> CommandResult:
        self.model(request.model)
        mask = list(request.update_mask) or list(DRAFT_FIELDS)
        unknown = sorted(set(mask) - set(DRAFT_FIELDS))
        if unknown:
            raise _invalid(f"update_mask names unknown field(s) {unknown}; use {', '.join(DRAFT_FIELDS)}")
        check_draft(request.fields, mask)
        model = self._copy(request.model)
        for field in mask:
            if field == "tags":
                del model.tags[:]
                model.tags.extend(request.fields.tags)
            else:
                setattr(model, field, getattr(request.fields, field))
        if model.SerializeToString(deterministic=True) == self.models.data(request.model):
            return CommandResult(
                revision=self._journal.revision, model_update=models_pb2.UpdateModelResponse(model=model)
            )
        self._store_model(model, "updated")
        return CommandResult(revision=self._journal.revision, model_update=models_pb2.UpdateModelResponse(model=model))

    def _replace_version(self, version: models_pb2.ModelVersion, change: str) -> None:
        version.mod_revision = self._journal.revision + 1
        self.versions[version.model][version.version] = _pack_version(version)
        self._event(f"{version.model}/{version.version}", watch_pb2.EVENT_TYPE_PUT, change, None, version)

    def _set_status(self, request: models_pb2.SetVersionStatusRequest) -> CommandResult:
        current = self.version(request.model, request.version)
        if request.status not in TRANSITIONS:
            raise _invalid("status must be pending, ready, failed or deprecated")
        if request.status == current.status:
            return CommandResult(
                revision=self._journal.revision, model_set_status=models_pb2.SetVersionStatusResponse(version=current)
            )
        if request.status not in TRANSITIONS[current.status]:
            allowed = ", ".join(sorted(status_name(s) for s in TRANSITIONS[current.status]))
            raise _precondition(
                f"{request.model} version {request.version} is {status_name(current.status)}; "
                f"it can become {allowed}, not {status_name(request.status)}"
            )
        version = current  # a fresh parse
        version.status = request.status
        self._replace_version(version, f"status {status_name(request.status)}")
        return CommandResult(
            revision=self._journal.revision, model_set_status=models_pb2.SetVersionStatusResponse(version=version)
        )

    def _update_version(self, request: models_pb2.UpdateVersionRequest) -> CommandResult:
        check_version_update(request)
        version = self.version(request.model, request.version)  # a fresh parse: changed below
        before = version.SerializeToString(deterministic=True)
        for key in request.remove_tags:
            if key in version.tags:
                del version.tags[key]
        version.tags.update(request.set_tags)
        for key in request.remove_metrics:
            if key in version.metrics:
                del version.metrics[key]
        version.metrics.update(request.set_metrics)
        for what, held, limit in (
            ("tags", len(version.tags), MAX_VERSION_TAGS),
            ("metrics", len(version.metrics), MAX_METRICS),
        ):
            if held > limit:
                raise _precondition(
                    f"{request.model} version {request.version} would have {held} {what}; at most {limit}, remove some"
                )
        changed = version.SerializeToString(deterministic=True) != before
        if changed:
            self._replace_version(version, "tags and metrics updated")
        return CommandResult(
            revision=self._journal.revision,
            model_update_version=models_pb2.UpdateVersionResponse(version=version, changed=changed),
        )

    def _set_alias(self, request: models_pb2.SetAliasRequest) -> CommandResult:
        self._check_exists(request.model)
        if len(request.alias) > limits.MAX_NAME_CHARS or not _ALIAS.fullmatch(request.alias):
            raise _invalid(
                f"alias {request.alias!r} is not valid: start with a letter (so it is never mistaken for a "
                "version number), then letters, digits, '.', '_' or '-'"
            )
        if request.alias.lower() in RESERVED_ALIASES:
            raise _invalid(
                f"alias {request.alias!r} is reserved: it always means the newest version; choose another name"
            )
        if request.version:
            self.version(request.model, request.version)
        model = self._copy(request.model)
        # Aliases match ignoring case, as model names do: "Prod" moves the alias "prod".
        existing = _alias_key(model.aliases, request.alias)
        previous = model.aliases.get(existing, 0) if existing is not None else 0
        if previous == request.version:
            return CommandResult(
                revision=self._journal.revision,
                model_set_alias=models_pb2.SetAliasResponse(model=model, previous_version=previous),
            )
        if existing is not None:
            del model.aliases[existing]
        if request.version:
            model.aliases[existing if existing is not None else request.alias] = request.version
        change = f"alias {request.alias} -> {request.version}" if request.version else f"alias {request.alias} removed"
        self._store_model(model, change)
        return CommandResult(
            revision=self._journal.revision,
            model_set_alias=models_pb2.SetAliasResponse(model=model, previous_version=previous),
        )

    def _delete_version(self, request: models_pb2.DeleteVersionRequest) -> CommandResult:
        self._check_exists(request.model)
        if request.version not in self.versions.get(request.model, {}):
            return CommandResult(
                revision=self._journal.revision, model_delete_version=models_pb2.DeleteVersionResponse(deleted=False)
            )
        model = self._copy(request.model)
        pointing = sorted(alias for alias, number in model.aliases.items() if number == request.version)
        if pointing and not request.force:
            raise _precondition(
                f"alias(es) {', '.join(pointing)} of {request.model} point at version {request.version}; "
                "move them first, or force to remove them with the version"
            )
        for alias in pointing:
            del model.aliases[alias]
        model.version_count -= 1
        prev = _unpack_version(request.model, request.version, self.versions[request.model].pop(request.version))
        self._event(f"{request.model}/{request.version}", watch_pb2.EVENT_TYPE_DELETE, "deleted", None, prev)
        self._store_model(model, f"version {request.version} deleted")
        return CommandResult(
            revision=self._journal.revision,
            model_delete_version=models_pb2.DeleteVersionResponse(deleted=True, removed_aliases=pointing),
        )

    def _delete_model(self, request: models_pb2.DeleteModelRequest) -> CommandResult:
        _check(limits.check_model_name(request.model))
        if request.model not in self.models:
            return CommandResult(
                revision=self._journal.revision, model_delete=models_pb2.DeleteModelResponse(deleted=False)
            )
        count = len(self.versions.get(request.model, {}))
        if count and not request.force:
            raise _precondition(f"model {request.model!r} still has {count} version(s); delete them or force")
        prev = self.models.remove(request.model)
        self.versions.pop(request.model, None)
        self._folded.pop(request.model.lower(), None)
        self._event(request.model, watch_pb2.EVENT_TYPE_DELETE, "deleted", prev)
        return CommandResult(revision=self._journal.revision, model_delete=models_pb2.DeleteModelResponse(deleted=True))

    def _replica(self, request: models_pb2.ReplicaRequest, add: bool) -> CommandResult:
        _check(limits.check_member_id(request.node_id))
        current = self.version(request.model, request.version)
        replicas = set(current.replicas)
        problem = self._node_problem(request.node_id) if add else None
        warnings = [f"{problem}; recorded anyway"] if problem else []
        if (request.node_id in replicas) == add:
            body = models_pb2.ReplicaResponse(version=current, changed=False, warnings=warnings)
        else:
            version = current  # a fresh parse
            (replicas.add if add else replicas.discard)(request.node_id)
            del version.replicas[:]
            version.replicas.extend(sorted(replicas))
            self._replace_version(version, f"replica {'added' if add else 'removed'}: {request.node_id}")
            body = models_pb2.ReplicaResponse(version=version, changed=True, warnings=warnings)
        field = "model_add_replica" if add else "model_remove_replica"
        result = CommandResult(revision=self._journal.revision)
        getattr(result, field).CopyFrom(body)
        return result

    # ------------------------------------------------------------------ snapshot

    def to_state(self) -> models_pb2.ModelsState:
        state = models_pb2.ModelsState()
        for name in self.models:
            state.models.add().MergeFromString(self.models.data(name))
        for name in self.models:
            table = self.versions.get(name, {})
            for number in sorted(table):
                version = state.versions.add()
                version.MergeFromString(table[number])
                version.model = name
                version.version = number
        return state

    @staticmethod
    def validate_state(state: models_pb2.ModelsState, revision: int | None = None) -> None:
        """What a registry from a backup must satisfy before it replaces this one (Refused if not).
        ``revision``: the backup's; every model's and version's revisions must lie within it."""

        def check_revisions(what: str, created: int, modified: int) -> None:
            if revision is not None and not 1 <= created <= modified <= revision:
                raise _invalid(
                    f"{what} has revisions create={created} mod={modified}, "
                    f"impossible in a backup at revision {revision}"
                )

        models: dict[str, models_pb2.Model] = {}
        folded: set[str] = set()
        for model in state.models:
            _check(limits.check_model_name(model.name))
            check_revisions(f"model {model.name!r}", model.create_revision, model.mod_revision)
            if model.name.lower() in folded:
                raise _invalid(f"model {model.name!r} appears twice (names are unique ignoring case)")
            folded.add(model.name.lower())
            models[model.name] = model
        numbers: dict[str, set[int]] = {}
        for version in state.versions:
            owner = models.get(version.model)
            if owner is None:
                raise _invalid(f"version {version.version} belongs to unknown model {version.model!r}")
            if not 1 <= version.version <= owner.latest_version or version.version in numbers.get(version.model, set()):
                raise _invalid(f"model {version.model!r} version {version.version} is out of sequence")
            if not _SHA256.fullmatch(version.sha256):
                raise _invalid(f"model {version.model!r} version {version.version} has a malformed sha256")
            # Open enums hold any number; what no release defines, nothing can filter or show.
            for field, value, known in (
                ("format", version.format, _KNOWN_FORMATS),
                ("status", version.status, _KNOWN_STATUSES),
            ):
                if value not in known:
                    raise _invalid(f"model {version.model!r} version {version.version} has an unknown {field} {value}")
            try:  # what the API would refuse, a backup may not bring either
                check_version_metadata(version)
            except Refused as refused:
                raise _invalid(f"model {version.model!r} version {version.version}: {refused.message}") from None
            check_revisions(
                f"model {version.model!r} version {version.version}", version.create_revision, version.mod_revision
            )
            numbers.setdefault(version.model, set()).add(version.version)
        for model in models.values():
            held = numbers.get(model.name, set())
            if model.version_count != len(held):
                raise _invalid(f"model {model.name!r} counts {model.version_count} versions but has {len(held)}")
            for alias, number in sorted(model.aliases.items()):
                if number not in held:
                    raise _invalid(f"alias {alias!r} of {model.name!r} points at missing version {number}")

    def load_state(self, state: models_pb2.ModelsState | None) -> None:
        self.load(state if state is not None else models_pb2.ModelsState())

    def check_backup(self, state: models_pb2.ModelsState | None, backup: BackupSource) -> None:
        if state is not None:
            self.validate_state(state, backup.revision)

    def restore_backup(self, state: models_pb2.ModelsState | None, backup: BackupSource) -> None:
        self.load_state(state)

    def load(self, state: models_pb2.ModelsState) -> None:
        self.reset()
        for model in state.models:
            self.models.put(self._name(model.name), model)
        for version in state.versions:
            name = self._folded.get(version.model.lower(), version.model)
            self.versions.setdefault(name, {})[version.version] = _pack_version(version)


def _alias_key(aliases: Mapping[str, int], alias: str) -> str | None:
    """The stored name of ``alias``, matched exactly first, then ignoring case; None if absent."""
    if alias in aliases:
        return alias
    folded = alias.lower()
    return next((key for key in sorted(aliases) if key.lower() == folded), None)
