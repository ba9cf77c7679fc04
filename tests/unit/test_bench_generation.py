"""The generation benchmark's bookkeeping: levels, ratios, text agreement, metric parsing."""

from __future__ import annotations

import math

import pytest

from bench.corpora import PROMPTS
from bench.generation import (
    QUICK,
    Plan,
    Sample,
    compare,
    finish_name,
    group_cpu,
    parse_first_token,
    pool,
    same_texts,
    summarize,
    ttft_breakdown,
)
from nlp.v1 import generation_pb2


def sample(
    index: int,
    ttft: float,
    tokens: int = 16,
    text: str = "x",
    stages_ms: dict[str, float] | None = None,
) -> Sample:
    prompt = index % len(PROMPTS)
    return Sample(index, prompt, ttft, ttft * 10, tokens, "length", text, "", stages_ms or {})


def test_prompts_are_distinct_and_the_plans_are_bounded() -> None:
    assert len(set(PROMPTS)) == len(PROMPTS) >= 16
    assert Plan().concurrency == (1, 8, 16) and QUICK.concurrency == (1, 8)
    assert QUICK.max_tokens < Plan().max_tokens
    assert [Plan().requests(c) for c in (1, 8, 16)] == [8, 32, 64]
    assert Plan().rounds == 2 and QUICK.rounds == 1


def test_summarize_counts_tokens_over_wall_time_and_skips_missing_first_tokens() -> None:
    samples = [sample(2, 30.0), sample(0, 10.0), sample(1, float("nan"), tokens=0)]
    run = summarize("direct", 2, 4, samples, 2.0, {"UNAVAILABLE": 1}, {"engine": 1.5})
    assert run.done == 3 and run.planned == 4
    assert run.completion_tokens == 32 and run.tokens_per_s == 16.0
    assert run.ttft_mean_ms == 20.0 and run.ttft_p50_ms == 20.0
    assert [s.index for s in run.samples] == [0, 1, 2]
    assert run.errors == {"UNAVAILABLE": 1} and run.finishes == {"length": 3}
    assert run.stages_mean_ms == {}


def test_summarize_averages_stage_timings_where_present() -> None:
    samples = [
        sample(0, 10.0, stages_ms={"queued": 4.0, "waited": 1.0, "ran": 100.0}),
        sample(1, 10.0, stages_ms={"queued": 8.0, "waited": 3.0, "ran": 200.0}),
        sample(2, 10.0),
    ]
    run = summarize("gateway", 1, 3, samples, 1.0, {}, {}, engine_ttft_mean_ms=5.0)
    assert run.stages_mean_ms == {"queued": 6.0, "waited": 2.0, "ran": 150.0}
    direct = summarize("direct", 1, 3, [sample(i, 4.0) for i in range(3)], 1.0, {}, {})
    side, clients, ttft, queued, waited, engine, rest, direct_ttft, ran = ttft_breakdown(
        run, direct
    )
    assert (side, clients, ttft, queued, waited, engine, direct_ttft, ran) == (
        "gateway",
        1,
        10.0,
        6.0,
        2.0,
        5.0,
        4.0,
        150.0,
    )
    assert rest == pytest.approx(-3.0)


def test_compare_orients_every_ratio_so_that_higher_is_better() -> None:
    direct = summarize("direct", 8, 2, [sample(0, 50.0), sample(1, 50.0)], 1.0, {}, {})
    gateway = summarize("gateway", 8, 2, [sample(0, 100.0), sample(1, 100.0)], 1.25, {}, {})
    c = compare(direct, gateway)
    assert c.direct_tokens_per_s == 32.0 and c.gateway_tokens_per_s == 25.6
    assert c.tokens_per_s_ratio == pytest.approx(0.8)
    assert c.ttft_p50_ratio == 0.5 and c.ttft_mean_ratio == 0.5
    assert (c.direct_completion_tokens, c.gateway_completion_tokens) == (32, 32)
    assert not c.meets_target
    same = compare(direct, summarize("gateway", 8, 2, direct.samples, 1.0, {}, {}))
    assert same.tokens_per_s_ratio == 1.0 and same.meets_target


def test_compare_of_an_empty_level_is_nan_not_a_crash() -> None:
    direct = summarize("direct", 1, 1, [], 1.0, {}, {})
    gateway = summarize("gateway", 1, 1, [sample(0, 5.0)], 1.0, {}, {})
    c = compare(direct, gateway)
    assert math.isnan(c.tokens_per_s_ratio) and not c.meets_target


def test_same_texts_compares_each_prompts_first_answer() -> None:
    direct = [sample(0, 1.0, text="a"), sample(1, 1.0, text="b"), sample(16, 1.0, text="z")]
    gateway = [sample(16, 1.0, text="z"), sample(0, 1.0, text="a"), sample(1, 1.0, text="c")]
    # Prompt 0: index 0 on both ("a"); prompt 1 differs; index 16 (prompt 0 again) ignored.
    assert same_texts(direct, gateway) == (1, 2)


def test_group_cpu_puts_stack_processes_in_their_columns() -> None:
    groups = group_cpu(
        {
            "gateway": 1.0,
            "http-gateway": 1.5,
            "generation-intake": 2.0,
            "generation-worker": 3.0,
            "engine": 4.0,
            "kafka": 5.0,
            "redis-server": 6.0,
            "client": 7.0,
            "other": 8.0,
            "machine": 40.0,
            "steal": 0.5,
        }
    )
    assert groups == {
        "client": 7.0,
        "engine": 4.0,
        "gateway": 1.0,
        "http-gateway": 1.5,
        "intake": 2.0,
        "worker": 3.0,
        "kafka": 5.0,
        "redis": 6.0,
        "other": 8.0,
        "machine": 40.0,
        "steal": 0.5,
    }


def test_finish_names_match_vllms() -> None:
    assert finish_name(generation_pb2.FINISH_REASON_LENGTH) == "length"
    assert finish_name(generation_pb2.FINISH_REASON_STOP) == "stop"


def test_parse_first_token_sums_every_label_set() -> None:
    text = "\n".join(
        [
            "# TYPE nlp_time_to_first_token_seconds histogram",
            'nlp_time_to_first_token_seconds_bucket{kind="generation",le="0.1",model="m"} 1.0',
            'nlp_time_to_first_token_seconds_count{kind="generation",model="m"} 2.0',
            'nlp_time_to_first_token_seconds_sum{kind="generation",model="m"} 0.75',
            'nlp_time_to_first_token_seconds_count{kind="generation",model="n"} 1.0',
            'nlp_time_to_first_token_seconds_sum{kind="generation",model="n"} 0.25',
            'nlp_time_to_first_token_seconds_created{kind="generation",model="m"} 1.7e+09',
        ]
    )
    assert parse_first_token(text) == (1.0, 3)
    assert parse_first_token("") == (0.0, 0)


def test_pool_adds_up_rounds_and_weights_the_engines_first_token() -> None:
    first = summarize(
        "gateway",
        8,
        2,
        [sample(0, 10.0), sample(1, 20.0)],
        1.0,
        {"UNAVAILABLE": 1},
        {"engine": 1.5, "gateway": 0.25},
        engine_ttft_mean_ms=5.0,
    )
    second = summarize(
        "gateway",
        8,
        2,
        [sample(0, 30.0), sample(1, 40.0, tokens=48)],
        3.0,
        {"UNAVAILABLE": 2, "INTERNAL": 1},
        {"engine": 2.5},
        first_error="boom",
        engine_ttft_mean_ms=11.0,
    )
    third = summarize("gateway", 8, 1, [sample(2, 50.0)], 1.0, {}, {})  # no engine metric
    pooled = pool([first, second, third])
    assert (pooled.side, pooled.concurrency, pooled.planned, pooled.done) == ("gateway", 8, 5, 5)
    # All tokens over all wall seconds, not a mean of the rounds' rates.
    assert pooled.completion_tokens == 112 and pooled.tokens_per_s == 112 / 5.0
    assert pooled.ttft_p50_ms == 30.0 and pooled.ttft_mean_ms == 30.0
    assert pooled.errors == {"UNAVAILABLE": 3, "INTERNAL": 1} and pooled.first_error == "boom"
    assert pooled.cpu_s == {"engine": 4.0, "gateway": 0.25}
    assert pooled.engine_ttft_mean_ms == 8.0  # (5 * 2 + 11 * 2) / 4; NaN rounds left out
    with pytest.raises(AssertionError):
        pool([first, summarize("direct", 8, 1, [], 1.0, {}, {})])
