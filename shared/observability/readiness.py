"""Readiness signalling: the local stack runner's file and the /readyz endpoint."""

from __future__ import annotations

from shared.contracts.settings import ServiceSettings
from shared.observability import heap
from shared.observability.metrics import Endpoints


def mark_ready(settings: ServiceSettings) -> None:
    """Touch the configured ready file, if any."""
    if settings.ready_file is not None:
        settings.ready_file.parent.mkdir(parents=True, exist_ok=True)
        settings.ready_file.touch()


def serving(settings: ServiceSettings, endpoints: Endpoints) -> None:
    """The process serves from now on: settle its heap (what startup loaded stays out of
    later garbage collections), then say so to the stack runner and on /readyz."""
    heap.settle(settings)
    mark_ready(settings)
    endpoints.mark_ready()
