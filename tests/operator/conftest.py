"""Fixtures of the operator tests alone (the operator-running ones, shared with tests/sim: fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.operator.tgs_common import SAMPLES


@pytest.fixture(params=SAMPLES, ids=[p.stem for p in SAMPLES])
def sample(request) -> tuple[Path, dict]:
    """(path, parsed YAML) of each manifests/samples/ file."""
    return request.param, yaml.safe_load(request.param.read_text())
