"""Every ``NLP_MODELS`` a user may deploy or paste names engines of its kind with
parameters those engines accept: the compose files, the rendered overlays, and the
examples of docs/models.md (its Compose override and Kubernetes patch are also applied,
as a user would: the patch through kustomize onto the production overlay)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from deploy import tools
from services.classification.engine import FACTORIES as CLASSIFICATION
from services.classification.engine import ZeroShotParams
from services.classification.sentiment import VaderParams
from services.classification.supervised import HfSequenceClassificationParams
from services.generation.engine import VllmParams
from services.ner.engine import FACTORIES as NER
from services.ner.engine import HfTokenClassificationParams, SpacyNerParams
from services.summarization.engine import FACTORIES as SUMMARIZATION
from services.summarization.engine import AbstractiveParams, ExtractiveParams
from shared.contracts.settings import WorkerSettings
from tests.deploy.deployment import (
    COMPOSE,
    COMPOSE_GPU,
    OVERLAYS,
    ROOT,
    compose_environment,
    containers,
    kinds,
    load_settings,
    load_yaml,
    of_kind,
    rendered,
    settings_class,
)

DOC = ROOT / "docs" / "models.md"
# Each engine's params model, by kind.
PARAMS: dict[str, dict[str, type[BaseModel]]] = {
    "classification": {
        "minilm-zero-shot": ZeroShotParams,
        "vader-sentiment": VaderParams,
        "hf-sequence-classification": HfSequenceClassificationParams,
    },
    "ner": {"spacy": SpacyNerParams, "hf-token-classification": HfTokenClassificationParams},
    "summarization": {"extractive-minilm": ExtractiveParams, "abstractive-llm": AbstractiveParams},
    "generation": {"vllm": VllmParams},
}


def check_models(where: str, kind: str, models: str, default: str | None = None) -> None:
    """``models`` (an NLP_MODELS value) as the kind's worker reads it, and each model's
    params as its engine does."""
    env = {"NLP_MODELS": models} | ({"NLP_DEFAULT_MODEL": default} if default else {})
    try:
        settings = load_settings(settings_class(f"services.{kind}.worker"), env)
        assert isinstance(settings, WorkerSettings)
        for name, spec in settings.models.items():
            engines = PARAMS[kind]
            assert spec.engine in engines, (
                f"{where}: {name}: {spec.engine!r} is not a {kind} engine"
            )
            engines[spec.engine].model_validate(spec.params)
    except ValidationError as exc:
        pytest.fail(f"{where}: NLP_MODELS of {kind} does not validate: {exc}")


def test_every_engine_has_its_params_here() -> None:
    served = {"classification": CLASSIFICATION, "ner": NER, "summarization": SUMMARIZATION}
    for kind, factories in served.items():
        assert set(factories) == set(PARAMS[kind])
    assert set(PARAMS) == set(kinds())


@pytest.mark.parametrize(("kind", "engine"), [(k, e) for k in PARAMS for e in PARAMS[k]])
def test_an_unknown_parameter_is_refused(kind: str, engine: str) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PARAMS[kind][engine].model_validate({"batchsize": 8})


def _worker_kind(name: str) -> str | None:
    match = re.fullmatch(r"(?:nlp-)?(\w+)-worker(?:-gpu)?", name)
    return match.group(1) if match and match.group(1) in PARAMS else None


def test_the_compose_files_models_validate() -> None:
    checked = 0
    for path in (COMPOSE, COMPOSE_GPU):
        for name, service in load_yaml(path)["services"].items():
            env = compose_environment(service)
            kind = _worker_kind(name)
            if kind and "NLP_MODELS" in env:
                check_models(
                    f"{path.name}: {name}", kind, env["NLP_MODELS"], env.get("NLP_DEFAULT_MODEL")
                )
                checked += 1
    assert checked >= 3


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_overlays_models_validate(overlay: str) -> None:
    for name, deployment in of_kind(rendered(overlay), "Deployment").items():
        kind = _worker_kind(name)
        for container in containers(deployment) if kind else []:
            env = {e["name"]: str(e.get("value", "")) for e in container.get("env", [])}
            if "NLP_MODELS" in env:
                check_models(
                    f"{overlay}: {name}",
                    kind or "",
                    env["NLP_MODELS"],
                    env.get("NLP_DEFAULT_MODEL"),
                )


def _blocks(language: str) -> list[tuple[str, str]]:
    """The doc's code blocks in ``language`` (indented ones dedented), each with the
    heading it is under."""
    heading, found = "", []
    block: list[str] | None = None
    indent = fence = ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if block is not None:
            if line.strip() == "```" and line.startswith(indent):
                if fence == language:
                    found.append((heading, "\n".join(block)))
                block = None
            else:
                block.append(line[len(indent) :])
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.lstrip().startswith("```"):
            indent = line[: len(line) - len(line.lstrip())]
            fence, block = line.strip()[3:], []
    return found


def test_the_docs_examples_per_kind_validate() -> None:
    examples = {heading: text for heading, text in _blocks("json")}
    assert set(examples) == set(PARAMS)
    for kind, text in examples.items():
        models = json.loads(text)
        default = (
            None if any(m["engine"] != "vllm" for m in models.values()) else next(iter(models))
        )
        check_models(f"docs/models.md ({kind})", kind, json.dumps(models), default)


def test_the_docs_compose_override_names_real_services() -> None:
    (override,) = [yaml.safe_load(t) for _, t in _blocks("yaml") if "services:" in t]
    services = load_yaml(COMPOSE)["services"]
    for name, service in override["services"].items():
        assert name in services, f"docs/models.md: compose has no service {name!r}"
        kind = _worker_kind(name)
        assert kind is not None
        check_models(f"docs/models.md: {name}", kind, service["environment"]["NLP_MODELS"])
        assert any(v.endswith(":/models:ro") for v in service["volumes"])


def test_the_docs_kubernetes_patch_applies_to_the_production_overlay(tmp_path: Path) -> None:
    (patch,) = [t for _, t in _blocks("yaml") if "kind: Deployment" in t]
    (tmp_path / "classification-models.yaml").write_text(patch)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                # kustomize takes a base by a relative path only.
                "resources": [os.path.relpath(OVERLAYS["production"], tmp_path)],
                "patches": [{"path": "classification-models.yaml"}],
            }
        )
    )
    docs = [d for d in yaml.safe_load_all(tools.render(tmp_path)) if d]
    worker = of_kind(tuple(docs), "Deployment")["nlp-classification-worker"]
    (container,) = [c for c in containers(worker) if c["name"] == "worker"]
    env = {e["name"]: str(e.get("value", "")) for e in container["env"]}
    check_models("docs/models.md: the patch", "classification", env["NLP_MODELS"])
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    claims = [v for v in worker["spec"]["template"]["spec"]["volumes"] if v["name"] == "models"]
    assert claims[0]["persistentVolumeClaim"]["claimName"] == "nlp-models"
    # The patch adds to the container: its other settings and probes are still there.
    assert "startupProbe" in container and "OTEL_SERVICE_NAME" in env
