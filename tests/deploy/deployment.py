"""Reading the deployment artefacts for the tests: the compose file with its .env, the
rendered Kubernetes overlays, the Dockerfile's targets, and what each service's typed
settings accept (helpers only; the tests are in test_deploy.py and
test_compose_observability.py)."""

from __future__ import annotations

import functools
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from deploy import tools
from services.gateway.settings import Settings as GatewaySettings
from services.http_gateway.settings import Settings as HttpSettings
from shared.contracts.names import ALL_KINDS
from shared.contracts.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = {
    "base": K8S / "base",
    "dev": K8S / "overlays" / "dev",
    "production": K8S / "overlays" / "production",
    "gpu": K8S / "overlays" / "gpu",
    "replicated": K8S / "overlays" / "replicated",
}
IMAGE_PREFIX = "nlp-platform/"

Doc = dict[str, Any]


def kinds() -> list[str]:
    """Kinds with a worker in services/ (what must be deployable)."""
    return [k for k in ALL_KINDS if (ROOT / "services" / k / "worker.py").exists()]


def settings_class(module: str) -> type[BaseSettings]:
    """The Settings class of the service a ``python -m`` module starts."""
    if module == "services.gateway":
        return GatewaySettings
    if module == "services.http_gateway":
        return HttpSettings
    match = re.fullmatch(r"services\.(\w+)\.(intake|worker)", module)
    if match is None:
        return ServiceSettings  # shared.tools.topics and other tools
    settings_module = __import__(f"services.{match.group(1)}.settings", fromlist=["Settings"])
    cls: type[BaseSettings] = settings_module.Settings
    return cls


def _nested_model(annotation: object) -> type[BaseModel] | None:
    """The model of a field typed ``Model`` or ``Model | None``; None for anything else."""
    if isinstance(annotation, type):
        return annotation if issubclass(annotation, BaseModel) else None
    members = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) and len(members) == 1:
        return _nested_model(members[0])
    return None


def env_names(cls: type[BaseSettings]) -> set[str]:
    """Every environment variable ``cls`` reads. A nested model is read field by field,
    ``PREFIX_FIELD__SUB`` (e.g. ``NLP_QUEUE_HIGH_WATER__BATCH``), at any depth; its plain
    ``PREFIX_FIELD`` (a JSON object) is left out: the deployment files set one value a
    line, so a scalar left over from before a setting became nested fails here."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    delimiter = str(cls.model_config.get("env_nested_delimiter") or "")

    def walk(path: str, model: type[BaseModel]) -> set[str]:
        names = set()
        for name, field in model.model_fields.items():
            nested = _nested_model(field.annotation) if delimiter else None
            if nested is None:
                names.add(f"{path}{name}".upper())
            else:
                names |= walk(f"{path}{name}{delimiter}", nested)
        return names

    return walk(prefix, cls)


def load_settings(cls: type[BaseSettings], env: Mapping[str, str]) -> BaseSettings:
    """``cls`` as a process with exactly the ``NLP_*`` variables of ``env`` builds it: the
    values must parse and pass the settings' validation (e.g. low < high water per lane)."""
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    settings_env = {k: v for k, v in env.items() if k.upper().startswith(prefix)}
    with mock.patch.dict(os.environ, settings_env, clear=True):
        return cls()


def module_of(command: list[str] | None) -> str | None:
    """The module of a ``python -m MODULE`` command (also inside ``sh -c``)."""
    text = " ".join(command or [])
    match = re.search(r"python\S* -m ([\w.]+)", text)
    return match.group(1) if match else None


def module_exists(module: str) -> bool:
    path = ROOT / Path(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__main__.py").exists()


# --- Dockerfile ----------------------------------------------------------------------------


def dockerfile_targets() -> set[str]:
    return set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+([\w.-]+)\s*$", DOCKERFILE.read_text()))


# --- compose -------------------------------------------------------------------------------


def load_yaml(path: Path) -> Doc:
    data: object = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: top level is not a mapping"
    return {str(k): v for k, v in data.items()}


def compose() -> Doc:
    return load_yaml(COMPOSE)


def dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (comments and blank lines skipped)."""
    values = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


def compose_environment(service: Doc) -> dict[str, str]:
    """A compose service's environment: its env_file(s), then ``environment`` over them."""
    env: dict[str, str] = {}
    files = service.get("env_file") or []
    for entry in [files] if isinstance(files, str | dict) else files:
        path = entry["path"] if isinstance(entry, dict) else entry
        env |= dotenv(COMPOSE.parent / str(path))
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        env |= {k: v for k, _, v in (str(e).partition("=") for e in raw)}
    else:
        env |= {str(k): "" if v is None else str(v) for k, v in raw.items()}
    return env


def compose_project_services() -> dict[str, Doc]:
    """Services built from this repository's Dockerfile."""
    return {
        name: spec
        for name, spec in compose()["services"].items()
        if str(spec.get("image", "")).startswith(IMAGE_PREFIX)
    }


# --- Kubernetes ----------------------------------------------------------------------------


@functools.cache
def rendered(overlay: str) -> tuple[Doc, ...]:
    """The objects ``kustomize build`` makes of an overlay."""
    docs = yaml.safe_load_all(tools.render(OVERLAYS[overlay]))
    return tuple(d for d in docs if d)


def of_kind(docs: tuple[Doc, ...], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(deployment: Doc) -> list[Doc]:
    spec = deployment["spec"]["template"]["spec"]
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))
