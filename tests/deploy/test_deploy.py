"""The deployment artefacts agree with the code: the compose file and every rendered
Kubernetes overlay are schema-valid, every service folder is deployed, every NLP_*
variable they set is a setting of the process that reads it (and the values validate),
every probe asks a port that process serves, and the autoscalers follow every lane's
topic and queue by the names the code uses. Offline: kustomize and the KEDA and Compose
schemas come from the Go module proxy once (``python -m deploy.tools fetch``, part of
``make setup``)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from deploy import tools
from shared.contracts.names import ALL_KINDS, ALL_LANES, Names
from shared.contracts.settings import ServiceSettings, WorkerSettings
from shared.transport import kafka as kafka_transport
from shared.transport.kafka import TASK_TOPIC_PARTITIONS
from tests.deploy.deployment import (
    COMPOSE,
    COMPOSE_GPU,
    OVERLAYS,
    Doc,
    compose,
    compose_environment,
    compose_project_services,
    containers,
    dockerfile_targets,
    dotenv,
    env_names,
    kinds,
    load_settings,
    load_yaml,
    module_exists,
    module_of,
    of_kind,
    rendered,
    settings_class,
)

K8S_VERSION = "1.31.0"
METRICS_PORT = ServiceSettings.model_fields["metrics_port"].default
HEALTH_PATHS = {"/healthz", "/readyz", "/metrics"}


# The front doors: not per kind, not autoscaled on Kafka lag.
FRONT_DOORS = {"gateway": "services.gateway", "http-gateway": "services.http_gateway"}


def roles() -> list[str]:
    """Every long-running process the platform has: the two front doors, an intake and a
    worker per kind with a worker folder."""
    return [*FRONT_DOORS, *(f"{k}-{r}" for k in kinds() for r in ("intake", "worker"))]


def role_module(role: str) -> str:
    return FRONT_DOORS.get(role) or "services.{}.{}".format(*role.split("-"))


def settings_of(where: str, module: str, env: dict[str, str]) -> BaseSettings:
    """The settings the process started by ``module`` builds from ``env``; a failure names
    the variables at fault (a scalar left for a nested setting, low >= high water, ...)."""
    try:
        return load_settings(settings_class(module), env)
    except ValidationError as exc:
        pytest.fail(f"{where}: its settings do not validate: {exc}")


# --- compose -------------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads(tools.compose_schema().read_text())
    jsonschema.Draft7Validator(schema).validate(compose())


def test_compose_runs_every_process() -> None:
    services = compose_project_services()
    for role in roles():
        assert role in services, f"{role} has no compose service"
        assert module_of(services[role].get("command")) in (role_module(role), None)


@pytest.mark.parametrize("name", sorted(compose_project_services()))
def test_compose_service_is_consistent_with_its_code(name: str) -> None:
    service = compose_project_services()[name]
    module = module_of(service.get("command")) or "services.gateway"
    assert module_exists(module), f"{name}: no module {module}"
    build = service.get("build") or {}
    assert build.get("target") in dockerfile_targets(), f"{name}: unknown build target"
    assert service["image"].split(":")[0] == f"nlp-platform/{build['target']}"
    env = compose_environment(service)
    accepted = env_names(settings_class(module))
    unknown = {k for k in env if k.startswith("NLP_") and k not in accepted} - {
        "NLP_GATEWAY_PORT",  # host port, used by docker-compose.yml itself
        "NLP_HTTP_PORT",  # the same name: the host port there, the process's in the container
        "NLP_MODELS_DIR",  # host path, used by docker-compose.yml itself
    }
    assert not unknown, f"{name}: not settings of {module}: {sorted(unknown)}"
    settings_of(name, module, env)
    for required in ("NLP_KAFKA_BOOTSTRAP", "NLP_REDIS_URL", "OTEL_SERVICE_NAME"):
        assert env.get(required), f"{name}: {required} is not set"
    # Health checks ask what the process serves.
    check = " ".join(map(str, (service.get("healthcheck") or {}).get("test", [])))
    metrics_port = env.get("NLP_METRICS_PORT", str(METRICS_PORT))
    if "/readyz" in check:
        assert f":{metrics_port}/readyz" in check, f"{name}: readyz on another port"
    if "HealthStub" in check:
        assert f":{env.get('NLP_PORT', '50051')}'" in check, f"{name}: gRPC check on another port"


def test_compose_can_run_against_an_external_kafka_and_redis() -> None:
    """The stack's own Kafka and Redis run in a profile that .env turns on; nothing needs
    them otherwise (an external replicated pair, set in .env, takes their place), and
    the topics it creates get .env's replication factor."""
    spec = compose()
    env = dotenv(COMPOSE.parent / ".env")
    bundled = {n for n, s in spec["services"].items() if "bundled" in s.get("profiles", [])}
    assert bundled == {"kafka", "redis"}
    assert env["COMPOSE_PROFILES"].split(",") == ["bundled"]
    for name, service in spec["services"].items():
        needs = service.get("depends_on") or {}
        for dependency in set(needs) & bundled:
            assert needs[dependency].get("required") is False, f"{name} needs {dependency}"
    topics = spec["services"]["topics"]["command"]
    assert topics[-2:] == ["--replication", "${TOPIC_REPLICATION:-1}"]
    assert int(env["TOPIC_REPLICATION"]) == 1  # the bundled Kafka has one broker
    for key in ("NLP_REDIS_SENTINELS", "NLP_REDIS_MASTER_NAME", "NLP_REDIS_WAIT_REPLICAS"):
        assert key in env, key


def _merged(base: Doc, override: Doc) -> Doc:
    """Compose's merge of an override file: mappings merge key by key, the rest replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def test_compose_gpu_override_puts_a_worker_on_a_gpu() -> None:
    override = load_yaml(COMPOSE_GPU)
    schema = json.loads(tools.compose_schema().read_text())
    merged = _merged(compose(), override)
    jsonschema.Draft7Validator(schema).validate(merged)
    for name in override["services"]:
        service = merged["services"][name]
        assert name in compose_project_services(), f"{name}: overrides no platform service"
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d.get("capabilities", []) for d in devices), name
        assert service["build"]["target"] == "gpu" and service["image"].startswith(
            "nlp-platform/gpu:"
        )
        env = compose_environment(service)
        module = module_of(service["command"]) or ""
        accepted = env_names(settings_class(module))
        assert {k for k in env if k.startswith("NLP_")} <= accepted | {
            "NLP_GATEWAY_PORT",
            "NLP_MODELS_DIR",
        }
        settings_of(name, module, env)


# --- Kubernetes ----------------------------------------------------------------------------


def _crd_schemas() -> dict[tuple[str, str], Doc]:
    """(apiVersion, kind) → openAPIV3Schema of KEDA's CRDs."""
    schemas = {}
    for path in tools.keda_crds().glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_object_is_schema_valid(overlay: str) -> None:
    crds = _crd_schemas()
    for doc in rendered(overlay):
        key = (doc["apiVersion"], doc["kind"])
        if key in crds:
            jsonschema.Draft7Validator(crds[key]).validate(doc)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _config(docs: tuple[Doc, ...]) -> dict[str, dict[str, str]]:
    return {name: dict(cm.get("data") or {}) for name, cm in of_kind(docs, "ConfigMap").items()}


def _env(container: Doc, configs: dict[str, dict[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= configs[source["configMapRef"]["name"]]
    for item in container.get("env", []):
        env[item["name"]] = str(item.get("value", ""))
    return env


def _ports(container: Doc) -> dict[str | int, int]:
    ports: dict[str | int, int] = {}
    for p in container.get("ports", []):
        ports[p["containerPort"]] = p["containerPort"]
        if "name" in p:
            ports[p["name"]] = p["containerPort"]
    return ports


def _served_ports(module: str, env: dict[str, str]) -> set[int]:
    """Ports the process started by ``module`` listens on, given its environment."""
    served = {int(env.get("NLP_METRICS_PORT", METRICS_PORT))}
    if module == "services.gateway":
        served.add(int(env.get("NLP_PORT", 50051)))
    if module == "services.http_gateway":
        served.add(int(env.get("NLP_HTTP_PORT", 8000)))
    return served


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_process_is_deployed_with_what_it_needs(overlay: str) -> None:
    docs = rendered(overlay)
    deployments = of_kind(docs, "Deployment")
    accounts = set(of_kind(docs, "ServiceAccount"))
    budgets = of_kind(docs, "PodDisruptionBudget")
    configs = _config(docs)
    modules = {}
    for name, deployment in deployments.items():
        main = deployment["spec"]["template"]["spec"]["containers"][0]
        modules[name] = module_of(main.get("command") or main.get("args")) or "services.gateway"
    for role in roles():
        assert role_module(role) in modules.values(), f"{overlay}: no Deployment runs {role}"
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod.get("serviceAccountName") in accounts, f"{name}: no ServiceAccount of its own"
        labels = deployment["spec"]["selector"]["matchLabels"]
        assert any(
            b["spec"]["selector"]["matchLabels"].items() <= labels.items() for b in budgets.values()
        ), f"{name}: no PodDisruptionBudget"
        for container in containers(deployment):
            where = f"{overlay}/{name}/{container['name']}"
            resources = container.get("resources", {})
            assert resources.get("requests") and resources.get("limits"), f"{where}: resources"
            security = container.get("securityContext", {})
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            image = str(container["image"]).rsplit("/", maxsplit=1)[-1]
            target, tag = image.partition("@")[0].partition(":")[::2]
            assert target in dockerfile_targets(), f"{where}: {image} is no Dockerfile target"
            # No tag is :latest, which no kustomization `images:` entry reached.
            assert tag or "@" in image, f"{where}: {container['image']} untagged"
            module = module_of(container.get("command") or container.get("args")) or modules[name]
            assert module_exists(module), f"{where}: no module {module}"
            env = _env(container, configs)
            accepted = env_names(settings_class(module))
            for var in container.get("env", []):
                if var["name"].startswith("NLP_"):
                    assert var["name"] in accepted, f"{where}: {var['name']} is not a setting"
            settings_of(where, module, env)
            # What no default can know in a cluster.
            for required in ("NLP_KAFKA_BOOTSTRAP", "NLP_REDIS_URL", "OTEL_SERVICE_NAME"):
                assert env.get(required), f"{where}: {required} is not set"
            _check_probes(where, container, _served_ports(module, env))
        assert pod["securityContext"].get("runAsNonRoot") is True, name


def _check_probes(where: str, container: Doc, served: set[int]) -> None:
    ports = _ports(container)
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if probe is None:
            continue
        action = probe.get("grpc") or probe.get("httpGet") or probe.get("tcpSocket")
        assert action is not None, f"{where}: {kind} must ask a port (no exec probes)"
        port = action["port"]
        assert port in ports, f"{where}: {kind} on undeclared port {port}"
        assert ports[port] in served, f"{where}: {kind} on port {ports[port]}, not served"
        if "httpGet" in probe:
            # The metrics server's paths; on another port, the HTTP front door's /health.
            paths = HEALTH_PATHS if ports[port] == METRICS_PORT else {"/health"}
            assert probe["httpGet"]["path"] in paths, f"{where}: {kind} path"
    if container.get("ports") is not None and "readinessProbe" not in container:
        pytest.fail(f"{where}: no readiness probe")


def test_every_configmap_setting_is_read_by_someone() -> None:
    accepted = set().union(*(env_names(settings_class(role_module(r))) for r in roles()))
    for overlay in OVERLAYS:
        for name, data in _config(rendered(overlay)).items():
            unknown = {k for k in data if k.startswith("NLP_") and k not in accepted}
            assert not unknown, f"{overlay}/{name}: not settings of any process: {unknown}"


def _names(docs: tuple[Doc, ...]) -> Names:
    namespaces = {data.get("NLP_NAMESPACE", "") for data in _config(docs).values()}
    assert len(namespaces) == 1
    return Names(namespaces.pop())


AUTOSCALED = ["production", "gpu", "replicated"]
# What each trigger type reads, and its threshold per replica. A queue trigger is a
# "redis" one, asking the Sentinels ("redis-sentinel") where they run.
TRIGGER_NAME = {"kafka": "topic", "redis": "listName"}
TRIGGER_THRESHOLD = {"kafka": "lagThreshold", "redis": "listLength"}
QUEUE_TRIGGERS = {"redis", "redis-sentinel"}


def _autoscaled(overlay: str) -> dict[str, tuple[str, str, Doc]]:
    """Deployment name → (kind, role, its ScaledObject's spec) of every intake and worker;
    fails for one that no ScaledObject scales, or a ScaledObject that scales nothing."""
    docs = rendered(overlay)
    scaled = {
        s["spec"]["scaleTargetRef"]["name"]: s["spec"]
        for s in of_kind(docs, "ScaledObject").values()
    }
    out = {}
    for name, deployment in of_kind(docs, "Deployment").items():
        main = deployment["spec"]["template"]["spec"]["containers"][0]
        module = module_of(main.get("command") or main.get("args")) or "services.gateway"
        if module in FRONT_DOORS.values():
            continue
        kind, role = module.split(".")[1:]
        assert name in scaled, f"{overlay}: {name} is not autoscaled"
        out[name] = (kind, role, scaled[name])
    assert set(scaled) == set(out), f"{overlay}: ScaledObjects of no intake or worker"
    return out


def _lane_triggers(names: Names, where: str, kind: str, spec: Doc) -> dict[str, dict[str, Doc]]:
    """type → lane → metadata of a ScaledObject's triggers. Each trigger must name one
    lane's topic, queue and group of ``kind`` as ``names`` spells them, once."""
    known = {
        "kafka": {topic: lane for lane, topic in names.task_topics(kind).items()},
        "redis": {queue: lane for lane, queue in names.celery_queues(kind).items()},
    }
    by_type: dict[str, dict[str, Doc]] = {}
    for trigger in spec["triggers"]:
        kind_of_trigger, metadata = trigger["type"], trigger["metadata"]
        if kind_of_trigger in QUEUE_TRIGGERS:
            kind_of_trigger = "redis"
        assert kind_of_trigger in known, f"{where}: unexpected trigger type {kind_of_trigger}"
        named = metadata[TRIGGER_NAME[kind_of_trigger]]
        lane = known[kind_of_trigger].get(named)
        assert lane is not None, (
            f"{where}: {kind_of_trigger} trigger on {named!r}, not one of {kind}'s "
            f"{sorted(known[kind_of_trigger])}"
        )
        if kind_of_trigger == "kafka":
            assert metadata["consumerGroup"] == names.consumer_group(kind), where
        lanes = by_type.setdefault(kind_of_trigger, {})
        assert lane not in lanes, f"{where}: two {kind_of_trigger} triggers for lane {lane}"
        lanes[lane] = metadata
    return by_type


@pytest.mark.parametrize("overlay", AUTOSCALED)
def test_autoscaling_follows_every_lane(overlay: str) -> None:
    """Intakes scale on the Kafka lag of every lane's topic; workers on that and on every
    lane's Celery queue: a lane without its trigger would back up unseen."""
    names = _names(rendered(overlay))
    for name, (kind, role, spec) in _autoscaled(overlay).items():
        where = f"{overlay}/{name}"
        triggers = _lane_triggers(names, where, kind, spec)
        expected = {"kafka"} if role == "intake" else {"kafka", "redis"}
        assert set(triggers) == expected, f"{where}: triggers {sorted(triggers)}"
        for trigger_type, lanes in triggers.items():
            missing = [lane for lane in ALL_LANES if lane not in lanes]
            assert not missing, f"{where}: no {trigger_type} trigger for lanes {missing}"
        if role == "intake":
            # More consumers than a topic's partitions idle.
            assert spec["maxReplicaCount"] <= TASK_TOPIC_PARTITIONS, where
        else:
            # The workers are no consumers: the partition count must not cap them.
            for metadata in triggers["kafka"].values():
                assert metadata.get("allowIdleConsumers") == "true", where
        assert spec.get("minReplicaCount", 0) >= 1, f"{where}: scaled to zero loses warm models"


@pytest.mark.parametrize("overlay", AUTOSCALED)
def test_higher_lanes_scale_out_sooner(overlay: str) -> None:
    """Per replica, a lane's threshold is at most that of every lane below it, and the
    interactive one is below the batch one: the same backlog asks for at least as many
    replicas in a higher lane."""
    names = _names(rendered(overlay))
    for name, (kind, _, spec) in _autoscaled(overlay).items():
        for trigger_type, lanes in _lane_triggers(names, name, kind, spec).items():
            key = TRIGGER_THRESHOLD[trigger_type]
            values = [int(lanes[lane][key]) for lane in ALL_LANES if lane in lanes]
            assert values == sorted(values), f"{overlay}/{name}: {key} by lane {values}"
            assert values[0] < values[-1], f"{overlay}/{name}: {key} the same for every lane"


@pytest.mark.parametrize("overlay", AUTOSCALED)
def test_queue_triggers_fit_under_the_intakes_high_water(overlay: str) -> None:
    """A lane's Celery queue never grows past its intake's high water, so a listLength
    above it could never ask for a second replica."""
    docs = rendered(overlay)
    names, configs = _names(docs), _config(docs)
    high_water: dict[str, WorkerSettings] = {}
    for name, deployment in of_kind(docs, "Deployment").items():
        main = deployment["spec"]["template"]["spec"]["containers"][0]
        module = module_of(main.get("command") or main.get("args")) or ""
        if module.endswith(".intake"):
            settings = settings_of(name, module, _env(main, configs))
            assert isinstance(settings, WorkerSettings)
            high_water[module.split(".")[1]] = settings
    for name, (kind, role, spec) in _autoscaled(overlay).items():
        if role != "worker":
            continue
        for lane, metadata in _lane_triggers(names, name, kind, spec)["redis"].items():
            mark = high_water[kind].queue_high_water.of(lane)
            assert int(metadata["listLength"]) <= mark, (
                f"{overlay}/{name}: listLength {metadata['listLength']} of lane {lane} is "
                f"above the {kind} intake's high water {mark}"
            )


def test_topic_creation_creates_every_lanes_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose's one-shot `topics` service and the Kubernetes init containers run
    shared.tools.topics; what it creates includes every lane's topic of every kind."""
    runs = [module_of(s.get("command")) for s in compose_project_services().values()]
    for overlay in OVERLAYS:
        for deployment in of_kind(rendered(overlay), "Deployment").values():
            runs += [module_of(c.get("command")) for c in containers(deployment)]
    assert "shared.tools.topics" in runs
    created: list[str] = []
    monkeypatch.setattr(
        kafka_transport, "create_topics", lambda _s, wanted, *_a, **_k: created.extend(wanted)
    )
    settings = ServiceSettings()
    kafka_transport.ensure_topics(settings)
    names = settings.names
    missing = [
        topic
        for kind in ALL_KINDS
        for topic in (names.task_topic(kind, lane) for lane in ALL_LANES)
        if topic not in created
    ]
    assert not missing, f"shared.tools.topics does not create {missing}"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_clusters_run_the_gateway_with_api_keys(overlay: str) -> None:
    docs = rendered(overlay)
    configs = _config(docs)
    for deployment in of_kind(docs, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        main = pod["containers"][0]
        if (module_of(main.get("command") or main.get("args")) or "services.gateway") != (
            "services.gateway"
        ):
            continue
        env = _env(main, configs)
        assert env.get("NLP_AUTH_MODE") == "keys", f"{overlay}: a gateway without API keys"
        keys_dir = str(Path(env["NLP_AUTH_KEYS_FILE"]).parent)
        mounts = {m["mountPath"]: m["name"] for m in main.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        assert keys_dir in mounts, f"{overlay}: the keys file is not mounted"
        assert "secret" in volumes[mounts[keys_dir]], "the keys come from a Secret"


def test_the_replicated_overlay_finds_redis_through_the_sentinels() -> None:
    """Every process and every queue trigger asks the Sentinels for the primary (the
    same ConfigMap keys), and what a failover must not lose waits for a replica."""
    docs = rendered("replicated")
    config = _config(docs)["nlp-config"]
    settings = load_settings(ServiceSettings, config)
    assert isinstance(settings, ServiceSettings)
    assert settings.sentinel_addresses() and settings.redis_wait_replicas >= 1
    assert "REDIS_ADDRESS" not in config
    assert int(config["TOPIC_REPLICATION"]) >= 3
    for name, scaled in of_kind(docs, "ScaledObject").items():
        for trigger in scaled["spec"]["triggers"]:
            metadata = trigger["metadata"]
            if trigger["type"] == "kafka":
                assert metadata["bootstrapServersFromEnv"] == "NLP_KAFKA_BOOTSTRAP", name
                continue
            assert trigger["type"] == "redis-sentinel", f"{name}: {trigger['name']}"
            assert metadata["addressesFromEnv"] == "NLP_REDIS_SENTINELS", name
            assert metadata["sentinelMasterFromEnv"] == "NLP_REDIS_MASTER_NAME", name
            assert "addressFromEnv" not in metadata, name
    # The other overlays keep one Redis: no trigger there asks Sentinels.
    for overlay in ("production", "gpu"):
        types = {
            t["type"]
            for s in of_kind(rendered(overlay), "ScaledObject").values()
            for t in s["spec"]["triggers"]
        }
        assert types == {"kafka", "redis"}, overlay
