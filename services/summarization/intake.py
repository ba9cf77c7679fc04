"""Summarization intake: ``python -m services.summarization.intake``."""

from __future__ import annotations

from services.summarization.settings import Settings
from shared.runtime.intake import serve

if __name__ == "__main__":
    serve("summarization", Settings())
