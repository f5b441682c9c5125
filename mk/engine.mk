##@ Generation engine (serve_app/engine.py; see bench/ENGINE.md)

ENGINE_BENCH_ARGS ?=
ENGINE_PROFILE_ARGS ?=
ENGINE_OFFLINE_ARGS ?=

.PHONY: test-engine
test-engine: venv ## Run the generation-engine tests (tests/engine: exact vs HF generate, batching, cancellation; no Ray).
	$(PY) -m pytest tests/engine $(PYTEST_ARGS)

.PHONY: engine-bench
engine-bench: venv model $(if $(filter 1,$(BENCH_OPENVINO)),openvino-models) ## Engines alone: ours vs OpenVINO GenAI (32 at once, batch-1; BENCH_OPENVINO=0 skips it), then ours fp32 vs bf16 at c=1/8/32 (~5-10 min; not a test).
	@cd $(ROOT) && $(PY) -m bench.engine_offline $(if $(filter 1,$(BENCH_OPENVINO)),,--no-openvino) $(ENGINE_OFFLINE_ARGS)
	@cd $(ROOT) && $(PY) bench/engine_bench.py --variants fp32,bf16 $(ENGINE_BENCH_ARGS)

.PHONY: engine-profile
engine-profile: venv model ## Profile one engine step at batch 1/8/32 (step time + split: linear, attention, KV writes, rest); ENGINE_PROFILE_ARGS="--dtype int8".
	@cd $(ROOT) && $(PY) bench/step_profile.py $(ENGINE_PROFILE_ARGS)
