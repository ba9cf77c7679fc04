"""The classification Celery task: the shared worker runtime around the engine."""

from __future__ import annotations

import redis
from celery import Celery
from google.protobuf.message import Message

from nlp.v1 import classification_pb2, common_pb2
from services.classification.engine import ZeroShotClassifier
from services.classification.settings import Settings
from shared.envelope import AnyRequest
from shared.errors import InvalidRequestError
from shared.kafka import make_producer
from shared.results import ResultStore
from shared.worker import Handler, WorkerRuntime, register_task

KIND = "classification"


def make_handler(engine: ZeroShotClassifier) -> Handler:
    def handle(request: AnyRequest) -> tuple[Message, common_pb2.ModelInfo]:
        if not isinstance(request, classification_pb2.ClassifyRequest):
            raise InvalidRequestError([f"expected a ClassifyRequest, got {type(request).__name__}"])
        if request.model and request.model != engine.model.name:
            raise InvalidRequestError(
                [f"unknown model {request.model!r}; available: {engine.model.name}"]
            )
        return engine.classify(request), engine.model

    return handle


def register(app: Celery, settings: Settings, engine: ZeroShotClassifier) -> WorkerRuntime:
    """Register the classification task on ``app``, wired to ``engine``; returns its runtime."""
    runtime = WorkerRuntime(
        kind=KIND,
        settings=settings,
        store=ResultStore(
            redis.Redis.from_url(settings.redis_url), settings.names, settings.result_ttl_s
        ),
        handler=make_handler(engine),
        producer_factory=lambda: make_producer(settings),
    )
    register_task(app, runtime)
    return runtime
