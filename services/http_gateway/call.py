"""An HTTP request seen as the gRPC call the gateway's core expects, and the core's gRPC
statuses seen as OpenAI errors.

The core (:class:`services.gateway.core.Gateway`) and the authenticator use a small part
of ``grpc.aio.ServicerContext``: ``abort``, ``time_remaining``, ``invocation_metadata``,
``auth_context`` and ``add_done_callback``. :class:`HttpCall` is that part for one HTTP
request, so both front doors share one publishing and waiting path; an abort becomes
:class:`CallAborted`, answered by :func:`error_response`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, cast

import grpc
from starlette.responses import JSONResponse

from services.gateway.interceptors import Ctx

# gRPC status → HTTP status, OpenAI error type and code.
_ERRORS: dict[grpc.StatusCode, tuple[int, str, str | None]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", None),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error", None),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error", None),
    grpc.StatusCode.UNAUTHENTICATED: (401, "invalid_request_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "invalid_request_error", "permission_denied"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error", "conflict"),
    grpc.StatusCode.ABORTED: (409, "server_error", "aborted"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "requests", "rate_limit_exceeded"),
    grpc.StatusCode.CANCELLED: (499, "invalid_request_error", "cancelled"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error", "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "server_error", "timeout"),
}


class CallAborted(Exception):  # noqa: N818 (an outcome)
    """What the core answered instead of a result."""

    def __init__(self, code: grpc.StatusCode, details: str, retry_after_ms: int = 0) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.retry_after_ms = retry_after_ms


class HttpCall:
    """One HTTP request in the role of a gRPC call (see the module's docstring)."""

    def __init__(self, headers: Mapping[str, str], deadline_s: float | None = None) -> None:
        # Lower-case names, as gRPC metadata: authorization, idempotency-key, …
        self._metadata = tuple((k.lower(), v) for k, v in headers.items())
        self._deadline = None if deadline_s is None else time.monotonic() + deadline_s
        self._callbacks: list[Callable[[Any], None]] = []
        self._ended = False

    @property
    def context(self) -> Ctx:
        """This call, typed as what the core's signatures name."""
        return cast(Ctx, self)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        retry = dict(trailing_metadata or ()).get("retry-after-ms", "0")
        raise CallAborted(code, details, int(retry) if str(retry).isdigit() else 0)

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # no client certificates over HTTP here

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._ended:
            callback(self)
        else:
            self._callbacks.append(callback)

    def end(self) -> None:
        """The request is over (answered, or its client went away): run the callbacks
        the core registered (a generation nobody waits for is stopped)."""
        if self._ended:
            return
        self._ended = True
        for callback in self._callbacks:
            callback(self)


def error_body(
    status: int, message: str, kind: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def aborted_error(exc: CallAborted) -> tuple[int, dict[str, Any]]:
    """The HTTP status and OpenAI error object of a core's abort."""
    status, kind, code = _ERRORS.get(exc.code, (500, "server_error", None))
    return status, error_body(status, exc.details, kind, code)


def error_response(status: int, body: dict[str, Any], retry_after_ms: int = 0) -> JSONResponse:
    headers = {}
    if retry_after_ms:
        headers["retry-after"] = str(max(1, -(-retry_after_ms // 1000)))
        headers["retry-after-ms"] = str(retry_after_ms)
    return JSONResponse(body, status_code=status, headers=headers)


def sse_error(body: dict[str, Any]) -> str:
    """An error after a stream began: one ``data:`` event with the error object."""
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
