##@ Local node (kubelet + containerd + CoreDNS beside the local control plane; see hack/node/README.md)

NODE_SH := $(ROOT)/hack/node/node.sh
# The node's own control plane (not the tests' .cluster/): see hack/node/README.md.
NODE_CLUSTER_DIR := $(ROOT)/.node-cluster
NODE_ENV = PY=$(PY) BIN=$(BIN) CLUSTER_DIR=$(NODE_CLUSTER_DIR)
# Keep the node (and the control plane) running after `make e2e-local`, for a look around: E2E_KEEP=1.
E2E_KEEP ?= 0

.PHONY: node-deps
node-deps: ## Install the Debian packages the node needs (containerd, runc, CNI plugins, buildah, debootstrap, nftables); idempotent.
	@$(ROOT)/hack/node/deps.sh

.PHONY: node-build
node-build: cluster-build ## Build kube-scheduler, kubelet, kube-proxy (same module as the API server) and CoreDNS (cached).
	@PY=$(PY) BIN=$(BIN) $(ROOT)/hack/node/build.sh

.PHONY: images-local
images-local: venv model node-deps ## Build the pause, operator and serve images without Docker (debootstrap base + buildah; cached).
	@PY=$(PY) BIN=$(BIN) $(ROOT)/hack/node/images.sh

.PHONY: node-up
node-up: venv model tools node-deps node-build ## Start the node's control plane (.node-cluster/), import the images, start the node (idempotent).
	@$(NODE_ENV) $(NODE_SH) up

.PHONY: node-down
node-down: ## Stop the node (pods, processes; undo its network, mounts, cgroups, sysctls) and its control plane (idempotent).
	@$(NODE_ENV) $(NODE_SH) down
	@$(NODE_ENV) $(CLUSTER_SH) down

.PHONY: node-status
node-status: ## Show the node's processes and pods with their memory.
	@$(NODE_ENV) $(NODE_SH) status || true

# The end-to-end modules e2e-local runs: all of tests/e2e (day-2 operations and the first steps), in one node up.
E2E_TESTS ?= tests/e2e

# Brings up the node (and its control plane) unless running and, unless E2E_KEEP=1, takes down what it brought
# up, on failure too.
.PHONY: e2e-local
e2e-local: venv model tools node-deps node-build ## End to end on the local node: helm install, TextGenService -> Ray pods -> HTTP, scale, recovery, delete; and day-2 (e2e-day2).
	@set -u; t0=$$(date +%s); \
	was_up=0; $(NODE_ENV) $(NODE_SH) status >/dev/null 2>&1 && was_up=1; \
	cleanup() { \
	  if [ "$(E2E_KEEP)" = 1 ]; then echo "E2E_KEEP=1: node left running (make node-down; KUBECONFIG=$(NODE_CLUSTER_DIR)/kubeconfig)"; \
	  elif [ $$was_up = 0 ]; then $(NODE_ENV) $(NODE_SH) down; $(NODE_ENV) $(CLUSTER_SH) down; fi; \
	}; \
	trap cleanup EXIT; \
	$(NODE_ENV) $(NODE_SH) up; t1=$$(date +%s); \
	TEXTGEN_E2E_LOCAL=1 TEXTGEN_USE_EXISTING_CLUSTER=1 KUBECONFIG=$(NODE_CLUSTER_DIR)/kubeconfig \
	  $(PY) -m pytest -s -p no:cacheprovider $(E2E_TESTS) $(PYTEST_ARGS); t2=$$(date +%s); \
	echo "e2e-local: node up $$((t1 - t0)) s, e2e test $$((t2 - t1)) s"

.PHONY: e2e-day2
e2e-day2: ## Day-2 operations on the local node alone: READY from Serve, in-place change under load, scale to zero and back, new-cluster change.
	@$(MAKE) e2e-local E2E_TESTS=tests/e2e/test_day2.py
