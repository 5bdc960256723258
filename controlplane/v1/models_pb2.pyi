from controlplane.v1 import common_pb2 as _common_pb2
from controlplane.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_FORMAT_UNSPECIFIED: _ClassVar[ModelFormat]
    MODEL_FORMAT_SAFETENSORS: _ClassVar[ModelFormat]
    MODEL_FORMAT_GGUF: _ClassVar[ModelFormat]
    MODEL_FORMAT_ONNX: _ClassVar[ModelFormat]
    MODEL_FORMAT_PT: _ClassVar[ModelFormat]
    MODEL_FORMAT_OTHER: _ClassVar[ModelFormat]

class VersionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERSION_STATUS_UNSPECIFIED: _ClassVar[VersionStatus]
    VERSION_STATUS_PENDING: _ClassVar[VersionStatus]
    VERSION_STATUS_READY: _ClassVar[VersionStatus]
    VERSION_STATUS_FAILED: _ClassVar[VersionStatus]
    VERSION_STATUS_DEPRECATED: _ClassVar[VersionStatus]

class SearchSort(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_SORT_RELEVANCE: _ClassVar[SearchSort]
    SEARCH_SORT_NAME: _ClassVar[SearchSort]
    SEARCH_SORT_UPDATED: _ClassVar[SearchSort]
    SEARCH_SORT_CREATED: _ClassVar[SearchSort]
MODEL_FORMAT_UNSPECIFIED: ModelFormat
MODEL_FORMAT_SAFETENSORS: ModelFormat
MODEL_FORMAT_GGUF: ModelFormat
MODEL_FORMAT_ONNX: ModelFormat
MODEL_FORMAT_PT: ModelFormat
MODEL_FORMAT_OTHER: ModelFormat
VERSION_STATUS_UNSPECIFIED: VersionStatus
VERSION_STATUS_PENDING: VersionStatus
VERSION_STATUS_READY: VersionStatus
VERSION_STATUS_FAILED: VersionStatus
VERSION_STATUS_DEPRECATED: VersionStatus
SEARCH_SORT_RELEVANCE: SearchSort
SEARCH_SORT_NAME: SearchSort
SEARCH_SORT_UPDATED: SearchSort
SEARCH_SORT_CREATED: SearchSort

class Model(_message.Message):
    __slots__ = ("name", "description", "family", "tags", "owner", "aliases", "latest_version", "create_revision", "mod_revision", "created_unix_ms", "updated_unix_ms", "version_count")
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    VERSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    family: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    owner: str
    aliases: _containers.ScalarMap[str, int]
    latest_version: int
    create_revision: int
    mod_revision: int
    created_unix_ms: int
    updated_unix_ms: int
    version_count: int
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., family: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., owner: _Optional[str] = ..., aliases: _Optional[_Mapping[str, int]] = ..., latest_version: _Optional[int] = ..., create_revision: _Optional[int] = ..., mod_revision: _Optional[int] = ..., created_unix_ms: _Optional[int] = ..., updated_unix_ms: _Optional[int] = ..., version_count: _Optional[int] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("model", "version", "sha256", "size_bytes", "format", "source_uri", "metadata", "status", "created_unix_ms", "create_revision", "mod_revision", "replicas", "tags", "metrics", "run_id", "parent")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    sha256: str
    size_bytes: int
    format: ModelFormat
    source_uri: str
    metadata: _containers.ScalarMap[str, str]
    status: VersionStatus
    created_unix_ms: int
    create_revision: int
    mod_revision: int
    replicas: _containers.RepeatedScalarFieldContainer[str]
    tags: _containers.ScalarMap[str, str]
    metrics: _containers.ScalarMap[str, float]
    run_id: str
    parent: VersionRef
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., format: _Optional[_Union[ModelFormat, str]] = ..., source_uri: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., status: _Optional[_Union[VersionStatus, str]] = ..., created_unix_ms: _Optional[int] = ..., create_revision: _Optional[int] = ..., mod_revision: _Optional[int] = ..., replicas: _Optional[_Iterable[str]] = ..., tags: _Optional[_Mapping[str, str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., run_id: _Optional[str] = ..., parent: _Optional[_Union[VersionRef, _Mapping]] = ...) -> None: ...

class VersionRef(_message.Message):
    __slots__ = ("model", "version", "sha256")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    sha256: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class ModelEvent(_message.Message):
    __slots__ = ("model", "version", "change")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    model: Model
    version: ModelVersion
    change: str
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ..., version: _Optional[_Union[ModelVersion, _Mapping]] = ..., change: _Optional[str] = ...) -> None: ...

class ModelDraft(_message.Message):
    __slots__ = ("description", "family", "tags", "owner")
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    description: str
    family: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    owner: str
    def __init__(self, description: _Optional[str] = ..., family: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., owner: _Optional[str] = ...) -> None: ...

class RegisterVersionRequest(_message.Message):
    __slots__ = ("model", "draft", "sha256", "size_bytes", "format", "source_uri", "metadata", "status", "request_id", "tags", "metrics", "run_id", "parent")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DRAFT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    model: str
    draft: ModelDraft
    sha256: str
    size_bytes: int
    format: ModelFormat
    source_uri: str
    metadata: _containers.ScalarMap[str, str]
    status: VersionStatus
    request_id: str
    tags: _containers.ScalarMap[str, str]
    metrics: _containers.ScalarMap[str, float]
    run_id: str
    parent: VersionRef
    def __init__(self, model: _Optional[str] = ..., draft: _Optional[_Union[ModelDraft, _Mapping]] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., format: _Optional[_Union[ModelFormat, str]] = ..., source_uri: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., status: _Optional[_Union[VersionStatus, str]] = ..., request_id: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., run_id: _Optional[str] = ..., parent: _Optional[_Union[VersionRef, _Mapping]] = ...) -> None: ...

class RegisterVersionResponse(_message.Message):
    __slots__ = ("header", "version", "model_created")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_CREATED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    version: ModelVersion
    model_created: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., version: _Optional[_Union[ModelVersion, _Mapping]] = ..., model_created: _Optional[bool] = ...) -> None: ...

class BulkRegisterRequest(_message.Message):
    __slots__ = ("versions", "request_id")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[RegisterVersionRequest]
    request_id: str
    def __init__(self, versions: _Optional[_Iterable[_Union[RegisterVersionRequest, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class BulkRegisterResponse(_message.Message):
    __slots__ = ("header", "versions", "models_created")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MODELS_CREATED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    models_created: int
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., models_created: _Optional[int] = ...) -> None: ...

class UpdateModelRequest(_message.Message):
    __slots__ = ("model", "fields", "update_mask", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    fields: ModelDraft
    update_mask: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    def __init__(self, model: _Optional[str] = ..., fields: _Optional[_Union[ModelDraft, _Mapping]] = ..., update_mask: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateModelResponse(_message.Message):
    __slots__ = ("header", "model")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    model: Model
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class SetVersionStatusRequest(_message.Message):
    __slots__ = ("model", "version", "status", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    status: VersionStatus
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., status: _Optional[_Union[VersionStatus, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SetVersionStatusResponse(_message.Message):
    __slots__ = ("header", "version")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    version: ModelVersion
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class UpdateVersionRequest(_message.Message):
    __slots__ = ("model", "version", "set_tags", "remove_tags", "set_metrics", "remove_metrics", "request_id")
    class SetTagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SetMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SET_TAGS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_TAGS_FIELD_NUMBER: _ClassVar[int]
    SET_METRICS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_METRICS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    set_tags: _containers.ScalarMap[str, str]
    remove_tags: _containers.RepeatedScalarFieldContainer[str]
    set_metrics: _containers.ScalarMap[str, float]
    remove_metrics: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., set_tags: _Optional[_Mapping[str, str]] = ..., remove_tags: _Optional[_Iterable[str]] = ..., set_metrics: _Optional[_Mapping[str, float]] = ..., remove_metrics: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateVersionResponse(_message.Message):
    __slots__ = ("header", "version", "changed")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    version: ModelVersion
    changed: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., version: _Optional[_Union[ModelVersion, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("model", "alias", "version", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    alias: str
    version: int
    request_id: str
    def __init__(self, model: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class SetAliasResponse(_message.Message):
    __slots__ = ("header", "model", "previous_version")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    model: Model
    previous_version: int
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., model: _Optional[_Union[Model, _Mapping]] = ..., previous_version: _Optional[int] = ...) -> None: ...

class DeleteVersionRequest(_message.Message):
    __slots__ = ("model", "version", "force", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    force: bool
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., force: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteVersionResponse(_message.Message):
    __slots__ = ("header", "deleted", "removed_aliases")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_ALIASES_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    deleted: bool
    removed_aliases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., deleted: _Optional[bool] = ..., removed_aliases: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("model", "force", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    force: bool
    request_id: str
    def __init__(self, model: _Optional[str] = ..., force: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ("header", "deleted")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    deleted: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., deleted: _Optional[bool] = ...) -> None: ...

class ReplicaRequest(_message.Message):
    __slots__ = ("model", "version", "node_id", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    node_id: str
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., node_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ReplicaResponse(_message.Message):
    __slots__ = ("header", "version", "changed", "warnings")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    version: ModelVersion
    changed: bool
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., version: _Optional[_Union[ModelVersion, _Mapping]] = ..., changed: _Optional[bool] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("read", "model")
    READ_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    model: str
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("header", "model", "versions")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    model: Model
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., model: _Optional[_Union[Model, _Mapping]] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...

class GetVersionRequest(_message.Message):
    __slots__ = ("read", "model", "version")
    READ_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    model: str
    version: str
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class GetVersionResponse(_message.Message):
    __slots__ = ("header", "version")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    version: ModelVersion
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("read", "prefix", "start_after", "limit")
    READ_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    prefix: str
    start_after: str
    limit: int
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., prefix: _Optional[str] = ..., start_after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("header", "models", "more")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    models: _containers.RepeatedCompositeFieldContainer[Model]
    more: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("read", "query", "tag", "family", "format", "status", "limit", "offset", "owner", "sort", "page_token")
    READ_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    read: _common_pb2.ReadOptions
    query: str
    tag: str
    family: str
    format: ModelFormat
    status: VersionStatus
    limit: int
    offset: int
    owner: str
    sort: SearchSort
    page_token: str
    def __init__(self, read: _Optional[_Union[_common_pb2.ReadOptions, _Mapping]] = ..., query: _Optional[str] = ..., tag: _Optional[str] = ..., family: _Optional[str] = ..., format: _Optional[_Union[ModelFormat, str]] = ..., status: _Optional[_Union[VersionStatus, str]] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., owner: _Optional[str] = ..., sort: _Optional[_Union[SearchSort, str]] = ..., page_token: _Optional[str] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("model", "score")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    model: Model
    score: float
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ..., score: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("header", "hits", "total", "query_ms", "engine", "suggestions", "next_page_token", "offset", "sort")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    QUERY_MS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    SUGGESTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.ResponseHeader
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    total: int
    query_ms: float
    engine: str
    suggestions: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    offset: int
    sort: SearchSort
    def __init__(self, header: _Optional[_Union[_common_pb2.ResponseHeader, _Mapping]] = ..., hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., total: _Optional[int] = ..., query_ms: _Optional[float] = ..., engine: _Optional[str] = ..., suggestions: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ..., offset: _Optional[int] = ..., sort: _Optional[_Union[SearchSort, str]] = ...) -> None: ...

class ModelsState(_message.Message):
    __slots__ = ("models", "versions")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...
