"""The benchmarks' scaffold: options from the plan, the record every JSON carries, tables
as text, and results read back from their JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

from bench import analysis, bulk, common, generation, hops, security, tracing
from bench.common import Bench, Output, Table, load


@dataclass(frozen=True)
class Plan:
    levels: tuple[int, ...] = (1, 8)
    requests: int = 40
    warmup_s: float = 10.0


@dataclass
class Level:
    clients: int
    rate: float
    sizes: dict[int, int] = field(default_factory=dict)


@dataclass
class Found:
    levels: list[Level]
    spread: tuple[float, float, float]
    best: Level | None = None


@pytest.fixture(autouse=True)
def no_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bench.parse turns SIGTERM into KeyboardInterrupt for the stacks; not in this process.
    monkeypatch.setattr("deploy.local.kafka.interrupt_on_termination", lambda: None)


def bench(load_hint: str = "") -> Bench:
    quick = Plan((1,), 4, 1.0)
    b = Bench("toy", "A toy benchmark.", plan=Plan(), quick_plan=quick, load_hint=load_hint)
    b.option("levels", "client counts")
    b.option("requests", "per level")
    b.option("warmup_s", "seconds first", 0)
    return b


def test_options_override_the_plan_and_their_help_gives_both_plans(
    capsys: pytest.CaptureFixture[str],
) -> None:
    b = bench()
    b.parse(["--levels", "2,4", "--warmup-s", "0"])
    assert b.plan == Plan((2, 4), 40, 0.0) and not b.quick
    quick = bench()
    quick.parse(["--quick", "--requests", "3"])
    assert quick.plan == Plan((1,), 3, 1.0) and quick.quick
    with pytest.raises(SystemExit):
        bench().parse(["--help"])
    out = capsys.readouterr().out
    assert "client counts (default 1,8; quick 1)" in out
    assert "JSON results file (default: bench-results/toy.json)" in out


@pytest.mark.parametrize(
    "argv", [["--requests", "0"], ["--levels", "0,4"], ["--warmup-s", "-1"], ["--env", "X"]]
)
def test_bad_options_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench().parse(argv)
    assert exit_info.value.code == 2


def test_finish_prints_and_writes_the_record_results_and_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = bench(load_hint="see the 'other' column")
    out = tmp_path / "deep" / "toy.json"
    b.parse(["--env", "A=1", "--out", str(out), "--requests", "5"])
    b.load_at_start = (0.9, 0.5, 0.2)  # as if something else had been busy
    found = Found([Level(1, 10.0, {16: 2}), Level(8, 55.5)], (1.0, 2.0, 3.0), Level(8, 55.5))
    shown = Output(
        ["engine ready in 1.0s"],
        [Table.of_items("levels", {"clients": "clients", "rate": "rate"}, found.levels)],
    )
    assert b.finish(found, shown, notes=["a note"], failed=True) == 1

    data = json.loads(out.read_text())
    assert data["name"] == data["benchmark"] == "toy"
    assert data["command"] == "python -m bench.toy --env A=1 --out " + f"{out} --requests 5"
    assert data["argv"][-2:] == ["--requests", "5"] and data["env"] == {"A": "1"}
    assert data["date"].endswith("+00:00") and data["timestamp"] >= data["date"]
    machine = data["machine"]
    assert {"cpu_count", "cpus_usable", "cpu_model", "memory_gib", "python"} <= machine.keys()
    assert machine["memory_gib"] > 0 and machine["cpu_model"]
    assert data["quick"] is False and data["plan"] == {
        "levels": [1, 8],
        "requests": 5,
        "warmup_s": 10.0,
    }
    assert data["load_avg_at_start"] == [0.9, 0.5, 0.2] and len(data["load_avg_at_end"]) == 3
    assert data["wall_s"] >= 0 and data["levels"][0] == {
        "clients": 1,
        "rate": 10.0,
        "sizes": {"16": 2},
    }
    assert data["notes"][0] == "a note" and "load average was 0.90" in data["notes"][1]
    assert data["notes"][1].endswith("see the 'other' column")
    assert data["about"] == ["engine ready in 1.0s"]
    assert data["tables"] == [
        {
            "title": "levels",
            "headers": ["clients", "rate"],
            "rows": [["1", "10.0"], ["8", "55.5"]],
            "notes": [],
            "section": "",
            "about": [],
        }
    ]
    printed = capsys.readouterr().out
    assert printed.startswith("toy benchmark  ")
    assert "  command: python -m bench.toy --env A=1" in printed
    assert (
        "  env: A=1\n  engine ready in 1.0s\n\nlevels\n  clients  rate\n        1  10.0\n"
        in printed
    )
    assert printed.rstrip().endswith("see the 'other' column")

    # Read back: ints for int keys, tuples, nested dataclasses, optional fields.
    assert load(Found, data) == found
    assert load(list[Table], data["tables"]) == shown.tables


def test_load_ignores_unknown_keys_and_keeps_defaults() -> None:
    assert load(Found, {"levels": [], "spread": [1, 2, 3], "name": "x"}) == Found(
        [], (1.0, 2.0, 3.0)
    )
    assert math.isnan(load(float, float("nan")))


def test_a_table_with_a_section_prints_its_heading_and_notes() -> None:
    t = Table.of(
        "direct",
        ["batch", "docs/s"],
        [[1, 2.345]],
        digits=2,
        notes=["best: 2.35"],
        section="classification: minilm",
        about=["corpus: 10 docs"],
    )
    assert t.text() == (
        "== classification: minilm\n  corpus: 10 docs\n\ndirect\n"
        "  batch  docs/s\n      1    2.35\n  best: 2.35"
    )


@pytest.mark.parametrize("module", [analysis, bulk, generation, hops, security, tracing])
def test_every_benchmark_names_its_results_and_shows_them(module: ModuleType) -> None:
    # What bench.report relies on to show a JSON from before the tables were stored.
    assert isinstance(module.Results, type)
    assert callable(module.output)


def test_the_record_of_an_unquick_benchmark_has_no_quick_field() -> None:
    b = Bench("bare", None, quick=None, env=None)
    b.parse([])
    record = b.record()
    assert "quick" not in record and "plan" not in record and record["env"] == {}
    assert asdict(Table.of("t", ["a"], [[1.0]]))["rows"] == [["1.0"]]
    assert common.RESULTS_DIR.name == "bench-results"
