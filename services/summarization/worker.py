"""Summarization Celery worker: ``python -m services.summarization.worker``."""

from __future__ import annotations

from services.summarization.engine import FACTORIES
from services.summarization.settings import Settings
from shared.runtime.worker_process import serve_worker

if __name__ == "__main__":
    serve_worker("summarization", Settings(), FACTORIES)
