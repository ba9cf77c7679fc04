from __future__ import annotations

import pytest

from nlp.v1 import common_pb2
from shared.contracts.names import (
    ALL_KINDS,
    ALL_LANES,
    Names,
    kind_name,
    kind_value,
    lane_name,
    lane_rank,
    lane_value,
)


def test_default_names_match_the_design() -> None:
    n = Names()
    assert n.task_topic("classification", "batch") == "nlp.tasks.classification.batch"
    assert list(n.task_topics("ner").values()) == [
        "nlp.tasks.ner.interactive",
        "nlp.tasks.ner.standard",
        "nlp.tasks.ner.batch",
    ]
    assert n.dead_letter_topic == "nlp.dead-letter"
    assert n.results_topic == "nlp.results"
    assert n.consumer_group("ner") == "nlp.ner"
    assert n.celery_queue("ner", "interactive") == "ner.interactive"
    assert list(n.celery_queues("ner")) == list(ALL_LANES) == ["interactive", "standard", "batch"]
    assert n.result_key("abc") == "nlp:result:abc"
    assert Names.celery_task("ner") == "nlp.ner.run"


def test_namespace_prefixes_every_name() -> None:
    n = Names("t1")
    names = [
        *n.task_topics("ner").values(),
        n.dead_letter_topic,
        n.results_topic,
        n.consumer_group("ner"),
        *n.celery_queues("ner").values(),
        n.result_key("x"),
        n.state_key("x"),
        n.done_channel,
    ]
    assert all(name.startswith("t1") for name in names)
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("bad", ["UPPER", "with space", "a.b", "-lead", "x" * 41])
def test_bad_namespace_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        Names(bad)


def test_kind_round_trip() -> None:
    assert set(ALL_KINDS) == {"generation", "classification", "ner", "summarization"}
    for name in ALL_KINDS:
        assert kind_name(kind_value(name)) == name
    with pytest.raises(ValueError, match="expected one of"):
        kind_value("translation")
    with pytest.raises(ValueError):
        kind_name(common_pb2.KIND_UNSPECIFIED)


def test_lanes_round_trip_and_rank_highest_first() -> None:
    for rank, lane in enumerate(ALL_LANES):
        assert lane_name(lane_value(lane)) == lane
        assert lane_rank(lane) == rank
    with pytest.raises(ValueError, match="unknown lane"):
        lane_name(common_pb2.LANE_UNSPECIFIED)
    with pytest.raises(ValueError, match="expected one of interactive, standard, batch"):
        lane_value("urgent")
    with pytest.raises(ValueError, match="unknown lane"):
        Names().task_topic("ner", "urgent")
