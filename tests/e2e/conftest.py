"""The end-to-end test needs the local node (`make e2e-local` brings it up: hack/node/node.sh). Plain `pytest`
runs (as in `make test`'s first step) skip it; `make e2e-local` runs it with TEXTGEN_E2E_LOCAL=1."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(config, items):
    if os.environ.get("TEXTGEN_E2E_LOCAL") == "1":
        return
    skip = pytest.mark.skip(reason="needs the local node: run `make e2e-local`")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def local_images() -> dict[str, str]:
    """The images `node.sh up` built and imported (written by hack/node/images.sh). Read, not recomputed: the
    working tree may change while the test runs, and the node has these."""
    env = ROOT / ".node" / "images.env"
    assert env.is_file(), f"{env} missing: the node is not up (make node-up)"
    return dict(line.split("=", 1) for line in env.read_text().split())


@pytest.fixture(scope="session")
def node_status():
    """The node's control plane, processes and pods with their memory (`cluster.sh status`, `node.sh status`)."""
    def run() -> str:
        return "".join(subprocess.run(["bash", str(ROOT / "hack" / script), "status"], capture_output=True, text=True,
                                      cwd=ROOT, env={**os.environ, "CLUSTER_DIR": str(ROOT / ".node-cluster")}).stdout
                       for script in ("cluster/cluster.sh", "node/node.sh"))
    return run
