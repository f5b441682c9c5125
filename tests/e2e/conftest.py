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
    """The images hack/node/images.sh built from the current inputs (and `node.sh up` imported)."""
    out = subprocess.run(["bash", str(ROOT / "hack" / "node" / "images.sh"), "--print"], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout
    return dict(line.split("=", 1) for line in out.split())


@pytest.fixture(scope="session")
def node_status():
    """`hack/node/node.sh status`: the node's processes and pods with their memory, as text."""
    def run() -> str:
        return subprocess.run(["bash", str(ROOT / "hack" / "node" / "node.sh"), "status"], capture_output=True,
                              text=True, cwd=ROOT).stdout
    return run
