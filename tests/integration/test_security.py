"""Gateway security on a real stack of its own: TLS only (with optional client
certificates), API keys mapped to tenants, isolation of their tasks and batches, rate and
concurrency quotas in Redis, keys reloaded without a restart."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

from deploy.local.certs import CertificateAuthority, Pair
from deploy.local.stack import LocalStack
from nlp.v1 import (
    classification_pb2_grpc,
    common_pb2,
    deadletters_pb2,
    deadletters_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    ner_pb2,
    summarization_pb2,
    tasks_pb2,
    tasks_pb2_grpc,
)
from services.gateway.auth import UNAUTHENTICATED_DETAILS, digest
from shared.client.connection import ClientSettings, connect
from tests.factories import classify_request, submit_classification
from tests.integration.support import wait_terminal

KEYS = {
    "team-a": "nlp_test_key_team_a_0123456789abcdef",
    "team-b": "nlp_test_key_team_b_0123456789abcdef",
    "slow": "nlp_test_key_slow_0123456789abcdef",
    "narrow": "nlp_test_key_narrow_0123456789abcdef",
}
REVOKED = "nlp_test_key_revoked_0123456789abcdef"
ADMIN = "nlp_test_key_ops_0123456789abcdef"
TENANTS: dict[str, dict[str, Any]] = {
    "team-a": {"rate_per_s": 500, "burst": 1000},
    "team-b": {"rate_per_s": 500, "burst": 1000},
    # A low rate: the fourth call in quick succession is over it.
    "slow": {"rate_per_s": 0.5, "burst": 3},
    # Three tasks in flight at most, short documents.
    "narrow": {
        "rate_per_s": 500,
        "burst": 1000,
        "max_in_flight": 3,
        "max_text_bytes": 100,
        "max_batch_items": 5,
        # Bulk work only: no interactive lane (docs/lanes.md).
        "highest_lane": "standard",
    },
}


def keys_file(path: Path, revoked: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    keys = [
        {"id": f"{t}-key", "tenant": t, "sha256": digest(k), "revoked": t in revoked}
        for t, k in KEYS.items()
    ]
    keys.append({"id": "old", "tenant": "team-a", "sha256": digest(REVOKED), "revoked": True})
    keys.append({"id": "ops", "tenant": "team-a", "sha256": digest(ADMIN), "admin": True})
    path.write_text(json.dumps({"tenants": TENANTS, "keys": keys}))


class Pki:
    def __init__(self, directory: Path) -> None:
        ca = CertificateAuthority(directory)
        self.ca = ca.pair.cert
        self.server = ca.issue("gateway", "localhost", server=True)
        self.client_a: Pair = ca.issue("client-a", "team-a", server=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def keys_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "keys.json"
    keys_file(path)
    return path


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, keys_path: Path
) -> Iterator[LocalStack]:
    """Kafka, Redis, the gateway and classification only: NER tasks have no worker here,
    so they stay in flight (what the concurrency quota counts)."""
    env = {
        "NLP_AUTH_MODE": "keys",
        "NLP_AUTH_KEYS_FILE": str(keys_path),
        "NLP_AUTH_RELOAD_S": "0.2",
        "NLP_TLS_CERT_FILE": str(pki.server.cert),
        "NLP_TLS_KEY_FILE": str(pki.server.key),
    }
    data_dir = tmp_path_factory.mktemp("secured")
    with LocalStack(data_dir=data_dir, kinds=["classification"], env=env) as stack:
        yield stack


@pytest.fixture(scope="module")
def mutual(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, keys_path: Path
) -> Iterator[LocalStack]:
    """A gateway (no workers) that requires client certificates."""
    env = {
        "NLP_AUTH_MODE": "keys",
        "NLP_AUTH_KEYS_FILE": str(keys_path),
        "NLP_TLS_CERT_FILE": str(pki.server.cert),
        "NLP_TLS_KEY_FILE": str(pki.server.key),
        "NLP_TLS_CLIENT_CA_FILE": str(pki.ca),
        "NLP_TLS_CLIENT_AUTH": "require",
    }
    data_dir = tmp_path_factory.mktemp("mutual")
    with LocalStack(data_dir=data_dir, kinds=[], env=env) as stack:
        yield stack


@pytest.fixture(scope="module")
def channel_for(secured: LocalStack, pki: Pki) -> Iterator[Callable[..., grpc.Channel]]:
    channels: list[grpc.Channel] = []

    def make(key: str | None = None, client_cert: Pair | None = None) -> grpc.Channel:
        settings = ClientSettings(
            target=secured.gateway_target,
            api_key=key,
            ca_file=pki.ca,
            client_cert_file=client_cert.cert if client_cert else None,
            client_key_file=client_cert.key if client_cert else None,
        )
        channel = connect(settings)
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        channel.close()


# What the Classify calls send (labels: sports, politics).
CLASSIFY_TEXT = "The striker scored twice in the final."


# Every RPC of the API with a minimal request: (method, request, shape).
RPCS: list[tuple[str, Message, str]] = [
    ("/nlp.v1.Classification/Classify", classify_request(CLASSIFY_TEXT), "unary"),
    ("/nlp.v1.Ner/Recognize", ner_pb2.NerRequest(text="Paris"), "unary"),
    ("/nlp.v1.Summarization/Summarize", summarization_pb2.SummarizeRequest(text="A. B."), "unary"),
    ("/nlp.v1.Generation/Generate", generation_pb2.GenerateRequest(prompt="hi"), "unary"),
    ("/nlp.v1.Generation/GenerateStream", generation_pb2.GenerateRequest(prompt="hi"), "stream"),
    ("/nlp.v1.Generation/StreamTask", generation_pb2.StreamTaskRequest(task_id="0" * 32), "stream"),
    ("/nlp.v1.Tasks/Submit", submit_classification("x"), "unary"),
    ("/nlp.v1.Tasks/Get", tasks_pb2.GetTaskRequest(task_id="0" * 32), "unary"),
    ("/nlp.v1.Tasks/Wait", tasks_pb2.WaitTaskRequest(task_id="0" * 32), "unary"),
    ("/nlp.v1.Tasks/Cancel", tasks_pb2.CancelTaskRequest(task_id="0" * 32), "unary"),
    ("/nlp.v1.Tasks/SubmitBatch", tasks_pb2.SubmitBatchRequest(batch_id="b"), "bidi"),
    ("/nlp.v1.Tasks/GetBatch", tasks_pb2.GetBatchRequest(batch_id="b"), "unary"),
    (
        "/nlp.v1.Tasks/StreamBatchResults",
        tasks_pb2.StreamBatchResultsRequest(batch_id="b", no_follow=True),
        "stream",
    ),
    ("/nlp.v1.Models/List", models_pb2.ListModelsRequest(), "unary"),
    ("/nlp.v1.DeadLetters/List", deadletters_pb2.ListDeadLettersRequest(), "unary"),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        reflection_pb2.ServerReflectionRequest(list_services=""),
        "bidi",
    ),
]


def call(channel: grpc.Channel, method: str, request: Message, shape: str) -> list[Any]:
    """Call any RPC with one request message; returns what came back."""
    serialize, parse = (lambda m: m.SerializeToString()), (lambda b: b)
    if shape == "unary":
        return [channel.unary_unary(method, serialize, parse)(request, timeout=30)]
    if shape == "stream":
        return list(channel.unary_stream(method, serialize, parse)(request, timeout=30))
    return list(channel.stream_stream(method, serialize, parse)(iter([request]), timeout=30))


def code_of(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    error: grpc.RpcError = info.value
    return error


def test_health_needs_no_key_and_plaintext_is_refused(
    secured: LocalStack, channel_for: Callable[..., grpc.Channel]
) -> None:
    health = health_pb2_grpc.HealthStub(channel_for())
    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(secured.gateway_target) as plain:
        error = code_of(
            lambda: health_pb2_grpc.HealthStub(plain).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        error = code_of(lambda: call(plain, *RPCS[0]))
        assert error.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("key", [None, "wrong-key", REVOKED, "", "Bearer"])
def test_every_rpc_needs_a_valid_key(
    key: str | None, channel_for: Callable[..., grpc.Channel]
) -> None:
    channel = channel_for(key or None) if key != "" else channel_for()
    for method, request, shape in RPCS:
        error = code_of(functools.partial(call, channel, method, request, shape))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, method
        # The same words whatever was wrong: nothing that helps guessing.
        assert error.details() == UNAUTHENTICATED_DETAILS, method


def test_a_malformed_authorization_header_is_unauthenticated(secured: LocalStack, pki: Pki) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    with grpc.secure_channel(secured.gateway_target, creds) as channel:
        stub = models_pb2_grpc.ModelsStub(channel)
        for value in ("Basic dXNlcjpwYXNz", "Bearer  ", "bearer", KEYS["team-a"]):
            error = code_of(
                functools.partial(
                    stub.List,
                    models_pb2.ListModelsRequest(),
                    metadata=(("authorization", value),),
                    timeout=10,
                )
            )
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, value


def test_a_key_identifies_the_tenant(channel_for: Callable[..., grpc.Channel]) -> None:
    classifier = classification_pb2_grpc.ClassificationStub(channel_for(KEYS["team-a"]))
    assert classifier.Classify(classify_request(CLASSIFY_TEXT), timeout=60).top_label == "sports"
    tasks = tasks_pb2_grpc.TasksStub(channel_for(KEYS["team-a"]))
    task_id = tasks.Submit(submit_classification("A derby win."), timeout=30).task_id
    result = wait_terminal(tasks, task_id)
    assert result.tenant == "team-a"
    assert result.status == common_pb2.TASK_STATUS_SUCCEEDED


def test_mutual_tls_needs_a_client_certificate_that_names_the_tenant(
    mutual: LocalStack, pki: Pki
) -> None:
    def channel(cert: Pair | None) -> grpc.Channel:
        return connect(
            ClientSettings(
                target=mutual.gateway_target,
                ca_file=pki.ca,
                client_cert_file=cert.cert if cert else None,
                client_key_file=cert.key if cert else None,
            )
        )

    with channel(None) as anonymous:
        error = code_of(lambda: call(anonymous, *RPCS[-1]))
        assert error.code() == grpc.StatusCode.UNAVAILABLE  # no handshake without a cert
    with channel(pki.client_a) as team_a:
        tasks = tasks_pb2_grpc.TasksStub(team_a)
        task_id = tasks.Submit(submit_classification("x"), timeout=30).task_id
        current = tasks.Get(tasks_pb2.GetTaskRequest(task_id=task_id), timeout=10)
        assert current.tenant == "team-a"  # from the certificate's common name


def test_a_tenant_limited_to_lower_lanes_cannot_ask_for_a_higher_one(
    channel_for: Callable[..., grpc.Channel],
) -> None:
    tasks = tasks_pb2_grpc.TasksStub(channel_for(KEYS["narrow"]))
    urgent = submit_classification("A derby win.")
    urgent.lane = common_pb2.LANE_INTERACTIVE
    with pytest.raises(grpc.RpcError) as info:
        tasks.Submit(urgent, timeout=30)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'standard' lane or below" in str(info.value.details())
    urgent.lane = common_pb2.LANE_STANDARD
    assert wait_terminal(tasks, tasks.Submit(urgent, timeout=30).task_id).status == (
        common_pb2.TASK_STATUS_SUCCEEDED
    )
    # Its synchronous calls still work: they run in its highest lane.
    classifier = classification_pb2_grpc.ClassificationStub(channel_for(KEYS["narrow"]))
    assert classifier.Classify(classify_request("A derby win."), timeout=60).top_label


def test_a_tenant_cannot_see_or_touch_another_tenants_tasks(
    channel_for: Callable[..., grpc.Channel],
) -> None:
    a = tasks_pb2_grpc.TasksStub(channel_for(KEYS["team-a"]))
    b = tasks_pb2_grpc.TasksStub(channel_for(KEYS["team-b"]))
    b_gen = generation_pb2_grpc.GenerationStub(channel_for(KEYS["team-b"]))
    task_id = a.Submit(submit_classification("Election results are in."), timeout=30).task_id
    assert wait_terminal(a, task_id).tenant == "team-a"
    missing = "f" * 32
    calls: list[Callable[[str], Any]] = [
        lambda t: b.Get(tasks_pb2.GetTaskRequest(task_id=t), timeout=10),
        lambda t: b.Wait(tasks_pb2.WaitTaskRequest(task_id=t, timeout_ms=100), timeout=10),
        lambda t: b.Cancel(tasks_pb2.CancelTaskRequest(task_id=t), timeout=10),
        lambda t: list(b_gen.StreamTask(generation_pb2.StreamTaskRequest(task_id=t), timeout=10)),
    ]
    for fn in calls:
        theirs = code_of(functools.partial(fn, task_id))
        nobody = code_of(functools.partial(fn, missing))
        assert theirs.code() == nobody.code() == grpc.StatusCode.NOT_FOUND
        # Indistinguishable from a missing id.
        assert str(theirs.details()).replace(task_id, missing) == nobody.details()
    # The task is untouched: still A's, still succeeded.
    assert (
        a.Get(tasks_pb2.GetTaskRequest(task_id=task_id), timeout=10).status
        == common_pb2.TASK_STATUS_SUCCEEDED
    )
    # Nor can B claim to be A.
    claim = submit_classification("x")
    claim.tenant = "team-a"
    assert code_of(lambda: b.Submit(claim, timeout=10)).code() == grpc.StatusCode.PERMISSION_DENIED


def test_batch_ids_belong_to_their_tenant(channel_for: Callable[..., grpc.Channel]) -> None:
    a = tasks_pb2_grpc.TasksStub(channel_for(KEYS["team-a"]))
    b = tasks_pb2_grpc.TasksStub(channel_for(KEYS["team-b"]))
    batch_id = f"shared-{time.time_ns()}"

    def submit(stub: tasks_pb2_grpc.TasksStub, count: int) -> list[str]:
        items = [
            tasks_pb2.BatchItem(item_id=f"i{i}", task=submit_classification(f"Goal {i}."))
            for i in range(count)
        ]
        request = tasks_pb2.SubmitBatchRequest(batch_id=batch_id, items=items)
        return [
            ack.task_id for r in stub.SubmitBatch(iter([request]), timeout=60) for ack in r.acks
        ]

    ids = submit(a, 2)
    for task_id in ids:
        wait_terminal(a, task_id)
    for fn in (
        lambda: b.GetBatch(tasks_pb2.GetBatchRequest(batch_id=batch_id), timeout=10),
        lambda: list(
            b.StreamBatchResults(
                tasks_pb2.StreamBatchResultsRequest(batch_id=batch_id, no_follow=True), timeout=10
            )
        ),
    ):
        assert code_of(fn).code() == grpc.StatusCode.NOT_FOUND
    # B's batch of the same id is B's own; A's is unchanged.
    submit(b, 1)
    assert b.GetBatch(tasks_pb2.GetBatchRequest(batch_id=batch_id), timeout=10).submitted == 1
    status = a.GetBatch(tasks_pb2.GetBatchRequest(batch_id=batch_id), timeout=10)
    assert status.submitted == 2 and status.succeeded == 2
    results = a.StreamBatchResults(
        tasks_pb2.StreamBatchResultsRequest(batch_id=batch_id, no_follow=True), timeout=10
    )
    assert sorted(r.result.task_id for r in results) == sorted(ids)


def _retry_ms(error: grpc.RpcError) -> int:
    call_error: Any = error  # a grpc.Call as well as an RpcError
    status = rpc_status.from_call(call_error)
    assert status is not None
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    trailing: dict[str, Any] = dict(call_error.trailing_metadata() or ())
    assert int(trailing["retry-after-ms"]) == info.retry_delay.ToMilliseconds() > 0
    return int(info.retry_delay.ToMilliseconds())


def test_over_its_rate_a_tenant_waits_while_others_are_served(
    channel_for: Callable[..., grpc.Channel],
) -> None:
    slow = models_pb2_grpc.ModelsStub(channel_for(KEYS["slow"]))
    other = models_pb2_grpc.ModelsStub(channel_for(KEYS["team-b"]))
    errors = []
    for _ in range(6):
        try:
            slow.List(models_pb2.ListModelsRequest(), timeout=10)
        except grpc.RpcError as exc:
            errors.append(exc)
        other.List(models_pb2.ListModelsRequest(), timeout=10)  # never limited
    assert errors and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in errors)
    assert 0 < _retry_ms(errors[0]) <= 2000  # one request's worth at 0.5/s
    time.sleep(_retry_ms(errors[-1]) / 1000 + 0.1)
    slow.List(models_pb2.ListModelsRequest(), timeout=10)  # served again after the hint


def test_over_its_tasks_in_flight_a_tenant_waits_while_others_are_served(
    channel_for: Callable[..., grpc.Channel],
) -> None:
    narrow = tasks_pb2_grpc.TasksStub(channel_for(KEYS["narrow"]))
    other = classification_pb2_grpc.ClassificationStub(channel_for(KEYS["team-b"]))

    def ner_task() -> tasks_pb2.SubmitRequest:
        return tasks_pb2.SubmitRequest(ner=ner_pb2.NerRequest(text="Paris"), deadline_ms=600_000)

    # No NER worker in this stack: these stay in flight.
    held = [narrow.Submit(ner_task(), timeout=10).task_id for _ in range(3)]
    error = code_of(lambda: narrow.Submit(ner_task(), timeout=10))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "in flight" in (error.details() or "")
    assert _retry_ms(error) > 0
    assert other.Classify(classify_request(CLASSIFY_TEXT), timeout=60).top_label == "sports"
    # A finished (here: cancelled) task stops counting.
    narrow.Cancel(tasks_pb2.CancelTaskRequest(task_id=held[0]), timeout=10)
    narrow.Submit(ner_task(), timeout=10)
    # Its own input limit is tighter than the global one.
    long_text = submit_classification("x" * 101)
    error = code_of(lambda: narrow.Submit(long_text, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # And so is its batch size (5 items per stream).
    items = [
        tasks_pb2.BatchItem(item_id=f"i{i}", task=submit_classification("x")) for i in range(6)
    ]
    stream = iter([tasks_pb2.SubmitBatchRequest(batch_id="too-big", items=items)])
    error = code_of(lambda: list(narrow.SubmitBatch(stream, timeout=30)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_revoking_a_key_takes_effect_without_a_restart(
    channel_for: Callable[..., grpc.Channel], keys_path: Path
) -> None:
    stub = models_pb2_grpc.ModelsStub(channel_for(KEYS["team-b"]))
    stub.List(models_pb2.ListModelsRequest(), timeout=10)
    keys_file(keys_path, revoked={"team-b"})
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                stub.List(models_pb2.ListModelsRequest(), timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                break
            assert time.monotonic() < deadline, "the revoked key still works"
            time.sleep(0.2)
    finally:
        keys_file(keys_path)
    deadline = time.monotonic() + 10
    while True:
        try:
            stub.List(models_pb2.ListModelsRequest(), timeout=10)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, "the restored key does not work again"
            time.sleep(0.2)


def test_keys_never_reach_the_logs(secured: LocalStack) -> None:
    logs = "".join(s.log_file.read_text(errors="replace") for s in secured.services.values())
    assert "API keys loaded" in logs
    for key in [*KEYS.values(), REVOKED]:
        assert key not in logs


def test_the_cli_reads_its_key_from_the_environment_or_a_file(
    secured: LocalStack,
    pki: Pki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from shared.client.cli import main

    argv = ["--target", secured.gateway_target, "--ca-file", str(pki.ca), "--json", "models"]
    monkeypatch.delenv("NLP_API_KEY", raising=False)
    monkeypatch.delenv("NLP_API_KEY_FILE", raising=False)
    assert main(argv) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    monkeypatch.setenv("NLP_API_KEY", KEYS["team-a"])
    assert main(argv) == 0
    assert "minilm-l6-v2-int8" in capsys.readouterr().out
    monkeypatch.delenv("NLP_API_KEY")
    key_file = tmp_path / "key"
    key_file.write_text(KEYS["team-b"] + "\n")
    assert main(["--api-key-file", str(key_file), *argv]) == 0
    assert "minilm-l6-v2-int8" in capsys.readouterr().out


def test_quotas_hold_across_gateway_replicas(secured: LocalStack) -> None:
    """Two gateways' quota checks on the same Redis share one budget per tenant."""
    import asyncio

    import redis.asyncio as aioredis

    from services.gateway.auth import QuotaExceededError, Quotas, Tenant, TenantLimits
    from shared.contracts.envelope import make_envelope

    assert secured.redis is not None
    url = secured.redis.url
    tenant = Tenant(
        f"replicas-{time.time_ns()}", TenantLimits(rate_per_s=0.1, burst=3, max_in_flight=2)
    )

    async def scenario() -> None:
        clients = [aioredis.Redis.from_url(url) for _ in range(2)]
        one, two = (Quotas(c, secured.settings().names) for c in clients)
        try:
            await one.take(tenant)
            await two.take(tenant)
            await one.take(tenant)
            for quotas in (one, two):  # the burst of 3 is spent, whoever asks
                with pytest.raises(QuotaExceededError):
                    await quotas.take(tenant)
            tasks = [
                make_envelope("ner", ner_pb2.NerRequest(text="x"), deadline_s=60) for _ in range(3)
            ]
            await one.admit(tenant, tasks[:1])
            await two.admit(tenant, tasks[1:2])
            with pytest.raises(QuotaExceededError):
                await one.admit(tenant, tasks[2:])
            await two.release(tenant, [tasks[0].task_id])
            await one.admit(tenant, tasks[2:])
        finally:
            for client in clients:
                await client.aclose()

    asyncio.run(scenario())


def test_dead_letters_need_an_admin_key(channel_for: Callable[..., grpc.Channel]) -> None:
    tenant = deadletters_pb2_grpc.DeadLettersStub(channel_for(KEYS["team-a"]))
    for call_it in (
        lambda: tenant.List(deadletters_pb2.ListDeadLettersRequest(), timeout=30),
        lambda: tenant.Get(deadletters_pb2.GetDeadLetterRequest(id="0:0"), timeout=30),
        lambda: tenant.Replay(
            deadletters_pb2.ReplayDeadLettersRequest(ids=["0:0"], dry_run=True), timeout=30
        ),
    ):
        error = code_of(call_it)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error.details() == "dead letters need an admin key"
    admin = deadletters_pb2_grpc.DeadLettersStub(channel_for(ADMIN))
    assert admin.List(deadletters_pb2.ListDeadLettersRequest(), timeout=60).matched >= 0
    # An admin key is its tenant's key too.
    tasks = tasks_pb2_grpc.TasksStub(channel_for(ADMIN))
    task_id = tasks.Submit(submit_classification("A derby win."), timeout=30).task_id
    assert wait_terminal(tasks, task_id).tenant == "team-a"
