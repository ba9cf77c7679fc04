"""Garbage-collector settings of a serving process.

The per-request paths allocate many short-lived objects (protobufs, futures, dicts), so
CPython's default young-generation threshold (700 allocations) runs collections very
often, and each full collection walks every object the process holds: the models,
modules and clients loaded at startup, which never become garbage.
"""

from __future__ import annotations

import gc
import logging

from shared.contracts.settings import ServiceSettings

log = logging.getLogger(__name__)


def settle(settings: ServiceSettings) -> None:
    """Call once the process serves: apply the collector settings and, with
    ``gc_freeze``, exempt everything alive now from later collections."""
    if settings.gc_gen0_threshold:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(settings.gc_gen0_threshold, gen1, gen2)
    if settings.gc_freeze:
        gc.collect()
        gc.freeze()
    log.info(
        "garbage collector settled",
        extra={"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()},
    )
