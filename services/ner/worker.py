"""NER Celery worker: ``python -m services.ner.worker``."""

from __future__ import annotations

from services.ner.engine import FACTORIES
from services.ner.settings import Settings
from shared.runtime.worker_process import serve_worker

if __name__ == "__main__":
    serve_worker("ner", Settings(), FACTORIES)
