"""Which Kafka producer the gateway publishes each task through (settings.interactive_kinds),
and the gauge of the token streams it relays."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from nlp.v1 import generation_pb2
from services.gateway.core import Gateway
from services.gateway.metrics import GatewayMetrics
from services.gateway.settings import Settings
from shared.contracts.envelope import make_envelope
from shared.contracts.names import Names
from shared.transport.kafka import Headers
from tests.factories import classify_request

Message = tuple[str, bytes, bytes | None, Headers]
GEN = Names().task_topic("generation", "interactive")
CLS = Names().task_topic("classification", "interactive")


class RecordingProducer:
    """Records what it was asked to send; fails the topics listed in ``failing``."""

    def __init__(self, failing: Sequence[str] = ()) -> None:
        self.sent: list[list[str]] = []
        self.failing = set(failing)
        # What the gateway's dependency tracking reads of a producer.
        self.available = True
        self.outages = None

    async def send_many(self, messages: Sequence[Message]) -> list[Exception | None]:
        self.sent.append([topic for topic, *_ in messages])
        return [RuntimeError(t) if t in self.failing else None for t, *_ in messages]


def envelopes(kinds: Sequence[str]) -> list[Any]:
    out = []
    for kind in kinds:
        if kind == "generation":
            request: Any = generation_pb2.GenerateRequest(prompt="hi")
        else:
            request = classify_request("hi", ("a",))
        out.append(make_envelope(kind, request, deadline_s=30))
    return out


def gateway(slow: RecordingProducer, fast: RecordingProducer | None, **settings: Any) -> Gateway:
    s = Settings(auth_mode="dev", namespace="", **settings)
    # Never connected: only the producers are used.
    client = aioredis.Redis(host="127.0.0.1", port=1)
    return Gateway(s, slow, client, GatewayMetrics(), fast)  # type: ignore[arg-type]


def send(gw: Gateway, kinds: Sequence[str]) -> list[Exception | None]:
    env = envelopes(kinds)
    messages: list[Message] = [
        (gw.settings.names.task_topic(k, "interactive"), b"", None, []) for k in kinds
    ]
    return asyncio.run(gw.send_tasks(env, messages))


def test_generation_goes_through_the_interactive_producer() -> None:
    slow, fast = RecordingProducer(), RecordingProducer()
    gw = gateway(slow, fast)
    assert send(gw, ["generation"]) == [None]
    assert send(gw, ["classification", "classification"]) == [None, None]
    assert fast.sent == [[GEN]]
    assert slow.sent == [[CLS] * 2]


def test_a_mixed_group_is_split_and_outcomes_keep_their_order() -> None:
    slow = RecordingProducer(failing=[CLS])
    fast = RecordingProducer()
    outcomes = send(gateway(slow, fast), ["classification", "generation", "classification"])
    assert [type(o).__name__ if o else None for o in outcomes] == [
        "RuntimeError",
        None,
        "RuntimeError",
    ]
    assert fast.sent == [[GEN]]
    assert slow.sent == [[CLS] * 2]


@pytest.mark.parametrize("with_fast", [False, True])
def test_everything_through_one_producer_when_no_kind_is_interactive(with_fast: bool) -> None:
    slow = RecordingProducer()
    fast = RecordingProducer() if with_fast else None
    gw = gateway(slow, fast, interactive_kinds=frozenset())
    assert send(gw, ["generation", "classification"]) == [None, None]
    assert slow.sent == [[GEN, CLS]]
    assert fast is None or fast.sent == []


def test_unknown_interactive_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown kinds"):
        Settings(auth_mode="dev", interactive_kinds=frozenset({"gen"}))


def test_the_streams_relayed_gauge_counts_the_hubs_streams() -> None:
    gw = gateway(RecordingProducer(), None)

    def relayed() -> float | None:
        return gw.metrics.registry.get_sample_value("nlp_token_streams_relayed")

    async def follow_two() -> list[float | None]:
        seen = [relayed()]
        # The hub is not reading yet: following needs no Redis round trip.
        async with gw.streams.follow("a"), gw.streams.follow("b"):
            seen.append(relayed())
        return [*seen, relayed()]

    assert asyncio.run(follow_two()) == [0.0, 2.0, 0.0]
