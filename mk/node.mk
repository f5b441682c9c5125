##@ Local node (kubelet + containerd + CoreDNS beside the local control plane; see hack/node/README.md)

NODE_SH := $(ROOT)/hack/node/node.sh
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
node-up: venv model tools node-deps node-build ## Start the control plane in node mode, import the images, start the node (idempotent).
	@PY=$(PY) BIN=$(BIN) $(NODE_SH) up

.PHONY: node-down
node-down: ## Stop the node's pods and processes and undo its network, mounts, cgroups and sysctls (idempotent).
	@PY=$(PY) BIN=$(BIN) $(NODE_SH) down

.PHONY: node-status
node-status: ## Show the node's processes and pods with their memory.
	@PY=$(PY) BIN=$(BIN) $(NODE_SH) status || true

# Brings up whatever is not running yet and, unless E2E_KEEP=1, takes down what it brought up, also on failure.
.PHONY: e2e-local
e2e-local: venv model tools node-deps node-build ## End to end on the local node: helm install, TextGenService -> Ray pods -> HTTP, scale, recovery, delete.
	@set -u; t0=$$(date +%s); \
	cluster_was_up=0; PY=$(PY) BIN=$(BIN) $(CLUSTER_SH) status >/dev/null 2>&1 && cluster_was_up=1; \
	node_was_up=0; PY=$(PY) BIN=$(BIN) $(NODE_SH) status >/dev/null 2>&1 && node_was_up=1; \
	cleanup() { \
	  if [ "$(E2E_KEEP)" = 1 ]; then echo "E2E_KEEP=1: node and control plane left running (make node-down cluster-down)"; return; fi; \
	  [ $$node_was_up = 1 ] || PY=$(PY) BIN=$(BIN) $(NODE_SH) down; \
	  [ $$cluster_was_up = 1 ] || PY=$(PY) BIN=$(BIN) $(CLUSTER_SH) down; \
	}; \
	trap cleanup EXIT; \
	PY=$(PY) BIN=$(BIN) $(NODE_SH) up; t1=$$(date +%s); \
	TEXTGEN_E2E_LOCAL=1 $(PY) -m pytest -s -p no:cacheprovider tests/e2e $(PYTEST_ARGS); t2=$$(date +%s); \
	echo "e2e-local: node up $$((t1 - t0)) s, e2e test $$((t2 - t1)) s"
