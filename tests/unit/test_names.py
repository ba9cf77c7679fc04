from __future__ import annotations

import pytest

from nlp.v1 import common_pb2
from shared.contracts.names import ALL_KINDS, Names, kind_name, kind_value


def test_default_names_match_the_design() -> None:
    n = Names()
    assert n.task_topic("classification") == "nlp.tasks.classification"
    assert n.dead_letter_topic == "nlp.dead-letter"
    assert n.results_topic == "nlp.results"
    assert n.consumer_group("ner") == "nlp.ner"
    assert n.celery_queue("ner") == "ner"
    assert n.result_key("abc") == "nlp:result:abc"
    assert Names.celery_task("ner") == "nlp.ner.run"


def test_namespace_prefixes_every_name() -> None:
    n = Names("t1")
    names = [
        n.task_topic("ner"),
        n.dead_letter_topic,
        n.results_topic,
        n.consumer_group("ner"),
        n.celery_queue("ner"),
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
