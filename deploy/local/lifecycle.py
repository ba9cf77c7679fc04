"""``with`` support for the local processes: entering starts, leaving stops."""

from __future__ import annotations

from types import TracebackType
from typing import Self


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
