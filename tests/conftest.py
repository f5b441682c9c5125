"""Suite-wide pytest configuration shared by every area. Keep area-specific fixtures in their own modules."""

# Kubernetes fixtures (kubeconfig, k8s_api, kubectl, namespace): see tests/k8s_fixtures.py.
pytest_plugins = ["tests.k8s_fixtures"]
