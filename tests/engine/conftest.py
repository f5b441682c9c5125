"""Fixtures for the generation-engine tests (no Ray)."""

from __future__ import annotations

import pytest

from serve_app.engine import GenerationEngine
from tests.engine.engine_testlib import make_model


@pytest.fixture(scope="module")
def tiny_model():
    return make_model()


@pytest.fixture
def make_engine():
    engines: list[GenerationEngine] = []

    def factory(model, **kw) -> GenerationEngine:
        e = GenerationEngine(model, **kw)
        engines.append(e)
        return e

    yield factory
    for e in engines:
        e.shutdown()
