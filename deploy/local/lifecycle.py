"""``with`` support for the local processes: entering starts, leaving stops."""

from __future__ import annotations

import subprocess
from types import TracebackType
from typing import Any, Self


def terminate(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """SIGTERM a child, SIGKILL it if it is still there after ``timeout``; reaped."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Started:
    """Mixin for classes with ``start()`` and ``stop()``: ``with X(...) as x`` starts ``x``
    and stops it however the block ends."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
