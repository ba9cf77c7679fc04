"""The synchronous capability servicers: Classification, Ner, Summarization, Generation
(including its token streams) and Models.

Each RPC publishes a task and waits for it (see :class:`services.gateway.core.Gateway`);
the gRPC deadline becomes the envelope deadline. The caller's tenant is read once, at the
top of each handler, and passed on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from nlp.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    ner_pb2,
    ner_pb2_grpc,
    summarization_pb2,
    summarization_pb2_grpc,
)
from services.gateway.auth import caller
from services.gateway.core import Gateway, _abort
from services.gateway.interceptors import Ctx
from shared.contracts.envelope import valid_task_id
from shared.contracts.names import ALL_KINDS, KIND_NAMES, kind_name, kind_value


class ClassificationService(classification_pb2_grpc.ClassificationServicer):
    """Classify: a classification task, waited for."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def Classify(  # noqa: N802 (gRPC method name)
        self,
        request: classification_pb2.ClassifyRequest,
        context: Ctx,
    ) -> classification_pb2.ClassifyResponse:
        response: classification_pb2.ClassifyResponse = await self.gateway.run_sync(
            context, caller(), "classification", request
        )
        return response


class NerService(ner_pb2_grpc.NerServicer):
    """Recognize: a named-entity recognition task, waited for."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def Recognize(  # noqa: N802
        self, request: ner_pb2.NerRequest, context: Ctx
    ) -> ner_pb2.NerResponse:
        response: ner_pb2.NerResponse = await self.gateway.run_sync(
            context, caller(), "ner", request
        )
        return response


class SummarizationService(summarization_pb2_grpc.SummarizationServicer):
    """Summarize: a summarization task, waited for."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def Summarize(  # noqa: N802
        self,
        request: summarization_pb2.SummarizeRequest,
        context: Ctx,
    ) -> summarization_pb2.SummarizeResponse:
        response: summarization_pb2.SummarizeResponse = await self.gateway.run_sync(
            context, caller(), "summarization", request
        )
        return response


class GenerationService(generation_pb2_grpc.GenerationServicer):
    """Generate (waited for), GenerateStream (its tokens as they come) and StreamTask (the
    tokens of a generation task submitted earlier)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.settings

    async def Generate(  # noqa: N802
        self, request: generation_pb2.GenerateRequest, context: Ctx
    ) -> generation_pb2.GenerateResponse:
        response: generation_pb2.GenerateResponse = await self.gateway.run_sync(
            context, caller(), "generation", request
        )
        return response

    async def GenerateStream(  # noqa: N802
        self, request: generation_pb2.GenerateRequest, context: Ctx
    ) -> AsyncIterator[generation_pb2.GenerateChunk]:
        task = await self.gateway.open_sync(
            context, caller(), "generation", request, self.settings.stream_deadline_s
        )
        self.gateway.stop_when_done(context, task)
        async for chunk in self.gateway.relay(context, task.envelope.task_id, task):
            yield chunk
        task.settled = True

    async def StreamTask(  # noqa: N802
        self, request: generation_pb2.StreamTaskRequest, context: Ctx
    ) -> AsyncIterator[generation_pb2.GenerateChunk]:
        owner = caller()
        if not valid_task_id(request.task_id):
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "task_id is missing or malformed"
            )
        current = await self.gateway.store.get(request.task_id)
        if current is None or not owner.sees(current.tenant):
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no task {request.task_id}")
        if current.kind != common_pb2.KIND_GENERATION:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"task {request.task_id} is a {kind_name(current.kind)} task; only "
                "generation tasks stream tokens",
            )
        async for chunk in self.gateway.relay(context, request.task_id, None):
            yield chunk


class ModelsService(models_pb2_grpc.ModelsServicer):
    """List: the models of the catalog, of one kind or all."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def List(  # noqa: N802
        self, request: models_pb2.ListModelsRequest, context: Ctx
    ) -> models_pb2.ListModelsResponse:
        if request.kind and request.kind not in KIND_NAMES:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"unknown kind {request.kind}")
        kinds = [kind_name(request.kind)] if request.kind else list(ALL_KINDS)
        response = models_pb2.ListModelsResponse()
        for kind in kinds:
            for model in await self.gateway.catalog.models(kind):
                response.models.add(
                    kind=kind_value(kind),
                    name=model["name"],
                    version=model["version"],
                    engine=model["engine"],
                    default=model["default"],
                    labels=model.get("labels", ()),
                    multi_label=model.get("multi_label", False),
                )
        return response
