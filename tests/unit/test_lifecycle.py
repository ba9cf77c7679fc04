from __future__ import annotations

import pytest

from deploy.local.kafka import KafkaBroker
from deploy.local.lifecycle import Started
from deploy.local.otlp import OtlpSink
from deploy.local.stack import LocalStack


class Recorder(Started):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def stop(self) -> None:
        self.calls.append("stop")


def test_with_starts_and_stops_even_when_the_block_raises() -> None:
    recorder = Recorder()
    with pytest.raises(RuntimeError), recorder as entered:
        assert entered is recorder and recorder.calls == ["start"]
        raise RuntimeError("boom")
    assert recorder.calls == ["start", "stop"]


@pytest.mark.parametrize("cls", [KafkaBroker, OtlpSink, LocalStack])
def test_the_local_processes_bring_their_own_start_and_stop(cls: type[Started]) -> None:
    assert issubclass(cls, Started)
    assert cls.start is not Started.start and cls.stop is not Started.stop
