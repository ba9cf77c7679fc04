"""Structured (JSON-lines) logging carrying task ids and the current trace and span ids."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from shared.observability.telemetry import current_ids


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
    handler.addFilter(RepeatFilter())
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


# Kafka clients log each failed reconnection attempt (librdkafka several a second while
# a broker is down): the loggers whose repeats are held back.
REPEATING_LOGGERS = ("librdkafka", "kafka.")
_DIGITS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """Lets a message of :data:`REPEATING_LOGGERS` through once per ``window_s``; the
    next one that passes says how many were held back. Numbers (ports, timestamps,
    durations) do not make a message new."""

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(REPEATING_LOGGERS):
            return True
        key = (record.name, record.levelno, _DIGITS.sub("#", record.getMessage()))
        now = self.clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.window_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.repeated = last[1]  # held back since the last one shown
        if len(self._seen) > 1000:  # a bound, should messages never repeat
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True
