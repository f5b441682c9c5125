##@ Dependencies (one lock for the venv, both images and the local node's wheelhouse)

CONSTRAINTS := $(ROOT)/constraints.txt

.PHONY: constraints
constraints: ## Re-resolve the three pyproject.toml files' dependencies (all extras; the project's own distributions left out) into constraints.txt; run after editing them (needs only python3 and pip, not the venv).
	$(PYTHON) $(ROOT)/hack/deps/constraints.py $(CONSTRAINTS)
