"""Readiness signalling for the local stack runner (a file touched once serving)."""

from __future__ import annotations

from shared.settings import ServiceSettings


def mark_ready(settings: ServiceSettings) -> None:
    """Touch the configured ready file, if any."""
    if settings.ready_file is not None:
        settings.ready_file.parent.mkdir(parents=True, exist_ok=True)
        settings.ready_file.touch()
