"""Running code around every RPC of the ``grpc.aio`` server, whatever its shape."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeAlias, cast

import grpc

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the stubs
Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
# Given the RPC's method name and context, what to enter before its handler runs and exit
# after it ended (its exception, if any, passes through the exit).
Around = Callable[[str, Ctx], AbstractAsyncContextManager[None]]


class AroundInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler (unary or streaming) in ``around``, except methods ``skip``
    says to leave alone."""

    def __init__(self, around: Around, skip: Callable[[str], bool] = lambda _: False) -> None:
        self.around = around
        self.skip = skip

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        found = await continuation(handler_call_details)
        method = handler_call_details.method
        if found is None or self.skip(method):
            return found
        # The stubs type handlers for the sync server; here they hold coroutine functions
        # and async generators, and are namedtuples (hence _replace).
        handler: Any = found
        around = self.around
        if handler.unary_unary is not None or handler.stream_unary is not None:
            inner: Any = handler.unary_unary or handler.stream_unary

            async def unary(request: Any, context: Ctx) -> Any:
                async with around(method, context):
                    return await inner(request, context)

            wrap = "unary_unary" if handler.unary_unary is not None else "stream_unary"
            return cast(Handler, handler._replace(**{wrap: unary}))
        inner_stream: Any = handler.unary_stream or handler.stream_stream

        async def streaming(request: Any, context: Ctx) -> AsyncIterator[Any]:
            async with around(method, context):
                async for item in inner_stream(request, context):
                    yield item

        wrap = "unary_stream" if handler.unary_stream is not None else "stream_stream"
        return cast(Handler, handler._replace(**{wrap: streaming}))


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError and friends: decided in the handler's task
            return _Undecodable(exc)

    return parse


async def _refuse(context: Ctx, method: str) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {method} message"
    )


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Request bytes that do not parse are INVALID_ARGUMENT: grpc.aio itself would answer
    UNKNOWN and log an error as if a handler had failed. Innermost, so that
    authentication comes first."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        found = await continuation(handler_call_details)
        handler: Any = found
        if handler is None or handler.request_deserializer is None:
            return found
        method = handler_call_details.method
        parse = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            inner: Any = handler.unary_unary

            async def unary(request: Any, context: Ctx) -> Any:
                if isinstance(request, _Undecodable):
                    await _refuse(context, method)
                return await inner(request, context)

            return cast(Handler, handler._replace(request_deserializer=parse, unary_unary=unary))
        if handler.unary_stream is not None:
            inner_stream: Any = handler.unary_stream

            async def unary_stream(request: Any, context: Ctx) -> AsyncIterator[Any]:
                if isinstance(request, _Undecodable):
                    await _refuse(context, method)
                async for item in inner_stream(request, context):
                    yield item

            return cast(
                Handler, handler._replace(request_deserializer=parse, unary_stream=unary_stream)
            )

        async def checked(requests: AsyncIterator[Any], context: Ctx) -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, _Undecodable):
                    await _refuse(context, method)
                yield request

        if handler.stream_unary is not None:
            inner_su: Any = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: Ctx) -> Any:
                return await inner_su(checked(requests, context), context)

            return cast(
                Handler, handler._replace(request_deserializer=parse, stream_unary=stream_unary)
            )
        inner_ss: Any = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any], context: Ctx) -> AsyncIterator[Any]:
            async for item in inner_ss(checked(requests, context), context):
                yield item

        return cast(
            Handler, handler._replace(request_deserializer=parse, stream_stream=stream_stream)
        )
