##@ Operator (TextGenService CRD + kopf operator)

OPERATOR_PY := PYTHONPATH=$(ROOT)/operator$${PYTHONPATH:+:$$PYTHONPATH} $(PY)
CRD_FILE := manifests/crd/textgen.dev_textgenservices.yaml
CHART_CRD_FILE := charts/textgen-operator/crds/textgen.dev_textgenservices.yaml
OPERATOR_SAMPLES := $(sort $(wildcard manifests/samples/*.yaml))
# The local control plane's kubeconfig unless $KUBECONFIG is set (as kubebuilder's `make run` uses the current one).
OPERATOR_KUBECONFIG = $(or $(KUBECONFIG),$(ROOT)/.cluster/kubeconfig)
OPERATOR_ARGS ?= --all-namespaces

.PHONY: manifests
manifests: ## Generate the TextGenService CRD (manifests/crd/ and the chart's crds/ copy) from operator/textgen_operator/spec.py.
	$(OPERATOR_PY) -m textgen_operator.crd $(CRD_FILE) $(CHART_CRD_FILE)

.PHONY: golden
golden: ## Regenerate tests/operator/golden/<sample>.rayservice.yaml from manifests/samples/.
	rm -f tests/operator/golden/*.rayservice.yaml
	$(OPERATOR_PY) -m textgen_operator.render --out-dir tests/operator/golden $(OPERATOR_SAMPLES)

.PHONY: install
install: ## Apply the TextGenService CRD to $KUBECONFIG (default .cluster/kubeconfig).
	KUBECONFIG=$(OPERATOR_KUBECONFIG) kubectl apply --server-side -f $(CRD_FILE)
	KUBECONFIG=$(OPERATOR_KUBECONFIG) kubectl wait --for condition=established --timeout=60s crd/textgenservices.textgen.dev

.PHONY: uninstall
uninstall: ## Delete the TextGenService CRD (and every TextGenService) from $KUBECONFIG.
	KUBECONFIG=$(OPERATOR_KUBECONFIG) kubectl delete --ignore-not-found -f $(CRD_FILE)

.PHONY: run-operator
run-operator: ## Run the operator locally against $KUBECONFIG (default .cluster/kubeconfig); OPERATOR_ARGS=--namespace x.
	KUBECONFIG=$(OPERATOR_KUBECONFIG) $(OPERATOR_PY) -m textgen_operator --liveness http://127.0.0.1:0/healthz --metrics-host 127.0.0.1 $(OPERATOR_ARGS)

.PHONY: test-operator
test-operator: ## Run the operator tests (cluster tests skip without a control plane).
	$(PY) -m pytest tests/operator $(PYTEST_ARGS)

.PHONY: serve-config
serve-config: ## Generate serve_app/config/local.yaml (make run, make bench) from a default TextGenService's serveConfigV2.
	$(OPERATOR_PY) -m textgen_operator.render --local-serve-config serve_app/config/local.yaml
