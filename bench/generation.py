"""Text generation: the vLLM engine driven in-process vs. the same engine through the
platform's two front doors, the gRPC gateway and the OpenAI-compatible HTTP one.

    python -m bench.generation [--quick] [--concurrency 1,8,16] [--max-tokens 64]
                               [--rounds 2] [--env KEY=VALUE ...] [--out PATH]

The generation worker's default model (the embedded SmolLM2 on vLLM's CPU build, with
its default ``params``), the same fixed prompts, greedy sampling (temperature 0) and
the same ``max_tokens`` on every side, all in one run so that the ratios compare like
with like:

1. direct: ``AsyncLLM`` built in this process with the engine arguments the worker's
   ``VllmGenerator`` uses (after ``configure_vllm_environment``), each request
   tokenized and sampled as the worker does (``SamplingParams`` with DELTA output),
   driven by asyncio. It is shut down before the stack starts: they never compete for
   the cores.
2. gateway: one ``LocalStack(kinds=["generation"])`` (gRPC gateway → Kafka → intake →
   Celery worker → vLLM → Redis token stream → gateway), ``Generation.GenerateStream``
   over an insecure local channel (the stack's development auth mode).
3. http: the same stack's HTTP front door (``services.http_gateway``, which the stack
   starts with the generation kind: HTTP → its own gateway core → the same Kafka,
   worker and Redis stream), ``POST /v1/completions`` with the same plain prompt,
   ``stream=True`` and ``stream_options={"include_usage": True}``, through the official
   ``openai`` package (``AsyncOpenAI(base_url=stack.http_url)``, no retries).

The two platform sides share the stack and take turns level by level (warm-ups, then at
each concurrency one side's level and then the other's; never at once), the first of
the two alternating by round. The rounds run ``rounds`` times in turn (direct, then the
platform; direct, then the platform: a fresh engine and stack each time) and each side's
rounds are pooled, because this VM's speed drifts between runs minutes apart; the last
table gives each round alone.

At each concurrency C (default 1, 8 and 16) C request loops share one schedule of
``max(min_requests, requests_per_client * C)`` requests, request i taking prompt
i mod len(PROMPTS), after a warm-up. Per level: output tokens/s (completion tokens
counted from the engine's output, from the gRPC stream's last chunk, or from the HTTP
stream's usage chunk, over the level's wall time), time to first token (submit → first
non-empty text; call start → first chunk with text), end-to-end latency and CPU
seconds of each process (the HTTP front door is its own group, ``http-gateway``). The
summary gives gateway/direct, http/direct and http/gateway for tok/s and
direct/gateway, direct/http and gateway/http for TTFT (so that higher is better for
all; the target against direct is >= 0.9). Performance is measured, not asserted.

Prints tables (progress goes to stderr) and writes JSON (default
``bench-results/generation.json``). Exit status 1 when any request failed.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import openai

from bench.common import Bench, Getter, Output, Table, format_errors, note
from bench.corpora import PROMPTS
from bench.harness import (
    BrokerWarmup,
    RequestFailedError,
    cpu_delta,
    drive,
    environ,
    fold_cpu,
    machine_cpu_s,
    mean,
    percentiles,
    process_tree_cpu,
    restored_environ,
    stack_cpu,
    warm_broker,
)
from deploy.local.stack import LocalStack
from nlp.v1 import generation_pb2, generation_pb2_grpc, tasks_pb2, tasks_pb2_grpc
from services.generation import prepare
from services.generation.engine import VllmParams
from services.generation.settings import Settings
from shared.models.vllm_cpu import configure_vllm_environment, usable_cores

KIND = "generation"
TARGET_RATIO = 0.9
# CPU columns, in table order; see gateway_cpu and direct_cpu. http-gateway: the HTTP
# front door's process (a service name, so bench.harness.fold_cpu keeps it as its own).
CPU_GROUPS = (
    "client",
    "engine",
    "gateway",
    "http-gateway",
    "intake",
    "worker",
    "kafka",
    "redis",
    "other",
)
SIDES = ("direct", "gateway", "http")
FIRST_TOKEN_METRIC = "nlp_time_to_first_token_seconds"
# Task stage timings (nlp.v1.Timings) read back for each gateway request.
STAGES = ("queued", "waited", "ran")


@dataclass(frozen=True)
class Plan:
    """What each side runs; every level stops at its request count or its budget."""

    concurrency: tuple[int, ...] = (1, 8, 16)
    max_tokens: int = 64
    # Requests per level: max(min_requests, requests_per_client * concurrency).
    min_requests: int = 8
    requests_per_client: int = 4
    warmup_requests: int = 8
    level_budget_s: float = 240.0
    # Per-RPC deadline of the gateway side (a hung request cannot hang the run).
    rpc_timeout_s: float = 300.0
    # Direct then gateway, this many times (fresh engine and stack each round), pooled:
    # this VM's speed drifts by up to 25 % between runs minutes apart, and the sides
    # would otherwise run at different moments of it.
    rounds: int = 2
    # Seconds of produce/fetch/commit through each fresh stack's broker before its
    # warm-up (bench.harness.warm_broker): a broker in service has long JIT-compiled
    # its request paths. 0: measure the cold broker.
    broker_warmup_s: float = 10.0

    def requests(self, concurrency: int) -> int:
        return max(self.min_requests, self.requests_per_client * concurrency)


QUICK = Plan(
    concurrency=(1, 8),
    max_tokens=16,
    min_requests=4,
    requests_per_client=1,
    warmup_requests=4,
    level_budget_s=60.0,
    rpc_timeout_s=120.0,
    rounds=1,
    broker_warmup_s=3.0,
)


# --- results ------------------------------------------------------------------------------


@dataclass
class Sample:
    """One request: which prompt, when its first text came, how long, how many tokens."""

    index: int
    prompt: int
    ttft_ms: float
    total_ms: float
    completion_tokens: int
    finish: str
    text: str
    # Gateway side: the task, and its stage timings (Tasks.Get after the level).
    task_id: str = ""
    stages_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class LevelRun:
    side: str
    concurrency: int
    planned: int
    done: int
    errors: dict[str, int]
    seconds: float
    completion_tokens: int
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p90_ms: float
    ttft_mean_ms: float
    total_p50_ms: float
    finishes: dict[str, int]
    # CPU seconds per component over the level (CPU_GROUPS, machine, steal).
    cpu_s: dict[str, float]
    # Gateway side: mean stage timings of the level's tasks (STAGES) and the worker's
    # own time to first token (engine took the request → first text; its metric).
    stages_mean_ms: dict[str, float] = field(default_factory=dict)
    engine_ttft_mean_ms: float = float("nan")
    first_error: str = ""
    samples: list[Sample] = field(default_factory=list)


@dataclass
class Comparison:
    """One concurrency, direct vs. gateway vs. http; ratios are oriented so that higher is
    better (the http fields are NaN, 0 or False for a run without that side)."""

    concurrency: int
    direct_tokens_per_s: float
    gateway_tokens_per_s: float
    # gateway / direct
    tokens_per_s_ratio: float
    direct_ttft_p50_ms: float
    gateway_ttft_p50_ms: float
    # direct / gateway
    ttft_p50_ratio: float
    direct_ttft_mean_ms: float
    gateway_ttft_mean_ms: float
    # direct / gateway
    ttft_mean_ratio: float
    direct_completion_tokens: int
    gateway_completion_tokens: int
    # gateway against direct
    meets_target: bool
    http_tokens_per_s: float = float("nan")
    # http / direct
    http_tokens_per_s_ratio: float = float("nan")
    # http / gateway
    http_gateway_tokens_per_s_ratio: float = float("nan")
    http_ttft_p50_ms: float = float("nan")
    # direct / http
    http_ttft_p50_ratio: float = float("nan")
    # gateway / http
    gateway_http_ttft_p50_ratio: float = float("nan")
    http_ttft_mean_ms: float = float("nan")
    # direct / http
    http_ttft_mean_ratio: float = float("nan")
    # gateway / http
    gateway_http_ttft_mean_ratio: float = float("nan")
    http_completion_tokens: int = 0
    # http against direct
    http_meets_target: bool = False


@dataclass
class Report:
    """What the run found (bench.common's record adds when, where and how it ran)."""

    # The plan, with each level's request count.
    plan: dict[str, Any]
    model: dict[str, Any]
    vllm_environment: dict[str, str]
    prompts: list[str]
    direct_start_s: float
    stack_start_s: float
    warmup: list[LevelRun]
    # Pooled over the rounds (their requests, tokens, seconds and CPU together).
    runs: list[LevelRun]
    comparisons: list[Comparison]
    # Prompts whose first greedy text was the same through the gateway as directly, of
    # those compared.
    same_text: int
    compared: int
    errors: int = 0
    # Each round's own comparisons, in order.
    rounds: list[list[Comparison]] = field(default_factory=list)
    broker_warmups: list[BrokerWarmup] = field(default_factory=list)
    # The same through the HTTP front door as directly, and as through the gateway.
    http_same_text: int = 0
    http_compared: int = 0
    http_gateway_same_text: int = 0
    http_gateway_compared: int = 0


Results = Report


def summarize(
    side: str,
    concurrency: int,
    planned: int,
    samples: Sequence[Sample],
    seconds: float,
    errors: Mapping[str, int],
    cpu_s: Mapping[str, float],
    first_error: str = "",
    engine_ttft_mean_ms: float = float("nan"),
) -> LevelRun:
    """A level's numbers from its requests; tok/s is completion tokens over wall time."""
    ttft = [s.ttft_ms for s in samples if not math.isnan(s.ttft_ms)]  # NaN: no text came
    p50, p90, _ = percentiles(ttft)
    total_p50, _, _ = percentiles([s.total_ms for s in samples])
    tokens = sum(s.completion_tokens for s in samples)
    return LevelRun(
        side=side,
        concurrency=concurrency,
        planned=planned,
        done=len(samples),
        errors=dict(errors),
        seconds=seconds,
        completion_tokens=tokens,
        tokens_per_s=tokens / seconds if seconds > 0 else 0.0,
        ttft_p50_ms=p50,
        ttft_p90_ms=p90,
        ttft_mean_ms=mean(ttft),
        total_p50_ms=total_p50,
        finishes=dict(Counter(s.finish for s in samples)),
        cpu_s=dict(cpu_s),
        stages_mean_ms={
            k: mean(s.stages_ms[k] for s in samples if k in s.stages_ms)
            for k in STAGES
            if any(k in s.stages_ms for s in samples)
        },
        engine_ttft_mean_ms=engine_ttft_mean_ms,
        first_error=first_error,
        samples=sorted(samples, key=lambda s: s.index),
    )


def pool(runs: Sequence[LevelRun]) -> LevelRun:
    """One level's rounds as one run: every request, the wall seconds and CPU summed
    (tok/s is all tokens over all seconds; TTFT percentiles over every request)."""
    first = runs[0]
    assert all(r.side == first.side and r.concurrency == first.concurrency for r in runs)
    errors: Counter[str] = Counter()
    cpu: dict[str, float] = {}
    for r in runs:
        errors.update(r.errors)
        for name, seconds in r.cpu_s.items():
            cpu[name] = cpu.get(name, 0.0) + seconds
    # The engine's own time to first token, weighted by each round's requests.
    measured = [
        (r.engine_ttft_mean_ms, r.done)
        for r in runs
        if r.done and not math.isnan(r.engine_ttft_mean_ms)
    ]
    count = sum(n for _, n in measured)
    engine_ttft = sum(t * n for t, n in measured) / count if count else float("nan")
    return summarize(
        first.side,
        first.concurrency,
        sum(r.planned for r in runs),
        [s for r in runs for s in r.samples],
        sum(r.seconds for r in runs),
        errors,
        cpu,
        next((r.first_error for r in runs if r.first_error), ""),
        engine_ttft,
    )


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def compare(direct: LevelRun, gateway: LevelRun, http: LevelRun | None = None) -> Comparison:
    """Gateway (and http) vs. direct, and http vs. gateway, at one concurrency; every
    ratio is higher-is-better."""
    assert direct.concurrency == gateway.concurrency
    tokens = _ratio(gateway.tokens_per_s, direct.tokens_per_s)
    ttft_p50 = _ratio(direct.ttft_p50_ms, gateway.ttft_p50_ms)
    out = Comparison(
        concurrency=direct.concurrency,
        direct_tokens_per_s=direct.tokens_per_s,
        gateway_tokens_per_s=gateway.tokens_per_s,
        tokens_per_s_ratio=tokens,
        direct_ttft_p50_ms=direct.ttft_p50_ms,
        gateway_ttft_p50_ms=gateway.ttft_p50_ms,
        ttft_p50_ratio=ttft_p50,
        direct_ttft_mean_ms=direct.ttft_mean_ms,
        gateway_ttft_mean_ms=gateway.ttft_mean_ms,
        ttft_mean_ratio=_ratio(direct.ttft_mean_ms, gateway.ttft_mean_ms),
        direct_completion_tokens=direct.completion_tokens,
        gateway_completion_tokens=gateway.completion_tokens,
        meets_target=tokens >= TARGET_RATIO and ttft_p50 >= TARGET_RATIO,
    )
    if http is None:
        return out
    assert http.concurrency == direct.concurrency
    http_tokens = _ratio(http.tokens_per_s, direct.tokens_per_s)
    http_ttft_p50 = _ratio(direct.ttft_p50_ms, http.ttft_p50_ms)
    return replace(
        out,
        http_tokens_per_s=http.tokens_per_s,
        http_tokens_per_s_ratio=http_tokens,
        http_gateway_tokens_per_s_ratio=_ratio(http.tokens_per_s, gateway.tokens_per_s),
        http_ttft_p50_ms=http.ttft_p50_ms,
        http_ttft_p50_ratio=http_ttft_p50,
        gateway_http_ttft_p50_ratio=_ratio(gateway.ttft_p50_ms, http.ttft_p50_ms),
        http_ttft_mean_ms=http.ttft_mean_ms,
        http_ttft_mean_ratio=_ratio(direct.ttft_mean_ms, http.ttft_mean_ms),
        gateway_http_ttft_mean_ratio=_ratio(gateway.ttft_mean_ms, http.ttft_mean_ms),
        http_completion_tokens=http.completion_tokens,
        http_meets_target=http_tokens >= TARGET_RATIO and http_ttft_p50 >= TARGET_RATIO,
    )


def first_texts(samples: Sequence[Sample]) -> dict[int, str]:
    """Each prompt's text from its earliest request."""
    out: dict[int, str] = {}
    for s in sorted(samples, key=lambda s: s.index):
        out.setdefault(s.prompt, s.text)
    return out


def same_texts(one: Sequence[Sample], other: Sequence[Sample]) -> tuple[int, int]:
    """(prompts whose first text agrees, prompts compared)."""
    a, b = first_texts(one), first_texts(other)
    common = sorted(a.keys() & b.keys())
    return sum(a[p] == b[p] for p in common), len(common)


# --- CPU ----------------------------------------------------------------------------------


def _engine_cpu(root: int) -> float:
    """CPU seconds of ``root``'s live descendants (vLLM's engine core and its workers)."""
    return sum(seconds for pid, (_, seconds) in process_tree_cpu(root).items() if pid != root)


def direct_cpu() -> dict[str, float]:
    """This process (the AsyncLLM front end: tokenizer, detokenizer, asyncio) and its
    engine processes, plus the machine, as cpu_delta reads them."""
    me = os.getpid()
    engine = _engine_cpu(me)
    out = {"client": time.process_time(), "engine": engine}
    out["machine"], out["steal"] = machine_cpu_s()
    return out


def gateway_cpu(stack: LocalStack) -> dict[str, float]:
    """stack_cpu with the worker split into its front (Celery, AsyncLLM) and its engine
    processes (which run in the worker's session)."""
    cpu = stack_cpu(stack)
    engine = 0.0
    for name, svc in stack.services.items():
        if "-worker" in name and svc.proc is not None:
            share = _engine_cpu(svc.proc.pid)
            engine += share
            cpu[name] = cpu.get(name, 0.0) - share
    cpu["engine"] = engine
    return cpu


def group_cpu(cpu: Mapping[str, float]) -> dict[str, float]:
    """cpu_delta's output in CPU_GROUPS (plus machine and steal)."""
    return fold_cpu(cpu, KIND, CPU_GROUPS)


# --- driving ------------------------------------------------------------------------------


def _ms_since(began: float) -> float:
    return (time.perf_counter() - began) * 1000


def _nan(value: float | None) -> float:
    """A time that never came is NaN (left out of percentiles and means)."""
    return float("nan") if value is None else value


Request = Callable[[int, int], Awaitable[Sample]]


@dataclass(frozen=True)
class Probes:
    """What a side can read around a level: CPU per component, the engine's own time to
    first token so far (seconds summed, requests), and per-task details after it."""

    cpu: Callable[[], dict[str, float]]
    first_token: Callable[[], tuple[float, int]] | None = None
    annotate: Callable[[list[Sample]], Awaitable[None]] | None = None


async def run_level(
    side: str, request: Request, concurrency: int, total: int, budget_s: float, probes: Probes
) -> LevelRun:
    """``total`` requests on ``concurrency`` loops (request i: prompt i mod len(PROMPTS))."""
    samples: list[Sample] = []

    async def job(i: int) -> None:
        samples.append(await request(i, i % len(PROMPTS)))

    first_before = probes.first_token() if probes.first_token else (0.0, 0)
    before = probes.cpu()
    driven = await drive(job, concurrency, total, budget_s)
    cpu = group_cpu(cpu_delta(before, probes.cpu()))
    engine_ttft = float("nan")
    if probes.first_token:
        seconds, count = probes.first_token()
        if count > first_before[1]:
            engine_ttft = (seconds - first_before[0]) * 1000 / (count - first_before[1])
    if probes.annotate:
        await probes.annotate(samples)
    run = summarize(
        side,
        concurrency,
        total,
        samples,
        driven.seconds,
        driven.errors,
        cpu,
        driven.first_error,
        engine_ttft,
    )
    note(
        f"{side} x{concurrency}: {run.done}/{total} requests, {run.completion_tokens} tokens "
        f"in {run.seconds:.1f}s = {run.tokens_per_s:.1f} tok/s, TTFT p50 {run.ttft_p50_ms:.0f} ms"
    )
    return run


@dataclass(frozen=True)
class Side:
    """One way of sending the requests: its name, one request, what it reads around a level."""

    name: str
    request: Request
    probes: Probes


async def run_sides(
    sides: Sequence[Side], plan: Plan
) -> tuple[list[LevelRun], dict[str, list[LevelRun]]]:
    """Each side's warm-up (at the highest concurrency), then every level, the sides
    taking turns at each (one after the other, never at once)."""
    top = max(plan.concurrency)
    warmups = [
        await run_level(
            f"{s.name} warm-up", s.request, top, plan.warmup_requests, plan.level_budget_s, s.probes
        )
        for s in sides
    ]
    runs: dict[str, list[LevelRun]] = {s.name: [] for s in sides}
    for c in plan.concurrency:
        for s in sides:
            level = await run_level(
                s.name, s.request, c, plan.requests(c), plan.level_budget_s, s.probes
            )
            runs[s.name].append(level)
    return warmups, runs


async def run_side(
    side: str, request: Request, plan: Plan, probes: Probes
) -> tuple[LevelRun, list[LevelRun]]:
    """The warm-up (at the highest concurrency), then every level."""
    warmups, runs = await run_sides([Side(side, request, probes)], plan)
    return warmups[0], runs[side]


@dataclass(frozen=True)
class Model:
    name: str
    path: Path
    params: VllmParams

    def describe(self) -> dict[str, Any]:
        version = prepare.model_version(self.path) if prepare.prepared(self.path) else "local"
        return {
            "name": self.name,
            "path": str(self.path),
            "version": version,
            "params": self.params.model_dump(mode="json"),
        }


def default_model(env: Mapping[str, str]) -> Model:
    """The generation worker's default model, as its settings (with ``env``) give it."""
    with environ(env):
        settings = Settings()
    spec = settings.models[settings.default_model]
    if spec.engine != "vllm":
        raise SystemExit(f"the default generation model runs on {spec.engine!r}, not vllm")
    path = spec.path or prepare.model_dir()
    if spec.path is None and not prepare.prepared(path):
        raise SystemExit("the embedded model is not prepared: run `make setup-models`")
    return Model(settings.default_model, path, VllmParams.model_validate(spec.params))


async def open_engine(model: Model) -> Any:
    """AsyncLLM built exactly as the worker builds it (on this loop)."""
    from services.generation.engine import open_async_llm

    return open_async_llm(model.path, model.params)


_VLLM_ENV = (
    "VLLM_CPU_KVCACHE_SPACE",
    "VLLM_CPU_OMP_THREADS_BIND",
    "VLLM_CPU_NUM_OF_RESERVED_CPU",
    "VLLM_WORKER_MULTIPROC_METHOD",
    "GOMP_SPINCOUNT",
)


def direct_request(llm: Any, plan: Plan) -> Request:
    """One request on ``llm``, tokenized and sampled as VllmGenerator.prompt_ids and
    .sampling do for a plain prompt."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    tokenizer = llm.get_tokenizer()
    max_model_len = int(llm.model_config.max_model_len)
    serial = iter(range(1 << 62))

    async def request(index: int, prompt: int) -> Sample:
        began = time.perf_counter()
        ids = list(tokenizer.encode(PROMPTS[prompt]))
        sampling = SamplingParams(
            max_tokens=min(plan.max_tokens, max_model_len - len(ids)),
            temperature=0.0,
            top_p=1.0,
            top_k=0,
            stop=None,
            seed=None,
            output_kind=RequestOutputKind.DELTA,
        )
        first: float | None = None
        tokens = 0
        finish = ""
        parts: list[str] = []
        async for output in llm.generate(
            {"prompt_token_ids": ids}, sampling, request_id=f"bench-{next(serial)}"
        ):
            completion = output.outputs[0]
            tokens += len(completion.token_ids)
            finish = completion.finish_reason or finish
            if completion.text:
                first = first if first is not None else _ms_since(began)
                parts.append(completion.text)
        return Sample(
            index, prompt, _nan(first), _ms_since(began), tokens, finish or "stop", "".join(parts)
        )

    return request


async def _direct(
    model: Model, plan: Plan
) -> tuple[float, dict[str, str], LevelRun, list[LevelRun]]:
    configure_vllm_environment(model.params)
    vllm_env = {k: os.environ.get(k, "") for k in _VLLM_ENV}
    began = time.monotonic()
    llm = await open_engine(model)
    start_s = time.monotonic() - began
    note(f"direct: engine ready in {start_s:.1f}s")
    request = direct_request(llm, plan)
    try:
        warmup, runs = await run_side("direct", request, plan, Probes(direct_cpu))
    finally:
        llm.shutdown()
        # Its __del__ shuts down again; at interpreter exit that fails noisily.
        del request, llm
    return start_s, vllm_env, warmup, runs


def run_direct(
    model: Model, plan: Plan, env: Mapping[str, str]
) -> tuple[float, dict[str, str], LevelRun, list[LevelRun]]:
    """Engine start seconds, the vLLM environment it ran with, warm-up and levels."""
    # vLLM logs to stdout by default; stdout is for the tables.
    with restored_environ(), environ({"VLLM_LOGGING_STREAM": "ext://sys.stderr", **env}):
        result = asyncio.run(_direct(model, plan))
    gc.collect()
    return result


def first_token_so_far(metrics_url: str) -> tuple[float, int]:
    """The worker's time-to-first-token histogram: (seconds summed, requests) so far."""
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        return parse_first_token(reply.read().decode())


def parse_first_token(text: str) -> tuple[float, int]:
    """(seconds summed, requests) of the time-to-first-token histogram in a Prometheus
    text exposition, over all its label sets."""
    total, count = 0.0, 0
    for line in text.splitlines():
        if line.startswith(f"{FIRST_TOKEN_METRIC}_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{FIRST_TOKEN_METRIC}_count"):
            count += int(float(line.rsplit(" ", 1)[1]))
    return total, count


def finish_name(reason: int) -> str:
    """``FINISH_REASON_LENGTH`` → ``length`` (as vLLM names it)."""
    return generation_pb2.FinishReason.Name(reason).removeprefix("FINISH_REASON_").lower()


def gateway_request(stub: generation_pb2_grpc.GenerationAsyncStub, plan: Plan) -> Request:
    """One ``GenerateStream`` call for a plain prompt, greedy, ``plan.max_tokens``."""

    async def request(index: int, prompt: int) -> Sample:
        message = generation_pb2.GenerateRequest(
            prompt=PROMPTS[prompt],
            sampling=generation_pb2.SamplingParams(max_tokens=plan.max_tokens, temperature=0.0),
        )
        began = time.perf_counter()
        first: float | None = None
        tokens = 0
        finish = ""
        parts: list[str] = []
        task_id = ""
        call = stub.GenerateStream(message, timeout=plan.rpc_timeout_s)
        async for chunk in call:
            task_id = task_id or chunk.task_id
            if chunk.delta:
                first = first if first is not None else _ms_since(began)
                parts.append(chunk.delta)
            if chunk.finish_reason:
                tokens = chunk.completion_tokens
                finish = finish_name(chunk.finish_reason)
        total = _ms_since(began)
        text = "".join(parts)
        return Sample(index, prompt, _nan(first), total, tokens, finish or "none", text, task_id)

    return request


def _failure(exc: openai.APIError) -> RequestFailedError:
    """An openai error as a counted failure: ``HTTP <status>``, else the error's class
    (``APITimeoutError``, ``APIConnectionError``, ``APIError`` for an error event in the
    stream)."""
    if isinstance(exc, openai.APIStatusError):
        return RequestFailedError(f"HTTP {exc.status_code}", exc.message)
    return RequestFailedError(type(exc).__name__, str(exc))


def http_request(client: openai.AsyncOpenAI, model: str, plan: Plan) -> Request:
    """One streamed ``POST /v1/completions`` for the same plain prompt, greedy,
    ``plan.max_tokens``, with the usage chunk; a stream without one is a failure."""

    async def request(index: int, prompt: int) -> Sample:
        began = time.perf_counter()
        first: float | None = None
        tokens: int | None = None
        finish = ""
        parts: list[str] = []
        task_id = ""
        try:
            stream = await client.completions.create(
                model=model,
                prompt=PROMPTS[prompt],
                max_tokens=plan.max_tokens,
                temperature=0.0,
                stream=True,
                stream_options={"include_usage": True},
            )
            async with stream:
                async for chunk in stream:
                    # The response id is cmpl-<task id>.
                    task_id = task_id or chunk.id.removeprefix("cmpl-")
                    for choice in chunk.choices:
                        if choice.text:
                            first = first if first is not None else _ms_since(began)
                            parts.append(choice.text)
                        finish = choice.finish_reason or finish
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
        except openai.APIError as exc:
            raise _failure(exc) from exc
        total = _ms_since(began)
        if tokens is None:
            raise RequestFailedError("no usage", "the stream ended without its usage chunk")
        text = "".join(parts)
        return Sample(index, prompt, _nan(first), total, tokens, finish or "none", text, task_id)

    return request


async def served_model(client: openai.AsyncOpenAI, model: str) -> str:
    """``model`` when the HTTP front door lists it (or lists nothing yet)."""
    listed = [m.id for m in (await client.models.list()).data]
    if listed and model not in listed:
        raise SystemExit(f"the HTTP front door serves {listed}, not the default {model!r}")
    return model


async def _platform(
    stack: LocalStack, plan: Plan, model: str, http_first: bool
) -> tuple[list[LevelRun], dict[str, list[LevelRun]]]:
    """The gateway and http sides on one stack, level by level (``http_first``: http
    takes each turn first)."""
    assert stack.http_url is not None, "the stack runs no HTTP front door"
    async with (
        grpc.aio.insecure_channel(stack.gateway_target) as channel,
        openai.AsyncOpenAI(
            base_url=stack.http_url,  # already …/v1
            api_key="unused",  # the local stack's development auth mode takes none
            max_retries=0,  # a failure is counted, not retried
            timeout=plan.rpc_timeout_s,
        ) as client,
    ):
        tasks = tasks_pb2_grpc.TasksStub(channel)

        async def annotate(samples: list[Sample]) -> None:
            for sample in samples:
                if sample.task_id:
                    result = await tasks.Get(
                        tasks_pb2.GetTaskRequest(task_id=sample.task_id), timeout=30
                    )
                    t = result.timings
                    sample.stages_ms = {
                        "queued": t.queued_ms,
                        "waited": t.waited_ms,
                        "ran": t.ran_ms,
                    }

        worker = stack.services[f"{KIND}-worker"].metrics_url
        probes = Probes(lambda: gateway_cpu(stack), lambda: first_token_so_far(worker), annotate)
        stub = generation_pb2_grpc.GenerationStub(channel)
        sides = [
            Side("gateway", gateway_request(stub, plan), probes),
            Side("http", http_request(client, await served_model(client, model), plan), probes),
        ]
        return await run_sides(sides[::-1] if http_first else sides, plan)


# --- output -------------------------------------------------------------------------------


def ttft_breakdown(platform: LevelRun, direct: LevelRun) -> list[object]:
    """A row of the TTFT breakdown table: where a gateway or http request's first token
    went."""
    stages = platform.stages_mean_ms
    queued = stages.get("queued", float("nan"))
    waited = stages.get("waited", float("nan"))
    engine = platform.engine_ttft_mean_ms
    return [
        platform.side,
        platform.concurrency,
        platform.ttft_mean_ms,
        queued,
        waited,
        engine,
        platform.ttft_mean_ms - queued - waited - engine,
        direct.ttft_mean_ms,
        stages.get("ran", float("nan")),
    ]


def _cpu_column(group: str) -> Callable[[LevelRun], float]:
    # NaN: a run from before that group.
    return lambda r: r.cpu_s.get(group, float("nan"))


def _r(value: float) -> str:
    return f"{value:.2f}"


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def output(report: Report) -> Output:
    model = report.model
    direct = {r.concurrency: r for r in report.runs if r.side == "direct"}
    # Gateway then http at each concurrency (a run from before http has none).
    platform = sorted(
        (r for r in report.runs if r.side in SIDES[1:]),
        key=lambda r: (r.concurrency, SIDES.index(r.side)),
    )
    level_columns: dict[str, Getter] = {
        "side": "side",
        "clients": "concurrency",
        "requests": lambda r: f"{r.done}/{r.planned}",
        "tokens": "completion_tokens",
        "wall s": "seconds",
        "tok/s": "tokens_per_s",
        "ttft p50": "ttft_p50_ms",
        "ttft p90": "ttft_p90_ms",
        "ttft mean": "ttft_mean_ms",
        "e2e p50": "total_p50_ms",
        **{k: _cpu_column(k) for k in CPU_GROUPS},
        "errors": lambda r: format_errors(r.errors),
    }
    same = [
        f"greedy text identical to the direct side's for {report.same_text} of "
        f"{report.compared} prompts through the gateway, {report.http_same_text} of "
        f"{report.http_compared} through http; http's identical to the gateway's for "
        f"{report.http_gateway_same_text} of {report.http_gateway_compared}"
    ]
    tables = [
        Table.of_items(
            "per level (gateway: through the gRPC gateway; http: through the HTTP front door; "
            "tok/s: completion tokens / wall s; TTFT and e2e in ms; CPU in s over the level; "
            "client: this process, with the AsyncLLM front end on the direct side; engine: "
            "vLLM's engine core processes; gateway, http-gateway: the two front doors' "
            "processes; worker: the Celery worker without the engine)",
            level_columns,
            report.runs,
            digits=2,
        ),
        Table.of(
            "time to first token through the platform, where it goes (means, ms; queued: the "
            "front door accepted → intake handed off; waited: → worker started it; engine: "
            "the worker's engine took it → first text, its metric; rest: gRPC or HTTP in, "
            "the front door, worker before the engine, Redis → front door → client)",
            [
                "side",
                "clients",
                "ttft",
                "queued",
                "waited",
                "engine",
                "rest",
                "direct ttft",
                "ran",
            ],
            [ttft_breakdown(r, direct[r.concurrency]) for r in platform],
        ),
        Table.of_items(
            "== summary (gw: through the gRPC gateway, http: through the HTTP front door; "
            "tok/s ratios gw/direct, http/direct, http/gw; TTFT p50 ratios direct/gw, "
            "direct/http, gw/http, so that higher is better for all; target: both ratios "
            f">= {TARGET_RATIO} against direct, for gw and for http)",
            [
                ("clients", "concurrency"),
                ("direct tok/s", "direct_tokens_per_s"),
                ("gw tok/s", "gateway_tokens_per_s"),
                ("http tok/s", "http_tokens_per_s"),
                ("gw/direct", lambda c: _r(c.tokens_per_s_ratio)),
                ("http/direct", lambda c: _r(c.http_tokens_per_s_ratio)),
                ("http/gw", lambda c: _r(c.http_gateway_tokens_per_s_ratio)),
                ("direct ttft p50", "direct_ttft_p50_ms"),
                ("gw ttft p50", "gateway_ttft_p50_ms"),
                ("http ttft p50", "http_ttft_p50_ms"),
                ("direct/gw", lambda c: _r(c.ttft_p50_ratio)),
                ("direct/http", lambda c: _r(c.http_ttft_p50_ratio)),
                ("gw/http", lambda c: _r(c.gateway_http_ttft_p50_ratio)),
                (
                    "tokens d/gw/http",
                    lambda c: (
                        f"{c.direct_completion_tokens}/{c.gateway_completion_tokens}/"
                        f"{c.http_completion_tokens}"
                    ),
                ),
                ("target gw/http", lambda c: f"{_yes(c.meets_target)}/{_yes(c.http_meets_target)}"),
            ],
            report.comparisons,
            notes=same,
        ),
        Table.of_items(
            "time to first token, means (ms; ratios as above)",
            [
                ("clients", "concurrency"),
                ("direct", "direct_ttft_mean_ms"),
                ("gw", "gateway_ttft_mean_ms"),
                ("http", "http_ttft_mean_ms"),
                ("direct/gw", lambda c: _r(c.ttft_mean_ratio)),
                ("direct/http", lambda c: _r(c.http_ttft_mean_ratio)),
                ("gw/http", lambda c: _r(c.gateway_http_ttft_mean_ratio)),
            ],
            report.comparisons,
        ),
    ]
    if len(report.rounds) > 1:
        tables.append(
            Table.of_items(
                "each round alone (ratios as above; the engine's speed drifts between rounds)",
                [
                    ("round", lambda rc: rc[0]),
                    ("clients", lambda rc: rc[1].concurrency),
                    ("direct tok/s", lambda rc: rc[1].direct_tokens_per_s),
                    ("gw tok/s", lambda rc: rc[1].gateway_tokens_per_s),
                    ("http tok/s", lambda rc: rc[1].http_tokens_per_s),
                    ("gw/direct", lambda rc: rc[1].tokens_per_s_ratio),
                    ("http/direct", lambda rc: rc[1].http_tokens_per_s_ratio),
                    ("http/gw", lambda rc: rc[1].http_gateway_tokens_per_s_ratio),
                    ("ttft p50 direct/gw", lambda rc: rc[1].ttft_p50_ratio),
                    ("direct/http", lambda rc: rc[1].http_ttft_p50_ratio),
                    ("gw/http", lambda rc: rc[1].gateway_http_ttft_p50_ratio),
                ],
                [(n, c) for n, comparisons in enumerate(report.rounds, 1) for c in comparisons],
                digits=2,
            )
        )
    about = [
        f"model {model['name']} ({model['version']}), vllm params "
        f"{json.dumps(model['params'], separators=(',', ':'))}",
        f"{len(report.prompts)} prompts, greedy, max_tokens {report.plan['max_tokens']}",
        f"direct engine ready in {report.direct_start_s:.1f}s; stack ready in "
        f"{report.stack_start_s:.1f}s",
    ]
    return Output(about, tables)


@dataclass
class Rounds:
    """Every round's levels by side (round → levels), their warm-ups and start times."""

    warmup: list[LevelRun] = field(default_factory=list)
    direct: list[list[LevelRun]] = field(default_factory=list)
    gateway: list[list[LevelRun]] = field(default_factory=list)
    http: list[list[LevelRun]] = field(default_factory=list)
    direct_starts: list[float] = field(default_factory=list)
    stack_starts: list[float] = field(default_factory=list)
    broker_warmups: list[BrokerWarmup] = field(default_factory=list)
    vllm_env: dict[str, str] = field(default_factory=dict)


def run_rounds(model: Model, plan: Plan, env: Mapping[str, str]) -> Rounds:
    """Direct then the platform (gateway and http, taking turns at each level; http first
    in even rounds), ``plan.rounds`` times, each with a fresh engine and stack."""
    done = Rounds()
    for round_no in range(1, plan.rounds + 1):
        note(f"round {round_no}/{plan.rounds}: starting vLLM for {model.name} in this process")
        direct_start_s, done.vllm_env, direct_warmup, direct = run_direct(model, plan, env)
        note(
            "starting the local stack for generation (Kafka, Redis, gateway, HTTP front door, "
            "intake, worker)"
        )
        stack_began = time.monotonic()
        with LocalStack(kinds=[KIND], env=env) as stack:
            done.stack_starts.append(time.monotonic() - stack_began)
            note(f"stack ready in {done.stack_starts[-1]:.1f}s")
            if plan.broker_warmup_s > 0:
                warmed = asyncio.run(warm_broker(stack, plan.broker_warmup_s))
                done.broker_warmups.append(warmed)
                note(
                    f"broker warmed: {warmed.produced} messages produced, {warmed.consumed} "
                    f"consumed in {warmed.seconds}s"
                )
            http_first = round_no % 2 == 0
            warmups, platform = asyncio.run(_platform(stack, plan, model.name, http_first))
        done.direct_starts.append(direct_start_s)
        done.warmup += [direct_warmup, *warmups]
        done.direct.append(direct)
        done.gateway.append(platform["gateway"])
        done.http.append(platform["http"])
    return done


def main(argv: list[str] | None = None) -> int:
    bench = Bench(
        "generation",
        __doc__,
        quick="a short run (smoke test)",
        env="environment for the direct engine and every stack service (repeatable)",
        plan=Plan(),
        quick_plan=QUICK,
        load_hint="see the 'other' CPU column",
    )
    bench.option("concurrency", "client counts")
    bench.option("max_tokens", "per request")
    bench.option("rounds", "direct-then-platform rounds, pooled")
    bench.option("broker_warmup_s", "seconds of Kafka traffic warming each stack's broker first", 0)
    bench.parse(argv)
    plan, env = bench.plan, bench.env
    model = default_model(env)
    done = run_rounds(model, plan, env)
    direct = [pool(level) for level in zip(*done.direct, strict=True)]
    gateway = [pool(level) for level in zip(*done.gateway, strict=True)]
    http = [pool(level) for level in zip(*done.http, strict=True)]
    texts = {
        side: [s for r in runs for s in r.samples]
        for side, runs in (("direct", direct), ("gateway", gateway), ("http", http))
    }
    same, compared = same_texts(texts["direct"], texts["gateway"])
    http_same, http_compared = same_texts(texts["direct"], texts["http"])
    http_gateway_same, http_gateway_compared = same_texts(texts["gateway"], texts["http"])
    bind, usable = done.vllm_env.get("VLLM_CPU_OMP_THREADS_BIND", ""), usable_cores()
    where = "every usable core" if bind == usable else f"of {usable} usable"
    notes = [
        f"the CPU engine's threads are bound to cores {bind} ({where}) on every "
        "side; through the platform the front door (gRPC gateway or HTTP), intake, worker "
        "front, Kafka, Redis and this client compete with it for those cores (see the CPU "
        "columns), directly only this process's front end and client do",
        "the direct side is the same AsyncLLM in this process, tokenized and sampled as the "
        "worker does; it was shut down before the stack started",
        "gateway and http share each round's stack and take turns at each level, never at "
        "once (gateway first in odd rounds, http first in even ones); http is the openai "
        "package's AsyncOpenAI on /v1/completions, streamed with include_usage",
        f"{plan.rounds} round(s) of direct then the platform, each with a fresh engine and "
        "stack; the tables pool them, the last one gives each round's ratios",
    ]
    if plan.broker_warmup_s > 0:
        notes.append(
            f"each stack's Kafka broker first carried {plan.broker_warmup_s:g}s of "
            "produce/fetch/commit traffic on a scratch topic, so that its JVM had compiled "
            "its request paths, as a broker in service has (--broker-warmup-s 0: cold)"
        )
    runs = direct + gateway + http
    report = Report(
        plan={**asdict(plan), "requests": {c: plan.requests(c) for c in plan.concurrency}},
        model=model.describe(),
        vllm_environment=done.vllm_env,
        prompts=list(PROMPTS),
        direct_start_s=mean(done.direct_starts),
        stack_start_s=mean(done.stack_starts),
        warmup=done.warmup,
        runs=runs,
        comparisons=[compare(*sides) for sides in zip(direct, gateway, http, strict=True)],
        same_text=same,
        compared=compared,
        errors=sum(sum(r.errors.values()) for r in done.warmup + runs),
        rounds=[
            [compare(*sides) for sides in zip(ds, gs, hs, strict=True)]
            for ds, gs, hs in zip(done.direct, done.gateway, done.http, strict=True)
        ],
        broker_warmups=done.broker_warmups,
        http_same_text=http_same,
        http_compared=http_compared,
        http_gateway_same_text=http_gateway_same,
        http_gateway_compared=http_gateway_compared,
    )
    return bench.finish(report, output(report), notes=notes, failed=report.errors > 0)


if __name__ == "__main__":
    sys.exit(main())
