"""Idempotency keys: what a key may be, what makes two requests the same, whose key it is."""

from __future__ import annotations

from confluent_kafka import KafkaError

from nlp.v1 import common_pb2, tasks_pb2
from services.gateway.core import _unsent
from services.gateway.settings import Settings
from shared.contracts.idempotency import MAX_KEY_CHARS, batch_item_key, fingerprint, key_problems
from shared.contracts.names import Names
from shared.transport.idempotency import Claim, Outcome
from shared.transport.outages import (
    KafkaUnavailableError,
    PublishUnconfirmedError,
    kafka_delivery_unconfirmed,
)
from tests.factories import classify_request, submit_classification


def test_a_key_is_at_most_256_printable_characters() -> None:
    assert key_problems("") == []
    assert key_problems("order-2026-12-03/ä-ok " + "k" * 200) == []
    assert key_problems("k" * MAX_KEY_CHARS) == []
    assert key_problems("k" * (MAX_KEY_CHARS + 1)) == ["idempotency_key is over 256 characters"]
    assert key_problems("tab\there") == ["idempotency_key has control characters"]
    assert key_problems("del\x7f") == ["idempotency_key has control characters"]


def test_the_fingerprint_is_what_the_request_asks_for() -> None:
    a = submit_classification("The striker scored twice.")
    same = tasks_pb2.SubmitRequest.FromString(a.SerializeToString())
    assert fingerprint("submit", a) == fingerprint("submit", same)
    other_text = submit_classification("The minister resigned.")
    other_lane = submit_classification("The striker scored twice.")
    other_lane.lane = common_pb2.LANE_BATCH
    other_deadline = submit_classification("The striker scored twice.")
    other_deadline.deadline_ms = 5000
    prints = {fingerprint("submit", r) for r in (a, other_text, other_lane, other_deadline)}
    assert len(prints) == 4
    # The same message under another kind of call is another request.
    request = classify_request("The striker scored twice.")
    assert fingerprint("classification", request) != fingerprint("ner", request)


def test_each_tenant_has_its_own_keys_stored_as_digests() -> None:
    names, spaced = Names(), Names("blue")
    key = "order 42 / 7"
    assert names.idempotency_key("a", key) != names.idempotency_key("b", key)
    assert names.idempotency_key("a", key) == names.idempotency_key("a", key)
    # No separator games: ("a", "b:c") is not ("a:b", "c").
    assert names.idempotency_key("a", "b:c") != names.idempotency_key("a:b", "c")
    assert key not in names.idempotency_key("a", key)
    assert names.idempotency_key("", key).startswith("nlp:idem:")
    assert spaced.idempotency_key("a", key).startswith("blue:nlp:idem:")


def test_keys_are_kept_as_long_as_results_unless_set() -> None:
    assert Settings(auth_mode="dev", result_ttl_s=7200).idempotency_window_s == 7200
    assert (
        Settings(auth_mode="dev", result_ttl_s=7200, idempotency_ttl_s=600).idempotency_window_s
        == 600
    )


def test_a_claim_is_released_only_when_its_task_surely_never_reached_kafka() -> None:
    won = Claim(Outcome.WON, "t")
    taken_over = Claim(Outcome.TAKEN_OVER, "t")
    refused = KafkaUnavailableError("all brokers down")
    timed_out = PublishUnconfirmedError("no acknowledgement in time")
    assert _unsent(won, refused)
    assert not _unsent(won, timed_out)  # it may have landed after all
    assert not _unsent(taken_over, refused)  # the gateway that died may have sent it
    assert _unsent(None, timed_out)  # no key: the client cannot repeat it anyway


def test_a_timed_out_delivery_is_unconfirmed_a_refused_one_is_not() -> None:
    assert kafka_delivery_unconfirmed(KafkaError(KafkaError._MSG_TIMED_OUT))
    assert kafka_delivery_unconfirmed(KafkaError(KafkaError.REQUEST_TIMED_OUT))
    assert not kafka_delivery_unconfirmed(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    assert not kafka_delivery_unconfirmed(KafkaError(KafkaError._ALL_BROKERS_DOWN))


def test_batch_item_keys_cannot_be_a_clients_own() -> None:
    key = batch_item_key("nightly", "doc-1")
    assert key_problems(key)  # a client sending it is refused
    assert key != batch_item_key("nightly", "doc-2") != batch_item_key("daily", "doc-2")
