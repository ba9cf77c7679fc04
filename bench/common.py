"""The scaffold every benchmark shares: its command line, the record of a run (name, date,
machine, exact command, load), the header and notes it prints, its tables as text, and
the JSON it writes to ``bench-results/<name>.json`` (the source of ``docs/benchmarks.md``,
``python -m bench.report``).

A benchmark builds a :class:`Bench`, adds its own options, parses, measures, and hands
its results (a dataclass) with their :class:`Output` to :meth:`Bench.finish`. Its module
names the results' class ``Results`` and the function that shows them ``output``, so
that the report can show a JSON written before the tables were stored in it.

Nothing here touches the stack (that is ``bench.harness``): the report imports it alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench-results"
# A 1-minute load average above this at the start is noted: something else was busy.
BUSY_LOAD = 0.5


# --- the machine --------------------------------------------------------------------------


def cpus_usable() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return float("nan")


def machine_info() -> dict[str, Any]:
    """What the numbers depend on besides the code."""
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": cpus_usable(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def describe_machine(m: Mapping[str, Any]) -> str:
    """One line: cores, memory, CPU model, Python, OS (keys a run lacks are left out)."""
    parts = [f"{m.get('cpu_count', '?')} CPUs ({m.get('cpus_usable', '?')} usable)"]
    if "memory_gib" in m:
        parts.append(f"{m['memory_gib']:g} GiB")
    if "cpu_model" in m:
        parts.append(m["cpu_model"])
    parts += [f"Python {m.get('python', '?')}", str(m.get("platform", "?"))]
    return ", ".join(parts)


# --- text ---------------------------------------------------------------------------------


def note(message: str) -> None:
    """Progress on stderr, so that a long run is not silent and stdout stays the tables."""
    print(message, file=sys.stderr, flush=True)


def cell(value: object, digits: int = 1) -> str:
    """A table cell: floats with ``digits`` decimals, anything else as ``str``."""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], digits: int = 1) -> str:
    """Right-aligned plain-text columns, indented; floats with ``digits`` decimals."""
    cells = [list(headers)] + [[cell(v, digits) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells
    )


def format_errors(errors: Mapping[str, int]) -> str:
    """``CODE:count,…`` or ``0``."""
    return ",".join(f"{k}:{v}" for k, v in sorted(errors.items())) or "0"


# A table column's value: an attribute's name, or a function of the row's item.
Getter = str | Callable[[Any], object]


@dataclass
class Table:
    """One table of a run, its cells already formatted (as printed, as the report shows)."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    # Lines under it (a best value, a ratio, a distribution).
    notes: list[str] = field(default_factory=list)
    # The group of tables (an analysis kind) that it starts, and lines about that group.
    section: str = ""
    about: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        title: str,
        headers: Sequence[str],
        rows: Iterable[Sequence[object]],
        digits: int = 1,
        notes: Sequence[str] = (),
        section: str = "",
        about: Sequence[str] = (),
    ) -> Table:
        return cls(
            title,
            list(headers),
            [[cell(v, digits) for v in row] for row in rows],
            list(notes),
            section,
            list(about),
        )

    @classmethod
    def of_items(
        cls,
        title: str,
        columns: Mapping[str, Getter] | Sequence[tuple[str, Getter]],
        items: Iterable[Any],
        digits: int = 1,
        notes: Sequence[str] = (),
        section: str = "",
        about: Sequence[str] = (),
    ) -> Table:
        """A row per item; a column (header → getter, as a dict or pairs when headers
        repeat) is an attribute's name or a function of the item."""
        pairs = list(columns.items() if isinstance(columns, Mapping) else columns)
        getters = [
            (lambda item, a=g: getattr(item, a)) if isinstance(g, str) else g for _, g in pairs
        ]
        rows = [[get(item) for get in getters] for item in items]
        return cls.of(title, [h for h, _ in pairs], rows, digits, notes, section, about)

    def text(self) -> str:
        lines = [f"== {self.section}", *(f"  {a}" for a in self.about), ""] if self.section else []
        lines += [self.title, table(self.headers, self.rows), *(f"  {n}" for n in self.notes)]
        return "\n".join(lines)


@dataclass
class Output:
    """What a run shows besides the common header: lines about it, then its tables."""

    about: list[str]
    tables: list[Table]


def env_line(env: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in env.items()) or "(none)"


def header(run: Mapping[str, Any]) -> list[str]:
    """The lines that open a run's printout: name, date, machine, command, load, env."""
    mode = "quick, " if run.get("quick") else "full, " if "quick" in run else ""
    start, end = run.get("load_avg_at_start"), run.get("load_avg_at_end")
    lines = [
        f"{run['name']} benchmark  {run['date']}  ({mode}{run.get('wall_s', 0.0):.0f}s)",
        f"  {describe_machine(run['machine'])}",
        f"  command: {run['command']}",
    ]
    if start and end:
        lines.append(
            f"  load average 1/5/15 min: {start[0]:.2f}/{start[1]:.2f}/{start[2]:.2f} at "
            f"start, {end[0]:.2f}/{end[1]:.2f}/{end[2]:.2f} at end"
        )
    return [*lines, f"  env: {env_line(run.get('env', {}))}"]


# --- the command line and the run ---------------------------------------------------------


def add_env_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """The repeatable ``--env KEY=VALUE`` option; read it with :func:`parse_env`."""
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help=help)


def parse_env(values: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict; a malformed one is a usage error."""
    env: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--env wants KEY=VALUE, got {item!r}")
        env[key.strip()] = value
    return env


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("integers, comma-separated") from None


def _show(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else f"{value:g}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Bench:
    """One benchmark run: ``python -m bench.<name>``'s options (``--quick`` when it has
    a smaller plan, ``--env`` when the stack takes overrides, ``--out``), then when and
    where it ran, what it printed and the JSON it wrote."""

    def __init__(
        self,
        name: str,
        doc: str | None,
        *,
        quick: str | None = "small counts: a smoke test",
        env: str | None = "environment for every stack service (repeatable)",
        out: str = "",
        load_hint: str = "",
        plan: Any = None,
        quick_plan: Any = None,
    ) -> None:
        self.name = self.module = name
        self.load_hint = load_hint
        self.parser = argparse.ArgumentParser(
            prog=f"python -m bench.{name}",
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self._quick = quick is not None
        if quick is not None:
            self.parser.add_argument("--quick", action="store_true", help=quick)
        self._env = env is not None
        if env is not None:
            add_env_argument(self.parser, env)
        self.parser.add_argument(
            "--out",
            type=Path,
            help=f"JSON results file (default: {out or f'bench-results/{name}.json'})",
        )
        self._plans = (plan, quick_plan if quick_plan is not None else plan)
        self._options: dict[str, float] = {}
        self.plan: Any = plan
        self.env: dict[str, str] = {}
        self.quick = False
        self.argv: list[str] = []
        self.out = RESULTS_DIR / f"{name}.json"
        self.date = ""
        self.load_at_start = (0.0, 0.0, 0.0)
        self._began = 0.0

    def error(self, message: str) -> NoReturn:
        self.parser.error(message)

    def option(self, name: str, help: str, minimum: float = 1) -> None:
        """``--<name>``, overriding the plan's field ``name`` (an int, a float or a tuple of
        ints, comma-separated), at least ``minimum``; its help gives the plans' values."""
        plan, quick = self._plans
        kind = typing.get_type_hints(type(plan))[name]
        defaults = f"default {_show(getattr(plan, name))}"
        if self._quick:
            defaults += f"; quick {_show(getattr(quick, name))}"
        self.parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=_csv_ints if typing.get_origin(kind) is tuple else kind,
            metavar="N,..." if typing.get_origin(kind) is tuple else "S" if kind is float else "N",
            help=f"{help} ({defaults})",
        )
        self._options[name] = minimum

    def parse(self, argv: list[str] | None = None) -> argparse.Namespace:
        """The options; the run starts now (its clock, date and load average)."""
        from deploy.local.kafka import interrupt_on_termination

        args = self.parser.parse_args(argv)
        self.argv = sys.argv[1:] if argv is None else list(argv)
        self.quick = bool(getattr(args, "quick", False))
        if self._env:
            self.env = parse_env(args.env, self.parser)
        if args.out is not None:
            self.out = args.out
        self.plan = self._plans[self.quick]
        for name, minimum in self._options.items():
            value = getattr(args, name)
            if value is None:
                continue
            values = value if isinstance(value, tuple) else (value,)
            if not values or min(values) < minimum:
                self.error(f"--{name.replace('_', '-')} must be at least {minimum:g}")
            self.plan = dataclasses.replace(self.plan, **{name: value})
        interrupt_on_termination()  # a killed run stops its stacks too
        self.start()
        return args

    def start(self) -> None:
        self.date, self.load_at_start, self._began = now(), os.getloadavg(), time.monotonic()

    def rename(self, name: str) -> None:
        """A name known only from the options (``hops-<kind>``); the default --out too."""
        if self.out == RESULTS_DIR / f"{self.name}.json":
            self.out = RESULTS_DIR / f"{name}.json"
        self.name = name

    @property
    def command(self) -> str:
        return shlex.join(["python", "-m", f"bench.{self.module}", *self.argv])

    def record(self, notes: Sequence[str] = ()) -> dict[str, Any]:
        """What every JSON carries besides the benchmark's own results."""
        load_at_end = os.getloadavg()
        notes = list(notes)
        if self.load_at_start[0] > BUSY_LOAD:
            notes.append(
                f"1-min load average was {self.load_at_start[0]:.2f} at start (earlier work "
                f"still decaying, or another program){': ' + self.load_hint if self.load_hint else ''}"
            )
        return {
            "name": self.name,
            "date": self.date,
            "command": self.command,
            "machine": machine_info(),
            "benchmark": self.name,
            # When the results were written (``date``: when the run began).
            "timestamp": now(),
            "argv": self.argv,
            **({"quick": self.quick} if self._quick else {}),
            **({"plan": asdict(self.plan)} if self.plan is not None else {}),
            "env": self.env,
            "load_avg_at_start": self.load_at_start,
            "load_avg_at_end": load_at_end,
            "wall_s": time.monotonic() - self._began,
            "notes": notes,
        }

    def finish(
        self, results: Any, output: Output, *, notes: Sequence[str] = (), failed: bool = False
    ) -> int:
        """Print the header, ``output`` and the notes; write the JSON (the common record,
        then ``results``' fields, which may refine one of it as generation's ``plan`` does,
        then the output's lines and tables); the exit status (1: ``failed``)."""
        data = {**self.record(notes), **asdict(results)}
        data |= {"about": output.about, "tables": [asdict(t) for t in output.tables]}
        print(render_text(data, output))
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(data, indent=2) + "\n")
        note(f"wrote {self.out}")
        return 1 if failed else 0


def render_text(run: Mapping[str, Any], output: Output) -> str:
    """A run as it prints: the header, the lines about it, its tables, its notes."""
    parts = [*header(run), *(f"  {a}" for a in output.about)]
    for t in output.tables:
        parts += ["", t.text()]
    return "\n".join([*parts, *(f"note: {n}" for n in run.get("notes", []))])


# --- reading a JSON back ------------------------------------------------------------------


def load(kind: Any, data: Any) -> Any:
    """``data`` (read from a benchmark's JSON) as ``kind``: a dataclass, a list, tuple or
    dict of such, or a plain type. The inverse of ``asdict`` + JSON for the results the
    benchmarks write: dict keys come back as ints where the type says so, keys the
    dataclass does not have are ignored and fields the data lacks keep their defaults."""
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        hints = typing.get_type_hints(kind)
        return kind(
            **{
                f.name: load(hints[f.name], data[f.name])
                for f in dataclasses.fields(kind)
                if f.init and f.name in data
            }
        )
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        return load(next(a for a in args if a is not type(None)), data)
    if origin is list:
        return [load(args[0], v) for v in data]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(load(args[0], v) for v in data)
        return tuple(load(a, v) for a, v in zip(args, data, strict=True))
    if origin is dict:
        return {load(args[0], k): load(args[1], v) for k, v in data.items()}
    if kind in (int, float):
        return kind(data)
    return data
