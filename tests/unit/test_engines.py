"""Models by name: registry construction, resolution and advertised descriptors."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from nlp.v1 import common_pb2
from shared.contracts.errors import InvalidRequestError
from shared.contracts.settings import ModelSpec
from shared.runtime.engines import ModelRegistry
from shared.transport.catalog import parse_advertised


class EchoEngine:
    def __init__(self, name: str, spec: ModelSpec) -> None:
        self._info = common_pb2.ModelInfo(name=name, version=str(spec.params.get("v", "1")))

    @property
    def info(self) -> common_pb2.ModelInfo:
        return self._info

    def run_batch(self, requests: Sequence[object]) -> list[common_pb2.ModelInfo]:
        return [self._info for _ in requests]


SPECS = {
    "small": ModelSpec(engine="echo"),
    "large": ModelSpec(engine="echo", params={"v": "2"}),
}


def test_resolve_by_name_and_default() -> None:
    registry = ModelRegistry.build("ner", SPECS, "small", {"echo": EchoEngine})
    assert registry.resolve("")[0] == "small"
    assert registry.resolve("large")[1].info.version == "2"
    with pytest.raises(InvalidRequestError, match="available: large, small"):
        registry.resolve("huge")


def test_configuration_errors_fail_at_start() -> None:
    with pytest.raises(ValueError, match="default model"):
        ModelRegistry.build("ner", SPECS, "missing", {"echo": EchoEngine})
    with pytest.raises(ValueError, match="unknown engine 'echo'"):
        ModelRegistry.build("ner", SPECS, "small", {"other": EchoEngine})


def test_descriptors_round_trip() -> None:
    import json

    registry = ModelRegistry.build("ner", SPECS, "small", {"echo": EchoEngine})
    raw = {d["name"].encode(): json.dumps(d).encode() for d in registry.descriptors()}
    models = parse_advertised(raw)
    assert [(m["name"], m["default"], m["engine"]) for m in models] == [
        ("large", False, "echo"),
        ("small", True, "echo"),
    ]
