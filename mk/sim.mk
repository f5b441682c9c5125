##@ Simulated scale (kwok nodes + the real kube-scheduler beside the local control plane; see hack/sim/README.md)

.PHONY: sim-build
sim-build: tools ## Build kwok (hack/sim, cached) and reuse the node's kube-scheduler build.
	@PY=$(PY) BIN=$(BIN) $(ROOT)/hack/sim/build.sh

.PHONY: sim-scale
sim-scale: venv cluster-build sim-build ## The seed's 8 x m5.4xlarge on kwok nodes: placement, scale 1 -> 8 -> 2, autoscaler-driven workers, unfit specs refused.
	$(PY) -m pytest -p no:cacheprovider tests/sim $(PYTEST_ARGS)

.PHONY: capacity-table
capacity-table: venv ## Regenerate README.md's capacity table (1..8 m5.4xlarge) from bench/results/latest.json.
	@cd $(ROOT) && $(PY) -m bench.capacity
