"""``nlp top``: a live view of a stack's Prometheus metrics, per kind and lane.

Every process serves ``/metrics`` (``shared/observability/metrics.py``). ``nlp top``
scrapes them all twice, ``--interval`` apart, and shows what happened in between: tasks
submitted and finished per second, failures and errors by code, each stage's p50 and p99
(from the histograms' bucket deltas, as PromQL's ``histogram_quantile`` over a
``rate`` does), the Celery queue depth and the Kafka lag now, generation's output tokens
per second and time to first token. The local stack's state file (``make up``) names the
processes; ``--metrics NAME=URL`` names others (a port-forwarded pod). ``--once
--json`` prints one view as JSON for scripts; ``--json`` alone, one JSON line per
interval.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from shared.contracts.names import ALL_LANES
from shared.observability.metrics import STAGES

# A sample: its name (with _total, _bucket, ... as exposed) and its labels, sorted.
Key = tuple[str, tuple[tuple[str, str], ...]]
Samples = dict[Key, float]
DEFAULT_STATE = Path(".run") / "stack.json"


def parse(text: str) -> Samples:
    """The samples of one ``/metrics`` page (Prometheus text format)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def scrape(url: str, timeout_s: float = 2.0) -> Samples | None:
    """One process's samples; None when it does not answer (it is down)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return parse(response.read().decode("utf-8"))
    except (OSError, ValueError, urllib.error.URLError):
        return None


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram given as (upper bound, cumulative count) pairs,
    interpolated linearly inside its bucket as Prometheus does; None for no observations.
    A quantile in the +Inf bucket is the largest finite bound."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def _delta(after: float, before: float | None) -> float:
    """A counter's increase; a process that restarted counts from zero again."""
    if before is None or after < before:
        return after
    return after - before


class _Window:
    """Two scrapes of every process, and what changed between them."""

    def __init__(
        self,
        before: Mapping[str, Samples | None],
        after: Mapping[str, Samples | None],
        seconds: float,
    ) -> None:
        self.seconds = seconds
        self.before = {n: s for n, s in before.items() if s is not None}
        self.after = {n: s for n, s in after.items() if s is not None}
        # The later scrape by series name, each sample with its process and labels: a
        # view asks for a few names a hundred times over.
        self.series: dict[str, list[tuple[str, Key, dict[str, str], float]]] = defaultdict(list)
        for process, samples in self.after.items():
            for key, value in samples.items():
                self.series[key[0]].append((process, key, dict(key[1]), value))

    def increase(self, name: str, match: Callable[[dict[str, str]], bool]) -> dict[Key, float]:
        """Increase of each series ``name`` matching, summed over processes by labels."""
        out: dict[Key, float] = defaultdict(float)
        for process, key, labels, value in self.series.get(name, ()):
            if match(labels):
                out[key] += _delta(value, self.before.get(process, {}).get(key))
        return out

    def latest(self, name: str, match: Callable[[dict[str, str]], bool]) -> dict[Key, float]:
        """A gauge now: each series' largest value over processes (intakes of one kind
        report the same queue; each reports only its own partitions' lag)."""
        out: dict[Key, float] = {}
        for _, key, labels, value in self.series.get(name, ()):
            if match(labels):
                out[key] = max(out.get(key, value), value)
        return out

    def rate(self, name: str, match: Callable[[dict[str, str]], bool]) -> float:
        return sum(self.increase(name, match).values()) / self.seconds if self.seconds else 0.0

    def quantiles(
        self, name: str, match: Callable[[dict[str, str]], bool]
    ) -> dict[str, float | None]:
        """p50 and p99 in milliseconds of the observations in the window."""
        buckets: dict[float, float] = defaultdict(float)
        for key, count in self.increase(f"{name}_bucket", match).items():
            buckets[float(dict(key[1])["le"])] += count
        pairs = list(buckets.items())
        out: dict[str, float | None] = {}
        for label, q in (("p50_ms", 0.5), ("p99_ms", 0.99)):
            value = histogram_quantile(q, pairs)
            out[label] = None if value is None else round(value * 1000, 2)
        return out


def _is(**wanted: str) -> Callable[[dict[str, str]], bool]:
    return lambda labels: all(labels.get(k) == v for k, v in wanted.items())


def view(
    before: Mapping[str, Samples | None], after: Mapping[str, Samples | None], seconds: float
) -> dict[str, Any]:
    """What happened between two scrapes of every process, per kind and lane."""
    w = _Window(before, after, seconds)
    kinds = sorted(
        {
            labels["kind"]
            for name, samples in w.series.items()
            if name.startswith("nlp_")
            for _, _, labels, _ in samples
            if "kind" in labels
        }
    )
    out: dict[str, Any] = {
        "interval_s": round(seconds, 3),
        "processes": {n: ("up" if after.get(n) is not None else "down") for n in sorted(after)},
        "kinds": {},
    }
    for kind in kinds:
        errors = {
            dict(key[1])["code"]: round(v / seconds, 3)
            for key, v in w.increase("nlp_task_errors_total", _is(kind=kind)).items()
            if v
        }
        lanes = {}
        for lane in ALL_LANES:
            finished = w.increase("nlp_tasks_total", _is(kind=kind, lane=lane))
            done = sum(v for k, v in finished.items() if dict(k[1]).get("status") == "SUCCEEDED")
            failed = sum(finished.values()) - done
            lag = w.latest("nlp_kafka_consumer_lag", _is(kind=kind, lane=lane))
            depth = w.latest("nlp_celery_queue_depth", _is(kind=kind, lane=lane))
            lanes[lane] = {
                "succeeded_per_s": round(done / seconds, 3),
                "failed_per_s": round(failed / seconds, 3),
                "queue_depth": int(sum(depth.values())),
                "lag": int(sum(lag.values())),
                "stages": {
                    stage: w.quantiles(
                        "nlp_task_stage_seconds", _is(kind=kind, lane=lane, stage=stage)
                    )
                    for stage in STAGES
                },
            }
        entry: dict[str, Any] = {
            "submitted_per_s": round(w.rate("nlp_tasks_submitted_total", _is(kind=kind)), 3),
            "errors_per_s": errors,
            "lanes": lanes,
        }
        if kind == "generation":
            tokens = w.rate("nlp_tokens_total", _is(kind=kind, direction="output"))
            entry["tokens_out_per_s"] = round(tokens, 1)
            entry["time_to_first_token"] = w.quantiles(
                "nlp_time_to_first_token_seconds", _is(kind=kind)
            )
        out["kinds"][kind] = entry
    rpc = w.increase("nlp_rpc_duration_seconds_count", lambda labels: True)
    out["rpc_errors_per_s"] = {
        code: round(total / seconds, 3)
        for code, total in _sum_by(rpc, "code").items()
        if code != "OK" and total
    }
    return out


def _sum_by(series: Mapping[Key, float], label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for key, value in series.items():
        out[dict(key[1]).get(label, "")] += value
    return out


def endpoints(state_file: Path | None, extra: Iterable[str]) -> dict[str, str]:
    """Process name -> metrics URL: the local stack's state file, then ``NAME=URL`` pairs."""
    found: dict[str, str] = {}
    if state_file is not None and state_file.exists():
        found |= json.loads(state_file.read_text(encoding="utf-8")).get("metrics", {})
    for item in extra:
        name, sep, url = item.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise ValueError(f"--metrics: expected NAME=http://host:port/metrics, got {item!r}")
        found[name] = url
    return found


def sample(urls: Mapping[str, str]) -> dict[str, Samples | None]:
    return {name: scrape(url) for name, url in urls.items()}


def measure(urls: Mapping[str, str], interval_s: float) -> dict[str, Any]:
    """One view: two scrapes ``interval_s`` apart."""
    before, began = sample(urls), time.monotonic()
    time.sleep(interval_s)
    after = sample(urls)
    return view(before, after, time.monotonic() - began)


def _ms(pair: Mapping[str, float | None]) -> str:
    p50, p99 = pair.get("p50_ms"), pair.get("p99_ms")
    if p50 is None or p99 is None:
        return "-"
    return f"{p50:.0f}/{p99:.0f}"


def render(snapshot: Mapping[str, Any]) -> Any:
    """The view as a rich renderable (tables of kinds and lanes, processes down)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=f"nlp top — last {snapshot['interval_s']:.1f} s (stage times: p50/p99 ms)",
        header_style="bold",
    )
    for column in ("kind", "lane", "submit/s", "done/s", "failed/s", "queue", "lag", *STAGES):
        table.add_column(column, justify="left" if column in ("kind", "lane") else "right")
    for kind, entry in snapshot["kinds"].items():
        for i, (lane, row) in enumerate(entry["lanes"].items()):
            table.add_row(
                kind if i == 0 else "",
                lane,
                f"{entry['submitted_per_s']:.1f}" if i == 0 else "",
                f"{row['succeeded_per_s']:.1f}",
                f"{row['failed_per_s']:.1f}",
                str(row["queue_depth"]),
                str(row["lag"]),
                *(_ms(row["stages"][stage]) for stage in STAGES),
            )
    lines = []
    for kind, entry in snapshot["kinds"].items():
        if entry["errors_per_s"]:
            codes = ", ".join(f"{c} {r:.1f}/s" for c, r in sorted(entry["errors_per_s"].items()))
            lines.append(f"{kind} errors: {codes}")
        if "tokens_out_per_s" in entry:
            ttft = _ms(entry["time_to_first_token"])
            lines.append(
                f"{kind}: {entry['tokens_out_per_s']:.0f} tokens/s out; first token p50/p99 {ttft} ms"
            )
    if snapshot["rpc_errors_per_s"]:
        codes = ", ".join(f"{c} {r:.1f}/s" for c, r in sorted(snapshot["rpc_errors_per_s"].items()))
        lines.append(f"gateway RPC errors: {codes}")
    down = [name for name, state in snapshot["processes"].items() if state == "down"]
    if down:
        lines.append(f"not answering: {', '.join(down)}")
    return Group(table, *(Text(line) for line in lines))


def run(urls: Mapping[str, str], interval_s: float, once: bool, as_json: bool) -> int:
    """``nlp top``: one view (``once``) or a live one until Ctrl-C; with ``as_json``, a
    JSON view (live: one JSON line per interval)."""
    if not urls:
        raise ValueError(
            "no processes to watch: start a stack with `make up` (its state file is "
            f"{DEFAULT_STATE}) or give --metrics NAME=URL"
        )
    if once:
        snapshot = measure(urls, interval_s)
        if as_json:
            print(json.dumps(snapshot, indent=2))
        else:
            from rich.console import Console

            console = Console()
            if not console.is_terminal:  # piped: the whole table, not 80 squeezed columns
                console = Console(width=max(console.width, 150))
            console.print(render(snapshot))
        return 0
    if as_json:
        try:
            while True:
                print(json.dumps(measure(urls, interval_s)), flush=True)
        except KeyboardInterrupt:
            return 0
    from rich.live import Live

    with Live(render(measure(urls, interval_s)), auto_refresh=False) as live:
        try:
            while True:
                live.update(render(measure(urls, interval_s)), refresh=True)
        except KeyboardInterrupt:
            return 0
