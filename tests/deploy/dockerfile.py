"""A small Dockerfile parser for the image lints: instructions and stages (with line
continuations, heredocs and ``ARG`` substitution) and what a target's stage chain
amounts to (environment, labels, extras, exposed ports, external images)."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HEREDOC = re.compile(r"<<(-?)(['\"]?)([A-Za-z_][\w-]*)\2")
VARIABLE = re.compile(r"\$\{(\w+)(?::?[-+][^}]*)?\}|\$(\w+)")


# --- parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int
    heredocs: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The instruction with its heredoc bodies (what it runs or writes)."""
        return "\n".join((f"{self.keyword} {self.args}", *self.heredocs))

    def flags(self) -> list[str]:
        """The leading ``--flag[=value]`` options."""
        flags = []
        for token in self.args.split():
            if not token.startswith("--"):
                break
            flags.append(token)
        return flags


@dataclass
class Stage:
    base: str
    name: str
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]
    instructions: list[Instruction]

    @property
    def by_name(self) -> dict[str, Stage]:
        return {s.name: s for s in self.stages if s.name}


def logical_lines(text: str) -> Iterator[tuple[int, str, list[str]]]:
    """(line number, instruction, heredoc bodies): continuations joined, comments dropped."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = i
        raw = lines[i]
        i += 1
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        parts = [raw]
        while parts[-1].rstrip().endswith("\\") and i < len(lines):
            parts[-1] = parts[-1].rstrip()[:-1]
            nxt = lines[i]
            i += 1
            if nxt.lstrip().startswith("#") or not nxt.strip():
                parts.append("\\")  # a comment or blank line inside: the instruction goes on
                continue
            parts.append(nxt)
        instruction = " ".join(p.strip() for p in parts if p.strip())
        bodies = []
        keyword = instruction.split(None, 1)[0].upper()
        if keyword in {"RUN", "COPY", "ADD"}:
            for strip_tabs, _, word in HEREDOC.findall(instruction):
                body = []
                while i < len(lines):
                    line = lines[i]
                    i += 1
                    if (line.lstrip("\t") if strip_tabs else line) == word:
                        break
                    body.append(line)
                else:
                    raise AssertionError(f"Dockerfile:{start + 1}: heredoc {word} is not closed")
                bodies.append("\n".join(body))
        yield start + 1, instruction, bodies


def parse(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    instructions: list[Instruction] = []
    for line, instruction, bodies in logical_lines(text):
        keyword, _, args = instruction.partition(" ")
        parsed = Instruction(keyword.upper(), args.strip(), line, tuple(bodies))
        instructions.append(parsed)
        if parsed.keyword == "FROM":
            words = [w for w in parsed.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            assert len(words) in {1, 3}, f"Dockerfile:{line}: FROM {parsed.args!r}"
            stages.append(Stage(words[0], name, line))
        elif not stages:
            assert parsed.keyword == "ARG", f"Dockerfile:{line}: {keyword} before the first FROM"
            name, _, default = parsed.args.partition("=")
            global_args[name.strip()] = unquote(default.strip())
        else:
            stages[-1].instructions.append(parsed)
    return Dockerfile(global_args, stages, instructions)


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def substitute(value: str, variables: Mapping[str, str]) -> str:
    """``$NAME`` and ``${NAME}`` replaced where known (unknown ones are left as they are)."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))

    return VARIABLE.sub(one, value)


def pairs(args: str) -> dict[str, str]:
    """KEY=VALUE pairs of ENV and LABEL (also the legacy ``ENV KEY value`` form)."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


@cache
def dockerfile() -> Dockerfile:
    return parse(DOCKERFILE.read_text(encoding="utf-8"))


# --- what a stage amounts to -------------------------------------------------------------------


def stage_args(df: Dockerfile, stage: Stage) -> dict[str, str]:
    """Build arguments as a stage sees them (no --build-arg): its ARG defaults over global."""
    variables: dict[str, str] = {}
    for instruction in stage.of("ARG"):
        name, sep, default = instruction.args.partition("=")
        name = name.strip()
        if sep:
            variables[name] = unquote(default.strip())
        elif name in df.global_args:
            variables[name] = df.global_args[name]
    return variables


def chain(df: Dockerfile, target: str) -> list[Stage]:
    """The stage and the stages it is built FROM, the first one last."""
    stages = df.by_name
    assert target in stages, f"Dockerfile has no stage {target!r}"
    result = [stages[target]]
    while result[-1].base in stages and result[-1].base != result[-1].name:
        result.append(stages[result[-1].base])
    return result


def sources(stage: Stage) -> set[str]:
    """What a stage copies or mounts ``from``: stage names or image references."""
    names = set()
    for instruction in stage.instructions:
        for flag in instruction.flags():
            if flag.startswith("--from="):
                names.add(flag.removeprefix("--from="))
            elif flag.startswith("--mount="):
                for option in flag.removeprefix("--mount=").split(","):
                    key, _, value = option.partition("=")
                    if key == "from":
                        names.add(value)
    return names


def closure(df: Dockerfile, target: str) -> list[Stage]:
    """Every stage that contributes to a target (its chain and what they copy from)."""
    stages = df.by_name
    seen: dict[str, Stage] = {}
    pending = [target]
    while pending:
        name = pending.pop()
        if name in seen or name not in stages:
            continue
        for stage in chain(df, name):
            seen.setdefault(stage.name or f"@{stage.line}", stage)
            pending.extend(sources(stage))
    return list(seen.values())


def env(df: Dockerfile, target: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for stage in reversed(chain(df, target)):
        variables = stage_args(df, stage) | values
        for instruction in stage.of("ENV"):
            for key, value in pairs(instruction.args).items():
                values[key] = substitute(value, variables | values)
    return values


def labels(df: Dockerfile, target: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for stage in reversed(chain(df, target)):
        for instruction in stage.of("LABEL"):
            values |= {
                k: substitute(v, stage_args(df, stage)) for k, v in pairs(instruction.args).items()
            }
    return values


def last(df: Dockerfile, target: str, keyword: str) -> Instruction | None:
    for stage in chain(df, target):
        found = stage.of(keyword)
        if found:
            return found[-1]
    return None


def exec_form(instruction: Instruction | None) -> list[str] | None:
    if instruction is None:
        return None
    if instruction.args.startswith("["):
        value: object = json.loads(instruction.args)
        assert isinstance(value, list), f"Dockerfile:{instruction.line}: not a JSON array"
        return [str(v) for v in value]
    return ["/bin/sh", "-c", instruction.args]


def exposed(df: Dockerfile, target: str) -> set[str]:
    ports = set()
    for stage in chain(df, target):
        for instruction in stage.of("EXPOSE"):
            words = substitute(instruction.args, stage_args(df, stage)).split()
            ports |= {w.split("/")[0] for w in words}
    return ports


def extras(df: Dockerfile, target: str) -> set[str]:
    """The extras every RUN that builds the target installs (``--extra X`` or
    ``nlp-platform[X,...]``), build args resolved."""
    found = set()
    for stage in closure(df, target):
        for instruction in stage.of("RUN"):
            text = substitute(instruction.text, stage_args(df, stage))
            found |= {unquote(v) for v in re.findall(r"--extra[=\s]+(\S+)", text)}
            for listed in re.findall(r"nlp-platform\[([^\]]*)\]", text):
                found |= {e.strip() for e in listed.split(",")}
    return found


def external_images(df: Dockerfile) -> list[tuple[int, str]]:
    """(line, reference) of every image pulled: FROM bases and --from sources, ARGs resolved."""
    names = {s.name for s in df.stages if s.name}
    images = []
    for stage in df.stages:
        base = substitute(stage.base, df.global_args)
        if base not in names and base != "scratch":
            images.append((stage.line, base))
        for source in sources(stage):
            ref = substitute(source, df.global_args | stage_args(df, stage))
            if ref not in names:
                images.append((stage.line, ref))
    return images


def is_pinned(reference: str) -> bool:
    if "$" in reference:
        return False  # an ARG without a default: whatever the caller passes
    if re.search(r"@sha256:[0-9a-f]{64}$", reference):
        return True
    name = reference.rsplit("/", 1)[-1]
    tag = name.partition(":")[2]
    return bool(tag) and tag != "latest"
