##@ Chart tools (helm-unittest suites, helm-docs README; hack/chart-tools)

# helm-unittest is a Helm plugin; `helm` finds it here when HELM_PLUGINS points at this folder.
HELM_PLUGINS_DIR ?= $(CACHE)/helm-plugins

.PHONY: chart-tools
chart-tools: ## Build helm-unittest (Helm plugin in .cache/helm-plugins) and helm-docs (.cache/bin) once per machine (cached).
	@BIN=$(BIN) HELM_PLUGINS_DIR=$(HELM_PLUGINS_DIR) $(ROOT)/hack/chart-tools/build.sh

.PHONY: test-chart
test-chart: venv tools chart-tools ## The chart's tests: helm-unittest suites (charts/textgen-operator/tests/) and tests/chart/test_chart.py.
	HELM_PLUGINS=$(HELM_PLUGINS_DIR) $(HELM) unittest $(CHART_DIR)
	$(PY) -m pytest tests/chart/test_chart.py $(PYTEST_ARGS)

.PHONY: chart-docs
chart-docs: chart-tools ## Regenerate the chart README (values table) from values.yaml's `# --` comments and README.md.gotmpl (helm-docs).
	@$(ROOT)/hack/chart-tools/chart-docs.sh $(CHART_DIR)
	@echo "wrote $(CHART_DIR)/README.md"
