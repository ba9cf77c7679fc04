"""Models by name: what a worker serves, how a request picks one, what clients are told.

A kind's settings hold ``models`` (name → :class:`ModelSpec`) and a ``default_model``.
Each spec names an *engine* (an implementation the worker knows how to build) plus
a local ``path`` and engine ``params``; nothing is ever fetched from a hub. The worker
builds one :class:`Engine` per spec, serves requests by name, and advertises what it
serves in Redis so the gateway can list models and reject unknown names early.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import redis
from google.protobuf.message import Message
from opentelemetry import trace

from nlp.v1 import classification_pb2, common_pb2
from shared.contracts.envelope import classification_model_problems
from shared.contracts.errors import Code, InvalidRequestError
from shared.contracts.names import Names
from shared.contracts.settings import ModelSpec
from shared.runtime.batching import Batched
from shared.transport import catalog

if TYPE_CHECKING:
    from shared.observability.metrics import WorkerMetrics


class Engine(Protocol):
    """A loaded model that runs batches of one kind's requests."""

    @property
    def info(self) -> common_pb2.ModelInfo: ...

    def run_batch(self, requests: Sequence[Any]) -> Sequence[Message]:
        """One output per request, in order. Raise InvalidRequestError for bad input."""
        ...


@dataclass(frozen=True)
class Job:
    """One task as a streaming engine sees it."""

    task_id: str
    attempt: int
    # Epoch seconds: a run still going then is aborted (DEADLINE_EXCEEDED).
    deadline: float
    span: trace.Span
    # The task's lane (shared.contracts.names.ALL_LANES): engines that schedule work
    # inside (vLLM) serve higher lanes first.
    lane: str = "standard"


class TaskAborted(Exception):  # noqa: N818 (an outcome, not an error)
    """A streaming engine stopped a task on request: it ends with ``status``, not retried."""

    def __init__(
        self, status: int, code: Code, message: str, output: Message | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.output = output

    def with_output(self, output: Message) -> TaskAborted:
        """The same outcome, carrying what was produced before it."""
        return TaskAborted(self.status, self.code, self.message, output)


@runtime_checkable
class StreamingEngine(Protocol):
    """An engine that batches continuously by itself (vLLM) and streams its output:
    tasks start one by one and can be aborted while they run."""

    @property
    def info(self) -> common_pb2.ModelInfo: ...

    def bind(self, metrics: WorkerMetrics) -> None:
        """Where the engine records its own measurements."""
        ...

    def start(self, request: Any, job: Job) -> Future[Batched[Any]]:
        """Begin ``job``; the future ends with its output or the task's exception."""
        ...

    def abort(self, task_id: str, reason: TaskAborted) -> bool:
        """Abort a running task (any thread); False when it is not running here."""
        ...

    def alive(self) -> bool:
        """False once the engine failed for good (the process should be restarted)."""
        ...

    def close(self) -> None: ...


EngineFactory = Callable[[str, ModelSpec], Engine | StreamingEngine]


@runtime_checkable
class OwnLabels(Protocol):
    """A classifier: the labels it was trained with (empty for a zero-shot one) and
    whether it scores them independently; advertised in the catalog."""

    labels: tuple[str, ...]
    multi_label: bool


def request_problems(engine: Engine | StreamingEngine, request: Any) -> list[str]:
    """What ``request`` asks that ``engine``'s model cannot do: for a classifier, the rule
    the gateway checks from the catalog (:func:`classification_model_problems`)."""
    if isinstance(engine, OwnLabels) and isinstance(request, classification_pb2.ClassifyRequest):
        return classification_model_problems(
            request, engine.info.name, engine.labels, engine.multi_label
        )
    return []


@dataclass
class ModelRegistry:
    """The engines one worker serves, by model name."""

    kind: str
    engines: dict[str, Engine | StreamingEngine]
    engine_types: dict[str, str]
    default: str

    @classmethod
    def build(
        cls,
        kind: str,
        specs: Mapping[str, ModelSpec],
        default: str,
        factories: Mapping[str, EngineFactory],
    ) -> ModelRegistry:
        """Load every configured model; configuration errors fail at start, not per task."""
        if default not in specs:
            raise ValueError(f"default model {default!r} is not among {sorted(specs)}")
        engines: dict[str, Engine | StreamingEngine] = {}
        for name, spec in specs.items():
            factory = factories.get(spec.engine)
            if factory is None:
                raise ValueError(
                    f"model {name!r}: unknown engine {spec.engine!r}; "
                    f"this worker has {', '.join(sorted(factories))}"
                )
            engines[name] = factory(name, spec)
        return cls(kind, engines, {n: s.engine for n, s in specs.items()}, default)

    def resolve(self, name: str) -> tuple[str, Engine | StreamingEngine]:
        """The engine for a requested model name ('' means the default)."""
        chosen = name or self.default
        engine = self.engines.get(chosen)
        if engine is None:
            raise InvalidRequestError(
                [
                    f"unknown {self.kind} model {name!r}; available: {', '.join(sorted(self.engines))}"
                ]
            )
        return chosen, engine

    def descriptors(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "version": engine.info.version,
                "engine": self.engine_types[name],
                "default": name == self.default,
                **(
                    {"labels": list(engine.labels), "multi_label": engine.multi_label}
                    if isinstance(engine, OwnLabels)
                    else {}
                ),
            }
            for name, engine in sorted(self.engines.items())
        ]

    def advertise(self, client: redis.Redis, names: Names) -> None:
        """Publish the served models (replacing what an earlier worker said)."""
        catalog.advertise(client, names.models_key(self.kind), self.descriptors())
