"""Fixtures of the operator tests (constants and shared data live in tgs_common.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tgs_common import SAMPLES


@pytest.fixture(params=SAMPLES, ids=[p.stem for p in SAMPLES])
def sample(request) -> tuple[Path, dict]:
    """(path, parsed YAML) of each manifests/samples/ file."""
    return request.param, yaml.safe_load(request.param.read_text())
