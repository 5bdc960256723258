"""The Models service: the model registry's versions, aliases, replicas and search."""

from __future__ import annotations

import grpc

from controlplane.errors import InvalidArgument, Unavailable
from controlplane.server.node import Node
from controlplane.server.search import page_offset, page_token
from controlplane.server.services._shared import (
    deadline_of,
    refuse_early,
    replicate,
    replicated_writes,
)
from controlplane.state import limits
from controlplane.state.models import ModelTable, check_version_fields
from controlplane.v1 import (
    common_pb2,
    models_pb2,
    models_pb2_grpc,
)


@replicated_writes(models_pb2.DESCRIPTOR.services_by_name["Models"])
class ModelsService(models_pb2_grpc.ModelsServicer):
    """Registry writes go through the log; reads come from the state machine, search from the local index."""

    def __init__(self, node: Node) -> None:
        self._node = node

    async def RegisterVersion(
        self, request: models_pb2.RegisterVersionRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.RegisterVersionResponse:
        refuse_early(lambda: check_version_fields(request))
        return await replicate(self._node, "model_register", request, models_pb2.RegisterVersionResponse)

    async def BulkRegister(
        self, request: models_pb2.BulkRegisterRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.BulkRegisterResponse:
        if request.ByteSize() > limits.MAX_RESTORE_BYTES:
            raise InvalidArgument(f"a bulk registration is one log entry, limited to {limits.MAX_RESTORE_BYTES} bytes")
        for index, item in enumerate(request.versions):
            try:
                refuse_early(lambda: check_version_fields(item))  # noqa: B023 (called at once)
            except InvalidArgument as exc:
                raise InvalidArgument(f"version #{index + 1} ({item.model}): {exc.message}") from None
        return await replicate(self._node, "model_bulk_register", request, models_pb2.BulkRegisterResponse)

    async def GetModel(
        self, request: models_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.GetModelResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        (model, versions), revision = self._node.read_table(
            ModelTable, lambda registry: (registry.model(request.model), registry.versions_of(request.model))
        )
        return models_pb2.GetModelResponse(header=self._node.header(revision), model=model, versions=versions)

    async def GetVersion(
        self, request: models_pb2.GetVersionRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.GetVersionResponse:
        await self._node.prepare_read(request.read, deadline_of(context))
        version, revision = self._node.read_table(
            ModelTable, lambda registry: registry.resolve(request.model, request.version or "latest")
        )
        return models_pb2.GetVersionResponse(header=self._node.header(revision), version=version)

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        if request.limit > limits.MAX_LIST_LIMIT:
            raise InvalidArgument(f"limit {request.limit} is above the maximum {limits.MAX_LIST_LIMIT}")
        await self._node.prepare_read(request.read, deadline_of(context))
        (models, more), revision = self._node.read_table(
            ModelTable,
            lambda registry: registry.list_models(
                request.prefix, request.start_after, request.limit or limits.MAX_LIST_LIMIT
            ),
        )
        return models_pb2.ListModelsResponse(header=self._node.header(revision), models=models, more=more)

    async def Search(
        self, request: models_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.SearchResponse:
        offset, continued_from = page_offset(request)  # bad input is refused before any work
        await self._node.prepare_read(request.read, deadline_of(context))
        # The index trails the state machine by one catch-up: wait until it reflects what this read
        # may see (everything applied, for LINEARIZABLE; min_revision, for STALE), and never less
        # than the page that gave the token (a lagging server must not answer an older page 2).
        stale = request.read.consistency == common_pb2.CONSISTENCY_STALE
        required = max(request.read.min_revision if stale else self._node.applied_revision, continued_from)
        if self._node.indexer is None:
            raise Unavailable(f"{self._node.node_id} is still starting: its search index is not built yet")
        index = await self._node.indexer.wait_indexed(required, deadline_of(context))
        page = await index.search(
            request.query,
            tag=request.tag,
            family=request.family,
            format=request.format,
            status=request.status,
            owner=request.owner,
            limit=request.limit or 20,
            offset=offset,
            sort=request.sort,
        )
        following = offset + len(page.hits)
        more = bool(page.hits) and following < page.total
        hits, _ = self._node.read_table(
            ModelTable,
            lambda registry: [
                models_pb2.SearchHit(model=registry.models[name], score=score)
                for name, score in page.hits
                if name in registry.models
            ],
        )
        return models_pb2.SearchResponse(
            header=self._node.header(page.revision),
            hits=hits,
            total=page.total,
            query_ms=page.query_ms,
            engine=page.engine,
            suggestions=page.suggestions,
            next_page_token=page_token(request, following, page.revision) if more else "",
            offset=offset,
            sort=request.sort,
        )
