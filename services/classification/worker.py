"""Classification Celery worker: ``python -m services.classification.worker``.

Loads the model once, before the pool starts (threads share it), then consumes
the kind's Celery queue.
"""

from __future__ import annotations

import socket
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from services.classification.engine import ZeroShotClassifier
from services.classification.settings import Settings
from services.classification.tasks import KIND, register
from shared.celery_app import make_celery
from shared.logs import configure_logging
from shared.readiness import mark_ready


def main() -> None:
    settings = Settings()
    configure_logging(f"{KIND}-worker", settings.log_level)
    app = make_celery(KIND, settings)
    runtime = register(app, settings, ZeroShotClassifier(settings))

    @worker_ready.connect(weak=False)
    def _ready(**_: Any) -> None:
        mark_ready(settings)

    @worker_shutdown.connect(weak=False)
    def _shutdown(**_: Any) -> None:
        runtime.close()  # flushes dead letters and published results still buffered

    app.worker_main(
        [
            "worker",
            "--queues",
            settings.names.celery_queue(KIND),
            "--pool",
            "threads",
            "--concurrency",
            str(settings.concurrency),
            "--hostname",
            f"{KIND}@{socket.gethostname()}",
            "--loglevel",
            settings.log_level,
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
