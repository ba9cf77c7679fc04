"""What the gateway's security costs: the same stack and load with authentication off,
with API keys and quotas, and with API keys over TLS.

    python -m bench.security [--quick] [--rounds 2] [--out PATH]

One ``LocalStack`` with the classification worker per mode and round, taking turns:

- dev: ``NLP_AUTH_MODE=dev`` (no authentication, no quotas), plaintext;
- keys: every RPC authenticated by an API key and charged to its tenant's rate (a token
  bucket in Redis) and in-flight quota (a sorted set in Redis), plaintext;
- keys+tls: the same over TLS (a throwaway CA, ECDSA P-256).

The tenant's limits are far above the load, so nothing is refused: this measures the
checks, not the throttling. Prints a table and writes JSON (default
``bench-results/security.json``); exit status 1 when any request failed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

import grpc

from bench.common import Bench, Output
from bench.corpora import CORPORA, SEED
from bench.tracing import QUICK, ModeRun, ModesReport, Plan, measure
from deploy.local.certs import CertificateAuthority
from deploy.local.stack import LocalStack
from nlp.v1 import classification_pb2
from services.gateway.auth import digest

KIND = "classification"
MODES = ("dev", "keys", "keys+tls")
KEY = "nlp_bench_key_0123456789abcdef0123456789"
LIMITS = {"rate_per_s": 1e6, "burst": 1_000_000, "max_in_flight": 1_000_000}


def run_mode(
    mode: str,
    rnd: int,
    requests: list[classification_pb2.ClassifyRequest],
    plan: Plan,
    workdir: Path,
) -> ModeRun:
    env: dict[str, str] = {"NLP_AUTH_MODE": "dev"}
    credentials = None
    metadata: tuple[tuple[str, str], ...] = ()
    if mode != "dev":
        keys = workdir / "keys.json"
        keys.write_text(
            json.dumps(
                {
                    "tenants": {"bench": LIMITS},
                    "keys": [{"id": "bench", "tenant": "bench", "sha256": digest(KEY)}],
                }
            )
        )
        env = {"NLP_AUTH_MODE": "keys", "NLP_AUTH_KEYS_FILE": str(keys)}
        metadata = (("authorization", f"Bearer {KEY}"),)
    if mode == "keys+tls":
        ca = CertificateAuthority(workdir)
        server = ca.issue("gateway", "localhost", server=True)
        env |= {"NLP_TLS_CERT_FILE": str(server.cert), "NLP_TLS_KEY_FILE": str(server.key)}
        credentials = grpc.ssl_channel_credentials(ca.pair.cert.read_bytes())
    with LocalStack(kinds=[KIND], env=env) as stack:
        return asyncio.run(measure(stack, requests, plan, None, mode, rnd, credentials, metadata))


Results = ModesReport


def output(report: ModesReport) -> Output:
    return report.output("gateway security off vs on", spans=False)


def main(argv: list[str] | None = None) -> int:
    bench = Bench(
        "security",
        __doc__,
        quick="a short run (smoke test)",
        env=None,
        plan=Plan(),
        quick_plan=QUICK,
    )
    bench.option("rounds", "rounds of all modes")
    bench.parse(argv)
    plan = bench.plan
    requests = CORPORA[KIND](plan.corpus_docs, SEED).requests
    runs = []
    with TemporaryDirectory(prefix="nlp-bench-security-") as tmp:
        for rnd in range(1, plan.rounds + 1):
            for mode in MODES:
                workdir = Path(tmp) / f"{mode}-{rnd}"
                workdir.mkdir()
                runs.append(run_mode(mode, rnd, requests, plan, workdir))
    report = ModesReport.of(runs, "dev")
    return bench.finish(report, output(report), failed=report.failed)


if __name__ == "__main__":
    sys.exit(main())
