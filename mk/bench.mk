##@ Benchmark (bench/: the FastAPI baseline vs transformers serve vs ours; never part of `make test`)

# Extra flags for bench/run_bench.py (e.g. BENCH_ARGS="--concurrency 1,8,32,64"); a note stored with
# the results (e.g. BENCH_NOTE="machine shared with other jobs").
BENCH_ARGS ?=
BENCH_NOTE ?=

.PHONY: bench
bench: venv model ## Full benchmark, by hand (~20-40 min on 2 cores): bench/results/latest.json, throughput.png, README table.
	@cd $(ROOT) && rc=0 && BENCH_NOTE="$(BENCH_NOTE)" $(PY) -m bench.run_bench $(BENCH_ARGS) || rc=$$?; \
	  $(PY) -m bench.report && exit $$rc

.PHONY: bench-smoke
bench-smoke: venv model ## Quick benchmark run: tiny model, few requests, each system once (~1-2 min); writes .cache/bench/smoke.json.
	@cd $(ROOT) && $(PY) -m bench.run_bench --smoke $(BENCH_ARGS)

.PHONY: bench-report
bench-report: venv ## Regenerate bench/README.md's table and bench/results/throughput.png from bench/results/latest.json.
	@cd $(ROOT) && $(PY) -m bench.report
