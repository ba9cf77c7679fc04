"""Structured (JSON-lines) logging carrying task ids and the current trace and span ids."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from shared.telemetry import current_ids


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={"task_id": ...}`` fields are kept."""

    _reserved = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._reserved and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send JSON logs to stderr for the whole process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    handler.addFilter(_ServiceFilter(service))
    root.setLevel(level)
    # kafka-python is chatty at INFO (every reconnect and rebalance step); Celery logs
    # every task received and succeeded with its arguments (the whole envelope), which
    # costs more CPU than many models.
    for name in ("kafka", "celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


class _ServiceFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        # Read here, in the thread that logs: that is where the span is current.
        ids = current_ids()
        if ids is not None:
            record.trace_id, record.span_id = ids
        return True
