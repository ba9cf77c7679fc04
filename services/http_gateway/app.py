"""The OpenAI-compatible HTTP front door: a Starlette application over the gateway's core.

Routes: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (``stream: true`` as server-sent events), the Files and Batch
APIs (:mod:`services.http_gateway.batch_api`), and ``GET /health`` for probes. The same API keys, tenants, quotas and lanes as gRPC (``Authorization:
Bearer``): every request goes through the gRPC gateway's authenticator, dependency guard
and publishing core (:class:`services.gateway.core.Gateway`) via :class:`HttpCall`.
A client that disconnects cancels its generation.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar, cast

import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from nlp.v1 import generation_pb2
from services.gateway.auth import DEV_TENANT, Authenticator, Tenant
from services.gateway.core import Gateway
from services.http_gateway.batch_api import BatchRoutes
from services.http_gateway.batches import BatchRunner
from services.http_gateway.call import (
    CallAborted,
    HttpCall,
    aborted_error,
    error_body,
    error_response,
    sse_error,
)
from services.http_gateway.completions import (
    Asked,
    BadRequestError,
    ChunkWriter,
    chat_request,
    completion,
    completion_request,
)
from services.http_gateway.settings import Settings
from shared.transport.outages import (
    KAFKA,
    REDIS,
    UNAVAILABLE_DETAILS,
    KafkaUnavailableError,
    dependency_of,
)

log = logging.getLogger(__name__)

# The gRPC methods whose dependencies (Kafka, Redis) each route needs.
_GENERATE = "/nlp.v1.Generation/Generate"
_LIST_MODELS = "/nlp.v1.Models/List"

_T = TypeVar("_T")


class ClientGone(Exception):  # noqa: N818 (an outcome)
    """The client disconnected before its answer."""


class FrontDoor:
    """The routes, over one :class:`Gateway` (and an authenticator unless in dev mode)."""

    def __init__(
        self, gateway: Gateway, authenticator: Authenticator | None, runner: BatchRunner
    ) -> None:
        self.gateway = gateway
        self.authenticator = authenticator
        self.settings = gateway.settings
        self.batch_routes = BatchRoutes(
            cast(Settings, gateway.settings),
            runner.files,
            runner.batches,
            runner,
            self.owner,
            self.answer,
        )

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/models/{model:path}", self.model, methods=["GET"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                *self.batch_routes.routes(),
            ]
        )

    # --- plumbing --------------------------------------------------------------------

    async def owner(self, call: HttpCall) -> Tenant:
        if self.authenticator is None:
            return DEV_TENANT
        return await self.authenticator.admit_call(call.invocation_metadata(), call.context)

    async def _served(self) -> list[str]:
        return [m["name"] for m in await self.gateway.catalog.models("generation")]

    async def answer(self, call: HttpCall, method: str, work: Awaitable[Response]) -> Response:
        """Run a route's work under the dependency guard; errors as OpenAI errors."""
        try:
            async with self.gateway.deps.guard(method, call.context):
                return await work
        except CallAborted as exc:
            status, body = aborted_error(exc)
            return error_response(status, body, exc.retry_after_ms)
        except BadRequestError as exc:
            return error_response(
                400, error_body(400, exc.message, "invalid_request_error", exc.code, exc.param)
            )
        except ClientGone:
            return Response(status_code=499)
        except Exception:
            # A bug: logged with its traceback, answered in OpenAI's shape, never leaked.
            log.exception("request failed")
            return error_response(
                500, error_body(500, "internal error", "server_error", "internal_error")
            )

    async def _unless_gone(self, request: Request, work: Awaitable[_T]) -> _T:
        """``work``'s outcome, or ClientGone (``work`` cancelled) when the client
        disconnects first."""
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not task.done():
            task.cancel()
            raise ClientGone
        return task.result()

    # --- routes ----------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        deps = self.gateway.deps
        missing = deps.missing((REDIS, KAFKA))
        if missing:
            return JSONResponse({"status": "unavailable", "missing": missing}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> Response:
        call = HttpCall(request.headers)

        async def work() -> Response:
            await self.owner(call)
            data = [_model(name) for name in await self._served()]
            return JSONResponse({"object": "list", "data": data})

        return await self.answer(call, _LIST_MODELS, work())

    async def model(self, request: Request) -> Response:
        call = HttpCall(request.headers)
        name = request.path_params["model"]

        async def work() -> Response:
            await self.owner(call)
            if name not in await self._served():
                return _no_model(name)
            return JSONResponse(_model(name))

        return await self.answer(call, _LIST_MODELS, work())

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def _complete(self, request: Request, chat: bool) -> Response:
        call = HttpCall(request.headers)
        streaming = False

        async def work() -> Response:
            nonlocal streaming
            body = await _json_body(request, self.settings.max_message_bytes)
            owner = await self.owner(call)
            asked = chat_request(body) if chat else completion_request(body)
            served = await self._served()
            if served and asked.model not in served:
                return _no_model(asked.model)
            if asked.stream:
                stream = await self._open_stream(call, owner, asked)
                streaming = True
                return StreamingResponse(stream, media_type="text/event-stream")
            response: generation_pb2.GenerateResponse = await self._unless_gone(
                request, self.gateway.run_sync(call.context, owner, "generation", asked.request)
            )
            return JSONResponse(completion(asked, response))

        try:
            return await self.answer(call, _GENERATE, work())
        finally:
            if not streaming:
                call.end()

    async def _open_stream(self, call: HttpCall, owner: Tenant, asked: Asked) -> AsyncIterator[str]:
        """Publish the generation now (so that refusals are HTTP statuses), and return
        its events: deltas as they come, the finish, the usage, ``[DONE]``."""
        task = await self.gateway.open_sync(
            call.context, owner, "generation", asked.request, self.settings.stream_deadline_s
        )
        self.gateway.stop_when_done(call.context, task)
        writer = ChunkWriter(asked, task.envelope.task_id)

        async def events() -> AsyncIterator[str]:
            try:
                if first := writer.first():
                    yield first
                async for chunk in self.gateway.relay(call.context, task.envelope.task_id, task):
                    if chunk.finish_reason:
                        task.settled = True
                        yield writer.last(chunk)
                        return
                    yield writer.delta(chunk.delta)
            except CallAborted as exc:
                yield sse_error(aborted_error(exc)[1])
            except (redis.RedisError, OSError, KafkaUnavailableError) as exc:
                dependency = dependency_of(exc) or REDIS
                yield sse_error(
                    error_body(
                        503, UNAVAILABLE_DETAILS[dependency], "server_error", "service_unavailable"
                    )
                )
            finally:
                # A client that went away cancels the stream here: its generation stops.
                call.end()

        return events()


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "nlp-platform"}


def _no_model(name: str) -> Response:
    message = f"The model '{name}' does not exist"
    return error_response(
        404, error_body(404, message, "invalid_request_error", "model_not_found", "model")
    )


async def _json_body(request: Request, limit: int) -> Any:
    body = await request.body()
    if len(body) > limit:
        raise BadRequestError(f"the request body is over {limit} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequestError("the request body is not valid JSON") from None


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body was read before)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
