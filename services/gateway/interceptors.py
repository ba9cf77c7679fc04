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
