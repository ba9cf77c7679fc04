"""Generation Celery worker: ``python -m services.generation.worker``.

The vLLM engine core runs in a spawned child process, which imports this module
again: everything happens under the ``__main__`` guard.
"""

from __future__ import annotations

from services.generation.engine import factories
from services.generation.settings import Settings
from shared.runtime.worker_process import serve_worker

if __name__ == "__main__":
    settings = Settings()
    serve_worker("generation", settings, factories(settings))
