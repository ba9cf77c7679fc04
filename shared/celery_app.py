"""The Celery application of a worker kind, as the intake and the worker both see it."""

from __future__ import annotations

from celery import Celery

from shared.settings import WorkerSettings


def make_celery(kind: str, settings: WorkerSettings) -> Celery:
    """Celery app whose broker is Redis and whose queue is the kind's (namespaced) queue.

    Results go to the platform's own store (``shared.results``), so Celery's result
    backend is off. ``acks_late`` with ``reject_on_worker_lost`` and a visibility
    timeout above the longest task is what makes a SIGKILLed worker lose nothing.
    """
    queue = settings.names.celery_queue(kind)
    app = Celery(f"nlp-{kind}", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_pool="threads",
        worker_concurrency=settings.concurrency,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # kombu sweeps for abandoned (unacked) messages every interval * throttle
            # seconds (100 s by default); keep that well under the visibility timeout.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
        },
        enable_utc=True,
    )
    ssl_options = settings.redis_ssl()
    if ssl_options:
        app.conf.broker_use_ssl = ssl_options
    return app
