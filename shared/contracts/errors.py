"""Error codes carried in task results (google.rpc.Code values) and shared exceptions."""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """The subset of google.rpc.Code the platform uses; equal to grpc.StatusCode values."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


def code_name(value: int) -> str:
    """Name of a code value (``CODE_<n>`` for one outside the subset)."""
    try:
        return Code(value).name
    except ValueError:
        return f"CODE_{value}"


class InvalidRequestError(ValueError):
    """A request or envelope that can never succeed; carries every problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
