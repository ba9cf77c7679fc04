"""The routes of OpenAI's Files and Batch APIs.

``POST /v1/files`` (multipart: ``file``, ``purpose=batch``), ``GET /v1/files``,
``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``;
``POST /v1/batches``, ``GET /v1/batches``, ``GET /v1/batches/{id}``,
``POST /v1/batches/{id}/cancel``. Files and batches belong to the caller's tenant.
Creating a batch records it and wakes this door's :class:`BatchRunner`; the work itself
happens there (:mod:`services.http_gateway.batches`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive

from services.http_gateway import batchfile as bf
from services.http_gateway.batches import BatchRunner, BatchStore
from services.http_gateway.call import HttpCall, error_body, error_response
from services.http_gateway.completions import BadRequestError
from services.http_gateway.files import FileStorageError, FileStore, FileTooLargeError
from services.http_gateway.settings import Settings

if TYPE_CHECKING:
    from services.gateway.auth import Tenant

log = logging.getLogger(__name__)

# Files and batches need Redis alone (the runner needs Kafka, and waits for it).
_REDIS_ONLY = "/nlp.v1.Tasks/GetBatch"
_BATCH_FIELDS = {"input_file_id", "endpoint", "completion_window", "metadata"}
# A multipart body carries some bytes beside the file's own.
_FORM_OVERHEAD = 64 * 1024


class BatchRoutes:
    """The routes, given the front door's authentication and error handling."""

    def __init__(
        self,
        settings: Settings,
        files: FileStore,
        batches: BatchStore,
        runner: BatchRunner,
        owner: Callable[[HttpCall], Awaitable[Tenant]],
        answer: Callable[[HttpCall, str, Awaitable[Response]], Awaitable[Response]],
    ) -> None:
        self.settings = settings
        self.files = files
        self.batches = batches
        self.runner = runner
        self.owner = owner
        self.answer = answer

    def routes(self) -> list[Route]:
        return [
            Route("/v1/files", self.upload, methods=["POST"]),
            Route("/v1/files", self.list_files, methods=["GET"]),
            Route("/v1/files/{file_id}", self.get_file, methods=["GET"]),
            Route("/v1/files/{file_id}", self.delete_file, methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", self.file_content, methods=["GET"]),
            Route("/v1/batches", self.create_batch, methods=["POST"]),
            Route("/v1/batches", self.list_batches, methods=["GET"]),
            Route("/v1/batches/{batch_id}", self.get_batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", self.cancel_batch, methods=["POST"]),
        ]

    def _run(
        self, request: Request, work: Callable[[Tenant], Awaitable[Response]]
    ) -> Awaitable[Response]:
        call = HttpCall(request.headers)

        async def routed() -> Response:
            try:
                return await work(await self.owner(call))
            except FileStorageError as exc:
                log.error("file storage failed", extra={"error": str(exc)})
                message = "file storage is unavailable; retry later"
                return error_response(
                    503, error_body(503, message, "server_error", "service_unavailable")
                )
            finally:
                call.end()

        return self.answer(call, _REDIS_ONLY, routed())

    # --- files ---------------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        limit = self.settings.max_file_bytes

        async def work(owner: Tenant) -> Response:
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > limit + _FORM_OVERHEAD:
                return _too_large(limit)
            bounded = Request(request.scope, _bounded(request.receive, limit + _FORM_OVERHEAD))
            try:
                async with bounded.form(max_files=1, max_fields=8) as form:
                    purpose = form.get("purpose")
                    upload = form.get("file")
                    if purpose != "batch":
                        raise BadRequestError(
                            "'purpose' must be 'batch' (the only use of files here)", "purpose"
                        )
                    if not isinstance(upload, UploadFile):
                        raise BadRequestError("'file' is required", "file")
                    made = await self.files.create(
                        owner.name, _filename(upload), purpose, _chunks(upload), limit
                    )
            except (FileTooLargeError, _BodyTooLargeError):
                return _too_large(limit)
            return JSONResponse(made)

        return await self._run(request, work)

    async def list_files(self, request: Request) -> Response:
        async def work(owner: Tenant) -> Response:
            params = request.query_params
            purpose = params.get("purpose")
            order = params.get("order", "desc")
            if order not in ("asc", "desc"):
                raise BadRequestError("'order' must be asc or desc", "order")
            limit = _limit(params.get("limit"), 10_000, 10_000)
            found, more = await self.files.page(
                owner.name, purpose, limit, params.get("after"), order == "desc"
            )
            return JSONResponse(bf.page(found, more))

        return await self._run(request, work)

    async def _file(self, owner: Tenant, request: Request) -> dict[str, str] | None:
        return await self.files.get(owner.name, request.path_params["file_id"])

    async def get_file(self, request: Request) -> Response:
        async def work(owner: Tenant) -> Response:
            found = await self._file(owner, request)
            if found is None:
                return _no_file(request.path_params["file_id"])
            return JSONResponse(bf.file_object(found))

        return await self._run(request, work)

    async def file_content(self, request: Request) -> Response:
        async def work(owner: Tenant) -> Response:
            found = await self._file(owner, request)
            if found is None:
                return _no_file(request.path_params["file_id"])
            return FileResponse(
                await self.files.readable(owner.name, found["id"]),
                media_type="application/jsonl",
                filename=found["filename"],
            )

        return await self._run(request, work)

    async def delete_file(self, request: Request) -> Response:
        async def work(owner: Tenant) -> Response:
            file_id = request.path_params["file_id"]
            if not await self.files.delete(owner.name, file_id):
                return _no_file(file_id)
            return JSONResponse({"id": file_id, "object": "file", "deleted": True})

        return await self._run(request, work)

    # --- batches -------------------------------------------------------------------

    async def create_batch(self, request: Request) -> Response:
        async def work(owner: Tenant) -> Response:
            body = await _json(request)
            unknown = sorted(set(body) - _BATCH_FIELDS)
            if unknown:
                raise BadRequestError(
                    f"unsupported parameter: '{unknown[0]}'", unknown[0], "unsupported_parameter"
                )
            endpoint = body.get("endpoint")
            if endpoint not in bf.ENDPOINTS:
                raise BadRequestError(
                    f"'endpoint' must be one of {', '.join(bf.ENDPOINTS)}", "endpoint"
                )
            if body.get("completion_window") != bf.WINDOW:
                raise BadRequestError(
                    f"'completion_window' must be '{bf.WINDOW}'", "completion_window"
                )
            problem = bf.metadata_problem(body.get("metadata"))
            if problem:
                raise BadRequestError(problem, "metadata")
            file_id = body.get("input_file_id")
            found = await self.files.get(owner.name, file_id) if isinstance(file_id, str) else None
            if found is None:
                return _no_file(str(file_id), "input_file_id")
            if found["purpose"] != "batch":
                raise BadRequestError("the input file's purpose must be 'batch'", "input_file_id")
            now = time.time()
            fields = {
                "status": bf.VALIDATING,
                "endpoint": endpoint,
                "input_file_id": found["id"],
                "completion_window": bf.WINDOW,
                "created_at": f"{now:.6f}",
                "expires_at": f"{now + bf.WINDOW_S:.6f}",
            }
            if body.get("metadata") is not None:
                fields["metadata"] = json.dumps(body["metadata"])
            batch_id = await self.batches.create(owner.name, fields)
            self.runner.wake()
            return JSONResponse(bf.batch_object(batch_id, fields))

        return await self._run(request, work)

    async def list_batches(self, request: Request) -> Response:
        async def work(owner: Tenant) -> Response:
            params = request.query_params
            limit = _limit(params.get("limit"), 20, 100)
            found, more = await self.batches.page(owner.name, limit, params.get("after"))
            return JSONResponse(bf.page(found, more))

        return await self._run(request, work)

    async def get_batch(self, request: Request) -> Response:
        return await self._one_batch(request, self.batches.get)

    async def cancel_batch(self, request: Request) -> Response:
        return await self._one_batch(request, self.batches.cancel)

    async def _one_batch(
        self, request: Request, fetch: Callable[[str, str], Awaitable[dict[str, str] | None]]
    ) -> Response:
        """The batch of the path as ``fetch`` (read, or cancel) leaves it; 404 if none."""

        async def work(owner: Tenant) -> Response:
            batch_id = request.path_params["batch_id"]
            fields = await fetch(owner.name, batch_id)
            if fields is None:
                return _no_batch(batch_id)
            return JSONResponse(bf.batch_object(batch_id, fields))

        return await self._run(request, work)


# --- helpers ---------------------------------------------------------------------------


class _BodyTooLargeError(Exception):
    pass


def _bounded(receive: Receive, limit: int) -> Receive:
    """``receive`` that refuses a body over ``limit`` bytes as it arrives."""
    seen = 0

    async def bounded() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLargeError
        return message

    return bounded


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(1 << 20):
        yield chunk


def _filename(upload: UploadFile) -> str:
    name = (upload.filename or "upload.jsonl").replace("/", "_").replace("\\", "_")
    return name[:255]


def _limit(raw: str | None, default: int, most: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise BadRequestError(f"'limit' must be an integer from 1 to {most}", "limit")
    return int(raw)


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise BadRequestError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object")
    return body


def _too_large(limit: int) -> Response:
    message = f"a file is at most {limit} bytes"
    return error_response(413, error_body(413, message, "invalid_request_error", "file_too_large"))


def _no_file(file_id: str, param: str | None = None) -> Response:
    message = f"No such File object: {file_id[:64]}"
    return error_response(404, error_body(404, message, "invalid_request_error", None, param))


def _no_batch(batch_id: str) -> Response:
    message = f"No such Batch object: {batch_id[:64]}"
    return error_response(404, error_body(404, message, "invalid_request_error", None))
