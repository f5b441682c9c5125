##@ Generation engine (serve_app/engine.py; see bench/ENGINE.md)

ENGINE_BENCH_ARGS ?=

.PHONY: test-engine
test-engine: venv ## Run the generation-engine tests (tests/engine: exact vs HF generate, batching, cancellation; no Ray).
	$(PY) -m pytest tests/engine $(PYTEST_ARGS)

.PHONY: engine-bench
engine-bench: venv ## Micro-benchmark the engine alone (124M random GPT-2, c=1/8/32, fp32 vs bf16; ~2-5 min; not a test).
	@cd $(ROOT) && $(PY) bench/engine_bench.py --variants fp32,bf16 $(ENGINE_BENCH_ARGS)
