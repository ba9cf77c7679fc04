"""The Tasks servicer: submit a task of any kind, then get, wait for or cancel it by id.

The batch RPCs of the same service (SubmitBatch, GetBatch, StreamBatchResults) live in
:mod:`services.gateway.batches`. The caller's tenant is read once, at the top of each
handler, and passed on.
"""

from __future__ import annotations

import grpc
from opentelemetry import trace

from nlp.v1 import tasks_pb2, tasks_pb2_grpc
from services.gateway.auth import Tenant, caller
from services.gateway.batches import BatchRpcs
from services.gateway.core import Gateway, _abort
from services.gateway.interceptors import Ctx
from shared.contracts.envelope import TERMINAL_STATUSES, valid_task_id
from shared.contracts.errors import InvalidRequestError
from shared.contracts.idempotency import fingerprint, key_problems
from shared.contracts.names import kind_name
from shared.observability.telemetry import ATTR_KIND, ATTR_TASK_ID


class TasksService(BatchRpcs, tasks_pb2_grpc.TasksServicer):
    """The Tasks service: Submit, Get, Wait and Cancel here, the batch RPCs from
    :class:`BatchRpcs`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.settings

    async def Submit(  # noqa: N802
        self, request: tasks_pb2.SubmitRequest, context: Ctx
    ) -> tasks_pb2.SubmitResponse:
        """Submit a task of any kind; it runs whether or not the caller waits for it."""
        owner = caller()
        key = request.idempotency_key
        try:
            if problems := key_problems(key):
                raise InvalidRequestError(problems)
            envelope = await self.gateway.submitted_envelope(owner, request)
        except InvalidRequestError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except PermissionError as exc:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        trace.get_current_span().set_attributes(
            {ATTR_TASK_ID: envelope.task_id, ATTR_KIND: kind_name(envelope.kind)}
        )
        if key:
            asked = tasks_pb2.SubmitRequest()
            asked.CopyFrom(request)
            asked.ClearField("idempotency_key")
            fp = fingerprint("submit", asked)
            return await self.gateway.submit_once(context, owner, envelope, key, fp)
        await self.gateway.submit(context, owner, envelope)
        return tasks_pb2.SubmitResponse(
            task_id=envelope.task_id, kind=envelope.kind, deadline=envelope.deadline
        )

    async def _checked_id(self, task_id: str, context: Ctx) -> str:
        if not valid_task_id(task_id):
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "task_id is missing or malformed"
            )
        return task_id

    async def _existing(self, owner: Tenant, task_id: str, context: Ctx) -> tasks_pb2.TaskResult:
        current = await self.gateway.store.get(await self._checked_id(task_id, context))
        # Another tenant's task is answered exactly like a missing one.
        if current is None or not owner.sees(current.tenant):
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no task {task_id}")
        return current

    async def Get(  # noqa: N802
        self, request: tasks_pb2.GetTaskRequest, context: Ctx
    ) -> tasks_pb2.TaskResult:
        """The task's current state."""
        return await self._existing(caller(), request.task_id, context)

    async def Wait(  # noqa: N802
        self, request: tasks_pb2.WaitTaskRequest, context: Ctx
    ) -> tasks_pb2.TaskResult:
        """The task's result once it ends, or its state when the wait times out."""
        owner = caller()
        if request.timeout_ms < 0:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "timeout_ms must be >= 0")
        await self._existing(owner, request.task_id, context)
        timeout = min(
            request.timeout_ms / 1000 if request.timeout_ms else self.settings.wait_default_s,
            self.settings.wait_max_s,
        )
        remaining = context.time_remaining()
        if remaining is not None:
            # Answer with the current state just before the caller's own deadline.
            timeout = min(timeout, max(0.0, remaining - 0.05))
        result = await self.gateway.waiter.wait(request.task_id, timeout)
        if result is None or not owner.sees(result.tenant):
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no task {request.task_id}")
        return result

    async def Cancel(  # noqa: N802
        self, request: tasks_pb2.CancelTaskRequest, context: Ctx
    ) -> tasks_pb2.CancelTaskResponse:
        """Cancel the task unless it already ended; either way, its result."""
        current = await self._existing(caller(), request.task_id, context)
        if current.status not in TERMINAL_STATUSES:
            cancelled = await self.gateway.cancel(current, "cancelled by request")
            if cancelled is not None:
                return tasks_pb2.CancelTaskResponse(cancelled=True, result=cancelled)
        final = await self.gateway.store.get(request.task_id)
        return tasks_pb2.CancelTaskResponse(cancelled=False, result=final)
