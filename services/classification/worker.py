"""Classification Celery worker: ``python -m services.classification.worker``."""

from __future__ import annotations

from services.classification.engine import FACTORIES
from services.classification.settings import Settings
from shared.runtime.worker_process import serve_worker

if __name__ == "__main__":
    serve_worker("classification", Settings(), FACTORIES)
