"""Relaying a generation task's token stream (Redis) to a gRPC stream.

Deltas are relayed as they arrive; the worker's end entry becomes the last chunk.
The task's result is awaited alongside: a task that ends without an end entry
(cancelled, failed, past its deadline, never started) ends the relay with its status.

A stream with a gap (the worker numbers its entries; a Redis failover can lose the last
ones the old primary took) is relayed up to the gap only: the rest comes from the
result, so a reader never gets text with a hole in it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable

import grpc

from nlp.v1 import common_pb2, generation_pb2, tasks_pb2
from shared.contracts.envelope import TERMINAL_STATUSES
from shared.transport.streams import Delta, End, StreamReader

_RESULT_AFTER_END_S = 5.0


class RelayEnded(Exception):  # noqa: N818 (an outcome)
    """The stream ended without its last chunk: the status to answer with."""

    def __init__(
        self, code: grpc.StatusCode, message: str, result: tasks_pb2.TaskResult | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.result = result


def _final(task_id: str, index: int, end: End) -> generation_pb2.GenerateChunk:
    return generation_pb2.GenerateChunk(
        task_id=task_id,
        index=index,
        finish_reason=end.finish_reason,  # type: ignore[arg-type]
        prompt_tokens=end.prompt_tokens,
        completion_tokens=end.completion_tokens,
    )


async def relay_tokens(
    reader: StreamReader,
    task_id: str,
    result: Awaitable[tasks_pb2.TaskResult | None],
    poll_ms: int,
) -> AsyncIterator[generation_pb2.GenerateChunk]:
    """Chunks of ``task_id`` (whose stream ``reader`` reads) from its first token; raises
    :class:`RelayEnded` when the task ends otherwise. ``result`` resolves to the task's
    result (or its state when waiting for it timed out)."""
    outcome = asyncio.ensure_future(result)
    attempt: int | None = None
    sent: list[str] = []
    index = 0
    expected = 0  # the worker's index of the next entry of the attempt relayed
    gap = False
    try:
        while True:
            done = outcome.done()
            entries = await reader.read(None if done else poll_ms)
            for entry in entries:
                if attempt is None or (entry.attempt != attempt and not sent):
                    attempt, expected, gap = entry.attempt, 0, False
                if entry.attempt != attempt or gap:
                    # A retry (its first worker died) after text of the earlier attempt
                    # went out: mixing them would garble the text; the result decides.
                    continue
                if entry.index != expected:
                    gap = True  # entries lost: the result decides the rest
                    continue
                expected += 1
                if isinstance(entry, Delta):
                    sent.append(entry.text)
                    yield generation_pb2.GenerateChunk(
                        task_id=task_id, delta=entry.text, index=index
                    )
                    index += 1
                else:
                    # The worker stores the result right after the end entry: once the
                    # stream ends, Tasks.Get says it finished.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(outcome), _RESULT_AFTER_END_S)
                    yield _final(task_id, index, entry)
                    return
            if not done or entries:
                continue
            final = outcome.result()
            if final is None or final.status not in TERMINAL_STATUSES:
                raise RelayEnded(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "no result within the deadline", final
                )
            if final.status != common_pb2.TASK_STATUS_SUCCEEDED:
                raise RelayEnded(grpc.StatusCode.UNKNOWN, final.error.message, final)
            # Succeeded without an end entry of the attempt relayed: a retry produced the
            # result, or the stream expired. Finish from the result when it continues
            # what was sent.
            text, so_far = final.generation.text, "".join(sent)
            if not text.startswith(so_far):
                raise RelayEnded(
                    grpc.StatusCode.ABORTED,
                    "the generation was restarted after a worker failure and its text "
                    "changed; the complete result is available from Tasks.Get",
                )
            if len(text) > len(so_far):
                yield generation_pb2.GenerateChunk(
                    task_id=task_id, delta=text[len(so_far) :], index=index
                )
                index += 1
            g = final.generation
            yield _final(
                task_id,
                index,
                End(0, index, g.finish_reason, g.prompt_tokens, g.completion_tokens),
            )
            return
    finally:
        if not outcome.done():
            outcome.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await outcome
